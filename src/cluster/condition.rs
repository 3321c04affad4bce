//! A node condition as it is stored: the status as one of the three values
//! the API allows, the transition time in whole seconds, and the reason and
//! message (kept only until the condition-change records have read them)
//! behind one pointer.

use compact_str::CompactString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// The status of one node condition, as the three values the API allows.
///
/// Anything other than `True` or `False` (including a missing or misspelt
/// status) reads as `Unknown`: an exporter must never turn garbage into
/// "healthy" or "unhealthy".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The kubelet stopped reporting, or the status is unreadable.
    #[default]
    Unknown,
}

impl ConditionStatus {
    /// Every status, in the order points are emitted.
    pub const ALL: [ConditionStatus; 3] = [
        ConditionStatus::True,
        ConditionStatus::False,
        ConditionStatus::Unknown,
    ];

    /// Reads the API's string (`"True"`, `"False"`, `"Unknown"`).
    pub fn from_api(status: &str) -> Self {
        match status {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        }
    }

    /// The API's spelling (`"True"`, `"False"`, `"Unknown"`).
    pub fn api(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// The lower-case attribute value used by the OTel semantic conventions.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "true",
            ConditionStatus::False => "false",
            ConditionStatus::Unknown => "unknown",
        }
    }
}

/// One condition: the heartbeat is neither read nor kept; reason and message
/// are read for condition-change records and taken off before the node is
/// stored (`condition_changes::take_details`).
///
/// A node keeps ~6 conditions for as long as it exists, so the stored form
/// is small: 48 bytes, from 120 with the status as the API's string, the
/// transition time as an `Option<Time>` (24 bytes) and inline slots for a
/// reason and message that are never kept (at 100,000 nodes, ~43 MB).
/// Reason and message sit behind one pointer, empty once stored; a status
/// other than the three the API allows is stored as `Unknown`, which is how
/// it reads anyway; the transition time is whole seconds, all the API's
/// `Time` has (RFC 3339 without a fraction in JSON, and protobuf's
/// `nanos` left out).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(from = "WireCondition", into = "WireCondition")]
pub struct NodeCondition {
    /// `Ready`, `MemoryPressure`, … or a custom type.
    pub type_: CompactString,
    /// Reason and message, only on the way in.
    pub details: Option<Box<ConditionText>>,
    /// When the status last changed, in seconds since the Unix epoch;
    /// [`NO_TIME`] if the API did not say.
    transition: i64,
    /// `True`, `False` or `Unknown` (anything else reads as unknown).
    pub status: ConditionStatus,
}

/// The stored transition time of a condition without one.
const NO_TIME: i64 = i64::MIN;

/// A condition's `reason` and `message`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConditionText {
    /// Why, machine-readable.
    pub reason: Option<CompactString>,
    /// Why, for people.
    pub message: Option<String>,
}

impl NodeCondition {
    /// A condition of `type_` with `status` since `last_transition`, without reason or message.
    pub fn new(type_: CompactString, status: ConditionStatus, last_transition: Option<&Time>) -> Self {
        NodeCondition {
            type_,
            details: None,
            transition: last_transition.map_or(NO_TIME, |t| t.0.as_second()),
            status,
        }
    }

    /// When the status last changed, in whole seconds since the Unix epoch.
    pub fn last_transition_seconds(&self) -> Option<i64> {
        (self.transition != NO_TIME).then_some(self.transition)
    }

    /// When the status last changed.
    pub fn last_transition_time(&self) -> Option<Time> {
        let seconds = self.last_transition_seconds()?;
        k8s_openapi::jiff::Timestamp::from_second(seconds).ok().map(Time)
    }

    /// Sets reason and message, keeping no box for neither.
    pub fn with_text(mut self, reason: Option<CompactString>, message: Option<String>) -> Self {
        self.details =
            (reason.is_some() || message.is_some()).then(|| Box::new(ConditionText { reason, message }));
        self
    }
}

/// A condition as the API writes it, for serde.
#[derive(Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
struct WireCondition {
    #[serde(rename = "type")]
    type_: CompactString,
    status: CompactString,
    last_transition_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<CompactString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl From<WireCondition> for NodeCondition {
    fn from(w: WireCondition) -> Self {
        NodeCondition::new(
            w.type_,
            ConditionStatus::from_api(&w.status),
            w.last_transition_time.as_ref(),
        )
        .with_text(w.reason, w.message)
    }
}

impl From<NodeCondition> for WireCondition {
    fn from(c: NodeCondition) -> Self {
        let last_transition_time = c.last_transition_time();
        let text = c.details.map(|d| *d).unwrap_or_default();
        WireCondition {
            type_: c.type_,
            status: c.status.api().into(),
            last_transition_time,
            reason: text.reason,
            message: text.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_condition_is_small() {
        // What the memory figures in docs/benchmarks.md rest on.
        assert!(std::mem::size_of::<NodeCondition>() <= 48);
    }

    #[test]
    fn decodes_and_encodes_as_the_api_writes_it() {
        let json = serde_json::json!({"type": "Ready", "status": "True",
            "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "KubeletReady", "message": "ok"});
        let c: NodeCondition = serde_json::from_value(json.clone()).expect("decodes");
        assert_eq!((c.type_.as_str(), c.status), ("Ready", ConditionStatus::True));
        assert_eq!(c.last_transition_seconds(), Some(1_767_225_600));
        let text = c
            .details
            .as_deref()
            .expect("reason and message kept on the way in");
        assert_eq!(
            (text.reason.as_deref(), text.message.as_deref()),
            (Some("KubeletReady"), Some("ok"))
        );
        assert_eq!(serde_json::to_value(&c).expect("encodes"), json);
        // Neither reason nor message: no box. A status the API does not allow reads as Unknown.
        let c: NodeCondition =
            serde_json::from_value(serde_json::json!({"type": "X", "status": "Maybe"})).expect("decodes");
        assert_eq!(c.last_transition_time(), None);
        assert_eq!((c.status, c.details), (ConditionStatus::Unknown, None));
    }
}

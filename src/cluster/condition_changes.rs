//! Condition status changes as events, with the reason and message the
//! kubelet (or node-problem-detector) gave: what a metric cannot carry
//! without exploding cardinality.
//!
//! Reasons and messages are decoded with each watch event and taken off the
//! node before it is stored ([`take_details`]): the view keeps statuses only,
//! so a message costs memory for as long as one event is handled.

use std::time::SystemTime;

use compact_str::CompactString;

use super::{
    node::Node,
    transitions::{Moved, Seen, conditions},
};

/// The reason and message of one condition of an incoming node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConditionDetail {
    /// The condition type.
    pub type_: CompactString,
    /// Its `reason`, machine-readable (`KubeletNotReady`).
    pub reason: Option<CompactString>,
    /// Its `message`, for people.
    pub message: Option<String>,
}

/// One condition of one node changed status.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionChange {
    /// The node's name.
    pub node: String,
    /// The node's uid.
    pub uid: Option<String>,
    /// The condition type.
    pub type_: String,
    /// The new status, as the API spells it (`True`, `False`, `Unknown`).
    pub status: String,
    /// The status before.
    pub previous: String,
    /// The new status's reason, if the API gave one.
    pub reason: Option<String>,
    /// The new status's message, if the API gave one.
    pub message: Option<String>,
    /// `lastTransitionTime`, when the API gave it.
    pub last_transition: Option<SystemTime>,
    /// When this exporter saw the change.
    pub observed: SystemTime,
}

/// Receives condition changes as the watch applies them. Must not block: it
/// is called on the watch's path.
pub trait ConditionSink: Send + Sync {
    /// One change, in the order they were seen.
    fn changed(&self, change: ConditionChange);
}

/// Takes the conditions' reasons and messages off `node` (which is then
/// stored without them) and returns them.
pub fn take_details(node: &mut Node) -> Vec<ConditionDetail> {
    node.status
        .as_mut()
        .and_then(|s| s.conditions.as_mut())
        .into_iter()
        .flatten()
        .map(|c| {
            let text = c.details.take().map(|d| *d).unwrap_or_default();
            ConditionDetail {
                type_: c.type_.clone(),
                reason: text.reason.filter(|r| !r.is_empty()),
                message: text.message.filter(|m| !m.is_empty()),
            }
        })
        .collect()
}

/// The status changes from what was seen of a node (`old`) to `new`: one per
/// condition type present in both whose status differs, and one (with
/// `previous` equal to `status`) per condition whose status is the same but
/// whose `lastTransitionTime` is newer when a relist delivered it
/// (`across_gap`): it changed and changed back while the watch was not looking. A condition new to the node, a node new to the
/// view (`old` is `None`: its initial state) and a node re-created under
/// the same name (another uid) are no change.
pub fn changes(
    old: Option<&Seen>,
    new: &Node,
    details: &[ConditionDetail],
    observed: SystemTime,
    across_gap: bool,
) -> Vec<ConditionChange> {
    let (Some(old), Some(name)) = (old, new.metadata.name.as_deref()) else {
        return Vec::new();
    };
    if old.is_replaced_by(new) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (type_, status, transition) in conditions(new) {
        let previous = match old.moved(type_, status, transition, across_gap) {
            Moved::Changed { previous } => previous.api().to_string(),
            Moved::ChangedAndBack => status.api().to_string(),
            Moved::New | Moved::Same => continue,
        };
        let detail = details.iter().find(|d| d.type_ == type_);
        out.push(ConditionChange {
            node: name.to_string(),
            uid: new.metadata.uid.clone(),
            type_: type_.to_string(),
            status: status.api().to_string(),
            previous,
            reason: detail.and_then(|d| d.reason.as_deref()).map(str::to_string),
            message: detail.and_then(|d| d.message.clone()),
            last_transition: transition
                .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
                .map(SystemTime::from),
            observed,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(conditions: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "uid": "u-1"},
            "status": {"conditions": conditions},
        }))
        .expect("a valid Node")
    }

    #[test]
    fn a_status_change_carries_the_new_reason_and_message_and_nothing_else_does() {
        let ready = node(serde_json::json!([
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"},
            {"type": "MemoryPressure", "status": "False"},
        ]));
        let mut not_ready = node(serde_json::json!([
            {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
             "message": "container runtime network not ready", "lastTransitionTime": "2026-12-01T00:00:00Z"},
            {"type": "MemoryPressure", "status": "False", "message": "kubelet has sufficient memory available"},
            {"type": "KernelDeadlock", "status": "True"},
        ]));
        let details = take_details(&mut not_ready);
        let conditions = not_ready
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .expect("conditions");
        assert!(
            conditions.iter().all(|c| c.details.is_none()),
            "nothing kept to store"
        );
        let now = SystemTime::now();
        let got = changes(Some(&Seen::of(&ready)), &not_ready, &details, now, false);
        assert_eq!(got.len(), 1, "{got:?}");
        let c = &got[0];
        assert_eq!((c.node.as_str(), c.uid.as_deref()), ("n1", Some("u-1")));
        assert_eq!(
            (c.type_.as_str(), c.previous.as_str(), c.status.as_str()),
            ("Ready", "True", "False")
        );
        assert_eq!(c.reason.as_deref(), Some("KubeletNotReady"));
        assert_eq!(c.message.as_deref(), Some("container runtime network not ready"));
        assert_eq!(
            c.last_transition,
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_083_200))
        );
        assert_eq!(c.observed, now);
        // A node's first appearance, and an update that changes no status, are no change.
        assert!(changes(None, &not_ready, &details, now, false).is_empty());
        assert!(changes(Some(&Seen::of(&not_ready)), &not_ready, &details, now, false).is_empty());
    }
}

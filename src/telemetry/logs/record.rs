//! A condition change as an OTLP log record: pure, so the table tests below
//! say what a collector receives.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value},
    logs::v1::{LogRecord, SeverityNumber},
};

use crate::{
    cluster::ConditionChange,
    readings::{ConditionReading, ConditionStatus},
};

/// The event name of every record: a condition of a node changed status.
pub const EVENT_NAME: &str = "k8s.node.condition.change";

/// The longest message a record carries, in bytes: node-problem-detector
/// messages can hold kernel log excerpts, and Cloud Logging bills by size.
pub const MESSAGE_LIMIT: usize = 1024;

/// The attribute keys of a record (besides the semantic conventions'
/// `k8s.node.name`, `k8s.node.uid`, `k8s.node.condition.type` and
/// `k8s.node.condition.status`, the project's own).
pub mod keys {
    /// The status before the change.
    pub const PREVIOUS_STATUS: &str = "k8s.node.condition.previous_status";
    /// The new status's reason.
    pub const REASON: &str = "k8s.node.condition.reason";
    /// Set (true) when the message was cut at [`super::MESSAGE_LIMIT`].
    pub const MESSAGE_TRUNCATED: &str = "k8s.node.condition.message_truncated";
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}

/// `message` cut to at most [`MESSAGE_LIMIT`] bytes on a character boundary.
fn truncated(message: &str) -> (&str, bool) {
    if message.len() <= MESSAGE_LIMIT {
        return (message, false);
    }
    let mut end = MESSAGE_LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    (&message[..end], true)
}

/// The record of `change`: WARN for a change into a state that shows a
/// problem, INFO for one out of it; the time is `lastTransitionTime`, the
/// observed time when the exporter saw it; the body is the message.
pub fn record(change: &ConditionChange) -> LogRecord {
    let status = ConditionStatus::from_api(&change.status);
    let previous = ConditionStatus::from_api(&change.previous);
    let unhealthy = ConditionReading {
        type_: &change.type_,
        status,
        last_transition: None,
    }
    .is_unhealthy();
    let (severity, severity_text) = if unhealthy {
        (SeverityNumber::Warn, "WARN")
    } else {
        (SeverityNumber::Info, "INFO")
    };
    let mut attributes = vec![text("k8s.node.name", &change.node)];
    if let Some(uid) = &change.uid {
        attributes.push(text("k8s.node.uid", uid));
    }
    attributes.extend([
        text("k8s.node.condition.type", &change.type_),
        text("k8s.node.condition.status", status.as_str()),
        text(keys::PREVIOUS_STATUS, previous.as_str()),
    ]);
    if let Some(reason) = &change.reason {
        attributes.push(text(keys::REASON, reason));
    }
    let body = match &change.message {
        Some(message) => {
            let (cut, was_cut) = truncated(message);
            if was_cut {
                attributes.push(kv(keys::MESSAGE_TRUNCATED, any_value::Value::BoolValue(true)));
            }
            cut.to_string()
        }
        None => format!(
            "{} {}: {} → {}",
            change.node, change.type_, change.previous, change.status
        ),
    };
    LogRecord {
        time_unix_nano: nanos(change.last_transition.unwrap_or(change.observed)),
        observed_time_unix_nano: nanos(change.observed),
        severity_number: severity as i32,
        severity_text: severity_text.to_string(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body)),
        }),
        attributes,
        event_name: EVENT_NAME.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn change(type_: &str, previous: &str, status: &str, message: Option<&str>) -> ConditionChange {
        ConditionChange {
            node: "n1".into(),
            uid: Some("u-1".into()),
            type_: type_.into(),
            status: status.into(),
            previous: previous.into(),
            reason: Some("KubeletNotReady".into()),
            message: message.map(str::to_string),
            last_transition: Some(UNIX_EPOCH + Duration::from_secs(100)),
            observed: UNIX_EPOCH + Duration::from_secs(102),
        }
    }

    fn attr<'r>(r: &'r LogRecord, key: &str) -> Option<&'r any_value::Value> {
        r.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn string(v: Option<&any_value::Value>) -> Option<&str> {
        match v {
            Some(any_value::Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn severity_follows_the_direction_of_the_change() {
        let cases = [
            ("Ready", "True", "False", SeverityNumber::Warn),
            ("Ready", "True", "Unknown", SeverityNumber::Warn),
            ("Ready", "False", "True", SeverityNumber::Info),
            ("MemoryPressure", "False", "True", SeverityNumber::Warn),
            ("MemoryPressure", "True", "False", SeverityNumber::Info),
            ("KernelDeadlock", "False", "Unknown", SeverityNumber::Warn),
        ];
        for (type_, from, to, want) in cases {
            let r = record(&change(type_, from, to, Some("m")));
            assert_eq!(r.severity_number, want as i32, "{type_} {from} → {to}");
        }
    }

    #[test]
    fn a_record_carries_who_what_why_and_when() {
        let r = record(&change(
            "Ready",
            "True",
            "False",
            Some("container runtime network not ready"),
        ));
        assert_eq!(r.event_name, EVENT_NAME);
        assert_eq!(r.time_unix_nano, 100_000_000_000, "lastTransitionTime");
        assert_eq!(
            r.observed_time_unix_nano, 102_000_000_000,
            "when the exporter saw it"
        );
        assert_eq!(r.severity_text, "WARN");
        assert_eq!(
            r.body.as_ref().and_then(|b| b.value.as_ref()),
            Some(&any_value::Value::StringValue(
                "container runtime network not ready".into()
            ))
        );
        for (key, want) in [
            ("k8s.node.name", "n1"),
            ("k8s.node.uid", "u-1"),
            ("k8s.node.condition.type", "Ready"),
            ("k8s.node.condition.status", "false"),
            (keys::PREVIOUS_STATUS, "true"),
            (keys::REASON, "KubeletNotReady"),
        ] {
            assert_eq!(string(attr(&r, key)), Some(want), "{key}");
        }
        assert!(attr(&r, keys::MESSAGE_TRUNCATED).is_none());
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary_and_say_so() {
        let long = "ü".repeat(MESSAGE_LIMIT); // two bytes each
        let r = record(&change("KernelDeadlock", "False", "True", Some(&long)));
        let Some(any_value::Value::StringValue(body)) = r.body.as_ref().and_then(|b| b.value.as_ref()) else {
            panic!("a string body");
        };
        assert!(body.len() <= MESSAGE_LIMIT && body.len() >= MESSAGE_LIMIT - 1);
        assert!(long.starts_with(body.as_str()));
        assert_eq!(
            attr(&r, keys::MESSAGE_TRUNCATED),
            Some(&any_value::Value::BoolValue(true))
        );
        // Without a message, the body still says what happened.
        let r = record(&change("Ready", "False", "True", None));
        assert_eq!(
            r.body.and_then(|b| b.value),
            Some(any_value::Value::StringValue("n1 Ready: False → True".into()))
        );
    }
}

//! The fingerprint, protobuf and JSON, against the store's own comparison,
//! on realistic nodes (the fake API server's, with managed fields, images
//! and volumes) put through the same protobuf transcoder that matches
//! upstream bytes.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::cluster::{Node, condition_changes, proto, strip};

const NOW: &str = "2026-11-27T00:00:00Z";
const LATER: &str = "2026-11-27T00:05:00Z";

/// What a mutation does to what the watch compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// Nothing the fingerprint covers: a re-post.
    Ignored,
    /// Covered by the fingerprint, not compared by the store (a superset is safe).
    Hashed,
    /// Compared by the store.
    Kept,
}

fn set_condition(j: &mut Value, type_: &str, field: &str, value: Value) {
    for c in j["status"]["conditions"].as_array_mut().expect("conditions") {
        if c["type"] == type_ {
            c[field] = value.clone();
        }
    }
}

/// A named change to a node's JSON, and what it does to what is compared.
type Mutation = (&'static str, Effect, fn(&mut Value));

/// Each mutation of a generated node, and its effect.
const MUTATIONS: &[Mutation] = &[
    ("resourceVersion", Effect::Ignored, |j| {
        j["metadata"]["resourceVersion"] = "99".into()
    }),
    ("heartbeat times", Effect::Ignored, |j| {
        for c in j["status"]["conditions"].as_array_mut().expect("conditions") {
            c["lastHeartbeatTime"] = LATER.into();
        }
    }),
    ("images", Effect::Ignored, |j| {
        j["status"]["images"] = json!([{"names": ["registry/x:1"], "sizeBytes": 5}])
    }),
    ("volumesInUse", Effect::Ignored, |j| {
        j["status"]["volumesInUse"] = json!(["kubernetes.io/csi/pd^d9"])
    }),
    ("volumesAttached", Effect::Ignored, |j| {
        j["status"]["volumesAttached"] = json!([{"name": "kubernetes.io/csi/pd^d9", "devicePath": ""}])
    }),
    ("an annotation", Effect::Ignored, |j| {
        j["metadata"]["annotations"]["x"] = "y".into()
    }),
    ("managed fields' time", Effect::Ignored, |j| {
        for m in j["metadata"]["managedFields"]
            .as_array_mut()
            .expect("managed fields")
        {
            m["time"] = LATER.into();
        }
    }),
    ("Ready's message", Effect::Ignored, |j| {
        set_condition(j, "Ready", "message", "still ready".into())
    }),
    ("Ready's reason", Effect::Ignored, |j| {
        set_condition(j, "Ready", "reason", "StillReady".into())
    }),
    ("a finalizer", Effect::Ignored, |j| {
        j["metadata"]["finalizers"] = json!(["example.com/f"])
    }),
    ("a label no reading keeps", Effect::Hashed, |j| {
        j["metadata"]["labels"]["team"] = "a".into()
    }),
    ("the hostname address", Effect::Hashed, |j| {
        for a in j["status"]["addresses"].as_array_mut().expect("addresses") {
            if a["type"] == "Hostname" {
                a["address"] = "renamed".into();
            }
        }
    }),
    ("Ready", Effect::Kept, |j| {
        set_condition(j, "Ready", "status", "False".into())
    }),
    ("Ready's transition time", Effect::Kept, |j| {
        set_condition(j, "Ready", "lastTransitionTime", LATER.into())
    }),
    ("a kept label", Effect::Kept, |j| {
        j["metadata"]["labels"]["topology.kubernetes.io/zone"] = "elsewhere".into()
    }),
    ("a taint", Effect::Kept, |j| {
        j["spec"]["taints"] = json!([{"key": "k", "effect": "NoSchedule"}])
    }),
    ("a cordon", Effect::Kept, |j| {
        j["spec"]["unschedulable"] = true.into()
    }),
    ("allocatable", Effect::Kept, |j| {
        j["status"]["allocatable"]["pods"] = "111".into()
    }),
    ("capacity", Effect::Kept, |j| {
        j["status"]["capacity"]["cpu"] = "97".into()
    }),
    ("a deletion", Effect::Kept, |j| {
        j["metadata"]["deletionTimestamp"] = LATER.into()
    }),
    ("the uid", Effect::Kept, |j| {
        j["metadata"]["uid"] = "another".into()
    }),
    ("the kubelet version", Effect::Kept, |j| {
        j["status"]["nodeInfo"]["kubeletVersion"] = "v9.9.9".into()
    }),
    ("the internal IP", Effect::Kept, |j| {
        for a in j["status"]["addresses"].as_array_mut().expect("addresses") {
            if a["type"] == "InternalIP" {
                a["address"] = "10.9.9.9".into();
            }
        }
    }),
    ("the pod CIDR", Effect::Kept, |j| {
        j["spec"]["podCIDR"] = "10.200.0.0/24".into()
    }),
    ("a new condition", Effect::Kept, |j| {
        j["status"]["conditions"]
            .as_array_mut()
            .expect("conditions")
            .push(json!({
                "type": "KernelDeadlock", "status": "False", "lastHeartbeatTime": NOW,
                "lastTransitionTime": NOW, "reason": "KernelHasNoDeadlock", "message": "ok"
            }))
    }),
];

fn base(i: usize) -> Value {
    let mut j = crate::fake::generated_node(i, 10, NOW);
    j["metadata"]["labels"]["topology.kubernetes.io/zone"] = "z1".into();
    j
}

/// The node as the watch stores it, decoded from its protobuf.
fn stored(message: &[u8]) -> Node {
    let body = proto::envelope::encode::envelope("v1", "Node", message.to_vec());
    let proto::Decoded::Node(mut node) = proto::decode_object(&body).expect("decodes") else {
        panic!("a node");
    };
    strip(&mut node, &|k| k.starts_with("topology.kubernetes.io/"));
    condition_changes::take_details(&mut node);
    *node
}

fn fingerprint(message: &[u8]) -> Fingerprint {
    of_node(message).expect("a fingerprint").1
}

/// The fingerprint of the node's JSON, as the JSON path reads it.
fn json_fingerprint(node: &Value) -> Fingerprint {
    crate::cluster::json::of_node(&serde_json::to_vec(node).expect("serializes")).expect("a fingerprint")
}

#[test]
fn each_mutation_has_the_effect_on_record() {
    let before = crate::fake::protobuf::node_message(&base(3));
    for (what, effect, mutate) in MUTATIONS {
        let mut j = base(3);
        mutate(&mut j);
        let after = crate::fake::protobuf::node_message(&j);
        assert_ne!(before, after, "{what}: the mutation changes the bytes");
        let same_print = fingerprint(&before) == fingerprint(&after);
        let same_content = stored(&before).same_content(&stored(&after));
        assert_eq!(same_print, *effect == Effect::Ignored, "{what}: fingerprint");
        assert_eq!(same_content, *effect != Effect::Kept, "{what}: content");
        let same_json_print = json_fingerprint(&base(3)) == json_fingerprint(&j);
        assert_eq!(
            same_json_print,
            *effect == Effect::Ignored,
            "{what}: JSON fingerprint"
        );
    }
}

#[test]
fn a_fingerprint_names_its_node_and_version() {
    let message = crate::fake::protobuf::node_message(&base(3));
    let (rv, f) = of_node(&message).expect("a fingerprint");
    assert_eq!(rv, "10");
    let name = base(3)["metadata"]["name"].as_str().expect("a name").to_string();
    assert_eq!(f.name, name_key(&name));
    // And from a whole watch frame, as the watch reads it.
    let frame = proto::envelope::encode::watch_frame("MODIFIED", crate::fake::protobuf::node(&base(3)));
    let peeked = peek_update(&frame[4..]).expect("an update");
    assert_eq!((peeked.resource_version, peeked.fingerprint), ("10", f));
    for kind in ["DELETED", "BOOKMARK", "ERROR"] {
        let frame = proto::envelope::encode::watch_frame(kind, crate::fake::protobuf::node(&base(3)));
        assert_eq!(peek_update(&frame[4..]), None, "{kind}");
    }
    // A JSON line, `type` first as the API server writes it, or last.
    let object = base(3);
    let json_print = json_fingerprint(&object);
    assert_eq!(json_print.name, f.name, "the same name key in both encodings");
    for line in [
        json!({"type": "MODIFIED", "object": object}).to_string(),
        format!(r#"{{"object":{object},"type":"ADDED"}}"#),
    ] {
        let peeked = crate::cluster::json::peek_update(line.as_bytes()).expect("an update");
        assert_eq!((peeked.resource_version, peeked.fingerprint), ("10", json_print));
    }
    for kind in ["DELETED", "BOOKMARK", "ERROR"] {
        let line = json!({"type": kind, "object": object}).to_string();
        assert_eq!(crate::cluster::json::peek_update(line.as_bytes()), None, "{kind}");
    }
    for broken in [
        &b"{"[..],
        b"",
        b"[1]",
        br#"{"type":"MODIFIED","object":{"metadata":[}}"#,
    ] {
        assert_eq!(crate::cluster::json::peek_update(broken), None);
    }
}

/// Every truncation of a node is either no fingerprint or one the full
/// decode agrees with: never a panic.
#[test]
fn truncated_bytes_give_no_fingerprint_or_a_sound_one() {
    let message = crate::fake::protobuf::node_message(&base(5));
    for cut in 0..message.len() {
        let _ = of_node(&message[..cut]);
    }
}

proptest! {
    /// Any set of mutations: the fingerprint is unchanged exactly when only
    /// ignored fields changed, and an unchanged fingerprint always means
    /// the store would find the same content (the fast path never drops a change).
    #[test]
    fn an_unchanged_fingerprint_is_unchanged_content(
        node in 0usize..500,
        picks in proptest::collection::vec(0..MUTATIONS.len(), 0..6),
    ) {
        let before = crate::fake::protobuf::node_message(&base(node));
        let mut j = base(node);
        for &p in &picks {
            (MUTATIONS[p].2)(&mut j);
        }
        let after = crate::fake::protobuf::node_message(&j);
        let same_print = fingerprint(&before) == fingerprint(&after);
        let same_content = stored(&before).same_content(&stored(&after));
        let ignored_only = picks.iter().all(|&p| MUTATIONS[p].1 == Effect::Ignored);
        prop_assert_eq!(same_print, ignored_only);
        prop_assert!(!same_print || same_content);
        // The JSON path: the same, against the node decoded from JSON.
        let same_json_print = json_fingerprint(&base(node)) == json_fingerprint(&j);
        let from_json = |v: &Value| {
            let mut n: Node = serde_json::from_value(v.clone()).expect("decodes");
            strip(&mut n, &|k| k.starts_with("topology.kubernetes.io/"));
            condition_changes::take_details(&mut n);
            n
        };
        prop_assert_eq!(same_json_print, ignored_only);
        prop_assert!(!same_json_print || from_json(&base(node)).same_content(&from_json(&j)));
    }
}

//! The protobuf path against the JSON path: real bytes from the Kubernetes
//! API machinery (tests/k8s-api-testdata), hand-built frames for what those
//! do not hold, and every way a body can be broken.

use std::path::PathBuf;

use super::{envelope::encode, *};
use crate::cluster::Node;
use envelope::WatchEvent;

const VERSIONS: [&str; 5] = ["HEAD", "v1.33.0", "v1.34.0", "v1.35.0", "v1.36.0"];

fn fixture(version: &str, file: &str) -> Vec<u8> {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "k8s-api-testdata",
        version,
        file,
    ]
    .iter()
    .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The same upstream Node, read from its JSON and from its protobuf, is the
/// same kept Node, at every API version on record.
#[test]
fn every_versions_node_decodes_the_same_from_json_and_protobuf() {
    for version in VERSIONS {
        let json: Node =
            serde_json::from_slice(&fixture(version, "core.v1.Node.json")).expect("the JSON decodes");
        let Decoded::Node(pb) =
            decode_object(&fixture(version, "core.v1.Node.pb")).expect("the protobuf decodes")
        else {
            panic!("{version}: not a Node");
        };
        assert_eq!(*pb, json, "{version}");
        // The fixture sets every field: make sure the comparison compared something.
        assert_eq!(pb.metadata.name.as_deref(), Some("nameValue"), "{version}");
        let status = pb.status.as_ref().expect("status");
        assert_eq!(status.conditions.as_ref().map(Vec::len), Some(1), "{version}");
        assert!(
            status
                .capacity
                .as_ref()
                .is_some_and(|c| c.get("capacityKey") == Some("0"))
        );
        let spec = pb.spec.as_ref().expect("spec");
        assert_eq!(spec.unschedulable, Some(true), "{version}");
        assert_eq!(spec.taints.as_ref().map(Vec::len), Some(1), "{version}");
        assert!(pb.metadata.creation_timestamp.is_some() && pb.metadata.deletion_timestamp.is_some());
    }
}

/// The upstream WatchEvent fixture is an envelope around a WatchEvent with a
/// JSON object of another kind: its type is read, and it is no Node event.
#[test]
fn the_upstream_watch_event_reads_its_type_and_is_refused_as_a_node_event() {
    for version in VERSIONS {
        let pb = fixture(version, "core.v1.WatchEvent.pb");
        let (_, raw) = envelope::tests_open(&pb).expect("an envelope");
        assert_eq!(
            decode_watch_event(&raw),
            Err(ProtoError::UnknownEventType("typeValue".into())),
            "{version}"
        );
    }
}

fn node_bytes(name: &str, ready: &str) -> Vec<u8> {
    use prost::Message as _;
    let node = slim::PbNode {
        metadata: Some(slim::PbObjectMeta {
            name: Some(name.into()),
            resource_version: Some("7".into()),
            ..Default::default()
        }),
        spec: Some(Default::default()),
        status: Some(slim::PbNodeStatus {
            conditions: vec![slim::PbNodeCondition {
                r#type: Some("Ready".into()),
                status: Some(ready.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    node.encode_to_vec()
}

fn ready_of(node: &Node) -> &str {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .expect("conditions")[0]
        .status
        .api()
}

#[test]
fn watch_frames_carry_every_event_type() {
    let node = |ready| encode::envelope("v1", "Node", node_bytes("a", ready));
    let body: Vec<u8> = [
        encode::watch_frame("ADDED", node("True")),
        encode::watch_frame("MODIFIED", node("False")),
        encode::watch_frame("BOOKMARK", encode::bookmark("12", false)),
        encode::watch_frame("BOOKMARK", encode::bookmark("13", true)),
        encode::watch_frame("DELETED", node("False")),
        encode::watch_frame(
            "ERROR",
            encode::status(410, "Expired", "too old resource version: 1 (13)"),
        ),
    ]
    .concat();
    let mut frames = Frames::default();
    frames.push(&body);
    let mut events = Vec::new();
    while let Some(f) = frames.next_frame().expect("frames") {
        events.push(decode_watch_event(&f).expect("an event"));
    }
    assert!(matches!(&events[0], WatchEvent::Added(n) if ready_of(n) == "True"));
    assert!(matches!(&events[1], WatchEvent::Modified(n) if ready_of(n) == "False"));
    assert_eq!(
        events[2],
        WatchEvent::Bookmark {
            resource_version: "12".into(),
            initial_events_end: false
        }
    );
    assert_eq!(
        events[3],
        WatchEvent::Bookmark {
            resource_version: "13".into(),
            initial_events_end: true
        }
    );
    assert!(matches!(&events[4], WatchEvent::Deleted(n) if n.metadata.name.as_deref() == Some("a")));
    assert!(matches!(&events[5], WatchEvent::Error(s) if s.code == 410 && s.reason == "Expired"));
}

#[test]
fn a_list_page_gives_its_nodes_version_and_continue_token() {
    let nodes = vec![node_bytes("a", "True"), node_bytes("b", "False")];
    let page = decode_list(&encode::node_list("42", "next", &nodes))
        .expect("decodes")
        .expect("a page");
    assert_eq!(page.resource_version, "42");
    assert_eq!(page.continue_token.as_deref(), Some("next"));
    let names: Vec<_> = page
        .items
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let last = decode_list(&encode::node_list("42", "", &nodes))
        .expect("decodes")
        .expect("a page");
    assert_eq!(last.continue_token, None, "the last page");
    let gone = decode_list(&encode::status(410, "Expired", "continue expired")).expect("decodes");
    assert!(matches!(gone, Err(s) if s.code == 410));
}

/// Every broken body is one error of its reason, never a panic or a node.
#[test]
fn broken_bodies_are_errors_with_a_reason() {
    let good = encode::envelope("v1", "Node", node_bytes("a", "True"));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "bad_magic"),
        ("JSON", br#"{"kind":"Node"}"#.to_vec(), "bad_magic"),
        (
            "another magic",
            [b"k8s\x01".as_slice(), &good[4..]].concat(),
            "bad_magic",
        ),
        ("truncated", good[..good.len() - 3].to_vec(), "undecodable_object"),
        (
            "garbage",
            [b"k8s\0".as_slice(), &[0xff; 20]].concat(),
            "undecodable_object",
        ),
        (
            "another kind",
            encode::envelope("v1", "Pod", node_bytes("a", "True")),
            "undecodable_object",
        ),
    ];
    for (what, body, reason) in cases {
        let err = decode_object(&body).expect_err(what);
        assert_eq!(err.reason(), reason, "{what}: {err}");
    }
    for (what, frame) in [
        ("no type", encode::watch_frame("", good.clone())),
        ("unknown type", encode::watch_frame("RENAMED", good.clone())),
        (
            "an error that is a node",
            encode::watch_frame("ERROR", good.clone()),
        ),
        (
            "a node that is an error",
            encode::watch_frame("ADDED", encode::status(500, "x", "y")),
        ),
        (
            "a bare node",
            encode::watch_frame("ADDED", node_bytes("a", "True")),
        ),
    ] {
        assert!(decode_watch_event(&frame[4..]).is_err(), "{what}");
    }
}

/// Truncations at every byte of a real Node never panic, and a prefix is never taken for the Node.
#[test]
fn every_truncation_of_a_real_node_is_refused_or_partial_never_a_panic() {
    let body = fixture("v1.36.0", "core.v1.Node.pb");
    let whole = decode_object(&body).expect("decodes");
    // The envelope ends with its empty content encoding and type (`1a 00 22 00`), which nothing reads.
    assert!(body.ends_with(&[0x1a, 0, 0x22, 0]));
    for end in 0..body.len() - 4 {
        if let Ok(got) = decode_object(&body[..end]) {
            assert_ne!(got, whole, "a prefix of {end} bytes read as the whole node");
        }
    }
}

/// The upstream API machinery's Lease, every field set, in JSON and in
/// protobuf, for each version: both paths keep the same Lease, and its
/// renewTime to the microsecond.
#[test]
fn the_upstream_lease_decodes_the_same_in_both_encodings() {
    use crate::cluster::NodeLease;
    let renewed = "2004-01-01T01:01:01.000004Z"
        .parse::<k8s_openapi::jiff::Timestamp>()
        .expect("a time")
        .as_microsecond();
    for version in VERSIONS {
        let json: NodeLease = serde_json::from_slice(&fixture(version, "coordination.k8s.io.v1.Lease.json"))
            .expect("a JSON Lease");
        let (kind, raw) =
            envelope::tests_open(&fixture(version, "coordination.k8s.io.v1.Lease.pb")).expect("an envelope");
        assert_eq!(kind, "Lease", "{version}");
        let pb = NodeLease::decode_raw(raw).expect("a protobuf Lease");
        assert_eq!(pb, json, "{version}");
        assert_eq!(
            (pb.name.as_deref(), pb.renew_us, pb.duration_s),
            (Some("nameValue"), Some(renewed), Some(2)),
            "{version}"
        );
        assert_eq!(pb.holder.as_deref(), Some("holderIdentityValue"), "{version}");
    }
}

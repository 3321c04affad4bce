//! Random Nodes encoded with k8s-pb's full generated types (every field of
//! `core.v1.Node`, the ones the slim decoder skips too) and, from the same
//! description, as the API server's JSON: both paths decode the same Node.
//!
//! Each field is written as the Go API server writes it: in protobuf every
//! non-pointer field even when empty, in JSON only what `omitempty` keeps.
//! Replay a failure with the seed proptest prints (`PROPTEST_...`) or the
//! case it saves under `proptest-regressions/`.

use std::collections::BTreeMap;

use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{Map, Value, json};

use super::{Decoded, decode_object, envelope::encode, fingerprint};
use crate::cluster::Node;

/// A condition: type, status, heartbeat, transition, reason, message.
type Condition = (String, String, i64, i64, String, String);

/// One random Node, as plain values.
#[derive(Clone, Debug)]
struct Desc {
    name: String,
    uid: String,
    generation: i64,
    created: i64,
    deleted: Option<i64>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    managers: Vec<(String, i64)>,
    unschedulable: bool,
    taints: Vec<(String, String, String, Option<i64>)>,
    provider_id: String,
    pod_cidrs: Vec<String>,
    capacity: BTreeMap<String, String>,
    allocatable: BTreeMap<String, String>,
    conditions: Vec<Condition>,
    addresses: Vec<(String, String)>,
    info: [String; 7],
    images: Vec<(Vec<String>, i64)>,
    volumes: Vec<String>,
}

fn word() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9.-]{0,14}"
}

/// Empty half the time: empty values are where the two encodings differ.
fn maybe_word() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), word()]
}

/// Whole seconds from 1970 to 2100 (`Time` has no finer grain on the wire).
fn seconds() -> impl Strategy<Value = i64> {
    0i64..4_102_444_800
}

fn quantity() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..512).prop_map(|n| n.to_string()),
        (1u32..65536).prop_map(|n| format!("{n}Mi")),
        (1u32..4000).prop_map(|n| format!("{n}m")),
    ]
}

fn resources() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        prop_oneof![
            Just("cpu".to_string()),
            Just("memory".to_string()),
            Just("pods".to_string()),
            Just("nvidia.com/gpu".to_string()),
            Just("ephemeral-storage".to_string()),
        ],
        quantity(),
        0..4,
    )
}

fn desc() -> impl Strategy<Value = Desc> {
    let condition = (
        prop_oneof![
            Just("Ready"),
            Just("MemoryPressure"),
            Just("DiskPressure"),
            Just("KernelDeadlock")
        ],
        prop_oneof![Just("True"), Just("False"), Just("Unknown")],
        seconds(),
        seconds(),
        maybe_word(),
        maybe_word(),
    )
        .prop_map(|(t, s, hb, tr, r, m)| (t.to_string(), s.to_string(), hb, tr, r, m));
    let meta = (
        word(),
        maybe_word(),
        0i64..5,
        seconds(),
        proptest::option::of(seconds()),
        proptest::collection::btree_map(
            prop_oneof![word(), Just("topology.kubernetes.io/zone".to_string())],
            maybe_word(),
            0..4,
        ),
        proptest::collection::btree_map(word(), maybe_word(), 0..3),
        proptest::collection::vec((word(), seconds()), 0..3),
    );
    let spec = (
        any::<bool>(),
        proptest::collection::vec(
            (
                word(),
                maybe_word(),
                prop_oneof![Just("NoSchedule"), Just("NoExecute"), Just("PreferNoSchedule")],
                proptest::option::of(seconds()),
            )
                .prop_map(|(k, v, e, t)| (k, v, e.to_string(), t)),
            0..3,
        ),
        maybe_word(),
        proptest::collection::vec(word(), 0..3),
    );
    let status = (
        resources(),
        resources(),
        proptest::collection::vec(condition, 0..5),
        proptest::collection::vec(
            (
                prop_oneof![Just("InternalIP"), Just("ExternalIP"), Just("Hostname")],
                word(),
            )
                .prop_map(|(t, a)| (t.to_string(), a)),
            0..3,
        ),
        proptest::array::uniform7(maybe_word()),
        proptest::collection::vec((proptest::collection::vec(word(), 1..3), 0i64..1 << 40), 0..3),
        proptest::collection::vec(word(), 0..3),
    );
    (meta, spec, status).prop_map(
        |(
            (name, uid, generation, created, deleted, labels, annotations, managers),
            (unschedulable, taints, provider_id, pod_cidrs),
            (capacity, allocatable, conditions, addresses, info, images, volumes),
        )| Desc {
            name,
            uid,
            generation,
            created,
            deleted,
            labels,
            annotations,
            managers,
            unschedulable,
            taints,
            provider_id,
            pod_cidrs,
            capacity,
            allocatable,
            conditions,
            addresses,
            info,
            images,
            volumes,
        },
    )
}

fn time(seconds: i64) -> Option<meta::Time> {
    Some(meta::Time {
        seconds: Some(seconds),
        nanos: Some(0),
    })
}

fn rfc3339(seconds: i64) -> Value {
    let t = k8s_openapi::jiff::Timestamp::from_second(seconds).expect("in range");
    Value::String(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn quantities(map: &BTreeMap<String, String>) -> BTreeMap<String, Quantity> {
    map.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Quantity {
                    string: Some(v.clone()),
                },
            )
        })
        .collect()
}

/// The node as k8s-pb's full types, every non-pointer field written.
fn protobuf(d: &Desc) -> Vec<u8> {
    let info = |i: usize| Some(d.info[i].clone());
    let node = pb::Node {
        metadata: Some(meta::ObjectMeta {
            name: Some(d.name.clone()),
            generate_name: Some(String::new()),
            namespace: Some(String::new()),
            self_link: Some(String::new()),
            uid: Some(d.uid.clone()),
            resource_version: Some("42".into()),
            generation: Some(d.generation),
            creation_timestamp: time(d.created),
            deletion_timestamp: d.deleted.and_then(time),
            deletion_grace_period_seconds: d.deleted.map(|_| 30),
            labels: d.labels.clone(),
            annotations: d.annotations.clone(),
            owner_references: Vec::new(),
            finalizers: Vec::new(),
            managed_fields: d
                .managers
                .iter()
                .map(|(manager, at)| meta::ManagedFieldsEntry {
                    manager: Some(manager.clone()),
                    operation: Some("Update".into()),
                    api_version: Some("v1".into()),
                    time: time(*at),
                    fields_type: Some("FieldsV1".into()),
                    fields_v1: Some(meta::FieldsV1 {
                        raw: Some(br#"{"f:status":{"f:conditions":{}}}"#.to_vec()),
                    }),
                    subresource: Some("status".into()),
                })
                .collect(),
        }),
        spec: Some(pb::NodeSpec {
            pod_cidr: Some(d.pod_cidrs.first().cloned().unwrap_or_default()),
            pod_cid_rs: d.pod_cidrs.clone(),
            provider_id: Some(d.provider_id.clone()),
            unschedulable: Some(d.unschedulable),
            taints: d
                .taints
                .iter()
                .map(|(k, v, e, t)| pb::Taint {
                    key: Some(k.clone()),
                    value: Some(v.clone()),
                    effect: Some(e.clone()),
                    time_added: t.and_then(time),
                })
                .collect(),
            config_source: None,
            external_id: Some(String::new()),
        }),
        status: Some(pb::NodeStatus {
            capacity: quantities(&d.capacity),
            allocatable: quantities(&d.allocatable),
            phase: Some(String::new()),
            conditions: d
                .conditions
                .iter()
                .map(|(t, s, hb, tr, r, m)| pb::NodeCondition {
                    r#type: Some(t.clone()),
                    status: Some(s.clone()),
                    last_heartbeat_time: time(*hb),
                    last_transition_time: time(*tr),
                    reason: Some(r.clone()),
                    message: Some(m.clone()),
                })
                .collect(),
            addresses: d
                .addresses
                .iter()
                .map(|(t, a)| pb::NodeAddress {
                    r#type: Some(t.clone()),
                    address: Some(a.clone()),
                })
                .collect(),
            daemon_endpoints: Some(pb::NodeDaemonEndpoints {
                kubelet_endpoint: Some(pb::DaemonEndpoint { port: Some(10250) }),
            }),
            node_info: Some(pb::NodeSystemInfo {
                machine_id: Some("m".into()),
                system_uuid: info(0),
                boot_id: Some("b".into()),
                kernel_version: info(1),
                os_image: info(2),
                container_runtime_version: info(3),
                kubelet_version: info(4),
                kube_proxy_version: info(5),
                operating_system: Some("linux".into()),
                architecture: info(6),
                swap: None,
            }),
            images: d
                .images
                .iter()
                .map(|(names, size)| pb::ContainerImage {
                    names: names.clone(),
                    size_bytes: Some(*size),
                })
                .collect(),
            volumes_in_use: d.volumes.clone(),
            volumes_attached: d
                .volumes
                .iter()
                .map(|v| pb::AttachedVolume {
                    name: Some(v.clone()),
                    device_path: Some(String::new()),
                })
                .collect(),
            config: None,
            runtime_handlers: Vec::new(),
            features: None,
            declared_features: Vec::new(),
        }),
    };
    encode::envelope("v1", "Node", node.encode_to_vec())
}

/// Sets `key` unless `value` is what `omitempty` leaves out.
fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Null => true,
    };
    if !empty {
        map.insert(key.into(), value);
    }
}

/// The same node as the API server's JSON.
fn json(d: &Desc) -> Vec<u8> {
    let mut metadata = Map::new();
    put(&mut metadata, "name", json!(d.name));
    put(&mut metadata, "uid", json!(d.uid));
    put(&mut metadata, "resourceVersion", json!("42"));
    put(&mut metadata, "generation", json!(d.generation));
    metadata.insert("creationTimestamp".into(), rfc3339(d.created));
    if let Some(at) = d.deleted {
        metadata.insert("deletionTimestamp".into(), rfc3339(at));
        metadata.insert("deletionGracePeriodSeconds".into(), json!(30));
    }
    put(&mut metadata, "labels", json!(d.labels));
    put(&mut metadata, "annotations", json!(d.annotations));
    let managed: Vec<Value> = d
        .managers
        .iter()
        .map(|(manager, at)| {
            json!({"manager": manager, "operation": "Update", "apiVersion": "v1", "time": rfc3339(*at),
                   "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}}}, "subresource": "status"})
        })
        .collect();
    put(&mut metadata, "managedFields", json!(managed));
    let mut spec = Map::new();
    put(
        &mut spec,
        "podCIDR",
        json!(d.pod_cidrs.first().cloned().unwrap_or_default()),
    );
    put(&mut spec, "podCIDRs", json!(d.pod_cidrs));
    put(&mut spec, "providerID", json!(d.provider_id));
    put(&mut spec, "unschedulable", json!(d.unschedulable));
    let taints: Vec<Value> = d
        .taints
        .iter()
        .map(|(k, v, e, t)| {
            let mut taint = Map::new();
            put(&mut taint, "key", json!(k));
            put(&mut taint, "value", json!(v));
            put(&mut taint, "effect", json!(e));
            if let Some(t) = t {
                taint.insert("timeAdded".into(), rfc3339(*t));
            }
            Value::Object(taint)
        })
        .collect();
    put(&mut spec, "taints", json!(taints));
    let mut status = Map::new();
    put(&mut status, "capacity", json!(d.capacity));
    put(&mut status, "allocatable", json!(d.allocatable));
    let conditions: Vec<Value> = d
        .conditions
        .iter()
        .map(|(t, s, hb, tr, r, m)| {
            let mut c = Map::new();
            put(&mut c, "type", json!(t));
            put(&mut c, "status", json!(s));
            c.insert("lastHeartbeatTime".into(), rfc3339(*hb));
            c.insert("lastTransitionTime".into(), rfc3339(*tr));
            put(&mut c, "reason", json!(r));
            put(&mut c, "message", json!(m));
            Value::Object(c)
        })
        .collect();
    put(&mut status, "conditions", json!(conditions));
    let addresses: Vec<Value> = d
        .addresses
        .iter()
        .map(|(t, a)| json!({"type": t, "address": a}))
        .collect();
    put(&mut status, "addresses", json!(addresses));
    status.insert(
        "daemonEndpoints".into(),
        json!({"kubeletEndpoint": {"Port": 10250}}),
    );
    // NodeSystemInfo's fields have no omitempty: all written.
    let i = &d.info;
    status.insert(
        "nodeInfo".into(),
        json!({"machineID": "m", "systemUUID": i[0], "bootID": "b", "kernelVersion": i[1], "osImage": i[2],
               "containerRuntimeVersion": i[3], "kubeletVersion": i[4], "kubeProxyVersion": i[5],
               "operatingSystem": "linux", "architecture": i[6]}),
    );
    let images: Vec<Value> = d
        .images
        .iter()
        .map(|(names, size)| json!({"names": names, "sizeBytes": size}))
        .collect();
    put(&mut status, "images", json!(images));
    put(&mut status, "volumesInUse", json!(d.volumes));
    let attached: Vec<Value> = d
        .volumes
        .iter()
        .map(|v| json!({"name": v, "devicePath": ""}))
        .collect();
    put(&mut status, "volumesAttached", json!(attached));
    serde_json::to_vec(
        &json!({"kind": "Node", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status}),
    )
    .expect("serializes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Both paths give the same kept Node, and the protobuf bytes have a
    /// fingerprint that names it.
    #[test]
    fn random_nodes_decode_the_same_from_k8s_pb_bytes_and_from_json(d in desc()) {
        let Decoded::Node(from_protobuf) = decode_object(&protobuf(&d)).expect("the protobuf decodes") else {
            panic!("not a Node");
        };
        let from_json: Node = serde_json::from_slice(&json(&d)).expect("the JSON decodes");
        prop_assert_eq!(&*from_protobuf, &from_json);
        let body = protobuf(&d);
        let (_, raw) = super::envelope::tests_open(&body).expect("an envelope");
        let (rv, f) = fingerprint::of_node(&raw).expect("a fingerprint");
        prop_assert_eq!(rv, "42");
        prop_assert_eq!(f.name, fingerprint::name_key(&d.name));
    }

    /// A re-post (new heartbeat times, images, volumes, managed fields,
    /// annotations, messages) of a k8s-pb node keeps its fingerprint, in
    /// both encodings; a new condition status does not.
    #[test]
    fn a_k8s_pb_re_post_keeps_its_fingerprint(d in desc(), later in seconds()) {
        let print = |d: &Desc| {
            let body = protobuf(d);
            let (_, raw) = super::envelope::tests_open(&body).expect("an envelope");
            fingerprint::of_node(&raw).expect("a fingerprint").1
        };
        let mut re_post = d.clone();
        for c in &mut re_post.conditions {
            c.2 = later;
            c.4.push('x');
            c.5.push('y');
        }
        re_post.images.push((vec!["registry/new:1".into()], 7));
        re_post.volumes.push("kubernetes.io/csi/pd^new".into());
        re_post.managers.push(("kubelet".into(), later));
        re_post.annotations.insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
        let json_print = |d: &Desc| crate::cluster::json::of_node(&json(d)).expect("a JSON fingerprint");
        prop_assert_eq!(print(&d), print(&re_post));
        prop_assert_eq!(json_print(&d), json_print(&re_post));
        if let Some(c) = re_post.conditions.first_mut() {
            c.1 = if c.1 == "True" { "False".into() } else { "True".into() };
            prop_assert_ne!(print(&d), print(&re_post));
            prop_assert_ne!(json_print(&d), json_print(&re_post));
        }
    }
}

//! The fake API server's protobuf: JSON objects transcoded to the bytes the
//! real API server writes for `application/vnd.kubernetes.protobuf`, field by
//! field from the upstream tags (k8s.io/api core/v1 and coordination/v1,
//! apimachinery meta/v1 `generated.proto`). Fields are written in tag order
//! and map entries sorted by key, as Go's generated marshallers do, so an
//! upstream fixture's JSON transcodes to its `.pb` byte for byte
//! (`tests/k8s-api-testdata`). JSON keys not in the schema are left out.

use prost::encoding::{WireType, encode_key, encode_varint};
use serde_json::Value;

pub use crate::cluster::proto::envelope::encode::{
    bookmark, bookmark_of, envelope, list_of, node_list, status, watch_frame,
};

/// How a field's JSON value is written.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    /// `meta.v1.Time`: RFC 3339, written as whole seconds.
    Time,
    /// `meta.v1.MicroTime`: seconds and nanoseconds, to the microsecond.
    MicroTime,
    /// A `map<string, string>`.
    MapStr,
    /// A `map<string, resource.Quantity>`.
    MapQuantity,
    /// `FieldsV1`: the JSON itself as raw bytes.
    RawJson,
    Msg(&'static [Field]),
}

/// One field: its JSON name, tag and type; `rep` for a repeated field.
#[derive(Clone, Copy)]
struct Field(&'static str, u32, Ty, bool);

const fn one(json: &'static str, tag: u32, ty: Ty) -> Field {
    Field(json, tag, ty, false)
}

const fn rep(json: &'static str, tag: u32, ty: Ty) -> Field {
    Field(json, tag, ty, true)
}

use Ty::*;

const OWNER_REFERENCE: &[Field] = &[
    one("kind", 1, Str),
    one("name", 3, Str),
    one("uid", 4, Str),
    one("apiVersion", 5, Str),
    one("controller", 6, Bool),
    one("blockOwnerDeletion", 7, Bool),
];
const FIELDS_V1: &[Field] = &[one("", 1, RawJson)];
const MANAGED_FIELDS: &[Field] = &[
    one("manager", 1, Str),
    one("operation", 2, Str),
    one("apiVersion", 3, Str),
    one("time", 4, Time),
    one("fieldsType", 6, Str),
    one("fieldsV1", 7, Msg(FIELDS_V1)),
    one("subresource", 8, Str),
];
const OBJECT_META: &[Field] = &[
    one("name", 1, Str),
    one("generateName", 2, Str),
    one("namespace", 3, Str),
    one("selfLink", 4, Str),
    one("uid", 5, Str),
    one("resourceVersion", 6, Str),
    one("generation", 7, Int),
    one("creationTimestamp", 8, Time),
    one("deletionTimestamp", 9, Time),
    one("deletionGracePeriodSeconds", 10, Int),
    one("labels", 11, MapStr),
    one("annotations", 12, MapStr),
    rep("ownerReferences", 13, Msg(OWNER_REFERENCE)),
    rep("finalizers", 14, Str),
    rep("managedFields", 17, Msg(MANAGED_FIELDS)),
];
const TAINT: &[Field] = &[
    one("key", 1, Str),
    one("value", 2, Str),
    one("effect", 3, Str),
    one("timeAdded", 4, Time),
];
const CONFIG_MAP_SOURCE: &[Field] = &[
    one("namespace", 1, Str),
    one("name", 2, Str),
    one("uid", 3, Str),
    one("resourceVersion", 4, Str),
    one("kubeletConfigKey", 5, Str),
];
const CONFIG_SOURCE: &[Field] = &[one("configMap", 2, Msg(CONFIG_MAP_SOURCE))];
const PREEMPTION_POLICY: &[Field] = &[rep("disableResizePreemption", 1, Str)];
const NODE_SPEC: &[Field] = &[
    one("podCIDR", 1, Str),
    one("externalID", 2, Str),
    one("providerID", 3, Str),
    one("unschedulable", 4, Bool),
    rep("taints", 5, Msg(TAINT)),
    one("configSource", 6, Msg(CONFIG_SOURCE)),
    rep("podCIDRs", 7, Str),
    one("podPreemptionPolicy", 8, Msg(PREEMPTION_POLICY)),
];
const CONDITION: &[Field] = &[
    one("type", 1, Str),
    one("status", 2, Str),
    one("lastHeartbeatTime", 3, Time),
    one("lastTransitionTime", 4, Time),
    one("reason", 5, Str),
    one("message", 6, Str),
];
const ADDRESS: &[Field] = &[one("type", 1, Str), one("address", 2, Str)];
const DAEMON_ENDPOINT: &[Field] = &[one("Port", 1, Int)];
const DAEMON_ENDPOINTS: &[Field] = &[one("kubeletEndpoint", 1, Msg(DAEMON_ENDPOINT))];
const SWAP: &[Field] = &[one("capacity", 1, Int)];
const SYSTEM_INFO: &[Field] = &[
    one("machineID", 1, Str),
    one("systemUUID", 2, Str),
    one("bootID", 3, Str),
    one("kernelVersion", 4, Str),
    one("osImage", 5, Str),
    one("containerRuntimeVersion", 6, Str),
    one("kubeletVersion", 7, Str),
    one("kubeProxyVersion", 8, Str),
    one("operatingSystem", 9, Str),
    one("architecture", 10, Str),
    one("swap", 11, Msg(SWAP)),
];
const IMAGE: &[Field] = &[rep("names", 1, Str), one("sizeBytes", 2, Int)];
const ATTACHED_VOLUME: &[Field] = &[one("name", 1, Str), one("devicePath", 2, Str)];
const CONFIG_STATUS: &[Field] = &[
    one("assigned", 1, Msg(CONFIG_SOURCE)),
    one("active", 2, Msg(CONFIG_SOURCE)),
    one("lastKnownGood", 3, Msg(CONFIG_SOURCE)),
    one("error", 4, Str),
];
const HANDLER_FEATURES: &[Field] = &[
    one("recursiveReadOnlyMounts", 1, Bool),
    one("userNamespaces", 2, Bool),
];
const RUNTIME_HANDLER: &[Field] = &[one("name", 1, Str), one("features", 2, Msg(HANDLER_FEATURES))];
const NODE_FEATURES: &[Field] = &[one("supplementalGroupsPolicy", 1, Bool)];
const NODE_STATUS: &[Field] = &[
    one("capacity", 1, MapQuantity),
    one("allocatable", 2, MapQuantity),
    one("phase", 3, Str),
    rep("conditions", 4, Msg(CONDITION)),
    rep("addresses", 5, Msg(ADDRESS)),
    one("daemonEndpoints", 6, Msg(DAEMON_ENDPOINTS)),
    one("nodeInfo", 7, Msg(SYSTEM_INFO)),
    rep("images", 8, Msg(IMAGE)),
    rep("volumesInUse", 9, Str),
    rep("volumesAttached", 10, Msg(ATTACHED_VOLUME)),
    one("config", 11, Msg(CONFIG_STATUS)),
    rep("runtimeHandlers", 12, Msg(RUNTIME_HANDLER)),
    one("features", 13, Msg(NODE_FEATURES)),
    rep("declaredFeatures", 14, Str),
];
const NODE: &[Field] = &[
    one("metadata", 1, Msg(OBJECT_META)),
    one("spec", 2, Msg(NODE_SPEC)),
    one("status", 3, Msg(NODE_STATUS)),
];
const LEASE_SPEC: &[Field] = &[
    one("holderIdentity", 1, Str),
    one("leaseDurationSeconds", 2, Int),
    one("acquireTime", 3, MicroTime),
    one("renewTime", 4, MicroTime),
    one("leaseTransitions", 5, Int),
    one("strategy", 6, Str),
    one("preferredHolder", 7, Str),
];
const LEASE: &[Field] = &[
    one("metadata", 1, Msg(OBJECT_META)),
    one("spec", 2, Msg(LEASE_SPEC)),
];

/// A Node's JSON as its protobuf message (no envelope).
pub fn node_message(node: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    message(NODE, node, &mut out);
    out
}

/// A Node's JSON as a protobuf object body: `k8s\0` and the envelope.
pub fn node(node: &Value) -> Vec<u8> {
    envelope("v1", "Node", node_message(node))
}

/// A Lease's JSON as its protobuf message (no envelope).
pub fn lease_message(lease: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    message(LEASE, lease, &mut out);
    out
}

/// A Lease's JSON as a protobuf object body.
pub fn lease(lease: &Value) -> Vec<u8> {
    envelope("coordination.k8s.io/v1", "Lease", lease_message(lease))
}

fn len_delimited(tag: u32, body: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

fn message(fields: &[Field], value: &Value, out: &mut Vec<u8>) {
    for &Field(name, tag, ty, repeated) in fields {
        // FieldsV1 is the JSON value itself.
        let v = if name.is_empty() {
            Some(value)
        } else {
            value.get(name)
        };
        let Some(v) = v.filter(|v| !v.is_null()) else {
            continue;
        };
        if repeated {
            for item in v.as_array().into_iter().flatten() {
                scalar(tag, ty, item, out);
            }
        } else {
            scalar(tag, ty, v, out);
        }
    }
}

fn timestamp(tag: u32, seconds: i64, nanos: i32, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(12);
    encode_key(1, WireType::Varint, &mut body);
    encode_varint(seconds as u64, &mut body);
    encode_key(2, WireType::Varint, &mut body);
    encode_varint(nanos as i64 as u64, &mut body);
    len_delimited(tag, &body, out);
}

fn scalar(tag: u32, ty: Ty, v: &Value, out: &mut Vec<u8>) {
    match ty {
        Str => len_delimited(tag, v.as_str().unwrap_or_default().as_bytes(), out),
        Int => {
            encode_key(tag, WireType::Varint, out);
            encode_varint(v.as_i64().unwrap_or_default() as u64, out);
        }
        Bool => {
            encode_key(tag, WireType::Varint, out);
            encode_varint(u64::from(v.as_bool().unwrap_or_default()), out);
        }
        Time | MicroTime => {
            let Some(t) = v
                .as_str()
                .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
            else {
                return;
            };
            let nanos = match ty {
                MicroTime => t.subsec_nanosecond() / 1000 * 1000,
                _ => 0,
            };
            timestamp(tag, t.as_second(), nanos, out);
        }
        MapStr | MapQuantity => {
            // Go's marshallers write map entries sorted by key.
            let mut entries: Vec<_> = v.as_object().into_iter().flatten().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, val) in entries {
                let mut entry = Vec::new();
                len_delimited(1, k.as_bytes(), &mut entry);
                let s = val.as_str().unwrap_or_default().as_bytes();
                if matches!(ty, MapQuantity) {
                    let mut quantity = Vec::new();
                    len_delimited(1, s, &mut quantity);
                    len_delimited(2, &quantity, &mut entry);
                } else {
                    len_delimited(2, s, &mut entry);
                }
                len_delimited(tag, &entry, out);
            }
        }
        RawJson => len_delimited(tag, v.to_string().as_bytes(), out),
        Msg(fields) => {
            let mut body = Vec::new();
            message(fields, v, &mut body);
            len_delimited(tag, &body, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(version: &str, file: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/k8s-api-testdata/{version}/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The upstream Node and Lease, every field set, transcode from their
    /// JSON to their protobuf byte for byte: the fake server writes what the
    /// API server writes.
    #[test]
    fn upstream_json_transcodes_to_upstream_protobuf_byte_for_byte() {
        for version in ["HEAD", "v1.33.0", "v1.34.0", "v1.35.0", "v1.36.0"] {
            let json: Value = serde_json::from_slice(&fixture(version, "core.v1.Node.json")).expect("JSON");
            assert_eq!(node(&json), fixture(version, "core.v1.Node.pb"), "{version} Node");
            let json: Value =
                serde_json::from_slice(&fixture(version, "coordination.k8s.io.v1.Lease.json")).expect("JSON");
            assert_eq!(
                lease(&json),
                fixture(version, "coordination.k8s.io.v1.Lease.pb"),
                "{version} Lease"
            );
        }
    }
}

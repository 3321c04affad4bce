//! The fields of a protobuf Node that readings read, as prost messages with
//! the upstream tags (k8s.io/api core/v1 and apimachinery meta/v1
//! `generated.proto`); every other field is skipped by prost unread.
//!
//! The Go encoder writes every non-pointer field even when empty (`""`,
//! `0`, `false`, an empty `Time`), where JSON leaves it out, so the
//! conversion to [`Node`] reads an empty value as absent: both encodings
//! then give the same node.

use std::collections::BTreeMap;

use compact_str::CompactString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::cluster::node::{
    ConditionStatus, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, NodeVersions,
    ResourceList, Taint,
};

/// `core.v1.Node`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbNode {
    /// `metadata`.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PbObjectMeta>,
    /// `spec`.
    #[prost(message, optional, tag = "2")]
    pub spec: Option<PbNodeSpec>,
    /// `status`.
    #[prost(message, optional, tag = "3")]
    pub status: Option<PbNodeStatus>,
}

/// `meta.v1.ObjectMeta`, without annotations (12), owner references (13),
/// finalizers (14) and managed fields (17).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbObjectMeta {
    /// `name`.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// `namespace`.
    #[prost(string, optional, tag = "3")]
    pub namespace: Option<String>,
    /// `uid`.
    #[prost(string, optional, tag = "5")]
    pub uid: Option<String>,
    /// `resourceVersion`.
    #[prost(string, optional, tag = "6")]
    pub resource_version: Option<String>,
    /// `generation`.
    #[prost(int64, optional, tag = "7")]
    pub generation: Option<i64>,
    /// `creationTimestamp`.
    #[prost(message, optional, tag = "8")]
    pub creation_timestamp: Option<PbTime>,
    /// `deletionTimestamp`.
    #[prost(message, optional, tag = "9")]
    pub deletion_timestamp: Option<PbTime>,
    /// `deletionGracePeriodSeconds`.
    #[prost(int64, optional, tag = "10")]
    pub deletion_grace_period_seconds: Option<i64>,
    /// `labels`.
    #[prost(btree_map = "string, string", tag = "11")]
    pub labels: BTreeMap<String, String>,
}

/// `meta.v1.Time`: seconds (the API never sends nanoseconds for it).
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct PbTime {
    /// Seconds since the epoch.
    #[prost(int64, optional, tag = "1")]
    pub seconds: Option<i64>,
    /// Nanoseconds (0 from the API: `Time` is whole seconds).
    #[prost(int32, optional, tag = "2")]
    pub nanos: Option<i32>,
}

/// `core.v1.NodeSpec`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbNodeSpec {
    /// `podCIDR`.
    #[prost(string, optional, tag = "1")]
    pub pod_cidr: Option<String>,
    /// `providerID`.
    #[prost(string, optional, tag = "3")]
    pub provider_id: Option<String>,
    /// `unschedulable`.
    #[prost(bool, optional, tag = "4")]
    pub unschedulable: Option<bool>,
    /// `taints`.
    #[prost(message, repeated, tag = "5")]
    pub taints: Vec<PbTaint>,
    /// `podCIDRs`.
    #[prost(string, repeated, tag = "7")]
    pub pod_cidrs: Vec<String>,
}

/// `core.v1.Taint`, without `timeAdded` (4).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbTaint {
    /// `key`.
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// `value`.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
    /// `effect`.
    #[prost(string, optional, tag = "3")]
    pub effect: Option<String>,
}

/// `resource.Quantity`: its canonical string.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbQuantity {
    /// The quantity, as the API writes it (`"3920Mi"`).
    #[prost(string, optional, tag = "1")]
    pub string: Option<String>,
}

/// `core.v1.NodeStatus`, without phase (3), daemon endpoints (6), images
/// (8), volumes (9, 10), config (11), runtime handlers (12) and features (13, 14).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbNodeStatus {
    /// `capacity`.
    #[prost(btree_map = "string, message", tag = "1")]
    pub capacity: BTreeMap<String, PbQuantity>,
    /// `allocatable`.
    #[prost(btree_map = "string, message", tag = "2")]
    pub allocatable: BTreeMap<String, PbQuantity>,
    /// `conditions`.
    #[prost(message, repeated, tag = "4")]
    pub conditions: Vec<PbNodeCondition>,
    /// `addresses`.
    #[prost(message, repeated, tag = "5")]
    pub addresses: Vec<PbNodeAddress>,
    /// `nodeInfo`.
    #[prost(message, optional, tag = "7")]
    pub node_info: Option<PbNodeSystemInfo>,
}

/// `core.v1.NodeCondition`, without `lastHeartbeatTime` (3): a kubelet
/// re-post changes nothing else.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbNodeCondition {
    /// `type`.
    #[prost(string, optional, tag = "1")]
    pub r#type: Option<String>,
    /// `status`.
    #[prost(string, optional, tag = "2")]
    pub status: Option<String>,
    /// `lastTransitionTime`.
    #[prost(message, optional, tag = "4")]
    pub last_transition_time: Option<PbTime>,
    /// `reason`.
    #[prost(string, optional, tag = "5")]
    pub reason: Option<String>,
    /// `message`.
    #[prost(string, optional, tag = "6")]
    pub message: Option<String>,
}

/// `core.v1.NodeAddress`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbNodeAddress {
    /// `type`.
    #[prost(string, optional, tag = "1")]
    pub r#type: Option<String>,
    /// `address`.
    #[prost(string, optional, tag = "2")]
    pub address: Option<String>,
}

/// `core.v1.NodeSystemInfo`, the fields readings read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbNodeSystemInfo {
    /// `systemUUID`.
    #[prost(string, optional, tag = "2")]
    pub system_uuid: Option<String>,
    /// `kernelVersion`.
    #[prost(string, optional, tag = "4")]
    pub kernel_version: Option<String>,
    /// `osImage`.
    #[prost(string, optional, tag = "5")]
    pub os_image: Option<String>,
    /// `containerRuntimeVersion`.
    #[prost(string, optional, tag = "6")]
    pub container_runtime_version: Option<String>,
    /// `kubeletVersion`.
    #[prost(string, optional, tag = "7")]
    pub kubelet_version: Option<String>,
    /// `kubeProxyVersion`.
    #[prost(string, optional, tag = "8")]
    pub kube_proxy_version: Option<String>,
    /// `architecture`.
    #[prost(string, optional, tag = "10")]
    pub architecture: Option<String>,
}

/// An empty string is no string.
fn some(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn compact(s: Option<String>) -> Option<CompactString> {
    some(s).map(CompactString::from)
}

fn compact_or_empty(s: Option<String>) -> CompactString {
    s.map(CompactString::from).unwrap_or_default()
}

/// A `Time` with seconds; the Go encoder writes a zero time as an empty message.
fn time(t: Option<PbTime>) -> Option<Time> {
    let seconds = t?.seconds?;
    k8s_openapi::jiff::Timestamp::from_second(seconds).ok().map(Time)
}

fn resources(map: BTreeMap<String, PbQuantity>) -> Option<ResourceList> {
    (!map.is_empty()).then(|| {
        map.into_iter()
            .map(|(k, v)| (CompactString::from(k), compact_or_empty(v.string)))
            .collect()
    })
}

impl From<PbNode> for Node {
    fn from(pb: PbNode) -> Node {
        let m = pb.metadata.unwrap_or_default();
        let metadata = ObjectMeta {
            name: some(m.name),
            namespace: some(m.namespace),
            uid: some(m.uid),
            resource_version: some(m.resource_version),
            generation: m.generation.filter(|g| *g != 0),
            labels: (!m.labels.is_empty()).then_some(m.labels),
            creation_timestamp: time(m.creation_timestamp),
            deletion_timestamp: time(m.deletion_timestamp),
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            ..ObjectMeta::default()
        };
        let spec = pb.spec.map(|s| NodeSpec {
            unschedulable: s.unschedulable.filter(|u| *u),
            taints: (!s.taints.is_empty()).then(|| {
                s.taints
                    .into_iter()
                    .map(|t| Taint {
                        key: compact_or_empty(t.key),
                        value: compact(t.value),
                        effect: compact_or_empty(t.effect),
                    })
                    .collect()
            }),
            provider_id: compact(s.provider_id),
            pod_cidr: compact(s.pod_cidr),
            pod_cidrs: (!s.pod_cidrs.is_empty())
                .then(|| s.pod_cidrs.into_iter().map(CompactString::from).collect()),
        });
        let status = pb.status.map(|s| NodeStatus {
            conditions: (!s.conditions.is_empty()).then(|| {
                s.conditions
                    .into_iter()
                    .map(|c| {
                        NodeCondition::new(
                            compact_or_empty(c.r#type),
                            ConditionStatus::from_api(c.status.as_deref().unwrap_or_default()),
                            time(c.last_transition_time).as_ref(),
                        )
                        .with_text(compact(c.reason), some(c.message))
                    })
                    .collect()
            }),
            node_info: s.node_info.map(|i| {
                NodeSystemInfo::new(
                    NodeVersions {
                        kubelet_version: compact_or_empty(i.kubelet_version),
                        kube_proxy_version: compact_or_empty(i.kube_proxy_version),
                        container_runtime_version: compact_or_empty(i.container_runtime_version),
                        kernel_version: compact_or_empty(i.kernel_version),
                        os_image: compact_or_empty(i.os_image),
                        architecture: compact_or_empty(i.architecture),
                    },
                    compact_or_empty(i.system_uuid),
                )
            }),
            addresses: (!s.addresses.is_empty()).then(|| {
                s.addresses
                    .into_iter()
                    .map(|a| NodeAddress {
                        type_: compact_or_empty(a.r#type),
                        address: compact_or_empty(a.address),
                    })
                    .collect()
            }),
            capacity: resources(s.capacity),
            allocatable: resources(s.allocatable),
        });
        Node {
            metadata,
            spec,
            status,
        }
    }
}

//! The part of a Kubernetes Node this service keeps: what readings read, nothing else.
//!
//! A Node from the API is ~15 KB of JSON; decoded into k8s-openapi's `Node`
//! and stripped it still took ~5.8 KB resident (1.5 KB of inline struct, a
//! heap allocation per string and a B-tree per map), which made the stored
//! nodes most of the memory at 50,000 nodes. This type has the same field
//! names and nesting as k8s-openapi's, so readings read it the same way, but
//! serde skips every other field while decoding (images, managed fields,
//! messages never get allocated), strings of up to 24 bytes live inline
//! (`CompactString`), and resource lists are sorted slices.
//!
//! Decoding is lenient where k8s-openapi is strict: a missing required field
//! (a condition without `status`, a taint without `effect`) decodes as empty
//! and reads as unknown, instead of failing the whole LIST page it came in.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, LazyLock, Mutex},
};

use compact_str::CompactString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use super::condition::{ConditionStatus, ConditionText, NodeCondition};

/// A Node, cut down to what readings read. Fields keep the API's names.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Node {
    /// Name, uid, labels, creation and deletion times: decoding skips the
    /// rest (see `slim_metadata`).
    #[serde(deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    /// `spec`.
    pub spec: Option<NodeSpec>,
    /// `status`.
    pub status: Option<NodeStatus>,
}

/// The `metadata` fields decoding keeps; serde skips every other one
/// without allocating it.
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
}

/// Decodes `metadata` into k8s-openapi's `ObjectMeta` (the reflector's
/// type), leaving out what no reading reads. Managed fields are most of a
/// Node's metadata and arbitrary JSON (`fieldsV1`): decoded as k8s-openapi
/// does, they were a tree of allocations per watch event, thrown away by
/// [`crate::cluster::strip`] straight after, on the path every kubelet
/// status re-post takes.
fn slim_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        generation: m.generation,
        labels: m.labels,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        ..ObjectMeta::default()
    })
}

/// `spec`, the fields readings read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeSpec {
    /// `spec.unschedulable`: cordoned.
    pub unschedulable: Option<bool>,
    /// `spec.taints`.
    pub taints: Option<Vec<Taint>>,
    /// `spec.providerID`.
    #[serde(rename = "providerID")]
    pub provider_id: Option<CompactString>,
    /// `spec.podCIDR`.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<CompactString>,
    /// `spec.podCIDRs`: one per IP family.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<CompactString>>,
}

/// One taint (`timeAdded` is not read).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Taint {
    /// The taint key.
    pub key: CompactString,
    /// Its value, if any.
    pub value: Option<CompactString>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: CompactString,
}

/// `status`, the fields readings read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NodeStatus {
    /// `status.conditions`, in API order.
    pub conditions: Option<Vec<NodeCondition>>,
    /// `status.nodeInfo`.
    pub node_info: Option<NodeSystemInfo>,
    /// `status.addresses` (only `InternalIP` is read).
    pub addresses: Option<Vec<NodeAddress>>,
    /// `status.capacity`.
    pub capacity: Option<ResourceList>,
    /// `status.allocatable`.
    pub allocatable: Option<ResourceList>,
}

/// `status.nodeInfo`, the fields readings read.
///
/// Every field but the UUID is the same on every node of a pool, so those
/// are held once and shared (~190 bytes a node, ~19 MB at 100,000 nodes).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(from = "WireSystemInfo", into = "WireSystemInfo")]
pub struct NodeSystemInfo {
    /// The versions and platform, shared with the nodes that have the same.
    pub versions: Arc<NodeVersions>,
    /// `systemUUID`.
    pub system_uuid: CompactString,
}

/// The part of `status.nodeInfo` that nodes of a pool share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeVersions {
    /// `kubeletVersion`.
    pub kubelet_version: CompactString,
    /// `kubeProxyVersion`.
    pub kube_proxy_version: CompactString,
    /// `containerRuntimeVersion`.
    pub container_runtime_version: CompactString,
    /// `kernelVersion`.
    pub kernel_version: CompactString,
    /// `osImage`.
    pub os_image: CompactString,
    /// `architecture`.
    pub architecture: CompactString,
}

impl NodeSystemInfo {
    /// The node info with these fields, sharing `versions` with the nodes
    /// that have the same.
    pub fn new(versions: NodeVersions, system_uuid: CompactString) -> Self {
        NodeSystemInfo {
            versions: SHARED_VERSIONS.share(Arc::new(versions)),
            system_uuid,
        }
    }
}

/// `status.nodeInfo` as the API writes it, for serde.
#[derive(Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
struct WireSystemInfo {
    kubelet_version: CompactString,
    kube_proxy_version: CompactString,
    container_runtime_version: CompactString,
    kernel_version: CompactString,
    os_image: CompactString,
    architecture: CompactString,
    #[serde(rename = "systemUUID")]
    system_uuid: CompactString,
}

impl From<WireSystemInfo> for NodeSystemInfo {
    fn from(w: WireSystemInfo) -> Self {
        NodeSystemInfo::new(
            NodeVersions {
                kubelet_version: w.kubelet_version,
                kube_proxy_version: w.kube_proxy_version,
                container_runtime_version: w.container_runtime_version,
                kernel_version: w.kernel_version,
                os_image: w.os_image,
                architecture: w.architecture,
            },
            w.system_uuid,
        )
    }
}

impl From<NodeSystemInfo> for WireSystemInfo {
    fn from(i: NodeSystemInfo) -> Self {
        let v = Arc::unwrap_or_clone(i.versions);
        WireSystemInfo {
            kubelet_version: v.kubelet_version,
            kube_proxy_version: v.kube_proxy_version,
            container_runtime_version: v.container_runtime_version,
            kernel_version: v.kernel_version,
            os_image: v.os_image,
            architecture: v.architecture,
            system_uuid: i.system_uuid,
        }
    }
}

/// One address of the node.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP`, `Hostname`, …
    #[serde(rename = "type")]
    pub type_: CompactString,
    /// The address.
    pub address: CompactString,
}

/// A resource list (`capacity`, `allocatable`): quantities by resource name,
/// sorted by name and unique, as the API's map is.
///
/// Nodes of one machine type list the same resources, so stored lists are
/// shared ([`ResourceList::shared`]): at 50,000 nodes two lists of ~8
/// entries each would otherwise be ~40 MB of copies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceList(Arc<[(CompactString, CompactString)]>);

impl ResourceList {
    /// The quantity of one resource, verbatim (`"3920Mi"`).
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)).ok()?;
        Some(&self.0[i].1)
    }

    /// How many resources are listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no resource is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every (name, quantity), sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// An equal list that other nodes already hold, if one is alive, else this one.
    pub fn shared(self) -> ResourceList {
        ResourceList(SHARED_LISTS.share(self.0))
    }
}

/// Equal values, kept so that nodes share one copy.
///
/// The table holds a reference too, so values no node holds any more are
/// dropped whenever it has doubled since the last sweep: it stays within
/// twice the number of distinct values alive.
struct Interner<T: ?Sized> {
    values: Mutex<(HashSet<Arc<T>>, usize)>,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            values: Mutex::default(),
        }
    }
}

static SHARED_LISTS: LazyLock<Interner<[(CompactString, CompactString)]>> = LazyLock::new(Interner::default);

static SHARED_VERSIONS: LazyLock<Interner<NodeVersions>> = LazyLock::new(Interner::default);

impl<T: Eq + std::hash::Hash + ?Sized> Interner<T> {
    fn share(&self, value: Arc<T>) -> Arc<T> {
        let mut guard = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let (values, swept_at) = &mut *guard;
        if let Some(shared) = values.get(&value) {
            return shared.clone();
        }
        if values.len() >= 2 * *swept_at + 64 {
            values.retain(|v| Arc::strong_count(v) > 1);
            *swept_at = values.len();
        }
        values.insert(value.clone());
        value
    }
}

impl FromIterator<(CompactString, CompactString)> for ResourceList {
    fn from_iter<I: IntoIterator<Item = (CompactString, CompactString)>>(iter: I) -> Self {
        // Through a map: sorted and unique (the last duplicate wins, as JSON decoders do).
        let map: BTreeMap<CompactString, CompactString> = iter.into_iter().collect();
        ResourceList(map.into_iter().collect())
    }
}

impl<'de> Deserialize<'de> for ResourceList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<CompactString, CompactString>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

impl Serialize for ResourceList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl Node {
    /// True when `other` holds the same as this node in every kept field but
    /// the resourceVersion, which every write bumps even when it changes
    /// nothing kept (a kubelet re-posting its status with new heartbeat times,
    /// an image list, an annotation). Both must be stripped alike.
    pub fn same_content(&self, other: &Node) -> bool {
        // Field by field, so that no update clones its metadata; destructured
        // whole, so that a field k8s-openapi adds cannot be missed silently.
        let ObjectMeta {
            annotations,
            creation_timestamp,
            deletion_grace_period_seconds,
            deletion_timestamp,
            finalizers,
            generate_name,
            generation,
            labels,
            managed_fields,
            name,
            namespace,
            owner_references,
            resource_version: _,
            self_link,
            uid,
        } = &self.metadata;
        let b = &other.metadata;
        self.spec == other.spec
            && self.status == other.status
            && *name == b.name
            && *labels == b.labels
            && *creation_timestamp == b.creation_timestamp
            && *deletion_timestamp == b.deletion_timestamp
            && *deletion_grace_period_seconds == b.deletion_grace_period_seconds
            && *generation == b.generation
            && *namespace == b.namespace
            && *uid == b.uid
            && *annotations == b.annotations
            && *finalizers == b.finalizers
            && *generate_name == b.generate_name
            && *managed_fields == b.managed_fields
            && *owner_references == b.owner_references
            && *self_link == b.self_link
    }
}

impl k8s_openapi::Resource for Node {
    const API_VERSION: &'static str =
        <k8s_openapi::api::core::v1::Node as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <k8s_openapi::api::core::v1::Node as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <k8s_openapi::api::core::v1::Node as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <k8s_openapi::api::core::v1::Node as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <k8s_openapi::api::core::v1::Node as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for Node {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_readings_read_and_skips_the_rest() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1", "labels": {"a": "b"}},
            "spec": {"providerID": "gce://p/z/n1", "podCIDR": "10.0.0.0/24", "unschedulable": true,
                     "taints": [{"key": "k", "effect": "NoSchedule", "timeAdded": "2026-01-01T00:00:00Z"}]},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z",
                     "lastHeartbeatTime": "2026-01-01T00:00:00Z", "reason": "KubeletReady", "message": "ok"},
                    {"type": "Broken"}
                ],
                "nodeInfo": {"kubeletVersion": "v1.31.0", "systemUUID": "u", "machineID": "m"},
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "capacity": {"memory": "1Gi", "cpu": "2"},
                "images": [{"names": ["x"], "sizeBytes": 1}],
                "somethingNew": {"nested": [1, 2, 3]}
            }
        }))
        .expect("decodes");
        let spec = node.spec.as_ref().unwrap();
        assert_eq!(spec.provider_id.as_deref(), Some("gce://p/z/n1"));
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.0.0.0/24"));
        assert_eq!(spec.taints.as_ref().unwrap()[0].effect, "NoSchedule");
        let status = node.status.as_ref().unwrap();
        let conditions = status.conditions.as_ref().unwrap();
        assert_eq!(
            (conditions[0].type_.as_str(), conditions[0].status.api()),
            ("Ready", "True")
        );
        assert!(conditions[0].last_transition_time().is_some());
        // A condition without a status decodes (and reads as unknown) rather than failing its page.
        assert_eq!(
            (conditions[1].type_.as_str(), conditions[1].status.api()),
            ("Broken", "Unknown")
        );
        let info = status.node_info.as_ref().unwrap();
        assert_eq!(
            (info.versions.kubelet_version.as_str(), info.system_uuid.as_str()),
            ("v1.31.0", "u")
        );
        let capacity = status.capacity.as_ref().unwrap();
        assert_eq!(
            capacity.iter().collect::<Vec<_>>(),
            [("cpu", "2"), ("memory", "1Gi")]
        );
        assert_eq!(
            (capacity.get("memory"), capacity.get("pods")),
            (Some("1Gi"), None)
        );
    }

    fn list(entries: &[(&str, &str)]) -> ResourceList {
        entries.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn equal_resource_lists_are_shared_and_dead_ones_swept() {
        let interner = Interner::default();
        let a = interner.share(list(&[("cpu", "2"), ("memory", "1Gi")]).0);
        let b = interner.share(list(&[("memory", "1Gi"), ("cpu", "2")]).0);
        assert!(Arc::ptr_eq(&a, &b), "equal lists share one copy");
        let c = interner.share(list(&[("cpu", "4")]).0);
        assert!(!Arc::ptr_eq(&a, &c));
        // Lists nobody holds any more do not accumulate.
        for i in 0..10_000 {
            drop(interner.share(list(&[("cpu", &i.to_string())]).0));
        }
        let (lists, _) = &*interner.values.lock().unwrap();
        assert!(lists.len() < 200, "{} lists kept", lists.len());
        assert!(lists.contains(&a) && lists.contains(&c), "live lists stay");
    }

    #[cfg(feature = "fake-apiserver")]
    #[test]
    fn decodes_the_same_readings_as_k8s_openapi() {
        let json = crate::fake::generated_node(3, 1, "2026-11-27T00:00:00Z");
        let full: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(json.clone()).expect("k8s-openapi decodes");
        let slim: Node = serde_json::from_value(json).expect("decodes");
        let (fs, ss) = (full.status.unwrap(), slim.status.unwrap());
        let full_conditions: Vec<_> = fs
            .conditions
            .unwrap()
            .into_iter()
            .map(|c| (c.type_, c.status, c.last_transition_time))
            .collect();
        let slim_conditions: Vec<_> = ss
            .conditions
            .unwrap()
            .into_iter()
            .map(|c| {
                (
                    c.type_.to_string(),
                    c.status.api().to_string(),
                    c.last_transition_time(),
                )
            })
            .collect();
        assert_eq!(full_conditions, slim_conditions);
        let full_capacity: Vec<_> = fs.capacity.unwrap().into_iter().map(|(k, v)| (k, v.0)).collect();
        let slim_capacity: Vec<_> = ss
            .capacity
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(full_capacity, slim_capacity);
        // Metadata keeps what readings read and what the reflector keys on;
        // what it leaves out (annotations, managed fields) is really there.
        let mut kept = full.metadata.clone();
        assert!(kept.annotations.take().is_some() && kept.managed_fields.take().is_some());
        assert!(slim.metadata.uid.is_some() && slim.metadata.labels.is_some());
        assert_eq!(kept, slim.metadata);
    }
}

//! Pure readings: what a Node (or the whole view) says about readiness.
//!
//! Nothing here does I/O, so every rule is tested as a table. The telemetry
//! module turns these readings into data points; the cluster module never
//! looks at them.

pub mod labels;
pub mod quantity;

pub mod heartbeats;

pub use crate::cluster::ConditionStatus;
use crate::cluster::Node;
pub use heartbeats::HeartbeatSummary;

/// The condition type the kubelet uses for overall node readiness.
pub const READY: &str = "Ready";

/// One condition of one node, after de-duplication.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConditionReading<'a> {
    /// The condition type, verbatim from the API (`Ready`, `MemoryPressure`, or a custom one).
    pub type_: &'a str,
    /// Its status.
    pub status: ConditionStatus,
    /// When its status last changed, in Unix seconds, if the API says.
    pub last_transition: Option<f64>,
}

impl ConditionReading<'_> {
    /// True while the condition shows a problem: Ready that is not `True`, or
    /// any other condition that is not `False`. Every other condition the
    /// kubelet and node-problem-detector set names a problem (`MemoryPressure`,
    /// `KernelDeadlock`…), so `True` is bad, and `Unknown` is bad for all: the
    /// kubelet stopped reporting.
    pub fn is_unhealthy(&self) -> bool {
        if self.type_ == READY {
            self.status != ConditionStatus::True
        } else {
            self.status != ConditionStatus::False
        }
    }
}

/// The node's uid, the identity of the `k8s.node` entity: a node deleted and
/// registered again under its name is another node.
pub fn node_uid(node: &Node) -> Option<&str> {
    node.metadata.uid.as_deref().filter(|u| !u.is_empty())
}

/// The node's name, or `None` for an object no reading can be attached to.
pub fn node_name(node: &Node) -> Option<&str> {
    node.metadata.name.as_deref().filter(|n| !n.is_empty())
}

/// The node's conditions, in API order, one per type.
///
/// The API treats conditions as a map keyed by type, so duplicates only come
/// from buggy writers. When they do, the first entry wins, as in Kubernetes'
/// own `GetNodeCondition` helper; the Go tool instead took whichever came last,
/// so its answer depended on list order. Conditions with an empty type are
/// dropped: they cannot be named in an attribute.
pub fn conditions(node: &Node) -> Vec<ConditionReading<'_>> {
    let Some(list) = node.status.as_ref().and_then(|s| s.conditions.as_ref()) else {
        return Vec::new();
    };
    let mut out: Vec<ConditionReading<'_>> = Vec::with_capacity(list.len());
    for c in list {
        if c.type_.is_empty() || out.iter().any(|seen| seen.type_ == c.type_) {
            continue;
        }
        out.push(ConditionReading {
            type_: &c.type_,
            status: c.status,
            last_transition: c.last_transition_seconds().map(|s| s as f64),
        });
    }
    out
}

/// The status of the node's Ready condition, wherever it sits in the list.
///
/// `None` when the node has no Ready condition at all (a node that has just
/// registered, or a broken object).
pub fn ready_status(node: &Node) -> Option<ConditionStatus> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|list| list.iter().find(|c| c.type_ == READY))
        .map(|c| c.status)
}

/// True only when the Ready condition is present and `True`.
pub fn is_ready(node: &Node) -> bool {
    ready_status(node) == Some(ConditionStatus::True)
}

/// Node counts by the status of their Ready condition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterSummary {
    /// Nodes whose Ready is `True`.
    pub ready_true: u64,
    /// Nodes whose Ready is `False`.
    pub ready_false: u64,
    /// Nodes whose Ready is `Unknown`, unreadable or missing.
    pub ready_unknown: u64,
    /// Nodes by kubelet heartbeat (all zero unless `--node-leases`; not
    /// counted by [`ClusterSummary::of`], which sees nodes only).
    pub heartbeats: HeartbeatSummary,
}

impl ClusterSummary {
    /// Counts a set of nodes.
    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Self {
        let mut s = ClusterSummary::default();
        for node in nodes {
            s.add(node);
        }
        s
    }

    /// Counts one more node.
    pub fn add(&mut self, node: &Node) {
        *self.slot(node) += 1;
    }

    /// Counts one node less: one [`ClusterSummary::add`] counted before.
    pub fn remove(&mut self, node: &Node) {
        let slot = self.slot(node);
        *slot = slot.saturating_sub(1);
    }

    fn slot(&mut self, node: &Node) -> &mut u64 {
        match ready_status(node).unwrap_or(ConditionStatus::Unknown) {
            ConditionStatus::True => &mut self.ready_true,
            ConditionStatus::False => &mut self.ready_false,
            ConditionStatus::Unknown => &mut self.ready_unknown,
        }
    }

    /// The count for one status.
    pub fn count(&self, status: ConditionStatus) -> u64 {
        match status {
            ConditionStatus::True => self.ready_true,
            ConditionStatus::False => self.ready_false,
            ConditionStatus::Unknown => self.ready_unknown,
        }
    }

    /// All nodes counted.
    pub fn total(&self) -> u64 {
        self.ready_true + self.ready_false + self.ready_unknown
    }

    /// The fraction (0 to 1, never NaN) of nodes whose Ready is not `True`.
    ///
    /// An empty cluster has no unready node, so the fraction is 0.
    pub fn not_ready_fraction(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            total => (total - self.ready_true) as f64 / total as f64,
        }
    }
}

fn unix_seconds(t: &k8s_openapi::jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// True when the node is cordoned (`spec.unschedulable`).
pub fn unschedulable(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// One taint of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaintReading<'a> {
    /// The taint key.
    pub key: &'a str,
    /// Its value, empty when unset.
    pub value: &'a str,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: &'a str,
}

/// The node's taints, one per (key, value, effect): a duplicate would be the same series twice.
pub fn taints(node: &Node) -> Vec<TaintReading<'_>> {
    let mut out: Vec<TaintReading<'_>> = Vec::new();
    for t in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        let reading = TaintReading {
            key: &t.key,
            value: t.value.as_deref().unwrap_or(""),
            effect: &t.effect,
        };
        if !t.key.is_empty() && !out.contains(&reading) {
            out.push(reading);
        }
    }
    out
}

/// Static facts about a node, each empty when the API does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo<'a> {
    /// `status.nodeInfo.kubeletVersion`.
    pub kubelet_version: &'a str,
    /// `status.nodeInfo.kubeProxyVersion`.
    pub kube_proxy_version: &'a str,
    /// `status.nodeInfo.containerRuntimeVersion`.
    pub container_runtime_version: &'a str,
    /// `status.nodeInfo.kernelVersion`.
    pub kernel_version: &'a str,
    /// `status.nodeInfo.osImage`.
    pub os_image: &'a str,
    /// `status.nodeInfo.architecture`.
    pub architecture: &'a str,
    /// `spec.providerID`.
    pub provider_id: &'a str,
    /// The first `InternalIP` address.
    pub internal_ip: &'a str,
    /// The last `InternalIP` address, as kube-state-metrics takes it (on a
    /// dual-stack node, the second family's).
    pub internal_ip_last: &'a str,
    /// `spec.podCIDR`.
    pub pod_cidr: &'a str,
    /// `status.nodeInfo.systemUUID`.
    pub system_uuid: &'a str,
}

/// The node's static facts.
pub fn info(node: &Node) -> NodeInfo<'_> {
    let status = node.status.as_ref();
    let ni = status.and_then(|s| s.node_info.as_ref());
    let spec = node.spec.as_ref();
    let field = |f: fn(&crate::cluster::NodeVersions) -> &compact_str::CompactString| {
        ni.map(|n| f(&n.versions).as_str()).unwrap_or("")
    };
    NodeInfo {
        kubelet_version: field(|n| &n.kubelet_version),
        kube_proxy_version: field(|n| &n.kube_proxy_version),
        container_runtime_version: field(|n| &n.container_runtime_version),
        kernel_version: field(|n| &n.kernel_version),
        os_image: field(|n| &n.os_image),
        architecture: field(|n| &n.architecture),
        system_uuid: ni.map(|n| n.system_uuid.as_str()).unwrap_or(""),
        provider_id: spec.and_then(|s| s.provider_id.as_deref()).unwrap_or(""),
        pod_cidr: spec.and_then(|s| s.pod_cidr.as_deref()).unwrap_or(""),
        internal_ip: status
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.as_str())
            .unwrap_or(""),
        internal_ip_last: status
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().rev().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.as_str())
            .unwrap_or(""),
    }
}

/// Which resource list to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceList {
    /// `status.allocatable`: what pods may use.
    Allocatable,
    /// `status.capacity`: what the node has.
    Capacity,
}

/// A parsed resource quantity of a node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResourceReading<'a> {
    /// The resource name, verbatim (`cpu`, `memory`, `nvidia.com/gpu`…).
    pub name: &'a str,
    /// Its value in base units: cores for cpu, bytes for memory and storage, a count otherwise.
    pub value: f64,
}

/// The node's resources from one list, sorted by name. Unparseable quantities
/// are left out: a wrong number is worse than none.
pub fn resources(node: &Node, list: ResourceList) -> Vec<ResourceReading<'_>> {
    let map = node.status.as_ref().and_then(|s| match list {
        ResourceList::Allocatable => s.allocatable.as_ref(),
        ResourceList::Capacity => s.capacity.as_ref(),
    });
    map.into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(name, q)| {
            Some(ResourceReading {
                name,
                value: quantity::parse(q).ok()?,
            })
        })
        .collect()
}

/// One resource of one list, if present and parseable.
pub fn resource(node: &Node, list: ResourceList, name: &str) -> Option<f64> {
    let map = node.status.as_ref().and_then(|s| match list {
        ResourceList::Allocatable => s.allocatable.as_ref(),
        ResourceList::Capacity => s.capacity.as_ref(),
    })?;
    quantity::parse(map.get(name)?).ok()
}

/// When the node object was created, in Unix seconds.
pub fn created(node: &Node) -> Option<f64> {
    node.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| unix_seconds(&t.0))
}

/// When deletion was requested, in Unix seconds, while the node is terminating.
pub fn deletion_timestamp(node: &Node) -> Option<f64> {
    node.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| unix_seconds(&t.0))
}

/// The label prefix Kubernetes uses for node roles.
pub const ROLE_LABEL_PREFIX: &str = "node-role.kubernetes.io/";

/// True if some reading reads label `key`: a role label, or one `selector` selects.
pub fn reads_label(key: &str, selector: &labels::LabelSelector) -> bool {
    key.starts_with(ROLE_LABEL_PREFIX) || key == "kubernetes.io/role" || selector.matches(key)
}

/// The node's roles, from `node-role.kubernetes.io/<role>` labels (and the
/// legacy `kubernetes.io/role` label's value), sorted and unique.
pub fn roles(node: &Node) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for (k, v) in node.metadata.labels.iter().flatten() {
        let role = match k.strip_prefix(ROLE_LABEL_PREFIX) {
            Some(role) => role,
            None if k == "kubernetes.io/role" => v.as_str(),
            None => continue,
        };
        if !role.is_empty() && !out.contains(&role) {
            out.push(role);
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
pub(crate) mod test_nodes {
    use crate::cluster::{Node, NodeCondition, NodeStatus};
    use kube::api::ObjectMeta;

    /// A node named `name` with the given `(type, status)` conditions, or no status at all for `None`.
    pub fn node(name: &str, conditions: Option<&[(&str, &str)]>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: None,
            status: conditions.map(|cs| NodeStatus {
                conditions: Some(
                    cs.iter()
                        .map(|(t, s)| {
                            NodeCondition::new((*t).into(), super::ConditionStatus::from_api(s), None)
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {

    /// On a dual-stack node: the first InternalIP, and the last, as kube-state-metrics reads it.
    #[test]
    fn the_internal_ip_first_and_last() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.7"},
                {"type": "Hostname", "address": "a"},
                {"type": "InternalIP", "address": "fd00::7"},
            ]},
        }))
        .expect("a node");
        assert_eq!(info(&node).internal_ip, "10.0.0.7");
        assert_eq!(info(&node).internal_ip_last, "fd00::7");
    }
    use super::{test_nodes::node, *};
    use ConditionStatus::{False as F, True as T, Unknown as U};

    #[test]
    fn status_strings_map_to_three_values() {
        for (api, want) in [
            ("True", T),
            ("False", F),
            ("Unknown", U),
            ("", U),
            ("true", U),
            ("yes", U),
        ] {
            assert_eq!(ConditionStatus::from_api(api), want, "{api:?}");
        }
        assert_eq!(
            ConditionStatus::ALL.map(ConditionStatus::as_str),
            ["true", "false", "unknown"]
        );
    }

    #[test]
    fn a_condition_is_unhealthy_when_it_shows_a_problem() {
        use ConditionStatus::*;
        let cases = [
            ("Ready", True, false),
            ("Ready", False, true),
            ("Ready", Unknown, true),
            ("MemoryPressure", True, true),
            ("MemoryPressure", False, false),
            ("MemoryPressure", Unknown, true),
            ("KernelDeadlock", True, true),
            ("KernelDeadlock", False, false),
            ("NetworkUnavailable", False, false),
        ];
        for (type_, status, unhealthy) in cases {
            let c = ConditionReading {
                type_,
                status,
                last_transition: None,
            };
            assert_eq!(c.is_unhealthy(), unhealthy, "{type_} {status:?}");
        }
    }

    #[test]
    fn ready_status_table() {
        type Case<'a> = (&'a str, Option<&'a [(&'a str, &'a str)]>, Option<ConditionStatus>);
        let cases: &[Case] = &[
            ("missing status", None, None),
            ("no conditions", Some(&[]), None),
            (
                "ready first",
                Some(&[("Ready", "True"), ("MemoryPressure", "False")]),
                Some(T),
            ),
            (
                "ready last",
                Some(&[
                    ("MemoryPressure", "False"),
                    ("DiskPressure", "False"),
                    ("Ready", "False"),
                ]),
                Some(F),
            ),
            (
                "ready in the middle",
                Some(&[
                    ("PIDPressure", "False"),
                    ("Ready", "Unknown"),
                    ("DiskPressure", "False"),
                ]),
                Some(U),
            ),
            (
                "duplicate: first wins",
                Some(&[("Ready", "False"), ("Ready", "True")]),
                Some(F),
            ),
            ("garbage status", Some(&[("Ready", "Maybe")]), Some(U)),
            ("only custom", Some(&[("KernelDeadlock", "False")]), None),
        ];
        for (what, conds, want) in cases {
            let n = node("n", *conds);
            assert_eq!(ready_status(&n), *want, "{what}");
            assert_eq!(is_ready(&n), *want == Some(T), "{what}");
        }
    }

    #[test]
    fn conditions_are_deduplicated_and_keep_custom_types() {
        let n = node(
            "n",
            Some(&[
                ("Ready", "True"),
                ("KernelDeadlock", "False"),
                ("Ready", "False"),
                ("", "True"),
                ("FrequentContainerdRestart", "Unknown"),
            ]),
        );
        let got: Vec<_> = conditions(&n).iter().map(|c| (c.type_, c.status)).collect();
        assert_eq!(
            got,
            vec![
                ("Ready", T),
                ("KernelDeadlock", F),
                ("FrequentContainerdRestart", U)
            ]
        );
        assert!(conditions(&node("n", None)).is_empty());
        assert!(conditions(&node("n", Some(&[]))).is_empty());
    }

    #[test]
    fn summary_counts_missing_ready_as_unknown() {
        let nodes = [
            node("a", Some(&[("Ready", "True")])),
            node("b", Some(&[("Ready", "False")])),
            node("c", Some(&[("Ready", "Unknown")])),
            node("d", None),
            node("e", Some(&[("Ready", "True")])),
        ];
        let s = ClusterSummary::of(&nodes);
        assert_eq!(
            (s.ready_true, s.ready_false, s.ready_unknown, s.total()),
            (2, 1, 2, 5)
        );
        assert_eq!(s.not_ready_fraction(), 0.6);
    }

    #[test]
    fn not_ready_fraction_is_a_fraction_and_never_nan() {
        let cases = [
            (ClusterSummary::default(), 0.0),
            (
                ClusterSummary {
                    ready_true: 4,
                    ..Default::default()
                },
                0.0,
            ),
            (
                ClusterSummary {
                    ready_false: 4,
                    ..Default::default()
                },
                1.0,
            ),
            (
                ClusterSummary {
                    ready_true: 3,
                    ready_false: 0,
                    ready_unknown: 1,
                    ..Default::default()
                },
                0.25,
            ),
        ];
        for (s, want) in cases {
            let got = s.not_ready_fraction();
            assert!(!got.is_nan());
            assert_eq!(got, want, "{s:?}");
        }
    }

    fn from_json(v: serde_json::Value) -> Node {
        serde_json::from_value(v).expect("a valid Node")
    }

    #[test]
    fn node_facts_table() {
        let n = from_json(serde_json::json!({
            "metadata": {
                "name": "a",
                "creationTimestamp": "2026-11-01T08:00:00Z",
                "deletionTimestamp": "2026-11-27T10:00:00Z",
                "labels": {
                    "node-role.kubernetes.io/control-plane": "",
                    "node-role.kubernetes.io/worker": "true",
                    "kubernetes.io/role": "worker",
                    "topology.kubernetes.io/zone": "z1"
                }
            },
            "spec": {
                "unschedulable": true,
                "providerID": "gce://p/z/a",
                "podCIDR": "10.0.0.0/24",
                "taints": [
                    {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                    {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                    {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
                ]
            },
            "status": {
                "capacity": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1", "pods": "110"},
                "allocatable": {"cpu": "7910m", "memory": "bogus", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-27T09:00:00Z"}],
                "addresses": [{"type": "Hostname", "address": "a"}, {"type": "InternalIP", "address": "10.1.2.3"}],
                "nodeInfo": {
                    "kubeletVersion": "v1.31.5", "kubeProxyVersion": "v1.31.5", "containerRuntimeVersion": "containerd://1.7",
                    "kernelVersion": "6.1", "osImage": "COS", "architecture": "arm64", "operatingSystem": "linux",
                    "machineID": "m", "systemUUID": "u", "bootID": "b"
                }
            }
        }));
        assert!(unschedulable(&n));
        assert_eq!(
            taints(&n),
            vec![
                TaintReading {
                    key: "dedicated",
                    value: "gpu",
                    effect: "NoSchedule"
                },
                TaintReading {
                    key: "node.kubernetes.io/unreachable",
                    value: "",
                    effect: "NoExecute"
                },
            ]
        );
        let i = info(&n);
        assert_eq!(
            (
                i.kubelet_version,
                i.container_runtime_version,
                i.kernel_version,
                i.os_image,
                i.architecture
            ),
            ("v1.31.5", "containerd://1.7", "6.1", "COS", "arm64")
        );
        assert_eq!(
            (i.provider_id, i.internal_ip, i.pod_cidr, i.system_uuid),
            ("gce://p/z/a", "10.1.2.3", "10.0.0.0/24", "u")
        );
        let cap: Vec<(&str, f64)> = resources(&n, ResourceList::Capacity)
            .iter()
            .map(|r| (r.name, r.value))
            .collect();
        assert_eq!(
            cap,
            vec![
                ("cpu", 8.0),
                ("memory", 34359738368.0),
                ("nvidia.com/gpu", 1.0),
                ("pods", 110.0)
            ]
        );
        let alloc: Vec<(&str, f64)> = resources(&n, ResourceList::Allocatable)
            .iter()
            .map(|r| (r.name, r.value))
            .collect();
        assert_eq!(
            alloc,
            vec![("cpu", 7.91), ("pods", 110.0)],
            "an unparseable quantity is left out"
        );
        assert_eq!(resource(&n, ResourceList::Allocatable, "cpu"), Some(7.91));
        assert_eq!(
            resource(&n, ResourceList::Allocatable, "memory"),
            None,
            "unparseable"
        );
        assert_eq!(resource(&n, ResourceList::Capacity, "nvidia.com/gpu"), Some(1.0));
        assert_eq!(created(&n), Some(1_793_520_000.0));
        assert_eq!(deletion_timestamp(&n), Some(1_795_773_600.0));
        assert_eq!(roles(&n), vec!["control-plane", "worker"]);
        assert_eq!(conditions(&n)[0].last_transition, Some(1_795_770_000.0));
    }

    #[test]
    fn empty_node_has_empty_facts() {
        let n = node("bare", None);
        assert!(!unschedulable(&n));
        assert!(taints(&n).is_empty());
        assert_eq!(info(&n), NodeInfo::default());
        assert!(resources(&n, ResourceList::Capacity).is_empty());
        assert_eq!((created(&n), deletion_timestamp(&n)), (None, None));
        assert!(roles(&n).is_empty());
    }

    /// Objects a buggy writer or an odd API emulator could send: each decodes
    /// (one bad node must not fail the LIST page it came in) and reads safely.
    #[test]
    fn malformed_objects_from_the_api_read_safely() {
        use serde_json::json;
        let long = "v".repeat(100_000);
        // (what, the object, its name, its Ready, conditions read)
        type Case<'a> = (
            &'a str,
            serde_json::Value,
            Option<&'a str>,
            Option<ConditionStatus>,
            usize,
        );
        let cases: Vec<Case> = vec![
            (
                "missing status",
                json!({"metadata": {"name": "a"}}),
                Some("a"),
                None,
                0,
            ),
            (
                "null status",
                json!({"metadata": {"name": "a"}, "status": null}),
                Some("a"),
                None,
                0,
            ),
            (
                "duplicate condition types: the first wins",
                json!({"metadata": {"name": "a"}, "status": {"conditions": [
                    {"type": "Ready", "status": "False"}, {"type": "Ready", "status": "True"}]}}),
                Some("a"),
                Some(F),
                1,
            ),
            (
                "condition without a status or a type",
                json!({"metadata": {"name": "a"}, "status": {"conditions": [{"type": "Ready"}, {"status": "True"}]}}),
                Some("a"),
                Some(U),
                1,
            ),
            ("empty name", json!({"metadata": {"name": ""}}), None, None, 0),
            ("no metadata at all", json!({}), None, None, 0),
            (
                "unknown fields anywhere",
                json!({"metadata": {"name": "a", "future": 1}, "spec": {"newThing": [1]},
                       "status": {"conditions": [{"type": "Ready", "status": "True", "severity": "x"}], "other": {}}}),
                Some("a"),
                Some(T),
                1,
            ),
        ];
        for (what, json, name, ready, conditions_read) in cases {
            let node: Node = serde_json::from_value(json).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(node_name(&node), name, "{what}");
            assert_eq!(ready_status(&node), ready, "{what}");
            assert_eq!(conditions(&node).len(), conditions_read, "{what}");
            assert_eq!(ClusterSummary::of([&node]).total(), 1, "{what}");
            let _ = (
                info(&node),
                taints(&node),
                roles(&node),
                resources(&node, ResourceList::Capacity),
            );
        }

        // A very long label value is kept whole when selected (it is the user's label).
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "a", "labels": {"team": long}}}))
            .expect("decodes");
        let selector =
            labels::LabelSelector::new(&["team".to_string()], labels::LabelKeys::Semconv).expect("valid");
        let selected = selector.select(&node);
        assert_eq!(selected.len(), 1);
        assert_eq!(selected[0].1.len(), 100_000);
    }
}

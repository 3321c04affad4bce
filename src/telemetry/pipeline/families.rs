//! The node metric families, in both naming modes.
//!
//! Like kube-state-metrics' family generators: each family has a name, a
//! unit, a help text and a pure function from one Node to its points. A
//! family that the metric filters drop is never registered, so it costs nothing.

use std::sync::Arc;

use opentelemetry::{Key, KeyValue, Value};

use crate::{
    cluster::{Heartbeat, Heartbeats, Node, Transitions},
    config::{Group, Naming, ReadingSettings},
    readings::{self, ConditionStatus, ResourceList, labels::sanitize},
};

/// The instrument kind of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A gauge of whole numbers (0/1 flags, counts).
    IntGauge,
    /// A gauge of real numbers (timestamps, cores).
    FloatGauge,
    /// A monotonic counter.
    Counter,
}

/// Receives one point: its value and its attributes (the node's come first).
pub type Emit<'e> = dyn FnMut(f64, Vec<KeyValue>) + 'e;

/// The points of one node, given the attributes they all start with
/// ([`Ctx::node_attrs`], built once per node for every family).
type PointsFn = Box<dyn Fn(&Ctx<'_>, &Node, &[KeyValue], &mut Emit<'_>) + Send + Sync>;

/// One per-node metric family.
pub struct Family {
    /// The instrument name in the active naming mode.
    pub name: &'static str,
    /// Its unit (empty in kube-state-metrics mode, whose names carry none).
    pub unit: &'static str,
    /// Its description.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: Kind,
    /// What it is about, for the metric profiles.
    pub group: Group,
    /// Whether `/metrics` keeps the node's uid on its series (only the info
    /// series: on every series it would add a third to the body and three
    /// quarters to its gzip, docs/metrics.md, for a label no alert filters on).
    pub uid_on_metrics: bool,
    /// The points of one node.
    pub points: PointsFn,
    /// An upper bound of the points of one node, cheap to compute: sizes the cardinality limit.
    pub count: fn(&Node) -> usize,
}

/// What a family's points depend on besides the node.
pub struct Ctx<'a> {
    /// Naming, filters and label allowlist.
    pub settings: &'a ReadingSettings,
    /// Observed condition transitions.
    pub transitions: &'a Transitions,
    /// Kubelet heartbeats, from the node Leases (off unless `--node-leases`).
    pub heartbeats: &'a Heartbeats,
}

/// Attribute keys of one naming mode.
struct Keys {
    node: &'static str,
    condition: &'static str,
    status: &'static str,
    taint: [&'static str; 3],
    role: &'static str,
    resource: &'static str,
    uid: &'static str,
}

const OTEL_KEYS: Keys = Keys {
    node: "k8s.node.name",
    condition: "k8s.node.condition.type",
    status: "k8s.node.condition.status",
    taint: [
        "k8s.node.taint.key",
        "k8s.node.taint.value",
        "k8s.node.taint.effect",
    ],
    role: "k8s.node.role",
    resource: "k8s.node.resource.name",
    uid: "k8s.node.uid",
};

const KSM_KEYS: Keys = Keys {
    node: "node",
    condition: "condition",
    status: "status",
    taint: ["key", "value", "effect"],
    role: "role",
    resource: "resource",
    uid: "uid",
};

fn keys(naming: Naming) -> &'static Keys {
    match naming {
        Naming::Otel => &OTEL_KEYS,
        Naming::KubeStateMetrics => &KSM_KEYS,
    }
}

impl Ctx<'_> {
    /// The attributes every point of `node` starts with: its name, its uid
    /// (the `k8s.node` entity's identity; `/metrics` keeps it only on the
    /// info series, see [`strip_for_metrics`]), then the allowlisted labels.
    /// `None` for a node without a name, which has no points.
    pub fn node_attrs(&self, node: &Node) -> Option<Vec<KeyValue>> {
        let name = readings::node_name(node)?;
        let k = keys(self.settings.naming);
        let labels = self.settings.node_labels.select(node);
        let mut attrs = Vec::with_capacity(2 + labels.len() + 3);
        // Reference-counted: every point of the node clones these, and a
        // clone of an `Arc<str>` is a count, not an allocation.
        attrs.push(KeyValue::new(k.node, Arc::<str>::from(name)));
        if let Some(uid) = readings::node_uid(node) {
            attrs.push(KeyValue::new(k.uid, Arc::<str>::from(uid)));
        }
        for (key, value) in labels {
            attrs.push(KeyValue::new(
                Key::from(Arc::<str>::from(key)),
                Arc::<str>::from(value),
            ));
        }
        Some(attrs)
    }

    fn keys(&self) -> &'static Keys {
        keys(self.settings.naming)
    }
}

/// The point attribute keys of a node's name and uid in a naming mode.
pub fn node_keys(naming: Naming) -> (&'static str, &'static str) {
    let k = keys(naming);
    (k.node, k.uid)
}

/// Drops the node's uid from the attributes of a point of `family` bound for
/// `/metrics`, unless the family keeps it there (the info series): both
/// Prometheus encoders call this, OTLP never does.
pub fn strip_for_metrics(family: &Family, naming: Naming, attrs: &mut Vec<KeyValue>) {
    if !family.uid_on_metrics {
        let uid = keys(naming).uid;
        attrs.retain(|kv| kv.key.as_str() != uid);
    }
}

/// An attribute value for text that repeats across nodes (condition types,
/// statuses, taint effects): the well-known ones are static, others shared.
fn shared(text: &str) -> Value {
    const KNOWN: [&str; 20] = [
        "Ready",
        "MemoryPressure",
        "DiskPressure",
        "PIDPressure",
        "NetworkUnavailable",
        "KernelDeadlock",
        "ReadonlyFilesystem",
        "FrequentUnregisterNetDevice",
        "FrequentKubeletRestart",
        "FrequentDockerRestart",
        "FrequentContainerdRestart",
        "CorruptDockerOverlay2",
        "NoSchedule",
        "PreferNoSchedule",
        "NoExecute",
        "control-plane",
        "master",
        "worker",
        "cpu",
        "memory",
    ];
    match KNOWN.iter().find(|k| **k == text) {
        Some(k) => Value::from(*k),
        None => Value::from(Arc::<str>::from(text)),
    }
}

fn with(mut base: Vec<KeyValue>, extra: impl IntoIterator<Item = KeyValue>) -> Vec<KeyValue> {
    base.extend(extra);
    base
}

/// Conditions that pass `--conditions`.
fn reported_conditions<'n>(ctx: &Ctx<'_>, node: &'n Node) -> Vec<readings::ConditionReading<'n>> {
    readings::conditions(node)
        .into_iter()
        .filter(|c| ctx.settings.condition_enabled(c.type_))
        .collect()
}

/// Whether a condition's status and transition time are sent: always, or
/// with `--sparse-readings` only while the condition shows a problem.
fn shown(ctx: &Ctx<'_>, c: &readings::ConditionReading<'_>) -> bool {
    !ctx.settings.sparse || c.is_unhealthy()
}

fn conditions_count(node: &Node) -> usize {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map_or(0, Vec::len)
}

fn one(_: &Node) -> usize {
    1
}

/// A family with one point per node whose value is `value(node)` (none when `None`).
fn per_node(
    name: &'static str,
    unit: &'static str,
    help: &'static str,
    (kind, group): (Kind, Group),
    value: fn(&Node) -> Option<f64>,
) -> Family {
    Family {
        name,
        unit,
        help,
        kind,
        group,
        uid_on_metrics: false,
        points: Box::new(move |_, node, base, emit| {
            if let Some(v) = value(node) {
                emit(v, base.to_vec());
            }
        }),
        count: one,
    }
}

fn condition_status(naming: Naming) -> Family {
    Family {
        name: pick(naming, "k8s.node.condition.status", "kube_node_status_condition"),
        unit: unit(naming, "{node}"),
        help: "Status of each node condition, one-hot: for every condition present on a node, \
               1 for its current status (true, false or unknown) and 0 for the other two \
               (with --sparse-readings: only a condition that shows a problem, 1 for its status)",
        kind: Kind::IntGauge,
        group: Group::Readiness,
        uid_on_metrics: false,
        points: Box::new(|ctx, node, base, emit| {
            let base = base.to_vec();
            let k = ctx.keys();
            for c in reported_conditions(ctx, node)
                .into_iter()
                .filter(|c| shown(ctx, c))
            {
                // One-hot: every status, 1 for the one held; sparse: the one held only.
                let statuses = if ctx.settings.sparse {
                    std::slice::from_ref(&c.status)
                } else {
                    &ConditionStatus::ALL[..]
                };
                for &s in statuses {
                    let attrs = with(
                        base.clone(),
                        [
                            KeyValue::new(k.condition, shared(c.type_)),
                            KeyValue::new(k.status, s.as_str()),
                        ],
                    );
                    emit(f64::from(u8::from(c.status == s)), attrs);
                }
            }
        }),
        count: |n| conditions_count(n) * ConditionStatus::ALL.len(),
    }
}

fn condition_last_transition(naming: Naming) -> Family {
    Family {
        name: pick(
            naming,
            "k8s.node.condition.last_transition_time",
            "kube_node_status_condition_last_transition_time",
        ),
        unit: unit(naming, "s"),
        help: "When each node condition last changed status (lastTransitionTime), in Unix seconds \
               (with --sparse-readings: only for a condition that shows a problem)",
        kind: Kind::FloatGauge,
        group: Group::Readiness,
        uid_on_metrics: false,
        points: Box::new(|ctx, node, base, emit| {
            let base = base.to_vec();
            for c in reported_conditions(ctx, node)
                .into_iter()
                .filter(|c| shown(ctx, c))
            {
                if let Some(t) = c.last_transition {
                    emit(
                        t,
                        with(
                            base.clone(),
                            [KeyValue::new(ctx.keys().condition, shared(c.type_))],
                        ),
                    );
                }
            }
        }),
        count: conditions_count,
    }
}

fn condition_transitions(naming: Naming) -> Family {
    Family {
        name: pick(
            naming,
            "k8s.node.condition.transitions",
            "kube_node_status_condition_transitions",
        ),
        unit: unit(naming, "{transition}"),
        help: "Status changes of each node condition seen in watch events since this exporter started, \
               including flaps shorter than any scrape interval",
        kind: Kind::Counter,
        group: Group::Readiness,
        uid_on_metrics: false,
        points: Box::new(|ctx, node, base, emit| {
            let base = base.to_vec();
            let name = readings::node_name(node).unwrap_or_default();
            let counted = readings::conditions(node)
                .into_iter()
                .filter(|c| ctx.settings.transitions_enabled(c.type_));
            for c in counted {
                let count = ctx.transitions.get(name, c.type_).unwrap_or(0);
                emit(
                    count as f64,
                    with(
                        base.clone(),
                        [KeyValue::new(ctx.keys().condition, shared(c.type_))],
                    ),
                );
            }
        }),
        count: conditions_count,
    }
}

fn unschedulable(naming: Naming) -> Family {
    Family {
        name: pick(naming, "k8s.node.unschedulable", "kube_node_spec_unschedulable"),
        unit: unit(naming, "{node}"),
        help: "1 if the node is cordoned (spec.unschedulable), otherwise 0 \
               (with --sparse-readings: only cordoned nodes, as 1)",
        kind: Kind::IntGauge,
        group: Group::Readiness,
        uid_on_metrics: false,
        points: Box::new(|ctx, node, base, emit| {
            let cordoned = readings::unschedulable(node);
            if cordoned || !ctx.settings.sparse {
                emit(f64::from(u8::from(cordoned)), base.to_vec());
            }
        }),
        count: one,
    }
}

fn taint(naming: Naming) -> Family {
    Family {
        name: pick(naming, "k8s.node.taint", "kube_node_spec_taint"),
        unit: unit(naming, "{taint}"),
        help: "1 for each taint of a node, with its key, value and effect",
        kind: Kind::IntGauge,
        group: Group::Readiness,
        uid_on_metrics: false,
        points: Box::new(|ctx, node, base, emit| {
            let base = base.to_vec();
            let [key, value, effect] = ctx.keys().taint;
            let read = readings::taints(node)
                .into_iter()
                .filter(|t| ctx.settings.profile.reads_taint(t.key));
            for t in read {
                let attrs = with(
                    base.clone(),
                    [
                        KeyValue::new(key, t.key.to_string()),
                        KeyValue::new(value, t.value.to_string()),
                        KeyValue::new(effect, shared(t.effect)),
                    ],
                );
                emit(1.0, attrs);
            }
        }),
        count: |n| {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .map_or(0, Vec::len)
        },
    }
}

fn heartbeat_stale(naming: Naming) -> Family {
    Family {
        name: pick(naming, "k8s.node.heartbeat.stale", "kube_node_heartbeat_stale"),
        unit: unit(naming, "{node}"),
        help: "1 while the node's kubelet has not renewed its Lease in kube-node-lease for longer \
               than --heartbeat-stale-after, otherwise 0; none for a node without a Lease \
               (with --sparse-readings: only stale nodes, as 1)",
        kind: Kind::IntGauge,
        group: Group::Readiness,
        uid_on_metrics: false,
        points: Box::new(|ctx, node, base, emit| {
            let stale = match heartbeat(ctx, node) {
                Some(Heartbeat::Stale { .. }) => true,
                Some(Heartbeat::Fresh) => false,
                Some(Heartbeat::Missing) | None => return,
            };
            if stale || !ctx.settings.sparse {
                emit(f64::from(u8::from(stale)), base.to_vec());
            }
        }),
        count: one,
    }
}

fn heartbeat_last_renewal(naming: Naming) -> Family {
    Family {
        name: pick(
            naming,
            "k8s.node.heartbeat.last_renewal_time",
            "kube_node_heartbeat_last_renewal_time",
        ),
        unit: unit(naming, "s"),
        help: "The renewTime of the node's Lease as its kubelet wrote it, in Unix seconds; only while \
               its heartbeat is stale (a renewal every 10 s would otherwise be a change of every node)",
        kind: Kind::FloatGauge,
        group: Group::Readiness,
        uid_on_metrics: false,
        points: Box::new(|ctx, node, base, emit| {
            if let Some(Heartbeat::Stale {
                last_renewal: Some(renewed),
            }) = heartbeat(ctx, node)
            {
                emit(renewed, base.to_vec());
            }
        }),
        count: one,
    }
}

fn heartbeat(ctx: &Ctx<'_>, node: &Node) -> Option<Heartbeat> {
    ctx.heartbeats.of(readings::node_name(node)?)
}

fn info(naming: Naming) -> Family {
    Family {
        name: pick(naming, "k8s.node.info", "kube_node_info"),
        unit: "",
        help: "Always 1; its attributes describe the node: kubelet and container runtime versions, \
               kernel, OS image, architecture, provider ID and internal IP",
        kind: Kind::IntGauge,
        group: Group::Metadata,
        // kube-state-metrics' kube_node_info has no uid label: an extra one
        // would make its series differ from what its users' queries expect.
        uid_on_metrics: naming == Naming::Otel,
        points: Box::new(move |_, node, base, emit| {
            let base = base.to_vec();
            let i = readings::info(node);
            let fields: Vec<(&'static str, &str)> = match naming {
                Naming::Otel => vec![
                    ("k8s.node.kubelet.version", i.kubelet_version),
                    ("k8s.node.container_runtime.version", i.container_runtime_version),
                    ("k8s.node.kernel.version", i.kernel_version),
                    ("k8s.node.os.image", i.os_image),
                    ("k8s.node.architecture", i.architecture),
                    ("k8s.node.provider_id", i.provider_id),
                    ("k8s.node.internal_ip", i.internal_ip),
                ],
                Naming::KubeStateMetrics => vec![
                    ("kernel_version", i.kernel_version),
                    ("os_image", i.os_image),
                    ("container_runtime_version", i.container_runtime_version),
                    ("kubelet_version", i.kubelet_version),
                    // kube-state-metrics has reported this since the field was
                    // deprecated upstream (kubelets stopped setting it reliably).
                    ("kubeproxy_version", "deprecated"),
                    ("provider_id", i.provider_id),
                    ("pod_cidr", i.pod_cidr),
                    ("system_uuid", i.system_uuid),
                    ("internal_ip", i.internal_ip_last),
                ],
            };
            emit(
                1.0,
                with(
                    base,
                    fields.into_iter().map(|(k, v)| KeyValue::new(k, v.to_string())),
                ),
            );
        }),
        count: one,
    }
}

fn role(naming: Naming) -> Family {
    Family {
        name: pick(naming, "k8s.node.role", "kube_node_role"),
        unit: unit(naming, "{role}"),
        help: "1 for each role of a node, from its node-role.kubernetes.io/<role> labels",
        kind: Kind::IntGauge,
        group: Group::Metadata,
        uid_on_metrics: false,
        points: Box::new(|ctx, node, base, emit| {
            let base = base.to_vec();
            for r in readings::roles(node) {
                emit(
                    1.0,
                    with(base.clone(), [KeyValue::new(ctx.keys().role, shared(r))]),
                );
            }
        }),
        count: |n| n.metadata.labels.as_ref().map_or(0, |l| l.len()),
    }
}

/// kube-state-metrics' `kube_node_labels`: the allowlisted labels, on one series per node.
fn labels() -> Family {
    Family {
        name: "kube_node_labels",
        unit: "",
        help: "Always 1; its label_* attributes are the node labels selected by --node-labels",
        kind: Kind::IntGauge,
        group: Group::Metadata,
        uid_on_metrics: false,
        points: Box::new(|_, _, base, emit| {
            emit(1.0, base.to_vec());
        }),
        count: one,
    }
}

/// kube-state-metrics' `kube_node_status_addresses`: one series per address
/// (`--optional-families`).
fn addresses() -> Family {
    Family {
        name: "kube_node_status_addresses",
        unit: "",
        help: "Always 1; one series per address of the node, with its type",
        kind: Kind::IntGauge,
        group: Group::Metadata,
        uid_on_metrics: false,
        points: Box::new(|_, node, base, emit| {
            for a in node.status.iter().flat_map(|s| s.addresses.iter().flatten()) {
                emit(
                    1.0,
                    with(
                        base.to_vec(),
                        [
                            KeyValue::new("type", shared(&a.type_)),
                            KeyValue::new("address", Arc::<str>::from(a.address.as_str())),
                        ],
                    ),
                );
            }
        }),
        count: |n| {
            n.status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .map_or(0, Vec::len)
        },
    }
}

/// kube-state-metrics' `kube_node_spec_pod_cidrs`: one series per pod CIDR
/// (`--optional-families`).
fn pod_cidrs() -> Family {
    Family {
        name: "kube_node_spec_pod_cidrs",
        unit: "",
        help: "Always 1; one series per pod CIDR of the node (spec.podCIDRs)",
        kind: Kind::IntGauge,
        group: Group::Metadata,
        uid_on_metrics: false,
        points: Box::new(|_, node, base, emit| {
            for cidr in node.spec.iter().flat_map(|s| s.pod_cidrs.iter().flatten()) {
                emit(
                    1.0,
                    with(
                        base.to_vec(),
                        [KeyValue::new("pod_cidr", Arc::<str>::from(cidr.as_str()))],
                    ),
                );
            }
        }),
        count: |n| {
            n.spec
                .as_ref()
                .and_then(|s| s.pod_cidrs.as_ref())
                .map_or(0, Vec::len)
        },
    }
}

/// The four well-known resources in OTel mode: the resource, its instrument
/// names (allocatable, capacity), its unit, and their descriptions.
const NAMED_RESOURCES: [(&str, [&str; 2], &str, [&str; 2]); 4] = [
    (
        "cpu",
        ["k8s.node.cpu.allocatable", "k8s.node.cpu.capacity"],
        "{cpu}",
        [
            "CPU cores of the node allocatable to pods",
            "CPU cores of the node",
        ],
    ),
    (
        "memory",
        ["k8s.node.memory.allocatable", "k8s.node.memory.capacity"],
        "By",
        [
            "Memory of the node allocatable to pods, in bytes",
            "Memory of the node, in bytes",
        ],
    ),
    (
        "ephemeral-storage",
        [
            "k8s.node.ephemeral_storage.allocatable",
            "k8s.node.ephemeral_storage.capacity",
        ],
        "By",
        [
            "Ephemeral storage of the node allocatable to pods, in bytes",
            "Ephemeral storage of the node, in bytes",
        ],
    ),
    (
        "pods",
        ["k8s.node.pod.allocatable", "k8s.node.pod.capacity"],
        "{pod}",
        ["Pods the node accepts", "Pod capacity of the node"],
    ),
];

/// 0 for allocatable, 1 for capacity: the index into the name pairs.
fn slot(list: ResourceList) -> usize {
    match list {
        ResourceList::Allocatable => 0,
        ResourceList::Capacity => 1,
    }
}

fn resource_count(list: ResourceList) -> fn(&Node) -> usize {
    match list {
        ResourceList::Allocatable => |n| {
            n.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .map_or(0, |m| m.len())
        },
        ResourceList::Capacity => |n| {
            n.status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .map_or(0, |m| m.len())
        },
    }
}

/// OTel mode: one family per well-known resource and list.
fn named_resource(list: ResourceList, index: usize) -> Family {
    let (resource, names, unit, helps) = NAMED_RESOURCES[index];
    Family {
        name: names[slot(list)],
        unit,
        help: helps[slot(list)],
        kind: Kind::FloatGauge,
        group: Group::Resources,
        uid_on_metrics: false,
        points: Box::new(move |_, node, base, emit| {
            if let Some(value) = readings::resource(node, list, resource) {
                emit(value, base.to_vec());
            }
        }),
        count: one,
    }
}

/// OTel mode: every other resource (GPUs, hugepages, attachable volumes…), by name.
fn extended_resources(list: ResourceList) -> Family {
    Family {
        name: ["k8s.node.resource.allocatable", "k8s.node.resource.capacity"][slot(list)],
        unit: "",
        help: [
            "Resources of the node allocatable to pods other than cpu, memory, ephemeral-storage and pods \
             (e.g. nvidia.com/gpu), in the resource's base unit",
            "Capacity of the node's resources other than cpu, memory, ephemeral-storage and pods \
             (e.g. nvidia.com/gpu), in the resource's base unit",
        ][slot(list)],
        kind: Kind::FloatGauge,
        group: Group::Resources,
        uid_on_metrics: false,
        points: Box::new(move |ctx, node, base, emit| {
            let base = base.to_vec();
            for r in readings::resources(node, list) {
                if !NAMED_RESOURCES.iter().any(|(n, ..)| *n == r.name) {
                    emit(
                        r.value,
                        with(base.clone(), [KeyValue::new(ctx.keys().resource, shared(r.name))]),
                    );
                }
            }
        }),
        count: resource_count(list),
    }
}

/// kube-state-metrics' unit label for a resource, as its node store gives it
/// (`internal/store/utils.go`): storage, memory, huge pages and attachable
/// volumes in bytes, cpu in cores, pods and extended resources as integers.
fn ksm_unit(resource: &str) -> &'static str {
    match resource {
        "cpu" => "core",
        "memory" | "ephemeral-storage" | "storage" => "byte",
        r if r.starts_with("hugepages-") || r.starts_with("attachable-volumes-") => "byte",
        _ => "integer",
    }
}

/// kube-state-metrics mode: `kube_node_status_allocatable` / `_capacity` {resource, unit}.
fn ksm_resources(list: ResourceList) -> Family {
    Family {
        name: ["kube_node_status_allocatable", "kube_node_status_capacity"][slot(list)],
        unit: "",
        help: [
            "Resources of the node allocatable to pods, by resource, in the unit named by the unit label",
            "Capacity of the node, by resource, in the unit named by the unit label",
        ][slot(list)],
        kind: Kind::FloatGauge,
        group: Group::Resources,
        uid_on_metrics: false,
        points: Box::new(move |_, node, base, emit| {
            let base = base.to_vec();
            for r in readings::resources(node, list) {
                let attrs = with(
                    base.clone(),
                    [
                        KeyValue::new("resource", sanitize(r.name)),
                        KeyValue::new("unit", ksm_unit(r.name)),
                    ],
                );
                emit(r.value, attrs);
            }
        }),
        count: resource_count(list),
    }
}

fn pick(naming: Naming, otel: &'static str, ksm: &'static str) -> &'static str {
    match naming {
        Naming::Otel => otel,
        Naming::KubeStateMetrics => ksm,
    }
}

/// kube-state-metrics names carry no unit: the exporter must not append one.
fn unit(naming: Naming, otel: &'static str) -> &'static str {
    pick(naming, otel, "")
}

/// The per-node heartbeat families of a naming mode (with `--node-leases`).
pub fn heartbeat_families(naming: Naming) -> Vec<Family> {
    vec![heartbeat_stale(naming), heartbeat_last_renewal(naming)]
}

/// Every per-node family of a naming mode, before filtering.
pub fn node_families(naming: Naming) -> Vec<Family> {
    let mut out = vec![
        condition_status(naming),
        per_node(
            pick(naming, "k8s.node.ready", "kube_node_status_ready"),
            unit(naming, "{node}"),
            "1 if the node's Ready condition is True, otherwise 0 (also when it has no Ready condition)",
            (Kind::IntGauge, Group::Readiness),
            |n| Some(f64::from(u8::from(readings::is_ready(n)))),
        ),
        condition_last_transition(naming),
        condition_transitions(naming),
        unschedulable(naming),
        taint(naming),
        info(naming),
        role(naming),
        per_node(
            pick(naming, "k8s.node.created", "kube_node_created"),
            unit(naming, "s"),
            "When the node object was created, in Unix seconds",
            (Kind::FloatGauge, Group::Metadata),
            readings::created,
        ),
        per_node(
            pick(
                naming,
                "k8s.node.deletion_timestamp",
                "kube_node_deletion_timestamp",
            ),
            unit(naming, "s"),
            "When deletion of the node was requested, in Unix seconds; only while it is terminating",
            (Kind::FloatGauge, Group::Metadata),
            readings::deletion_timestamp,
        ),
    ];
    for list in [ResourceList::Allocatable, ResourceList::Capacity] {
        match naming {
            Naming::Otel => {
                out.extend((0..NAMED_RESOURCES.len()).map(|i| named_resource(list, i)));
                out.push(extended_resources(list));
            }
            Naming::KubeStateMetrics => out.push(ksm_resources(list)),
        }
    }
    if naming == Naming::KubeStateMetrics {
        out.extend([labels(), addresses(), pod_cidrs()]);
    }
    out
}

/// The per-node families `settings` read: of the naming mode, in the
/// profile, through the allow and deny lists.
pub fn enabled_families(settings: &ReadingSettings) -> Vec<Family> {
    let heartbeats = match settings.heartbeats {
        true => heartbeat_families(settings.naming),
        false => Vec::new(),
    };
    node_families(settings.naming)
        .into_iter()
        .chain(heartbeats)
        .filter(|f| settings.family_enabled(f.name, f.group))
        // As in kube-state-metrics, kube_node_labels has series only when
        // labels are selected (its allowlist, our --node-labels).
        .filter(|f| f.name != "kube_node_labels" || !settings.node_labels.is_empty())
        .collect()
}

/// Names of the cluster-level instruments in a naming mode: (nodes by Ready status, not-ready fraction).
pub fn cluster_names(naming: Naming) -> (&'static str, &'static str) {
    (
        pick(naming, "k8s.cluster.nodes", "kube_node_cluster_nodes"),
        pick(
            naming,
            "k8s.cluster.node.not_ready",
            "kube_node_cluster_not_ready_ratio",
        ),
    )
}

/// The name of the cluster-level count of nodes by heartbeat.
pub fn cluster_heartbeats_name(naming: Naming) -> &'static str {
    pick(
        naming,
        "k8s.cluster.node.heartbeats",
        "kube_node_cluster_heartbeats",
    )
}

/// The attribute key of the heartbeat state on the cluster-level count.
pub fn heartbeat_state_key(naming: Naming) -> &'static str {
    pick(naming, "k8s.node.heartbeat.state", "state")
}

/// The attribute key of the Ready status on the cluster-level count.
pub fn status_key(naming: Naming) -> &'static str {
    keys(naming).status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricProfile;

    #[test]
    fn units_are_kube_state_metrics_own() {
        for (resource, unit) in [
            ("cpu", "core"),
            ("memory", "byte"),
            ("ephemeral-storage", "byte"),
            ("storage", "byte"),
            ("hugepages-2Mi", "byte"),
            ("attachable-volumes-gce-pd", "byte"),
            ("pods", "integer"),
            ("nvidia.com/gpu", "integer"),
        ] {
            assert_eq!(ksm_unit(resource), unit, "{resource}");
        }
    }

    /// Every point of `node` under `settings`, as "name{attr=value,…} value"
    /// without the node name (the same on every point).
    fn points_of(settings: &ReadingSettings, node: &Node) -> Vec<String> {
        let transitions = Transitions::default();
        let heartbeats = Heartbeats::off();
        let ctx = Ctx {
            settings,
            transitions: &transitions,
            heartbeats: &heartbeats,
        };
        let base = ctx.node_attrs(node).expect("a named node");
        let mut out = Vec::new();
        for family in enabled_families(settings) {
            (family.points)(&ctx, node, &base, &mut |value, attrs| {
                let attrs: Vec<String> = attrs[1..]
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect();
                out.push(format!("{}{{{}}} {value}", family.name, attrs.join(",")));
            });
        }
        out.sort();
        out
    }

    fn node(conditions: &[(&str, &str)], cordoned: bool, taints: &[&str]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "unschedulable": cordoned,
                "taints": taints.iter().map(|k| serde_json::json!({"key": k, "effect": "NoSchedule"})).collect::<Vec<_>>(),
            },
            "status": {
                "conditions": conditions.iter().map(|(t, s)| serde_json::json!({
                    "type": t, "status": s, "lastTransitionTime": "2026-01-01T00:00:10Z",
                })).collect::<Vec<_>>(),
                "allocatable": {"cpu": "4"},
                "capacity": {"cpu": "4"},
                "nodeInfo": {"kubeletVersion": "v1.31.0"},
            },
        }))
        .expect("a valid Node")
    }

    fn settings(profile: MetricProfile, sparse: bool) -> ReadingSettings {
        ReadingSettings {
            profile,
            sparse,
            ..Default::default()
        }
    }

    const HEALTHY: [(&str, &str); 3] = [
        ("Ready", "True"),
        ("MemoryPressure", "False"),
        ("KernelDeadlock", "False"),
    ];

    #[test]
    fn readiness_reads_two_series_of_a_healthy_node() {
        let healthy = node(&HEALTHY, false, &["nvidia.com/gpu"]);
        assert_eq!(
            points_of(&settings(MetricProfile::Readiness, true), &healthy),
            [
                "k8s.node.condition.transitions{k8s.node.condition.type=Ready} 0",
                "k8s.node.ready{} 1",
            ]
        );
    }

    #[test]
    fn readiness_reads_what_each_alert_needs_of_a_node_in_trouble() {
        let sick = node(
            &[
                ("Ready", "Unknown"),
                ("MemoryPressure", "True"),
                ("KernelDeadlock", "False"),
            ],
            true,
            &["node.kubernetes.io/unreachable", "nvidia.com/gpu"],
        );
        assert_eq!(
            points_of(&settings(MetricProfile::Readiness, true), &sick),
            [
                "k8s.node.condition.last_transition_time{k8s.node.condition.type=MemoryPressure} 1767225610",
                "k8s.node.condition.last_transition_time{k8s.node.condition.type=Ready} 1767225610",
                "k8s.node.condition.status{k8s.node.condition.type=MemoryPressure,k8s.node.condition.status=true} 1",
                "k8s.node.condition.status{k8s.node.condition.type=Ready,k8s.node.condition.status=unknown} 1",
                "k8s.node.condition.transitions{k8s.node.condition.type=Ready} 0",
                "k8s.node.ready{} 0",
                "k8s.node.taint{k8s.node.taint.key=node.kubernetes.io/unreachable,k8s.node.taint.value=,k8s.node.taint.effect=NoSchedule} 1",
                "k8s.node.unschedulable{} 1",
            ]
        );
    }

    #[test]
    fn one_hot_unless_sparse_and_profiles_pick_groups() {
        let healthy = node(&HEALTHY, false, &["nvidia.com/gpu"]);
        let names = |p: &[String]| {
            p.iter()
                .map(|l| l.split('{').next().unwrap_or_default().to_string())
                .collect::<std::collections::BTreeSet<_>>()
        };
        // The readiness families, one-hot: three statuses of each condition, cordon 0, every taint.
        let dense = points_of(&settings(MetricProfile::Readiness, false), &healthy);
        assert_eq!(
            dense
                .iter()
                .filter(|p| p.starts_with("k8s.node.condition.status{"))
                .count(),
            9
        );
        assert!(dense.contains(&"k8s.node.unschedulable{} 0".to_string()));
        assert!(
            !dense.iter().any(|p| p.starts_with("k8s.node.taint{")),
            "{dense:?}"
        );
        // Standard adds metadata, full adds resources; sparse applies to any profile.
        let standard = points_of(&settings(MetricProfile::Standard, false), &healthy);
        assert!(names(&standard).contains("k8s.node.info") && names(&standard).contains("k8s.node.created"));
        assert!(
            !names(&standard)
                .iter()
                .any(|n| n.contains("allocatable") || n.contains("capacity"))
        );
        assert!(
            standard
                .iter()
                .any(|p| p.starts_with("k8s.node.taint{k8s.node.taint.key=nvidia.com/gpu"))
        );
        assert_eq!(
            standard
                .iter()
                .filter(|p| p.starts_with("k8s.node.condition.transitions{"))
                .count(),
            3
        );
        let full = points_of(&settings(MetricProfile::Full, false), &healthy);
        assert!(names(&full).contains("k8s.node.cpu.allocatable"));
        let full_sparse = points_of(&settings(MetricProfile::Full, true), &healthy);
        assert!(
            !full_sparse
                .iter()
                .any(|p| p.starts_with("k8s.node.condition.status{"))
        );
        assert_eq!(
            full.len() - full_sparse.len(),
            9 + 3 + 1,
            "statuses, transition times, cordon"
        );
    }

    #[test]
    fn the_allowlist_narrows_a_profile() {
        let healthy = node(&HEALTHY, false, &[]);
        let mut s = settings(MetricProfile::Readiness, true);
        s.allow = Some(regex::Regex::new("^(?:k8s\\.node\\.ready)$").expect("a regex"));
        assert_eq!(points_of(&s, &healthy), ["k8s.node.ready{} 1"]);
        s.allow = Some(regex::Regex::new("^(?:k8s\\.node\\.info)$").expect("a regex"));
        assert!(
            points_of(&s, &healthy).is_empty(),
            "info is not in the readiness profile"
        );
    }

    #[test]
    fn names_are_unique_and_ksm_names_carry_no_unit() {
        for naming in [Naming::Otel, Naming::KubeStateMetrics] {
            let families = node_families(naming);
            let mut names: Vec<&str> = families.iter().map(|f| f.name).collect();
            names.extend([cluster_names(naming).0, cluster_names(naming).1]);
            let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(unique.len(), names.len(), "{naming:?}: {names:?}");
            if naming == Naming::KubeStateMetrics {
                assert!(
                    families
                        .iter()
                        .all(|f| f.unit.is_empty() && f.name.starts_with("kube_node_"))
                );
            }
        }
    }
}

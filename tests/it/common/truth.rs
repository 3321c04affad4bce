//! The truth the simulation holds the exporter to: what the API server
//! stores, read from its objects by code that shares nothing with the
//! exporter's readings, and the checks of `/metrics` and OTLP against it.
//!
//! Counting, as docs/metrics.md defines it ("Counting condition changes"),
//! per node object (name and uid) and condition type, over one exporter
//! process's life:
//! - a status change the watch delivered counts one;
//! - across a gap (a relist after 410 Gone, or a LIST retried from its first
//!   page), the exporter compares the node with what it saw last: one if the
//!   status differs, two if it is the same with a newer `lastTransitionTime`,
//!   none if neither moved. Changes inside a gap beyond that are the loss no
//!   API field reveals, and the checker allows exactly that.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use opentelemetry_proto::tonic::{collector::metrics::v1::ExportMetricsServiceRequest, metrics::v1::metric};

use super::{
    Sample,
    otlp::{self, Receiver},
};

/// One node as the API stores it, as far as the checked families go.
#[derive(Clone, Debug, PartialEq)]
pub struct TruthNode {
    pub uid: String,
    /// Condition type → (status, lastTransitionTime); first entry of a type wins.
    pub conditions: BTreeMap<String, (String, String)>,
    pub taints: BTreeSet<(String, String, String)>,
    pub unschedulable: bool,
    pub zone: Option<String>,
    pub pods: Option<String>,
}

impl TruthNode {
    /// Reads the API object.
    pub fn of(object: &Value) -> TruthNode {
        let mut conditions = BTreeMap::new();
        for c in object["status"]["conditions"].as_array().into_iter().flatten() {
            let type_ = c["type"].as_str().unwrap_or_default().to_string();
            if type_.is_empty() || conditions.contains_key(&type_) {
                continue;
            }
            let status = c["status"].as_str().unwrap_or_default().to_string();
            let since = c["lastTransitionTime"].as_str().unwrap_or_default().to_string();
            conditions.insert(type_, (status, since));
        }
        let taints = object["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                (s("key"), s("value"), s("effect"))
            })
            .collect();
        TruthNode {
            uid: object["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
            conditions,
            taints,
            unschedulable: object["spec"]["unschedulable"].as_bool().unwrap_or(false),
            zone: object["metadata"]["labels"]["topology.kubernetes.io/zone"]
                .as_str()
                .map(str::to_string),
            pods: object["status"]["allocatable"]["pods"]
                .as_str()
                .map(str::to_string),
        }
    }

    fn status(&self, type_: &str) -> &str {
        self.conditions.get(type_).map_or("", |(s, _)| s.as_str())
    }
}

/// The cluster as the API stores it, by node name.
pub type Truth = BTreeMap<String, TruthNode>;

/// The status label of a raw status: anything but True and False reads unknown.
fn status_label(status: &str) -> &'static str {
    match status {
        "True" => "true",
        "False" => "false",
        _ => "unknown",
    }
}

/// What one exporter process should count, per (name, uid, type): a range,
/// exact when no gap could hide a change.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// (name, uid, type) → (least, most).
    pub bounds: BTreeMap<(String, String, String), (u64, u64)>,
}

impl Counts {
    /// Starts counting at `truth`: every condition present at zero.
    pub fn start(truth: &Truth) -> Counts {
        let mut counts = Counts::default();
        counts.sync(truth, truth, false, &BTreeMap::new());
        counts
    }

    /// Moves the bounds from `before` to `after`, given the status changes
    /// the simulator made in between (`changes`, per (name, uid, type));
    /// `gap` when a relist may have hidden some of them.
    pub fn sync(
        &mut self,
        before: &Truth,
        after: &Truth,
        gap: bool,
        changes: &BTreeMap<(String, String, String), u64>,
    ) {
        let mut next = BTreeMap::new();
        for (name, node) in after {
            for (type_, (status, since)) in &node.conditions {
                let key = (name.clone(), node.uid.clone(), type_.clone());
                let (least, most) = self.bounds.get(&key).copied().unwrap_or((0, 0));
                let made = changes.get(&key).copied().unwrap_or(0);
                let old = before.get(name).filter(|b| b.uid == node.uid);
                let seen = old.and_then(|b| b.conditions.get(type_));
                let shown = match seen {
                    None => 0,
                    Some((s, _)) if s != status => 1,
                    Some((_, t)) if t != since => 2,
                    Some(_) => 0,
                };
                let (add_least, add_most) = if gap {
                    (shown.min(made), made)
                } else {
                    (made, made)
                };
                next.insert(key, (least + add_least, most + add_most));
            }
        }
        self.bounds = next;
    }
}

/// Differences between a `/metrics` scrape and the truth; empty when it
/// tells the truth.
pub fn check_metrics(samples: &[Sample], truth: &Truth, counts: &Counts) -> Vec<String> {
    let mut wrong = Vec::new();
    let node_of = |s: &Sample| s.labels.get("k8s_node_name").cloned();
    // No ghost and no missing node, in any per-node family.
    let mut shown: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name.starts_with("k8s_node_")) {
        if let Some(n) = node_of(s) {
            shown.entry(s.name.as_str()).or_default().insert(n);
        }
    }
    let names: BTreeSet<String> = truth.keys().cloned().collect();
    for family in [
        "k8s_node_ready",
        "k8s_node_condition_status",
        "k8s_node_unschedulable",
    ] {
        let got = shown.remove(family).unwrap_or_default();
        if got != names {
            let ghosts: Vec<_> = got.difference(&names).collect();
            let missing: Vec<_> = names.difference(&got).collect();
            wrong.push(format!("{family}: ghosts {ghosts:?}, missing {missing:?}"));
        }
    }
    for (family, got) in shown {
        let ghosts: Vec<_> = got.difference(&names).collect();
        if !ghosts.is_empty() {
            wrong.push(format!("{family}: ghosts {ghosts:?}"));
        }
    }
    let get = |family: &str, node: &str, extra: &[(&str, &str)]| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| {
                s.name == family
                    && s.labels.get("k8s_node_name").map(String::as_str) == Some(node)
                    && extra
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    };
    let one = |family: &str, node: &str, extra: &[(&str, &str)]| -> Option<f64> {
        let hits = get(family, node, extra);
        (hits.len() == 1).then(|| hits[0].value)
    };
    for (name, node) in truth {
        let ready = f64::from(u8::from(node.status("Ready") == "True"));
        if one("k8s_node_ready", name, &[]) != Some(ready) {
            wrong.push(format!(
                "{name}: k8s_node_ready is {:?}, want {ready}",
                one("k8s_node_ready", name, &[])
            ));
        }
        let zone = get("k8s_node_ready", name, &[]).first().and_then(|s| {
            s.labels
                .get("k8s_node_label_topology_kubernetes_io_zone")
                .cloned()
        });
        if zone != node.zone {
            wrong.push(format!("{name}: zone label {zone:?}, want {:?}", node.zone));
        }
        let cordoned = f64::from(u8::from(node.unschedulable));
        if one("k8s_node_unschedulable", name, &[]) != Some(cordoned) {
            wrong.push(format!("{name}: unschedulable, want {cordoned}"));
        }
        for (type_, (status, _)) in &node.conditions {
            for label in ["true", "false", "unknown"] {
                let want = f64::from(u8::from(status_label(status) == label));
                let got = one(
                    "k8s_node_condition_status",
                    name,
                    &[
                        ("k8s_node_condition_type", type_),
                        ("k8s_node_condition_status", label),
                    ],
                );
                if got != Some(want) {
                    wrong.push(format!("{name}: {type_}={label} is {got:?}, want {want}"));
                }
            }
            let key = (name.clone(), node.uid.clone(), type_.clone());
            let (least, most) = counts.bounds.get(&key).copied().unwrap_or((0, 0));
            let got = one(
                "k8s_node_condition_transitions_total",
                name,
                &[("k8s_node_condition_type", type_)],
            );
            if !got.is_some_and(|v| v >= least as f64 && v <= most as f64) {
                wrong.push(format!(
                    "{name}: {type_} transitions {got:?}, want {least}..={most}"
                ));
            }
        }
        let taints: BTreeSet<(String, String, String)> = get("k8s_node_taint", name, &[])
            .iter()
            .filter(|s| s.value == 1.0)
            .map(|s| {
                let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
                (
                    l("k8s_node_taint_key"),
                    l("k8s_node_taint_value"),
                    l("k8s_node_taint_effect"),
                )
            })
            .collect();
        if taints != node.taints {
            wrong.push(format!("{name}: taints {taints:?}, want {:?}", node.taints));
        }
        let pods = node.pods.as_deref().and_then(|p| p.parse::<f64>().ok());
        if one("k8s_node_pod_allocatable", name, &[]) != pods {
            wrong.push(format!("{name}: pods allocatable, want {pods:?}"));
        }
    }
    let by_status = |label: &str| {
        truth
            .values()
            .filter(|n| status_label(n.status("Ready")) == label)
            .count()
    };
    for label in ["true", "false", "unknown"] {
        let got = samples
            .iter()
            .find(|s| {
                s.name == "k8s_cluster_nodes"
                    && s.labels.get("k8s_node_condition_status").map(String::as_str) == Some(label)
            })
            .map(|s| s.value);
        if got != Some(by_status(label) as f64) {
            wrong.push(format!(
                "k8s_cluster_nodes{{{label}}} is {got:?}, want {}",
                by_status(label)
            ));
        }
    }
    let ratio = if truth.is_empty() {
        0.0
    } else {
        (truth.len() - by_status("true")) as f64 / truth.len() as f64
    };
    let got = samples
        .iter()
        .find(|s| s.name == "k8s_cluster_node_not_ready_ratio")
        .map(|s| s.value);
    if !got.is_some_and(|g| (g - ratio).abs() < 1e-9) {
        wrong.push(format!(
            "k8s_cluster_node_not_ready_ratio is {got:?}, want {ratio}"
        ));
    }
    wrong
}

/// OTLP's node readings and counters against the truth; cumulative points never go down under one start time.
pub fn check_otlp(req: &ExportMetricsServiceRequest, truth: &Truth) -> Vec<String> {
    let mut wrong = Vec::new();
    let ready: BTreeMap<String, f64> = otlp::points(req, "k8s.node.ready")
        .into_iter()
        .map(|(a, v)| (a.get("k8s.node.name").cloned().unwrap_or_default(), v))
        .collect();
    let want: BTreeMap<String, f64> = truth
        .iter()
        .map(|(n, t)| {
            let up = t.conditions.get("Ready").is_some_and(|(s, _)| s == "True");
            (n.clone(), f64::from(u8::from(up)))
        })
        .collect();
    if ready != want {
        wrong.push(format!("OTLP k8s.node.ready {ready:?}, want {want:?}"));
    }
    // Every condition, one-hot, and no node or condition that is not there.
    let got: BTreeMap<(String, String, String), f64> = otlp::points(req, "k8s.node.condition.status")
        .into_iter()
        .map(|(a, v)| {
            let get = |k: &str| a.get(k).cloned().unwrap_or_default();
            (
                (
                    get("k8s.node.name"),
                    get("k8s.node.condition.type"),
                    get("k8s.node.condition.status"),
                ),
                v,
            )
        })
        .collect();
    let mut want = BTreeMap::new();
    for (name, node) in truth {
        for (type_, (status, _)) in &node.conditions {
            let status = match status.as_str() {
                "True" => "true",
                "False" => "false",
                _ => "unknown",
            };
            for label in ["true", "false", "unknown"] {
                want.insert(
                    (name.clone(), type_.clone(), label.to_string()),
                    f64::from(u8::from(label == status)),
                );
            }
        }
    }
    if got != want {
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, v)| want.get(*k) != Some(*v))
            .take(5)
            .collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .take(5)
            .collect();
        wrong.push(format!(
            "OTLP k8s.node.condition.status: wrong or extra {extra:?}, missing {missing:?}"
        ));
    }
    wrong
}

/// Every cumulative point so far: (metric, attributes, start) → the values in order.
pub fn cumulative_lies(requests: &[ExportMetricsServiceRequest]) -> Vec<String> {
    let mut highest: BTreeMap<(String, String, u64), f64> = BTreeMap::new();
    let mut wrong = Vec::new();
    for req in requests {
        for m in req
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
        {
            let Some(metric::Data::Sum(sum)) = &m.data else {
                continue;
            };
            for p in &sum.data_points {
                let mut attrs: Vec<String> = p
                    .attributes
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, otlp::any_value(&kv.value)))
                    .collect();
                attrs.sort();
                let value = match p.value {
                    Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => {
                        i as f64
                    }
                    Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d)) => d,
                    None => continue,
                };
                let key = (m.name.clone(), attrs.join(","), p.start_time_unix_nano);
                let top = highest.entry(key.clone()).or_insert(value);
                if value < *top {
                    wrong.push(format!(
                        "{} {{{}}} went from {} down to {} under start time {}",
                        key.0, key.1, top, value, key.2
                    ));
                }
                *top = top.max(value);
            }
        }
    }
    wrong
}

/// The condition-change records against the counters of the only replica:
/// each record of a status change stands for one counted change, each of a
/// change-and-back (previous = status) for two.
pub fn check_records(receiver: &Receiver, samples: &[Sample], truth: &Truth, since: usize) -> Vec<String> {
    let mut implied: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for r in receiver.log_records().iter().skip(since) {
        let a: BTreeMap<String, String> = r
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), otlp::any_value(&kv.value)))
            .collect();
        let get = |k: &str| a.get(k).cloned().unwrap_or_default();
        let weight = if get("k8s.node.condition.previous_status") == get("k8s.node.condition.status") {
            2.0
        } else {
            1.0
        };
        *implied
            .entry((
                get("k8s.node.name"),
                get("k8s.node.uid"),
                get("k8s.node.condition.type"),
            ))
            .or_default() += weight;
    }
    let mut wrong = Vec::new();
    for (name, node) in truth {
        for type_ in node.conditions.keys() {
            let counted = super::value(
                samples,
                "k8s_node_condition_transitions_total",
                &[("k8s_node_name", name), ("k8s_node_condition_type", type_)],
            )
            .unwrap_or(0.0);
            let recorded = implied
                .get(&(name.clone(), node.uid.clone(), type_.clone()))
                .copied()
                .unwrap_or(0.0);
            if counted != recorded {
                wrong.push(format!(
                    "{name} {type_}: counted {counted}, records say {recorded}"
                ));
            }
        }
    }
    wrong
}

/// The changes in `made` that no record reports: none may be missed, one
/// replica or several, whoever leads when it happens.
pub fn records_missed(receiver: &Receiver, made: &[(String, String, String, String, String)]) -> Vec<String> {
    let label = |s: &str| match s {
        "True" => "true",
        "False" => "false",
        _ => "unknown",
    };
    let reported: std::collections::BTreeSet<(String, String, String, String, String)> = receiver
        .log_records()
        .iter()
        .map(|r| {
            let a: BTreeMap<&str, String> = r
                .attributes
                .iter()
                .map(|kv| (kv.key.as_str(), otlp::any_value(&kv.value)))
                .collect();
            let get = |k: &str| a.get(k).cloned().unwrap_or_default();
            (
                get("k8s.node.name"),
                get("k8s.node.uid"),
                get("k8s.node.condition.type"),
                get("k8s.node.condition.previous_status"),
                get("k8s.node.condition.status"),
            )
        })
        .collect();
    made.iter()
        .filter(|(n, u, t, p, s)| {
            !reported.contains(&(
                n.clone(),
                u.clone(),
                t.clone(),
                label(p).to_string(),
                label(s).to_string(),
            ))
        })
        .map(|(n, _, t, p, s)| format!("no record of {n} {t}: {p} → {s}"))
        .collect()
}

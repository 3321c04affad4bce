//! The instruments: observable gauges and counters whose callbacks read the view.
//!
//! Callbacks are synchronous and run once per collection of the provider they
//! are registered on. They read the in-memory view and never call the API.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use opentelemetry::{KeyValue, metrics::Meter};
use tokio::sync::Notify;

use crate::{
    cluster::{ApiVerb, ErrorReason, EventKind, View},
    readings::{self, ClusterSummary, ConditionStatus},
};

use super::otlp::ExportStats;

/// Names of the instruments: a contract with users' dashboards.
pub mod names {
    /// One-hot condition status per node and condition type.
    pub const CONDITION_STATUS: &str = "k8s.node.condition.status";
    /// 1 if the node's Ready condition is True.
    pub const NODE_READY: &str = "k8s.node.ready";
    /// Nodes by the status of their Ready condition.
    pub const CLUSTER_NODES: &str = "k8s.cluster.nodes";
    /// Fraction of nodes that are not Ready.
    pub const NOT_READY: &str = "k8s.cluster.node.not_ready";
    /// Watch events by type.
    pub const WATCH_EVENTS: &str = "kube_node_status.watch.events";
    /// Relists after the first.
    pub const WATCH_RESTARTS: &str = "kube_node_status.watch.restarts";
    /// Watch errors by reason.
    pub const WATCH_ERRORS: &str = "kube_node_status.watch.errors";
    /// API requests by verb.
    pub const API_REQUESTS: &str = "kube_node_status.api.requests";
    /// OTLP export failures.
    pub const EXPORT_FAILURES: &str = "kube_node_status.otlp.export.failures";
    /// Staleness of the view.
    pub const VIEW_AGE: &str = "kube_node_status.view.age";
    /// Build information.
    pub const BUILD_INFO: &str = "kube_node_status.build.info";

    /// Instruments with a point per node (or more): their cardinality limit follows the data.
    pub const PER_NODE: [&str; 2] = [CONDITION_STATUS, NODE_READY];
}

/// Attribute keys.
pub mod keys {
    /// The node's name.
    pub const NODE_NAME: &str = "k8s.node.name";
    /// The condition type, verbatim.
    pub const CONDITION_TYPE: &str = "k8s.node.condition.type";
    /// `true`, `false` or `unknown`.
    pub const CONDITION_STATUS: &str = "k8s.node.condition.status";
}

/// The cardinality limit a provider was built with, and a way to ask for more.
///
/// A callback that would exceed the limit emits nothing for its per-node
/// instrument (instead of folding points into `otel.metric.overflow`) and
/// asks for a rebuild with a larger limit.
#[derive(Clone, Debug)]
pub struct Capacity {
    limit: usize,
    wanted: Arc<AtomicUsize>,
    notify: Arc<Notify>,
}

impl Capacity {
    /// A capacity of `limit` points per instrument reporting to `wanted`/`notify`.
    pub fn new(limit: usize, wanted: Arc<AtomicUsize>, notify: Arc<Notify>) -> Self {
        Capacity {
            limit,
            wanted,
            notify,
        }
    }

    /// True if `points` fit; otherwise records the demand and wakes the resizer.
    fn admits(&self, points: usize) -> bool {
        if points <= self.limit {
            return true;
        }
        self.wanted.fetch_max(points, Ordering::AcqRel);
        self.notify.notify_one();
        tracing::debug!(
            points,
            limit = self.limit,
            "per-node points deferred until the provider is resized"
        );
        false
    }
}

/// What the callbacks read.
#[derive(Clone)]
pub struct Sources {
    /// The cluster view.
    pub view: View,
    /// OTLP export counters.
    pub export: Arc<ExportStats>,
}

/// Registers every instrument on `meter`.
pub fn register(meter: &Meter, sources: &Sources, capacity: &Capacity) {
    register_node_readings(meter, &sources.view, capacity);
    register_cluster_readings(meter, &sources.view);
    register_self_telemetry(meter, sources);
}

fn register_node_readings(meter: &Meter, view: &View, capacity: &Capacity) {
    let (v, cap) = (view.clone(), capacity.clone());
    meter
        .u64_observable_gauge(names::CONDITION_STATUS)
        .with_unit("{node}")
        .with_description(
            "Status of each node condition, one-hot: for every condition present on a node, \
             1 for its current status (true, false or unknown) and 0 for the other two",
        )
        .with_callback(move |obs| {
            let nodes = v.nodes();
            // Read each node once; the same readings size the demand and feed the points.
            let per_node: Vec<(&str, Vec<readings::ConditionReading<'_>>)> = nodes
                .iter()
                .filter_map(|node| Some((readings::node_name(node)?, readings::conditions(node))))
                .collect();
            let points = per_node.iter().map(|(_, c)| c.len()).sum::<usize>() * ConditionStatus::ALL.len();
            if !cap.admits(points) {
                return;
            }
            for (name, conditions) in &per_node {
                let name_kv = KeyValue::new(keys::NODE_NAME, name.to_string());
                for c in conditions {
                    let type_kv = KeyValue::new(keys::CONDITION_TYPE, c.type_.to_string());
                    for s in ConditionStatus::ALL {
                        obs.observe(
                            u64::from(c.status == s),
                            &[
                                name_kv.clone(),
                                type_kv.clone(),
                                KeyValue::new(keys::CONDITION_STATUS, s.as_str()),
                            ],
                        );
                    }
                }
            }
        })
        .build();

    let (v, cap) = (view.clone(), capacity.clone());
    meter
        .u64_observable_gauge(names::NODE_READY)
        .with_unit("{node}")
        .with_description(
            "1 if the node's Ready condition is True, otherwise 0 (also when it has no Ready condition)",
        )
        .with_callback(move |obs| {
            let nodes = v.nodes();
            if !cap.admits(nodes.len()) {
                return;
            }
            for node in &nodes {
                let Some(name) = readings::node_name(node) else {
                    continue;
                };
                obs.observe(
                    u64::from(readings::is_ready(node)),
                    &[KeyValue::new(keys::NODE_NAME, name.to_string())],
                );
            }
        })
        .build();
}

fn register_cluster_readings(meter: &Meter, view: &View) {
    // Before the first sync the view is empty, and zero nodes would read as an
    // empty (healthy) cluster: cluster-level readings are absent instead.
    let v = view.clone();
    meter
        .u64_observable_gauge(names::CLUSTER_NODES)
        .with_unit("{node}")
        .with_description(
            "Number of nodes by the status of their Ready condition; a missing Ready counts as unknown",
        )
        .with_callback(move |obs| {
            if !v.health().is_synced() {
                return;
            }
            let summary = ClusterSummary::of(v.nodes().iter().map(|n| &**n));
            for s in ConditionStatus::ALL {
                obs.observe(
                    summary.count(s),
                    &[KeyValue::new(keys::CONDITION_STATUS, s.as_str())],
                );
            }
        })
        .build();

    let v = view.clone();
    meter
        .f64_observable_gauge(names::NOT_READY)
        .with_unit("1")
        .with_description(
            "Fraction of nodes, from 0 to 1, whose Ready condition is not True; 0 when there are no nodes",
        )
        .with_callback(move |obs| {
            if !v.health().is_synced() {
                return;
            }
            obs.observe(
                ClusterSummary::of(v.nodes().iter().map(|n| &**n)).not_ready_fraction(),
                &[],
            );
        })
        .build();
}

fn register_self_telemetry(meter: &Meter, sources: &Sources) {
    let health = sources.view.health().clone();
    meter
        .u64_observable_counter(names::WATCH_EVENTS)
        .with_unit("{event}")
        .with_description("Node watcher events received, by type")
        .with_callback(move |obs| {
            for kind in EventKind::ALL {
                obs.observe(
                    health.stats().events(kind),
                    &[KeyValue::new("type", kind.as_str())],
                );
            }
        })
        .build();

    let health = sources.view.health().clone();
    meter
        .u64_observable_counter(names::WATCH_RESTARTS)
        .with_unit("{restart}")
        .with_description("Relists of all nodes after the first, e.g. forced by 410 Gone")
        .with_callback(move |obs| obs.observe(health.stats().restarts(), &[]))
        .build();

    let health = sources.view.health().clone();
    meter
        .u64_observable_counter(names::WATCH_ERRORS)
        .with_unit("{error}")
        .with_description("Failed node list or watch steps, by reason")
        .with_callback(move |obs| {
            for reason in ErrorReason::ALL {
                obs.observe(
                    health.stats().errors(reason),
                    &[KeyValue::new("reason", reason.as_str())],
                );
            }
        })
        .build();

    let health = sources.view.health().clone();
    meter
        .u64_observable_counter(names::API_REQUESTS)
        .with_unit("{request}")
        .with_description("Node LIST pages and WATCH requests sent to the Kubernetes API")
        .with_callback(move |obs| {
            for verb in ApiVerb::ALL {
                obs.observe(
                    health.stats().requests(verb),
                    &[KeyValue::new("verb", verb.as_str())],
                );
            }
        })
        .build();

    let export = sources.export.clone();
    meter
        .u64_observable_counter(names::EXPORT_FAILURES)
        .with_unit("{failure}")
        .with_description("OTLP metric exports that failed")
        .with_callback(move |obs| obs.observe(export.failures(), &[]))
        .build();

    let health = sources.view.health().clone();
    meter
        .f64_observable_gauge(names::VIEW_AGE)
        .with_unit("s")
        .with_description("Seconds since the node watch broke; 0 while it is connected and current")
        .with_callback(move |obs| obs.observe(health.age(Instant::now()).as_secs_f64(), &[]))
        .build();

    meter
        .u64_observable_gauge(names::BUILD_INFO)
        .with_description("Always 1; its attributes describe the running build")
        .with_callback(|obs| obs.observe(1, &[KeyValue::new("version", env!("CARGO_PKG_VERSION"))]))
        .build();
}

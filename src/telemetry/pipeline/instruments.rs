//! The instruments: observable gauges and counters whose callbacks read the view.
//!
//! Callbacks are synchronous and run once per collection of the provider they
//! are registered on. They read the in-memory view and never call the API.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use opentelemetry::{KeyValue, metrics::Meter};
use tokio::sync::Notify;

use crate::{
    cluster::{ApiVerb, ErrorReason, EventKind, Node, View},
    config::{Naming, ReadingSettings},
    leader::Leadership,
    readings::{ClusterSummary, ConditionStatus, HeartbeatSummary},
};

use super::families::{self, Ctx, Family, Kind};
use crate::telemetry::otlp::ExportStats;

/// Names of the self-telemetry instruments (the same in every naming mode).
pub mod names {
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
    /// OTLP exports refused for credentials or permissions.
    pub const EXPORT_DENIED: &str = "kube_node_status.otlp.export.denied";
    /// OTLP metric points a receiver took a request for and refused.
    pub const EXPORT_REJECTED: &str = "kube_node_status.otlp.export.rejected";
    /// Staleness of the view.
    pub const VIEW_AGE: &str = "kube_node_status.view.age";
    /// Build information.
    pub const BUILD_INFO: &str = "kube_node_status.build.info";
    /// 1 while this replica holds the leader Lease (with leader election on).
    pub const LEADER: &str = "kube_node_status.leader";
    /// Shards of nodes whose readings were written again, by output.
    pub const SHARDS_WRITTEN: &str = "kube_node_status.shards.written";
    /// Series served, by family.
    pub const SERIES: &str = "kube_node_status.series";
    /// Condition-change log records, by what became of them.
    pub const LOG_RECORDS: &str = "kube_node_status.logs.records";
    /// Condition-change log records waiting for the collector.
    pub const LOG_QUEUED: &str = "kube_node_status.logs.queued";
    /// HTTP connections open.
    pub const HTTP_CONNECTIONS: &str = "kube_node_status.http.connections";
    /// HTTP connections refused, every slot serving a request.
    pub const HTTP_REFUSED: &str = "kube_node_status.http.connections.refused";
    /// Idle HTTP connections closed to make room for new ones.
    pub const HTTP_EVICTED: &str = "kube_node_status.http.connections.evicted";
    /// /metrics requests by how their credentials were judged.
    pub const AUTH_REQUESTS: &str = "kube_node_status.auth.requests";
    /// Token lookups with --auth-kubernetes, by outcome.
    pub const AUTH_LOOKUPS: &str = "kube_node_status.auth.lookups";
    /// Failed node Lease list or watch steps (with `--node-leases`).
    pub const LEASE_WATCH_ERRORS: &str = "kube_node_status.lease_watch.errors";
    /// Kubelet heartbeats found lost or resumed (with `--node-leases`).
    pub const HEARTBEAT_CHANGES: &str = "kube_node_status.heartbeat.changes";
    /// The serving certificate's notAfter.
    pub const TLS_EXPIRY: &str = "kube_node_status.tls.certificate.expiration_timestamp";
    /// Changed certificate files that did not load.
    pub const TLS_RELOAD_FAILURES: &str = "kube_node_status.tls.certificate.reload_failures";
}

/// What the outputs redid since start: shards of nodes whose readings were
/// written again. An update that changes nothing kept writes none.
#[derive(Debug, Default)]
pub struct Work {
    /// Shards of the `/metrics` node section rendered.
    pub rendered: std::sync::atomic::AtomicU64,
    /// Shards of the OTLP cache collected and encoded.
    pub encoded: std::sync::atomic::AtomicU64,
    /// The series each family serves, as of the last pass (empty before it).
    pub series: std::sync::Mutex<Vec<(String, u64)>>,
}

/// The cardinality limits a provider was built with, and a way to ask for more.
///
/// A callback that would exceed its instrument's limit emits nothing for it
/// (instead of folding points into `otel.metric.overflow`) and asks for a
/// rebuild with larger limits.
#[derive(Clone, Debug)]
pub struct Capacity {
    limits: Arc<HashMap<&'static str, usize>>,
    resize: Arc<AtomicBool>,
    notify: Arc<Notify>,
    deferred: Arc<std::sync::atomic::AtomicU64>,
}

impl Capacity {
    /// Per-instrument `limits`; overflows are reported through `resize` and
    /// `notify`, and counted in `deferred`: a collection during which it
    /// moved withheld a whole family, and shows only part of the truth.
    pub fn new(
        limits: Arc<HashMap<&'static str, usize>>,
        resize: Arc<AtomicBool>,
        notify: Arc<Notify>,
        deferred: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Capacity {
            limits,
            resize,
            notify,
            deferred,
        }
    }

    /// True if `points` of instrument `name` fit; otherwise wakes the resizer.
    fn admits(&self, name: &str, points: usize) -> bool {
        let limit = self
            .limits
            .get(name)
            .copied()
            .unwrap_or(crate::telemetry::MIN_CARDINALITY_LIMIT);
        if points <= limit {
            return true;
        }
        self.deferred.fetch_add(1, Ordering::AcqRel);
        self.resize.store(true, Ordering::Release);
        self.notify.notify_one();
        tracing::debug!(
            instrument = name,
            points,
            limit,
            "points deferred until the provider is resized"
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
    /// Naming, filters and label allowlist.
    pub settings: Arc<ReadingSettings>,
    /// Whether this replica exports node readings now.
    pub leadership: Leadership,
    /// What the outputs redid.
    pub work: Arc<Work>,
    /// What became of the condition-change log records, when they are on.
    pub logs: Option<Arc<crate::telemetry::logs::LogStats>>,
    /// The served surface: connections, scrape authentication, the certificate.
    pub surface: Arc<crate::surface::SurfaceStats>,
}

/// Which instruments a long-lived provider carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Everything: the reference Prometheus pipeline, collected whole at every scrape.
    All,
    /// Self-telemetry only: `/metrics` and OTLP, whose per-node families
    /// are collected apart, from short-lived providers.
    SelfOnly,
}

/// Registers the instruments of `group` on `meter`.
pub fn register(meter: &Meter, group: Group, sources: &Sources, capacity: &Capacity) {
    if group == Group::All {
        for family in families::enabled_families(&sources.settings) {
            register_family(meter, family, sources, capacity);
        }
        register_cluster_readings(meter, sources, None);
    }
    register_self_telemetry(meter, sources);
}

/// Every point of `family` over the current view.
fn family_points(family: &Family, sources: &Sources) -> Vec<(f64, Vec<KeyValue>)> {
    points_of(family, sources, &sources.view.nodes())
}

/// The points of `family` for `nodes`.
pub fn points_of(family: &Family, sources: &Sources, nodes: &[Arc<Node>]) -> Vec<(f64, Vec<KeyValue>)> {
    let ctx = Ctx {
        settings: &sources.settings,
        transitions: sources.view.transitions(),
        heartbeats: sources.view.heartbeats(),
    };
    let mut points = Vec::new();
    for node in nodes {
        if let Some(base) = ctx.node_attrs(node) {
            (family.points)(&ctx, node, &base, &mut |v, attrs| points.push((v, attrs)));
        }
    }
    points
}

#[cfg(test)]
/// Registers `family`'s instrument with a callback that observes `points`
/// once: for a provider that lives for one collection.
pub fn register_observed(meter: &Meter, family: &Family, points: Vec<(f64, Vec<KeyValue>)>) {
    let points = std::sync::Mutex::new(Some(points));
    build(
        meter,
        family.name,
        family.unit,
        family.help,
        family.kind,
        move || points.lock().unwrap_or_else(|e| e.into_inner()).take(),
    );
}

fn register_family(meter: &Meter, family: Family, sources: &Sources, capacity: &Capacity) {
    let (name, unit, help, kind) = (family.name, family.unit, family.help, family.kind);
    let (sources, cap) = (sources.clone(), capacity.clone());
    // All points are gathered before any is observed, so an instrument either
    // reports the whole cluster or nothing; never a truncated set.
    build(meter, name, unit, help, kind, move || {
        if !sources.leadership.is_leader() {
            return None;
        }
        // The long-lived provider of node families feeds only the reference
        // `/metrics` encoder: its points carry what `/metrics` carries.
        let mut points = family_points(&family, &sources);
        for (_, attrs) in points.iter_mut() {
            families::strip_for_metrics(&family, sources.settings.naming, attrs);
        }
        cap.admits(family.name, points.len()).then_some(points)
    });
}

/// Builds an observable instrument of `kind` whose callback observes what `points` returns.
fn build(
    meter: &Meter,
    name: &'static str,
    unit: &'static str,
    help: &'static str,
    kind: Kind,
    points: impl Fn() -> Option<Vec<(f64, Vec<KeyValue>)>> + Send + Sync + 'static,
) {
    match kind {
        Kind::IntGauge => {
            let b = meter.u64_observable_gauge(name).with_description(help);
            let b = if unit.is_empty() { b } else { b.with_unit(unit) };
            b.with_callback(move |obs| {
                for (v, attrs) in points().into_iter().flatten() {
                    obs.observe(v as u64, &attrs);
                }
            })
            .build();
        }
        Kind::FloatGauge => {
            let b = meter.f64_observable_gauge(name).with_description(help);
            let b = if unit.is_empty() { b } else { b.with_unit(unit) };
            b.with_callback(move |obs| {
                for (v, attrs) in points().into_iter().flatten() {
                    obs.observe(v, &attrs);
                }
            })
            .build();
        }
        Kind::Counter => {
            let b = meter.u64_observable_counter(name).with_description(help);
            let b = if unit.is_empty() { b } else { b.with_unit(unit) };
            b.with_callback(move |obs| {
                for (v, attrs) in points().into_iter().flatten() {
                    obs.observe(v as u64, &attrs);
                }
            })
            .build();
        }
    }
}

/// The Ready counts a pass keeps node by node, read by the cluster-wide
/// readings' callbacks; `None` inside until the first pass.
pub type KeptSummary = std::sync::Arc<std::sync::Mutex<Option<ClusterSummary>>>;

/// Registers the cluster-wide readings (node counts by Ready status, not-ready ratio).
pub fn register_cluster_readings(meter: &Meter, sources: &Sources, summary: Option<KeptSummary>) {
    // Counted from the view unless the caller keeps the count: the pass does,
    // node by node as they change, so that a change does not cost a walk of
    // the whole cluster.
    let summary = move |v: &View| {
        summary
            .as_ref()
            .and_then(|kept| *kept.lock().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_else(|| {
                let nodes = v.nodes();
                ClusterSummary {
                    heartbeats: HeartbeatSummary::of(v.heartbeats(), nodes.iter().map(|n| &**n)),
                    ..ClusterSummary::of(nodes.iter().map(|n| &**n))
                }
            })
    };
    let naming = sources.settings.naming;
    let (nodes_name, not_ready_name) = families::cluster_names(naming);
    let status_key = families::status_key(naming);
    let otel = naming == Naming::Otel;
    // Before the first sync the view is empty, and zero nodes would read as an
    // empty (healthy) cluster: cluster-level readings are absent instead.
    if sources.settings.enabled(nodes_name) {
        let (v, leader, summary) = (sources.view.clone(), sources.leadership.clone(), summary.clone());
        let b = meter.u64_observable_gauge(nodes_name).with_description(
            "Number of nodes by the status of their Ready condition; a missing Ready counts as unknown",
        );
        let b = if otel { b.with_unit("{node}") } else { b };
        b.with_callback(move |obs| {
            if !v.health().is_synced() || !leader.is_leader() {
                return;
            }
            let summary = summary(&v);
            for s in ConditionStatus::ALL {
                obs.observe(summary.count(s), &[KeyValue::new(status_key, s.as_str())]);
            }
        })
        .build();
    }
    let heartbeats_name = families::cluster_heartbeats_name(naming);
    if sources.settings.heartbeats && sources.settings.enabled(heartbeats_name) {
        let (v, leader, summary) = (sources.view.clone(), sources.leadership.clone(), summary.clone());
        let state_key = families::heartbeat_state_key(naming);
        let b = meter.u64_observable_gauge(heartbeats_name).with_description(
            "Number of nodes by their kubelet heartbeat: fresh (the node Lease renewed within \
             --heartbeat-stale-after), stale, or missing (no Lease)",
        );
        let b = if otel { b.with_unit("{node}") } else { b };
        b.with_callback(move |obs| {
            // Absent until both the nodes and the Leases are listed: zero would read as healthy.
            if !v.health().is_synced() || !v.heartbeats().is_synced() || !leader.is_leader() {
                return;
            }
            for (state, count) in summary(&v).heartbeats.by_state() {
                obs.observe(count, &[KeyValue::new(state_key, state)]);
            }
        })
        .build();
    }
    if sources.settings.enabled(not_ready_name) {
        let (v, leader) = (sources.view.clone(), sources.leadership.clone());
        let b = meter.f64_observable_gauge(not_ready_name).with_description(
            "Fraction of nodes, from 0 to 1, whose Ready condition is not True; 0 when there are no nodes",
        );
        // The unit makes the Prometheus name end in _ratio; the kube-state-metrics name already does.
        let b = if otel { b.with_unit("1") } else { b };
        b.with_callback(move |obs| {
            if !v.health().is_synced() || !leader.is_leader() {
                return;
            }
            obs.observe(summary(&v).not_ready_fraction(), &[]);
        })
        .build();
    }
}

fn register_self_telemetry(meter: &Meter, sources: &Sources) {
    let on = |name: &str| sources.settings.enabled(name);
    let health = sources.view.health();
    if sources.leadership.is_elected() && on(names::LEADER) {
        let leader = sources.leadership.clone();
        meter
            .u64_observable_gauge(names::LEADER)
            .with_description("1 while this replica holds the leader Lease and exports node readings, else 0")
            .with_callback(move |obs| obs.observe(u64::from(leader.is_leader()), &[]))
            .build();
    }
    if on(names::WATCH_EVENTS) {
        let h = health.clone();
        meter
            .u64_observable_counter(names::WATCH_EVENTS)
            .with_unit("{event}")
            .with_description("Node watcher events received, by type")
            .with_callback(move |obs| {
                for kind in EventKind::ALL {
                    obs.observe(h.stats().events(kind), &[KeyValue::new("type", kind.as_str())]);
                }
            })
            .build();
    }
    if sources.view.heartbeats().enabled() && on(names::LEASE_WATCH_ERRORS) {
        let v = sources.view.clone();
        meter
            .u64_observable_counter(names::LEASE_WATCH_ERRORS)
            .with_unit("{error}")
            .with_description("Failed node Lease list or watch steps (a missing Role is one per retry)")
            .with_callback(move |obs| {
                obs.observe(v.heartbeats().stats.errors.load(Ordering::Relaxed), &[]);
            })
            .build();
    }
    if sources.view.heartbeats().enabled() && on(names::HEARTBEAT_CHANGES) {
        let v = sources.view.clone();
        meter
            .u64_observable_counter(names::HEARTBEAT_CHANGES)
            .with_unit("{change}")
            .with_description("Kubelet heartbeats found lost (a node Lease unrenewed past --heartbeat-stale-after) or resumed")
            .with_callback(move |obs| {
                let stats = &v.heartbeats().stats;
                obs.observe(stats.lost.load(Ordering::Relaxed), &[KeyValue::new("change", "lost")]);
                obs.observe(stats.resumed.load(Ordering::Relaxed), &[KeyValue::new("change", "resumed")]);
            })
            .build();
    }
    if on(names::WATCH_RESTARTS) {
        let h = health.clone();
        meter
            .u64_observable_counter(names::WATCH_RESTARTS)
            .with_unit("{restart}")
            .with_description("Relists of all nodes after the first, e.g. forced by 410 Gone")
            .with_callback(move |obs| obs.observe(h.stats().restarts(), &[]))
            .build();
    }
    if on(names::WATCH_ERRORS) {
        let h = health.clone();
        meter
            .u64_observable_counter(names::WATCH_ERRORS)
            .with_unit("{error}")
            .with_description("Failed node list or watch steps, by reason")
            .with_callback(move |obs| {
                for reason in ErrorReason::ALL {
                    let errors = h.stats().errors(reason);
                    // Every sample costs on GMP: bad-data series only once there is some.
                    if errors > 0 || !reason.is_bad_data() {
                        obs.observe(errors, &[KeyValue::new("reason", reason.as_str())]);
                    }
                }
            })
            .build();
    }
    if on(names::API_REQUESTS) {
        let h = health.clone();
        meter
            .u64_observable_counter(names::API_REQUESTS)
            .with_unit("{request}")
            .with_description("Node LIST pages and WATCH requests sent to the Kubernetes API")
            .with_callback(move |obs| {
                for verb in ApiVerb::ALL {
                    obs.observe(h.stats().requests(verb), &[KeyValue::new("verb", verb.as_str())]);
                }
            })
            .build();
    }
    if on(names::EXPORT_FAILURES) {
        let export = sources.export.clone();
        meter
            .u64_observable_counter(names::EXPORT_FAILURES)
            .with_unit("{failure}")
            .with_description(
                "OTLP export cycles that failed (a cycle sends every metric; it ends at its first failed request)",
            )
            .with_callback(move |obs| obs.observe(export.failures(), &[]))
            .build();
    }
    if on(names::EXPORT_DENIED) {
        let export = sources.export.clone();
        meter
            .u64_observable_counter(names::EXPORT_DENIED)
            .with_unit("{failure}")
            .with_description(
                "OTLP metric exports refused for access: UNAUTHENTICATED, PERMISSION_DENIED or no token \
                 (also counted as failures)",
            )
            .with_callback(move |obs| obs.observe(export.denied(), &[]))
            .build();
    }
    if on(names::EXPORT_REJECTED) {
        let export = sources.export.clone();
        meter
            .u64_observable_counter(names::EXPORT_REJECTED)
            .with_unit("{point}")
            .with_description(
                "OTLP metric points the receiver refused in requests it took (partial success): sent, never stored",
            )
            .with_callback(move |obs| obs.observe(export.rejected(), &[]))
            .build();
    }
    if let Some(logs) = sources.logs.clone().filter(|_| on(names::LOG_RECORDS)) {
        meter
            .u64_observable_counter(names::LOG_RECORDS)
            .with_unit("{record}")
            .with_description(
                "Node condition-change log records: exported (the collector took them), dropped (oldest \
                 first, the queue being full while the collector was away), refused (a request refused \
                 for good) or rejected (refused one by one in a request the collector took: partial success)",
            )
            .with_callback(move |obs| {
                obs.observe(logs.exported(), &[KeyValue::new("outcome", "exported")]);
                obs.observe(logs.dropped(), &[KeyValue::new("outcome", "dropped")]);
                obs.observe(logs.refused(), &[KeyValue::new("outcome", "refused")]);
                obs.observe(logs.rejected(), &[KeyValue::new("outcome", "rejected")]);
            })
            .build();
    }
    if let Some(logs) = sources.logs.clone().filter(|_| on(names::LOG_QUEUED)) {
        meter
            .u64_observable_gauge(names::LOG_QUEUED)
            .with_unit("{record}")
            .with_description(
                "Node condition-change log records waiting for the collector (at most --logs-queue-size)",
            )
            .with_callback(move |obs| obs.observe(logs.queued(), &[]))
            .build();
    }
    if on(names::SHARDS_WRITTEN) {
        let work = sources.work.clone();
        meter
            .u64_observable_counter(names::SHARDS_WRITTEN)
            .with_unit("{shard}")
            .with_description(
                "Shards of nodes (about 8 nodes each, at any cluster size) whose readings were written again because a node in \
                 them changed, by output: prometheus (the /metrics node section), otlp (the encoded export cache)",
            )
            .with_callback(move |obs| {
                use std::sync::atomic::Ordering::Relaxed;
                obs.observe(work.rendered.load(Relaxed), &[KeyValue::new("output", "prometheus")]);
                obs.observe(work.encoded.load(Relaxed), &[KeyValue::new("output", "otlp")]);
            })
            .build();
    }
    if on(names::SERIES) {
        let work = sources.work.clone();
        meter
            .u64_observable_gauge(names::SERIES)
            .with_unit("{series}")
            .with_description(
                "Series each metric family serves (node and cluster readings; self-telemetry and target_info \
                 not counted), by family: what the readings cost in samples per scrape or export",
            )
            .with_callback(move |obs| {
                let series = work.series.lock().unwrap_or_else(|e| e.into_inner());
                for (family, count) in series.iter() {
                    obs.observe(*count, &[KeyValue::new("family", family.clone())]);
                }
            })
            .build();
    }
    super::surface::register(meter, sources);
    if on(names::VIEW_AGE) {
        let h = health.clone();
        meter
            .f64_observable_gauge(names::VIEW_AGE)
            .with_unit("s")
            .with_description("Seconds since the node watch broke; 0 while it is connected and current")
            .with_callback(move |obs| obs.observe(h.age(Instant::now()).as_secs_f64(), &[]))
            .build();
    }
    if on(names::BUILD_INFO) {
        meter
            .u64_observable_gauge(names::BUILD_INFO)
            .with_description("Always 1; its attributes describe the running build")
            .with_callback(|obs| obs.observe(1, &[KeyValue::new("version", env!("CARGO_PKG_VERSION"))]))
            .build();
    }
}

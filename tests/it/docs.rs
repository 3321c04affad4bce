//! docs/metrics.md must match what is served, in both naming modes: every
//! metric and attribute on /metrics and in an OTLP export is documented, and
//! everything documented is served.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Exporter, otlp};

/// A documented metric: its instrument and Prometheus names and attribute keys.
#[derive(Debug)]
struct Documented {
    instrument: String,
    prom: String,
    /// Exact keys, and prefixes written as `k8s.node.label.*`.
    attrs: BTreeSet<String>,
    /// Keys only OTLP carries (the node uid, on `/metrics` only on the info series).
    otlp_only: BTreeSet<String>,
}

fn backticked(cell: &str) -> Vec<String> {
    // Parenthesised lists are attribute values, not keys.
    let mut text = String::new();
    let mut depth = 0;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => text.push(c),
            _ => {}
        }
    }
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The documented metrics of one mode (`otel` or `kube-state-metrics`) plus the
/// mode-independent ones, and the documented resource attributes.
fn documented(mode: &str) -> (Vec<Documented>, BTreeSet<String>) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let (mut metrics, mut resource) = (Vec::new(), BTreeSet::new());
    let mut section = String::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.to_string();
            continue;
        }
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let in_mode = section.contains(&format!("--metric-naming {mode}`")) || section.contains("both modes");
        if cells.len() == 6 && in_mode {
            // "…; OTLP only: `k8s.node.uid`": attributes `/metrics` leaves out.
            let (both, otlp_only) = cells[4].split_once("OTLP only:").unwrap_or((cells[4], ""));
            metrics.push(Documented {
                instrument: backticked(cells[0]).remove(0),
                prom: backticked(cells[1]).remove(0),
                attrs: backticked(both).into_iter().collect(),
                otlp_only: backticked(otlp_only).into_iter().collect(),
            });
        } else if cells.len() == 3 && section == "Resource" {
            resource.insert(backticked(cells[1]).remove(0));
        }
    }
    (metrics, resource)
}

fn covers(documented: &BTreeSet<String>, key: &str, underscores: bool) -> bool {
    documented.iter().any(|d| {
        let d = if underscores {
            d.replace('.', "_")
        } else {
            d.clone()
        };
        match d.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => d == key,
        }
    })
}

fn exact(documented: &BTreeSet<String>, underscores: bool) -> BTreeSet<String> {
    documented
        .iter()
        .filter(|d| !d.ends_with('*'))
        .map(|d| {
            if underscores {
                d.replace('.', "_")
            } else {
                d.clone()
            }
        })
        .collect()
}

async fn check_mode(mode: &str) {
    let (docs, resource) = documented(mode);
    assert!(
        docs.len() >= 20,
        "{mode}: parsed only {} documented metrics",
        docs.len()
    );
    // Kubelets renewing their node Leases, one of them dead: every heartbeat
    // reading is served, the stale-only ones too. No controller acts within the test.
    let api =
        crate::common::fake_api_with_kubelets(0, Duration::from_millis(300), Duration::from_secs(3600)).await;
    let fixtures = common::fixture_nodes();
    for node in &fixtures {
        assert!(api.put_node(node.clone()));
    }
    let dead = fixtures[0]["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_string();
    assert!(api.set_kubelet_alive(&dead, false));
    let receiver = otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    // Every documented metric: the leader gauge, the optional families.
    let optional = kube_node_status::config::OPTIONAL_FAMILIES.join(",");
    let mut args = vec![
        "--cluster-name",
        "docs",
        "--metric-naming",
        mode,
        "--node-labels",
        "topology.kubernetes.io/*",
        "--leader-election",
        "--node-leases",
        "--heartbeat-stale-after",
        "1s",
    ];
    if mode == "kube-state-metrics" {
        args.extend(["--optional-families", &optional]);
    }
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    let samples = exporter
        .wait_for("leadership and a stale heartbeat", Duration::from_secs(20), |s| {
            common::value(s, "kube_node_status_leader", &[]) == Some(1.0)
                && s.iter()
                    .any(|s| s.name.contains("heartbeat_stale") && s.value == 1.0)
        })
        .await;

    // /metrics → docs.
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &samples {
        served
            .entry(s.name.clone())
            .or_default()
            .extend(s.labels.keys().cloned());
    }
    let target_info = served.remove("target_info").expect("target_info");
    assert!(
        target_info.is_subset(&resource),
        "undocumented resource attributes: {target_info:?}"
    );
    for (name, labels) in &served {
        let doc = docs
            .iter()
            .find(|d| &d.prom == name)
            .unwrap_or_else(|| panic!("{mode}: {name} is served but not documented"));
        for label in labels {
            assert!(
                covers(&doc.attrs, label, true),
                "{mode}: {name} serves undocumented label {label}"
            );
        }
        assert!(
            exact(&doc.attrs, true).is_subset(labels),
            "{mode}: {name} lacks documented labels: {labels:?} vs {:?}",
            doc.attrs
        );
    }
    for d in docs
        .iter()
        .filter(|d| !common::SERVED_ONLY_WHEN_ON.contains(&d.prom.as_str()))
    {
        assert!(
            served.contains_key(&d.prom),
            "{mode}: {} is documented but not served",
            d.prom
        );
    }

    // OTLP names and attribute keys match the instrument column.
    // A cycle sends each family in a request of its own: wait for a whole one.
    let documented_instruments: BTreeSet<String> = docs
        .iter()
        .filter(|d| !common::SERVED_ONLY_WHEN_ON.contains(&d.prom.as_str()))
        .map(|d| d.instrument.clone())
        .collect();
    let names = |req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest| -> BTreeSet<String> {
        req.resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| m.name.clone())
            .collect()
    };
    let started = std::time::Instant::now();
    let export = loop {
        if let Some(export) = receiver.latest()
            && names(&export).is_superset(&documented_instruments)
        {
            break export;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break receiver.latest().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut exported = BTreeSet::new();
    for m in export
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
    {
        exported.insert(m.name.clone());
        let doc = docs
            .iter()
            .find(|d| d.instrument == m.name)
            .unwrap_or_else(|| panic!("{mode}: {} exported but not documented", m.name));
        let mut keys = BTreeSet::new();
        for (attrs, _) in otlp::points(&export, &m.name) {
            for key in attrs.keys() {
                assert!(
                    covers(&doc.attrs, key, false) || covers(&doc.otlp_only, key, false),
                    "{mode}: {} exports undocumented attribute {key}",
                    m.name
                );
            }
            keys.extend(attrs.into_keys());
        }
        // The fixture's bare node has no uid: documented keys are exported on some point.
        assert!(
            exact(&doc.otlp_only, false).is_subset(&keys),
            "{mode}: {} lacks documented OTLP attributes: {keys:?} vs {:?}",
            m.name,
            doc.otlp_only
        );
    }
    assert_eq!(exported, documented_instruments, "{mode}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_md_matches_what_is_served_in_otel_mode() {
    check_mode("otel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_md_matches_what_is_served_in_kube_state_metrics_mode() {
    check_mode("kube-state-metrics").await;
}

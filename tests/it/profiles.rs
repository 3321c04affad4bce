//! Metric profiles against the real binary: what each serves a node, counted
//! on `/metrics` and by the exporter itself, and the readiness profile's
//! sparse series making every shipped node alert fire, and resolve, in a real
//! Prometheus loaded with the chart's own rules (rendered by the Helm engine).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::common::{
    Exporter, Sample, fake_api,
    prometheus::{Prometheus, query_series, wait_query},
};

const T: Duration = Duration::from_secs(60);

/// The exporter's node and cluster series (self-telemetry and `target_info`
/// left out) and what `kube_node_status_series` says they are. In
/// kube-state-metrics naming some node families share self-telemetry's
/// `kube_node_status_` prefix; they are the ones with a `node` label.
fn served_and_counted(samples: &[Sample]) -> (usize, f64) {
    let served = samples
        .iter()
        .filter(|x| {
            (!x.name.starts_with("kube_node_status_") || x.labels.contains_key("node"))
                && x.name != "target_info"
        })
        .count();
    let counted = samples
        .iter()
        .filter(|x| x.name == "kube_node_status_series")
        .map(|x| x.value)
        .sum();
    (served, counted)
}

/// Series a node for each profile, with every node healthy and during an
/// outage of a third of them: (profile, healthy, outage).
async fn series_per_node(naming: &str, nodes: usize) -> Vec<(&'static str, f64, f64)> {
    let api = fake_api(nodes).await;
    let ready = if naming == "otel" {
        "k8s_node_ready"
    } else {
        "kube_node_status_ready"
    };
    let mut table = Vec::new();
    for profile in ["readiness", "standard", "full"] {
        table.push((profile, 0.0, 0.0));
    }
    for outage in [false, true] {
        let down = if outage {
            api.outage(None, 1.0 / 3.0, "False").len()
        } else {
            0
        };
        assert_eq!(outage, down > 0);
        let ready_now = (nodes - down) as f64;
        for row in table.iter_mut() {
            let exporter = Exporter::start_ready(
                &api.kubeconfig(),
                &["--metric-naming", naming, "--metric-profile", row.0],
                &[("OTEL_METRICS_EXPORTER", "prometheus")],
            )
            .await;
            // The count is of the last pass: wait until it is of this state.
            let samples = exporter
                .wait_for("the view of this state, counted", T, |s| {
                    let ready_sum: f64 = s.iter().filter(|x| x.name == ready).map(|x| x.value).sum();
                    let (served, counted) = served_and_counted(s);
                    ready_sum == ready_now && served as f64 == counted
                })
                .await;
            let (served, counted) = served_and_counted(&samples);
            assert_eq!(served as f64, counted, "{naming} {}: the self-metric", row.0);
            let per_node = served as f64 / nodes as f64;
            if outage {
                row.2 = per_node;
            } else {
                row.1 = per_node;
            }
        }
    }
    eprintln!(
        "{naming}, {nodes} nodes: (profile, series a node healthy, during an outage of a third) {table:?}"
    );
    table
}

async fn profiles_cost_what_they_say(naming: &str) {
    let nodes = 1000;
    let table = series_per_node(naming, nodes).await;
    let [readiness, standard, full] = [table[0], table[1], table[2]];
    // A healthy node: Ready and the Ready transitions; and the cluster's four.
    assert_eq!(readiness.1, (2 * nodes + 4) as f64 / nodes as f64, "{table:?}");
    // A third NotReady adds each one's Ready status and transition time.
    assert!(readiness.2 <= 3.0, "{table:?}");
    assert!(readiness.2 > readiness.1, "{table:?}");
    assert!(readiness.1 < standard.1 && standard.1 < full.1, "{table:?}");
    // One-hot outside readiness: an outage moves values, not series.
    assert_eq!(standard.1, standard.2, "{table:?}");
    assert_eq!(full.1, full.2, "{table:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_serve_what_they_say_otel() {
    profiles_cost_what_they_say("otel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_serve_what_they_say_kube_state_metrics() {
    profiles_cost_what_they_say("kube-state-metrics").await;
}

/// The chart's rules for `naming`, with every `for` at 1 s so that an alert
/// fires within seconds (the flapping alert's fixed 5 m leaves it pending).
fn chart_rules(naming: &str) -> String {
    let values = json!({
        "metricNaming": naming,
        "alerts": {"notReadyFor": "1s", "unreachableFor": "1s", "pressureFor": "1s", "flapThreshold": 4},
        "gmpRules": {"enabled": true},
        "podMonitoring": {"enabled": true},
    });
    crate::common::chart::rule_file(&crate::common::chart::render(&values))
}

/// The node alerts Prometheus holds: (alert, node, state).
async fn node_alerts(prom: std::net::SocketAddr, node_label: &str) -> BTreeSet<(String, String, String)> {
    query_series(prom, "ALERTS{alertname=~\"Node.*\"}")
        .await
        .into_iter()
        .map(|(labels, _)| {
            let get = |k: &str| labels[k].as_str().unwrap_or_default().to_string();
            (get("alertname"), get(node_label), get("alertstate"))
        })
        .collect()
}

async fn wait_alerts(prom: std::net::SocketAddr, node_label: &str, want: &[(&str, &str, &str)]) {
    let want: BTreeSet<(String, String, String)> = want
        .iter()
        .map(|(a, n, s)| (a.to_string(), n.to_string(), s.to_string()))
        .collect();
    let start = Instant::now();
    loop {
        let got = node_alerts(prom, node_label).await;
        if got == want {
            return;
        }
        assert!(start.elapsed() < T, "alerts: got {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn readiness_alerts_fire_and_resolve(naming: &str) {
    let (node_label, ready) = match naming {
        "otel" => ("k8s_node_name", "k8s_node_ready"),
        _ => ("node", "kube_node_status_ready"),
    };
    let api = fake_api(6).await;
    let n = api.node_names();
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--metric-naming",
            naming,
            "--metric-profile",
            "readiness",
            "--node-labels",
            "topology.kubernetes.io/zone,cloud.google.com/gke-nodepool",
        ],
        &[("OTEL_METRICS_EXPORTER", "prometheus")],
    )
    .await;
    let prometheus = Prometheus::start(exporter.addr, Some(&chart_rules(naming))).await;
    let prom = prometheus.addr;
    // Every node scraped healthy (the transitions counters at 0) before anything happens.
    wait_query(prom, &format!("count({ready} == 1)"), &[6.0], T).await;
    wait_alerts(prom, node_label, &[]).await;

    let edit = |name: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let mut node = api.node(name).expect("the node exists");
        change(&mut node);
        assert!(api.put_node(node));
    };
    // n0 NotReady; n1 NotReady but cordoned; n2 under memory pressure; n3
    // unreachable as the node controller marks it (Ready Unknown and its
    // taint); n4 flapping and Ready again; n5 healthy.
    assert!(api.set_condition(&n[0], "Ready", "False"));
    assert!(api.set_condition(&n[1], "Ready", "False"));
    edit(&n[1], &|node| node["spec"]["unschedulable"] = json!(true));
    assert!(api.set_condition(&n[2], "MemoryPressure", "True"));
    assert!(api.set_condition(&n[3], "Ready", "Unknown"));
    edit(&n[3], &|node| {
        node["spec"]["taints"] = json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
    });
    // Ten transitions; a recovery above is two, under the threshold of four.
    for _ in 0..5 {
        assert!(api.set_condition(&n[4], "Ready", "False"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(api.set_condition(&n[4], "Ready", "True"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_alerts(
        prom,
        node_label,
        &[
            ("NodeNotReady", &n[0], "firing"),
            ("NodeUnderPressure", &n[2], "firing"),
            ("NodeNotReady", &n[3], "firing"),
            ("NodeUnreachable", &n[3], "firing"),
            ("NodeReadinessFlapping", &n[4], "pending"),
        ],
    )
    .await;

    dashboard_panels_show_the_trouble(prom, naming).await;

    // Recovery ends the sparse series; Prometheus marks them stale and the alerts resolve.
    assert!(api.set_condition(&n[0], "Ready", "True"));
    assert!(api.set_condition(&n[2], "MemoryPressure", "False"));
    assert!(api.set_condition(&n[3], "Ready", "True"));
    edit(&n[3], &|node| node["spec"]["taints"] = json!([]));
    wait_alerts(prom, node_label, &[("NodeReadinessFlapping", &n[4], "pending")]).await;
    let samples = exporter.scrape().await;
    let names: BTreeMap<&str, usize> = samples.iter().fold(BTreeMap::new(), |mut m, x| {
        *m.entry(x.name.as_str()).or_default() += 1;
        m
    });
    // Back to healthy, only the cordoned n1 shows anything beyond the two a node.
    assert_eq!(
        samples
            .iter()
            .filter(|x| x.labels.get(node_label).is_some_and(|v| *v != n[1]))
            .count(),
        2 * 5,
        "{names:?}"
    );
}

/// Every node panel of the shipped dashboard, as the chart renders it for
/// `naming`, has data in the readiness profile while nodes are in trouble:
/// the panels cost.md says the profile keeps.
async fn dashboard_panels_show_the_trouble(prom: std::net::SocketAddr, naming: &str) {
    let mut checked = 0;
    for (title, queries) in crate::common::chart::dashboard(naming) {
        if title == "Exporter health" || title.ends_with(crate::common::chart::NEEDS_NODE_LEASES) {
            continue;
        }
        for expr in queries {
            let start = Instant::now();
            while query_series(prom, &expr).await.is_empty() {
                assert!(start.elapsed() < T, "panel {title:?}: no data for {expr}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked} panel queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_profile_fires_every_node_alert_in_prometheus_otel() {
    readiness_alerts_fire_and_resolve("otel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_profile_fires_every_node_alert_in_prometheus_kube_state_metrics() {
    readiness_alerts_fire_and_resolve("kube-state-metrics").await;
}

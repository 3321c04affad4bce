//! The whole node picture: golden /metrics in both naming modes, label
//! allowlisting, flaps, and the volume controls.

use crate::common;

use std::{path::Path, time::Duration};

use common::{Exporter, fixture_api, parse, run_to_exit, value};

const PROM_ONLY: (&str, &str) = ("OTEL_METRICS_EXPORTER", "prometheus");
const LABELS: &str = "topology.kubernetes.io/zone,cloud.google.com/gke-nodepool";

async fn golden(mode: &str, file: &str) {
    let api = fixture_api().await;
    common::assert_golden(&api.kubeconfig(), mode, file).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_metrics_in_otel_mode() {
    golden("otel", "otel.prom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_metrics_in_kube_state_metrics_mode() {
    golden("kube-state-metrics", "kube-state-metrics.prom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_and_pool_labels_are_on_every_per_node_series() {
    let api = fixture_api().await;
    for (mode, node_key, zone, pool) in [
        (
            "otel",
            "k8s_node_name",
            "k8s_node_label_topology_kubernetes_io_zone",
            "k8s_node_label_cloud_google_com_gke_nodepool",
        ),
        (
            "kube-state-metrics",
            "node",
            "label_topology_kubernetes_io_zone",
            "label_cloud_google_com_gke_nodepool",
        ),
    ] {
        let exporter = Exporter::start_ready(
            &api.kubeconfig(),
            &["--metric-naming", mode, "--node-labels", LABELS],
            &[PROM_ONLY],
        )
        .await;
        let samples = exporter.scrape().await;
        let per_node: Vec<_> = samples
            .iter()
            .filter(|s| s.labels.contains_key(node_key))
            .collect();
        assert!(
            per_node.len() > 100,
            "{mode}: {} per-node samples",
            per_node.len()
        );
        for s in per_node {
            assert!(s.labels.contains_key(zone), "{mode}: {s:?} lacks the zone");
            // The bare fixture node has a zone label but no pool label.
            assert!(
                s.labels.contains_key(pool) || s.labels[node_key] == "bare-node",
                "{mode}: {s:?} lacks the pool"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flap_between_scrapes_counts_two_transitions() {
    let api = fixture_api().await;
    let node = api
        .node_names()
        .into_iter()
        .find(|n| n.contains("default-pool"))
        .unwrap();
    let exporter = Exporter::start_ready(&api.kubeconfig(), &[], &[PROM_ONLY]).await;
    let transitions = |s: &[common::Sample]| {
        value(
            s,
            "k8s_node_condition_transitions_total",
            &[("k8s_node_name", &node), ("k8s_node_condition_type", "Ready")],
        )
    };
    assert_eq!(transitions(&exporter.scrape().await), Some(0.0));
    // NotReady and back, with no scrape in between: the gauges cannot see it.
    api.set_condition(&node, "Ready", "False");
    api.set_condition(&node, "Ready", "True");
    let samples = exporter
        .wait_for("two transitions", Duration::from_secs(5), |s| {
            transitions(s) == Some(2.0)
        })
        .await;
    assert_eq!(
        value(&samples, "k8s_node_ready", &[("k8s_node_name", &node)]),
        Some(1.0)
    );
    let other = value(
        &samples,
        "k8s_node_condition_transitions_total",
        &[
            ("k8s_node_name", &node),
            ("k8s_node_condition_type", "MemoryPressure"),
        ],
    );
    assert_eq!(other, Some(0.0));
    // A deleted node's counters go with it.
    api.delete_node(&node);
    exporter
        .wait_for("counter gone", Duration::from_secs(5), |s| {
            transitions(s).is_none()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_and_metric_filters_drop_what_is_not_wanted() {
    let api = fixture_api().await;
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--conditions",
            "Ready,KernelDeadlock",
            "--metric-denylist",
            r"k8s\.node\.(info|taint)",
            "--metric-allowlist",
            "k8s.*",
        ],
        &[PROM_ONLY],
    )
    .await;
    let samples = exporter.scrape().await;
    let types: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter_map(|s| s.labels.get("k8s_node_condition_type").map(String::as_str))
        .collect();
    assert_eq!(types, ["KernelDeadlock", "Ready"].into_iter().collect());
    let names: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    assert!(
        !names.contains("k8s_node_info") && !names.contains("k8s_node_taint"),
        "{names:?}"
    );
    assert!(names.contains("k8s_node_ready") && names.contains("k8s_cluster_nodes"));
    assert!(
        !names.iter().any(|n| n.starts_with("kube_node_status_")),
        "the allowlist drops self-telemetry too: {names:?}"
    );
}

#[test]
fn bad_filters_and_colliding_labels_exit_2() {
    for (args, mentions) in [
        (&["--metric-allowlist", "k8s.(node"][..], "--metric-allowlist"),
        (&["--metric-denylist", "[z"], "--metric-denylist"),
        (&["--node-labels", "a.b,a_b"], "--node-labels"),
        (&["--node-labels", "[z"], "--node-labels"),
        (&["--metric-naming", "prometheus"], "--metric-naming"),
    ] {
        let (code, stderr) = run_to_exit(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| !l.trim().is_empty()).count(),
            1,
            "{stderr}"
        );
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
    }
    let _ = parse("");
}

/// Google's Telemetry API keeps these names for the `prometheus_target`
/// monitored resource; a point attribute with one of them would be rejected
/// or overwritten. The goldens hold every per-node family in both namings.
#[test]
fn no_point_attribute_takes_a_name_the_telemetry_api_reserves() {
    for file in ["tests/golden/otel.prom", "tests/golden/kube-state-metrics.prom"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let samples = parse(&text);
        assert!(samples.len() > 50, "{file}");
        for s in samples.iter().filter(|s| s.name != "target_info") {
            for key in s.labels.keys() {
                assert!(
                    !common::otlp::RESERVED_ATTRIBUTES.contains(&key.as_str()),
                    "{file}: {} has a label {key:?}",
                    s.name
                );
            }
        }
    }
}

/// The streaming encoder's /metrics holds the same lines as
/// opentelemetry-prometheus's: names, labels, HELP/TYPE, `target_info` and
/// the self-telemetry (whose values vary between two processes; the series
/// count aside), in both namings, line order aside.
#[tokio::test]
async fn the_streaming_encoder_writes_what_opentelemetry_prometheus_writes() {
    let api = fixture_api().await;
    let normalized = |body: String| -> Vec<String> {
        let mut lines: Vec<String> = body
            .lines()
            // The series count comes from the pass, which the reference encoder does not run.
            .filter(|l| !l.contains("kube_node_status_series"))
            .map(
                |l| match l.starts_with("kube_node_status_") && !l.starts_with("kube_node_status_build") {
                    // name{labels} value: keep all but the value
                    true => l.rsplit_once(' ').map_or(l, |(series, _)| series).to_string(),
                    false => l.to_string(),
                },
            )
            .collect();
        lines.sort_unstable();
        lines
    };
    for mode in ["otel", "kube-state-metrics"] {
        let streaming = common::golden_body(&api.kubeconfig(), mode, "streaming", &[]).await;
        let reference = common::golden_body(&api.kubeconfig(), mode, "reference", &[]).await;
        assert!(streaming.contains("target_info{"), "{streaming}");
        assert!(streaming.contains("# TYPE kube_node_status_watch_events_total counter"));
        let (s, r) = (normalized(streaming), normalized(reference));
        let only_streaming: Vec<&String> = s.iter().filter(|l| !r.contains(l)).collect();
        let only_reference: Vec<&String> = r.iter().filter(|l| !s.contains(l)).collect();
        assert!(
            only_streaming.is_empty() && only_reference.is_empty(),
            "{mode}: only in streaming: {only_streaming:#?}\nonly in reference: {only_reference:#?}"
        );
        assert_eq!(s, r, "{mode}: the same lines, but not as often");
    }
}

//! The real binary against the fake Kubernetes API server over HTTP, with an
//! OTLP receiver built in the test.

use crate::common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use common::{Exporter, Sample, fake_api, free_port, otlp, run_to_exit, value};
use kube_node_status::fake::{FakeApiServer, FakeOptions, KUBELET_CONDITIONS};

const PROM_ONLY: (&str, &str) = ("OTEL_METRICS_EXPORTER", "prometheus");
const SYNC: Duration = Duration::from_secs(15);

fn ready_of(samples: &[Sample], node: &str) -> Option<f64> {
    value(samples, "k8s_node_ready", &[("k8s_node_name", node)])
}

fn condition_of(samples: &[Sample], node: &str, type_: &str, status: &str) -> Option<f64> {
    value(
        samples,
        "k8s_node_condition_status",
        &[
            ("k8s_node_name", node),
            ("k8s_node_condition_type", type_),
            ("k8s_node_condition_status", status),
        ],
    )
}

fn assert_no_duplicate_series(samples: &[Sample]) {
    let mut seen = BTreeSet::new();
    for s in samples {
        assert!(
            seen.insert((s.name.clone(), s.labels.clone())),
            "duplicate series {s:?}"
        );
    }
}

/// Every (node, condition type) has all three statuses, exactly one of them 1.
fn assert_one_hot(samples: &[Sample]) -> usize {
    let mut groups: BTreeMap<(String, String), Vec<(String, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == "k8s_node_condition_status") {
        groups
            .entry((
                s.labels["k8s_node_name"].clone(),
                s.labels["k8s_node_condition_type"].clone(),
            ))
            .or_default()
            .push((s.labels["k8s_node_condition_status"].clone(), s.value));
    }
    for ((node, type_), mut points) in groups.clone() {
        points.sort_by(|a, b| a.0.cmp(&b.0));
        let statuses: Vec<&str> = points.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(statuses, ["false", "true", "unknown"], "{node}/{type_}");
        assert_eq!(
            points.iter().map(|(_, v)| v).sum::<f64>(),
            1.0,
            "{node}/{type_} is not one-hot: {points:?}"
        );
    }
    groups.len()
}

/// (node, condition type, status, value) of every condition point in an OTLP export.
type ConditionPoint = (String, String, String, String);

fn conditions_from_otlp(points: &[(BTreeMap<String, String>, f64)]) -> BTreeSet<ConditionPoint> {
    points
        .iter()
        .map(|(a, v)| {
            let key = |k: &str| a[k].clone();
            (
                key("k8s.node.name"),
                key("k8s.node.condition.type"),
                key("k8s.node.condition.status"),
                v.to_string(),
            )
        })
        .collect()
}

/// The same, from a scrape.
fn conditions_from_scrape(samples: &[Sample]) -> BTreeSet<ConditionPoint> {
    samples
        .iter()
        .filter(|s| s.name == "k8s_node_condition_status")
        .map(|s| {
            let key = |k: &str| s.labels[k].clone();
            (
                key("k8s_node_name"),
                key("k8s_node_condition_type"),
                key("k8s_node_condition_status"),
                s.value.to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_reads_every_condition_one_hot() {
    let api = fake_api(5).await;
    let names = api.node_names();
    api.set_condition(&names[3], "Ready", "Unknown");
    api.set_condition(&names[4], "Ready", "False");
    api.set_condition(&names[0], "KernelDeadlock", "True");
    let exporter = Exporter::start_ready(&api.kubeconfig(), &[], &[PROM_ONLY]).await;
    let samples = exporter.scrape().await;
    assert_no_duplicate_series(&samples);

    let groups = assert_one_hot(&samples);
    assert!(
        groups >= 5 * KUBELET_CONDITIONS.len(),
        "only {groups} condition groups"
    );
    assert_eq!(condition_of(&samples, &names[3], "Ready", "unknown"), Some(1.0));
    assert_eq!(condition_of(&samples, &names[4], "Ready", "false"), Some(1.0));
    assert_eq!(
        condition_of(&samples, &names[0], "KernelDeadlock", "true"),
        Some(1.0),
        "custom conditions are kept"
    );
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            ready_of(&samples, name),
            Some(if i < 3 { 1.0 } else { 0.0 }),
            "{name}"
        );
    }
    for (status, want) in [("true", 3.0), ("false", 1.0), ("unknown", 1.0)] {
        assert_eq!(
            value(
                &samples,
                "k8s_cluster_nodes",
                &[("k8s_node_condition_status", status)]
            ),
            Some(want)
        );
    }
    assert_eq!(
        value(&samples, "k8s_cluster_node_not_ready_ratio", &[]),
        Some(0.4)
    );
    assert_eq!(
        value(&samples, "kube_node_status_view_age_seconds", &[]),
        Some(0.0)
    );
    assert!(value(&samples, "kube_node_status_build_info", &[]).is_some());

    // A scraper asking for protobuf or OpenMetrics still gets a valid text response.
    for accept in [
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    ] {
        let headers = common::http_head(exporter.addr, "/metrics", &[("Accept", accept)]).await;
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
    }
    assert_eq!(exporter.get("/healthz").await.0, 200);
    assert_eq!(exporter.get("/nope").await.0, 404);
    assert_eq!(exporter.get("/metricsx").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_flips_reach_metrics_within_two_seconds() {
    let api = fake_api(5).await;
    let node = api.node_names()[1].clone();
    let exporter = Exporter::start_ready(&api.kubeconfig(), &[], &[PROM_ONLY]).await;
    let mut took = Vec::new();
    for (status, ready, label) in [
        ("False", 0.0, "false"),
        ("Unknown", 0.0, "unknown"),
        ("True", 1.0, "true"),
    ] {
        let start = Instant::now();
        assert!(api.set_condition(&node, "Ready", status));
        exporter
            .wait_for(&format!("Ready={status}"), Duration::from_secs(2), |s| {
                ready_of(s, &node) == Some(ready) && condition_of(s, &node, "Ready", label) == Some(1.0)
            })
            .await;
        took.push(start.elapsed());
    }
    println!("flip-to-scrape times: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_node_never_reappears_across_interleaved_exports() {
    let api = fake_api(5).await;
    let gone = api.node_names()[2].clone();
    let receiver = otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    let has = |req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest| {
        otlp::points(req, "k8s.node.ready")
            .iter()
            .any(|(a, _)| a["k8s.node.name"] == gone)
    };
    let start = Instant::now();
    while !receiver.latest().as_ref().is_some_and(has) {
        assert!(start.elapsed() < SYNC, "node never exported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert!(api.delete_node(&gone));
    // The first scrape without the node marks the moment the exporter saw the deletion.
    exporter
        .wait_for("deletion", Duration::from_secs(2), |s| {
            ready_of(s, &gone).is_none()
        })
        .await;
    let seen_gone = Instant::now();
    let cycles_before = receiver.cycles();
    // Scrape continuously while OTLP collections interleave: the node must never come back.
    let mut scrapes = 0;
    while receiver.cycles() < cycles_before + 8 {
        let samples = exporter.scrape().await;
        scrapes += 1;
        assert_eq!(
            ready_of(&samples, &gone),
            None,
            "deleted node reappeared on /metrics after {scrapes} scrapes"
        );
        assert!(
            !samples
                .iter()
                .any(|s| s.labels.get("k8s_node_name") == Some(&gone))
        );
        assert_eq!(
            value(
                &samples,
                "k8s_cluster_nodes",
                &[("k8s_node_condition_status", "true")]
            ),
            Some(4.0)
        );
        assert!(seen_gone.elapsed() < Duration::from_secs(10), "exports stalled");
    }
    // An export collected before the deletion can still be in flight for a few milliseconds.
    let later = receiver.since(seen_gone + Duration::from_millis(100));
    assert!(
        later.len() >= 6,
        "only {} exports after the deletion",
        later.len()
    );
    let mut ready_exports = 0;
    for req in &later {
        assert!(!has(req), "deleted node reappeared in an OTLP export");
        // Each family travels in a request of its own.
        let ready = otlp::points(req, "k8s.node.ready").len();
        if ready > 0 {
            assert_eq!(ready, 4);
            ready_exports += 1;
        }
    }
    assert!(
        ready_exports >= 6,
        "only {ready_exports} exports of k8s.node.ready"
    );
    println!(
        "{scrapes} scrapes and {} requests ({ready_exports} of k8s.node.ready) after the deletion, none with the node",
        later.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_resumes_and_410_relists_once_without_duplicates() {
    let api = fake_api(5).await;
    let names = api.node_names();
    let exporter = Exporter::start_ready(&api.kubeconfig(), &[], &[PROM_ONLY]).await;
    let lists_at_start = api.stats().full_lists;
    assert_eq!(lists_at_start, 1, "exactly one LIST to sync");

    // A watch cut mid-stream resumes from its resourceVersion: no relist.
    api.close_watches();
    api.set_condition(&names[0], "Ready", "False");
    exporter
        .wait_for("flip after a dropped watch", Duration::from_secs(10), |s| {
            ready_of(s, &names[0]) == Some(0.0)
        })
        .await;
    assert_eq!(
        api.stats().full_lists,
        lists_at_start,
        "a dropped watch must not relist"
    );

    // History compacted: resuming gets 410 Gone, which forces exactly one relist.
    api.compact();
    api.close_watches();
    let start = Instant::now();
    while api.stats().full_lists == lists_at_start {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no relist after 410:\n{}",
            exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.set_condition(&names[1], "Ready", "False");
    let samples = exporter
        .wait_for("flip after 410", Duration::from_secs(15), |s| {
            ready_of(s, &names[1]) == Some(0.0)
        })
        .await;
    assert_eq!(
        api.stats().full_lists,
        lists_at_start + 1,
        "410 Gone relists exactly once"
    );
    assert_no_duplicate_series(&samples);
    assert_one_hot(&samples);
    let total: f64 = samples
        .iter()
        .filter(|s| s.name == "k8s_cluster_nodes")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 5.0);
    assert_eq!(samples.iter().filter(|s| s.name == "k8s_node_ready").count(), 5);
    let samples = exporter
        .wait_for("restart counted", Duration::from_secs(5), |s| {
            value(s, "kube_node_status_watch_restarts_total", &[]) == Some(1.0)
        })
        .await;
    assert!(
        value(
            &samples,
            "kube_node_status_watch_errors_total",
            &[("reason", "watch_error")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(exporter.get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_at_start_then_recovers() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: u\n  user: {{}}\n\
         contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
    );
    let exporter = Exporter::start(&kubeconfig, &[], &[PROM_ONLY]);
    exporter
        .wait_status("/healthz", 200, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(exporter.get("/readyz").await.0, 503);
    assert_eq!(exporter.get("/healthz").await.0, 200, "the process stays alive");
    let samples = exporter.scrape().await;
    assert!(
        !samples
            .iter()
            .any(|s| s.name.starts_with("k8s_cluster") || s.name.starts_with("k8s_node")),
        "no readings before the first sync, never an empty cluster"
    );
    assert!(
        value(
            &samples,
            "kube_node_status_watch_errors_total",
            &[("reason", "list_failed")]
        )
        .unwrap()
            >= 1.0
    );

    let api = FakeApiServer::start(FakeOptions {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        nodes: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    exporter
        .wait_status("/readyz", 200, Duration::from_secs(40))
        .await;
    let samples = exporter.scrape().await;
    assert_eq!(
        value(
            &samples,
            "k8s_cluster_nodes",
            &[("k8s_node_condition_status", "true")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(&samples, "kube_node_status_view_age_seconds", &[]),
        Some(0.0)
    );
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_grows_view_age_flips_readyz_and_resumes_without_relist() {
    let api = fake_api(4).await;
    let name = api.node_names()[0].clone();
    let exporter = Exporter::start_ready(&api.kubeconfig(), &["--stale-after", "2s"], &[PROM_ONLY]).await;

    api.stop();
    let samples = exporter
        .wait_for("view age to grow", Duration::from_secs(10), |s| {
            value(s, "kube_node_status_view_age_seconds", &[]).is_some_and(|a| a > 1.0)
        })
        .await;
    assert_eq!(
        ready_of(&samples, &name),
        Some(1.0),
        "last-known readings are still served"
    );
    exporter
        .wait_status("/readyz", 503, Duration::from_secs(10))
        .await;

    api.restart().await.unwrap();
    api.set_condition(&name, "Ready", "False");
    exporter
        .wait_status("/readyz", 200, Duration::from_secs(40))
        .await;
    exporter
        .wait_for("flip after the outage", Duration::from_secs(10), |s| {
            ready_of(s, &name) == Some(0.0)
        })
        .await;
    let samples = exporter.scrape().await;
    assert_eq!(
        value(&samples, "kube_node_status_view_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(
        api.stats().full_lists,
        1,
        "the watch resumed from its resourceVersion: no relist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_rbac_is_one_clear_log_line() {
    let api = fake_api(2).await;
    api.set_forbidden(true);
    // The default log filter, as users run it.
    let exporter = Exporter::start(&api.kubeconfig(), &[], &[PROM_ONLY, ("RUST_LOG", "")]);
    exporter
        .wait_for("repeated 403s", Duration::from_secs(15), |s| {
            value(
                s,
                "kube_node_status_watch_errors_total",
                &[("reason", "list_failed")],
            )
            .is_some_and(|n| n >= 3.0)
        })
        .await;
    assert_eq!(exporter.get("/readyz").await.0, 503);
    let logs = exporter.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per failure streak:\n{logs}");
    assert!(
        lines[0].contains("`list`") && lines[0].contains("`nodes`"),
        "{}",
        lines[0]
    );
    api.set_forbidden(false);
    exporter
        .wait_status("/readyz", 200, Duration::from_secs(40))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_matches_metrics_with_resource_and_own_spans() {
    let api = fake_api(5).await;
    let names = api.node_names();
    api.set_condition(&names[2], "Ready", "Unknown");
    let receiver = otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--cluster-name", "demo-cluster"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test"),
            ("POD_NAME", "kube-node-status-0"),
        ],
    )
    .await;
    let after_sync = receiver.cycles();
    receiver
        .wait_cycles(after_sync + 2, Duration::from_secs(10))
        .await;
    let export = receiver.latest().unwrap();
    let samples = exporter.scrape().await;

    let from_otlp = conditions_from_otlp(&otlp::points(&export, "k8s.node.condition.status"));
    let from_scrape = conditions_from_scrape(&samples);
    assert!(!from_otlp.is_empty());
    assert_eq!(from_otlp, from_scrape, "the OTLP export and /metrics disagree");

    let ready: BTreeMap<String, f64> = otlp::points(&export, "k8s.node.ready")
        .into_iter()
        .map(|(a, v)| (a["k8s.node.name"].clone(), v))
        .collect();
    for name in &names {
        assert_eq!(ready.get(name).copied(), ready_of(&samples, name), "{name}");
    }
    let nodes: BTreeMap<String, f64> = otlp::points(&export, "k8s.cluster.nodes")
        .into_iter()
        .map(|(a, v)| (a["k8s.node.condition.status"].clone(), v))
        .collect();
    assert_eq!(
        nodes,
        BTreeMap::from([
            ("false".into(), 0.0),
            ("true".into(), 4.0),
            ("unknown".into(), 1.0)
        ])
    );
    assert_eq!(otlp::points(&export, "k8s.cluster.node.not_ready")[0].1, 0.2);

    let res = otlp::resource(&export);
    for (k, v) in [
        ("service.name", "kube-node-status"),
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("service.instance.id", "kube-node-status-0"),
        ("k8s.cluster.name", "demo-cluster"),
        ("deployment.environment.name", "test"),
    ] {
        assert_eq!(res.get(k).map(String::as_str), Some(v), "resource {k}: {res:?}");
    }
    let target_info = samples
        .iter()
        .find(|s| s.name == "target_info")
        .expect("target_info");
    assert_eq!(
        target_info.labels.get("k8s_cluster_name").map(String::as_str),
        Some("demo-cluster")
    );

    // Our own spans go out as OTLP traces.
    let start = Instant::now();
    loop {
        let names: BTreeSet<String> = receiver
            .received
            .spans
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter().map(|s| s.name.clone()))
            .collect();
        if names.contains("watch.list") && names.contains("otlp.export") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "spans received: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_exits_zero_within_ten_seconds() {
    let api = fake_api(3).await;
    let receiver = otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    // A long interval: the only exports are the flush at shutdown.
    let mut exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ],
    )
    .await;
    let before = receiver.exports();
    let (status, took) = exporter.terminate();
    assert_eq!(status.code(), Some(0), "logs:\n{}", exporter.logs());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(receiver.exports() > before, "no OTLP flush on shutdown");
    let flushed = receiver.latest().unwrap();
    assert_eq!(otlp::points(&flushed, "k8s.node.ready").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_collector_is_logged_once_and_never_delays_metrics() {
    let api = fake_api(3).await;
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let mut exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    exporter
        .wait_for("several failed exports", Duration::from_secs(15), |s| {
            value(s, "kube_node_status_otlp_export_failures_total", &[]).is_some_and(|n| n >= 5.0)
        })
        .await;
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        exporter.scrape().await;
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest < Duration::from_millis(500), "a scrape took {slowest:?}");
    let logs = exporter.logs();
    assert_eq!(
        logs.matches("OTLP metric export failed").count(),
        1,
        "one line per failure streak:\n{logs}"
    );
    let (status, took) = exporter.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(10),
        "shutdown with a dead collector took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_collector_with_a_private_ca() {
    let tls = otlp::TestCa::new();
    let receiver = otlp::Receiver::start(Some(tls.server_pair())).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = tls.write_ca(dir.path());

    let api = fake_api(2).await;
    let endpoint = format!("https://localhost:{}", receiver.addr.port());
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.to_str().unwrap()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    receiver.wait_cycles(2, Duration::from_secs(15)).await;
    let samples = exporter.scrape().await;
    assert_eq!(
        value(&samples, "kube_node_status_otlp_export_failures_total", &[]),
        Some(0.0)
    );

    // Without the CA, the same endpoint is refused (the webpki roots do not trust it), and counted.
    let untrusted = Exporter::start(
        &api.kubeconfig(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    untrusted
        .wait_for("TLS failures", Duration::from_secs(15), |s| {
            value(s, "kube_node_status_otlp_export_failures_total", &[]).is_some_and(|n| n >= 1.0)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cardinality_follows_the_cluster_without_overflow() {
    // Only the reference encoder keeps per-node series on a long-lived
    // provider; the default one collects them from providers sized to the points at hand.
    let api = fake_api(1000).await;
    let exporter = Exporter::start(
        &api.kubeconfig(),
        &[],
        &[PROM_ONLY, ("KNS_PROMETHEUS_ENCODER", "reference")],
    );
    exporter
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let samples = exporter
        .wait_for("all 1000 nodes", Duration::from_secs(10), |s| {
            s.iter().filter(|x| x.name == "k8s_node_ready").count() == 1000
        })
        .await;
    assert!(
        !samples
            .iter()
            .any(|s| s.labels.contains_key("otel_metric_overflow")),
        "overflowed"
    );
    let points = samples
        .iter()
        .filter(|s| s.name == "k8s_node_condition_status")
        .count();
    assert_eq!(
        points,
        1000 * 5 * 3 + 250 * 3 * 3,
        "5 kubelet conditions, 3 custom ones on a quarter"
    );
    assert!(
        exporter.logs().contains("resized metric pipelines"),
        "{}",
        exporter.logs()
    );
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    // (flags, environment, what the one line must mention)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 10] = [
        (&["--listen-address", "nowhere"], &[], "--listen-address"),
        (&["--stale-after", "soon"], &[], "--stale-after"),
        (
            &[],
            &[("OTEL_METRICS_EXPORTER", "console")],
            "OTEL_METRICS_EXPORTER",
        ),
        (
            &[],
            &[("OTEL_METRIC_EXPORT_INTERVAL", "fast")],
            "OTEL_METRIC_EXPORT_INTERVAL",
        ),
        (&["--kubeconfig", "/nonexistent/kubeconfig"], &[], "kubeconfig"),
        (&[], &[("KUBECONFIG", "/nonexistent/kubeconfig")], "kubeconfig"),
        (&[], &[("KNS_STALE_AFTER", "-3")], "stale-after"),
        (
            &[],
            &[("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")],
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ),
        (&[], &[("RUST_LOG", "[[[")], "RUST_LOG"),
        (
            &[],
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
    ];
    for (args, env, mentions) in cases {
        let (code, stderr) = run_to_exit(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?} {env:?}: {stderr}");
        assert!(lines[0].contains(mentions), "{args:?} {env:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

/// Every flag clap knows, read from its own command definition (not from a
/// list kept by hand): each has a `KNS_` variable, and `--help` and the
/// README's flag table name both. The subcommands' flags are in their `--help`.
#[test]
fn help_and_readme_document_every_flag_with_its_environment_variable() {
    use clap::CommandFactory;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // The flag table: rows whose first cell names flags and second their variables.
    let rows: Vec<(String, String)> = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                cells[0].to_string(),
                cells.get(1).copied().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let help_of = |args: &[&str]| {
        let out = std::process::Command::new(common::binary())
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?} --help");
        // clap wraps long lines, even inside `[env: …]`: compare with single spaces.
        let help = String::from_utf8(out.stdout).unwrap();
        help.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let cli = kube_node_status::cli::Cli::command();
    let flags = |cmd: &clap::Command| -> Vec<(String, Option<String>)> {
        cmd.get_arguments()
            .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
            .filter_map(|a| {
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                Some((format!("--{}", a.get_long()?), env))
            })
            .collect()
    };
    let top = flags(&cli);
    assert!(top.len() >= 30, "{} flags", top.len());
    let help = help_of(&[]);
    for (flag, env) in &top {
        let env = env
            .as_deref()
            .unwrap_or_else(|| panic!("{flag} has no environment variable"));
        assert!(env.starts_with("KNS_"), "{flag}: {env}");
        assert!(help.contains(&format!("{flag} ")), "{flag} missing from --help");
        assert!(
            help.contains(&format!("[env: {env}")),
            "{env} missing from --help"
        );
        let row = rows
            .iter()
            .find(|(f, _)| f.split(',').any(|f| f.trim().trim_matches('`') == flag));
        let (_, vars) = row.unwrap_or_else(|| panic!("{flag} has no row in the README's flag table"));
        assert!(
            vars.contains(&format!("`{env}`")),
            "README: {flag}'s row does not name {env}: {vars}"
        );
    }
    // The table lists nothing clap does not know.
    for (cell, _) in &rows {
        for f in cell.split(',') {
            let f = f.trim().trim_matches('`');
            assert!(
                top.iter().any(|(t, _)| t == f),
                "the README documents {f}, which the binary does not take"
            );
        }
    }
    for sub in cli.get_subcommands() {
        let help = help_of(&[sub.get_name()]);
        for (flag, env) in flags(sub) {
            assert!(help.contains(&flag), "{} --help lacks {flag}", sub.get_name());
            if let Some(env) = env {
                assert!(
                    help.contains(&format!("[env: {env}")),
                    "{} --help lacks {env}",
                    sub.get_name()
                );
            }
        }
    }
    assert!(help.contains("0.0.0.0:9464") && help.contains("OTEL_METRICS_EXPORTER"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_headers_and_gzip_come_from_the_standard_variables() {
    let api = fake_api(2).await;
    let receiver = otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team-a,x-api-key=s3cret"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    receiver.wait_cycles(2, Duration::from_secs(15)).await;
    let headers = receiver.received.headers.lock().unwrap().last().cloned().unwrap();
    assert_eq!(headers.get("x-tenant").map(String::as_str), Some("team-a"));
    assert_eq!(headers.get("x-api-key").map(String::as_str), Some("s3cret"));
    assert_eq!(headers.get("grpc-encoding").map(String::as_str), Some("gzip"));
    assert!(
        !exporter.logs().contains("s3cret"),
        "a header value leaked into the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_flag_selects_the_kubeconfig_context() {
    let api = fake_api(2).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster: {{server: \"{dead}\"}}\n\
         - name: fake\n  cluster: {{server: \"{}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n\
         - name: dead\n  context: {{cluster: dead, user: u}}\n- name: fake\n  context: {{cluster: fake, user: u}}\n\
         current-context: dead\n",
        api.url()
    );
    let _exporter = Exporter::start_ready(&kubeconfig, &["--context", "fake"], &[PROM_ONLY]).await;
    // The same readable kubeconfig, naming a context it does not have: refused
    // for the context, not for the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, &kubeconfig).unwrap();
    let path = path.to_str().unwrap();
    let (code, stderr) = run_to_exit(&["--kubeconfig", path, "--context", "missing"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("context: missing"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_collections_are_split_into_small_requests_and_failed_parts_retried() {
    let api = fake_api(10).await;
    let receiver = otlp::Receiver::start(None).await;
    receiver
        .received
        .fail_next
        .store(2, std::sync::atomic::Ordering::Release);
    let endpoint = format!("http://{}", receiver.addr);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--otlp-max-points-per-request", "50"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    let samples = exporter.scrape().await;
    let on_metrics = samples
        .iter()
        .filter(|s| s.name == "k8s_node_condition_status")
        .count();
    assert!(on_metrics > 150, "{on_metrics} condition points");
    // Wait for several collections after sync, each in several requests.
    receiver.wait_exports(15, Duration::from_secs(20)).await;
    let requests: Vec<_> = receiver
        .received
        .metrics
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r)| r.clone())
        .collect();
    for req in &requests {
        let n = otlp::request_points(req);
        assert!(n <= 50, "a request carried {n} points");
        assert!(!otlp::resource(req).is_empty(), "every part carries the resource");
    }
    let latest = otlp::latest_collection(&requests, "k8s.node.condition.status");
    assert_eq!(
        latest.len(),
        on_metrics,
        "the latest collection arrived complete across its parts"
    );
    let exported = conditions_from_otlp(&latest);
    let scraped = conditions_from_scrape(&samples);
    assert_eq!(exported, scraped);
    assert_eq!(
        receiver
            .received
            .refused
            .load(std::sync::atomic::Ordering::Acquire),
        2
    );
    let samples = exporter.scrape().await;
    assert_eq!(
        value(&samples, "kube_node_status_otlp_export_failures_total", &[]),
        Some(0.0),
        "the refused parts were retried within the interval"
    );
}

/// `--otlp-resource-per-node`: each node's points under a resource of its
/// own (`k8s.node.name`, `k8s.node.uid`, and the cluster's attributes), the
/// node no longer on its points; cluster readings stay under the exporter's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_per_node_sends_each_node_under_its_own_resource() {
    use std::collections::BTreeSet;
    let api = common::fake_api(4).await;
    let names: BTreeSet<String> = api.node_names().into_iter().collect();
    let receiver = otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let _exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--otlp-resource-per-node",
            "--cluster-name",
            "prod",
            "--traces-exporter",
            "none",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    let string = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| otlp::any_value(v);
    let start = std::time::Instant::now();
    loop {
        let requests: Vec<_> = receiver
            .received
            .metrics
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect();
        let mut nodes = BTreeSet::new();
        let mut cluster_under_exporter = false;
        for rm in requests.iter().flat_map(|r| &r.resource_metrics) {
            let attrs: std::collections::BTreeMap<String, String> = rm
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), string(&kv.value)))
                .collect();
            assert_eq!(
                attrs.get("k8s.cluster.name").map(String::as_str),
                Some("prod"),
                "{attrs:?}"
            );
            let metrics: Vec<_> = rm.scope_metrics.iter().flat_map(|sm| &sm.metrics).collect();
            match attrs.get("k8s.node.name") {
                Some(node) => {
                    assert!(
                        attrs.get("k8s.node.uid").is_some_and(|u| !u.is_empty()),
                        "{attrs:?}"
                    );
                    for m in &metrics {
                        assert!(
                            m.name.starts_with("k8s.node."),
                            "{} under a node's resource",
                            m.name
                        );
                        for (point, _) in otlp::points(
                            &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
                                resource_metrics: vec![rm.clone()],
                            },
                            &m.name,
                        ) {
                            assert!(!point.contains_key("k8s.node.name") && !point.contains_key("k8s.node.uid"), "{point:?}");
                        }
                    }
                    nodes.insert(node.clone());
                }
                None => {
                    cluster_under_exporter |= metrics.iter().any(|m| m.name == "k8s.cluster.nodes");
                    assert!(
                        !metrics.iter().any(|m| m.name == "k8s.node.ready"),
                        "a node metric under the exporter's resource"
                    );
                }
            }
        }
        if nodes == names && cluster_under_exporter {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node resources {nodes:?}, want {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Google's Telemetry API has no node in its monitored resource: refused in one line.
    let (code, stderr) = common::run_to_exit(&["--otlp-auth", "google", "--otlp-resource-per-node"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--otlp-resource-per-node"), "{stderr}");
}

/// A receiver that takes a request and refuses part of it (a partial
/// success, as Google's Telemetry API answers for an attribute it does not
/// allow): the refused points and records are counted as rejected, not as
/// delivered, each streak is one WARN, and the counts equal the receiver's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_the_receiver_refuses_is_counted_as_rejected_and_logged_once() {
    use std::sync::atomic::Ordering;
    let api = fake_api(6).await;
    let receiver = otlp::Receiver::start(None).await;
    *receiver.received.refuse_metric.lock().unwrap() = Some("k8s.node.ready".into());
    let names = api.node_names();
    receiver
        .received
        .refuse_records_of
        .lock()
        .unwrap()
        .extend(names.iter().take(2).cloned());
    let endpoint = format!("http://{}", receiver.addr);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--metrics-exporter", "otlp,prometheus"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    receiver.wait_cycles(3, Duration::from_secs(30)).await;
    // Four Ready flips: four records, of which the receiver refuses the first two.
    for name in names.iter().take(4) {
        api.set_condition(name, "Ready", "False");
    }
    let records = |s: &[Sample], outcome: &str| {
        value(s, "kube_node_status_logs_records_total", &[("outcome", outcome)])
    };
    let refused = |r: &otlp::Receiver| r.received.points_refused.load(Ordering::Acquire) as f64;
    let samples = exporter
        .wait_for("the refusals counted", Duration::from_secs(30), |s| {
            let points = value(s, "kube_node_status_otlp_export_rejected_total", &[]);
            let rejected = records(s, "rejected").unwrap_or(0.0);
            let exported = records(s, "exported").unwrap_or(0.0);
            // Read the receiver after the exporter: the exporter's count never runs ahead of it.
            points.is_some_and(|p| p >= 12.0 && p <= refused(&receiver)) && rejected + exported == 4.0
        })
        .await;
    assert_eq!(
        records(&samples, "rejected"),
        Some(receiver.received.records_refused.load(Ordering::Acquire) as f64)
    );
    assert_eq!(
        records(&samples, "exported"),
        Some(receiver.log_records().len() as f64)
    );
    assert_eq!(
        value(&samples, "kube_node_status_otlp_export_failures_total", &[]),
        Some(0.0),
        "a partial success is no failure"
    );
    let logs = exporter.logs();
    let warns = |what: &str| {
        logs.lines()
            .filter(|l| l.contains("WARN") && l.contains(what))
            .count()
    };
    assert_eq!(
        warns("the OTLP receiver refused some metric points"),
        1,
        "one WARN for the streak:\n{logs}"
    );
    assert_eq!(
        warns("the collector refused some condition-change records"),
        1,
        "{logs}"
    );
    // The receiver takes everything again: one line says so, and the count stops.
    *receiver.received.refuse_metric.lock().unwrap() = None;
    let cycles = receiver.cycles();
    receiver.wait_cycles(cycles + 2, Duration::from_secs(30)).await;
    let logs = exporter.logs();
    assert_eq!(
        logs.matches("the OTLP receiver takes every metric point again")
            .count(),
        1,
        "{logs}"
    );
    let (_, body) = exporter.get("/metrics").await;
    let after = value(
        &common::parse(&body),
        "kube_node_status_otlp_export_rejected_total",
        &[],
    );
    assert_eq!(after, Some(refused(&receiver)));
}

/// The binary allocates with jemalloc and the options `src/main.rs` gives it
/// (docs/benchmarks.md, "The allocator"): jemalloc confirms each one it
/// read, and its background thread, which returns freed pages to the
/// system, exists only with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_allocates_with_jemalloc_and_its_options() {
    let (code, stderr) = run_to_exit(&["--version"], &[("_RJEM_MALLOC_CONF", "confirm_conf:true")]);
    assert_eq!(code, Some(0), "{stderr}");
    let missing = common::allocator_options_missing(&stderr);
    assert!(missing.is_empty(), "jemalloc did not set {missing:?}:\n{stderr}");

    let api = fake_api(20).await;
    let exporter = Exporter::start_ready(&api.kubeconfig(), &[], &[PROM_ONLY]).await;
    let threads = exporter.thread_names();
    assert!(
        threads.iter().any(|t| t == "jemalloc_bg_thd"),
        "no jemalloc background thread among {threads:?}"
    );
}

//! The exporter against real third-party peers started on loopback: the
//! Prometheus server (Debian `prometheus`), `promtool`, and the `rotel` OTLP
//! collector (PyPI). A missing peer fails the test: run `scripts/test`.

use crate::common;

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Exporter, Sample, fake_api, free_port, http_get, parse, peer,
    prometheus::{KillOnDrop, Prometheus, promtool, query, query_series, query_series_at, wait_query},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_and_its_query_api_sees_the_readings() {
    let api = fake_api(5).await;
    let names = api.node_names();
    let exporter =
        Exporter::start_ready(&api.kubeconfig(), &[], &[("OTEL_METRICS_EXPORTER", "prometheus")]).await;

    let prometheus = Prometheus::start(exporter.addr, None).await;
    let prom_addr = prometheus.addr;

    let t = Duration::from_secs(30);
    wait_query(prom_addr, "up{job=\"kube-node-status\"}", &[1.0], t).await;
    wait_query(prom_addr, "sum(k8s_cluster_nodes)", &[5.0], t).await;
    wait_query(
        prom_addr,
        "k8s_cluster_nodes{k8s_node_condition_status=\"false\"}",
        &[0.0],
        t,
    )
    .await;
    // Every condition one-hot, as Prometheus sees it: as many (node, type)
    // pairs summing to exactly 1 as there are pairs, and there are some.
    let pairs = "count(sum by (k8s_node_name, k8s_node_condition_type) (k8s_node_condition_status))";
    let start = Instant::now();
    let n = loop {
        match query(prom_addr, pairs).await.first() {
            Some(&n) if n >= 5.0 => break n,
            _ => assert!(start.elapsed() < t, "{pairs}: no condition series"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_query(
        prom_addr,
        "count(sum by (k8s_node_name, k8s_node_condition_type) (k8s_node_condition_status) == 1)",
        &[n],
        t,
    )
    .await;

    api.set_condition(&names[0], "Ready", "False");
    api.set_condition(&names[1], "Ready", "Unknown");
    wait_query(
        prom_addr,
        "k8s_cluster_nodes{k8s_node_condition_status=\"false\"}",
        &[1.0],
        t,
    )
    .await;
    wait_query(
        prom_addr,
        "k8s_cluster_nodes{k8s_node_condition_status=\"unknown\"}",
        &[1.0],
        t,
    )
    .await;
    wait_query(prom_addr, "sum(k8s_node_ready)", &[3.0], t).await;
    wait_query(prom_addr, "k8s_cluster_node_not_ready_ratio", &[0.4], t).await;
    wait_query(
        prom_addr,
        &format!("k8s_node_condition_status{{k8s_node_name=\"{}\",k8s_node_condition_type=\"Ready\",k8s_node_condition_status=\"unknown\"}}", names[1]),
        &[1.0],
        t,
    )
    .await;
}

fn promtool_check(body: &str) -> (bool, String) {
    promtool(&["check", "metrics"], body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_has_no_findings_in_both_modes() {
    let api = common::fixture_api().await;
    // OTLP on (towards nothing), so the export-failure counter has a value too.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    for mode in ["otel", "kube-state-metrics"] {
        let exporter = Exporter::start_ready(
            &api.kubeconfig(),
            &[
                "--cluster-name",
                "promtool",
                "--metric-naming",
                mode,
                "--node-labels",
                "topology.kubernetes.io/*",
            ],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ],
        )
        .await;
        let (_, body) = exporter.get("/metrics").await;
        assert!(body.contains("_status_condition{") || body.contains("k8s_node_condition_status{"));
        let (ok, findings) = promtool_check(&body);
        assert!(
            ok && findings.trim().is_empty(),
            "{mode}: promtool findings:\n{findings}"
        );
    }

    // promtool itself is not a rubber stamp: it flags a counter without _total.
    let (_, findings) = promtool_check("# HELP bad_counter x\n# TYPE bad_counter counter\nbad_counter 1\n");
    assert!(!findings.trim().is_empty());
}

/// One point as rotel's debug log prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RotelPoint {
    metric: String,
    attrs: Vec<(String, String)>,
    value: String,
}

/// Parses rotel's `--debug-log metrics --debug-log-verbosity detailed` output into exports.
fn parse_rotel(log: &str) -> Vec<Vec<RotelPoint>> {
    let mut exports = Vec::new();
    for block in log.split("ResourceMetrics #0").skip(1) {
        let mut points = Vec::new();
        let (mut metric, mut attrs, mut in_point) = (String::new(), Vec::new(), false);
        for line in block.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("-> Name: ") {
                metric = name.to_string();
            } else if line.starts_with("NumberDataPoints #") {
                attrs = Vec::new();
                in_point = true;
            } else if in_point && let Some(kv) = line.strip_prefix("-> ") {
                if let Some((k, v)) = kv.split_once(": ") {
                    let v = v
                        .strip_prefix("Str(")
                        .and_then(|v| v.strip_suffix(')'))
                        .unwrap_or(v);
                    attrs.push((k.to_string(), v.to_string()));
                }
            } else if let Some(v) = line.strip_prefix("Value: ").filter(|_| in_point) {
                let value = v
                    .parse::<f64>()
                    .map(|f| f.to_string())
                    .unwrap_or_else(|_| v.to_string());
                attrs.sort();
                points.push(RotelPoint {
                    metric: metric.clone(),
                    attrs: attrs.clone(),
                    value,
                });
                in_point = false;
            }
        }
        exports.push(points);
    }
    exports
}

fn scrape_points(samples: &[Sample], prom_name: &str, otel_name: &str) -> BTreeSet<RotelPoint> {
    samples
        .iter()
        .filter(|s| s.name == prom_name)
        .map(|s| {
            let mut attrs: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.replace('_', "."), v.clone()))
                .collect();
            attrs.sort();
            RotelPoint {
                metric: otel_name.to_string(),
                attrs,
                value: s.value.to_string(),
            }
        })
        .collect()
}

/// The rotel collector on loopback, printing what it receives of `signal`
/// (`metrics` or `logs`) in detail to its log, and dropping it.
struct Rotel {
    /// `http://…` of its OTLP/gRPC endpoint.
    endpoint: String,
    log: std::path::PathBuf,
    _process: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl Rotel {
    fn start(signal: &str) -> Rotel {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("rotel.log");
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let process = KillOnDrop(
            Command::new(peer("rotel-agent"))
                .args([
                    "start",
                    "--otlp-grpc-endpoint",
                    &grpc,
                    "--otlp-http-endpoint",
                    &http,
                ])
                .args([
                    "--exporter",
                    "blackhole",
                    "--debug-log",
                    signal,
                    "--debug-log-verbosity",
                    "detailed",
                ])
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .expect("rotel-agent starts"),
        );
        Rotel {
            endpoint: format!("http://{grpc}"),
            log,
            _process: process,
            _dir: dir,
        }
    }

    /// What it has printed so far.
    fn printed(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_collector_receives_the_same_readings_as_metrics() {
    let api = fake_api(5).await;
    let names = api.node_names();
    api.set_condition(&names[4], "Ready", "Unknown");
    api.set_condition(&names[0], "Ready", "False");

    let rotel = Rotel::start("metrics");
    let endpoint = rotel.endpoint.clone();
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--node-labels", "topology.kubernetes.io/zone"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    let samples = exporter.scrape().await;
    // /metrics: the label sanitized, as every Prometheus translation does.
    assert!(
        samples.iter().any(|s| s.name == "k8s_node_ready"
            && s.labels
                .contains_key("k8s_node_label_topology_kubernetes_io_zone")),
        "the sanitized label on /metrics"
    );

    let start = Instant::now();
    let exports = loop {
        let exports = parse_rotel(&rotel.printed());
        // The last block may still be being written: wait for three complete ones after sync.
        let synced = exports
            .iter()
            .filter(|e| e.iter().any(|p| p.metric == "k8s.cluster.nodes"))
            .count();
        if synced >= 3 {
            break exports;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rotel got {} exports",
            exports.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Each family travels in a request of its own: compare each with its
    // own second-newest block (the newest may still be being written).
    for (prom, otel) in [
        ("k8s_node_condition_status", "k8s.node.condition.status"),
        ("k8s_node_ready", "k8s.node.ready"),
        ("k8s_cluster_nodes", "k8s.cluster.nodes"),
        ("k8s_cluster_node_not_ready_ratio", "k8s.cluster.node.not_ready"),
    ] {
        let blocks: Vec<_> = exports
            .iter()
            .filter(|e| e.iter().any(|p| p.metric == otel))
            .collect();
        assert!(blocks.len() >= 2, "rotel received {otel} {} times", blocks.len());
        // Every per-node point carries the node's uid; /metrics keeps it on the info series only.
        let received: BTreeSet<RotelPoint> = blocks[blocks.len() - 2]
            .iter()
            .filter(|p| p.metric == otel)
            .map(|p| {
                let mut p = p.clone();
                let named = p.attrs.iter().any(|(k, _)| k == "k8s.node.name");
                let before = p.attrs.len();
                p.attrs.retain(|(k, _)| k != "k8s.node.uid");
                assert_eq!(
                    named,
                    p.attrs.len() < before,
                    "{otel}: the uid on a node's point only: {p:?}"
                );
                // The semantic conventions' key, the label key as it is.
                assert_eq!(
                    named,
                    p.attrs
                        .iter()
                        .any(|(k, _)| k == "k8s.node.label.topology.kubernetes.io/zone"),
                    "{otel}: the raw label key: {p:?}"
                );
                // Compared with /metrics as the Prometheus translation names it.
                for (k, _) in p.attrs.iter_mut() {
                    *k = k.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', ".");
                }
                p.attrs.sort();
                p
            })
            .collect();
        assert!(!received.is_empty(), "rotel received no {otel}");
        assert_eq!(
            received,
            scrape_points(&samples, prom, otel),
            "{otel} differs between rotel and /metrics"
        );
    }
    let unknown = exports.iter().flatten().any(|p| {
        p.metric == "k8s.node.condition.status"
            && p.value == "1"
            && p.attrs
                .contains(&("k8s.node.condition.status".into(), "unknown".into()))
            && p.attrs.contains(&("k8s.node.name".into(), names[4].clone()))
    });
    assert!(unknown, "Unknown is reported as `unknown`");
    let _ = parse("");
}

/// kmock's KubernetesEmulator (PyPI `kmock`), a third-party Kubernetes API
/// emulator, serving 5 realistic nodes. Changes go through its HTTP API.
struct Kmock {
    addr: std::net::SocketAddr,
    _process: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl Kmock {
    async fn start(nodes: &[serde_json::Value]) -> Kmock {
        Kmock::start_on(nodes, None).await
    }

    /// Starts kmock on `port` (a free one if `None`).
    async fn start_on(nodes: &[serde_json::Value], port: Option<u16>) -> Kmock {
        let dir = tempfile::tempdir().unwrap();
        let nodes_file = dir.path().join("nodes.json");
        std::fs::write(&nodes_file, serde_json::to_string(nodes).unwrap()).unwrap();
        let port_file = dir.path().join("port");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/kmock_cluster.py");
        let process = KillOnDrop(
            Command::new(peer("python"))
                .arg(script)
                .arg(&nodes_file)
                .arg(&port_file)
                .args(port.map(|p| p.to_string()))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("kmock.log")).unwrap())
                .spawn()
                .expect("kmock starts"),
        );
        let start = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().parse::<u16>().unwrap();
            }
            let log = std::fs::read_to_string(dir.path().join("kmock.log")).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "kmock did not start:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Kmock {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            _process: process,
            _dir: dir,
        }
    }

    fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kmock\n  cluster: {{server: \"http://{}\"}}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: kmock, user: u}}\ncurrent-context: c\n",
            self.addr
        )
    }

    /// Sets one condition through a merge PATCH of the node's status, as a kubelet would.
    async fn set_condition(&self, name: &str, type_: &str, status: &str) {
        let (code, body) = http_get(self.addr, &format!("/api/v1/nodes/{name}"), &[])
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let mut node: serde_json::Value = serde_json::from_str(&body).unwrap();
        for c in node["status"]["conditions"].as_array_mut().unwrap() {
            if c["type"] == type_ {
                c["status"] = serde_json::json!(status);
            }
        }
        let patch = serde_json::json!({"status": {"conditions": node["status"]["conditions"]}}).to_string();
        let (code, body) = common::http_request(
            self.addr,
            "PATCH",
            &format!("/api/v1/nodes/{name}"),
            &[("Content-Type", "application/merge-patch+json")],
            Some(&patch),
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{body}");
    }

    async fn delete(&self, name: &str) {
        let (code, body) =
            common::http_request(self.addr, "DELETE", &format!("/api/v1/nodes/{name}"), &[], None)
                .await
                .unwrap();
        assert_eq!(code, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_emulator_kmock_with_five_realistic_nodes() {
    use kube_node_status::fake::{generated_node, node_name};
    let nodes: Vec<serde_json::Value> = (0..5)
        .map(|i| generated_node(i, 100 + i as u64, "2026-11-27T00:00:00Z"))
        .collect();
    let names: Vec<String> = (0..5).map(node_name).collect();
    let kmock = Kmock::start(&nodes).await;
    let receiver = common::otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let mut exporter = Exporter::start_ready(
        &kmock.kubeconfig(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    let samples = exporter.scrape().await;
    assert_eq!(
        common::value(
            &samples,
            "k8s_cluster_nodes",
            &[("k8s_node_condition_status", "true")]
        ),
        Some(5.0)
    );

    // NotReady on /metrics in under 2 s.
    let flip = Instant::now();
    kmock.set_condition(&names[0], "Ready", "False").await;
    exporter
        .wait_for("NotReady via kmock", Duration::from_secs(2), |s| {
            common::value(s, "k8s_node_ready", &[("k8s_node_name", &names[0])]) == Some(0.0)
        })
        .await;
    println!("kmock flip-to-scrape: {:?}", flip.elapsed());
    kmock.set_condition(&names[1], "Ready", "Unknown").await;
    let samples = exporter
        .wait_for("Unknown via kmock", Duration::from_secs(2), |s| {
            common::value(
                s,
                "k8s_node_condition_status",
                &[
                    ("k8s_node_name", &names[1]),
                    ("k8s_node_condition_type", "Ready"),
                    ("k8s_node_condition_status", "unknown"),
                ],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(
        common::value(
            &samples,
            "k8s_cluster_nodes",
            &[("k8s_node_condition_status", "unknown")]
        ),
        Some(1.0)
    );

    kmock.delete(&names[2]).await;
    exporter
        .wait_for("deletion via kmock", Duration::from_secs(2), |s| {
            common::value(s, "k8s_node_ready", &[("k8s_node_name", &names[2])]).is_none()
        })
        .await;
    let seen_gone = Instant::now();
    let before = receiver.cycles();
    while receiver.cycles() < before + 5 {
        let s = exporter.scrape().await;
        assert!(
            !s.iter().any(|x| x.labels.get("k8s_node_name") == Some(&names[2])),
            "deleted node came back"
        );
        assert!(seen_gone.elapsed() < Duration::from_secs(10));
    }
    for req in receiver.since(seen_gone + Duration::from_millis(100)) {
        let ready = common::otlp::points(&req, "k8s.node.ready");
        // Each family travels in a request of its own.
        if ready.is_empty() {
            continue;
        }
        assert_eq!(ready.len(), 4);
        assert!(!ready.iter().any(|(a, _)| a["k8s.node.name"] == names[2]));
    }
    let samples = exporter.scrape().await;
    assert_eq!(
        common::value(&samples, "kube_node_status_watch_restarts_total", &[]),
        Some(0.0),
        "no relists"
    );
    let (status, took) = exporter.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10));
}

/// Waits until every rule group of `prom` was evaluated after `after`, with
/// every rule healthy: only then does "no alert" mean the rule saw the data.
async fn wait_rules_evaluated_after(
    prom: std::net::SocketAddr,
    after: std::time::SystemTime,
    timeout: Duration,
) {
    let start = Instant::now();
    loop {
        let (status, body) = http_get(prom, "/api/v1/rules", &[])
            .await
            .expect("Prometheus answers");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("rules are JSON");
        let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
        assert!(!groups.is_empty(), "Prometheus loaded no rule group: {body}");
        let evaluated = groups.iter().all(|g| {
            g["lastEvaluation"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .is_some_and(|t| t > after)
        });
        if evaluated {
            for rule in groups
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            {
                assert_eq!(rule["health"], "ok", "{rule}");
            }
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "no rule evaluation after the data arrived: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_state_metrics_alert_rule_fires_unchanged() {
    let api = fake_api(4).await;
    let names = api.node_names();
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--metric-naming", "kube-state-metrics"],
        &[("OTEL_METRICS_EXPORTER", "prometheus")],
    )
    .await;
    // kube-prometheus' KubeNodeNotReady, as shipped (only the duration shortened for a test).
    let rules = "groups:\n- name: kubernetes-system-kubelet\n  rules:\n  - alert: KubeNodeNotReady\n    \
                 expr: kube_node_status_condition{job=\"kube-node-status\",condition=\"Ready\",status=\"true\"} == 0\n    \
                 for: 2s\n    labels: {severity: warning}\n";
    let prometheus = Prometheus::start(exporter.addr, Some(rules)).await;
    let t = Duration::from_secs(30);
    // The rule's input is there, and the rule was evaluated on it: only then
    // does the absence of the alert say something.
    wait_query(
        prometheus.addr,
        "count(kube_node_status_condition{job=\"kube-node-status\",condition=\"Ready\",status=\"true\"} == 1)",
        &[4.0],
        t,
    )
    .await;
    wait_rules_evaluated_after(prometheus.addr, std::time::SystemTime::now(), t).await;
    assert!(
        query_series(prometheus.addr, "ALERTS{alertname=\"KubeNodeNotReady\"}")
            .await
            .is_empty(),
        "KubeNodeNotReady on a healthy cluster"
    );

    api.set_condition(&names[2], "Ready", "False");
    let start = Instant::now();
    loop {
        let firing = query_series(
            prometheus.addr,
            "ALERTS{alertname=\"KubeNodeNotReady\",alertstate=\"firing\"}",
        )
        .await;
        if let Some((labels, _)) = firing.first() {
            assert_eq!(firing.len(), 1, "{firing:?}");
            assert_eq!(labels["node"], names[2].as_str());
            break;
        }
        assert!(start.elapsed() < t, "KubeNodeNotReady never fired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_for_n_seconds_in_otel_mode() {
    let api = fake_api(4).await;
    let names = api.node_names();
    let exporter =
        Exporter::start_ready(&api.kubeconfig(), &[], &[("OTEL_METRICS_EXPORTER", "prometheus")]).await;
    let prometheus = Prometheus::start(exporter.addr, None).await;
    let t = Duration::from_secs(30);
    wait_query(prometheus.addr, "sum(k8s_cluster_nodes)", &[4.0], t).await;

    // NotReady for more than N seconds, and not cordoned: the alert operators write.
    let not_ready_for = "(time() - k8s_node_condition_last_transition_time_seconds{k8s_node_condition_type=\"Ready\"}) \
                         and on (k8s_node_name) (k8s_node_ready == 0) \
                         and on (k8s_node_name) (k8s_node_unschedulable == 0)";
    api.set_condition(&names[1], "Ready", "False");
    // The first moment Prometheus holds the flip, found by asking it (not by
    // the test's clock, which a busy machine can leave behind).
    let start = Instant::now();
    let (seen_at, for_then) = loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let found = query_series_at(prometheus.addr, not_ready_for, Some(now)).await;
        if let Some((labels, secs)) = found.first() {
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(labels["k8s_node_name"], names[1].as_str());
            break (now, *secs);
        }
        assert!(start.elapsed() < t, "the flip never reached Prometheus");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A threshold above how long it had been NotReady then: at that moment
    // the alert's expression must be quiet, and later it must fire.
    let threshold = for_then.ceil() + 2.0;
    let over = format!("({not_ready_for}) > {threshold}");
    assert!(
        query_series_at(prometheus.addr, &over, Some(seen_at))
            .await
            .is_empty(),
        "NotReady for {for_then}s, yet over {threshold}s"
    );
    loop {
        let found = query_series(prometheus.addr, &over).await;
        if let Some((labels, secs)) = found.first() {
            assert_eq!(labels["k8s_node_name"], names[1].as_str());
            assert!(*secs > threshold, "{secs}");
            break;
        }
        assert!(
            start.elapsed() < t + Duration::from_secs_f64(threshold),
            "never NotReady for {threshold}s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_emulator_kmock_serves_the_whole_node_picture_in_both_modes() {
    use common::value;
    let fixtures = common::fixture_nodes();
    let name = |i: usize| fixtures[i]["metadata"]["name"].as_str().unwrap().to_string();
    let (cordoned, tainted, gpu, terminating) = (name(0), name(1), name(2), name(3));
    let kmock = Kmock::start(&fixtures).await;
    for (mode, node, cond) in [
        ("otel", "k8s_node_name", "k8s_node_condition_type"),
        ("kube-state-metrics", "node", "condition"),
    ] {
        let exporter = Exporter::start_ready(
            &kmock.kubeconfig(),
            &[
                "--metric-naming",
                mode,
                "--node-labels",
                "topology.kubernetes.io/zone",
            ],
            &[("OTEL_METRICS_EXPORTER", "prometheus")],
        )
        .await;
        let s = exporter.scrape().await;
        let otel = mode == "otel";
        let pick = |o: &'static str, k: &'static str| if otel { o } else { k };
        assert_eq!(
            value(
                &s,
                pick("k8s_node_unschedulable", "kube_node_spec_unschedulable"),
                &[(node, &cordoned)]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &s,
                pick("k8s_node_unschedulable", "kube_node_spec_unschedulable"),
                &[(node, &tainted)]
            ),
            Some(0.0)
        );
        let taint_key = pick("k8s_node_taint_key", "key");
        assert_eq!(
            value(
                &s,
                pick("k8s_node_taint", "kube_node_spec_taint"),
                &[(node, &tainted), (taint_key, "dedicated")]
            ),
            Some(1.0)
        );
        let gpus = if otel {
            value(
                &s,
                "k8s_node_resource_capacity",
                &[(node, &gpu), ("k8s_node_resource_name", "nvidia.com/gpu")],
            )
        } else {
            value(
                &s,
                "kube_node_status_capacity",
                &[(node, &gpu), ("resource", "nvidia_com_gpu"), ("unit", "integer")],
            )
        };
        assert_eq!(gpus, Some(1.0), "{mode}");
        let status = pick("k8s_node_condition_status", "status");
        let condition = pick("k8s_node_condition_status", "kube_node_status_condition");
        assert_eq!(
            value(
                &s,
                condition,
                &[(node, &cordoned), (cond, "KernelDeadlock"), (status, "true")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &s,
                condition,
                &[(node, &gpu), (cond, "Ready"), (status, "unknown")]
            ),
            Some(1.0)
        );
        let deletion = pick(
            "k8s_node_deletion_timestamp_seconds",
            "kube_node_deletion_timestamp",
        );
        assert_eq!(
            value(&s, deletion, &[(node, &terminating)]),
            Some(1_795_167_000.0)
        );
        assert_eq!(
            value(&s, deletion, &[(node, &gpu)]),
            None,
            "only terminating nodes have one"
        );
        let zone = pick(
            "k8s_node_label_topology_kubernetes_io_zone",
            "label_topology_kubernetes_io_zone",
        );
        assert!(
            s.iter()
                .filter(|x| x.labels.contains_key(node))
                .all(|x| x.labels.contains_key(zone)),
            "{mode}"
        );

        // A flap between two scrapes, through the emulator's API.
        let transitions = pick(
            "k8s_node_condition_transitions_total",
            "kube_node_status_condition_transitions_total",
        );
        let before = value(&s, transitions, &[(node, &cordoned), (cond, "Ready")]).unwrap();
        kmock.set_condition(&cordoned, "Ready", "False").await;
        kmock.set_condition(&cordoned, "Ready", "True").await;
        exporter
            .wait_for("flap counted", Duration::from_secs(5), |s| {
                value(s, transitions, &[(node, &cordoned), (cond, "Ready")]) == Some(before + 2.0)
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_emulator_kmock_gives_the_golden_output_in_both_modes() {
    // The same fixture nodes served by kmock instead of our fake API server must
    // read exactly the same: every fact, in both naming modes.
    let kmock = Kmock::start(&common::fixture_nodes()).await;
    common::assert_golden(&kmock.kubeconfig(), "otel", "otel.prom").await;
    common::assert_golden(
        &kmock.kubeconfig(),
        "kube-state-metrics",
        "kube-state-metrics.prom",
    )
    .await;
}

/// Leader election on kmock's emulator: the Lease is created and merge-patched
/// through kmock's own stateful handling (no code of ours serves it), and two
/// replicas never export at once through a kill, a pause and a SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_emulator_kmock_hosts_the_leader_lease() {
    use kube_node_status::fake::generated_node;
    let nodes: Vec<serde_json::Value> = (0..5)
        .map(|i| generated_node(i, 100 + i as u64, "2026-11-27T00:00:00Z"))
        .collect();
    let kmock = Kmock::start(&nodes).await;
    let leaders = common::failover::never_two_exporters(&kmock.kubeconfig()).await;
    let (code, body) = http_get(
        kmock.addr,
        "/apis/coordination.k8s.io/v1/namespaces/monitoring/leases/kube-node-status",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let lease: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        lease["spec"]["leaseTransitions"].as_u64(),
        Some(leaders.len() as u64),
        "{lease}"
    );
}

/// The API server goes away and comes back (issue 7's outage, on a third-party
/// emulator): kmock is killed, stays down, and starts again on the same port
/// with one node changed meanwhile. Last-known readings stay served while the
/// view's age grows and `/readyz` turns 503; the watcher backs off instead of
/// hammering the dead address; on return the watch resumes (kmock replays
/// every object), the change arrives and no second LIST is made.
/// `KNS_TEST_API_DOWN_SECS` sets the outage (default 8 s; docs/operations.md
/// gives a 3-minute run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_emulator_kmock_outage_keeps_readings_flips_readyz_and_resumes_without_relist() {
    use kube_node_status::fake::{generated_node, node_name};
    let down = common::secs_from_env("KNS_TEST_API_DOWN_SECS", 8);
    let mut nodes: Vec<serde_json::Value> = (0..5)
        .map(|i| generated_node(i, 100 + i as u64, "2026-11-27T00:00:00Z"))
        .collect();
    let name = node_name(0);
    let kmock = Kmock::start(&nodes).await;
    let (addr, kubeconfig) = (kmock.addr, kmock.kubeconfig());
    let exporter = Exporter::start_ready(
        &kubeconfig,
        &["--stale-after", "2s"],
        &[("OTEL_METRICS_EXPORTER", "prometheus")],
    )
    .await;
    let ready = |s: &[Sample]| common::value(s, "k8s_node_ready", &[("k8s_node_name", &name)]);
    let errors = |s: &[Sample]| -> f64 {
        s.iter()
            .filter(|x| x.name == "kube_node_status_watch_errors_total")
            .map(|x| x.value)
            .sum()
    };
    let lists = |s: &[Sample]| {
        common::value(s, "kube_node_status_api_requests_total", &[("verb", "list")]).unwrap_or(0.0)
    };
    let samples = exporter.scrape().await;
    assert_eq!(ready(&samples), Some(1.0));
    // kmock serves no streaming list: the first list was a refused streaming one, then a LIST.
    let lists_at_start = lists(&samples);

    drop(kmock);
    let stopped = Instant::now();
    let samples = exporter
        .wait_for("the view's age to grow", Duration::from_secs(10), |s| {
            common::value(s, "kube_node_status_view_age_seconds", &[]).is_some_and(|a| a > 1.0)
        })
        .await;
    assert_eq!(ready(&samples), Some(1.0), "last-known readings are still served");
    exporter
        .wait_status("/readyz", 503, Duration::from_secs(10))
        .await;
    tokio::time::sleep(down.saturating_sub(stopped.elapsed())).await;
    let samples = exporter.scrape().await;
    let age = common::value(&samples, "kube_node_status_view_age_seconds", &[]).unwrap();
    assert!(
        age + 2.0 >= down.as_secs_f64(),
        "view age {age} s after {down:?} down"
    );
    assert_eq!(ready(&samples), Some(1.0));
    // kube-runtime's default backoff: 0.8 s doubling up to 30 s between attempts.
    let attempts = errors(&samples);
    assert!(
        attempts <= 6.0 + down.as_secs_f64() / 20.0,
        "{attempts} failed attempts in {down:?}: the watcher hammers a dead API server"
    );

    // Meanwhile the node went NotReady; kmock starts with it so.
    for c in nodes[0]["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" {
            c["status"] = serde_json::json!("False");
        }
    }
    let _kmock = Kmock::start_on(&nodes, Some(addr.port())).await;
    let back = Instant::now();
    // At most one backoff step (30 s) after the API returns.
    exporter
        .wait_status("/readyz", 200, Duration::from_secs(40))
        .await;
    let samples = exporter
        .wait_for("the change made during the outage", Duration::from_secs(5), |s| {
            ready(s) == Some(0.0)
        })
        .await;
    println!(
        "kmock outage of {:?}: {attempts} failed attempts, resynced {:?} after the API returned",
        down,
        back.elapsed()
    );
    assert_eq!(
        common::value(&samples, "kube_node_status_view_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(
        lists(&samples),
        lists_at_start,
        "the watch resumed: no second LIST"
    );
    assert_eq!(
        common::value(&samples, "kube_node_status_watch_restarts_total", &[]).unwrap_or(0.0),
        0.0
    );
}

/// The log records in rotel's `--debug-log logs --debug-log-verbosity detailed`
/// output, each as its lines.
fn rotel_log_records(log: &str) -> Vec<String> {
    log.split("LogRecord #").skip(1).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_receives_one_log_record_per_condition_change_with_its_reason_and_message() {
    let api = fake_api(3).await;
    let names = api.node_names();
    let rotel = Rotel::start("logs");
    let endpoint = rotel.endpoint.clone();
    let _exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--traces-exporter", "none"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    let records = |n: usize| {
        let rotel = &rotel;
        async move {
            let start = Instant::now();
            loop {
                let got = rotel_log_records(&rotel.printed());
                if got.len() >= n {
                    return got;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "rotel logged {} records, want {n}",
                    got.len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Nothing at start-up: three export intervals pass with no record.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rotel_log_records(&rotel.printed()).len(), 0);

    assert!(api.set_condition(&names[0], "Ready", "False"));
    let got = records(1).await;
    let r = &got[0];
    for want in [
        "EventName: k8s.node.condition.change",
        "SeverityText: WARN",
        "Body: Str(container runtime network not ready: NetworkReady=false)",
        &format!("k8s.node.name: Str({})", names[0]),
        "k8s.node.condition.type: Str(Ready)",
        "k8s.node.condition.status: Str(false)",
        "k8s.node.condition.previous_status: Str(true)",
        "k8s.node.condition.reason: Str(KubeletNotReady)",
        "k8s.node.uid: Str(",
    ] {
        assert!(r.contains(want), "{want:?} not in the record rotel logged:\n{r}");
    }
    assert!(api.set_condition(&names[0], "Ready", "True"));
    let got = records(2).await;
    assert!(
        got[1].contains("SeverityText: INFO")
            && got[1].contains("Body: Str(kubelet is posting ready status)"),
        "{}",
        got[1]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rotel_log_records(&rotel.printed()).len(),
        2,
        "one record per change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_receives_one_resource_per_node_when_asked() {
    let api = fake_api(4).await;
    let names = api.node_names();
    let rotel = Rotel::start("metrics");
    let endpoint = rotel.endpoint.clone();
    let _exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--otlp-resource-per-node",
            "--traces-exporter",
            "none",
            "--logs-exporter",
            "none",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    let start = Instant::now();
    loop {
        let log = rotel.printed();
        // Each node's resource block names it among the resource attributes.
        let resources: Vec<&str> = log.split("ResourceMetrics #").skip(1).collect();
        let with_node = |name: &str| {
            resources.iter().any(|r| {
                let attrs = r.split("ScopeMetrics #").next().unwrap_or_default();
                attrs.contains(&format!("k8s.node.name: Str({name})")) && attrs.contains("k8s.node.uid: Str(")
            })
        };
        if names.iter().all(|n| with_node(n)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rotel did not log a resource per node:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

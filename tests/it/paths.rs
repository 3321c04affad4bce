//! One end-to-end test per supported install path (docs/install.md), driven
//! by what the chart renders:
//! - the chart rendered by the real Helm engine for that path's values;
//! - the exporter run with exactly the rendered container args and env, its
//!   Secrets mounted where the pod spec mounts them, against a fake API server
//!   that enforces the rendered RBAC for the exporter's service account;
//! - a real Prometheus scraping as the rendered monitor says (job, labels,
//!   scheme, CA, server name, token, relabelling), with the rendered rules;
//! - every problem caused through the fake API server: each shipped alert
//!   fires, then resolves; none fires on a healthy cluster; every panel of the
//!   dashboard the chart renders for that naming has data.
//!
//! Two alerts resolve only when their window has passed, longer than a test:
//! `NodeReadinessFlapping` (transitions over 1h) and `KubeNodeStatusWatchErrors`
//! (errors over 5m). Here they fire; their resolution is in the promtool tests
//! (tests/rules).

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use kube_node_status::fake::{Attributes, FakeApiServer, Policy, Subject};
use serde_json::{Value, json};

use crate::common::{
    self, Exporter,
    chart::{api_as_installed, dashboard, find, pod_env, render, rule_file},
    free_port,
    monitors::{Secrets, scrape_configs, service_name},
    otlp::TestCa,
    prometheus::{Prometheus, alerts, query_series},
};

const T: Duration = Duration::from_secs(60);
const NODES: usize = 6;

/// What each alert needs to fire at once (every `for` 1 s, view stale after 3 s).
fn fast_alerts() -> Value {
    json!({
        "notReadyFor": "1s", "unreachableFor": "1s", "pressureFor": "1s", "flapFor": "1s",
        "flapThreshold": 4, "staleAfterSeconds": 3, "exporterDownFor": "1s", "noLeaderFor": "1s",
        "watchErrorsFor": "1s",
    })
}

/// A path, installed: the API, the replicas, the scraper.
struct Install {
    api: FakeApiServer,
    /// The mounted Secrets and the scraper's files.
    _dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<Vec<(String, String)>>,
    replicas: Vec<(SocketAddr, Option<Exporter>)>,
    prometheus: Prometheus,
    naming: &'static str,
}

impl Install {
    async fn new(values: Value, naming: &'static str, extra_rules: Option<&str>) -> Install {
        let objects = render(&values);
        let deploy = find(&objects, "Deployment").expect("a Deployment");
        let pod = &deploy["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "kube-node-status"))
            .expect("the exporter container");
        let dir = tempfile::tempdir().unwrap();
        let server_name = format!("{}.monitoring.svc", service_name(&objects));
        let secrets = Secrets {
            token: format!("scrape-{:016x}", fastrand::u64(..)),
            ca: TestCa::for_name(&server_name),
            scraper_token: format!("sa-{:016x}", fastrand::u64(..)),
        };

        // Secrets where the pod spec mounts them.
        let mut args: Vec<String> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("a string").to_string())
            .filter(|a| !a.starts_with("--listen-address"))
            .collect();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let name = mount["name"].as_str().unwrap();
            let at = dir.path().join(name);
            std::fs::create_dir_all(&at).unwrap();
            let volume = pod["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == name))
                .expect("the mounted volume");
            for item in volume["secret"]["items"].as_array().into_iter().flatten() {
                let content = match item["key"].as_str().unwrap() {
                    "tls.crt" => secrets.ca.server_pair().0,
                    "tls.key" => secrets.ca.server_pair().1,
                    _ => secrets.token.clone(),
                };
                std::fs::write(at.join(item["path"].as_str().unwrap()), content).unwrap();
            }
            let path = mount["mountPath"].as_str().unwrap();
            for a in &mut args {
                *a = a.replace(path, at.to_str().unwrap());
            }
        }

        // The API as installed: the rendered RBAC, the rendered Lease, and
        // the scraper's token known to TokenReview, allowed /metrics only if
        // the rendered bindings allow it.
        let api = api_as_installed(&objects, NODES).await;
        if let Some(scraper) = objects.iter().find(|o| {
            o["kind"] == "ServiceAccount"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-scraper"))
        }) {
            let subject = Subject {
                namespace: "monitoring".into(),
                name: scraper["metadata"]["name"].as_str().unwrap().to_string(),
            };
            api.reviews().add_token(&secrets.scraper_token, &subject.user());
            let get_metrics = Attributes::NonResource {
                verb: "get".into(),
                path: "/metrics".into(),
            };
            if Policy::from_objects(&objects, subject.clone()).allows(&get_metrics) {
                api.reviews().grant_metrics(&subject.user());
            }
        }

        let replicas: usize = values["replicas"].as_u64().unwrap_or(1) as usize;
        let env: Vec<Vec<(String, String)>> = (0..replicas)
            .map(|i| pod_env(container, &format!("kns-{i}")))
            .collect();
        let addrs: Vec<SocketAddr> = (0..replicas)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let scrape = scrape_configs(&objects, &addrs, &secrets, dir.path());
        let mut rules = rule_file(&objects);
        if let Some(extra) = extra_rules {
            rules.push_str(extra);
        }
        let mut install = Install {
            api,
            args,
            env,
            replicas: addrs.iter().map(|a| (*a, None)).collect(),
            prometheus: Prometheus::start_with(&scrape, Some(&rules)).await,
            _dir: dir,
            naming,
        };
        install.start_replicas();
        install
    }

    fn start_replicas(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        for (i, (addr, exporter)) in self.replicas.iter_mut().enumerate() {
            let env: Vec<(&str, &str)> = self.env[i]
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            *exporter = Some(Exporter::start_at(*addr, &self.api.kubeconfig(), &args, &env));
        }
    }

    fn stop_replicas(&mut self) {
        for (_, exporter) in &mut self.replicas {
            exporter.take();
        }
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .filter_map(|(_, e)| e.as_ref().map(|e| e.logs()))
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    fn ready_series(&self) -> &'static str {
        match self.naming {
            "otel" => "k8s_node_ready",
            _ => "kube_node_status_ready",
        }
    }

    /// Active alerts: (alertname, node or "", state).
    async fn alerts(&self) -> BTreeSet<(String, String, String)> {
        alerts(self.prometheus.addr)
            .await
            .iter()
            .map(|a| {
                let l = &a["labels"];
                let node = l["k8s_node_name"]
                    .as_str()
                    .or(l["node"].as_str())
                    .unwrap_or_default();
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (text(&l["alertname"]), node.to_string(), text(&a["state"]))
            })
            .collect()
    }

    /// Waits until the firing alerts are exactly `want` (pending ones ignored).
    async fn wait_firing(&self, want: &[(&str, &str)]) {
        let want: BTreeSet<(String, String)> =
            want.iter().map(|(a, n)| (a.to_string(), n.to_string())).collect();
        let start = std::time::Instant::now();
        loop {
            let firing: BTreeSet<(String, String)> = self
                .alerts()
                .await
                .into_iter()
                .filter(|(_, _, s)| s == "firing")
                .map(|(a, n, _)| (a, n))
                .collect();
            if firing == want {
                return;
            }
            assert!(
                start.elapsed() < T,
                "firing {firing:?}, want {want:?}\nexporters:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every alert in `want` fires (others may too).
    async fn wait_firing_at_least(&self, want: &[&str]) {
        let start = std::time::Instant::now();
        loop {
            let firing: BTreeSet<String> = self
                .alerts()
                .await
                .into_iter()
                .filter(|(_, _, s)| s == "firing")
                .map(|(a, _, _)| a)
                .collect();
            if want.iter().all(|a| firing.contains(*a)) {
                return;
            }
            assert!(
                start.elapsed() < T,
                "firing {firing:?}, want at least {want:?}\nexporters:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every rule group has been evaluated `n` more times.
    async fn evaluations(&self, n: usize) {
        for _ in 0..n {
            let before = self.last_evaluations().await;
            let start = std::time::Instant::now();
            while self.last_evaluations().await == before {
                assert!(start.elapsed() < T, "the rules are not evaluated");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn last_evaluations(&self) -> Vec<String> {
        let (_, body) = common::http_get(self.prometheus.addr, "/api/v1/rules", &[])
            .await
            .expect("Prometheus answers");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| g["lastEvaluation"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Every panel of the dashboard the chart renders for this naming has data.
    async fn dashboard_has_data(&self) {
        for (title, queries) in dashboard(self.naming) {
            if title.ends_with(crate::common::chart::NEEDS_NODE_LEASES) {
                continue;
            }
            for expr in queries {
                // Error counters exist once something failed; nothing has yet.
                if expr.contains("_errors_total") || expr.contains("_failures_total") {
                    continue;
                }
                let start = std::time::Instant::now();
                while query_series(self.prometheus.addr, &expr).await.is_empty() {
                    assert!(start.elapsed() < T, "panel {title:?}: no data for {expr}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

/// Installs `values` and runs the scenario, with `extra_rules` loaded beside
/// the chart's and `extra_alerts` (alert, node index) expected to fire with its own.
async fn path(values: Value, naming: &'static str, extra_rules: Option<&str>, extra_alerts: &[(&str, &str)]) {
    let mut install = Install::new(values, naming, extra_rules).await;
    exercise(&mut install, extra_alerts).await;
}

/// The scenario every path runs: healthy and quiet; nodes in trouble and
/// the node alerts firing for exactly those nodes; the dashboard showing it;
/// recovered and quiet; then the exporter's own troubles.
async fn exercise(install: &mut Install, extra: &[(&str, &str)]) {
    let began = std::time::Instant::now();
    let phase = |what: &str| println!("{:>6.1} s  {what}", began.elapsed().as_secs_f64());
    let n = install.api.node_names();
    let prom = install.prometheus.addr;
    let ready = install.ready_series();
    common::prometheus::wait_query(prom, &format!("count({ready})"), &[NODES as f64], T).await;
    phase("healthy data in Prometheus");
    // Healthy: three evaluations with data and not one alert, not even pending.
    install.evaluations(3).await;
    assert_eq!(
        install.alerts().await,
        BTreeSet::new(),
        "alerts on a healthy cluster"
    );

    phase("healthy and quiet");
    let edit = |name: &str, change: &dyn Fn(&mut Value)| {
        let mut node = install.api.node(name).expect("the node exists");
        change(&mut node);
        assert!(install.api.put_node(node));
    };
    // n0 NotReady; n1 NotReady but cordoned; n2 under memory pressure; n3
    // unreachable as the node controller marks it; n4 flapping.
    assert!(install.api.set_condition(&n[0], "Ready", "False"));
    assert!(install.api.set_condition(&n[1], "Ready", "False"));
    edit(&n[1], &|node| node["spec"]["unschedulable"] = json!(true));
    assert!(install.api.set_condition(&n[2], "MemoryPressure", "True"));
    assert!(install.api.set_condition(&n[3], "Ready", "Unknown"));
    edit(&n[3], &|node| {
        node["spec"]["taints"] = json!([
            {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
        ]);
    });
    // Six transitions, each state held past a scrape so that a rule over
    // sampled changes (kube-prometheus') sees them too.
    for _ in 0..3 {
        assert!(install.api.set_condition(&n[4], "Ready", "False"));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(install.api.set_condition(&n[4], "Ready", "True"));
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    let mut firing = vec![
        ("NodeNotReady", n[0].as_str()),
        ("NodeUnderPressure", n[2].as_str()),
        ("NodeNotReady", n[3].as_str()),
        ("NodeUnreachable", n[3].as_str()),
        ("NodeReadinessFlapping", n[4].as_str()),
    ];
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(a, i)| (*a, n[i.parse::<usize>().unwrap()].as_str()))
        .collect();
    firing.extend(extra.iter().copied());
    install.wait_firing(&firing).await;
    install.dashboard_has_data().await;

    phase("node alerts firing, dashboard full");
    // Recovered: every alert resolves but the flapping one (a window of 1h).
    assert!(install.api.set_condition(&n[0], "Ready", "True"));
    assert!(install.api.set_condition(&n[1], "Ready", "True"));
    edit(&n[1], &|node| node["spec"]["unschedulable"] = json!(false));
    assert!(install.api.set_condition(&n[2], "MemoryPressure", "False"));
    assert!(install.api.set_condition(&n[3], "Ready", "True"));
    edit(&n[3], &|node| node["spec"]["taints"] = json!([]));
    let flapping: Vec<(&str, &str)> = firing
        .iter()
        .copied()
        .filter(|(a, _)| a.contains("Flapping"))
        .collect();
    install.wait_firing(&flapping).await;

    phase("recovered and quiet");
    // The API server goes away: the view goes stale and the watch fails (and
    // with several replicas the Lease cannot be renewed); back, all resolve.
    install.api.stop();
    let mut gone = vec!["KubeNodeStatusViewStale", "KubeNodeStatusWatchErrors"];
    if install.replicas.len() > 1 {
        gone.push("KubeNodeStatusNoLeader");
    }
    install.wait_firing_at_least(&gone).await;
    install.api.restart().await.expect("the API server restarts");
    install.wait_firing(&flapping).await;

    phase("API outage fired and resolved");
    // Every replica down: the exporter-down alert; back: resolved.
    install.stop_replicas();
    let start = std::time::Instant::now();
    while !install
        .alerts()
        .await
        .iter()
        .any(|(a, _, s)| a == "KubeNodeStatusExporterDown" && s == "firing")
    {
        assert!(start.elapsed() < T, "the exporter down, unnoticed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    install.start_replicas();
    let start = std::time::Instant::now();
    while install
        .alerts()
        .await
        .iter()
        .any(|(a, _, _)| a == "KubeNodeStatusExporterDown")
    {
        assert!(
            start.elapsed() < T,
            "the exporter back, still down:\n{}",
            install.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    common::prometheus::wait_query(prom, &format!("count({ready})"), &[NODES as f64], T).await;
    phase("exporter down fired and resolved");
}

/// kube-prometheus' node alerts (kubernetes-mixin), vendored with their
/// provenance in tests/peers/kubernetes-mixin, each `for` cut to 1 s.
fn kube_prometheus_node_rules() -> String {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/kubernetes-mixin/node-alerts.yaml"
    ))
    .expect("the vendored rules");
    let groups: Value = serde_yaml_ng::from_str(&rules).expect("YAML");
    let mut out = String::new();
    for group in groups["groups"].as_array().expect("groups") {
        let mut group = group.clone();
        for rule in group["rules"].as_array_mut().expect("rules") {
            rule["for"] = json!("1s");
        }
        let text = serde_yaml_ng::to_string(&json!([group])).unwrap();
        out.push_str(&text);
    }
    out
}

fn node_labels() -> Value {
    json!(["topology.kubernetes.io/zone", "cloud.google.com/gke-nodepool"])
}

/// (a) The Prometheus Operator, the full profile, OpenTelemetry naming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prometheus_operator_otel_full() {
    let values = json!({
        "serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true},
        "metricProfile": "full", "nodeLabels": node_labels(), "alerts": fast_alerts(),
    });
    path(values, "otel", None, &[]).await;
}

/// (b) The same in kube-state-metrics naming, with kube-prometheus' own node
/// rules, and the job relabelling docs/install.md tells users to add.
/// kube-prometheus' KubeNodeNotReady does not spare a cordoned node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_kube_state_metrics_naming_with_kube_prometheus_rules() {
    let relabel = json!([{"action": "replace", "targetLabel": "job", "replacement": "kube-state-metrics"}]);
    let values = json!({
        "serviceMonitor": {"enabled": true, "metricRelabelings": relabel}, "prometheusRule": {"enabled": true},
        "metricNaming": "kube-state-metrics", "metricProfile": "full", "nodeLabels": node_labels(),
        "alerts": fast_alerts(),
    });
    let theirs = [
        ("KubeNodeNotReady", "0"),
        ("KubeNodeNotReady", "1"),
        ("KubeNodeNotReady", "3"),
        ("KubeNodeUnreachable", "3"),
        ("KubeNodeReadinessFlapping", "4"),
    ];
    path(
        values,
        "kube-state-metrics",
        Some(&kube_prometheus_node_rules()),
        &theirs,
    )
    .await;
}

/// (c) Google Managed Prometheus: a PodMonitoring, the readiness profile the
/// chart picks for it, GMP Rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_gmp_podmonitoring_readiness_with_gmp_rules() {
    let values = json!({
        "podMonitoring": {"enabled": true}, "gmpRules": {"enabled": true},
        "nodeLabels": node_labels(), "alerts": fast_alerts(),
    });
    let mut install = Install::new(values, "otel", None).await;
    let args = &install.args;
    assert!(
        args.contains(&"--metric-profile=readiness".to_string()),
        "{args:?}"
    );
    exercise(&mut install, &[]).await;
}

/// (f) Two replicas electing a leader, with the rendered Role on the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_two_replicas_with_leader_election() {
    let values = json!({
        "replicas": 2, "leaderElection": {"leaseDuration": "4s"},
        "serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true},
        "alerts": fast_alerts(),
    });
    path(values, "otel", None, &[]).await;
}

/// (g) A scrape token from a Secret, sent by a PodMonitor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_scrape_token_from_a_secret() {
    let values = json!({
        "metricsAuth": {"enabled": true, "secretName": "kns-scrape-token"},
        "podMonitor": {"enabled": true}, "prometheusRule": {"enabled": true},
        "alerts": fast_alerts(),
    });
    path(values, "otel", None, &[]).await;
}

/// (g, h) Kubernetes token review over TLS: the ServiceMonitor sends the
/// chart's scraper token, whose /metrics access comes from the rendered
/// binding, and verifies the serving certificate against the CA Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_kubernetes_token_review_over_tls() {
    let values = json!({
        "metricsAuth": {"enabled": true, "kubernetes": true},
        "tls": {"enabled": true, "secretName": "kns-serving-cert", "caSecretName": "kns-ca"},
        "serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true},
        "alerts": fast_alerts(),
    });
    let mut install = Install::new(values, "otel", None).await;
    exercise(&mut install, &[]).await;
    assert!(
        install.api.reviews().count() > 0,
        "the scraper's token was reviewed"
    );
}

/// (h) TLS with a token, scraped by GMP's PodMonitoring, which reads the CA
/// from a Secret of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tls_and_token_with_podmonitoring() {
    let values = json!({
        "metricsAuth": {"enabled": true, "secretName": "kns-scrape-token"},
        "tls": {"enabled": true, "secretName": "kns-serving-cert", "caSecretName": "kns-ca"},
        "podMonitoring": {"enabled": true}, "gmpRules": {"enabled": true},
        "alerts": fast_alerts(),
    });
    path(values, "otel", None, &[]).await;
}

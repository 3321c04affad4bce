//! Kubelet heartbeats (`--node-leases`), against the real binary, the fake
//! API server's kubelets and node lifecycle controller, and an OTLP
//! receiver: a killed kubelet reads stale before Ready moves; with the
//! controller stopped it stays stale while Ready stays True; a revived one
//! reads fresh; lost and resumed are log records; renewals re-render
//! nothing; a missing Role is one line and the node readings go on.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use kube_node_status::fake::{FakeApiServer, FakeOptions, HeartbeatOptions, Policy, Subject};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serde_json::json;

use crate::common::{
    Exporter, Sample,
    chart::{
        NEEDS_NODE_LEASES, api_as_installed_with, args_for_loopback, dashboard, exporter_container, pod_env,
        render, rule_file,
    },
    fake_api_with_kubelets, otlp,
    otlp::Receiver,
    prometheus::{Prometheus, query_series, wait_query},
    value,
};

const T: Duration = Duration::from_secs(30);

/// Kubelets renewing every 300 ms, a controller with a 3 s grace: a dead
/// kubelet is stale after 1 s (the exporter's --heartbeat-stale-after), and
/// Ready Unknown 2 s later.
async fn api(nodes: usize) -> FakeApiServer {
    fake_api_with_kubelets(nodes, Duration::from_millis(300), Duration::from_secs(3)).await
}

/// The exporter with Leases on and `/metrics` only.
fn start_scraped(api: &FakeApiServer) -> Exporter {
    let args = [
        "--node-leases",
        "--metrics-exporter",
        "prometheus",
        "--traces-exporter",
        "none",
    ];
    Exporter::start(&api.kubeconfig(), &args, &[])
}

fn start(api: &FakeApiServer, receiver: &Receiver) -> Exporter {
    let endpoint = format!("http://{}", receiver.addr);
    Exporter::start(
        &api.kubeconfig(),
        &[
            "--node-leases",
            "--heartbeat-stale-after",
            "1s",
            "--otlp-endpoint",
            &endpoint,
            "--metric-export-interval",
            "1s",
            "--traces-exporter",
            "none",
        ],
        &[],
    )
}

fn node(samples: &[Sample], name: &str, node: &str) -> Option<f64> {
    value(samples, name, &[("k8s_node_name", node)])
}

fn state(samples: &[Sample], state: &str) -> Option<f64> {
    value(
        samples,
        "k8s_cluster_node_heartbeats",
        &[("k8s_node_heartbeat_state", state)],
    )
}

fn heartbeat_records(receiver: &Receiver, node: &str) -> Vec<(String, String)> {
    receiver
        .log_records()
        .iter()
        .filter(|r| {
            let attr = |k: &str| {
                r.attributes.iter().find(|kv| kv.key == k).and_then(|kv| {
                    match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    }
                })
            };
            attr("k8s.node.name").as_deref() == Some(node)
                && attr("k8s.node.condition.type").as_deref() == Some("KubeletHeartbeatStale")
        })
        .map(|r| {
            let status = r
                .attributes
                .iter()
                .find(|kv| kv.key == "k8s.node.condition.status")
                .map(|kv| otlp::any_value(&kv.value))
                .unwrap_or_default();
            let body = otlp::any_value(&r.body);
            (status, body)
        })
        .collect()
}

async fn wait_records(receiver: &Receiver, node: &str, n: usize) -> Vec<(String, String)> {
    let start = Instant::now();
    loop {
        let records = heartbeat_records(receiver, node);
        if records.len() >= n {
            return records;
        }
        assert!(start.elapsed() < T, "{records:?}, waiting for {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_kubelet_is_stale_before_ready_moves_and_fresh_again_when_it_returns() {
    let api = api(6).await;
    let names = api.node_names();
    let receiver = Receiver::start(None).await;
    let exporter = start(&api, &receiver);
    let all_fresh = |s: &[Sample]| {
        state(s, "fresh") == Some(6.0) && state(s, "stale") == Some(0.0) && state(s, "missing") == Some(0.0)
    };
    let s = exporter.wait_for("every heartbeat fresh", T, all_fresh).await;
    for n in &names {
        assert_eq!(node(&s, "k8s_node_heartbeat_stale", n), Some(0.0), "{n}");
        assert_eq!(
            node(&s, "k8s_node_heartbeat_last_renewal_time_seconds", n),
            None,
            "{n}: only while stale"
        );
    }

    // Renewals every 300 ms for 3 s are ~60 Lease events: none writes a shard.
    let written = |s: &[Sample]| {
        value(
            s,
            "kube_node_status_shards_written_total",
            &[("output", "prometheus")],
        )
    };
    let before = written(&exporter.scrape().await).expect("shards written");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        written(&exporter.scrape().await),
        Some(before),
        "renewals re-render nothing"
    );

    let dead = &names[2];
    assert!(api.set_kubelet_alive(dead, false));
    let s = exporter
        .wait_for("the dead kubelet stale", T, |s| {
            node(s, "k8s_node_heartbeat_stale", dead) == Some(1.0)
        })
        .await;
    // The controller waits its 3 s grace: the heartbeat is the early warning.
    assert_eq!(
        node(&s, "k8s_node_ready", dead),
        Some(1.0),
        "Ready has not moved yet"
    );
    let renewed = api.node_lease(dead).expect("its Lease")["spec"]["renewTime"]
        .as_str()
        .map(|t| t.parse::<k8s_openapi::jiff::Timestamp>().expect("a MicroTime"))
        .expect("renewTime");
    let shown = node(&s, "k8s_node_heartbeat_last_renewal_time_seconds", dead).expect("served while stale");
    assert!(
        (shown - renewed.as_microsecond() as f64 / 1e6).abs() < 1e-3,
        "{shown} vs {renewed}"
    );
    assert_eq!((state(&s, "fresh"), state(&s, "stale")), (Some(5.0), Some(1.0)));
    exporter
        .wait_for("Ready Unknown after the grace", T, |s| {
            node(s, "k8s_node_ready", dead) == Some(0.0)
        })
        .await;

    // Both outputs: the OTLP stream says the same.
    let start = Instant::now();
    loop {
        let latest = otlp::latest_collection(&receiver.since(start), "k8s.node.heartbeat.stale");
        let stale: Vec<_> = latest.iter().filter(|(_, v)| *v == 1.0).collect();
        if stale.len() == 1 && latest.len() == 6 {
            assert_eq!(stale[0].0.get("k8s.node.name"), Some(dead));
            break;
        }
        assert!(start.elapsed() < T, "OTLP: {latest:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lost = wait_records(&receiver, dead, 1).await;
    assert_eq!(lost[0].0, "true", "{lost:?}");
    assert!(
        lost[0].1.contains("has not renewed its Lease kube-node-lease/"),
        "{lost:?}"
    );

    assert!(api.set_kubelet_alive(dead, true));
    exporter
        .wait_for("fresh and Ready again", T, |s| {
            node(s, "k8s_node_heartbeat_stale", dead) == Some(0.0)
                && node(s, "k8s_node_ready", dead) == Some(1.0)
                && all_fresh(s)
        })
        .await;
    let records = wait_records(&receiver, dead, 2).await;
    assert_eq!(records[1].0, "false", "{records:?}");
    assert!(records[1].1.contains("renewed its Lease"), "{records:?}");
    let s = exporter.scrape().await;
    assert_eq!(
        value(
            &s,
            "kube_node_status_heartbeat_changes_total",
            &[("change", "lost")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "kube_node_status_heartbeat_changes_total",
            &[("change", "resumed")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_node_controller_stopped_ready_stays_true_while_the_heartbeat_is_stale() {
    let api = api(4).await;
    let names = api.node_names();
    let receiver = Receiver::start(None).await;
    let exporter = start(&api, &receiver);
    exporter
        .wait_for("every heartbeat fresh", T, |s| state(s, "fresh") == Some(4.0))
        .await;
    assert!(api.set_node_controller(false));
    let dead = &names[0];
    assert!(api.set_kubelet_alive(dead, false));
    exporter
        .wait_for("stale", T, |s| {
            node(s, "k8s_node_heartbeat_stale", dead) == Some(1.0)
        })
        .await;
    // Well past the 3 s grace: nothing marks the node.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = exporter.scrape().await;
    assert_eq!(node(&s, "k8s_node_heartbeat_stale", dead), Some(1.0));
    assert_eq!(
        node(&s, "k8s_node_ready", dead),
        Some(1.0),
        "nothing set Ready Unknown"
    );
    // The controller back: it marks the node at once.
    assert!(api.set_node_controller(true));
    exporter
        .wait_for("Ready Unknown", T, |s| {
            node(s, "k8s_node_ready", dead) == Some(0.0)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_lease_is_missing_never_stale_and_a_deleted_node_leaves_no_count() {
    let api = api(3).await;
    let names = api.node_names();
    let receiver = Receiver::start(None).await;
    let exporter = start(&api, &receiver);
    exporter
        .wait_for("every heartbeat fresh", T, |s| state(s, "fresh") == Some(3.0))
        .await;
    // A virtual kubelet's node has no Lease: missing, with no stale reading, however long it lasts.
    api.delete_node_lease(&names[1]);
    let s = exporter
        .wait_for("one missing", T, |s| {
            state(s, "fresh") == Some(2.0) && state(s, "missing") == Some(1.0)
        })
        .await;
    assert_eq!(node(&s, "k8s_node_heartbeat_stale", &names[1]), None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = exporter.scrape().await;
    assert_eq!((state(&s, "stale"), state(&s, "missing")), (Some(0.0), Some(1.0)));
    // A node that joins comes with its Lease; one deleted leaves no count.
    let name = api.add_generated(50);
    let s = exporter
        .wait_for("a fourth node", T, |s| state(s, "fresh") == Some(3.0))
        .await;
    assert_eq!(node(&s, "k8s_node_heartbeat_stale", &name), Some(0.0));
    assert!(api.delete_node(&name));
    assert!(api.delete_node(&names[1]));
    let s = exporter
        .wait_for("two left", T, |s| {
            state(s, "fresh") == Some(2.0) && state(s, "missing") == Some(0.0)
        })
        .await;
    assert_eq!(node(&s, "k8s_node_heartbeat_stale", &name), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_leases_every_node_is_missing_and_without_a_role_one_line_says_so() {
    // Leases off in the fake server: kube-node-lease is empty, every node has none.
    let api = FakeApiServer::start(FakeOptions {
        nodes: 2,
        ..Default::default()
    })
    .await
    .expect("fake API server");
    let exporter = start_scraped(&api);
    let s = exporter
        .wait_for("missing", T, |s| state(s, "missing") == Some(2.0))
        .await;
    for n in api.node_names() {
        assert_eq!(
            node(&s, "k8s_node_heartbeat_stale", &n),
            None,
            "no Lease: never stale"
        );
        assert_eq!(node(&s, "k8s_node_ready", &n), Some(1.0));
    }

    // Nodes granted, Leases not: as a ClusterRole without the chart's Role.
    let objects = vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "kns"},
               "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "kns"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kns"},
               "subjects": [{"kind": "ServiceAccount", "name": "kns", "namespace": "monitoring"}]}),
    ];
    let policy = Policy::from_objects(
        &objects,
        Subject {
            namespace: "monitoring".into(),
            name: "kns".into(),
        },
    );
    let api = FakeApiServer::start(FakeOptions {
        nodes: 2,
        rbac: Some(policy.into()),
        ..Default::default()
    })
    .await
    .expect("fake API server");
    let exporter = start_scraped(&api);
    let s = exporter
        .wait_for("a lease watch error", T, |s| {
            value(s, "kube_node_status_lease_watch_errors_total", &[]).is_some_and(|e| e >= 2.0)
        })
        .await;
    for n in api.node_names() {
        assert_eq!(node(&s, "k8s_node_ready", &n), Some(1.0), "node readings go on");
    }
    assert_eq!(
        state(&s, "missing"),
        None,
        "no heartbeat count without the Leases"
    );
    exporter.wait_status("/readyz", 200, T).await;
    let logs = exporter.logs();
    let warnings = logs
        .matches("heartbeat readings need `get`, `list` and `watch` on `leases`")
        .count();
    assert_eq!(warnings, 1, "one line for the whole failure streak:\n{logs}");
}

/// The heartbeat alerts Prometheus holds for `node`: alert name → state.
async fn heartbeat_alerts(prom: std::net::SocketAddr, node: &str) -> BTreeMap<String, String> {
    query_series(
        prom,
        &format!("ALERTS{{alertname=~\"NodeHeartbeatLost|NodeLifecycleControllerNotActing\",k8s_node_name=\"{node}\"}}"),
    )
    .await
    .into_iter()
    .map(|(labels, _)| {
        let get = |k: &str| labels[k].as_str().unwrap_or_default().to_string();
        (get("alertname"), get("alertstate"))
    })
    .collect()
}

async fn wait_heartbeat_alerts(prom: std::net::SocketAddr, node: &str, want: &[(&str, &str)]) {
    let want: BTreeMap<String, String> = want.iter().map(|(a, s)| (a.to_string(), s.to_string())).collect();
    let start = Instant::now();
    loop {
        let got = heartbeat_alerts(prom, node).await;
        if got == want {
            return;
        }
        assert!(start.elapsed() < T, "{node}: alerts {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ready as the API says it (not as any exporter reads it).
fn api_ready(api: &FakeApiServer, node: &str) -> String {
    let n = api.node(node).expect("the node");
    n["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// End to end as installed: 100 nodes whose kubelets renew their Leases, the
/// chart rendered with nodeLeases on (its Role the only leave to read them),
/// the exporter run with exactly the rendered args, a real Prometheus with
/// the chart's rules, and an OTLP receiver for the stream and the records.
/// A killed kubelet fires the early warning while the API still says Ready;
/// with the node controller stopped, a killed kubelet fires the control-plane
/// alert while Ready stays True; with the controller back, both resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_alerts_catch_a_dead_kubelet_early_and_a_node_controller_that_does_not_act() {
    let receiver = Receiver::start(None).await;
    let values = json!({
        "nodeLeases": {"enabled": true, "staleAfter": "2s"},
        "gmpRules": {"enabled": true}, "podMonitoring": {"enabled": true},
        "alerts": {"controllerNotActingFor": "12s"},
        "metricsExporter": "prometheus,otlp", "logsExporter": "otlp",
        "otlp": {"endpoint": format!("http://{}", receiver.addr)},
        "extraArgs": ["--metric-export-interval=1s"],
    });
    let objects = render(&values);
    // Renewals every 500 ms; the controller's grace is 10 s: the early warning
    // (stale after 2 s) has 8 s to fire before Ready moves, and the
    // control-plane alert (stale for 12 s) fires only if Ready never does.
    let heartbeats = HeartbeatOptions {
        renew_every: Duration::from_millis(500),
        grace: Duration::from_secs(10),
    };
    let api = api_as_installed_with(&objects, 100, Some(heartbeats)).await;
    let (container, _) = exporter_container(&objects);
    let args = args_for_loopback(&container);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = pod_env(&container, "kns-0");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let exporter = Exporter::start(&api.kubeconfig(), &args, &env);
    let prometheus = Prometheus::start(exporter.addr, Some(&rule_file(&objects))).await;
    let prom = prometheus.addr;
    wait_query(
        prom,
        "sum(k8s_cluster_node_heartbeats{k8s_node_heartbeat_state=\"fresh\"})",
        &[100.0],
        T,
    )
    .await;
    let names = api.node_names();
    let (early, ignored) = (&names[10], &names[20]);
    wait_heartbeat_alerts(prom, early, &[]).await;

    // A dead kubelet: the early warning fires while the API still says Ready.
    assert!(api.set_kubelet_alive(early, false));
    // The control-plane alert waits its `for` (12 s, past the controller's 10 s grace).
    wait_heartbeat_alerts(
        prom,
        early,
        &[
            ("NodeHeartbeatLost", "firing"),
            ("NodeLifecycleControllerNotActing", "pending"),
        ],
    )
    .await;
    assert_eq!(
        api_ready(&api, early),
        "True",
        "fired before the controller set Ready Unknown"
    );
    // Then the controller acts; Ready Unknown is NodeNotReady's now, not this one's.
    wait_query(
        prom,
        &format!("k8s_node_ready{{k8s_node_name=\"{early}\"}}"),
        &[0.0],
        T,
    )
    .await;
    wait_heartbeat_alerts(prom, early, &[]).await;

    // The node controller stopped: a dead kubelet's node stays Ready, and the
    // control-plane alert says so.
    assert!(api.set_node_controller(false));
    assert!(api.set_kubelet_alive(ignored, false));
    wait_heartbeat_alerts(
        prom,
        ignored,
        &[
            ("NodeHeartbeatLost", "firing"),
            ("NodeLifecycleControllerNotActing", "firing"),
        ],
    )
    .await;
    assert_eq!(api_ready(&api, ignored), "True", "nothing acted on it");
    let s = exporter.scrape().await;
    assert_eq!(node(&s, "k8s_node_ready", ignored), Some(1.0));
    assert_eq!(node(&s, "k8s_node_heartbeat_stale", ignored), Some(1.0));
    // The OTLP stream says the same, and the log records say when it was lost.
    let start = Instant::now();
    loop {
        let latest = otlp::latest_collection(&receiver.since(start), "k8s.node.heartbeat.stale");
        let stale: std::collections::BTreeSet<&String> = latest
            .iter()
            .filter(|(_, v)| *v == 1.0)
            .filter_map(|(a, _)| a.get("k8s.node.name"))
            .collect();
        if stale == [early, ignored].into_iter().collect() {
            break;
        }
        assert!(start.elapsed() < T, "OTLP stale nodes: {stale:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = wait_records(&receiver, ignored, 1).await;
    assert_eq!(records[0].0, "true", "{records:?}");
    // The dashboard's heartbeat panels show it, in both namings' queries.
    let panels: Vec<(String, Vec<String>)> = dashboard("otel")
        .into_iter()
        .filter(|(title, _)| title.ends_with(NEEDS_NODE_LEASES))
        .collect();
    assert_eq!(panels.len(), 2, "{panels:?}");
    for (title, queries) in panels {
        for expr in queries {
            let start = Instant::now();
            while query_series(prom, &expr).await.is_empty() {
                assert!(start.elapsed() < T, "panel {title:?}: no data for {expr}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let lost = query_series(
        prom,
        "(time() - k8s_node_heartbeat_last_renewal_time_seconds) and on (k8s_node_name) k8s_node_ready == 1",
    )
    .await;
    assert_eq!(lost.len(), 1, "the table lists the node nothing marked: {lost:?}");
    assert_eq!(lost[0].0["k8s_node_name"], ignored.as_str());

    // The controller back: it marks the node, and the control-plane alert and
    // the early warning resolve; the kubelets back, every heartbeat is fresh.
    assert!(api.set_node_controller(true));
    wait_query(
        prom,
        &format!("k8s_node_ready{{k8s_node_name=\"{ignored}\"}}"),
        &[0.0],
        T,
    )
    .await;
    wait_heartbeat_alerts(prom, ignored, &[]).await;
    assert!(api.set_kubelet_alive(early, true));
    assert!(api.set_kubelet_alive(ignored, true));
    wait_query(
        prom,
        "sum(k8s_cluster_node_heartbeats{k8s_node_heartbeat_state=\"fresh\"}) and on () sum(k8s_node_ready) == 100",
        &[100.0],
        T,
    )
    .await;
    let records = wait_records(&receiver, ignored, 2).await;
    assert_eq!(records[1].0, "false", "resumed: {records:?}");
    assert!(
        !exporter.logs().contains("forbidden"),
        "the chart's Role suffices:\n{}",
        exporter.logs()
    );
}

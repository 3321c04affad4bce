//! The chart as it installs: rendered by the real Helm engine, the exporter
//! run with exactly the container's rendered args and env, against a fake API
//! server that enforces the RBAC the chart renders for the exporter's service
//! account (a verb the chart does not grant is 403, as on a real cluster).

use std::{collections::BTreeMap, time::Duration};

use kube_node_status::fake::FakeApiServer;
use serde_json::{Value, json};

use crate::common::{
    self, Exporter,
    chart::{api_as_installed, args_for_loopback, exporter_container, pod_env, render, rule_file},
};

/// Starts `replicas` exporters as the chart's pods kns-0, kns-1, ….
fn start_replicas(api: &FakeApiServer, objects: &[Value], replicas: usize) -> Vec<Exporter> {
    let (container, _) = exporter_container(objects);
    let args = args_for_loopback(&container);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (0..replicas)
        .map(|i| {
            let env = pod_env(&container, &format!("kns-{i}"));
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Exporter::start(&api.kubeconfig(), &args, &env)
        })
        .collect()
}

/// Each replica's `kube_node_status_leader`, and how many nodes it reports Ready readings for.
async fn roles(replicas: &[Exporter]) -> Vec<(Option<f64>, usize)> {
    let mut out = Vec::new();
    for r in replicas {
        let (status, body) = r.get("/metrics").await;
        let samples = if status == 200 {
            common::parse(&body)
        } else {
            Vec::new()
        };
        let leader = common::value(&samples, "kube_node_status_leader", &[]);
        let nodes = samples.iter().filter(|s| s.name == "k8s_node_ready").count();
        out.push((leader, nodes));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_the_charts_rbac_elect_one_leader_that_exports_every_node() {
    let objects = render(&json!({"replicas": 2}));
    let api = api_as_installed(&objects, 20).await;
    let replicas = start_replicas(&api, &objects, 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = roles(&replicas).await;
        let leaders: Vec<_> = seen.iter().filter(|(l, _)| *l == Some(1.0)).collect();
        if leaders.len() == 1 && leaders[0].1 == 20 {
            let follower = seen
                .iter()
                .find(|(l, _)| *l == Some(0.0))
                .expect("the other follows");
            assert_eq!(follower.1, 0, "a follower exports no node readings");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica led with the chart's RBAC: {seen:?}\n{}\n{}",
            replicas[0].logs(),
            replicas[1].logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for r in &replicas {
        assert!(!r.logs().contains("forbidden"), "{}", r.logs());
    }
}

/// The enforcement can fail: with the Role the chart used to render (get and
/// update, while the Lease is written with PATCH), every replica is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_patch_on_the_lease_no_replica_leads() {
    let mut objects = render(&json!({"replicas": 2}));
    let mut changed = 0;
    for o in objects.iter_mut().filter(|o| o["kind"] == "Role") {
        for rule in o["rules"].as_array_mut().into_iter().flatten() {
            if rule["resources"] == json!(["leases"]) {
                rule["verbs"] = json!(["get", "update"]);
                changed += 1;
            }
        }
    }
    assert_eq!(changed, 1, "the leader-election Role");
    let api = api_as_installed(&objects, 5).await;
    let replicas = start_replicas(&api, &objects, 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for r in &replicas {
        while !r
            .logs()
            .contains("forbidden to use the leader Lease: grant get and patch")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never refused:\n{}",
                r.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let seen: BTreeMap<usize, _> = roles(&replicas).await.into_iter().enumerate().collect();
    assert!(seen.values().all(|(l, n)| *l == Some(0.0) && *n == 0), "{seen:?}");
}

/// Scrape configs as the rendered ServiceMonitor makes the Prometheus
/// Operator scrape each replica: job from the Service, the pod's labels.
fn service_monitor_scrapes(objects: &[Value], replicas: &[(&str, std::net::SocketAddr)]) -> String {
    let monitor = objects
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .expect("a ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let service = objects
        .iter()
        .find(|o| o["kind"] == "Service")
        .and_then(|s| s["metadata"]["name"].as_str())
        .expect("a Service");
    let mut out = format!(
        "- job_name: {service}\n  honor_labels: {}\n  static_configs:\n",
        endpoint["honorLabels"].as_bool().unwrap_or(false)
    );
    for (pod, addr) in replicas {
        out.push_str(&format!(
            "  - targets: ['{addr}']\n    labels: {{namespace: monitoring, pod: {pod}, service: {service}, endpoint: metrics, container: kube-node-status}}\n"
        ));
    }
    out
}

/// Prometheus's active alerts for `alertname`: node → (state, activeAt).
async fn alerts(prom: std::net::SocketAddr, alertname: &str) -> BTreeMap<String, (String, String)> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    common::prometheus::alerts(prom)
        .await
        .iter()
        .filter(|a| a["labels"]["alertname"] == alertname)
        .map(|a| {
            (
                text(&a["labels"]["k8s_node_name"]),
                (text(&a["state"]), text(&a["activeAt"])),
            )
        })
        .collect()
}

/// A firing alert stays firing, and a pending one pending, through the
/// leader's death: same labels, same activeAt, never resolved, in a real
/// Prometheus with the chart's rules, scraping both replicas as the rendered
/// ServiceMonitor says. The leader is killed (SIGKILL), so the follower takes
/// over only when the Lease expires: the longest gap there is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_the_leaders_death_in_prometheus() {
    let objects = render(&json!({
        "replicas": 2,
        "leaderElection": {"leaseDuration": "4s"},
        "serviceMonitor": {"enabled": true},
        "prometheusRule": {"enabled": true},
        "alerts": {"notReadyFor": "2s", "pressureFor": "10m"},
    }));
    let api = api_as_installed(&objects, 6).await;
    let n = api.node_names();
    let replicas = start_replicas(&api, &objects, 2);
    let targets = [("kns-0", replicas[0].addr), ("kns-1", replicas[1].addr)];
    let prometheus = common::prometheus::Prometheus::start_with(
        &service_monitor_scrapes(&objects, &targets),
        Some(&rule_file(&objects)),
    )
    .await;
    let prom = prometheus.addr;
    common::prometheus::wait_query(
        prom,
        "count(k8s_node_ready == 1)",
        &[6.0],
        Duration::from_secs(60),
    )
    .await;

    // n0 NotReady long enough to fire; n2 under memory pressure, pending for 10 minutes.
    assert!(api.set_condition(&n[0], "Ready", "False"));
    assert!(api.set_condition(&n[2], "MemoryPressure", "True"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (fired, pending) = loop {
        let fired = alerts(prom, "NodeNotReady").await;
        let pending = alerts(prom, "NodeUnderPressure").await;
        if fired.get(&n[0]).is_some_and(|(s, _)| s == "firing")
            && pending.get(&n[2]).is_some_and(|(s, _)| s == "pending")
        {
            break (fired[&n[0]].clone(), pending[&n[2]].clone());
        }
        assert!(tokio::time::Instant::now() < deadline, "{fired:?} {pending:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let leader = roles(&replicas)
        .await
        .iter()
        .position(|(l, _)| *l == Some(1.0))
        .expect("a leader");
    let follower_pod = format!("kns-{}", 1 - leader);
    replicas[leader].signal("KILL");
    let killed = tokio::time::Instant::now();
    // Until the follower's node readings have been scraped and five more
    // evaluations have run on them, every look at the alerts must find both
    // as they were.
    let mut looks = 0;
    let mut taken_over: Option<tokio::time::Instant> = None;
    loop {
        let now_fired = alerts(prom, "NodeNotReady").await;
        let now_pending = alerts(prom, "NodeUnderPressure").await;
        assert_eq!(
            now_fired.get(&n[0]),
            Some(&fired),
            "NodeNotReady after the kill: {now_fired:?}"
        );
        assert_eq!(
            now_pending.get(&n[2]),
            Some(&pending),
            "NodeUnderPressure after the kill: {now_pending:?}"
        );
        looks += 1;
        if taken_over.is_none() {
            let served =
                common::prometheus::query(prom, &format!("count(k8s_node_ready{{pod=\"{follower_pod}\"}})"))
                    .await;
            if served == [6.0] {
                taken_over = Some(tokio::time::Instant::now());
                println!(
                    "the follower's readings reached Prometheus {:?} after the kill",
                    killed.elapsed()
                );
            }
        }
        if taken_over.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "the follower never took over:\n{}",
            replicas[1 - leader].logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(looks > 10, "{looks} looks");
    // And the alerts still resolve: n0 Ready again, the pressure gone.
    assert!(api.set_condition(&n[0], "Ready", "True"));
    assert!(api.set_condition(&n[2], "MemoryPressure", "False"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(alerts(prom, "NodeNotReady").await.is_empty()
        && alerts(prom, "NodeUnderPressure").await.is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alerts never resolved"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

//! Cost follows changes: an update that changes nothing the exporter keeps
//! (a kubelet re-posting its status with new heartbeat times, volumes and
//! images) is counted and otherwise ignored, as is a relist that finds
//! nothing new; every real change still reaches `/metrics` and OTLP.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::common::{self, Exporter, Sample, fake_api, otlp, value};

const T: Duration = Duration::from_secs(20);

async fn start(api: &kube_node_status::fake::FakeApiServer) -> (Exporter, otlp::Receiver) {
    let receiver = otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--metrics-exporter",
            "prometheus,otlp",
            "--otlp-endpoint",
            &endpoint,
            "--metric-export-interval",
            "1s",
            "--traces-exporter",
            "none",
            "--node-labels",
            "topology.kubernetes.io/zone",
        ],
        &[],
    )
    .await;
    // Both outputs have written every shard once.
    receiver.wait_cycles(2, T).await;
    (exporter, receiver)
}

fn written(s: &[Sample], output: &str) -> f64 {
    value(s, "kube_node_status_shards_written_total", &[("output", output)])
        .unwrap_or_else(|| panic!("no shards written counter for {output}"))
}

/// Neither output wrote a shard again since the counts were `(prometheus, otlp)`.
fn assert_nothing_written(s: &[Sample], (prom, otlp): (f64, f64), what: &str) {
    assert_eq!(written(s, "prometheus"), prom, "{what} rendered /metrics again");
    assert_eq!(written(s, "otlp"), otlp, "{what} encoded OTLP again");
}

fn events(s: &[Sample], kind: &str) -> f64 {
    value(s, "kube_node_status_watch_events_total", &[("type", kind)]).unwrap_or_default()
}

/// The node series of a body, self-telemetry left out.
/// The lines of `body` but self-telemetry, sorted: the cluster-wide
/// readings are collected again at every pass, and the SDK hands out their
/// points in no fixed order.
fn node_lines(body: &str) -> Vec<String> {
    let mut lines: Vec<String> = common::without_self_telemetry(body)
        .into_iter()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Waits for `cycles` more complete OTLP export cycles.
async fn more_cycles(receiver: &otlp::Receiver, cycles: usize) {
    let now = receiver.cycles();
    receiver.wait_cycles(now + cycles, T).await;
}

/// The scrape after OTLP has had two more cycles since `seen`, which no
/// further event of `kind` may have followed: both outputs had their chance
/// to write again.
async fn settled(exporter: &Exporter, receiver: &otlp::Receiver, seen: &[Sample], kind: &str) -> Vec<Sample> {
    more_cycles(receiver, 2).await;
    let now = exporter.scrape().await;
    assert_eq!(events(&now, kind), events(seen, kind), "more {kind} events");
    now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_re_posts_and_an_empty_relist_write_nothing_again() {
    let api = fake_api(40).await;
    let names = api.node_names();
    let (exporter, receiver) = start(&api).await;
    // Counters settle: no change is pending in either output.
    more_cycles(&receiver, 2).await;
    let before = exporter.scrape().await;
    let body_before = exporter.get("/metrics").await.1;
    let (prom, otlp_written) = (written(&before, "prometheus"), written(&before, "otlp"));
    assert!(prom >= 1.0 && otlp_written >= 1.0, "{prom} {otlp_written}");

    // Three rounds of kubelet status re-posts: heartbeat times only, and on
    // one node volumes and images too.
    for round in 0..3 {
        for name in &names {
            assert!(api.repost_status(name));
        }
        let mut node = api.node(&names[round]).expect("a node");
        node["status"]["images"] = json!([{"names": [format!("registry/app:{round}")], "sizeBytes": 1}]);
        node["status"]["volumesInUse"] = json!([format!("kubernetes.io/csi/disk-{round}")]);
        node["metadata"]["annotations"] = json!({"node.alpha.kubernetes.io/ttl": format!("{round}")});
        assert!(api.put_node(node));
    }
    let reposts = (3 * (names.len() + 1)) as f64;
    let after = exporter
        .wait_for("every re-post seen as unchanged", T, |s| {
            events(s, "unchanged") >= events(&before, "unchanged") + reposts
        })
        .await;
    let after = settled(&exporter, &receiver, &after, "unchanged").await;
    assert_eq!(
        events(&after, "apply"),
        events(&before, "apply"),
        "a re-post was stored"
    );
    assert_nothing_written(&after, (prom, otlp_written), "a re-post");
    assert_eq!(
        node_lines(&exporter.get("/metrics").await.1),
        node_lines(&body_before),
        "the node series moved"
    );

    // A relist forced by 410 that finds nothing new writes nothing either.
    api.stop();
    api.compact();
    api.restart().await.expect("the API listens again");
    // The watch reconnects with client-go's backoff (0.8 s doubling to 30 s)
    // while the API is away and its port is being released: allow for it.
    let relisted = exporter
        .wait_for("the relist", Duration::from_secs(90), |s| {
            value(s, "kube_node_status_watch_restarts_total", &[]) == Some(1.0)
        })
        .await;
    let relisted = settled(&exporter, &receiver, &relisted, "init_done").await;
    assert_nothing_written(&relisted, (prom, otlp_written), "an empty relist");

    // A real change writes one shard in each output, no more.
    assert!(api.set_condition(&names[5], "Ready", "False"));
    let flipped = exporter
        .wait_for("the flip", T, |s| {
            value(s, "k8s_node_ready", &[("k8s_node_name", &names[5])]) == Some(0.0)
        })
        .await;
    assert_eq!(written(&flipped, "prometheus"), prom + 1.0);
    more_cycles(&receiver, 2).await;
    assert_eq!(written(&exporter.scrape().await, "otlp"), otlp_written + 1.0);
}

/// One OTLP point: attributes and value.
type Point = (BTreeMap<String, String>, f64);

/// Waits until the newest OTLP data of `metric` satisfies `pred`.
async fn wait_otlp(receiver: &otlp::Receiver, what: &str, metric: &str, pred: impl Fn(&[Point]) -> bool) {
    let start = Instant::now();
    loop {
        if let Some(latest) = receiver.latest()
            && pred(&otlp::points(&latest, metric))
        {
            return;
        }
        assert!(start.elapsed() < T, "OTLP never showed {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn for_node<'a>(points: &'a [Point], name: &str) -> impl Iterator<Item = &'a Point> {
    points
        .iter()
        .filter(move |(a, _)| a.get("k8s.node.name").map(String::as_str) == Some(name))
}

fn set_condition(node: &mut Value, type_: &str, status: &str) {
    for c in node["status"]["conditions"].as_array_mut().expect("conditions") {
        if c["type"] == type_ {
            c["status"] = json!(status);
            c["lastTransitionTime"] = json!("2026-11-30T12:00:00Z");
        }
    }
}

/// A change to node `name` and where both outputs must show it: a sample on
/// /metrics, a point in OTLP.
struct Case {
    what: &'static str,
    change: fn(&mut Value),
    prom: (&'static str, &'static [(&'static str, &'static str)], Option<f64>),
    otlp: (&'static str, &'static [(&'static str, &'static str)], Option<f64>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_real_change_reaches_both_outputs() {
    let api = fake_api(10).await;
    let names = api.node_names();
    let (exporter, receiver) = start(&api).await;
    let cases = [
        Case {
            what: "Ready",
            change: |n| set_condition(n, "Ready", "False"),
            prom: ("k8s_node_ready", &[], Some(0.0)),
            otlp: ("k8s.node.ready", &[], Some(0.0)),
        },
        Case {
            what: "another condition",
            change: |n| set_condition(n, "MemoryPressure", "True"),
            prom: (
                "k8s_node_condition_status",
                &[
                    ("k8s_node_condition_type", "MemoryPressure"),
                    ("k8s_node_condition_status", "true"),
                ],
                Some(1.0),
            ),
            otlp: (
                "k8s.node.condition.status",
                &[
                    ("k8s.node.condition.type", "MemoryPressure"),
                    ("k8s.node.condition.status", "true"),
                ],
                Some(1.0),
            ),
        },
        Case {
            what: "a taint",
            change: |n| n["spec"]["taints"] = json!([{"key": "example.com/broken", "effect": "NoExecute"}]),
            prom: (
                "k8s_node_taint",
                &[("k8s_node_taint_key", "example.com/broken")],
                Some(1.0),
            ),
            otlp: (
                "k8s.node.taint",
                &[("k8s.node.taint.key", "example.com/broken")],
                Some(1.0),
            ),
        },
        Case {
            what: "a cordon",
            change: |n| n["spec"]["unschedulable"] = json!(true),
            prom: ("k8s_node_unschedulable", &[], Some(1.0)),
            otlp: ("k8s.node.unschedulable", &[], Some(1.0)),
        },
        Case {
            what: "allocatable",
            change: |n| n["status"]["allocatable"]["pods"] = json!("77"),
            prom: ("k8s_node_pod_allocatable", &[], Some(77.0)),
            otlp: ("k8s.node.pod.allocatable", &[], Some(77.0)),
        },
        Case {
            what: "a label kept by --node-labels",
            change: |n| n["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("z-moved"),
            prom: (
                "k8s_node_ready",
                &[("k8s_node_label_topology_kubernetes_io_zone", "z-moved")],
                None,
            ),
            otlp: ("k8s.node.ready", &[], None),
        },
    ];
    for (case, name) in cases.iter().zip(&names) {
        let mut node = api.node(name).expect("a node");
        (case.change)(&mut node);
        assert!(api.put_node(node));
        let (metric, attrs, want) = case.prom;
        exporter
            .wait_for(case.what, T, |s| {
                s.iter().any(|x| {
                    x.name == metric
                        && x.labels.get("k8s_node_name") == Some(name)
                        && attrs
                            .iter()
                            .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
                        && want.is_none_or(|w| x.value == w)
                })
            })
            .await;
        let (metric, attrs, want) = case.otlp;
        wait_otlp(&receiver, case.what, metric, |points| {
            for_node(points, name).any(|(a, v)| {
                attrs.iter().all(|(k, want)| a.get(*k).map(String::as_str) == Some(*want))
                    && want.is_none_or(|w| *v == w)
                    // The label case: some attribute carries the new zone.
                    && (want.is_some() || a.values().any(|v| v == "z-moved"))
            })
        })
        .await;
    }

    // Deleted: gone from both. Added back: in both again.
    let name = &names[8];
    let node = api.node(name).expect("a node");
    assert!(api.delete_node(name));
    exporter
        .wait_for("the delete", T, |s| {
            value(s, "k8s_node_ready", &[("k8s_node_name", name)]).is_none()
        })
        .await;
    wait_otlp(&receiver, "the delete", "k8s.node.ready", |p| {
        !p.is_empty() && for_node(p, name).next().is_none()
    })
    .await;
    assert!(api.put_node(node));
    exporter
        .wait_for("the re-add", T, |s| {
            value(s, "k8s_node_ready", &[("k8s_node_name", name)]) == Some(1.0)
        })
        .await;
    wait_otlp(&receiver, "the re-add", "k8s.node.ready", |p| {
        for_node(p, name).any(|(_, v)| *v == 1.0)
    })
    .await;

    // A change only a relist can find: made while the API is down, with the
    // history compacted so that resuming the watch gets 410 Gone.
    let name = &names[9];
    api.stop();
    let mut node = api.node(name).expect("a node");
    set_condition(&mut node, "Ready", "Unknown");
    assert!(api.put_node(node));
    api.compact();
    api.restart().await.expect("the API listens again");
    exporter
        .wait_for("the change found by the relist", T, |s| {
            value(s, "kube_node_status_watch_restarts_total", &[]) == Some(1.0)
                && value(
                    s,
                    "k8s_node_condition_status",
                    &[
                        ("k8s_node_name", name),
                        ("k8s_node_condition_type", "Ready"),
                        ("k8s_node_condition_status", "unknown"),
                    ],
                ) == Some(1.0)
        })
        .await;
    wait_otlp(
        &receiver,
        "the change found by the relist",
        "k8s.node.condition.status",
        |p| {
            for_node(p, name).any(|(a, v)| {
                a.get("k8s.node.condition.type").map(String::as_str) == Some("Ready")
                    && a.get("k8s.node.condition.status").map(String::as_str) == Some("unknown")
                    && *v == 1.0
            })
        },
    )
    .await;
}

/// The traffic of a bad day: a zone's nodes all NotReady in one burst, then
/// back; and the cluster autoscaler replacing nodes (taint, delete, a new
/// name joining NotReady then Ready). Both outputs end up with exactly the
/// cluster the API holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_outage_and_autoscaler_churn_reach_both_outputs() {
    let api = std::sync::Arc::new(fake_api(30).await);
    let (exporter, receiver) = start(&api).await;
    let autoscaler = api.spawn_autoscaler(0.0);
    let down = api.outage(Some("us-central1-b"), 0.0, "False");
    assert_eq!(down.len(), 10, "a third of the nodes: {down:?}");
    let all_ready = |s: &[Sample], want: f64| {
        down.iter()
            .all(|n| value(s, "k8s_node_ready", &[("k8s_node_name", n)]) == Some(want))
    };
    exporter.wait_for("the outage", T, |s| all_ready(s, 0.0)).await;
    wait_otlp(&receiver, "the outage", "k8s.node.ready", |p| {
        down.iter().all(|n| for_node(p, n).any(|(_, v)| *v == 0.0))
    })
    .await;
    assert_eq!(api.outage(Some("us-central1-b"), 0.0, "True"), down);
    exporter.wait_for("the recovery", T, |s| all_ready(s, 1.0)).await;

    // Several autoscaler rounds, then a pause: the outputs hold what the API holds.
    let before = api.node_names();
    api.set_autoscaler(600.0);
    let start = Instant::now();
    while api.node_names().iter().filter(|n| !before.contains(n)).count() < 4 {
        assert!(start.elapsed() < T, "the autoscaler added no nodes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.set_autoscaler(0.0);
    // A round in flight lands within its period (100 ms); then nothing moves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = api.node_names();
    // One node may still be draining: tainted, deleted on the next round.
    assert!(
        (before.len()..=before.len() + 1).contains(&now.len()),
        "the autoscaler keeps the node count: {} -> {}",
        before.len(),
        now.len()
    );
    let mut want: Vec<String> = now.clone();
    want.sort();
    let node_set = |s: &[Sample]| {
        let mut got: Vec<String> = s
            .iter()
            .filter(|x| x.name == "k8s_node_ready")
            .filter_map(|x| x.labels.get("k8s_node_name").cloned())
            .collect();
        got.sort();
        got
    };
    exporter
        .wait_for("the replaced nodes", T, |s| node_set(s) == want)
        .await;
    wait_otlp(&receiver, "the replaced nodes", "k8s.node.ready", |p| {
        let mut got: Vec<String> = p
            .iter()
            .filter_map(|(a, _)| a.get("k8s.node.name").cloned())
            .collect();
        got.sort();
        got == want
    })
    .await;
    autoscaler.abort();
}

/// `kube_node_status_series` says what `/metrics` serves: per family the
/// lines of that family, and in all every line but self-telemetry and
/// `target_info`; the start-up log says it once, with the samples a month.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_self_metric_counts_what_metrics_serves() {
    let api = fake_api(25).await;
    let (exporter, _receiver) = start(&api).await;
    let samples = exporter
        .wait_for("the series self-metric", T, |s| {
            s.iter().any(|x| x.name == "kube_node_status_series")
        })
        .await;
    let counted: BTreeMap<String, f64> = samples
        .iter()
        .filter(|x| x.name == "kube_node_status_series")
        .map(|x| (x.labels["family"].clone(), x.value))
        .collect();
    let served = samples
        .iter()
        .filter(|x| !x.name.starts_with("kube_node_status_") && x.name != "target_info")
        .count();
    assert_eq!(counted.values().sum::<f64>(), served as f64, "{counted:?}");
    let lines = |name: &str| samples.iter().filter(|x| x.name == name).count() as f64;
    assert_eq!(counted["k8s.node.ready"], lines("k8s_node_ready"));
    assert_eq!(counted["k8s.node.ready"], 25.0);
    assert_eq!(
        counted["k8s.node.condition.status"],
        lines("k8s_node_condition_status")
    );
    assert_eq!(counted["k8s.cluster.nodes"], lines("k8s_cluster_nodes"));
    // A deleted node takes its series with it.
    assert!(api.delete_node(&api.node_names()[0]));
    exporter
        .wait_for("the deleted node's series gone from the count", T, |s| {
            value(s, "kube_node_status_series", &[("family", "k8s.node.ready")]) == Some(24.0)
        })
        .await;
    let logs = exporter.logs();
    let announced: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("what the readings cost"))
        .collect();
    assert_eq!(announced.len(), 1, "{logs}");
    assert!(announced[0].contains(&served.to_string()), "{}", announced[0]);
    assert!(
        announced[0].contains("samples_per_month_scraped="),
        "{}",
        announced[0]
    );
}

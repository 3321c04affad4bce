//! Leader election, end to end: two replicas against an API server, and
//! proof that only one ever exports node readings, on /metrics and over
//! OTLP, through a killed leader, a paused one and a graceful shutdown.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Exporter, http_get, otlp::Receiver, parse, value};

const LEASE: Duration = Duration::from_secs(4);
/// How often both replicas are scraped.
const TICK: Duration = Duration::from_millis(100);

/// What one replica's /metrics showed: `None` when it did not answer in time.
#[derive(Clone, Copy, Debug)]
struct Seen {
    node_series: usize,
    leader: Option<f64>,
}

type Samples = Arc<Mutex<Vec<(Instant, BTreeMap<String, Option<Seen>>)>>>;

async fn look(addr: std::net::SocketAddr) -> Option<Seen> {
    let (status, body) = tokio::time::timeout(Duration::from_millis(400), http_get(addr, "/metrics", &[]))
        .await
        .ok()?
        .ok()?;
    if status != 200 {
        return None;
    }
    let samples = parse(&body);
    Some(Seen {
        node_series: samples.iter().filter(|s| s.name.starts_with("k8s_node_")).count(),
        leader: value(&samples, "kube_node_status_leader", &[]),
    })
}

struct Replica {
    name: String,
    exporter: Exporter,
}

fn start(name: &str, kubeconfig: &str, otlp: &str) -> Replica {
    let exporter = Exporter::start(
        kubeconfig,
        &[
            "--leader-election",
            "--lease-duration",
            "4s",
            "--metric-export-interval",
            "1s",
            "--otlp-endpoint",
            otlp,
            "--traces-exporter",
            "none",
        ],
        &[("POD_NAME", name), ("POD_NAMESPACE", "monitoring")],
    );
    Replica {
        name: name.to_string(),
        exporter,
    }
}

/// The replicas now exporting node readings, by the newest sample.
fn exporting(samples: &Samples) -> Vec<String> {
    let samples = samples.lock().unwrap();
    let Some((_, last)) = samples.last() else {
        return Vec::new();
    };
    last.iter()
        .filter(|(_, s)| s.is_some_and(|s| s.node_series > 0))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Polls `want` directly (the sampler waits out a paused replica's timeout)
/// until it exports node readings: how long that took.
async fn wait_exporting(want: &Replica, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if look(want.exporter.addr).await.is_some_and(|s| s.node_series > 0) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{} did not take over within {timeout:?}\nlogs:\n{}",
            want.name,
            want.exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs two (then three) replicas with a 4 s lease against the API server of
/// `kubeconfig` through a kill, a pause and a SIGTERM of the leader, checks
/// that one exported at a time and each takeover was within the lease, and
/// returns the names of the leaders in order.
pub async fn never_two_exporters(kubeconfig: &str) -> Vec<String> {
    // A receiver per replica: node points carry the same identity whoever
    // leads (the Lease's), so which receiver got them says who sent them.
    let mut receivers: Vec<(String, Receiver)> = Vec::new();
    for name in ["replica-a", "replica-b", "replica-c"] {
        receivers.push((name.to_string(), Receiver::start(None).await));
    }
    let otlp = |name: &str| {
        let (_, r) = receivers.iter().find(|(n, _)| n == name).expect("a receiver");
        format!("http://{}", r.addr)
    };
    let replicas: Arc<Mutex<Vec<(String, std::net::SocketAddr)>>> = Arc::default();
    let mut a = start("replica-a", kubeconfig, &otlp("replica-a"));
    let mut b = start("replica-b", kubeconfig, &otlp("replica-b"));
    replicas.lock().unwrap().extend([
        (a.name.clone(), a.exporter.addr),
        (b.name.clone(), b.exporter.addr),
    ]);

    // Scrape every replica every tick, all through the test.
    let samples: Samples = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (samples, done, replicas) = (samples.clone(), done.clone(), replicas.clone());
        async move {
            while !done.load(Ordering::Acquire) {
                let now = Instant::now();
                let targets = replicas.lock().unwrap().clone();
                let seen = futures::future::join_all(targets.iter().map(|(_, addr)| look(*addr))).await;
                let row = targets.into_iter().map(|(n, _)| n).zip(seen).collect();
                samples.lock().unwrap().push((now, row));
                tokio::time::sleep(TICK).await;
            }
        }
    });

    // One of them leads.
    let start_wait = Instant::now();
    let first = loop {
        let now = exporting(&samples);
        if now.len() == 1 {
            break now[0].clone();
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(15),
            "no leader; logs:\n{}\n{}",
            a.exporter.logs(),
            b.exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The follower stays a follower while the leader renews.
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        exporting(&samples),
        std::slice::from_ref(&first),
        "the leader changed without a failure"
    );
    let (leader, follower) = if first == a.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // Who led, in order: what the OTLP receiver must have seen.
    let leaders = vec![
        leader.name.clone(),
        follower.name.clone(),
        "replica-c".to_string(),
        follower.name.clone(),
    ];

    // 1. The leader is killed: the follower takes over within the lease duration.
    leader.exporter.signal("KILL");
    let took = wait_exporting(follower, LEASE * 3).await;
    assert!(
        took <= LEASE + Duration::from_millis(500),
        "takeover after a kill took {took:?} (lease {LEASE:?})"
    );
    // It comes back (a new pod) and follows.
    let c = start("replica-c", kubeconfig, &otlp("replica-c"));
    replicas.lock().unwrap().push((c.name.clone(), c.exporter.addr));
    c.exporter
        .wait_for("the new replica's self-telemetry", Duration::from_secs(10), |s| {
            value(s, "kube_node_status_leader", &[]) == Some(0.0)
        })
        .await;
    tokio::time::sleep(LEASE).await;
    assert_eq!(exporting(&samples), std::slice::from_ref(&follower.name));

    // 2. The leader is paused (a frozen process, a node cut off) past its lease:
    //    the other takes over, and the paused one, resumed, exports nothing.
    follower.exporter.signal("STOP");
    let took = wait_exporting(&c, LEASE * 3).await;
    assert!(
        took <= LEASE + Duration::from_millis(500),
        "takeover after a pause took {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    follower.exporter.signal("CONT");
    tokio::time::sleep(LEASE).await;
    assert_eq!(exporting(&samples), std::slice::from_ref(&c.name));

    // 3. A graceful shutdown frees the lease: the takeover is at once.
    c.exporter.signal("TERM");
    let took = wait_exporting(follower, LEASE * 2).await;
    assert!(
        took < Duration::from_secs(2),
        "takeover after SIGTERM took {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    done.store(true, Ordering::Release);
    sampler.await.unwrap();

    // Never two exporters on /metrics, and the leader gauge agrees.
    let samples = samples.lock().unwrap();
    assert!(samples.len() > 100, "too few samples: {}", samples.len());
    for (t, row) in samples.iter() {
        let both: Vec<_> = row
            .iter()
            .filter(|(_, s)| s.is_some_and(|s| s.node_series > 0))
            .map(|(n, _)| n)
            .collect();
        assert!(
            both.len() <= 1,
            "two replicas exported node series at once ({:?} in): {both:?}",
            t.duration_since(start_wait)
        );
        for (name, seen) in row {
            if let Some(seen) = seen {
                assert!(seen.leader.is_some(), "{name} has no leader gauge");
            }
        }
    }

    // Never two exporters over OTLP either: ordered by their time, the node
    // points come in one stretch per leadership, in the order leaders took over.
    // And whoever leads, the node and cluster readings carry one identity,
    // the Lease's, so a backend sees one series through every failover (the
    // pod's name would make it hold two for its lookback); self-telemetry
    // carries the replica's.
    let mut points: Vec<(u64, String)> = Vec::new();
    for (replica, receiver) in &receivers {
        for (_, req) in receiver.received.metrics.lock().unwrap().iter() {
            for rm in &req.resource_metrics {
                let instance = rm
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.instance.id"))
                    .map(|kv| super::otlp::any_value(&kv.value))
                    .unwrap_or_default();
                for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
                    if m.name.starts_with("k8s.node.") || m.name.starts_with("k8s.cluster.") {
                        assert_eq!(
                            instance, "monitoring/kube-node-status",
                            "{} from {replica}",
                            m.name
                        );
                    } else if m.name.starts_with("kube_node_status.") {
                        assert_eq!(&instance, replica, "{} from {replica}", m.name);
                    }
                    if m.name.starts_with("k8s.node.") {
                        points.extend(
                            super::otlp::point_times(m)
                                .into_iter()
                                .map(|t| (t, replica.clone())),
                        );
                    }
                }
            }
        }
    }
    points.sort();
    let mut stretches: Vec<String> = Vec::new();
    for (_, instance) in &points {
        if stretches.last() != Some(instance) {
            stretches.push(instance.clone());
        }
    }
    assert_eq!(stretches, leaders, "node points over OTLP, in time order");
    leaders
}

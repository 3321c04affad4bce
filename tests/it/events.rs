//! Node condition changes as OTLP log records, against the real binary and
//! an OTLP receiver: one record per change with its reason and message,
//! none at start-up or for a heartbeat, none from a follower, and a bounded
//! queue while the collector is down.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::{
    common::v1::any_value::Value,
    logs::v1::{LogRecord, SeverityNumber},
};
use serde_json::json;

use crate::common::{Exporter, fake_api, otlp::Receiver, value};

const T: Duration = Duration::from_secs(30);

fn attr<'r>(r: &'r LogRecord, key: &str) -> Option<&'r str> {
    r.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
}

fn body(r: &LogRecord) -> Option<&str> {
    match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

async fn wait_records(receiver: &Receiver, n: usize) -> Vec<LogRecord> {
    let start = Instant::now();
    loop {
        let records = receiver.log_records();
        if records.len() >= n {
            return records;
        }
        assert!(start.elapsed() < T, "{} records, waiting for {n}", records.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for two whole metric export cycles, and at least twice the 1 s a
/// record waits for others before it is sent: by then any record start-up
/// (or a change before the call) would send has been sent. Cycles, not
/// requests: a cycle is several requests, sent within milliseconds.
async fn settle(receiver: &Receiver) {
    let seen = receiver.cycles();
    let start = Instant::now();
    receiver.wait_cycles(seen + 2, T).await;
    let linger = Duration::from_secs(2);
    if let Some(rest) = linger.checked_sub(start.elapsed()) {
        tokio::time::sleep(rest).await;
    }
}

fn start(kubeconfig: &str, receiver: &Receiver, extra: &[&str]) -> Exporter {
    let endpoint = format!("http://{}", receiver.addr);
    let mut args = vec![
        "--otlp-endpoint",
        &endpoint,
        "--metric-export-interval",
        "1s",
        "--traces-exporter",
        "none",
    ];
    args.extend_from_slice(extra);
    Exporter::start(kubeconfig, &args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_change_is_one_record_with_its_reason_and_message_and_recovery_one_more() {
    let api = fake_api(5).await;
    let names = api.node_names();
    let receiver = Receiver::start(None).await;
    let exporter = start(&api.kubeconfig(), &receiver, &[]);
    exporter.wait_status("/readyz", 200, T).await;
    settle(&receiver).await;
    // Start-up reports no initial state; a kubelet re-post is no change either.
    assert!(api.repost_status(&names[1]));
    settle(&receiver).await;
    assert_eq!(
        receiver.log_records().len(),
        0,
        "records at start-up or for a heartbeat"
    );

    let mut node = api.node(&names[0]).expect("a node");
    let ready = node["status"]["conditions"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition");
    ready["status"] = json!("False");
    ready["reason"] = json!("KubeletNotReady");
    ready["message"] = json!("PLEG is not healthy: pleg was last seen active 3m0s ago");
    ready["lastTransitionTime"] = json!("2026-11-30T10:00:00Z");
    assert!(api.put_node(node));
    let records = wait_records(&receiver, 1).await;
    let r = &records[0];
    assert_eq!(r.event_name, "k8s.node.condition.change");
    assert_eq!(r.severity_number, SeverityNumber::Warn as i32);
    assert_eq!(attr(r, "k8s.node.name"), Some(names[0].as_str()));
    assert!(attr(r, "k8s.node.uid").is_some_and(|u| !u.is_empty()));
    assert_eq!(attr(r, "k8s.node.condition.type"), Some("Ready"));
    assert_eq!(attr(r, "k8s.node.condition.status"), Some("false"));
    assert_eq!(attr(r, "k8s.node.condition.previous_status"), Some("true"));
    assert_eq!(attr(r, "k8s.node.condition.reason"), Some("KubeletNotReady"));
    assert_eq!(
        body(r),
        Some("PLEG is not healthy: pleg was last seen active 3m0s ago")
    );
    assert_eq!(r.time_unix_nano, 1_796_032_800_000_000_000, "lastTransitionTime");
    assert!(
        r.observed_time_unix_nano > r.time_unix_nano,
        "seen after it happened"
    );

    // Recovery: one more, INFO, with the kubelet's reason.
    assert!(api.set_condition(&names[0], "Ready", "True"));
    wait_records(&receiver, 2).await;
    settle(&receiver).await;
    let records = receiver.log_records();
    assert_eq!(records.len(), 2, "exactly one record per change");
    assert_eq!(records[1].severity_number, SeverityNumber::Info as i32);
    assert_eq!(attr(&records[1], "k8s.node.condition.status"), Some("true"));
    assert_eq!(
        attr(&records[1], "k8s.node.condition.reason"),
        Some("KubeletReady")
    );
    assert_eq!(body(&records[1]), Some("kubelet is posting ready status"));

    // The metrics never carry the message.
    let scraped = exporter.get("/metrics").await.1;
    assert!(!scraped.contains("PLEG"), "a message on /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_found_by_a_relist_is_reported_once() {
    let api = fake_api(3).await;
    let names = api.node_names();
    let receiver = Receiver::start(None).await;
    let exporter = start(&api.kubeconfig(), &receiver, &[]);
    exporter.wait_status("/readyz", 200, T).await;
    settle(&receiver).await;
    // Made while the API is down, with the history compacted: only a relist finds it.
    api.stop();
    assert!(api.set_condition(&names[2], "MemoryPressure", "True"));
    api.compact();
    api.restart().await.expect("the API server restarts");
    wait_records(&receiver, 1).await;
    settle(&receiver).await;
    let records = receiver.log_records();
    assert_eq!(records.len(), 1, "one record for the one change");
    assert_eq!(attr(&records[0], "k8s.node.name"), Some(names[2].as_str()));
    assert_eq!(
        attr(&records[0], "k8s.node.condition.type"),
        Some("MemoryPressure")
    );
    assert_eq!(attr(&records[0], "k8s.node.condition.status"), Some("true"));
    assert_eq!(records[0].severity_number, SeverityNumber::Warn as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reports_nothing() {
    let api = fake_api(3).await;
    let names = api.node_names();
    let receiver = Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let args = [
        "--leader-election",
        "--lease-duration",
        "4s",
        "--otlp-endpoint",
        &endpoint,
        "--metric-export-interval",
        "1s",
        "--traces-exporter",
        "none",
    ];
    let a = Exporter::start(
        &api.kubeconfig(),
        &args,
        &[("POD_NAME", "replica-a"), ("POD_NAMESPACE", "monitoring")],
    );
    a.wait_for("replica-a leads", T, |s| {
        value(s, "kube_node_status_leader", &[]) == Some(1.0)
    })
    .await;
    let b = Exporter::start(
        &api.kubeconfig(),
        &args,
        &[("POD_NAME", "replica-b"), ("POD_NAMESPACE", "monitoring")],
    );
    b.wait_status("/readyz", 200, T).await;
    b.wait_for("replica-b follows", T, |s| {
        value(s, "kube_node_status_leader", &[]) == Some(0.0)
    })
    .await;
    // Both watch and see the change; one record arrives, from the leader.
    assert!(api.set_condition(&names[1], "Ready", "False"));
    wait_records(&receiver, 1).await;
    settle(&receiver).await;
    assert_eq!(
        receiver.log_records().len(),
        1,
        "one record: the follower sent none"
    );
    let sent_by = receiver.received.logs.lock().unwrap()[0].resource_logs[0]
        .resource
        .as_ref()
        .and_then(|res| res.attributes.iter().find(|kv| kv.key == "service.instance.id"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
    assert_eq!(sent_by.as_deref(), Some("replica-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_in_a_bounded_queue_while_the_collector_is_down() {
    let api = fake_api(3).await;
    let name = api.node_names()[0].clone();
    let receiver = Receiver::start(None).await;
    receiver
        .received
        .logs_down
        .store(true, std::sync::atomic::Ordering::Release);
    let exporter = start(&api.kubeconfig(), &receiver, &["--logs-queue-size", "50"]);
    exporter.wait_status("/readyz", 200, T).await;
    let flap = |times: usize| {
        for _ in 0..times {
            assert!(api.set_condition(&name, "Ready", "False"));
            assert!(api.set_condition(&name, "Ready", "True"));
        }
    };
    let dropped = |s: &[crate::common::Sample]| {
        value(
            s,
            "kube_node_status_logs_records_total",
            &[("outcome", "dropped")],
        )
        .unwrap_or_default()
    };
    // A flapping node while the collector is down: the queue holds the newest 50.
    flap(100);
    let samples = exporter
        .wait_for("200 changes seen, 150 dropped", T, |s| dropped(s) == 150.0)
        .await;
    assert_eq!(value(&samples, "kube_node_status_logs_queued", &[]), Some(50.0));
    let before = exporter.rss();
    // Ten times as many changes, each with a long message: the queue stays at 50.
    let long = "x".repeat(1000);
    for _ in 0..1000 {
        for status in ["False", "True"] {
            let mut node = api.node(&name).expect("the node");
            let ready = node["status"]["conditions"]
                .as_array_mut()
                .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "Ready"))
                .expect("Ready");
            ready["status"] = json!(status);
            ready["message"] = json!(long);
            assert!(api.put_node(node));
        }
    }
    let samples = exporter
        .wait_for("2,200 changes seen", Duration::from_secs(60), |s| {
            dropped(s) == 2150.0
        })
        .await;
    assert_eq!(value(&samples, "kube_node_status_logs_queued", &[]), Some(50.0));
    let after = exporter.settled_rss().await;
    // Unbounded, 2,000 records of 1 KB messages would be well over 2 MiB more.
    assert!(
        after < before + 16 * 1024 * 1024,
        "memory grew from {before} to {after} bytes with the queue full"
    );
    assert_eq!(receiver.log_records().len(), 0);

    // The collector is back: the 50 newest arrive, the last change last.
    receiver
        .received
        .logs_down
        .store(false, std::sync::atomic::Ordering::Release);
    let records = wait_records(&receiver, 50).await;
    assert_eq!(records.len(), 50);
    let last = records.last().expect("records");
    assert_eq!(attr(last, "k8s.node.condition.status"), Some("true"));
    assert_eq!(body(last), Some(long.as_str()));
    exporter
        .wait_for("exported counted", T, |s| {
            value(
                s,
                "kube_node_status_logs_records_total",
                &[("outcome", "exported")],
            ) == Some(50.0)
        })
        .await;
}

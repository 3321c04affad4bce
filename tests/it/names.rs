//! Every metric name a user is given is one the exporter emits, in the
//! configuration where it is used: the chart's alert rules and dashboard in
//! both profiles the chart picks (full, and readiness for Google Cloud) and
//! in their naming; `--help`, README.md and docs/ in some configuration. A
//! name is a token that starts `k8s_` or `kube_node_` (every name of ours
//! does); one that is a label of a served series is a label, not a name.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{
    Exporter,
    chart::{dashboard, render},
    parse,
};

/// What docs name but this exporter deliberately does not serve: the Go
/// tool's metrics, in the migration table of docs/metrics.md.
const NOT_OURS: &[&str] = &[
    "kube_node_status",
    "kube_node_status_nodes_total",
    "kube_node_status_nodes_ready",
    "kube_node_status_nodes_not_ready",
    "kube_node_status_not_ready_ratio",
];

/// Served metric names and label names.
#[derive(Default)]
struct Served {
    names: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// Runs the exporter in `naming` and `profile` with nodes in every kind of
/// trouble (so sparse series exist), a watch error and failing OTLP exports
/// (so their counters exist), and returns what /metrics serves.
async fn served(naming: &str, profile: &str) -> Served {
    // Kubelets renewing their node Leases, one dead (its heartbeat readings
    // are served only while stale); no controller acts within the test.
    let api =
        crate::common::fake_api_with_kubelets(6, Duration::from_millis(300), Duration::from_secs(3600)).await;
    let n = api.node_names();
    assert!(api.set_kubelet_alive(&n[2], false));
    let edit = |name: &str, change: &dyn Fn(&mut Value)| {
        let mut node = api.node(name).expect("the node exists");
        change(&mut node);
        assert!(api.put_node(node));
    };
    assert!(api.set_condition(&n[0], "Ready", "False"));
    edit(&n[1], &|node| node["spec"]["unschedulable"] = json!(true));
    assert!(api.set_condition(&n[2], "MemoryPressure", "True"));
    assert!(api.set_condition(&n[3], "Ready", "Unknown"));
    edit(&n[3], &|node| {
        node["spec"]["taints"] = json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
    });
    // A worker being deleted (its finalizers still running).
    edit(&n[5], &|node| {
        node["metadata"]["labels"]["node-role.kubernetes.io/worker"] = json!("");
        node["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    });
    // Every family, the optional ones included.
    let optional = kube_node_status::config::OPTIONAL_FAMILIES.join(",");
    let mut args = vec![
        "--metric-naming",
        naming,
        "--metric-profile",
        profile,
        "--node-labels",
        "topology.kubernetes.io/zone,cloud.google.com/gke-nodepool",
        "--metrics-exporter",
        "prometheus,otlp",
        "--otlp-endpoint",
        "http://127.0.0.1:1",
        "--metric-export-interval",
        "1s",
        "--leader-election",
        "--lease-duration",
        "4s",
        "--cluster-name",
        "test",
        "--node-leases",
        "--heartbeat-stale-after",
        "1s",
    ];
    if naming == "kube-state-metrics" {
        args.extend(["--optional-families", &optional]);
    }
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &args,
        &[
            ("POD_NAME", "kns-0"),
            ("POD_NAMESPACE", "monitoring"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.namespace.name=monitoring,k8s.pod.name=kns-0",
            ),
        ],
    )
    .await;
    // One ready transition, and a watch refused once.
    assert!(api.set_condition(&n[4], "Ready", "False"));
    api.set_forbidden(true);
    api.close_watches();
    exporter
        .wait_for("a watch error", Duration::from_secs(30), |s| {
            s.iter().any(|s| s.name == "kube_node_status_watch_errors_total")
        })
        .await;
    api.set_forbidden(false);
    let samples = exporter
        .wait_for("a failed export, node readings", Duration::from_secs(60), |s| {
            s.iter()
                .any(|s| s.name == "kube_node_status_otlp_export_failures_total")
                && s.iter().any(|s| s.name.ends_with("_transitions_total"))
                && s.iter().any(|s| s.name.contains("heartbeat_last_renewal_time"))
        })
        .await;
    let mut served = Served::default();
    for s in parse(&exporter.get("/metrics").await.1)
        .into_iter()
        .chain(samples)
    {
        served.labels.extend(s.labels.keys().cloned());
        served.names.insert(s.name);
    }
    // Served only with TLS or authentication on; tls.rs and hardening.rs read them there.
    served
        .names
        .extend(crate::common::SERVED_ONLY_WHEN_ON.iter().map(|n| n.to_string()));
    served
}

/// The names and would-be names in `text`.
fn tokens(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b(k8s_[a-z0-9_]+|kube_node_[a-z0-9_]+)\b").unwrap();
    re.find_iter(text)
        .map(|m| m.as_str().to_string())
        // A prefix in prose (`k8s_node_label_`), not a name.
        .filter(|t| !t.ends_with('_'))
        .collect()
}

/// The names in `text` that are neither served nor labels, per `served`.
fn unknown(text: &str, names: &BTreeSet<String>, labels: &BTreeSet<String>) -> BTreeSet<String> {
    tokens(text)
        .into_iter()
        .filter(|t| !names.contains(t) && !labels.contains(t))
        .collect()
}

/// The expressions of the chart's rules and dashboard for `naming`.
fn chart_queries(naming: &str) -> String {
    let objects = render(&json!({
        "metricNaming": naming, "prometheusRule": {"enabled": true}, "nodeLeases": {"enabled": true},
    }));
    let mut out = String::new();
    for o in &objects {
        if o["kind"] == "PrometheusRule" {
            for group in o["spec"]["groups"].as_array().into_iter().flatten() {
                for rule in group["rules"].as_array().into_iter().flatten() {
                    out.push_str(rule["expr"].as_str().unwrap_or_default());
                    out.push('\n');
                }
            }
        }
    }
    for (_, queries) in dashboard(naming) {
        for q in queries {
            out.push_str(&q);
            out.push('\n');
        }
    }
    assert!(out.lines().count() > 15, "rules and panels: {out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_we_give_users_is_served_where_it_is_used() {
    let mut anywhere = Served::default();
    for naming in ["otel", "kube-state-metrics"] {
        let full = served(naming, "full").await;
        let readiness = served(naming, "readiness").await;
        // The chart runs either profile: its rules and panels must read names both serve.
        let both: BTreeSet<String> = full.names.intersection(&readiness.names).cloned().collect();
        let labels: BTreeSet<String> = full.labels.union(&readiness.labels).cloned().collect();
        let missing = unknown(&chart_queries(naming), &both, &labels);
        assert!(
            missing.is_empty(),
            "the chart's rules or dashboard in {naming} naming read names not served in both profiles: {missing:?}"
        );
        anywhere
            .names
            .extend(full.names.into_iter().chain(readiness.names));
        anywhere.labels.extend(labels);
    }
    anywhere.names.extend(NOT_OURS.iter().map(|s| s.to_string()));
    // Counters are named without `_total` where docs give the instrument.
    let instruments: Vec<String> = anywhere
        .names
        .iter()
        .filter_map(|n| n.strip_suffix("_total").map(str::to_string))
        .collect();
    anywhere.names.extend(instruments);

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts: Vec<(String, String)> = vec![(
        "README.md".into(),
        std::fs::read_to_string(root.join("README.md")).unwrap(),
    )];
    for doc in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        if doc.path().extension().is_some_and(|e| e == "md") {
            texts.push((
                doc.path().display().to_string(),
                std::fs::read_to_string(doc.path()).unwrap(),
            ));
        }
    }
    let help = std::process::Command::new(crate::common::binary())
        .arg("--help")
        .output()
        .expect("--help runs");
    texts.push((
        "--help".into(),
        String::from_utf8_lossy(&help.stdout).into_owned(),
    ));
    // kube-state-metrics families the parity table documents as absent are
    // named there on purpose (tests/it/ksm.rs checks that none is served).
    let absent: BTreeSet<String> = crate::ksm::parity()
        .into_iter()
        .filter(|(_, verdict)| verdict == "absent")
        .map(|(family, _)| family)
        .collect();
    for (what, text) in texts {
        let missing: BTreeSet<String> = unknown(&text, &anywhere.names, &anywhere.labels)
            .into_iter()
            .filter(|n| !(what.ends_with("docs/metrics.md") && absent.contains(n)))
            .collect();
        assert!(
            missing.is_empty(),
            "{what} names what nothing serves: {missing:?}"
        );
    }
}

//! What the chart's monitors tell a scraper, as a Prometheus scrape config:
//! the Prometheus Operator's ServiceMonitor and PodMonitor, and Google
//! Managed Prometheus's PodMonitoring (whose collector is Prometheus).

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::{chart::find, otlp::TestCa};

/// The Secret data a path needs: a scrape token, a serving certificate.
pub struct Secrets {
    /// The shared scrape token (metricsAuth.secretName).
    pub token: String,
    /// The serving certificate's CA and pair.
    pub ca: TestCa,
    /// The chart's scraper service account's token (metricsAuth.kubernetes).
    pub scraper_token: String,
}

/// The Service's name: the ServiceMonitor's job, the serving certificate's name.
pub fn service_name(objects: &[Value]) -> String {
    find(objects, "Service")
        .and_then(|s| s["metadata"]["name"].as_str())
        .expect("a Service")
        .to_string()
}

/// A monitor's relabel configs in Prometheus' own spelling.
fn relabelings(list: &Value) -> Value {
    let key = |k: &str| match k {
        "sourceLabels" => "source_labels".to_string(),
        "targetLabel" => "target_label".to_string(),
        other => other.to_string(),
    };
    Value::Array(
        list.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                Value::Object(
                    r.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (key(k), v.clone()))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// Prometheus' scrape config for what the rendered monitor says: the
/// Prometheus Operator's ServiceMonitor or PodMonitor, or GMP's PodMonitoring
/// (its collector is Prometheus), each replica a target with the labels that
/// scraper gives it.
pub fn scrape_configs(
    objects: &[Value],
    replicas: &[SocketAddr],
    secrets: &Secrets,
    dir: &std::path::Path,
) -> String {
    let (monitor, endpoint, job) = if let Some(m) = find(objects, "ServiceMonitor") {
        (m, &m["spec"]["endpoints"][0], service_name(objects))
    } else if let Some(m) = find(objects, "PodMonitor") {
        let job = format!("monitoring/{}", m["metadata"]["name"].as_str().unwrap());
        (m, &m["spec"]["podMetricsEndpoints"][0], job)
    } else {
        let m = find(objects, "PodMonitoring").expect("a monitor");
        (
            m,
            &m["spec"]["endpoints"][0],
            m["metadata"]["name"].as_str().unwrap().to_string(),
        )
    };
    let gmp = monitor["kind"] == "PodMonitoring";
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["port"], "metrics");
    let mut config = json!({
        "job_name": job,
        "scheme": endpoint["scheme"].as_str().unwrap_or("http"),
        "honor_labels": endpoint["honorLabels"].as_bool().unwrap_or(false),
        "metric_relabel_configs": relabelings(&endpoint["metricRelabelings"]),
        "relabel_configs": relabelings(&endpoint["relabelings"]),
    });
    let tls = if gmp {
        &endpoint["tls"]
    } else {
        &endpoint["tlsConfig"]
    };
    if tls.is_object() {
        // The CA comes from the Secret the monitor names, which the chart must have made readable.
        assert!(tls["ca"]["secret"]["key"] == "ca.crt", "{tls}");
        let ca = dir.join("scraper-ca.pem");
        std::fs::write(&ca, secrets.ca.ca_pem()).unwrap();
        config["tls_config"] = json!({"ca_file": ca, "server_name": tls["serverName"]});
    }
    if let Some(credentials) = endpoint["authorization"]["credentials"].as_object() {
        let secret = if gmp {
            &credentials["secret"]
        } else {
            &Value::Object(credentials.clone())
        };
        let name = secret["name"].as_str().unwrap();
        let token = if name.ends_with("-scraper") {
            &secrets.scraper_token
        } else {
            &secrets.token
        };
        let file = dir.join("scraper-token");
        std::fs::write(&file, token).unwrap();
        config["authorization"] = json!({"type": "Bearer", "credentials_file": file});
    }
    let service = service_name(objects);
    config["static_configs"] = replicas
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let pod = format!("kns-{i}");
            let labels = if gmp {
                json!({"namespace": "monitoring", "instance": format!("{pod}:metrics"), "cluster": "test"})
            } else {
                json!({"namespace": "monitoring", "pod": pod, "service": service, "endpoint": "metrics", "container": "kube-node-status"})
            };
            json!({"targets": [addr.to_string()], "labels": labels})
        })
        .collect();
    let yaml = serde_yaml_ng::to_string(&json!([config])).unwrap();
    // scrape_configs items, as Prometheus::start_with takes them.
    yaml
}

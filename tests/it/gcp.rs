//! `--otlp-auth google`, tried as a user would on GKE and elsewhere, with a
//! fake metadata server and token endpoint standing in for Google and a TLS
//! OTLP receiver standing in for the Telemetry API.

use crate::common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use common::{Exporter, Sample, fake_api, free_port, gcp::FakeGoogle, otlp, run_to_exit, value};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    metrics::v1::{Metric, metric},
};

/// A TLS receiver that, like the Telemetry API, takes at most 200 points per request.
async fn telemetry_api(check: otlp::AuthCheck) -> (otlp::Receiver, otlp::TestCa) {
    let ca = otlp::TestCa::new();
    let receiver = otlp::Receiver::start(Some(ca.server_pair())).await;
    receiver.received.max_points.store(200, Ordering::Release);
    assert!(receiver.received.auth.set(check).is_ok());
    (receiver, ca)
}

fn bearer(md: &tonic::metadata::MetadataMap) -> Option<&str> {
    md.get("authorization").and_then(|v| v.to_str().ok())
}

/// Waits for `n` accepted exports, showing what was refused and the logs if they do not come.
async fn wait_accepted(receiver: &otlp::Receiver, exporter: &Exporter, n: usize) {
    let start = Instant::now();
    while receiver.exports() < n {
        if start.elapsed() > Duration::from_secs(20) {
            let rejected = receiver.received.rejected.lock().unwrap().clone();
            panic!(
                "{} exports accepted; refused: {:?}\n{}",
                receiver.exports(),
                &rejected[..rejected.len().min(3)],
                exporter.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails with what the receiver refused, and the logs, if it refused anything.
fn assert_none_refused(receiver: &otlp::Receiver, exporter: &Exporter) {
    let rejected = receiver.received.rejected.lock().unwrap().clone();
    assert!(rejected.is_empty(), "refused: {rejected:?}\n{}", exporter.logs());
}

/// Requests so far, in arrival order.
fn requests(receiver: &otlp::Receiver) -> Vec<ExportMetricsServiceRequest> {
    receiver
        .received
        .metrics
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r)| r.clone())
        .collect()
}

/// A point keyed like a Prometheus sample: labels and the value's text.
type Point = (BTreeMap<String, String>, String);

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn number(v: f64) -> String {
    format!("{v}")
}

/// Every point of the last complete collection (the one before the latest
/// timestamp of each metric; exports of one collection finish before the next
/// starts), keyed like a Prometheus sample, self-telemetry left out since it
/// moves between a collection and a scrape.
/// Every metric of `requests` but the self-telemetry, which moves between a
/// collection and a scrape.
fn reading_metrics(requests: &[ExportMetricsServiceRequest]) -> impl Iterator<Item = &Metric> {
    requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| !m.name.starts_with("kube_node_status."))
}

fn last_complete_collection(requests: &[ExportMetricsServiceRequest]) -> BTreeMap<String, BTreeSet<Point>> {
    let mut by_metric: BTreeMap<String, BTreeMap<u64, Vec<Point>>> = BTreeMap::new();
    for m in reading_metrics(requests) {
        for (t, attrs, v) in points(m) {
            by_metric
                .entry(m.name.clone())
                .or_default()
                .entry(t)
                .or_default()
                .push((attrs, v));
        }
    }
    by_metric
        .into_iter()
        .map(|(name, by_time)| {
            let complete = by_time
                .into_iter()
                .rev()
                .nth(1)
                .unwrap_or_else(|| panic!("fewer than two collections of {name}"));
            (name, complete.1.into_iter().collect())
        })
        .collect()
}

/// The fewest collections any per-node or cluster family arrived in (0 before any).
fn collections(requests: &[ExportMetricsServiceRequest]) -> usize {
    let mut times: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for m in reading_metrics(requests) {
        times
            .entry(&m.name)
            .or_default()
            .extend(points(m).into_iter().map(|(t, ..)| t));
    }
    times.values().map(BTreeSet::len).min().unwrap_or(0)
}

fn points(m: &Metric) -> Vec<(u64, BTreeMap<String, String>, String)> {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    let dps = match &m.data {
        Some(metric::Data::Gauge(g)) => &g.data_points,
        Some(metric::Data::Sum(s)) => &s.data_points,
        _ => return Vec::new(),
    };
    dps.iter()
        .map(|dp| {
            // The node's uid is on every per-node point; /metrics keeps it on the info series only.
            let named = dp.attributes.iter().any(|kv| kv.key == "k8s.node.name");
            let uid = dp.attributes.iter().any(|kv| kv.key == "k8s.node.uid");
            assert_eq!(named, uid, "{}: k8s.node.uid on every per-node point", m.name);
            let attrs = dp
                .attributes
                .iter()
                .filter(|kv| kv.key != "k8s.node.uid" || m.name == "k8s.node.info")
                .map(|kv| (sanitize(&kv.key), otlp::any_value(&kv.value)))
                .collect();
            let v = match dp.value {
                Some(Value::AsDouble(d)) => d,
                Some(Value::AsInt(i)) => i as f64,
                None => f64::NAN,
            };
            (dp.time_unix_nano, attrs, number(v))
        })
        .collect()
}

/// The same metric on `/metrics`: its name with the exporter's unit and `_total` suffixes.
fn scraped(samples: &[Sample], otel_name: &str) -> (String, BTreeSet<Point>) {
    let base = sanitize(otel_name);
    let names: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    let candidates: Vec<String> = ["", "_seconds", "_bytes", "_ratio", "_total", "_seconds_total"]
        .iter()
        .map(|suffix| format!("{base}{suffix}"))
        .filter(|n| names.contains(n.as_str()))
        .collect();
    assert_eq!(candidates.len(), 1, "{otel_name} on /metrics as {candidates:?}");
    let name = candidates[0].clone();
    let set = samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| (s.labels.clone(), number(s.value)))
        .collect();
    (name, set)
}

/// Asserts the last complete OTLP collection is exactly what `/metrics` shows.
fn assert_collection_is_the_scrape(requests: &[ExportMetricsServiceRequest], samples: &[Sample]) -> usize {
    let collection = last_complete_collection(requests);
    assert!(
        collection.len() >= 10,
        "only {} node metrics exported",
        collection.len()
    );
    let mut total = 0;
    for (name, points) in &collection {
        let (prom, on_metrics) = scraped(samples, name);
        assert_eq!(
            points.len(),
            on_metrics.len(),
            "{name}: {} points exported, {} series of {prom} on /metrics",
            points.len(),
            on_metrics.len()
        );
        assert!(points == &on_metrics, "{name} differs from {prom}");
        total += points.len();
    }
    total
}

/// Environment for the exporter to reach `receiver` over TLS trusting `ca`.
fn tls_env(receiver: &otlp::Receiver, ca_file: &std::path::Path) -> Vec<(String, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("https://localhost:{}", receiver.addr.port()),
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE".into(),
            ca_file.display().to_string(),
        ),
    ]
}

/// Outside GCP (no metadata server answers), with a credentials file, exporting every 500 ms.
fn off_gcp_env(
    receiver: &otlp::Receiver,
    ca_file: &std::path::Path,
    credentials: &std::path::Path,
) -> Vec<(String, String)> {
    let mut env = tls_env(receiver, ca_file);
    env.extend([
        (
            "GOOGLE_APPLICATION_CREDENTIALS".to_string(),
            credentials.display().to_string(),
        ),
        ("GCE_METADATA_HOST".into(), format!("127.0.0.1:{}", free_port())),
        ("OTEL_METRIC_EXPORT_INTERVAL".into(), "1000".into()),
    ]);
    env
}

/// The Telemetry API stand-in, accepting only tokens `google` issued and that have not expired.
async fn telemetry_api_checking_tokens(google: &FakeGoogle) -> (otlp::Receiver, otlp::TestCa) {
    let g = google.state.clone();
    telemetry_api(Arc::new(move |md| {
        g.check(bearer(md)).map_err(tonic::Status::unauthenticated)
    }))
    .await
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_gke_a_5000_node_cluster_arrives_complete_with_fresh_tokens_and_the_resource_it_needs() {
    // Tokens live 30 s; google-cloud-auth renews a token that lives less than
    // its 240 s slack every 10 s, so several are issued in the test's span. With
    // 12 s (as here before) only 2 s separated the renewal from the expiry:
    // on a busy machine the renewal's own round trip, and a request queued
    // behind others, outlasted that, and the receiver saw "expired token".
    // Real tokens live an hour and are renewed 4 minutes early; the margin
    // here (20 s) is as large, relative to what a busy machine delays.
    let google = FakeGoogle::start(Duration::from_secs(30)).await;
    let (receiver, ca) = telemetry_api_checking_tokens(&google).await;
    receiver.received.fail_next.store(1, Ordering::Release);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let api = fake_api(5000).await;
    let mut env = tls_env(&receiver, &ca_file);
    env.extend([
        ("GCE_METADATA_HOST".to_string(), google.host()),
        ("OTEL_METRIC_EXPORT_INTERVAL".into(), "5000".into()),
        ("POD_NAME".into(), "kns-7d9f-abcde".into()),
        ("POD_NAMESPACE".into(), "monitoring".into()),
    ]);
    let exporter = Exporter::start(
        &api.kubeconfig(),
        &[
            "--otlp-auth",
            "google",
            "--metrics-exporter",
            "otlp,prometheus",
            // Label keys hold `/` and `-`, which the API refuses in attribute keys.
            "--node-labels",
            "topology.kubernetes.io/zone,cloud.google.com/gke-nodepool",
        ],
        &refs(&env),
    );
    exporter
        .wait_status("/readyz", 200, Duration::from_secs(60))
        .await;
    let started = Instant::now();
    // Long enough for two token renewals, and until every family arrived in
    // three collections (so the one before the newest is complete), however
    // slowly this machine writes them.
    tokio::time::sleep(Duration::from_secs(26)).await;
    while collections(&requests(&receiver)) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{}",
            exporter.logs()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let samples = exporter.scrape().await;
    let requests = requests(&receiver);

    let rejected = receiver.received.rejected.lock().unwrap().clone();
    assert!(
        rejected.is_empty(),
        "the receiver refused: {:?}",
        &rejected[..rejected.len().min(5)]
    );
    for req in &requests {
        assert!(otlp::request_points(req) <= 200);
        let resource = otlp::resource(req);
        for (key, want) in [
            ("gcp.project_id", "kns-test-project"),
            ("cloud.availability_zone", "europe-west1-b"),
            ("k8s.cluster.name", "kns-test-cluster"),
            ("k8s.namespace.name", "monitoring"),
            ("service.name", "kube-node-status"),
            ("service.instance.id", "kns-7d9f-abcde"),
        ] {
            assert_eq!(resource.get(key).map(String::as_str), Some(want), "{key}");
        }
    }
    let exported = assert_collection_is_the_scrape(&requests, &samples);
    assert!(exported > 70_000, "{exported} points in a collection");
    assert!(
        google.state.tokens() >= 3,
        "{} tokens issued: no refresh",
        google.state.tokens()
    );
    let tokens_used: BTreeSet<String> = receiver
        .received
        .headers
        .lock()
        .unwrap()
        .iter()
        .filter_map(|h| h.get("authorization").cloned())
        .collect();
    assert!(
        tokens_used.len() >= 3,
        "requests carried {} distinct tokens",
        tokens_used.len()
    );
    assert_eq!(
        receiver.received.refused.load(Ordering::Acquire),
        1,
        "UNAVAILABLE was sent once"
    );
    assert_eq!(
        value(&samples, "kube_node_status_otlp_export_failures_total", &[]),
        Some(0.0),
        "the refused request was retried, and no export failed across token renewals: {}",
        exporter.logs()
    );
    let logs = exporter.logs();
    assert!(logs.contains("exporting to Google's Telemetry API"), "{logs}");
    assert!(logs.contains("the metadata server at"), "{logs}");
}

/// A locally generated RSA key as a service-account key file, and its public key (PKCS#1 DER).
fn service_account_key(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let pem = dir.join("sa.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .status()
        .expect("openssl is installed (scripts/install-test-peers)");
    assert!(status.success());
    let public = std::process::Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(public.status.success());
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "kns-key-project",
        "private_key_id": "kid-1",
        "private_key": std::fs::read_to_string(&pem).unwrap(),
        "client_email": "kube-node-status@kns-key-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let path = dir.join("key.json");
    std::fs::write(&path, key.to_string()).unwrap();
    (path, public.stdout)
}

fn b64url(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

/// Verifies a self-signed service-account JWT (AIP-4111) against the key's public half.
fn verify_jwt(token: &str, public_key: &[u8]) -> Result<serde_json::Value, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("not a JWT".into());
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(format!("{h}.{c}").as_bytes(), &b64url(sig))
        .map_err(|_| "bad signature".to_string())?;
    let header: serde_json::Value = serde_json::from_slice(&b64url(h)).map_err(|e| e.to_string())?;
    if header["kid"] != "kid-1" || header["alg"] != "RS256" {
        return Err(format!("header {header}"));
    }
    let claims: serde_json::Value = serde_json::from_slice(&b64url(c)).map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if claims["iss"] != "kube-node-status@kns-key-project.iam.gserviceaccount.com"
        || claims["exp"].as_i64().is_none_or(|exp| exp <= now)
    {
        return Err(format!("claims {claims}"));
    }
    Ok(claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_key_file_signs_tokens_the_receiver_can_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public_key) = service_account_key(dir.path());
    let scopes = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let seen = scopes.clone();
    let (receiver, ca) = telemetry_api(Arc::new(move |md| {
        let token = bearer(md)
            .and_then(|b| b.strip_prefix("Bearer "))
            .ok_or_else(|| tonic::Status::unauthenticated("no bearer"))?;
        let claims = verify_jwt(token, &public_key).map_err(tonic::Status::unauthenticated)?;
        seen.lock().unwrap().insert(claims["scope"].to_string());
        Ok(())
    }))
    .await;
    let ca_file = ca.write_ca(dir.path());
    let api = fake_api(20).await;
    let env = off_gcp_env(&receiver, &ca_file, &key_file);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--otlp-auth",
            "google",
            "--cluster-location",
            "us-central1",
            "--cluster-name",
            "laptop",
        ],
        &refs(&env),
    )
    .await;
    wait_accepted(&receiver, &exporter, 4).await;
    assert_none_refused(&receiver, &exporter);
    let resource = otlp::resource(&receiver.latest().unwrap());
    // The project of the key file; the region from the flag.
    assert_eq!(
        resource.get("gcp.project_id").map(String::as_str),
        Some("kns-key-project")
    );
    assert_eq!(
        resource.get("cloud.region").map(String::as_str),
        Some("us-central1")
    );
    let scopes = scopes.lock().unwrap().clone();
    assert!(
        scopes
            .iter()
            .all(|s| s.contains("https://www.googleapis.com/auth/cloud-platform")),
        "{scopes:?}"
    );
    assert!(exporter.logs().contains("service_account credentials from"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_user_credentials_use_the_token_endpoint_and_bill_the_quota_project() {
    let google = FakeGoogle::start(Duration::from_secs(3600)).await;
    let g = google.state.clone();
    let (receiver, ca) = telemetry_api(Arc::new(move |md| {
        g.check(bearer(md)).map_err(tonic::Status::unauthenticated)?;
        match md.get("x-goog-user-project").and_then(|v| v.to_str().ok()) {
            Some("billing-project") => Ok(()),
            other => Err(tonic::Status::permission_denied(format!(
                "quota project {other:?}"
            ))),
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let adc = dir.path().join("adc.json");
    std::fs::write(
        &adc,
        serde_json::json!({
            "type": "authorized_user",
            "client_id": "cid.apps.googleusercontent.com",
            "client_secret": "secret",
            "refresh_token": google.state.refresh_token,
            "quota_project_id": "billing-project",
            "token_uri": format!("http://{}/token", google.addr),
        })
        .to_string(),
    )
    .unwrap();
    let api = fake_api(5).await;
    let env = off_gcp_env(&receiver, &ca_file, &adc);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--otlp-auth",
            "google",
            "--gcp-project-id",
            "metrics-project",
            "--cluster-location",
            "us-east1-c",
            "--cluster-name",
            "dev",
        ],
        &refs(&env),
    )
    .await;
    wait_accepted(&receiver, &exporter, 3).await;
    assert_none_refused(&receiver, &exporter);
    assert!(google.state.token_requests.load(Ordering::Acquire) >= 1);
    let resource = otlp::resource(&receiver.latest().unwrap());
    // The flag wins over the credentials' quota project.
    assert_eq!(
        resource.get("gcp.project_id").map(String::as_str),
        Some("metrics-project")
    );
    assert_eq!(
        resource.get("cloud.availability_zone").map(String::as_str),
        Some("us-east1-c")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_is_one_actionable_line_counted_without_a_hot_loop() {
    let google = FakeGoogle::start(Duration::from_secs(3600)).await;
    let (receiver, ca) = telemetry_api_checking_tokens(&google).await;
    receiver.received.deny.store(true, Ordering::Release);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let api = fake_api(200).await;
    let mut env = tls_env(&receiver, &ca_file);
    env.extend([
        ("GCE_METADATA_HOST".to_string(), google.host()),
        ("OTEL_METRIC_EXPORT_INTERVAL".into(), "1000".into()),
    ]);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--otlp-auth", "google", "--metrics-exporter", "otlp,prometheus"],
        &refs(&env),
    )
    .await;
    let samples = exporter
        .wait_for("several refused collections", Duration::from_secs(20), |s| {
            value(s, "kube_node_status_otlp_export_denied_total", &[]).is_some_and(|n| n >= 4.0)
        })
        .await;
    let denied = value(&samples, "kube_node_status_otlp_export_denied_total", &[]).unwrap();
    let failures = value(&samples, "kube_node_status_otlp_export_failures_total", &[]).unwrap();
    assert!(failures >= denied, "{failures} failures, {denied} denied");
    // A 200-node collection is ~15 requests; after a refusal the rest are skipped.
    let sent = receiver.received.denied.load(Ordering::Acquire) as f64;
    assert!(
        sent <= (denied + 1.0) * 4.0,
        "{sent} requests for {denied} refused collections"
    );
    let logs = exporter.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("PermissionDenied")).collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(lines[0].contains("roles/telemetry.metricsWriter"), "{}", lines[0]);
    assert!(lines[0].contains("gcloud services enable telemetry.googleapis.com --project kns-test-project"));
    // Still serving.
    assert_eq!(exporter.get("/readyz").await.0, 200);
    assert!(
        exporter
            .scrape()
            .await
            .iter()
            .any(|s| s.name == "k8s_node_condition_status")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_gcp_the_user_is_told_how_to_configure_it() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = run_to_exit(
        &["--otlp-auth", "google", "--kubeconfig", "/dev/null"],
        &[("GCE_METADATA_HOST", &nowhere), ("HOME", "/nonexistent")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("project is unknown"), "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(stderr.contains("--gcp-project-id"), "{stderr}");

    // With project and location given but no credentials anywhere, it keeps
    // serving and says once how to provide credentials.
    let api = fake_api(3).await;
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--otlp-auth",
            "google",
            "--gcp-project-id",
            "p",
            "--cluster-location",
            "us-central1",
            "--metrics-exporter",
            "otlp,prometheus",
        ],
        &[
            ("GCE_METADATA_HOST", &nowhere),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    exporter
        .wait_for("refusals without a token", Duration::from_secs(30), |s| {
            value(s, "kube_node_status_otlp_export_denied_total", &[]).is_some_and(|n| n >= 2.0)
        })
        .await;
    let logs = exporter.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("GOOGLE_APPLICATION_CREDENTIALS"))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(
        lines[0].contains("gcloud auth application-default login"),
        "{}",
        lines[0]
    );
}

#[test]
fn an_unusable_credentials_file_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("key.json");
    std::fs::write(&bad, r#"{"type": "service_account"}"#).unwrap();
    let (code, stderr) = run_to_exit(
        &[
            "--otlp-auth",
            "google",
            "--gcp-project-id",
            "p",
            "--cluster-location",
            "us-central1",
            "--cluster-name",
            "c",
            "--kubeconfig",
            "/dev/null",
        ],
        &[("GOOGLE_APPLICATION_CREDENTIALS", bad.to_str().unwrap())],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot use service_account credentials from"),
        "{stderr}"
    );
}

#[test]
fn google_mode_refuses_requests_larger_than_the_api_takes() {
    let (code, stderr) = run_to_exit(
        &["--otlp-auth", "google", "--otlp-max-points-per-request", "500"],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("at most 200 points"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_receiver_refuses_what_the_telemetry_api_refuses() {
    use opentelemetry_proto::tonic::{
        collector::metrics::v1::metrics_service_client::MetricsServiceClient,
        common::v1::{AnyValue, KeyValue, any_value::Value},
        metrics::v1::{Gauge, NumberDataPoint, ResourceMetrics, ScopeMetrics},
        resource::v1::Resource,
    };
    let receiver = otlp::Receiver::start(None).await;
    receiver.received.max_points.store(200, Ordering::Release);
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let request = |instance: &str, points: usize, attr: &str| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.instance.id", instance)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "m".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: (0..points)
                            .map(|i| NumberDataPoint {
                                attributes: vec![kv(attr, &i.to_string())],
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut client = MetricsServiceClient::connect(format!("http://{}", receiver.addr))
        .await
        .unwrap();
    assert!(
        client
            .export(request("pod-1", 200, "k8s.node.name"))
            .await
            .is_ok()
    );
    for (bad, why) in [
        (request("", 1, "k8s.node.name"), "service.instance.id"),
        (request("pod-1", 201, "k8s.node.name"), "201 points"),
        (request("pod-1", 1, "cluster"), "reserved"),
        (
            request("pod-1", 1, "k8s.node.label.topology.kubernetes.io/zone"),
            "invalid attribute key",
        ),
    ] {
        let status = client.export(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(why), "{}", status.message());
    }
}

/// Runs the exporter as the chart renders it for `values` (exactly its args
/// and env, plus what points it at the stand-ins: the Telemetry API's
/// endpoint and CA, the metadata server), and waits until every node's
/// readiness arrived at the Telemetry API stand-in, nothing refused.
async fn as_the_chart_installs_it(values: serde_json::Value, google_mode: bool) {
    let google = FakeGoogle::start(Duration::from_secs(3600)).await;
    // The sidecar, not the exporter, authenticates to Google there.
    let (receiver, ca) = if google_mode {
        telemetry_api_checking_tokens(&google).await
    } else {
        telemetry_api(Arc::new(|_| Ok(()))).await
    };
    let objects = common::chart::render(&values);
    let (container, _) = common::chart::exporter_container(&objects);
    let args = common::chart::args_for_loopback(&container);
    assert_eq!(
        args.contains(&"--otlp-auth=google".to_string()),
        google_mode,
        "{args:?}"
    );
    let mut env = common::chart::pod_env(&container, "kns-0");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let rendered_endpoint = env
        .iter()
        .find(|(k, _)| k == "OTEL_EXPORTER_OTLP_ENDPOINT")
        .map(|(_, v)| v.clone());
    // The sidecar's own address stands for the sidecar, which forwards
    // unchanged (otlp receiver → otlp/telemetry-api exporter); in Google
    // mode the exporter picks Google's endpoint itself.
    assert_eq!(
        rendered_endpoint.as_deref(),
        (!google_mode).then_some("http://localhost:4317"),
        "{env:?}"
    );
    env.retain(|(k, _)| k != "OTEL_EXPORTER_OTLP_ENDPOINT");
    env.extend(tls_env(&receiver, &ca_file));
    env.push(("GCE_METADATA_HOST".into(), google.host()));
    let api = fake_api(20).await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&api.kubeconfig(), &args, &refs(&env));
    let start = Instant::now();
    loop {
        let requests = requests(&receiver);
        let ready: BTreeSet<String> = reading_metrics(&requests)
            .filter(|m| m.name == "k8s.node.ready")
            .flat_map(points)
            .filter_map(|(_, attrs, _)| attrs.get("k8s_node_name").cloned())
            .collect();
        assert_none_refused(&receiver, &exporter);
        if ready.len() == 20 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} nodes arrived\n{}",
            ready.len(),
            exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// (e) Straight to the Telemetry API, as the chart installs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_direct_telemetry_api_as_the_chart_installs_it() {
    as_the_chart_installs_it(
        serde_json::json!({
            "metricsExporter": "prometheus,otlp", "otlp": {"auth": "google", "exportInterval": "1s"},
            "clusterName": "kns-test-cluster", "clusterLocation": "europe-west1-b", "gcpProjectId": "kns-test-project",
            "nodeLabels": ["topology.kubernetes.io/zone", "cloud.google.com/gke-nodepool"],
        }),
        true,
    )
    .await;
}

/// (d) Through the collector sidecar that forwards to the Telemetry API: what
/// the exporter sends must be what that API takes (its attribute-key rules).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_sidecar_to_the_telemetry_api_as_the_chart_installs_it() {
    as_the_chart_installs_it(
        serde_json::json!({
            "collector": {"enabled": true, "config": "sidecar-telemetry-api.yaml"},
            "otlp": {"exportInterval": "1s"},
            "nodeLabels": ["topology.kubernetes.io/zone", "cloud.google.com/gke-nodepool"],
        }),
        false,
    )
    .await;
}

//! Scrape authentication with a token file, and credentials kept out of logs,
//! against the real binary and the fake API server (which requires its own token).

use crate::common;

use std::time::Duration;

use common::{Exporter, http_get, run_to_exit};
use kube_node_status::fake::{FakeApiServer, FakeOptions};

const KUBE_TOKEN: &str = "kube-api-token-7f3a9c";
const SCRAPE_TOKEN: &str = "scrape-token-b81e24";
const ROTATED_TOKEN: &str = "scrape-token-rotated-5d0c";
const OTLP_SECRET: &str = "otlp-header-secret-92ab";

#[tokio::test]
async fn scrapes_need_the_token_and_no_credential_reaches_the_logs() {
    let api = FakeApiServer::start(FakeOptions {
        nodes: 3,
        token: Some(KUBE_TOKEN.to_string()),
        bookmark_interval: Duration::from_millis(500),
        ..Default::default()
    })
    .await
    .expect("fake API server starts");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{SCRAPE_TOKEN}\n")).unwrap();
    let headers = format!("authorization=Bearer {OTLP_SECRET}");
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--auth-token-file", token_file.to_str().unwrap()],
        &[
            // As verbose as an operator would turn it when debugging.
            ("RUST_LOG", "debug"),
            ("OTEL_METRICS_EXPORTER", "prometheus,otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_HEADERS", &headers),
            ("KNS_METRIC_EXPORT_INTERVAL", "1s"),
        ],
    )
    .await;
    let get = |headers: Vec<(&'static str, String)>| {
        let addr = exporter.addr;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http_get(addr, "/metrics", &h).await.expect("answers").0
        }
    };
    let bearer = |t: &str| vec![("Authorization", format!("Bearer {t}"))];

    assert_eq!(get(vec![]).await, 401, "no token");
    assert_eq!(get(bearer("wrong")).await, 401, "wrong token");
    assert_eq!(
        get(vec![("Authorization", format!("Basic {SCRAPE_TOKEN}"))]).await,
        401
    );
    assert_eq!(get(bearer(SCRAPE_TOKEN)).await, 200, "the token");
    // Probes carry no token.
    assert_eq!(exporter.get("/readyz").await.0, 200);
    assert_eq!(exporter.get("/healthz").await.0, 200);

    // A file rewritten in place: the new token is taken once the file has
    // been left alone for a second (never half written), the old one refused.
    std::fs::write(&token_file, ROTATED_TOKEN).unwrap();
    let start = std::time::Instant::now();
    while get(bearer(ROTATED_TOKEN)).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rotated token never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(bearer(SCRAPE_TOKEN)).await, 401, "old token after rotation");

    // Let a few OTLP exports fail against the closed port, so their errors are logged too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = exporter.logs();
    assert!(
        logs.contains("refused"),
        "refusals are logged (at debug):\n{logs}"
    );
    for secret in [KUBE_TOKEN, SCRAPE_TOKEN, ROTATED_TOKEN, OTLP_SECRET] {
        assert!(!logs.contains(secret), "{secret} appears in the logs:\n{logs}");
    }
}

#[test]
fn an_unusable_token_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (path, says) in [(dir.path().join("missing"), "missing"), (empty.clone(), "empty")] {
        let (code, stderr) = run_to_exit(&["--auth-token-file", path.to_str().unwrap()], &[]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("--auth-token-file") && stderr.contains(says),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    let (code, stderr) = run_to_exit(
        &[],
        &[("KNS_AUTH_TOKEN_FILE", dir.path().join("nope").to_str().unwrap())],
    );
    assert_eq!(code, Some(2), "{stderr}");
}

const READER_TOKEN: &str = "sa-token-prometheus-31c7";
const OTHER_TOKEN: &str = "sa-token-some-app-6e02";

/// --auth-kubernetes: a token is good if a TokenReview says whose it is and a
/// SubjectAccessReview lets that user get /metrics, as with kube-rbac-proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_are_reviewed_with_the_kubernetes_api() {
    let api = FakeApiServer::start(FakeOptions {
        nodes: 3,
        token: Some(KUBE_TOKEN.to_string()),
        ..Default::default()
    })
    .await
    .expect("fake API server starts");
    api.reviews()
        .add_token(READER_TOKEN, "system:serviceaccount:monitoring:prometheus");
    api.reviews()
        .add_token(OTHER_TOKEN, "system:serviceaccount:default:some-app");
    api.reviews()
        .grant_metrics("system:serviceaccount:monitoring:prometheus");
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--metrics-exporter", "prometheus", "--auth-kubernetes"],
        &[("RUST_LOG", "debug")],
    )
    .await;
    let get = |token: Option<&str>| {
        let (addr, header) = (exporter.addr, token.map(|t| format!("Bearer {t}")));
        async move {
            let h: Vec<(&str, &str)> = header.iter().map(|v| ("Authorization", v.as_str())).collect();
            http_get(addr, "/metrics", &h).await.expect("answers").0
        }
    };
    assert_eq!(get(None).await, 401, "no token");
    assert_eq!(get(Some("not-a-token")).await, 401, "a token nobody knows");
    assert_eq!(
        get(Some(OTHER_TOKEN)).await,
        403,
        "a user without get on /metrics"
    );
    assert_eq!(get(Some(READER_TOKEN)).await, 200, "a user with it");
    // Answers are cached: more scrapes do not cost more reviews.
    let reviews = api.reviews().count();
    for _ in 0..5 {
        assert_eq!(get(Some(READER_TOKEN)).await, 200);
        assert_eq!(get(Some(OTHER_TOKEN)).await, 403);
    }
    assert_eq!(api.reviews().count(), reviews, "cached");
    // The API refusing the exporter (say its RBAC for reviews is gone) fails closed, with 503.
    api.set_forbidden(true);
    assert_eq!(get(Some("another-unknown-token")).await, 503);
    api.set_forbidden(false);
    assert_eq!(exporter.get("/readyz").await.0, 200, "probes need no token");
    let logs = exporter.logs();
    assert!(logs.contains("cannot review scrape tokens"), "{logs}");
    for secret in [KUBE_TOKEN, READER_TOKEN, OTHER_TOKEN] {
        assert!(!logs.contains(secret), "{secret} appears in the logs:\n{logs}");
    }
}

#[test]
fn token_file_and_kubernetes_review_are_one_or_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "t").unwrap();
    let (code, stderr) = run_to_exit(
        &["--auth-token-file", file.to_str().unwrap(), "--auth-kubernetes"],
        &[("KUBECONFIG", "/nonexistent")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("choose one"), "{stderr}");
}

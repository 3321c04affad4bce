//! HTTPS on the exporter's own server: served with the given certificate,
//! which is read again when its files change; unusable files stop the start.

use crate::common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{Exporter, fake_api, run_to_exit};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// A self-signed pair for localhost that expires at midnight UTC of the day given.
fn self_signed_until(year: i32, month: u8, day: u8) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, month, day);
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// The served certificate's expiry as /metrics reports it.
async fn reported_expiry(addr: std::net::SocketAddr, trusted: &[&str]) -> Option<f64> {
    let (_, body, _) = https_get(addr, "/metrics", trusted).await.ok()?;
    common::value(
        &common::parse(&body),
        "kube_node_status_tls_certificate_expiration_timestamp_seconds",
        &[],
    )
}

/// GET `path` over TLS, trusting `trusted`: (status line, body, the certificate the server showed).
async fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    trusted: &[&str],
) -> std::io::Result<(String, String, Vec<u8>)> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in trusted {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let shown = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
        shown,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_that_is_reloaded_when_it_changes() {
    let api = fake_api(10).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (c1, k1) = self_signed_until(2030, 6, 15);
    std::fs::write(&cert, &c1).unwrap();
    std::fs::write(&key, &k1).unwrap();
    let exporter = Exporter::start(
        &api.kubeconfig(),
        &[
            "--metrics-exporter",
            "prometheus",
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let started = Instant::now();
    loop {
        if let Ok((status, _, _)) = https_get(exporter.addr, "/readyz", &[&c1]).await
            && status.contains(" 200")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never ready over HTTPS\n{}",
            exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body, shown) = https_get(exporter.addr, "/metrics", &[&c1]).await.unwrap();
    assert!(status.contains(" 200"), "{status}");
    assert!(body.contains("k8s_node_ready{"), "{body}");
    assert_eq!(
        shown,
        CertificateDer::from_pem_slice(c1.as_bytes()).unwrap().to_vec()
    );

    // Plain HTTP on the TLS port gets no metrics.
    let plain = common::http_get(exporter.addr, "/metrics", &[]).await;
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP was answered: {plain:?}"
    );

    // Its expiry is reported: 2030-06-15T00:00:00Z.
    assert_eq!(
        reported_expiry(exporter.addr, &[&c1]).await,
        Some(1_907_712_000.0)
    );

    // A rotated pair is served to new connections within a few seconds.
    let (c2, k2) = self_signed_until(2031, 1, 1);
    std::fs::write(&key, &k2).unwrap();
    std::fs::write(&cert, &c2).unwrap();
    let want = CertificateDer::from_pem_slice(c2.as_bytes()).unwrap().to_vec();
    let rotated = Instant::now();
    loop {
        let (status, _, shown) = https_get(exporter.addr, "/healthz", &[&c1, &c2]).await.unwrap();
        assert!(status.contains(" 200"), "{status}");
        if shown == want {
            break;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(30),
            "the new certificate was not served\n{}",
            exporter.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exporter.logs().contains("TLS certificate reloaded"));
    assert_eq!(
        reported_expiry(exporter.addr, &[&c2]).await,
        Some(1_924_992_000.0)
    );

    // A broken certificate file: the previous pair stays, every look is
    // counted, and the warning is logged once for the whole streak.
    let warned = |logs: &str| logs.matches("does not load").count();
    let before = warned(&exporter.logs());
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let broken = Instant::now();
    loop {
        let (_, body, shown) = https_get(exporter.addr, "/metrics", &[&c2]).await.unwrap();
        assert_eq!(shown, want, "the previous pair stays in service");
        let failures = common::value(
            &common::parse(&body),
            "kube_node_status_tls_certificate_reload_failures_total",
            &[],
        )
        .unwrap_or(0.0);
        if failures >= 3.0 {
            break;
        }
        assert!(
            broken.elapsed() < Duration::from_secs(60),
            "reload failures not counted: {failures}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        warned(&exporter.logs()) - before,
        1,
        "one warning per streak\n{}",
        exporter.logs()
    );
}

#[test]
fn unusable_tls_files_are_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (c1, _) = self_signed();
    let (_, k2) = self_signed();
    std::fs::write(&cert, &c1).unwrap();
    std::fs::write(&key, &k2).unwrap();
    for (args, want) in [
        (
            vec![
                "--tls-cert-file",
                cert.to_str().unwrap(),
                "--tls-key-file",
                key.to_str().unwrap(),
            ],
            "does not match",
        ),
        (
            vec![
                "--tls-cert-file",
                "/nonexistent.crt",
                "--tls-key-file",
                key.to_str().unwrap(),
            ],
            "/nonexistent.crt",
        ),
        (vec!["--tls-cert-file", cert.to_str().unwrap()], "--tls-key-file"),
    ] {
        let (code, stderr) = run_to_exit(&args, &[("KUBECONFIG", "/nonexistent")]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

//! A real Prometheus server (Debian `prometheus`) and promtool for the tests:
//! started on loopback, queried through its HTTP API. A missing peer fails
//! the test: run `scripts/test`.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{free_port, http_get, peer};

/// A child process killed when dropped, so a failing test leaves no peer behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encodes a query parameter.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs an instant query; the values of the result vector.
pub async fn query(prom: std::net::SocketAddr, promql: &str) -> Vec<f64> {
    query_series(prom, promql)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// Waits until `promql` returns exactly `want`.
pub async fn wait_query(prom: std::net::SocketAddr, promql: &str, want: &[f64], timeout: Duration) {
    let start = Instant::now();
    loop {
        let got = query(prom, promql).await;
        if got == want {
            return;
        }
        assert!(start.elapsed() < timeout, "{promql}: got {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Prometheus server scraping one target every second, with optional rules.
pub struct Prometheus {
    /// Its HTTP address.
    pub addr: std::net::SocketAddr,
    _process: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts it scraping `target`, with `rules` (checked by promtool first) if given.
    pub async fn start(target: std::net::SocketAddr, rules: Option<&str>) -> Prometheus {
        let scrape = format!("- job_name: kube-node-status\n  static_configs:\n  - targets: ['{target}']\n");
        Prometheus::start_with(&scrape, rules).await
    }

    /// Starts it with `scrape_configs` (YAML list items), scraping and
    /// evaluating every second, with `rules` (checked by promtool first) if given.
    pub async fn start_with(scrape_configs: &str, rules: Option<&str>) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{scrape_configs}"
        );
        if let Some(rules) = rules {
            let path = dir.path().join("rules.yml");
            std::fs::write(&path, rules).unwrap();
            let (ok, findings) = promtool(&["check", "rules", path.to_str().unwrap()], "");
            assert!(ok, "promtool check rules:\n{findings}");
            config.push_str(&format!("rule_files: ['{}']\n", path.display()));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let process = KillOnDrop(
            Command::new(peer("prometheus"))
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("prometheus starts"),
        );
        // Ready before the first query, so that every query error after it is a failure.
        let start = Instant::now();
        while !matches!(http_get(addr, "/-/ready", &[]).await, Ok((200, _))) {
            let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Prometheus never got ready:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus {
            addr,
            _process: process,
            _dir: dir,
        }
    }
}

/// Runs promtool with `args` and `stdin`: (success, its output).
pub fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(peer("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), findings)
}

/// The instant-vector result of a query: (labels, value) per series. Any
/// failure (connection, HTTP status, Prometheus error, a body that is not an
/// instant vector) fails the test: an empty result means no series, nothing else.
pub async fn query_series(prom: std::net::SocketAddr, promql: &str) -> Vec<(serde_json::Value, f64)> {
    query_series_at(prom, promql, None).await
}

/// [`query_series`] evaluated at `time` (Unix seconds) instead of now.
pub async fn query_series_at(
    prom: std::net::SocketAddr,
    promql: &str,
    time: Option<f64>,
) -> Vec<(serde_json::Value, f64)> {
    let mut path = format!("/api/v1/query?query={}", urlencode(promql));
    if let Some(t) = time {
        path.push_str(&format!("&time={t:.3}"));
    }
    let (status, body) = http_get(prom, &path, &[])
        .await
        .unwrap_or_else(|e| panic!("{promql}: Prometheus did not answer: {e}"));
    assert_eq!(status, 200, "{promql}: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{promql}: not JSON ({e}): {body}"));
    assert_eq!(v["status"], "success", "{promql}: {body}");
    assert_eq!(v["data"]["resultType"], "vector", "{promql}: {body}");
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{promql}: no result array: {body}"))
        .iter()
        .map(|s| {
            let value = s["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{promql}: a sample without a value: {s}"));
            (s["metric"].clone(), value)
        })
        .collect()
}

/// Prometheus's active alerts (pending and firing), as its API lists them.
pub async fn alerts(prom: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let (status, body) = http_get(prom, "/api/v1/alerts", &[])
        .await
        .expect("Prometheus answers");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["data"]["alerts"].as_array().cloned().unwrap_or_default()
}

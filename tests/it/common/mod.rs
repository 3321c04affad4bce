//! Shared harness for the integration tests: the real binary, a fake API
//! server, an in-test OTLP receiver, and a small exposition parser.

pub mod chart;
pub mod failover;
pub mod gcp;
pub mod monitors;
pub mod otlp;
pub mod prometheus;
pub mod truth;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use kube_node_status::fake::{FakeApiServer, FakeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A scenario's length in whole seconds from the environment variable `name`
/// (for long runs by hand), else `default` (what CI runs).
pub fn secs_from_env(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fake API server with `nodes` generated nodes and fast bookmarks.
pub async fn fake_api(nodes: usize) -> FakeApiServer {
    FakeApiServer::start(FakeOptions {
        nodes,
        bookmark_interval: Duration::from_millis(500),
        ..Default::default()
    })
    .await
    .expect("fake API server starts")
}

/// [`fake_api`] without streaming lists (a server whose WatchList gate is
/// off): clients list in pages.
pub async fn fake_api_paged(nodes: usize) -> FakeApiServer {
    FakeApiServer::start(FakeOptions {
        nodes,
        bookmark_interval: Duration::from_millis(500),
        streaming_lists: false,
        ..Default::default()
    })
    .await
    .expect("fake API server starts")
}

/// [`fake_api`] whose kubelets renew node Leases every `renew_every`, with
/// a node lifecycle controller that marks a node after `grace`.
pub async fn fake_api_with_kubelets(nodes: usize, renew_every: Duration, grace: Duration) -> FakeApiServer {
    FakeApiServer::start(FakeOptions {
        nodes,
        bookmark_interval: Duration::from_millis(500),
        heartbeats: Some(kube_node_status::fake::HeartbeatOptions { renew_every, grace }),
        ..Default::default()
    })
    .await
    .expect("fake API server starts")
}

/// One GET: (status, body as text). A body that is cut short or is not
/// UTF-8 is an error, never a short body that parses as complete.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, headers, None).await
}

/// One request: (status, body as text); see [`http_get`].
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let (status, bytes) = http_request_bytes(addr, method, path, headers, body).await?;
    let text =
        String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((status, text))
}

/// One GET: (status, raw body bytes), e.g. a gzip body as sent.
pub async fn http_get_bytes(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Vec<u8>)> {
    http_request_bytes(addr, "GET", path, headers, None).await
}

/// One HTTP/1.1 request on a connection of its own, through hyper's client:
/// the body's framing (length or chunks) is checked, so a response the
/// server cut off, or a server killed mid-body, is an error.
pub async fn http_request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt, Full};
    let io_err = |e: Box<dyn std::error::Error + Send + Sync>| std::io::Error::other(e);
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| io_err(e.into()))?;
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(
            body.unwrap_or_default().to_string(),
        )))
        .map_err(|e| io_err(e.into()))?;
    // Generous: an unoptimized build renders thousands of nodes slowly on 2 cores.
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|e| io_err(e.into()))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| io_err(e.into()))?
            .to_bytes();
        Ok::<_, std::io::Error>((status, body.to_vec()))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange).await?
}

/// Inflates a gzip body; a body that is not whole gzip fails the test.
pub fn gunzip(bytes: &[u8]) -> String {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .expect("a whole gzip body of UTF-8 text");
    text
}

/// The lines of an exposition but the self-telemetry, whose values move
/// between two scrapes.
pub fn without_self_telemetry(body: &str) -> Vec<&str> {
    body.lines()
        .filter(|l| !l.contains("kube_node_status_"))
        .collect()
}

/// The response headers of one GET, lower-cased names.
pub async fn http_head(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// One sample of the text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text exposition (enough of it for our own output).
pub fn parse(body: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let mut end = 0;
            let bytes = after.as_bytes();
            while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
                end += 1;
            }
            map.insert(k.trim_start_matches(',').to_string(), after[..end].to_string());
            rest = &after[(end + 1).min(after.len())..];
        }
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value: value.parse().expect("numeric value"),
        });
    }
    out
}

/// The value of the single sample of `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(hits.len() <= 1, "{name}{labels:?} matches {} samples", hits.len());
    hits.first().map(|s| s.value)
}

/// The running exporter binary.
pub struct Exporter {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Self-telemetry served only with TLS or scrape authentication on: the
/// documentation and name checks, which scrape an exporter with neither,
/// take them as served because `tests/it/tls.rs` reads the first two from
/// an exporter serving HTTPS and `tests/it/hardening.rs` the others from
/// one with `--auth-kubernetes`.
pub const SERVED_ONLY_WHEN_ON: [&str; 4] = [
    "kube_node_status_tls_certificate_expiration_timestamp_seconds",
    "kube_node_status_tls_certificate_reload_failures_total",
    "kube_node_status_auth_requests_total",
    "kube_node_status_auth_lookups_total",
];

/// The path of the binary under test: `KNS_TEST_BINARY` if set (a snapshot,
/// as `scripts/soak` runs, so that rebuilding meanwhile changes nothing),
/// else the one cargo built.
pub fn binary() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        std::env::var("KNS_TEST_BINARY")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_kube-node-status").to_string())
    })
}

impl Exporter {
    /// Starts `kube-node-status --listen-address 127.0.0.1:PORT` with `KUBECONFIG` set to `kubeconfig`.
    pub fn start(kubeconfig: &str, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        Exporter::start_at(
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            kubeconfig,
            args,
            env,
        )
    }

    /// Starts like [`start`](Self::start), listening on `addr` (a replica
    /// restarted where its scraper looks for it).
    pub fn start_at(addr: SocketAddr, kubeconfig: &str, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(&kc, kubeconfig).unwrap();
        let log = dir.path().join("exporter.log");
        let mut cmd = Command::new(binary());
        cmd.arg("--listen-address").arg(addr.to_string()).args(args);
        for var in [
            "OTEL_METRICS_EXPORTER",
            "OTEL_TRACES_EXPORTER",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_RESOURCE_ATTRIBUTES",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_CLOUD_QUOTA_PROJECT",
            "GCE_METADATA_HOST",
        ] {
            cmd.env_remove(var);
        }
        // No gcloud credentials of whoever runs the tests.
        cmd.env("HOME", dir.path());
        cmd.env("KUBECONFIG", &kc)
            .env(
                "RUST_LOG",
                "info,kube_runtime::watcher=error,opentelemetry_sdk=warn,kube_node_status=debug",
            )
            .env("KNS_LOG_FORMAT", "text")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("exporter starts");
        Exporter {
            child: Some(child),
            addr,
            log,
            _dir: dir,
        }
    }

    /// Starts like [`start`](Self::start) and waits until `/readyz` is 200.
    pub async fn start_ready(kubeconfig: &str, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let exporter = Exporter::start(kubeconfig, args, env);
        exporter
            .wait_status("/readyz", 200, Duration::from_secs(15))
            .await;
        exporter
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, &[]).await.unwrap_or((0, String::new()))
    }

    /// Resident memory of the exporter process, in bytes (Linux).
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// Resident memory once what was just freed has been handed back, in
    /// bytes (Linux). jemalloc's background thread returns freed pages over
    /// about a second (src/main.rs), so a reading right after a burst still
    /// counts them: this one waits until RSS has stopped falling for 1.2 s
    /// (at most 10 s), then reads it.
    pub async fn settled_rss(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut low, mut since) = (self.rss(), Instant::now());
        while since.elapsed() < Duration::from_millis(1200) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.rss();
            if now + 64 * 1024 < low {
                (low, since) = (now, Instant::now());
            }
        }
        self.rss()
    }

    /// Peak resident memory of the exporter process since it started, in bytes (Linux).
    pub fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// The names of the exporter process's threads (Linux).
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.child.as_ref().expect("running").id();
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("/proc/PID/task")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .collect();
        names.sort();
        names
    }

    /// A `kB` field of /proc/PID/status.
    fn status_kib(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`, `KILL`) to the exporter process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Scrape and parse /metrics.
    pub async fn scrape(&self) -> Vec<Sample> {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(
            status,
            200,
            "/metrics answered {status}: {body}\nlogs:\n{}",
            self.logs()
        );
        parse(&body)
    }

    /// Scrapes until `pred` holds, or fails after `timeout` with `what`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let start = Instant::now();
        loop {
            let (status, body) = self.get("/metrics").await;
            if status == 200 {
                let samples = parse(&body);
                if pred(&samples) {
                    return samples;
                }
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `path` answers `status`.
    pub async fn wait_status(&self, path: &str, status: u16, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.get(path).await.0 == status {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{path} never answered {status}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for exit: (status, time to exit).
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("still running");
        let start = Instant::now();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!(
                    "exporter did not exit within 20s of SIGTERM\nlogs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the binary to completion with `args` and `env`: (exit code, stderr).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(binary())
        .args(args)
        .env_remove("OTEL_METRICS_EXPORTER")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// jemalloc's options as `src/main.rs` sets them.
pub const ALLOCATOR_OPTIONS: [&str; 4] = [
    "narenas:2",
    "background_thread:true",
    "dirty_decay_ms:1000",
    "muzzy_decay_ms:0",
];

/// The options missing from what jemalloc says it set, given the stderr of a
/// run with `_RJEM_MALLOC_CONF=confirm_conf:true`: empty when every one
/// took effect.
pub fn allocator_options_missing(stderr: &str) -> Vec<&'static str> {
    ALLOCATOR_OPTIONS
        .into_iter()
        .filter(|o| {
            !stderr
                .lines()
                .any(|l| l == format!("<jemalloc>: -- Set conf value: {o}"))
        })
        .collect()
}

/// A tool the tests need: `name` on PATH or in the project's `.venv/bin`. A missing peer is a failure.
pub fn peer(name: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin").join(name);
    if venv.exists() {
        return venv;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run .ci/run (or see README) to install the test peers");
}

/// A fixed clock for fixtures, so golden outputs do not move.
pub const FIXTURE_TIME: &str = "2026-11-20T08:00:00Z";

/// Realistic fixture nodes covering every fact: cordoned with a role and a
/// custom condition firing, tainted and NotReady, a GPU node with Unknown
/// readiness, a terminating node with fields missing, and a bare node.
pub fn fixture_nodes() -> Vec<serde_json::Value> {
    use kube_node_status::fake::generated_node;
    let mut n0 = generated_node(0, 1, FIXTURE_TIME);
    n0["spec"]["unschedulable"] = serde_json::json!(true);
    n0["metadata"]["labels"]["node-role.kubernetes.io/worker"] = serde_json::json!("");
    set_condition(&mut n0, "KernelDeadlock", "True");
    let mut n1 = generated_node(1, 1, FIXTURE_TIME);
    set_condition(&mut n1, "Ready", "False");
    let mut n2 = generated_node(2, 1, FIXTURE_TIME);
    set_condition(&mut n2, "Ready", "Unknown");
    n2["metadata"]["labels"]["node-role.kubernetes.io/gpu"] = serde_json::json!("true");
    let mut n3 = generated_node(3, 1, FIXTURE_TIME);
    n3["metadata"]["deletionTimestamp"] = serde_json::json!("2026-11-20T09:30:00Z");
    for field in ["nodeInfo", "allocatable", "addresses"] {
        n3["status"].as_object_mut().unwrap().remove(field);
    }
    let n4 = serde_json::json!({
        "metadata": {
            "name": "bare-node", "resourceVersion": "1", "creationTimestamp": FIXTURE_TIME,
            "labels": {"topology.kubernetes.io/zone": "z9"}
        }
    });
    vec![n0, n1, n2, n3, n4]
}

fn set_condition(node: &mut serde_json::Value, type_: &str, status: &str) {
    for c in node["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == type_ {
            c["status"] = serde_json::json!(status);
        }
    }
}

/// A fake API server serving exactly the fixture nodes.
pub async fn fixture_api() -> FakeApiServer {
    let api = fake_api(0).await;
    for node in fixture_nodes() {
        assert!(api.put_node(node));
    }
    api
}

/// The node labels the golden outputs are rendered with.
pub const GOLDEN_LABELS: &str = "topology.kubernetes.io/zone,cloud.google.com/gke-nodepool";

/// Self-telemetry counts requests and events, which vary from run to run.
const VARIABLE: [&str; 8] = [
    "kube_node_status_shards_",
    // Open connections: the test's own scrapes, 1 or 2.
    "kube_node_status_http_",
    // Checked on its own (changes.rs): the reference encoder runs no pass and serves none.
    "kube_node_status_series",
    "kube_node_status_watch_",
    "kube_node_status_api_",
    "kube_node_status_otlp_",
    "kube_node_status_view_",
    "kube_node_status_build_",
];

/// Starts the exporter against `kubeconfig` (serving the fixture nodes) in
/// naming `mode` with both Prometheus encoders, and checks each one's
/// /metrics against `tests/golden/<file>`, all but the self-telemetry, line
/// order aside (the file is sorted). `UPDATE_GOLDEN=1` rewrites the file and fails,
/// so a rewrite never passes for a check; under `CI` it is refused.
pub async fn assert_golden(kubeconfig: &str, mode: &str, file: &str) {
    for encoder in ["streaming", "reference"] {
        assert_golden_with(kubeconfig, mode, file, encoder).await;
    }
}

/// /metrics of the exporter in naming `mode` with Prometheus `encoder`, as
/// served when nodes have been rendered (the streaming encoder renders a
/// moment after the first sync).
pub async fn golden_body(kubeconfig: &str, mode: &str, encoder: &str, extra_env: &[(&str, &str)]) -> String {
    let mut env = vec![("OTEL_METRICS_EXPORTER", "prometheus"), ("POD_NAME", "golden-0")];
    env.extend_from_slice(extra_env);
    let exporter = Exporter::start_ready(
        kubeconfig,
        &[
            "--metric-naming",
            mode,
            "--node-labels",
            GOLDEN_LABELS,
            "--cluster-name",
            "golden",
            "--prometheus-encoder",
            encoder,
        ],
        &env,
    )
    .await;
    let samples = exporter
        .wait_for("the nodes on /metrics", Duration::from_secs(10), |s| {
            s.iter()
                .any(|s| s.name == "k8s_node_info" || s.name == "kube_node_info")
        })
        .await;
    drop(samples);
    exporter.get("/metrics").await.1
}

async fn assert_golden_with(kubeconfig: &str, mode: &str, file: &str, encoder: &str) {
    let body = golden_body(kubeconfig, mode, encoder, &[]).await;
    let mut lines: Vec<&str> = body
        .lines()
        .filter(|l| !VARIABLE.iter().any(|v| l.contains(v)))
        .collect();
    lines.sort_unstable();
    let got: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        // A rewrite passes by construction: never where results are judged.
        assert!(
            std::env::var_os("CI").is_none(),
            "UPDATE_GOLDEN is set under CI: the goldens would be rewritten, not checked"
        );
        std::fs::write(&path, &got).unwrap();
        panic!(
            "{} rewritten from /metrics ({encoder} encoder): review the diff, then run without UPDATE_GOLDEN",
            path.display()
        );
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .filter(|l| !got.contains(*l))
            .map(|l| format!("- {l}"))
            .chain(
                got.lines()
                    .filter(|l| !want.contains(*l))
                    .map(|l| format!("+ {l}")),
            )
            .take(40)
            .collect();
        panic!(
            "{file} differs from /metrics ({encoder} encoder):\n{}",
            diff.join("\n")
        );
    }
}

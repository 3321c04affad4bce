//! The attacks of issue 27, repeated against the release binary as a hostile
//! client in the cluster would make them: connection floods that trickle
//! unfinished headers or send nothing, huge headers and tokens, and
//! made-up or repeated bearer tokens with `--auth-kubernetes` against the
//! fake API server, which counts the TokenReviews it receives. Memory is
//! read from /proc (VmHWM, the peak) and held under stated bounds; the
//! figures go to stdout for docs/security.md.

use crate::common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{Exporter, http_get, value};
use kube_node_status::fake::{FakeApiServer, FakeOptions};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const MIB: f64 = 1024.0 * 1024.0;

/// Growth of the exporter's peak memory allowed under each flood. The
/// connections' own state is bounded well below this (32 slots of a 16 KiB
/// buffer and a task); the rest is room for the allocator on a busy machine.
const FLOOD_GROWTH: u64 = 16 * 1024 * 1024;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// The peak grew by at most [`FLOOD_GROWTH`], and what is held once the
/// attack is over by at most half that: given back, not kept.
fn assert_memory_bounded(attack: &str, (rss0, peak0): (u64, u64), (after, peak): (u64, u64)) {
    assert!(
        peak <= peak0 + FLOOD_GROWTH,
        "{attack}: peak memory {} → {} (bound: +{})",
        mib(peak0),
        mib(peak),
        mib(FLOOD_GROWTH)
    );
    assert!(
        after <= rss0 + FLOOD_GROWTH / 2,
        "{attack}: memory held afterwards {} → {}",
        mib(rss0),
        mib(after)
    );
}

/// One attacker's connection: a request line and an unfinished header,
/// `len` bytes of it sent in small pieces, then held open.
async fn trickle(addr: std::net::SocketAddr, len: usize) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-pad: ").await;
    let piece = [b'a'; 6000];
    let mut sent = 0;
    while sent < len {
        if s.write_all(&piece).await.is_err() {
            break; // the server gave up on it (431, or closed to make room)
        }
        sent += piece.len();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(s)
}

async fn counter(exporter: &Exporter, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = exporter.scrape().await;
    value(&samples, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_hold_memory_under_a_bound_and_probes_get_in() {
    let api = common::fake_api(50).await;
    let exporter = Exporter::start_ready(&api.kubeconfig(), &["--metrics-exporter", "prometheus"], &[]).await;
    exporter.scrape().await;
    let (rss0, peak0) = (exporter.rss(), exporter.peak_rss());
    let addr = exporter.addr;

    // 2,000 connections, 100 at a time, each trickling 60 KB of an unfinished header.
    let mut held = Vec::new();
    for _ in 0..20 {
        let wave: Vec<_> = (0..100).map(|_| tokio::spawn(trickle(addr, 60_000))).collect();
        for w in wave {
            held.extend(w.await.expect("joins"));
        }
        // The probes get in while the flood goes on.
        assert_eq!(exporter.get("/healthz").await.0, 200, "a probe during the flood");
    }
    let trickled_peak = exporter.peak_rss();
    let trickled_held = exporter.rss();
    drop(held);

    // 4,000 half-open connections that send nothing, held open together.
    let mut idle = Vec::new();
    for _ in 0..40 {
        let wave: Vec<_> = (0..100).map(|_| tokio::spawn(TcpStream::connect(addr))).collect();
        for w in wave {
            if let Ok(Ok(s)) = w.await {
                idle.push(s);
            }
        }
    }
    assert_eq!(
        exporter.get("/readyz").await.0,
        200,
        "a probe beside 4,000 idle connections"
    );
    let (status, _) = http_get(addr, "/metrics", &[])
        .await
        .expect("a scrape beside them");
    assert_eq!(status, 200);
    let idle_peak = exporter.peak_rss();
    drop(idle);

    // Closed: what they held is given back.
    let after = exporter.settled_rss().await;
    let samples = exporter.scrape().await;
    let evicted = value(
        &samples,
        "kube_node_status_http_connections_evicted_total",
        &[("state", "idle")],
    )
    .unwrap_or(0.0);
    let open = value(&samples, "kube_node_status_http_connections", &[]).unwrap_or(f64::NAN);
    println!(
        "connection floods: before rss {} (peak {}); 2,000 trickling 60 KB: peak {}, held {}; \
         4,000 half-open: peak {}; after close: rss {}; {evicted} connections closed to make room",
        mib(rss0),
        mib(peak0),
        mib(trickled_peak),
        mib(trickled_held),
        mib(idle_peak),
        mib(after),
    );
    assert_memory_bounded("the connection floods", (rss0, peak0), (after, idle_peak));
    assert!(evicted >= 1000.0, "{evicted} connections evicted");
    assert!(
        open <= 32.0,
        "{open} connections open, more than --max-connections"
    );
}

/// A request whose response the client does not read keeps its slot busy;
/// with every slot busy a new connection is refused with 503, counted, and
/// served again once the slow responses are cut at --request-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_refused_only_when_every_slot_serves_a_request() {
    let api = common::fake_api(5000).await;
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--metrics-exporter",
            "prometheus",
            "--max-connections",
            "2",
            "--request-timeout",
            "5s",
        ],
        &[],
    )
    .await;
    exporter.scrape().await;
    // Two plain-text scrapes (over 10 MB each) whose responses are never
    // read, by clients with a small receive buffer: the exporter cannot
    // hand the whole body to the kernel.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut s = socket.connect(exporter.addr).await.expect("connects");
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("writes");
        // The response has begun: this connection is serving a request.
        let mut first = [0u8; 12];
        s.read_exact(&mut first).await.expect("a response begins");
        assert_eq!(&first, b"HTTP/1.1 200");
        stuck.push(s);
    }
    // Once both are busy, a third is refused, with a reason.
    let start = Instant::now();
    let refusal = loop {
        let mut s = TcpStream::connect(exporter.addr).await.expect("connects");
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with("HTTP/1.1 503") {
            break answer;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never refused; last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refusal.contains("too many connections"), "{refusal}");
    // The stuck responses are cut at --request-timeout; then probes get in again.
    exporter
        .wait_status("/healthz", 200, Duration::from_secs(60))
        .await;
    drop(stuck);
    let refused = counter(&exporter, "kube_node_status_http_connections_refused_total", &[]).await;
    assert!(refused >= 1.0, "refusals counted: {refused}");
}

/// One client address churning every slot it can get, as a hostile pod
/// would: requests whose responses it never reads, reopened as they are
/// closed. The table gives it a quarter of the slots, so the kubelet's
/// probes and the scrapers, from other addresses, always get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_the_table_from_the_probes() {
    let api = common::fake_api(2000).await;
    let exporter = Exporter::start_ready(&api.kubeconfig(), &["--metrics-exporter", "prometheus"], &[]).await;
    let addr = exporter.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut held = std::collections::VecDeque::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
                if let Ok(mut s) = socket.connect(addr).await {
                    let req: &[u8] = if held.len() % 2 == 0 {
                        b"GET /metrics HTTP/1.1\r\nhost: x\r\naccept-encoding: gzip\r\n\r\n"
                    } else {
                        b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n"
                    };
                    let _ = s.write_all(req).await;
                    held.push_back(s);
                }
                if held.len() > 64 {
                    held.pop_front();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The probes come from another address: 127.0.0.2, loopback too.
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for _ in 0..25 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().unwrap())
            .expect("binds 127.0.0.2");
        let mut s = socket.connect(addr).await.expect("connects");
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("writes");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        let status = std::str::from_utf8(answer.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        *statuses.entry(status).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    attacker.await.expect("joins");
    let samples = exporter.scrape().await;
    let refused = value(&samples, "kube_node_status_http_connections_refused_total", &[]).unwrap_or(0.0);
    let evicted = |state| {
        value(
            &samples,
            "kube_node_status_http_connections_evicted_total",
            &[("state", state)],
        )
        .unwrap_or(0.0)
    };
    let (idle, slow) = (evicted("idle"), evicted("slow"));
    println!(
        "a churning address: probes from another {statuses:?}; its own connections refused {refused}, \
         closed to make room {idle} (idle) and {slow} (slow)"
    );
    assert_eq!(
        statuses,
        [(200, 25)].into(),
        "every probe from another address answered"
    );
    assert!(
        refused + idle + slow > 100.0,
        "the attacker was held to its share"
    );
}

const KUBE_TOKEN: &str = "kube-api-token-hardening-0c1d";
const READER: &str = "sa-token-prometheus-hardening-77a1";
const PROJECTED: &str = "projected-token-for-kube-node-status-19f3";
const READER_USER: &str = "system:serviceaccount:monitoring:prometheus";

async fn reviewed_exporter(extra: &[&str]) -> (FakeApiServer, Exporter) {
    let api = FakeApiServer::start(FakeOptions {
        nodes: 3,
        token: Some(KUBE_TOKEN.to_string()),
        ..Default::default()
    })
    .await
    .expect("fake API server starts");
    api.reviews().add_token(READER, READER_USER);
    api.reviews()
        .add_token_for(PROJECTED, READER_USER, &["kube-node-status"]);
    api.reviews().grant_metrics(READER_USER);
    // Every client here is 127.0.0.1, one address, which may hold a quarter
    // of the table: room for the test's concurrent clients.
    let mut args = vec![
        "--metrics-exporter",
        "prometheus",
        "--auth-kubernetes",
        "--max-connections",
        "128",
    ];
    args.extend_from_slice(extra);
    let exporter = Exporter::start_ready(&api.kubeconfig(), &args, &[]).await;
    (api, exporter)
}

/// A scrape's status, asking for gzip as Prometheus does (plain text is
/// written two at a time; more are shed with 503).
async fn status_with(addr: std::net::SocketAddr, token: &str) -> u16 {
    let header = format!("Bearer {token}");
    common::http_get_bytes(
        addr,
        "/metrics",
        &[("Authorization", &header), ("Accept-Encoding", "gzip")],
    )
    .await
    .map(|(s, _)| s)
    .unwrap_or(0)
}

/// Self-telemetry read with the reader's token.
async fn scrape_as_reader(exporter: &Exporter) -> Vec<common::Sample> {
    let header = format!("Bearer {READER}");
    let (status, body) = http_get(exporter.addr, "/metrics", &[("Authorization", &header)])
        .await
        .expect("answers");
    assert_eq!(status, 200, "{body}");
    common::parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_tokens_cannot_be_turned_into_token_reviews() {
    let (api, exporter) = reviewed_exporter(&[]).await;
    let addr = exporter.addr;
    // The real scraper is known before the flood.
    assert_eq!(status_with(addr, READER).await, 200);
    let before = api.reviews().token_reviews();

    // 2,000 made-up tokens from 8 clients at once.
    let start = Instant::now();
    let statuses = Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u16, u32>::new(),
    ));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let statuses = statuses.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    let s = status_with(addr, &format!("made-up-{c}-{i}-{:08x}", fastrand::u32(..))).await;
                    *statuses.lock().unwrap().entry(s).or_default() += 1;
                }
            })
        })
        .collect();
    // The real scraper is served throughout, from the cache.
    for _ in 0..10 {
        assert_eq!(
            status_with(addr, READER).await,
            200,
            "the real scraper during the flood"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in clients {
        c.await.expect("joins");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let reviews = api.reviews().token_reviews() - before;
    let statuses = statuses.lock().unwrap().clone();
    println!("2,000 made-up tokens in {elapsed:.1} s: {reviews} TokenReviews; answers {statuses:?}");
    // The defaults: a burst of 20, then 5 a second.
    let bound = 20.0 + 5.0 * elapsed + 1.0;
    assert!(
        (reviews as f64) <= bound,
        "{reviews} TokenReviews for 2,000 made-up tokens (bound {bound:.0})"
    );
    assert_eq!(statuses.values().sum::<u32>(), 2000);
    assert!(statuses.keys().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    assert!(statuses.get(&429).copied().unwrap_or(0) > 1000, "{statuses:?}");
    assert_eq!(
        status_with(addr, READER).await,
        200,
        "the real scraper after the flood"
    );

    let samples = scrape_as_reader(&exporter).await;
    let count = |name: &str, k: &str, v: &str| value(&samples, name, &[(k, v)]).unwrap_or(0.0);
    assert_eq!(
        count("kube_node_status_auth_requests_total", "result", "throttled"),
        f64::from(statuses[&429])
    );
    assert_eq!(
        count("kube_node_status_auth_lookups_total", "outcome", "rate_limited"),
        f64::from(statuses[&429])
    );
    assert!(count("kube_node_status_auth_lookups_total", "outcome", "cached") >= 10.0);
    assert_eq!(
        count("kube_node_status_auth_lookups_total", "outcome", "reviewed"),
        (reviews + 1) as f64,
        "one lookup reviewed per TokenReview (and the reader's first)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_new_token_make_one_review() {
    let (api, exporter) = reviewed_exporter(&[]).await;
    let before = api.reviews().token_reviews();
    // A slow API server: every request arrives while the review is in flight.
    api.reviews().set_delay(Duration::from_millis(1500));
    let addr = exporter.addr;
    let requests: Vec<_> = (0..20).map(|_| tokio::spawn(status_with(addr, READER))).collect();
    for r in requests {
        assert_eq!(r.await.expect("joins"), 200);
    }
    api.reviews().set_delay(Duration::ZERO);
    assert_eq!(
        api.reviews().token_reviews() - before,
        1,
        "20 concurrent requests, one TokenReview"
    );
    let samples = scrape_as_reader(&exporter).await;
    let merged = value(
        &samples,
        "kube_node_status_auth_lookups_total",
        &[("outcome", "merged")],
    )
    .unwrap_or(0.0);
    assert_eq!(merged, 19.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_tokens_are_refused_before_any_review_and_hold_no_memory() {
    let (api, exporter) = reviewed_exporter(&[]).await;
    exporter.get("/readyz").await;
    let (rss0, peak0) = (exporter.rss(), exporter.peak_rss());
    let before = api.reviews().token_reviews();
    let huge = "x".repeat(60_000);
    let addr = exporter.addr;
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for wave in 0..10 {
        let requests: Vec<_> = (0..100)
            .map(|i| {
                let token = format!("{wave}-{i}-{huge}");
                tokio::spawn(async move { status_with(addr, &token).await })
            })
            .collect();
        for r in requests {
            *statuses.entry(r.await.expect("joins")).or_default() += 1;
        }
    }
    let (peak, after) = (exporter.peak_rss(), exporter.settled_rss().await);
    println!(
        "1,000 requests with 60 KB tokens: answers {statuses:?}; rss {} → {} (peak {} → {})",
        mib(rss0),
        mib(after),
        mib(peak0),
        mib(peak)
    );
    assert_eq!(
        api.reviews().token_reviews(),
        before,
        "no TokenReview for a token that does not fit"
    );
    // 431 where the server read the header; 0 where it closed first (the client saw a reset).
    assert!(statuses.keys().all(|s| *s == 431 || *s == 0), "{statuses:?}");
    assert!(statuses.contains_key(&431), "{statuses:?}");
    assert_memory_bounded("60 KB tokens", (rss0, peak0), (after, peak));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_audiences_only_tokens_issued_for_them_are_accepted() {
    let (api, exporter) = reviewed_exporter(&["--auth-token-audiences", "kube-node-status,other"]).await;
    // The reader's token Secret is issued for the API server: refused.
    assert_eq!(status_with(exporter.addr, READER).await, 401);
    // A projected token for this exporter's audience, same user: allowed.
    assert_eq!(status_with(exporter.addr, PROJECTED).await, 200);
    assert!(api.reviews().token_reviews() >= 2);
}

#[test]
fn audiences_need_kubernetes_review() {
    let (code, stderr) = common::run_to_exit(
        &["--auth-token-audiences", "x"],
        &[("KUBECONFIG", "/nonexistent")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("needs --auth-kubernetes"), "{stderr}");
}

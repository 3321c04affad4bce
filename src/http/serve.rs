//! The listener: HTTP/1.1 connections, bounded in number and in memory.
//!
//! Every connection takes one of `max_connections` slots, from accept to
//! close, and its memory is bounded by the read buffer (headers larger than
//! [`MAX_BUF`] are answered 431) and the response queue (also [`MAX_BUF`]).
//! When every slot is taken, a new connection closes the oldest one that is
//! not serving a request (idle between requests, still sending its headers,
//! or in its TLS handshake); failing that, the one whose request has run
//! longest, if longer than [`PREEMPT_AFTER`] (a client that does not read its
//! response). So a client that opens many connections, trickles bytes or
//! reads nothing cannot lock out the scrapers and the kubelet's probes, whose
//! requests take milliseconds; and memory stays bounded whatever it does.
//! Only when every slot serves a request younger than that is a connection
//! refused.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, extract::Request};
use http_body_util::BodyExt;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::oneshot;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::surface::{Evicted, SurfaceStats};

/// A request's headers must arrive within this, and an idle connection is
/// closed after it: a client that connects and dribbles (or sends nothing)
/// is disconnected instead of holding a slot.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's read buffer (so its request headers, at most) and the
/// response it may queue ahead of a slow socket. hyper's default is ~400 KiB.
pub const MAX_BUF: usize = 16 * 1024;

/// With every slot taken and none idle, a request running longer than this
/// loses its connection to a new one. A scrape's response is written in
/// milliseconds to a client that reads it; only a full table cuts it.
pub const PREEMPT_AFTER: Duration = Duration::from_secs(2);

/// What a refused connection reads, when it is plain HTTP.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 33\r\n\r\ntoo many connections (all busy)\r\n";

/// How many connections, and how long a request may hold one.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// A request not done within this (its response written to the socket)
    /// loses its connection, even when the client reads nothing at all and
    /// the response's own deadline is never looked at.
    pub request_timeout: Duration,
}

/// One connection's requests in progress.
#[derive(Debug, Default)]
struct InProgress {
    /// Requests being served (0 or 1 over HTTP/1.1).
    count: AtomicUsize,
    /// When the latest began.
    since: Mutex<Option<tokio::time::Instant>>,
}

impl InProgress {
    fn load(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// How long the request in progress has run, if one is.
    fn running(&self, now: tokio::time::Instant) -> Option<Duration> {
        if self.load() == 0 {
            return None;
        }
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        since.map(|t| now.saturating_duration_since(t))
    }

    /// True if a request has been in progress for longer than `limit`.
    fn overdue(&self, limit: Duration) -> bool {
        self.running(tokio::time::Instant::now())
            .is_some_and(|d| d > limit)
    }
}

/// One connection's place in the table.
struct Slot {
    busy: Arc<InProgress>,
    /// Closes the connection at once.
    close: oneshot::Sender<()>,
}

/// The open connections, oldest first.
struct Slots {
    max: usize,
    next: u64,
    open: BTreeMap<u64, Slot>,
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// Served in slot `id`, after closing a connection of this kind to make room.
    Admit { id: u64, evicted: Option<Evicted> },
    /// Every slot serves a request younger than [`PREEMPT_AFTER`].
    Refuse,
}

impl Slots {
    fn admit(
        &mut self,
        busy: Arc<InProgress>,
        close: oneshot::Sender<()>,
        now: tokio::time::Instant,
    ) -> Admission {
        let mut evicted = None;
        if self.open.len() >= self.max {
            let idle = self
                .open
                .iter()
                .find(|(_, s)| s.busy.load() == 0)
                .map(|(id, _)| *id);
            let slowest = || {
                self.open
                    .iter()
                    .filter_map(|(id, s)| Some((s.busy.running(now)?, *id)))
                    .filter(|(running, _)| *running > PREEMPT_AFTER)
                    .max()
                    .map(|(_, id)| id)
            };
            let (id, kind) = match (idle, slowest()) {
                (Some(id), _) => (id, Evicted::Idle),
                (None, Some(id)) => (id, Evicted::Slow),
                (None, None) => return Admission::Refuse,
            };
            if let Some(slot) = self.open.remove(&id) {
                let _ = slot.close.send(());
            }
            evicted = Some(kind);
        }
        let id = self.next;
        self.next += 1;
        self.open.insert(id, Slot { busy, close });
        Admission::Admit { id, evicted }
    }

    fn release(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

/// Counts a request of its connection as in progress until dropped with its response body.
struct Busy(Arc<InProgress>);

impl Busy {
    fn enter(busy: &Arc<InProgress>) -> Busy {
        *busy.since.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
        busy.count.fetch_add(1, Ordering::AcqRel);
        Busy(busy.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once a request of `busy` has been in progress for longer than
/// `limit`, looking once a second.
async fn overdue(busy: &InProgress, limit: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if busy.overdue(limit) {
            return;
        }
    }
}

/// Serves `router` on `listener` over HTTP/1.1 until `shutdown` resolves,
/// then lets open connections finish their current request (the caller
/// bounds how long it waits for the returned future).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    stats: Arc<SurfaceStats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Every connection task holds a clone; when all are gone, the drain is over.
    let (alive, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF);
    let slots = Arc::new(Mutex::new(Slots {
        max: limits.max_connections.max(1),
        next: 0,
        open: BTreeMap::new(),
    }));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    warn!(error = %e, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let busy = Arc::new(InProgress::default());
        let (close, closed) = oneshot::channel();
        let admission = slots.lock().unwrap_or_else(|e| e.into_inner()).admit(
            busy.clone(),
            close,
            tokio::time::Instant::now(),
        );
        let id = match admission {
            Admission::Refuse => {
                stats.connection_refused();
                if acceptor.is_none() {
                    // One non-blocking write: a refused client learns why, and costs nothing more.
                    let _ = socket.try_write(REFUSAL);
                }
                continue;
            }
            Admission::Admit { id, evicted } => {
                if let Some(kind) = evicted {
                    stats.connection_evicted(kind);
                }
                id
            }
        };
        stats.connection_opened();
        let (mut stopped, alive) = (stopped.clone(), alive.clone());
        let (builder, router, acceptor) = (builder.clone(), router.clone(), acceptor.clone());
        let (slots, stats) = (slots.clone(), stats.clone());
        tokio::spawn(async move {
            let _alive = alive;
            let watched = busy.clone();
            let service =
                TowerToHyperService::new(tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let guard = Busy::enter(&busy);
                    let router = router.clone();
                    async move {
                        let response = router.oneshot(req.map(Body::new)).await?;
                        // The guard goes with the body: the request is in
                        // progress until its last byte is written.
                        Ok::<_, Infallible>(response.map(move |body| {
                            Body::new(body.map_frame(move |frame| {
                                let _in_progress = &guard;
                                frame
                            }))
                        }))
                    }
                }));
            let served = async {
                match acceptor {
                    None => {
                        drive(
                            builder.serve_connection(TokioIo::new(socket), service),
                            &mut stopped,
                        )
                        .await
                    }
                    Some(acceptor) => {
                        // The handshake counts against the same clock as the headers.
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(socket)).await {
                            Ok(Ok(stream)) => {
                                drive(
                                    builder.serve_connection(TokioIo::new(stream), service),
                                    &mut stopped,
                                )
                                .await
                            }
                            Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                            Err(_) => debug!("TLS handshake timed out"),
                        }
                    }
                }
            };
            tokio::select! {
                () = served => {}
                _ = closed => debug!("idle connection closed to make room for a new one"),
                // A response's own deadline is looked at only when hyper asks
                // for more of it, which it does not while the socket is full.
                () = overdue(&watched, limits.request_timeout + Duration::from_secs(1)) => {
                    debug!("request not done within --request-timeout; connection closed");
                }
            }
            slots.lock().unwrap_or_else(|e| e.into_inner()).release(id);
            stats.connection_closed();
        });
    }
    let _ = stop.send(true);
    drop(alive);
    let _ = drained.recv().await;
    Ok(())
}

/// Runs one connection until it ends, or until `stopped`, then lets its
/// current request finish.
async fn drive<I, S, B>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stopped.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> (Arc<InProgress>, oneshot::Sender<()>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(InProgress::default()), tx, rx)
    }

    /// Marks `busy` as serving a request that began at `at`.
    fn serving(busy: &InProgress, at: tokio::time::Instant) {
        busy.count.store(1, Ordering::Release);
        *busy.since.lock().unwrap() = Some(at);
    }

    #[test]
    fn a_full_table_closes_the_oldest_idle_connection_then_the_slowest_request_and_refuses_only_young_ones() {
        let t0 = tokio::time::Instant::now();
        let mut slots = Slots {
            max: 3,
            next: 0,
            open: BTreeMap::new(),
        };
        let mut held = Vec::new();
        for want in 0..3 {
            let (busy, tx, rx) = slot();
            assert_eq!(
                slots.admit(busy.clone(), tx, t0),
                Admission::Admit {
                    id: want,
                    evicted: None
                }
            );
            held.push((busy, rx));
        }
        // The oldest (0) serves a request: the oldest idle one (1) makes room.
        serving(&held[0].0, t0);
        let (busy, tx, rx) = slot();
        assert_eq!(
            slots.admit(busy.clone(), tx, t0),
            Admission::Admit {
                id: 3,
                evicted: Some(Evicted::Idle)
            }
        );
        assert!(held[1].1.try_recv().is_ok(), "connection 1 told to close");
        assert!(held[0].1.try_recv().is_err(), "a busy connection is left alone");
        held.push((busy, rx));
        // All serve requests younger than PREEMPT_AFTER: refused, nothing closed.
        serving(&held[2].0, t0 + Duration::from_millis(500));
        serving(&held[3].0, t0 + Duration::from_millis(900));
        let (busy, tx, _rx) = slot();
        assert_eq!(slots.admit(busy, tx, t0 + PREEMPT_AFTER), Admission::Refuse);
        assert_eq!(slots.open.len(), 3);
        // Later, the requests that ran past PREEMPT_AFTER go, longest first (0, then 2).
        let later = t0 + PREEMPT_AFTER + Duration::from_millis(600);
        let (busy, tx, _rx) = slot();
        assert_eq!(
            slots.admit(busy.clone(), tx, later),
            Admission::Admit {
                id: 4,
                evicted: Some(Evicted::Slow)
            }
        );
        assert!(
            held[0].1.try_recv().is_ok(),
            "the longest request's connection closed"
        );
        serving(&busy, later);
        let (busy, tx, _rx) = slot();
        assert_eq!(
            slots.admit(busy.clone(), tx, later),
            Admission::Admit {
                id: 5,
                evicted: Some(Evicted::Slow)
            }
        );
        assert!(held[2].1.try_recv().is_ok());
        serving(&busy, later);
        // Left: 3 (ran 2.2 s, past PREEMPT_AFTER), 4 and 5 (just began).
        let (busy, tx, _rx) = slot();
        assert_eq!(
            slots.admit(busy.clone(), tx, later),
            Admission::Admit {
                id: 6,
                evicted: Some(Evicted::Slow)
            }
        );
        assert!(held[3].1.try_recv().is_ok());
        serving(&busy, later);
        let (busy, tx, _rx) = slot();
        assert_eq!(slots.admit(busy, tx, later), Admission::Refuse);
        // A closed connection frees its slot.
        slots.release(4);
        let (busy, tx, _rx) = slot();
        assert_eq!(
            slots.admit(busy, tx, later),
            Admission::Admit { id: 7, evicted: None }
        );
    }
}

//! The listener: HTTP/1.1 connections, bounded in number and in memory.
//!
//! Every connection takes one of `max_connections` slots, from accept to
//! close, and its memory is bounded by the read buffer (headers larger than
//! [`MAX_BUF`] are answered 431) and the response queue (also [`MAX_BUF`]).
//! Which connection makes room for a new one is [`Slots`]' choice: one
//! client address cannot hold more than a quarter of the table, and a full
//! table closes an idle connection, else one whose request has run past 2 s,
//! each time of the address holding the most.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
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

use super::slots::{Admission, Busy, InProgress, Slots};
use crate::surface::SurfaceStats;

/// A request's headers must arrive within this, and an idle connection is
/// closed after it: a client that connects and dribbles (or sends nothing)
/// is disconnected instead of holding a slot.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's read buffer (so its request headers, at most) and the
/// response it may queue ahead of a slow socket. hyper's default is ~400 KiB.
pub const MAX_BUF: usize = 16 * 1024;

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

/// Frees a connection's slot when its task ends.
struct Release {
    slots: Arc<Mutex<Slots>>,
    id: u64,
    stats: Arc<SurfaceStats>,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(self.id);
        self.stats.connection_closed();
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
    let slots = Arc::new(Mutex::new(Slots::new(limits.max_connections)));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
            peer.ip(),
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
            // Gives the slot back however the task ends, a panic included.
            let _release = Release { slots, id, stats };
            let watched = busy.clone();
            let service =
                TowerToHyperService::new(tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let guard = Busy::enter(&busy);
                    let router = router.clone();
                    let mut req = req.map(Body::new);
                    // For the handlers: a token review's rate is kept per client address.
                    req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    async move {
                        let response = router.oneshot(req).await?;
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
                () = overdue(&watched, limits.request_timeout.saturating_add(Duration::from_secs(1))) => {
                    debug!("request not done within --request-timeout; connection closed");
                }
            }
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

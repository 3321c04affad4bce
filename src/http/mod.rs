//! The HTTP server: `/metrics`, `/healthz` and `/readyz`. Any other path is 404.

mod serve;
mod slots;

pub use serve::{Limits, serve};

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tracing::{debug, warn};

use crate::{
    auth::{Authenticator, Verdict},
    cluster::Health,
    surface::SurfaceStats,
    telemetry::{MetricsHandle, PROMETHEUS_CONTENT_TYPE},
};

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Renders `/metrics`; `None` when the Prometheus exporter is off (then `/metrics` is 404).
    pub metrics: Option<MetricsHandle>,
    /// The watch's health, for `/readyz`.
    pub health: Arc<Health>,
    /// How long the watch may fail before `/readyz` turns 503.
    pub stale_after: Duration,
    /// A /metrics response not written within this is cut off.
    pub request_timeout: Duration,
    /// The token `/metrics` requires, if any.
    pub auth: Option<Arc<Authenticator>>,
    /// Counts judged requests.
    pub surface: Arc<SurfaceStats>,
    /// Plain-text responses being written: each decompresses the node
    /// section as it is read, on the async workers, so only this many at
    /// once; more are answered 503 at once.
    pub plain: Arc<tokio::sync::Semaphore>,
}

/// Plain-text `/metrics` responses written at once; more get 503. Scrapers
/// ask for gzip, which costs no decompression.
pub const PLAIN_AT_ONCE: usize = 2;

/// The router with all three endpoints.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

/// True if the request's Accept-Encoding takes gzip (with a non-zero q).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

async fn metrics(
    State(state): State<HttpState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    if let Some(auth) = &state.auth {
        let presented = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
        let verdict = auth.check(presented, peer.map(|p| p.0.0.ip())).await;
        state.surface.auth(verdict.result());
        if let Some(refusal) = refusal(verdict) {
            debug!(?verdict, "/metrics refused");
            return refusal;
        }
    }
    let Some(handle) = state.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "the Prometheus exporter is off (OTEL_METRICS_EXPORTER)\n",
        )
            .into_response();
    };
    let gzip = accepts_gzip(&headers);
    // Shed at once rather than queued: a queued request would hold its
    // connection's slot, and a client could fill the table with them.
    let plain = if gzip {
        None
    } else {
        match state.plain.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::CONNECTION, "close"), (header::RETRY_AFTER, "1")],
                    "too many plain-text scrapes at once; ask for gzip (Accept-Encoding: gzip)\n",
                )
                    .into_response();
            }
        }
    };
    handle.caught_up().await;
    // Rendering runs metric callbacks synchronously: keep it off the async workers.
    match tokio::task::spawn_blocking(move || handle.render(gzip)).await {
        Ok(Ok(exposition)) => {
            let body = with_deadline(exposition.body, state.request_timeout);
            // Held until the body is written or dropped.
            let body = futures::StreamExt::map(body, move |chunk| {
                let _writing = &plain;
                chunk
            });
            let mut response = Response::new(Body::from_stream(body));
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            );
            h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            if exposition.gzip {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            if let Some(len) = exposition.content_length {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            response
        }
        Ok(Err(e)) => {
            warn!(error = %e, "rendering /metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
        Err(e) => {
            warn!(error = %e, "rendering /metrics panicked");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

/// The answer to a scrape that may not read /metrics; `None` when it may.
fn refusal(verdict: Verdict) -> Option<Response> {
    let (status, text) = match verdict {
        Verdict::Allowed => return None,
        Verdict::Missing | Verdict::Invalid => {
            (StatusCode::UNAUTHORIZED, "a valid bearer token is required\n")
        }
        Verdict::Forbidden => (StatusCode::FORBIDDEN, "this token's user may not get /metrics\n"),
        Verdict::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the token cannot be checked now\n",
        ),
        Verdict::Throttled => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many unknown tokens at once; try again\n",
        ),
    };
    let mut response = (status, text).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Some(response)
}

/// Ends `body` with an error once `timeout` has passed: hyper then closes the
/// connection mid-response, so a scraper that reads too slowly (or not at
/// all) gets a broken response, never a short one that parses as complete,
/// and cannot hold the response's memory for longer than this.
fn with_deadline<S>(
    body: S,
    timeout: Duration,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin,
{
    let deadline = Box::pin(tokio::time::sleep(timeout));
    futures::stream::unfold(Some((body, deadline)), move |state| async move {
        let (mut body, mut deadline) = state?;
        tokio::select! {
            item = futures::StreamExt::next(&mut body) => item.map(|i| (i, Some((body, deadline)))),
            () = &mut deadline => {
                debug!(timeout_s = timeout.as_secs_f64(), "/metrics response not read in time; closing the connection");
                Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "response deadline passed")), None))
            }
        }
    })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let h = &state.health;
    let now = Instant::now();
    let current = h.is_ready(now, state.stale_after);
    let complete = state.metrics.as_ref().is_none_or(|m| m.is_complete());
    if current && complete {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let why = if current {
        "first /metrics rendering of the synced view in progress".to_string()
    } else if !h.is_running() {
        "node watcher is not running".to_string()
    } else if !h.is_synced() {
        "initial node list has not synced yet".to_string()
    } else {
        format!(
            "node watch failing for {}s (more than --stale-after {}s)",
            h.age(now).as_secs(),
            state.stale_after.as_secs()
        )
    };
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::EventKind;
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn status_of_readyz(state: HttpState) -> (StatusCode, String) {
        let response = readyz(State(state)).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn ready_only_once_metrics_show_the_synced_view() {
        let health = Arc::new(Health::new());
        health.set_running(true);
        let rendered = Arc::new(AtomicBool::new(false));
        let done = rendered.clone();
        struct Rendered(Arc<AtomicBool>);
        impl crate::telemetry::Metrics for Rendered {
            fn render(&self, _: bool) -> Result<crate::telemetry::Exposition, crate::telemetry::RenderError> {
                Err(crate::telemetry::RenderError::NoRegistry)
            }
            fn caught_up(&self) -> futures::future::BoxFuture<'_, ()> {
                Box::pin(async {})
            }
            fn is_complete(&self) -> bool {
                self.0.load(Ordering::Acquire)
            }
        }
        let metrics: MetricsHandle = Arc::new(Rendered(done));
        let state = HttpState {
            metrics: Some(metrics),
            health: health.clone(),
            stale_after: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            auth: None,
            surface: Arc::default(),
            plain: Arc::new(tokio::sync::Semaphore::new(PLAIN_AT_ONCE)),
        };
        let (code, why) = status_of_readyz(state.clone()).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("not synced"), "{why}");

        health.on_event(EventKind::Init);
        health.on_event(EventKind::InitDone);
        let (code, why) = status_of_readyz(state.clone()).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "synced, not yet rendered");
        assert!(why.contains("first /metrics rendering"), "{why}");

        rendered.store(true, Ordering::Release);
        assert_eq!(status_of_readyz(state.clone()).await.0, StatusCode::OK);
        // Without /metrics, the view alone decides.
        let otlp_only = HttpState {
            metrics: None,
            ..state
        };
        assert_eq!(status_of_readyz(otlp_only).await.0, StatusCode::OK);
    }

    #[test]
    fn gzip_is_taken_when_the_scraper_offers_it() {
        for (value, want) in [
            ("gzip", true),
            ("gzip, deflate", true),
            ("identity;q=0.5, GZIP;q=0.8", true),
            ("*", true),
            ("gzip;q=0", false),
            ("deflate, br", false),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
            assert_eq!(accepts_gzip(&h), want, "{value:?}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}

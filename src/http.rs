//! The HTTP server: `/metrics`, `/healthz` and `/readyz`. Any other path is 404.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tracing::warn;

use crate::{
    cluster::Health,
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
}

/// The router with all three endpoints.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let Some(handle) = state.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "the Prometheus exporter is off (OTEL_METRICS_EXPORTER)\n",
        )
            .into_response();
    };
    // Gathering runs every metric callback synchronously: keep it off the async workers.
    match tokio::task::spawn_blocking(move || handle.render()).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response(),
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let h = &state.health;
    let now = Instant::now();
    if h.is_ready(now, state.stale_after) {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let why = if !h.is_running() {
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

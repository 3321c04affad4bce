//! The fake API server's admin endpoints (`/fake/...`), for tests, demos and
//! benchmarks: flips, outages, the autoscaler, deletions, closed watches,
//! compaction, broken watches and traffic counters.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::state::{Breakage, Shared};

/// The admin routes.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/fake/nodes/{name}/conditions/{type}", post(admin_set_condition))
        .route("/fake/nodes/{name}", axum::routing::delete(admin_delete))
        .route("/fake/outage", post(admin_outage))
        .route("/fake/autoscaler", post(admin_autoscaler))
        .route("/fake/watches/close", post(admin_close_watches))
        .route("/fake/watches/break", post(admin_break))
        .route("/fake/compact", post(admin_compact))
        .route("/fake/stats", get(admin_stats))
        .route("/fake/reposts", post(admin_reposts))
        .route("/fake/nodes/{name}/kubelet", post(admin_kubelet))
        .route("/fake/controller", post(admin_controller))
}

#[derive(Deserialize)]
struct KubeletParams {
    alive: bool,
}

/// `POST /fake/nodes/NAME/kubelet?alive=false` kills a node's kubelet (its
/// Lease renewals and status re-posts stop); `alive=true` revives it.
async fn admin_kubelet(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<KubeletParams>,
) -> StatusCode {
    match tokio::task::spawn_blocking(move || shared.set_kubelet_alive(&name, q.alive)).await {
        Ok(true) => StatusCode::NO_CONTENT,
        _ => StatusCode::NOT_FOUND,
    }
}

#[derive(Deserialize)]
struct ControllerParams {
    running: bool,
}

/// `POST /fake/controller?running=false` stops the node lifecycle
/// controller (Ready stays as the kubelet last posted it); `true` restarts it.
async fn admin_controller(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ControllerParams>,
) -> StatusCode {
    match &shared.node_leases {
        Some(leases) => {
            leases.set_controller(q.running);
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

#[derive(Deserialize)]
struct RepostParams {
    period_ms: u64,
}

/// Sets how often every node's status is re-posted (0: never); takes effect
/// at the next node, when the status re-posts task runs.
async fn admin_reposts(State(shared): State<Arc<Shared>>, Query(q): Query<RepostParams>) -> StatusCode {
    shared.repost_period_ms.store(q.period_ms, Ordering::Release);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct BreakParams {
    with: Breakage,
}

/// The next watch (of the encoding the breakage is for) sends broken bytes and ends.
async fn admin_break(State(shared): State<Arc<Shared>>, Query(q): Query<BreakParams>) -> StatusCode {
    *shared.breakage.lock().unwrap_or_else(|e| e.into_inner()) = Some(q.with);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct StatusParam {
    status: String,
}

async fn admin_set_condition(
    State(shared): State<Arc<Shared>>,
    Path((name, type_)): Path<(String, String)>,
    Query(q): Query<StatusParam>,
) -> StatusCode {
    if shared.set_condition(&name, &type_, &q.status) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
struct OutageParams {
    zone: Option<String>,
    fraction: Option<f64>,
    status: Option<String>,
}

/// `POST /fake/outage?zone=Z` or `?fraction=F` (default a third), with
/// `status` (default `False`; `True` ends the outage): the names it set.
async fn admin_outage(State(shared): State<Arc<Shared>>, Query(q): Query<OutageParams>) -> Response {
    let status = q.status.unwrap_or_else(|| "False".to_string());
    // Off the runtime's workers: a burst of 33,000 writes takes seconds, and
    // a worker busy with it holds the watch tasks it wakes (tokio runs a
    // woken task next on the waking worker), so the watches would get the
    // burst only once it was over, where the API server streams it as it goes.
    let fraction = q.fraction.unwrap_or(1.0 / 3.0);
    let names =
        tokio::task::spawn_blocking(move || shared.outage(q.zone.as_deref(), fraction, &status)).await;
    match names {
        Ok(names) => axum::Json(json!({"nodes": names})).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct AutoscalerParams {
    per_minute: f64,
}

async fn admin_autoscaler(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<AutoscalerParams>,
) -> StatusCode {
    shared
        .autoscaler
        .store(q.per_minute.max(0.0).to_bits(), Ordering::Release);
    StatusCode::NO_CONTENT
}

async fn admin_delete(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> StatusCode {
    if shared.delete_node(&name) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn admin_close_watches(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.close_watches();
    StatusCode::NO_CONTENT
}

async fn admin_compact(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.compact();
    StatusCode::NO_CONTENT
}

async fn admin_stats(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(json!({
        "lists": shared.lists.load(Ordering::Relaxed),
        "full_lists": shared.full_lists.load(Ordering::Relaxed),
        "watches": shared.watches.load(Ordering::Relaxed),
        "bytes": shared.bytes.load(Ordering::Relaxed),
        "nodes": shared.lock().nodes.len(),
    }))
}

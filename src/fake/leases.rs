//! `coordination.k8s.io/v1` Leases for the fake API server: get, create and
//! JSON merge patch, with the optimistic concurrency leader election relies
//! on (a patch naming a `resourceVersion` that is no longer current is 409
//! Conflict, a create of an existing Lease is 409 AlreadyExists).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use serde::Deserialize;

use super::{
    gate::{Gate, now_rfc3339, status},
    node_leases::{NAMESPACE, NodeLeases, WatchFrom},
    request::{Encoding, streaming_list_refusal},
};

/// What the lease endpoints see: the gate, the leases, and the node Leases
/// of `kube-node-lease` (with the bookmark interval their watches use).
#[derive(Clone)]
struct Api {
    gate: Arc<Gate>,
    leases: Arc<Leases>,
    nodes: Option<Arc<NodeLeases>>,
    /// What every other namespace (or all, with node Leases off) lists and watches: none.
    empty: Arc<NodeLeases>,
    bookmark_every: Duration,
    /// Streaming lists served (else refused with 422, as for nodes).
    streaming_lists: bool,
}

/// The Leases, by (namespace, name).
type Store = BTreeMap<(String, String), Value>;

/// The Leases and the last resourceVersion given out.
#[derive(Default)]
pub struct Leases {
    inner: Mutex<(u64, Store)>,
}

impl Leases {
    /// Stores `lease` as `kubectl apply` would create it (a chart's Lease):
    /// false if it has no name or namespace.
    pub fn put(&self, mut lease: Value) -> bool {
        let (Some(ns), Some(name)) = (
            lease["metadata"]["namespace"].as_str().map(str::to_string),
            lease["metadata"]["name"].as_str().map(str::to_string),
        ) else {
            return false;
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (rv, map) = &mut *inner;
        stamp(&mut lease, rv, &ns, &name, None);
        map.insert((ns, name), lease);
        true
    }

    /// The stored Lease, if any.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.1.get(&(namespace.to_string(), name.to_string())).cloned()
    }
}

const BASE: &str = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";

pub(super) fn routes<S: Clone + Send + Sync + 'static>(
    gate: Arc<Gate>,
    leases: Arc<Leases>,
    nodes: Option<Arc<NodeLeases>>,
    bookmark_every: Duration,
    streaming_lists: bool,
) -> Router<S> {
    Router::new()
        .route(BASE, post(create).get(list_or_watch))
        .route(&format!("{BASE}/{{name}}"), get(read).patch(patch))
        .with_state(Api {
            gate,
            leases,
            nodes,
            empty: Arc::new(NodeLeases::new(Default::default(), 1)),
            bookmark_every,
            streaming_lists,
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    watch: Option<String>,
    resource_version: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    timeout_seconds: Option<u64>,
    send_initial_events: Option<bool>,
    resource_version_match: Option<String>,
}

/// LIST or WATCH of a namespace's Leases: the node Leases in
/// `kube-node-lease` (when the server keeps them), none elsewhere.
async fn list_or_watch(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    Query(p): Query<ListParams>,
) -> Response {
    if let Some(r) = api.gate.refusal(&headers) {
        return r;
    }
    let nodes = match (&api.nodes, ns == NAMESPACE) {
        (Some(nodes), true) => nodes,
        // Node Leases off, or another namespace: an empty list that never changes.
        _ => &api.empty,
    };
    let encoding = Encoding::of(&headers);
    if matches!(p.watch.as_deref(), Some("true" | "1")) {
        let initial = p.send_initial_events == Some(true);
        // As the API server validates it (and as one without streaming lists refuses it).
        let refusal = if initial {
            streaming_list_refusal(
                api.streaming_lists,
                p.resource_version_match.as_deref(),
                p.allow_watch_bookmarks,
            )
        } else {
            None
        };
        if let Some(message) = refusal {
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message);
        }
        let from = WatchFrom {
            resource_version: p.resource_version,
            initial,
            bookmarks: p.allow_watch_bookmarks.unwrap_or(false),
            timeout: Duration::from_secs(p.timeout_seconds.unwrap_or(1800).max(1)),
        };
        nodes.watch(encoding, from, api.bookmark_every)
    } else {
        nodes.list(encoding)
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("leases.coordination.k8s.io \"{name}\" not found"),
    )
}

fn parse(body: &Bytes) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

fn bad_body() -> Response {
    status(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "the body is not a JSON object",
    )
}

/// Stamps `lease` as stored: name, namespace, kind and a new resourceVersion.
fn stamp(lease: &mut Value, rv: &mut u64, ns: &str, name: &str, created: Option<Value>) {
    *rv += 1;
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    let meta = &mut lease["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    meta["name"] = json!(name);
    meta["namespace"] = json!(ns);
    meta["resourceVersion"] = json!(rv.to_string());
    match created {
        Some(c) => {
            meta["creationTimestamp"] = c["creationTimestamp"].clone();
            meta["uid"] = c["uid"].clone();
        }
        None => {
            meta["creationTimestamp"] = json!(now_rfc3339());
            meta["uid"] = json!(format!("lease-{rv}"));
        }
    }
}

async fn read(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Some(r) = api.gate.refusal(&headers) {
        return r;
    }
    if let (Some(nodes), true) = (&api.nodes, ns == NAMESPACE)
        && let Some(lease) = nodes.get(&name)
    {
        return json_response(StatusCode::OK, &lease);
    }
    match api.leases.get(&ns, &name) {
        Some(lease) => json_response(StatusCode::OK, &lease),
        None => not_found(&name),
    }
}

async fn create(
    State(Api { gate, leases, .. }): State<Api>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = gate.refusal(&headers) {
        return r;
    }
    let Some(mut lease) = parse(&body) else {
        return bad_body();
    };
    let Some(name) = lease["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    let mut inner = leases.inner.lock().unwrap_or_else(|e| e.into_inner());
    let (rv, map) = &mut *inner;
    let key = (ns.clone(), name.clone());
    if map.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io \"{name}\" already exists"),
        );
    }
    stamp(&mut lease, rv, &ns, &name, None);
    map.insert(key, lease.clone());
    json_response(StatusCode::CREATED, &lease)
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(fields) = target {
        for (k, v) in changes {
            if v.is_null() {
                fields.remove(k);
            } else {
                merge(fields.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

async fn patch(
    State(Api { gate, leases, .. }): State<Api>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = gate.refusal(&headers) {
        return r;
    }
    let merge_patch = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/merge-patch+json"));
    if !merge_patch {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the fake API server takes only application/merge-patch+json for leases",
        );
    }
    let Some(changes) = parse(&body) else {
        return bad_body();
    };
    let mut inner = leases.inner.lock().unwrap_or_else(|e| e.into_inner());
    let (rv, map) = &mut *inner;
    let key = (ns.clone(), name.clone());
    let Some(stored) = map.get(&key) else {
        return not_found(&name);
    };
    // Like the real API server: a patch that names a resourceVersion is a
    // precondition, and loses (409) once another write moved the Lease on.
    let sent = &changes["metadata"]["resourceVersion"];
    if !sent.is_null() && *sent != stored["metadata"]["resourceVersion"] {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    let created = stored["metadata"].clone();
    let mut lease = stored.clone();
    merge(&mut lease, &changes);
    stamp(&mut lease, rv, &ns, &name, Some(created));
    map.insert(key, lease.clone());
    json_response(StatusCode::OK, &lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's own example.
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"a": [1, 2]});
        merge(&mut target, &json!({"a": [3], "b": {"c": 1}}));
        assert_eq!(target, json!({"a": [3], "b": {"c": 1}}));
    }
}

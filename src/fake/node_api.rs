//! The fake API server's Node LIST and WATCH, in JSON or in Kubernetes
//! protobuf as the request's `Accept` asks: paginated LISTs with
//! limit/continue, WATCH streams (JSON lines, or length-prefixed protobuf
//! frames with `;stream=watch`) with bookmarks, 410 Gone for a
//! resourceVersion that is too old, and streaming lists
//! (`sendInitialEvents`, KEP-3157) unless turned off, when the request is
//! refused with 422 as by a server without them.

use std::{
    convert::Infallible,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::{
    gate, protobuf,
    state::{Shared, StoredNode, WireEvent, watch_line},
};

use super::request::{Encoding, PROTOBUF, streaming_list_refusal};

/// An error response in `encoding`.
fn status(encoding: Encoding, code: StatusCode, reason: &str, message: &str) -> Response {
    match encoding {
        Encoding::Json => gate::status(code, reason, message),
        Encoding::Protobuf => (
            code,
            [(header::CONTENT_TYPE, PROTOBUF)],
            protobuf::status(i32::from(code.as_u16()), reason, message),
        )
            .into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListParams {
    watch: Option<String>,
    resource_version: Option<String>,
    resource_version_match: Option<String>,
    send_initial_events: Option<bool>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
    timeout_seconds: Option<u64>,
    allow_watch_bookmarks: Option<bool>,
}

pub(super) async fn get_node(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = shared.gate.refusal(&headers) {
        return r;
    }
    let encoding = Encoding::of(&headers);
    match (shared.lock().nodes.get(&name), encoding) {
        (Some(node), Encoding::Json) => {
            ([(header::CONTENT_TYPE, "application/json")], node.json.clone()).into_response()
        }
        (Some(node), Encoding::Protobuf) => {
            ([(header::CONTENT_TYPE, PROTOBUF)], node.protobuf_object()).into_response()
        }
        (None, _) => status(
            encoding,
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("nodes \"{name}\" not found"),
        ),
    }
}

pub(super) async fn list_or_watch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    if let Some(r) = shared.gate.refusal(&headers) {
        return r;
    }
    let delay = shared.delay_ms.load(Ordering::Acquire);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    thawed(&shared).await;
    let encoding = Encoding::of(&headers);
    if matches!(p.watch.as_deref(), Some("true" | "1")) {
        watch_nodes(shared, p, encoding)
    } else {
        list_nodes(&shared, &p, encoding)
    }
}

fn encode_continue(rv: u64, last: &str) -> String {
    let raw = format!("{rv}/{last}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let (rv, last) = raw.split_once('/')?;
    Some((rv.parse().ok()?, last.to_string()))
}

/// A LIST is always served at the latest resourceVersion, whatever
/// `resourceVersion` asks for: what `resourceVersionMatch=NotOlderThan` allows,
/// and what a client of the real API server must cope with.
fn list_nodes(shared: &Shared, p: &ListParams, encoding: Encoding) -> Response {
    shared.lists.fetch_add(1, Ordering::Relaxed);
    let later_page = p.continue_.as_deref().is_some_and(|c| !c.is_empty());
    if later_page
        && shared
            .failing_pages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    {
        return status(
            encoding,
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "an error on the server (\"etcdserver: request timed out\") has prevented the request from succeeding",
        );
    }
    let store = shared.lock();
    // Later pages are served from the current state at the first page's
    // resourceVersion: events in between are replayed by the WATCH that follows,
    // which is what a client of the real API must cope with too.
    let (list_rv, after) = match p.continue_.as_deref().filter(|c| !c.is_empty()) {
        Some(token) => match decode_continue(token) {
            Some((rv, _)) if rv < store.compacted => {
                drop(store);
                return status(
                    encoding,
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
            Some((rv, last)) => (rv, Some(last)),
            None => {
                drop(store);
                return status(
                    encoding,
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                );
            }
        },
        None => {
            shared.full_lists.fetch_add(1, Ordering::Relaxed);
            (store.rv, None)
        }
    };
    let limit = p.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let range: Box<dyn Iterator<Item = (&String, &StoredNode)>> = match &after {
        Some(last) => Box::new(store.nodes.range::<String, _>((
            std::ops::Bound::Excluded(last.clone()),
            std::ops::Bound::Unbounded,
        ))),
        None => Box::new(store.nodes.iter()),
    };
    let mut items = Vec::new();
    let mut last_name = None;
    let mut more = false;
    for (name, node) in range {
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(node);
        last_name = Some(name.as_str());
    }
    let token = match (more, last_name) {
        (true, Some(last)) => Some(encode_continue(list_rv, last)),
        _ => None,
    };
    let (content_type, body) = match encoding {
        Encoding::Json => {
            let mut metadata = json!({"resourceVersion": list_rv.to_string()});
            if let Some(token) = &token {
                metadata["continue"] = json!(token);
                let after = last_name.map_or(0, |last| {
                    store
                        .nodes
                        .range::<str, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                        .count()
                });
                metadata["remainingItemCount"] = json!(after);
            }
            // The stored objects' bytes, spliced in as they are.
            let mut body = Vec::with_capacity(items.iter().map(|n| n.json.len() + 1).sum::<usize>() + 256);
            body.extend_from_slice(b"{\"kind\":\"NodeList\",\"apiVersion\":\"v1\",\"metadata\":");
            body.extend_from_slice(metadata.to_string().as_bytes());
            body.extend_from_slice(b",\"items\":[");
            for (i, node) in items.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&node.json);
            }
            body.extend_from_slice(b"]}");
            ("application/json", body)
        }
        Encoding::Protobuf => {
            let nodes: Vec<&[u8]> = items.iter().map(|n| &n.protobuf[..]).collect();
            let body =
                protobuf::node_list(&list_rv.to_string(), token.as_deref().unwrap_or_default(), &nodes);
            (PROTOBUF, body)
        }
    };
    drop(store);
    shared.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn gone_event(rv: u64, current: u64) -> WireEvent {
    let message = format!("too old resource version: {rv} ({current})");
    WireEvent {
        json: Bytes::from(watch_line(
            "ERROR",
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": "Expired", "code": 410
            }),
        )),
        protobuf: Bytes::from(protobuf::watch_frame(
            "ERROR",
            protobuf::status(410, "Expired", &message),
        )),
    }
}

fn bookmark_event(rv: u64, initial_events_end: bool) -> WireEvent {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    WireEvent {
        json: Bytes::from(watch_line(
            "BOOKMARK",
            &json!({"kind": "Node", "apiVersion": "v1", "metadata": metadata}),
        )),
        protobuf: Bytes::from(protobuf::watch_frame(
            "BOOKMARK",
            protobuf::bookmark(&rv.to_string(), initial_events_end),
        )),
    }
}

fn watch_nodes(shared: Arc<Shared>, p: ListParams, encoding: Encoding) -> Response {
    shared.watches.fetch_add(1, Ordering::Relaxed);
    let initial = p.send_initial_events == Some(true);
    if initial {
        // As the API server validates it (and as one without streaming lists refuses it).
        let refusal = streaming_list_refusal(
            shared.streaming_lists,
            p.resource_version_match.as_deref(),
            p.allow_watch_bookmarks,
        );
        if let Some(message) = refusal {
            return status(encoding, StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message);
        }
    }
    let store = shared.lock();
    let from = match p.resource_version.as_deref() {
        None | Some("") | Some("0") => store.rv,
        Some(v) => match v.parse::<u64>() {
            Ok(rv) => rv,
            Err(_) => {
                drop(store);
                return status(
                    encoding,
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid resourceVersion",
                );
            }
        },
    };
    let pick = move |e: &WireEvent| match encoding {
        Encoding::Json => e.json.clone(),
        Encoding::Protobuf => e.protobuf.clone(),
    };
    let chunk_stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>> =
        if from < store.compacted && !initial {
            let line = pick(&gone_event(from, store.rv));
            drop(store);
            Box::pin(futures::stream::once(async move { Ok(line) }))
        } else {
            // A streaming list: every node as ADDED at the current version,
            // then the bookmark that ends them. The nodes are taken under the
            // lock (shared bytes) and framed as the stream is read.
            let replay: Replay = if initial {
                shared.full_lists.fetch_add(1, Ordering::Relaxed);
                let nodes: Vec<StoredNode> = store.nodes.values().cloned().collect();
                let end = pick(&bookmark_event(store.rv, true));
                let protobuf = encoding == Encoding::Protobuf;
                Box::new(
                    nodes
                        .into_iter()
                        .map(move |n| n.event("ADDED", protobuf))
                        .chain(std::iter::once(end)),
                )
            } else {
                let events: Vec<Bytes> = store
                    .history
                    .iter()
                    .filter(|(rv, _)| *rv > from)
                    .map(|(_, e)| pick(e))
                    .collect();
                Box::new(events.into_iter())
            };
            let rx = shared.events.subscribe();
            drop(store);
            let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1800).max(1));
            let bookmarks = p.allow_watch_bookmarks.unwrap_or(false);
            Box::pin(watch_stream(
                shared.clone(),
                from,
                replay,
                rx,
                timeout,
                bookmarks,
                encoding,
            ))
        };
    let counted = {
        let shared = shared.clone();
        futures::StreamExt::inspect(chunk_stream, move |chunk| {
            if let Ok(b) = chunk {
                shared.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let content_type = match encoding {
        Encoding::Json => "application/json".to_string(),
        Encoding::Protobuf => format!("{PROTOBUF};stream=watch"),
    };
    let content_type = shared.injected_content_type().unwrap_or(content_type);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(counted))
        .unwrap_or_else(|_| {
            status(
                encoding,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "building the response",
            )
        })
}

/// What a watch sends before the events it is subscribed to.
type Replay = Box<dyn Iterator<Item = Bytes> + Send>;

fn watch_stream(
    shared: Arc<Shared>,
    from: u64,
    replay: Replay,
    mut rx: broadcast::Receiver<(u64, WireEvent)>,
    timeout: Duration,
    bookmarks: bool,
    encoding: Encoding,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let pick = move |e: &WireEvent| match encoding {
        Encoding::Json => e.json.clone(),
        Encoding::Protobuf => e.protobuf.clone(),
    };
    async_stream(move |tx| async move {
        let mut last = from;
        for line in replay {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let mut generation = shared.watch_generation.subscribe();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(shared.bookmark_interval);
        tick.tick().await;
        loop {
            // Bytes a test asked to break this watch with, then its end.
            if let Some(broken) = shared.take_injected(encoding == Encoding::Protobuf) {
                let _ = tx.send(broken).await;
                return;
            }
            let line: Bytes = tokio::select! {
                _ = &mut deadline => {
                    thawed(&shared).await;
                    return;
                }
                _ = generation.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    // Drain under the lock: then every event up to store.rv has been sent.
                    let mut pending = Vec::new();
                    let current = {
                        let store = shared.lock();
                        loop {
                            match rx.try_recv() {
                                Ok((rv, e)) => if rv > last { pending.push((rv, e)) },
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                Err(_) => return,
                            }
                        }
                        store.rv
                    };
                    for (rv, e) in pending {
                        last = rv;
                        thawed(&shared).await;
                        if tx.send(pick(&e)).await.is_err() {
                            return;
                        }
                    }
                    last = last.max(current);
                    pick(&bookmark_event(last, false))
                }
                msg = rx.recv() => match msg {
                    Ok((rv, e)) if rv > last => {
                        last = rv;
                        pick(&e)
                    }
                    Ok(_) => continue,
                    // A watcher too slow for the event rate is closed, as the real API does.
                    Err(_) => return,
                },
            };
            thawed(&shared).await;
            if tx.send(line).await.is_err() {
                return;
            }
        }
    })
}

/// Returns once the server is not frozen (at once when it is not).
pub(super) async fn thawed(shared: &Shared) {
    // Called for every line of every watch: the common case takes no receiver.
    if !*shared.frozen.borrow() {
        return;
    }
    let mut frozen = shared.frozen.subscribe();
    // The sender lives in `shared`, so the channel cannot close while we wait.
    let _ = frozen.wait_for(|f| !*f).await;
}

/// A tiny generator: runs `f` with a sender and yields what it sends.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Bytes, Infallible>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let task = tokio::spawn(f(tx));
    let guard = AbortOnDrop(task);
    futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|b| (Ok(b), (rx, guard)))
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(1234, "gke-node/1");
        assert_eq!(decode_continue(&t), Some((1234, "gke-node/1".to_string())));
        assert_eq!(decode_continue("zz"), None);
        assert_eq!(decode_continue("abc"), None);
    }

    #[test]
    fn protobuf_is_served_when_asked_for_first() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, accept.parse().unwrap());
            Encoding::of(&h)
        };
        assert_eq!(
            with("application/vnd.kubernetes.protobuf,application/json"),
            Encoding::Protobuf
        );
        assert_eq!(with("application/vnd.kubernetes.protobuf"), Encoding::Protobuf);
        assert_eq!(with("application/json"), Encoding::Json);
        assert_eq!(with("application/json, */*"), Encoding::Json);
        assert_eq!(Encoding::of(&HeaderMap::new()), Encoding::Json);
    }
}

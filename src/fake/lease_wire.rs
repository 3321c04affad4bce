//! The node Leases' bytes in either encoding, chosen by the request's
//! `Accept` as for nodes: JSON lines, or length-prefixed protobuf frames
//! (`;stream=watch`) of `WatchEvent`s around `k8s\0` envelopes. Events are
//! kept as objects and written in the encoding each watch asked for.

use std::{convert::Infallible, sync::Arc};

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    protobuf,
    request::{Encoding, PROTOBUF},
};

const API_VERSION: &str = "coordination.k8s.io/v1";

/// One watch event of a Lease, before it is encoded.
#[derive(Debug)]
pub(super) struct LeaseEvent {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub(super) kind: &'static str,
    /// The Lease, as JSON.
    pub(super) object: Value,
}

impl LeaseEvent {
    /// The event as `encoding` writes it.
    pub(super) fn encode(&self, encoding: Encoding) -> Bytes {
        match encoding {
            // `type` before `object`, as the API server writes it.
            Encoding::Json => Bytes::from(format!(
                "{{\"type\":{},\"object\":{}}}\n",
                json!(self.kind),
                self.object
            )),
            Encoding::Protobuf => {
                Bytes::from(protobuf::watch_frame(self.kind, protobuf::lease(&self.object)))
            }
        }
    }
}

/// A bookmark at `rv`; the one that ends a streaming list's initial events if `end`.
pub(super) fn bookmark(encoding: Encoding, rv: u64, end: bool) -> Bytes {
    match encoding {
        Encoding::Json => {
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if end {
                metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            let object = json!({"kind": "Lease", "apiVersion": API_VERSION, "metadata": metadata});
            Bytes::from(format!("{}\n", json!({"type": "BOOKMARK", "object": object})))
        }
        Encoding::Protobuf => Bytes::from(protobuf::watch_frame(
            "BOOKMARK",
            protobuf::bookmark_of(API_VERSION, "Lease", &rv.to_string(), end),
        )),
    }
}

/// The ERROR event of a watch from a compacted resourceVersion.
pub(super) fn gone(encoding: Encoding, from: u64, compacted: u64) -> Bytes {
    let message = format!("too old resource version: {from} ({compacted})");
    match encoding {
        Encoding::Json => Bytes::from(format!(
            "{}\n",
            json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": "Expired", "code": 410,
            }})
        )),
        Encoding::Protobuf => Bytes::from(protobuf::watch_frame(
            "ERROR",
            protobuf::status(410, "Expired", &message),
        )),
    }
}

/// A LIST's response: every Lease at resourceVersion `rv`.
pub(super) fn list(encoding: Encoding, rv: u64, items: &[Value]) -> Response {
    match encoding {
        Encoding::Json => {
            let body = json!({
                "apiVersion": API_VERSION,
                "kind": "LeaseList",
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items,
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Encoding::Protobuf => {
            let messages: Vec<Vec<u8>> = items.iter().map(protobuf::lease_message).collect();
            let body = protobuf::list_of(API_VERSION, "LeaseList", &rv.to_string(), "", &messages);
            (StatusCode::OK, [(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
        }
    }
}

/// A watch's response: what `rx` gives, as it comes.
pub(super) fn stream(encoding: Encoding, rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let content_type = match encoding {
        Encoding::Json => "application/json".to_string(),
        Encoding::Protobuf => format!("{PROTOBUF};stream=watch"),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Events as the store keeps them, shared by every watch.
pub(super) type Shared = Arc<LeaseEvent>;

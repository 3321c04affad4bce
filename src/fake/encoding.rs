//! Which encoding a request to the fake API server gets, from its `Accept`.

use axum::http::{HeaderMap, header};

/// The Kubernetes protobuf media type.
pub(super) const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// The encoding a request gets: protobuf when it is the first media type its
/// `Accept` names (client-go's `application/vnd.kubernetes.protobuf,application/json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    /// What `headers` ask for.
    pub(super) fn of(headers: &HeaderMap) -> Encoding {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let first = accept.split(',').next().unwrap_or_default();
        if first.split(';').next().unwrap_or_default().trim() == PROTOBUF {
            Encoding::Protobuf
        } else {
            Encoding::Json
        }
    }
}

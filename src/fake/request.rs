//! What a LIST or WATCH request to the fake API server gets: its encoding,
//! from its `Accept`, and whether its streaming list is allowed.

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

/// Why a streaming list (`sendInitialEvents=true`) is refused with 422, as
/// the API server validates it; `None` when it is served. `served`: the
/// server has streaming lists (its WatchList gate on).
pub(super) fn streaming_list_refusal(
    served: bool,
    resource_version_match: Option<&str>,
    allow_watch_bookmarks: Option<bool>,
) -> Option<&'static str> {
    if !served {
        Some("sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled")
    } else if resource_version_match != Some("NotOlderThan") {
        Some("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
    } else if allow_watch_bookmarks != Some(true) {
        Some("sendInitialEvents requires setting allowWatchBookmarks to true")
    } else {
        None
    }
}

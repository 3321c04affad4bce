//! What every fake API endpoint checks first, and how it answers errors:
//! the bearer token, 429 throttling, the RBAC switch, and `Status` bodies.
//! Shared by the node, lease and review endpoints, which know nothing of one another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::{
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// The checks in front of every API request.
#[derive(Debug, Default)]
pub struct Gate {
    /// Bearer token clients must present (none: any client).
    pub token: Option<String>,
    /// Refuse every request with 403 while true.
    pub forbidden: AtomicBool,
    /// While non-zero: answer 429 with this `Retry-After` (seconds).
    pub throttle: AtomicU64,
    /// Requests answered 429.
    pub throttled: AtomicU64,
}

impl Gate {
    /// Checks the bearer token and the RBAC switch: `Some` is the refusal to send.
    pub fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        if let Some(token) = &self.token {
            let sent = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if sent != Some(token.as_str()) {
                return Some(status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"));
            }
        }
        let retry_after = self.throttle.load(Ordering::Acquire);
        if retry_after > 0 {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            let mut r = status(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
            return Some(r);
        }
        if self.forbidden.load(Ordering::Acquire) {
            return Some(status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "nodes is forbidden: User \"system:serviceaccount:monitoring:kube-node-status\" cannot list resource \"nodes\" in API group \"\" at the cluster scope",
            ));
        }
        None
    }
}

/// A Kubernetes `Status` error body with `code`.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Now, as the API server writes times.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

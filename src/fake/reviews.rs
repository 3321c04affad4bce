//! TokenReview and SubjectAccessReview for the fake API server: tokens
//! registered by tests name users, and users granted `get` on the
//! non-resource path `/metrics` are allowed it, as a ClusterRole with
//! `nonResourceURLs: ["/metrics"]` would allow them.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};

use super::gate::{Gate, status};

/// What the review endpoints see: the gate and the reviews.
type Api = (Arc<Gate>, Arc<Reviews>);

/// Known tokens and who may read /metrics.
#[derive(Default)]
pub struct Reviews {
    users: Mutex<HashMap<String, String>>,
    readers: Mutex<HashSet<String>>,
    count: AtomicU64,
}

impl Reviews {
    /// Makes `token` authenticate as `user`.
    pub fn add_token(&self, token: &str, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.insert(token.to_string(), user.to_string());
    }

    /// Lets `user` get /metrics.
    pub fn grant_metrics(&self, user: &str) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        readers.insert(user.to_string());
    }

    /// TokenReviews and SubjectAccessReviews answered so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

pub(super) fn routes<S: Clone + Send + Sync + 'static>(gate: Arc<Gate>, reviews: Arc<Reviews>) -> Router<S> {
    Router::new()
        .route("/apis/authentication.k8s.io/v1/tokenreviews", post(token_review))
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(access_review),
        )
        .with_state((gate, reviews))
}

fn answer(mut review: Value, status: Value) -> Response {
    review["status"] = status;
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        review.to_string(),
    )
        .into_response()
}

fn parse(body: &Bytes) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

/// Checks the caller, reads the review in the body, counts it, and answers
/// it with the status `decide` gives it.
fn review(
    (gate, reviews): &Api,
    headers: &HeaderMap,
    body: &Bytes,
    kind: &str,
    decide: impl FnOnce(&Reviews, &Value) -> Value,
) -> Response {
    if let Some(r) = gate.refusal(headers) {
        return r;
    }
    let Some(review) = parse(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("the body is not a {kind}"),
        );
    };
    reviews.count.fetch_add(1, Ordering::Relaxed);
    let decided = decide(reviews, &review["spec"]);
    answer(review, decided)
}

async fn token_review(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    review(&api, &headers, &body, "TokenReview", |reviews, spec| {
        let token = spec["token"].as_str().unwrap_or_default();
        let users = reviews.users.lock().unwrap_or_else(|e| e.into_inner());
        match users.get(token) {
            Some(name) => {
                json!({"authenticated": true, "user": {"username": name, "groups": ["system:authenticated"]}})
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        }
    })
}

async fn access_review(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    review(&api, &headers, &body, "SubjectAccessReview", |reviews, spec| {
        let user = spec["user"].as_str().unwrap_or_default();
        let wants_metrics = spec["nonResourceAttributes"]["path"] == "/metrics"
            && spec["nonResourceAttributes"]["verb"] == "get";
        let reader = reviews
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(user);
        json!({"allowed": wants_metrics && reader})
    })
}

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

/// The API server's own audience: what a token Secret is issued for.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// What the review endpoints see: the gate and the reviews.
type Api = (Arc<Gate>, Arc<Reviews>);

/// Known tokens and who may read /metrics.
#[derive(Default)]
pub struct Reviews {
    /// Token → (user, the audiences it was issued for).
    users: Mutex<HashMap<String, (String, Vec<String>)>>,
    readers: Mutex<HashSet<String>>,
    count: AtomicU64,
    token_reviews: AtomicU64,
    delay_ms: AtomicU64,
}

impl Reviews {
    /// Makes `token` authenticate as `user`, issued for the API server's own
    /// audience (as a service-account token Secret is).
    pub fn add_token(&self, token: &str, user: &str) {
        self.add_token_for(token, user, &[API_AUDIENCE]);
    }

    /// Makes `token` authenticate as `user`, issued for `audiences` (as a
    /// projected service-account token with `audience` is).
    pub fn add_token_for(&self, token: &str, user: &str, audiences: &[&str]) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        users.insert(token.to_string(), (user.to_string(), audiences));
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

    /// TokenReviews answered so far.
    pub fn token_reviews(&self) -> u64 {
        self.token_reviews.load(Ordering::Relaxed)
    }

    /// Holds every review this long before answering, as a slow or loaded API server would.
    pub fn set_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
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

async fn delay(reviews: &Reviews) {
    let ms = reviews.delay_ms.load(Ordering::Relaxed);
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
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
    api.1.token_reviews.fetch_add(1, Ordering::Relaxed);
    delay(&api.1).await;
    review(&api, &headers, &body, "TokenReview", |reviews, spec| {
        let token = spec["token"].as_str().unwrap_or_default();
        let users = reviews.users.lock().unwrap_or_else(|e| e.into_inner());
        // As the API server: with audiences asked for, a token is authenticated
        // only for those it was issued for, and the answer names them.
        let asked: Option<Vec<&str>> = spec["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect());
        match users.get(token) {
            Some((name, issued)) => {
                let audiences: Vec<&String> = match &asked {
                    Some(asked) => issued.iter().filter(|a| asked.contains(&a.as_str())).collect(),
                    None => issued.iter().collect(),
                };
                if audiences.is_empty() {
                    json!({"authenticated": false, "error": "token audiences do not match"})
                } else {
                    json!({
                        "authenticated": true,
                        "user": {"username": name, "groups": ["system:authenticated"]},
                        "audiences": audiences,
                    })
                }
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        }
    })
}

async fn access_review(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    delay(&api.1).await;
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

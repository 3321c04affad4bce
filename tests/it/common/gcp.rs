//! Stand-ins for Google: a GCE metadata server (`GCE_METADATA_HOST`) that
//! issues short-lived tokens and knows the project and the GKE cluster, and an
//! OAuth token endpoint for gcloud's user credentials.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};

/// What the fake Google knows and has issued.
pub struct Google {
    pub project: String,
    pub cluster: String,
    pub location: String,
    /// Lifetime of the tokens it issues.
    pub lifetime: Duration,
    /// Token → expiry, for every token issued.
    pub issued: Mutex<HashMap<String, Instant>>,
    /// Token requests to the metadata server and the OAuth endpoint.
    pub token_requests: AtomicUsize,
    /// The refresh token the OAuth endpoint accepts.
    pub refresh_token: String,
}

impl Google {
    fn issue(&self, prefix: &str) -> String {
        let n = self.token_requests.fetch_add(1, Ordering::AcqRel);
        let token = format!("{prefix}-{n}-{}", fastrand::u64(..));
        self.issued
            .lock()
            .unwrap()
            .insert(token.clone(), Instant::now() + self.lifetime);
        serde_json::json!({
            "access_token": token,
            "expires_in": self.lifetime.as_secs(),
            "token_type": "Bearer",
        })
        .to_string()
    }

    /// Ok if `authorization` carries a token we issued that has not expired.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), String> {
        let token = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .ok_or("no bearer token")?;
        match self.issued.lock().unwrap().get(token) {
            None => Err(format!("unknown token {token}")),
            Some(expiry) if *expiry <= Instant::now() => Err(format!("expired token {token}")),
            Some(_) => Ok(()),
        }
    }

    /// Distinct tokens issued so far.
    pub fn tokens(&self) -> usize {
        self.issued.lock().unwrap().len()
    }
}

/// A running fake; `host` is what goes into `GCE_METADATA_HOST`.
pub struct FakeGoogle {
    pub addr: SocketAddr,
    pub state: Arc<Google>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn metadata(headers: &HeaderMap, value: &str) -> (StatusCode, String) {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (StatusCode::FORBIDDEN, "Missing Metadata-Flavor: Google".into());
    }
    (StatusCode::OK, value.to_string())
}

impl FakeGoogle {
    pub async fn start(lifetime: Duration) -> FakeGoogle {
        let state = Arc::new(Google {
            project: "kns-test-project".into(),
            cluster: "kns-test-cluster".into(),
            location: "europe-west1-b".into(),
            lifetime,
            issued: Mutex::default(),
            token_requests: AtomicUsize::new(0),
            refresh_token: "refresh-me".into(),
        });
        let app = Router::new()
            .route(
                "/computeMetadata/v1/instance/service-accounts/default/token",
                get(|State(g): State<Arc<Google>>, h: HeaderMap| async move {
                    let (code, _) = metadata(&h, "");
                    if code != StatusCode::OK {
                        return (code, String::new());
                    }
                    (StatusCode::OK, g.issue("mds"))
                }),
            )
            .route(
                "/computeMetadata/v1/project/project-id",
                get(|State(g): State<Arc<Google>>, h: HeaderMap| async move { metadata(&h, &g.project) }),
            )
            .route(
                "/computeMetadata/v1/instance/attributes/cluster-name",
                get(|State(g): State<Arc<Google>>, h: HeaderMap| async move { metadata(&h, &g.cluster) }),
            )
            .route(
                "/computeMetadata/v1/instance/attributes/cluster-location",
                get(|State(g): State<Arc<Google>>, h: HeaderMap| async move { metadata(&h, &g.location) }),
            )
            .route(
                "/computeMetadata/v1/instance/zone",
                get(|State(g): State<Arc<Google>>, h: HeaderMap| async move {
                    metadata(&h, &format!("projects/123/zones/{}", g.location))
                }),
            )
            .route(
                "/computeMetadata/v1/universe/universe-domain",
                get(|h: HeaderMap| async move { metadata(&h, "googleapis.com") }),
            )
            .route(
                "/token",
                post(|State(g): State<Arc<Google>>, body: String| async move {
                    // google-cloud-auth posts JSON (RFC 6749 says form; Google takes both).
                    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    if json["grant_type"] != "refresh_token"
                        || json["refresh_token"] != g.refresh_token.as_str()
                    {
                        return (StatusCode::BAD_REQUEST, format!("bad token request: {body}"));
                    }
                    (StatusCode::OK, g.issue("user"))
                }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGoogle { addr, state, task }
    }

    /// The value for `GCE_METADATA_HOST`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

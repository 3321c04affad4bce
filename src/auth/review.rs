//! Scrape tokens checked with the Kubernetes API, as kube-rbac-proxy does:
//! a TokenReview says who the token belongs to, a SubjectAccessReview whether
//! that user may `get` the non-resource path `/metrics` (granted by a
//! ClusterRole rule `nonResourceURLs: ["/metrics"]`). Answers are cached for
//! a short while so that each scrape does not cost two API calls.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use tracing::{info, warn};

use super::{Verdict, bearer};

/// How long an answer is reused: a revoked token or binding takes effect within this.
pub const CACHE_FOR: Duration = Duration::from_secs(60);
/// Distinct tokens remembered at most; past that, the cache starts over.
const CACHE_SIZE: usize = 1024;
/// A review that takes longer is given up (the scrape gets 503, not a hang).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks tokens with the API server.
pub struct Reviewer {
    client: Client,
    path: String,
    /// Verdicts by token. Tokens are kept whole, not hashed: a lookup must
    /// match exactly, and they are in memory while a request holds them anyway.
    cache: Mutex<HashMap<Vec<u8>, (Instant, Verdict)>>,
    /// True while reviews fail: logged once per streak.
    failing: std::sync::atomic::AtomicBool,
}

impl Reviewer {
    /// Reviews with `client`, for `get` on `path` (`/metrics`).
    pub fn new(client: Client, path: &str) -> Reviewer {
        Reviewer {
            client,
            path: path.to_string(),
            cache: Mutex::new(HashMap::new()),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Checks an `Authorization` header value.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Verdict {
        let Some(token) = authorization.and_then(bearer) else {
            return Verdict::Missing;
        };
        if let Some(v) = self.cached(token) {
            return v;
        }
        let verdict = match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return self.unavailable(&e.to_string()),
            Err(_) => return self.unavailable("timed out"),
        };
        if self.failing.swap(false, std::sync::atomic::Ordering::AcqRel) {
            info!("scrape token reviews work again");
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_SIZE {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            if cache.len() >= CACHE_SIZE {
                cache.clear();
            }
        }
        cache.insert(token.to_vec(), (Instant::now(), verdict));
        verdict
    }

    fn cached(&self, token: &[u8]) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(token)
            .filter(|(at, _)| at.elapsed() < CACHE_FOR)
            .map(|(_, v)| *v)
    }

    fn unavailable(&self, reason: &str) -> Verdict {
        if !self.failing.swap(true, std::sync::atomic::Ordering::AcqRel) {
            warn!(
                reason,
                "cannot review scrape tokens with the Kubernetes API (TokenReview, SubjectAccessReview); answering 503 until it works"
            );
        }
        Verdict::Unavailable
    }

    async fn review(&self, token: &[u8]) -> Result<Verdict, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: String::from_utf8_lossy(token).into_owned(),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Ok(Verdict::Invalid);
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(self.path.clone()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let decided = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        Ok(if decided.status.is_some_and(|s| s.allowed) {
            Verdict::Allowed
        } else {
            Verdict::Forbidden
        })
    }
}

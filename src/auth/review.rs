//! Scrape tokens checked with the Kubernetes API, as kube-rbac-proxy does:
//! a TokenReview says who the token belongs to (and, with audiences, that it
//! was issued for this exporter), a SubjectAccessReview whether that user may
//! `get` the non-resource path `/metrics` (granted by a ClusterRole rule
//! `nonResourceURLs: ["/metrics"]`). [`Lookups`] bounds how often that is
//! asked: an unauthenticated client cannot turn its requests into API calls.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use tracing::{info, warn};

use super::{
    Verdict, bearer,
    lookups::{Limits, Lookups, Review},
};
use crate::surface::SurfaceStats;

/// A review that takes longer is given up (the scrape gets 503, not a hang).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks tokens with the API server.
pub struct Reviewer {
    lookups: Lookups,
}

/// What the API calls need.
struct ReviewApi {
    client: Client,
    path: String,
    audiences: Vec<String>,
    /// True while reviews fail: logged once per streak.
    failing: AtomicBool,
}

impl Reviewer {
    /// Reviews with `client`, for `get` on `path` (`/metrics`), accepting
    /// only tokens issued for one of `audiences` when there are any.
    pub fn new(client: Client, path: &str, audiences: Vec<String>, stats: Arc<SurfaceStats>) -> Reviewer {
        let api = Arc::new(ReviewApi {
            client,
            path: path.to_string(),
            audiences,
            failing: AtomicBool::new(false),
        });
        let review: Review = Arc::new(move |token| {
            let api = api.clone();
            async move { api.judge(token).await }.boxed()
        });
        Reviewer {
            lookups: Lookups::new(Limits::default(), review, stats),
        }
    }

    /// Checks an `Authorization` header value sent from `peer`.
    pub async fn check(&self, authorization: Option<&[u8]>, peer: Option<std::net::IpAddr>) -> Verdict {
        let Some(token) = authorization.and_then(bearer) else {
            return Verdict::Missing;
        };
        self.lookups.check(token, peer).await
    }
}

impl ReviewApi {
    async fn judge(&self, token: Vec<u8>) -> Verdict {
        let verdict = match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return self.unavailable(&e.to_string()),
            Err(_) => return self.unavailable("timed out"),
        };
        if self.failing.swap(false, Ordering::AcqRel) {
            info!("scrape token reviews work again");
        }
        verdict
    }

    fn unavailable(&self, reason: &str) -> Verdict {
        if !self.failing.swap(true, Ordering::AcqRel) {
            warn!(
                reason,
                "cannot review scrape tokens with the Kubernetes API (TokenReview, SubjectAccessReview); answering 503 until it works"
            );
        }
        Verdict::Unavailable
    }

    async fn review(&self, token: Vec<u8>) -> Result<Verdict, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: String::from_utf8_lossy(&token).into_owned(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        if !authenticated_for(&status, &self.audiences) {
            return Ok(Verdict::Invalid);
        }
        let Some(user) = status.user else {
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

/// True if the API server authenticated the token and, when audiences were
/// asked for, said which of them it is valid for. An API server that ignored
/// the audiences (answering none) is not taken at its word: the token may
/// be one issued for the API server itself, which this exporter must refuse.
fn authenticated_for(
    status: &k8s_openapi::api::authentication::v1::TokenReviewStatus,
    wanted: &[String],
) -> bool {
    if status.authenticated != Some(true) {
        return false;
    }
    wanted.is_empty()
        || status
            .audiences
            .as_ref()
            .is_some_and(|got| got.iter().any(|a| wanted.contains(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenReviewStatus;

    #[test]
    fn audiences_table() {
        let status = |authenticated: Option<bool>, audiences: Option<&[&str]>| TokenReviewStatus {
            authenticated,
            audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        let want = ["kube-node-status".to_string()];
        for (s, wanted, ok) in [
            (status(Some(true), None), &[][..], true),
            (status(Some(false), None), &[][..], false),
            (status(None, None), &[][..], false),
            (status(Some(true), Some(&["kube-node-status"])), &want[..], true),
            (
                status(Some(true), Some(&["other", "kube-node-status"])),
                &want[..],
                true,
            ),
            (
                status(Some(true), Some(&["https://kubernetes.default.svc"])),
                &want[..],
                false,
            ),
            (status(Some(true), Some(&[])), &want[..], false),
            (status(Some(true), None), &want[..], false),
        ] {
            assert_eq!(authenticated_for(&s, wanted), ok, "{s:?} for {wanted:?}");
        }
    }
}

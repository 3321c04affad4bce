//! A tower layer on the Kubernetes client that sees each Node LIST and WATCH response.
//!
//! The watcher swallows bookmarks and reconnects silently, so its event
//! stream alone cannot tell a quiet, healthy watch from a broken one. The
//! HTTP status of the WATCH request can: once the API accepts a WATCH from a
//! known resourceVersion, the view is current again.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower::{Layer, Service};

use super::health::{ApiVerb, Health};

/// Wraps the client's HTTP service to feed [`Health`].
#[derive(Clone)]
pub struct ApiObserverLayer {
    health: Arc<Health>,
}

impl ApiObserverLayer {
    /// Reports into `health`.
    pub fn new(health: Arc<Health>) -> Self {
        ApiObserverLayer { health }
    }
}

impl<S> Layer<S> for ApiObserverLayer {
    type Service = ApiObserver<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiObserver {
            inner,
            health: self.health.clone(),
        }
    }
}

/// The service made by [`ApiObserverLayer`].
#[derive(Clone)]
pub struct ApiObserver<S> {
    inner: S,
    health: Arc<Health>,
}

/// Which watcher request this is, if any: only Node collection reads count.
fn classify<B>(req: &Request<B>) -> Option<ApiVerb> {
    if req.method() != http::Method::GET || !req.uri().path().ends_with("/nodes") {
        return None;
    }
    let query = req.uri().query().unwrap_or_default();
    let has = |param: &str| query.split('&').any(|kv| kv == param);
    // A streaming list is a list: its being accepted says nothing of the view
    // until its initial events are all in.
    let watching = has("watch=true") && !has("sendInitialEvents=true");
    Some(if watching { ApiVerb::Watch } else { ApiVerb::List })
}

impl<S, B, RB> Service<Request<B>> for ApiObserver<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let verb = classify(&req);
        let fut = self.inner.call(req);
        let health = self.health.clone();
        Box::pin(async move {
            let res = fut.await;
            if let Some(verb) = verb {
                let accepted = res.as_ref().is_ok_and(|r| r.status().is_success());
                if health.on_request(verb, accepted) {
                    tracing::info!(verb = verb.as_str(), "node watch is current again");
                }
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_only_node_collection_reads() {
        let cases = [
            ("GET", "/api/v1/nodes?limit=500", Some(ApiVerb::List)),
            (
                "GET",
                "/api/v1/nodes?watch=true&resourceVersion=5",
                Some(ApiVerb::Watch),
            ),
            (
                "GET",
                "/api/v1/nodes?allowWatchBookmarks=true&watch=true",
                Some(ApiVerb::Watch),
            ),
            ("GET", "/api/v1/nodes?watch=false", Some(ApiVerb::List)),
            ("GET", "/api/v1/nodes/a", None),
            ("PUT", "/api/v1/nodes", None),
            (
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/x/leases?watch=true",
                None,
            ),
        ];
        for (method, uri, want) in cases {
            let req = Request::builder().method(method).uri(uri).body(()).unwrap();
            assert_eq!(classify(&req), want, "{method} {uri}");
        }
    }
}

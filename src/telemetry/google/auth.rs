//! Access tokens from Application Default Credentials, injected into every
//! OTLP request by a tonic interceptor.
//!
//! google-cloud-auth finds the credentials (`GOOGLE_APPLICATION_CREDENTIALS`,
//! gcloud's ADC file, else the metadata server) and refreshes tokens in the
//! background before they expire. Interceptors are synchronous, so we keep the
//! latest headers here and refresh them before each metrics collection and
//! every few seconds for the span exporter.

use std::{
    sync::{Arc, Once, RwLock},
    time::Duration,
};

use google_cloud_auth::credentials::{Builder, CacheableResource, Credentials, EntityTag};
use http::Extensions;
use tonic::{
    Code, Request, Status,
    metadata::{KeyAndValueRef, MetadataMap},
    service::Interceptor,
};
use tracing::debug;

use crate::config::ConfigError;

/// How often the background task picks up a refreshed token. The crate renews
/// tokens minutes before they expire, so this only bounds how late we notice.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

const HOW_TO_AUTHENTICATE: &str = "On GKE, use Workload Identity (docs/gcp.md); elsewhere set \
     GOOGLE_APPLICATION_CREDENTIALS to a service-account key or run `gcloud auth application-default login`";

#[derive(Default)]
struct State {
    headers: Option<MetadataMap>,
    tag: Option<EntityTag>,
    error: Option<String>,
}

/// Application Default Credentials and the request headers they currently give.
pub struct GoogleAuth {
    credentials: Credentials,
    source: String,
    state: RwLock<State>,
}

impl std::fmt::Debug for GoogleAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleAuth")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// google-cloud-auth talks TLS through reqwest built without a crypto
/// provider; the process uses ring everywhere else.
pub(super) fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only means one is installed already, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Where Application Default Credentials will come from, for the start-up log.
pub fn credential_source(env: &dyn Fn(&str) -> Option<String>) -> String {
    let describe = |path: &str| -> String {
        let kind = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
            .unwrap_or_else(|| "unreadable".into());
        format!("{kind} credentials from {path}")
    };
    if let Some(path) = env("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty()) {
        return describe(&path);
    }
    if let Some(home) = env("HOME") {
        let path = format!("{home}/.config/gcloud/application_default_credentials.json");
        if std::path::Path::new(&path).exists() {
            return describe(&path);
        }
    }
    let host = env("GCE_METADATA_HOST").unwrap_or_else(|| "metadata.google.internal".into());
    format!("the metadata server at {host}")
}

impl GoogleAuth {
    /// Finds Application Default Credentials. Fails only on a credentials file
    /// that cannot be used; a missing metadata server shows at the first token.
    /// Must run inside the tokio runtime (token refresh is a task on it).
    pub fn from_adc() -> Result<Arc<GoogleAuth>, ConfigError> {
        install_crypto_provider();
        let source = credential_source(&|k| std::env::var(k).ok());
        let credentials = Builder::default()
            .build()
            .map_err(|e| ConfigError::Google(format!("cannot use {source}: {e}")))?;
        Ok(Arc::new(GoogleAuth {
            credentials,
            source,
            state: RwLock::default(),
        }))
    }

    /// Where the credentials come from, e.g. "the metadata server at …".
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Why no token is at hand yet, and what to do about it.
    pub fn no_token(&self) -> String {
        self.read().error.clone().unwrap_or_else(|| {
            format!(
                "no Google access token from {} in time. {HOW_TO_AUTHENTICATE}",
                self.source
            )
        })
    }

    /// Fetches the current headers (cheap while the cached token is valid; waits
    /// for a new one if it has expired). On failure keeps the old headers, which
    /// the API will judge, and remembers the error for requests without any.
    pub async fn refresh(&self) -> Result<(), String> {
        let mut extensions = Extensions::new();
        if let Some(tag) = self.read().tag.clone() {
            extensions.insert(tag);
        }
        match self.credentials.headers(extensions).await {
            Ok(CacheableResource::NotModified) => Ok(()),
            Ok(CacheableResource::New { entity_tag, data }) => {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                state.headers = Some(MetadataMap::from_headers(data));
                state.tag = Some(entity_tag);
                state.error = None;
                debug!("Google access token refreshed");
                Ok(())
            }
            Err(e) => {
                let text = format!(
                    "no Google access token from {}: {e}. {HOW_TO_AUTHENTICATE}",
                    self.source
                );
                self.state.write().unwrap_or_else(|e| e.into_inner()).error = Some(text.clone());
                Err(text)
            }
        }
    }

    /// Refreshes forever, so that exporters without their own refresh (spans)
    /// keep sending a valid token.
    pub async fn refresh_loop(self: Arc<Self>) {
        loop {
            let _ = self.refresh().await;
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds fixed headers (`OTEL_EXPORTER_OTLP_HEADERS`) and, in Google mode, the
/// current `authorization` and `x-goog-user-project` to every request.
#[derive(Clone, Debug, Default)]
pub struct RequestHeaders {
    fixed: MetadataMap,
    google: Option<Arc<GoogleAuth>>,
}

impl RequestHeaders {
    /// Headers from `fixed`, plus Google's when `google` is set.
    pub fn new(fixed: MetadataMap, google: Option<Arc<GoogleAuth>>) -> Self {
        RequestHeaders { fixed, google }
    }
}

fn copy_into(from: &MetadataMap, to: &mut MetadataMap) {
    for kv in from.iter() {
        match kv {
            KeyAndValueRef::Ascii(k, v) => {
                to.insert(k.clone(), v.clone());
            }
            KeyAndValueRef::Binary(k, v) => {
                to.insert_bin(k.clone(), v.clone());
            }
        }
    }
}

impl Interceptor for RequestHeaders {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        copy_into(&self.fixed, request.metadata_mut());
        if let Some(google) = &self.google {
            let state = google.read();
            match &state.headers {
                Some(headers) => copy_into(headers, request.metadata_mut()),
                None => {
                    drop(state);
                    return Err(Status::unauthenticated(google.no_token()));
                }
            }
        }
        Ok(request)
    }
}

/// What to do about a refusal from the Telemetry API, if it is about access.
pub fn permission_hint(code: Code, project: Option<&str>) -> Option<String> {
    let project = project.unwrap_or("PROJECT_ID");
    match code {
        Code::PermissionDenied => Some(format!(
            "grant the exporter's service account roles/telemetry.metricsWriter on project {project} \
             and enable the API (gcloud services enable telemetry.googleapis.com --project {project}); \
             see docs/gcp.md"
        )),
        Code::Unauthenticated => Some(format!(
            "the credentials were refused: check Workload Identity (the Kubernetes service account's \
             iam.gke.io/gcp-service-account annotation, or a principal binding) or the key in \
             GOOGLE_APPLICATION_CREDENTIALS, and that telemetry.googleapis.com is enabled on project \
             {project}; see docs/gcp.md"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_role_and_the_api() {
        let denied = permission_hint(Code::PermissionDenied, Some("p1")).unwrap();
        assert!(denied.contains("roles/telemetry.metricsWriter"), "{denied}");
        assert!(
            denied.contains("telemetry.googleapis.com --project p1"),
            "{denied}"
        );
        assert!(permission_hint(Code::Unauthenticated, None).is_some());
        assert!(permission_hint(Code::Unavailable, None).is_none());
    }

    #[test]
    fn credential_source_follows_the_adc_order() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.json");
        std::fs::write(&key, r#"{"type": "service_account"}"#).unwrap();
        let key_path = key.to_str().unwrap().to_string();
        let env = |k: &str| (k == "GOOGLE_APPLICATION_CREDENTIALS").then(|| key_path.clone());
        assert_eq!(
            credential_source(&env),
            format!("service_account credentials from {key_path}")
        );
        let home = dir.path().to_str().unwrap().to_string();
        let env = |k: &str| match k {
            "HOME" => Some(home.clone()),
            "GCE_METADATA_HOST" => Some("127.0.0.1:9".into()),
            _ => None,
        };
        assert_eq!(credential_source(&env), "the metadata server at 127.0.0.1:9");
        std::fs::create_dir_all(dir.path().join(".config/gcloud")).unwrap();
        std::fs::write(
            dir.path()
                .join(".config/gcloud/application_default_credentials.json"),
            r#"{"type": "authorized_user"}"#,
        )
        .unwrap();
        assert!(credential_source(&env).starts_with("authorized_user credentials from "));
    }

    #[test]
    fn without_a_token_requests_fail_as_unauthenticated() {
        // No runtime is needed to build the interceptor itself.
        let mut fixed = MetadataMap::new();
        fixed.insert("x-tenant", "a".parse().unwrap());
        let mut plain = RequestHeaders::new(fixed, None);
        let req = plain.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("x-tenant").unwrap(), "a");
    }
}

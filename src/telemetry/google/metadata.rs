//! The GCE metadata server, asked where we run: project, and on GKE the
//! cluster's name and location. `GCE_METADATA_HOST` overrides its address,
//! as in Google's own client libraries.

use std::time::Duration;

/// Each lookup is a local call on GCP; anything slower means we are elsewhere.
const TIMEOUT: Duration = Duration::from_secs(3);

/// What the metadata server told us; `None` for what it does not know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detected {
    /// `project/project-id`.
    pub project_id: Option<String>,
    /// The GKE `cluster-name` instance attribute.
    pub cluster_name: Option<String>,
    /// The GKE `cluster-location` instance attribute, else the instance's zone.
    pub cluster_location: Option<String>,
}

/// The metadata server's host (and port).
pub fn host(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("GCE_METADATA_HOST")
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "metadata.google.internal".into())
}

/// Asks the metadata server at `host`. Fails only if it cannot be reached or
/// answers garbage; a missing attribute (not on GKE) is `None`.
pub async fn detect(host: &str) -> Result<Detected, String> {
    super::auth::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        // A proxy must never see metadata requests.
        .no_proxy()
        .build()
        .map_err(|e| format!("metadata client: {e}"))?;
    let get = |path: &'static str| {
        let client = client.clone();
        let url = format!("http://{host}/computeMetadata/v1/{path}");
        async move {
            let response = client
                .get(&url)
                .header("Metadata-Flavor", "Google")
                .send()
                .await
                .map_err(|e| format!("the metadata server at {host} is unreachable ({e})"))?;
            match response.status() {
                s if s.is_success() => {
                    let text = response.text().await.map_err(|e| format!("reading {url}: {e}"))?;
                    Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()))
                }
                reqwest::StatusCode::NOT_FOUND => Ok(None),
                s => Err(format!("the metadata server at {host} answered {s} for {path}")),
            }
        }
    };
    let (project_id, cluster_name, cluster_location, zone) = tokio::try_join!(
        get("project/project-id"),
        get("instance/attributes/cluster-name"),
        get("instance/attributes/cluster-location"),
        get("instance/zone"),
    )?;
    Ok(Detected {
        project_id,
        cluster_name,
        // `instance/zone` reads projects/NUMBER/zones/ZONE.
        cluster_location: cluster_location
            .or_else(|| zone.and_then(|z| z.rsplit('/').next().map(str::to_string))),
    })
}

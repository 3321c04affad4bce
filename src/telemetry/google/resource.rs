//! The resource attributes Google's Telemetry API maps onto the
//! `prometheus_target` monitored resource: project (`gcp.project_id`),
//! location (`cloud.availability_zone` or `cloud.region`), cluster
//! (`k8s.cluster.name`), namespace (`k8s.namespace.name`), job
//! (`service.name`) and instance (`service.instance.id`, required).
//!
//! Flags and `OTEL_RESOURCE_ATTRIBUTES` come first; what they leave out is
//! detected from the credentials file and the metadata server.

use super::metadata::{self, Detected};
use crate::config::ConfigError;
use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::Resource;

/// What the resource already holds, non-empty values only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Have {
    project_id: Option<String>,
    location: bool,
    cluster_name: Option<String>,
    namespace: Option<String>,
    instance_id: bool,
}

fn have(resource: &Resource) -> Have {
    let get = |k: &'static str| {
        resource
            .get(&Key::from_static_str(k))
            .map(|v| v.to_string())
            .filter(|v| !v.trim().is_empty())
    };
    Have {
        project_id: get("gcp.project_id"),
        location: get("cloud.availability_zone").is_some() || get("cloud.region").is_some(),
        cluster_name: get("k8s.cluster.name"),
        namespace: get("k8s.namespace.name"),
        instance_id: get("service.instance.id").is_some(),
    }
}

/// `cloud.availability_zone` for a zone (us-central1-a), else `cloud.region`.
pub fn location_attribute(location: &str) -> KeyValue {
    let parts: Vec<&str> = location.split('-').collect();
    let is_zone = parts.len() >= 3
        && parts
            .last()
            .is_some_and(|z| z.len() == 1 && z.chars().all(|c| c.is_ascii_lowercase()));
    let key = if is_zone {
        "cloud.availability_zone"
    } else {
        "cloud.region"
    };
    KeyValue::new(key, location.to_string())
}

const HOW_TO_SET: &str = "set --gcp-project-id and --cluster-location (or gcp.project_id and \
     cloud.region in OTEL_RESOURCE_ATTRIBUTES)";

/// The attributes to add, given what the resource has, the project of the
/// credentials file, and what the metadata server said (or why it could not).
/// Errors when the project or the location stays unknown.
fn additions(
    have: &Have,
    credentials_project: Option<String>,
    detected: &Result<Detected, String>,
    namespace_fallback: Option<String>,
) -> Result<(Vec<KeyValue>, Vec<String>), String> {
    let mut add = Vec::new();
    let mut warnings = Vec::new();
    if !have.instance_id {
        return Err(
            "service.instance.id is empty; the Telemetry API rejects points without an \
                    instance (set POD_NAME or service.instance.id in OTEL_RESOURCE_ATTRIBUTES)"
                .into(),
        );
    }
    let found = detected.as_ref().ok();
    let unreachable = detected.as_ref().err();
    if have.project_id.is_none() {
        match credentials_project.or_else(|| found.and_then(|d| d.project_id.clone())) {
            Some(p) => add.push(KeyValue::new("gcp.project_id", p)),
            None => {
                return Err(format!(
                    "the Google Cloud project is unknown{}; {HOW_TO_SET}",
                    unreachable
                        .map(|e| format!(" ({e}; not on GCP?)"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    if !have.location {
        match found.and_then(|d| d.cluster_location.clone()) {
            Some(l) => add.push(location_attribute(&l)),
            None => {
                return Err(format!(
                    "the cluster location is unknown{}; {HOW_TO_SET}",
                    unreachable
                        .map(|e| format!(" ({e}; not on GCP?)"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    if have.cluster_name.is_none() {
        match found.and_then(|d| d.cluster_name.clone()) {
            Some(c) => add.push(KeyValue::new("k8s.cluster.name", c)),
            None => warnings.push(
                "the cluster name is unknown; set --cluster-name so that series of different \
                 clusters stay apart in Cloud Monitoring"
                    .to_string(),
            ),
        }
    }
    if have.namespace.is_none() {
        match namespace_fallback {
            Some(ns) => add.push(KeyValue::new("k8s.namespace.name", ns)),
            None => warnings
                .push("the namespace is unknown; set k8s.namespace.name in OTEL_RESOURCE_ATTRIBUTES".into()),
        }
    }
    Ok((add, warnings))
}

/// The `project_id` (or `quota_project_id`) of the credentials file, if any.
fn credentials_project(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let path = env("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty())?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    ["project_id", "quota_project_id"]
        .iter()
        .find_map(|k| json.get(*k)?.as_str().map(str::to_string))
        .filter(|p| !p.is_empty())
}

/// The namespace from the downward API, else the service account mount.
fn namespace_fallback(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    env("POD_NAMESPACE").filter(|n| !n.is_empty()).or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .ok()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
    })
}

/// Completes `base` with what the Telemetry API needs, asking the metadata
/// server only for what is missing. Returns warnings to log (logging may not
/// be up yet).
pub async fn complete(
    base: Resource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Resource, Vec<String>), ConfigError> {
    let have = have(&base);
    let from_credentials = credentials_project(env);
    let need_metadata = (have.project_id.is_none() && from_credentials.is_none())
        || !have.location
        || have.cluster_name.is_none();
    let detected = if need_metadata {
        metadata::detect(&metadata::host(env)).await
    } else {
        Ok(Detected::default())
    };
    let (add, warnings) = additions(&have, from_credentials, &detected, namespace_fallback(env))
        .map_err(ConfigError::Google)?;
    let resource = Resource::builder_empty()
        .with_attributes(base.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .with_attributes(add)
        .build();
    Ok((resource, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Detected {
        Detected {
            project_id: Some("mds-project".into()),
            cluster_name: Some("mds-cluster".into()),
            cluster_location: Some("europe-west1-b".into()),
        }
    }

    fn keys(add: &[KeyValue]) -> Vec<(String, String)> {
        add.iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect()
    }

    #[test]
    fn zones_and_regions() {
        for (loc, key) in [
            ("us-central1-a", "cloud.availability_zone"),
            ("us-central1", "cloud.region"),
            ("europe-west1-b", "cloud.availability_zone"),
            ("asia-northeast1", "cloud.region"),
            ("global", "cloud.region"),
        ] {
            assert_eq!(location_attribute(loc).key.as_str(), key, "{loc}");
        }
    }

    #[test]
    fn metadata_fills_what_is_missing() {
        let have = Have {
            instance_id: true,
            ..Have::default()
        };
        let (add, warnings) = additions(&have, None, &Ok(full()), Some("monitoring".into())).unwrap();
        assert_eq!(
            keys(&add),
            [
                ("gcp.project_id", "mds-project"),
                ("cloud.availability_zone", "europe-west1-b"),
                ("k8s.cluster.name", "mds-cluster"),
                ("k8s.namespace.name", "monitoring"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn what_is_set_wins_and_the_credentials_project_beats_metadata() {
        let have = Have {
            project_id: None,
            location: true,
            cluster_name: Some("c".into()),
            namespace: Some("ns".into()),
            instance_id: true,
        };
        let (add, _) = additions(&have, Some("key-project".into()), &Ok(full()), None).unwrap();
        assert_eq!(
            keys(&add),
            [("gcp.project_id".to_string(), "key-project".to_string())]
        );
    }

    #[test]
    fn unknown_project_or_location_fails_with_what_to_set() {
        let have = Have {
            instance_id: true,
            ..Have::default()
        };
        let unreachable =
            Err("the metadata server at metadata.google.internal is unreachable (dns)".to_string());
        let err = additions(&have, None, &unreachable, None).unwrap_err();
        assert!(err.contains("project is unknown"), "{err}");
        assert!(err.contains("unreachable"), "{err}");
        assert!(err.contains("--gcp-project-id"), "{err}");
        let err = additions(&have, Some("p".into()), &unreachable, None).unwrap_err();
        assert!(err.contains("location is unknown"), "{err}");
        // Not on GKE: the metadata server knows the project but no cluster attributes.
        let gce = Detected {
            project_id: Some("p".into()),
            ..Detected::default()
        };
        let err = additions(&have, None, &Ok(gce), None).unwrap_err();
        assert!(err.contains("location is unknown"), "{err}");
    }

    #[test]
    fn a_missing_cluster_or_namespace_only_warns() {
        let have = Have {
            project_id: Some("p".into()),
            location: true,
            instance_id: true,
            ..Have::default()
        };
        let (add, warnings) = additions(&have, None, &Err("down".into()), None).unwrap();
        assert!(add.is_empty());
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn an_empty_instance_is_refused() {
        let err = additions(&Have::default(), None, &Ok(full()), None).unwrap_err();
        assert!(err.contains("service.instance.id"), "{err}");
    }
}

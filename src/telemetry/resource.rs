//! The OpenTelemetry resource shared by every signal.

use opentelemetry::KeyValue;
use opentelemetry_sdk::{
    Resource,
    resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector},
};

use crate::config::ResourceSettings;

/// Our defaults, overridden by `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME`,
/// then by explicit flags (`--cluster-name`): the more specific source wins.
pub fn build(settings: &ResourceSettings, env: &dyn Fn(&str) -> Option<String>) -> Resource {
    let mut builder = Resource::builder_empty()
        .with_detectors(&[Box::new(TelemetryResourceDetector) as Box<dyn ResourceDetector>])
        .with_attributes([
            KeyValue::new("service.name", "kube-node-status"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", settings.instance_id.clone()),
        ])
        .with_detector(Box::new(EnvResourceDetector::new()));
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|n| !n.is_empty()) {
        builder = builder.with_service_name(name);
    }
    if let Some(cluster) = &settings.cluster_name {
        builder = builder.with_attribute(KeyValue::new("k8s.cluster.name", cluster.clone()));
    }
    if let Some(location) = &settings.cluster_location {
        builder = builder.with_attribute(super::google::location_attribute(location));
    }
    if let Some(project) = &settings.gcp_project_id {
        builder = builder.with_attribute(KeyValue::new("gcp.project_id", project.clone()));
    }
    builder.build()
}

/// [`build`], completed in Google mode with what the Telemetry API needs
/// (detected from the credentials and the metadata server), with warnings
/// to log. Fails if the project or the location stays unknown.
pub async fn resolve(
    settings: &ResourceSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Resource, Vec<String>), crate::config::ConfigError> {
    let base = build(settings, env);
    if settings.google {
        super::google::complete_resource(base, env).await
    } else {
        Ok((base, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Key;

    fn get(r: &Resource, key: &'static str) -> Option<String> {
        r.get(&Key::from_static_str(key)).map(|v| v.to_string())
    }

    #[test]
    fn defaults_and_flags() {
        let s = ResourceSettings {
            cluster_name: Some("prod".into()),
            cluster_location: Some("us-central1".into()),
            gcp_project_id: Some("proj".into()),
            instance_id: "pod-1".into(),
            ..ResourceSettings::default()
        };
        let r = build(&s, &|_| None);
        assert_eq!(get(&r, "service.name").as_deref(), Some("kube-node-status"));
        assert_eq!(
            get(&r, "service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(get(&r, "service.instance.id").as_deref(), Some("pod-1"));
        assert_eq!(get(&r, "k8s.cluster.name").as_deref(), Some("prod"));
        assert_eq!(get(&r, "cloud.region").as_deref(), Some("us-central1"));
        assert_eq!(get(&r, "gcp.project_id").as_deref(), Some("proj"));
        let r = build(
            &ResourceSettings {
                instance_id: "x".into(),
                ..ResourceSettings::default()
            },
            &|_| None,
        );
        assert_eq!(get(&r, "k8s.cluster.name"), None);
    }

    #[test]
    fn otel_service_name_overrides_the_default() {
        let s = ResourceSettings {
            instance_id: "pod-1".into(),
            ..ResourceSettings::default()
        };
        let r = build(&s, &|k| (k == "OTEL_SERVICE_NAME").then(|| "nodes".to_string()));
        assert_eq!(get(&r, "service.name").as_deref(), Some("nodes"));
    }
}

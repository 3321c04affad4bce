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
    builder.build()
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
            instance_id: "pod-1".into(),
        };
        let r = build(&s, &|_| None);
        assert_eq!(get(&r, "service.name").as_deref(), Some("kube-node-status"));
        assert_eq!(
            get(&r, "service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(get(&r, "service.instance.id").as_deref(), Some("pod-1"));
        assert_eq!(get(&r, "k8s.cluster.name").as_deref(), Some("prod"));
        let r = build(
            &ResourceSettings {
                cluster_name: None,
                instance_id: "x".into(),
            },
            &|_| None,
        );
        assert_eq!(get(&r, "k8s.cluster.name"), None);
    }

    #[test]
    fn otel_service_name_overrides_the_default() {
        let s = ResourceSettings {
            cluster_name: None,
            instance_id: "pod-1".into(),
        };
        let r = build(&s, &|k| (k == "OTEL_SERVICE_NAME").then(|| "nodes".to_string()));
        assert_eq!(get(&r, "service.name").as_deref(), Some("nodes"));
    }
}

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

/// Resource attributes that differ from one replica to the next.
pub const PER_REPLICA: &[&str] = &[
    "k8s.pod.name",
    "k8s.pod.uid",
    "host.name",
    "host.id",
    "process.pid",
];

/// The resource of the node and cluster readings. With leader election the
/// replica that exports them changes at every failover and rollout; were
/// `service.instance.id` the pod's, a backend would hold the old leader's
/// series beside the new one's for its lookback (5 minutes in Cloud
/// Monitoring's PromQL) and every count over nodes would double. So it is the
/// cluster's name (when known) and the Lease's namespace and name,
/// `cluster/namespace/name`, the same for every leader; only one replica
/// exports at a time. The attributes that name the pod or its host
/// ([`PER_REPLICA`], set by the chart's `OTEL_RESOURCE_ATTRIBUTES`) go too, for
/// a backend that keeps them as labels. Self-telemetry keeps them all.
pub fn readings(resource: &Resource, lease: Option<&crate::leader::LeaseSettings>) -> Resource {
    let Some(lease) = lease else {
        return resource.clone();
    };
    // The cluster too, when known: two clusters' releases of the same name
    // in the same namespace must not write one series in a shared backend.
    let cluster = resource
        .get(&opentelemetry::Key::from_static_str("k8s.cluster.name"))
        .map(|c| c.to_string());
    let id = [cluster, lease.namespace.clone(), Some(lease.name.clone())]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("/");
    let attributes = resource
        .iter()
        .filter(|(k, _)| k.as_str() != "service.instance.id" && !PER_REPLICA.contains(&k.as_str()))
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .chain([KeyValue::new("service.instance.id", id)]);
    match resource.schema_url() {
        Some(url) => Resource::builder_empty()
            .with_schema_url(attributes, url.to_string())
            .build(),
        None => Resource::builder_empty().with_attributes(attributes).build(),
    }
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

    #[test]
    fn readings_carry_the_lease_as_their_instance_under_leader_election() {
        let settings = ResourceSettings {
            instance_id: "kns-0".into(),
            cluster_name: Some("prod".into()),
            ..Default::default()
        };
        // As the chart's OTEL_RESOURCE_ATTRIBUTES adds them.
        let own = Resource::builder_empty()
            .with_attributes(
                build(&settings, &|_| None)
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attributes([
                KeyValue::new("k8s.namespace.name", "monitoring"),
                KeyValue::new("k8s.pod.name", "kns-0"),
            ])
            .build();
        assert_eq!(get(&own, "k8s.pod.name").as_deref(), Some("kns-0"));
        let lease = |namespace: Option<&str>| crate::leader::LeaseSettings {
            name: "kns-kube-node-status".into(),
            namespace: namespace.map(str::to_string),
            duration: std::time::Duration::from_secs(15),
            identity: "kns-0_0000abcd".into(),
        };
        let r = readings(&own, Some(&lease(Some("monitoring"))));
        assert_eq!(
            get(&r, "service.instance.id").as_deref(),
            Some("prod/monitoring/kns-kube-node-status")
        );
        assert_eq!(get(&r, "k8s.cluster.name").as_deref(), Some("prod"));
        assert_eq!(get(&r, "k8s.namespace.name").as_deref(), Some("monitoring"));
        assert_eq!(get(&r, "k8s.pod.name"), None, "the pod is the replica's");
        assert_eq!(
            r.len(),
            own.len() - 1,
            "only the instance changes and the pod goes"
        );
        assert_eq!(
            get(&readings(&own, Some(&lease(None))), "service.instance.id").as_deref(),
            Some("prod/kns-kube-node-status")
        );
        // Without leader election the one replica is the instance.
        assert_eq!(
            get(&readings(&own, None), "service.instance.id").as_deref(),
            Some("kns-0")
        );
    }

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

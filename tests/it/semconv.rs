//! The OTLP output against the semantic conventions' Kubernetes model
//! (vendored in `tests/semconv/`, with its provenance and licence), so the
//! names the project shares with semconv keep matching it and the ones it
//! adds under `k8s.*` are marked as its own in `docs/metrics.md`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::common::{Exporter, fixture_api, otlp};

#[derive(Deserialize)]
struct Model {
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    #[serde(default)]
    metric_name: Option<String>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    attributes: Vec<Attribute>,
}

#[derive(Deserialize)]
struct Attribute {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default, rename = "type")]
    type_: serde_yaml_ng::Value,
}

fn model(file: &str) -> Model {
    let path = format!("{}/tests/semconv/k8s/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Semconv's metrics: name → (unit, attribute keys).
fn semconv_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    model("metrics.yaml")
        .groups
        .into_iter()
        .filter_map(|g| {
            let name = g.metric_name?;
            let attrs = g.attributes.into_iter().filter_map(|a| a.reference).collect();
            Some((name, (g.unit.unwrap_or_default(), attrs)))
        })
        .collect()
}

/// Semconv's attribute keys: exact ones, and the prefixes of templates (`k8s.node.label.`).
fn semconv_attributes() -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut exact, mut templates) = (BTreeSet::new(), BTreeSet::new());
    for attr in model("registry.yaml")
        .groups
        .into_iter()
        .flat_map(|g| g.attributes)
    {
        let Some(id) = attr.id else { continue };
        if attr.type_.as_str().is_some_and(|t| t.starts_with("template[")) {
            templates.insert(format!("{id}."));
        } else {
            exact.insert(id);
        }
    }
    (exact, templates)
}

/// The semconv version `tests/semconv/README.md` names, e.g. `v1.44.0`.
fn vendored_version() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/semconv/README.md")).unwrap();
    let version = regex::Regex::new(r"\((v\d+\.\d+\.\d+)").unwrap();
    version
        .captures(&readme)
        .map(|c| c[1].to_string())
        .expect("a version in tests/semconv/README.md")
}

/// `docs/metrics.md`'s "Names and the semantic conventions": its heading and
/// its table rows as (name, kind, origin).
fn documented_origins() -> (String, Vec<(String, String, String)>) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let start = doc
        .find("## Names and the semantic conventions")
        .expect("the section in docs/metrics.md");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let heading = section.lines().next().unwrap_or_default().to_string();
    let rows = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let unquote = |c: &str| c.trim_matches('`').to_string();
            (unquote(cells[0]), cells[1].to_string(), cells[2].to_string())
        })
        .collect();
    (heading, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_names_units_and_attribute_keys_match_the_semantic_conventions() {
    let api = fixture_api().await;
    let receiver = otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let _exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &[
            "--cluster-name",
            "semconv",
            "--node-labels",
            "topology.kubernetes.io/*",
            "--traces-exporter",
            "none",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    )
    .await;
    // A condition change, for the log record's keys.
    let name = api.node_names()[0].clone();
    // Whatever its Ready was, one of these two is a change.
    assert!(api.set_condition(&name, "Ready", "False"));
    assert!(api.set_condition(&name, "Ready", "True"));

    // Every family in one collection, and a log record.
    let emitted = |req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest| -> BTreeSet<String> {
        req.resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| m.name.clone())
            .collect()
    };
    let start = Instant::now();
    let export = loop {
        if let Some(export) = receiver.latest()
            && emitted(&export).contains("k8s.node.taint")
            && emitted(&export).contains("k8s.node.deletion_timestamp")
            && !receiver.log_records().is_empty()
        {
            break export;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no full collection and record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let metrics = semconv_metrics();
    let (exact, templates) = semconv_attributes();
    let in_registry =
        |key: &str| exact.contains(key) || templates.iter().any(|t| key.starts_with(t.as_str()));
    let (heading, origins) = documented_origins();
    let version = vendored_version();
    assert!(
        heading.contains(&version),
        "docs/metrics.md's section names {version}: {heading}"
    );
    let own: BTreeSet<&str> = origins
        .iter()
        .filter(|(_, _, origin)| origin.contains("project"))
        .map(|(n, _, _)| n.as_str())
        .collect();
    let shared: BTreeSet<&str> = origins
        .iter()
        .filter(|(_, _, origin)| origin.contains("semconv"))
        .map(|(n, _, _)| n.as_str())
        .collect();

    let mut keys: BTreeSet<String> = BTreeSet::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for m in export
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name.starts_with("k8s."))
    {
        names.insert(m.name.clone());
        let point_keys: BTreeSet<String> = otlp::points(&export, &m.name)
            .into_iter()
            .flat_map(|(attrs, _)| attrs.into_keys())
            .collect();
        if let Some((unit, attrs)) = metrics.get(&m.name) {
            assert_eq!(&m.unit, unit, "{}: semconv's unit", m.name);
            assert!(
                attrs.is_subset(&point_keys),
                "{}: semconv's attributes {attrs:?}, emitted {point_keys:?}",
                m.name
            );
            assert!(
                shared.contains(m.name.as_str()),
                "{}: semconv defines it; docs/metrics.md must say so",
                m.name
            );
        } else {
            assert!(
                own.contains(m.name.as_str()),
                "{}: not in semconv, and not listed as the project's own",
                m.name
            );
        }
        keys.extend(point_keys);
    }
    let resource_keys = otlp::resource(&export).into_keys();
    let record_keys = receiver
        .log_records()
        .into_iter()
        .flat_map(|r| r.attributes)
        .map(|kv| kv.key);
    keys.extend(resource_keys.chain(record_keys));
    for key in keys.iter().filter(|k| k.starts_with("k8s.")) {
        if in_registry(key) {
            assert!(
                !own.contains(key.as_str()),
                "{key} is in semconv's registry now: docs/metrics.md lists it as the project's own"
            );
        } else {
            assert!(
                own.contains(key.as_str()),
                "{key}: not in semconv's registry, and not listed as the project's own"
            );
        }
    }
    // Every listed name is emitted: the list cannot go stale either way.
    let mut emitted_names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    emitted_names.extend(keys.iter().map(String::as_str));
    emitted_names.insert("k8s.node.condition.change");
    for (name, _, origin) in origins
        .iter()
        .filter(|(_, _, origin)| !origin.contains("only when"))
    {
        let name = name.trim_end_matches('*');
        assert!(
            emitted_names.iter().any(|e| e.starts_with(name)),
            "docs/metrics.md lists {name} ({origin}), which is not emitted"
        );
        if origin.contains("project") {
            assert!(!metrics.contains_key(name), "{name} is a semconv metric now");
        }
    }
    // The event name is the project's own too.
    assert!(
        receiver
            .log_records()
            .iter()
            .all(|r| own.contains(r.event_name.as_str()))
    );
}

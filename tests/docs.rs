//! docs/metrics.md must match what is served: every metric and attribute on
//! /metrics and in an OTLP export is documented, and everything documented is served.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Exporter, fake_api, otlp};

/// A documented metric: its OTel and Prometheus names and attribute keys.
#[derive(Debug)]
struct Documented {
    otel: String,
    prom: String,
    attrs: BTreeSet<String>,
}

fn backticked(cell: &str) -> Vec<String> {
    // Drop parenthesised value lists: they are values, not attribute keys.
    let mut text = String::new();
    let mut depth = 0;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => text.push(c),
            _ => {}
        }
    }
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn documented() -> (Vec<Documented>, BTreeSet<String>) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let mut metrics = Vec::new();
    let mut resource = BTreeSet::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        match cells.len() {
            6 => metrics.push(Documented {
                otel: backticked(cells[0]).remove(0),
                prom: backticked(cells[1]).remove(0),
                attrs: backticked(cells[4]).into_iter().collect(),
            }),
            3 => {
                resource.insert(backticked(cells[1]).remove(0));
            }
            n => panic!("unexpected table row with {n} cells: {line}"),
        }
    }
    (metrics, resource)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_md_matches_what_is_served() {
    let (docs, resource) = documented();
    assert!(docs.len() >= 11, "parsed {} documented metrics", docs.len());
    let api = fake_api(3).await;
    api.set_condition(&api.node_names()[0], "KernelDeadlock", "True");
    let receiver = otlp::Receiver::start(None).await;
    let endpoint = format!("http://{}", receiver.addr);
    let exporter = Exporter::start_ready(
        &api.kubeconfig(),
        &["--cluster-name", "docs"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    )
    .await;
    let samples = exporter.scrape().await;

    // /metrics → docs.
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &samples {
        served
            .entry(s.name.clone())
            .or_default()
            .extend(s.labels.keys().cloned());
    }
    let target_info = served.remove("target_info").expect("target_info");
    assert!(
        target_info.is_subset(&resource),
        "undocumented resource attributes: {:?}",
        target_info.difference(&resource).collect::<Vec<_>>()
    );
    for (name, labels) in &served {
        let doc = docs
            .iter()
            .find(|d| &d.prom == name)
            .unwrap_or_else(|| panic!("{name} is served but not documented"));
        let want: BTreeSet<String> = doc.attrs.iter().map(|a| a.replace('.', "_")).collect();
        assert_eq!(
            labels, &want,
            "{name}: served labels differ from the documented attributes"
        );
    }
    // docs → /metrics.
    for d in &docs {
        assert!(
            served.contains_key(&d.prom),
            "{} is documented but not served",
            d.prom
        );
    }

    // The OTLP names and attribute keys match the OpenTelemetry column.
    let after = receiver.exports();
    receiver.wait_exports(after + 2, Duration::from_secs(10)).await;
    let export = receiver.latest().unwrap();
    let mut exported = BTreeSet::new();
    for rm in &export.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                exported.insert(m.name.clone());
                let doc = docs
                    .iter()
                    .find(|d| d.otel == m.name)
                    .unwrap_or_else(|| panic!("{} exported but not documented", m.name));
                for (attrs, _) in otlp::points(&export, &m.name) {
                    let keys: BTreeSet<String> = attrs.keys().cloned().collect();
                    assert_eq!(
                        keys, doc.attrs,
                        "{}: exported attributes differ from the documented ones",
                        m.name
                    );
                }
            }
        }
    }
    let documented_otel: BTreeSet<String> = docs.iter().map(|d| d.otel.clone()).collect();
    assert_eq!(exported, documented_otel);
}

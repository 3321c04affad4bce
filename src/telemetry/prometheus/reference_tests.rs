//! The streaming `/metrics` held to opentelemetry-prometheus, in process.
//!
//! Order: the reference sorts families by name and each family's samples by
//! their labels; ours writes the node section first, then `target_info` and
//! the self-telemetry, and a family's samples in view order. Neither order
//! is one Prometheus needs: the text format asks that each family's lines be
//! contiguous, HELP and TYPE first and once. So both bodies are checked for
//! those rules, and then compared family by family: the same HELP and TYPE
//! lines, and the same samples as a multiset (byte for byte, values included).

use std::collections::BTreeMap;

use opentelemetry::{KeyValue, metrics::MeterProvider as _};
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider};

use super::text as exposition;
use crate::telemetry::pipeline::collect::{self, SharedReader};

/// One family of an exposition: its header lines in order, its samples sorted.
#[derive(Debug, PartialEq, Default)]
pub(super) struct FamilyLines {
    header: Vec<String>,
    samples: Vec<String>,
}

/// The metric name a sample line belongs to: counters' and gauges' samples
/// carry the family's name exactly (this exporter writes no histograms).
fn sample_name(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap_or(line)
}

/// Splits `body` into families, checking the text format's order rules: a
/// family's lines are contiguous, its HELP (if any) comes before its TYPE,
/// both before its samples, and no family appears twice.
pub(super) fn families(body: &str) -> BTreeMap<String, FamilyLines> {
    let mut out: BTreeMap<String, FamilyLines> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in body.lines() {
        let (name, header) = match line.strip_prefix("# ") {
            Some(rest) => {
                let mut words = rest.splitn(3, ' ');
                let kind = words.next().unwrap_or_default();
                assert!(kind == "HELP" || kind == "TYPE", "unknown comment {line:?}");
                (words.next().unwrap_or_default().to_string(), true)
            }
            None => (sample_name(line).to_string(), false),
        };
        if current.as_deref() != Some(name.as_str()) {
            assert!(
                !out.contains_key(&name),
                "{name}: its lines are not contiguous, at {line:?}"
            );
            current = Some(name.clone());
        }
        let family = out.entry(name.clone()).or_default();
        if header {
            assert!(
                family.samples.is_empty(),
                "{name}: a header after its samples: {line:?}"
            );
            if line.starts_with("# HELP") {
                assert!(family.header.is_empty(), "{name}: HELP after TYPE or twice");
            }
            family.header.push(line.to_string());
        } else {
            family.samples.push(line.to_string());
        }
    }
    for (name, family) in &mut out {
        assert!(
            family.header.iter().any(|h| h.starts_with("# TYPE")),
            "{name}: samples without a TYPE"
        );
        family.samples.sort_unstable();
    }
    out
}

/// Asserts two expositions hold the same families, headers and samples.
pub(super) fn assert_same_exposition(ours: &str, reference: &str, what: &str) {
    let (ours, reference) = (families(ours), families(reference));
    let names = |f: &BTreeMap<String, FamilyLines>| f.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&reference), "{what}: the families differ");
    for (name, want) in &reference {
        let got = &ours[name];
        assert_eq!(got.header, want.header, "{what}: {name}'s HELP/TYPE");
        let only_ours: Vec<&String> = got.samples.iter().filter(|l| !want.samples.contains(l)).collect();
        let only_reference: Vec<&String> = want.samples.iter().filter(|l| !got.samples.contains(l)).collect();
        assert!(
            only_ours.is_empty() && only_reference.is_empty(),
            "{what}: {name}: only ours: {only_ours:#?}\nonly the reference's: {only_reference:#?}"
        );
        assert_eq!(
            got.samples, want.samples,
            "{what}: {name}: the same lines, not as often"
        );
    }
}

/// Values and attributes that trip text writers: escapes, non-ASCII, keys
/// that sanitize to one label, and numbers whose text is easy to get wrong.
#[test]
fn the_writer_matches_opentelemetry_prometheus_on_hostile_values() {
    let registry = ::prometheus::Registry::new();
    let reference = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .build()
        .expect("the reference exporter");
    let ours = SharedReader::new();
    let resource = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "kube \"node\" status\\"),
            KeyValue::new("k8s.cluster.name", "zürich\nwest"),
        ])
        .build();
    let provider = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(reference)
        .with_reader(ours.clone())
        .build();
    let meter = provider.meter(collect::METER);
    let values = [
        0.0,
        -0.0,
        1.0,
        -3.0,
        0.5,
        9_007_199_254_740_993.0,
        9_007_199_254_740_992.0,
        1e21,
        1e-7,
        -1e21,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let labels = [
        "plain",
        "say \"hi\"",
        "back\\slash",
        "new\nline",
        "tab\tand\rcarriage",
        "zürich-ü-日本",
        "",
        "trailing\\",
    ];
    let _gauge = meter
        .f64_observable_gauge("k8s.node.hostile")
        .with_unit("By")
        .with_description("help with \\ and\nnewline and \"quotes\"")
        .with_callback(move |o| {
            for (i, v) in values.iter().enumerate() {
                let label = labels[i % labels.len()];
                o.observe(
                    *v,
                    &[
                        KeyValue::new("k8s.node.name", format!("node-{i}")),
                        KeyValue::new("value.label", label),
                        // Two keys that become one Prometheus label, merged by the reference.
                        KeyValue::new("a.b", format!("{i}")),
                        KeyValue::new("a_b", label),
                        KeyValue::new("0digit", true),
                        KeyValue::new("count", i as i64),
                    ],
                );
            }
        })
        .build();
    let _ints = meter
        .u64_observable_counter("kube_node_status.hostile.events")
        .with_callback(|o| {
            o.observe(u64::MAX, &[KeyValue::new("type", "max")]);
            o.observe((1 << 53) + 1, &[KeyValue::new("type", "2^53+1")]);
            o.observe(0, &[]);
        })
        .build();
    let _signed = meter
        .i64_observable_gauge("k8s.cluster.hostile.ratio")
        .with_unit("1")
        .with_callback(|o| {
            o.observe(i64::MIN, &[KeyValue::new("x", "min")]);
            o.observe(-1, &[KeyValue::new("x", "minus one")]);
        })
        .build();

    let mut written = Vec::new();
    exposition::write_target_info(&resource, &mut written).unwrap();
    exposition::write_metrics(&ours.collect().unwrap(), &mut written).unwrap();
    let written = String::from_utf8(written).unwrap();
    let reference = String::from_utf8(super::render(&registry).unwrap()).unwrap();
    // The SDK drops NaN and infinite observations before either encoder sees
    // them: both bodies lack those three nodes, which the comparison checks.
    assert!(
        !reference.contains("node-12\"") && reference.contains("node-11\""),
        "{reference}"
    );
    assert_same_exposition(&written, &reference, "hostile values");
}

mod pipeline {
    //! The whole pipeline: the same view behind a streaming and a reference
    //! `/metrics`, compared after the first rendering and after each change,
    //! where only the changed shards are rendered again; the gzip body
    //! inflated and compared with the plain one each time.

    use crate::cluster::Feed;
    use clap::Parser as _;
    use futures::StreamExt as _;
    use kube::runtime::watcher::Event;
    use serde_json::{Value, json};

    use super::assert_same_exposition;
    use crate::{
        cluster::{Node, View, strip},
        leader::Leadership,
        telemetry::{Telemetry, build_resource},
    };

    const NOW: &str = "2026-11-27T00:00:00Z";
    const LABELS: &str = "topology.kubernetes.io/zone,example.com/*";

    fn settings(encoder: &str, naming: &str, profile: &str) -> crate::config::Settings {
        let cli = crate::cli::Cli::try_parse_from([
            "kube-node-status",
            "--metric-profile",
            profile,
            "--metrics-exporter",
            "prometheus",
            "--prometheus-encoder",
            encoder,
            "--metric-naming",
            naming,
            "--node-labels",
            LABELS,
            "--cluster-name",
            "zürich \"west\"\\1",
        ])
        .expect("flags");
        cli.run.resolve(&|_| None).expect("settings")
    }

    /// Generated node `i`, with hostile label values and node info, and
    /// quantities whose numbers are easy to print wrong.
    fn hostile(i: usize, rv: u64) -> Value {
        let mut n = crate::fake::generated_node(i, rv, NOW);
        let labels = &mut n["metadata"]["labels"];
        labels["topology.kubernetes.io/zone"] =
            json!(["say \"hi\"", "back\\slash", "new\nline", "zürich-日本", ""][i % 5]);
        labels["example.com/team"] = json!(format!("t{i}\\\""));
        labels["example.com/team.b"] = json!("ü");
        n["status"]["nodeInfo"]["osImage"] = json!("Ubuntu \"24.04\"\\n\nLTS ✓");
        let quantities = ["9007199254740993", "1e21", "-0", "0.000001", "1Ei"];
        n["status"]["allocatable"]["example.com/gpu"] = json!(quantities[i % quantities.len()]);
        n["status"]["capacity"]["example.com/gpu"] = json!(quantities[(i + 1) % quantities.len()]);
        n
    }

    fn node(json: Value) -> Node {
        let mut node: Node = serde_json::from_value(json).expect("a node");
        strip(&mut node, &|k| {
            k.starts_with("node-role.kubernetes.io/")
                || k.starts_with("example.com/")
                || k.starts_with("topology.")
        });
        node
    }

    fn set(json: &mut Value, type_: &str, status: &str) {
        for c in json["status"]["conditions"].as_array_mut().expect("conditions") {
            if c["type"] == type_ {
                c["status"] = json!(status);
                c["lastTransitionTime"] = json!("2026-11-27T00:05:00Z");
            }
        }
    }

    async fn body(t: &Telemetry, gzip: bool) -> Vec<u8> {
        let handle = t.metrics_handle().expect("prometheus on");
        let exposition = tokio::task::block_in_place(|| handle.render(gzip)).expect("a rendering");
        assert_eq!(exposition.gzip, gzip);
        let mut body = exposition.body;
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.expect("a chunk"));
        }
        out
    }

    /// The metric a line is about: the name of a sample, or the one a HELP or TYPE names.
    fn family_of(line: &str) -> &str {
        match line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            Some(rest) => rest.split(' ').next().unwrap_or(rest),
            None => line.split(['{', ' ']).next().unwrap_or(line),
        }
    }

    /// Self-telemetry values move between two collections: keep their series, not their values.
    fn without_moving_values(body: &str) -> String {
        body.lines()
            .map(
                |l| match l.starts_with("kube_node_status_") && !l.starts_with("kube_node_status_build") {
                    true => l.rsplit_once(' ').map_or(l, |(series, _)| series).to_string() + " _",
                    false => l.to_string(),
                },
            )
            .map(|l| l + "\n")
            .collect()
    }

    async fn check(streaming: &Telemetry, reference: &Telemetry, what: &str) -> String {
        tokio::task::block_in_place(|| streaming.render_now(false));
        let plain = String::from_utf8(body(streaming, false).await).expect("UTF-8");
        let zipped = body(streaming, true).await;
        let mut inflated = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut inflated)
            .expect("a whole gzip body");
        // The node section is the same bytes either way; the live part after it
        // (target_info, self-telemetry) is collected anew for each scrape, so
        // its series may come in another order.
        let split = |b: &str| -> (String, String) {
            let at = b.find("# HELP target_info").expect("target_info");
            (b[..at].to_string(), without_moving_values(&b[at..]))
        };
        let ((section_gz, live_gz), (section, live)) = (split(&inflated), split(&plain));
        assert!(
            section == section_gz,
            "{what}: the gzip body's node section is not the plain one's"
        );
        assert_same_exposition(&live_gz, &live, &format!("{what}: gzip and plain live parts"));
        let want = String::from_utf8(body(reference, false).await).expect("UTF-8");
        // The series count comes from the pass, which the reference path does
        // not run; it is checked against /metrics on its own (tests/it/changes.rs).
        let ours: String = plain
            .lines()
            .filter(|l| !family_of(l).starts_with("kube_node_status_series"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_same_exposition(&without_moving_values(&ours), &without_moving_values(&want), what);
        plain
    }

    fn apply(writer: &mut Feed, json: &Value) {
        writer.apply(&Event::Apply(node(json.clone())));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streaming_equals_the_reference_through_flips_deletes_and_re_adds() {
        // Full is one-hot; readiness is sparse: series come and go on a node that stays.
        for (naming, profile) in [
            ("otel", "full"),
            ("kube-state-metrics", "full"),
            ("otel", "readiness"),
            ("kube-state-metrics", "readiness"),
        ] {
            let naming_profile = format!("{naming}, {profile}");
            let naming = naming_profile.as_str();
            let (view, mut writer) = View::new();
            let mut nodes: Vec<Value> = (0..300).map(|i| hostile(i, 1)).collect();
            writer.apply(&Event::Init);
            for n in &nodes {
                writer.apply(&Event::InitApply(node(n.clone())));
            }
            writer.apply(&Event::InitDone);
            let start = |encoder: &str| {
                let settings = settings(encoder, naming.split(',').next().unwrap_or_default(), profile);
                let resource = build_resource(&settings.resource, &|_| None);
                Telemetry::start(&settings, resource, view.clone(), Leadership::sole(), None)
                    .expect("telemetry")
            };
            let (streaming, reference) = (start("streaming"), start("reference"));
            let first = check(&streaming, &reference, &format!("{naming}: first rendering")).await;
            assert!(
                first.contains("zürich-日本") && first.contains("new\\nline"),
                "{first}"
            );

            // Ready flips, another condition, a taint and a cordon on a few nodes.
            set(&mut nodes[7], "Ready", "False");
            set(&mut nodes[8], "Ready", "Unknown");
            set(&mut nodes[9], "MemoryPressure", "True");
            nodes[10]["spec"]["taints"] =
                json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
            nodes[11]["spec"]["unschedulable"] = json!(true);
            nodes[12]["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("moved \"zone\"\n");
            for n in &nodes[7..=12] {
                apply(&mut writer, n);
            }
            let flipped = check(&streaming, &reference, &format!("{naming}: after flips")).await;
            assert_ne!(first, flipped, "{naming}: the flips changed nothing");

            // And back: in the readiness profile their problem series end.
            set(&mut nodes[7], "Ready", "True");
            set(&mut nodes[8], "Ready", "True");
            set(&mut nodes[9], "MemoryPressure", "False");
            nodes[10]["spec"]["taints"] = json!([]);
            nodes[11]["spec"]["unschedulable"] = json!(false);
            for n in &nodes[7..=11] {
                apply(&mut writer, n);
            }
            let recovered = check(&streaming, &reference, &format!("{naming}: after recovery")).await;
            assert_ne!(flipped, recovered, "{naming}: the recovery changed nothing");

            // Deleted, then back under the same name with other values.
            let gone = node(nodes[20].clone());
            writer.apply(&Event::Delete(gone));
            let deleted = check(&streaming, &reference, &format!("{naming}: after a delete")).await;
            let name = nodes[20]["metadata"]["name"]
                .as_str()
                .expect("a name")
                .to_string();
            assert!(
                !deleted.contains(&format!("\"{name}\"")),
                "{naming}: {name} is still on /metrics"
            );
            nodes[20] = hostile(20, 9);
            set(&mut nodes[20], "Ready", "False");
            apply(&mut writer, &nodes[20]);
            let back = check(&streaming, &reference, &format!("{naming}: after a re-add")).await;
            assert!(
                back.contains(&format!("\"{name}\"")),
                "{naming}: {name} did not come back"
            );
        }
    }
}

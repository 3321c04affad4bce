//! Tests of the telemetry facade: the pass's outputs against the SDK's, what it keeps, its pipelines.

use super::*;
use crate::cluster::{Feed, Node};
use clap::Parser as _;
use kube::runtime::watcher::Event;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    metrics::v1::{NumberDataPoint, metric::Data},
};
use prost::Message as _;

const NOW: &str = "2026-11-27T00:00:00Z";

fn node(i: usize, rv: u64, ready: &str) -> Node {
    let mut json = crate::fake::generated_node(i, rv, NOW);
    if let Some(conditions) = json["status"]["conditions"].as_array_mut() {
        for c in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
            c["status"] = ready.into();
        }
    }
    let mut node: Node = serde_json::from_value(json).expect("a generated node parses");
    crate::cluster::strip(&mut node, &|k| k.starts_with("node-role.kubernetes.io/"));
    node
}

fn telemetry(nodes: usize) -> (Telemetry, Feed) {
    let cli =
        crate::cli::Cli::try_parse_from(["kube-node-status", "--metrics-exporter", "otlp"]).expect("flags");
    let settings = cli.run.resolve(&|_| None).expect("settings");
    let (view, mut writer) = View::new();
    writer.apply(&Event::Init);
    for i in 0..nodes {
        writer.apply(&Event::InitApply(node(i, 1, "True")));
    }
    writer.apply(&Event::InitDone);
    let resource = build_resource(&settings.resource, &|_| None);
    let telemetry = Telemetry::start(&settings, resource, view, Leadership::sole(), None).expect("telemetry");
    (telemetry, writer)
}

/// A relist replaces every stored object; the pass held on to the old
/// copies of the unchanged ones (up to twice the nodes' memory) and now
/// takes the stored ones.
#[tokio::test]
async fn after_a_relist_the_pass_holds_the_stored_nodes_not_copies() {
    let (telemetry, mut feed) = telemetry(50);
    let view = feed.view().clone();
    assert!(telemetry.otlp_requests_now(false).0 > 0);
    feed.apply(&Event::Init);
    for i in 0..50 {
        feed.apply(&Event::InitApply(node(
            i,
            2,
            if i == 7 { "False" } else { "True" },
        )));
    }
    feed.apply(&Event::InitDone);
    assert!(telemetry.otlp_requests_now(false).0 > 0);
    let pass = telemetry.inner.pass.lock().unwrap();
    let held: Vec<_> = pass.held().cloned().collect();
    assert_eq!(held.len(), 50);
    for node in held {
        let name = node.metadata.name.as_deref().unwrap();
        let stored = view.node(name).unwrap();
        assert!(Arc::ptr_eq(&node, &stored), "{name} is a copy of the stored node");
    }
}

/// Telemetry with the reference encoder and `exporters`, over a view of one node.
fn reference_telemetry(exporters: &str) -> (Telemetry, Feed) {
    let cli = crate::cli::Cli::try_parse_from([
        "kube-node-status",
        "--metrics-exporter",
        exporters,
        "--prometheus-encoder",
        "reference",
    ])
    .expect("flags");
    let settings = cli.run.resolve(&|_| None).expect("settings");
    let (view, mut feed) = View::new();
    feed.apply(&Event::Init);
    feed.apply(&Event::InitApply(node(0, 1, "True")));
    feed.apply(&Event::InitDone);
    let resource = build_resource(&settings.resource, &|_| None);
    let t = Telemetry::start(&settings, resource, view, Leadership::sole(), None).expect("telemetry");
    (t, feed)
}

/// The start times of the cumulative sums OTLP's self-telemetry sends.
fn otlp_sum_starts(t: &Telemetry) -> Vec<(String, std::time::SystemTime)> {
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    let current = t.inner.current();
    let (_, reader) = current.otlp.as_ref().expect("OTLP on");
    let rm = reader.collect().expect("collects");
    let mut out = Vec::new();
    for m in rm.scope_metrics().flat_map(|s| s.metrics()) {
        if let AggregatedMetrics::U64(MetricData::Sum(sum)) = m.data() {
            out.push((m.name().to_string(), sum.start_time()));
        }
    }
    out.sort();
    out
}

/// The reference encoder's pipeline grows with the cluster; rebuilding
/// OTLP's with it gave every cumulative self-telemetry total a new start
/// time while the totals went on: a false reset to a backend.
#[tokio::test]
async fn growing_the_reference_pipeline_keeps_otlps_start_times() {
    let (t, mut feed) = reference_telemetry("otlp,prometheus");
    let before = otlp_sum_starts(&t);
    assert!(!before.is_empty());
    let limits = t.inner.current().limits.clone();
    std::thread::sleep(Duration::from_millis(20));
    for i in 1..400 {
        feed.apply(&Event::Apply(node(i, 1, "True")));
    }
    t.resize().await;
    assert!(
        !Arc::ptr_eq(&limits, &t.inner.current().limits),
        "the pipeline was resized"
    );
    assert_eq!(otlp_sum_starts(&t), before);
}

/// A scrape of the reference encoder in the middle of growth carried
/// `k8s_node_ready` for every node and not one condition series: a family
/// over its limit was withheld. Now the scrape grows the pipeline and
/// gathers again.
#[tokio::test]
async fn a_reference_scrape_during_growth_shows_every_family_or_nothing() {
    let (t, mut feed) = reference_telemetry("prometheus");
    for i in 1..400 {
        feed.apply(&Event::Apply(node(i, 1, "True")));
    }
    let body = String::from_utf8(t.inner.reference_body().expect("a body")).unwrap();
    let nodes = |family: &str| {
        body.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .filter_map(|l| l.split("k8s_node_name=\"").nth(1)?.split('"').next())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(nodes("k8s_node_ready"), 400);
    assert_eq!(nodes("k8s_node_condition_status"), 400);
    assert_eq!(nodes("k8s_node_condition_transitions_total"), 400);
}

fn is_node_family(families: &[Family], name: &str) -> bool {
    families.iter().any(|f| f.name == name)
}

fn points(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> &[NumberDataPoint] {
    match &m.data {
        Some(Data::Gauge(g)) => &g.data_points,
        Some(Data::Sum(s)) => &s.data_points,
        _ => panic!("{} is neither a gauge nor a sum", m.name),
    }
}

/// Every data point of the per-node families, one line each, timestamps
/// left out, sorted: what a receiver would store, whatever the split.
fn node_points(requests: &[ExportMetricsServiceRequest], families: &[Family]) -> Vec<String> {
    let mut lines = Vec::new();
    for rm in requests {
        for sm in &rm
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .collect::<Vec<_>>()
        {
            for m in sm.metrics.iter().filter(|m| is_node_family(families, &m.name)) {
                let shape = match &m.data {
                    Some(Data::Sum(s)) => format!("sum {} {}", s.aggregation_temporality, s.is_monotonic),
                    _ => "gauge".to_string(),
                };
                for p in points(m) {
                    let mut p = p.clone();
                    p.start_time_unix_nano = 0;
                    p.time_unix_nano = 0;
                    p.attributes.sort_by(|a, b| a.key.cmp(&b.key));
                    let origin = rm.resource_metrics.iter().map(|r| (&r.resource, &r.schema_url));
                    lines.push(format!(
                        "{:?} {:?} {} {} {} {shape} {p:?}",
                        origin.collect::<Vec<_>>(),
                        sm.scope,
                        m.name,
                        m.description,
                        m.unit
                    ));
                }
            }
        }
    }
    lines.sort();
    lines
}

/// What the SDK's own path sends: each family collected and converted by opentelemetry-proto.
fn reference(t: &Telemetry) -> Vec<String> {
    let inner = &t.inner;
    let mut requests = Vec::new();
    collect::node_families(&inner.families, &inner.sources, &inner.resource, |rm| {
        requests.push(ExportMetricsServiceRequest::from(&rm))
    });
    node_points(&requests, &inner.families)
}

/// What the cache sends, decoded, with every point of the readings (per-node
/// and cluster-wide) checked to carry the cycle's time.
fn cached(t: &Telemetry, max: usize) -> (Vec<String>, Vec<wire::Part>) {
    let inner = &t.inner;
    let (nodes, not_ready) = families::cluster_names(inner.settings.readings.naming);
    let mut cluster_points = 0;
    let Some((_, reader)) = inner.current().otlp.clone() else {
        panic!("OTLP is on")
    };
    let mut parts = Vec::new();
    let before = unix_nanos(std::time::SystemTime::now());
    inner.write_requests(&reader, max, |p| {
        parts.push(p);
        true
    });
    let requests: Vec<ExportMetricsServiceRequest> = parts
        .iter()
        .map(|p| ExportMetricsServiceRequest::decode(p.bytes.clone()).expect("valid protobuf"))
        .collect();
    for m in requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| is_node_family(&inner.families, &m.name) || [nodes, not_ready].contains(&m.name.as_str()))
    {
        if !is_node_family(&inner.families, &m.name) {
            cluster_points += points(m).len();
        }
        for p in points(m) {
            assert!(
                p.time_unix_nano >= before,
                "{}: stamped with this cycle's time",
                m.name
            );
            let start = match m.data {
                Some(Data::Sum(_)) => inner.started,
                _ => p.time_unix_nano,
            };
            assert_eq!(p.start_time_unix_nano, start, "{}", m.name);
        }
    }
    let names: std::collections::BTreeSet<&str> = requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| m.name.as_str())
        .filter(|n| !is_node_family(&inner.families, n))
        .collect();
    assert!(
        cluster_points > 0,
        "the cluster-wide readings were checked too: {names:?}"
    );
    for (p, r) in parts.iter().zip(&requests) {
        assert!(
            p.points <= max,
            "{} points in a request of at most {max}",
            p.points
        );
        assert_eq!(p.points, chunks::request_points(r));
    }
    (node_points(&requests, &inner.families), parts)
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_requests_from_the_cache_equal_opentelemetry_protos_conversion() {
    let (t, mut writer) = telemetry(300);
    // Synced as the watch task marks it: the cluster-wide readings show only then.
    t.inner
        .sources
        .view
        .health()
        .on_event(crate::cluster::EventKind::InitDone);
    let want = reference(&t);
    assert!(want.len() > 300 * 10, "every family has points: {}", want.len());
    let (got, parts) = cached(&t, 997);
    assert_eq!(got, want);
    assert!(
        parts.len() > want.len() / 997,
        "split into requests of at most 997 points"
    );

    // An idle cycle re-encodes nothing and sends the same points.
    let refresh = |t: &Telemetry| {
        let mut p = t.inner.pass.lock().expect("not poisoned");
        p.run(&t.inner.families, &t.inner.sources, &t.inner.resource)
            .expect("writes")
    };
    assert_eq!(refresh(&t).shards, 0);
    assert_eq!(cached(&t, 5_000).0, want);

    // A flip and a deletion re-encode only their shards, and show.
    writer.apply(&Event::Apply(node(7, 2, "False")));
    writer.apply(&Event::Delete(node(8, 2, "True")));
    let want = reference(&t);
    let (got, _) = cached(&t, 5_000);
    assert_eq!(got, want);
    assert!(
        got.iter()
            .any(|l| l.contains(&crate::fake::node_name(7)) && l.contains("\"false\""))
    );
    assert!(
        !got.iter()
            .any(|l| l.contains(&format!("{:?}", crate::fake::node_name(8))))
    );
    writer.apply(&Event::Apply(node(9, 2, "False")));
    assert_eq!(refresh(&t).shards, 1, "one node changed: one shard");
}

#[test]
fn cardinality_limit_follows_the_data() {
    for (points, want) in [
        (0, 2_000),
        (1_599, 2_000),
        (1_600, 2_000),
        (1_700, 2_125),
        (150_000, 187_500),
    ] {
        assert_eq!(cardinality_limit(points), want, "{points}");
    }
    // 50,000 nodes with 5 conditions each: never overflows, never a constant 2,000,000.
    let at_50k = cardinality_limit(50_000 * 5 * 3);
    assert!(at_50k > 750_000 && at_50k < 1_000_000);
}

/// The node section's text, sorted by line: shard counts (and so sample
/// order) may differ between passes that hold the same nodes.
fn sorted_text(section: Section) -> Vec<String> {
    let body = prometheus::body::respond(Arc::new(section), Vec::new(), false).expect("a body");
    let chunks: Vec<_> = futures::executor::block_on(body.body.collect::<Vec<_>>());
    let text: Vec<u8> = chunks
        .into_iter()
        .flat_map(|c| c.expect("a chunk").to_vec())
        .collect();
    let mut lines: Vec<String> = String::from_utf8(text)
        .expect("text")
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort_unstable();
    lines
}

/// Seeded random schedules of adds, deletes and Ready flips, with passes in
/// between, across the cluster growing and shrinking past the shard count's
/// bounds: the incrementally kept section, OTLP points, series and Ready
/// counts always equal those of a new pass over the same view. Replay a
/// failure with `KNS_PASS_SEED`.
#[test]
fn incremental_passes_equal_a_full_pass_at_every_step() {
    let seeds: Vec<u64> = match std::env::var("KNS_PASS_SEED") {
        Ok(s) => vec![s.parse().expect("KNS_PASS_SEED is a number")],
        Err(_) => (1..=2).collect(),
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _guard = runtime.enter();
    for seed in seeds {
        let cli =
            crate::cli::Cli::try_parse_from(["kube-node-status", "--metrics-exporter", "prometheus,otlp"])
                .expect("flags");
        let settings = cli.run.resolve(&|_| None).expect("settings");
        let (view, mut feed) = View::new();
        feed.apply(&Event::Init);
        feed.apply(&Event::InitDone);
        let resource = build_resource(&settings.resource, &|_| None);
        let telemetry =
            Telemetry::start(&settings, resource, view.clone(), Leadership::sole(), None).expect("telemetry");
        let inner = &telemetry.inner;
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut live, mut next, mut rv) = (std::collections::BTreeSet::new(), 0usize, 1u64);
        let mut counts = std::collections::BTreeSet::new();
        // Up past 512 nodes (64 → 128 → 256 shards), then down to a handful (back to 64).
        for (phase, target) in [(0, 40usize), (1, 1_300), (2, 60)] {
            for step in 0..40 {
                for _ in 0..rng.usize(1..120) {
                    rv += 1;
                    let grow = live.len() < target;
                    match rng.u8(..10) {
                        0..=5 if grow || live.is_empty() => {
                            live.insert(next);
                            feed.apply(&Event::Apply(node(next, rv, "True")));
                            next += 1;
                        }
                        0..=5 => {
                            let i = *live.iter().nth(rng.usize(..live.len())).expect("a live node");
                            live.remove(&i);
                            feed.apply(&Event::Delete(node(i, rv, "True")));
                        }
                        _ if !live.is_empty() => {
                            let i = *live.iter().nth(rng.usize(..live.len())).expect("a live node");
                            let ready = ["True", "False", "Unknown"][rng.usize(..3)];
                            feed.apply(&Event::Apply(node(i, rv, ready)));
                        }
                        _ => {}
                    }
                }
                // A relist now and then, in which some nodes changed.
                if rng.u8(..8) == 0 {
                    rv += 1;
                    feed.apply(&Event::Init);
                    for &i in &live {
                        let ready = if rng.u8(..5) == 0 { "False" } else { "True" };
                        feed.apply(&Event::InitApply(node(i, rv, ready)));
                    }
                    feed.apply(&Event::InitDone);
                }
                if rng.bool() {
                    continue;
                }
                let what = format!("seed {seed}, phase {phase}, step {step}, {} nodes", live.len());
                let mut pass = inner.pass.lock().unwrap();
                pass.run(&inner.families, &inner.sources, &inner.resource)
                    .expect("a pass");
                counts.insert(pass.shard_count());
                let mut fresh = Pass::new(
                    &inner.families,
                    Outputs {
                        text: true,
                        otlp: true,
                    },
                )
                .expect("a pass");
                fresh
                    .run(&inner.families, &inner.sources, &inner.resource)
                    .expect("a pass");
                assert_eq!(pass.held().count(), live.len(), "{what}");
                assert_eq!(
                    pass.summary(),
                    crate::readings::ClusterSummary::of(view.nodes().iter().map(|n| &**n)),
                    "{what}"
                );
                let series = |p: &Pass| {
                    p.series(&inner.families)
                        .map(|(n, c)| (n.to_string(), c))
                        .collect::<Vec<_>>()
                };
                assert_eq!(series(&pass), series(&fresh), "{what}");
                assert_eq!(
                    sorted_text(pass.section()),
                    sorted_text(fresh.section()),
                    "{what}"
                );
                let points = |p: &Pass| {
                    let mut all = p.otlp().expect("OTLP on").plain_points();
                    all.sort_unstable();
                    all
                };
                assert_eq!(points(&pass), points(&fresh), "{what}");
            }
        }
        assert!(counts.len() >= 3, "seed {seed}: shard counts seen {counts:?}");
    }
}

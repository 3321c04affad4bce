//! Micro-benchmarks: the readings of one node, and at 10,000 nodes a full
//! render of `/metrics`, the incremental render after one Ready flip, and
//! the requests of one OTLP export cycle (the first, and one at idle). `cargo bench`; see docs/benchmarks.md.

use std::hint::black_box;

use clap::Parser;
use criterion::{Criterion, criterion_group, criterion_main};
use kube::runtime::watcher::Event;
use kube_node_status::cluster::Node;
use kube_node_status::{
    cli::Cli,
    cluster::{View, strip},
    fake::generated_node,
    readings,
    telemetry::{Telemetry, build_resource},
};

const NOW: &str = "2026-11-27T00:00:00Z";

fn node(i: usize, rv: u64) -> Node {
    let mut node: Node = serde_json::from_value(generated_node(i, rv, NOW)).expect("a generated node parses");
    strip(&mut node, &|k| k.starts_with("node-role.kubernetes.io/"));
    node
}

fn readings_of_one_node(c: &mut Criterion) {
    let n = node(3, 1);
    c.bench_function(
        "readings/one node (conditions, info, taints, roles, resources)",
        |b| {
            b.iter(|| {
                let n = black_box(&n);
                black_box(readings::conditions(n));
                black_box(readings::info(n));
                black_box(readings::taints(n).len());
                black_box(readings::roles(n).len());
                black_box(readings::resources(n, readings::ResourceList::Allocatable).len());
                black_box(readings::resources(n, readings::ResourceList::Capacity).len());
                black_box(readings::ClusterSummary::of(std::iter::once(n)));
            })
        },
    );
}

fn at_10k_nodes(c: &mut Criterion) {
    const NODES: usize = 10_000;
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _guard = runtime.enter();
    let cli =
        Cli::try_parse_from(["kube-node-status", "--metrics-exporter", "prometheus,otlp"]).expect("flags");
    let settings = cli.run.resolve(&|_| None).expect("settings");
    let (view, mut writer) = View::new();
    writer.apply(&Event::Init);
    for i in 0..NODES {
        writer.apply(&Event::InitApply(node(i, 1)));
    }
    writer.apply(&Event::InitDone);
    let resource = build_resource(&settings.resource, &|_| None);
    let telemetry = Telemetry::start(
        &settings,
        resource,
        view,
        kube_node_status::leader::Leadership::sole(),
        None,
    )
    .expect("telemetry");

    let mut group = c.benchmark_group("10,000 nodes");
    group.sample_size(10);
    group.bench_function("full /metrics and OTLP pass (every shard)", |b| {
        b.iter(|| telemetry.render_now(true))
    });
    // The trade-off of the shard size: what compressing each shard apart costs in bytes.
    eprintln!(
        "node section at {NODES} nodes: {} bytes of text, {} deflated",
        telemetry.section_len(),
        telemetry.section_deflated_len()
    );
    // Ready flips back and forth: an update that changed nothing would be
    // dropped at the watch and leave the pass nothing to do.
    let flipped = |ready: bool, rv: u64| {
        let mut json = generated_node(42, rv, NOW);
        for c in json["status"]["conditions"].as_array_mut().expect("conditions") {
            if c["type"] == "Ready" {
                c["status"] = serde_json::json!(if ready { "True" } else { "False" });
            }
        }
        let mut n: Node = serde_json::from_value(json).expect("a generated node parses");
        strip(&mut n, &|k| k.starts_with("node-role.kubernetes.io/"));
        n
    };
    let mut rv = 2;
    group.bench_function("/metrics and OTLP pass after one node changed", |b| {
        b.iter(|| {
            rv += 1;
            let kind = writer.apply(&Event::Apply(flipped(rv % 2 == 0, rv)));
            assert_eq!(kind, kube_node_status::cluster::EventKind::Apply, "a real change");
            telemetry.render_now(false)
        })
    });
    group.bench_function("OTLP cycle, every shard collected and encoded (the first)", |b| {
        b.iter(|| black_box(telemetry.otlp_requests_now(true)))
    });
    group.bench_function("OTLP cycle at idle (requests written from the cache)", |b| {
        b.iter(|| black_box(telemetry.otlp_requests_now(false)))
    });
    group.finish();
}

/// What a watch event that changes nothing costs before it is dropped: the
/// decode of one ~15 KB MODIFIED line (kube-client's own path,
/// `serde_json::from_str::<WatchEvent<_>>`), as the API server writes it
/// (`type` first) and with `object` first.
fn decode_a_status_re_post(c: &mut Criterion) {
    let object = generated_node(3, 7, NOW);
    let type_first = format!(r#"{{"type":"MODIFIED","object":{object}}}"#);
    let object_first = format!(r#"{{"object":{object},"type":"MODIFIED"}}"#);
    let mut group = c.benchmark_group("watch");
    for (name, line) in [("type first", &type_first), ("object first", &object_first)] {
        group.bench_function(
            format!("decode one MODIFIED event ({name}, {} bytes)", line.len()),
            |b| {
                b.iter(|| {
                    let event: kube::api::WatchEvent<Node> =
                        serde_json::from_str(black_box(line)).expect("a generated event parses");
                    black_box(event)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    readings_of_one_node,
    decode_a_status_re_post,
    at_10k_nodes
);
criterion_main!(benches);

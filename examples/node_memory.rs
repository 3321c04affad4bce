//! How much memory a stored node takes: decodes N generated nodes (as the
//! fake API server serves them, ~13 KB of JSON each) into the stored type,
//! strips them as the watcher does, keeps them, and prints the resident size
//! per node (among the garbage of decoding, as in the watcher). Quoted in
//! docs/benchmarks.md ("Where the time and memory go").
//!
//! `cargo run --release --example node_memory -- 50000`

use std::sync::Arc;

use kube_node_status::cluster::Node;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = match std::env::args().nth(1).map(|s| s.parse()) {
        None => 50_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: node_memory [NODES > 0]");
            std::process::exit(2);
        }
    };
    let per_node = |base: u64| (rss_kib().saturating_sub(base)) * 1024 / n as u64;
    println!(
        "size_of: stored Node {} B, k8s-openapi's Node {} B",
        std::mem::size_of::<Node>(),
        std::mem::size_of::<k8s_openapi::api::core::v1::Node>()
    );
    let base = rss_kib();
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let json = kube_node_status::fake::generated_node(i, 1, "2026-11-27T00:00:00Z");
        let text = serde_json::to_vec(&json).expect("a generated node serializes");
        let mut node: Node = serde_json::from_slice(&text).expect("a generated node parses");
        kube_node_status::cluster::strip(&mut node, &|k| k.starts_with("node-role.kubernetes.io/"));
        if i == 0 {
            let stripped = serde_json::to_vec(&node).map_or(0, |v| v.len());
            println!("JSON: {} B served, {stripped} B after stripping", text.len());
        }
        nodes.push(Arc::new(node));
    }
    // The decode's garbage, handed back so that what is resident is what is
    // stored. The example runs on the system allocator (the binary's
    // jemalloc is set in src/main.rs, not in the library).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers of ours.
    unsafe {
        libc::malloc_trim(0);
    }
    println!("resident per stored node: {} B", per_node(base));
    std::hint::black_box(nodes);
}

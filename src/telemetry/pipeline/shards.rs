//! Nodes split into shards by a hash of their name, and the work done per
//! shard spread over the machine's cores.
//!
//! A node's shard depends on its name only, so the pass maps a changed name
//! to the one shard it has to write again, with no partition of the cluster.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use crate::cluster::Node;

/// Shards of the node set. A change redoes 1/64 of the nodes; at
/// 50,000 nodes a shard is ~800 nodes, a few milliseconds.
pub const SHARDS: usize = 64;

/// The shard of the node named `name`.
pub fn shard_of(name: &str) -> usize {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

/// Fewest shards per worker thread: below it, threads cost more than they save.
const SHARDS_PER_WORKER: usize = 4;

/// Runs `work` on each of `shards` and returns the results in their order. With many shards
/// (the first pass after a sync does all 64) they are spread over the
/// machine's cores: at 50,000 nodes a first pass is seconds of CPU, and
/// while it runs `/metrics` shows the view from before. With few (a flip
/// changes one) they run on the calling thread.
pub fn map<R: Send>(shards: &[(usize, Vec<Arc<Node>>)], work: impl Fn(&[Arc<Node>]) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = cores.min(shards.len() / SHARDS_PER_WORKER);
    if workers <= 1 {
        return shards.iter().map(|(_, nodes)| work(nodes)).collect();
    }
    // Workers take the next shard as they finish one: shards differ in size.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((_, nodes)) = shards.get(i) else { break };
                        mine.push((i, work(nodes)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            // A worker panics only if `work` does; re-raise it as the single-threaded path would.
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_always_lands_in_the_same_shard_and_names_spread() {
        let counts = (0..6_400).fold(vec![0usize; SHARDS], |mut c, i| {
            let name = format!("node-{i}");
            assert_eq!(shard_of(&name), shard_of(&name.clone()));
            c[shard_of(&name)] += 1;
            c
        });
        assert!(counts.iter().all(|&c| (50..=150).contains(&c)), "{counts:?}");
    }

    fn node(name: &str) -> Arc<Node> {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        Arc::new(n)
    }

    #[test]
    fn map_spreads_many_shards_and_keeps_their_order() {
        let nodes: Vec<_> = (0..2_000).map(|i| node(&format!("n{i}"))).collect();
        let mut all: Vec<(usize, Vec<Arc<Node>>)> = (0..SHARDS).map(|s| (s, Vec::new())).collect();
        for n in nodes {
            all[shard_of(n.metadata.name.as_deref().unwrap_or_default())]
                .1
                .push(n);
        }
        let names = |shard: &[Arc<Node>]| -> Vec<String> {
            shard
                .iter()
                .map(|n| n.metadata.name.clone().unwrap_or_default())
                .collect()
        };
        let want: Vec<_> = all.iter().map(|(_, s)| names(s)).collect();
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        let got = map(&all, |s| {
            threads.lock().unwrap().insert(std::thread::current().id());
            std::thread::sleep(std::time::Duration::from_millis(1));
            names(s)
        });
        assert_eq!(got, want, "results in the order of the shards");
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(
            threads.lock().unwrap().len(),
            cores.min(SHARDS / 4),
            "one thread per core"
        );
        // One changed shard runs on the calling thread.
        let one = &all[..1];
        let caller = std::thread::current().id();
        assert_eq!(map(one, |_| std::thread::current().id()), vec![caller]);
    }
}

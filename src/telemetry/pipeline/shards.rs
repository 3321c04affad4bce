//! Nodes split into shards by a hash of their name, and the work done per
//! shard spread over the machine's cores.
//!
//! A node's shard depends on its name and the shard count only, so the pass
//! maps a changed name to the one shard it has to write again, with no
//! partition of the cluster. The shard is the unit of re-rendering, so the
//! count grows with the cluster and a shard holds about
//! [`NODES_PER_SHARD`] nodes at any size: a change costs the same at 1,000
//! nodes as at 130,000.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use crate::cluster::Node;

/// Nodes in a shard, at most on average, right after the count was chosen.
/// A change re-renders its shard: each node is ~50 points written for both
/// outputs and compressed, ~60 µs, so a shard of 8 stays well under a
/// millisecond. Fewer would cost compression: each shard's segment is
/// compressed on its own (docs/benchmarks.md has the trade-off).
pub const NODES_PER_SHARD: usize = 8;

/// Fewest shards, for small clusters: a full pass still spreads over the cores.
pub const MIN_SHARDS: usize = 64;

/// The shard count for `nodes` nodes: a power of two, at least
/// [`MIN_SHARDS`], with at most [`NODES_PER_SHARD`] nodes a shard on average.
pub fn count_for(nodes: usize) -> usize {
    nodes
        .div_ceil(NODES_PER_SHARD)
        .next_power_of_two()
        .max(MIN_SHARDS)
}

/// The shard count to move to when `nodes` are held in `shards` shards, if
/// it should change: as soon as the shards hold more than
/// [`NODES_PER_SHARD`] on average (doubling at least), and back only when
/// the cluster has shrunk to a quarter of that, so that a cluster hovering
/// at a boundary does not re-shard back and forth. Re-sharding re-renders
/// every node, so it happens once for each doubling of the cluster.
pub fn resize(nodes: usize, shards: usize) -> Option<usize> {
    let want = count_for(nodes);
    (want > shards || want * 4 <= shards).then_some(want)
}

/// The shard of the node named `name`, of `shards`.
pub fn shard_of(name: &str, shards: usize) -> usize {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// Fewest shards per worker thread: below it, threads cost more than they save.
const SHARDS_PER_WORKER: usize = 4;

/// Runs `work` on each of `shards` and returns the results in their order. With many shards
/// (the first pass after a sync does all of them) they are spread over the
/// machine's cores: at 50,000 nodes a first pass is seconds of CPU, and
/// while it runs `/metrics` shows the view from before. With few (a flip
/// changes one) they run on the calling thread.
pub fn map<T: Sync, R: Send>(shards: &[(usize, T)], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    // Read once: it reads cgroup files on every call, which cost a tenth of a change.
    static CORES: std::sync::LazyLock<usize> =
        std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(1, usize::from));
    let cores = *CORES;
    let workers = cores.min(shards.len() / SHARDS_PER_WORKER);
    if workers <= 1 {
        return shards.iter().map(|(_, item)| work(item)).collect();
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
                        let Some((_, item)) = shards.get(i) else { break };
                        mine.push((i, work(item)));
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

/// The nodes of one shard, sorted by name: the order they are written in.
///
/// A sorted vector, not a map keyed by a copy of each name: a shard holds
/// ~8 nodes, and a `BTreeMap<String, _>` per shard was ~85 bytes a node
/// (the name's copy and the map's node), ~8.5 MB at 100,000 nodes.
#[derive(Clone, Debug, Default)]
pub struct Members(Vec<Arc<Node>>);

/// The name a node is sharded and kept by (empty if it has none).
pub fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

impl Members {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|n| name(n).cmp(key))
    }

    /// Holds `node` under its name, returning the node it replaces.
    pub fn insert(&mut self, node: Arc<Node>) -> Option<Arc<Node>> {
        match self.find(name(&node)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i], node)),
            Err(i) => {
                self.0.insert(i, node);
                None
            }
        }
    }

    /// Lets go of the node named `key`, returning it.
    pub fn remove(&mut self, key: &str) -> Option<Arc<Node>> {
        self.find(key).ok().map(|i| self.0.remove(i))
    }

    /// The node named `key`.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Arc<Node>> {
        self.find(key).ok().map(|i| &mut self.0[i])
    }

    /// The nodes, by name.
    pub fn iter(&self) -> std::slice::Iter<'_, Arc<Node>> {
        self.0.iter()
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Lets go of every node.
    pub fn clear(&mut self) {
        self.0.clear()
    }

    /// Every node, leaving it empty.
    pub fn take(&mut self) -> Vec<Arc<Node>> {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Node;
    use std::sync::Arc;

    #[test]
    fn a_name_always_lands_in_the_same_shard_and_names_spread() {
        const SHARDS: usize = 64;
        let counts = (0..6_400).fold(vec![0usize; SHARDS], |mut c, i| {
            let name = format!("node-{i}");
            assert_eq!(shard_of(&name, SHARDS), shard_of(&name.clone(), SHARDS));
            c[shard_of(&name, SHARDS)] += 1;
            c
        });
        assert!(counts.iter().all(|&c| (50..=150).contains(&c)), "{counts:?}");
    }

    #[test]
    fn shards_hold_a_bounded_number_of_nodes_at_any_size() {
        for nodes in [0, 1, 100, 512, 513, 1_000, 10_000, 65_000, 100_000, 130_000] {
            let shards = count_for(nodes);
            assert!(shards.is_power_of_two() && shards >= MIN_SHARDS, "{nodes}");
            assert!(nodes <= shards * NODES_PER_SHARD, "{nodes}: {shards}");
            assert!(
                shards == MIN_SHARDS || nodes > shards * NODES_PER_SHARD / 2,
                "{nodes}: {shards}"
            );
        }
    }

    #[test]
    fn the_count_grows_past_its_bound_and_shrinks_only_to_a_quarter() {
        let s = count_for(10_000); // 2,048
        assert_eq!(resize(10_000, s), None);
        assert_eq!(resize(s * NODES_PER_SHARD, s), None);
        assert_eq!(resize(s * NODES_PER_SHARD + 1, s), Some(2 * s));
        // Back under the bound: no flapping at the boundary.
        assert_eq!(resize(s * NODES_PER_SHARD, 2 * s), None);
        assert_eq!(resize(s * NODES_PER_SHARD / 2, 2 * s), Some(s / 2));
        assert_eq!(resize(s * NODES_PER_SHARD / 2 + 1, 2 * s), None);
        assert_eq!(resize(0, MIN_SHARDS), None);
        assert_eq!(resize(0, 4 * MIN_SHARDS), Some(MIN_SHARDS));
    }

    fn node(name: &str) -> Arc<Node> {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        Arc::new(n)
    }

    #[test]
    fn map_spreads_many_shards_and_keeps_their_order() {
        let nodes: Vec<_> = (0..2_000).map(|i| node(&format!("n{i}"))).collect();
        const SHARDS: usize = 64;
        let mut all: Vec<(usize, Vec<Arc<Node>>)> = (0..SHARDS).map(|s| (s, Vec::new())).collect();
        for n in nodes {
            all[shard_of(name(&n), SHARDS)].1.push(n);
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

    #[test]
    fn members_are_kept_by_name_and_replaced_by_name() {
        let node = |n: &str, uid: &str| {
            Arc::new(Node {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(n.into()),
                    uid: Some(uid.into()),
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        let mut m = Members::default();
        for n in ["c", "a", "b"] {
            assert!(m.insert(node(n, "1")).is_none());
        }
        let old = m.insert(node("b", "2")).expect("b was held");
        assert_eq!(old.metadata.uid.as_deref(), Some("1"));
        let held = |m: &Members| {
            m.iter()
                .map(|n| format!("{}{}", name(n), n.metadata.uid.as_deref().unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        assert_eq!(held(&m), ["a1", "b2", "c1"]);
        assert!(m.remove("x").is_none() && m.get_mut("x").is_none());
        assert_eq!(
            m.remove("a").map(|n| held(&Members(vec![n]))),
            Some(vec!["a1".into()])
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m.take().len(), 2);
        assert_eq!(m.len(), 0);
    }
}

//! Nodes split into shards by a hash of their name, and a memory of which
//! objects each shard held, so that work done per shard is redone only for
//! the shards whose nodes changed.
//!
//! "Changed" is object identity: the reflector stores every applied event
//! as a new `Arc<Node>`, so a shard is unchanged exactly when it holds the
//! same `Arc`s as last time. Keeping those `Arc`s until the next pass means
//! no address can be reused in between. (A resourceVersion would not do:
//! some API emulators do not bump it.)

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use crate::cluster::Node;

/// Shards of the node set. A change redoes 1/64 of the nodes; at
/// 50,000 nodes a shard is ~800 nodes, a few tens of milliseconds.
pub const SHARDS: usize = 64;

fn shard_of(name: &str) -> usize {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

/// `nodes` split into [`SHARDS`] shards, each sorted by address.
pub fn partition(nodes: Vec<Arc<Node>>) -> Vec<Vec<Arc<Node>>> {
    let mut shards: Vec<Vec<Arc<Node>>> = vec![Vec::new(); SHARDS];
    for node in nodes {
        shards[shard_of(node.metadata.name.as_deref().unwrap_or_default())].push(node);
    }
    for shard in &mut shards {
        shard.sort_unstable_by_key(Arc::as_ptr);
    }
    shards
}

/// The shards of `nodes` that `memo` does not remember as they are now, with their index.
pub fn changed(memo: &Memo, nodes: Vec<Arc<Node>>) -> Vec<(usize, Vec<Arc<Node>>)> {
    partition(nodes)
        .into_iter()
        .enumerate()
        .filter(|(shard, nodes)| !memo.unchanged(*shard, nodes))
        .collect()
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

/// Per shard, the objects it held at the last pass.
#[derive(Debug)]
pub struct Memo(Vec<Option<Vec<Arc<Node>>>>);

impl Default for Memo {
    fn default() -> Self {
        Memo(vec![None; SHARDS])
    }
}

impl Memo {
    /// True if `shard` holds exactly the objects it held at the last pass.
    pub fn unchanged(&self, shard: usize, nodes: &[Arc<Node>]) -> bool {
        self.0[shard].as_deref().is_some_and(|before| {
            before.len() == nodes.len() && before.iter().zip(nodes).all(|(x, y)| Arc::ptr_eq(x, y))
        })
    }

    /// Remembers what `shard` holds now.
    pub fn remember(&mut self, shard: usize, nodes: Vec<Arc<Node>>) {
        self.0[shard] = Some(nodes);
    }

    /// Forgets every shard: the next pass redoes all of them.
    pub fn forget(&mut self) {
        self.0.fill(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Arc<Node> {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        Arc::new(n)
    }

    #[test]
    fn a_shard_is_unchanged_only_with_the_same_objects() {
        let nodes: Vec<_> = (0..200).map(|i| node(&format!("n{i}"))).collect();
        let shards = partition(nodes.clone());
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 200);
        let mut memo = Memo::default();
        assert!(!memo.unchanged(0, &shards[0]), "nothing remembered yet");
        for (i, s) in shards.iter().enumerate() {
            memo.remember(i, s.clone());
        }
        assert!((0..SHARDS).all(|i| memo.unchanged(i, &shards[i])));
        // The same name as a new object (an update) changes its shard only.
        let mut updated = nodes.clone();
        updated[7] = node("n7");
        let after = partition(updated);
        let changed: Vec<_> = (0..SHARDS).filter(|&i| !memo.unchanged(i, &after[i])).collect();
        assert_eq!(changed, vec![shard_of("n7")]);
        memo.forget();
        assert!(!memo.unchanged(changed[0], &after[changed[0]]));
    }

    #[test]
    fn map_spreads_many_shards_and_keeps_their_order() {
        let nodes: Vec<_> = (0..2_000).map(|i| node(&format!("n{i}"))).collect();
        let all: Vec<_> = partition(nodes).into_iter().enumerate().collect();
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

//! Nodes split into shards by a hash of their name, and a memory of which
//! objects each shard held, so that work done per shard is redone only for
//! the shards whose nodes changed.
//!
//! "Changed" is content: the watch stores no update that changes nothing
//! kept, so a shard holding the same `Arc`s as last time is unchanged (the
//! fast path). A relist stores every node again as a new `Arc`; a shard whose
//! new objects equal the remembered ones ([`Node::same_content`]) is
//! unchanged too, and the memo takes the new objects so that the old ones are
//! freed. (A resourceVersion would not do: every write bumps it, and some API
//! emulators do not.)

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use crate::cluster::{Node, Transitions};

/// Shards of the node set. A change redoes 1/64 of the nodes; at
/// 50,000 nodes a shard is ~800 nodes, a few tens of milliseconds.
pub const SHARDS: usize = 64;

fn shard_of(name: &str) -> usize {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

/// `nodes` split into [`SHARDS`] shards, each sorted by name.
pub fn partition(nodes: Vec<Arc<Node>>) -> Vec<Vec<Arc<Node>>> {
    let mut shards: Vec<Vec<Arc<Node>>> = vec![Vec::new(); SHARDS];
    for node in nodes {
        shards[shard_of(name(&node))].push(node);
    }
    for shard in &mut shards {
        shard.sort_unstable_by(|a, b| name(a).cmp(name(b)));
    }
    shards
}

/// The shards of `nodes` that `memo` does not remember as they are now, with their index.
pub fn changed(
    memo: &mut Memo,
    nodes: Vec<Arc<Node>>,
    transitions: &Transitions,
) -> Vec<(usize, Vec<Arc<Node>>)> {
    partition(nodes)
        .into_iter()
        .enumerate()
        .filter(|(shard, nodes)| !memo.unchanged(*shard, nodes, transitions))
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

/// Per shard, the objects it held at the last pass, each with its node's
/// transition count then: the counts are readings the object does not hold (a
/// flap there and back leaves an equal object behind, and two more transitions).
#[derive(Debug)]
pub struct Memo(Vec<Option<Remembered>>);

/// A shard's objects at its last pass, each with its node's transition count then.
type Remembered = Vec<(Arc<Node>, u64)>;

impl Default for Memo {
    fn default() -> Self {
        Memo(vec![None; SHARDS])
    }
}

fn stamped(nodes: &[Arc<Node>], transitions: &Transitions) -> Remembered {
    nodes
        .iter()
        .map(|n| (n.clone(), transitions.total(name(n))))
        .collect()
}

impl Memo {
    /// True if `shard` holds what it held at the last pass: the same objects
    /// (the watch stores no update that changes nothing, and counts
    /// transitions only for what it stores), or (after a relist) new ones with
    /// the same content and transition counts, which it then remembers instead.
    pub fn unchanged(&mut self, shard: usize, nodes: &[Arc<Node>], transitions: &Transitions) -> bool {
        let Some(before) = self.0[shard].as_deref() else {
            return false;
        };
        if before.len() != nodes.len() {
            return false;
        }
        if before.iter().zip(nodes).all(|((x, _), y)| Arc::ptr_eq(x, y)) {
            return true;
        }
        let same = before.iter().zip(nodes).all(|((x, counted), y)| {
            Arc::ptr_eq(x, y) || (x.same_content(y) && *counted == transitions.total(name(y)))
        });
        if same {
            self.0[shard] = Some(stamped(nodes, transitions));
        }
        same
    }

    /// Remembers what `shard` holds now.
    pub fn remember(&mut self, shard: usize, nodes: &[Arc<Node>], transitions: &Transitions) {
        self.0[shard] = Some(stamped(nodes, transitions));
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
    fn a_shard_is_unchanged_only_with_the_same_content_and_transitions() {
        let transitions = Transitions::default();
        let nodes: Vec<_> = (0..200).map(|i| node(&format!("n{i}"))).collect();
        let shards = partition(nodes.clone());
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 200);
        let mut memo = Memo::default();
        assert!(
            !memo.unchanged(0, &shards[0], &transitions),
            "nothing remembered yet"
        );
        for (i, s) in shards.iter().enumerate() {
            memo.remember(i, s, &transitions);
        }
        assert!((0..SHARDS).all(|i| memo.unchanged(i, &shards[i], &transitions)));
        // A relist: every node a new object, none changed. No shard changed,
        // and the memo now holds the new objects, so the old ones are freed.
        let relisted: Vec<_> = (0..200).map(|i| node(&format!("n{i}"))).collect();
        let after = partition(relisted.clone());
        assert!((0..SHARDS).all(|i| memo.unchanged(i, &after[i], &transitions)));
        assert!(
            nodes.iter().all(|n| Arc::strong_count(n) == 2),
            "the old objects are still held"
        );
        drop(shards);
        assert!(
            nodes.iter().all(|n| Arc::strong_count(n) == 1),
            "the memo kept old objects"
        );
        // An update of one node changes its shard only.
        let mut updated = relisted.clone();
        let mut n7 = (*updated[7]).clone();
        n7.metadata.labels = Some([("zone".to_string(), "z2".to_string())].into());
        updated[7] = Arc::new(n7);
        let after = partition(updated.clone());
        let changed: Vec<_> = (0..SHARDS)
            .filter(|&i| !memo.unchanged(i, &after[i], &transitions))
            .collect();
        assert_eq!(changed, vec![shard_of("n7")]);
        for (i, s) in after.iter().enumerate() {
            memo.remember(i, s, &transitions);
        }
        // A flap there and back: an equal object again, but two transitions more.
        let n9 = (*updated[9]).clone();
        let ready = |status: &str| {
            let mut n = n9.clone();
            n.status = Some(crate::cluster::NodeStatus {
                conditions: Some(vec![crate::cluster::NodeCondition {
                    type_: "Ready".into(),
                    status: status.into(),
                    last_transition_time: None,
                }]),
                ..Default::default()
            });
            Arc::new(n)
        };
        let (up, down) = (ready("True"), ready("False"));
        transitions.observe(None, &up);
        updated[9] = up.clone();
        let after = partition(updated.clone());
        let shard = shard_of("n9");
        assert!(
            !memo.unchanged(shard, &after[shard], &transitions),
            "n9 got conditions"
        );
        memo.remember(shard, &after[shard], &transitions);
        transitions.observe(Some(&up), &down);
        transitions.observe(Some(&down), &up);
        updated[9] = ready("True");
        let after = partition(updated);
        assert!(
            !memo.unchanged(shard, &after[shard], &transitions),
            "a flap there and back left its shard unchanged"
        );
        memo.forget();
        assert!(!memo.unchanged(changed[0], &partition(relisted)[changed[0]], &transitions));
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

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

use k8s_openapi::api::core::v1::Node;

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
}

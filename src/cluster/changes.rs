//! The names of the nodes whose stored content changed: what the one pass
//! downstream has to redo, and nothing else.
//!
//! The watch marks a name when it stores a node that differs from the one
//! it replaces, or deletes one; a relist marks only the names whose content
//! differs from what was stored before it. An update that changes nothing
//! kept marks nothing, so at idle (kubelet status re-posts) the set stays empty.
//!
//! Nothing is marked until the first [`Changes::take`]: a configuration with
//! no pass (the reference encoder alone, or no metrics exporter) never takes,
//! and the set must not grow for ever. Whoever takes first redoes everything.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use super::Node;

/// The set of changed node names since the last [`Changes::take`].
#[derive(Debug, Default)]
pub struct Changes {
    names: Mutex<HashSet<String>>,
    /// True once something took the set: until then nothing is marked.
    taken: AtomicBool,
    /// True when a relist replaced the stored objects since the last take.
    relisted: AtomicBool,
}

/// What changed since the last [`Changes::take`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// The names of the nodes stored anew (with other content) or deleted.
    pub names: HashSet<String>,
    /// A relist replaced every stored object, most with equal content: a
    /// reader that keeps nodes should take the stored ones again, or it
    /// holds a second copy of every unchanged node.
    pub relisted: bool,
}

impl Changes {
    fn tracking(&self) -> bool {
        self.taken.load(Ordering::Acquire)
    }

    /// Marks `name` as changed (stored anew, or deleted).
    pub(crate) fn mark(&self, name: &str) {
        if !self.tracking() {
            return;
        }
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if !names.contains(name) {
            names.insert(name.to_owned());
        }
    }

    /// Marks what a relist changed: the names in `after` that were not in
    /// `before` or whose content differs, and the names in `before` that
    /// are gone. Nodes are compared by content: every relisted node is a new object.
    pub(crate) fn mark_relist(&self, before: &[Arc<Node>], after: &[Arc<Node>]) {
        if !self.tracking() {
            return;
        }
        self.relisted.store(true, Ordering::Release);
        let name = |n: &Arc<Node>| n.metadata.name.clone().unwrap_or_default();
        let mut gone: HashMap<String, &Arc<Node>> = before.iter().map(|n| (name(n), n)).collect();
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        for node in after {
            let name = name(node);
            match gone.remove(&name) {
                Some(old) if Arc::ptr_eq(old, node) || old.same_content(node) => {}
                _ => {
                    names.insert(name);
                }
            }
        }
        names.extend(gone.into_keys());
    }

    /// Takes what changed, leaving the set empty. From the first call on,
    /// changes are marked.
    pub fn take(&self) -> Taken {
        self.taken.store(true, Ordering::Release);
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        Taken {
            names: std::mem::take(&mut *names),
            relisted: self.relisted.swap(false, Ordering::AcqRel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: &str) -> Arc<Node> {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some([("zone".to_string(), zone.to_string())].into());
        Arc::new(n)
    }

    fn sorted(taken: Taken) -> Vec<String> {
        let mut v: Vec<_> = taken.names.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn a_relist_marks_only_what_it_changed() {
        let changes = Changes::default();
        changes.take();
        let before = vec![node("a", "z1"), node("b", "z1"), node("c", "z1")];
        changes.mark_relist(&[], &before);
        assert_eq!(
            sorted(changes.take()),
            ["a", "b", "c"],
            "the first list marks every node"
        );
        assert!(changes.take().names.is_empty(), "take empties the set");
        // Every object new, as after a 410: a unchanged, b changed, c gone, d new.
        let after = vec![node("a", "z1"), node("b", "z2"), node("d", "z1")];
        changes.mark_relist(&before, &after);
        assert_eq!(sorted(changes.take()), ["b", "c", "d"]);
        changes.mark_relist(
            &after,
            &after.iter().map(|n| Arc::new((**n).clone())).collect::<Vec<_>>(),
        );
        let taken = changes.take();
        assert!(
            taken.names.is_empty(),
            "a relist that changed nothing marks nothing"
        );
        assert!(taken.relisted, "but says it replaced the objects");
        changes.mark("a");
        changes.mark("a");
        assert_eq!(sorted(changes.take()), ["a"]);
    }

    /// With nothing taking them (no pass: the reference encoder alone, or
    /// no metrics exporter), changes are not kept: the set grew for ever.
    #[test]
    fn nothing_is_kept_until_someone_takes() {
        let changes = Changes::default();
        for i in 0..1000 {
            changes.mark(&format!("n{i}"));
        }
        changes.mark_relist(&[], &[node("a", "z1")]);
        assert_eq!(changes.names.lock().unwrap().len(), 0);
        assert_eq!(changes.take(), Taken::default());
        changes.mark("a");
        assert_eq!(sorted(changes.take()), ["a"]);
    }
}

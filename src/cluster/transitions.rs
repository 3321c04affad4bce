//! Condition status changes seen in watch events, counted per node and condition type.
//!
//! A flap that starts and ends between two scrapes is invisible in any gauge;
//! every watch event carries it, so this counts it. What is counted, exactly
//! (docs/metrics.md, "Counting condition changes"):
//!
//! - a status change between two versions of a node the watch delivered: one;
//! - a status the same but a newer `lastTransitionTime`: the condition
//!   changed and changed back while the watch was not looking (a relist
//!   after 410 Gone, a restart). Two: the fewest changes that explain it;
//! - a node re-created under the same name (a new uid): a new node, whose
//!   counters start again at zero, with nothing counted for the re-creation.
//!
//! A relist's LIST that fails part way is started again from its first page
//! (kube-runtime's watcher goes back to `Init`). The versions it delivered
//! are what the node was last seen as, not the version stored before the
//! relist, so a retried page counts nothing twice.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use compact_str::CompactString;

use super::node::{ConditionStatus, Node};

/// Per node, per condition type: the status changes observed since start.
///
/// A node's counters are one small vector sorted by type, not a map: a node
/// has a handful of conditions, and a `BTreeMap` of `String` keys per node
/// was ~370 bytes a node in a heap profile at 50,000 nodes (docs/benchmarks.md).
#[derive(Debug, Default)]
pub struct Transitions {
    counts: Mutex<HashMap<CompactString, Counters>>,
    /// Names seen during a (re)list, to forget nodes that vanished meanwhile.
    listing: Mutex<Option<HashSet<String>>>,
}

/// What a node was last seen as, as far as counting and recording its
/// condition changes goes: its uid, and each condition's status and
/// transition time (first entry of a type wins, as in the readings).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    uid: Option<String>,
    conditions: Vec<(CompactString, ConditionStatus, Option<i64>)>,
}

impl Seen {
    /// The summary of `node`.
    pub fn of(node: &Node) -> Seen {
        Seen {
            uid: node.metadata.uid.clone(),
            conditions: conditions(node)
                .into_iter()
                .map(|(t, s, since)| (t.into(), s, since))
                .collect(),
        }
    }

    /// True when `new` is another object than the one seen: both have a uid,
    /// and they differ.
    pub fn is_replaced_by(&self, new: &Node) -> bool {
        matches!((&self.uid, &new.metadata.uid), (Some(a), Some(b)) if a != b)
    }

    /// How `new`'s condition of `type_` with `status` and `transition` moved
    /// from what was seen. A newer transition time under the same status is
    /// a change and back only `across_gap` (a relist): a watch delivers every
    /// status change, and a live update that moves only the transition time
    /// (node-problem-detector does, when a condition's reason changes) is no
    /// change of status.
    pub fn moved(
        &self,
        type_: &str,
        status: ConditionStatus,
        transition: Option<i64>,
        across_gap: bool,
    ) -> Moved {
        let Some((_, before, seen_at)) = self.conditions.iter().find(|(t, _, _)| t == type_) else {
            return Moved::New;
        };
        if *before != status {
            return Moved::Changed { previous: *before };
        }
        match (seen_at, transition) {
            (Some(a), Some(b)) if across_gap && b > *a => Moved::ChangedAndBack,
            _ => Moved::Same,
        }
    }
}

/// How one condition moved between what was seen and a new version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Moved {
    /// The condition was not there before: no change.
    New,
    /// Same status, same transition time.
    Same,
    /// Another status.
    Changed {
        /// The status seen before.
        previous: ConditionStatus,
    },
    /// Same status, a newer transition time: it changed and changed back unseen.
    ChangedAndBack,
}

impl Moved {
    /// The fewest status changes the move implies.
    pub fn count(&self) -> u64 {
        match self {
            Moved::New | Moved::Same => 0,
            Moved::Changed { .. } => 1,
            Moved::ChangedAndBack => 2,
        }
    }
}

/// The conditions of `node` with their transition times (first entry of a type wins).
pub(super) fn conditions(node: &Node) -> Vec<(&str, ConditionStatus, Option<i64>)> {
    let mut out: Vec<(&str, ConditionStatus, Option<i64>)> = Vec::new();
    for c in node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        if !c.type_.is_empty() && !out.iter().any(|(t, _, _)| *t == c.type_) {
            out.push((&c.type_, c.status, c.last_transition_seconds()));
        }
    }
    out
}

/// One node's counters, sorted by condition type.
type Counters = Vec<(CompactString, u64)>;

/// Where `type_` is in `counters`, or where it would go.
fn position(counters: &Counters, type_: &str) -> Result<usize, usize> {
    counters.binary_search_by(|(t, _)| t.as_str().cmp(type_))
}

/// The counter of `type_` in `counters`, added at zero if missing.
fn counter<'a>(counters: &'a mut Counters, type_: &str) -> &'a mut u64 {
    let at = match position(counters, type_) {
        Ok(at) => at,
        Err(at) => {
            counters.insert(at, (type_.into(), 0));
            at
        }
    };
    &mut counters[at].1
}

impl Transitions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CompactString, Counters>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `new` replacing what was seen of it (`old`; None when the
    /// node is new to us), `across_gap` when a relist delivered it. Every
    /// condition present gets a counter, at zero until it changes; a new uid
    /// starts them all again.
    pub(crate) fn observe(&self, old: Option<&Seen>, new: &Node, across_gap: bool) {
        let Some(name) = new.metadata.name.as_deref() else {
            return;
        };
        let old = old.filter(|o| !o.is_replaced_by(new));
        let mut counts = self.lock();
        if old.is_none() {
            counts.remove(name);
        }
        let entry = counts.entry(name.into()).or_default();
        for (type_, status, transition) in conditions(new) {
            let moved = old.map_or(Moved::New, |o| o.moved(type_, status, transition, across_gap));
            *counter(entry, type_) += moved.count();
        }
        entry.shrink_to_fit();
        if let Some(listing) = self.listing.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            listing.insert(name.to_string());
        }
    }

    /// Forgets a deleted node: its series must go with it.
    pub(crate) fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// A (re)list starts.
    pub(crate) fn list_started(&self) {
        *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
    }

    /// A (re)list completed: nodes it did not return were deleted meanwhile.
    pub(crate) fn list_done(&self) {
        if let Some(listed) = self.listing.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.lock().retain(|name, _| listed.contains(name.as_str()));
        }
    }

    /// Calls `f` with (node, condition type, count) for every counter.
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, u64)) {
        for (node, types) in self.lock().iter() {
            for (type_, count) in types {
                f(node, type_, *count);
            }
        }
    }

    /// Every change counted for `node`, over all its condition types: it moves
    /// whenever one of the node's counters does.
    pub fn total(&self, node: &str) -> u64 {
        self.lock()
            .get(node)
            .map_or(0, |t| t.iter().map(|(_, c)| c).sum())
    }

    /// One counter, if it exists.
    pub fn get(&self, node: &str, type_: &str) -> Option<u64> {
        let counts = self.lock();
        let counters = counts.get(node)?;
        position(counters, type_).ok().map(|at| counters[at].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readings::test_nodes::node;

    #[test]
    fn a_flap_counts_two() {
        let t = Transitions::default();
        let ready = node("a", Some(&[("Ready", "True"), ("DiskPressure", "False")]));
        let not_ready = node("a", Some(&[("Ready", "False"), ("DiskPressure", "False")]));
        t.observe(None, &ready, false);
        assert_eq!(t.get("a", "Ready"), Some(0));
        t.observe(Some(&Seen::of(&ready)), &not_ready, false);
        t.observe(Some(&Seen::of(&not_ready)), &ready, false);
        assert_eq!(t.get("a", "Ready"), Some(2));
        assert_eq!(t.get("a", "DiskPressure"), Some(0));
        // A heartbeat-only update is not a transition.
        t.observe(Some(&Seen::of(&ready)), &ready, false);
        assert_eq!(t.get("a", "Ready"), Some(2));
    }

    #[test]
    fn new_conditions_start_at_zero_and_deleted_nodes_are_forgotten() {
        let t = Transitions::default();
        t.observe(None, &node("a", Some(&[("Ready", "True")])), false);
        t.observe(
            Some(&Seen::of(&node("a", Some(&[("Ready", "True")])))),
            &node("a", Some(&[("Ready", "True"), ("KernelDeadlock", "True")])),
            false,
        );
        assert_eq!(t.get("a", "KernelDeadlock"), Some(0));
        t.forget("a");
        assert_eq!(t.get("a", "Ready"), None);
    }

    #[test]
    fn counters_are_kept_by_type_whatever_order_the_conditions_come_in() {
        let t = Transitions::default();
        let before = node(
            "a",
            Some(&[
                ("Ready", "True"),
                ("DiskPressure", "False"),
                ("MemoryPressure", "False"),
            ]),
        );
        let after = node(
            "a",
            Some(&[
                ("MemoryPressure", "True"),
                ("Ready", "False"),
                ("DiskPressure", "False"),
            ]),
        );
        t.observe(None, &before, false);
        t.observe(Some(&Seen::of(&before)), &after, false);
        let mut seen = Vec::new();
        t.for_each(|n, ty, c| seen.push((n.to_string(), ty.to_string(), c)));
        let row = |ty: &str, c| ("a".to_string(), ty.to_string(), c);
        assert_eq!(
            seen,
            vec![row("DiskPressure", 0), row("MemoryPressure", 1), row("Ready", 1)]
        );
        assert_eq!(t.total("a"), 2);
        assert_eq!(t.get("a", "MemoryPressure"), Some(1));
        assert_eq!(t.get("a", "PIDPressure"), None);
    }

    #[test]
    fn a_relist_drops_nodes_it_did_not_return() {
        let t = Transitions::default();
        t.observe(None, &node("a", Some(&[("Ready", "True")])), false);
        t.observe(None, &node("b", Some(&[("Ready", "True")])), false);
        t.list_started();
        t.observe(
            Some(&Seen::of(&node("a", Some(&[("Ready", "True")])))),
            &node("a", Some(&[("Ready", "False")])),
            false,
        );
        t.list_done();
        assert_eq!(
            t.get("a", "Ready"),
            Some(1),
            "a change during the gap counts once"
        );
        assert_eq!(t.get("b", "Ready"), None);
        let mut seen = Vec::new();
        t.for_each(|n, ty, c| seen.push((n.to_string(), ty.to_string(), c)));
        assert_eq!(seen, vec![("a".to_string(), "Ready".to_string(), 1)]);
    }
}

//! Condition status changes seen in watch events, counted per node and condition type.
//!
//! A flap that starts and ends between two scrapes is invisible in any gauge;
//! every watch event carries it, so this counts it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
};

use super::node::Node;

/// Per node, per condition type: the status changes observed since start.
#[derive(Debug, Default)]
pub struct Transitions {
    counts: Mutex<HashMap<String, BTreeMap<String, u64>>>,
    /// Names seen during a (re)list, to forget nodes that vanished meanwhile.
    listing: Mutex<Option<HashSet<String>>>,
}

/// The raw status of each condition type (first entry wins, as in the readings).
pub(super) fn statuses(node: &Node) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for c in node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        if !c.type_.is_empty() && !out.iter().any(|(t, _)| *t == c.type_) {
            out.push((&c.type_, &c.status));
        }
    }
    out
}

impl Transitions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, u64>>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `new` replacing `old` (None when the node is new to us).
    /// Every condition present gets a counter, at zero until it changes.
    pub(crate) fn observe(&self, old: Option<&Node>, new: &Node) {
        let Some(name) = new.metadata.name.as_deref() else {
            return;
        };
        let before = old.map(statuses).unwrap_or_default();
        let mut counts = self.lock();
        let entry = counts.entry(name.to_string()).or_default();
        for (type_, status) in statuses(new) {
            let changed = before.iter().any(|(t, s)| *t == type_ && *s != status);
            let count = entry.entry(type_.to_string()).or_default();
            *count += u64::from(changed);
        }
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
            self.lock().retain(|name, _| listed.contains(name));
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
        self.lock().get(node).map_or(0, |t| t.values().sum())
    }

    /// One counter, if it exists.
    pub fn get(&self, node: &str, type_: &str) -> Option<u64> {
        self.lock().get(node).and_then(|t| t.get(type_)).copied()
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
        t.observe(None, &ready);
        assert_eq!(t.get("a", "Ready"), Some(0));
        t.observe(Some(&ready), &not_ready);
        t.observe(Some(&not_ready), &ready);
        assert_eq!(t.get("a", "Ready"), Some(2));
        assert_eq!(t.get("a", "DiskPressure"), Some(0));
        // A heartbeat-only update is not a transition.
        t.observe(Some(&ready), &ready);
        assert_eq!(t.get("a", "Ready"), Some(2));
    }

    #[test]
    fn new_conditions_start_at_zero_and_deleted_nodes_are_forgotten() {
        let t = Transitions::default();
        t.observe(None, &node("a", Some(&[("Ready", "True")])));
        t.observe(
            Some(&node("a", Some(&[("Ready", "True")]))),
            &node("a", Some(&[("Ready", "True"), ("KernelDeadlock", "True")])),
        );
        assert_eq!(t.get("a", "KernelDeadlock"), Some(0));
        t.forget("a");
        assert_eq!(t.get("a", "Ready"), None);
    }

    #[test]
    fn a_relist_drops_nodes_it_did_not_return() {
        let t = Transitions::default();
        t.observe(None, &node("a", Some(&[("Ready", "True")])));
        t.observe(None, &node("b", Some(&[("Ready", "True")])));
        t.list_started();
        t.observe(
            Some(&node("a", Some(&[("Ready", "True")]))),
            &node("a", Some(&[("Ready", "False")])),
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

//! Nodes counted by their kubelet heartbeat: the cluster-level reading of
//! the node Leases.

use crate::cluster::{Heartbeat, Heartbeats, Node};

/// Node counts by heartbeat: fresh, stale, or without a Lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatSummary {
    /// Nodes whose Lease was renewed within its stale-after.
    pub fresh: u64,
    /// Nodes whose Lease was not.
    pub stale: u64,
    /// Nodes without a Lease.
    pub missing: u64,
}

/// The states a node's heartbeat reads as, in the order they are reported.
pub const STATES: [&str; 3] = ["fresh", "stale", "missing"];

impl HeartbeatSummary {
    /// Counts `nodes` by their heartbeat in `heartbeats` (none while it is off or not listed).
    pub fn of<'a>(heartbeats: &Heartbeats, nodes: impl IntoIterator<Item = &'a Node>) -> Self {
        let mut s = HeartbeatSummary::default();
        for node in nodes {
            if let Some(h) = super::node_name(node).and_then(|n| heartbeats.of(n)) {
                s.count(h);
            }
        }
        s
    }

    /// Counts one more node.
    pub fn count(&mut self, heartbeat: Heartbeat) {
        match heartbeat {
            Heartbeat::Fresh => self.fresh += 1,
            Heartbeat::Stale { .. } => self.stale += 1,
            Heartbeat::Missing => self.missing += 1,
        }
    }

    /// `self` with `old` taken out and `new` put in: a shard counted again.
    pub fn replace(&mut self, old: HeartbeatSummary, new: HeartbeatSummary) {
        self.fresh = self.fresh.saturating_sub(old.fresh) + new.fresh;
        self.stale = self.stale.saturating_sub(old.stale) + new.stale;
        self.missing = self.missing.saturating_sub(old.missing) + new.missing;
    }

    /// The counts, in the order of [`STATES`].
    pub fn by_state(&self) -> [(&'static str, u64); 3] {
        [
            (STATES[0], self.fresh),
            (STATES[1], self.stale),
            (STATES[2], self.missing),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_counted_again_replaces_its_old_count() {
        let mut total = HeartbeatSummary::default();
        let mut shard = HeartbeatSummary::default();
        shard.count(Heartbeat::Fresh);
        shard.count(Heartbeat::Fresh);
        shard.count(Heartbeat::Missing);
        total.replace(HeartbeatSummary::default(), shard);
        let mut again = HeartbeatSummary::default();
        again.count(Heartbeat::Fresh);
        again.count(Heartbeat::Stale {
            last_renewal: Some(1.0),
        });
        again.count(Heartbeat::Missing);
        total.replace(shard, again);
        assert_eq!(total.by_state(), [("fresh", 1), ("stale", 1), ("missing", 1)]);
    }
}

//! The bounded queue between the watch and the log exporter: while the
//! collector is down, records wait here; when it is full the oldest go, and
//! are counted, so memory stays flat however long the outage.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::Notify;

use crate::{
    cluster::{ConditionChange, ConditionSink},
    leader::Leadership,
};

/// What became of the records, for self-telemetry.
#[derive(Debug, Default)]
pub struct LogStats {
    exported: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    rejected: AtomicU64,
    rejecting: std::sync::atomic::AtomicBool,
    queued: AtomicU64,
}

impl LogStats {
    /// Records the collector accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Records dropped, oldest first, because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records the collector refused for good (not retryable).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Records the collector took a request for and then refused
    /// (`partial_success.rejected_log_records`): sent, never stored.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Records a response to `sent` records that refused `rejected` of them;
    /// true when this starts or ends a streak of refusals (one log line each).
    pub(super) fn on_response(&self, sent: usize, rejected: u64) -> bool {
        let rejected = rejected.min(sent as u64);
        self.exported.fetch_add(sent as u64 - rejected, Ordering::Relaxed);
        if rejected > 0 {
            self.rejected.fetch_add(rejected, Ordering::Relaxed);
            !self.rejecting.swap(true, Ordering::AcqRel)
        } else {
            self.rejecting.swap(false, Ordering::AcqRel)
        }
    }

    /// Records waiting now.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    pub(super) fn on_refused(&self, n: usize) {
        self.refused.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Condition changes waiting to be sent; at most `capacity` of them.
pub struct LogQueue {
    records: Mutex<VecDeque<ConditionChange>>,
    capacity: usize,
    leadership: Leadership,
    stats: std::sync::Arc<LogStats>,
    /// Wakes the exporter when a record arrives.
    pub(super) arrived: Notify,
}

impl LogQueue {
    /// An empty queue of `capacity` (at least 1) that takes records only
    /// while `leadership` says this replica leads.
    pub fn new(capacity: usize, leadership: Leadership, stats: std::sync::Arc<LogStats>) -> LogQueue {
        LogQueue {
            records: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            leadership,
            stats,
            arrived: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ConditionChange>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes up to `n` records, oldest first.
    pub(super) fn take(&self, n: usize) -> Vec<ConditionChange> {
        let mut records = self.lock();
        let n = n.min(records.len());
        let batch: Vec<ConditionChange> = records.drain(..n).collect();
        self.stats.queued.store(records.len() as u64, Ordering::Relaxed);
        batch
    }

    /// Puts back a batch that could not be sent, in front of what arrived
    /// meanwhile: it is older. What no longer fits is dropped, oldest first.
    pub(super) fn put_back(&self, batch: Vec<ConditionChange>) {
        let mut records = self.lock();
        let room = self.capacity.saturating_sub(records.len());
        let dropped = batch.len().saturating_sub(room);
        for record in batch.into_iter().skip(dropped).rev() {
            records.push_front(record);
        }
        self.stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        self.stats.queued.store(records.len() as u64, Ordering::Relaxed);
    }

    /// True when nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl ConditionSink for LogQueue {
    fn changed(&self, change: ConditionChange) {
        // Every replica watches; only the one that exports readings reports changes.
        if !self.leadership.is_leader() {
            return;
        }
        {
            let mut records = self.lock();
            if records.len() >= self.capacity {
                records.pop_front();
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            records.push_back(change);
            self.stats.queued.store(records.len() as u64, Ordering::Relaxed);
        }
        self.arrived.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::Arc, time::SystemTime};

    fn change(i: usize) -> ConditionChange {
        ConditionChange {
            node: format!("n{i}"),
            uid: None,
            type_: "Ready".into(),
            status: "False".into(),
            previous: "True".into(),
            reason: None,
            message: None,
            last_transition: None,
            observed: SystemTime::now(),
        }
    }

    fn names(batch: &[ConditionChange]) -> Vec<String> {
        batch.iter().map(|c| c.node.clone()).collect()
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let stats = Arc::new(LogStats::default());
        let q = LogQueue::new(4, Leadership::sole(), stats.clone());
        for i in 0..5 {
            q.changed(change(i));
        }
        assert_eq!((stats.dropped(), stats.queued()), (1, 4));
        let batch = q.take(2);
        assert_eq!(names(&batch), ["n1", "n2"]);
        // One more arrives while the batch is out: only part of it fits back.
        q.changed(change(5));
        q.put_back(batch);
        assert_eq!(stats.dropped(), 2, "the batch's oldest record made room");
        assert_eq!(names(&q.take(10)), ["n2", "n3", "n4", "n5"]);
        assert!(q.is_empty());
        assert_eq!(stats.queued(), 0);
    }

    #[test]
    fn a_follower_queues_nothing() {
        let stats = Arc::new(LogStats::default());
        let q = LogQueue::new(4, Leadership::elected(), stats.clone());
        q.changed(change(0));
        assert!(q.is_empty());
        assert_eq!(stats.dropped(), 0);
    }
}

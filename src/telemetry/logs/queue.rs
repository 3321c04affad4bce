//! The bounded queue between the watch and the log exporter: while the
//! collector is down, records wait here; when it is full the oldest go, and
//! are counted, so memory stays flat however long the outage.

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
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
///
/// Across a change of leader no change may go unreported, and none twice by
/// one leader:
/// - every replica keeps what it saw in the last `replay` window, in any
///   role; a replica that becomes the leader sends those first. That covers
///   what the old leader saw but could not send (killed with records
///   waiting), and what nobody sent because nobody led (from the old
///   leader's last renewal to the takeover, or from a graceful shutdown's
///   stopped watch to its release of the Lease). A change both leaders saw
///   may so be reported by each: once per leadership;
/// - within one leadership a change is queued once: the replay skips what
///   this leadership queued already (a change that arrived while the
///   leadership was being taken is both seen live and remembered). The
///   watch itself never hands over one change twice (`cluster::feed`).
pub struct LogQueue {
    records: Mutex<VecDeque<ConditionChange>>,
    capacity: usize,
    leadership: Leadership,
    stats: std::sync::Arc<LogStats>,
    /// Wakes the exporter when a record arrives.
    pub(super) arrived: Notify,
    /// How far back a new leader reports what it saw; `None`: no leader election.
    replay: Option<Duration>,
    /// What this replica saw within `replay`, oldest first.
    recent: Mutex<VecDeque<ConditionChange>>,
    /// The changes queued in this leadership, oldest first, at most [`QUEUED_KEYS`].
    queued_keys: Mutex<(HashSet<Key>, VecDeque<Key>)>,
}

/// What identifies one change as this replica saw it: the time it saw it
/// tells apart two changes that look the same (a flip and back within one
/// second of `lastTransitionTime`, a condition without one).
type Key = (String, String, String, String, Option<SystemTime>, SystemTime);

fn key(c: &ConditionChange) -> Key {
    (
        c.uid.clone().unwrap_or_else(|| c.node.clone()),
        c.type_.clone(),
        c.status.clone(),
        c.previous.clone(),
        c.last_transition,
        c.observed,
    )
}

/// Changes remembered per leadership, for the replay to skip: at least
/// this many, and twice what a replay window may hold (`capacity`).
const QUEUED_KEYS: usize = 16_384;

impl LogQueue {
    /// An empty queue of `capacity` (at least 1) that takes records only
    /// while `leadership` says this replica leads; a new leader first
    /// queues what it saw in the last `replay`.
    pub fn new(
        capacity: usize,
        leadership: Leadership,
        stats: std::sync::Arc<LogStats>,
        replay: Option<Duration>,
    ) -> LogQueue {
        LogQueue {
            records: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            leadership,
            stats,
            arrived: Notify::new(),
            replay,
            recent: Mutex::new(VecDeque::new()),
            queued_keys: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Queues `change`; a `replayed` one only unless this leadership queued it already.
    fn queue(&self, change: ConditionChange, replayed: bool) -> bool {
        {
            let mut keys = self.queued_keys.lock().unwrap_or_else(|e| e.into_inner());
            let (set, order) = &mut *keys;
            let k = key(&change);
            if !set.insert(k.clone()) && replayed {
                return false;
            }
            order.push_back(k);
            if order.len() > QUEUED_KEYS.max(2 * self.capacity)
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
        }
        let mut records = self.lock();
        if records.len() >= self.capacity {
            records.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        records.push_back(change);
        self.stats.queued.store(records.len() as u64, Ordering::Relaxed);
        true
    }

    /// This replica became the leader at `now`: queues what it saw in the
    /// replay window, oldest first. Returns how many it queued.
    pub fn elected(&self, now: SystemTime) -> usize {
        let Some(window) = self.replay else { return 0 };
        let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
        let seen: Vec<ConditionChange> = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| c.observed >= since)
            .cloned()
            .collect();
        let queued = seen.into_iter().filter(|c| self.queue(c.clone(), true)).count();
        if queued > 0 {
            self.arrived.notify_one();
        }
        queued
    }

    /// This replica stopped leading: the next leadership reports afresh.
    pub fn stepped_down(&self) {
        let mut keys = self.queued_keys.lock().unwrap_or_else(|e| e.into_inner());
        *keys = (HashSet::new(), VecDeque::new());
    }

    /// Remembers `change` for a replay, forgetting what left the window.
    fn remember(&self, change: &ConditionChange) {
        let Some(window) = self.replay else { return };
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let since = change
            .observed
            .checked_sub(window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        while recent.front().is_some_and(|c| c.observed < since) || recent.len() >= self.capacity {
            recent.pop_front();
        }
        recent.push_back(change.clone());
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
        // Every replica watches and remembers; only the one that exports readings reports.
        self.remember(&change);
        if !self.leadership.is_leader() {
            return;
        }
        if self.queue(change, false) {
            self.arrived.notify_one();
        }
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
        let q = LogQueue::new(4, Leadership::sole(), stats.clone(), None);
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
        let q = LogQueue::new(4, Leadership::elected(), stats.clone(), None);
        q.changed(change(0));
        assert!(q.is_empty());
        assert_eq!(stats.dropped(), 0);
    }

    fn change_at(node: &str, status: &str, at: SystemTime) -> ConditionChange {
        ConditionChange {
            node: node.into(),
            uid: Some(format!("uid-{node}")),
            status: status.into(),
            previous: if status == "True" { "False" } else { "True" }.into(),
            last_transition: Some(at),
            observed: at,
            ..change(0)
        }
    }

    /// What a follower saw in the replay window is reported when it takes
    /// over: a killed leader's unsent records, and what changed while nobody
    /// led. Older ones are not.
    #[test]
    fn a_new_leader_reports_what_it_saw_in_the_window_and_nothing_older() {
        let stats = Arc::new(LogStats::default());
        let leadership = Leadership::elected();
        let q = LogQueue::new(100, leadership.clone(), stats, Some(Duration::from_secs(30)));
        let now = SystemTime::now();
        q.changed(change_at("old", "False", now - Duration::from_secs(60)));
        q.changed(change_at("a", "False", now - Duration::from_secs(20)));
        q.changed(change_at("b", "False", now - Duration::from_secs(1)));
        assert!(q.is_empty(), "a follower queues nothing");
        leadership.set_leader_for_tests(true);
        assert_eq!(q.elected(now), 2);
        assert_eq!(names(&q.take(10)), ["a", "b"]);
    }

    /// Within one leadership the replay skips what was queued already (a
    /// change seen live while the leadership was being taken); two changes
    /// that look alike (a flip and back in one second) are both queued.
    #[test]
    fn one_leadership_reports_a_change_once_and_the_next_may_again() {
        let stats = Arc::new(LogStats::default());
        let leadership = Leadership::elected();
        let q = LogQueue::new(100, leadership.clone(), stats, Some(Duration::from_secs(30)));
        let now = SystemTime::now();
        leadership.set_leader_for_tests(true);
        q.changed(change_at("a", "False", now));
        assert_eq!(q.elected(now), 0, "seen live in this leadership already");
        assert_eq!(names(&q.take(10)), ["a"]);
        let alike = ConditionChange {
            observed: now + Duration::from_millis(300),
            ..change_at("a", "False", now)
        };
        q.changed(alike);
        assert_eq!(
            names(&q.take(10)),
            ["a"],
            "a change that looks the same is another change"
        );
        q.changed(change_at("a", "True", now + Duration::from_secs(1)));
        assert_eq!(names(&q.take(10)), ["a"], "the next change is another change");
        // Lost and won again: a new leadership replays what it saw.
        leadership.set_leader_for_tests(false);
        q.stepped_down();
        leadership.set_leader_for_tests(true);
        assert_eq!(q.elected(now + Duration::from_secs(2)), 3);
    }
}

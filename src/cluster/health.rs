//! What is known about the watch: synced or not, broken since when, and counters.
//!
//! Everything is atomics so that metric callbacks and HTTP probes can read it
//! from any thread without locks.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use tokio::sync::watch;

/// Kinds of watcher events, counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An object was added or modified while watching.
    Apply,
    /// An object was deleted while watching.
    Delete,
    /// A (re)list started.
    Init,
    /// An object arrived as part of a (re)list.
    InitApply,
    /// A (re)list completed and the view was swapped in.
    InitDone,
    /// An object was modified while watching, but in nothing the view keeps
    /// (a kubelet re-posting its status with new heartbeat times): not stored.
    Unchanged,
}

impl EventKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EventKind; 6] = [
        EventKind::Apply,
        EventKind::Delete,
        EventKind::Init,
        EventKind::InitApply,
        EventKind::InitDone,
        EventKind::Unchanged,
    ];

    /// The attribute value for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Apply => "apply",
            EventKind::Delete => "delete",
            EventKind::Init => "init",
            EventKind::InitApply => "init_apply",
            EventKind::InitDone => "init_done",
            EventKind::Unchanged => "unchanged",
        }
    }
}

/// Why a watch step failed: a small fixed set, so it can be an attribute
/// (raw error text would be unbounded cardinality).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorReason {
    /// The LIST failed (API unreachable, 403, 5xx…).
    ListFailed,
    /// Starting a WATCH failed.
    WatchStartFailed,
    /// The API sent an ERROR event; 410 Gone is the common one.
    WatchError,
    /// The watch stream broke mid-way.
    WatchFailed,
    /// A response carried no resourceVersion.
    NoResourceVersion,
    /// A protobuf body without the `k8s\0` magic.
    BadMagic,
    /// A watch stream that ended inside a frame.
    TruncatedFrame,
    /// A frame or line over the limit (16 MiB).
    FrameTooLarge,
    /// A body, frame or line that does not decode as what it should be.
    UndecodableObject,
    /// A response in an encoding this client does not read.
    UnknownContentType,
}

impl ErrorReason {
    /// Every reason, in a fixed order.
    pub const ALL: [ErrorReason; 10] = [
        ErrorReason::ListFailed,
        ErrorReason::WatchStartFailed,
        ErrorReason::WatchError,
        ErrorReason::WatchFailed,
        ErrorReason::NoResourceVersion,
        ErrorReason::BadMagic,
        ErrorReason::TruncatedFrame,
        ErrorReason::FrameTooLarge,
        ErrorReason::UndecodableObject,
        ErrorReason::UnknownContentType,
    ];

    /// The attribute value for this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::ListFailed => "list_failed",
            ErrorReason::WatchStartFailed => "watch_start_failed",
            ErrorReason::WatchError => "watch_error",
            ErrorReason::WatchFailed => "watch_failed",
            ErrorReason::NoResourceVersion => "no_resource_version",
            ErrorReason::BadMagic => "bad_magic",
            ErrorReason::TruncatedFrame => "truncated_frame",
            ErrorReason::FrameTooLarge => "frame_too_large",
            ErrorReason::UndecodableObject => "undecodable_object",
            ErrorReason::UnknownContentType => "unknown_content_type",
        }
    }

    /// True for the reasons of bad data from the API, which a healthy
    /// cluster never has: served only once they have happened.
    pub fn is_bad_data(self) -> bool {
        matches!(
            self,
            ErrorReason::BadMagic
                | ErrorReason::TruncatedFrame
                | ErrorReason::FrameTooLarge
                | ErrorReason::UndecodableObject
                | ErrorReason::UnknownContentType
        )
    }
}

/// The API requests the watcher makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVerb {
    /// One page of a LIST.
    List,
    /// A WATCH request.
    Watch,
}

impl ApiVerb {
    /// Every verb, in a fixed order.
    pub const ALL: [ApiVerb; 2] = [ApiVerb::List, ApiVerb::Watch];

    /// The attribute value for this verb.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVerb::List => "list",
            ApiVerb::Watch => "watch",
        }
    }
}

/// Monotonic counters about the watch, read by self-telemetry.
#[derive(Debug, Default)]
pub struct WatchStats {
    events: [AtomicU64; EventKind::ALL.len()],
    errors: [AtomicU64; ErrorReason::ALL.len()],
    requests: [AtomicU64; ApiVerb::ALL.len()],
    restarts: AtomicU64,
}

impl WatchStats {
    /// Events seen of one kind.
    pub fn events(&self, kind: EventKind) -> u64 {
        self.events[kind as usize].load(Ordering::Relaxed)
    }

    /// Errors seen for one reason.
    pub fn errors(&self, reason: ErrorReason) -> u64 {
        self.errors[reason as usize].load(Ordering::Relaxed)
    }

    /// API requests sent with one verb (a LIST page counts once).
    pub fn requests(&self, verb: ApiVerb) -> u64 {
        self.requests[verb as usize].load(Ordering::Relaxed)
    }

    /// Completed relists after the first list (each is a full LIST: the expensive kind of restart).
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

/// The watch's state, shared between the watch task, probes and callbacks.
#[derive(Debug)]
pub struct Health {
    origin: Instant,
    synced: AtomicBool,
    running: AtomicBool,
    /// Milliseconds since `origin` plus one when the watch broke; 0 while it is current.
    broken_since: AtomicU64,
    /// Bumped on every change to the stored Nodes.
    generation: AtomicU64,
    /// Carries the generation to every loop that follows changes (a `Notify`
    /// would wake only one of them).
    changed: watch::Sender<u64>,
    stats: WatchStats,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A watch that has not started: not synced, not broken.
    pub fn new() -> Self {
        Health {
            origin: Instant::now(),
            synced: AtomicBool::new(false),
            running: AtomicBool::new(false),
            broken_since: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            changed: watch::Sender::new(0),
            stats: WatchStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &WatchStats {
        &self.stats
    }

    /// True once the first full LIST has been stored.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// True while the watch task is alive. A dead watcher must not look healthy.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// How long the view has been out of date: zero while the watch is
    /// connected and current, otherwise the time since it broke.
    pub fn age(&self, now: Instant) -> Duration {
        match self.broken_since.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            since => now.saturating_duration_since(self.origin + Duration::from_millis(since - 1)),
        }
    }

    /// Ready means synced, with a live watcher that has not been failing for longer than `stale_after`.
    pub fn is_ready(&self, now: Instant, stale_after: Duration) -> bool {
        self.is_synced() && self.is_running() && self.age(now) <= stale_after
    }

    /// A counter that changes whenever the stored Nodes may have changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Follows changes to the stored Nodes: the receiver's `changed()`
    /// resolves after each change (or burst of changes) since it last looked.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Moves the generation on for a change the node watch did not make (a
    /// heartbeat gone stale or back), so that whatever follows changes redoes it.
    pub(crate) fn touch(&self) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.changed.send_replace(generation);
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Release);
    }

    /// Records a successful event. Returns true if this ended a failure streak.
    pub(crate) fn on_event(&self, kind: EventKind) -> bool {
        self.stats.events[kind as usize].fetch_add(1, Ordering::Relaxed);
        match kind {
            // Init only announces an attempt to list, which may fail: it proves nothing.
            EventKind::Init => return false,
            // Every completed list after the first is a restart.
            EventKind::InitDone if self.synced.swap(true, Ordering::AcqRel) => {
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        // InitApply only fills the reflector's buffer (the store changes on
        // InitDone), and an unchanged object is not stored: the view is the
        // same, so nothing that follows it has anything to redo.
        if !matches!(kind, EventKind::InitApply | EventKind::Unchanged) {
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            self.changed.send_replace(generation);
        }
        // A (re)list under way is no proof the view is current: it is once
        // the list is stored, or a watch delivers.
        if matches!(kind, EventKind::Init | EventKind::InitApply) {
            return false;
        }
        self.mark_current()
    }

    /// Records a failed watch step. Returns true if this started a failure streak.
    pub(crate) fn on_error(&self, reason: ErrorReason, now: Instant) -> bool {
        self.stats.errors[reason as usize].fetch_add(1, Ordering::Relaxed);
        let since = now.saturating_duration_since(self.origin).as_millis() as u64 + 1;
        self.broken_since
            .compare_exchange(0, since, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records an API request, and a WATCH the API accepted as proof the view is current again.
    pub(crate) fn on_request(&self, verb: ApiVerb, accepted: bool) -> bool {
        self.stats.requests[verb as usize].fetch_add(1, Ordering::Relaxed);
        // A LIST that succeeds is not yet a current view: it is current once
        // stored (InitDone), or once a WATCH from a known resourceVersion is accepted.
        verb == ApiVerb::Watch && accepted && self.is_synced() && self.mark_current()
    }

    fn mark_current(&self) -> bool {
        self.broken_since.swap(0, Ordering::AcqRel) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_grows_while_broken_and_resets_on_recovery() {
        let h = Health::new();
        let t0 = Instant::now();
        assert_eq!(h.age(t0), Duration::ZERO);
        assert!(h.on_error(ErrorReason::WatchFailed, t0));
        assert!(
            !h.on_error(ErrorReason::WatchStartFailed, t0 + Duration::from_secs(5)),
            "one streak"
        );
        assert!(!h.on_event(EventKind::Init), "a list attempt is not a recovery");
        assert!(h.age(t0 + Duration::from_secs(30)) > Duration::ZERO);
        let age = h.age(t0 + Duration::from_secs(30));
        assert!(
            age >= Duration::from_secs(29) && age <= Duration::from_secs(31),
            "{age:?}"
        );
        // A watch accepted before the first sync says nothing about the view.
        assert!(!h.on_request(ApiVerb::Watch, true));
        assert!(h.on_event(EventKind::InitDone));
        assert_eq!(h.age(t0 + Duration::from_secs(60)), Duration::ZERO);
        assert!(h.on_error(ErrorReason::WatchFailed, t0));
        assert!(!h.on_request(ApiVerb::Watch, false));
        assert!(!h.on_request(ApiVerb::List, true));
        assert!(h.on_request(ApiVerb::Watch, true));
        assert_eq!(h.age(t0 + Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(h.stats().errors(ErrorReason::WatchFailed), 2);
        assert_eq!(h.stats().requests(ApiVerb::Watch), 3);
    }

    #[test]
    fn ready_needs_sync_a_running_watcher_and_freshness() {
        let h = Health::new();
        let now = Instant::now();
        let stale = Duration::from_secs(120);
        assert!(!h.is_ready(now, stale), "not synced");
        h.on_event(EventKind::Init);
        h.on_event(EventKind::InitDone);
        assert!(!h.is_ready(now, stale), "watcher not running");
        h.set_running(true);
        assert!(h.is_ready(now, stale));
        h.on_error(ErrorReason::WatchFailed, now);
        assert!(h.is_ready(now + Duration::from_secs(119), stale));
        assert!(!h.is_ready(now + Duration::from_secs(121), stale));
        h.set_running(false);
        h.on_event(EventKind::Apply);
        assert!(!h.is_ready(now, stale), "dead watcher");
    }

    #[test]
    fn restarts_count_relists_after_the_first() {
        let h = Health::new();
        h.on_event(EventKind::Init);
        h.on_error(ErrorReason::ListFailed, Instant::now());
        for _ in 0..3 {
            h.on_event(EventKind::Init);
            h.on_event(EventKind::InitDone);
        }
        assert_eq!(
            h.stats().restarts(),
            2,
            "failed attempts and the first list are not restarts"
        );
        assert_eq!(h.stats().events(EventKind::Init), 4);
        assert_eq!(h.generation(), 3);
    }
}

//! Kubelet heartbeats: what the view knows of each node's Lease in
//! `kube-node-lease`, which its kubelet renews every 10 s.
//!
//! A renewal is a message, not a change: it updates one entry and nothing
//! downstream hears of it. What downstream hears of is a node's heartbeat
//! going stale (no renewal seen for longer than its stale-after), coming
//! back, or its Lease appearing or going: the node is marked changed (its
//! shard is written again) and the view's generation moves. Staleness is
//! found by a deadline queue with at most one live entry per Lease (an
//! incarnation number retires the others), so finding it costs one look per
//! Lease per stale-after, not a walk of every Lease.
//!
//! Ages are counted on a monotonic clock from when this exporter saw
//! `renewTime` move forward, as the node lifecycle controller counts them, so
//! neither a kubelet's clock nor a step of this machine's matters. Only a
//! Lease first seen in a list (at start or in a relist) is aged from its
//! `renewTime`, so that a kubelet dead before the exporter started reads as
//! stale at once; one that arrives by the watch was just written.
//!
//! Silence is not staleness: a Lease is stale only if it went unrenewed for
//! its stale-after *as of the last Lease event delivered* (the watch is
//! ordered, so everything before that event was seen). A watch that goes
//! blind (a dropped connection not yet noticed, an API server out of reach)
//! makes nothing stale, where ageing by the wall clock alone would call every
//! node's kubelet dead. The price: a cluster whose every kubelet stops at once
//! looks like a blind watch, and shows nothing stale.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    sync::{
        Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::lease::NodeLease;

/// A node's heartbeat, as the view knows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Heartbeat {
    /// Renewed within its stale-after.
    Fresh,
    /// Not renewed for longer than its stale-after.
    Stale {
        /// The Lease's last `renewTime`, Unix seconds (with microseconds), as
        /// the kubelet wrote it; `None` if it has none.
        last_renewal: Option<f64>,
    },
    /// The node has no Lease (very old kubelets, virtual kubelets): never stale.
    Missing,
}

/// A node's heartbeat went stale or came back.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatChange {
    /// The node (and Lease) name.
    pub node: String,
    /// True: it came back; false: it went stale.
    pub resumed: bool,
    /// The Lease's last `renewTime`, when it has one.
    pub last_renewal: Option<SystemTime>,
    /// How long no renewal had been seen when this was found (0 when it came back).
    pub age: Duration,
}

/// A moment on both clocks: the wall clock (to read `renewTime` against) and a
/// monotonic one (to age renewals by).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Unix microseconds.
    pub wall_us: i64,
    /// Microseconds on a monotonic clock.
    pub mono_us: i64,
}

impl Now {
    /// Now.
    pub fn current() -> Now {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        Now {
            wall_us: unix_us(SystemTime::now()),
            mono_us: origin.elapsed().as_micros() as i64,
        }
    }
}

/// `renewTime` absent: older than any.
const NEVER: i64 = i64::MIN;

/// One Lease as kept: its `renewTime` and when it was seen to move.
#[derive(Clone, Copy, Debug)]
struct Renewal {
    /// `renewTime`, Unix microseconds ([`NEVER`]: none).
    renew_us: i64,
    /// When this exporter saw `renewTime` move forward (monotonic µs).
    seen_us: i64,
    /// How long without a renewal is stale, for this Lease.
    stale_after_us: i64,
    stale: bool,
    /// The incarnation of its live deadline entry; 0: none queued.
    queued: u64,
    /// Seen fresh at least once: only such a Lease going stale is a change to
    /// report (one already stale when first seen is a state, as a node's
    /// conditions at the first list are).
    seen_fresh: bool,
    /// Its loss was reported: only then is its return.
    reported: bool,
}

#[derive(Default)]
struct Inner {
    /// foldhash: a renewal is a lookup, 1,000 a second at 10,000 nodes, and names are not attacker-chosen.
    leases: HashMap<Box<str>, Renewal, foldhash::fast::RandomState>,
    /// (deadline, incarnation, name): when a fresh Lease would go stale unless renewed.
    deadlines: BinaryHeap<Reverse<(i64, u64, Box<str>)>>,
    incarnations: u64,
    /// The monotonic time of the last Lease event delivered: what is known to be seen.
    current_us: i64,
    /// Names listed by a (re)list under way: the ones not in it are gone at its end.
    listing: Option<HashSet<Box<str>, foldhash::fast::RandomState>>,
}

impl Inner {
    /// Queues `name`'s deadline anew, retiring any entry it had.
    fn queue(&mut self, name: &str) {
        self.incarnations += 1;
        let incarnation = self.incarnations;
        if let Some(r) = self.leases.get_mut(name) {
            r.queued = incarnation;
            let deadline = r.seen_us.saturating_add(r.stale_after_us);
            self.deadlines.push(Reverse((deadline, incarnation, name.into())));
        }
    }
}

/// What the Lease watch has seen go wrong, for self-telemetry and logs.
#[derive(Debug, Default)]
pub struct LeaseWatchStats {
    /// Failed LISTs, WATCHes and watch streams.
    pub errors: AtomicU64,
    /// True while the last attempt failed.
    pub failing: AtomicBool,
    /// Heartbeats found stale.
    pub lost: AtomicU64,
    /// Heartbeats back after being stale.
    pub resumed: AtomicU64,
}

/// The node Leases, and each node's heartbeat.
pub struct Heartbeats {
    /// What the Lease watch has seen.
    pub stats: LeaseWatchStats,
    inner: Mutex<Inner>,
    /// Off: no Lease is watched, and no node has a heartbeat reading.
    enabled: bool,
    synced: AtomicBool,
    /// `--heartbeat-stale-after`; `None`: three renew intervals of each
    /// Lease (a kubelet renews every quarter of `leaseDurationSeconds`).
    stale_after: Option<Duration>,
}

/// What applying one Lease event did: the nodes whose heartbeat reading
/// changed, and the changes to report.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// Nodes whose reading changed (fresh, stale, missing).
    pub changed: Vec<String>,
    /// Heartbeats lost or resumed.
    pub reports: Vec<HeartbeatChange>,
}

fn unix_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

fn system_time(us: i64) -> Option<SystemTime> {
    (us != NEVER).then(|| match u64::try_from(us) {
        Ok(us) => UNIX_EPOCH + Duration::from_micros(us),
        Err(_) => UNIX_EPOCH - Duration::from_micros(us.unsigned_abs()),
    })
}

/// What a Lease gives: its name, `renewTime` (µs, [`NEVER`] without one) and `leaseDurationSeconds`.
fn slim(lease: &NodeLease) -> Option<(&str, i64, Option<i32>)> {
    Some((
        lease.name.as_deref()?,
        lease.renew_us.unwrap_or(NEVER),
        lease.duration_s,
    ))
}

impl Heartbeats {
    /// Heartbeats off: every node's reading is absent.
    pub fn off() -> Heartbeats {
        Heartbeats {
            stats: LeaseWatchStats::default(),
            inner: Mutex::default(),
            enabled: false,
            synced: AtomicBool::new(false),
            stale_after: None,
        }
    }

    /// Heartbeats from the node Leases, stale after `stale_after` without a
    /// renewal (`None`: three renew intervals of each Lease).
    pub fn new(stale_after: Option<Duration>) -> Heartbeats {
        Heartbeats {
            enabled: true,
            stale_after,
            ..Heartbeats::off()
        }
    }

    /// True when node Leases are watched.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// True once the first LIST of the Leases is stored.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Node `name`'s heartbeat: `None` while Leases are off or not yet listed.
    pub fn of(&self, name: &str) -> Option<Heartbeat> {
        if !self.enabled || !self.is_synced() {
            return None;
        }
        Some(match self.lock().leases.get(name) {
            None => Heartbeat::Missing,
            Some(r) if r.stale => Heartbeat::Stale {
                last_renewal: (r.renew_us != NEVER).then(|| r.renew_us as f64 / 1e6),
            },
            Some(_) => Heartbeat::Fresh,
        })
    }

    fn stale_after_us(&self, duration_s: Option<i32>) -> i64 {
        match self.stale_after {
            Some(d) => d.as_micros() as i64,
            // Three of the kubelet's renewals (every quarter of the duration); 40 s → 30 s.
            None => i64::from(duration_s.filter(|d| *d > 0).unwrap_or(40)) * 750_000,
        }
    }

    /// A Lease added or updated, delivered at `now`. `listed`: it came in a (re)list.
    pub fn apply(&self, lease: &NodeLease, listed: bool, now: Now) -> Applied {
        let Some((name, renew_us, duration)) = slim(lease) else {
            return Applied::default();
        };
        let stale_after_us = self.stale_after_us(duration);
        let mut inner = self.lock();
        inner.current_us = inner.current_us.max(now.mono_us);
        if listed && let Some(listing) = inner.listing.as_mut() {
            listing.insert(name.into());
        }
        let mut applied = Applied::default();
        let requeue = match inner.leases.get_mut(name) {
            Some(r) => {
                let longer = std::mem::replace(&mut r.stale_after_us, stale_after_us) != stale_after_us;
                // Forward only, as the node lifecycle controller counts a
                // renewal: a renewTime that goes back is a kubelet's clock.
                if renew_us > r.renew_us {
                    r.renew_us = renew_us;
                    r.seen_us = now.mono_us;
                    r.seen_fresh = true;
                    if std::mem::replace(&mut r.stale, false) {
                        applied.changed.push(name.to_string());
                        if std::mem::replace(&mut r.reported, false) {
                            applied.reports.push(HeartbeatChange {
                                node: name.to_string(),
                                resumed: true,
                                last_renewal: system_time(renew_us),
                                age: Duration::ZERO,
                            });
                        }
                    }
                }
                // A fresh Lease has a live deadline; a new duration moves it.
                !r.stale && (r.queued == 0 || longer)
            }
            None => {
                // Listed: aged from its renewTime (not from the future), so a
                // kubelet dead before this exporter listed it is stale at once.
                // Delivered by the watch: it was just written.
                let seen_us = match (listed, renew_us) {
                    (_, NEVER) => i64::MIN / 4,
                    (true, _) => now.mono_us - now.wall_us.saturating_sub(renew_us).max(0),
                    (false, _) => now.mono_us,
                };
                inner.leases.insert(
                    name.into(),
                    Renewal {
                        renew_us,
                        seen_us,
                        stale_after_us,
                        stale: false,
                        queued: 0,
                        seen_fresh: seen_us.saturating_add(stale_after_us) > now.mono_us,
                        reported: false,
                    },
                );
                applied.changed.push(name.to_string());
                true
            }
        };
        if requeue {
            inner.queue(name);
        }
        applied
    }

    /// A Lease deleted at `now`: its node (if any) has none now.
    pub fn delete(&self, name: &str, now: Now) -> Applied {
        let mut inner = self.lock();
        inner.current_us = inner.current_us.max(now.mono_us);
        match inner.leases.remove(name) {
            Some(_) => Applied {
                changed: vec![name.to_string()],
                reports: Vec::new(),
            },
            None => Applied::default(),
        }
    }

    /// A (re)list starts: the Leases it does not list are gone at its end,
    /// and none goes stale until it is done (one not yet relisted would).
    pub fn list_started(&self) {
        self.lock().listing = Some(HashSet::default());
    }

    /// A (re)list ended at `now`: Leases it did not list are deleted.
    pub fn list_done(&self, now: Now) -> Applied {
        let mut inner = self.lock();
        inner.current_us = inner.current_us.max(now.mono_us);
        let mut applied = Applied::default();
        if let Some(listed) = inner.listing.take() {
            let gone: Vec<Box<str>> = inner
                .leases
                .keys()
                .filter(|n| !listed.contains(*n))
                .cloned()
                .collect();
            for name in gone {
                inner.leases.remove(&name);
                applied.changed.push(name.into());
            }
        }
        drop(inner);
        if !self.synced.swap(true, Ordering::AcqRel) {
            // Every node's reading appears with the first list.
            applied.changed.clear();
        }
        applied
    }

    /// Finds the Leases that went stale as of the last event delivered (at
    /// most `now`): their nodes changed. Nothing while a (re)list is under way.
    pub fn expire(&self, now: Now) -> Applied {
        let mut inner = self.lock();
        let mut applied = Applied::default();
        if inner.listing.is_some() {
            return applied;
        }
        let known_us = inner.current_us.min(now.mono_us);
        while let Some(Reverse((deadline, _, _))) = inner.deadlines.peek()
            && *deadline <= known_us
        {
            let Some(Reverse((_, incarnation, name))) = inner.deadlines.pop() else {
                break;
            };
            let Some(r) = inner.leases.get_mut(&name) else {
                continue;
            };
            if r.queued != incarnation {
                // Retired: the Lease was re-created, or its deadline moved.
                continue;
            }
            r.queued = 0;
            if r.seen_us.saturating_add(r.stale_after_us) > known_us {
                // Renewed since it was queued: wait for the new deadline.
                inner.queue(&name);
                continue;
            }
            r.stale = true;
            if r.seen_fresh {
                r.reported = true;
                applied.reports.push(HeartbeatChange {
                    node: name.to_string(),
                    resumed: false,
                    last_renewal: system_time(r.renew_us),
                    age: Duration::from_micros(known_us.saturating_sub(r.seen_us).max(0) as u64),
                });
            }
            applied.changed.push(name.into());
        }
        applied
    }

    /// Counts of Leases by state, for tests and logs: (fresh, stale).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        let stale = inner.leases.values().filter(|r| r.stale).count();
        (inner.leases.len() - stale, stale)
    }

    /// Deadline entries queued, live or retired: bounded by the Leases.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().deadlines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    const BASE: i64 = 1_800_000_000;

    /// `s` seconds in, on both clocks.
    fn at(s: i64) -> Now {
        Now {
            wall_us: (BASE + s) * 1_000_000,
            mono_us: s * 1_000_000,
        }
    }

    fn lease_with(name: &str, renewed: Option<i64>, duration: i32) -> NodeLease {
        NodeLease::new(
            Some(name.into()),
            Some("1".into()),
            Some(name.into()),
            renewed.map(|r| (BASE + r) * 1_000_000),
            Some(duration),
        )
    }

    /// A kubelet's Lease renewed `renewed` seconds in, 40 s long: stale after 30 s.
    fn lease(name: &str, renewed: i64) -> NodeLease {
        lease_with(name, Some(renewed), 40)
    }

    fn synced(h: &Heartbeats, leases: &[NodeLease], now: Now) {
        h.list_started();
        for l in leases {
            h.apply(l, true, now);
        }
        h.list_done(now);
    }

    /// Another kubelet renews at `s`: the watch is known to be current up to then.
    fn other(h: &Heartbeats, s: i64) {
        assert_eq!(h.apply(&lease("other", s), false, at(s)), Applied::default());
    }

    fn names(a: &Applied) -> Vec<&str> {
        a.changed.iter().map(String::as_str).collect()
    }

    /// The upstream API machinery's Lease, every field set, in each version:
    /// what is kept is its name, its renewTime to the microsecond and its duration.
    #[test]
    fn the_upstream_lease_keeps_its_name_renewal_and_duration() {
        for version in ["HEAD", "v1.33.0", "v1.34.0", "v1.35.0", "v1.36.0"] {
            let path = format!(
                "{}/tests/k8s-api-testdata/{version}/coordination.k8s.io.v1.Lease.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let lease: NodeLease = serde_json::from_slice(&bytes).expect("a Lease");
            let renewed = "2004-01-01T01:01:01.000004Z"
                .parse::<Timestamp>()
                .expect("a time")
                .as_microsecond();
            assert_eq!(slim(&lease), Some(("nameValue", renewed, Some(2))), "{version}");
            // Listed, renewed in 2004: stale at once, no loss reported (a state, not a change).
            let h = Heartbeats::new(None);
            synced(&h, &[lease], Now::current());
            let found = h.expire(Now::current());
            assert_eq!(
                (names(&found), found.reports.len()),
                (vec!["nameValue"], 0),
                "{version}"
            );
            assert_eq!(
                h.of("nameValue"),
                Some(Heartbeat::Stale {
                    last_renewal: Some(renewed as f64 / 1e6)
                }),
                "{version}"
            );
        }
    }

    #[test]
    fn nothing_before_the_first_list_and_missing_without_a_lease() {
        let h = Heartbeats::new(None);
        assert_eq!(h.of("a"), None);
        synced(&h, &[lease("a", 0)], at(1));
        assert_eq!(h.of("a"), Some(Heartbeat::Fresh));
        assert_eq!(h.of("b"), Some(Heartbeat::Missing));
        assert_eq!(Heartbeats::off().of("a"), None);
    }

    #[test]
    fn renewals_change_nothing_and_silence_goes_stale_once() {
        let h = Heartbeats::new(None);
        synced(&h, &[lease("a", 0), lease("other", 0)], at(0));
        // Renewed every 10 s: 30 s (three renewals of a 40 s Lease) never passes.
        for s in (10..=120).step_by(10) {
            assert_eq!(h.apply(&lease("a", s), false, at(s)), Applied::default(), "{s}");
            other(&h, s);
            assert_eq!(h.expire(at(s + 5)), Applied::default(), "{s}");
        }
        other(&h, 149);
        assert_eq!(h.expire(at(149)), Applied::default());
        other(&h, 151);
        let lost = h.expire(at(151));
        assert_eq!(names(&lost), ["a"]);
        assert_eq!(lost.reports[0].age, Duration::from_secs(31));
        assert!(!lost.reports[0].resumed);
        assert_eq!(
            h.of("a"),
            Some(Heartbeat::Stale {
                last_renewal: Some((BASE + 120) as f64)
            })
        );
        other(&h, 500);
        assert_eq!(h.expire(at(500)), Applied::default(), "stale once");
        let back = h.apply(&lease("a", 501), false, at(501));
        assert_eq!(names(&back), ["a"]);
        assert!(back.reports[0].resumed);
        assert_eq!(h.of("a"), Some(Heartbeat::Fresh));
        other(&h, 532);
        assert_eq!(names(&h.expire(at(532))), ["a"], "and can go stale again");
    }

    #[test]
    fn renewals_are_aged_by_this_exporters_clock_except_at_first_sight() {
        let h = Heartbeats::new(Some(Duration::from_secs(30)));
        // Dead for 100 s before the exporter listed it: stale at once, and no
        // loss to report. A kubelet clock 900 s ahead: aged from now.
        synced(
            &h,
            &[lease("dead", 0), lease("ahead", 1000), lease("other", 100)],
            at(100),
        );
        let found = h.expire(at(100));
        assert_eq!((names(&found), found.reports.len()), (vec!["dead"], 0));
        other(&h, 129);
        assert_eq!(h.expire(at(129)), Applied::default());
        other(&h, 131);
        let lost = h.expire(at(131));
        assert_eq!((names(&lost), lost.reports.len()), (vec!["ahead"], 1));
        // A Lease the watch delivers was just written, whatever its kubelet's clock says.
        let behind = h.apply(&lease("behind", 0), false, at(140));
        assert_eq!(names(&behind), ["behind"]);
        other(&h, 160);
        assert_eq!(h.expire(at(160)), Applied::default());
        // This machine's wall clock steps 1,000 s forward: ages do not.
        let stepped = Now {
            wall_us: at(1165).wall_us,
            mono_us: at(165).mono_us,
        };
        h.apply(&lease("other", 165), false, stepped);
        assert_eq!(h.expire(stepped), Applied::default());
    }

    /// Silence is not staleness: with no event delivered (a blind watch),
    /// nothing goes stale; the relist that ends it tells who renewed meanwhile.
    #[test]
    fn a_blind_watch_makes_nothing_stale_and_its_relist_tells_the_truth() {
        let h = Heartbeats::new(None);
        synced(&h, &[lease("a", 0), lease("b", 0)], at(0));
        assert_eq!(h.expire(at(1000)), Applied::default());
        h.list_started();
        h.apply(&lease("a", 990), true, at(1000));
        assert_eq!(h.expire(at(1000)), Applied::default(), "nothing stale mid-list");
        h.apply(&lease("b", 0), true, at(1000));
        h.list_done(at(1000));
        let found = h.expire(at(1000));
        assert_eq!(
            names(&found),
            ["b"],
            "b renewed nothing while the watch was blind"
        );
        assert_eq!(found.reports.len(), 1, "it was seen fresh before");
        assert_eq!(h.of("a"), Some(Heartbeat::Fresh));
    }

    #[test]
    fn a_relist_deletes_what_it_does_not_list() {
        let h = Heartbeats::new(None);
        synced(&h, &[lease("a", 0), lease("b", 0)], at(0));
        h.list_started();
        h.apply(&lease("a", 0), true, at(5));
        assert_eq!(names(&h.list_done(at(5))), ["b"]);
        assert_eq!(h.of("b"), Some(Heartbeat::Missing));
        assert_eq!(names(&h.delete("a", at(6))), ["a"]);
        assert_eq!(h.delete("a", at(6)), Applied::default());
    }

    #[test]
    fn a_lease_recreated_again_and_again_keeps_one_deadline() {
        let h = Heartbeats::new(None);
        synced(&h, &[lease("other", 0)], at(0));
        for round in 1..=50 {
            h.apply(&lease("x", round), false, at(round));
            h.delete("x", at(round));
        }
        h.apply(&lease("x", 51), false, at(51));
        other(&h, 60);
        assert_eq!(h.expire(at(60)), Applied::default());
        // Retired entries leave at their own deadline, never queued again.
        other(&h, 82);
        assert_eq!(names(&h.expire(at(82))), ["x"], "the live one still counts");
        assert!(h.queued() <= 1, "{} deadlines left", h.queued());
    }

    #[test]
    fn a_shorter_lease_moves_its_deadline_and_a_clock_going_back_is_no_renewal() {
        let h = Heartbeats::new(None);
        // 400 s: stale after 300 s; then 40 s, renewed at the same time: after 30.
        synced(&h, &[lease_with("x", Some(0), 400), lease("other", 0)], at(0));
        h.apply(&lease_with("x", Some(0), 40), false, at(1));
        other(&h, 31);
        assert_eq!(names(&h.expire(at(31))), ["x"]);
        // A renewTime that goes back renews nothing.
        synced(&h, &[lease("y", 100), lease("other", 100)], at(100));
        h.apply(&lease("y", 50), false, at(120));
        other(&h, 131);
        assert_eq!(names(&h.expire(at(131))), ["y"]);
    }

    #[test]
    fn a_lease_without_a_renewal_is_stale_with_none_to_show() {
        let h = Heartbeats::new(None);
        synced(&h, &[lease_with("n", None, 40)], at(0));
        let found = h.expire(at(0));
        assert_eq!((names(&found), found.reports.len()), (vec!["n"], 0));
        assert_eq!(h.of("n"), Some(Heartbeat::Stale { last_renewal: None }));
    }
}

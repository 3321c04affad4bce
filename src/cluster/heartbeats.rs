//! Kubelet heartbeats: what the view knows of each node's Lease in
//! `kube-node-lease`, which its kubelet renews every 10 s.
//!
//! A renewal is a message, not a change: it updates one entry and nothing
//! downstream hears of it. What downstream hears of is a node's heartbeat
//! going stale (no renewal seen for longer than its stale-after), coming
//! back, or its Lease appearing or going: the node is marked changed (its
//! shard is written again) and the view's generation moves. Staleness is
//! found by a deadline queue with at most one entry per Lease, so finding it
//! costs one look per Lease per stale-after, not a walk of every Lease.
//!
//! A renewal's age is counted from when this exporter saw `renewTime`
//! change, as the node lifecycle controller counts it, so a kubelet's clock
//! does not matter; only a Lease seen for the first time (at start or in a
//! relist) is aged from its `renewTime`, so that a kubelet dead before the
//! exporter started reads as stale at once.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::coordination::v1::Lease;

/// A node's heartbeat, as the view knows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Heartbeat {
    /// Renewed within its stale-after.
    Fresh,
    /// Not renewed for longer than its stale-after; the last `renewTime`, in Unix seconds.
    Stale {
        /// The Lease's last `renewTime`, Unix seconds (with microseconds).
        last_renewal: f64,
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

/// One Lease as kept: its `renewTime` and when a change of it was seen.
#[derive(Clone, Copy, Debug)]
struct Renewal {
    /// `renewTime`, Unix microseconds (`i64::MIN`: none).
    renew_us: i64,
    /// When this exporter saw `renewTime` change (Unix microseconds).
    seen_us: i64,
    /// How long without a renewal is stale, for this Lease.
    stale_after_us: i64,
    stale: bool,
    /// True while the deadline queue holds an entry for it.
    queued: bool,
}

#[derive(Default)]
struct Inner {
    leases: HashMap<Box<str>, Renewal>,
    /// (deadline, name): when each fresh Lease would go stale unless renewed.
    deadlines: BinaryHeap<Reverse<(i64, Box<str>)>>,
    /// Names listed by a (re)list under way: the ones not in it are gone at its end.
    listing: Option<HashSet<Box<str>>>,
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
    (us != i64::MIN).then(|| match u64::try_from(us) {
        Ok(us) => UNIX_EPOCH + Duration::from_micros(us),
        Err(_) => UNIX_EPOCH - Duration::from_micros(us.unsigned_abs()),
    })
}

/// What is kept of a Lease: its name, `renewTime` (µs) and `leaseDurationSeconds`.
pub fn slim(lease: &Lease) -> Option<(&str, i64, Option<i32>)> {
    let name = lease.metadata.name.as_deref()?;
    let spec = lease.spec.as_ref();
    let renew = spec
        .and_then(|s| s.renew_time.as_ref())
        .map_or(i64::MIN, |t| t.0.as_microsecond());
    Some((name, renew, spec.and_then(|s| s.lease_duration_seconds)))
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
            stats: LeaseWatchStats::default(),
            inner: Mutex::default(),
            enabled: true,
            synced: AtomicBool::new(false),
            stale_after,
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
                last_renewal: if r.renew_us == i64::MIN {
                    0.0
                } else {
                    r.renew_us as f64 / 1e6
                },
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

    /// A Lease added or updated, seen at `now`. `listed`: it came in a (re)list.
    pub fn apply(&self, lease: &Lease, listed: bool, now: SystemTime) -> Applied {
        let Some((name, renew_us, duration)) = slim(lease) else {
            return Applied::default();
        };
        let now_us = unix_us(now);
        let stale_after_us = self.stale_after_us(duration);
        let mut inner = self.lock();
        if listed && let Some(listing) = inner.listing.as_mut() {
            listing.insert(name.into());
        }
        let mut applied = Applied::default();
        let renewal = match inner.leases.get_mut(name) {
            Some(r) => {
                r.stale_after_us = stale_after_us;
                if r.renew_us != renew_us {
                    r.renew_us = renew_us;
                    r.seen_us = now_us;
                    if r.stale {
                        r.stale = false;
                        applied.changed.push(name.to_string());
                        applied.reports.push(HeartbeatChange {
                            node: name.to_string(),
                            resumed: true,
                            last_renewal: system_time(renew_us),
                            age: Duration::ZERO,
                        });
                    }
                }
                *r
            }
            None => {
                // First sight: aged from renewTime (not from the future), so a
                // kubelet dead before this exporter started is stale at once.
                let seen_us = if renew_us == i64::MIN {
                    i64::MIN / 2
                } else {
                    renew_us.min(now_us)
                };
                let r = Renewal {
                    renew_us,
                    seen_us,
                    stale_after_us,
                    stale: false,
                    queued: false,
                };
                inner.leases.insert(name.into(), r);
                applied.changed.push(name.to_string());
                r
            }
        };
        if !renewal.stale && !renewal.queued {
            let deadline = renewal.seen_us.saturating_add(renewal.stale_after_us);
            inner.deadlines.push(Reverse((deadline, name.into())));
            if let Some(r) = inner.leases.get_mut(name) {
                r.queued = true;
            }
        }
        applied
    }

    /// A Lease deleted: its node (if any) has none now.
    pub fn delete(&self, name: &str) -> Applied {
        let mut inner = self.lock();
        match inner.leases.remove(name) {
            Some(_) => Applied {
                changed: vec![name.to_string()],
                reports: Vec::new(),
            },
            None => Applied::default(),
        }
    }

    /// A (re)list starts: the Leases it does not list are gone at its end.
    pub fn list_started(&self) {
        self.lock().listing = Some(HashSet::new());
    }

    /// A (re)list ended: Leases it did not list are deleted.
    pub fn list_done(&self) -> Applied {
        let mut inner = self.lock();
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

    /// Finds the Leases that went stale by `now`: their nodes changed.
    pub fn expire(&self, now: SystemTime) -> Applied {
        let now_us = unix_us(now);
        let mut inner = self.lock();
        let mut applied = Applied::default();
        while let Some(Reverse((deadline, _))) = inner.deadlines.peek()
            && *deadline <= now_us
        {
            let Some(Reverse((_, name))) = inner.deadlines.pop() else {
                break;
            };
            let Some(r) = inner.leases.get_mut(&name) else {
                continue;
            };
            r.queued = false;
            let due = r.seen_us.saturating_add(r.stale_after_us);
            if due > now_us {
                // Renewed since it was queued: wait for the new deadline.
                r.queued = true;
                inner.deadlines.push(Reverse((due, name)));
                continue;
            }
            if !r.stale {
                r.stale = true;
                applied.reports.push(HeartbeatChange {
                    node: name.to_string(),
                    resumed: false,
                    last_renewal: system_time(r.renew_us),
                    age: Duration::from_micros(now_us.saturating_sub(r.seen_us).max(0) as u64),
                });
                applied.changed.push(name.into());
            }
        }
        applied
    }

    /// Counts of Leases by state, for tests and logs: (fresh, stale).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        let stale = inner.leases.values().filter(|r| r.stale).count();
        (inner.leases.len() - stale, stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
    };

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn lease(name: &str, renewed: u64) -> Lease {
        let t = Timestamp::from_second(1_800_000_000 + renewed as i64).expect("in range");
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.into()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(t)),
                ..Default::default()
            }),
        }
    }

    fn synced(h: &Heartbeats, leases: &[Lease], now: SystemTime) {
        h.list_started();
        for l in leases {
            h.apply(l, true, now);
        }
        h.list_done();
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
        synced(&h, &[lease("a", 0)], at(0));
        // Renewed every 10 s: 30 s (three renewals of a 40 s Lease) never passes.
        for s in (10..=120).step_by(10) {
            assert_eq!(h.apply(&lease("a", s), false, at(s)), Applied::default(), "{s}");
            assert_eq!(h.expire(at(s + 5)), Applied::default(), "{s}");
        }
        assert_eq!(h.expire(at(149)), Applied::default());
        let lost = h.expire(at(151));
        assert_eq!(lost.changed, ["a"]);
        assert_eq!(lost.reports[0].age, Duration::from_secs(31));
        assert!(!lost.reports[0].resumed);
        assert_eq!(
            h.of("a"),
            Some(Heartbeat::Stale {
                last_renewal: 1_800_000_120.0
            })
        );
        assert_eq!(h.expire(at(500)), Applied::default(), "stale once");
        let back = h.apply(&lease("a", 501), false, at(501));
        assert_eq!(back.changed, ["a"]);
        assert!(back.reports[0].resumed);
        assert_eq!(h.of("a"), Some(Heartbeat::Fresh));
        assert_eq!(h.expire(at(531)).changed, ["a"], "and can go stale again");
    }

    #[test]
    fn renewals_are_aged_by_this_exporters_clock_except_at_first_sight() {
        let h = Heartbeats::new(Some(Duration::from_secs(30)));
        // Dead for 100 s before the exporter started: stale at the first look.
        synced(&h, &[lease("dead", 0), lease("ahead", 1000)], at(100));
        assert_eq!(h.expire(at(100)).changed, ["dead"]);
        // A kubelet clock 900 s ahead: aged from when its renewal was seen.
        assert_eq!(h.of("ahead"), Some(Heartbeat::Fresh));
        assert_eq!(h.expire(at(129)), Applied::default());
        assert_eq!(h.expire(at(131)).changed, ["ahead"]);
    }

    #[test]
    fn a_relist_deletes_what_it_does_not_list() {
        let h = Heartbeats::new(None);
        synced(&h, &[lease("a", 0), lease("b", 0)], at(0));
        h.list_started();
        h.apply(&lease("a", 0), true, at(5));
        assert_eq!(h.list_done().changed, ["b"]);
        assert_eq!(h.of("b"), Some(Heartbeat::Missing));
        assert_eq!(h.delete("a").changed, ["a"]);
        assert_eq!(h.delete("a"), Applied::default());
    }
}

//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one exports node readings while the others stay warm.
//!
//! The algorithm is client-go's: read the Lease, take it when it is free or
//! expired, renew it while held, and write only on the `resourceVersion`
//! read, so that of two replicas racing for it the API server lets one win
//! (409 Conflict for the other). It is written on kube's `Api` rather than
//! with `kube-lease-manager` because that crate keeps reporting "leader"
//! while its renewals fail (a leader cut off from the API would go on
//! exporting after another replica took over), and its lock relies on
//! server-side apply conflicts instead of `resourceVersion`.
//!
//! Safety does not rest on noticing a failure in time: [`Leadership`] holds
//! a deadline, two thirds of the lease duration after the last renewal began,
//! and is not leader past it even if the elector never runs again (a process
//! paused, a renewal hung). Others take the Lease only a full lease duration
//! after the last renewal, so the last third is the room left for clock skew.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

/// Where the Lease is and how long a holder keeps it without renewing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The Lease's name.
    pub name: String,
    /// Its namespace; `None` means the client's default namespace (the
    /// service account's in a pod, the kubeconfig context's outside).
    pub namespace: Option<String>,
    /// How long a holder keeps the Lease after its last renewal.
    pub duration: Duration,
    /// This replica's name in the Lease (`holderIdentity`).
    pub identity: String,
}

impl LeaseSettings {
    /// After this long without a successful renewal a leader stops exporting.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How often the Lease is read (and renewed, while held).
    pub fn retry_period(&self) -> Duration {
        (self.duration / 7).max(Duration::from_millis(200))
    }
}

/// Whether this replica may export node readings now. Clones share the state.
#[derive(Clone, Debug)]
pub struct Leadership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    elected: bool,
    base: Instant,
    /// Milliseconds after `base` until which this replica leads; 0: it does not.
    until: AtomicU64,
    changes: watch::Sender<bool>,
}

impl Leadership {
    /// No election: the only replica always leads.
    pub fn sole() -> Leadership {
        Self::with(false)
    }

    /// Elected through a Lease: not leader until [`Elector`] says so.
    pub fn elected() -> Leadership {
        Self::with(true)
    }

    fn with(elected: bool) -> Leadership {
        Leadership {
            inner: Arc::new(Inner {
                elected,
                base: Instant::now(),
                until: AtomicU64::new(0),
                changes: watch::channel(!elected).0,
            }),
        }
    }

    /// True when leader election is on.
    pub fn is_elected(&self) -> bool {
        self.inner.elected
    }

    /// True when this replica may export node readings: always without an
    /// election, else until the deadline its last renewal set.
    pub fn is_leader(&self) -> bool {
        if !self.inner.elected {
            return true;
        }
        let until = self.inner.until.load(Ordering::Acquire);
        until != 0 && (self.inner.base.elapsed().as_millis() as u64) < until
    }

    /// Follows leadership as the elector sees it: true when gained, false
    /// when lost or released. (A deadline passing unseen shows in
    /// [`Leadership::is_leader`] at once, and here at the next attempt.)
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.changes.subscribe()
    }

    /// What the elector last said: true from gaining leadership until stepping down.
    fn announced(&self) -> bool {
        *self.inner.changes.borrow()
    }

    fn hold_until(&self, deadline: Instant) {
        // A renewal that lands after the last deadline passed starts a new
        // leadership even if the elector never said it had ended: meanwhile
        // nothing was exported or recorded, and what follows leadership
        // (the render of the cluster readings, the replay of condition
        // changes) must hear of it, not see an unchanged `true`.
        let lapsed = !self.is_leader();
        let ms = deadline.saturating_duration_since(self.inner.base).as_millis() as u64;
        self.inner.until.store(ms.max(1), Ordering::Release);
        if lapsed {
            self.inner.changes.send_replace(true);
        }
    }

    /// Leads for an hour, or stops leading: for tests of what depends on the role.
    #[cfg(test)]
    pub fn set_leader_for_tests(&self, leading: bool) {
        if leading {
            self.hold_until(Instant::now() + Duration::from_secs(3600));
        } else {
            self.step_down();
        }
    }

    fn step_down(&self) {
        self.inner.until.store(0, Ordering::Release);
        self.inner
            .changes
            .send_if_modified(|v| std::mem::replace(v, false));
    }
}

/// What a Lease says, as far as the election cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Who holds it; `None` or empty when free.
    pub holder: Option<String>,
    /// When the holder last renewed it.
    pub renewed: Option<SystemTime>,
    /// How long after `renewed` it stays held.
    pub duration: Option<Duration>,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.as_ref();
        Record {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renewed: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| SystemTime::from(t.0)),
            duration: spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
        }
    }
}

/// What to do with a Lease read at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Take,
    /// Another replica holds it for this much longer.
    Follow {
        /// The holder.
        holder: String,
        /// Until the Lease expires unless renewed.
        expires_in: Duration,
    },
}

/// Decides what `me` does with `record` at `now`. A Lease without a renewal
/// time or duration counts as expired, as client-go counts it.
pub fn decide(record: &Record, me: &str, now: SystemTime) -> Action {
    let Some(holder) = record.holder.as_deref() else {
        return Action::Take;
    };
    if holder == me {
        return Action::Renew;
    }
    let expiry = match (record.renewed, record.duration) {
        (Some(renewed), Some(duration)) => renewed.checked_add(duration),
        _ => None,
    };
    match expiry.and_then(|e| e.duration_since(now).ok()) {
        Some(left) if !left.is_zero() => Action::Follow {
            holder: holder.to_string(),
            expires_in: left,
        },
        _ => Action::Take,
    }
}

/// The spec `me` writes to take or renew a Lease whose spec was `old`.
fn claimed(old: Option<&LeaseSpec>, me: &str, settings: &LeaseSettings, now: Timestamp) -> LeaseSpec {
    let old = old.cloned().unwrap_or_default();
    let renewing = old.holder_identity.as_deref() == Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(settings.duration.as_secs().max(1) as i32),
        renew_time: Some(MicroTime(now)),
        acquire_time: if renewing {
            old.acquire_time
        } else {
            Some(MicroTime(now))
        },
        lease_transitions: if renewing {
            old.lease_transitions
        } else {
            Some(old.lease_transitions.unwrap_or(0) + 1)
        },
        ..old
    }
}

/// Runs the election in the background; [`Elector::release`] ends it.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    leadership: Leadership,
}

impl Elector {
    /// Starts electing with `client` (its default namespace unless the
    /// settings name one). `leadership` must come from [`Leadership::elected`].
    /// The task that elects is returned for the caller to watch: it runs
    /// until [`Elector::release`] is given it back.
    pub fn spawn(
        client: Client,
        settings: LeaseSettings,
        leadership: Leadership,
    ) -> (Elector, JoinHandle<()>) {
        let api = match &settings.namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::default_namespaced(client),
        };
        info!(
            lease = %settings.name,
            identity = %settings.identity,
            duration_s = settings.duration.as_secs(),
            "leader election on; node readings are exported only while this replica holds the lease"
        );
        let task = tokio::spawn(elect(api.clone(), settings.clone(), leadership.clone()));
        let elector = Elector {
            api,
            settings,
            leadership,
        };
        (elector, task)
    }

    /// Stops electing and, if this replica leads, stops exporting and frees
    /// the Lease so that another replica takes it at its next read instead
    /// of waiting for it to expire.
    pub async fn release(self, task: JoinHandle<()>) {
        task.abort();
        // A renewal in flight is conditional on the version it read, so it
        // cannot undo the release; waiting for the task just keeps the logs in order.
        let _ = task.await;
        let was_leader = self.leadership.is_leader();
        self.leadership.step_down();
        if !was_leader {
            return;
        }
        let me = &self.settings.identity;
        let result = async {
            let lease = self.api.get(&self.settings.name).await?;
            if Record::of(&lease).holder.as_deref() != Some(me.as_str()) {
                return Ok(false);
            }
            // Empty, as client-go releases it: a merge patch cannot drop a field by omitting it.
            let spec = LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(1),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..lease.spec.clone().unwrap_or_default()
            };
            let patch = conditional(lease.metadata.resource_version.as_deref(), &spec);
            self.api
                .patch(&self.settings.name, &PatchParams::default(), &patch)
                .await?;
            Ok::<_, kube::Error>(true)
        };
        match tokio::time::timeout(Duration::from_secs(2), result).await {
            Ok(Ok(true)) => info!(lease = %self.settings.name, "released the lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                warn!(lease = %self.settings.name, error = %e, "could not release the lease; it expires by itself")
            }
            Err(_) => {
                warn!(lease = %self.settings.name, "releasing the lease timed out; it expires by itself")
            }
        }
    }
}

/// One read of the Lease and, when due, one write.
enum Outcome {
    Leading,
    Following {
        holder: String,
        expires_in: Duration,
    },
    /// Lost a race for it (409): read again soon.
    Raced,
}

/// A write's outcome: a 409 means another replica wrote first.
fn written<T>(result: Result<T, kube::Error>) -> Result<Outcome, kube::Error> {
    match result {
        Ok(_) => Ok(Outcome::Leading),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Raced),
        Err(e) => Err(e),
    }
}

/// A merge patch that writes `spec` only if the Lease is still at
/// `resource_version`: the API server answers 409 if another replica wrote
/// since it was read. (A merge patch rather than a replace, so that an
/// emulator without replace, such as kmock, can host the Lease too.)
fn conditional(resource_version: Option<&str>, spec: &LeaseSpec) -> Patch<serde_json::Value> {
    Patch::Merge(serde_json::json!({
        "metadata": { "resourceVersion": resource_version },
        "spec": spec,
    }))
}

async fn attempt(api: &Api<Lease>, settings: &LeaseSettings) -> Result<Outcome, kube::Error> {
    let me = settings.identity.as_str();
    // Absent by the code alone: `get_opt` also wants the reason NotFound, which not every emulator sends.
    let found = match api.get(&settings.name).await {
        Ok(lease) => Some(lease),
        Err(kube::Error::Api(e)) if e.code == 404 => None,
        Err(e) => return Err(e),
    };
    let Some(lease) = found else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                ..Default::default()
            },
            spec: Some(claimed(None, me, settings, Timestamp::now())),
        };
        return written(api.create(&PostParams::default(), &lease).await);
    };
    if let Action::Follow { holder, expires_in } = decide(&Record::of(&lease), me, SystemTime::now()) {
        return Ok(Outcome::Following { holder, expires_in });
    }
    let spec = claimed(lease.spec.as_ref(), me, settings, Timestamp::now());
    let patch = conditional(lease.metadata.resource_version.as_deref(), &spec);
    written(api.patch(&settings.name, &PatchParams::default(), &patch).await)
}

/// The election loop: runs until aborted.
async fn elect(api: Api<Lease>, settings: LeaseSettings, leadership: Leadership) {
    let retry = settings.retry_period();
    let mut following: Option<String> = None;
    let mut failing = false;
    loop {
        let started = Instant::now();
        // A hung request must not outlive the deadline it would extend.
        let result = tokio::time::timeout(settings.renew_deadline(), attempt(&api, &settings)).await;
        let pause = match result {
            Ok(Ok(Outcome::Leading)) => {
                if !leadership.is_leader() {
                    info!(lease = %settings.name, identity = %settings.identity, "became the leader; exporting node readings");
                }
                leadership.hold_until(started + settings.renew_deadline());
                failing = false;
                following = None;
                retry
            }
            Ok(Ok(Outcome::Following { holder, expires_in })) => {
                leadership.step_down();
                if following.as_deref() != Some(holder.as_str()) {
                    info!(lease = %settings.name, %holder, "another replica leads; serving self-telemetry only");
                    following = Some(holder);
                }
                failing = false;
                // Come back just after it would expire, if that is sooner.
                retry.min(expires_in + Duration::from_millis(fastrand::u64(10..100)))
            }
            Ok(Ok(Outcome::Raced)) => Duration::from_millis(fastrand::u64(50..250)),
            Ok(Err(e)) => {
                if !failing {
                    match &e {
                        kube::Error::Api(s) if s.code == 403 => warn!(
                            lease = %settings.name,
                            namespace = api.namespace().unwrap_or_default(),
                            "forbidden to use the leader Lease: grant get and patch on leases named {} in coordination.k8s.io (and create, unless the Lease exists); exporting nothing until then",
                            settings.name
                        ),
                        e => {
                            warn!(lease = %settings.name, error = %e, "reading or writing the lease failed; retrying")
                        }
                    }
                    failing = true;
                }
                retry
            }
            Err(_) => {
                if !failing {
                    warn!(lease = %settings.name, "the lease request timed out; retrying");
                    failing = true;
                }
                retry
            }
        };
        if !leadership.is_leader() && leadership.announced() {
            warn!(
                lease = %settings.name,
                renew_deadline_s = settings.renew_deadline().as_secs_f64(),
                "could not renew the lease in time; stopped exporting node readings"
            );
            leadership.step_down();
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {

    /// A renewal after the deadline lapsed is a new leadership that
    /// subscribers hear of; one on time is not.
    #[tokio::test]
    async fn a_late_renewal_is_announced_and_a_timely_one_is_not() {
        let l = Leadership::elected();
        let mut seen = l.subscribe();
        seen.borrow_and_update();
        l.hold_until(Instant::now() + Duration::from_millis(30));
        assert!(seen.has_changed().unwrap() && *seen.borrow_and_update());
        l.hold_until(Instant::now() + Duration::from_millis(30));
        assert!(
            !seen.has_changed().unwrap(),
            "renewed in time: the same leadership"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!l.is_leader(), "the deadline passed");
        l.hold_until(Instant::now() + Duration::from_secs(30));
        assert!(seen.has_changed().unwrap(), "renewed late: a new leadership");
        assert!(*seen.borrow_and_update());
    }
    use super::*;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(s)
    }

    fn record(holder: Option<&str>, renewed: Option<u64>, duration: Option<u64>) -> Record {
        Record {
            holder: holder.map(str::to_string),
            renewed: renewed.map(at),
            duration: duration.map(Duration::from_secs),
        }
    }

    #[test]
    fn decisions() {
        let follow = |s: u64| Action::Follow {
            holder: "b".into(),
            expires_in: Duration::from_secs(s),
        };
        for (record, now, want) in [
            (record(None, None, None), 0, Action::Take),
            (record(None, Some(0), Some(15)), 1, Action::Take),
            (record(Some("a"), Some(0), Some(15)), 100, Action::Renew),
            (record(Some("b"), Some(0), Some(15)), 1, follow(14)),
            (record(Some("b"), Some(0), Some(15)), 14, follow(1)),
            (record(Some("b"), Some(0), Some(15)), 15, Action::Take),
            (record(Some("b"), Some(0), Some(15)), 16, Action::Take),
            (record(Some("b"), None, Some(15)), 0, Action::Take),
            (record(Some("b"), Some(0), None), 0, Action::Take),
            // A renewal from the future (skew) is honoured for its full length.
            (record(Some("b"), Some(10), Some(15)), 5, follow(20)),
        ] {
            assert_eq!(decide(&record, "a", at(now)), want, "{record:?} at {now}");
        }
    }

    #[test]
    fn an_empty_holder_is_free() {
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(Record::of(&lease).holder, None);
    }

    #[test]
    fn taking_counts_a_transition_and_renewing_keeps_it() {
        let settings = LeaseSettings {
            name: "l".into(),
            namespace: None,
            duration: Duration::from_secs(15),
            identity: "a".into(),
        };
        let t1 = Timestamp::from_second(1_800_000_000).expect("valid");
        let t2 = Timestamp::from_second(1_800_000_002).expect("valid");
        let taken = claimed(
            Some(&LeaseSpec {
                holder_identity: Some("b".into()),
                lease_transitions: Some(3),
                ..Default::default()
            }),
            "a",
            &settings,
            t1,
        );
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(t1)));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        let renewed = claimed(Some(&taken), "a", &settings, t2);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(t1)));
        assert_eq!(renewed.renew_time, Some(MicroTime(t2)));
        assert_eq!(claimed(None, "a", &settings, t1).lease_transitions, Some(1));
    }

    #[test]
    fn leadership_ends_at_its_deadline_without_anyone_saying_so() {
        let sole = Leadership::sole();
        assert!(sole.is_leader() && !sole.is_elected());
        let l = Leadership::elected();
        assert!(!l.is_leader());
        l.hold_until(Instant::now() + Duration::from_secs(60));
        assert!(l.is_leader());
        assert!(*l.subscribe().borrow());
        l.hold_until(Instant::now() + Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!l.is_leader());
        l.hold_until(Instant::now() + Duration::from_secs(60));
        l.step_down();
        assert!(!l.is_leader());
        assert!(!*l.subscribe().borrow());
    }

    #[test]
    fn timings_follow_the_duration() {
        let s = LeaseSettings {
            name: "l".into(),
            namespace: None,
            duration: Duration::from_secs(15),
            identity: "a".into(),
        };
        assert_eq!(s.renew_deadline(), Duration::from_secs(10));
        assert!(s.retry_period() >= Duration::from_secs(2) && s.retry_period() < Duration::from_secs(3));
    }
}

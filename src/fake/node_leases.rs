//! Kubelet heartbeats in the fake API server: a `coordination.k8s.io/v1`
//! Lease per node in `kube-node-lease`, renewed every `renew_every` with
//! jitter as kubelets renew theirs; kubelets that can be killed (their
//! renewals and status re-posts stop); and the node lifecycle controller,
//! which marks a node whose Lease went unrenewed for the grace period
//! (every kubelet condition `Unknown`, the `unreachable` taints) and can be
//! stopped, as a kube-controller-manager that is down or partitioned is.
//!
//! The Leases are listed and watched as the node API is (list, streaming
//! list, watch from a resourceVersion, bookmarks, 410 for a compacted one),
//! in JSON or protobuf as `Accept` asks ([`lease_wire`](super::lease_wire)).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{body::Bytes, http::StatusCode, response::Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::{
    gate::status,
    lease_wire::{self, LeaseEvent},
    request::Encoding,
};

/// Where kubelets keep their Leases.
pub const NAMESPACE: &str = "kube-node-lease";

/// How kubelets and the node lifecycle controller behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatOptions {
    /// How often each kubelet renews its Lease (10 s by default in the kubelet).
    pub renew_every: Duration,
    /// How long the controller waits on an unrenewed Lease before it marks
    /// the node (`--node-monitor-grace-period`: 40 s, 50 s since v1.32).
    pub grace: Duration,
}

impl Default for HeartbeatOptions {
    fn default() -> Self {
        HeartbeatOptions {
            renew_every: Duration::from_secs(10),
            grace: Duration::from_secs(40),
        }
    }
}

impl HeartbeatOptions {
    /// `leaseDurationSeconds` as kubelets write it: four renewals.
    pub fn lease_duration_secs(&self) -> u64 {
        (self.renew_every.as_secs_f64() * 4.0).ceil().max(1.0) as u64
    }
}

/// One node's Lease and its kubelet.
struct Entry {
    node_uid: String,
    created: String,
    /// `renewTime` in Unix microseconds.
    renewed_us: i64,
    /// When the kubelet renews next (Unix microseconds).
    due_us: i64,
    rv: u64,
    /// False once the kubelet was killed.
    alive: bool,
    /// True while the controller has the node marked unreachable.
    unreachable: bool,
}

struct Store {
    rv: u64,
    leases: BTreeMap<String, Entry>,
    /// Watch events with their resourceVersion, oldest first.
    history: VecDeque<(u64, lease_wire::Shared)>,
    /// Resuming from below this is 410 Gone.
    compacted: u64,
}

/// The node Leases, their kubelets and the controller's switch.
pub struct NodeLeases {
    options: HeartbeatOptions,
    store: Mutex<Store>,
    events: broadcast::Sender<(u64, lease_wire::Shared)>,
    /// Bumped to end every open Lease watch.
    generation: watch::Sender<u64>,
    controller: AtomicBool,
    history: usize,
    rng: Mutex<fastrand::Rng>,
}

/// What the controller is to do to nodes after a [`NodeLeases::overdue`] look.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Nodes whose Lease went unrenewed for the grace period: mark them.
    pub unreachable: Vec<String>,
    /// Marked nodes whose Lease is renewed again: clear them.
    pub reachable: Vec<String>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A `MicroTime` as the API server writes it.
fn micro_time(us: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_microsecond(us)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string())
        .unwrap_or_default()
}

impl NodeLeases {
    /// No Leases yet; the controller running.
    pub fn new(options: HeartbeatOptions, history: usize) -> NodeLeases {
        NodeLeases {
            options,
            store: Mutex::new(Store {
                rv: 1,
                leases: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 1,
            }),
            events: broadcast::channel(65_536).0,
            generation: watch::channel(0).0,
            controller: AtomicBool::new(true),
            history: history.max(1),
            rng: Mutex::new(fastrand::Rng::with_seed(29)),
        }
    }

    /// The kubelets' and controller's timing.
    pub fn options(&self) -> HeartbeatOptions {
        self.options
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next renewal after `now`: one period on, give or take a tenth.
    fn next_due(&self, now: i64) -> i64 {
        let period = self.options.renew_every.as_micros() as i64;
        let jitter = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .i64(-period / 10..=period / 10);
        now + period + jitter
    }

    fn object(&self, name: &str, e: &Entry) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": format!("lease-{}", e.node_uid),
                "resourceVersion": e.rv.to_string(),
                "creationTimestamp": e.created,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": e.node_uid}],
            },
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": self.options.lease_duration_secs(),
                "renewTime": micro_time(e.renewed_us),
            },
        })
    }

    /// Stores `name`'s Lease under the next resourceVersion (or deletes it) and publishes the event.
    fn publish(&self, store: &mut Store, kind: &'static str, name: &str) {
        store.rv += 1;
        let rv = store.rv;
        let object = match store.leases.get_mut(name) {
            Some(e) => {
                e.rv = rv;
                let e = &*e;
                self.object(name, e)
            }
            None => return,
        };
        if kind == "DELETED" {
            store.leases.remove(name);
        }
        let line = std::sync::Arc::new(LeaseEvent { kind, object });
        store.history.push_back((rv, line.clone()));
        while store.history.len() > self.history {
            if let Some((old, _)) = store.history.pop_front() {
                store.compacted = old;
            }
        }
        let _ = self.events.send((rv, line));
    }

    /// Gives node `name` a Lease, renewed just now, if it has none.
    pub fn ensure(&self, name: &str, node_uid: &str) {
        let mut store = self.lock();
        if store.leases.contains_key(name) {
            return;
        }
        let now = now_us();
        let due = self.next_due(now);
        store.leases.insert(
            name.to_string(),
            Entry {
                node_uid: node_uid.to_string(),
                created: super::gate::now_rfc3339(),
                renewed_us: now,
                due_us: due,
                rv: 0,
                alive: true,
                unreachable: false,
            },
        );
        self.publish(&mut store, "ADDED", name);
    }

    /// Deletes node `name`'s Lease, as the garbage collector does after the node.
    pub fn remove(&self, name: &str) {
        let mut store = self.lock();
        self.publish(&mut store, "DELETED", name);
    }

    /// Renews every live kubelet's Lease that is due. Returns how many.
    pub fn renew_due(&self) -> usize {
        let now = now_us();
        let mut store = self.lock();
        let due: Vec<String> = store
            .leases
            .iter()
            .filter(|(_, e)| e.alive && e.due_us <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &due {
            let next = self.next_due(now);
            if let Some(e) = store.leases.get_mut(name) {
                e.renewed_us = now;
                e.due_us = next;
            }
            self.publish(&mut store, "MODIFIED", name);
        }
        due.len()
    }

    /// Kills or revives node `name`'s kubelet. A revived one renews at once.
    /// False if the node has no Lease.
    pub fn set_alive(&self, name: &str, alive: bool) -> bool {
        let mut store = self.lock();
        let Some(e) = store.leases.get_mut(name) else {
            return false;
        };
        let was = std::mem::replace(&mut e.alive, alive);
        if alive && !was {
            e.renewed_us = now_us();
            e.due_us = self.next_due(e.renewed_us);
            self.publish(&mut store, "MODIFIED", name);
        }
        true
    }

    /// True unless node `name`'s kubelet was killed.
    pub fn is_alive(&self, name: &str) -> bool {
        self.lock().leases.get(name).is_none_or(|e| e.alive)
    }

    /// Stops or restarts the node lifecycle controller.
    pub fn set_controller(&self, running: bool) {
        self.controller.store(running, Ordering::Release);
    }

    /// The controller's look at the Leases, if it is running: nodes to
    /// mark unreachable, and marked nodes whose kubelet is back.
    pub fn overdue(&self) -> Verdicts {
        if !self.controller.load(Ordering::Acquire) {
            return Verdicts::default();
        }
        let now = now_us();
        let grace = self.options.grace.as_micros() as i64;
        let mut store = self.lock();
        let mut v = Verdicts::default();
        for (name, e) in store.leases.iter_mut() {
            let late = now - e.renewed_us > grace;
            if late && !e.unreachable {
                e.unreachable = true;
                v.unreachable.push(name.clone());
            } else if !late && e.unreachable {
                e.unreachable = false;
                v.reachable.push(name.clone());
            }
        }
        v
    }

    /// Forgets the history: resuming a Lease watch from before now is 410.
    pub fn compact(&self) {
        let mut store = self.lock();
        store.rv += 1;
        store.history.clear();
        store.compacted = store.rv;
    }

    /// Ends every open Lease watch.
    pub fn close_watches(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Node `name`'s Lease, if it has one.
    pub fn get(&self, name: &str) -> Option<Value> {
        let store = self.lock();
        store.leases.get(name).map(|e| self.object(name, e))
    }

    /// `GET .../namespaces/kube-node-lease/leases`: every Lease, at the latest resourceVersion.
    pub fn list(&self, encoding: Encoding) -> Response {
        let store = self.lock();
        let items: Vec<Value> = store.leases.iter().map(|(n, e)| self.object(n, e)).collect();
        lease_wire::list(encoding, store.rv, &items)
    }

    /// `...?watch=true&resourceVersion=N`: the events after `N`, then live
    /// ones, with bookmarks every `bookmark_every` if asked, until
    /// `timeout`. `initial`: a streaming list (`sendInitialEvents`), every
    /// Lease as ADDED, then the bookmark that ends them.
    pub fn watch(
        self: &Arc<Self>,
        encoding: Encoding,
        from: WatchFrom,
        bookmark_every: Duration,
    ) -> Response {
        let store = self.lock();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
        let mut first: Vec<Bytes> = Vec::new();
        let from_rv = match from.resource_version.as_deref() {
            _ if from.initial => {
                first.extend(store.leases.iter().map(|(n, e)| {
                    LeaseEvent {
                        kind: "ADDED",
                        object: self.object(n, e),
                    }
                    .encode(encoding)
                }));
                first.push(lease_wire::bookmark(encoding, store.rv, true));
                store.rv
            }
            None | Some("") | Some("0") => store.rv,
            Some(v) => match v.parse::<u64>() {
                Ok(rv) => rv,
                Err(_) => return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid resourceVersion"),
            },
        };
        if from_rv < store.compacted {
            let _ = tx.try_send(lease_wire::gone(encoding, from_rv, store.compacted));
            drop(store);
            return lease_wire::stream(encoding, rx);
        }
        let replay: Vec<(u64, lease_wire::Shared)> = store
            .history
            .iter()
            .filter(|(rv, _)| *rv > from_rv)
            .cloned()
            .collect();
        let live = self.events.subscribe();
        let mut closed = self.generation.subscribe();
        drop(store);
        let (bookmarks, timeout) = (from.bookmarks, from.timeout);
        tokio::spawn(async move {
            let mut last = from_rv;
            for line in first {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            // Bookmarks name the last event sent, replayed ones too.
            for (rv, event) in replay {
                last = rv;
                if tx.send(event.encode(encoding)).await.is_err() {
                    return;
                }
            }
            let mut live = live;
            let end = tokio::time::sleep(timeout);
            tokio::pin!(end);
            let mut ticks = tokio::time::interval(bookmark_every);
            ticks.tick().await;
            loop {
                let line = tokio::select! {
                    _ = &mut end => return,
                    _ = closed.changed() => return,
                    event = live.recv() => match event {
                        Ok((rv, event)) if rv > last => {
                            last = rv;
                            event.encode(encoding)
                        }
                        Ok(_) => continue,
                        // Too slow for the broadcast: the API server ends such a watch too.
                        Err(_) => return,
                    },
                    _ = ticks.tick(), if bookmarks => lease_wire::bookmark(encoding, last, false),
                };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        lease_wire::stream(encoding, rx)
    }
}

/// Where a Lease watch starts and how it goes.
#[derive(Clone, Debug)]
pub struct WatchFrom {
    /// After this resourceVersion (`None`, empty or `0`: from now).
    pub resource_version: Option<String>,
    /// A streaming list: every Lease first.
    pub initial: bool,
    /// Bookmarks asked for.
    pub bookmarks: bool,
    /// When the server ends it.
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> HeartbeatOptions {
        HeartbeatOptions {
            renew_every: Duration::from_millis(100),
            grace: Duration::from_millis(300),
        }
    }

    #[test]
    fn a_lease_looks_like_a_kubelets() {
        let leases = NodeLeases::new(HeartbeatOptions::default(), 100);
        leases.ensure("n1", "u1");
        let lease = leases.get("n1").expect("created");
        assert_eq!(lease["metadata"]["namespace"], NAMESPACE);
        assert_eq!(lease["spec"]["holderIdentity"], "n1");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(lease["metadata"]["ownerReferences"][0]["uid"], "u1");
        let renew = lease["spec"]["renewTime"].as_str().expect("renewTime");
        assert_eq!(renew.len(), "2026-12-07T10:00:00.123456Z".len(), "{renew}");
        // Real bytes decode with k8s-openapi's Lease.
        let typed: k8s_openapi::api::coordination::v1::Lease =
            serde_json::from_value(lease).expect("a Lease");
        assert!(typed.spec.and_then(|s| s.renew_time).is_some());
    }

    #[test]
    fn only_live_kubelets_renew_and_the_controller_marks_the_dead_after_the_grace() {
        let leases = NodeLeases::new(fast(), 100);
        leases.ensure("alive", "u1");
        leases.ensure("dead", "u2");
        assert!(leases.set_alive("dead", false));
        assert!(!leases.set_alive("none", false));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut verdicts = Verdicts::default();
        while verdicts.unreachable.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            leases.renew_due();
            verdicts = leases.overdue();
        }
        assert_eq!(verdicts.unreachable, ["dead"]);
        assert!(leases.overdue().unreachable.is_empty(), "marked once");
        // A stopped controller marks nothing and clears nothing.
        leases.set_controller(false);
        assert!(leases.set_alive("dead", true));
        assert_eq!(leases.overdue(), Verdicts::default());
        leases.set_controller(true);
        assert_eq!(leases.overdue().reachable, ["dead"]);
    }

    #[test]
    fn deleting_and_compacting() {
        let leases = NodeLeases::new(fast(), 2);
        leases.ensure("a", "u");
        leases.ensure("b", "u");
        leases.ensure("c", "u");
        leases.remove("a");
        assert!(leases.get("a").is_none());
        let store = leases.lock();
        assert_eq!(store.history.len(), 2, "history is bounded");
        assert!(store.compacted > 1);
    }
}

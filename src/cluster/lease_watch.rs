//! The node Lease watch: a LIST of `kube-node-lease`, then WATCH, with the
//! node watch's own loop ([`watcher`]: streaming lists, bookmarks, 410 →
//! relist, backoff) and encoding (protobuf unless `--api-encoding json`),
//! each Lease decoded slim ([`NodeLease`]: holder, `renewTime`,
//! `leaseDurationSeconds`); into the view's [`Heartbeats`], with a look once
//! a second for Leases gone stale.
//!
//! A renewal is one small event: its cost in each encoding is in
//! docs/benchmarks.md.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use kube::{
    Client,
    runtime::{WatchStreamExt, watcher::Event},
};
use tracing::{info, warn};

use super::{
    ConditionChange, ConditionSink, View,
    heartbeats::{Applied, HeartbeatChange, LeaseWatchStats, Now},
    lease::NodeLease,
    watcher::{self, Delivered},
    wire::{self, Encoding},
};

/// The condition type of a heartbeat's log records: `True` when lost.
pub const HEARTBEAT_CONDITION: &str = "KubeletHeartbeatStale";

/// How often Leases are looked at for staleness: the most a stale heartbeat
/// waits to be found.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The log record of a heartbeat lost or resumed.
pub fn record(
    change: &HeartbeatChange,
    uid: Option<String>,
    namespace: &str,
    now: SystemTime,
) -> ConditionChange {
    let last = change
        .last_renewal
        .map(|t| k8s_openapi::jiff::Timestamp::try_from(t).map_or_else(|_| "?".into(), |t| t.to_string()))
        .unwrap_or_else(|| "never".into());
    let (status, previous, reason, message) = if change.resumed {
        (
            "False",
            "True",
            "HeartbeatResumed",
            format!(
                "kubelet renewed its Lease {namespace}/{} again (renewTime {last})",
                change.node
            ),
        )
    } else {
        (
            "True",
            "False",
            "HeartbeatLost",
            format!(
                "kubelet has not renewed its Lease {namespace}/{} for {}s (last renewTime {last})",
                change.node,
                change.age.as_secs()
            ),
        )
    };
    ConditionChange {
        node: change.node.clone(),
        uid,
        type_: HEARTBEAT_CONDITION.to_string(),
        status: status.to_string(),
        previous: previous.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition: None,
        observed: now,
    }
}

/// Hands what applying Lease events did downstream: marks the nodes whose
/// heartbeat reading changed (nodes only: a Lease whose node is gone marks
/// nothing), moves the view's generation, and reports lost and resumed heartbeats.
fn deliver(
    view: &View,
    applied: Applied,
    sink: Option<&Arc<dyn ConditionSink>>,
    namespace: &str,
    stats: &LeaseWatchStats,
) {
    let mut marked = false;
    for name in &applied.changed {
        if view.node(name).is_some() {
            view.changes().mark(name);
            marked = true;
        }
    }
    if marked {
        view.health().touch();
    }
    let now = SystemTime::now();
    for change in &applied.reports {
        let counter = if change.resumed {
            &stats.resumed
        } else {
            &stats.lost
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let node = view.node(&change.node);
        if node.is_none() {
            continue;
        }
        if change.resumed {
            info!(node = %change.node, "kubelet heartbeat resumed");
        } else {
            warn!(node = %change.node, age_s = change.age.as_secs(), "kubelet heartbeat lost: its node Lease is not being renewed");
        }
        if let Some(sink) = sink {
            let uid = node.and_then(|n| n.metadata.uid.clone());
            sink.changed(record(change, uid, namespace, now));
        }
    }
}

/// Watches the node Leases in `namespace` into `view`'s heartbeats until
/// the stream ends (it does not on its own: errors are retried with backoff).
pub async fn run(
    client: Client,
    namespace: String,
    view: View,
    sink: Option<Arc<dyn ConditionSink>>,
    api_timeout: Duration,
    encoding: Encoding,
) {
    let heartbeats = view.heartbeats().clone();
    let stats = &heartbeats.stats;
    // Pages of 500, as client-go's: a Lease is ~500 bytes.
    let source = wire::Http::<NodeLease> {
        client,
        path: wire::leases_path(&namespace),
        encoding,
        page_size: 500,
        timeout_secs: super::watch::watch_timeout_secs(api_timeout),
        kind: std::marker::PhantomData,
    };
    let stream = watcher::watch(source, true, Box::new(|_| {})).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut looks = tokio::time::interval(LOOK_EVERY);
    looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let applied = tokio::select! {
            item = stream.next() => match item {
                None => break,
                // Never for Leases: nothing of theirs is fingerprinted.
                Some(Ok(Delivered::Unchanged)) => Applied::default(),
                Some(Ok(Delivered::Event(event))) => {
                    // Init only announces an attempt to list, which may fail: it proves nothing.
                    if !matches!(event, Event::Init) && stats.failing.swap(false, Ordering::AcqRel) {
                        info!(namespace, "node Lease watch recovered");
                    }
                    let now = Now::current();
                    match event {
                        Event::Init => {
                            heartbeats.list_started();
                            Applied::default()
                        }
                        Event::InitApply(lease) => heartbeats.apply(&lease, true, now),
                        Event::Apply(lease) => heartbeats.apply(&lease, false, now),
                        Event::Delete(lease) => match lease.name.as_deref() {
                            Some(name) => heartbeats.delete(name, now),
                            None => Applied::default(),
                        },
                        Event::InitDone => {
                            let first = !heartbeats.is_synced();
                            let applied = heartbeats.list_done(now);
                            if first {
                                let (fresh, stale) = heartbeats.counts();
                                info!(namespace, leases = fresh + stale, "node Leases listed; watching heartbeats");
                                // Every node's heartbeat reading appears with it.
                                for node in view.nodes() {
                                    if let Some(name) = node.metadata.name.as_deref() {
                                        view.changes().mark(name);
                                    }
                                }
                                view.health().touch();
                            }
                            applied
                        }
                    }
                }
                Some(Err(e)) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    if !stats.failing.swap(true, Ordering::AcqRel) {
                        if e.is_forbidden() {
                            warn!(
                                namespace,
                                error = %e,
                                "forbidden: heartbeat readings need `get`, `list` and `watch` on `leases` \
                                 (coordination.k8s.io) in this namespace (a Role and RoleBinding); \
                                 node readings go on; retrying with backoff"
                            );
                        } else {
                            warn!(namespace, error = %e, encoding = encoding.as_str(), "node Lease watch failing; retrying with backoff");
                        }
                    }
                    Applied::default()
                }
            },
            _ = looks.tick() => heartbeats.expire(Now::current()),
        };
        if applied != Applied::default() {
            deliver(&view, applied, sink.as_ref(), &namespace, stats);
        }
    }
    warn!("node Lease watcher stopped");
}

/// Spawns [`run`] on the runtime.
pub fn spawn(
    client: Client,
    namespace: String,
    view: View,
    sink: Option<Arc<dyn ConditionSink>>,
    api_timeout: Duration,
    encoding: Encoding,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(client, namespace, view, sink, api_timeout, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_say_who_when_and_how_long() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lost = HeartbeatChange {
            node: "n1".into(),
            resumed: false,
            last_renewal: Some(at),
            age: Duration::from_secs(42),
        };
        let r = record(&lost, Some("u1".into()), "kube-node-lease", at);
        assert_eq!(
            (r.type_.as_str(), r.status.as_str(), r.previous.as_str()),
            (HEARTBEAT_CONDITION, "True", "False")
        );
        assert_eq!(r.reason.as_deref(), Some("HeartbeatLost"));
        let message = r.message.expect("a message");
        assert!(message.contains("kube-node-lease/n1"), "{message}");
        assert!(message.contains("for 42s"), "{message}");
        assert!(message.contains("2027-01-15T08:00:00Z"), "{message}");
        let back = record(
            &HeartbeatChange {
                resumed: true,
                age: Duration::ZERO,
                ..lost
            },
            None,
            "kube-node-lease",
            at,
        );
        assert_eq!(
            (back.status.as_str(), back.reason.as_deref()),
            ("False", Some("HeartbeatResumed"))
        );
    }
}

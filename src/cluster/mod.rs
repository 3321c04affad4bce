//! The cluster view: one watcher + reflector over Nodes, and what is known of
//! its health; with `--node-leases`, a second watch over the node Leases
//! for each node's kubelet heartbeat.
//!
//! Data leaves this module only through [`View`]; nothing here knows about
//! readings, instruments or exporters.

mod api_observer;
mod changes;
mod condition;
pub mod condition_changes;
mod feed;
mod gather;
mod health;
mod heartbeats;
pub mod json;
pub mod lease;
pub mod lease_watch;
mod node;
pub mod object;
pub mod proto;
mod transitions;
mod watch;
pub mod watcher;
pub mod wire;

pub use api_observer::ApiObserverLayer;
pub use changes::Changes;
pub use condition_changes::{ConditionChange, ConditionSink};
pub use feed::Feed;
pub use health::{ApiVerb, ErrorReason, EventKind, Health, WatchStats};
pub use heartbeats::{Heartbeat, HeartbeatChange, Heartbeats, LeaseWatchStats, Now};
pub use lease::NodeLease;
pub use lease_watch::{HEARTBEAT_CONDITION, spawn as spawn_lease_watcher};
pub use node::{
    ConditionStatus, ConditionText, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
    NodeVersions, ResourceList, Taint,
};
pub use transitions::{Seen, Transitions};
pub use watch::{Keep, KeepLabel, spawn as spawn_watcher, strip, strip_keeping};

use std::sync::Arc;

use kube::runtime::reflector::{self, ObjectRef, Store};

/// A read-only handle on the in-memory Nodes and the watch's health.
///
/// Cheap to clone; every clone sees the same store.
#[derive(Clone)]
pub struct View {
    store: Store<Node>,
    health: Arc<Health>,
    transitions: Arc<Transitions>,
    changes: Arc<Changes>,
    heartbeats: Arc<Heartbeats>,
}

impl View {
    /// Creates an empty view and the feed the watcher fills it through.
    pub fn new() -> (View, Feed) {
        Self::with_heartbeats(Heartbeats::off())
    }

    /// [`View::new`], keeping node heartbeats in `heartbeats` (filled by the Lease watch).
    pub fn with_heartbeats(heartbeats: Heartbeats) -> (View, Feed) {
        let (store, writer) = reflector::store();
        let view = View {
            store,
            health: Arc::new(Health::new()),
            transitions: Arc::new(Transitions::default()),
            changes: Arc::new(Changes::default()),
            heartbeats: Arc::new(heartbeats),
        };
        (view.clone(), Feed::new(writer, view))
    }

    /// Each node's kubelet heartbeat, from its Lease (off unless `--node-leases`).
    pub fn heartbeats(&self) -> &Arc<Heartbeats> {
        &self.heartbeats
    }

    /// A snapshot of the stored (stripped) Nodes, in no particular order.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.store.state()
    }

    /// The stored node named `name`, if any.
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.store.get(&ObjectRef::new(name))
    }

    /// The names of the nodes stored anew or deleted since they were last taken.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// Condition status changes seen in watch events.
    pub fn transitions(&self) -> &Arc<Transitions> {
        &self.transitions
    }

    /// A read-only handle on the same store, for the watch loop.
    pub(crate) fn store(&self) -> &Store<Node> {
        &self.store
    }

    /// The health and counters of the watch that fills this view.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }
}

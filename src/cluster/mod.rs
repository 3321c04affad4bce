//! The cluster view: one watcher + reflector over Nodes, and what is known of its health.
//!
//! Data leaves this module only through [`View`]; nothing here knows about
//! readings, instruments or exporters.

mod api_observer;
mod health;
mod node;
mod transitions;
mod watch;

pub use api_observer::ApiObserverLayer;
pub use health::{ApiVerb, ErrorReason, EventKind, Health, WatchStats};
pub use node::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, ResourceList, Taint};
pub use transitions::Transitions;
pub use watch::{KeepLabel, spawn as spawn_watcher, strip};

use std::sync::Arc;

use kube::runtime::reflector::{self, Store, store::Writer};

/// A read-only handle on the in-memory Nodes and the watch's health.
///
/// Cheap to clone; every clone sees the same store.
#[derive(Clone)]
pub struct View {
    store: Store<Node>,
    health: Arc<Health>,
    transitions: Arc<Transitions>,
}

impl View {
    /// Creates an empty view and the writer the watcher fills it through.
    pub fn new() -> (View, Writer<Node>) {
        let (store, writer) = reflector::store();
        (
            View {
                store,
                health: Arc::new(Health::new()),
                transitions: Arc::new(Transitions::default()),
            },
            writer,
        )
    }

    /// A snapshot of the stored (stripped) Nodes, in no particular order.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.store.state()
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

//! The one way into the view: watch events applied as kube's reflector
//! applies them, with what this service adds on the way in.
//!
//! - An update that changes nothing kept (a kubelet status re-post, a new
//!   heartbeat time, an image list) is counted as unchanged and dropped: the
//!   stored object stays as it was, so nothing downstream has anything to redo.
//! - Condition transitions are counted before the store changes, while it
//!   still holds the node's previous version.
//! - The names of the nodes stored anew or deleted are marked in
//!   [`Changes`], which is all the pass downstream reads to know what to redo.
//! - Condition status changes, with their reasons and messages, go to the
//!   [`ConditionSink`] if one is set (the log records downstream).

use kube::runtime::{
    reflector::{ObjectRef, store::Writer},
    watcher::Event,
};

use std::{sync::Arc, time::SystemTime};

use super::{
    EventKind, Node, View,
    condition_changes::{self, ConditionDetail, ConditionSink},
};

/// Applies watch events to the [`View`] it was made with.
pub struct Feed {
    writer: Writer<Node>,
    view: View,
    sink: Option<Arc<dyn ConditionSink>>,
}

impl Feed {
    pub(super) fn new(writer: Writer<Node>, view: View) -> Feed {
        Feed {
            writer,
            view,
            sink: None,
        }
    }

    /// Hands every condition status change from now on to `sink`.
    pub fn set_sink(&mut self, sink: Arc<dyn ConditionSink>) {
        self.sink = Some(sink);
    }

    /// Applies `event` to the view, and says what kind of event it was
    /// ([`EventKind::Unchanged`] for an update it dropped). Does not count it
    /// in the view's health: the watch loop does, with what it knows of errors.
    pub fn apply(&mut self, event: &Event<Node>) -> EventKind {
        self.apply_detailed(event, &[])
    }

    /// [`apply`](Self::apply), with the reasons and messages taken off the
    /// event's node ([`condition_changes::take_details`]) for the changes
    /// handed to the sink.
    pub fn apply_detailed(&mut self, event: &Event<Node>, details: &[ConditionDetail]) -> EventKind {
        let store = self.view.store();
        if let Event::Apply(node) = event
            && store
                .get(&ObjectRef::from_obj(node))
                .is_some_and(|stored| stored.same_content(node))
        {
            return EventKind::Unchanged;
        }
        let transitions = self.view.transitions();
        match event {
            Event::Apply(node) | Event::InitApply(node) => {
                let old = store.get(&ObjectRef::from_obj(node));
                if let Some(sink) = &self.sink {
                    // Only against a stored version: a node's initial state is no change.
                    for change in condition_changes::changes(old.as_deref(), node, details, SystemTime::now())
                    {
                        sink.changed(change);
                    }
                }
                transitions.observe(old.as_deref(), node)
            }
            Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    transitions.forget(name);
                }
            }
            Event::Init => transitions.list_started(),
            Event::InitDone => transitions.list_done(),
        }
        // A relist replaces every stored object: it is compared by content.
        let before = matches!(event, Event::InitDone).then(|| store.state());
        self.writer.apply_watcher_event(event);
        let changes = self.view.changes();
        match event {
            Event::Apply(node) | Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    changes.mark(name);
                }
            }
            Event::InitDone => changes.mark_relist(&before.unwrap_or_default(), &store.state()),
            Event::Init | Event::InitApply(_) => {}
        }
        kind(event)
    }

    /// The view this feed fills.
    pub fn view(&self) -> &View {
        &self.view
    }
}

fn kind<K>(event: &Event<K>) -> EventKind {
    match event {
        Event::Apply(_) => EventKind::Apply,
        Event::Delete(_) => EventKind::Delete,
        Event::Init => EventKind::Init,
        Event::InitApply(_) => EventKind::InitApply,
        Event::InitDone => EventKind::InitDone,
    }
}

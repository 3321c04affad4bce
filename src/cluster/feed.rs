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
//! - During a (re)list, a node is compared with the version this list last
//!   delivered of it, if any, not with the one stored before: the store is
//!   replaced only when the list is done, and a LIST that fails part way is
//!   retried from its first page, delivering the same versions again.

use kube::runtime::{
    reflector::{ObjectRef, store::Writer},
    watcher::Event,
};

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use super::{
    EventKind, Node, View,
    condition_changes::{self, ConditionDetail, ConditionSink},
    transitions::Seen,
};

/// Applies watch events to the [`View`] it was made with.
pub struct Feed {
    writer: Writer<Node>,
    view: View,
    sink: Option<Arc<dyn ConditionSink>>,
    /// What the (re)list under way delivered of each node so far, kept
    /// across its restarts until it is done.
    listed: HashMap<String, Seen>,
}

impl Feed {
    pub(super) fn new(writer: Writer<Node>, view: View) -> Feed {
        Feed {
            writer,
            view,
            sink: None,
            listed: HashMap::new(),
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
                let name = node.metadata.name.as_deref().unwrap_or_default();
                let across_gap = matches!(event, Event::InitApply(_));
                let listed = across_gap.then(|| self.listed.get(name).cloned()).flatten();
                let old = listed.or_else(|| store.get(&ObjectRef::from_obj(node)).map(|n| Seen::of(&n)));
                if let Some(sink) = &self.sink {
                    // Only against a version seen before: a node's initial state is no change.
                    let now = SystemTime::now();
                    for change in condition_changes::changes(old.as_ref(), node, details, now, across_gap) {
                        sink.changed(change);
                    }
                }
                transitions.observe(old.as_ref(), node, across_gap);
                if matches!(event, Event::InitApply(_)) {
                    self.listed.insert(name.to_string(), Seen::of(node));
                }
            }
            Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    transitions.forget(name);
                }
            }
            // A restarted list keeps what the failed one delivered: see `listed`.
            Event::Init => transitions.list_started(),
            Event::InitDone => {
                self.listed = HashMap::new();
                transitions.list_done()
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Sink(Mutex<Vec<(String, String, String)>>);

    impl ConditionSink for Sink {
        fn changed(&self, c: condition_changes::ConditionChange) {
            self.0.lock().unwrap().push((c.node, c.previous, c.status));
        }
    }

    fn node(name: &str, uid: &str, ready: &str, since: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": uid},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]},
        }))
        .expect("a valid Node")
    }

    const T0: &str = "2026-12-01T00:00:00Z";
    const T1: &str = "2026-12-01T00:01:00Z";
    const T2: &str = "2026-12-01T00:02:00Z";

    fn feed() -> (Feed, Arc<Sink>) {
        let (_, mut feed) = View::new();
        let sink = Arc::new(Sink::default());
        feed.set_sink(sink.clone());
        (feed, sink)
    }

    fn list(feed: &mut Feed, nodes: &[Node]) {
        feed.apply(&Event::Init);
        for n in nodes {
            feed.apply(&Event::InitApply(n.clone()));
        }
        feed.apply(&Event::InitDone);
    }

    fn ready_count(feed: &Feed, name: &str) -> Option<u64> {
        feed.view().transitions().get(name, "Ready")
    }

    fn records(sink: &Sink) -> Vec<(String, String, String)> {
        std::mem::take(&mut *sink.0.lock().unwrap())
    }

    /// A relist whose LIST fails on its second page starts again at page
    /// one (kube-runtime's watcher goes back to `Init`): the change it
    /// carries is counted and recorded once, not once per attempt.
    #[test]
    fn a_retried_relist_counts_and_records_a_change_once() {
        let (mut feed, sink) = feed();
        list(
            &mut feed,
            &[node("a", "u1", "True", T0), node("b", "u2", "True", T0)],
        );
        assert_eq!(ready_count(&feed, "a"), Some(0));
        // The 410 Gone relist: `a` went NotReady meanwhile. Page 1 delivers it, page 2 fails.
        for _attempt in 0..3 {
            feed.apply(&Event::Init);
            feed.apply(&Event::InitApply(node("a", "u1", "False", T1)));
        }
        feed.apply(&Event::InitApply(node("b", "u2", "True", T0)));
        feed.apply(&Event::InitDone);
        assert_eq!(ready_count(&feed, "a"), Some(1));
        assert_eq!(records(&sink), [("a".into(), "True".into(), "False".into())]);
        // The watch goes on from the relist: the next change counts against what it stored.
        feed.apply(&Event::Apply(node("a", "u1", "True", T2)));
        assert_eq!(ready_count(&feed, "a"), Some(2));
        assert_eq!(records(&sink), [("a".into(), "False".into(), "True".into())]);
    }

    /// A node deleted and created again under its name while the watch was
    /// not looking is another node: its counters start at zero, and its
    /// state is its initial state, not a change.
    #[test]
    fn a_node_recreated_in_a_gap_starts_afresh() {
        let (mut feed, sink) = feed();
        list(&mut feed, &[node("a", "u1", "True", T0)]);
        feed.apply(&Event::Apply(node("a", "u1", "False", T1)));
        assert_eq!(ready_count(&feed, "a"), Some(1));
        records(&sink);
        list(&mut feed, &[node("a", "u9", "True", T2)]);
        assert_eq!(ready_count(&feed, "a"), Some(0));
        assert!(records(&sink).is_empty());
        assert_eq!(
            feed.view()
                .node("a")
                .and_then(|n| n.metadata.uid.clone())
                .as_deref(),
            Some("u9")
        );
    }

    /// A flap that began and ended in a gap leaves the status as it was and
    /// a newer transition time: at least two changes, counted as two, and
    /// one record whose previous status is the status.
    #[test]
    fn a_flap_inside_a_gap_counts_two_and_is_recorded() {
        let (mut feed, sink) = feed();
        list(&mut feed, &[node("a", "u1", "True", T0)]);
        list(&mut feed, &[node("a", "u1", "True", T2)]);
        assert_eq!(ready_count(&feed, "a"), Some(2));
        assert_eq!(records(&sink), [("a".into(), "True".into(), "True".into())]);
        // The same again is nothing new.
        list(&mut feed, &[node("a", "u1", "True", T2)]);
        assert_eq!(ready_count(&feed, "a"), Some(2));
        assert!(records(&sink).is_empty());
    }

    /// A live update that moves only the transition time (node-problem-
    /// detector does when a condition's reason changes) is no status change:
    /// the watch delivers every one.
    #[test]
    fn a_live_update_of_the_transition_time_alone_is_no_change() {
        let (mut feed, sink) = feed();
        list(&mut feed, &[node("a", "u1", "True", T0)]);
        feed.apply(&Event::Apply(node("a", "u1", "True", T1)));
        assert_eq!(ready_count(&feed, "a"), Some(0));
        assert!(records(&sink).is_empty());
    }
}

//! The watch loop: a streaming or paginated LIST, then WATCH from its
//! resourceVersion ([`super::watcher`]), in either encoding ([`super::wire`]),
//! into the view, with its health counted.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::node::{Node, ResourceList};
use futures::StreamExt;
use kube::{
    Client,
    runtime::{WatchStreamExt, watcher::Event},
};
use tracing::{Span, debug, info, info_span, warn};

use super::{
    Feed, condition_changes,
    health::{ErrorReason, EventKind},
    proto::ProtoError,
    watcher::{self, Delivered, Step, WatchError},
    wire::{self, Encoding},
};

/// Which node labels to keep: the view does not know what readings need,
/// so whoever wires it up says.
pub type KeepLabel = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What to keep of each Node beyond what every reading reads: the view does
/// not know what readings need, so whoever wires it up says.
#[derive(Clone)]
pub struct Keep {
    /// Which labels.
    pub label: KeepLabel,
    /// Every address, not only the internal IP (`kube_node_status_addresses`).
    pub all_addresses: bool,
}

/// Drops what decoding could not skip before a Node is stored, keeping the
/// labels `keep_label` accepts.
///
/// Decoding into [`Node`] already leaves out images, managed fields' contents
/// below metadata and every field no reading reads (condition reasons and
/// messages are decoded, and taken off by the watch loop once the condition
/// changes they explain are found: `condition_changes::take_details`); what
/// is left to drop is metadata (which must stay k8s-openapi's `ObjectMeta`
/// for the reflector) and addresses no reading reads. Vectors are shrunk to
/// fit: serde grows them by doubling, and each stored node keeps its slack.
/// Resource lists equal to another node's are shared.
pub fn strip(node: &mut Node, keep_label: &dyn Fn(&str) -> bool) {
    strip_keeping(node, keep_label, false)
}

/// [`strip`], keeping every address when `all_addresses`.
pub fn strip_keeping(node: &mut Node, keep_label: &dyn Fn(&str) -> bool, all_addresses: bool) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.self_link = None;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| keep_label(k));
    }
    // An emptied map can keep its root node (~500 bytes): most nodes keep no label at all.
    if meta.labels.as_ref().is_some_and(|l| l.is_empty()) {
        meta.labels = None;
    }
    if let Some(taints) = node.spec.as_mut().and_then(|s| s.taints.as_mut()) {
        taints.shrink_to_fit();
    }
    if let Some(status) = node.status.as_mut() {
        // Only the internal IP is read (info), unless every address is served.
        if let Some(addresses) = status.addresses.as_mut() {
            if !all_addresses {
                addresses.retain(|a| a.type_ == "InternalIP");
            }
            addresses.shrink_to_fit();
        }
        if let Some(conditions) = status.conditions.as_mut() {
            conditions.shrink_to_fit();
        }
        status.capacity = status.capacity.take().map(ResourceList::shared);
        status.allocatable = status.allocatable.take().map(ResourceList::shared);
    }
}

fn reason(err: &WatchError) -> ErrorReason {
    match err {
        WatchError::Api { step, .. } | WatchError::Transport { step, .. } => match (step, err) {
            (Step::List, _) => ErrorReason::ListFailed,
            (Step::WatchStart, _) => ErrorReason::WatchStartFailed,
            (Step::Watch, WatchError::Api { .. }) => ErrorReason::WatchError,
            (Step::Watch, _) => ErrorReason::WatchFailed,
        },
        WatchError::Decode(e) => match e {
            ProtoError::BadMagic => ErrorReason::BadMagic,
            ProtoError::Truncated { .. } => ErrorReason::TruncatedFrame,
            ProtoError::FrameTooLarge { .. } => ErrorReason::FrameTooLarge,
            ProtoError::Undecodable { .. }
            | ProtoError::UnexpectedKind { .. }
            | ProtoError::UnknownEventType(_) => ErrorReason::UndecodableObject,
        },
        WatchError::UnknownContentType(_) => ErrorReason::UnknownContentType,
        WatchError::NoResourceVersion => ErrorReason::NoResourceVersion,
    }
}

/// The server-side length of each WATCH for a client that gives up on
/// `api_timeout` of silence: three quarters of it, so that a healthy watch on a
/// quiet cluster (no events, and no bookmarks from servers that send none)
/// ends and is renewed before it could be taken for a dead one.
pub fn watch_timeout_secs(api_timeout: Duration) -> u32 {
    let secs = api_timeout.as_secs();
    u32::try_from(secs - secs / 4).unwrap_or(u32::MAX).max(1)
}

/// Runs the watch until the stream ends (it does not on its own: errors are
/// retried with `default_backoff`), storing through `feed` and reporting into
/// `health`. The client must time out reads after `api_timeout`.
pub async fn run(client: Client, mut feed: Feed, keep: Keep, api_timeout: Duration, encoding: Encoding) {
    let health = feed.view().health().clone();
    // A streaming list (or a paginated LIST) at the most recent
    // resourceVersion, then WATCH from it with bookmarks. No periodic relist:
    // only 410 Gone forces one. Pages of 100, not client-go's 500: a page of
    // full Nodes is garbage as soon as it is decoded, and smaller pages leave
    // less of it interleaved with the stored nodes; at 10,000 nodes the
    // resident size after the LIST dropped from ~137 to ~88 MiB.
    let source = wire::Http {
        client,
        path: wire::NODES.to_string(),
        encoding,
        page_size: 100,
        timeout_secs: watch_timeout_secs(api_timeout),
        kind: std::marker::PhantomData,
    };
    let prepare: watcher::Prepare =
        Box::new(move |node| strip_keeping(node, &*keep.label, keep.all_addresses));
    let stream = watcher::watch(source, true, prepare).default_backoff();
    let mut stream = std::pin::pin!(stream);
    health.set_running(true);
    let mut list_span: Option<Span> = None;
    let mut listed = 0u64;
    while let Some(item) = stream.next().await {
        match item {
            // A re-post found unchanged before it was decoded: counted as the feed counts one it drops.
            Ok(Delivered::Unchanged) => {
                if health.on_event(EventKind::Unchanged) {
                    info!("node watch recovered");
                }
            }
            Ok(Delivered::Event(mut event)) => {
                // Reasons and messages serve condition-change records; the view keeps statuses.
                let details = match &mut event {
                    Event::Apply(node) | Event::InitApply(node) => condition_changes::take_details(node),
                    _ => Vec::new(),
                };
                let kind = feed.apply_detailed(&event, &details);
                match kind {
                    EventKind::Init => {
                        let relist = health.stats().events(EventKind::Init) > 0;
                        let span = info_span!("watch.list", relist, nodes = tracing::field::Empty);
                        span.in_scope(|| debug!(relist, "listing nodes"));
                        list_span = Some(span);
                        listed = 0;
                    }
                    EventKind::InitApply => listed += 1,
                    EventKind::InitDone => {
                        if let Some(span) = list_span.take() {
                            span.record("nodes", listed);
                            span.in_scope(|| info!(nodes = listed, "node list synced; watching"));
                        }
                    }
                    _ => {}
                }
                if health.on_event(kind) {
                    info!("node watch recovered");
                }
            }
            Err(err) => {
                let reason = reason(&err);
                if health.on_error(reason, Instant::now()) {
                    if err.is_forbidden() {
                        warn!(
                            error = %err,
                            "forbidden: this service account needs `get`, `list` and `watch` on `nodes` \
                             (a ClusterRole bound with a ClusterRoleBinding); retrying with backoff"
                        );
                    } else {
                        warn!(error = %err, reason = reason.as_str(), encoding = encoding.as_str(), "node watch failing; serving last known view, retrying with backoff");
                    }
                } else {
                    debug!(error = %err, reason = reason.as_str(), "node watch still failing");
                }
            }
        }
    }
    health.set_running(false);
    warn!("node watcher stopped");
}

/// Spawns `run` on the runtime. Each (re)list is its own root span: a span
/// for the watcher's whole life would never end, and traces under it never close.
pub fn spawn(
    client: Client,
    feed: Feed,
    keep: Keep,
    api_timeout: Duration,
    encoding: Encoding,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(client, feed, keep, api_timeout, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_end_well_before_the_client_would_give_up_on_them() {
        for (api_timeout, want) in [
            (4, 3),
            (10, 8),
            (60, 45),
            (120, 90),
            (400, 300),
            (u64::MAX, u32::MAX),
        ] {
            let got = watch_timeout_secs(Duration::from_secs(api_timeout));
            assert_eq!(got, want, "{api_timeout}");
        }
    }

    /// A generated node as the watch stores it, after `change` to its JSON.
    fn stored(change: impl FnOnce(&mut serde_json::Value)) -> Node {
        let mut json = crate::fake::generated_node(3, 10, "2026-11-27T00:00:00Z");
        json["metadata"]["labels"]["topology.kubernetes.io/zone"] = "z1".into();
        change(&mut json);
        let mut node: Node = serde_json::from_value(json).expect("decodes");
        strip(&mut node, &|k| k.starts_with("topology.kubernetes.io/"));
        // The watch loop takes reasons and messages off before the feed stores the node.
        condition_changes::take_details(&mut node);
        node
    }

    fn set_condition(json: &mut serde_json::Value, type_: &str, field: &str, value: &str) {
        for c in json["status"]["conditions"].as_array_mut().expect("conditions") {
            if c["type"] == type_ {
                c[field] = value.into();
            }
        }
    }

    /// What a kubelet re-post, an image pull or an annotation changes is not
    /// content; what any reading reads is.
    #[test]
    fn only_what_readings_read_is_a_change() {
        let before = stored(|_| {});
        for (what, change, same) in [
            (
                "a new resourceVersion",
                (|j| j["metadata"]["resourceVersion"] = "99".into()) as fn(&mut serde_json::Value),
                true,
            ),
            (
                "heartbeat times",
                (|j| {
                    j["metadata"]["resourceVersion"] = "11".into();
                    for c in j["status"]["conditions"].as_array_mut().expect("conditions") {
                        c["lastHeartbeatTime"] = "2026-11-27T00:05:00Z".into();
                    }
                }),
                true,
            ),
            (
                "a condition message",
                (|j| set_condition(j, "Ready", "message", "kubelet is still posting ready status")),
                true,
            ),
            (
                "images and volumes in use",
                (|j| {
                    j["status"]["images"] = serde_json::json!([{"names": ["registry/x:1"], "sizeBytes": 5}]);
                    j["status"]["volumesInUse"] = serde_json::json!(["kubernetes.io/csi/pd^disk-1"]);
                }),
                true,
            ),
            (
                "an annotation",
                (|j| j["metadata"]["annotations"]["x"] = "y".into()),
                true,
            ),
            (
                "a label no reading keeps",
                (|j| j["metadata"]["labels"]["team"] = "a".into()),
                true,
            ),
            ("Ready", (|j| set_condition(j, "Ready", "status", "False")), false),
            (
                "a transition time",
                (|j| set_condition(j, "Ready", "lastTransitionTime", "2026-11-27T00:05:00Z")),
                false,
            ),
            (
                "a kept label",
                (|j| j["metadata"]["labels"]["topology.kubernetes.io/zone"] = "z2".into()),
                false,
            ),
            (
                "a taint",
                (|j| j["spec"]["taints"] = serde_json::json!([{"key": "k", "effect": "NoSchedule"}])),
                false,
            ),
            ("a cordon", (|j| j["spec"]["unschedulable"] = true.into()), false),
            (
                "allocatable",
                (|j| j["status"]["allocatable"]["pods"] = "111".into()),
                false,
            ),
            (
                "a deletion",
                (|j| j["metadata"]["deletionTimestamp"] = "2026-11-27T00:05:00Z".into()),
                false,
            ),
        ] {
            let after = stored(change);
            assert_eq!(before.same_content(&after), same, "{what}");
            assert_eq!(after.same_content(&before), same, "{what}, the other way");
        }
    }

    #[test]
    fn strip_keeps_what_readings_need() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "a",
                "uid": "u",
                "labels": {"zone": "z1", "beta.kubernetes.io/os": "linux"},
                "annotations": {"big": "x".repeat(10_000)},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
            },
            "status": {
                "images": [{"names": ["img"], "sizeBytes": 1}],
                "addresses": [
                    {"type": "Hostname", "address": "a"},
                    {"type": "InternalIP", "address": "10.0.0.1"},
                ],
                "conditions": [{"type": "Ready", "status": "True", "message": "kubelet is posting ready status"}],
            },
        }))
        .expect("decodes");
        strip(&mut node, &|k| k == "zone");
        assert_eq!(node.metadata.name.as_deref(), Some("a"));
        assert_eq!(
            node.metadata.labels,
            Some([("zone".to_string(), "z1".to_string())].into())
        );
        assert!(node.metadata.annotations.is_none());
        assert!(node.metadata.managed_fields.is_none());
        assert_eq!(
            node.metadata.uid.as_deref(),
            Some("u"),
            "the k8s.node entity's identity"
        );
        let status = node.status.as_ref().unwrap();
        let addresses = status.addresses.as_ref().unwrap();
        assert_eq!(addresses.len(), 1);
        assert_eq!(addresses[0].address, "10.0.0.1");
        let c = &status.conditions.as_ref().unwrap()[0];
        assert_eq!((c.type_.as_str(), c.status.api()), ("Ready", "True"));
    }
}

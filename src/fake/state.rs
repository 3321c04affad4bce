//! What the fake API server holds: its nodes and their history of watch
//! events (each written once in both encodings), the switches tests flip,
//! and its counters.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64},
    time::Duration,
};

use axum::body::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::{
    gate::{Gate, now_rfc3339},
    leases::Leases,
    node_leases::NodeLeases,
    protobuf,
    reviews::Reviews,
};

pub(super) struct Store {
    pub(super) rv: u64,
    pub(super) nodes: BTreeMap<String, StoredNode>,
    /// Serialized watch events (with their resourceVersion), oldest first.
    pub(super) history: VecDeque<(u64, WireEvent)>,
    /// Events at or below this resourceVersion are gone: resuming from before it is 410.
    pub(super) compacted: u64,
}

/// A node as the server keeps it: its object encoded once in each encoding
/// when it is written, as the API server's watch cache keeps its
/// serializations. A LIST or a streaming list then copies bytes rather than
/// encoding every node under the store's lock, and 130,000 nodes fit in
/// memory (a parsed `Value` is several times its JSON).
#[derive(Clone, Debug)]
pub(super) struct StoredNode {
    /// The object's JSON.
    pub(super) json: Bytes,
    /// The object's protobuf `Node` message, without the `k8s\0` envelope.
    pub(super) protobuf: Bytes,
    /// Its `topology.kubernetes.io/zone` label, for zone outages.
    pub(super) zone: Option<Box<str>>,
}

impl StoredNode {
    pub(super) fn new(object: &Value) -> StoredNode {
        StoredNode {
            json: Bytes::from(object.to_string()),
            protobuf: Bytes::from(protobuf::node_message(object)),
            zone: object["metadata"]["labels"]["topology.kubernetes.io/zone"]
                .as_str()
                .map(Box::from),
        }
    }

    /// The object, parsed again.
    pub(super) fn object(&self) -> Value {
        // Written from a `Value` by `new`, so it parses.
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// The object as a protobuf body: `k8s\0` and the envelope.
    pub(super) fn protobuf_object(&self) -> Vec<u8> {
        protobuf::envelope("v1", "Node", self.protobuf.to_vec())
    }

    /// A watch event of `kind` about this node, in one encoding. The JSON
    /// line is written as [`watch_line`] writes one.
    pub(super) fn event(&self, kind: &str, protobuf: bool) -> Bytes {
        if protobuf {
            Bytes::from(protobuf::watch_frame(kind, self.protobuf_object()))
        } else {
            let mut line = Vec::with_capacity(self.json.len() + 40);
            line.extend_from_slice(b"{\"type\":");
            line.extend_from_slice(json!(kind).to_string().as_bytes());
            line.extend_from_slice(b",\"object\":");
            line.extend_from_slice(&self.json);
            line.extend_from_slice(b"}\n");
            Bytes::from(line)
        }
    }
}

/// A watch event as each encoding writes it, serialized once for every watcher.
#[derive(Clone, Debug)]
pub(super) struct WireEvent {
    /// A JSON line.
    pub(super) json: Bytes,
    /// A length-prefixed protobuf frame.
    pub(super) protobuf: Bytes,
}

pub(super) struct Shared {
    pub(super) store: Mutex<Store>,
    /// Held by a zone outage from its first write to its last.
    pub(super) outages: Mutex<()>,
    pub(super) events: broadcast::Sender<(u64, WireEvent)>,
    /// Bumped to end every open watch.
    pub(super) watch_generation: watch::Sender<u64>,
    /// Token, throttling and RBAC checks.
    pub(super) gate: Arc<Gate>,
    /// Milliseconds to wait before answering a node LIST or WATCH.
    pub(super) delay_ms: AtomicU64,
    /// LIST pages after the first still to be refused with 500.
    pub(super) failing_pages: AtomicU64,
    /// While true the server is a black hole for nodes: LISTs and WATCHes get
    /// no answer, open watches send nothing (not even their end), connections stay open.
    pub(super) frozen: watch::Sender<bool>,
    /// Streaming lists are served.
    pub(super) streaming_lists: bool,
    /// Each node's status is re-posted once per this many milliseconds (0: never).
    pub(super) repost_period_ms: AtomicU64,
    /// What the next watch is to be broken with.
    pub(super) breakage: Mutex<Option<Breakage>>,
    /// Nodes the autoscaler replaces per minute, as `f64` bits (0: off).
    pub(super) autoscaler: AtomicU64,
    /// Leases, for leader election.
    pub(super) leases: Arc<Leases>,
    /// The node Leases in `kube-node-lease`, their kubelets and the node
    /// lifecycle controller, when the server keeps them.
    pub(super) node_leases: Option<Arc<NodeLeases>>,
    /// Tokens and /metrics readers, for TokenReview and SubjectAccessReview.
    pub(super) reviews: Arc<Reviews>,
    /// RBAC in force, if any.
    pub(super) rbac: Option<Arc<super::rbac::Policy>>,
    pub(super) history: usize,
    pub(super) bookmark_interval: Duration,
    pub(super) lists: AtomicU64,
    pub(super) full_lists: AtomicU64,
    pub(super) watches: AtomicU64,
    pub(super) bytes: AtomicU64,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Content-Type the next watch is to be answered with, if a test broke it.
    pub(super) fn injected_content_type(&self) -> Option<String> {
        let mut b = self.breakage.lock().unwrap_or_else(|e| e.into_inner());
        (*b == Some(Breakage::ContentType)).then(|| {
            *b = None;
            "application/yaml".to_string()
        })
    }

    /// The broken bytes a watch in this encoding is to send, if a test asked.
    pub(super) fn take_injected(&self, protobuf: bool) -> Option<Bytes> {
        let mut b = self.breakage.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = (*b)?.bytes(protobuf)?;
        *b = None;
        Some(bytes)
    }

    /// Re-posts node `name`'s status as a kubelet does every
    /// `nodeStatusReportFrequency` even when nothing changed: new heartbeat
    /// times on every condition, and with `extra` a new `volumesInUse` and
    /// image list too (fields no reading reads). False if the node does not exist.
    pub(super) fn repost_status(&self, name: &str, extra: Option<u64>) -> bool {
        // A killed kubelet posts nothing.
        if self.node_leases.as_ref().is_some_and(|l| !l.is_alive(name)) {
            return true;
        }
        let mut store = self.lock();
        let Some(mut node) = store.nodes.get(name).map(StoredNode::object) else {
            return false;
        };
        let now = now_rfc3339();
        if let Some(conditions) = node["status"]["conditions"].as_array_mut() {
            for c in conditions {
                c["lastHeartbeatTime"] = json!(now);
            }
        }
        if let Some(n) = extra {
            node["status"]["volumesInUse"] =
                json!([format!("kubernetes.io/csi/pd.csi.storage.gke.io^disk-{n}")]);
            node["status"]["images"] = json!([{
                "names": [format!("europe-docker.pkg.dev/app/web@sha256:{n:064x}")],
                "sizeBytes": 52_428_800 + n % 1024,
            }]);
        }
        self.publish(&mut store, "MODIFIED", node);
        true
    }

    /// Sets (or adds) condition `type_` of node `name` to `status`. False if the node does not exist.
    pub(super) fn set_condition(&self, name: &str, type_: &str, status: &str) -> bool {
        let mut store = self.lock();
        self.set_condition_in(&mut store, name, type_, status, &now_rfc3339())
    }

    fn set_condition_in(&self, store: &mut Store, name: &str, type_: &str, status: &str, now: &str) -> bool {
        let Some(mut node) = store.nodes.get(name).map(StoredNode::object) else {
            return false;
        };
        let conditions = &mut node["status"]["conditions"];
        if !conditions.is_array() {
            *conditions = json!([]);
        }
        let list = conditions.as_array_mut().expect("made an array above");
        let (reason, message) = super::nodes::reason_and_message(type_, status);
        match list.iter_mut().find(|c| c["type"] == type_) {
            Some(c) => {
                if c["status"] != status {
                    // A new status comes with its own reason and message, as a kubelet gives them.
                    c["lastTransitionTime"] = json!(now);
                    c["reason"] = json!(reason);
                    c["message"] = json!(message);
                }
                c["status"] = json!(status);
                c["lastHeartbeatTime"] = json!(now);
            }
            None => list.push(json!({
                "type": type_, "status": status, "lastHeartbeatTime": now, "lastTransitionTime": now,
                "reason": reason, "message": message,
            })),
        }
        self.publish(store, "MODIFIED", node);
        true
    }

    /// Sets Ready to `status` on every node of `zone` (its
    /// `topology.kubernetes.io/zone` label), or else on the first `fraction`
    /// of the nodes by name, in one burst: as the node lifecycle controller
    /// does when a zone's kubelets all stop posting. Returns their names.
    pub(super) fn outage(&self, zone: Option<&str>, fraction: f64, status: &str) -> Vec<String> {
        // One outage at a time: two would interleave their writes.
        let _one = self.outages.lock().unwrap_or_else(|e| e.into_inner());
        let store = self.lock();
        let names: Vec<String> = match zone {
            Some(zone) => store
                .nodes
                .iter()
                .filter(|(_, n)| n.zone.as_deref() == Some(zone))
                .map(|(name, _)| name.clone())
                .collect(),
            None => {
                let count = (store.nodes.len() as f64 * fraction.clamp(0.0, 1.0)).round() as usize;
                store.nodes.keys().take(count).cloned().collect()
            }
        };
        drop(store);
        // One write each, taking the lock for each as the API server takes
        // one request at a time: held for the whole burst, it would stall
        // every watch's bookmarks for seconds at 100,000 nodes.
        // A node deleted in between is not one it set.
        let now = now_rfc3339();
        let mut names = names;
        names.retain(|name| self.set_condition_in(&mut self.lock(), name, "Ready", status, &now));
        names
    }

    /// What the node lifecycle controller does to a node whose Lease went
    /// unrenewed for the grace period (`unreachable`): every kubelet
    /// condition but NetworkUnavailable `Unknown`, and the
    /// `node.kubernetes.io/unreachable` taints, NoSchedule and NoExecute. Or,
    /// once the Lease is renewed again, takes the taints off. False if the
    /// node does not exist.
    pub(super) fn mark_unreachable(&self, name: &str, unreachable: bool) -> bool {
        const TAINT: &str = "node.kubernetes.io/unreachable";
        let now = now_rfc3339();
        let mut store = self.lock();
        let Some(mut node) = store.nodes.get(name).map(StoredNode::object) else {
            return false;
        };
        if unreachable {
            let (reason, message) = super::nodes::reason_and_message("Ready", "Unknown");
            for c in node["status"]["conditions"].as_array_mut().into_iter().flatten() {
                let kubelets = super::nodes::KUBELET_CONDITIONS.iter().any(|k| c["type"] == *k);
                if kubelets && c["type"] != "NetworkUnavailable" && c["status"] != "Unknown" {
                    c["status"] = json!("Unknown");
                    c["lastTransitionTime"] = json!(now);
                    c["reason"] = json!(reason);
                    c["message"] = json!(message);
                }
            }
        }
        let taints = &mut node["spec"]["taints"];
        if !taints.is_array() {
            *taints = json!([]);
        }
        if let Some(list) = taints.as_array_mut() {
            list.retain(|t| t["key"] != TAINT);
            if unreachable {
                for effect in ["NoSchedule", "NoExecute"] {
                    list.push(json!({"key": TAINT, "effect": effect, "timeAdded": now}));
                }
            }
        }
        self.publish(&mut store, "MODIFIED", node);
        true
    }

    /// Kills or revives node `name`'s kubelet (see
    /// `FakeApiServer::set_kubelet_alive`). False without a Lease.
    pub(super) fn set_kubelet_alive(&self, name: &str, alive: bool) -> bool {
        let Some(leases) = &self.node_leases else {
            return false;
        };
        if !leases.set_alive(name, alive) {
            return false;
        }
        if alive {
            self.post_healthy(name);
        }
        true
    }

    /// What a kubelet that comes back posts: Ready `True`, no pressure.
    pub(super) fn post_healthy(&self, name: &str) -> bool {
        let now = now_rfc3339();
        let mut store = self.lock();
        ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
            .into_iter()
            .all(|c| {
                let status = if c == "Ready" { "True" } else { "False" };
                self.set_condition_in(&mut store, name, c, status, &now)
            })
    }

    /// Adds taint `key` with `effect` to node `name`. False if the node does not exist.
    pub(super) fn taint(&self, name: &str, key: &str, effect: &str) -> bool {
        let mut store = self.lock();
        let Some(mut node) = store.nodes.get(name).map(StoredNode::object) else {
            return false;
        };
        let taints = &mut node["spec"]["taints"];
        if !taints.is_array() {
            *taints = json!([]);
        }
        if let Some(list) = taints.as_array_mut() {
            list.push(json!({"key": key, "effect": effect, "value": now_rfc3339()}));
        }
        self.publish(&mut store, "MODIFIED", node);
        true
    }

    pub(super) fn delete_node(&self, name: &str) -> bool {
        let mut store = self.lock();
        let Some(node) = store.nodes.get(name).map(StoredNode::object) else {
            return false;
        };
        self.publish(&mut store, "DELETED", node);
        true
    }

    /// Like etcd compaction in a busy cluster: other writes moved the global
    /// resourceVersion on, and everything up to it is forgotten.
    pub(super) fn compact(&self) {
        let mut store = self.lock();
        store.rv += 1;
        store.history.clear();
        store.compacted = store.rv;
        if let Some(leases) = &self.node_leases {
            leases.compact();
        }
    }

    pub(super) fn close_watches(&self) {
        self.watch_generation.send_modify(|g| *g += 1);
        if let Some(leases) = &self.node_leases {
            leases.close_watches();
        }
    }

    /// Stores `object` under the next resourceVersion and publishes the event.
    pub(super) fn publish(&self, store: &mut Store, kind: &str, mut object: Value) -> u64 {
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        // Serialized once in each encoding; every watcher shares the same bytes.
        let stored = StoredNode::new(&object);
        let line = WireEvent {
            json: stored.event(kind, false),
            protobuf: stored.event(kind, true),
        };
        if let Some(name) = object["metadata"]["name"].as_str() {
            let added = match kind {
                "DELETED" => store.nodes.remove(name).is_none(),
                _ => store.nodes.insert(name.to_string(), stored).is_none(),
            };
            // A joining node's kubelet creates its Lease; the garbage collector
            // deletes it after the node. (Lock order: nodes, then Leases.)
            if let Some(leases) = &self.node_leases {
                match kind {
                    "DELETED" => leases.remove(name),
                    _ if added => leases.ensure(name, object["metadata"]["uid"].as_str().unwrap_or(name)),
                    _ => {}
                }
            }
        }
        store.history.push_back((rv, line.clone()));
        while store.history.len() > self.history {
            if let Some((old, _)) = store.history.pop_front() {
                store.compacted = old;
            }
        }
        // Sent under the lock, so a watcher that drains its channel under the
        // lock knows it has seen every event up to `store.rv`.
        let _ = self.events.send((rv, line));
        rv
    }
}

/// Broken bytes a test asks the next watch to send (then it ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Breakage {
    /// A protobuf object without the `k8s\0` magic.
    BadMagic,
    /// A frame cut short by the end of the stream.
    Truncated,
    /// A frame declaring 64 MiB.
    Oversize,
    /// An object that does not decode (in either encoding).
    Undecodable,
    /// A response Content-Type no client reads.
    ContentType,
}

impl Breakage {
    /// The bytes, for a protobuf or a JSON watch (`None`: not for that encoding).
    pub(super) fn bytes(self, protobuf: bool) -> Option<Bytes> {
        use super::protobuf::{envelope, watch_frame};
        let frame = match (self, protobuf) {
            (Breakage::BadMagic, true) => watch_frame("MODIFIED", b"k9s\0not a node".to_vec()),
            (Breakage::Truncated, true) => [&1000u32.to_be_bytes()[..], &[0x0a; 10]].concat(),
            (Breakage::Oversize, true) => [&(64u32 << 20).to_be_bytes()[..], &[0x0a; 10]].concat(),
            (Breakage::Undecodable, true) => watch_frame("MODIFIED", envelope("v1", "Node", vec![0xff; 16])),
            (Breakage::Undecodable, false) => b"{\"type\":\"MODIFIED\",\"object\":[1,2]}\n".to_vec(),
            _ => return None,
        };
        Some(Bytes::from(frame))
    }
}

/// One line of a watch stream, `type` before `object` as the API server
/// writes it (Go encodes struct fields in order). A `json!` map would sort
/// `object` first, and clients that decode the event as an adjacently
/// tagged enum (kube's `WatchEvent`) must then buffer the whole object
/// before they know what it is: twice the decode cost of the real thing.
pub(super) fn watch_line(kind: &str, object: &Value) -> String {
    format!("{{\"type\":{},\"object\":{object}}}\n", json!(kind))
}

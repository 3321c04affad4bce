//! A fake Kubernetes API server for Nodes that speaks the real HTTP protocol:
//! paginated LIST with resourceVersion and limit/continue, WATCH streams with
//! ADDED/MODIFIED/DELETED/BOOKMARK, 410 Gone for a resourceVersion that is too
//! old, and 401/403 for a wrong token or missing permission; and the
//! `coordination.k8s.io/v1` Leases leader election writes (see `leases`).
//!
//! It also lets tests break it on purpose: close every watch, compact history
//! (forcing 410 on resume), refuse with 403, or stop and restart the listener.

use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::Stream;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{broadcast, watch},
};

use super::{
    gate::{Gate, now_rfc3339, status},
    leases::Leases,
    nodes,
    reviews::Reviews,
};

/// How the fake API server behaves.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Generated nodes at start.
    pub nodes: usize,
    /// Bearer token clients must send; `None` accepts anyone.
    pub token: Option<String>,
    /// Watch events kept for resuming; older resourceVersions get 410 Gone.
    pub history: usize,
    /// How often watches get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// RBAC as a real API server enforces it for one service account
    /// (`None`: every request is allowed).
    pub rbac: Option<Arc<super::rbac::Policy>>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nodes: 5,
            token: None,
            history: 10_000,
            bookmark_interval: Duration::from_secs(10),
            rbac: None,
        }
    }
}

/// Traffic counters, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// LIST requests served (each page counts).
    pub lists: u64,
    /// LIST requests that started a new list (no continue token).
    pub full_lists: u64,
    /// WATCH requests served.
    pub watches: u64,
    /// Bytes of response bodies sent for LIST and WATCH.
    pub bytes: u64,
    /// Requests answered 429 Too Many Requests (see [`FakeApiServer::set_throttled`]).
    pub throttled: u64,
}

struct Store {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    /// Serialized watch events (with their resourceVersion), oldest first.
    history: VecDeque<(u64, Bytes)>,
    /// Events at or below this resourceVersion are gone: resuming from before it is 410.
    compacted: u64,
}

pub(super) struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<(u64, Bytes)>,
    /// Bumped to end every open watch.
    watch_generation: watch::Sender<u64>,
    /// Token, throttling and RBAC checks.
    pub(super) gate: Arc<Gate>,
    /// Milliseconds to wait before answering a node LIST or WATCH.
    delay_ms: AtomicU64,
    /// LIST pages after the first still to be refused with 500.
    failing_pages: AtomicU64,
    /// While true the server is a black hole for nodes: LISTs and WATCHes get
    /// no answer, open watches send nothing (not even their end), connections stay open.
    frozen: watch::Sender<bool>,
    /// Nodes the autoscaler replaces per minute, as `f64` bits (0: off).
    autoscaler: AtomicU64,
    /// Leases, for leader election.
    pub(super) leases: Arc<Leases>,
    /// Tokens and /metrics readers, for TokenReview and SubjectAccessReview.
    pub(super) reviews: Arc<Reviews>,
    /// RBAC in force, if any.
    rbac: Option<Arc<super::rbac::Policy>>,
    history: usize,
    bookmark_interval: Duration,
    lists: AtomicU64,
    full_lists: AtomicU64,
    watches: AtomicU64,
    bytes: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-posts node `name`'s status as a kubelet does every
    /// `nodeStatusReportFrequency` even when nothing changed: new heartbeat
    /// times on every condition, and with `extra` a new `volumesInUse` and
    /// image list too (fields no reading reads). False if the node does not exist.
    fn repost_status(&self, name: &str, extra: Option<u64>) -> bool {
        let mut store = self.lock();
        let Some(mut node) = store.nodes.get(name).cloned() else {
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
    fn set_condition(&self, name: &str, type_: &str, status: &str) -> bool {
        let mut store = self.lock();
        self.set_condition_in(&mut store, name, type_, status, &now_rfc3339())
    }

    fn set_condition_in(&self, store: &mut Store, name: &str, type_: &str, status: &str, now: &str) -> bool {
        let Some(mut node) = store.nodes.get(name).cloned() else {
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
    fn outage(&self, zone: Option<&str>, fraction: f64, status: &str) -> Vec<String> {
        let mut store = self.lock();
        let names: Vec<String> = match zone {
            Some(zone) => store
                .nodes
                .iter()
                .filter(|(_, n)| n["metadata"]["labels"]["topology.kubernetes.io/zone"] == zone)
                .map(|(name, _)| name.clone())
                .collect(),
            None => {
                let count = (store.nodes.len() as f64 * fraction.clamp(0.0, 1.0)).round() as usize;
                store.nodes.keys().take(count).cloned().collect()
            }
        };
        let now = now_rfc3339();
        for name in &names {
            self.set_condition_in(&mut store, name, "Ready", status, &now);
        }
        names
    }

    /// Adds taint `key` with `effect` to node `name`. False if the node does not exist.
    fn taint(&self, name: &str, key: &str, effect: &str) -> bool {
        let mut store = self.lock();
        let Some(mut node) = store.nodes.get(name).cloned() else {
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

    fn delete_node(&self, name: &str) -> bool {
        let mut store = self.lock();
        let Some(node) = store.nodes.get(name).cloned() else {
            return false;
        };
        self.publish(&mut store, "DELETED", node);
        true
    }

    /// Like etcd compaction in a busy cluster: other writes moved the global
    /// resourceVersion on, and everything up to it is forgotten.
    fn compact(&self) {
        let mut store = self.lock();
        store.rv += 1;
        store.history.clear();
        store.compacted = store.rv;
    }

    fn close_watches(&self) {
        self.watch_generation.send_modify(|g| *g += 1);
    }

    /// Stores `object` under the next resourceVersion and publishes the event.
    fn publish(&self, store: &mut Store, kind: &str, mut object: Value) -> u64 {
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        // Serialized once; every watcher shares the same bytes.
        let line = Bytes::from(watch_line(kind, &object));
        match kind {
            "DELETED" => {
                if let Some(name) = object["metadata"]["name"].as_str() {
                    store.nodes.remove(name);
                }
            }
            _ => {
                if let Some(name) = object["metadata"]["name"].as_str() {
                    store.nodes.insert(name.to_string(), object);
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

/// A running fake API server.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    kill: Mutex<Option<watch::Sender<bool>>>,
}

impl FakeApiServer {
    /// Generates the nodes and starts serving.
    pub async fn start(options: FakeOptions) -> std::io::Result<FakeApiServer> {
        let now = now_rfc3339();
        let mut store = Store {
            rv: 1000,
            nodes: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1000,
        };
        for i in 0..options.nodes {
            store.rv += 1;
            let node = nodes::node(i, store.rv, &now);
            store.nodes.insert(nodes::name(i), node);
        }
        store.compacted = store.rv;
        let (events, _) = broadcast::channel(65_536);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            events,
            watch_generation: watch::channel(0).0,
            gate: Arc::new(Gate {
                token: options.token.clone(),
                ..Gate::default()
            }),
            delay_ms: AtomicU64::new(0),
            failing_pages: AtomicU64::new(0),
            frozen: watch::channel(false).0,
            autoscaler: AtomicU64::new(0),
            leases: Arc::default(),
            reviews: Arc::default(),
            history: options.history.max(1),
            bookmark_interval: options.bookmark_interval,
            rbac: options.rbac.clone(),
            lists: AtomicU64::new(0),
            full_lists: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let listener = TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let server = FakeApiServer {
            shared,
            addr,
            kill: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: TcpListener) {
        let (kill_tx, kill_rx) = watch::channel(false);
        *self.kill.lock().unwrap_or_else(|e| e.into_inner()) = Some(kill_tx);
        let app = router(self.shared.clone());
        tokio::spawn(async move {
            let mut stop = kill_rx.clone();
            loop {
                let (socket, _) = tokio::select! {
                    _ = stop.changed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(s) => s,
                        Err(_) => continue,
                    },
                };
                let service = TowerToHyperService::new(app.clone());
                let mut conn_stop = kill_rx.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service);
                    // Dropping the connection future closes the socket: that is what "killed" means.
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.changed() => {}
                    }
                });
            }
        });
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:12345`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig document pointing at this server (with the token, if any).
    pub fn kubeconfig(&self) -> String {
        let user = match &self.shared.gate.token {
            Some(t) => format!("{{token: {t}}}"),
            None => "{}".to_string(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\n\
             users:\n- name: fake\n  user: {user}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\n\
             current-context: fake\n",
            self.url()
        )
    }

    /// Stops listening and closes every connection, as if the API server died.
    pub fn stop(&self) {
        if let Some(kill) = self.kill.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = kill.send(true);
        }
    }

    /// Listens again on the same address after [`stop`](Self::stop).
    pub async fn restart(&self) -> std::io::Result<()> {
        // The old sockets may take a moment to release the port.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.serve(listener);
        Ok(())
    }

    /// Names of the stored nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.shared.lock().nodes.keys().cloned().collect()
    }

    /// Sets (or adds) condition `type_` of node `name` to `status`. False if the node does not exist.
    pub fn set_condition(&self, name: &str, type_: &str, status: &str) -> bool {
        self.shared.set_condition(name, type_, status)
    }

    /// The stored object of node `name`, as the API serves it.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.lock().nodes.get(name).cloned()
    }

    /// Re-posts a node's status with nothing changed but heartbeat times, as
    /// a kubelet does every 5 minutes. False if the node does not exist.
    pub fn repost_status(&self, name: &str) -> bool {
        self.shared.repost_status(name, None)
    }

    /// Replaces a node's whole object (or adds it): for malformed-object tests.
    pub fn put_node(&self, mut object: Value) -> bool {
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
            return false;
        };
        let mut store = self.shared.lock();
        let kind = if store.nodes.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        object["kind"] = json!("Node");
        object["apiVersion"] = json!("v1");
        self.shared.publish(&mut store, kind, object);
        true
    }

    /// Sets the autoscaler's pace (nodes replaced per minute; 0 pauses it).
    pub fn set_autoscaler(&self, per_minute: f64) {
        self.shared
            .autoscaler
            .store(per_minute.max(0.0).to_bits(), Ordering::Release);
    }

    /// Sets Ready to `status` on every node of `zone`, or else on the first
    /// `fraction` of the nodes by name, in one burst. Returns their names.
    pub fn outage(&self, zone: Option<&str>, fraction: f64, status: &str) -> Vec<String> {
        self.shared.outage(zone, fraction, status)
    }

    /// Adds the generated node number `i`.
    pub fn add_generated(&self, i: usize) -> String {
        let node = nodes::node(i, 0, &now_rfc3339());
        self.put_node(node);
        nodes::name(i)
    }

    /// Deletes a node. False if it does not exist.
    pub fn delete_node(&self, name: &str) -> bool {
        self.shared.delete_node(name)
    }

    /// Ends every open watch stream (clients resume from their last resourceVersion).
    pub fn close_watches(&self) {
        self.shared.close_watches()
    }

    /// Forgets all watch history: resuming from any earlier resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.shared.compact()
    }

    /// Refuses every API request with 403 (as if RBAC were missing) while `on`.
    pub fn set_forbidden(&self, on: bool) {
        self.shared.gate.forbidden.store(on, Ordering::Release);
    }

    /// Tokens and /metrics readers for TokenReview and SubjectAccessReview.
    pub fn reviews(&self) -> &Reviews {
        &self.shared.reviews
    }

    /// Creates or replaces a Lease, as applying a chart's manifest does
    /// (false without a name and namespace).
    pub fn put_lease(&self, lease: Value) -> bool {
        self.shared.leases.put(lease)
    }

    /// The Lease `namespace/name`, as stored.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared.leases.get(namespace, name)
    }

    /// Traffic so far.
    pub fn stats(&self) -> FakeStats {
        let s = &self.shared;
        FakeStats {
            lists: s.lists.load(Ordering::Relaxed),
            full_lists: s.full_lists.load(Ordering::Relaxed),
            watches: s.watches.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            throttled: s.gate.throttled.load(Ordering::Relaxed),
        }
    }

    /// Waits `delay` before answering each node LIST page or WATCH (a slow API server).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Release);
    }

    /// Refuses the next `pages` LIST pages after a first page (requests with
    /// a `continue` token) with 500, as an API server that fails mid-list
    /// does: the client must start its list again from the first page.
    pub fn fail_list_pages(&self, pages: u64) {
        self.shared.failing_pages.store(pages, Ordering::Release);
    }

    /// Stops answering node LISTs and WATCHes and sending on open watches,
    /// without closing anything (a partitioned or hung API server), while `true`.
    pub fn set_frozen(&self, frozen: bool) {
        self.shared.frozen.send_replace(frozen);
    }

    /// Answers every API request 429 Too Many Requests with `Retry-After`
    /// (as API Priority and Fairness does when shedding load) while `Some`.
    pub fn set_throttled(&self, retry_after: Option<Duration>) {
        let secs = retry_after.map_or(0, |d| d.as_secs().max(1));
        self.shared.gate.throttle.store(secs, Ordering::Release);
    }

    /// Flips Ready on random nodes, `per_second` times a second on average,
    /// until the returned task is aborted. The task keeps the server alive.
    pub fn spawn_churn(self: &Arc<Self>, per_second: f64) -> tokio::task::JoinHandle<()> {
        let server = self.clone();
        // The task holds a reference to the server until it is aborted, even without churn.
        tokio::spawn(async move {
            if per_second <= 0.0 {
                let _hold = server;
                return std::future::pending::<()>().await;
            }
            let period = Duration::from_secs_f64(1.0 / per_second);
            let mut tick = tokio::time::interval(period);
            let mut rng = fastrand::Rng::with_seed(42);
            loop {
                tick.tick().await;
                let names = server.node_names();
                if names.is_empty() {
                    continue;
                }
                let name = &names[rng.usize(..names.len())];
                let ready = server.shared.lock().nodes.get(name).map(|n| {
                    n["status"]["conditions"]
                        .as_array()
                        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                        .is_some_and(|c| c["status"] == "True")
                });
                let next = match ready {
                    Some(true) if rng.u8(..4) == 0 => "Unknown",
                    Some(true) => "False",
                    _ => "True",
                };
                server.set_condition(name, "Ready", next);
            }
        })
    }

    /// Replaces nodes as the cluster autoscaler does, `per_minute` times a
    /// minute (changed later with [`FakeApiServer::set_autoscaler`] or
    /// `POST /fake/autoscaler?per_minute=N`): a scale-down taints a node
    /// `ToBeDeletedByClusterAutoscaler` and deletes it on the next round, a
    /// scale-up adds a node under a new name that joins NotReady and turns
    /// Ready on the round after. The node count stays put. Runs until the
    /// returned task is aborted.
    pub fn spawn_autoscaler(self: &Arc<Self>, per_minute: f64) -> tokio::task::JoinHandle<()> {
        self.set_autoscaler(per_minute);
        let server = self.clone();
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(11);
            // New nodes take indices no generated cluster uses.
            let mut next = 10_000_000usize;
            let (mut draining, mut joining): (Option<String>, Option<String>) = (None, None);
            loop {
                let per_minute = f64::from_bits(server.shared.autoscaler.load(Ordering::Acquire));
                // Off, or between two rounds: look again shortly.
                let period = if per_minute > 0.0 { 60.0 / per_minute } else { 0.5 };
                tokio::time::sleep(Duration::from_secs_f64(period)).await;
                if f64::from_bits(server.shared.autoscaler.load(Ordering::Acquire)) <= 0.0 {
                    continue;
                }
                if let Some(name) = draining.take() {
                    server.delete_node(&name);
                }
                if let Some(name) = joining.take() {
                    server.set_condition(&name, "Ready", "True");
                }
                let names = server.node_names();
                if !names.is_empty() {
                    let victim = names[rng.usize(..names.len())].clone();
                    if server
                        .shared
                        .taint(&victim, "ToBeDeletedByClusterAutoscaler", "NoSchedule")
                    {
                        draining = Some(victim);
                    }
                }
                let name = server.add_generated(next);
                next += 1;
                server.set_condition(&name, "Ready", "False");
                joining = Some(name);
            }
        })
    }

    /// Re-posts every node's status once per `period`, spread evenly over it,
    /// as kubelets do (`nodeStatusReportFrequency`, 5 minutes by default):
    /// heartbeat times only, and on one re-post in 20 a new `volumesInUse`
    /// and image list. Runs until the returned task is aborted.
    pub fn spawn_status_reports(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let server = self.clone();
        tokio::spawn(async move {
            if period.is_zero() {
                let _hold = server;
                return std::future::pending::<()>().await;
            }
            let mut rng = fastrand::Rng::with_seed(7);
            let mut reposts = 0u64;
            loop {
                let names = server.node_names();
                if names.is_empty() {
                    tokio::time::sleep(period).await;
                    continue;
                }
                // One pass over the nodes per period, at an even pace.
                let mut tick = tokio::time::interval(period.div_f64(names.len() as f64));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for name in &names {
                    tick.tick().await;
                    reposts += 1;
                    let extra = (rng.u8(..20) == 0).then_some(reposts);
                    server.shared.repost_status(name, extra);
                }
            }
        })
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/v1/nodes", get(list_or_watch))
        .route("/api/v1/nodes/{name}", get(get_node))
        .route(
            "/version",
            get(|| async { axum::Json(json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake"})) }),
        )
        .route("/fake/nodes/{name}/conditions/{type}", post(admin_set_condition))
        .route("/fake/nodes/{name}", axum::routing::delete(admin_delete))
        .route("/fake/outage", post(admin_outage))
        .route("/fake/autoscaler", post(admin_autoscaler))
        .route("/fake/watches/close", post(admin_close_watches))
        .route("/fake/compact", post(admin_compact))
        .route("/fake/stats", get(admin_stats))
        .merge(super::leases::routes(shared.gate.clone(), shared.leases.clone()))
        .merge(super::reviews::routes(
            shared.gate.clone(),
            shared.reviews.clone(),
        ))
        .with_state(shared.clone());
    match &shared.rbac {
        Some(policy) => api.layer(axum::middleware::from_fn_with_state(
            policy.clone(),
            super::rbac::authorize,
        )),
        None => api,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    watch: Option<String>,
    resource_version: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
    timeout_seconds: Option<u64>,
    allow_watch_bookmarks: Option<bool>,
}

async fn get_node(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = shared.gate.refusal(&headers) {
        return r;
    }
    match shared.lock().nodes.get(&name) {
        Some(node) => ([(header::CONTENT_TYPE, "application/json")], node.to_string()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("nodes \"{name}\" not found"),
        ),
    }
}

async fn list_or_watch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    if let Some(r) = shared.gate.refusal(&headers) {
        return r;
    }
    let delay = shared.delay_ms.load(Ordering::Acquire);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    thawed(&shared).await;
    if matches!(p.watch.as_deref(), Some("true" | "1")) {
        watch_nodes(shared, p)
    } else {
        list_nodes(&shared, &p)
    }
}

fn encode_continue(rv: u64, last: &str) -> String {
    let raw = format!("{rv}/{last}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let (rv, last) = raw.split_once('/')?;
    Some((rv.parse().ok()?, last.to_string()))
}

/// A LIST is always served at the latest resourceVersion, whatever
/// `resourceVersion` asks for: what `resourceVersionMatch=NotOlderThan` allows,
/// and what a client of the real API server must cope with.
fn list_nodes(shared: &Shared, p: &ListParams) -> Response {
    shared.lists.fetch_add(1, Ordering::Relaxed);
    let later_page = p.continue_.as_deref().is_some_and(|c| !c.is_empty());
    if later_page
        && shared
            .failing_pages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "an error on the server (\"etcdserver: request timed out\") has prevented the request from succeeding",
        );
    }
    let store = shared.lock();
    // Later pages are served from the current state at the first page's
    // resourceVersion: events in between are replayed by the WATCH that follows,
    // which is what a client of the real API must cope with too.
    let (list_rv, after) = match p.continue_.as_deref().filter(|c| !c.is_empty()) {
        Some(token) => match decode_continue(token) {
            Some((rv, _)) if rv < store.compacted => {
                drop(store);
                return status(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
            Some((rv, last)) => (rv, Some(last)),
            None => {
                drop(store);
                return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid continue token");
            }
        },
        None => {
            shared.full_lists.fetch_add(1, Ordering::Relaxed);
            (store.rv, None)
        }
    };
    let limit = p.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let range: Box<dyn Iterator<Item = (&String, &Value)>> = match &after {
        Some(last) => Box::new(store.nodes.range::<String, _>((
            std::ops::Bound::Excluded(last.clone()),
            std::ops::Bound::Unbounded,
        ))),
        None => Box::new(store.nodes.iter()),
    };
    let mut items = Vec::new();
    let mut last_name = None;
    let mut more = false;
    for (name, node) in range {
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(node);
        last_name = Some(name.as_str());
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if more && let Some(last) = last_name {
        metadata["continue"] = json!(encode_continue(list_rv, last));
        metadata["remainingItemCount"] = json!(store.nodes.len() - items.len());
    }
    let body =
        json!({"kind": "NodeList", "apiVersion": "v1", "metadata": metadata, "items": items}).to_string();
    drop(store);
    shared.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One line of a watch stream, `type` before `object` as the API server
/// writes it (Go encodes struct fields in order). A `json!` map would sort
/// `object` first, and clients that decode the event as an adjacently
/// tagged enum (kube's `WatchEvent`) must then buffer the whole object
/// before they know what it is: twice the decode cost of the real thing.
fn watch_line(kind: &str, object: &Value) -> String {
    format!("{{\"type\":{},\"object\":{object}}}\n", json!(kind))
}

fn gone_event(rv: u64, current: u64) -> String {
    watch_line(
        "ERROR",
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {rv} ({current})"), "reason": "Expired", "code": 410
        }),
    )
}

fn bookmark_event(rv: u64) -> String {
    watch_line(
        "BOOKMARK",
        &json!({"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}),
    )
}

fn watch_nodes(shared: Arc<Shared>, p: ListParams) -> Response {
    shared.watches.fetch_add(1, Ordering::Relaxed);
    let store = shared.lock();
    let from = match p.resource_version.as_deref() {
        None | Some("") | Some("0") => store.rv,
        Some(v) => match v.parse::<u64>() {
            Ok(rv) => rv,
            Err(_) => {
                drop(store);
                return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid resourceVersion");
            }
        },
    };
    let chunk_stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>> =
        if from < store.compacted {
            let line = gone_event(from, store.rv);
            drop(store);
            Box::pin(futures::stream::once(async move { Ok(Bytes::from(line)) }))
        } else {
            let replay: Vec<Bytes> = store
                .history
                .iter()
                .filter(|(rv, _)| *rv > from)
                .map(|(_, l)| l.clone())
                .collect();
            let rx = shared.events.subscribe();
            drop(store);
            let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1800).max(1));
            let bookmarks = p.allow_watch_bookmarks.unwrap_or(false);
            Box::pin(watch_stream(shared.clone(), from, replay, rx, timeout, bookmarks))
        };
    let counted = {
        let shared = shared.clone();
        futures::StreamExt::inspect(chunk_stream, move |chunk| {
            if let Ok(b) = chunk {
                shared.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        })
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(counted))
        .unwrap_or_else(|_| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "building the response",
            )
        })
}

fn watch_stream(
    shared: Arc<Shared>,
    from: u64,
    replay: Vec<Bytes>,
    mut rx: broadcast::Receiver<(u64, Bytes)>,
    timeout: Duration,
    bookmarks: bool,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    async_stream(move |tx| async move {
        let mut last = from;
        for line in replay {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let mut generation = shared.watch_generation.subscribe();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(shared.bookmark_interval);
        tick.tick().await;
        loop {
            let line: Bytes = tokio::select! {
                _ = &mut deadline => {
                    thawed(&shared).await;
                    return;
                }
                _ = generation.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    // Drain under the lock: then every event up to store.rv has been sent.
                    let mut pending = Vec::new();
                    let current = {
                        let store = shared.lock();
                        loop {
                            match rx.try_recv() {
                                Ok((rv, l)) => if rv > last { pending.push((rv, l)) },
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                Err(_) => return,
                            }
                        }
                        store.rv
                    };
                    for (rv, l) in pending {
                        last = rv;
                        thawed(&shared).await;
                        if tx.send(l).await.is_err() {
                            return;
                        }
                    }
                    last = last.max(current);
                    Bytes::from(bookmark_event(last))
                }
                msg = rx.recv() => match msg {
                    Ok((rv, l)) if rv > last => {
                        last = rv;
                        l
                    }
                    Ok(_) => continue,
                    // A watcher too slow for the event rate is closed, as the real API does.
                    Err(_) => return,
                },
            };
            thawed(&shared).await;
            if tx.send(line).await.is_err() {
                return;
            }
        }
    })
}

/// Returns once the server is not frozen (at once when it is not).
async fn thawed(shared: &Shared) {
    // Called for every line of every watch: the common case takes no receiver.
    if !*shared.frozen.borrow() {
        return;
    }
    let mut frozen = shared.frozen.subscribe();
    // The sender lives in `shared`, so the channel cannot close while we wait.
    let _ = frozen.wait_for(|f| !*f).await;
}

/// A tiny generator: runs `f` with a sender and yields what it sends.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Bytes, Infallible>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let task = tokio::spawn(f(tx));
    let guard = AbortOnDrop(task);
    futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|b| (Ok(b), (rx, guard)))
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Deserialize)]
struct StatusParam {
    status: String,
}

async fn admin_set_condition(
    State(shared): State<Arc<Shared>>,
    Path((name, type_)): Path<(String, String)>,
    Query(q): Query<StatusParam>,
) -> StatusCode {
    if shared.set_condition(&name, &type_, &q.status) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
struct OutageParams {
    zone: Option<String>,
    fraction: Option<f64>,
    status: Option<String>,
}

/// `POST /fake/outage?zone=Z` or `?fraction=F` (default a third), with
/// `status` (default `False`; `True` ends the outage): the names it set.
async fn admin_outage(State(shared): State<Arc<Shared>>, Query(q): Query<OutageParams>) -> Response {
    let status = q.status.as_deref().unwrap_or("False");
    let names = shared.outage(q.zone.as_deref(), q.fraction.unwrap_or(1.0 / 3.0), status);
    axum::Json(json!({"nodes": names})).into_response()
}

#[derive(Deserialize)]
struct AutoscalerParams {
    per_minute: f64,
}

async fn admin_autoscaler(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<AutoscalerParams>,
) -> StatusCode {
    shared
        .autoscaler
        .store(q.per_minute.max(0.0).to_bits(), Ordering::Release);
    StatusCode::NO_CONTENT
}

async fn admin_delete(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> StatusCode {
    if shared.delete_node(&name) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn admin_close_watches(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.close_watches();
    StatusCode::NO_CONTENT
}

async fn admin_compact(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.compact();
    StatusCode::NO_CONTENT
}

async fn admin_stats(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    axum::Json(json!({
        "lists": shared.lists.load(Ordering::Relaxed),
        "full_lists": shared.full_lists.load(Ordering::Relaxed),
        "watches": shared.watches.load(Ordering::Relaxed),
        "bytes": shared.bytes.load(Ordering::Relaxed),
        "nodes": shared.lock().nodes.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(1234, "gke-node/1");
        assert_eq!(decode_continue(&t), Some((1234, "gke-node/1".to_string())));
        assert_eq!(decode_continue("zz"), None);
        assert_eq!(decode_continue("abc"), None);
    }
}

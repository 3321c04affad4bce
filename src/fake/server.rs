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
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{broadcast, watch},
};

pub use super::node_leases::HeartbeatOptions;
pub use super::state::Breakage;
use super::state::{Shared, Store, StoredNode};
use super::{
    gate::{Gate, now_rfc3339},
    node_leases::NodeLeases,
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
    /// Streaming lists (`sendInitialEvents`); without them the request is
    /// refused with 422, as by a server whose WatchList gate is off.
    pub streaming_lists: bool,
    /// A Lease per node in `kube-node-lease`, renewed by its kubelet, and the
    /// node lifecycle controller acting on them (`None`: neither).
    pub heartbeats: Option<HeartbeatOptions>,
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
            streaming_lists: true,
            heartbeats: None,
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

/// A running fake API server.
pub struct FakeApiServer {
    pub(super) shared: Arc<Shared>,
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
            store.nodes.insert(nodes::name(i), StoredNode::new(&node));
        }
        store.compacted = store.rv;
        let node_leases = options.heartbeats.map(|h| {
            let leases = Arc::new(NodeLeases::new(h, options.history));
            for (name, node) in &store.nodes {
                let uid = node.object()["metadata"]["uid"]
                    .as_str()
                    .unwrap_or(name)
                    .to_string();
                leases.ensure(name, &uid);
            }
            leases
        });
        let (events, _) = broadcast::channel(65_536);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            outages: Mutex::default(),
            events,
            watch_generation: watch::channel(0).0,
            gate: Arc::new(Gate {
                token: options.token.clone(),
                ..Gate::default()
            }),
            delay_ms: AtomicU64::new(0),
            failing_pages: AtomicU64::new(0),
            frozen: watch::channel(false).0,
            streaming_lists: options.streaming_lists,
            repost_period_ms: AtomicU64::new(0),
            breakage: Mutex::new(None),
            autoscaler: AtomicU64::new(0),
            leases: Arc::default(),
            node_leases,
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
        if let Some(leases) = server.shared.node_leases.clone() {
            spawn_kubelets_and_controller(Arc::downgrade(&server.shared), leases);
        }
        Ok(server)
    }

    /// Kills (`alive` false: its Lease renewals and status re-posts stop) or
    /// revives a node's kubelet (it renews at once and posts Ready). False if
    /// the node has no Lease (or the server keeps none).
    pub fn set_kubelet_alive(&self, name: &str, alive: bool) -> bool {
        self.shared.set_kubelet_alive(name, alive)
    }

    /// Stops or restarts the node lifecycle controller. False if the server keeps no node Leases.
    pub fn set_node_controller(&self, running: bool) -> bool {
        self.shared
            .node_leases
            .as_ref()
            .map(|l| l.set_controller(running))
            .is_some()
    }

    /// Deletes node `name`'s Lease, as for a virtual kubelet's node, which has none.
    pub fn delete_node_lease(&self, name: &str) {
        if let Some(leases) = &self.shared.node_leases {
            leases.remove(name);
        }
    }

    /// Node `name`'s Lease in `kube-node-lease`, if it has one.
    pub fn node_lease(&self, name: &str) -> Option<Value> {
        self.shared.node_leases.as_ref()?.get(name)
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
        self.shared.lock().nodes.get(name).map(StoredNode::object)
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

    /// Breaks the next watch: it sends `with` and ends (see [`Breakage`]).
    pub fn break_next_watch(&self, with: Breakage) {
        *self.shared.breakage.lock().unwrap_or_else(|e| e.into_inner()) = Some(with);
    }

    /// Answers every API request 429 Too Many Requests with `Retry-After`
    /// (as API Priority and Fairness does when shedding load) while `Some`.
    pub fn set_throttled(&self, retry_after: Option<Duration>) {
        let secs = retry_after.map_or(0, |d| d.as_secs().max(1));
        self.shared.gate.throttle.store(secs, Ordering::Release);
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The kubelets' renewals and the node lifecycle controller, until the server is dropped.
fn spawn_kubelets_and_controller(shared: std::sync::Weak<Shared>, leases: Arc<NodeLeases>) {
    let options = leases.options();
    let tick = (options.renew_every / 20).clamp(Duration::from_millis(20), Duration::from_millis(250));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            leases.renew_due();
            let verdicts = leases.overdue();
            if verdicts.unreachable.is_empty() && verdicts.reachable.is_empty() {
                continue;
            }
            // Off the workers: a zone's worth of nodes is thousands of writes.
            let _ = tokio::task::spawn_blocking(move || {
                for name in &verdicts.unreachable {
                    shared.mark_unreachable(name, true);
                }
                for name in &verdicts.reachable {
                    shared.mark_unreachable(name, false);
                }
            })
            .await;
        }
    });
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/v1/nodes", get(super::node_api::list_or_watch))
        .route("/api/v1/nodes/{name}", get(super::node_api::get_node))
        .route(
            "/version",
            get(|| async { axum::Json(json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake"})) }),
        )
        .merge(super::admin::routes())
        .merge(super::leases::routes(
            shared.gate.clone(),
            shared.leases.clone(),
            shared.node_leases.clone(),
            shared.bookmark_interval,
            shared.streaming_lists,
        ))
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

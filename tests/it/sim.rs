//! Truth under faults: seeded random schedules of cluster changes and faults
//! against the real binary and the fake API server, with the API's objects
//! as the truth (`common::truth`). After each batch of operations the
//! cluster goes quiet, and every output must come to equal the truth:
//! `/metrics` (every checked per-node family, the cluster readings, no ghost
//! series, the transition counters within the bounds docs/metrics.md sets),
//! OTLP (the same readings; no cumulative point that goes down under an
//! unchanged start time) and the condition-change records (exactly one per
//! change the counters counted, for a single replica).
//!
//! A failing seed prints its schedule; `KNS_SIM_SEEDS=<seed>` replays it
//! (`scripts/soak` runs many). CI runs the fixed seeds below.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use kube_node_status::fake::{FakeApiServer, FakeOptions};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use serde_json::json;

use crate::common::{
    self, Exporter, Sample,
    otlp::Receiver,
    truth::{
        Counts, Truth, TruthNode, check_metrics, check_otlp, check_records, cumulative_lies, records_missed,
    },
};

/// A small deterministic generator (xorshift64*): a seed is the whole schedule.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

/// One operation of a schedule.
#[derive(Clone, Debug)]
enum Op {
    Ready(String, &'static str),
    Custom(String, &'static str),
    Taint(String, bool),
    Cordon(String, bool),
    Pods(String, u32),
    Zone(String, &'static str),
    Delete(String),
    Recreate(String),
    Add(usize),
    /// 410 Gone at the next resume, and every watch closed: a relist.
    Compact,
    /// A relist whose later LIST pages fail this many times first.
    FailingRelist(u64),
    CloseWatches,
    /// The API server down for this long.
    Outage(u64),
    /// Each LIST page and WATCH answered this late, for the rest of the batch.
    Stall(u64),
    /// A replica killed (SIGKILL) or stopped (SIGTERM), then started again.
    Restart {
        replica: usize,
        kill: bool,
    },
    Pause(u64),
}

/// Schedule knobs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub nodes: usize,
    pub batches: usize,
    pub replicas: usize,
    /// `--prometheus-encoder`.
    pub encoder: &'static str,
}

fn schedule(seed: u64, plan: Plan, names: &[String]) -> Vec<Vec<Op>> {
    let mut rng = Rng::new(seed);
    let mut next_new = plan.nodes + 1000;
    let mut batches = Vec::new();
    for _ in 0..plan.batches {
        let mut ops = Vec::new();
        for _ in 0..1 + rng.below(6) {
            let node = rng.pick(names);
            // With replicas, failovers are what is under test: more of them.
            let restarts = if plan.replicas > 1 { 4 } else { 1 };
            let roll = rng.below(19 + restarts);
            let op = match roll {
                0..=4 => Op::Ready(node, rng.pick(&["True", "False", "Unknown"])),
                5 => Op::Custom(node, rng.pick(&["True", "False"])),
                6 => Op::Taint(node, rng.below(2) == 0),
                7 => Op::Cordon(node, rng.below(2) == 0),
                8 => Op::Pods(node, 100 + rng.below(20) as u32),
                9 => Op::Zone(node, rng.pick(&["zone-a", "zone-b"])),
                10 => Op::Delete(node),
                11 => Op::Recreate(node),
                12 => {
                    next_new += 1;
                    Op::Add(next_new)
                }
                13 => Op::Compact,
                14 => Op::FailingRelist(1 + rng.below(3)),
                15 => Op::CloseWatches,
                16 => Op::Outage(200 + rng.below(1500)),
                17 => Op::Stall(50 + rng.below(300)),
                18 => Op::Pause(rng.below(1200)),
                _ => Op::Restart {
                    replica: rng.below(plan.replicas as u64) as usize,
                    kill: rng.below(2) == 0,
                },
            };
            ops.push(op);
            if rng.below(3) == 0 {
                ops.push(Op::Pause(rng.below(400)));
            }
        }
        batches.push(ops);
    }
    batches
}

impl Op {
    /// The kind of operation, for the soak's tally.
    fn kind(&self) -> &'static str {
        match self {
            Op::Ready(..) => "ready flip",
            Op::Custom(..) => "custom condition",
            Op::Taint(..) => "taint",
            Op::Cordon(..) => "cordon",
            Op::Pods(..) => "allocatable",
            Op::Zone(..) => "kept label",
            Op::Delete(..) => "delete",
            Op::Recreate(..) => "re-create (new uid)",
            Op::Add(..) => "add",
            Op::Compact => "410 relist",
            Op::FailingRelist(..) => "relist with failing pages",
            Op::CloseWatches => "watch close",
            Op::Outage(..) => "API outage",
            Op::Stall(..) => "API stall",
            Op::Restart { kill: true, .. } => "replica killed",
            Op::Restart { kill: false, .. } => "replica stopped",
            Op::Pause(..) => "pause",
        }
    }
}

/// An operation after which a relist may compare across a gap.
fn is_gap(op: &Op) -> bool {
    matches!(op, Op::Compact | Op::FailingRelist(_) | Op::Outage(_))
}

fn truth(api: &FakeApiServer) -> Truth {
    api.node_names()
        .into_iter()
        .filter_map(|n| api.node(&n).map(|o| (n, TruthNode::of(&o))))
        .collect()
}

/// A replica: the process, and what it must have counted since it started.
struct Replica {
    exporter: Exporter,
    counts: Counts,
    /// The truth when this batch started for it (its start, if it started in the batch).
    before: Truth,
    /// The status changes made since `before`.
    pending: BTreeMap<(String, String, String), u64>,
}

struct Sim {
    api: Arc<FakeApiServer>,
    receiver: Receiver,
    plan: Plan,
    replicas: Vec<Replica>,
    addrs: Vec<SocketAddr>,
    log: String,
    uid: u64,
    /// Status changes made in batches without a gap: (node, uid, type, previous, status).
    made: Vec<(String, String, String, String, String)>,
    /// Status changes made in the batch under way.
    batch_made: Vec<(String, String, String, String, String)>,
}

impl Sim {
    fn args(&self) -> Vec<String> {
        let mut args = [
            "--metrics-exporter",
            "prometheus,otlp",
            "--node-labels",
            "topology.kubernetes.io/zone",
            "--prometheus-encoder",
            self.plan.encoder,
        ]
        .map(String::from)
        .to_vec();
        if self.plan.replicas > 1 {
            args.extend(["--leader-election", "--lease-duration", "3s"].map(String::from));
        }
        args
    }

    async fn start_replica(&self, i: usize) -> Replica {
        let endpoint = format!("http://{}", self.receiver.addr);
        let pod = format!("sim-{i}");
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let exporter = Exporter::start_at(
            self.addrs[i],
            &self.api.kubeconfig(),
            &args,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
                ("POD_NAME", &pod),
                ("POD_NAMESPACE", "sim"),
            ],
        );
        exporter
            .wait_status("/readyz", 200, Duration::from_secs(60))
            .await;
        // Synced: what it counts from here on is what changes from now on.
        let now = truth(&self.api);
        Replica {
            counts: Counts::start(&now),
            before: now,
            pending: BTreeMap::new(),
            exporter,
        }
    }

    fn node_object(&self, name: &str) -> Option<serde_json::Value> {
        self.api.node(name)
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut serde_json::Value)) {
        if let Some(mut o) = self.node_object(name) {
            f(&mut o);
            self.api.put_node(o);
        }
    }

    /// Applies one operation, adding the status changes it makes to every replica's pending ones.
    async fn apply(&mut self, op: &Op) {
        let before = |sim: &Sim, name: &str, type_: &str| {
            sim.node_object(name).map(|o| {
                let t = TruthNode::of(&o);
                (t.uid.clone(), t.conditions.get(type_).map(|(s, _)| s.clone()))
            })
        };
        match op {
            Op::Ready(n, s) | Op::Custom(n, s) => {
                let type_ = if matches!(op, Op::Ready(..)) {
                    "Ready"
                } else {
                    "KernelDeadlock"
                };
                if let Some((uid, old)) = before(self, n, type_) {
                    self.api.set_condition(n, type_, s);
                    if let Some(old) = old.filter(|o| o != s) {
                        self.batch_made
                            .push((n.clone(), uid.clone(), type_.to_string(), old, s.to_string()));
                        for r in &mut self.replicas {
                            *r.pending
                                .entry((n.clone(), uid.clone(), type_.to_string()))
                                .or_default() += 1;
                        }
                    }
                }
            }
            Op::Taint(n, on) => self.edit(n, |o| {
                o["spec"]["taints"] = if *on {
                    json!([{"key": "sim.example/drain", "value": "yes", "effect": "NoSchedule"}])
                } else {
                    json!([])
                }
            }),
            Op::Cordon(n, on) => self.edit(n, |o| o["spec"]["unschedulable"] = json!(on)),
            Op::Pods(n, p) => self.edit(n, |o| o["status"]["allocatable"]["pods"] = json!(p.to_string())),
            Op::Zone(n, z) => self.edit(n, |o| {
                o["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!(z)
            }),
            Op::Delete(n) => {
                self.api.delete_node(n);
            }
            Op::Recreate(n) => {
                if let Some(mut o) = self.node_object(n) {
                    self.api.delete_node(n);
                    self.uid += 1;
                    o["metadata"]["uid"] = json!(format!("sim-{:012}", self.uid));
                    self.api.put_node(o);
                }
            }
            Op::Add(i) => {
                self.api.add_generated(*i);
            }
            Op::Compact => {
                self.api.compact();
                self.api.close_watches();
            }
            Op::FailingRelist(pages) => {
                self.api.fail_list_pages(*pages);
                self.api.compact();
                self.api.close_watches();
            }
            Op::CloseWatches => self.api.close_watches(),
            Op::Outage(ms) => {
                self.api.stop();
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                self.api.restart().await.expect("the API server restarts");
            }
            Op::Stall(ms) => self.api.set_delay(Duration::from_millis(*ms)),
            Op::Restart { replica, kill } => {
                let mut old = self.replicas.remove(*replica);
                if *kill {
                    old.exporter.signal("KILL");
                } else {
                    let (status, _) = old.exporter.terminate();
                    assert!(status.success(), "a SIGTERM ends the exporter cleanly: {status}");
                }
                // Dropping it waits for the process: its port is then free again.
                drop(old);
                let fresh = self.start_replica(*replica).await;
                self.replicas.insert(*replica, fresh);
                // A change made just before may have been seen only by the process that
                // ended, and the replica that leads next may have started after it: no
                // record of it is owed (docs/events.md). What changes from here on is.
                self.batch_made.clear();
            }
            Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        }
    }
}

/// The replica that leads now, and its scrape.
async fn leader(replicas: &[Replica]) -> Option<(usize, Vec<Sample>)> {
    let mut found = None;
    for (i, r) in replicas.iter().enumerate() {
        let (status, body) = r.exporter.get("/metrics").await;
        if status != 200 {
            return None;
        }
        let samples = common::parse(&body);
        let leads =
            replicas.len() == 1 || common::value(&samples, "kube_node_status_leader", &[]) == Some(1.0);
        if leads {
            if found.is_some() {
                return None;
            }
            found = Some((i, samples));
        }
    }
    found
}

/// Runs one seed; on failure, panics with the seed, the schedule and what differed.
pub async fn run(seed: u64, plan: Plan) -> (usize, usize, BTreeMap<&'static str, usize>) {
    let api = Arc::new(
        FakeApiServer::start(FakeOptions {
            nodes: plan.nodes,
            history: 100_000,
            bookmark_interval: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .expect("fake API server starts"),
    );
    let reposts = api.spawn_status_reports(Duration::from_secs(3));
    let receiver = Receiver::start(None).await;
    let names = api.node_names();
    let batches = schedule(seed, plan, &names);
    let mut sim = Sim {
        api: api.clone(),
        receiver,
        plan,
        replicas: Vec::new(),
        addrs: (0..plan.replicas)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], common::free_port())))
            .collect(),
        log: String::new(),
        uid: seed << 20,
        made: Vec::new(),
        batch_made: Vec::new(),
    };
    for i in 0..plan.replicas {
        let r = sim.start_replica(i).await;
        sim.replicas.push(r);
    }
    let mut ops = 0;
    let mut records_from = 0;
    for (b, batch) in batches.iter().enumerate() {
        let _ = writeln!(sim.log, "batch {b}: {batch:?}");
        let now = truth(&api);
        for r in &mut sim.replicas {
            r.before = now.clone();
            r.pending.clear();
        }
        for op in batch {
            sim.apply(op).await;
            ops += 1;
            if matches!(op, Op::Restart { .. }) {
                // A restarted replica's records start with it: the old process's were flushed or lost.
                records_from = sim.receiver.log_records().len();
            }
        }
        api.set_delay(Duration::ZERO);
        let after = truth(&api);
        // A relist may hide changes (a restart is none: each replica counts from its own start).
        // Changes no relist can hide must each get a record, across failovers too.
        let relist = batch.iter().any(is_gap);
        let gap = relist;
        let made = std::mem::take(&mut sim.batch_made);
        if !relist {
            sim.made.extend(made);
        }
        for r in &mut sim.replicas {
            let pending = std::mem::take(&mut r.pending);
            r.counts.sync(&r.before, &after, gap, &pending);
        }
        let quiet = Instant::now();
        let mut truthful = 0;
        let cycles = sim.receiver.cycles();
        let deadline = Duration::from_secs(common::secs_from_env("KNS_SIM_QUIET_SECS", 60).as_secs());
        loop {
            let mut wrong = Vec::new();
            match leader(&sim.replicas).await {
                None => wrong.push("no single leader answering".to_string()),
                Some((i, samples)) => {
                    wrong.extend(check_metrics(&samples, &after, &sim.replicas[i].counts));
                    if sim.receiver.cycles() < cycles + 2 {
                        wrong.push("waiting for two OTLP cycles after the batch".into());
                    } else if let Some(req) = sim.receiver.latest() {
                        wrong.extend(check_otlp(&req, &after));
                    }
                    if plan.replicas == 1 {
                        wrong.extend(check_records(&sim.receiver, &samples, &after, records_from));
                    }
                    wrong.extend(records_missed(&sim.receiver, &sim.made));
                }
            }
            if wrong.is_empty() {
                // Quiet now: the truth must hold at every scrape, not just once.
                truthful += 1;
                if truthful == 3 {
                    break;
                }
            } else if truthful > 0 {
                panic!(
                    "seed {seed} ({plan:?}): the outputs told the truth, then not, with the cluster quiet, after batch {b}\n\
                     replay: KNS_SIM_SEEDS={seed} cargo test --release --test it sim::\n\
                     schedule:\n{}\nwrong (first 20):\n{}",
                    sim.log,
                    wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
                );
            }
            if quiet.elapsed() > deadline {
                let logs: Vec<String> = sim.replicas.iter().map(|r| r.exporter.logs()).collect();
                let tail: Vec<&str> = logs.iter().flat_map(|l| l.lines().rev().take(40)).collect();
                panic!(
                    "seed {seed} ({plan:?}): the outputs did not come to equal the truth {deadline:?} after batch {b}\n\
                     replay: KNS_SIM_SEEDS={seed} cargo test --release --test it sim::\n\
                     schedule:\n{}\nwrong (first 20):\n{}\nexporter logs (tails):\n{}",
                    sim.log,
                    wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
                    tail.join("\n"),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let all: Vec<ExportMetricsServiceRequest> =
        sim.receiver.since(Instant::now() - Duration::from_secs(3600));
    let lies = cumulative_lies(&all);
    assert!(
        lies.is_empty(),
        "seed {seed}: OTLP cumulative points lied:\n{}\nschedule:\n{}",
        lies.join("\n"),
        sim.log
    );
    reposts.abort();
    let mut kinds = BTreeMap::new();
    for op in batches.iter().flatten() {
        *kinds.entry(op.kind()).or_default() += 1;
    }
    (batches.len(), ops, kinds)
}

/// The seeds CI runs, or `KNS_SIM_SEEDS` (comma-separated) to replay or soak.
fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("KNS_SIM_SEEDS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        _ => default.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_tells_the_truth_through_random_faults() {
    let plan = Plan {
        nodes: 150,
        batches: 10,
        replicas: 1,
        encoder: "streaming",
    };
    for seed in seeds(&[1, 2]) {
        let (batches, ops, kinds) = run(seed, plan).await;
        eprintln!("sim seed {seed}: {batches} batches, {ops} operations {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_tell_the_truth_through_failovers() {
    let plan = Plan {
        nodes: 150,
        batches: 8,
        replicas: 2,
        encoder: "streaming",
    };
    for seed in seeds(&[11]) {
        let (batches, ops, kinds) = run(seed, plan).await;
        eprintln!("sim seed {seed} (2 replicas): {batches} batches, {ops} operations {kinds:?}");
    }
}

/// The same with opentelemetry-prometheus rendering `/metrics` at each
/// scrape: its pipeline grows with the cluster, and no scrape may show part
/// of the truth meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_encoder_tells_the_truth_through_random_faults() {
    let plan = Plan {
        nodes: 150,
        batches: 8,
        replicas: 1,
        encoder: "reference",
    };
    for seed in seeds(&[3]) {
        let (batches, ops, kinds) = run(seed, plan).await;
        eprintln!("sim seed {seed} (reference encoder): {batches} batches, {ops} operations {kinds:?}");
    }
}

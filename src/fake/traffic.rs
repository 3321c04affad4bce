//! Real-cluster traffic from the fake API server: Ready flips, the cluster
//! autoscaler's replacements, and kubelet status re-posts.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use super::server::FakeApiServer;

impl FakeApiServer {
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
                let ready = server.node(name).map(|n| {
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
    /// and image list. The period can be changed later
    /// (`POST /fake/reposts?period_ms=N`; 0 stops them). Runs until the
    /// returned task is aborted.
    pub fn spawn_status_reports(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let server = self.clone();
        server
            .shared
            .repost_period_ms
            .store(period.as_millis() as u64, Ordering::Release);
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut reposts = 0u64;
            let period = || Duration::from_millis(server.shared.repost_period_ms.load(Ordering::Acquire));
            loop {
                let names = server.node_names();
                if names.is_empty() || period().is_zero() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                // One pass over the nodes per period, at an even pace (the period read again at every node).
                let mut next = tokio::time::Instant::now();
                for name in &names {
                    let current = period();
                    if current.is_zero() {
                        break;
                    }
                    // Behind (a busy machine): go on from now, no burst to catch up.
                    next = next.max(tokio::time::Instant::now()) + current.div_f64(names.len() as f64);
                    tokio::time::sleep_until(next).await;
                    reposts += 1;
                    let extra = (rng.u8(..20) == 0).then_some(reposts);
                    server.shared.repost_status(name, extra);
                }
            }
        })
    }
}

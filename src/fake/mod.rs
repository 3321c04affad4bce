//! The fake Kubernetes API server: generated nodes behind the real list and
//! watch protocol, with the traffic of a real cluster (kubelet status
//! re-posts, flips, zone outages, autoscaler churn). The `demo` and
//! `fake-apiserver` subcommands that run it are in [`crate::cli`].
//!
//! Built only with the `fake-apiserver` feature (on by default); release
//! images leave it out.

mod admin;
mod gate;
mod lease_wire;
mod leases;
mod node_api;
mod node_leases;
mod nodes;
pub mod protobuf;
mod rbac;
mod request;
mod reviews;
mod server;
mod state;
mod traffic;

pub use node_leases::NAMESPACE as NODE_LEASE_NAMESPACE;
pub use nodes::{KUBELET_CONDITIONS, NPD_CONDITIONS, name as node_name, node as generated_node};
pub use rbac::{Attributes, Policy, Subject};
pub use reviews::Reviews;
pub use server::{Breakage, FakeApiServer, FakeOptions, FakeStats, HeartbeatOptions};

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The fake cluster's shape and behaviour.
#[derive(Clone, Debug, Args)]
pub struct ClusterArgs {
    /// Number of generated nodes (about 20 KB each with managed fields, like real ones).
    #[arg(long, env = "KNS_FAKE_NODES", default_value_t = 50)]
    pub nodes: usize,
    /// Ready flips per second across the cluster (True → False/Unknown → True…); 0 for none.
    #[arg(long, env = "KNS_FAKE_FLIPS_PER_SECOND", default_value_t = 0.5)]
    pub flips_per_second: f64,
    /// Every node's status is re-posted once per this period with only its
    /// heartbeat times new (one in 20 also with new volumesInUse and images),
    /// as kubelets do every 5 minutes (nodeStatusReportFrequency); 0s for none.
    #[arg(long, env = "KNS_FAKE_STATUS_REPORT_PERIOD", default_value = "5m", value_parser = humantime::parse_duration)]
    pub status_report_period: Duration,
    /// Nodes replaced per minute as the cluster autoscaler does (a node
    /// tainted then deleted, a new one joining NotReady then Ready); 0 for none.
    #[arg(long, env = "KNS_FAKE_AUTOSCALER_CHURN_PER_MINUTE", default_value_t = 0.0)]
    pub autoscaler_churn_per_minute: f64,
    /// Bearer token clients must present (none: accept any client).
    #[arg(long, env = "KNS_FAKE_TOKEN")]
    pub token: Option<String>,
    /// Interval between watch BOOKMARK events.
    #[arg(long, env = "KNS_FAKE_BOOKMARK_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub bookmark_interval: Duration,
    /// Watch events kept for resuming; resuming from an older resourceVersion gets 410 Gone.
    #[arg(long, env = "KNS_FAKE_HISTORY", default_value_t = 10_000)]
    pub history: usize,
    /// Serve streaming lists (`sendInitialEvents`); `false` refuses them with
    /// 422 as a server with its WatchList gate off does, so clients list in pages.
    #[arg(long, env = "KNS_FAKE_STREAMING_LISTS", action = clap::ArgAction::Set, default_value_t = true)]
    pub streaming_lists: bool,
    /// Keep a Lease per node in kube-node-lease, renewed by its kubelet every
    /// --lease-renew-period (with jitter), and run a node lifecycle controller
    /// that marks a node whose Lease went unrenewed for
    /// --node-monitor-grace-period (Ready Unknown, the unreachable taints).
    /// Kill a kubelet with `POST /fake/nodes/NAME/kubelet?alive=false`, stop
    /// the controller with `POST /fake/controller?running=false`.
    #[arg(long, env = "KNS_FAKE_NODE_LEASES")]
    pub node_leases: bool,
    /// How often each kubelet renews its Lease (leaseDurationSeconds is four times this).
    #[arg(long, env = "KNS_FAKE_LEASE_RENEW_PERIOD", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_renew_period: Duration,
    /// How long the node lifecycle controller waits on an unrenewed Lease.
    #[arg(long, env = "KNS_FAKE_NODE_MONITOR_GRACE_PERIOD", default_value = "40s", value_parser = humantime::parse_duration)]
    pub node_monitor_grace_period: Duration,
}

/// Settings of the `fake-apiserver` subcommand.
#[derive(Debug, Args)]
pub struct FakeArgs {
    /// The fake cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Address to serve the API on.
    #[arg(long, env = "KNS_FAKE_LISTEN", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for this server to this file.
    #[arg(long, env = "KNS_FAKE_KUBECONFIG_OUT")]
    pub kubeconfig_out: Option<PathBuf>,
}

impl ClusterArgs {
    /// The server options for this cluster, listening on `listen`.
    pub fn options(&self, listen: SocketAddr) -> FakeOptions {
        FakeOptions {
            listen,
            nodes: self.nodes,
            token: self.token.clone(),
            history: self.history,
            bookmark_interval: self.bookmark_interval,
            rbac: None,
            streaming_lists: self.streaming_lists,
            heartbeats: self.node_leases.then_some(HeartbeatOptions {
                renew_every: self.lease_renew_period.max(std::time::Duration::from_millis(100)),
                grace: self.node_monitor_grace_period,
            }),
        }
    }
}

/// A client configuration for `server`, built through a kubeconfig like a real user's.
pub async fn kube_config_for(server: &FakeApiServer) -> anyhow::Result<kube::Config> {
    let file = Kubeconfig::from_yaml(&server.kubeconfig()).context("parsing the fake kubeconfig")?;
    Ok(kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?)
}

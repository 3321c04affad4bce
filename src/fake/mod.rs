//! The fake Kubernetes API server, and the `demo` and `fake-apiserver` subcommands.
//!
//! Built only with the `fake-apiserver` feature (on by default); release
//! images leave it out.

mod leases;
mod nodes;
mod reviews;
mod server;

pub use nodes::{KUBELET_CONDITIONS, NPD_CONDITIONS, name as node_name, node as generated_node};
pub use reviews::Reviews;
pub use server::{FakeApiServer, FakeOptions, FakeStats};

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{
    app,
    config::{DemoArgs, LogFormat},
};

/// The fake cluster's shape and behaviour.
#[derive(Clone, Debug, Args)]
pub struct ClusterArgs {
    /// Number of generated nodes (about 15 KB each, like real ones).
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
    fn options(&self, listen: SocketAddr) -> FakeOptions {
        FakeOptions {
            listen,
            nodes: self.nodes,
            token: self.token.clone(),
            history: self.history,
            bookmark_interval: self.bookmark_interval,
        }
    }
}

/// A client configuration for `server`, built through a kubeconfig like a real user's.
pub async fn kube_config_for(server: &FakeApiServer) -> anyhow::Result<kube::Config> {
    let file = Kubeconfig::from_yaml(&server.kubeconfig()).context("parsing the fake kubeconfig")?;
    Ok(kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?)
}

/// `kube-node-status demo`: a fake cluster and the exporter watching it, in one process.
pub fn demo(mut args: DemoArgs) -> ExitCode {
    args.run.log_format.get_or_insert(LogFormat::Text);
    // A newcomer without a collector should see /metrics, not a failing OTLP
    // export: OTLP is on in the demo only when an endpoint or exporter is chosen.
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let otlp_chosen = args.run.otlp_endpoint.is_some()
        || env("OTEL_METRICS_EXPORTER").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some();
    if !otlp_chosen {
        args.run
            .metrics_exporter
            .get_or_insert_with(|| "prometheus".to_string());
    }
    let settings = match args.run.resolve(&|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => return app::fail(&e.into()),
    };
    let listen = settings.listen_address;
    let cluster = args.fake;
    app::execute(settings, move || async move {
        let server = Arc::new(
            FakeApiServer::start(cluster.options(SocketAddr::from(([127, 0, 0, 1], 0))))
                .await
                .context("starting the fake API server")?,
        );
        let config = kube_config_for(&server).await?;
        tracing::info!(
            api = %server.url(),
            nodes = cluster.nodes,
            flips_per_second = cluster.flips_per_second,
            "demo: fake Kubernetes API server started; try: curl http://{}/metrics",
            if listen.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], listen.port())) } else { listen }
        );
        // The churn tasks hold the server: all live as long as the process.
        let _detached = server.spawn_churn(cluster.flips_per_second);
        let _reposts = server.spawn_status_reports(cluster.status_report_period);
        let _autoscaler = server.spawn_autoscaler(cluster.autoscaler_churn_per_minute);
        Ok(config)
    })
}

/// `kube-node-status fake-apiserver`: only the fake API server, until SIGTERM or SIGINT.
pub fn serve_main(args: FakeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return app::fail(&anyhow::Error::new(e)),
    };
    let outcome: anyhow::Result<()> = runtime.block_on(async {
        let _ = crate::logging::init(LogFormat::Text, None);
        let server = Arc::new(
            FakeApiServer::start(args.cluster.options(args.listen))
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?,
        );
        if let Some(path) = &args.kubeconfig_out {
            std::fs::write(path, server.kubeconfig())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        println!(
            "fake Kubernetes API server on {} with {} nodes",
            server.url(),
            args.cluster.nodes
        );
        if let Some(path) = &args.kubeconfig_out {
            println!("kubeconfig written to {}", path.display());
        }
        let churn = server.spawn_churn(args.cluster.flips_per_second);
        let reposts = server.spawn_status_reports(args.cluster.status_report_period);
        let autoscaler = server.spawn_autoscaler(args.cluster.autoscaler_churn_per_minute);
        app::shutdown_signal().await;
        churn.abort();
        reposts.abort();
        autoscaler.abort();
        server.stop();
        Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => app::fail(&e),
    }
}

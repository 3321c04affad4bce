//! The command line: the exporter's flags, the `demo` and `fake-apiserver`
//! subcommands, and what each runs. The one place that knows every entry
//! point, so that [`crate::config`] (settings), [`crate::app`] (the exporter)
//! and [`crate::fake`] (the fake API server) need not know one another.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
#[cfg(feature = "fake-apiserver")]
use {
    crate::{
        config::LogFormat,
        fake::{FakeApiServer, kube_config_for},
    },
    anyhow::Context as _,
    clap::Args,
    std::{net::SocketAddr, sync::Arc},
};

use crate::{app, config::RunArgs};

/// Reports Kubernetes node readiness as OpenTelemetry metrics, over OTLP and on a Prometheus `/metrics` endpoint.
///
/// Without a subcommand it runs the exporter against the cluster found through
/// `--kubeconfig`, `KUBECONFIG`, `~/.kube/config` or the in-cluster service account.
#[derive(Debug, Parser)]
#[command(name = "kube-node-status", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// The exporter's settings.
    #[command(flatten)]
    pub run: RunArgs,
    /// Optional subcommand.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands besides running the exporter.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a fake Kubernetes API server with generated nodes and run the exporter against it.
    #[cfg(feature = "fake-apiserver")]
    Demo(Box<DemoArgs>),
    /// Run only the fake Kubernetes API server (for tests, demos and benchmarks).
    #[cfg(feature = "fake-apiserver")]
    FakeApiserver(crate::fake::FakeArgs),
}

/// Settings of the `demo` subcommand.
#[cfg(feature = "fake-apiserver")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The fake cluster.
    #[command(flatten)]
    pub fake: crate::fake::ClusterArgs,
    /// The exporter (its Kubernetes flags are ignored: it always uses the fake API).
    #[command(flatten)]
    pub run: RunArgs,
}

/// Runs what `cli` asks for: the exporter, or a subcommand.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        None => {
            let settings = match cli.run.resolve(&|k| std::env::var(k).ok()) {
                Ok(s) => s,
                Err(e) => return app::fail(&e.into()),
            };
            let source = settings.kube.clone();
            app::execute(
                settings,
                move || async move { Ok(app::kube_config(&source).await?) },
            )
        }
        #[cfg(feature = "fake-apiserver")]
        Some(Command::Demo(args)) => demo(*args),
        #[cfg(feature = "fake-apiserver")]
        Some(Command::FakeApiserver(args)) => fake_apiserver(args),
        #[cfg(not(feature = "fake-apiserver"))]
        Some(command) => match command {},
    }
}

/// `kube-node-status demo`: a fake cluster and the exporter watching it, in one process.
#[cfg(feature = "fake-apiserver")]
fn demo(mut args: DemoArgs) -> ExitCode {
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
#[cfg(feature = "fake-apiserver")]
fn fake_apiserver(args: crate::fake::FakeArgs) -> ExitCode {
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

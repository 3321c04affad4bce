//! Wiring: builds the client, view, telemetry and server, runs them, shuts them down.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use kube::{
    Client,
    client::ClientBuilder,
    config::{KubeConfigOptions, Kubeconfig},
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{error, info, warn};

use crate::{
    auth::{Authenticator, Reviewer},
    cluster::{self, ApiObserverLayer, View},
    config::{ConfigError, KubeSource, Settings},
    http::{self, HttpState},
    leader::{Elector, Leadership},
    tasks::{self, Task},
    telemetry::Telemetry,
};

/// The whole shutdown must fit in Kubernetes' default 30 s grace period, and we
/// promise 10 s: up to 2 s draining HTTP, this for the final flush, 1 s for the runtime.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(6);

/// Resolves the Kubernetes client configuration with `kube::Client::try_default`
/// semantics, plus `--kubeconfig` and `--context`.
pub async fn kube_config(source: &KubeSource) -> Result<kube::Config, ConfigError> {
    let options = KubeConfigOptions {
        context: source.context.clone(),
        ..Default::default()
    };
    match (&source.kubeconfig, &source.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| ConfigError::Kube(format!("--kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| ConfigError::Kube(format!("--kubeconfig {}: {e}", path.display())))
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| ConfigError::Kube(format!("--context {context}: {e}"))),
        (None, None) => kube::Config::infer().await.map_err(|e| {
            ConfigError::Kube(format!(
                "no Kubernetes configuration found ({e}); set --kubeconfig or KUBECONFIG, or run in a cluster"
            ))
        }),
    }
}

/// A failure that maps to exit code 2: the user's input is wrong, retrying will not help.
pub fn is_config_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.is::<ConfigError>() || e.is::<crate::telemetry::TelemetryError>())
}

/// Runs the exporter process: telemetry, logs, the Kubernetes configuration
/// from `kube_config` (awaited inside the runtime, after logging starts), and
/// the service until SIGTERM or SIGINT. Returns the process exit code.
pub fn execute<F, Fut>(settings: Settings, kube_config: F) -> std::process::ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<kube::Config>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    let outcome = runtime.block_on(async {
        let env = |k: &str| std::env::var(k).ok();
        let (resource, warnings) = crate::telemetry::resolve_resource(&settings.resource, &env).await?;
        let google = crate::telemetry::google_auth(&settings)?;
        let tracer_provider = crate::telemetry::tracer_provider(&settings, resource.clone(), google.clone())?;
        crate::logging::init(settings.log_format, tracer_provider.as_ref()).map_err(ConfigError::Logging)?;
        for w in warnings {
            warn!("{w}");
        }
        if let Some(auth) = &google {
            log_google_mode(auth, &resource);
        }
        // Every configuration error is reported before anything connects.
        crate::telemetry::check(&settings)?;
        let config = kube_config().await?;
        run(
            settings,
            resource,
            config,
            tracer_provider,
            google,
            shutdown_signal(),
        )
        .await
    });
    // Do not wait for stray blocking tasks (a hung export) beyond the shutdown budget.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Says where Google mode's credentials and resource come from.
fn log_google_mode(auth: &crate::telemetry::GoogleAuth, resource: &opentelemetry_sdk::Resource) {
    let get = |k: &'static str| {
        resource
            .get(&opentelemetry::Key::from_static_str(k))
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    let location = [get("cloud.availability_zone"), get("cloud.region")]
        .into_iter()
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    info!(
        credentials = auth.source(),
        project = get("gcp.project_id"),
        location,
        cluster = get("k8s.cluster.name"),
        namespace = get("k8s.namespace.name"),
        "exporting to Google's Telemetry API"
    );
}

/// One line on stderr, exit code 2 for configuration errors and 1 otherwise.
pub fn fail(err: &anyhow::Error) -> std::process::ExitCode {
    eprintln!("kube-node-status: {err:#}");
    std::process::ExitCode::from(if is_config_error(err) { 2 } else { 1 })
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received; shutting down"),
        _ = term => info!("SIGTERM received; shutting down"),
    }
}

/// The leader election task's name: it is the one task the shutdown hands back.
const ELECTION: &str = "leader election";

/// Runs the exporter until `shutdown` resolves, then stops the watcher,
/// flushes OTLP once and returns.
pub async fn run(
    settings: Settings,
    resource: opentelemetry_sdk::Resource,
    kube_config: kube::Config,
    tracer_provider: Option<SdkTracerProvider>,
    google: Option<std::sync::Arc<crate::telemetry::GoogleAuth>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Bind first: a taken port fails fast, before any provider would flush on drop.
    let listener = tokio::net::TcpListener::bind(settings.listen_address)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen_address))?;
    let (view, feed) = match &settings.node_leases {
        Some(leases) => View::with_heartbeats(cluster::Heartbeats::new(leases.stale_after)),
        None => View::new(),
    };
    let leadership = match settings.lease {
        Some(_) => Leadership::elected(),
        None => Leadership::sole(),
    };
    let telemetry = Telemetry::start(&settings, resource, view.clone(), leadership.clone(), google)?;
    // kube 5 sets no read timeout: a LIST to an API server that accepted the
    // connection and went silent would wait forever. Counted from each request's
    // write, not from when its pooled connection went idle.
    let mut kube_config = kube_config;
    kube_config.read_timeout = Some(settings.api_timeout);
    kube_config.reset_reader_on_write = true;
    // The Lease and token reviews have clients of their own: their requests are
    // not node LISTs or WATCHes, and must not count as such in the API health /readyz reads.
    let own_client = || {
        Client::try_from(kube_config.clone())
            .map_err(|e| ConfigError::Kube(format!("building the Kubernetes client: {e}")))
    };
    let lease_client = match &settings.lease {
        Some(_) => Some(own_client()?),
        None => None,
    };
    let node_lease_client = match &settings.node_leases {
        Some(_) => Some(own_client()?),
        None => None,
    };
    let auth = match (&settings.auth_token_file, settings.auth_kubernetes) {
        (Some(path), _) => Some(Authenticator::File(
            crate::auth::TokenFile::open(path).map_err(ConfigError::from)?,
        )),
        (None, true) => Some(Authenticator::Kubernetes(Reviewer::new(
            own_client()?,
            "/metrics",
            settings.auth_token_audiences.clone(),
            telemetry.surface(),
        ))),
        (None, false) => None,
    }
    .map(Arc::new);
    let client: Client = ClientBuilder::try_from(kube_config)
        .map_err(|e| ConfigError::Kube(format!("building the Kubernetes client: {e}")))?
        .with_layer(&ApiObserverLayer::new(view.health().clone()))
        .build();

    let bound = listener.local_addr().context("reading the bound address")?;
    info!(
        address = %bound,
        prometheus = settings.prometheus,
        otlp = settings.otlp_metrics.is_some(),
        condition_logs = settings.otlp_logs.is_some(),
        tls = settings.tls.is_some(),
        "serving /metrics, /healthz and /readyz"
    );

    let selector = settings.readings.node_labels.clone();
    let keep_label: cluster::KeepLabel = Arc::new(move |k| crate::readings::reads_label(k, &selector));
    let mut feed = feed;
    let sink = telemetry.condition_sink();
    if let Some(sink) = sink.clone() {
        feed.set_sink(sink);
    }
    let mut tasks = vec![
        Task::new(
            "node watch",
            cluster::spawn_watcher(
                client,
                feed,
                cluster::Keep {
                    label: keep_label,
                    // Kept only when served: not when the profile or a denylist leaves the family out.
                    all_addresses: settings
                        .readings
                        .family_enabled("kube_node_status_addresses", crate::config::Group::Metadata),
                },
                settings.api_timeout,
                settings.api_encoding,
            ),
        ),
        Task::spawn("telemetry", telemetry.clone().run()),
    ];
    if let (Some(leases), Some(client)) = (&settings.node_leases, node_lease_client) {
        tasks.push(Task::new(
            "node lease watch",
            cluster::spawn_lease_watcher(
                client,
                leases.namespace.clone(),
                view.clone(),
                sink,
                settings.api_timeout,
                settings.api_encoding,
            ),
        ));
    }
    let elector = match settings.lease.clone().zip(lease_client) {
        Some((lease, client)) => {
            let (elector, task) = Elector::spawn(client, lease, leadership.clone());
            tasks.push(Task::new(ELECTION, task));
            Some(elector)
        }
        None => None,
    };
    let state = HttpState {
        metrics: telemetry.metrics_handle(),
        health: view.health().clone(),
        stale_after: settings.stale_after,
        request_timeout: settings.request_timeout,
        auth,
        surface: telemetry.surface(),
        plain: Arc::new(tokio::sync::Semaphore::new(http::PLAIN_AT_ONCE)),
    };
    let tls = match &settings.tls {
        Some((cert, key)) => {
            let files = Arc::new(
                crate::tls::CertFiles::open(cert, key, telemetry.surface()).map_err(ConfigError::from)?,
            );
            Some(Arc::new(files.server_config().map_err(ConfigError::from)?))
        }
        None => None,
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = http::Limits {
        max_connections: settings.max_connections,
        request_timeout: settings.request_timeout,
    };
    let surface = telemetry.surface();
    let mut server = tokio::spawn(async move {
        http::serve(listener, http::router(state), tls, limits, surface, async {
            let _ = http_stopped.await;
        })
        .await
    });

    tokio::select! {
        _ = shutdown => {}
        res = &mut server => {
            anyhow::bail!("HTTP server stopped unexpectedly: {res:?}");
        }
        ended = tasks::first_to_end(&mut tasks) => {
            // The Lease is left to expire: a process that lost a task cannot
            // vouch for what it would flush, and the next leader takes over
            // after one lease duration.
            error!(error = %ended, "a long-lived task ended; exiting so that the pod is restarted");
            return Err(ended.into());
        }
    }

    let mut election = None;
    for task in tasks {
        if task.name() == ELECTION {
            election = Some(task.into_handle());
        } else {
            task.abort();
        }
    }
    let _ = stop_http.send(());
    if tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .is_err()
    {
        warn!("HTTP connections still open after 2s; closing them");
    }
    let flush = async move {
        telemetry.shutdown().await;
        // The tracer provider's shutdown blocks until its last batch is sent.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(tp) = tracer_provider
                && let Err(e) = tp.shutdown()
            {
                warn!(error = %e, "tracer provider shutdown");
            }
        })
        .await;
    };
    if tokio::time::timeout(SHUTDOWN_BUDGET, flush).await.is_err() {
        warn!("telemetry flush did not finish in {SHUTDOWN_BUDGET:?}; exiting anyway");
    }
    // Released only after the last flush, which a leader sends with node readings:
    // freeing the Lease first would let the next leader export while this one still does.
    if let (Some(elector), Some(task)) = (elector, election) {
        elector.release(task).await;
    }
    info!("stopped");
    Ok(())
}

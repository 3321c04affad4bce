//! Logs (JSON or text, levels from `RUST_LOG`) and the bridge of our own spans to OTLP.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::LogFormat;

/// Without RUST_LOG: info, except the watcher's own per-retry warnings, which
/// repeat what our once-per-streak messages say more clearly, and the SDK's
/// lifecycle chatter (a provider dropped after a resize is not news).
pub const DEFAULT_LOG: &str = "info,kube_runtime::watcher=error,opentelemetry_sdk=warn";

/// Installs the global subscriber. Only our own crate's spans go to OTLP:
/// letting tonic, h2 or hyper in would make every export produce more spans to export.
pub fn init(format: LogFormat, tracer_provider: Option<&SdkTracerProvider>) -> Result<(), String> {
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => DEFAULT_LOG.to_string(),
    };
    let filter = EnvFilter::try_new(&directives).map_err(|e| format!("RUST_LOG={directives:?}: {e}"))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    }];
    if let Some(provider) = tracer_provider {
        let tracer = provider.tracer("kube-node-status");
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target("kube_node_status", Level::INFO))
                .boxed(),
        );
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| e.to_string())
}

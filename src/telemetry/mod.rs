//! Meter and tracer providers, and the exporters that carry readings out.
//!
//! Each metric exporter gets its own `SdkMeterProvider` with its own
//! instruments. With two readers on one provider, an observation made during
//! one reader's collection is also written into the other reader's
//! aggregators, so a deleted node would come back once on `/metrics` after
//! each OTLP export. Separate providers make every collection see exactly
//! the view at that moment.

mod chunked;
mod chunks;
mod families;
mod google;
mod instruments;
mod otlp;
mod prometheus_text;
mod resource;

pub use google::GoogleAuth;
pub use instruments::names;
pub use otlp::ExportStats;
pub use prometheus_text::{CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE, MetricsHandle, RenderError};
pub use resource::{build as build_resource, resolve as resolve_resource};

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Node;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::{
    Resource,
    metrics::{Instrument, PeriodicReader, SdkMeterProvider, Stream},
    trace::SdkTracerProvider,
};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{cluster::View, config::Settings};
use instruments::{Capacity, Sources};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Bad OTLP configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The Prometheus exporter could not be built.
    #[error("Prometheus exporter: {0}")]
    Prometheus(String),
}

/// The SDK's own default; we never go below it.
const MIN_CARDINALITY_LIMIT: usize = 2_000;

/// The cardinality limit for a demand of `points` per instrument: 25% headroom
/// so that node churn between two collections (old and new names coexist until
/// the SDK evicts stale sets) stays under it.
pub fn cardinality_limit(points: usize) -> usize {
    (points + points / 4).max(MIN_CARDINALITY_LIMIT)
}

/// Per-instrument point counts of the per-node families.
type Demand = HashMap<&'static str, usize>;

/// An instrument name and an upper bound of its points per node.
type Sizing = (&'static str, fn(&Node) -> usize);

/// Measures how many points each enabled per-node family needs for `nodes`.
fn demand(sizing: &[Sizing], nodes: &[Arc<Node>]) -> Demand {
    sizing
        .iter()
        .map(|(name, count)| (*name, nodes.iter().map(|n| count(n)).sum()))
        .collect()
}

/// The limits that fit `demand`, each with headroom.
fn limits_for(demand: &Demand) -> HashMap<&'static str, usize> {
    demand
        .iter()
        .map(|(name, points)| (*name, cardinality_limit(*points)))
        .collect()
}

/// One generation of metric pipelines, all built with the same per-instrument limits.
struct Pipelines {
    limits: Arc<HashMap<&'static str, usize>>,
    prometheus: Option<(SdkMeterProvider, prometheus::Registry)>,
    otlp: Option<SdkMeterProvider>,
}

impl Pipelines {
    fn shutdown(&self) {
        for provider in self.prometheus.iter().map(|(p, _)| p).chain(self.otlp.iter()) {
            if let Err(e) = provider.shutdown() {
                warn!(error = %e, "meter provider shutdown");
            }
        }
    }

    /// True when some instrument needs more than its limit.
    fn outgrown_by(&self, demand: &Demand) -> bool {
        demand
            .iter()
            .any(|(name, points)| *points > self.limits.get(name).copied().unwrap_or(0))
    }
}

struct Inner {
    settings: Settings,
    google: Option<Arc<GoogleAuth>>,
    resource: Resource,
    sources: Sources,
    /// (instrument name, points per node) of every enabled per-node family.
    sizing: Vec<Sizing>,
    current: RwLock<Arc<Pipelines>>,
    resize: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

/// All telemetry of the process: metric pipelines (resized as the cluster
/// grows) and the tracer provider for our own spans.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

fn meter_provider(
    resource: &Resource,
    limits: Arc<HashMap<&'static str, usize>>,
) -> opentelemetry_sdk::metrics::MeterProviderBuilder {
    SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_view(move |i: &Instrument| {
            let limit = *limits.get(i.name())?;
            Stream::builder().with_cardinality_limit(limit).build().ok()
        })
}

impl Inner {
    /// Builds a generation of pipelines. Must run inside the tokio runtime (the OTLP channel spawns on it).
    fn build(&self, limits: HashMap<&'static str, usize>) -> Result<Pipelines, TelemetryError> {
        let limits = Arc::new(limits);
        let capacity = Capacity::new(limits.clone(), self.resize.clone(), self.notify.clone());
        let prometheus = if self.settings.prometheus {
            let registry = prometheus::Registry::new();
            let reader = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .scope_info_enabled(false)
                .build()
                .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
            let provider = meter_provider(&self.resource, limits.clone())
                .with_reader(reader)
                .build();
            instruments::register(&provider.meter("kube-node-status"), &self.sources, &capacity);
            Some((provider, registry))
        } else {
            None
        };
        let otlp = match &self.settings.otlp_metrics {
            Some(otlp_settings) => {
                let exporter = otlp::metric_exporter(
                    otlp_settings,
                    self.sources.export.clone(),
                    self.settings.export_interval,
                    self.google.clone(),
                )?;
                let reader = PeriodicReader::builder(exporter)
                    .with_interval(self.settings.export_interval)
                    .build();
                let provider = meter_provider(&self.resource, limits.clone())
                    .with_reader(reader)
                    .build();
                instruments::register(&provider.meter("kube-node-status"), &self.sources, &capacity);
                Some(provider)
            }
            None => None,
        };
        Ok(Pipelines {
            limits,
            prometheus,
            otlp,
        })
    }

    fn demand(&self) -> Demand {
        demand(&self.sizing, &self.sources.view.nodes())
    }
}

impl Telemetry {
    /// Builds the metric pipelines for `view`. Call inside the tokio runtime.
    /// `google` authenticates OTLP requests in Google mode.
    pub fn start(
        settings: &Settings,
        resource: Resource,
        view: View,
        google: Option<Arc<GoogleAuth>>,
    ) -> Result<Telemetry, TelemetryError> {
        let readings = Arc::new(settings.readings.clone());
        let sizing = families::node_families(readings.naming)
            .into_iter()
            .filter(|f| readings.enabled(f.name))
            .map(|f| (f.name, f.count))
            .collect();
        let inner = Inner {
            settings: settings.clone(),
            google,
            resource,
            sources: Sources {
                view,
                export: Arc::new(ExportStats::default()),
                settings: readings,
            },
            sizing,
            current: RwLock::new(Arc::new(Pipelines {
                limits: Arc::default(),
                prometheus: None,
                otlp: None,
            })),
            resize: Arc::new(AtomicBool::new(false)),
            notify: Arc::new(Notify::new()),
        };
        let first = inner.build(limits_for(&inner.demand()))?;
        *inner.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(first);
        Ok(Telemetry {
            inner: Arc::new(inner),
        })
    }

    fn current(&self) -> Arc<Pipelines> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A handle that renders `/metrics`, if the Prometheus exporter is on.
    pub fn metrics_handle(&self) -> Option<MetricsHandle> {
        self.inner.settings.prometheus.then(|| {
            let t = self.clone();
            MetricsHandle::new(move || t.current().prometheus.as_ref().map(|(_, r)| r.clone()))
        })
    }

    /// Keeps the cardinality limits sized to the cluster: rebuilds the pipelines
    /// with larger limits whenever the view outgrows them. Runs forever.
    pub async fn resize_loop(self) {
        let health = self.inner.sources.view.health().clone();
        loop {
            tokio::select! {
                _ = health.changed() => {}
                _ = self.inner.notify.notified() => {}
            }
            self.inner.resize.store(false, Ordering::Release);
            let demand = self.inner.demand();
            let old = self.current();
            if old.outgrown_by(&demand) {
                let total: usize = demand.values().sum();
                match self.inner.build(limits_for(&demand)) {
                    Ok(new) => {
                        *self.inner.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
                        info!(points = total, "resized metric pipelines for the cluster");
                        // Shutting down flushes one last OTLP export: keep it off the async workers.
                        let _ = tokio::task::spawn_blocking(move || old.shutdown()).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "could not resize metric pipelines; keeping the current ones")
                    }
                }
            }
            // Bound the cost of recounting under heavy churn.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Shuts every meter provider down, flushing OTLP once. Blocking.
    pub fn shutdown(&self) {
        self.current().shutdown();
    }
}

/// Checks the OTLP metric exporter's configuration (endpoint, headers,
/// compression) without connecting: the channel is lazy and dropped unused.
pub fn check(settings: &Settings) -> Result<(), TelemetryError> {
    if let Some(otlp_settings) = &settings.otlp_metrics {
        drop(otlp::metric_exporter(
            otlp_settings,
            Arc::default(),
            settings.export_interval,
            None,
        )?);
    }
    Ok(())
}

/// Application Default Credentials when an OTLP signal uses `--otlp-auth google`,
/// with a task keeping their token fresh. Call inside the tokio runtime.
pub fn google_auth(settings: &Settings) -> Result<Option<Arc<GoogleAuth>>, TelemetryError> {
    let google = [&settings.otlp_metrics, &settings.otlp_traces]
        .into_iter()
        .flatten()
        .any(|o| o.auth == crate::config::OtlpAuth::Google);
    if !google {
        return Ok(None);
    }
    let auth = GoogleAuth::from_adc()?;
    tokio::spawn(auth.clone().refresh_loop());
    Ok(Some(auth))
}

/// Builds the tracer provider for our own spans, if OTLP traces are on.
pub fn tracer_provider(
    settings: &Settings,
    resource: Resource,
    google: Option<Arc<GoogleAuth>>,
) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let Some(otlp_settings) = &settings.otlp_traces else {
        return Ok(None);
    };
    let exporter = otlp::span_exporter(otlp_settings, google)?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cardinality_limit_follows_the_data() {
        for (points, want) in [
            (0, 2_000),
            (1_599, 2_000),
            (1_600, 2_000),
            (1_700, 2_125),
            (150_000, 187_500),
        ] {
            assert_eq!(cardinality_limit(points), want, "{points}");
        }
        // 50,000 nodes with 5 conditions each: never overflows, never a constant 2,000,000.
        let at_50k = cardinality_limit(50_000 * 5 * 3);
        assert!(at_50k > 750_000 && at_50k < 1_000_000);
    }
}

//! OTLP over gRPC: exporter construction, TLS, and failure accounting.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter as SdkSpanExporter},
};
use tonic::transport::{Certificate, ClientTlsConfig};
use tracing::{Instrument, debug, info, info_span, warn};

pub mod chunks;
pub mod client;
pub mod wire;

use crate::config::{ConfigError, OtlpSettings};
use crate::telemetry::google::{GoogleAuth, RequestHeaders};
use client::MetricsClient;
use wire::Part;

/// Counts OTLP failures and remembers whether we are in a failure streak, so
/// an unreachable collector is logged once per streak rather than every interval.
#[derive(Debug, Default)]
pub struct ExportStats {
    failures: AtomicU64,
    denied: AtomicU64,
    failing: AtomicBool,
    rejected: AtomicU64,
    rejecting: AtomicBool,
}

impl ExportStats {
    /// Metric exports that failed since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Metric exports refused for access (UNAUTHENTICATED, PERMISSION_DENIED, no token).
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Records an access refusal (counted as a failure too, by the caller).
    pub(super) fn on_denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Metric points a receiver took a request for and then refused
    /// (`partial_success.rejected_data_points`): sent, never stored.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Counts `points` a response refused.
    pub(super) fn on_rejected(&self, points: u64) {
        self.rejected.fetch_add(points, Ordering::Relaxed);
    }

    /// Records a cycle whose responses refused `points` in all (0: they
    /// took every point); true when this starts a streak of cycles with
    /// refusals, or ends one: each deserves one log line.
    pub(super) fn on_cycle_rejections(&self, points: u64) -> bool {
        if points > 0 {
            !self.rejecting.swap(true, Ordering::AcqRel)
        } else {
            self.rejecting.swap(false, Ordering::AcqRel)
        }
    }

    /// Records a failure; true if it starts a streak (and so deserves a log line).
    fn on_failure(&self) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        !self.failing.swap(true, Ordering::AcqRel)
    }

    /// Records a success; true if it ends a streak.
    fn on_success(&self) -> bool {
        self.failing.swap(false, Ordering::AcqRel)
    }
}

/// TLS for `https://` endpoints: webpki roots (tonic's default store is
/// empty) plus any CA from `OTEL_EXPORTER_OTLP_CERTIFICATE`. Ignored by tonic
/// for `http://` endpoints.
pub(crate) fn tls_config(settings: &OtlpSettings) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new().with_webpki_roots();
    match &settings.ca_pem {
        Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
        None => tls,
    }
}

/// Builds the OTLP metric exporter, wrapped to count and log failures.
///
/// Always ours ([`client`]), never the SDK's: requests must stay
/// under a receiver's message limit however large the cluster, which needs
/// splitting, and the per-node families are sent from their encoded cache.
///
/// Must run inside a tokio runtime: the channel's workers are spawned on it.
pub fn metric_exporter(
    settings: &OtlpSettings,
    stats: Arc<ExportStats>,
    interval: Duration,
    google: Option<Arc<GoogleAuth>>,
) -> Result<MetricsExporter, ConfigError> {
    let max_points = settings
        .max_points_per_request
        .unwrap_or(crate::config::DEFAULT_MAX_POINTS_PER_REQUEST);
    let inner = MetricsClient::new(settings, max_points, interval, google, stats.clone())?;
    Ok(MetricsExporter { inner, stats })
}

/// Builds the OTLP span exporter for our own traces.
pub fn span_exporter(
    settings: &OtlpSettings,
    google: Option<Arc<GoogleAuth>>,
) -> Result<ReportingSpanExporter, ConfigError> {
    let mut builder = SpanExporter::builder()
        .with_tonic()
        .with_tls_config(tls_config(settings));
    if google.is_some() {
        // OTEL_EXPORTER_OTLP_HEADERS still reach the request through the SDK's own metadata.
        builder = builder.with_interceptor(RequestHeaders::new(tonic::metadata::MetadataMap::new(), google));
    }
    // Resolved by `config::otlp`; headers, timeout and compression the SDK
    // reads from the same variables itself.
    builder = builder.with_endpoint(settings.endpoint.clone());
    let inner = builder.build().map_err(|e| ConfigError::Otlp(e.to_string()))?;
    Ok(ReportingSpanExporter {
        inner,
        stats: ExportStats::default(),
    })
}

/// The OTLP metric exporter: sends the requests of one export cycle,
/// counting failures and logging once per streak.
pub struct MetricsExporter {
    inner: MetricsClient,
    stats: Arc<ExportStats>,
}

impl fmt::Debug for MetricsExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsExporter").finish_non_exhaustive()
    }
}

impl MetricsExporter {
    /// The most points a request may carry.
    pub fn max_points(&self) -> usize {
        self.inner.max_points()
    }

    /// Sends every request `rx` yields until one fails for good (see
    /// [`MetricsClient::send_all`]). Failures count once per cycle.
    /// `project` names the Google Cloud project in a permission hint.
    pub async fn export_cycle(&self, rx: tokio::sync::mpsc::Receiver<Part>, project: Option<&str>) {
        // Export cycles are root spans of their own, not children of whatever ran before.
        let span = {
            let _fresh = opentelemetry::Context::new().attach();
            info_span!(
                "otlp.export",
                metrics = tracing::field::Empty,
                points = tracing::field::Empty,
                outcome = tracing::field::Empty
            )
        };
        let started = std::time::Instant::now();
        let result = self.inner.send_all(rx, project).instrument(span.clone()).await;
        match result {
            Ok(sent) => {
                span.record("metrics", sent.metrics);
                span.record("points", sent.points);
                span.record("outcome", "ok");
                if self.stats.on_success() {
                    info!("OTLP metric export recovered");
                }
                // A receiver may take a request and refuse some of its points (an
                // attribute it does not allow, a point too old): sent, never stored.
                if self.stats.on_cycle_rejections(sent.rejected) {
                    if sent.rejected > 0 {
                        warn!(
                            rejected = sent.rejected,
                            message = sent.rejection.as_deref().unwrap_or_default(),
                            "the OTLP receiver refused some metric points; counted in \
                             kube_node_status_otlp_export_rejected_total, logged again only after a cycle it takes whole"
                        );
                    } else {
                        info!("the OTLP receiver takes every metric point again");
                    }
                }
                debug!(
                    requests = sent.requests,
                    metrics = sent.metrics,
                    points = sent.points,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "OTLP collection exported"
                );
            }
            Err(err) => {
                span.record("outcome", "error");
                if self.stats.on_failure() {
                    warn!(error = %err, "OTLP metric export failed; retrying every interval, next log line when it recovers");
                }
            }
        }
    }
}

/// The OTLP span exporter, logging once per failure streak.
#[derive(Debug)]
pub struct ReportingSpanExporter {
    inner: SpanExporter,
    stats: ExportStats,
}

impl SdkSpanExporter for ReportingSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self.inner.export(batch).await {
            Ok(()) => {
                self.stats.on_success();
            }
            Err(err) => {
                if self.stats.on_failure() {
                    warn!(error = %err, "OTLP trace export failed; next log line when it recovers");
                }
            }
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_logged_once_per_streak() {
        let s = ExportStats::default();
        assert!(s.on_failure());
        assert!(!s.on_failure());
        assert!(!s.on_failure());
        assert!(s.on_success());
        assert!(!s.on_success());
        assert!(s.on_failure());
        assert_eq!(s.failures(), 4);
    }
}

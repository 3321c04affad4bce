//! An OTLP/gRPC metric exporter that sends each collection as requests of at
//! most N data points, a few at a time, retrying retryable failures within the
//! export interval and honouring the receiver's RetryInfo.
//!
//! Used when `--otlp-max-points-per-request` is set: some receivers (Google's
//! Telemetry API takes 200 points) refuse larger requests, and the SDK's
//! exporter cannot split one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient,
};
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    metrics::{Temporality, data::ResourceMetrics, exporter::PushMetricExporter},
};
use tonic::{
    Code, Status,
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;
use tracing::debug;

use super::{
    ExportStats, chunks,
    google::{GoogleAuth, RequestHeaders, permission_hint},
};
use crate::config::{ConfigError, OtlpSettings};

/// How many requests of one collection are in flight at once.
const CONCURRENCY: usize = 4;
/// The first wait before retrying, when the receiver says nothing; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Settings read from the standard OTLP variables, signal-specific first.
fn env_var(env: &dyn Fn(&str) -> Option<String>, generic: &str) -> Option<String> {
    let specific = generic.replacen("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_METRICS_", 1);
    env(&specific)
        .or_else(|| env(generic))
        .filter(|v| !v.trim().is_empty())
}

/// Percent-decodes a header value (the OTLP spec's `OTEL_EXPORTER_OTLP_HEADERS` encoding).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `k1=v1,k2=v2` into gRPC metadata.
fn headers(value: Option<String>) -> Result<MetadataMap, ConfigError> {
    let mut map = MetadataMap::new();
    for pair in value
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let bad = || {
            ConfigError::Otlp(format!(
                "OTEL_EXPORTER_OTLP_HEADERS: cannot use {pair:?} as key=value"
            ))
        };
        let (k, v) = pair.split_once('=').ok_or_else(bad)?;
        let key = MetadataKey::from_bytes(k.trim().to_ascii_lowercase().as_bytes()).map_err(|_| bad())?;
        let value = MetadataValue::try_from(percent_decode(v.trim())).map_err(|_| bad())?;
        map.insert(key, value);
    }
    Ok(map)
}

struct Inner {
    client: MetricsServiceClient<InterceptedService<Channel, RequestHeaders>>,
    google: Option<Arc<GoogleAuth>>,
    stats: Arc<ExportStats>,
    timeout: Duration,
    max_points: usize,
    budget: Duration,
}

/// The chunking exporter. Must be built inside the tokio runtime.
pub struct ChunkedMetricExporter {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ChunkedMetricExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedMetricExporter")
            .field("max_points", &self.inner.max_points)
            .finish()
    }
}

impl ChunkedMetricExporter {
    /// Builds it from the OTLP settings and the standard variables (through `env`).
    /// `budget` bounds the time spent on one collection, retries included: the export interval.
    /// With `google`, every request carries its current access token.
    pub fn new(
        settings: &OtlpSettings,
        max_points: usize,
        budget: Duration,
        env: &dyn Fn(&str) -> Option<String>,
        google: Option<Arc<GoogleAuth>>,
        stats: Arc<ExportStats>,
    ) -> Result<Self, ConfigError> {
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| env_var(env, "OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_else(|| "http://localhost:4317".to_string());
        let timeout = env_var(env, "OTEL_EXPORTER_OTLP_TIMEOUT")
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(10));
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| ConfigError::Otlp(format!("invalid endpoint {endpoint:?}: {e}")))?
            .tls_config(super::otlp::tls_config(settings))
            .map_err(|e| ConfigError::Otlp(format!("TLS for {endpoint:?}: {e}")))?
            .timeout(timeout)
            .connect_lazy();
        let fixed = headers(env_var(env, "OTEL_EXPORTER_OTLP_HEADERS"))?;
        let mut client =
            MetricsServiceClient::with_interceptor(channel, RequestHeaders::new(fixed, google.clone()))
                .max_decoding_message_size(4 << 20);
        if env_var(env, "OTEL_EXPORTER_OTLP_COMPRESSION")
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("gzip"))
        {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(ChunkedMetricExporter {
            inner: Arc::new(Inner {
                client,
                google,
                stats,
                timeout,
                max_points: max_points.max(1),
                budget,
            }),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

/// The OTLP spec's retryable codes; RESOURCE_EXHAUSTED only when the receiver says when.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => status.get_details_retry_info().is_some(),
        _ => false,
    }
}

/// Why a collection did not get through.
enum Failure {
    /// No credentials to send with: nothing was sent.
    NoToken(String),
    /// The receiver refused (the first cause, for several requests).
    Refused(Status),
}

/// A refusal that every other request of the collection would get too.
fn denied(status: &Status) -> bool {
    matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated)
}

impl Inner {
    async fn send(
        &self,
        part: ExportMetricsServiceRequest,
        deadline: tokio::time::Instant,
        refused: &AtomicBool,
    ) -> Result<(), Status> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // After one access refusal the rest of the collection would only
            // repeat it: a misconfigured project costs one request per interval.
            if refused.load(Ordering::Acquire) {
                return Err(Status::cancelled("skipped after an access refusal"));
            }
            if let Some(google) = &self.google {
                // A large collection can outlive a token: take the newest before each
                // request (a cheap cache check; the interceptor reports a failure).
                let _ = google.refresh().await;
            }
            let mut request = tonic::Request::new(part.clone());
            request.set_timeout(self.timeout);
            let status = match self.client.clone().export(request).await {
                Ok(_) => return Ok(()),
                Err(status) => status,
            };
            let wait = status
                .get_details_retry_info()
                .and_then(|r| r.retry_delay)
                .unwrap_or(backoff);
            if denied(&status) {
                refused.store(true, Ordering::Release);
            }
            if !retryable(&status) || tokio::time::Instant::now() + wait >= deadline {
                return Err(status);
            }
            debug!(code = ?status.code(), wait_ms = wait.as_millis() as u64, "OTLP request failed; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn send_all(self: Arc<Self>, parts: Vec<ExportMetricsServiceRequest>) -> Result<usize, Failure> {
        let deadline = tokio::time::Instant::now() + self.budget;
        if let Some(google) = &self.google {
            // Waits for a new token if the cached one has expired.
            match tokio::time::timeout_at(deadline, google.refresh()).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(Failure::NoToken(why)),
                Err(_) => return Err(Failure::NoToken(google.no_token())),
            }
        }
        let count = parts.len();
        let refused = AtomicBool::new(false);
        let results: Vec<Result<(), Status>> = futures::stream::iter(parts)
            .map(|part| self.send(part, deadline, &refused))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut errors: Vec<Status> = results.into_iter().filter_map(Result::err).collect();
        // Report the cause, not the requests skipped because of it.
        errors.sort_by_key(|s| !denied(s));
        match errors.into_iter().next() {
            None => Ok(count),
            Some(status) => Err(Failure::Refused(status)),
        }
    }
}

impl PushMetricExporter for ChunkedMetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let started = std::time::Instant::now();
        let request = ExportMetricsServiceRequest::from(metrics);
        let points = chunks::request_points(&request);
        let parts = chunks::split(request, self.inner.max_points);
        // The SDK drives exports on its own thread; timers and the channel need the runtime.
        match self.runtime.spawn(self.inner.clone().send_all(parts)).await {
            Ok(Ok(requests)) => {
                debug!(
                    requests,
                    points,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "OTLP export sent in parts"
                );
                Ok(())
            }
            Ok(Err(Failure::NoToken(why))) => {
                self.inner.stats.on_denied();
                Err(OTelSdkError::InternalFailure(format!(
                    "OTLP export not sent: {why}"
                )))
            }
            Ok(Err(Failure::Refused(status))) => {
                let mut text = format!(
                    "OTLP export failed with gRPC code {:?}: {}",
                    status.code(),
                    status.message()
                );
                if denied(&status) {
                    self.inner.stats.on_denied();
                    if self.inner.google.is_some() {
                        let project = metrics
                            .resource()
                            .get(&opentelemetry::Key::from_static_str("gcp.project_id"))
                            .map(|v| v.to_string());
                        if let Some(hint) = permission_hint(status.code(), project.as_deref()) {
                            text = format!("{text}; {hint}");
                        }
                    }
                }
                Err(OTelSdkError::InternalFailure(text))
            }
            Err(e) => Err(OTelSdkError::InternalFailure(format!("OTLP export task: {e}"))),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_decode() {
        let map = headers(Some("x-tenant=team-a, Authorization=Bearer%20abc ,".into())).unwrap();
        assert_eq!(map.get("x-tenant").unwrap(), "team-a");
        assert_eq!(map.get("authorization").unwrap(), "Bearer abc");
        assert!(headers(Some("novalue".into())).is_err());
        assert!(headers(None).unwrap().is_empty());
    }

    #[test]
    fn retryable_codes_follow_the_otlp_spec() {
        for (code, want) in [
            (Code::Unavailable, true),
            (Code::DeadlineExceeded, true),
            (Code::Aborted, true),
            (Code::PermissionDenied, false),
            (Code::InvalidArgument, false),
            (Code::ResourceExhausted, false),
        ] {
            assert_eq!(retryable(&Status::new(code, "x")), want, "{code:?}");
        }
        let with_info = Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(5))),
        );
        assert!(retryable(&with_info));
    }

    #[test]
    fn signal_specific_variables_win() {
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT" => Some("500".to_string()),
            "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("9000".to_string()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("a=b".to_string()),
            _ => None,
        };
        assert_eq!(
            env_var(&env, "OTEL_EXPORTER_OTLP_TIMEOUT").as_deref(),
            Some("500")
        );
        assert_eq!(
            env_var(&env, "OTEL_EXPORTER_OTLP_HEADERS").as_deref(),
            Some("a=b")
        );
        assert_eq!(env_var(&env, "OTEL_EXPORTER_OTLP_ENDPOINT"), None);
    }
}

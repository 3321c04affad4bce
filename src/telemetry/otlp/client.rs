//! The OTLP/gRPC metrics client: sends export requests already encoded
//! (see [`super::wire`]), a few at a time, retrying retryable failures
//! within the export interval and honouring the receiver's RetryInfo.
//!
//! Requests are bytes, not opentelemetry-proto structures: the per-node
//! families are kept encoded between exports, and a retry only clones a
//! reference-counted buffer. A raw codec hands them to tonic as they are.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes};
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use tonic::{
    Code, GrpcMethod, Status,
    client::Grpc,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;
use tracing::debug;

use super::{ExportStats, wire::Part};
use crate::config::{ConfigError, OtlpSettings};
use crate::telemetry::google::{GoogleAuth, RequestHeaders, permission_hint};

/// How many requests of one export are in flight at once.
pub const CONCURRENCY: usize = 4;
/// The first wait before retrying, when the receiver says nothing; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// The settings' headers as gRPC metadata.
pub(crate) fn metadata(headers: &[(String, String)]) -> Result<MetadataMap, ConfigError> {
    let mut map = MetadataMap::new();
    for (k, v) in headers {
        let bad = || {
            ConfigError::Otlp(format!(
                "OTEL_EXPORTER_OTLP_HEADERS: cannot send {k:?} as a gRPC header"
            ))
        };
        let key = MetadataKey::from_bytes(k.as_bytes()).map_err(|_| bad())?;
        let value = MetadataValue::try_from(v.as_str()).map_err(|_| bad())?;
        map.insert(key, value);
    }
    Ok(map)
}

/// The OTLP metrics service's one method.
const EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Sends requests that are already encoded; decodes the response with prost.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportMetricsServiceResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ExportMetricsServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let response = ExportMetricsServiceResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| Status::internal(format!("undecodable OTLP response: {e}")))?;
        Ok(Some(response))
    }
}

struct Inner {
    grpc: Grpc<InterceptedService<Channel, RequestHeaders>>,
    google: Option<Arc<GoogleAuth>>,
    stats: Arc<ExportStats>,
    timeout: Duration,
    max_points: usize,
    budget: Duration,
}

/// The metrics client. Must be built inside the tokio runtime.
pub struct MetricsClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetricsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsClient")
            .field("max_points", &self.inner.max_points)
            .finish()
    }
}

/// What an export sent.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    /// Requests.
    pub requests: usize,
    /// Metric entries.
    pub metrics: usize,
    /// Data points.
    pub points: usize,
    /// Data points the receiver refused in answers that took the request (partial success).
    pub rejected: u64,
    /// The receiver's first message about refused points.
    pub rejection: Option<String>,
}

impl MetricsClient {
    /// Builds it from the resolved OTLP settings.
    /// `budget` (the export interval) bounds how long one request is retried,
    /// from its first attempt; a cycle that fails for good ends there.
    /// With `google`, every request carries its current access token.
    pub fn new(
        settings: &OtlpSettings,
        max_points: usize,
        budget: Duration,
        google: Option<Arc<GoogleAuth>>,
        stats: Arc<ExportStats>,
    ) -> Result<Self, ConfigError> {
        let endpoint = settings.endpoint.clone();
        let timeout = settings.timeout;
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| ConfigError::Otlp(format!("invalid endpoint {endpoint:?}: {e}")))?
            .tls_config(super::tls_config(settings))
            .map_err(|e| ConfigError::Otlp(format!("TLS for {endpoint:?}: {e}")))?
            .timeout(timeout)
            .connect_lazy();
        let fixed = metadata(&settings.headers)?;
        let service = InterceptedService::new(channel, RequestHeaders::new(fixed, google.clone()));
        let mut grpc = Grpc::new(service).max_decoding_message_size(4 << 20);
        if settings.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(MetricsClient {
            inner: Arc::new(Inner {
                grpc,
                google,
                stats,
                timeout,
                max_points: max_points.max(1),
                budget,
            }),
        })
    }

    /// The most points a request may carry.
    pub fn max_points(&self) -> usize {
        self.inner.max_points
    }
}

/// The OTLP spec's retryable codes; RESOURCE_EXHAUSTED only when the receiver says when.
pub(crate) fn retryable(status: &Status) -> bool {
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

/// A refusal that every other request of the collection would get too.
fn denied(status: &Status) -> bool {
    matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated)
}

impl Inner {
    /// Sends `part`; returns it with the points the receiver refused in its
    /// answer (a partial success) and the receiver's message about them.
    async fn send(&self, part: Part, refused: &AtomicBool) -> Result<(Part, u64, Option<String>), Status> {
        // A part is retried for one interval from its first attempt: by then the
        // next collection carries fresher points. Counted per part, not from the
        // start of the cycle, so a collection that took long to write (a large
        // cluster on a slow machine) still gets its retries.
        let deadline = tokio::time::Instant::now() + self.budget;
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
            let status = match self.export(part.bytes.clone()).await {
                Ok(response) => {
                    let partial = response.partial_success.unwrap_or_default();
                    let rejected = u64::try_from(partial.rejected_data_points).unwrap_or(0);
                    if rejected > 0 {
                        self.stats.on_rejected(rejected);
                        debug!(rejected, message = %partial.error_message, "the OTLP receiver refused some metric points");
                    }
                    let message = (rejected > 0).then_some(partial.error_message);
                    return Ok((part, rejected, message));
                }
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

    async fn export(&self, bytes: Bytes) -> Result<ExportMetricsServiceResponse, Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::unknown(format!("OTLP channel not ready: {e}")))?;
        let mut request = tonic::Request::new(bytes);
        request.set_timeout(self.timeout);
        request.extensions_mut().insert(GrpcMethod::new(
            "opentelemetry.proto.collector.metrics.v1.MetricsService",
            "Export",
        ));
        let path = http::uri::PathAndQuery::from_static(EXPORT);
        Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
    }
}

/// Why an export did not get through.
#[derive(Debug)]
pub struct ExportError(String);

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl MetricsClient {
    /// Sends every part `parts` yields, [`CONCURRENCY`] at a time, until
    /// one fails for good: the rest would meet the same collector or the
    /// same refusal, and the next interval tries again. `project` names
    /// the Google Cloud project in a permission hint.
    pub async fn send_all(
        &self,
        mut parts: tokio::sync::mpsc::Receiver<Part>,
        project: Option<&str>,
    ) -> Result<Sent, ExportError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.budget;
        if let Some(google) = &inner.google {
            // Waits for a new token if the cached one has expired.
            let why = match tokio::time::timeout_at(deadline, google.refresh()).await {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(why),
                Err(_) => Some(google.no_token()),
            };
            if let Some(why) = why {
                inner.stats.on_denied();
                return Err(ExportError(format!("OTLP export not sent: {why}")));
            }
        }
        let refused = AtomicBool::new(false);
        let incoming = futures::stream::poll_fn(|cx| parts.poll_recv(cx));
        let mut results = incoming
            .map(|part| inner.send(part, &refused))
            .buffer_unordered(CONCURRENCY);
        let mut sent = Sent::default();
        let mut failure = None;
        while let Some(result) = results.next().await {
            match result {
                Ok((part, rejected, message)) => {
                    sent.requests += 1;
                    sent.metrics += part.metrics;
                    sent.points += part.points;
                    sent.rejected += rejected;
                    sent.rejection = sent.rejection.or(message);
                }
                Err(status) => {
                    failure = Some(status);
                    break;
                }
            }
        }
        let Some(status) = failure else { return Ok(sent) };
        let mut text = format!(
            "OTLP export failed with gRPC code {:?}: {}",
            status.code(),
            status.message()
        );
        if denied(&status) {
            inner.stats.on_denied();
            if inner.google.is_some()
                && let Some(hint) = permission_hint(status.code(), project)
            {
                text = format!("{text}; {hint}");
            }
        }
        Err(ExportError(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_metadata() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let map = metadata(&pairs(&[("x-tenant", "team-a"), ("authorization", "Bearer abc")])).unwrap();
        assert_eq!(map.get("x-tenant").unwrap(), "team-a");
        assert_eq!(map.get("authorization").unwrap(), "Bearer abc");
        assert!(metadata(&pairs(&[("bad key", "v")])).is_err());
        assert!(metadata(&pairs(&[("k", "line\nbreak")])).is_err());
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
}

//! Node condition changes as OTLP log records, with the reason and message
//! the node gave: the "why" a metric label cannot carry.
//!
//! The watch hands each change to a bounded [`LogQueue`] (leader only); a
//! task sends what waits in batches, retrying while the collector is down.
//! Records are built from opentelemetry-proto's types and sent with its
//! generated client over the same channel setup (TLS, headers, gzip, Google
//! credentials) as the metrics. The SDK's batch processor is not used: when
//! full it drops the newest records, and an operator wants the newest.

pub mod queue;
pub mod record;

use std::{sync::Arc, time::Duration};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    common::v1::InstrumentationScope,
    logs::v1::{ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use tonic::{
    Status,
    codec::CompressionEncoding,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tracing::{debug, info, warn};

pub use queue::{LogQueue, LogStats};

use crate::{
    cluster::{ConditionChange, ConditionSink},
    config::{ConfigError, OtlpSettings},
    leader::Leadership,
    telemetry::google::{GoogleAuth, RequestHeaders},
};

/// Records per request at most.
const BATCH: usize = 512;
/// How long the sender waits after a record arrives, so that a burst (a zone
/// outage) goes in one request instead of one each, and so that changes
/// arriving a few a second (a node-pool upgrade) share requests: a request
/// cost about as much CPU as the change it carried. The OTel SDK's batch
/// log processor waits as long (`OTEL_BLRP_SCHEDULE_DELAY`, 1 s).
const LINGER: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How far back a new leader reports the changes it saw: from the old
/// leader's last renewal to the takeover is at most a lease duration and a
/// retry period; a graceful shutdown stops its watch up to its flush budget
/// (6 s) before it frees the Lease; and a record may wait [`LINGER`] (or a
/// collector's backoff) before it is sent. A change seen by both leaders is
/// then reported by each: once per leadership.
pub fn replay_window(lease: &crate::leader::LeaseSettings) -> Duration {
    lease.duration + 2 * lease.retry_period() + Duration::from_secs(10)
}

type Client = LogsServiceClient<InterceptedService<Channel, RequestHeaders>>;

/// The log pipeline: the queue the watch fills and the task that empties it.
pub struct Logs {
    queue: Arc<LogQueue>,
    stats: Arc<LogStats>,
    sender: Sender,
    leadership: Leadership,
}

#[derive(Clone)]
struct Sender {
    client: Client,
    google: Option<Arc<GoogleAuth>>,
    origin: Arc<(Resource, InstrumentationScope)>,
    timeout: Duration,
}

impl Logs {
    /// Starts it: records go to `settings`' endpoint with `resource` (the
    /// metrics' resource), at most `capacity` waiting; a new leader first
    /// reports what it saw in the last `replay` (see [`LogQueue`]). Call
    /// inside the runtime.
    pub fn start(
        settings: &OtlpSettings,
        capacity: usize,
        resource: &opentelemetry_sdk::Resource,
        leadership: Leadership,
        replay: Option<Duration>,
        google: Option<Arc<GoogleAuth>>,
    ) -> Result<Logs, ConfigError> {
        let endpoint = settings.endpoint.clone();
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| ConfigError::Otlp(format!("invalid endpoint {endpoint:?}: {e}")))?
            .tls_config(super::otlp::tls_config(settings))
            .map_err(|e| ConfigError::Otlp(format!("TLS for {endpoint:?}: {e}")))?
            .timeout(settings.timeout)
            .connect_lazy();
        let headers = RequestHeaders::new(super::otlp::client::metadata(&settings.headers)?, google.clone());
        let mut client = LogsServiceClient::new(InterceptedService::new(channel, headers));
        if settings.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let stats = Arc::new(LogStats::default());
        let queue = Arc::new(LogQueue::new(capacity, leadership.clone(), stats.clone(), replay));
        let scope = InstrumentationScope {
            name: "kube-node-status".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let sender = Sender {
            client,
            google,
            origin: Arc::new((resource.into(), scope)),
            timeout: settings.timeout,
        };
        Ok(Logs {
            queue,
            stats,
            sender,
            leadership,
        })
    }

    /// Sends what the queue holds, and follows leadership for the replay,
    /// until the caller stops awaiting it. It runs in the telemetry task, so
    /// a panic in it ends the process (`tasks`) instead of silently ending
    /// the records.
    pub async fn run(&self) {
        tokio::join!(
            run(self.queue.clone(), self.sender.clone(), self.stats.clone()),
            follow(self.queue.clone(), self.leadership.clone()),
        );
    }

    /// Where the watch hands condition changes.
    pub fn sink(&self) -> Arc<dyn ConditionSink> {
        self.queue.clone()
    }

    /// The counters self-telemetry reports.
    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    /// On shutdown: sends what waits, once, without retrying.
    /// Call once [`Logs::run`] is no longer awaited.
    pub async fn flush(&self) {
        while !self.queue.is_empty() {
            let batch = self.queue.take(BATCH);
            let n = batch.len();
            match self.sender.send(&batch).await {
                Ok(rejected) => on_response(&self.stats, n, rejected),
                Err(status) => {
                    warn!(code = ?status.code(), records = n, "could not send the last condition-change records");
                    return;
                }
            }
        }
    }
}

impl Sender {
    /// Sends `batch`; returns how many of its records the collector refused
    /// while taking the request (`partial_success`).
    async fn send(&self, batch: &[ConditionChange]) -> Result<u64, Status> {
        if let Some(google) = &self.google {
            let _ = google.refresh().await;
        }
        let (resource, scope) = &*self.origin;
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records: batch.iter().map(record::record).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        let response = self.client.clone().export(request).await?.into_inner();
        let partial = response.partial_success.unwrap_or_default();
        if partial.rejected_log_records > 0 {
            debug!(rejected = partial.rejected_log_records, message = %partial.error_message, "the collector refused some condition-change records");
        }
        Ok(u64::try_from(partial.rejected_log_records).unwrap_or(0))
    }
}

/// Counts what the collector took and refused of `sent` records; a streak
/// of refusals is logged once at its start and once at its end.
fn on_response(stats: &LogStats, sent: usize, rejected: u64) {
    if stats.on_response(sent, rejected) {
        if rejected > 0 {
            warn!(
                rejected,
                "the collector refused some condition-change records; counted in \
                 kube_node_status_logs_records_total{{outcome=\"rejected\"}}, logged again only after it takes every record"
            );
        } else {
            info!("the collector takes every condition-change record again");
        }
    }
}

/// Tells the queue when this replica gains or loses leadership, until aborted.
async fn follow(queue: Arc<LogQueue>, leadership: Leadership) {
    let mut leading = leadership.subscribe();
    loop {
        if *leading.borrow_and_update() {
            let replayed = queue.elected(std::time::SystemTime::now());
            if replayed > 0 {
                info!(
                    records = replayed,
                    "leading: reporting the condition changes seen just before"
                );
            }
        } else {
            queue.stepped_down();
        }
        if leading.changed().await.is_err() {
            return;
        }
    }
}

/// Sends what the queue holds, in batches, until aborted. A retryable failure
/// puts the batch back and waits, doubling up to [`MAX_BACKOFF`]; meanwhile
/// the queue keeps the newest records.
async fn run(queue: Arc<LogQueue>, sender: Sender, stats: Arc<LogStats>) {
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        if queue.is_empty() {
            queue.arrived.notified().await;
            tokio::time::sleep(LINGER).await;
        }
        let batch = queue.take(BATCH);
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        match sender.send(&batch).await {
            Ok(rejected) => {
                on_response(&stats, n, rejected);
                if failing {
                    info!("the collector takes condition-change records again");
                    failing = false;
                }
                backoff = FIRST_BACKOFF;
            }
            Err(status) if super::otlp::client::retryable(&status) => {
                if !failing {
                    warn!(code = ?status.code(), error = %status.message(), "cannot send condition-change records; keeping the newest and retrying");
                    failing = true;
                }
                queue.put_back(batch);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(status) => {
                stats.on_refused(n);
                // Google's Telemetry API writes log records to Cloud Logging, which takes another role.
                let hint = (sender.google.is_some() && status.code() == tonic::Code::PermissionDenied).then_some(
                    "grant the exporter's service account roles/logging.logWriter, or set --logs-exporter none; see docs/gcp.md",
                );
                warn!(
                    code = ?status.code(),
                    error = %status.message(),
                    hint,
                    records = n,
                    "the collector refused condition-change records"
                );
            }
        }
    }
}

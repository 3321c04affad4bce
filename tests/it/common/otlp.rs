//! An OTLP gRPC receiver built in the test from opentelemetry-proto's tonic services.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            ExportLogsServiceRequest, ExportLogsServiceResponse,
            logs_service_server::{LogsService, LogsServiceServer},
        },
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, any_value},
    metrics::v1::{metric, number_data_point},
};
use tonic::{
    Request, Response, Status,
    transport::{Identity, Server, ServerTlsConfig},
};

/// A private CA and a `localhost` server certificate it signed.
pub struct TestCa {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        TestCa::for_name("localhost")
    }

    /// A CA and a server certificate for the DNS name `name`.
    pub fn for_name(name: &str) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kns test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        TestCa {
            ca_pem: ca.pem(),
            server_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }

    /// (certificate PEM, key PEM) for [`Receiver::start`].
    pub fn server_pair(&self) -> (String, String) {
        (self.server_pem.clone(), self.server_key_pem.clone())
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    pub fn write_ca(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}

/// Judges a request's metadata: `Err` refuses it.
pub type AuthCheck = Arc<dyn Fn(&tonic::metadata::MetadataMap) -> Result<(), Status> + Send + Sync>;

/// Point attribute names the Telemetry API reserves for the monitored resource.
pub const RESERVED_ATTRIBUTES: [&str; 6] = [
    "namespace",
    "job",
    "instance",
    "cluster",
    "location",
    "project_id",
];

/// What the receiver got, with arrival times.
#[derive(Clone, Default)]
pub struct Received {
    /// When set, every metric export must pass it (else UNAUTHENTICATED or what it returns).
    pub auth: Arc<std::sync::OnceLock<AuthCheck>>,
    /// When non-zero, the receiver stands in for Google's Telemetry API:
    /// requests with more points, or with names or attribute keys the API
    /// refuses, are refused with INVALID_ARGUMENT. A plain OTLP receiver
    /// (the Collector) takes any attribute key.
    pub max_points: Arc<std::sync::atomic::AtomicUsize>,
    /// Refuse every metric export with PERMISSION_DENIED.
    pub deny: Arc<std::sync::atomic::AtomicBool>,
    /// Why requests were refused (other than `fail_next` and `deny`).
    pub rejected: Arc<Mutex<Vec<String>>>,
    /// Requests refused because of `deny`.
    pub denied: Arc<std::sync::atomic::AtomicUsize>,
    pub metrics: Arc<Mutex<Vec<(Instant, ExportMetricsServiceRequest)>>>,
    pub spans: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    /// Every log export request, in order.
    pub logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    /// Refuse every log export with UNAVAILABLE (a collector that is down for logs).
    pub logs_down: Arc<std::sync::atomic::AtomicBool>,
    /// The gRPC metadata (headers) of each metric export, in order.
    pub headers: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    /// How many of the next metric exports to refuse with UNAVAILABLE (and a RetryInfo).
    pub fail_next: Arc<std::sync::atomic::AtomicUsize>,
    /// How many were refused.
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
    /// When set, a partial success: every point of the metric of this name
    /// is refused (not stored) in a request otherwise taken, as Google's
    /// Telemetry API does with an attribute it does not allow.
    pub refuse_metric: Arc<Mutex<Option<String>>>,
    /// Points refused that way.
    pub points_refused: Arc<std::sync::atomic::AtomicU64>,
    /// A partial success: the log records of these nodes are refused (not stored).
    pub refuse_records_of: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// Records refused that way.
    pub records_refused: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        use std::sync::atomic::Ordering;
        if self
            .fail_next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            self.refused.fetch_add(1, Ordering::AcqRel);
            return Err(<Status as tonic_types::StatusExt>::with_error_details(
                tonic::Code::Unavailable,
                "try again shortly",
                tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(50))),
            ));
        }
        if self.deny.load(Ordering::Acquire) {
            self.denied.fetch_add(1, Ordering::AcqRel);
            return Err(Status::permission_denied(
                "Permission monitoring.timeSeries.create denied (or the resource may not exist).",
            ));
        }
        let reject = |why: String, status: Status| {
            self.rejected.lock().unwrap().push(why);
            Err(status)
        };
        if let Some(check) = self.auth.get()
            && let Err(status) = check(request.metadata())
        {
            return reject(format!("auth: {}", status.message()), status);
        }
        if let Err(why) = check_request(request.get_ref(), self.max_points.load(Ordering::Acquire)) {
            return reject(why.clone(), Status::invalid_argument(why));
        }
        let headers = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or("").to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        self.headers.lock().unwrap().push(headers);
        let mut request = request.into_inner();
        let mut response = ExportMetricsServiceResponse::default();
        if let Some(refused) = self.refuse_metric.lock().unwrap().clone() {
            let mut n = 0;
            for sm in request
                .resource_metrics
                .iter_mut()
                .flat_map(|rm| &mut rm.scope_metrics)
            {
                sm.metrics.retain(|m| {
                    if m.name != refused {
                        return true;
                    }
                    n += match &m.data {
                        Some(metric::Data::Gauge(g)) => g.data_points.len(),
                        Some(metric::Data::Sum(s)) => s.data_points.len(),
                        _ => 0,
                    };
                    false
                });
            }
            if n > 0 {
                self.points_refused.fetch_add(n as u64, Ordering::AcqRel);
                response.partial_success = Some(
                    opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess {
                        rejected_data_points: n as i64,
                        error_message: format!("metric {refused}: attribute not allowed"),
                    },
                );
            }
        }
        self.metrics.lock().unwrap().push((Instant::now(), request));
        Ok(Response::new(response))
    }
}

/// A non-empty `service.instance.id`; and with `max_points` set, what Google's
/// Telemetry API checks that we can check here: at most `max_points` points,
/// its name rules, and no point attribute named like a monitored-resource label.
pub fn check_request(req: &ExportMetricsServiceRequest, max_points: usize) -> Result<(), String> {
    let google = max_points > 0;
    if max_points > 0 && request_points(req) > max_points {
        return Err(format!(
            "{} points in one request, more than {max_points}",
            request_points(req)
        ));
    }
    if req.resource_metrics.len() > 200 {
        return Err(format!(
            "{} ResourceMetrics in one request",
            req.resource_metrics.len()
        ));
    }
    // The Telemetry API's documented name rules.
    let metric_name = regex::Regex::new(r"^[a-zA-Z][a-zA-Z0-9_:./-]*$").unwrap();
    let attribute_key = regex::Regex::new(r"^[a-zA-Z_][a-zA-Z0-9_.]*$").unwrap();
    for rm in &req.resource_metrics {
        let instance = rm
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.instance.id")
            .map(|kv| any_value(&kv.value))
            .unwrap_or_default();
        if instance.is_empty() {
            return Err("no service.instance.id in the resource".into());
        }
        for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let attrs: Vec<&str> = match &m.data {
                Some(metric::Data::Gauge(g)) => g
                    .data_points
                    .iter()
                    .flat_map(|p| p.attributes.iter().map(|kv| kv.key.as_str()))
                    .collect(),
                Some(metric::Data::Sum(s)) => s
                    .data_points
                    .iter()
                    .flat_map(|p| p.attributes.iter().map(|kv| kv.key.as_str()))
                    .collect(),
                _ => Vec::new(),
            };
            if !google {
                continue;
            }
            if let Some(bad) = attrs.iter().find(|a| RESERVED_ATTRIBUTES.contains(a)) {
                return Err(format!("{}: point attribute {bad:?} is reserved", m.name));
            }
            if !metric_name.is_match(&m.name) {
                return Err(format!("invalid metric name {:?}", m.name));
            }
            if let Some(bad) = attrs.iter().find(|a| !attribute_key.is_match(a)) {
                return Err(format!("{}: invalid attribute key {bad:?}", m.name));
            }
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl LogsService for Received {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        use std::sync::atomic::Ordering;
        if self.logs_down.load(Ordering::Acquire) {
            return Err(Status::unavailable("down"));
        }
        let mut request = request.into_inner();
        let mut response = ExportLogsServiceResponse::default();
        let refuse = self.refuse_records_of.lock().unwrap().clone();
        if !refuse.is_empty() {
            let mut n = 0u64;
            for sl in request.resource_logs.iter_mut().flat_map(|rl| &mut rl.scope_logs) {
                sl.log_records.retain(|r| {
                    let node = r.attributes.iter().find(|kv| kv.key == "k8s.node.name");
                    let keep = !node.is_some_and(|kv| refuse.contains(&any_value(&kv.value)));
                    n += u64::from(!keep);
                    keep
                });
            }
            if n > 0 {
                self.records_refused.fetch_add(n, Ordering::AcqRel);
                response.partial_success = Some(
                    opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess {
                        rejected_log_records: n as i64,
                        error_message: "log entry too large".into(),
                    },
                );
            }
        }
        self.logs.lock().unwrap().push(request);
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.spans.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Starts on a free loopback port; with `tls` = (cert PEM, key PEM) it serves TLS.
    pub async fn start(tls: Option<(String, String)>) -> Receiver {
        Self::start_at("127.0.0.1:0".parse().unwrap(), tls).await
    }

    /// Starts on `addr` (port 0: a free one).
    pub async fn start_at(addr: SocketAddr, tls: Option<(String, String)>) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let mut builder = Server::builder();
        if let Some((cert, key)) = tls {
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
                .unwrap();
        }
        let router = builder
            .add_service(
                MetricsServiceServer::new(received.clone())
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .add_service(TraceServiceServer::new(received.clone()))
            .add_service(
                LogsServiceServer::new(received.clone())
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            );
        let incoming = tokio_stream_from(listener);
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Receiver { addr, received, task }
    }

    /// Every log record received so far, in order.
    pub fn log_records(&self) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
        self.received
            .logs
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| sl.log_records.clone())
            .collect()
    }

    /// Number of metric export requests so far.
    pub fn exports(&self) -> usize {
        self.received.metrics.lock().unwrap().len()
    }

    /// The newest data of every metric, as one request: an export cycle
    /// sends each family in a request of its own, so the newest request
    /// alone holds only the last of them. Each metric comes whole from the
    /// newest request that has it; the resource is the newest request's.
    pub fn latest(&self) -> Option<ExportMetricsServiceRequest> {
        let received = self.received.metrics.lock().unwrap();
        let (_, newest) = received.last()?;
        let mut seen = std::collections::BTreeSet::new();
        let mut metrics = Vec::new();
        for (_, req) in received.iter().rev() {
            for m in req
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
            {
                if seen.insert(m.name.clone()) {
                    metrics.push(m.clone());
                }
            }
        }
        let mut merged = newest.clone();
        merged.resource_metrics.truncate(1);
        let rm = merged.resource_metrics.first_mut()?;
        rm.scope_metrics.truncate(1);
        rm.scope_metrics.first_mut()?.metrics = metrics;
        Some(merged)
    }

    /// Export requests that arrived after `since`.
    pub fn since(&self, since: Instant) -> Vec<ExportMetricsServiceRequest> {
        self.received
            .metrics
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > since)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Complete export cycles so far: a cycle ends with the request that
    /// carries the exporter's own telemetry (`kube_node_status.build.info`).
    pub fn cycles(&self) -> usize {
        self.received
            .metrics
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| {
                r.resource_metrics
                    .iter()
                    .flat_map(|rm| &rm.scope_metrics)
                    .flat_map(|sm| &sm.metrics)
                    .any(|m| m.name == "kube_node_status.build.info")
            })
            .count()
    }

    /// Waits until at least `n` complete export cycles arrived.
    pub async fn wait_cycles(&self, n: usize, timeout: Duration) {
        wait_count(|| self.cycles(), n, "OTLP export cycles", timeout).await
    }

    /// Waits until at least `n` exports arrived.
    pub async fn wait_exports(&self, n: usize, timeout: Duration) {
        wait_count(|| self.exports(), n, "OTLP exports", timeout).await
    }
}

/// Waits until `count()` reaches `n`, failing after `timeout`.
async fn wait_count(count: impl Fn() -> usize, n: usize, what: &str, timeout: Duration) {
    let start = Instant::now();
    while count() < n {
        assert!(
            start.elapsed() < timeout,
            "only {} {what} after {timeout:?}",
            count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

/// A string form of an attribute value.
pub fn any_value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// The times of `m`'s number points.
pub fn point_times(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> Vec<u64> {
    match &m.data {
        Some(metric::Data::Gauge(g)) => g.data_points.iter().map(|p| p.time_unix_nano).collect(),
        Some(metric::Data::Sum(s)) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
        _ => Vec::new(),
    }
}

/// Every number point of metric `name` in `requests`: (time, attributes, value).
fn number_points(
    requests: &[ExportMetricsServiceRequest],
    name: &str,
) -> Vec<(u64, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for m in requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name == name)
    {
        let dps = match &m.data {
            Some(metric::Data::Gauge(g)) => &g.data_points,
            Some(metric::Data::Sum(s)) => &s.data_points,
            _ => continue,
        };
        for dp in dps {
            let attrs = dp
                .attributes
                .iter()
                .map(|kv| (kv.key.clone(), any_value(&kv.value)))
                .collect();
            let value = match dp.value {
                Some(number_data_point::Value::AsDouble(d)) => d,
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                None => f64::NAN,
            };
            out.push((dp.time_unix_nano, attrs, value));
        }
    }
    out
}

/// Every point of metric `name` in `req`: (attributes, value).
pub fn points(req: &ExportMetricsServiceRequest, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    number_points(std::slice::from_ref(req), name)
        .into_iter()
        .map(|(_, a, v)| (a, v))
        .collect()
}

/// The resource attributes of `req`.
pub fn resource(req: &ExportMetricsServiceRequest) -> BTreeMap<String, String> {
    req.resource_metrics
        .iter()
        .filter_map(|rm| rm.resource.as_ref())
        .flat_map(|r| {
            r.attributes
                .iter()
                .map(|kv| (kv.key.clone(), any_value(&kv.value)))
        })
        .collect()
}

/// Points of the newest complete collection of metric `name` across
/// `requests` (the points sharing one timestamp), with their attributes.
pub fn latest_collection(
    requests: &[ExportMetricsServiceRequest],
    name: &str,
) -> Vec<(BTreeMap<String, String>, f64)> {
    let all = number_points(requests, name);
    // Every point of a cycle carries the cycle's time, and a cycle ends before
    // the next begins: so the newest time may be a cycle still arriving, and
    // the one before it is the newest complete one.
    let times: std::collections::BTreeSet<u64> = all.iter().map(|(t, ..)| *t).collect();
    let complete = times
        .iter()
        .rev()
        .nth(1)
        .or(times.iter().next_back())
        .copied()
        .unwrap_or(0);
    all.into_iter()
        .filter(|(t, ..)| *t == complete)
        .map(|(_, a, v)| (a, v))
        .collect()
}

/// Data points in one request.
pub fn request_points(req: &ExportMetricsServiceRequest) -> usize {
    req.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| match &m.data {
            Some(metric::Data::Gauge(g)) => g.data_points.len(),
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            _ => 0,
        })
        .sum()
}

//! Command-line flags and environment, parsed once into plain settings.
//!
//! Every flag has a `KNS_…` variable. Where OpenTelemetry defines a standard
//! variable (`OTEL_METRICS_EXPORTER`, `OTEL_METRIC_EXPORT_INTERVAL`,
//! `OTEL_EXPORTER_OTLP_*`), it is honoured too; an explicit flag wins.

pub mod otlp;
pub mod profile;

pub use profile::{Group, MetricProfile};

use std::{borrow::Cow, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

/// A configuration mistake: reported as one line, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A list of exporters named something we do not ship.
    #[error("{var}: unknown exporter {value:?} (expected a comma-separated list of {allowed})")]
    UnknownExporter {
        var: &'static str,
        value: String,
        allowed: &'static str,
    },
    /// `none` together with a real exporter.
    #[error("{var}: \"none\" cannot be combined with other exporters (got {value:?})")]
    NoneCombined { var: &'static str, value: String },
    /// A variable that must hold a number of milliseconds does not.
    #[error("{var}: expected a positive number of milliseconds, got {value:?}")]
    BadMillis { var: Cow<'static, str>, value: String },
    /// A number of milliseconds below what the setting may be.
    #[error("{var}: {value} ms is too short: it must be at least {least} ms")]
    MillisTooShort {
        var: Cow<'static, str>,
        value: u64,
        least: u128,
    },
    /// A variable with a value outside its fixed set.
    #[error("{var}: unsupported value {value:?} (expected {expected})")]
    BadValue {
        var: Cow<'static, str>,
        value: String,
        expected: &'static str,
    },
    /// A CA file that cannot be used.
    #[error("{var}: cannot use {path:?} as a PEM CA certificate: {reason}")]
    BadCertificate {
        var: Cow<'static, str>,
        path: PathBuf,
        reason: String,
    },
    /// No usable Kubernetes configuration.
    #[error("{0}")]
    Kube(String),
    /// A metric filter is not a valid regex.
    #[error("{flag}: invalid regex: {reason}")]
    BadRegex { flag: &'static str, reason: String },
    /// The node label allowlist is unusable.
    #[error(transparent)]
    Labels(#[from] crate::readings::labels::LabelError),
    /// The scrape token file is unusable.
    #[error(transparent)]
    TokenFile(#[from] crate::auth::TokenFileError),
    /// Two settings that cannot be used together.
    #[error("{0}")]
    Conflict(String),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// RUST_LOG does not parse.
    #[error("{0}")]
    Logging(String),
    /// The OTLP exporter rejected its configuration (endpoint, headers, compression…).
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    /// `--otlp-auth google` cannot work as configured (credentials, project, location).
    #[error("--otlp-auth google: {0}")]
    Google(String),
}

/// How instruments and attributes are named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Naming {
    /// OpenTelemetry semantic conventions (`k8s.node.condition.status`, `k8s.node.name`…).
    #[default]
    Otel,
    /// kube-state-metrics' node families (`kube_node_status_condition{node,condition,status}`…),
    /// so existing rules keep working.
    KubeStateMetrics,
}

/// How `/metrics` is produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PrometheusEncoder {
    /// The node series rendered once per change of the view and served
    /// compressed; the exporter's own series rendered at each scrape.
    #[default]
    Streaming,
    /// opentelemetry-prometheus, gathering everything at every scrape: the
    /// reference the streaming writer is tested against. Slow for large clusters.
    Reference,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable text.
    Text,
}

/// How OTLP requests authenticate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OtlpAuth {
    /// Only what `OTEL_EXPORTER_OTLP_HEADERS` adds.
    #[default]
    None,
    /// Google Application Default Credentials, for Google's Telemetry API.
    Google,
}

/// How node-label attribute keys are spelled over OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OtlpLabelKeys {
    /// The semantic conventions' raw key: `k8s.node.label.topology.kubernetes.io/zone`.
    Semconv,
    /// What Google's Telemetry API takes (`/` and `-` as `_`):
    /// `k8s.node.label.topology.kubernetes.io_zone`.
    Google,
}

impl OtlpAuth {
    /// The label-key spelling the receiver this authenticates to takes.
    fn label_keys(self) -> OtlpLabelKeys {
        match self {
            OtlpAuth::None => OtlpLabelKeys::Semconv,
            OtlpAuth::Google => OtlpLabelKeys::Google,
        }
    }
}

/// Google's Telemetry API, the default endpoint of `--otlp-auth google`.
pub const GOOGLE_TELEMETRY_ENDPOINT: &str = "https://telemetry.googleapis.com:443";
/// The Telemetry API refuses requests with more data points than this.
pub const GOOGLE_MAX_POINTS_PER_REQUEST: usize = 200;
/// Data points per OTLP request unless told otherwise. A gRPC receiver
/// takes 4 MiB messages by default (the OpenTelemetry Collector's
/// `max_recv_msg_size_mib`, rotel); a point is ~100–400 bytes, so 5,000
/// stays well under it, where one metric of a 10,000-node cluster (150,000
/// condition points) would be ~15 MB.
pub const DEFAULT_MAX_POINTS_PER_REQUEST: usize = 5_000;

/// The exporter's flags.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, env = "KNS_LISTEN_ADDRESS", default_value = "0.0.0.0:9464")]
    pub listen_address: SocketAddr,

    /// Kubeconfig file to use instead of KUBECONFIG, ~/.kube/config or the in-cluster service account.
    #[arg(long, env = "KNS_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use instead of the current one.
    #[arg(long, env = "KNS_CONTEXT")]
    pub context: Option<String>,

    /// Cluster name, exported as the `k8s.cluster.name` resource attribute.
    /// [default: with --otlp-auth google, the GKE metadata server's cluster-name]
    #[arg(long, env = "KNS_CLUSTER_NAME")]
    pub cluster_name: Option<String>,

    /// Cluster location, a region (us-central1) or zone (us-central1-a), exported as
    /// `cloud.region` or `cloud.availability_zone`.
    /// [default: with --otlp-auth google, the GKE metadata server's cluster-location]
    #[arg(long, env = "KNS_CLUSTER_LOCATION")]
    pub cluster_location: Option<String>,

    /// Google Cloud project the metrics belong to, exported as `gcp.project_id`.
    /// [default: with --otlp-auth google, the credentials' or the metadata server's project]
    #[arg(long, env = "KNS_GCP_PROJECT_ID")]
    pub gcp_project_id: Option<String>,

    /// Require `Authorization: Bearer <token>` on /metrics, the token read from this file
    /// (re-read when its content changes, as a mounted Secret does; at least 16 bytes).
    /// /healthz and /readyz stay open.
    #[arg(long, env = "KNS_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Elect a leader on a coordination.k8s.io/v1 Lease: of several replicas only the
    /// one holding it exports node readings (OTLP and /metrics); the others serve
    /// self-telemetry, with `kube_node_status.leader` 0, and take over when it expires.
    #[arg(long, env = "KNS_LEADER_ELECTION", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,

    /// The Lease's name.
    #[arg(long, env = "KNS_LEASE_NAME", default_value = "kube-node-status", value_parser = parse_object_name)]
    pub lease_name: String,

    /// The Lease's namespace. [default: POD_NAMESPACE, else the service account's or kubeconfig context's]
    #[arg(long, env = "KNS_LEASE_NAMESPACE", value_parser = parse_object_name)]
    pub lease_namespace: Option<String>,

    /// How long a leader keeps the Lease without renewing it: a killed leader is
    /// replaced within this; a leader that cannot renew stops exporting after two thirds of it.
    #[arg(long, env = "KNS_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,

    /// Serve HTTPS with this PEM certificate chain (with --tls-key-file); both files
    /// are read again when they change, as a rotated Secret or cert-manager rewrites them.
    #[arg(long, env = "KNS_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// The PEM private key of --tls-cert-file.
    #[arg(long, env = "KNS_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// A /metrics response not written within this is cut off and its connection
    /// closed, so slow or stuck scrapers cannot pile up (request headers must
    /// arrive within 10s; idle connections are closed after 10s).
    #[arg(long, env = "KNS_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_at_least_a_second)]
    pub request_timeout: Duration,

    /// The Kubernetes API server must send something within this, on a request
    /// or an open watch, or the connection is given up and the request retried:
    /// a hung or partitioned API shows as a growing view age within this time.
    /// Watches are renewed every three quarters of it so a quiet one is never
    /// taken for a dead one.
    #[arg(long, env = "KNS_API_TIMEOUT", default_value = "60s", value_parser = parse_api_timeout)]
    pub api_timeout: Duration,

    /// How nodes (and, with --node-leases, their Leases) are listed and
    /// watched: `protobuf` asks for Kubernetes protobuf with JSON accepted
    /// too, as client-go and kube-state-metrics do (smaller and cheaper to
    /// decode, on both sides); `json` asks for JSON only. Either way the
    /// response is decoded by its Content-Type.
    #[arg(long, env = "KNS_API_ENCODING", value_enum, default_value = "protobuf")]
    pub api_encoding: crate::cluster::wire::Encoding,

    /// Read kubelet heartbeats from the node Leases (coordination.k8s.io/v1)
    /// in --node-lease-namespace, which every kubelet renews every 10s: per
    /// node whether its heartbeat is stale and, while it is, its last renewal;
    /// the nodes with fresh, stale and missing Leases; a log record when a
    /// heartbeat is lost or resumed. Renewals re-render nothing. Needs `get`,
    /// `list` and `watch` on `leases` in that namespace (the chart's Role);
    /// without them one line says so and the node readings go on.
    #[arg(long, env = "KNS_NODE_LEASES", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub node_leases: bool,

    /// Where kubelets keep their node Leases.
    #[arg(long, env = "KNS_NODE_LEASE_NAMESPACE", default_value = "kube-node-lease", value_parser = parse_object_name)]
    pub node_lease_namespace: String,

    /// A heartbeat is stale once its Lease has not been renewed for this long.
    /// Default: three of the kubelet's renew intervals, 3/4 of each Lease's
    /// leaseDurationSeconds (30s for the kubelet's 40s), well inside the node
    /// lifecycle controller's grace period (40s, 50s since v1.32).
    #[arg(long, env = "KNS_HEARTBEAT_STALE_AFTER", value_parser = parse_at_least_a_second)]
    pub heartbeat_stale_after: Option<Duration>,

    /// Check /metrics bearer tokens with the Kubernetes API, as kube-rbac-proxy does:
    /// TokenReview, then SubjectAccessReview for `get` on the path /metrics (a
    /// ClusterRole rule `nonResourceURLs: ["/metrics"]`); answers cached for 60s (10s
    /// for invalid tokens); unknown tokens reviewed at most 5 a second, 1 per client
    /// address (else 429).
    /// Not with --auth-token-file.
    #[arg(long, env = "KNS_AUTH_KUBERNETES", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub auth_kubernetes: bool,

    /// With --auth-kubernetes, accept only tokens issued for one of these audiences
    /// (comma-separated; the TokenReview's spec.audiences), as kube-rbac-proxy's
    /// --auth-token-audiences: a token made for the API server or another service is
    /// refused. Scrapers then send a projected service-account token with one of them.
    /// [default: none: any token the API server authenticates]
    #[arg(long, env = "KNS_AUTH_TOKEN_AUDIENCES", value_delimiter = ',')]
    pub auth_token_audiences: Vec<String>,

    /// Connections served at once (scrapers, probes, people); one client address holds
    /// at most a quarter (at least 8). When all are open, a new one closes an idle one,
    /// else the one whose request has run longest past 2s, each of the address holding
    /// the most; failing both, it is refused
    /// (kube_node_status_http_connections_refused_total).
    #[arg(long, env = "KNS_MAX_CONNECTIONS", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_connections: u16,

    /// /readyz turns 503 once the node watch has been failing for longer than this (e.g. 90s, 2m).
    #[arg(long, env = "KNS_STALE_AFTER", default_value = "2m", value_parser = parse_at_least_a_second)]
    pub stale_after: Duration,

    /// Log format; levels come from RUST_LOG (default: info). [default: json; text for `demo`]
    #[arg(long, env = "KNS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Metric exporters: a comma list of `otlp`, `prometheus`, or `none`.
    /// [default: OTEL_METRICS_EXPORTER, else otlp,prometheus]
    #[arg(long, env = "KNS_METRICS_EXPORTER")]
    pub metrics_exporter: Option<String>,

    /// Trace exporter for the exporter's own spans: `otlp` or `none`.
    /// [default: OTEL_TRACES_EXPORTER, else otlp when OTLP metrics are on, except with --otlp-auth google]
    #[arg(long, env = "KNS_TRACES_EXPORTER")]
    pub traces_exporter: Option<String>,

    /// Node condition changes as OTLP log records (with reason and message): `otlp` or `none`.
    /// [default: OTEL_LOGS_EXPORTER, else otlp when OTLP metrics are on]
    #[arg(long, env = "KNS_LOGS_EXPORTER")]
    pub logs_exporter: Option<String>,

    /// Condition-change records kept while the collector cannot take them; when
    /// full the oldest are dropped (counted in kube_node_status_logs_records_total{outcome="dropped"}).
    #[arg(long, env = "KNS_LOGS_QUEUE_SIZE", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub logs_queue_size: u64,

    /// OTLP gRPC endpoint, e.g. http://collector:4317 or https://….
    /// [default: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317]
    #[arg(long, env = "KNS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// How /metrics is produced: `streaming` (rendered when nodes change, gzip
    /// when the scraper accepts it) or `reference` (opentelemetry-prometheus at
    /// every scrape; the same lines, far slower for large clusters).
    #[arg(long, env = "KNS_PROMETHEUS_ENCODER", value_enum, default_value_t = PrometheusEncoder::Streaming)]
    pub prometheus_encoder: PrometheusEncoder,

    /// Metric and attribute naming: `otel` or `kube-state-metrics` (both outputs).
    #[arg(long, env = "KNS_METRIC_NAMING", value_enum, default_value_t = Naming::Otel)]
    pub metric_naming: Naming,

    /// Node labels to add to every per-node series: a comma list of keys or globs,
    /// e.g. `topology.kubernetes.io/zone,cloud.google.com/gke-nodepool`. OTLP carries
    /// `k8s.node.label.<key>` with the key as it is; /metrics sanitizes it
    /// (`k8s_node_label_topology_kubernetes_io_zone`).
    #[arg(long, env = "KNS_NODE_LABELS", value_delimiter = ',')]
    pub node_labels: Vec<String>,

    /// Condition types to report: a comma list, e.g. `Ready,MemoryPressure,KernelDeadlock`. [default: all]
    #[arg(long, env = "KNS_CONDITIONS", value_delimiter = ',')]
    pub conditions: Vec<String>,

    /// kube-state-metrics node families left out by default, to serve too: a
    /// comma list of kube_node_status_addresses (one series per address) and
    /// kube_node_spec_pod_cidrs (one per pod CIDR). Only with --metric-naming
    /// kube-state-metrics; the profile and the allow and deny lists apply as to any family.
    #[arg(long, env = "KNS_OPTIONAL_FAMILIES", value_delimiter = ',')]
    pub optional_families: Vec<String>,

    /// Which families to read: `readiness` (what the shipped alerts and the
    /// dashboard's readiness panels need, about 2 series a healthy node; sparse
    /// readings on), `standard` (readiness and metadata, no resources) or `full`.
    /// --metric-allowlist/--metric-denylist and --conditions narrow it further.
    #[arg(long, env = "KNS_METRIC_PROFILE", value_enum, default_value_t = MetricProfile::Full)]
    pub metric_profile: MetricProfile,

    /// Send condition statuses and their transition times only while a condition
    /// shows a problem (Ready not True, any other condition not False), as one
    /// series of value 1 with the status it holds, and `unschedulable` only while
    /// the node is cordoned. Queries of the form `… == 1` work unchanged; ones that
    /// look for the healthy status (`status="true"` of Ready, `unschedulable == 0`)
    /// find nothing. [default: on in the readiness profile, off otherwise: one-hot,
    /// every status of every condition, as the semantic conventions ask]
    #[arg(long, env = "KNS_SPARSE_READINGS", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub sparse_readings: Option<bool>,

    /// Only report metrics whose name (in the active naming) fully matches this regex.
    #[arg(long, env = "KNS_METRIC_ALLOWLIST")]
    pub metric_allowlist: Option<String>,

    /// Do not report metrics whose name (in the active naming) fully matches this regex; wins over the allowlist.
    #[arg(long, env = "KNS_METRIC_DENYLIST")]
    pub metric_denylist: Option<String>,

    /// Send each OTLP metrics collection as requests of at most this many data points
    /// (e.g. 200 for Google's Telemetry API), 4 at a time, retrying retryable failures within the interval.
    /// [default: 5000, which keeps requests under the 4 MiB a gRPC receiver takes by default; 200 in Google mode]
    #[arg(long, env = "KNS_OTLP_MAX_POINTS_PER_REQUEST", value_parser = clap::value_parser!(u64).range(1..))]
    pub otlp_max_points_per_request: Option<u64>,

    /// OTLP authentication: `none`, or `google` for Google's Telemetry API with Application
    /// Default Credentials (endpoint https://telemetry.googleapis.com:443 unless set,
    /// 200 points per request, own traces off unless asked for).
    #[arg(long, env = "KNS_OTLP_AUTH", value_enum, default_value_t = OtlpAuth::None)]
    pub otlp_auth: OtlpAuth,

    /// Node-label attribute keys over OTLP: `semconv` (the key as it is) or `google`
    /// (`/` and `-` as `_`, which Google's Telemetry API requires: set it when a collector
    /// forwards to that API). [default: google with --otlp-auth google, else semconv]
    #[arg(long, env = "KNS_OTLP_LABEL_KEYS", value_enum)]
    pub otlp_label_keys: Option<OtlpLabelKeys>,

    /// Send each node's points under an OTLP Resource of its own carrying
    /// `k8s.node.name`, `k8s.node.uid` and the cluster attributes (the `k8s.node`
    /// entity, as the Collector's k8sclusterreceiver does), instead of one
    /// resource for the exporter with the node on every point. Not with --otlp-auth google.
    #[arg(long, env = "KNS_OTLP_RESOURCE_PER_NODE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub otlp_resource_per_node: bool,

    /// How often to export over OTLP (e.g. 30s; at least 1s). [default: OTEL_METRIC_EXPORT_INTERVAL in ms, else 60s]
    #[arg(long, env = "KNS_METRIC_EXPORT_INTERVAL", value_parser = parse_at_least_a_second)]
    pub metric_export_interval: Option<Duration>,

    /// How often Prometheus (or GMP) scrapes /metrics. Changes nothing the
    /// exporter does: the start-up log line that reports the series served
    /// gives the samples a month they mean at this interval.
    #[arg(long, env = "KNS_SCRAPE_INTERVAL", default_value = "30s", value_parser = parse_at_least_a_second)]
    pub scrape_interval: Duration,
}

/// Where the Kubernetes client configuration comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeSource {
    /// An explicit kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// An explicit context in it.
    pub context: Option<String>,
}

/// One OTLP signal's connection, resolved from the flags and the standard
/// variables by [`otlp::resolve`]; nothing downstream reads a variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    /// Where to send.
    pub endpoint: String,
    /// A PEM bundle of extra CAs to trust (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub ca_pem: Option<Vec<u8>>,
    /// Per-request timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    /// Extra request headers, decoded (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// Gzip request bodies (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`).
    pub gzip: bool,
    /// Split each metrics export into requests of at most this many data points.
    pub max_points_per_request: Option<usize>,
    /// How requests authenticate.
    pub auth: OtlpAuth,
}

/// Everything the exporter needs, resolved and validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// HTTP listen address.
    pub listen_address: SocketAddr,
    /// Kubernetes client configuration source.
    pub kube: KubeSource,
    /// Staleness window for /readyz.
    pub stale_after: Duration,
    /// The Lease to elect a leader on; `None`: no election, this replica exports.
    pub lease: Option<crate::leader::LeaseSettings>,
    /// The certificate and key files to serve HTTPS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long a /metrics response may take to be written.
    pub request_timeout: Duration,
    /// How long the Kubernetes API may stay silent on a request or a watch.
    pub api_timeout: Duration,
    /// How nodes and node Leases are asked for.
    pub api_encoding: crate::cluster::wire::Encoding,
    /// Where the node Leases are watched, when heartbeats are read.
    pub node_leases: Option<NodeLeaseSettings>,
    /// Check scrape tokens with TokenReview and SubjectAccessReview.
    pub auth_kubernetes: bool,
    /// The file holding the bearer token scrapes of /metrics must carry.
    pub auth_token_file: Option<PathBuf>,
    /// The audiences a reviewed token must be issued for (none: any).
    pub auth_token_audiences: Vec<String>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Serve /metrics.
    pub prometheus: bool,
    /// How /metrics is produced.
    pub prometheus_encoder: PrometheusEncoder,
    /// Export metrics over OTLP.
    pub otlp_metrics: Option<OtlpSettings>,
    /// Export own spans over OTLP.
    pub otlp_traces: Option<OtlpSettings>,
    /// Export node condition changes as OTLP log records.
    pub otlp_logs: Option<OtlpSettings>,
    /// How many condition-change records wait for the collector at most.
    pub logs_queue_size: usize,
    /// Interval of OTLP metric exports.
    pub export_interval: Duration,
    /// Each node's OTLP points under a resource of its own.
    pub resource_per_node: bool,
    /// How often `/metrics` is scraped, for the cost the start-up log reports.
    pub scrape_interval: Duration,
    /// Resource identity.
    pub resource: ResourceSettings,
    /// What to read and how to name it.
    pub readings: ReadingSettings,
}

/// Where kubelet heartbeats are read from (`--node-leases`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLeaseSettings {
    /// The namespace of the node Leases.
    pub namespace: String,
    /// Stale after this long without a renewal; `None`: 3/4 of each Lease's duration.
    pub stale_after: Option<Duration>,
}

/// What to read from each node and how to name it.
#[derive(Clone, Debug, Default)]
pub struct ReadingSettings {
    /// Naming mode.
    pub naming: Naming,
    /// The optional families turned on (`--optional-families`).
    pub optional: std::collections::BTreeSet<String>,
    /// Node labels added to per-node series.
    pub node_labels: crate::readings::labels::LabelSelector,
    /// Condition types to report; `None` for all.
    pub conditions: Option<std::collections::BTreeSet<String>>,
    /// Metric names to keep (full match).
    pub allow: Option<regex::Regex>,
    /// Metric names to drop (full match); wins over `allow`.
    pub deny: Option<regex::Regex>,
    /// The family set.
    pub profile: MetricProfile,
    /// Problem-only condition statuses and cordons instead of one-hot and 0/1.
    pub sparse: bool,
    /// Kubelet heartbeats are read (`--node-leases`): their families are on.
    pub heartbeats: bool,
}

impl ReadingSettings {
    /// True when the metric `name` is to be computed at all.
    pub fn enabled(&self, name: &str) -> bool {
        let underscored = name.replace('.', "_");
        let hit = |re: &regex::Regex| re.is_match(name) || re.is_match(&underscored);
        self.allow.as_ref().is_none_or(hit) && !self.deny.as_ref().is_some_and(hit)
    }

    /// True when the per-node family `name` of `group` is to be computed: the
    /// profile reads its group and the allow/deny lists let its name through.
    pub fn family_enabled(&self, name: &str, group: Group) -> bool {
        let opted_in = !OPTIONAL_FAMILIES.contains(&name) || self.optional.contains(name);
        opted_in && self.profile.includes(group) && self.enabled(name)
    }

    /// True when condition type `type_` is to be reported.
    pub fn condition_enabled(&self, type_: &str) -> bool {
        self.conditions.as_ref().is_none_or(|c| c.contains(type_))
    }

    /// True when the transitions of condition type `type_` are to be reported.
    pub fn transitions_enabled(&self, type_: &str) -> bool {
        self.condition_enabled(type_) && self.profile.counts_transitions_of(type_)
    }
}

/// What identifies this exporter instance in its telemetry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceSettings {
    /// `k8s.cluster.name`, if given.
    pub cluster_name: Option<String>,
    /// `cloud.region` or `cloud.availability_zone`, if given.
    pub cluster_location: Option<String>,
    /// `gcp.project_id`, if given.
    pub gcp_project_id: Option<String>,
    /// Detect and require what Google's Telemetry API needs (`--otlp-auth google`).
    pub google: bool,
    /// `service.instance.id`: the pod name where known, else the hostname.
    pub instance_id: String,
}

const METRICS_EXPORTERS: &str = "`otlp`, `prometheus` or `none`";
const OTLP_ONLY_EXPORTERS: &str = "`otlp` or `none`";

/// Whether a signal that only OTLP carries (traces, logs) is exported: its
/// flag, else its `OTEL_*_EXPORTER` variable (`otlp` or `none`), else `default`.
fn otlp_only_exporter(
    (flag, value): (&'static str, Option<&str>),
    var: &'static str,
    env: &dyn Fn(&str) -> Option<String>,
    default: bool,
) -> Result<bool, ConfigError> {
    let (name, value) = match value {
        Some(v) => (flag, v.to_string()),
        None => match env(var).filter(|v| !v.trim().is_empty()) {
            Some(v) => (var, v),
            None => return Ok(default),
        },
    };
    Ok(!parse_exporters(name, &value, &["otlp"], OTLP_ONLY_EXPORTERS)?.is_empty())
}
/// The families served only when `--optional-families` names them.
pub const OPTIONAL_FAMILIES: [&str; 2] = ["kube_node_status_addresses", "kube_node_spec_pod_cidrs"];

const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(60);

/// The least any interval or timeout may be. Below it a setting is a typo
/// (`0s`, `1ns`), not a choice: a zero export interval would panic the
/// export loop, and a timeout of microseconds fails every request.
const LEAST_DURATION: Duration = Duration::from_secs(1);

/// A duration of at least [`LEAST_DURATION`].
fn parse_at_least_a_second(v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v).map_err(|e| e.to_string())?;
    if d < LEAST_DURATION {
        return Err(format!(
            "must be at least {}",
            humantime::format_duration(LEAST_DURATION)
        ));
    }
    Ok(d)
}

/// A Lease duration: whole seconds (the Lease stores seconds), at least 2.
fn parse_lease_duration(v: &str) -> Result<Duration, String> {
    whole_seconds_at_least(v, 2)
}

fn parse_api_timeout(v: &str) -> Result<Duration, String> {
    whole_seconds_at_least(v, 4)
}

/// A duration in whole seconds (the API takes seconds), at least `min` of them.
fn whole_seconds_at_least(v: &str, min: u64) -> Result<Duration, String> {
    let d = humantime::parse_duration(v).map_err(|e| e.to_string())?;
    if d.subsec_nanos() != 0 || d < Duration::from_secs(min) {
        return Err(format!("must be whole seconds, at least {min}s"));
    }
    Ok(d)
}

/// A Kubernetes object name (DNS subdomain): lowercase letters, digits, '-' and '.'.
fn parse_object_name(v: &str) -> Result<String, String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if v.is_empty()
        || v.len() > 253
        || !v.chars().all(ok_char)
        || !ends_ok(v.chars().next())
        || !ends_ok(v.chars().last())
    {
        return Err(
            "not a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253)".into(),
        );
    }
    Ok(v.to_string())
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The enabled exporters of a comma list; `None` when no exporter is enabled.
fn parse_exporters<'a>(
    var: &'static str,
    value: &str,
    allowed_names: &[&'a str],
    allowed: &'static str,
) -> Result<Vec<&'a str>, ConfigError> {
    let mut out = Vec::new();
    let mut saw_none = false;
    for part in value.split(',').map(str::trim) {
        let lower = part.to_ascii_lowercase();
        if lower == "none" {
            saw_none = true;
        } else if let Some(name) = allowed_names.iter().find(|n| **n == lower) {
            if !out.contains(name) {
                out.push(*name);
            }
        } else {
            return Err(ConfigError::UnknownExporter {
                var,
                value: part.to_string(),
                allowed,
            });
        }
    }
    if saw_none && !out.is_empty() {
        return Err(ConfigError::NoneCombined {
            var,
            value: value.to_string(),
        });
    }
    Ok(out)
}

impl RunArgs {
    /// Resolves flags and the environment (through `env`) into settings.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let (var, value) = match &self.metrics_exporter {
            Some(v) => ("--metrics-exporter", v.clone()),
            None => match env("OTEL_METRICS_EXPORTER").filter(|v| !v.trim().is_empty()) {
                Some(v) => ("OTEL_METRICS_EXPORTER", v),
                None => ("OTEL_METRICS_EXPORTER", "otlp,prometheus".to_string()),
            },
        };
        let metrics = parse_exporters(var, &value, &["otlp", "prometheus"], METRICS_EXPORTERS)?;
        let otlp_metrics_on = metrics.contains(&"otlp");

        // Our own spans are for debugging the exporter; sending them to Cloud
        // Trace needs another role, so Google mode asks for them explicitly.
        let traces_on = otlp_only_exporter(
            ("--traces-exporter", self.traces_exporter.as_deref()),
            "OTEL_TRACES_EXPORTER",
            env,
            otlp_metrics_on && self.otlp_auth != OtlpAuth::Google,
        )?;
        let logs_on = otlp_only_exporter(
            ("--logs-exporter", self.logs_exporter.as_deref()),
            "OTEL_LOGS_EXPORTER",
            env,
            otlp_metrics_on,
        )?;
        let google = self.otlp_auth == OtlpAuth::Google;
        if google && self.otlp_resource_per_node {
            return Err(ConfigError::Google(
                "--otlp-resource-per-node: the Telemetry API maps each resource to one prometheus_target \
                 (location, cluster, namespace, job, instance), which has no node; keep the default, the \
                 node on every point"
                    .into(),
            ));
        }
        if google && !otlp_metrics_on && !traces_on {
            return Err(ConfigError::Google(
                "no OTLP exporter is on; add otlp to --metrics-exporter or OTEL_METRICS_EXPORTER".into(),
            ));
        }
        let max_points_per_request = match (google, self.otlp_max_points_per_request) {
            (true, None) => Some(GOOGLE_MAX_POINTS_PER_REQUEST),
            (true, Some(n)) if n as usize > GOOGLE_MAX_POINTS_PER_REQUEST => {
                return Err(ConfigError::Google(format!(
                    "--otlp-max-points-per-request {n}: the Telemetry API takes at most \
                     {GOOGLE_MAX_POINTS_PER_REQUEST} points per request"
                )));
            }
            (true, Some(n)) => Some(n as usize),
            (false, n) => Some(n.map_or(DEFAULT_MAX_POINTS_PER_REQUEST, |n| n as usize)),
        };
        let flags = |max_points_per_request| otlp::Flags {
            endpoint: self.otlp_endpoint.as_deref(),
            auth: self.otlp_auth,
            max_points_per_request,
        };

        let export_interval = match self.metric_export_interval {
            Some(d) => d,
            None => match env("OTEL_METRIC_EXPORT_INTERVAL").filter(|v| !v.trim().is_empty()) {
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(ms) if Duration::from_millis(ms) >= LEAST_DURATION => Duration::from_millis(ms),
                    Ok(ms) if ms > 0 => {
                        return Err(ConfigError::MillisTooShort {
                            var: "OTEL_METRIC_EXPORT_INTERVAL".into(),
                            value: ms,
                            least: LEAST_DURATION.as_millis(),
                        });
                    }
                    _ => {
                        return Err(ConfigError::BadMillis {
                            var: "OTEL_METRIC_EXPORT_INTERVAL".into(),
                            value: v,
                        });
                    }
                },
                None => DEFAULT_EXPORT_INTERVAL,
            },
        };

        let otlp_metrics = otlp_metrics_on
            .then(|| otlp::resolve(otlp::Signal::Metrics, &flags(max_points_per_request), env))
            .transpose()?;
        let otlp_traces = traces_on
            .then(|| otlp::resolve(otlp::Signal::Traces, &flags(None), env))
            .transpose()?;
        let otlp_logs = logs_on
            .then(|| otlp::resolve(otlp::Signal::Logs, &flags(None), env))
            .transpose()?;

        if let Some(path) = &self.auth_token_file {
            if self.auth_kubernetes {
                return Err(ConfigError::Conflict(
                    "--auth-token-file and --auth-kubernetes (KNS_AUTH_TOKEN_FILE, KNS_AUTH_KUBERNETES): choose one".into(),
                ));
            }
            crate::auth::TokenFile::open(path)?;
        }
        if !self.auth_kubernetes && self.auth_token_audiences.iter().any(|a| !a.trim().is_empty()) {
            return Err(ConfigError::Conflict(
                "--auth-token-audiences (KNS_AUTH_TOKEN_AUDIENCES) needs --auth-kubernetes".into(),
            ));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                crate::tls::load(cert, key)?;
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::Tls(crate::tls::TlsError::Config(
                    "--tls-cert-file and --tls-key-file (KNS_TLS_CERT_FILE, KNS_TLS_KEY_FILE) go together"
                        .into(),
                )));
            }
        }
        if let Some(path) = &self.kubeconfig {
            kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ConfigError::Kube(format!("--kubeconfig {}: {e}", path.display())))?;
        }

        let instance_id = env("POD_NAME")
            .filter(|v| !v.is_empty())
            .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
            .unwrap_or_else(|| "unknown".to_string());

        let full_match = |flag: &'static str, re: &Option<String>| {
            re.as_ref()
                .map(|r| {
                    regex::Regex::new(&format!("^(?:{r})$")).map_err(|e| {
                        // The regex crate draws a caret under the error over several lines: keep the last.
                        let text = e.to_string();
                        let last = text
                            .lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())
                            .unwrap_or("")
                            .trim();
                        ConfigError::BadRegex {
                            flag,
                            reason: last.trim_start_matches("error: ").to_string(),
                        }
                    })
                })
                .transpose()
        };
        let conditions: std::collections::BTreeSet<String> = self
            .conditions
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        let mut optional = std::collections::BTreeSet::new();
        for family in self
            .optional_families
            .iter()
            .map(|f| f.trim())
            .filter(|f| !f.is_empty())
        {
            if !OPTIONAL_FAMILIES.contains(&family) {
                return Err(ConfigError::BadValue {
                    var: "--optional-families".into(),
                    value: family.to_string(),
                    expected: "kube_node_status_addresses, kube_node_spec_pod_cidrs",
                });
            }
            if self.metric_naming != Naming::KubeStateMetrics {
                return Err(ConfigError::Conflict(format!(
                    "--optional-families {family}: a kube-state-metrics family, served only with --metric-naming kube-state-metrics"
                )));
            }
            optional.insert(family.to_string());
        }
        let readings = ReadingSettings {
            naming: self.metric_naming,
            optional,
            node_labels: crate::readings::labels::LabelSelector::new(
                &self.node_labels,
                match (
                    self.metric_naming,
                    self.otlp_label_keys.unwrap_or(self.otlp_auth.label_keys()),
                ) {
                    (Naming::Otel, OtlpLabelKeys::Semconv) => crate::readings::labels::LabelKeys::Semconv,
                    // The Telemetry API refuses `/` and `-` in attribute keys.
                    (Naming::Otel, OtlpLabelKeys::Google) => {
                        crate::readings::labels::LabelKeys::SemconvGoogle
                    }
                    (Naming::KubeStateMetrics, _) => crate::readings::labels::LabelKeys::KubeStateMetrics,
                },
            )?,
            conditions: (!conditions.is_empty()).then_some(conditions),
            allow: full_match("--metric-allowlist", &self.metric_allowlist)?,
            deny: full_match("--metric-denylist", &self.metric_denylist)?,
            profile: self.metric_profile,
            sparse: self
                .sparse_readings
                .unwrap_or_else(|| self.metric_profile.sparse_by_default()),
            heartbeats: self.node_leases,
        };

        Ok(Settings {
            listen_address: self.listen_address,
            kube: KubeSource {
                kubeconfig: self.kubeconfig.clone(),
                context: self.context.clone(),
            },
            stale_after: self.stale_after,
            lease: self.leader_election.then(|| crate::leader::LeaseSettings {
                name: self.lease_name.clone(),
                namespace: non_empty(&self.lease_namespace)
                    .or_else(|| env("POD_NAMESPACE").filter(|v| !v.is_empty())),
                duration: self.lease_duration,
                // A restarted replica, or two on one host, must not pass for each other.
                identity: format!("{instance_id}_{:08x}", fastrand::u32(..)),
            }),
            auth_token_file: self.auth_token_file.clone(),
            auth_kubernetes: self.auth_kubernetes,
            auth_token_audiences: self
                .auth_token_audiences
                .iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect(),
            max_connections: usize::from(self.max_connections),
            request_timeout: self.request_timeout,
            api_timeout: self.api_timeout,
            api_encoding: self.api_encoding,
            node_leases: self.node_leases.then(|| NodeLeaseSettings {
                namespace: self.node_lease_namespace.clone(),
                stale_after: self.heartbeat_stale_after,
            }),
            tls: self.tls_cert_file.clone().zip(self.tls_key_file.clone()),
            log_format: self.log_format.unwrap_or(LogFormat::Json),
            prometheus: metrics.contains(&"prometheus"),
            prometheus_encoder: self.prometheus_encoder,
            otlp_metrics,
            otlp_traces,
            otlp_logs,
            resource_per_node: self.otlp_resource_per_node,
            logs_queue_size: usize::try_from(self.logs_queue_size).unwrap_or(usize::MAX),
            export_interval,
            scrape_interval: self.scrape_interval,
            readings,
            resource: ResourceSettings {
                cluster_name: non_empty(&self.cluster_name),
                cluster_location: non_empty(&self.cluster_location),
                gcp_project_id: non_empty(&self.gcp_project_id),
                google,
                instance_id,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser as _;
    use std::collections::HashMap;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["kube-node-status"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("valid flags").run
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn exporters_default_to_both_and_follow_otel_metrics_exporter() {
        // (flags, environment, (prometheus, OTLP metrics, OTLP traces) or an error)
        type Case<'a> = (
            &'a [&'a str],
            &'a [(&'a str, &'a str)],
            Option<(bool, bool, bool)>,
        );
        let cases: &[Case] = &[
            (&[], &[], Some((true, true, true))),
            (
                &[],
                &[("OTEL_METRICS_EXPORTER", "prometheus")],
                Some((true, false, false)),
            ),
            (
                &[],
                &[("OTEL_METRICS_EXPORTER", "otlp")],
                Some((false, true, true)),
            ),
            (
                &[],
                &[("OTEL_METRICS_EXPORTER", " OTLP , prometheus ")],
                Some((true, true, true)),
            ),
            (
                &[],
                &[("OTEL_METRICS_EXPORTER", "none")],
                Some((false, false, false)),
            ),
            (
                &[],
                &[
                    ("OTEL_METRICS_EXPORTER", "otlp"),
                    ("OTEL_TRACES_EXPORTER", "none"),
                ],
                Some((false, true, false)),
            ),
            (
                &["--metrics-exporter", "prometheus"],
                &[("OTEL_METRICS_EXPORTER", "otlp")],
                Some((true, false, false)),
            ),
            (
                &["--traces-exporter", "otlp"],
                &[("OTEL_METRICS_EXPORTER", "prometheus")],
                Some((true, false, true)),
            ),
            (&[], &[("OTEL_METRICS_EXPORTER", "console")], None),
            (&[], &[("OTEL_METRICS_EXPORTER", "none,otlp")], None),
            (&[], &[("OTEL_METRICS_EXPORTER", "otlp,")], None),
            (&[], &[("OTEL_TRACES_EXPORTER", "zipkin")], None),
        ];
        for (flags, env, want) in cases {
            let got = args(flags)
                .resolve(&env_of(env))
                .ok()
                .map(|s| (s.prometheus, s.otlp_metrics.is_some(), s.otlp_traces.is_some()));
            assert_eq!(got, *want, "{flags:?} {env:?}");
        }
    }

    #[test]
    fn the_profile_sets_sparse_readings_unless_told() {
        let cases: &[(&[&str], (MetricProfile, bool))] = &[
            (&[], (MetricProfile::Full, false)),
            (
                &["--metric-profile", "readiness"],
                (MetricProfile::Readiness, true),
            ),
            (
                &["--metric-profile", "readiness", "--sparse-readings=false"],
                (MetricProfile::Readiness, false),
            ),
            (
                &["--metric-profile", "standard"],
                (MetricProfile::Standard, false),
            ),
            (&["--sparse-readings"], (MetricProfile::Full, true)),
            (&["--sparse-readings", "true"], (MetricProfile::Full, true)),
        ];
        for (flags, want) in cases {
            let r = args(flags).resolve(&env_of(&[])).expect("valid").readings;
            assert_eq!((r.profile, r.sparse), *want, "{flags:?}");
        }
        let mut argv = vec!["kube-node-status", "--metric-profile", "cheap"];
        assert!(Cli::try_parse_from(&argv).is_err());
        argv = vec!["kube-node-status", "--sparse-readings=maybe"];
        assert!(Cli::try_parse_from(&argv).is_err());
    }

    /// `0s` panicked the export loop and left the process running without
    /// readings; `1ns` was accepted. Every interval and timeout has a floor.
    #[test]
    fn durations_below_their_floor_are_refused() {
        for flag in [
            "--metric-export-interval",
            "--stale-after",
            "--request-timeout",
            "--scrape-interval",
            "--api-timeout",
            "--lease-duration",
        ] {
            for value in ["0s", "1ns", "999ms"] {
                let err = Cli::try_parse_from(["kube-node-status", flag, value]).err();
                let err = err.unwrap_or_else(|| panic!("{flag} {value} was accepted"));
                assert_eq!(err.exit_code(), 2, "{flag} {value}");
            }
        }
        for ok in [
            &["--metric-export-interval", "1s"][..],
            &["--stale-after", "1500ms"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("kube-node-status").chain(ok.iter().copied())).is_ok()
            );
        }
    }

    #[test]
    fn optional_families_are_kube_state_metrics_ones_named_exactly() {
        let ksm = ["--metric-naming", "kube-state-metrics", "--optional-families"];
        let ok = args(&[&ksm[..], &["kube_node_status_addresses,kube_node_spec_pod_cidrs"]].concat())
            .resolve(&|_| None)
            .expect("both optional families");
        assert_eq!(ok.readings.optional.len(), 2);
        assert!(
            ok.readings
                .family_enabled("kube_node_status_addresses", Group::Metadata)
        );
        let none = args(&["--metric-naming", "kube-state-metrics"])
            .resolve(&|_| None)
            .unwrap();
        assert!(
            !none
                .readings
                .family_enabled("kube_node_status_addresses", Group::Metadata)
        );
        let err = |a: &[&str]| args(a).resolve(&|_| None).err().map(|e| e.to_string());
        assert!(
            err(&[&ksm[..], &["kube_node_images"]].concat())
                .is_some_and(|e| e.contains("--optional-families"))
        );
        assert!(
            err(&["--optional-families", "kube_node_status_addresses"])
                .is_some_and(|e| e.contains("--metric-naming kube-state-metrics"))
        );
    }

    #[test]
    fn export_interval_from_flag_or_milliseconds() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], Option<Duration>);
        let cases: &[Case] = &[
            (&[], &[], Some(Duration::from_secs(60))),
            (
                &[],
                &[("OTEL_METRIC_EXPORT_INTERVAL", "1500")],
                Some(Duration::from_millis(1500)),
            ),
            (
                &["--metric-export-interval", "5s"],
                &[("OTEL_METRIC_EXPORT_INTERVAL", "1500")],
                Some(Duration::from_secs(5)),
            ),
            (&[], &[("OTEL_METRIC_EXPORT_INTERVAL", "5s")], None),
            (&[], &[("OTEL_METRIC_EXPORT_INTERVAL", "0")], None),
            (&[], &[("OTEL_METRIC_EXPORT_INTERVAL", "-1")], None),
            (&[], &[("OTEL_METRIC_EXPORT_INTERVAL", "999")], None),
            (
                &[],
                &[("OTEL_METRIC_EXPORT_INTERVAL", "1000")],
                Some(Duration::from_secs(1)),
            ),
        ];
        for (flags, env, want) in cases {
            let got = args(flags).resolve(&env_of(env)).ok().map(|s| s.export_interval);
            assert_eq!(got, *want, "{flags:?} {env:?}");
        }
    }

    #[test]
    fn bad_flags_are_rejected_by_clap() {
        for bad in [
            &["--listen-address", "nowhere"][..],
            &["--stale-after", "soon"],
            &["--log-format", "xml"],
            &["--metric-export-interval", "often"],
            &["--api-timeout", "3s"],
            &["--api-timeout", "4.5s"],
            &["--api-timeout", "0"],
        ] {
            let mut argv = vec!["kube-node-status"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        assert_eq!(
            args(&["--stale-after", "90s"]).stale_after,
            Duration::from_secs(90)
        );
        assert_eq!(args(&[]).api_timeout, Duration::from_secs(60));
        assert_eq!(args(&["--api-timeout", "4s"]).api_timeout, Duration::from_secs(4));
    }

    #[test]
    fn certificate_must_be_a_readable_pem() {
        let dir = std::env::temp_dir().join(format!("kns-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let bad = dir.join("not.pem");
        std::fs::write(&bad, "hello").unwrap();
        let ok = args(&[])
            .resolve(&env_of(&[(
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                good.to_str().unwrap(),
            )]))
            .unwrap();
        assert!(ok.otlp_metrics.unwrap().ca_pem.is_some());
        for path in [bad.to_str().unwrap(), "/nonexistent/ca.pem"] {
            let err = args(&[])
                .resolve(&env_of(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", path)]))
                .unwrap_err();
            assert!(
                err.to_string().contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_kubeconfig_is_a_config_error() {
        let err = args(&["--kubeconfig", "/nonexistent/kubeconfig"])
            .resolve(&env_of(&[]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Kube(_)), "{err}");
    }

    #[test]
    fn instance_id_prefers_the_pod_name() {
        let s = args(&[]).resolve(&env_of(&[("POD_NAME", "kns-abc")])).unwrap();
        assert_eq!(s.resource.instance_id, "kns-abc");
        let s = args(&[]).resolve(&env_of(&[])).unwrap();
        assert!(!s.resource.instance_id.is_empty());
    }

    #[test]
    fn google_mode_defaults_and_overrides() {
        let google = |extra: &[&str], env: &[(&str, &str)]| {
            let mut a = vec!["--otlp-auth", "google"];
            a.extend_from_slice(extra);
            args(&a).resolve(&env_of(env))
        };
        let s = google(&[], &[]).unwrap();
        let m = s.otlp_metrics.as_ref().unwrap();
        assert_eq!(m.endpoint, GOOGLE_TELEMETRY_ENDPOINT);
        assert_eq!(m.max_points_per_request, Some(GOOGLE_MAX_POINTS_PER_REQUEST));
        assert_eq!(m.auth, OtlpAuth::Google);
        assert!(s.otlp_traces.is_none(), "own traces are opt-in in Google mode");
        assert!(s.resource.google);

        // A standard variable or the flag wins over Google's endpoint.
        let s = google(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://proxy:443")]).unwrap();
        assert_eq!(s.otlp_metrics.unwrap().endpoint, "https://proxy:443");
        let s = google(&["--otlp-endpoint", "https://x:443"], &[]).unwrap();
        assert_eq!(s.otlp_metrics.unwrap().endpoint, "https://x:443");

        let s = google(
            &[
                "--otlp-max-points-per-request",
                "150",
                "--traces-exporter",
                "otlp",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.otlp_metrics.unwrap().max_points_per_request, Some(150));
        assert_eq!(s.otlp_traces.unwrap().auth, OtlpAuth::Google);

        assert!(matches!(
            google(&["--otlp-max-points-per-request", "201"], &[]),
            Err(ConfigError::Google(_))
        ));
        assert!(matches!(
            google(&["--metrics-exporter", "prometheus"], &[]),
            Err(ConfigError::Google(_))
        ));

        let s = google(
            &[
                "--gcp-project-id",
                " p ",
                "--cluster-location",
                "",
                "--cluster-name",
                "c",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.resource.gcp_project_id.as_deref(), Some("p"));
        assert_eq!(s.resource.cluster_location, None);
        assert_eq!(s.resource.cluster_name.as_deref(), Some("c"));

        // Without Google mode nothing changes.
        let s = args(&[]).resolve(&env_of(&[])).unwrap();
        assert_eq!(s.otlp_metrics.unwrap().endpoint, otlp::DEFAULT_ENDPOINT);
        assert!(s.otlp_traces.is_some());
    }
}

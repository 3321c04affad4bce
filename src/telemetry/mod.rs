//! Meter and tracer providers, and the exporters that carry readings out.
//!
//! Each metric exporter gets its own `SdkMeterProvider` with its own
//! instruments. With two readers on one provider, an observation made during
//! one reader's collection is also written into the other reader's
//! aggregators, so a deleted node would come back once on `/metrics` after
//! each OTLP export. Separate providers make every collection see exactly
//! the view at that moment.

mod google;
mod logs;
mod loops;
mod otlp;
mod pipeline;
mod prometheus;
mod providers;
mod resource;
mod triggers;

pub use google::GoogleAuth;
pub use otlp::ExportStats;
pub use pipeline::instruments::names;
pub use prometheus::{
    CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE, Metrics, MetricsHandle, RenderError, body::Exposition,
};
pub use resource::{build as build_resource, resolve as resolve_resource};

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::{
    cluster::View,
    config::{self, PrometheusEncoder, Settings},
    leader::Leadership,
};
use otlp::{chunks, client, wire};
use pipeline::{
    collect::{self, SharedReader},
    families::{self, Family},
    instruments::Sources,
    pass::{Outputs, Pass},
};
use prometheus::{body::Section, text as exposition};
pub(crate) use providers::MIN_CARDINALITY_LIMIT;
pub use providers::cardinality_limit;
use providers::{Pipelines, Sizing, Text, limits_for};
use triggers::Trigger;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Bad OTLP configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The Prometheus exporter could not be built.
    #[error("Prometheus exporter: {0}")]
    Prometheus(String),
    /// The `/metrics` renderer could not be set up.
    #[error(transparent)]
    Render(#[from] RenderError),
}

struct Inner {
    settings: Settings,
    resource: Resource,
    /// The resource of the node and cluster readings: the exporter's, with a
    /// `service.instance.id` that stays the same across leaders
    /// ([`resource::readings`]), so a failover does not double their series.
    readings_resource: opentelemetry_proto::tonic::resource::v1::Resource,
    sources: Sources,
    /// Node condition changes as OTLP log records, when on.
    logs: Option<logs::Logs>,
    /// The enabled per-node families, for the short-lived collections.
    families: Vec<Family>,
    /// (instrument name, points per node) of the per-node families on long-lived providers.
    sizing: Vec<Sizing>,
    current: RwLock<Arc<Pipelines>>,
    /// The one pass that writes the per-node families for both outputs, and what it keeps.
    pass: std::sync::Mutex<Pass>,
    /// What the last pass took, in ms.
    last_pass_ms: std::sync::atomic::AtomicU64,
    /// True once the cost of the synced view has been logged.
    cost_announced: AtomicBool,
    /// The last rendered node section of `/metrics`.
    section: RwLock<Arc<Section>>,
    /// The outputs the pass writes for.
    outputs: Outputs,
    /// The view generation, and the role (leading or not), the last rendered section shows.
    rendered: tokio::sync::watch::Sender<(u64, bool)>,
    /// True once a rendering showed the view after its initial list: `/readyz` waits for it.
    rendered_synced: AtomicBool,
    otlp: Option<otlp::MetricsExporter>,
    /// The resource and scope of every OTLP request, encoded.
    origin: wire::Origin,
    /// The Google Cloud project the resource names, for permission hints.
    project: Option<String>,
    /// When counting started (Unix nanoseconds): the start time of cumulative sums.
    started: u64,
    resize: Arc<AtomicBool>,
    notify: Arc<Notify>,
    /// Families withheld from a collection for want of room, ever: a
    /// reference scrape during which it moved is redone.
    deferred: Arc<std::sync::atomic::AtomicU64>,
}

/// All telemetry of the process: metric pipelines (resized as the cluster
/// grows), the `/metrics` renderer, the OTLP export loop.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

impl Inner {
    /// Runs the one pass: writes again, for every output on, the shards
    /// whose nodes changed. Returns the pass, still locked, for its caller to
    /// read what it needs. Blocking.
    fn run_pass(&self) -> std::sync::MutexGuard<'_, Pass> {
        let mut pass = self.pass.lock().unwrap_or_else(|e| e.into_inner());
        // Read before the pass: a pass that started before the sync may have missed its nodes.
        let synced = self.sources.view.health().is_synced();
        let started = Instant::now();
        match pass.run(&self.families, &self.sources, &self.resource) {
            Ok(done) => {
                self.last_pass_ms
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                let work = &self.sources.work;
                let shards = done.shards as u64;
                if self.streaming() {
                    work.rendered.fetch_add(shards, Ordering::Relaxed);
                }
                if self.otlp.is_some() {
                    work.encoded.fetch_add(shards, Ordering::Relaxed);
                }
                let series: Vec<(String, u64)> = pass
                    .series(&self.families)
                    .map(|(name, count)| (name.to_string(), count as u64))
                    .collect();
                if synced {
                    self.announce_cost(&series);
                }
                *work.series.lock().unwrap_or_else(|e| e.into_inner()) = series;
                if done.shards > 0 {
                    debug!(
                        shards = done.shards,
                        points = done.points,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "wrote the changed shards"
                    );
                }
            }
            Err(e) => {
                // Whatever was half written is redone by the next pass.
                pass.invalidate();
                warn!(error = %e, "writing readings; serving the previous ones");
            }
        }
        pass
    }

    /// Says once, after the first pass over the synced view (call it only
    /// for a pass that started synced), how many series
    /// the readings are and what that means in samples a month: at the
    /// scrape interval `--scrape-interval` names for `/metrics`, at the export
    /// interval for OTLP. Managed backends bill per sample.
    fn announce_cost(&self, series: &[(String, u64)]) {
        if self.cost_announced.swap(true, Ordering::AcqRel) {
            return;
        }
        let total: u64 = series.iter().map(|(_, c)| c).sum();
        let nodes = self.sources.view.nodes().len().max(1) as u64;
        let per_month =
            |every: Duration| (total as f64 * MONTH.as_secs_f64() / every.as_secs_f64().max(1.0)) as u64;
        let prometheus = self
            .settings
            .prometheus
            .then(|| per_month(self.settings.scrape_interval));
        let otlp = self
            .otlp
            .is_some()
            .then(|| per_month(self.settings.export_interval));
        info!(
            profile = self.settings.readings.profile.as_str(),
            sparse_readings = self.settings.readings.sparse,
            series = total,
            nodes,
            series_per_node = format!("{:.1}", total as f64 / nodes as f64),
            scrape_interval = ?self.settings.scrape_interval,
            samples_per_month_scraped = prometheus,
            samples_per_month_otlp = otlp,
            "what the readings cost: kube_node_status_series has it by family; \
             --metric-profile, --metric-allowlist/--metric-denylist make it smaller"
        );
    }

    /// True when `/metrics` is served from the pass's node section.
    fn streaming(&self) -> bool {
        streaming(&self.settings)
    }

    /// Brings the node section of `/metrics` up to date with the view. Blocking.
    fn render_section(&self) {
        let started = Instant::now();
        let generation = self.sources.view.health().generation();
        let leading = self.sources.leadership.is_leader();
        let synced = self.sources.view.health().is_synced();
        let section = self.run_pass().section();
        if synced && !self.rendered_synced.swap(true, Ordering::AcqRel) {
            info!(
                points = section.points(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "first /metrics rendering of the synced view done"
            );
        }
        *self.section.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(section);
        self.rendered.send_replace((generation, leading));
    }

    /// Waits after a change until the view has stayed still for [`QUIET`],
    /// or for twice what the last pass took (at least [`LEAST_SETTLING`], at
    /// most [`MOST_SETTLING`]), whichever comes first. A lone flip waits
    /// [`QUIET`]. A zone outage arrives as thousands of events: one that
    /// arrives within a second is written in one or two passes. One that
    /// takes many seconds to arrive (33,000 nodes at 100,000) is written as
    /// it comes, each pass writing the shards the last one's wait dirtied:
    /// rendering takes about a third of the time while changes keep coming
    /// (more once a pass takes over 2.5 s, where the wait stops growing), and
    /// what is left to write after the last event is what arrived during
    /// one wait, not the whole burst. (Waiting on a full pass's cost instead held a 100,000
    /// node outage back 5 s at a time, and then wrote nearly every shard.)
    async fn settle(&self) {
        let health = self.sources.view.health();
        let started = tokio::time::Instant::now();
        let last = Duration::from_millis(self.last_pass_ms.load(Ordering::Relaxed));
        let most = (2 * last).clamp(LEAST_SETTLING, MOST_SETTLING);
        let mut seen = health.generation();
        loop {
            tokio::time::sleep(QUIET).await;
            let now = health.generation();
            if now == seen || started.elapsed() >= most {
                return;
            }
            seen = now;
        }
    }

    /// Waits (a bounded time) until the node section shows the view and the
    /// role as they are now, so that a scrape right after a change, the
    /// first sync or a takeover does not get the rendering from before it.
    async fn catch_up(&self) {
        if !triggers::plan(Trigger::Scrape, self.outputs).catch_up {
            return;
        }
        let want = self.sources.view.health().generation();
        let leading = self.sources.leadership.is_leader();
        let mut rendered = self.rendered.subscribe();
        let shown = rendered.wait_for(|(g, l)| *g >= want && *l == leading);
        let _ = tokio::time::timeout(CATCH_UP, shown).await;
    }

    /// The live part of `/metrics`: `target_info` and self-telemetry. Blocking.
    fn live(&self, reader: &SharedReader) -> Result<Vec<u8>, RenderError> {
        let mut out = Vec::with_capacity(8 * 1024);
        exposition::write_target_info(&self.resource, &mut out)?;
        let rm = reader
            .collect()
            .map_err(|e| RenderError::Collect(e.to_string()))?;
        exposition::write_metrics(&rm, &mut out)?;
        Ok(out)
    }

    /// One `/metrics` response. Blocking.
    fn scrape(&self, gzip: bool) -> Result<Exposition, RenderError> {
        match &self.current().text {
            None => Err(RenderError::NoRegistry),
            Some(Text::Streaming(_, reader)) => {
                // A follower keeps rendering (a takeover serves at once) but shows none of it.
                let section = if self.sources.leadership.is_leader() {
                    self.section.read().unwrap_or_else(|e| e.into_inner()).clone()
                } else {
                    Arc::new(Section::empty())
                };
                Ok(prometheus::body::respond(section, self.live(reader)?, gzip)?)
            }
            Some(Text::Reference(..)) => {
                let body = self.reference_body()?;
                Ok(Exposition {
                    content_length: Some(body.len() as u64),
                    body: futures::stream::once(async move { Ok(bytes::Bytes::from(body)) }).boxed(),
                    gzip: false,
                })
            }
        }
    }

    /// One OTLP export cycle: the per-node families from their encoded cache
    /// (collecting again only the shards whose nodes changed), then the
    /// cluster-wide readings and self-telemetry, each request sent as soon
    /// as it is written.
    async fn export_cycle(self: &Arc<Self>, exporter: &otlp::MetricsExporter) {
        let Some(reader) = self.current().otlp.as_ref().map(|(_, r)| r.clone()) else {
            return;
        };
        // A few requests wait while others are sent: memory stays at a handful
        // of requests, and the writing stays off the async workers.
        let (tx, rx) = tokio::sync::mpsc::channel(client::CONCURRENCY);
        let inner = self.clone();
        let max = exporter.max_points();
        let producer = tokio::task::spawn_blocking(move || {
            inner.write_requests(&reader, max, |part| tx.blocking_send(part).is_ok());
        });
        exporter.export_cycle(rx, self.project.as_deref()).await;
        loops::rethrow(producer.await);
    }

    /// Writes the requests of one export cycle, at most `max` points each,
    /// handing each to `sink` until it refuses one. Blocking.
    fn write_requests(&self, own: &SharedReader, max: usize, mut sink: impl FnMut(wire::Part) -> bool) {
        let now = unix_nanos(std::time::SystemTime::now());
        let pass = self.run_pass();
        let Some(cache) = pass.otlp() else { return };
        // The /metrics side gets this pass's work too.
        if self.streaming() {
            *self.section.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pass.section());
        }
        drop(pass);
        debug!(
            cached_points = cache.points(),
            cached_bytes = cache.stored_bytes(),
            "writing an OTLP export from the cache"
        );
        if self.settings.resource_per_node {
            // A follower sends its self-telemetry only, as below.
            if self.sources.leadership.is_leader() {
                let scope = opentelemetry::InstrumentationScope::builder(collect::METER).build();
                let keys = families::node_keys(self.settings.readings.naming);
                match cache.per_node(
                    &self.readings_resource,
                    &(&scope, None).into(),
                    keys,
                    (now, self.started),
                ) {
                    Ok(request) => {
                        for part in chunks::split(request, max) {
                            if !sink(wire::Part::encode(&part)) {
                                return;
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "reading the OTLP cache"),
                }
            }
            self.write_rest(cache.cluster, now, own, max, sink);
            return;
        }
        let mut writer = wire::Writer::new(&self.origin, max, now, self.started, &mut sink);
        // A follower keeps its cache current (a takeover exports at once) but sends none of it.
        let open = if !self.sources.leadership.is_leader() {
            writer.finish()
        } else {
            match cache.write(&mut writer) {
                Ok(open) => open && writer.finish(),
                Err(e) => {
                    warn!(error = %e, "reading the OTLP cache");
                    writer.finish()
                }
            }
        };
        if !open {
            return;
        }
        self.write_rest(cache.cluster, now, own, max, sink);
    }

    /// Writes the cluster-wide readings, under the readings' resource, and
    /// the self-telemetry, under this replica's.
    fn write_rest(
        &self,
        mut cluster: Option<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>,
        now: u64,
        own: &SharedReader,
        max: usize,
        mut sink: impl FnMut(wire::Part) -> bool,
    ) {
        if let Some(request) = &mut cluster {
            for rm in &mut request.resource_metrics {
                rm.resource = Some(self.readings_resource.clone());
            }
            stamp_gauges(request, now);
        }
        let own = own
            .collect()
            .map_err(|e| warn!(error = %e, "collecting self-telemetry for OTLP"))
            .map(|rm| {
                opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest::from(&rm)
            });
        for request in cluster.into_iter().chain(own) {
            for part in chunks::split(request, max) {
                if !sink(wire::Part::encode(&part)) {
                    return;
                }
            }
        }
    }
}

impl Metrics for Inner {
    fn render(&self, gzip: bool) -> Result<Exposition, RenderError> {
        self.scrape(gzip)
    }

    fn caught_up(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(self.catch_up())
    }

    fn is_complete(&self) -> bool {
        // The reference encoder renders at each scrape: complete as soon as the view is.
        !self.streaming() || self.rendered_synced.load(Ordering::Acquire)
    }
}

impl Telemetry {
    /// Builds the metric pipelines for `view`. Call inside the tokio runtime.
    /// `google` authenticates OTLP requests in Google mode.
    pub fn start(
        settings: &Settings,
        resource: Resource,
        view: View,
        leadership: Leadership,
        google: Option<Arc<GoogleAuth>>,
    ) -> Result<Telemetry, TelemetryError> {
        let readings = Arc::new(settings.readings.clone());
        let families: Vec<Family> = families::enabled_families(&readings);
        // Per-node families stay on a long-lived provider only behind the
        // reference encoder, so only it needs limits sized to the cluster.
        let reference = settings.prometheus && settings.prometheus_encoder == PrometheusEncoder::Reference;
        let sizing = if reference {
            families.iter().map(|f| (f.name, f.count)).collect()
        } else {
            Vec::new()
        };
        let export = Arc::new(ExportStats::default());
        let logs = match &settings.otlp_logs {
            Some(o) => Some(logs::Logs::start(
                o,
                settings.logs_queue_size,
                &resource,
                leadership.clone(),
                settings.lease.as_ref().map(logs::replay_window),
                google.clone(),
            )?),
            None => None,
        };
        let otlp = match &settings.otlp_metrics {
            Some(o) => Some(otlp::metric_exporter(
                o,
                export.clone(),
                settings.export_interval,
                google,
            )?),
            None => None,
        };
        let outputs = Outputs {
            text: streaming(settings),
            otlp: otlp.is_some(),
        };
        let pass = Pass::new(&families, outputs).map_err(RenderError::from)?;
        let readings_resource = resource::readings(&resource, settings.lease.as_ref());
        let origin = wire::Origin::of(&readings_resource, collect::METER);
        let project = resource
            .get(&opentelemetry::Key::from_static_str("gcp.project_id"))
            .map(|v| v.to_string());
        let inner = Inner {
            settings: settings.clone(),
            resource,
            readings_resource: (&readings_resource).into(),
            sources: Sources {
                view,
                export,
                settings: readings,
                leadership,
                work: Arc::default(),
                logs: logs.as_ref().map(logs::Logs::stats),
                // Series only for what is on: every sample costs on GMP.
                surface: Arc::new(crate::surface::SurfaceStats::new(
                    settings.auth_kubernetes || settings.auth_token_file.is_some(),
                    settings.auth_kubernetes,
                    settings.tls.is_some(),
                )),
            },
            logs,
            families,
            sizing,
            current: RwLock::new(Arc::new(Pipelines {
                limits: Arc::default(),
                text: None,
                otlp: None,
            })),
            pass: std::sync::Mutex::new(pass),
            last_pass_ms: Default::default(),
            cost_announced: AtomicBool::new(false),
            section: RwLock::new(Arc::new(Section::empty())),
            outputs,
            rendered: tokio::sync::watch::Sender::new((0, false)),
            rendered_synced: AtomicBool::new(false),
            otlp,
            origin,
            project,
            started: unix_nanos(std::time::SystemTime::now()),
            resize: Arc::new(AtomicBool::new(false)),
            notify: Arc::new(Notify::new()),
            deferred: Arc::default(),
        };
        let first = inner.build(limits_for(&inner.demand()))?;
        *inner.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(first);
        Ok(Telemetry {
            inner: Arc::new(inner),
        })
    }

    /// The counters of the served surface (connections, scrape authentication,
    /// the serving certificate), for the server to write and the self-telemetry to read.
    pub fn surface(&self) -> Arc<crate::surface::SurfaceStats> {
        self.inner.sources.surface.clone()
    }

    /// What `/metrics` is served from, if the Prometheus exporter is on.
    pub fn metrics_handle(&self) -> Option<MetricsHandle> {
        self.inner
            .settings
            .prometheus
            .then(|| self.inner.clone() as MetricsHandle)
    }

    /// Brings the node section of `/metrics` up to date now, as the render
    /// loop does after every change; `full` renders every shard, not only
    /// the changed ones. Blocking: for benchmarks and tools.
    pub fn render_now(&self, full: bool) {
        if full {
            self.inner
                .pass
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .invalidate();
        }
        self.inner.render_section();
    }

    /// Writes the requests of an OTLP export cycle without sending them,
    /// and returns how many points and bytes they hold; `full` collects every
    /// shard again, not only the changed ones. Blocking: for benchmarks and tools.
    pub fn otlp_requests_now(&self, full: bool) -> (usize, usize) {
        let inner = &self.inner;
        if full {
            inner.pass.lock().unwrap_or_else(|e| e.into_inner()).invalidate();
        }
        let Some(reader) = inner.current().otlp.as_ref().map(|(_, r)| r.clone()) else {
            return (0, 0);
        };
        let (mut points, mut bytes) = (0, 0);
        inner.write_requests(&reader, config::DEFAULT_MAX_POINTS_PER_REQUEST, |part| {
            points += part.points;
            bytes += part.bytes.len();
            true
        });
        (points, bytes)
    }

    /// Bytes of plain text in the rendered node section of `/metrics`.
    pub fn section_len(&self) -> u64 {
        self.inner
            .section
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .plain_len()
    }

    /// Bytes of deflate the rendered node section is kept and sent as.
    pub fn section_deflated_len(&self) -> u64 {
        self.inner
            .section
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .deflated_len()
    }

    /// Where the watch hands node condition changes, when they are exported as log records.
    pub fn condition_sink(&self) -> Option<Arc<dyn crate::cluster::ConditionSink>> {
        self.inner.logs.as_ref().map(logs::Logs::sink)
    }

    /// Sends the waiting log records and exports over OTLP one last time,
    /// then shuts every provider and exporter down.
    pub async fn shutdown(&self) {
        if let Some(logs) = &self.inner.logs {
            logs.flush().await;
        }
        if self.inner.otlp.is_some() {
            // Its own task: a panic in the last export is logged, and the
            // shutdown still releases the Lease and flushes the traces.
            let inner = self.inner.clone();
            let last = tokio::spawn(async move {
                if let Some(exporter) = &inner.otlp {
                    inner.export_cycle(exporter).await;
                }
            });
            if let Err(e) = last.await {
                warn!(error = %e, "the last OTLP export failed");
            }
        }
        let current = self.inner.current();
        let _ = tokio::task::spawn_blocking(move || current.shutdown()).await;
    }
}

/// True when `/metrics` is on and served from the pass's node section.
fn streaming(settings: &Settings) -> bool {
    settings.prometheus && settings.prometheus_encoder == PrometheusEncoder::Streaming
}

/// Gives every gauge point of `request` the export time as its time and its
/// start, as the per-node gauges have: the cluster-wide readings were
/// collected at their pass, maybe minutes before this export, by a
/// long-lived provider whose gauges start at its previous collection.
fn stamp_gauges(
    request: &mut opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    now: u64,
) {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let metrics = request
        .resource_metrics
        .iter_mut()
        .flat_map(|rm| &mut rm.scope_metrics)
        .flat_map(|sm| &mut sm.metrics);
    for metric in metrics {
        if let Some(Data::Gauge(gauge)) = &mut metric.data {
            for point in &mut gauge.data_points {
                point.time_unix_nano = now;
                point.start_time_unix_nano = now;
            }
        }
    }
}

fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The longest a scrape waits for the renderer to show a change; past it,
/// the previous rendering is served.
const CATCH_UP: Duration = Duration::from_secs(2);

/// A month, for samples-a-month figures: 30.44 days.
const MONTH: Duration = Duration::from_secs(2_630_016);

/// How long the view must stay still after a change before a pass starts.
const QUIET: Duration = Duration::from_millis(50);
/// A pass waits for the view to stay still at least this long before it
/// starts anyway, and at most [`MOST_SETTLING`].
const LEAST_SETTLING: Duration = Duration::from_millis(500);
/// The longest a pass waits for the view to stay still, however large the cluster.
const MOST_SETTLING: Duration = Duration::from_secs(5);

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
mod tests;

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
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::{
    Resource,
    metrics::{Instrument, SdkMeterProvider, Stream},
    trace::SdkTracerProvider,
};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::{
    cluster::{Node, View},
    config::{self, PrometheusEncoder, Settings},
    leader::Leadership,
};
use otlp::{chunks, client, wire};
use pipeline::{
    collect::{self, SharedReader},
    families::{self, Family},
    instruments::{self, Capacity, Group, Sources},
    pass::{Outputs, Pass},
    shards::SHARDS,
};
use prometheus::{body::Section, text as exposition};
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

/// The SDK's own default; we never go below it.
pub(crate) const MIN_CARDINALITY_LIMIT: usize = 2_000;

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

/// The long-lived providers of one generation, all built with the same
/// per-instrument limits. Per-node gauges are not on them: see [`collect`].
struct Pipelines {
    limits: Arc<HashMap<&'static str, usize>>,
    text: Option<Text>,
    /// OTLP's self-telemetry.
    otlp: Option<(SdkMeterProvider, SharedReader)>,
}

/// The long-lived provider behind `/metrics`.
#[derive(Clone)]
enum Text {
    /// Self-telemetry only; the node section is rendered apart.
    Streaming(SdkMeterProvider, SharedReader),
    /// Everything, gathered by opentelemetry-prometheus at every scrape.
    Reference(SdkMeterProvider, ::prometheus::Registry),
}

impl Pipelines {
    fn shutdown(&self) {
        let text = self.text.iter().map(|t| match t {
            Text::Streaming(p, _) | Text::Reference(p, _) => p,
        });
        for provider in text.chain(self.otlp.iter().map(|(p, _)| p)) {
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
    /// What a pass over every shard took last (estimated from one over many), in ms.
    full_pass_ms: std::sync::atomic::AtomicU64,
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
    /// Builds a generation of long-lived providers.
    fn build(&self, limits: HashMap<&'static str, usize>) -> Result<Pipelines, TelemetryError> {
        let limits = Arc::new(limits);
        let capacity = Capacity::new(
            limits.clone(),
            self.resize.clone(),
            self.notify.clone(),
            self.deferred.clone(),
        );
        let text = self.build_text(&limits, &capacity)?;
        let otlp = self.otlp.as_ref().map(|_| {
            let reader = SharedReader::new();
            let provider = meter_provider(&self.resource, limits.clone())
                .with_reader(reader.clone())
                .build();
            instruments::register(
                &provider.meter(collect::METER),
                Group::SelfOnly,
                &self.sources,
                &capacity,
            );
            (provider, reader)
        });
        Ok(Pipelines { limits, text, otlp })
    }

    /// A generation with larger limits for the reference encoder, and the
    /// pipelines it retires. OTLP's provider is kept, not rebuilt: it holds
    /// no per-node instrument, and a new one would send its cumulative
    /// self-telemetry with a new start time while the totals go on, which a
    /// backend that honours start times reads as a reset and counts again.
    fn rebuild(
        &self,
        old: &Pipelines,
        limits: HashMap<&'static str, usize>,
    ) -> Result<(Pipelines, Pipelines), TelemetryError> {
        let limits = Arc::new(limits);
        let capacity = Capacity::new(
            limits.clone(),
            self.resize.clone(),
            self.notify.clone(),
            self.deferred.clone(),
        );
        let text = self.build_text(&limits, &capacity)?;
        let new = Pipelines {
            limits,
            text,
            otlp: old.otlp.clone(),
        };
        let retired = Pipelines {
            limits: old.limits.clone(),
            text: old.text.clone(),
            otlp: None,
        };
        Ok((new, retired))
    }

    /// The provider behind `/metrics`, if it is on.
    fn build_text(
        &self,
        limits: &Arc<HashMap<&'static str, usize>>,
        capacity: &Capacity,
    ) -> Result<Option<Text>, TelemetryError> {
        let meter = |p: &SdkMeterProvider| p.meter(collect::METER);
        Ok(
            match (self.settings.prometheus, self.settings.prometheus_encoder) {
                (false, _) => None,
                (true, PrometheusEncoder::Streaming) => {
                    let reader = SharedReader::new();
                    let provider = meter_provider(&self.resource, limits.clone())
                        .with_reader(reader.clone())
                        .build();
                    instruments::register(&meter(&provider), Group::SelfOnly, &self.sources, capacity);
                    Some(Text::Streaming(provider, reader))
                }
                (true, PrometheusEncoder::Reference) => {
                    let registry = ::prometheus::Registry::new();
                    let reader = opentelemetry_prometheus::exporter()
                        .with_registry(registry.clone())
                        .scope_info_enabled(false)
                        .build()
                        .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
                    let provider = meter_provider(&self.resource, limits.clone())
                        .with_reader(reader)
                        .build();
                    instruments::register(&meter(&provider), Group::All, &self.sources, capacity);
                    Some(Text::Reference(provider, registry))
                }
            },
        )
    }

    fn demand(&self) -> Demand {
        // Only the reference encoder sizes anything by the cluster: without
        // it, no snapshot of every node after every change.
        if self.sizing.is_empty() {
            return Demand::new();
        }
        demand(&self.sizing, &self.sources.view.nodes())
    }

    fn current(&self) -> Arc<Pipelines> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

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
                if done.shards >= SHARDS / 4 {
                    let full = started.elapsed().as_millis() as u64 * SHARDS as u64 / done.shards as u64;
                    self.full_pass_ms.store(full, Ordering::Relaxed);
                }
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
                points = section.points,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "first /metrics rendering of the synced view done"
            );
        }
        *self.section.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(section);
        self.rendered.send_replace((generation, leading));
        crate::memory::release_free_memory();
    }

    /// Waits after a change until the view has stayed still for [`QUIET`].
    /// A zone outage arrives as thousands of events over a second or more,
    /// and they touch every shard: a pass started in the middle of the burst
    /// writes every shard, competes with the watch for the cores while the
    /// rest arrives, and the pass after it writes every shard again. One pass
    /// after the burst shows the outage sooner. A lone flip waits [`QUIET`];
    /// a stream of changes that never pauses waits at most twice what a full
    /// pass costs (measured, at least [`LEAST_SETTLING`]): what is not yet
    /// shown is never older than what showing it costs, give or take.
    async fn settle(&self) {
        let health = self.sources.view.health();
        let started = tokio::time::Instant::now();
        let full = Duration::from_millis(self.full_pass_ms.load(Ordering::Relaxed));
        let most = (2 * full).clamp(LEAST_SETTLING, MOST_SETTLING);
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

    /// The reference encoder's body, whole: a family that did not fit its
    /// limit is withheld from the collection (see [`Capacity`]), and a body
    /// without it would show every node ready and none of their conditions.
    /// Then the pipeline is grown at once and the body gathered again.
    /// Blocking.
    fn reference_body(&self) -> Result<Vec<u8>, RenderError> {
        for _ in 0..3 {
            let before = self.deferred.load(Ordering::Acquire);
            let current = self.current();
            let Some(Text::Reference(_, registry)) = &current.text else {
                return Err(RenderError::NoRegistry);
            };
            let body = prometheus::render(registry)?;
            if self.deferred.load(Ordering::Acquire) == before {
                return Ok(body);
            }
            self.grow();
        }
        Err(RenderError::Outgrown)
    }

    /// Rebuilds the reference encoder's pipeline if the view outgrew its
    /// limits; true if it did. Blocking.
    fn grow(&self) -> bool {
        self.resize.store(false, Ordering::Release);
        let demand = self.demand();
        let old = self.current();
        if !old.outgrown_by(&demand) {
            return false;
        }
        let total: usize = demand.values().sum();
        match self.rebuild(&old, limits_for(&demand)) {
            Ok((new, retired)) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
                info!(points = total, "resized metric pipelines for the cluster");
                retired.shutdown();
                true
            }
            Err(e) => {
                warn!(error = %e, "could not resize metric pipelines; keeping the current ones");
                false
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
        let _ = producer.await;
        let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
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
            self.write_rest(cache.cluster, own, max, sink);
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
        self.write_rest(cache.cluster, own, max, sink);
    }

    /// Writes the cluster-wide readings, under the readings' resource, and
    /// the self-telemetry, under this replica's.
    fn write_rest(
        &self,
        mut cluster: Option<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>,
        own: &SharedReader,
        max: usize,
        mut sink: impl FnMut(wire::Part) -> bool,
    ) {
        if let Some(request) = &mut cluster {
            for rm in &mut request.resource_metrics {
                rm.resource = Some(self.readings_resource.clone());
            }
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
            full_pass_ms: Default::default(),
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
        if let Some(exporter) = &self.inner.otlp {
            self.inner.export_cycle(exporter).await;
        }
        let current = self.inner.current();
        let _ = tokio::task::spawn_blocking(move || current.shutdown()).await;
    }
}

/// True when `/metrics` is on and served from the pass's node section.
fn streaming(settings: &Settings) -> bool {
    settings.prometheus && settings.prometheus_encoder == PrometheusEncoder::Streaming
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
mod tests {
    use super::*;
    use crate::cluster::Feed;
    use clap::Parser as _;
    use kube::runtime::watcher::Event;
    use opentelemetry_proto::tonic::{
        collector::metrics::v1::ExportMetricsServiceRequest,
        metrics::v1::{NumberDataPoint, metric::Data},
    };
    use prost::Message as _;

    const NOW: &str = "2026-11-27T00:00:00Z";

    fn node(i: usize, rv: u64, ready: &str) -> Node {
        let mut json = crate::fake::generated_node(i, rv, NOW);
        if let Some(conditions) = json["status"]["conditions"].as_array_mut() {
            for c in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
                c["status"] = ready.into();
            }
        }
        let mut node: Node = serde_json::from_value(json).expect("a generated node parses");
        crate::cluster::strip(&mut node, &|k| k.starts_with("node-role.kubernetes.io/"));
        node
    }

    fn telemetry(nodes: usize) -> (Telemetry, Feed) {
        let cli = crate::cli::Cli::try_parse_from(["kube-node-status", "--metrics-exporter", "otlp"])
            .expect("flags");
        let settings = cli.run.resolve(&|_| None).expect("settings");
        let (view, mut writer) = View::new();
        writer.apply(&Event::Init);
        for i in 0..nodes {
            writer.apply(&Event::InitApply(node(i, 1, "True")));
        }
        writer.apply(&Event::InitDone);
        let resource = build_resource(&settings.resource, &|_| None);
        let telemetry =
            Telemetry::start(&settings, resource, view, Leadership::sole(), None).expect("telemetry");
        (telemetry, writer)
    }

    /// A relist replaces every stored object; the pass held on to the old
    /// copies of the unchanged ones (up to twice the nodes' memory) and now
    /// takes the stored ones.
    #[tokio::test]
    async fn after_a_relist_the_pass_holds_the_stored_nodes_not_copies() {
        let (telemetry, mut feed) = telemetry(50);
        let view = feed.view().clone();
        assert!(telemetry.otlp_requests_now(false).0 > 0);
        feed.apply(&Event::Init);
        for i in 0..50 {
            feed.apply(&Event::InitApply(node(
                i,
                2,
                if i == 7 { "False" } else { "True" },
            )));
        }
        feed.apply(&Event::InitDone);
        assert!(telemetry.otlp_requests_now(false).0 > 0);
        let pass = telemetry.inner.pass.lock().unwrap();
        let held: Vec<_> = pass.held().cloned().collect();
        assert_eq!(held.len(), 50);
        for node in held {
            let name = node.metadata.name.as_deref().unwrap();
            let stored = view.node(name).unwrap();
            assert!(Arc::ptr_eq(&node, &stored), "{name} is a copy of the stored node");
        }
    }

    /// The start times of the cumulative sums OTLP's self-telemetry sends.
    fn otlp_sum_starts(t: &Telemetry) -> Vec<(String, std::time::SystemTime)> {
        use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
        let current = t.inner.current();
        let (_, reader) = current.otlp.as_ref().expect("OTLP on");
        let rm = reader.collect().expect("collects");
        let mut out = Vec::new();
        for m in rm.scope_metrics().flat_map(|s| s.metrics()) {
            if let AggregatedMetrics::U64(MetricData::Sum(sum)) = m.data() {
                out.push((m.name().to_string(), sum.start_time()));
            }
        }
        out.sort();
        out
    }

    /// The reference encoder's pipeline grows with the cluster; rebuilding
    /// OTLP's with it gave every cumulative self-telemetry total a new start
    /// time while the totals went on: a false reset to a backend.
    #[tokio::test]
    async fn growing_the_reference_pipeline_keeps_otlps_start_times() {
        let cli = crate::cli::Cli::try_parse_from([
            "kube-node-status",
            "--metrics-exporter",
            "otlp,prometheus",
            "--prometheus-encoder",
            "reference",
        ])
        .expect("flags");
        let settings = cli.run.resolve(&|_| None).expect("settings");
        let (view, mut feed) = View::new();
        feed.apply(&Event::Init);
        feed.apply(&Event::InitApply(node(0, 1, "True")));
        feed.apply(&Event::InitDone);
        let resource = build_resource(&settings.resource, &|_| None);
        let t = Telemetry::start(&settings, resource, view, Leadership::sole(), None).expect("telemetry");
        let before = otlp_sum_starts(&t);
        assert!(!before.is_empty());
        let limits = t.inner.current().limits.clone();
        std::thread::sleep(Duration::from_millis(20));
        for i in 1..400 {
            feed.apply(&Event::Apply(node(i, 1, "True")));
        }
        t.resize().await;
        assert!(
            !Arc::ptr_eq(&limits, &t.inner.current().limits),
            "the pipeline was resized"
        );
        assert_eq!(otlp_sum_starts(&t), before);
    }

    /// A scrape of the reference encoder in the middle of growth carried
    /// `k8s_node_ready` for every node and not one condition series: a family
    /// over its limit was withheld. Now the scrape grows the pipeline and
    /// gathers again.
    #[tokio::test]
    async fn a_reference_scrape_during_growth_shows_every_family_or_nothing() {
        let cli = crate::cli::Cli::try_parse_from([
            "kube-node-status",
            "--metrics-exporter",
            "prometheus",
            "--prometheus-encoder",
            "reference",
        ])
        .expect("flags");
        let settings = cli.run.resolve(&|_| None).expect("settings");
        let (view, mut feed) = View::new();
        feed.apply(&Event::Init);
        feed.apply(&Event::InitApply(node(0, 1, "True")));
        feed.apply(&Event::InitDone);
        let resource = build_resource(&settings.resource, &|_| None);
        let t = Telemetry::start(&settings, resource, view, Leadership::sole(), None).expect("telemetry");
        for i in 1..400 {
            feed.apply(&Event::Apply(node(i, 1, "True")));
        }
        let body = String::from_utf8(t.inner.reference_body().expect("a body")).unwrap();
        let nodes = |family: &str| {
            body.lines()
                .filter(|l| l.starts_with(&format!("{family}{{")))
                .filter_map(|l| l.split("k8s_node_name=\"").nth(1)?.split('"').next())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        assert_eq!(nodes("k8s_node_ready"), 400);
        assert_eq!(nodes("k8s_node_condition_status"), 400);
        assert_eq!(nodes("k8s_node_condition_transitions_total"), 400);
    }

    fn is_node_family(families: &[Family], name: &str) -> bool {
        families.iter().any(|f| f.name == name)
    }

    fn points(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> &[NumberDataPoint] {
        match &m.data {
            Some(Data::Gauge(g)) => &g.data_points,
            Some(Data::Sum(s)) => &s.data_points,
            _ => panic!("{} is neither a gauge nor a sum", m.name),
        }
    }

    /// Every data point of the per-node families, one line each, timestamps
    /// left out, sorted: what a receiver would store, whatever the split.
    fn node_points(requests: &[ExportMetricsServiceRequest], families: &[Family]) -> Vec<String> {
        let mut lines = Vec::new();
        for rm in requests {
            for sm in &rm
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .collect::<Vec<_>>()
            {
                for m in sm.metrics.iter().filter(|m| is_node_family(families, &m.name)) {
                    let shape = match &m.data {
                        Some(Data::Sum(s)) => format!("sum {} {}", s.aggregation_temporality, s.is_monotonic),
                        _ => "gauge".to_string(),
                    };
                    for p in points(m) {
                        let mut p = p.clone();
                        p.start_time_unix_nano = 0;
                        p.time_unix_nano = 0;
                        p.attributes.sort_by(|a, b| a.key.cmp(&b.key));
                        let origin = rm.resource_metrics.iter().map(|r| (&r.resource, &r.schema_url));
                        lines.push(format!(
                            "{:?} {:?} {} {} {} {shape} {p:?}",
                            origin.collect::<Vec<_>>(),
                            sm.scope,
                            m.name,
                            m.description,
                            m.unit
                        ));
                    }
                }
            }
        }
        lines.sort();
        lines
    }

    /// What the SDK's own path sends: each family collected and converted by opentelemetry-proto.
    fn reference(t: &Telemetry) -> Vec<String> {
        let inner = &t.inner;
        let mut requests = Vec::new();
        collect::node_families(&inner.families, &inner.sources, &inner.resource, |rm| {
            requests.push(ExportMetricsServiceRequest::from(&rm))
        });
        node_points(&requests, &inner.families)
    }

    /// What the cache sends, decoded, with every point checked to carry the cycle's time.
    fn cached(t: &Telemetry, max: usize) -> (Vec<String>, Vec<wire::Part>) {
        let inner = &t.inner;
        let Some((_, reader)) = inner.current().otlp.clone() else {
            panic!("OTLP is on")
        };
        let mut parts = Vec::new();
        let before = unix_nanos(std::time::SystemTime::now());
        inner.write_requests(&reader, max, |p| {
            parts.push(p);
            true
        });
        let requests: Vec<ExportMetricsServiceRequest> = parts
            .iter()
            .map(|p| ExportMetricsServiceRequest::decode(p.bytes.clone()).expect("valid protobuf"))
            .collect();
        for m in requests
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| is_node_family(&inner.families, &m.name))
        {
            for p in points(m) {
                assert!(
                    p.time_unix_nano >= before,
                    "{}: stamped with this cycle's time",
                    m.name
                );
                let start = match m.data {
                    Some(Data::Sum(_)) => inner.started,
                    _ => p.time_unix_nano,
                };
                assert_eq!(p.start_time_unix_nano, start, "{}", m.name);
            }
        }
        for (p, r) in parts.iter().zip(&requests) {
            assert!(
                p.points <= max,
                "{} points in a request of at most {max}",
                p.points
            );
            assert_eq!(p.points, chunks::request_points(r));
        }
        (node_points(&requests, &inner.families), parts)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn otlp_requests_from_the_cache_equal_opentelemetry_protos_conversion() {
        let (t, mut writer) = telemetry(300);
        let want = reference(&t);
        assert!(want.len() > 300 * 10, "every family has points: {}", want.len());
        let (got, parts) = cached(&t, 997);
        assert_eq!(got, want);
        assert!(
            parts.len() > want.len() / 997,
            "split into requests of at most 997 points"
        );

        // An idle cycle re-encodes nothing and sends the same points.
        let refresh = |t: &Telemetry| {
            let mut p = t.inner.pass.lock().expect("not poisoned");
            p.run(&t.inner.families, &t.inner.sources, &t.inner.resource)
                .expect("writes")
        };
        assert_eq!(refresh(&t).shards, 0);
        assert_eq!(cached(&t, 5_000).0, want);

        // A flip and a deletion re-encode only their shards, and show.
        writer.apply(&Event::Apply(node(7, 2, "False")));
        writer.apply(&Event::Delete(node(8, 2, "True")));
        let want = reference(&t);
        let (got, _) = cached(&t, 5_000);
        assert_eq!(got, want);
        assert!(
            got.iter()
                .any(|l| l.contains(&crate::fake::node_name(7)) && l.contains("\"false\""))
        );
        assert!(
            !got.iter()
                .any(|l| l.contains(&format!("{:?}", crate::fake::node_name(8))))
        );
        writer.apply(&Event::Apply(node(9, 2, "False")));
        assert_eq!(refresh(&t).shards, 1, "one node changed: one shard");
    }

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

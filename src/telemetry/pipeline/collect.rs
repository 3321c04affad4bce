//! Collections from short-lived meter providers.
//!
//! The SDK keeps every attribute set an observable gauge has reported in
//! its aggregation map until a collection passes without it, in a map
//! preallocated to the cardinality limit. For 10,000 nodes that is about
//! half a million sets and well over 100 MiB per provider, held forever,
//! although the view already holds everything they say. So the per-node
//! families are collected one at a time from a provider built for that
//! collection, with a limit that is exactly the points at hand, and dropped
//! straight after: the SDK's state lives for milliseconds, memory is
//! bounded by the largest family, and the limit can never overflow. The
//! cluster-wide readings, a handful of points, keep one provider
//! ([`ClusterReadings`]).

use std::sync::{Arc, Weak};

#[cfg(test)]
use opentelemetry::metrics::Meter;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, MeterProviderBuilder, Pipeline, SdkMeterProvider, Stream, Temporality,
        data::ResourceMetrics, reader::MetricReader,
    },
};

use super::instruments::{self, Sources};
use crate::readings::ClusterSummary;
#[cfg(test)]
use {super::families::Family, crate::cluster::Node};

/// The meter (instrumentation scope) name of every instrument.
pub const METER: &str = "kube-node-status";

/// A manual reader we can still reach after the provider has taken it.
#[derive(Clone, Debug)]
pub struct SharedReader(Arc<ManualReader>);

impl SharedReader {
    /// A cumulative manual reader.
    pub fn new() -> Self {
        SharedReader(Arc::new(
            ManualReader::builder()
                .with_temporality(Temporality::Cumulative)
                .build(),
        ))
    }

    /// Runs every callback of the provider this reader is registered with.
    pub fn collect(&self) -> Result<ResourceMetrics, opentelemetry_sdk::error::OTelSdkError> {
        let mut rm = ResourceMetrics::default();
        self.0.collect(&mut rm)?;
        Ok(rm)
    }
}

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// A provider builder with `resource` and one limit for every instrument.
fn provider(resource: &Resource, limit: usize) -> MeterProviderBuilder {
    SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_view(move |_: &opentelemetry_sdk::metrics::Instrument| {
            Stream::builder().with_cardinality_limit(limit).build().ok()
        })
}

/// Registers instruments with `register` on a provider that lives for one
/// collection, collects it and drops it.
#[cfg(test)]
fn once(resource: &Resource, limit: usize, register: impl FnOnce(&Meter)) -> Option<ResourceMetrics> {
    let reader = SharedReader::new();
    let provider = provider(resource, limit).with_reader(reader.clone()).build();
    register(&provider.meter(METER));
    let rm = collected(&reader);
    // A manual reader has nothing to flush; shutting down only unregisters.
    let _ = provider.shutdown();
    rm
}

/// What `reader`'s provider reports now; `None`, logged, if collecting failed.
fn collected(reader: &SharedReader) -> Option<ResourceMetrics> {
    reader
        .collect()
        .map_err(|e| tracing::warn!(error = %e, "metric collection failed"))
        .ok()
}

/// Collects the enabled per-node families, one short-lived provider each,
/// then the cluster-wide readings, handing each collection to `sink`: the
/// SDK's own path for an OTLP export, kept as the reference the encoded
/// cache is tested against.
#[cfg(test)]
pub fn node_families(
    families: &[Family],
    sources: &Sources,
    resource: &Resource,
    mut sink: impl FnMut(ResourceMetrics),
) {
    let nodes = sources.view.nodes();
    let collections = families
        .iter()
        .filter_map(|f| family(f, sources, resource, &nodes))
        .chain(cluster(sources, resource));
    for rm in collections {
        sink(rm);
    }
}

#[cfg(test)]
/// The points of `family` for `nodes`, collected from a provider that lives
/// for this collection; `None` when there are none.
pub fn family(
    family: &Family,
    sources: &Sources,
    resource: &Resource,
    nodes: &[Arc<Node>],
) -> Option<ResourceMetrics> {
    let points = instruments::points_of(family, sources, nodes);
    if points.is_empty() {
        return None;
    }
    // One more than the points: the SDK counts its overflow set against the limit.
    let limit = points.len() + 1;
    once(resource, limit, |m| {
        instruments::register_observed(m, family, points)
    })
}

/// The cluster-wide readings, counted from the view, collected from a
/// provider that lives for this collection: the reference for tests.
#[cfg(test)]
pub fn cluster(sources: &Sources, resource: &Resource) -> Option<ResourceMetrics> {
    once(resource, 16, |m| {
        instruments::register_cluster_readings(m, sources, None)
    })
}

/// The cluster-wide readings' provider, built once and collected at every
/// pass from the Ready counts the pass keeps. Unlike the per-node families
/// it holds a handful of attribute sets, so it can live: building a provider
/// (resource detection included) was a tenth of a change's CPU.
pub struct ClusterReadings {
    reader: SharedReader,
    provider: SdkMeterProvider,
    summary: instruments::KeptSummary,
}

impl ClusterReadings {
    /// Registers the cluster-wide readings of `sources` under `resource`.
    pub fn new(sources: &Sources, resource: &Resource) -> ClusterReadings {
        let reader = SharedReader::new();
        let provider = provider(resource, 16).with_reader(reader.clone()).build();
        let summary = instruments::KeptSummary::default();
        instruments::register_cluster_readings(&provider.meter(METER), sources, Some(summary.clone()));
        ClusterReadings {
            reader,
            provider,
            summary,
        }
    }

    /// The readings for `summary` (the view's nodes counted by Ready status).
    pub fn collect(&self, summary: ClusterSummary) -> Option<ResourceMetrics> {
        *self.summary.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary);
        collected(&self.reader)
    }
}

impl Drop for ClusterReadings {
    fn drop(&mut self) {
        // A manual reader has nothing to flush; shutting down only unregisters.
        let _ = self.provider.shutdown();
    }
}

/// The data points of each metric in a collection, by instrument name.
pub fn points_per_metric(rm: &ResourceMetrics) -> Vec<(String, usize)> {
    rm.scope_metrics()
        .flat_map(|s| s.metrics())
        .map(|m| (m.name().to_string(), metric_points(m)))
        .collect()
}

/// The data points in a collection.
pub fn point_count(rm: &ResourceMetrics) -> usize {
    rm.scope_metrics()
        .flat_map(|s| s.metrics())
        .map(metric_points)
        .sum()
}

/// The data points of one metric.
fn metric_points(m: &opentelemetry_sdk::metrics::data::Metric) -> usize {
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    fn count<T>(d: &MetricData<T>) -> usize {
        match d {
            MetricData::Gauge(g) => g.data_points().count(),
            MetricData::Sum(s) => s.data_points().count(),
            MetricData::Histogram(h) => h.data_points().count(),
            MetricData::ExponentialHistogram(h) => h.data_points().count(),
        }
    }
    match m.data() {
        AggregatedMetrics::F64(d) => count(d),
        AggregatedMetrics::U64(d) => count(d),
        AggregatedMetrics::I64(d) => count(d),
    }
}

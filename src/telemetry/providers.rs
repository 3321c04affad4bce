//! The long-lived metric providers: self-telemetry for each output, and
//! behind the reference encoder every family, with cardinality limits sized
//! to the cluster and grown with it.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::{
    Resource,
    metrics::{Instrument, SdkMeterProvider, Stream},
};
use tracing::{info, warn};

use super::{
    Inner, PrometheusEncoder, RenderError, TelemetryError,
    pipeline::{
        collect::{self, SharedReader},
        instruments::{self, Capacity, Group},
    },
    prometheus,
};
use crate::cluster::Node;

/// The SDK's own default; we never go below it.
pub(crate) const MIN_CARDINALITY_LIMIT: usize = 2_000;

/// The cardinality limit for a demand of `points` per instrument: 25% headroom
/// so that node churn between two collections (old and new names coexist until
/// the SDK evicts stale sets) stays under it.
pub fn cardinality_limit(points: usize) -> usize {
    (points + points / 4).max(MIN_CARDINALITY_LIMIT)
}

/// Per-instrument point counts of the per-node families.
pub(super) type Demand = HashMap<&'static str, usize>;

/// An instrument name and an upper bound of its points per node.
pub(super) type Sizing = (&'static str, fn(&Node) -> usize);

/// Measures how many points each enabled per-node family needs for `nodes`.
pub(super) fn demand(sizing: &[Sizing], nodes: &[Arc<Node>]) -> Demand {
    sizing
        .iter()
        .map(|(name, count)| (*name, nodes.iter().map(|n| count(n)).sum()))
        .collect()
}

/// The limits that fit `demand`, each with headroom.
pub(super) fn limits_for(demand: &Demand) -> HashMap<&'static str, usize> {
    demand
        .iter()
        .map(|(name, points)| (*name, cardinality_limit(*points)))
        .collect()
}

/// The long-lived providers of one generation, all built with the same
/// per-instrument limits. Per-node gauges are not on them: see [`collect`].
pub(super) struct Pipelines {
    pub(super) limits: Arc<HashMap<&'static str, usize>>,
    pub(super) text: Option<Text>,
    /// OTLP's self-telemetry.
    pub(super) otlp: Option<(SdkMeterProvider, SharedReader)>,
}

/// The long-lived provider behind `/metrics`.
#[derive(Clone)]
pub(super) enum Text {
    /// Self-telemetry only; the node section is rendered apart.
    Streaming(SdkMeterProvider, SharedReader),
    /// Everything, gathered by opentelemetry-prometheus at every scrape.
    Reference(SdkMeterProvider, ::prometheus::Registry),
}

impl Pipelines {
    pub(super) fn shutdown(&self) {
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
    pub(super) fn outgrown_by(&self, demand: &Demand) -> bool {
        demand
            .iter()
            .any(|(name, points)| *points > self.limits.get(name).copied().unwrap_or(0))
    }
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
    /// The room `limits` give, reporting overflows to this telemetry's resizer.
    fn capacity(&self, limits: &Arc<HashMap<&'static str, usize>>) -> Capacity {
        Capacity::new(
            limits.clone(),
            self.resize.clone(),
            self.notify.clone(),
            self.deferred.clone(),
        )
    }

    /// Builds a generation of long-lived providers.
    pub(super) fn build(&self, limits: HashMap<&'static str, usize>) -> Result<Pipelines, TelemetryError> {
        let limits = Arc::new(limits);
        let capacity = self.capacity(&limits);
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
        let capacity = self.capacity(&limits);
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

    pub(super) fn demand(&self) -> Demand {
        // Only the reference encoder sizes anything by the cluster: without
        // it, no snapshot of every node after every change.
        if self.sizing.is_empty() {
            return Demand::new();
        }
        demand(&self.sizing, &self.sources.view.nodes())
    }

    pub(super) fn current(&self) -> Arc<Pipelines> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The reference encoder's body, whole: a family that did not fit its
    /// limit is withheld from the collection (see [`Capacity`]), and a body
    /// without it would show every node ready and none of their conditions.
    /// Then the pipeline is grown at once and the body gathered again.
    /// Blocking.
    pub(super) fn reference_body(&self) -> Result<Vec<u8>, RenderError> {
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
    pub(super) fn grow(&self) -> bool {
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
}

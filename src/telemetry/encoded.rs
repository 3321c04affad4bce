//! The per-node families' OTLP data points, kept encoded between exports.
//!
//! An OTLP export sends every point of every node each interval, although
//! at idle nothing but the timestamp changed. Collecting ~500,000 points
//! through the SDK and converting them with opentelemetry-proto costs
//! seconds of CPU a minute at 10,000 nodes; copying bytes costs
//! milliseconds. So, as for `/metrics` (see [`super::sections`]), each
//! family is collected per shard from a short-lived provider, and a shard
//! is collected again only when its nodes changed. What is kept is each
//! point encoded without its timestamps (see [`super::wire`]), raw-deflated
//! per (family, shard) so the cache costs about a tenth of the text.

use std::{
    io::{self, Read, Write},
    sync::Arc,
};

use flate2::{Compression, read::DeflateDecoder, write::DeflateEncoder};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest, metrics::v1::metric::Data,
};
use opentelemetry_sdk::Resource;
use prost::encoding::{decode_varint, encode_varint};

use super::{
    collect,
    families::Family,
    instruments::Sources,
    sections::Refresh,
    shards::{self, Memo, SHARDS},
    wire::{self, Writer},
};
use crate::cluster::Node;

/// One (family, shard): its points, each a varint length and an encoded
/// point without timestamps, raw-deflated.
#[derive(Debug, Default)]
struct Shard {
    deflated: Vec<u8>,
    points: usize,
}

/// The encoded points of every per-node family, per shard. A counter's
/// value changes only with its node (transitions are counted before the
/// view stores the event that made them), so it is cached like a gauge;
/// its start time is stamped at export.
pub struct Encoded {
    /// Per family: its encoded descriptor, once a collection has shown it.
    descriptors: Vec<Option<wire::Descriptor>>,
    /// Per family, per shard.
    shards: Vec<Vec<Shard>>,
    collected_from: Memo,
}

impl Encoded {
    /// An empty cache for `families` (the same list every call takes).
    pub fn new(families: &[Family]) -> Encoded {
        Encoded {
            descriptors: vec![None; families.len()],
            shards: families
                .iter()
                .map(|_| (0..SHARDS).map(|_| Shard::default()).collect())
                .collect(),
            collected_from: Memo::default(),
        }
    }

    /// Collects and encodes again the shards whose nodes changed since
    /// the last refresh (all of them the first time). Blocking.
    pub fn refresh(
        &mut self,
        families: &[Family],
        sources: &Sources,
        resource: &Resource,
    ) -> io::Result<Refresh> {
        let mut done = Refresh::default();
        let changed = shards::changed(
            &mut self.collected_from,
            sources.view.nodes(),
            sources.view.transitions(),
        );
        let encoded = shards::map(&changed, |nodes| {
            families
                .iter()
                .map(|family| encode(family, sources, resource, nodes))
                .collect::<io::Result<Vec<_>>>()
        });
        for ((shard, nodes), families) in changed.into_iter().zip(encoded) {
            for (f, (encoded, descriptor)) in families?.into_iter().enumerate() {
                if self.descriptors[f].is_none() {
                    self.descriptors[f] = descriptor;
                }
                done.points += encoded.points;
                self.shards[f][shard] = encoded;
            }
            self.collected_from
                .remember(shard, &nodes, sources.view.transitions());
            done.shards += 1;
        }
        Ok(done)
    }

    /// Points in the cache.
    pub fn points(&self) -> usize {
        self.shards.iter().flatten().map(|s| s.points).sum()
    }

    /// Bytes the cache holds.
    pub fn stored_bytes(&self) -> usize {
        self.shards.iter().flatten().map(|s| s.deflated.len()).sum()
    }

    /// Writes every cached point, family after family. False if the writer's sink stopped taking parts.
    pub fn write<F: FnMut(wire::Part) -> bool>(&self, writer: &mut Writer<'_, F>) -> io::Result<bool> {
        let mut plain = Vec::new();
        for (descriptor, shards) in self.descriptors.iter().zip(&self.shards) {
            let Some(descriptor) = descriptor else { continue };
            writer.begin(descriptor);
            for shard in shards.iter().filter(|s| s.points > 0) {
                plain.clear();
                DeflateDecoder::new(shard.deflated.as_slice()).read_to_end(&mut plain)?;
                let mut rest = plain.as_slice();
                while !rest.is_empty() {
                    let len = decode_varint(&mut rest).map_err(io::Error::other)? as usize;
                    let body = rest
                        .get(..len)
                        .ok_or_else(|| io::Error::other("truncated point in the OTLP cache"))?;
                    rest = &rest[len..];
                    if !writer.point(body) {
                        return Ok(false);
                    }
                }
            }
            writer.end();
        }
        Ok(writer.is_open())
    }
}

/// The points of `family` for `nodes`, collected and encoded, and the
/// family's descriptor if the collection showed it.
fn encode(
    family: &Family,
    sources: &Sources,
    resource: &Resource,
    nodes: &[Arc<Node>],
) -> io::Result<(Shard, Option<wire::Descriptor>)> {
    let Some(rm) = collect::family(family, sources, resource, nodes) else {
        return Ok((Shard::default(), None));
    };
    let request = ExportMetricsServiceRequest::from(&rm);
    drop(rm);
    let mut out = DeflateEncoder::new(Vec::new(), Compression::default());
    let mut points = 0;
    let mut record = Vec::new();
    let mut descriptor = None;
    for metric in request
        .resource_metrics
        .into_iter()
        .flat_map(|rm| rm.scope_metrics)
        .flat_map(|sm| sm.metrics)
    {
        if descriptor.is_none() {
            descriptor = wire::Descriptor::of(&metric);
        }
        let points_of_metric = match metric.data {
            Some(Data::Gauge(g)) => g.data_points,
            Some(Data::Sum(s)) => s.data_points,
            // A family is one gauge or counter; anything else would be a bug in `families`.
            _ => {
                tracing::warn!(metric = %metric.name, "neither a gauge nor a sum; left out of OTLP exports");
                continue;
            }
        };
        for mut point in points_of_metric {
            let body = wire::point_body(&mut point);
            record.clear();
            encode_varint(body.len() as u64, &mut record);
            out.write_all(&record)?;
            out.write_all(&body)?;
            points += 1;
        }
    }
    let mut deflated = out.finish()?;
    deflated.shrink_to_fit();
    Ok((Shard { deflated, points }, descriptor))
}

//! The OTLP cache: per (family, shard), the points encoded without
//! timestamps and raw-deflated, written by the pass and read at every export
//! cycle into requests (with timestamps) or into one resource per node.
//!
//! Each family's shards are deflated against a preset dictionary: a few
//! points of the first of its shards deflated (whichever a worker reaches
//! first), kept until every shard is written again (a reshard). A shard
//! holds about eight nodes, too little for deflate to learn the attribute
//! keys, condition types and name prefixes that every shard repeats; the
//! dictionary holds them once. The cache is 25–32% smaller, compression a
//! few percent slower, inflation no slower (docs/benchmarks.md). A poor
//! dictionary (a family whose first points were one odd node's) costs only
//! compression, never correctness: every shard of an epoch uses the same
//! one. Only this process reads the cache, so the dictionary need not be
//! standard: the `/metrics` segments, which a scraper's gzip inflates, have none.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, OnceLock},
};

use flate2::{Decompress, FlushCompress, FlushDecompress, Status};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{NumberDataPoint, ResourceMetrics, ScopeMetrics},
    resource::v1::Resource as ProtoResource,
};
use prost::Message;
use prost::encoding::decode_varint;

use crate::telemetry::{otlp::wire, prometheus::body};

/// One (family, shard) of the OTLP cache: its points, each a varint length
/// and an encoded point without timestamps, raw-deflated.
#[derive(Debug, Default)]
pub struct OtlpShard {
    deflated: Vec<u8>,
    pub(super) points: usize,
    /// A digest of the plain points ([`body::digest`]).
    pub(super) digest: u64,
}

/// The OTLP cache as of one pass: cheap to take, read without holding the pass.
pub struct OtlpSnapshot {
    pub(super) descriptors: Vec<wire::Descriptor>,
    /// Per family: the dictionary its shards were deflated against (empty if none yet).
    pub(super) dictionaries: Vec<Arc<[u8]>>,
    pub(super) shards: Vec<Vec<Arc<OtlpShard>>>,
    /// The cluster-wide readings of that pass.
    pub cluster: Option<ExportMetricsServiceRequest>,
}

impl OtlpSnapshot {
    /// Points in the cache.
    pub fn points(&self) -> usize {
        self.shards.iter().flatten().map(|s| s.points).sum()
    }

    /// Every cached point (family index, encoded point), in no useful order: for tests.
    #[cfg(test)]
    pub fn plain_points(&self) -> Vec<(usize, Vec<u8>)> {
        let mut all = Vec::new();
        let mut plain = Vec::new();
        for (f, shards) in self.shards.iter().enumerate() {
            for shard in shards.iter().filter(|s| s.points > 0) {
                shard
                    .each_point(&self.dictionaries[f], &mut plain, |p| {
                        all.push((f, p.to_vec()));
                        Ok(true)
                    })
                    .expect("inflates");
            }
        }
        all
    }

    /// Bytes the cache holds.
    pub fn stored_bytes(&self) -> usize {
        self.shards.iter().flatten().map(|s| s.deflated.len()).sum()
    }

    /// Every cached point under a resource of its node's own: `base` plus
    /// `k8s.node.name` and `k8s.node.uid` (taken off the points, where they
    /// are `node_key` and `uid_key`), as the `k8s.node` entity and the
    /// Collector's k8sclusterreceiver put them. Points without a node stay
    /// under `base`. Timestamps are `now`, and `start` for sums.
    pub fn per_node(
        &self,
        base: &ProtoResource,
        scope: &InstrumentationScope,
        (node_key, uid_key): (&str, &str),
        (now, start): (u64, u64),
    ) -> io::Result<ExportMetricsServiceRequest> {
        // node → (uid, family index → points), nodes in name order.
        type Points = BTreeMap<usize, Vec<NumberDataPoint>>;
        let mut nodes: BTreeMap<String, (Option<AnyValue>, Points)> = BTreeMap::new();
        let mut plain = Vec::new();
        for (f, (descriptor, shards)) in self.descriptors.iter().zip(&self.shards).enumerate() {
            for shard in shards.iter().filter(|s| s.points > 0) {
                shard.each_point(&self.dictionaries[f], &mut plain, |body| {
                    let mut point = NumberDataPoint::decode(body).map_err(io::Error::other)?;
                    point.time_unix_nano = now;
                    if descriptor.is_sum() {
                        point.start_time_unix_nano = start;
                    }
                    let take = |point: &mut NumberDataPoint, key: &str| {
                        let at = point.attributes.iter().position(|kv| kv.key == key)?;
                        point.attributes.remove(at).value
                    };
                    let name = match take(&mut point, node_key).and_then(|v| v.value) {
                        Some(any_value::Value::StringValue(name)) => name,
                        _ => String::new(),
                    };
                    let uid = take(&mut point, uid_key);
                    let entry = nodes.entry(name).or_default();
                    if entry.0.is_none() {
                        entry.0 = uid;
                    }
                    entry.1.entry(f).or_default().push(point);
                    Ok(true)
                })?;
            }
        }
        let resource_metrics = nodes
            .into_iter()
            .map(|(name, (uid, families))| {
                let mut resource = base.clone();
                if !name.is_empty() {
                    resource.attributes.push(KeyValue {
                        key: "k8s.node.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(name)),
                        }),
                        ..Default::default()
                    });
                }
                if let Some(uid) = uid {
                    resource.attributes.push(KeyValue {
                        key: "k8s.node.uid".into(),
                        value: Some(uid),
                        ..Default::default()
                    });
                }
                ResourceMetrics {
                    resource: Some(resource),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(scope.clone()),
                        metrics: families
                            .into_iter()
                            .map(|(f, points)| self.descriptors[f].metric_with(points))
                            .collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }
            })
            .collect();
        Ok(ExportMetricsServiceRequest { resource_metrics })
    }

    /// Writes every cached point, family after family. False if the writer's sink stopped taking parts.
    pub fn write<F: FnMut(wire::Part) -> bool>(&self, writer: &mut wire::Writer<'_, F>) -> io::Result<bool> {
        let mut plain = Vec::new();
        for ((descriptor, shards), dictionary) in
            self.descriptors.iter().zip(&self.shards).zip(&self.dictionaries)
        {
            if shards.iter().all(|s| s.points == 0) {
                continue;
            }
            writer.begin(descriptor);
            for shard in shards.iter().filter(|s| s.points > 0) {
                if !shard.each_point(dictionary, &mut plain, |body| Ok(writer.point(body)))? {
                    return Ok(false);
                }
            }
            writer.end();
        }
        Ok(writer.is_open())
    }
}

impl OtlpShard {
    /// Calls `f` with each cached point (encoded without timestamps), inflated
    /// into `plain` against its family's `dictionary`, until it returns false; false then.
    fn each_point(
        &self,
        dictionary: &[u8],
        plain: &mut Vec<u8>,
        mut f: impl FnMut(&[u8]) -> io::Result<bool>,
    ) -> io::Result<bool> {
        inflate(&self.deflated, dictionary, plain)?;
        let mut rest = plain.as_slice();
        while !rest.is_empty() {
            let len = decode_varint(&mut rest).map_err(io::Error::other)? as usize;
            let body = rest
                .get(..len)
                .ok_or_else(|| io::Error::other("truncated point in the OTLP cache"))?;
            rest = &rest[len..];
            if !f(body)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

thread_local! {
    /// One inflater per thread, reset for each shard: an export cycle reads
    /// every (family, shard), and a new inflater allocates its 32 KB window.
    static INFLATE: std::cell::RefCell<Decompress> = std::cell::RefCell::new(Decompress::new(false));
}

/// Inflates a whole raw deflate stream, deflated against `dictionary`, into `out` (cleared first).
fn inflate(deflated: &[u8], dictionary: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    INFLATE.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        if !dictionary.is_empty() {
            d.set_dictionary(dictionary).map_err(io::Error::other)?;
        }
        out.clear();
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(out.capacity().max(16 * 1024));
            }
            let consumed = d.total_in() as usize;
            let status = d
                .decompress_vec(&deflated[consumed..], out, FlushDecompress::Finish)
                .map_err(io::Error::other)?;
            if status == Status::StreamEnd {
                return Ok(());
            }
            if d.total_in() as usize == deflated.len() && out.len() < out.capacity() {
                return Err(io::Error::other("a truncated shard in the OTLP cache"));
            }
        }
    })
}

/// A family's dictionary, chosen by the first of its shards deflated.
pub(super) type Dictionary = OnceLock<Arc<[u8]>>;

/// A family's OTLP points for a shard, deflated against the family's
/// `dictionary` (which the first shard with points sets).
pub(super) fn deflate(points: &[u8], count: usize, dictionary: &Dictionary) -> io::Result<OtlpShard> {
    if count == 0 {
        return Ok(OtlpShard {
            digest: body::digest(points),
            ..OtlpShard::default()
        });
    }
    let dictionary = dictionary.get_or_init(|| sample(points).into());
    // Level 1, as for the text: a full pass (a zone outage dirties every shard) is mostly compression.
    Ok(OtlpShard {
        deflated: body::deflate_with(points, FlushCompress::Finish, dictionary)?,
        points: count,
        digest: body::digest(points),
    })
}

/// The whole points at the start of `points` that make a quarter of it
/// (about two of a shard's eight nodes), or at least [`DICTIONARY_LEAST`]
/// bytes, cut at [`DICTIONARY_MOST`] (a dictionary is only bytes, and may
/// end inside a point): most of the gain of a whole shard as the
/// dictionary, for less of the cost of presetting it at every shard.
fn sample(points: &[u8]) -> &[u8] {
    let want = (points.len() / 4).clamp(DICTIONARY_LEAST, DICTIONARY_MOST);
    let mut rest = points;
    while points.len() - rest.len() < want {
        let Ok(len) = decode_varint(&mut rest) else {
            break;
        };
        let Some(next) = rest.get(len as usize..) else {
            break;
        };
        rest = next;
    }
    &points[..(points.len() - rest.len()).min(DICTIONARY_MOST)]
}

/// The smallest dictionary sampled, in bytes, when a shard has that much.
const DICTIONARY_LEAST: usize = 256;
/// The largest dictionary sampled, in bytes.
const DICTIONARY_MOST: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::encoding::encode_varint;

    /// A shard's worth of points as the pass writes them: a varint length, then the point.
    fn shard(first: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut plain = Vec::new();
        let mut bodies = Vec::new();
        for i in first..first + 8 {
            for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
                let body = format!(
                    "k8s.node.name=gke-prod-default-pool-5f3c-{i:05} k8s.node.condition.type={type_} \
                     k8s.node.condition.status=true topology.kubernetes.io/zone=us-central1-a"
                )
                .into_bytes();
                encode_varint(body.len() as u64, &mut plain);
                plain.extend_from_slice(&body);
                bodies.push(body);
            }
        }
        (plain, bodies)
    }

    fn inflated(shard: &OtlpShard, dictionary: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        shard.each_point(dictionary, &mut Vec::new(), |p| {
            out.push(p.to_vec());
            Ok(true)
        })?;
        Ok(out)
    }

    #[test]
    fn the_sample_is_whole_points_from_the_start() {
        let (plain, bodies) = shard(0);
        let sample = sample(&plain);
        assert!(sample.len() >= plain.len() / 4 && sample.len() <= DICTIONARY_MOST);
        let mut rest = sample;
        let mut n = 0;
        while !rest.is_empty() {
            let len = decode_varint(&mut rest).expect("a whole length") as usize;
            assert_eq!(&rest[..len], bodies[n].as_slice());
            rest = &rest[len..];
            n += 1;
        }
        assert!(n > 0);
        assert_eq!(super::sample(&[]), &[] as &[u8]);
        // One point larger than the cap is cut at it.
        let mut big = Vec::new();
        encode_varint(3 * DICTIONARY_MOST as u64, &mut big);
        big.resize(big.len() + 3 * DICTIONARY_MOST, b'x');
        assert_eq!(super::sample(&big).len(), DICTIONARY_MOST);
    }

    #[test]
    fn shards_after_the_first_are_smaller_and_read_back_only_with_the_dictionary() {
        let dictionary = Dictionary::new();
        let (first, _) = shard(0);
        deflate(&first, 32, &dictionary).expect("deflates");
        let (plain, bodies) = shard(100);
        let with = deflate(&plain, 32, &dictionary).expect("deflates");
        let without = body::deflate(&plain, FlushCompress::Finish).expect("deflates");
        assert!(
            with.deflated.len() * 10 < without.len() * 9,
            "{} bytes with the dictionary, {} without",
            with.deflated.len(),
            without.len()
        );
        let dictionary = dictionary.get().expect("set by the first shard");
        assert_eq!(inflated(&with, dictionary).expect("inflates"), bodies);
        assert!(
            inflated(&with, &[]).map_or(true, |got| got != bodies),
            "read without its dictionary, a shard must not pass for its points"
        );
    }
}

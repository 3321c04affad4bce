//! The one pass: readings of the nodes that changed, computed once and
//! written for both outputs.
//!
//! Nodes are split into shards by a hash of their name, as many as keep a
//! shard at about [`shards::NODES_PER_SHARD`] nodes. Each
//! (family, shard) is kept written two ways: a segment of `/metrics` text,
//! raw-deflated ([`Segment`]), and its OTLP points encoded without
//! timestamps, raw-deflated too ([`OtlpShard`]). A pass takes the names the
//! watch marked as changed ([`crate::cluster::Changes`]), maps each to its
//! shard, and writes again only those shards: for each node once its common
//! attributes, then every family's points, each point into the text and the
//! protobuf of whichever outputs are on. Nothing else is touched: no
//! re-partition of the cluster, no second collection for the other output.
//!
//! Points are written straight from the readings, not through a short-lived
//! SDK provider per shard: that cost ~50× the readings themselves. The
//! writers reproduce what the SDK and its exporters make of the same points
//! (attributes sorted by key and deduplicated, non-finite values dropped,
//! integers as integers), and `reference_tests` plus the OTLP cache test
//! hold them equal to opentelemetry-prometheus and to opentelemetry-proto's
//! conversion of an SDK collection.

use std::{collections::BTreeSet, io, sync::Arc};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest, metrics::v1::number_data_point,
};
use opentelemetry_sdk::Resource;
use prost::encoding::encode_varint;

use super::{
    collect,
    families::{self, Ctx, Family, Kind},
    instruments::Sources,
    otlp_cache::{self, OtlpShard},
    shards::{self, Members, shard_of},
};

use crate::cluster::Node;
use crate::readings::{ClusterSummary, HeartbeatSummary};
use crate::telemetry::{
    otlp::wire,
    prometheus::{
        body::{self, FamilyText, Section, Segment},
        text as exposition,
    },
};
pub use otlp_cache::OtlpSnapshot;

/// Which outputs a pass writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outputs {
    /// The node section of `/metrics` (the streaming encoder).
    pub text: bool,
    /// The OTLP cache.
    pub otlp: bool,
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Done {
    /// Shards written again.
    pub shards: usize,
    /// Points written again (per output).
    pub points: usize,
}

/// The text side: every family's header, and its samples per shard.
struct Text {
    /// Per family: its Prometheus name.
    names: Vec<String>,
    /// Per family: its HELP/TYPE segment.
    headers: Vec<Segment>,
    /// Per family: header and samples per shard, in chunks shared with the
    /// sections scrapes hold (a pass copies a chunk a scrape still holds).
    families: Vec<FamilyText>,
    /// The cluster-wide readings, written at every pass (a handful of points).
    cluster: Segment,
}

/// The OTLP side: every family's descriptor, and its points per shard.
struct Otlp {
    descriptors: Vec<wire::Descriptor>,
    /// Per family: the dictionary its shards are deflated against, chosen
    /// again whenever every shard is (a reshard).
    dictionaries: Arc<[otlp_cache::Dictionary]>,
    shards: Vec<Vec<Arc<OtlpShard>>>,
    /// The cluster-wide readings of the last pass, converted by opentelemetry-proto.
    cluster: Option<ExportMetricsServiceRequest>,
}

/// Everything the pass keeps between passes.
pub struct Pass {
    /// Per shard: its nodes by name, as of the last pass.
    members: Vec<Members>,
    /// Nodes in `members`.
    nodes: usize,
    /// `members` counted by Ready status (and by heartbeat, from `heartbeats`).
    summary: ClusterSummary,
    /// Per shard: its members counted by heartbeat as of the last pass that wrote it.
    heartbeats: Vec<HeartbeatSummary>,
    text: Option<Text>,
    otlp: Option<Otlp>,
    /// False until a pass has written every shard, and after [`Pass::invalidate`].
    primed: bool,
    /// Per family, per shard: its points (series) as of the last pass.
    series: Vec<Vec<usize>>,
    /// Per family: the sum of its `series`.
    series_total: Vec<usize>,
    /// The cluster-wide readings of the last pass: instrument name and points.
    cluster_series: Vec<(String, usize)>,
    /// The cluster-wide readings' provider, built at the first pass.
    cluster_readings: Option<collect::ClusterReadings>,
}

impl Pass {
    /// An empty pass for `families` (the same list every call takes), writing `outputs`.
    pub fn new(families: &[Family], outputs: Outputs) -> io::Result<Pass> {
        let text = if outputs.text {
            let names: Vec<String> = families
                .iter()
                .map(|f| exposition::prometheus_name(f.name, f.unit, f.kind == Kind::Counter))
                .collect();
            let headers = families
                .iter()
                .zip(&names)
                .map(|(f, name)| {
                    Segment::render(|out| {
                        exposition::write_header(out, name, f.help, f.kind == Kind::Counter)?;
                        Ok(0)
                    })
                })
                .collect::<io::Result<_>>()?;
            Some(Text {
                names,
                headers,
                families: Vec::new(),
                cluster: Segment::empty(),
            })
        } else {
            None
        };
        let otlp = outputs.otlp.then(|| Otlp {
            descriptors: families
                .iter()
                .map(|f| wire::descriptor(f.name, f.help, f.unit, f.kind == Kind::Counter))
                .collect(),
            dictionaries: Arc::default(),
            shards: Vec::new(),
            cluster: None,
        });
        let mut pass = Pass {
            members: Vec::new(),
            nodes: 0,
            summary: ClusterSummary::default(),
            heartbeats: Vec::new(),
            text,
            otlp,
            primed: false,
            series: Vec::new(),
            series_total: vec![0; families.len()],
            cluster_series: Vec::new(),
            cluster_readings: None,
        };
        pass.reshard(shards::MIN_SHARDS);
        Ok(pass)
    }

    /// The shard count.
    #[cfg(test)]
    pub fn shard_count(&self) -> usize {
        self.members.len()
    }

    /// Moves every node held to `count` shards, all of them empty of
    /// output: the caller writes every shard next.
    fn reshard(&mut self, count: usize) {
        let held: Vec<_> = self.members.iter_mut().flat_map(Members::take).collect();
        self.members = vec![Members::default(); count];
        // Every shard is written next, and counted again with it.
        self.heartbeats = vec![HeartbeatSummary::default(); count];
        self.summary.heartbeats = HeartbeatSummary::default();
        for node in held {
            self.members[shard_of(shards::name(&node), count)].insert(node);
        }
        let families = self.series_total.len();
        self.series = vec![vec![0; count]; families];
        self.series_total = vec![0; families];
        if let Some(text) = self.text.as_mut() {
            text.families = text
                .headers
                .iter()
                .map(|h| FamilyText::new(h.clone(), count))
                .collect();
        }
        if let Some(o) = self.otlp.as_mut() {
            o.shards = vec![vec![Arc::default(); count]; families];
            o.dictionaries = (0..families).map(|_| otlp_cache::Dictionary::new()).collect();
        }
    }

    /// After a relist, holds the stored copy of each node instead of its own:
    /// the relist replaced every object, and one kept from before it is a
    /// second copy of a node whose content did not change. Changed nodes are
    /// taken again by the pass anyway.
    fn adopt_stored(&mut self, view: &crate::cluster::View) {
        for node in view.nodes() {
            let Some(name) = node.metadata.name.as_deref() else {
                continue;
            };
            let shard = shard_of(name, self.members.len());
            if let Some(kept) = self.members[shard].get_mut(name)
                && !Arc::ptr_eq(kept, &node)
            {
                // A node whose content changed in the relist is taken here
                // too, before the pass reaches its name: counted now, so
                // that the pass, finding it held, counts no difference.
                self.summary.remove(kept);
                self.summary.add(&node);
                *kept = node;
            }
        }
    }

    /// The Ready counts the pass keeps: for tests.
    #[cfg(test)]
    pub fn summary(&self) -> ClusterSummary {
        self.summary
    }

    /// The nodes the pass holds: for tests of what it keeps.
    #[cfg(test)]
    pub fn held(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.members.iter().flat_map(Members::iter)
    }

    /// Forgets what was written: the next pass writes and compresses every
    /// shard again (after a failed pass, whatever it half wrote is redone).
    pub fn invalidate(&mut self) {
        self.primed = false;
        self.reshard(self.members.len());
    }

    /// Writes again the shards whose nodes changed since the last pass (all
    /// of them the first time), and the cluster-wide readings. Blocking.
    pub fn run(&mut self, families: &[Family], sources: &Sources, resource: &Resource) -> io::Result<Done> {
        let view = &sources.view;
        // Taken before reading the store: a change that lands after this is marked again.
        let changed = view.changes().take();
        if changed.relisted && self.primed {
            self.adopt_stored(view);
        }
        let mut dirty: Vec<usize> = if self.primed {
            let mut dirty = BTreeSet::new();
            let count = self.members.len();
            for name in changed.names {
                let shard = shard_of(&name, count);
                let members = &mut self.members[shard];
                let before = members.len();
                let old = match view.node(&name) {
                    Some(node) => {
                        self.summary.add(&node);
                        members.insert(node)
                    }
                    None => members.remove(&name),
                };
                if let Some(old) = old {
                    self.summary.remove(&old);
                }
                self.nodes = self.nodes + members.len() - before;
                dirty.insert(shard);
            }
            dirty.into_iter().collect()
        } else {
            self.members.iter_mut().for_each(Members::clear);
            self.nodes = 0;
            self.summary = ClusterSummary::default();
            self.heartbeats
                .iter_mut()
                .for_each(|h| *h = HeartbeatSummary::default());
            let count = self.members.len();
            for node in view.nodes() {
                if let Some(name) = node.metadata.name.as_deref() {
                    self.summary.add(&node);
                    self.members[shard_of(name, count)].insert(node);
                    self.nodes += 1;
                }
            }
            (0..count).collect()
        };
        // The cluster grew (or shrank) past what the shard count is for:
        // every node moves, once for each doubling.
        if let Some(count) = shards::resize(self.nodes, self.members.len()) {
            self.reshard(count);
            dirty = (0..count).collect();
        }
        let ctx = Ctx {
            settings: &sources.settings,
            transitions: view.transitions(),
            heartbeats: view.heartbeats(),
        };
        let otlp = self.otlp.as_ref().map(|o| o.dictionaries.clone());
        let mut done = Done::default();
        // A batch at a time: what a shard's rendering returns (its new
        // segments and points, ~140 bytes a family before their bytes) is
        // held until the batch is stored, and for every shard at once it
        // was ~35 MB more at the peak at 100,000 nodes.
        for batch in dirty.chunks(PASS_BATCH) {
            // What each dirty shard holds now, family by family: output that
            // comes out the same is not compressed again.
            // A heartbeat that moves after this is marked changed again, and counted at the next pass.
            for &shard in batch {
                let counted =
                    HeartbeatSummary::of(view.heartbeats(), self.members[shard].iter().map(|n| &**n));
                let old = std::mem::replace(&mut self.heartbeats[shard], counted);
                self.summary.heartbeats.replace(old, counted);
            }
            let work: Vec<(usize, ShardWork)> = batch
                .iter()
                .map(|&shard| {
                    let old = (0..families.len())
                        .map(|f| Digests {
                            text: self.text.as_ref().map(|t| t.families[f].shard(shard).digest),
                            otlp: self.otlp.as_ref().map(|o| o.shards[f][shard].digest),
                        })
                        .collect();
                    let nodes = self.members[shard].iter().cloned().collect();
                    (shard, ShardWork { nodes, old })
                })
                .collect();
            let written = {
                let names = self.text.as_ref().map(|t| t.names.as_slice());
                shards::map(&work, |w| {
                    write_shard(families, &ctx, &w.nodes, &w.old, names, otlp.as_deref())
                })
            };
            for ((shard, _), families) in work.iter().zip(written) {
                for (f, (points, segment, encoded)) in families?.into_iter().enumerate() {
                    done.points += points;
                    self.series_total[f] = self.series_total[f] + points - self.series[f][*shard];
                    self.series[f][*shard] = points;
                    if let (Some(text), Some(segment)) = (self.text.as_mut(), segment) {
                        text.families[f].set(*shard, segment);
                    }
                    if let (Some(o), Some(encoded)) = (self.otlp.as_mut(), encoded) {
                        o.shards[f][*shard] = Arc::new(encoded);
                    }
                }
                done.shards += 1;
            }
        }
        self.primed = true;
        // Once per pass, for both outputs.
        let cluster = self
            .cluster_readings
            .get_or_insert_with(|| collect::ClusterReadings::new(sources, resource))
            .collect(self.summary);
        if let Some(text) = self.text.as_mut() {
            text.cluster = match &cluster {
                Some(rm) => Segment::render(|out| {
                    exposition::write_metrics(rm, out)?;
                    Ok(collect::point_count(rm))
                })?,
                None => Segment::empty(),
            };
        }
        if let Some(o) = self.otlp.as_mut() {
            o.cluster = cluster.as_ref().map(ExportMetricsServiceRequest::from);
        }
        self.cluster_series = cluster
            .as_ref()
            .map(collect::points_per_metric)
            .unwrap_or_default();
        Ok(done)
    }

    /// The series each family serves as of the last pass (per-node families
    /// in `families`' order, by instrument name), then the cluster-wide
    /// readings: what `/metrics` carries besides self-telemetry, and what an
    /// OTLP export carries.
    pub fn series<'a>(&'a self, families: &'a [Family]) -> impl Iterator<Item = (&'a str, usize)> + 'a {
        families
            .iter()
            .zip(&self.series_total)
            .map(|(f, total)| (f.name, *total))
            .chain(self.cluster_series.iter().map(|(n, c)| (n.as_str(), *c)))
    }

    /// The node section of `/metrics` as of the last pass: each family's
    /// header (if it has any sample) and samples, then the cluster-wide readings.
    pub fn section(&self) -> Section {
        let Some(text) = &self.text else {
            return Section::empty();
        };
        Section::assemble(
            text.families.iter().map(FamilyText::snapshot).collect(),
            Some(text.cluster.clone()),
        )
    }

    /// The OTLP cache as of the last pass.
    pub fn otlp(&self) -> Option<OtlpSnapshot> {
        self.otlp.as_ref().map(|o| OtlpSnapshot {
            descriptors: o.descriptors.clone(),
            dictionaries: o
                .dictionaries
                .iter()
                .map(|d| d.get().cloned().unwrap_or_default())
                .collect(),
            shards: o.shards.clone(),
            cluster: o.cluster.clone(),
        })
    }
}

/// Shards rendered and stored together by a pass (see [`Pass::run`]).
const PASS_BATCH: usize = 1024;

/// Per family: the shard's points, its text segment and OTLP points, for
/// whichever outputs are on and came out different from before.
type Written = Vec<(usize, Option<Segment>, Option<OtlpShard>)>;

/// A dirty shard's nodes, and per family the digests of what it holds.
struct ShardWork {
    nodes: Vec<Arc<Node>>,
    old: Vec<Digests>,
}

/// The digests of what a (family, shard) holds in each output on.
struct Digests {
    text: Option<u64>,
    otlp: Option<u64>,
}

/// One family's output for a shard, in plain bytes until it is compressed.
#[derive(Default)]
struct Plain {
    /// Text samples.
    text: Vec<u8>,
    /// OTLP points, each a varint length and the point encoded without timestamps.
    otlp: Vec<u8>,
    points: usize,
}

/// The readings of `nodes` (a shard, sorted by name), written for the outputs
/// on: `names` (the families' Prometheus names) for text, `otlp` for the cache.
/// Each point is written both ways as soon as a family emits it, into plain
/// buffers that are compressed once at the end, family by family.
fn write_shard(
    families: &[Family],
    ctx: &Ctx<'_>,
    nodes: &[Arc<Node>],
    old: &[Digests],
    names: Option<&[String]>,
    otlp: Option<&[otlp_cache::Dictionary]>,
) -> io::Result<Written> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        render_shard(families, ctx, nodes, names, otlp.is_some(), &mut scratch)?;
        compress_changed(&scratch.plain, old, names.is_some(), otlp)
    })
}

/// What rendering a shard writes into before it is compressed, kept per
/// thread: a change renders one small shard, and buffers grown from empty
/// for each of its ~80 families were a tenth of its cost.
#[derive(Default)]
struct Scratch {
    plain: Vec<Plain>,
    body: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Writes the points of `nodes` into `scratch.plain`, one entry per family.
fn render_shard(
    families: &[Family],
    ctx: &Ctx<'_>,
    nodes: &[Arc<Node>],
    names: Option<&[String]>,
    otlp: bool,
    scratch: &mut Scratch,
) -> io::Result<()> {
    let Scratch { plain, body } = scratch;
    plain.resize_with(families.len(), Plain::default);
    for p in plain.iter_mut() {
        p.text.clear();
        p.otlp.clear();
        p.points = 0;
    }
    // Not kept in the scratch: it caches the label names it has seen, which
    // a glob in --node-labels would grow without bound on a long-lived thread.
    let mut samples = exposition::SampleWriter::default();
    let mut failed: Option<io::Error> = None;
    for node in nodes {
        // The attributes every point of the node starts with: built once, shared by every family.
        let Some(base) = ctx.node_attrs(node) else {
            continue;
        };
        for (f, (family, out)) in families.iter().zip(plain.iter_mut()).enumerate() {
            let integer = family.kind != Kind::FloatGauge;
            (family.points)(ctx, node, &base, &mut |v, mut attrs| {
                // What the SDK does to a measurement before any exporter sees it.
                if !v.is_finite() {
                    return;
                }
                attrs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
                attrs.dedup_by(|a, b| a.key == b.key);
                out.points += 1;
                if otlp {
                    // As opentelemetry-proto converts them: an integer instrument's value as `as_int`.
                    let value = if integer {
                        number_data_point::Value::AsInt(i64::try_from(v as u64).unwrap_or_default())
                    } else {
                        number_data_point::Value::AsDouble(v)
                    };
                    wire::encode_point(&attrs, value, body);
                    encode_varint(body.len() as u64, &mut out.otlp);
                    out.otlp.extend_from_slice(body);
                }
                if let Some(names) = names {
                    families::strip_for_metrics(family, ctx.settings.naming, &mut attrs);
                    // Integer instruments hold what `v as u64` made of the reading.
                    let v = if integer { (v as u64) as f64 } else { v };
                    if let Err(e) = samples.write(&mut out.text, &names[f], &attrs, v) {
                        failed.get_or_insert(e);
                    }
                }
            });
        }
    }
    failed.map_or(Ok(()), Err)
}

/// A change re-renders its whole shard, and most families come out the
/// same: only those that differ from `old` are compressed again (the OTLP
/// points against their family's dictionary in `otlp`).
fn compress_changed(
    plain: &[Plain],
    old: &[Digests],
    text: bool,
    otlp: Option<&[otlp_cache::Dictionary]>,
) -> io::Result<Written> {
    plain
        .iter()
        .zip(old)
        .enumerate()
        .map(|(f, (p, old))| {
            let text = if text && old.text != Some(body::digest(&p.text)) {
                Some(Segment::of_plain(&p.text, p.points)?)
            } else {
                None
            };
            let encoded = match otlp {
                Some(dictionaries) if old.otlp != Some(body::digest(&p.otlp)) => {
                    Some(otlp_cache::deflate(&p.otlp, p.points, &dictionaries[f])?)
                }
                _ => None,
            };
            Ok((p.points, text, encoded))
        })
        .collect()
}

//! Renders the node section of `/metrics` in shards, and after a change
//! only the shards whose nodes changed.
//!
//! A Ready flip touches one node, but rendering every node again costs
//! seconds at 10,000 nodes. So nodes are split by a hash of their name
//! into [`SHARDS`] shards, each family's samples are rendered per shard
//! into a segment of their own (see [`super::scrape`]), and a shard is
//! rendered again only when the names and resourceVersions of its nodes
//! changed. The text is the same as rendering everything at once: one
//! HELP/TYPE per family, then that family's samples shard after shard.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    io,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Node;
use opentelemetry_sdk::Resource;

use super::{
    collect, exposition,
    families::{Family, Kind},
    instruments::{self, Sources},
    scrape::{Section, Segment},
};

/// Shards of the node set. A change re-renders 1/64 of the nodes; at
/// 50,000 nodes a shard is ~800 nodes, a few tens of milliseconds.
pub const SHARDS: usize = 64;

/// What one refresh did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refresh {
    /// Shards rendered again.
    pub shards: usize,
    /// Points rendered again.
    pub points: usize,
}

/// The rendered segments of every (family, shard), and what they were rendered from.
pub struct Sections {
    /// Per family: its HELP/TYPE segment.
    headers: Vec<Segment>,
    /// Per family, per shard.
    samples: Vec<Vec<Segment>>,
    /// Per shard: a fingerprint of its nodes' names and resourceVersions; `None` before the first render.
    fingerprints: Vec<Option<u64>>,
    /// The cluster-wide readings, rendered every time (a handful of points).
    cluster: Segment,
}

fn shard_of(name: &str) -> usize {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

/// An order-independent fingerprint contribution of one node.
fn node_print(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.name.hash(&mut h);
    node.metadata.resource_version.hash(&mut h);
    h.finish()
}

impl Sections {
    /// Empty sections for `families`; headers are rendered here, once.
    pub fn new(families: &[Family]) -> io::Result<Sections> {
        let headers = families
            .iter()
            .map(|f| {
                let counter = f.kind == Kind::Counter;
                let name = exposition::prometheus_name(f.name, f.unit, counter);
                Segment::render(|out| {
                    exposition::write_header(out, &name, f.help, counter)?;
                    Ok(0)
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Sections {
            headers,
            samples: families
                .iter()
                .map(|_| (0..SHARDS).map(|_| Segment::empty()).collect())
                .collect(),
            fingerprints: vec![None; SHARDS],
            cluster: Segment::empty(),
        })
    }

    /// Forgets what was rendered: the next refresh renders every shard.
    pub fn invalidate(&mut self) {
        self.fingerprints.fill(None);
    }

    /// Renders the shards whose nodes changed since the last refresh (all
    /// of them the first time) and the cluster-wide readings, and returns
    /// the section as it now reads. Blocking.
    pub fn refresh(
        &mut self,
        families: &[Family],
        sources: &Sources,
        resource: &Resource,
    ) -> io::Result<(Section, Refresh)> {
        let mut shards: Vec<Vec<Arc<Node>>> = vec![Vec::new(); SHARDS];
        let mut prints = vec![0u64; SHARDS];
        for node in sources.view.nodes() {
            let shard = shard_of(node.metadata.name.as_deref().unwrap_or_default());
            prints[shard] = prints[shard].wrapping_add(node_print(&node));
            shards[shard].push(node);
        }
        let mut done = Refresh::default();
        for (shard, nodes) in shards.iter().enumerate() {
            if self.fingerprints[shard] == Some(prints[shard]) {
                continue;
            }
            for (f, family) in families.iter().enumerate() {
                self.samples[f][shard] = render_samples(family, sources, resource, nodes)?;
                done.points += self.samples[f][shard].points;
            }
            self.fingerprints[shard] = Some(prints[shard]);
            done.shards += 1;
        }
        self.cluster = Segment::render(|out| {
            let rm = collect::once(resource, 16, |m| {
                instruments::register_cluster_readings(m, sources)
            });
            match rm {
                Some(rm) => {
                    exposition::write_metrics(&rm, out)?;
                    Ok(collect::point_count(&rm))
                }
                None => Ok(0),
            }
        })?;
        Ok((self.assemble(), done))
    }

    /// The segments in exposition order: each family's header (if it has
    /// any sample) and samples, then the cluster-wide readings.
    fn assemble(&self) -> Section {
        let families = self
            .headers
            .iter()
            .zip(&self.samples)
            .filter(|(_, shards)| shards.iter().any(|s| s.points > 0))
            .map(|(header, shards)| std::iter::once(header).chain(shards.iter()));
        Section::assemble(families.flatten().chain(std::iter::once(&self.cluster)))
    }
}

/// The samples of `family` for `nodes`, from a provider that lives for this collection.
fn render_samples(
    family: &Family,
    sources: &Sources,
    resource: &Resource,
    nodes: &[Arc<Node>],
) -> io::Result<Segment> {
    let points = instruments::points_of(family, sources, nodes);
    if points.is_empty() {
        return Ok(Segment::empty());
    }
    // One more than the points: the SDK counts its overflow set against the limit.
    let limit = points.len() + 1;
    let rm = collect::once(resource, limit, |m| {
        instruments::register_observed(m, family, points)
    });
    Segment::render(|out| match rm {
        Some(rm) => {
            exposition::write_samples(&rm, out)?;
            Ok(collect::point_count(&rm))
        }
        None => Ok(0),
    })
}

//! Renders the node section of `/metrics` in shards, and after a change
//! only the shards whose nodes changed.
//!
//! A Ready flip touches one node, but rendering every node again costs
//! seconds at 10,000 nodes. So nodes are split by a hash of their name
//! into [`SHARDS`] shards, each family's samples are rendered per shard
//! into a segment of their own (see [`super::scrape`]), and a shard is
//! rendered again only when its nodes changed. The text is the same as
//! rendering everything at once: one HELP/TYPE per family, then that
//! family's samples shard after shard.
//!
//! "Changed" is object identity: the reflector stores every applied event
//! as a new `Arc<Node>`, so a shard is unchanged exactly when it holds the
//! same `Arc`s as at its last render. Keeping those `Arc`s until the next
//! render means no address can be reused in between. (A resourceVersion
//! would not do: some API emulators do not bump it.)

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    io,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Node;
use opentelemetry_sdk::{Resource, metrics::data::ResourceMetrics};

use super::{
    collect, exposition,
    families::{Family, Kind},
    instruments::Sources,
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
    /// Per shard: the nodes it was last rendered from, by address; `None` before the first render.
    rendered_from: Vec<Option<Vec<Arc<Node>>>>,
    /// The cluster-wide readings, rendered every time (a handful of points).
    cluster: Segment,
}

fn shard_of(name: &str) -> usize {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

/// True if both hold the same objects (both sorted by address).
fn same_objects(a: &[Arc<Node>], b: &[Arc<Node>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
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
            rendered_from: vec![None; SHARDS],
            cluster: Segment::empty(),
        })
    }

    /// Forgets what was rendered: the next refresh renders every shard.
    pub fn invalidate(&mut self) {
        self.rendered_from.fill(None);
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
        for node in sources.view.nodes() {
            shards[shard_of(node.metadata.name.as_deref().unwrap_or_default())].push(node);
        }
        let mut done = Refresh::default();
        for (shard, mut nodes) in shards.into_iter().enumerate() {
            nodes.sort_unstable_by_key(Arc::as_ptr);
            if self.rendered_from[shard]
                .as_deref()
                .is_some_and(|before| same_objects(before, &nodes))
            {
                continue;
            }
            for (f, family) in families.iter().enumerate() {
                self.samples[f][shard] = render_samples(family, sources, resource, &nodes)?;
                done.points += self.samples[f][shard].points;
            }
            self.rendered_from[shard] = Some(nodes);
            done.shards += 1;
        }
        self.cluster = render(collect::cluster(sources, resource), |rm, out| {
            exposition::write_metrics(rm, out)
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
    render(collect::family(family, sources, resource, nodes), |rm, out| {
        exposition::write_samples(rm, out)
    })
}

/// A segment of what `write` makes of `rm` (empty without a collection).
fn render(
    rm: Option<ResourceMetrics>,
    write: impl FnOnce(&ResourceMetrics, &mut dyn io::Write) -> io::Result<()>,
) -> io::Result<Segment> {
    let Some(rm) = rm else {
        return Ok(Segment::empty());
    };
    Segment::render(|out| {
        write(&rm, out)?;
        Ok(collect::point_count(&rm))
    })
}

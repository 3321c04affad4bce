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
//! What changed is kept by [`super::shards`].

use std::{io, sync::Arc};

use opentelemetry_sdk::{Resource, metrics::data::ResourceMetrics};

use super::{
    collect, exposition,
    families::{Family, Kind},
    instruments::Sources,
    scrape::{Section, Segment},
    shards::{self, Memo, SHARDS},
};
use crate::cluster::Node;

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
    /// Per shard: the nodes it was last rendered from.
    rendered_from: Memo,
    /// The cluster-wide readings, rendered every time (a handful of points).
    cluster: Segment,
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
            rendered_from: Memo::default(),
            cluster: Segment::empty(),
        })
    }

    /// Forgets what was rendered: the next refresh renders every shard.
    pub fn invalidate(&mut self) {
        self.rendered_from.forget();
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
        let mut done = Refresh::default();
        let changed = shards::changed(
            &mut self.rendered_from,
            sources.view.nodes(),
            sources.view.transitions(),
        );
        let rendered = shards::map(&changed, |nodes| {
            families
                .iter()
                .map(|family| render_samples(family, sources, resource, nodes))
                .collect::<io::Result<Vec<Segment>>>()
        });
        for ((shard, nodes), segments) in changed.into_iter().zip(rendered) {
            for (f, segment) in segments?.into_iter().enumerate() {
                done.points += segment.points;
                self.samples[f][shard] = segment;
            }
            self.rendered_from
                .remember(shard, &nodes, sources.view.transitions());
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

//! The node section of `/metrics`: every family's header and its segments
//! shard by shard, kept so that replacing a shard's segment costs the same at
//! any cluster size, and taken whole by a scrape for the price of a few
//! references.

use std::sync::Arc;

use bytes::Bytes;
use crc32fast::Hasher as Crc;

use super::body::Segment;

/// CRC-32, plain length and points of a run of segments: 16 bytes, since a
/// family keeps two per shard rounded up to a power of two (its tree): at
/// 130,000 nodes (16,384 shards) over 20 families, 21 MB with a
/// `crc32fast::Hasher` (16 bytes) and two `usize`s, 10.5 MB now.
#[derive(Clone, Copy, Default)]
struct Sum {
    crc: u32,
    points: u32,
    len: u64,
}

impl Sum {
    fn of(s: &Segment) -> Sum {
        Sum {
            crc: s.crc.clone().finalize(),
            len: s.len,
            points: u32::try_from(s.points).unwrap_or(u32::MAX),
        }
    }

    /// This run followed by `next`.
    fn then(&self, next: &Sum) -> Sum {
        let mut crc = self.hasher();
        crc.combine(&next.hasher());
        Sum {
            crc: crc.finalize(),
            len: self.len + next.len,
            points: self.points.saturating_add(next.points),
        }
    }

    /// The CRC-32 of the run, to combine with more (a hasher's length is the plain length).
    fn hasher(&self) -> Crc {
        Crc::new_with_initial_len(self.crc, self.len)
    }
}

/// Shards to a chunk of a family's segments. A chunk is copied when a
/// section being scraped still holds it, so a change copies one chunk and
/// the list of chunks, never the whole family.
const CHUNK: usize = 64;

/// A family's segments, in chunks shared with the sections scrapes hold.
type Chunks = Arc<Vec<Arc<Vec<Segment>>>>;

/// One family's part of the node section: its header, then its samples
/// shard by shard. Held by the pass; sections take [`FamilyText::snapshot`]s.
///
/// The CRC-32s of the shards are kept combined in a binary tree, so that
/// replacing one shard's segment recombines the log2 of the shard count on
/// its path to the root, not every shard: a change costs the same at any
/// cluster size, where the shard count grows with the nodes.
pub struct FamilyText {
    header: Segment,
    chunks: Chunks,
    /// `tree[1]` is the root; node `i` combines `2i` and `2i + 1`; the
    /// leaves are at `width..2 * width`, shards in order, padded with empty ones.
    tree: Vec<Sum>,
    width: usize,
}

impl FamilyText {
    /// A family with `header` and `shards` empty shards.
    pub fn new(header: Segment, shards: usize) -> FamilyText {
        let width = shards.next_power_of_two().max(1);
        let chunks = (0..shards.div_ceil(CHUNK))
            .map(|c| Arc::new(vec![Segment::empty(); CHUNK.min(shards - c * CHUNK)]))
            .collect();
        FamilyText {
            header,
            chunks: Arc::new(chunks),
            tree: vec![Sum::default(); 2 * width],
            width,
        }
    }

    /// The segment of shard `shard`.
    pub fn shard(&self, shard: usize) -> &Segment {
        &self.chunks[shard / CHUNK][shard % CHUNK]
    }

    /// Replaces the segment of shard `shard`.
    pub fn set(&mut self, shard: usize, segment: Segment) {
        let mut at = self.width + shard;
        self.tree[at] = Sum::of(&segment);
        let chunk = Arc::make_mut(&mut Arc::make_mut(&mut self.chunks)[shard / CHUNK]);
        chunk[shard % CHUNK] = segment;
        while at > 1 {
            at /= 2;
            self.tree[at] = self.tree[2 * at].then(&self.tree[2 * at + 1]);
        }
    }

    /// Points in every shard.
    pub fn points(&self) -> usize {
        self.tree[1].points as usize
    }

    /// The family as it stands, for a section: cheap (two references).
    pub fn snapshot(&self) -> FamilySnapshot {
        FamilySnapshot {
            header: self.header.deflate.clone(),
            chunks: self.chunks.clone(),
            sum: (self.points() > 0).then(|| Sum::of(&self.header).then(&self.tree[1])),
        }
    }
}

/// A family as a section holds it.
pub struct FamilySnapshot {
    header: Bytes,
    chunks: Chunks,
    /// Header and samples; `None` when it has no sample.
    sum: Option<Sum>,
}

impl FamilySnapshot {
    /// Its deflate parts, in order: the header, then each shard's segment
    /// (empty ones too, which hold no bytes).
    fn parts(&self) -> impl Iterator<Item = &Bytes> {
        std::iter::once(&self.header).chain(self.chunks.iter().flat_map(|c| c.iter()).map(|s| &s.deflate))
    }

    /// Part `i` of [`FamilySnapshot::parts`], `None` past the last: every
    /// chunk but the last holds [`CHUNK`] shards.
    fn part(&self, i: usize) -> Option<&Bytes> {
        match i {
            0 => Some(&self.header),
            _ => self
                .chunks
                .get((i - 1) / CHUNK)
                .and_then(|c| c.get((i - 1) % CHUNK))
                .map(|s| &s.deflate),
        }
    }
}

/// Where a read of a section's deflate data stands: a family (the tail
/// after the last), a part in it, and bytes of that part already read.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Position {
    family: usize,
    part: usize,
    at: usize,
}

impl Position {
    /// Past `n` more bytes of the part [`Section::unread`] last returned.
    pub(super) fn advance(&mut self, n: usize) {
        self.at += n;
    }
}

/// The node section: the families that have samples, then the cluster-wide
/// readings, with their combined CRC-32 and length. Taking one holds the
/// families as they are (cheap: two references each), so a scrape streams
/// a consistent section while the pass writes the next.
pub struct Section {
    families: Vec<FamilySnapshot>,
    tail: Option<Segment>,
    sum: Sum,
}

impl Section {
    /// An empty section (before the first render).
    pub fn empty() -> Section {
        Section::assemble(Vec::new(), None)
    }

    /// `families` (those without samples are left out), then `tail`.
    pub fn assemble(families: Vec<FamilySnapshot>, tail: Option<Segment>) -> Section {
        let families: Vec<_> = families.into_iter().filter(|f| f.sum.is_some()).collect();
        let sum = families
            .iter()
            .filter_map(|f| f.sum)
            .chain(tail.as_ref().map(Sum::of))
            .fold(Sum::default(), |acc, s| acc.then(&s));
        Section { families, tail, sum }
    }

    /// Points it holds.
    pub fn points(&self) -> usize {
        self.sum.points as usize
    }

    /// Bytes of plain text.
    pub fn plain_len(&self) -> u64 {
        self.sum.len
    }

    /// Bytes of deflate it is kept as (and sent as, gzip-encoded).
    pub fn deflated_len(&self) -> u64 {
        let parts: u64 = self
            .families
            .iter()
            .flat_map(FamilySnapshot::parts)
            .map(|p| p.len() as u64)
            .sum();
        parts + self.tail.as_ref().map_or(0, |t| t.deflate.len() as u64)
    }

    /// The CRC-32 of its plain text, to combine with what follows it.
    pub(super) fn crc(&self) -> Crc {
        self.sum.hasher()
    }

    /// The unread rest of the part `at` is in, moving past parts read to
    /// their end (and empty ones); empty once the section is read.
    pub(super) fn unread(&self, at: &mut Position) -> &[u8] {
        loop {
            let part = match self.families.get(at.family) {
                Some(f) => match f.part(at.part) {
                    Some(p) => p.as_ref(),
                    None => {
                        *at = Position {
                            family: at.family + 1,
                            ..Position::default()
                        };
                        continue;
                    }
                },
                None if at.family == self.families.len() && at.part == 0 => {
                    self.tail.as_ref().map_or(&[][..], |t| t.deflate.as_ref())
                }
                None => return &[],
            };
            if at.at < part.len() {
                return &part[at.at..];
            }
            at.part += 1;
            at.at = 0;
        }
    }

    /// Copies deflate data from `at` on into `out` until `out` holds at
    /// least `want` bytes or the section is read; false if it added nothing.
    /// A scrape sends the section in frames of this: one frame per part was
    /// ~250,000 frames at 65,000 nodes, and handling them, not the bytes,
    /// was most of a scrape's CPU. Joining each chunk's parts once, when a
    /// pass changed it, cost more than the copy: a change then allocated
    /// and copied a chunk in every family it touched.
    pub(super) fn read_into(&self, at: &mut Position, out: &mut Vec<u8>, want: usize) -> bool {
        let before = out.len();
        while out.len() < want {
            let rest = self.unread(at);
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(want - out.len());
            out.extend_from_slice(&rest[..n]);
            at.advance(n);
        }
        out.len() > before
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::telemetry::prometheus::body::{FINAL_BLOCK, tests::segment};

    /// The text a section's chunks inflate to.
    fn inflated(section: &Section) -> String {
        let mut chunks = Vec::new();
        let mut at = Position::default();
        // Small reads, so that reads end inside parts as well as between them.
        loop {
            let want = chunks.len() + 7;
            if !section.read_into(&mut at, &mut chunks, want) {
                break;
            }
        }
        assert_eq!(chunks.len() as u64, section.deflated_len());
        // Read as the plain body reads it, a part's rest at a time.
        let (mut read, mut at) = (Vec::new(), Position::default());
        loop {
            let rest = section.unread(&mut at);
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(5);
            read.extend_from_slice(&rest[..n]);
            at.advance(n);
        }
        assert_eq!(read, chunks, "the framed and the plain reads");
        let mut text = String::new();
        flate2::read::DeflateDecoder::new([chunks.as_slice(), &FINAL_BLOCK].concat().as_slice())
            .read_to_string(&mut text)
            .expect("one deflate stream");
        text
    }

    /// The tree of CRCs, updated one shard at a time in any order, always
    /// equals the CRC of the text as it stands; a section taken before a
    /// change keeps the text it was taken with.
    #[test]
    fn replacing_shards_keeps_the_combined_crc_of_the_text() {
        let mut rng = fastrand::Rng::with_seed(7);
        for shards in [1, 2, 5, 64, 100, 300] {
            let mut family = FamilyText::new(segment("# HELP m x\n"), shards);
            let mut texts = vec![String::new(); shards];
            let mut before = (Section::empty(), String::new());
            for round in 0..200 {
                let at = rng.usize(..shards);
                texts[at] = if rng.u8(..4) == 0 {
                    String::new()
                } else {
                    format!("m{{shard=\"{at}\"}} {round}\n")
                };
                family.set(
                    at,
                    if texts[at].is_empty() {
                        Segment::empty()
                    } else {
                        segment(&texts[at])
                    },
                );
                let plain = texts.concat();
                let section = Section::assemble(vec![family.snapshot()], None);
                let want = if plain.is_empty() {
                    String::new()
                } else {
                    format!("# HELP m x\n{plain}")
                };
                let what = format!("{shards} shards, round {round}");
                assert_eq!(section.plain_len(), want.len() as u64, "{what}");
                assert_eq!(
                    section.crc().finalize(),
                    crc32fast::hash(want.as_bytes()),
                    "{what}"
                );
                assert_eq!(inflated(&section), want, "{what}");
                assert_eq!(inflated(&before.0), before.1, "{what}: the section taken before");
                before = (section, want);
            }
        }
    }
}

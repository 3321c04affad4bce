//! The `/metrics` body: a node section kept compressed and re-rendered in
//! parts when the view changes, and a small live section (`target_info`
//! and the exporter's own telemetry) rendered at every scrape.
//!
//! The node section is the whole cost of a scrape, and it only changes when
//! a watch event changes the view, so a scrape must not pay for it. Each
//! part ([`Segment`]) is rendered straight into a raw deflate stream of its
//! own, ended by a sync flush: byte-aligned, no final block, no reference
//! outside itself, so segments concatenate into one valid deflate stream
//! and one can be replaced without touching the others. A gzip response is
//! a header, the segments, the live section compressed to its end, and a
//! trailer whose CRC-32 combines them all: one valid gzip member, whatever
//! the client. A scraper that does not take gzip gets the text inflated as
//! it streams out, so no scrape ever holds the whole plain body.

use std::{
    cell::RefCell,
    io::{self, Read, Write},
    sync::Arc,
};

use bytes::Bytes;
use crc32fast::Hasher as Crc;

use super::section::Position;
pub use super::section::{FamilyText, Section};
use flate2::{Compress, Compression, FlushCompress, Status, write::DeflateEncoder};
use futures::stream::{self, BoxStream, StreamExt};

/// A rendered part of the node section.
#[derive(Clone)]
pub struct Segment {
    /// Raw deflate, sync-flushed, not final: other deflate data may follow it.
    pub(super) deflate: Bytes,
    /// CRC-32 of the plain text.
    pub(super) crc: Crc,
    /// Bytes of plain text.
    pub(super) len: u64,
    /// How many points it holds, for the logs.
    pub points: usize,
    /// A digest of the plain text (see [`digest`]); 0 for [`Segment::empty`],
    /// which no rendered text has, so a fresh shard is always written.
    pub digest: u64,
}

impl Segment {
    /// An empty segment.
    pub fn empty() -> Segment {
        Segment {
            deflate: Bytes::new(),
            crc: Crc::new(),
            len: 0,
            points: 0,
            digest: 0,
        }
    }

    /// Renders a segment: `write` writes the plain text into the writer it
    /// is given and returns how many points it wrote.
    pub fn render(write: impl FnOnce(&mut dyn Write) -> io::Result<usize>) -> io::Result<Segment> {
        let mut plain = Vec::with_capacity(1 << 12);
        let points = write(&mut plain)?;
        Segment::of_plain(&plain, points)
    }

    /// A segment of `plain` text holding `points` points.
    pub fn of_plain(plain: &[u8], points: usize) -> io::Result<Segment> {
        if plain.is_empty() {
            return Ok(Segment {
                points,
                digest: digest(plain),
                ..Segment::empty()
            });
        }
        let mut crc = Crc::new();
        crc.update(plain);
        // A sync flush ends the stream on a byte boundary without a final block.
        let deflate = deflate(plain, FlushCompress::Sync)?;
        Ok(Segment {
            deflate: Bytes::from(deflate),
            crc,
            len: plain.len() as u64,
            points,
            digest: digest(plain),
        })
    }
}

/// A digest of plain text (its length included): a re-rendered shard whose
/// text has the same digest is taken for the same, and is not compressed
/// again. 64 bits, keyed at random once per process, so a collision cannot
/// be aimed at by what nodes hold.
pub fn digest(plain: &[u8]) -> u64 {
    use std::hash::BuildHasher as _;
    static KEY: std::sync::LazyLock<foldhash::quality::RandomState> =
        std::sync::LazyLock::new(Default::default);
    KEY.hash_one(plain)
}

thread_local! {
    /// One compressor per thread, reset for each segment: a new one
    /// allocates and clears ~300 KB of window and tables, which cost more
    /// than compressing the few KB of a shard's family.
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
}

/// `plain` as raw deflate at level 1 (a tenth of the CPU of the default
/// level for about 1.4× the bytes), ended with `flush`: `Sync` for a part
/// other deflate data may follow, `Finish` for a whole stream. The result
/// holds no slack: it is kept until its shard changes.
pub fn deflate(plain: &[u8], flush: FlushCompress) -> io::Result<Vec<u8>> {
    deflate_with(plain, flush, &[])
}

/// [`deflate`], with `dictionary` preset (none if empty): what inflates the
/// result must preset the same bytes. Only for data this process reads
/// back itself; a scraper's gzip knows no dictionary.
pub fn deflate_with(plain: &[u8], flush: FlushCompress, dictionary: &[u8]) -> io::Result<Vec<u8>> {
    DEFLATE.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        if !dictionary.is_empty() {
            c.set_dictionary(dictionary).map_err(io::Error::other)?;
        }
        let mut out = Vec::with_capacity(plain.len() / 3 + 64);
        loop {
            let consumed = c.total_in() as usize;
            let status = c
                .compress_vec(&plain[consumed..], &mut out, flush)
                .map_err(io::Error::other)?;
            let all_in = c.total_in() as usize == plain.len();
            // Done once the input is in and the flush left room unused (or ended the stream).
            let done = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => all_in && out.len() < out.capacity(),
            };
            if done {
                break;
            }
            out.reserve(out.capacity().max(256));
        }
        out.shrink_to_fit();
        Ok(out)
    })
}

/// A `/metrics` body, ready to stream.
pub struct Exposition {
    /// The body's chunks.
    pub body: BoxStream<'static, io::Result<Bytes>>,
    /// Its length, when known in advance (gzip).
    pub content_length: Option<u64>,
    /// True if the body is gzip-encoded.
    pub gzip: bool,
}

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// An empty final stored block: ends a sync-flushed deflate stream.
pub(super) const FINAL_BLOCK: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];
/// Plain text is decoded and sent this much at a time.
const PLAIN_CHUNK: usize = 16 * 1024;
/// The section is sent in frames of this many bytes of deflate data.
const FRAME: usize = 64 * 1024;

/// The body for one scrape: the cached node `section`, then `live` (plain
/// text), gzip-encoded if `gzip`.
pub fn respond(section: Arc<Section>, live: Vec<u8>, gzip: bool) -> io::Result<Exposition> {
    if gzip {
        let mut live_crc = Crc::new();
        live_crc.update(&live);
        let mut crc = section.crc();
        crc.combine(&live_crc);
        let mut tail = DeflateEncoder::new(Vec::new(), Compression::fast());
        tail.write_all(&live)?;
        let tail = tail.finish()?;
        // ISIZE is the plain length modulo 2^32 (RFC 1952).
        let isize = (section.plain_len() + live.len() as u64) as u32;
        let mut trailer = Vec::with_capacity(8);
        trailer.extend_from_slice(&crc.finalize().to_le_bytes());
        trailer.extend_from_slice(&isize.to_le_bytes());
        let len = (GZIP_HEADER.len() + tail.len() + trailer.len()) as u64 + section.deflated_len();
        // Copied into frames a few at a time as the client reads: a slow
        // scraper holds one frame, not a copy of the body.
        let frames = stream::unfold((section, Position::default()), |(section, mut at)| async move {
            if section.unread(&mut at).is_empty() {
                return None;
            }
            let mut frame = Vec::with_capacity(FRAME);
            section.read_into(&mut at, &mut frame, FRAME);
            // The last frame is short: it keeps no unused capacity while sent.
            frame.shrink_to_fit();
            Some((Ok(Bytes::from(frame)), (section, at)))
        });
        let body = stream::iter([Ok(Bytes::from_static(&GZIP_HEADER))])
            .chain(frames)
            .chain(stream::iter([Ok(Bytes::from(tail)), Ok(Bytes::from(trailer))]));
        return Ok(Exposition {
            body: body.boxed(),
            content_length: Some(len),
            gzip: true,
        });
    }
    // Decoded a small chunk at a time as the client reads: a scraper that
    // reads slowly (or not at all) holds one chunk and the decoder's window,
    // never the whole text, nor a thread.
    let input = SectionReader {
        section,
        at: Position::default(),
        ended: 0,
    };
    // Over BufRead: no 32 KiB copy buffer of its own next to the decoder's window.
    let decoder = flate2::bufread::DeflateDecoder::new(input);
    let body = stream::unfold(Some((decoder, live)), |state| async move {
        let (mut decoder, live) = state?;
        let mut chunk = vec![0u8; PLAIN_CHUNK];
        match read_full(&mut decoder, &mut chunk) {
            Ok(0) => Some((Ok(Bytes::from(live)), None)),
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(Bytes::from(chunk)), Some((decoder, live))))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(Exposition {
        body: body.boxed(),
        content_length: None,
        gzip: false,
    })
}

/// The section's deflate data and the final block, read in order.
struct SectionReader {
    section: Arc<Section>,
    at: Position,
    /// Bytes of the final block read, once the section is.
    ended: usize,
}

impl SectionReader {
    /// The unread rest of the current part (or of the final block).
    fn current(&mut self) -> &[u8] {
        if self.ended == 0 {
            let rest = self.section.unread(&mut self.at);
            if !rest.is_empty() {
                return rest;
            }
        }
        &FINAL_BLOCK[self.ended.min(FINAL_BLOCK.len())..]
    }

    fn advance(&mut self, n: usize) {
        if self.ended == 0 && !self.section.unread(&mut self.at).is_empty() {
            self.at.advance(n);
        } else {
            self.ended += n;
        }
    }
}

impl Read for SectionReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.current();
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.advance(n);
        Ok(n)
    }
}

impl io::BufRead for SectionReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(self.current())
    }

    fn consume(&mut self, n: usize) {
        self.advance(n);
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    async fn body(e: Exposition) -> Vec<u8> {
        let chunks: Vec<io::Result<Bytes>> = e.body.collect().await;
        chunks.into_iter().flat_map(|c| c.unwrap().to_vec()).collect()
    }

    /// A segment of `text`, of one point.
    pub(in crate::telemetry::prometheus) fn segment(text: &str) -> Segment {
        let text = text.to_string();
        Segment::render(move |w| {
            w.write_all(text.as_bytes())?;
            Ok(1)
        })
        .unwrap()
    }

    fn section(text: &str) -> Arc<Section> {
        // A header, three shards (one empty) and a tail: they must read as the one text.
        let (head, rest) = text.split_at(text.len() / 4);
        let (a, rest) = rest.split_at(rest.len() / 3);
        let (b, tail) = rest.split_at(rest.len() / 2);
        let mut family = FamilyText::new(segment(head), 3);
        family.set(2, segment(b));
        family.set(0, segment(a));
        Arc::new(Section::assemble(vec![family.snapshot()], Some(segment(tail))))
    }

    #[tokio::test]
    async fn gzip_is_one_valid_member_of_both_sections() {
        let big: String = (0..50_000)
            .map(|i| format!("node_metric{{node=\"n{i}\"}} {i}\n"))
            .collect();
        let s = section(&big);
        assert_eq!(s.plain_len() as usize, big.len());
        let e = respond(s, b"live 1\n".to_vec(), true).unwrap();
        let declared = e.content_length.unwrap();
        let frames: Vec<Bytes> = e.body.map(|f| f.unwrap()).collect().await;
        // Header, the section in frames (more than one: they split parts), tail, trailer.
        assert!(frames.len() > 4, "{} frames", frames.len());
        assert!(frames.iter().all(|f| f.len() <= FRAME));
        let gz: Vec<u8> = frames.concat();
        assert_eq!(gz.len() as u64, declared);
        // flate2's single-member decoder: trailing bytes or a bad CRC would fail.
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, format!("{big}live 1\n"));
        assert!(
            gz.len() < big.len() / 4,
            "compressed {} of {}",
            gz.len(),
            big.len()
        );
    }

    #[tokio::test]
    async fn plain_streams_the_same_text() {
        let big: String = (0..100_000).map(|i| format!("m{{n=\"{i}\"}} 1\n")).collect();
        let e = respond(section(&big), b"live 2\n".to_vec(), false).unwrap();
        assert!(!e.gzip && e.content_length.is_none());
        assert_eq!(
            String::from_utf8(body(e).await).unwrap(),
            format!("{big}live 2\n")
        );
    }

    #[tokio::test]
    async fn an_empty_section_still_makes_a_valid_body() {
        for gzip in [true, false] {
            let e = respond(Arc::new(Section::empty()), b"x 1\n".to_vec(), gzip).unwrap();
            let raw = body(e).await;
            let text = if gzip {
                let mut s = String::new();
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_string(&mut s)
                    .unwrap();
                s
            } else {
                String::from_utf8(raw).unwrap()
            };
            assert_eq!(text, "x 1\n");
        }
    }
}

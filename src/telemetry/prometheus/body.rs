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
    io::{self, BufWriter, Read, Write},
    sync::Arc,
};

use bytes::Bytes;
use crc32fast::Hasher as Crc;
use flate2::{Compression, write::DeflateEncoder};
use futures::stream::{self, BoxStream, StreamExt};

/// A rendered part of the node section.
pub struct Segment {
    /// Raw deflate, sync-flushed, not final: other deflate data may follow it.
    deflate: Bytes,
    /// CRC-32 and length of the plain text.
    crc: Crc,
    /// Bytes of plain text.
    len: u64,
    /// How many points it holds, for the logs.
    pub points: usize,
}

impl Segment {
    /// An empty segment.
    pub fn empty() -> Segment {
        Segment {
            deflate: Bytes::new(),
            crc: Crc::new(),
            len: 0,
            points: 0,
        }
    }

    /// Renders a segment: `write` writes the plain text into the writer it
    /// is given and returns how many points it wrote.
    pub fn render(write: impl FnOnce(&mut dyn Write) -> io::Result<usize>) -> io::Result<Segment> {
        // Level 1: a tenth of the CPU of the default level for about 1.4× the bytes.
        let encoder = DeflateEncoder::new(Vec::with_capacity(1 << 16), Compression::fast());
        let mut out = BufWriter::with_capacity(1 << 16, CrcWriter::new(encoder));
        let points = write(&mut out)?;
        let mut crc_writer = out.into_inner().map_err(|e| e.into_error())?;
        // A sync flush ends the stream on a byte boundary without a final block.
        crc_writer.flush()?;
        let CrcWriter {
            inner: mut encoder,
            crc,
            len,
        } = crc_writer;
        let mut deflate = std::mem::take(encoder.get_mut());
        // Kept until the shard changes: its slack would stay resident with it.
        deflate.shrink_to_fit();
        // Dropping the encoder finishes its stream into the emptied buffer, which we discard.
        drop(encoder);
        Ok(Segment {
            deflate: Bytes::from(deflate),
            crc,
            len,
            points,
        })
    }
}

/// The node section: segments in order, with their combined CRC-32 and length.
pub struct Section {
    chunks: Vec<Bytes>,
    crc: Crc,
    len: u64,
    /// Points it holds.
    pub points: usize,
}

impl Section {
    /// An empty section (before the first render).
    pub fn empty() -> Section {
        Section::assemble(std::iter::empty())
    }

    /// Puts `segments` one after the other.
    pub fn assemble<'a>(segments: impl Iterator<Item = &'a Segment>) -> Section {
        let mut section = Section {
            chunks: Vec::new(),
            crc: Crc::new(),
            len: 0,
            points: 0,
        };
        for s in segments.filter(|s| s.len > 0) {
            section.chunks.push(s.deflate.clone());
            section.crc.combine(&s.crc);
            section.len += s.len;
            section.points += s.points;
        }
        section
    }

    /// Bytes of plain text.
    pub fn plain_len(&self) -> u64 {
        self.len
    }
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
const FINAL_BLOCK: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];
/// Plain text is decoded and sent this much at a time.
const PLAIN_CHUNK: usize = 16 * 1024;

/// The body for one scrape: the cached node `section`, then `live` (plain
/// text), gzip-encoded if `gzip`.
pub fn respond(section: Arc<Section>, live: Vec<u8>, gzip: bool) -> io::Result<Exposition> {
    if gzip {
        let mut live_crc = Crc::new();
        live_crc.update(&live);
        let mut crc = section.crc.clone();
        crc.combine(&live_crc);
        let mut tail = DeflateEncoder::new(Vec::new(), Compression::fast());
        tail.write_all(&live)?;
        let tail = tail.finish()?;
        // ISIZE is the plain length modulo 2^32 (RFC 1952).
        let isize = (section.len + live.len() as u64) as u32;
        let mut trailer = Vec::with_capacity(8);
        trailer.extend_from_slice(&crc.finalize().to_le_bytes());
        trailer.extend_from_slice(&isize.to_le_bytes());
        let chunks: Vec<Bytes> = std::iter::once(Bytes::from_static(&GZIP_HEADER))
            .chain(section.chunks.iter().cloned())
            .chain([Bytes::from(tail), Bytes::from(trailer)])
            .collect();
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        return Ok(Exposition {
            body: stream::iter(chunks.into_iter().map(Ok)).boxed(),
            content_length: Some(len),
            gzip: true,
        });
    }
    // Decoded a small chunk at a time as the client reads: a scraper that
    // reads slowly (or not at all) holds one chunk and the decoder's window,
    // never the whole text, nor a thread.
    let input = SectionReader {
        section,
        chunk: 0,
        at: 0,
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

/// The section's deflate chunks and the final block, read in order.
struct SectionReader {
    section: Arc<Section>,
    chunk: usize,
    at: usize,
}

impl SectionReader {
    /// The unread rest of the current chunk, moving past finished ones.
    fn current(&mut self) -> &[u8] {
        loop {
            let len = match self.section.chunks.get(self.chunk) {
                Some(c) => c.len(),
                None if self.chunk == self.section.chunks.len() => FINAL_BLOCK.len(),
                None => return &[],
            };
            if self.at < len {
                break;
            }
            self.chunk += 1;
            self.at = 0;
        }
        match self.section.chunks.get(self.chunk) {
            Some(c) => &c[self.at..],
            None => &FINAL_BLOCK[self.at..],
        }
    }
}

impl Read for SectionReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.current();
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.at += n;
        Ok(n)
    }
}

impl io::BufRead for SectionReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(self.current())
    }

    fn consume(&mut self, n: usize) {
        self.at += n;
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

/// Passes writes through, keeping the CRC-32 and length of what went by.
struct CrcWriter<W> {
    inner: W,
    crc: Crc,
    len: u64,
}

impl<W> CrcWriter<W> {
    fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            crc: Crc::new(),
            len: 0,
        }
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: Exposition) -> Vec<u8> {
        let chunks: Vec<io::Result<Bytes>> = e.body.collect().await;
        chunks.into_iter().flat_map(|c| c.unwrap().to_vec()).collect()
    }

    fn segment(text: &str) -> Segment {
        let text = text.to_string();
        Segment::render(move |w| {
            w.write_all(text.as_bytes())?;
            Ok(1)
        })
        .unwrap()
    }

    fn section(text: &str) -> Arc<Section> {
        // Three segments, one of them empty: they must read as the one text.
        let (a, b) = text.split_at(text.len() / 3);
        let parts = [segment(a), Segment::empty(), segment(b)];
        Arc::new(Section::assemble(parts.iter()))
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
        let gz = body(e).await;
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

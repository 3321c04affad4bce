//! The `;stream=watch` framing: each frame a 4-byte big-endian length, then
//! that many bytes (apimachinery's `LengthDelimitedFramer`).

use bytes::{Buf, Bytes, BytesMut};

use super::ProtoError;

/// The largest frame taken: client-go's streaming decoder refuses objects
/// over 16 MiB. A Node is ~2–20 KB; a length past this is a broken stream,
/// and reading it would hold that much memory.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Splits a watch body, fed in chunks as they arrive, into frames.
#[derive(Debug)]
pub struct Frames {
    buf: BytesMut,
    max: usize,
}

impl Default for Frames {
    fn default() -> Self {
        Frames::with_limit(MAX_FRAME)
    }
}

impl Frames {
    /// Frames of at most `max` bytes.
    pub fn with_limit(max: usize) -> Frames {
        Frames {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends a chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, if one has arrived. A length over the limit is
    /// an error at once, before any of the frame is held.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, ProtoError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max {
            self.buf = BytesMut::new();
            return Err(ProtoError::FrameTooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            // Room for the rest up front: one allocation per large frame, not a doubling series.
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// The next whole line (a JSON watch event), without its newline; blank
    /// lines are skipped. A line longer than the limit is an error as soon
    /// as that much of it is held.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, ProtoError> {
        loop {
            let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
                if self.buf.len() > self.max {
                    let len = self.buf.len();
                    self.buf = BytesMut::new();
                    return Err(ProtoError::FrameTooLarge { len, max: self.max });
                }
                return Ok(None);
            };
            let line = self.buf.split_to(end + 1).freeze().slice(..end);
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                return Ok(Some(line));
            }
        }
    }

    /// What is left at the end of a JSON body without a final newline.
    pub fn rest(&mut self) -> Result<Option<Bytes>, ProtoError> {
        let rest = std::mem::take(&mut self.buf).freeze();
        Ok(rest.iter().any(|b| !b.is_ascii_whitespace()).then_some(rest))
    }

    /// At the end of the body: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<(), ProtoError> {
        match self.buf.len() {
            0 => Ok(()),
            got if got < 4 => Err(ProtoError::Truncated { got, want: 4 }),
            got => {
                let want = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                Err(ProtoError::Truncated { got: got - 4, want })
            }
        }
    }

    /// The first byte held, if any.
    pub fn first_byte(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// Bytes held, waiting for the rest of a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| {
                (f.len() as u32)
                    .to_be_bytes()
                    .into_iter()
                    .chain(f.iter().copied())
            })
            .collect()
    }

    #[test]
    fn frames_come_out_whole_however_the_body_is_cut() {
        let want: Vec<Vec<u8>> = vec![b"one".to_vec(), Vec::new(), vec![7; 1000], b"last".to_vec()];
        let refs: Vec<&[u8]> = want.iter().map(Vec::as_slice).collect();
        let body = framed(&refs);
        for cut in [1, 2, 3, 4, 5, 7, 64, 1024, body.len()] {
            let mut frames = Frames::default();
            let mut got = Vec::new();
            for chunk in body.chunks(cut) {
                frames.push(chunk);
                while let Some(f) = frames.next_frame().expect("valid") {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, want, "chunks of {cut}");
            assert_eq!(frames.finish(), Ok(()));
        }
    }

    #[test]
    fn a_body_cut_inside_a_frame_is_truncated() {
        let body = framed(&[b"hello"]);
        for end in 1..body.len() {
            let mut frames = Frames::default();
            frames.push(&body[..end]);
            assert_eq!(frames.next_frame(), Ok(None));
            assert!(
                matches!(frames.finish(), Err(ProtoError::Truncated { .. })),
                "{end}"
            );
        }
    }

    #[test]
    fn an_absurd_length_is_refused_before_anything_is_held() {
        let mut frames = Frames::with_limit(1024);
        frames.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            frames.next_frame(),
            Err(ProtoError::FrameTooLarge {
                len: u32::MAX as usize,
                max: 1024
            })
        );
        assert_eq!(frames.pending(), 0);
        let mut frames = Frames::with_limit(1024);
        frames.push(&1025u32.to_be_bytes());
        assert!(frames.next_frame().is_err());
        frames.push(&framed(&[&[1; 1024]]));
        assert_eq!(
            frames.next_frame().expect("at the limit").map(|f| f.len()),
            Some(1024)
        );
    }
}

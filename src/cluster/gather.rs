//! When a watch leaves its socket alone for a while, so that events are
//! read a few at a time rather than one wake-up each: a pure policy, fed
//! what each read did.
//!
//! hyper does not read a response body that no one is polling, so the
//! events that come during a pause wait in the socket and are then read
//! together, in large chunks. At 10,000 nodes a kubelet re-post comes every
//! 30 ms, and being woken for each cost more than deciding it changes
//! nothing (docs/benchmarks.md). A pause is only taken when it cannot hold
//! up a backlog:
//!
//! - only once a read had to wait for its data (the socket was drained);
//! - not when the reads since the last pause were a burst (a zone outage,
//!   a relist's aftermath): the watch keeps reading at full speed;
//! - never within a quarter of the pause after the last one, so that even
//!   if every read waits (a CPU-starved process), at least a fifth of the
//!   time is spent reading.

use std::time::{Duration, Instant};

/// How long a pause lasts: the latency it adds to a change at most.
pub const PAUSE: Duration = Duration::from_millis(100);

/// A read that waits this long for its data found the socket drained;
/// hyper hands over a buffered chunk in microseconds.
pub const DRAINED_AFTER: Duration = Duration::from_millis(1);

/// Frames read since the last pause that make a burst.
pub const BURST: usize = 16;

/// The pause policy of one watch.
#[derive(Debug, Default)]
pub struct Gather {
    /// The last read waited for its data.
    drained: bool,
    /// Frames read since the last pause (or the last burst).
    frames: usize,
    /// When the last pause ended.
    last_pause: Option<Instant>,
}

impl Gather {
    /// A frame was handed on.
    pub fn frame(&mut self) {
        self.frames += 1;
    }

    /// A read took `waited` to get its data.
    pub fn read(&mut self, waited: Duration) {
        self.drained = waited >= DRAINED_AFTER;
    }

    /// Before a read at `now`, with no partial frame buffered: how long to
    /// pause first, if at all. A pause returned is taken: call [`paused`](Self::paused) after it.
    pub fn pause(&mut self, now: Instant) -> Option<Duration> {
        if !std::mem::take(&mut self.drained) {
            return None;
        }
        if self.frames >= BURST {
            self.frames = 0;
            return None;
        }
        if self
            .last_pause
            .is_some_and(|at| now.saturating_duration_since(at) < PAUSE / 4)
        {
            return None;
        }
        Some(PAUSE)
    }

    /// A pause ended at `now`.
    pub fn paused(&mut self, now: Instant) {
        self.frames = 0;
        self.last_pause = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the policy does over a schedule of reads: each step is
    /// (milliseconds since the start, frames the read gave, milliseconds it
    /// waited); `P` where it paused before the read, `.` where it did not.
    fn run(steps: &[(u64, usize, u64)]) -> String {
        let t0 = Instant::now();
        let mut g = Gather::default();
        let mut out = String::new();
        for &(at, frames, waited) in steps {
            let now = t0 + Duration::from_millis(at);
            match g.pause(now) {
                Some(p) => {
                    out.push('P');
                    g.paused(now + p);
                }
                None => out.push('.'),
            }
            g.read(Duration::from_millis(waited));
            for _ in 0..frames {
                g.frame();
            }
        }
        out
    }

    #[test]
    fn pauses_only_when_drained_and_not_in_a_burst_nor_right_after_a_pause() {
        for (what, steps, want) in [
            (
                "reads that never wait never pause",
                &[(0, 1, 0), (1, 1, 0), (2, 1, 0)][..],
                "...",
            ),
            (
                "a read that waited: the next pauses",
                &[(0, 1, 5), (40, 1, 0)][..],
                ".P",
            ),
            (
                "sparse events: a pause, a few gathered, then no pause within a quarter of one",
                &[(0, 1, 30), (30, 3, 0), (131, 0, 2), (135, 1, 30), (170, 1, 0)][..],
                ".P..P",
            ),
            (
                "a burst after a pause is read through, even where a read waited",
                &[
                    (0, 1, 5),
                    (10, 20, 0),
                    (111, 0, 3),
                    (115, 20, 3),
                    (120, 20, 3),
                    (300, 1, 0),
                ][..],
                ".P....",
            ),
            (
                "every read waits (a starved process): at most a pause per 125 ms",
                &[
                    (0, 1, 2),
                    (1, 1, 2),
                    (102, 1, 2),
                    (110, 1, 2),
                    (127, 1, 2),
                    (230, 1, 2),
                ][..],
                ".P..P.",
            ),
        ] {
            assert_eq!(run(steps), want, "{what}");
        }
    }
}

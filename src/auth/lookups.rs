//! Token lookups that a flood cannot amplify: each distinct token is reviewed
//! at most once at a time (single flight); unknown tokens are reviewed at a
//! bounded rate, per client address and in all, and concurrency; tokens
//! allowed before are re-reviewed at a bounded rate of their own, so a flood
//! of made-up tokens does not lock out the scrapers it already knows. Answers
//! are cached by the token's SHA-256 in two bounded LRU caches, one for
//! tokens the API server authenticated and one, short-lived, for tokens it
//! did not. Made-up tokens only ever reach the second, so a flood of them
//! cannot push a real scraper's answer out, and the token itself is never
//! kept.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, future::BoxFuture, future::Shared};
use lru::LruCache;

use super::Verdict;
use crate::surface::{Lookup, SurfaceStats};

/// The SHA-256 of a token: what the caches and the in-flight table are keyed by.
pub type Key = [u8; 32];

/// The key of `token`.
pub fn key(token: &[u8]) -> Key {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// The bounds of the lookups.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long an answer for an authenticated token (allowed or forbidden) is reused.
    pub valid_for: Duration,
    /// How long an answer for a token the API server did not authenticate is reused.
    pub invalid_for: Duration,
    /// Authenticated tokens remembered.
    pub valid_entries: NonZeroUsize,
    /// Unauthenticated tokens remembered.
    pub invalid_entries: NonZeroUsize,
    /// Reviews of unknown tokens in flight at once.
    pub in_flight: usize,
    /// Reviews of unknown tokens per second, on average.
    pub rate: f64,
    /// Reviews of unknown tokens in a burst.
    pub burst: f64,
    /// Reviews of unknown tokens from one client address per second.
    pub peer_rate: f64,
    /// Reviews of unknown tokens from one client address in a burst.
    pub peer_burst: f64,
    /// Re-reviews of tokens allowed before (their answer expired) per second, and in a burst.
    pub known_rate: f64,
    /// See `known_rate`.
    pub known_burst: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            valid_for: Duration::from_secs(60),
            invalid_for: Duration::from_secs(10),
            valid_entries: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            invalid_entries: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
            in_flight: 4,
            rate: 5.0,
            burst: 20.0,
            peer_rate: 1.0,
            peer_burst: 5.0,
            known_rate: 5.0,
            known_burst: 20.0,
        }
    }
}

/// Client addresses whose buckets are kept; the least recent start afresh.
const PEERS: usize = 1024;

/// A token bucket: `rate` tokens a second, up to `burst`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.at = now;
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A review in flight, awaited by every request that carries its token.
type Pending = Shared<BoxFuture<'static, Verdict>>;

struct State {
    valid: LruCache<Key, (Instant, Verdict)>,
    invalid: LruCache<Key, Instant>,
    in_flight: HashMap<Key, (Pending, bool)>,
    /// Unknown tokens, from every address.
    bucket: Bucket,
    /// Unknown tokens, per address.
    peers: LruCache<IpAddr, Bucket>,
    /// Re-reviews of tokens allowed before.
    known: Bucket,
}

/// Removes a review from the in-flight table if its task ends without doing
/// so (a panic). Disarmed once the task has: by then a newer review of the
/// same token may be in the table, and must stay.
struct Leave {
    state: Arc<Mutex<State>>,
    key: Key,
    armed: bool,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.in_flight.remove(&self.key);
        }
    }
}

/// Reviews a token: the API calls, for the lookups to bound.
pub type Review = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Verdict> + Send + Sync>;

/// Cached, merged and rate-limited token lookups.
pub struct Lookups {
    state: Arc<Mutex<State>>,
    limits: Limits,
    review: Review,
    stats: Arc<SurfaceStats>,
}

/// What to do for one token, decided under the lock.
enum Step {
    Answer(Verdict),
    Wait(Pending),
}

impl Lookups {
    /// Lookups that call `review` for tokens they have no answer for.
    pub fn new(limits: Limits, review: Review, stats: Arc<SurfaceStats>) -> Lookups {
        Lookups {
            state: Arc::new(Mutex::new(State {
                valid: LruCache::new(limits.valid_entries),
                invalid: LruCache::new(limits.invalid_entries),
                in_flight: HashMap::new(),
                bucket: Bucket::full(limits.burst, Instant::now()),
                peers: LruCache::new(NonZeroUsize::new(PEERS).unwrap_or(NonZeroUsize::MIN)),
                known: Bucket::full(limits.known_burst, Instant::now()),
            })),
            limits,
            review,
            stats,
        }
    }

    /// The verdict for `token`, presented from `peer`.
    pub async fn check(&self, token: &[u8], peer: Option<IpAddr>) -> Verdict {
        match self.step(token, peer, Instant::now()) {
            Step::Answer(v) => v,
            Step::Wait(pending) => pending.await,
        }
    }

    fn step(&self, token: &[u8], peer: Option<IpAddr>, now: Instant) -> Step {
        let key = key(token);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A token allowed before is known: re-reviewing it when its answer
        // expires takes from a budget of its own, not the unknown tokens',
        // so a flood of those cannot lock out the real scrapers.
        let mut known = false;
        if let Some((at, verdict)) = state.valid.get(&key) {
            if now.saturating_duration_since(*at) < self.limits.valid_for {
                self.stats.lookup(Lookup::Cached);
                return Step::Answer(*verdict);
            }
            known = *verdict == Verdict::Allowed;
        }
        if let Some(at) = state.invalid.get(&key) {
            if now.saturating_duration_since(*at) < self.limits.invalid_for {
                self.stats.lookup(Lookup::Cached);
                return Step::Answer(Verdict::Invalid);
            }
            state.invalid.pop(&key);
        }
        if let Some((pending, _)) = state.in_flight.get(&key) {
            self.stats.lookup(Lookup::Merged);
            return Step::Wait(pending.clone());
        }
        let l = &self.limits;
        let admitted = if known {
            state.known.take(now, l.known_rate, l.known_burst)
        } else {
            let unknown_in_flight = state.in_flight.values().filter(|(_, known)| !known).count();
            unknown_in_flight < l.in_flight && self.take_unknown(&mut state, peer, now)
        };
        if !admitted {
            self.stats.lookup(Lookup::RateLimited);
            return Step::Answer(Verdict::Throttled);
        }
        self.stats.lookup(Lookup::Reviewed);
        let pending = self.spawn_review(key, token.to_vec());
        state.in_flight.insert(key, (pending.clone(), known));
        Step::Wait(pending)
    }

    /// Takes one review of an unknown token from the address's budget and
    /// from the shared one; spends neither unless both have it.
    fn take_unknown(&self, state: &mut State, peer: Option<IpAddr>, now: Instant) -> bool {
        let l = &self.limits;
        state.bucket.refill(now, l.rate, l.burst);
        if state.bucket.tokens < 1.0 {
            return false;
        }
        if let Some(peer) = peer {
            let bucket = state
                .peers
                .get_or_insert_mut(peer, || Bucket::full(l.peer_burst, now));
            if !bucket.take(now, l.peer_rate, l.peer_burst) {
                return false;
            }
        }
        state.bucket.tokens -= 1.0;
        true
    }

    /// Runs the review in a task of its own, so that the request that
    /// started it can go away (its client hung up) without leaving the
    /// others that merged into it waiting for nothing.
    fn spawn_review(&self, key: Key, token: Vec<u8>) -> Pending {
        let (state, review) = (self.state.clone(), self.review.clone());
        let task = tokio::spawn(async move {
            // Leaves the in-flight table however the review ends, a panic included.
            let mut leave = Leave {
                state: state.clone(),
                key,
                armed: true,
            };
            let verdict = review(token).await;
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            state.in_flight.remove(&key);
            leave.armed = false;
            let now = Instant::now();
            match verdict {
                Verdict::Allowed | Verdict::Forbidden => {
                    state.valid.put(key, (now, verdict));
                }
                Verdict::Invalid => {
                    state.valid.pop(&key);
                    state.invalid.put(key, now);
                }
                // Not an answer about the token: asked again next time.
                Verdict::Missing | Verdict::Unavailable | Verdict::Throttled => {}
            }
            verdict
        });
        async move { task.await.unwrap_or(Verdict::Unavailable) }
            .boxed()
            .shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Opens once: reviews wait for it.
    type Gate = tokio::sync::watch::Sender<bool>;

    fn gate() -> Arc<Gate> {
        Arc::new(tokio::sync::watch::Sender::new(false))
    }

    /// A review that counts its calls and answers by the token's first byte
    /// (`a` allowed, `f` forbidden, else invalid) once `gate` is open.
    fn counting(gate: Arc<Gate>, wait: bool) -> (Review, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let review: Review = Arc::new(move |token: Vec<u8>| {
            c.fetch_add(1, Ordering::SeqCst);
            let mut open = gate.subscribe();
            async move {
                if wait {
                    let _ = open.wait_for(|o| *o).await;
                }
                match token.first() {
                    Some(b'a') => Verdict::Allowed,
                    Some(b'f') => Verdict::Forbidden,
                    _ => Verdict::Invalid,
                }
            }
            .boxed()
        });
        (review, calls)
    }

    fn lookups(limits: Limits, review: Review) -> (Lookups, Arc<SurfaceStats>) {
        let stats = Arc::new(SurfaceStats::default());
        (Lookups::new(limits, review, stats.clone()), stats)
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_token_make_one_review() {
        let gate = gate();
        let (review, calls) = counting(gate.clone(), true);
        let (l, stats) = lookups(Limits::default(), review);
        let l = Arc::new(l);
        let waiting: Vec<_> = (0..20)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.check(b"a-scraper", None).await })
            })
            .collect();
        while stats.lookup_count(Lookup::Merged) < 19 {
            tokio::task::yield_now().await;
        }
        gate.send_replace(true);
        for w in waiting {
            assert_eq!(w.await.unwrap(), Verdict::Allowed);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(stats.lookup_count(Lookup::Reviewed), 1);
        // Then from the cache.
        assert_eq!(l.check(b"a-scraper", None).await, Verdict::Allowed);
        assert_eq!(
            (calls.load(Ordering::SeqCst), stats.lookup_count(Lookup::Cached)),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn a_flood_of_unknown_tokens_is_rate_limited_and_spares_the_known() {
        let (review, calls) = counting(gate(), false);
        let limits = Limits {
            valid_for: Duration::ZERO,
            rate: 0.0,
            burst: 3.0,
            ..Limits::default()
        };
        let (l, stats) = lookups(limits, review);
        assert_eq!(l.check(b"a-real", None).await, Verdict::Allowed);
        let mut throttled = 0;
        for i in 0..2000 {
            match l.check(format!("made-up-{i}").as_bytes(), None).await {
                Verdict::Throttled => throttled += 1,
                v => assert_eq!(v, Verdict::Invalid),
            }
        }
        // One for the real token, two of the burst for made-up ones.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(throttled, 1998);
        assert_eq!(stats.lookup_count(Lookup::RateLimited), 1998);
        // The real scraper's answer expired (valid_for 0): it is reviewed
        // again although the bucket is empty.
        assert_eq!(l.check(b"a-real", None).await, Verdict::Allowed);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // A new token is refused until the bucket refills.
        assert_eq!(l.check(b"a-new", None).await, Verdict::Throttled);
    }

    #[tokio::test]
    async fn invalid_answers_do_not_evict_valid_ones_and_expire_sooner() {
        let (review, calls) = counting(gate(), false);
        let limits = Limits {
            invalid_entries: NonZeroUsize::new(2).unwrap(),
            valid_entries: NonZeroUsize::new(2).unwrap(),
            invalid_for: Duration::ZERO,
            rate: 1e9,
            burst: 1e9,
            ..Limits::default()
        };
        let (l, _) = lookups(limits, review);
        assert_eq!(l.check(b"a1", None).await, Verdict::Allowed);
        assert_eq!(l.check(b"f1", None).await, Verdict::Forbidden);
        for i in 0..100 {
            assert_eq!(l.check(format!("x{i}").as_bytes(), None).await, Verdict::Invalid);
        }
        let before = calls.load(Ordering::SeqCst);
        assert_eq!(l.check(b"a1", None).await, Verdict::Allowed);
        assert_eq!(l.check(b"f1", None).await, Verdict::Forbidden);
        assert_eq!(calls.load(Ordering::SeqCst), before, "both still cached");
        // invalid_for 0: a rejected token is asked about again.
        assert_eq!(l.check(b"x99", None).await, Verdict::Invalid);
        assert_eq!(calls.load(Ordering::SeqCst), before + 1);
        // The valid cache is LRU, not cleared whole: a third token evicts
        // the least recently used (a1, used before f1), and only it.
        assert_eq!(l.check(b"a2", None).await, Verdict::Allowed);
        assert_eq!(l.check(b"f1", None).await, Verdict::Forbidden);
        assert_eq!(calls.load(Ordering::SeqCst), before + 2);
        assert_eq!(l.check(b"a1", None).await, Verdict::Allowed);
        assert_eq!(calls.load(Ordering::SeqCst), before + 3);
    }

    #[tokio::test]
    async fn reviews_of_unknown_tokens_in_flight_are_bounded() {
        let gate = gate();
        let (review, calls) = counting(gate.clone(), true);
        let limits = Limits {
            in_flight: 2,
            rate: 1e9,
            burst: 1e9,
            ..Limits::default()
        };
        let (l, _) = lookups(limits, review);
        let l = Arc::new(l);
        let slow: Vec<_> = ["x1", "x2"]
            .into_iter()
            .map(|t| {
                let l = l.clone();
                tokio::spawn(async move { l.check(t.as_bytes(), None).await })
            })
            .collect();
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(l.check(b"x3", None).await, Verdict::Throttled);
        gate.send_replace(true);
        for s in slow {
            assert_eq!(s.await.unwrap(), Verdict::Invalid);
        }
        assert_eq!(l.check(b"x3", None).await, Verdict::Invalid);
    }

    #[tokio::test]
    async fn one_address_spends_its_own_budget_not_everyones() {
        let (review, calls) = counting(gate(), false);
        let limits = Limits {
            rate: 0.0,
            burst: 20.0,
            peer_rate: 0.0,
            peer_burst: 5.0,
            ..Limits::default()
        };
        let (l, _) = lookups(limits, review);
        let attacker = Some(IpAddr::from([10, 0, 0, 66]));
        let scraper = Some(IpAddr::from([10, 0, 0, 7]));
        let mut throttled = 0;
        for i in 0..1000 {
            if l.check(format!("made-up-{i}").as_bytes(), attacker).await == Verdict::Throttled {
                throttled += 1;
            }
        }
        assert_eq!((calls.load(Ordering::SeqCst), throttled), (5, 995));
        // A scraper whose token rotated meanwhile is still reviewed.
        assert_eq!(l.check(b"a-rotated", scraper).await, Verdict::Allowed);
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn known_tokens_are_re_reviewed_at_a_bounded_rate_while_the_api_fails() {
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (d, c) = (down.clone(), calls.clone());
        let review: Review = Arc::new(move |_token: Vec<u8>| {
            c.fetch_add(1, Ordering::SeqCst);
            let v = if d.load(Ordering::SeqCst) {
                Verdict::Unavailable
            } else {
                Verdict::Allowed
            };
            async move { v }.boxed()
        });
        let limits = Limits {
            valid_for: Duration::ZERO,
            known_rate: 0.0,
            known_burst: 3.0,
            ..Limits::default()
        };
        let (l, _) = lookups(limits, review);
        assert_eq!(l.check(b"a-real", None).await, Verdict::Allowed);
        down.store(true, Ordering::SeqCst);
        let mut answers = std::collections::BTreeMap::new();
        for _ in 0..100 {
            *answers
                .entry(format!("{:?}", l.check(b"a-real", None).await))
                .or_insert(0) += 1;
        }
        // The first answer made it known; each re-review takes from the known budget.
        assert_eq!(calls.load(Ordering::SeqCst), 1 + 3, "{answers:?}");
    }

    #[tokio::test]
    async fn a_review_that_panics_leaves_the_in_flight_table() {
        let review: Review = Arc::new(|token: Vec<u8>| {
            async move {
                assert!(token.first() != Some(&b'p'), "a review that panics");
                Verdict::Invalid
            }
            .boxed()
        });
        let limits = Limits {
            in_flight: 1,
            rate: 1e9,
            burst: 1e9,
            peer_rate: 1e9,
            peer_burst: 1e9,
            ..Limits::default()
        };
        let (l, _) = lookups(limits, review);
        for i in 0..5 {
            assert_eq!(
                l.check(format!("panic-{i}").as_bytes(), None).await,
                Verdict::Unavailable
            );
        }
        assert_eq!(
            l.check(b"x-after", None).await,
            Verdict::Invalid,
            "not throttled by the dead reviews"
        );
    }

    #[test]
    fn keys_are_sha256() {
        // echo -n abc | sha256sum
        let hex: String = key(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

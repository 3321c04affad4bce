//! The connection table: which connection makes room for a new one.
//!
//! Every connection takes a slot from accept to close. One client address
//! holds at most a quarter of the slots (at least 8, so a small table is not
//! split): past that, its own
//! connections make room for its new ones, so one hostile pod cannot take
//! the table from the scrapers and the kubelet's probes. When the table is
//! full, a new connection closes a connection that is not serving a request
//! (idle between requests, still sending its headers, in its TLS handshake),
//! of the address holding the most slots, oldest first: that costs no one a
//! response. Failing that, it closes the request that has run longest, if
//! longer than [`PREEMPT_AFTER`] (a client not reading its response), again
//! of the address holding the most. A scrape's response is written in
//! milliseconds to a client that reads it. Only when every candidate serves
//! a younger request is the new connection refused.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};

use crate::surface::Evicted;

/// With no idle connection to close, a request running longer than this
/// loses its connection to a new one.
pub const PREEMPT_AFTER: Duration = Duration::from_secs(2);

/// One connection's requests in progress.
#[derive(Debug, Default)]
pub struct InProgress {
    /// Requests being served (0 or 1 over HTTP/1.1).
    count: AtomicUsize,
    /// When the latest began.
    since: Mutex<Option<Instant>>,
}

impl InProgress {
    fn load(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// How long the request in progress has run, if one is.
    fn running(&self, now: Instant) -> Option<Duration> {
        if self.load() == 0 {
            return None;
        }
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        since.map(|t| now.saturating_duration_since(t))
    }

    /// True if a request has been in progress for longer than `limit`.
    pub fn overdue(&self, limit: Duration) -> bool {
        self.running(Instant::now()).is_some_and(|d| d > limit)
    }
}

/// One connection's place in the table.
struct Slot {
    busy: Arc<InProgress>,
    /// Closes the connection at once.
    close: oneshot::Sender<()>,
    /// The client's address.
    peer: IpAddr,
}

/// The open connections, oldest first.
pub struct Slots {
    max: usize,
    /// Slots one address may hold.
    per_peer: usize,
    next: u64,
    open: BTreeMap<u64, Slot>,
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Served in slot `id`, after closing a connection of this kind to make room.
    Admit { id: u64, evicted: Option<Evicted> },
    /// Every slot serves a request younger than [`PREEMPT_AFTER`].
    Refuse,
}

/// Counts a request of its connection as in progress until dropped with its response body.
pub struct Busy(Arc<InProgress>);

impl Busy {
    /// Marks a request of `busy`'s connection in progress.
    pub fn enter(busy: &Arc<InProgress>) -> Busy {
        *busy.since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        busy.count.fetch_add(1, Ordering::AcqRel);
        Busy(busy.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    /// A table of `max` slots (at least 1).
    pub fn new(max: usize) -> Slots {
        let max = max.max(1);
        Slots {
            max,
            per_peer: (max / 4).max(8).min(max),
            next: 0,
            open: BTreeMap::new(),
        }
    }

    /// Admits a connection from `peer`, closing another if it must.
    pub fn admit(
        &mut self,
        peer: IpAddr,
        busy: Arc<InProgress>,
        close: oneshot::Sender<()>,
        now: Instant,
    ) -> Admission {
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        for slot in self.open.values() {
            *held.entry(slot.peer).or_default() += 1;
        }
        let own = held.get(&peer).copied().unwrap_or(0);
        let victim = if own >= self.per_peer {
            // At its share: one of its own makes room, or it is refused.
            match self.victim(now, |s| s.peer == peer, &held) {
                Some(v) => Some(v),
                None => return Admission::Refuse,
            }
        } else if self.open.len() >= self.max {
            match self.victim(now, |_| true, &held) {
                Some(v) => Some(v),
                None => return Admission::Refuse,
            }
        } else {
            None
        };
        let evicted = victim.map(|(id, kind)| {
            if let Some(slot) = self.open.remove(&id) {
                let _ = slot.close.send(());
            }
            kind
        });
        let id = self.next;
        self.next += 1;
        self.open.insert(id, Slot { busy, close, peer });
        Admission::Admit { id, evicted }
    }

    /// The connection to close among those `eligible`: from the address
    /// holding the most slots, the oldest idle one, else the request
    /// running longest past [`PREEMPT_AFTER`].
    fn victim(
        &self,
        now: Instant,
        eligible: impl Fn(&Slot) -> bool,
        held: &HashMap<IpAddr, usize>,
    ) -> Option<(u64, Evicted)> {
        let weight = |s: &Slot| held.get(&s.peer).copied().unwrap_or(0);
        let idle = self
            .open
            .iter()
            .filter(|(_, s)| eligible(s) && s.busy.load() == 0)
            // Heaviest address first; among its connections the oldest (lowest id).
            .max_by_key(|(id, s)| (weight(s), std::cmp::Reverse(**id)))
            .map(|(id, _)| (*id, Evicted::Idle));
        idle.or_else(|| {
            self.open
                .iter()
                .filter(|(_, s)| eligible(s))
                .filter_map(|(id, s)| Some((weight(s), s.busy.running(now)?, std::cmp::Reverse(*id))))
                .filter(|(_, running, _)| *running > PREEMPT_AFTER)
                .max()
                .map(|(_, _, id)| (id.0, Evicted::Slow))
        })
    }

    /// Frees a slot (a no-op for one already closed to make room).
    pub fn release(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> (Arc<InProgress>, oneshot::Sender<()>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(InProgress::default()), tx, rx)
    }

    /// Marks `busy` as serving a request that began at `at`.
    fn serving(busy: &InProgress, at: Instant) {
        busy.count.store(1, Ordering::Release);
        *busy.since.lock().unwrap() = Some(at);
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3));

    #[test]
    fn a_full_table_closes_the_oldest_idle_connection_then_the_slowest_request_and_refuses_only_young_ones() {
        let t0 = Instant::now();
        let mut slots = Slots::new(3);
        assert_eq!(slots.per_peer, 3, "a small table is not split");
        let mut held = Vec::new();
        for want in 0..3 {
            let (busy, tx, rx) = slot();
            assert_eq!(
                slots.admit(A, busy.clone(), tx, t0),
                Admission::Admit {
                    id: want,
                    evicted: None
                }
            );
            held.push((busy, rx));
        }
        // The oldest (0) serves a request: the oldest idle one (1) makes room.
        serving(&held[0].0, t0);
        let (busy, tx, rx) = slot();
        assert_eq!(
            slots.admit(A, busy.clone(), tx, t0),
            Admission::Admit {
                id: 3,
                evicted: Some(Evicted::Idle)
            }
        );
        assert!(held[1].1.try_recv().is_ok(), "connection 1 told to close");
        assert!(held[0].1.try_recv().is_err(), "a busy connection is left alone");
        held.push((busy, rx));
        // All serve requests younger than PREEMPT_AFTER: refused, nothing closed.
        serving(&held[2].0, t0 + Duration::from_millis(500));
        serving(&held[3].0, t0 + Duration::from_millis(400));
        let (busy, tx, _rx) = slot();
        assert_eq!(slots.admit(A, busy, tx, t0 + PREEMPT_AFTER), Admission::Refuse);
        assert_eq!(slots.open.len(), 3);
        // Later, the requests that ran past PREEMPT_AFTER go, longest first (0, then 3, then 2).
        let later = t0 + PREEMPT_AFTER + Duration::from_millis(600);
        for (next, closed) in [(4, 0), (5, 3), (6, 2)] {
            let (busy, tx, _rx) = slot();
            assert_eq!(
                slots.admit(A, busy.clone(), tx, later),
                Admission::Admit {
                    id: next,
                    evicted: Some(Evicted::Slow)
                }
            );
            assert!(held[closed].1.try_recv().is_ok(), "connection {closed} closed");
            serving(&busy, later);
        }
        let (busy, tx, _rx) = slot();
        assert_eq!(slots.admit(A, busy, tx, later), Admission::Refuse);
        // A closed connection frees its slot.
        slots.release(4);
        let (busy, tx, _rx) = slot();
        assert_eq!(
            slots.admit(A, busy, tx, later),
            Admission::Admit { id: 7, evicted: None }
        );
    }

    #[test]
    fn one_address_holds_a_quarter_of_the_table_and_pays_for_its_own_flood() {
        let t0 = Instant::now();
        let mut slots = Slots::new(40);
        assert_eq!(slots.per_peer, 10);
        // A takes its ten slots, all serving young requests.
        let mut a = Vec::new();
        for _ in 0..10 {
            let (busy, tx, rx) = slot();
            assert!(matches!(
                slots.admit(A, busy.clone(), tx, t0),
                Admission::Admit { evicted: None, .. }
            ));
            serving(&busy, t0);
            a.push(rx);
        }
        // An eleventh from A is refused although the table has room; B is admitted.
        let (busy, tx, _rx) = slot();
        assert_eq!(slots.admit(A, busy, tx, t0), Admission::Refuse);
        let (busy, tx, _b) = slot();
        assert!(matches!(
            slots.admit(B, busy, tx, t0),
            Admission::Admit { evicted: None, .. }
        ));
        // Once A's requests are old, its new connection closes its own oldest.
        let later = t0 + PREEMPT_AFTER * 2;
        let (busy, tx, _rx) = slot();
        assert!(matches!(
            slots.admit(A, busy, tx, later),
            Admission::Admit {
                evicted: Some(Evicted::Slow),
                ..
            }
        ));
        assert!(a[0].try_recv().is_ok(), "A's oldest closed");
        assert!(a.iter_mut().skip(1).all(|rx| rx.try_recv().is_err()));
        assert_eq!(slots.open.len(), 11);
    }

    #[test]
    fn a_full_table_takes_room_from_the_address_holding_the_most() {
        let t0 = Instant::now();
        let mut slots = Slots::new(8);
        // C (opened first), B and A hold two each, D and E one each.
        let mut rx_of = Vec::new();
        for peer in [C, C, B, B, A, A] {
            let (busy, tx, rx) = slot();
            assert!(matches!(
                slots.admit(peer, busy, tx, t0),
                Admission::Admit { evicted: None, .. }
            ));
            rx_of.push((peer, rx));
        }
        let d = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 4));
        let e = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5));
        for peer in [d, e] {
            let (busy, tx, _rx) = slot();
            assert!(matches!(
                slots.admit(peer, busy, tx, t0),
                Admission::Admit { evicted: None, .. }
            ));
        }
        // Full. A newcomer closes the oldest idle connection of an address holding two (C's first).
        let f = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 6));
        let (busy, tx, _rx) = slot();
        assert!(matches!(
            slots.admit(f, busy, tx, t0),
            Admission::Admit {
                evicted: Some(Evicted::Idle),
                ..
            }
        ));
        assert!(rx_of[0].1.try_recv().is_ok(), "C's oldest closed");
        assert!(rx_of.iter_mut().skip(1).all(|(_, rx)| rx.try_recv().is_err()));
    }
}

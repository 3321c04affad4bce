//! The watch loop's states, held to what kube-runtime's `watcher` does (its
//! JSON-only client cannot ask for protobuf, kube-rs/kube#725), for any
//! [`Object`] (Nodes, node Leases):
//!
//! - a (re)list is a streaming list (`sendInitialEvents`, KEP-3157) when the
//!   server takes one, else a paginated LIST; either way `Init`, an
//!   `InitApply` per object, and `InitDone` once the whole list is in;
//! - a failed LIST page starts the list again from its first page;
//! - then WATCH from the list's resourceVersion, with bookmarks; a watch
//!   that ends is started again from the last resourceVersion seen;
//! - 410 Gone (an ERROR event, or the answer to a WATCH) relists;
//! - a frame or line that cannot be decoded ends that watch (nothing of it
//!   is stored) and the next one resumes from the last resourceVersion.
//!
//! Errors are items of the stream, so the caller backs off after each and
//! counts it; the transport is behind [`Source`], so each behaviour has a
//! table test with a scripted one.

use std::{collections::HashMap, future::Future};

use futures::{Stream, StreamExt as _, stream};
use kube::runtime::watcher::Event;

use super::{
    Node,
    object::Object,
    proto::{
        ApiStatus, ListPage, ProtoError,
        envelope::WatchEvent,
        fingerprint::{Fingerprint, name_key},
    },
};

/// Which request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A LIST page.
    List,
    /// Starting a WATCH.
    WatchStart,
    /// A WATCH under way.
    Watch,
}

/// Why a step of the watch failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WatchError {
    /// The API answered with an error (or an ERROR event, in a watch).
    #[error("{step:?}: the API answered {} {}: {}", status.code, status.reason, status.message)]
    Api {
        /// Which request.
        step: Step,
        /// Its Status.
        status: ApiStatus,
    },
    /// The request or the stream failed below HTTP.
    #[error("{step:?}: {error}")]
    Transport {
        /// Which request.
        step: Step,
        /// What failed.
        error: String,
    },
    /// A body, frame or line that is not what it should be.
    #[error("{0}")]
    Decode(ProtoError),
    /// A response in an encoding this client does not read.
    #[error("unknown content type {0:?}")]
    UnknownContentType(String),
    /// A list or event without a resourceVersion to go on from.
    #[error("no resourceVersion to resume from")]
    NoResourceVersion,
}

impl WatchError {
    /// True for the API's 403.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, WatchError::Api { status, .. } if status.code == 403)
    }

    /// The same error, of a streaming list: a failed list, whichever request carried it.
    fn listing(self) -> WatchError {
        match self {
            WatchError::Api { status, .. } => WatchError::Api {
                step: Step::List,
                status,
            },
            WatchError::Transport { error, .. } => WatchError::Transport {
                step: Step::List,
                error,
            },
            other => other,
        }
    }

    fn is_gone(&self) -> bool {
        matches!(self, WatchError::Api { status, .. } if status.code == 410)
    }
}

/// Where a WATCH starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchFrom {
    /// After this resourceVersion.
    Version(String),
    /// With every object first, as events, then a bookmark (a streaming list).
    InitialEvents,
}

/// The LISTs and WATCHes the loop makes, of objects `K`.
pub trait Source<K: Object = Node>: Send + Sync + 'static {
    /// A WATCH's events.
    type Events: EventSource<K>;
    /// One LIST page, the first when `continue_token` is `None`.
    fn list(
        &self,
        continue_token: Option<String>,
    ) -> impl Future<Output = Result<ListPage<K>, WatchError>> + Send;
    /// Starts a WATCH.
    fn watch(&self, from: WatchFrom) -> impl Future<Output = Result<Self::Events, WatchError>> + Send;
}

/// A WATCH under way.
pub trait EventSource<K: Object = Node>: Send + 'static {
    /// The next event; `None` once the stream has ended. An update whose
    /// object has a fingerprint `known` holds may be answered with
    /// [`Received::Unchanged`] instead of being decoded.
    fn next(
        &mut self,
        known: Option<&Known>,
    ) -> impl Future<Output = Option<Result<Received<K>, WatchError>>> + Send;
}

/// An event as a WATCH delivers it.
#[derive(Clone, Debug, PartialEq)]
pub enum Received<K = Node> {
    /// Decoded, with its object's fingerprint if the encoding gives one.
    Event(WatchEvent<K>, Option<Fingerprint>),
    /// An ADDED or MODIFIED event left undecoded: its node's fingerprint is
    /// the one handed on last (a kubelet status re-post).
    Unchanged {
        /// Its resourceVersion, to resume from.
        resource_version: String,
    },
}

impl<K> From<WatchEvent<K>> for Received<K> {
    fn from(event: WatchEvent<K>) -> Received<K> {
        Received::Event(event, None)
    }
}

/// What the loop yields: an event for the view, or an update found
/// unchanged before it was decoded.
#[derive(Clone, Debug)]
// The same size as the `Event` the loop yielded before; boxing it would be an allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum Delivered<K = Node> {
    /// For the view.
    Event(Event<K>),
    /// An update that changes nothing the view keeps, not decoded.
    Unchanged,
}

/// The fingerprint of the last version of each node handed on since the last
/// complete list: an update with the same one changes nothing the view keeps.
#[derive(Debug, Default)]
pub struct Known {
    current: HashMap<u64, u64, foldhash::fast::RandomState>,
    /// What the (re)list under way delivered, in place of `current` once it is done.
    listing: HashMap<u64, u64, foldhash::fast::RandomState>,
}

impl Known {
    /// True if `f` is the fingerprint of the version of its node handed on last.
    pub fn holds(&self, f: Fingerprint) -> bool {
        self.current.get(&f.name) == Some(&f.content)
    }

    /// A node handed on to the view: its fingerprint is recorded, or, when it
    /// came without one, what was recorded for it is no longer true.
    fn handed_on<K: Object>(&mut self, object: &K, f: Option<Fingerprint>) {
        match f {
            Some(f) => {
                self.current.insert(f.name, f.content);
            }
            None => self.forget(object),
        }
    }

    fn forget<K: Object>(&mut self, object: &K) {
        if let Some(name) = object.name() {
            self.current.remove(&name_key(name));
        }
    }

    fn listed(&mut self, f: Option<Fingerprint>) {
        if let Some(f) = f {
            self.listing.insert(f.name, f.content);
        }
    }

    /// The list is done: the view holds what it delivered, and nothing else.
    fn list_done(&mut self) {
        self.current = std::mem::take(&mut self.listing);
    }
}

/// What each object gets before it is handed on (stripping what is not kept).
pub type Prepare<K = Node> = Box<dyn Fn(&mut K) + Send + Sync>;

enum State<E> {
    /// A (re)list is next: a streaming one first if `streaming`.
    Start { streaming: bool },
    /// The next LIST page; `None` for the first.
    Listing { token: Option<String> },
    /// A streaming list's initial events.
    Initial { events: E },
    /// Watching from `rv`; `None` until the WATCH is (re)started. `opened`
    /// is when it was, until its first event.
    Watching {
        rv: String,
        events: Option<E>,
        opened: Option<std::time::Instant>,
    },
}

type Item<K = Node> = Result<Delivered<K>, WatchError>;

/// How long a streaming list may go without an event before the server is
/// taken for one that ignores `sendInitialEvents` (some emulators and proxies
/// answer with a plain watch that never ends the initial events): the API
/// server sends its initial events from its cache without pause. That list
/// is then made in pages; the next relist tries a streaming list again.
pub const INITIAL_EVENTS_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// The events and errors of the watch, forever: relists, restarts and
/// resumptions are its own; the caller only backs off after errors.
/// `streaming` tries streaming lists first.
pub fn watch<K: Object, S: Source<K>>(
    source: S,
    streaming: bool,
    prepare: Prepare<K>,
) -> impl Stream<Item = Item<K>> + Send {
    let state = State::<S::Events>::Start { streaming };
    stream::unfold(
        (source, prepare, state, Known::default()),
        move |(source, prepare, state, mut known)| async move {
            let (items, next) = step(&source, &prepare, state, streaming, &mut known).await;
            Some((stream::iter(items), (source, prepare, next, known)))
        },
    )
    .flatten()
}

fn ok<K>(event: Event<K>) -> Item<K> {
    Ok(Delivered::Event(event))
}

async fn step<K: Object, S: Source<K>>(
    source: &S,
    prepare: &Prepare<K>,
    state: State<S::Events>,
    streaming: bool,
    known: &mut Known,
) -> (Vec<Item<K>>, State<S::Events>) {
    let node = |mut n: Box<K>| {
        prepare(&mut n);
        *n
    };
    // A streaming list that cannot be finished: this (re)list is made in pages instead.
    let in_pages = |why: &str| {
        tracing::info!(why, what = K::PLURAL, "streaming list given up; listing in pages");
        State::Listing { token: None }
    };
    match state {
        State::Start { streaming } => {
            // Every (re)list starts here; what a failed one delivered is not in the view.
            known.listing.clear();
            if !streaming {
                return (Vec::new(), State::Listing { token: None });
            }
            match source.watch(WatchFrom::InitialEvents).await {
                Ok(events) => (vec![ok(Event::Init)], State::Initial { events }),
                // A server without streaming lists refuses the request (422, or
                // 400/403 from some proxies; 5xx from some others): a paginated
                // LIST instead, as client-go does. Only overload (429) and a
                // failed connection are retried as they are.
                Err(WatchError::Api { status, .. }) if !matches!(status.code, 410 | 429) => {
                    tracing::debug!(code = status.code, reason = %status.reason, what = K::PLURAL, "no streaming list; listing in pages");
                    (Vec::new(), State::Listing { token: None })
                }
                Err(e) => (vec![Err(e.listing())], State::Start { streaming }),
            }
        }
        State::Listing { token } => {
            let first = token.is_none();
            match source.list(token).await {
                Ok(page) => {
                    let mut items: Vec<Item<K>> = Vec::with_capacity(page.items.len() + 2);
                    if first {
                        known.listing.clear();
                        items.push(ok(Event::Init));
                    }
                    // Fingerprints only when there is one for every node.
                    let mut fingerprints = page.fingerprints.into_iter();
                    let fingerprinted = fingerprints.len() == page.items.len();
                    for n in page.items {
                        known.listed(fingerprints.next().filter(|_| fingerprinted));
                        items.push(ok(Event::InitApply(node(Box::new(n)))));
                    }
                    match (page.continue_token, page.resource_version) {
                        (Some(token), _) => (items, State::Listing { token: Some(token) }),
                        (None, rv) if rv.is_empty() => {
                            items.push(Err(WatchError::NoResourceVersion));
                            (items, State::Start { streaming })
                        }
                        (None, rv) => {
                            known.list_done();
                            items.push(ok(Event::InitDone));
                            (items, State::watch_from(rv))
                        }
                    }
                }
                // Any failed page (an expired continue token too) starts the list again.
                Err(e) => (vec![Err(e)], State::Start { streaming }),
            }
        }
        State::Initial { mut events } => {
            let next = match tokio::time::timeout(INITIAL_EVENTS_IDLE, events.next(None)).await {
                Ok(next) => next,
                Err(_) => {
                    return (
                        Vec::new(),
                        in_pages("no event for a while before the end of the initial events"),
                    );
                }
            };
            let (event, fingerprint) = match next {
                Some(Ok(Received::Event(event, fingerprint))) => (event, fingerprint),
                // Not asked for: nothing is known during a list.
                Some(Ok(Received::Unchanged { .. })) => {
                    return (
                        Vec::new(),
                        in_pages("an undecoded event among the initial events"),
                    );
                }
                Some(Err(e)) => return (vec![Err(e.listing())], State::Start { streaming }),
                // Ended before the whole list was in: an error (so the caller
                // backs off), and this list is made in pages.
                None => {
                    return (
                        vec![Err(WatchError::Transport {
                            step: Step::List,
                            error: "the streaming list ended before its initial events did".into(),
                        })],
                        State::Listing { token: None },
                    );
                }
            };
            match event {
                WatchEvent::Added(n) => {
                    known.listed(fingerprint);
                    (vec![ok(Event::InitApply(node(n)))], State::Initial { events })
                }
                // The end of the list. Its stream is dropped: the server's deadline
                // for it was set long, for the list, and the watch that follows
                // is renewed at the usual interval.
                WatchEvent::Bookmark {
                    resource_version,
                    initial_events_end: true,
                } if !resource_version.is_empty() => {
                    known.list_done();
                    (vec![ok(Event::InitDone)], State::watch_from(resource_version))
                }
                WatchEvent::Bookmark { .. } => (Vec::new(), State::Initial { events }),
                // A change before the end of the initial events (servers before
                // 1.32, and some that serve a plain watch instead): a node
                // already handed on could not be taken back, so the list is
                // made in pages.
                WatchEvent::Modified(_) | WatchEvent::Deleted(_) => (
                    Vec::new(),
                    in_pages("a change before the end of the initial events"),
                ),
                WatchEvent::Error(status) => (
                    vec![Err(WatchError::Api {
                        step: Step::List,
                        status,
                    })],
                    State::Start { streaming },
                ),
            }
        }
        State::Watching { rv, events: None, .. } => {
            match source.watch(WatchFrom::Version(rv.clone())).await {
                Ok(events) => (
                    Vec::new(),
                    State::Watching {
                        rv,
                        events: Some(events),
                        opened: Some(std::time::Instant::now()),
                    },
                ),
                Err(e) if e.is_gone() => (vec![Err(e)], State::Start { streaming }),
                Err(e) => (vec![Err(e)], State::watch_from(rv)),
            }
        }
        State::Watching {
            rv,
            events: Some(mut events),
            opened,
        } => match events.next(Some(known)).await {
            Some(Ok(Received::Unchanged { resource_version })) => applied(
                Some(resource_version),
                events,
                Ok(Delivered::Unchanged),
                streaming,
            ),
            Some(Ok(Received::Event(WatchEvent::Added(n) | WatchEvent::Modified(n), fingerprint))) => {
                known.handed_on(&*n, fingerprint);
                let rv_of = n.resource_version().map(str::to_owned);
                applied(rv_of, events, ok(Event::Apply(node(n))), streaming)
            }
            Some(Ok(Received::Event(WatchEvent::Deleted(n), _))) => {
                known.forget(&*n);
                let rv_of = n.resource_version().map(str::to_owned);
                applied(rv_of, events, ok(Event::Delete(node(n))), streaming)
            }
            Some(Ok(Received::Event(WatchEvent::Bookmark { resource_version, .. }, _))) => {
                let rv = if resource_version.is_empty() {
                    rv
                } else {
                    resource_version
                };
                (
                    Vec::new(),
                    State::Watching {
                        rv,
                        events: Some(events),
                        opened: None,
                    },
                )
            }
            Some(Ok(Received::Event(WatchEvent::Error(status), _))) => {
                let gone = status.code == 410;
                let e = WatchError::Api {
                    step: Step::Watch,
                    status,
                };
                if gone {
                    (vec![Err(e)], State::Start { streaming })
                } else {
                    (
                        vec![Err(e)],
                        State::Watching {
                            rv,
                            events: Some(events),
                            opened: None,
                        },
                    )
                }
            }
            // The source ends a stream after an error of its own: resume from `rv`.
            Some(Err(e)) => (vec![Err(e)], State::watch_from(rv)),
            // A watch that ends at once, having sent nothing, is an error, so
            // that the caller backs off instead of asking again and again.
            None if opened.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) => (
                vec![Err(WatchError::Transport {
                    step: Step::Watch,
                    error: "the watch ended as soon as it began".into(),
                })],
                State::watch_from(rv),
            ),
            None => (Vec::new(), State::watch_from(rv)),
        },
    }
}

impl<E> State<E> {
    /// A WATCH from `rv` is next.
    fn watch_from(rv: String) -> State<E> {
        State::Watching {
            rv,
            events: None,
            opened: None,
        }
    }
}

/// An applied, deleted or unchanged object moves the watch on to its resourceVersion.
fn applied<K, E>(new: Option<String>, events: E, item: Item<K>, streaming: bool) -> (Vec<Item<K>>, State<E>) {
    match new.filter(|rv| !rv.is_empty()) {
        Some(rv) => (
            vec![item],
            State::Watching {
                rv,
                events: Some(events),
                opened: None,
            },
        ),
        None => (
            vec![Err(WatchError::NoResourceVersion)],
            State::Start { streaming },
        ),
    }
}

#[cfg(test)]
#[path = "watcher_tests.rs"]
mod tests;

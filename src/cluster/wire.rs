//! LISTs and WATCHes over HTTP (of Nodes, and of node Leases), in either
//! encoding: the requests as client-go makes them, and the responses decoded
//! by their `Content-Type` (JSON or Kubernetes protobuf) into the same pages
//! and events.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use kube::client::Body;

use super::{
    Node,
    gather::Gather,
    json,
    lease::NodeLease,
    object::Object,
    proto::{
        self, ApiStatus, Frames, Kind, ListPage, ProtoError,
        envelope::WatchEvent,
        fingerprint::{self, Peeked},
    },
    watcher::{EventSource, Known, Received, Source, Step, WatchError, WatchFrom},
};

/// A kind of object listed and watched over HTTP: its decodes in both
/// encodings, and how an update's fingerprint is read off its bytes.
pub trait Wired: Object + Kind + serde::de::DeserializeOwned + Sync {
    /// An update's resourceVersion and fingerprint off a protobuf frame,
    /// without decoding it; `None` where every update changes what is kept.
    fn peek_frame(_frame: &[u8]) -> Option<Peeked<'_>> {
        None
    }
    /// The same off a JSON line.
    fn peek_line(_line: &[u8]) -> Option<Peeked<'_>> {
        None
    }
    /// A JSON watch line.
    fn decode_line(line: &[u8]) -> Result<WatchEvent<Self>, WatchError> {
        json::decode_event(line)
    }
}

impl Wired for Node {
    fn peek_frame(frame: &[u8]) -> Option<Peeked<'_>> {
        fingerprint::peek_update(frame)
    }
    fn peek_line(line: &[u8]) -> Option<Peeked<'_>> {
        json::peek_update(line)
    }
}

/// Every renewal moves `renewTime`: nothing to fingerprint.
impl Wired for NodeLease {}

/// The collection path of the Nodes.
pub const NODES: &str = "/api/v1/nodes";

/// The collection path of the Leases in `namespace`.
pub fn leases_path(namespace: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")
}

/// How nodes and node Leases are asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// Kubernetes protobuf, with JSON accepted too (what client-go and
    /// kube-state-metrics ask for): smaller, cheaper to decode, and one
    /// JSON encoding of every Node event less for the API server.
    Protobuf,
    /// JSON only.
    Json,
}

impl Encoding {
    /// The `Accept` header.
    pub fn accept(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/vnd.kubernetes.protobuf,application/json",
            Encoding::Json => "application/json",
        }
    }

    /// As the flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "json",
        }
    }
}

/// What a response's body is, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Protobuf,
}

/// The format a `Content-Type` names; `None` for none, or the generic
/// `application/octet-stream` some emulators and proxies send, when the
/// body's first byte tells ([`sniff`]).
fn format(headers: &http::HeaderMap) -> Result<Option<Format>, WatchError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // Parameters (`;stream=watch`, `;charset=utf-8`) say nothing about the decoding.
    let media = value.split(';').next().unwrap_or_default().trim();
    match media.to_ascii_lowercase().as_str() {
        "application/json" => Ok(Some(Format::Json)),
        "application/vnd.kubernetes.protobuf" => Ok(Some(Format::Protobuf)),
        "" | "application/octet-stream" => Ok(None),
        _ => Err(WatchError::UnknownContentType(value.to_string())),
    }
}

/// The format of a body from its first byte, unambiguous for these two: JSON
/// starts with `{` (or whitespace), a protobuf object with `k8s\0` and a
/// protobuf watch frame with its length's high byte, 0 below 16 MiB.
fn sniff(first: u8) -> Format {
    if first == b'{' || first.is_ascii_whitespace() {
        Format::Json
    } else {
        Format::Protobuf
    }
}

/// The largest LIST page or error body read: a page of 100 Nodes with
/// managed fields is ~3 MB; a body past this is a broken server.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// The server-side deadline of a streaming list, which covers sending every object.
const STREAMING_LIST_TIMEOUT_SECS: u32 = 600;

/// LISTs and WATCHes of `K`s against the API server of `client`.
pub struct Http<K = Node> {
    /// The client (its read timeout gives up on a silent server).
    pub client: kube::Client,
    /// The collection's path ([`NODES`], [`leases_path`]).
    pub path: String,
    /// What to ask for.
    pub encoding: Encoding,
    /// Objects per LIST page.
    pub page_size: u32,
    /// The server-side length of each WATCH.
    pub timeout_secs: u32,
    /// What is listed and watched.
    pub kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> Http<K> {
    async fn send(&self, step: Step, query: &str) -> Result<http::Response<Body>, WatchError> {
        let request = Request::get(format!("{}?{query}", self.path))
            .header(header::ACCEPT, self.encoding.accept())
            .body(Body::empty())
            .map_err(|e| WatchError::Transport {
                step,
                error: e.to_string(),
            })?;
        let response = self
            .client
            .send(request)
            .await
            .map_err(|e| WatchError::Transport {
                step,
                error: e.to_string(),
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status();
        let format = format(response.headers()).ok().flatten();
        let body = read_all(response.into_body(), 1 << 20, step).await?;
        let format = format.or_else(|| body.first().copied().map(sniff));
        Err(WatchError::Api {
            step,
            status: error_status(code, format, &body),
        })
    }
}

/// The Status of an error response, or one made from its HTTP code.
fn error_status(code: StatusCode, format: Option<Format>, body: &[u8]) -> ApiStatus {
    let decoded = match format {
        Some(Format::Protobuf) => match proto::decode_object(body) {
            Ok(proto::Decoded::Status(s)) => Some(s),
            _ => None,
        },
        Some(Format::Json) => serde_json::from_slice::<kube::core::Status>(body)
            .ok()
            .map(|s| ApiStatus {
                code: i32::from(s.code),
                reason: s.reason,
                message: s.message,
            }),
        None => None,
    };
    let mut status = decoded.unwrap_or_default();
    if status.code == 0 {
        status.code = i32::from(code.as_u16());
    }
    if status.message.is_empty() {
        status.message = code.canonical_reason().unwrap_or("error").to_string();
    }
    status
}

async fn read_all(mut body: Body, max: usize, step: Step) -> Result<Vec<u8>, WatchError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| WatchError::Transport {
            step,
            error: e.to_string(),
        })?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > max {
                return Err(WatchError::Decode(ProtoError::FrameTooLarge {
                    len: out.len() + data.len(),
                    max,
                }));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// A JSON LIST page.
#[derive(serde::Deserialize)]
#[serde(bound = "K: serde::de::DeserializeOwned")]
struct JsonList<K> {
    #[serde(default)]
    metadata: kube::core::ListMeta,
    #[serde(default = "Vec::new")]
    items: Vec<K>,
}

impl<K: Wired> Source<K> for Http<K> {
    type Events = Events<K>;

    async fn list(&self, continue_token: Option<String>) -> Result<ListPage<K>, WatchError> {
        // No resourceVersion: a consistent read; later pages name only their token.
        let query = match &continue_token {
            Some(token) => format!("limit={}&continue={}", self.page_size, urlencode(token)),
            None => format!("limit={}", self.page_size),
        };
        let response = self.send(Step::List, &query).await?;
        let format = format(response.headers())?;
        let body = read_all(response.into_body(), MAX_BODY, Step::List).await?;
        match format.unwrap_or_else(|| sniff(body.first().copied().unwrap_or(b'{'))) {
            Format::Protobuf => match proto::decode_list_of::<K>(&body) {
                Ok(Ok(page)) => Ok(page),
                Ok(Err(status)) => Err(WatchError::Api {
                    step: Step::List,
                    status,
                }),
                Err(e) => Err(WatchError::Decode(e)),
            },
            Format::Json => {
                let list: JsonList<K> = serde_json::from_slice(&body).map_err(json::error)?;
                Ok(ListPage {
                    resource_version: list.metadata.resource_version.unwrap_or_default(),
                    continue_token: list.metadata.continue_.filter(|c| !c.is_empty()),
                    items: list.items,
                    fingerprints: Vec::new(),
                })
            }
        }
    }

    async fn watch(&self, from: WatchFrom) -> Result<Events<K>, WatchError> {
        let base = format!(
            "watch=true&allowWatchBookmarks=true&timeoutSeconds={}",
            self.timeout_secs
        );
        let query = match &from {
            WatchFrom::Version(rv) => format!("{base}&resourceVersion={}", urlencode(rv)),
            // A consistent read of the initial state, sent as events (KEP-3157).
            // The server's deadline covers sending them, so it is long, as
            // client-go's (5 to 10 minutes); the loop ends this stream at the
            // end of the list and watches on with the usual one.
            WatchFrom::InitialEvents => format!(
                "watch=true&allowWatchBookmarks=true&timeoutSeconds={}&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=",
                STREAMING_LIST_TIMEOUT_SECS.max(self.timeout_secs)
            ),
        };
        let response = self.send(Step::WatchStart, &query).await?;
        let format = format(response.headers())?;
        Ok(Events {
            body: response.into_body(),
            format,
            frames: Frames::default(),
            done: false,
            // Initial events are a list: read as fast as they come.
            gather: matches!(from, WatchFrom::Version(_)).then(Gather::default),
            kind: std::marker::PhantomData,
        })
    }
}

/// A query value, percent-encoded.
fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The events of one WATCH response.
pub struct Events<K = Node> {
    body: Body,
    /// `None` until the first byte tells, when the Content-Type did not.
    format: Option<Format>,
    /// Length-prefixed frames (protobuf) or lines (JSON) as they arrive.
    frames: Frames,
    done: bool,
    /// When to leave the socket alone for a while ([`Gather`]); `None` for
    /// a streaming list's initial events, read as fast as they come.
    gather: Option<Gather>,
    kind: std::marker::PhantomData<fn() -> K>,
}

impl<K> Events<K> {
    /// The next whole frame or line, if one is buffered.
    fn buffered(&mut self) -> Result<Option<Bytes>, ProtoError> {
        if self.format.is_none() {
            self.format = self.frames.first_byte().map(sniff);
        }
        match self.format {
            Some(Format::Protobuf) => self.frames.next_frame(),
            Some(Format::Json) => self.frames.next_line(),
            None => Ok(None),
        }
    }
}

impl<K: Wired> EventSource<K> for Events<K> {
    async fn next(&mut self, known: Option<&Known>) -> Option<Result<Received<K>, WatchError>> {
        if self.done {
            return None;
        }
        loop {
            match self.buffered() {
                Ok(Some(frame)) => {
                    if let Some(gather) = self.gather.as_mut() {
                        gather.frame();
                    }
                    let event = match self.format {
                        Some(Format::Protobuf) => decode_frame::<K>(&frame, known),
                        _ => decode_line::<K>(&frame, known),
                    };
                    if event.is_err() {
                        // Nothing after a bad frame can be trusted: the watch restarts.
                        self.done = true;
                    }
                    return Some(event);
                }
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(WatchError::Decode(e)));
                }
            }
            if let Some(gather) = self.gather.as_mut()
                && self.frames.pending() == 0
                && let Some(pause) = gather.pause(std::time::Instant::now())
            {
                tokio::time::sleep(pause).await;
                gather.paused(std::time::Instant::now());
            }
            let asked = std::time::Instant::now();
            let frame = self.body.frame().await;
            if let Some(gather) = self.gather.as_mut() {
                gather.read(asked.elapsed());
            }
            match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.frames.push(data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(WatchError::Transport {
                        step: Step::Watch,
                        error: e.to_string(),
                    }));
                }
                None => {
                    self.done = true;
                    // A JSON stream may end without a newline after its last event.
                    if self.format == Some(Format::Json)
                        && let Ok(Some(last)) = self.frames.rest()
                    {
                        return Some(decode_line::<K>(&last, known));
                    }
                    return self.frames.finish().err().map(|e| Err(WatchError::Decode(e)));
                }
            }
        }
    }
}

/// One protobuf watch frame: an update to a node whose fingerprint `known`
/// holds is not decoded (a kubelet re-post, most of a watch's events). A
/// streaming list's initial events (nothing known yet) are fingerprinted
/// too: the peek is a few µs beside the decode, and without it each node's
/// first re-post after every list would be decoded in full.
fn decode_frame<K: Wired>(frame: &[u8], known: Option<&Known>) -> Result<Received<K>, WatchError> {
    decode_unless_known(frame, known, (K::peek_frame, true), |f| {
        proto::decode_watch_event_of::<K>(f).map_err(WatchError::Decode)
    })
}

/// One JSON watch line, as [`decode_frame`], except that a streaming list's
/// initial events are not peeked: a JSON peek is a second parse, and the
/// list is what `/readyz` waits for. A node's first re-post after it is
/// decoded, and fingerprinted then.
fn decode_line<K: Wired>(line: &[u8], known: Option<&Known>) -> Result<Received<K>, WatchError> {
    decode_unless_known(line, known, (K::peek_line, false), K::decode_line)
}

/// How an encoding reads an update's resourceVersion and fingerprint without
/// decoding it, and whether it does for a streaming list's initial events
/// (nothing known yet) too.
type Peek<'a> = (fn(&'a [u8]) -> Option<Peeked<'a>>, bool);

/// `Unchanged` for an update whose fingerprint `known` holds, else the event
/// decoded, with its fingerprint when `peek` reads one.
fn decode_unless_known<'a, K>(
    bytes: &'a [u8],
    known: Option<&Known>,
    peek: Peek<'a>,
    decode: fn(&[u8]) -> Result<WatchEvent<K>, WatchError>,
) -> Result<Received<K>, WatchError> {
    let (peek, initial_too) = peek;
    if known.is_none() && !initial_too {
        return Ok(Received::Event(decode(bytes)?, None));
    }
    let peeked = peek(bytes);
    if let (Some(p), Some(known)) = (&peeked, known)
        && known.holds(p.fingerprint)
    {
        return Ok(Received::Unchanged {
            resource_version: p.resource_version.to_string(),
        });
    }
    let event = decode(bytes)?;
    Ok(Received::Event(event, peeked.map(|p| p.fingerprint)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::protobuf;

    /// A streaming list's initial events come with nothing known: protobuf
    /// still fingerprints them (so the first re-post after a list is
    /// dropped undecoded), JSON does not (its peek is a second parse).
    #[test]
    fn initial_events_are_fingerprinted_in_protobuf_only() {
        let object = crate::fake::generated_node(4, 10, "2026-01-01T00:00:00Z");
        let frame = proto::envelope::encode::watch_frame("ADDED", protobuf::node(&object));
        let want = fingerprint::peek_update(&frame[4..])
            .expect("an update")
            .fingerprint;
        match decode_frame::<Node>(&frame[4..], None) {
            Ok(Received::Event(WatchEvent::Added(_), Some(f))) => assert_eq!(f, want),
            other => panic!("protobuf: {other:?}"),
        }
        let line = serde_json::json!({"type": "ADDED", "object": object}).to_string();
        match decode_line::<Node>(line.as_bytes(), None) {
            Ok(Received::Event(WatchEvent::Added(_), None)) => {}
            other => panic!("JSON: {other:?}"),
        }
    }
}

//! The `k8s\0` + `runtime.Unknown` envelope, the objects found in it, and
//! watch events.

use prost::Message;

use super::{
    ProtoError,
    fingerprint::{self, Fingerprint},
    slim::PbNode,
};
use crate::cluster::node::Node;

/// What every protobuf object body starts with: `k8s`, then the encoding
/// style, of which `0` (a `runtime.Unknown`) is the only one defined.
pub const MAGIC: [u8; 4] = *b"k8s\0";

/// The annotation on the bookmark that ends a streaming list's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// `runtime.TypeMeta` (apiVersion 1, kind 2: the other way round from `meta.v1.TypeMeta`).
#[derive(Clone, PartialEq, Message)]
struct PbTypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// `runtime.Unknown`. Its content encoding and type are always empty (the
/// raw object is protobuf); they are declared so that the fake API server
/// writes them as the API server does.
#[derive(Clone, PartialEq, Message)]
struct PbUnknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<PbTypeMeta>,
    #[prost(bytes = "bytes", optional, tag = "2")]
    raw: Option<bytes::Bytes>,
    #[prost(string, optional, tag = "3")]
    content_encoding: Option<String>,
    #[prost(string, optional, tag = "4")]
    content_type: Option<String>,
}

/// `meta.v1.WatchEvent`.
#[derive(Clone, PartialEq, Message)]
struct PbWatchEvent {
    #[prost(string, optional, tag = "1")]
    r#type: Option<String>,
    #[prost(message, optional, tag = "2")]
    object: Option<PbRawExtension>,
}

/// `runtime.RawExtension`.
#[derive(Clone, PartialEq, Message)]
struct PbRawExtension {
    #[prost(bytes = "bytes", optional, tag = "1")]
    raw: Option<bytes::Bytes>,
}

/// `meta.v1.ListMeta`.
#[derive(Clone, PartialEq, Message)]
pub(super) struct PbListMeta {
    #[prost(string, optional, tag = "2")]
    pub(super) resource_version: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub(super) r#continue: Option<String>,
    #[prost(int64, optional, tag = "4")]
    remaining_item_count: Option<i64>,
}

impl PbListMeta {
    /// A page of `items`, with this list's resourceVersion and continue token.
    pub(super) fn page<K>(self, items: Vec<K>, fingerprints: Vec<Fingerprint>) -> ListPage<K> {
        ListPage {
            resource_version: self.resource_version.unwrap_or_default(),
            continue_token: self.r#continue.filter(|c| !c.is_empty()),
            items,
            fingerprints,
        }
    }
}

/// A kind of object the protobuf path decodes: what its envelopes name, and
/// its slim decode.
pub trait Kind: Sized {
    /// The kind an envelope of one object names (`Node`).
    const KIND: &'static str;
    /// The kind an envelope of a list page names (`NodeList`).
    const LIST_KIND: &'static str;
    /// The object out of an envelope's raw bytes.
    fn decode_raw(raw: bytes::Bytes) -> Result<Self, ProtoError>;
    /// A list page out of an envelope's raw bytes, with each item's
    /// fingerprint where the kind has them.
    fn decode_list_raw(raw: bytes::Bytes) -> Result<ListPage<Self>, ProtoError>;
}

impl Kind for Node {
    const KIND: &'static str = "Node";
    const LIST_KIND: &'static str = "NodeList";

    fn decode_raw(raw: bytes::Bytes) -> Result<Node, ProtoError> {
        let node = PbNode::decode(raw).map_err(|e| ProtoError::undecodable("Node", e))?;
        Ok(node.into())
    }

    fn decode_list_raw(raw: bytes::Bytes) -> Result<ListPage<Node>, ProtoError> {
        let fingerprints = fingerprint::of_list_items(&raw).unwrap_or_default();
        let list = PbNodeList::decode(raw).map_err(|e| ProtoError::undecodable("NodeList", e))?;
        let items = list.items.into_iter().map(Node::from).collect();
        Ok(list.metadata.unwrap_or_default().page(items, fingerprints))
    }
}

/// `core.v1.NodeList`.
#[derive(Clone, PartialEq, Message)]
struct PbNodeList {
    #[prost(message, optional, tag = "1")]
    metadata: Option<PbListMeta>,
    #[prost(message, repeated, tag = "2")]
    items: Vec<PbNode>,
}

/// `meta.v1.Status`, what an error is.
#[derive(Clone, PartialEq, Message)]
struct PbStatus {
    #[prost(string, optional, tag = "2")]
    status: Option<String>,
    #[prost(string, optional, tag = "3")]
    message: Option<String>,
    #[prost(string, optional, tag = "4")]
    reason: Option<String>,
    #[prost(int32, optional, tag = "6")]
    code: Option<i32>,
}

/// A bookmark's Node: its resourceVersion and annotations, nothing else.
#[derive(Clone, PartialEq, Message)]
struct PbBookmark {
    #[prost(message, optional, tag = "1")]
    metadata: Option<PbBookmarkMeta>,
}

#[derive(Clone, PartialEq, Message)]
struct PbBookmarkMeta {
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: std::collections::BTreeMap<String, String>,
}

/// An error the API answered with (`meta.v1.Status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiStatus {
    /// The HTTP code it stands for (410 for an expired resourceVersion).
    pub code: i32,
    /// `Expired`, `Gone`, `Forbidden`, …
    pub reason: String,
    /// For people.
    pub message: String,
}

/// An object out of an envelope.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A Node.
    Node(Box<Node>),
    /// An error.
    Status(ApiStatus),
}

/// One page of a LIST.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListPage<K = Node> {
    /// The list's resourceVersion.
    pub resource_version: String,
    /// The token for the next page; `None` on the last.
    pub continue_token: Option<String>,
    /// The objects of this page.
    pub items: Vec<K>,
    /// The fingerprint of each object, in the same order, where the encoding
    /// and kind give them (protobuf nodes); empty otherwise.
    pub fingerprints: Vec<Fingerprint>,
}

/// One watch event.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent<K = Node> {
    /// ADDED.
    Added(Box<K>),
    /// MODIFIED.
    Modified(Box<K>),
    /// DELETED: the object as it was last.
    Deleted(Box<K>),
    /// BOOKMARK: how far the watch has come.
    Bookmark {
        /// The resourceVersion to resume from.
        resource_version: String,
        /// True on the bookmark that ends a streaming list's initial events.
        initial_events_end: bool,
    },
    /// ERROR: the watch is over (410 when it fell behind).
    Error(ApiStatus),
}

/// The kind named and the raw object of an envelope.
fn open(body: &[u8]) -> Result<(String, bytes::Bytes), ProtoError> {
    let rest = body.strip_prefix(&MAGIC[..]).ok_or(ProtoError::BadMagic)?;
    let unknown = PbUnknown::decode(rest).map_err(|e| ProtoError::undecodable("runtime.Unknown", e))?;
    let kind = unknown.type_meta.and_then(|t| t.kind).unwrap_or_default();
    Ok((kind, unknown.raw.unwrap_or_default()))
}

/// [`open`], for the tests beside this module.
#[cfg(test)]
pub(super) fn tests_open(body: &[u8]) -> Result<(String, bytes::Bytes), ProtoError> {
    open(body)
}

fn status(raw: &[u8]) -> Result<ApiStatus, ProtoError> {
    let s = PbStatus::decode(raw).map_err(|e| ProtoError::undecodable("Status", e))?;
    Ok(ApiStatus {
        code: s.code.unwrap_or_default(),
        reason: s.reason.unwrap_or_default(),
        message: s.message.unwrap_or_default(),
    })
}

/// Decodes one object body (`k8s\0` + `runtime.Unknown`): a Node, or the
/// Status of an error.
pub fn decode_object(body: &[u8]) -> Result<Decoded, ProtoError> {
    let (kind, raw) = open(body)?;
    match kind.as_str() {
        "Node" => {
            let node = PbNode::decode(raw).map_err(|e| ProtoError::undecodable("Node", e))?;
            Ok(Decoded::Node(Box::new(node.into())))
        }
        "Status" => Ok(Decoded::Status(status(&raw)?)),
        _ => Err(ProtoError::UnexpectedKind {
            want: "Node",
            got: kind,
        }),
    }
}

/// Decodes a LIST body of nodes: a page, or the Status of an error.
pub fn decode_list(body: &[u8]) -> Result<Result<ListPage, ApiStatus>, ProtoError> {
    decode_list_of::<Node>(body)
}

/// Decodes a LIST body of `K`s: a page, or the Status of an error.
pub fn decode_list_of<K: Kind>(body: &[u8]) -> Result<Result<ListPage<K>, ApiStatus>, ProtoError> {
    let (kind, raw) = open(body)?;
    match kind.as_str() {
        k if k == K::LIST_KIND => Ok(Ok(K::decode_list_raw(raw)?)),
        "Status" => Ok(Err(status(&raw)?)),
        _ => Err(ProtoError::UnexpectedKind {
            want: K::LIST_KIND,
            got: kind,
        }),
    }
}

/// Decodes one watch frame of nodes.
pub fn decode_watch_event(frame: &[u8]) -> Result<WatchEvent, ProtoError> {
    decode_watch_event_of::<Node>(frame)
}

/// Decodes one watch frame of `K`s: a bare `meta.v1.WatchEvent` whose object is an envelope.
pub fn decode_watch_event_of<K: Kind>(frame: &[u8]) -> Result<WatchEvent<K>, ProtoError> {
    let event = PbWatchEvent::decode(frame).map_err(|e| ProtoError::undecodable("WatchEvent", e))?;
    let raw = event.object.and_then(|o| o.raw).unwrap_or_default();
    let kind = event.r#type.unwrap_or_default();
    let object = |raw: &[u8]| {
        let (kind, raw) = open(raw)?;
        if kind == K::KIND {
            Ok(Box::new(K::decode_raw(raw)?))
        } else {
            Err(ProtoError::UnexpectedKind {
                want: K::KIND,
                got: kind,
            })
        }
    };
    match kind.as_str() {
        "ADDED" => Ok(WatchEvent::Added(object(&raw)?)),
        "MODIFIED" => Ok(WatchEvent::Modified(object(&raw)?)),
        "DELETED" => Ok(WatchEvent::Deleted(object(&raw)?)),
        "BOOKMARK" => {
            let (kind, raw) = open(&raw)?;
            if kind != K::KIND {
                return Err(ProtoError::UnexpectedKind {
                    want: K::KIND,
                    got: kind,
                });
            }
            let meta = PbBookmark::decode(raw)
                .map_err(|e| ProtoError::undecodable("bookmark", e))?
                .metadata
                .unwrap_or_default();
            Ok(WatchEvent::Bookmark {
                resource_version: meta.resource_version.unwrap_or_default(),
                initial_events_end: meta
                    .annotations
                    .get(INITIAL_EVENTS_END)
                    .is_some_and(|v| v == "true"),
            })
        }
        "ERROR" => match open(&raw)? {
            (kind, raw) if kind == "Status" => Ok(WatchEvent::Error(status(&raw)?)),
            (kind, _) => Err(ProtoError::UnexpectedKind {
                want: "Status",
                got: kind,
            }),
        },
        _ => Err(ProtoError::UnknownEventType(kind)),
    }
}

/// Encoders for the fake API server and tests: the same bytes the API server writes.
#[cfg(any(test, feature = "fake-apiserver"))]
pub mod encode {
    use super::*;

    /// `k8s\0` + `runtime.Unknown` around `raw`, of `kind`.
    pub fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = PbUnknown {
            type_meta: Some(PbTypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw.into()),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        unknown.encode(&mut out).expect("a Vec grows");
        out
    }

    /// A watch frame: the length, then a bare WatchEvent of `type_` around `object` (an envelope).
    pub fn watch_frame(type_: &str, object: Vec<u8>) -> Vec<u8> {
        let event = PbWatchEvent {
            r#type: Some(type_.into()),
            object: Some(PbRawExtension {
                raw: Some(object.into()),
            }),
        };
        let body = event.encode_to_vec();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    /// A Status envelope.
    pub fn status(code: i32, reason: &str, message: &str) -> Vec<u8> {
        let s = PbStatus {
            status: Some("Failure".into()),
            message: Some(message.into()),
            reason: Some(reason.into()),
            code: Some(code),
        };
        envelope("v1", "Status", s.encode_to_vec())
    }

    /// A bookmark's Node envelope.
    pub fn bookmark(resource_version: &str, initial_events_end: bool) -> Vec<u8> {
        bookmark_of("v1", "Node", resource_version, initial_events_end)
    }

    /// A bookmark's envelope, of an object of `kind`.
    pub fn bookmark_of(
        api_version: &str,
        kind: &str,
        resource_version: &str,
        initial_events_end: bool,
    ) -> Vec<u8> {
        let object = PbBookmark {
            metadata: Some(PbBookmarkMeta {
                resource_version: Some(resource_version.into()),
                annotations: if initial_events_end {
                    [(INITIAL_EVENTS_END.to_string(), "true".to_string())].into()
                } else {
                    Default::default()
                },
            }),
        };
        envelope(api_version, kind, object.encode_to_vec())
    }

    /// A NodeList envelope around already encoded Node messages.
    pub fn node_list(resource_version: &str, continue_token: &str, nodes: &[impl AsRef<[u8]>]) -> Vec<u8> {
        list_of("v1", "NodeList", resource_version, continue_token, nodes)
    }

    /// A list envelope of `list_kind` around already encoded object messages.
    pub fn list_of(
        api_version: &str,
        list_kind: &str,
        resource_version: &str,
        continue_token: &str,
        items: &[impl AsRef<[u8]>],
    ) -> Vec<u8> {
        let meta = PbListMeta {
            resource_version: Some(resource_version.into()),
            r#continue: Some(continue_token.into()),
            remaining_item_count: None,
        };
        let mut raw = Vec::new();
        prost::encoding::message::encode(1, &meta, &mut raw);
        for n in items {
            let n = n.as_ref();
            prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut raw);
            prost::encoding::encode_varint(n.len() as u64, &mut raw);
            raw.extend_from_slice(n);
        }
        envelope(api_version, list_kind, raw)
    }
}

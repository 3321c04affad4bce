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
struct PbListMeta {
    #[prost(string, optional, tag = "2")]
    resource_version: Option<String>,
    #[prost(string, optional, tag = "3")]
    r#continue: Option<String>,
    #[prost(int64, optional, tag = "4")]
    remaining_item_count: Option<i64>,
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
pub struct ListPage {
    /// The list's resourceVersion.
    pub resource_version: String,
    /// The token for the next page; `None` on the last.
    pub continue_token: Option<String>,
    /// The nodes of this page.
    pub items: Vec<Node>,
    /// The fingerprint of each node, in the same order, where the encoding
    /// gives them (protobuf); empty otherwise.
    pub fingerprints: Vec<Fingerprint>,
}

/// One watch event.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// ADDED.
    Added(Box<Node>),
    /// MODIFIED.
    Modified(Box<Node>),
    /// DELETED: the node as it was last.
    Deleted(Box<Node>),
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

/// Decodes a LIST body: a page of nodes, or the Status of an error.
pub fn decode_list(body: &[u8]) -> Result<Result<ListPage, ApiStatus>, ProtoError> {
    let (kind, raw) = open(body)?;
    match kind.as_str() {
        "NodeList" => {
            let fingerprints = fingerprint::of_list_items(&raw).unwrap_or_default();
            let list = PbNodeList::decode(raw).map_err(|e| ProtoError::undecodable("NodeList", e))?;
            let meta = list.metadata.unwrap_or_default();
            Ok(Ok(ListPage {
                resource_version: meta.resource_version.unwrap_or_default(),
                continue_token: meta.r#continue.filter(|c| !c.is_empty()),
                items: list.items.into_iter().map(Node::from).collect(),
                fingerprints,
            }))
        }
        "Status" => Ok(Err(status(&raw)?)),
        _ => Err(ProtoError::UnexpectedKind {
            want: "NodeList",
            got: kind,
        }),
    }
}

/// Decodes one watch frame: a bare `meta.v1.WatchEvent` whose object is an envelope.
pub fn decode_watch_event(frame: &[u8]) -> Result<WatchEvent, ProtoError> {
    let event = PbWatchEvent::decode(frame).map_err(|e| ProtoError::undecodable("WatchEvent", e))?;
    let raw = event.object.and_then(|o| o.raw).unwrap_or_default();
    let kind = event.r#type.unwrap_or_default();
    let node = |raw: &[u8]| match decode_object(raw)? {
        Decoded::Node(node) => Ok(node),
        Decoded::Status(_) => Err(ProtoError::UnexpectedKind {
            want: "Node",
            got: "Status".into(),
        }),
    };
    match kind.as_str() {
        "ADDED" => Ok(WatchEvent::Added(node(&raw)?)),
        "MODIFIED" => Ok(WatchEvent::Modified(node(&raw)?)),
        "DELETED" => Ok(WatchEvent::Deleted(node(&raw)?)),
        "BOOKMARK" => {
            let (kind, raw) = open(&raw)?;
            if kind != "Node" {
                return Err(ProtoError::UnexpectedKind {
                    want: "Node",
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
        "ERROR" => match decode_object(&raw)? {
            Decoded::Status(s) => Ok(WatchEvent::Error(s)),
            Decoded::Node(_) => Err(ProtoError::UnexpectedKind {
                want: "Status",
                got: "Node".into(),
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
        let node = PbBookmark {
            metadata: Some(PbBookmarkMeta {
                resource_version: Some(resource_version.into()),
                annotations: if initial_events_end {
                    [(INITIAL_EVENTS_END.to_string(), "true".to_string())].into()
                } else {
                    Default::default()
                },
            }),
        };
        envelope("v1", "Node", node.encode_to_vec())
    }

    /// A NodeList envelope around already encoded Node messages.
    pub fn node_list(resource_version: &str, continue_token: &str, nodes: &[impl AsRef<[u8]>]) -> Vec<u8> {
        let meta = PbListMeta {
            resource_version: Some(resource_version.into()),
            r#continue: Some(continue_token.into()),
            remaining_item_count: None,
        };
        let mut raw = Vec::new();
        prost::encoding::message::encode(1, &meta, &mut raw);
        for n in nodes {
            let n = n.as_ref();
            prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut raw);
            prost::encoding::encode_varint(n.len() as u64, &mut raw);
            raw.extend_from_slice(n);
        }
        envelope("v1", "NodeList", raw)
    }
}

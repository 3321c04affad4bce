//! A node's fingerprint read straight off its protobuf bytes, with no
//! allocation: a keyed 64-bit digest of every field except those a kubelet
//! status re-post changes and the store never compares.
//!
//! The watch loop keeps the fingerprint of what it last handed on of each
//! node; an update with the same one is a re-post and is dropped before it
//! is decoded (most of a Node event's cost is building the node).
//!
//! Soundness rests on one rule: a field is left out only if the decoded,
//! stripped [`Node`](crate::cluster::Node) cannot hold it, or
//! [`Node::same_content`](crate::cluster::Node::same_content) ignores it.
//! Everything else is in, fields the slim decoder skips too (a superset is
//! safe: a change there costs a full decode that then finds nothing new), so
//! a field added to the API is in by default. The left-out fields:
//!
//! | message | field | why |
//! |---|---|---|
//! | ObjectMeta | 6 `resourceVersion` | every update moves it; not compared |
//! | ObjectMeta | 12 `annotations`, 13 `ownerReferences`, 14 `finalizers`, 17 `managedFields` | not decoded (`slim::PbObjectMeta`) |
//! | NodeStatus | 8 `images`, 9 `volumesInUse`, 10 `volumesAttached` | not decoded (`slim::PbNodeStatus`) |
//! | NodeCondition | 3 `lastHeartbeatTime` | not decoded: what a re-post changes |
//! | NodeCondition | 5 `reason`, 6 `message` | taken off before the store compares (`condition_changes::take_details`) |

use std::hash::{BuildHasher as _, Hasher};

use prost::encoding::decode_varint;

use super::envelope::MAGIC;

/// A node's identity and the digest of its compared content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// [`name_key`] of its name.
    pub name: u64,
    /// The digest of every field but those in the module's table.
    pub content: u64,
}

/// An ADDED or MODIFIED watch frame, read as far as the fast path needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Peeked<'a> {
    /// Its resourceVersion (not empty).
    pub resource_version: &'a str,
    /// The node's fingerprint.
    pub fingerprint: Fingerprint,
}

static KEY: std::sync::LazyLock<foldhash::quality::RandomState> = std::sync::LazyLock::new(Default::default);

/// A hasher keyed per process, for fingerprints of either encoding.
pub fn hasher() -> impl Hasher {
    KEY.build_hasher()
}

/// The key of a node name in a fingerprint table: keyed per process.
pub fn name_key(name: &str) -> u64 {
    KEY.hash_one(name)
}

/// One field of a message: its number, wire type, the whole field (tag
/// included) and its payload (for length-delimited fields, without the length).
struct Field<'a> {
    number: u64,
    whole: &'a [u8],
    payload: &'a [u8],
}

/// The fields of a message, in order; `None` at the first malformed one.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = Option<Field<'_>>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if buf.is_empty() || failed {
            return None;
        }
        let field = next_field(&mut buf);
        failed = field.is_none();
        Some(field)
    })
}

fn next_field<'a>(buf: &mut &'a [u8]) -> Option<Field<'a>> {
    let start = *buf;
    let tag = decode_varint(buf).ok()?;
    let payload_len = match tag & 7 {
        0 => {
            decode_varint(buf).ok()?;
            0
        }
        1 => 8,
        2 => usize::try_from(decode_varint(buf).ok()?).ok()?,
        5 => 4,
        _ => return None,
    };
    let payload: &[u8] = if tag & 7 == 0 {
        &[]
    } else {
        let p = buf.get(..payload_len)?;
        *buf = &buf[payload_len..];
        p
    };
    let whole = &start[..start.len() - buf.len()];
    Some(Field {
        number: tag >> 3,
        whole,
        payload,
    })
}

/// Marks where a walked sub-message begins and ends, so that the digest
/// tells one nesting from another.
const BEGIN: u64 = 0xb5e9_0000_0000_0000;
const END: u64 = 0xe4d0_ffff_ffff_ffff;

fn hash_whole(h: &mut impl Hasher, f: &Field<'_>) {
    h.write_usize(f.whole.len());
    h.write(f.whole);
}

/// The fingerprint and resourceVersion of a `core.v1.Node`'s bytes; `None`
/// if they are malformed, or the node has no name or resourceVersion (the
/// full decode then says what is wrong).
pub fn of_node(node: &[u8]) -> Option<(&str, Fingerprint)> {
    let mut h = KEY.build_hasher();
    let mut name = None;
    let mut rv = None;
    for f in fields(node) {
        let f = f?;
        match f.number {
            1 => {
                h.write_u64(BEGIN | 1);
                for m in fields(f.payload) {
                    let m = m?;
                    match m.number {
                        1 => {
                            name = Some(std::str::from_utf8(m.payload).ok()?);
                            hash_whole(&mut h, &m);
                        }
                        6 => rv = Some(std::str::from_utf8(m.payload).ok()?),
                        12 | 13 | 14 | 17 => {}
                        _ => hash_whole(&mut h, &m),
                    }
                }
                h.write_u64(END);
            }
            3 => {
                h.write_u64(BEGIN | 3);
                for s in fields(f.payload) {
                    let s = s?;
                    match s.number {
                        4 => {
                            h.write_u64(BEGIN | 4);
                            for c in fields(s.payload) {
                                let c = c?;
                                if !matches!(c.number, 3 | 5 | 6) {
                                    hash_whole(&mut h, &c);
                                }
                            }
                            h.write_u64(END);
                        }
                        8..=10 => {}
                        _ => hash_whole(&mut h, &s),
                    }
                }
                h.write_u64(END);
            }
            _ => hash_whole(&mut h, &f),
        }
    }
    let name = name.filter(|n| !n.is_empty())?;
    let rv = rv.filter(|r| !r.is_empty())?;
    Some((
        rv,
        Fingerprint {
            name: name_key(name),
            content: h.finish(),
        },
    ))
}

/// The node bytes inside an envelope (`k8s\0` + `runtime.Unknown` of kind `Node`).
fn node_in_envelope(body: &[u8]) -> Option<&[u8]> {
    let unknown = body.strip_prefix(&MAGIC[..])?;
    let mut kind = None;
    let mut raw = None;
    for f in fields(unknown) {
        let f = f?;
        match f.number {
            1 => {
                for t in fields(f.payload) {
                    let t = t?;
                    if t.number == 2 {
                        kind = Some(t.payload);
                    }
                }
            }
            2 => raw = Some(f.payload),
            _ => {}
        }
    }
    (kind? == b"Node").then_some(raw?)
}

/// An ADDED or MODIFIED watch frame's resourceVersion and node fingerprint,
/// without decoding it; `None` for any other frame, or one the full decode
/// must look at (it reports what is wrong).
pub fn peek_update(frame: &[u8]) -> Option<Peeked<'_>> {
    let mut kind = None;
    let mut raw = None;
    for f in fields(frame) {
        let f = f?;
        match f.number {
            1 => kind = Some(f.payload),
            2 => {
                for o in fields(f.payload) {
                    let o = o?;
                    if o.number == 1 {
                        raw = Some(o.payload);
                    }
                }
            }
            _ => {}
        }
    }
    if !matches!(kind?, b"ADDED" | b"MODIFIED") {
        return None;
    }
    let (resource_version, fingerprint) = of_node(node_in_envelope(raw?)?)?;
    Some(Peeked {
        resource_version,
        fingerprint,
    })
}

/// The fingerprint of each node in a `core.v1.NodeList`'s bytes, in order;
/// `None` if any is malformed.
pub fn of_list_items(list: &[u8]) -> Option<Vec<Fingerprint>> {
    let mut out = Vec::new();
    for f in fields(list) {
        let f = f?;
        if f.number == 2 {
            out.push(of_node(f.payload)?.1);
        }
    }
    Some(out)
}

#[cfg(all(test, feature = "fake-apiserver"))]
#[path = "fingerprint_tests.rs"]
mod tests;

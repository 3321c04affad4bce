//! JSON watch lines: the fingerprint of an update read off its text, and
//! the decode.
//!
//! The fingerprint is the protobuf one's ([`fingerprint`]) with the same
//! fields left out, by their JSON names, and the same rule: a field is left
//! out only if the stored node cannot hold it or the store ignores it. It is
//! a digest of the decoded values (strings unescaped), walked with serde
//! without building anything: an ignored update costs one parse of its
//! text, not a node.

use std::hash::Hasher;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{
    proto::{
        ApiStatus, ProtoError,
        envelope::{INITIAL_EVENTS_END, WatchEvent},
        fingerprint::{self, Fingerprint, Peeked},
    },
    watcher::WatchError,
};

/// A JSON decode error as a watch error.
pub fn error(e: serde_json::Error) -> WatchError {
    WatchError::Decode(ProtoError::Undecodable {
        what: "JSON",
        reason: e.to_string(),
    })
}

/// One JSON watch line: kube's `WatchEvent` over the slim object (a node, a Lease).
pub fn decode_event<K: serde::de::DeserializeOwned>(line: &[u8]) -> Result<WatchEvent<K>, WatchError> {
    use kube::api::WatchEvent as Json;
    Ok(match serde_json::from_slice::<Json<K>>(line).map_err(error)? {
        Json::Added(n) => WatchEvent::Added(Box::new(n)),
        Json::Modified(n) => WatchEvent::Modified(Box::new(n)),
        Json::Deleted(n) => WatchEvent::Deleted(Box::new(n)),
        Json::Bookmark(b) => WatchEvent::Bookmark {
            initial_events_end: b
                .metadata
                .annotations
                .get(INITIAL_EVENTS_END)
                .is_some_and(|v| v == "true"),
            resource_version: b.metadata.resource_version,
        },
        Json::Error(s) => WatchEvent::Error(ApiStatus {
            code: i32::from(s.code),
            reason: s.reason,
            message: s.message,
        }),
    })
}

/// An ADDED or MODIFIED line's resourceVersion and node fingerprint, without
/// decoding it; `None` for any other line, or one the full decode must look at.
pub fn peek_update(line: &[u8]) -> Option<Peeked<'_>> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let event = EventSeed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    if !event.update {
        return None;
    }
    let (name, resource_version, content) = event.node?;
    Some(Peeked {
        resource_version: resource_version.filter(|rv| !rv.is_empty())?,
        fingerprint: Fingerprint {
            name: fingerprint::name_key(name.filter(|n| !n.is_empty())?),
            content,
        },
    })
}

/// The fingerprint of a node's JSON (the `object` of a watch line); for tests.
#[cfg(test)]
pub fn of_node(node: &[u8]) -> Option<Fingerprint> {
    let mut de = serde_json::Deserializer::from_slice(node);
    let (name, _, content) = NodeSeed.deserialize(&mut de).ok()?;
    Some(Fingerprint {
        name: fingerprint::name_key(name?),
        content,
    })
}

/// Markers that keep one nesting apart from another in the digest.
const BEGIN_MAP: u64 = 0x6a73_0000_0000_007b;
const BEGIN_SEQ: u64 = 0x6a73_0000_0000_005b;
const END: u64 = 0x6a73_ffff_ffff_ffff;

fn hash_str(h: &mut impl Hasher, s: &str) {
    h.write_u8(b's');
    h.write_usize(s.len());
    h.write(s.as_bytes());
}

/// A key, classified by `classify` into what to do with its value, and
/// hashed unless its value is left out or kept apart.
struct Key<'h, H, F> {
    h: &'h mut H,
    classify: F,
}

impl<'de, H: Hasher, F: Fn(&str) -> Action> Visitor<'de> for Key<'_, H, F> {
    type Value = Action;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, k: &str) -> Result<Action, E> {
        let action = (self.classify)(k);
        if !matches!(action, Action::Skip | Action::Version) {
            hash_str(self.h, k);
        }
        Ok(action)
    }
}

impl<'de, H: Hasher, F: Fn(&str) -> Action> DeserializeSeed<'de> for Key<'_, H, F> {
    type Value = Action;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Action, D::Error> {
        d.deserialize_str(self)
    }
}

/// What a key's value is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Hashed, key and value.
    Hash,
    /// Left out (see the module's rule).
    Skip,
    /// `metadata.name`: hashed and kept.
    Name,
    /// `metadata.resourceVersion`: kept, not hashed.
    Version,
    /// `metadata`, walked with its own rules.
    Metadata,
    /// `status`, walked with its own rules.
    Status,
    /// `status.conditions`, each walked with the condition's rules.
    Conditions,
}

/// Any value, hashed.
struct Value<'h, H>(&'h mut H);

impl<'de, H: Hasher> Visitor<'de> for Value<'_, H> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.write_u8(if v { b't' } else { b'f' });
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.write_u8(b'i');
        self.0.write_i64(v);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.write_u8(b'u');
        self.0.write_u64(v);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.write_u8(b'd');
        self.0.write_u64(v.to_bits());
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        hash_str(self.0, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.write_u8(b'n');
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.write_u64(BEGIN_SEQ);
        while seq.next_element_seed(Value(&mut *self.0))?.is_some() {}
        self.0.write_u64(END);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.write_u64(BEGIN_MAP);
        while map
            .next_key_seed(Key {
                h: &mut *self.0,
                classify: |_: &str| Action::Hash,
            })?
            .is_some()
        {
            map.next_value_seed(Value(&mut *self.0))?;
        }
        self.0.write_u64(END);
        Ok(())
    }
}

impl<'de, H: Hasher> DeserializeSeed<'de> for Value<'_, H> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A map walked with `classify` deciding each key, hashing keys too.
struct Walk<'h, 'de, H, F> {
    h: &'h mut H,
    classify: F,
    name: &'h mut Option<&'de str>,
    version: &'h mut Option<&'de str>,
}

impl<'de, H: Hasher, F: Fn(&str) -> Action + Copy> Visitor<'de> for Walk<'_, 'de, H, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.h.write_u8(b'n');
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Conditions: each one a map with the condition's rules.
        self.h.write_u64(BEGIN_SEQ);
        while seq
            .next_element_seed(Walk {
                h: &mut *self.h,
                classify: self.classify,
                name: &mut *self.name,
                version: &mut *self.version,
            })?
            .is_some()
        {}
        self.h.write_u64(END);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.h.write_u64(BEGIN_MAP);
        while let Some(action) = map.next_key_seed(Key {
            h: &mut *self.h,
            classify: self.classify,
        })? {
            let rules: fn(&str) -> Action = match action {
                Action::Skip => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                Action::Version => {
                    *self.version = map.next_value::<Option<&'de str>>()?;
                    continue;
                }
                Action::Name => {
                    let name = map.next_value::<Option<&'de str>>()?;
                    hash_str(self.h, name.unwrap_or_default());
                    *self.name = name;
                    continue;
                }
                Action::Hash => {
                    map.next_value_seed(Value(&mut *self.h))?;
                    continue;
                }
                Action::Metadata => metadata,
                Action::Status => status,
                Action::Conditions => condition,
            };
            map.next_value_seed(Walk {
                h: &mut *self.h,
                classify: rules,
                name: &mut *self.name,
                version: &mut *self.version,
            })?;
        }
        self.h.write_u64(END);
        Ok(())
    }
}

impl<'de, H: Hasher, F: Fn(&str) -> Action + Copy> DeserializeSeed<'de> for Walk<'_, 'de, H, F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

fn node(key: &str) -> Action {
    match key {
        "metadata" => Action::Metadata,
        "status" => Action::Status,
        _ => Action::Hash,
    }
}

fn metadata(key: &str) -> Action {
    match key {
        "name" => Action::Name,
        "resourceVersion" => Action::Version,
        "annotations" | "ownerReferences" | "finalizers" | "managedFields" => Action::Skip,
        _ => Action::Hash,
    }
}

fn status(key: &str) -> Action {
    match key {
        "conditions" => Action::Conditions,
        "images" | "volumesInUse" | "volumesAttached" => Action::Skip,
        _ => Action::Hash,
    }
}

fn condition(key: &str) -> Action {
    match key {
        "lastHeartbeatTime" | "reason" | "message" => Action::Skip,
        _ => Action::Hash,
    }
}

/// A node: its name, resourceVersion and digest.
struct NodeSeed;

type NodePrint<'de> = (Option<&'de str>, Option<&'de str>, u64);

impl<'de> DeserializeSeed<'de> for NodeSeed {
    type Value = NodePrint<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let mut h = fingerprint::hasher();
        let (mut name, mut version) = (None, None);
        Walk {
            h: &mut h,
            classify: node,
            name: &mut name,
            version: &mut version,
        }
        .deserialize(d)?;
        Ok((name, version, h.finish()))
    }
}

/// A watch line, `type` and `object` in either order.
struct EventSeed;

struct Event<'de> {
    update: bool,
    node: Option<NodePrint<'de>>,
}

impl<'de> Visitor<'de> for EventSeed {
    type Value = Event<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a watch event")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut event = Event {
            update: false,
            node: None,
        };
        while let Some(key) = map.next_key::<&'de str>()? {
            match key {
                "type" => event.update = matches!(map.next_value::<&'de str>()?, "ADDED" | "MODIFIED"),
                "object" => event.node = Some(map.next_value_seed(NodeSeed)?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(event)
    }
}

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = Event<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

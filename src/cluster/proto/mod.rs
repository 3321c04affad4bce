//! The Kubernetes protobuf encoding of Nodes, decoded straight into the
//! slim [`Node`](super::Node): no k8s-openapi or k8s-pb Node is ever built.
//!
//! What the API server sends when asked for
//! `application/vnd.kubernetes.protobuf` (client-go's and kube-state-metrics'
//! `Accept`):
//! - a LIST (`Content-Type: application/vnd.kubernetes.protobuf`) is the
//!   4 bytes `k8s\0` and a `runtime.Unknown` whose `raw` is a `NodeList`
//!   ([`envelope`]);
//! - a WATCH (`…;stream=watch`) is frames of a 4-byte big-endian length and a
//!   bare `meta.v1.WatchEvent`, whose `object.raw` is again the `k8s\0`
//!   envelope around one Node, or a `Status` for an ERROR event ([`frames`]).
//!
//! Only the fields readings read are declared ([`slim`]); prost skips every
//! other one without allocating it (managed fields, images, annotations).
//! Before any of that, an update's [`fingerprint`] is read off its bytes: a
//! kubelet re-post has the fingerprint of the node as it was handed on last,
//! and is dropped undecoded.

pub mod envelope;
pub mod fingerprint;
pub mod frames;
pub mod lease;
pub mod slim;

pub use envelope::{
    ApiStatus, Decoded, Kind, ListPage, decode_list, decode_list_of, decode_object, decode_watch_event,
    decode_watch_event_of,
};
pub use frames::Frames;

/// Why a protobuf body or frame could not be used. Each is one counted watch
/// error and one log line; the stream restarts and nothing of it is stored.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The body does not start with `k8s\0`.
    #[error("not a Kubernetes protobuf object: it does not start with the k8s\\0 magic")]
    BadMagic,
    /// A frame's length prefix is past the limit.
    #[error("a watch frame of {len} bytes is over the limit of {max}")]
    FrameTooLarge {
        /// Its declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("the watch stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes of the frame that arrived.
        got: usize,
        /// Bytes it declared.
        want: usize,
    },
    /// The bytes are not the message they should be.
    #[error("undecodable {what}: {reason}")]
    Undecodable {
        /// Which message.
        what: &'static str,
        /// prost's account of it.
        reason: String,
    },
    /// The envelope holds another kind than the one asked for.
    #[error("expected a {want}, got kind {got:?}")]
    UnexpectedKind {
        /// The kind asked for.
        want: &'static str,
        /// The kind the envelope names.
        got: String,
    },
    /// A watch event of a type the API does not send.
    #[error("unknown watch event type {0:?}")]
    UnknownEventType(String),
}

impl ProtoError {
    /// A short, stable name for the `reason` attribute of the watch error count.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtoError::BadMagic => "bad_magic",
            ProtoError::FrameTooLarge { .. } => "frame_too_large",
            ProtoError::Truncated { .. } => "truncated_frame",
            ProtoError::Undecodable { .. }
            | ProtoError::UnexpectedKind { .. }
            | ProtoError::UnknownEventType(_) => "undecodable_object",
        }
    }

    fn undecodable(what: &'static str, e: prost::DecodeError) -> ProtoError {
        ProtoError::Undecodable {
            what,
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod generated_types_tests;

//! The fields of a protobuf `coordination.v1.Lease` that heartbeats read,
//! with the upstream tags (k8s.io/api coordination/v1 `generated.proto`);
//! prost skips the rest unread.

use prost::Message;

use super::{
    ProtoError,
    envelope::{Kind, ListPage, PbListMeta},
    slim::PbObjectMeta,
};
use crate::cluster::lease::NodeLease;

/// `coordination.v1.Lease`.
#[derive(Clone, PartialEq, Message)]
pub struct PbLease {
    /// `metadata`.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PbObjectMeta>,
    /// `spec`.
    #[prost(message, optional, tag = "2")]
    pub spec: Option<PbLeaseSpec>,
}

/// `coordination.v1.LeaseSpec`, without acquire time (3), transitions (5),
/// strategy (6) and preferred holder (7).
#[derive(Clone, PartialEq, Message)]
pub struct PbLeaseSpec {
    /// `holderIdentity`.
    #[prost(string, optional, tag = "1")]
    pub holder_identity: Option<String>,
    /// `leaseDurationSeconds`.
    #[prost(int32, optional, tag = "2")]
    pub lease_duration_seconds: Option<i32>,
    /// `renewTime`.
    #[prost(message, optional, tag = "4")]
    pub renew_time: Option<PbMicroTime>,
}

/// `meta.v1.MicroTime`.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct PbMicroTime {
    /// Seconds since the epoch.
    #[prost(int64, optional, tag = "1")]
    pub seconds: Option<i64>,
    /// Nanoseconds within the second (whole microseconds from the API).
    #[prost(int32, optional, tag = "2")]
    pub nanos: Option<i32>,
}

/// `coordination.v1.LeaseList`.
#[derive(Clone, PartialEq, Message)]
struct PbLeaseList {
    #[prost(message, optional, tag = "1")]
    metadata: Option<PbListMeta>,
    #[prost(message, repeated, tag = "2")]
    items: Vec<PbLease>,
}

impl From<PbLease> for NodeLease {
    fn from(l: PbLease) -> NodeLease {
        let meta = l.metadata.unwrap_or_default();
        let spec = l.spec.unwrap_or_default();
        // Go writes a zero MicroTime as an empty message (JSON: `null`): no
        // seconds is no time. The floor keeps clear of the "never" sentinel.
        let renew_us = spec.renew_time.and_then(|t| {
            let micros = t
                .seconds?
                .saturating_mul(1_000_000)
                .saturating_add(i64::from(t.nanos.unwrap_or_default() / 1_000));
            Some(micros.max(i64::MIN + 1))
        });
        NodeLease::new(
            meta.name,
            meta.resource_version,
            spec.holder_identity,
            renew_us,
            spec.lease_duration_seconds,
        )
    }
}

impl Kind for NodeLease {
    const KIND: &'static str = "Lease";
    const LIST_KIND: &'static str = "LeaseList";

    fn decode_raw(raw: bytes::Bytes) -> Result<NodeLease, ProtoError> {
        let lease = PbLease::decode(raw).map_err(|e| ProtoError::undecodable("Lease", e))?;
        Ok(lease.into())
    }

    fn decode_list_raw(raw: bytes::Bytes) -> Result<ListPage<NodeLease>, ProtoError> {
        let list = PbLeaseList::decode(raw).map_err(|e| ProtoError::undecodable("LeaseList", e))?;
        let items = list.items.into_iter().map(NodeLease::from).collect();
        Ok(list.metadata.unwrap_or_default().page(items, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero `renewTime` (an empty message in protobuf, `null` in JSON) is
    /// no renewal in both, never 1970.
    #[test]
    fn a_zero_renew_time_is_none_in_both_encodings() {
        let pb = PbLease {
            metadata: None,
            spec: Some(PbLeaseSpec {
                holder_identity: Some("n".into()),
                lease_duration_seconds: Some(40),
                renew_time: Some(PbMicroTime::default()),
            }),
        };
        let from_pb = NodeLease::decode_raw(pb.encode_to_vec().into()).expect("decodes");
        let from_json: NodeLease = serde_json::from_str(
            r#"{"spec": {"holderIdentity": "n", "leaseDurationSeconds": 40, "renewTime": null}}"#,
        )
        .expect("decodes");
        assert_eq!(from_pb.renew_us, None);
        assert_eq!(from_pb, from_json);
    }
}

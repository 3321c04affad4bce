//! What is kept of a node Lease (`coordination.k8s.io/v1`): its name,
//! resourceVersion, holder, `renewTime` and `leaseDurationSeconds`, decoded
//! straight from either encoding. Acquire time, transitions, strategy,
//! owner references and managed fields are skipped unread.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde::Deserialize;

use super::object::Object;

/// A node Lease as the heartbeat view keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "JsonLease")]
pub struct NodeLease {
    /// The Lease's (and its node's) name.
    pub name: Option<String>,
    /// Its resourceVersion.
    pub resource_version: Option<String>,
    /// `spec.holderIdentity`.
    pub holder: Option<String>,
    /// `spec.renewTime`, in Unix microseconds.
    pub renew_us: Option<i64>,
    /// `spec.leaseDurationSeconds`.
    pub duration_s: Option<i32>,
}

impl Object for NodeLease {
    const PLURAL: &'static str = "node Leases";
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

/// Empty is absent, as for the node's fields: both encodings then agree.
fn some(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl NodeLease {
    /// From its parts, reading empty strings as absent.
    pub fn new(
        name: Option<String>,
        resource_version: Option<String>,
        holder: Option<String>,
        renew_us: Option<i64>,
        duration_s: Option<i32>,
    ) -> NodeLease {
        NodeLease {
            name: some(name),
            resource_version: some(resource_version),
            holder: some(holder),
            renew_us,
            duration_s,
        }
    }
}

#[derive(Deserialize)]
struct JsonLease {
    #[serde(default)]
    metadata: JsonMeta,
    #[serde(default)]
    spec: JsonSpec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonMeta {
    name: Option<String>,
    resource_version: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSpec {
    holder_identity: Option<String>,
    lease_duration_seconds: Option<i32>,
    renew_time: Option<MicroTime>,
}

impl From<JsonLease> for NodeLease {
    fn from(j: JsonLease) -> NodeLease {
        NodeLease::new(
            j.metadata.name,
            j.metadata.resource_version,
            j.spec.holder_identity,
            j.spec.renew_time.map(|t| t.0.as_microsecond()),
            j.spec.lease_duration_seconds,
        )
    }
}

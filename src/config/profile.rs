//! Metric profiles: one flag that picks what is read, from what the shipped
//! alerts need to every family, because managed backends bill per series.

use clap::ValueEnum;

/// What a per-node family is about; profiles choose by group, so a family
/// added later falls into a profile by what it is, not by a list to update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Whether the node can take pods: Ready, conditions, cordon, taints.
    Readiness,
    /// What the node is: info, roles, creation and deletion times, labels.
    Metadata,
    /// What it offers: allocatable and capacity.
    Resources,
}

/// A named choice of families (`--metric-profile`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum MetricProfile {
    /// What the shipped alerts and the dashboard's readiness panels read, about
    /// two series a healthy node: Ready and the Ready transitions on every node;
    /// condition statuses, cordons and the taints Kubernetes sets for a node's
    /// state only while they show a problem (`--sparse-readings` on).
    Readiness,
    /// The readiness and metadata families (info, roles, created), one-hot; no resources.
    Standard,
    /// Every family.
    #[default]
    Full,
}

impl MetricProfile {
    /// True when the profile reads families of `group`.
    pub fn includes(self, group: Group) -> bool {
        match self {
            MetricProfile::Readiness => group == Group::Readiness,
            MetricProfile::Standard => group != Group::Resources,
            MetricProfile::Full => true,
        }
    }

    /// Whether `--sparse-readings` is on when not given.
    pub fn sparse_by_default(self) -> bool {
        self == MetricProfile::Readiness
    }

    /// True when the transitions of condition `type_` are counted. The
    /// readiness profile counts Ready's only: the flapping alert reads them,
    /// and a counter must be on every node, always, for `increase()` to see
    /// its first step.
    pub fn counts_transitions_of(self, type_: &str) -> bool {
        self != MetricProfile::Readiness || type_ == crate::readings::READY
    }

    /// True when a taint with `key` is read. The readiness profile reads the
    /// taints Kubernetes itself puts on a node for its state (unreachable,
    /// not-ready, pressure, cordon, cloud shutdown): a healthy node has none.
    pub fn reads_taint(self, key: &str) -> bool {
        self != MetricProfile::Readiness || is_node_state_taint(key)
    }

    /// The profile's name as the flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricProfile::Readiness => "readiness",
            MetricProfile::Standard => "standard",
            MetricProfile::Full => "full",
        }
    }
}

/// Taints the node lifecycle controller, the kubelet and the cloud node
/// controller set to say what state a node is in.
pub fn is_node_state_taint(key: &str) -> bool {
    key.starts_with("node.kubernetes.io/") || key.starts_with("node.cloudprovider.kubernetes.io/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_nest() {
        for group in [Group::Readiness, Group::Metadata, Group::Resources] {
            let r = MetricProfile::Readiness.includes(group);
            let s = MetricProfile::Standard.includes(group);
            assert!(!r || s, "{group:?}: readiness ⊆ standard");
            assert!(MetricProfile::Full.includes(group));
        }
        assert!(!MetricProfile::Standard.includes(Group::Resources));
        assert!(!MetricProfile::Readiness.includes(Group::Metadata));
    }

    #[test]
    fn readiness_narrows_transitions_and_taints_and_the_others_do_not() {
        let cases = [
            ("node.kubernetes.io/unreachable", true),
            ("node.kubernetes.io/not-ready", true),
            ("node.kubernetes.io/unschedulable", true),
            ("node.cloudprovider.kubernetes.io/shutdown", true),
            ("nvidia.com/gpu", false),
            ("ToBeDeletedByClusterAutoscaler", false),
            ("dedicated", false),
        ];
        for (key, read) in cases {
            assert_eq!(MetricProfile::Readiness.reads_taint(key), read, "{key}");
            assert!(MetricProfile::Standard.reads_taint(key));
            assert!(MetricProfile::Full.reads_taint(key));
        }
        assert!(MetricProfile::Readiness.counts_transitions_of("Ready"));
        assert!(!MetricProfile::Readiness.counts_transitions_of("MemoryPressure"));
        assert!(MetricProfile::Full.counts_transitions_of("MemoryPressure"));
        assert!(MetricProfile::Readiness.sparse_by_default());
        assert!(!MetricProfile::Full.sparse_by_default());
        assert!(!MetricProfile::Standard.sparse_by_default());
    }
}

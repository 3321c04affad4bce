//! Which node labels become attributes, and under which keys: the label key
//! as it is in OTLP (the semantic conventions' `k8s.node.label.<key>`), and
//! kube-state-metrics' `label_<key>` in that naming. `/metrics` sanitizes the
//! OTel keys as every Prometheus translation does; two labels that would meet
//! there are refused or resolved here, so both outputs carry the same labels.

use std::collections::BTreeMap;

use crate::cluster::Node;
use globset::{Glob, GlobSet, GlobSetBuilder};

/// Why a label allowlist was refused.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// A pattern is not a valid glob.
    #[error("--node-labels: invalid pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    /// Two listed keys would become the same Prometheus label.
    #[error("--node-labels: {a:?} and {b:?} would both become the Prometheus label {key:?}")]
    Collision { a: String, b: String, key: String },
}

/// How label attributes are named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelKeys {
    /// `k8s.node.label.<key>`, the key as it is (OTel naming).
    #[default]
    Semconv,
    /// `k8s.node.label.<key>` with every character Google's Telemetry API
    /// refuses in an attribute key (other than ASCII letters, digits, `_` and
    /// `.`) as `_`: `k8s.node.label.topology.kubernetes.io_zone`. Cloud
    /// Monitoring keeps the dots, so PromQL quotes it as a label name.
    SemconvGoogle,
    /// `label_<key>` as kube-state-metrics spells it: sanitized, then snake-cased.
    KubeStateMetrics,
}

/// Every character other than ASCII letters, digits and `_` becomes `_`: a
/// Prometheus label name from a label key (what `/metrics` makes of
/// `k8s.node.label.<key>`, and kube-state-metrics' `SanitizeLabelName`).
pub fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// kube-state-metrics' `toSnakeCase`: `_` between a lower-case letter or
/// digit and the capital after it (regex `([a-z0-9])([A-Z])`, matches not
/// overlapping), then all lower case. `nodeType` → `node_type`, `aBC` → `a_bc`.
fn snake_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let lower_or_digit = c.is_ascii_lowercase() || c.is_ascii_digit();
        if lower_or_digit && chars.get(i + 1).is_some_and(char::is_ascii_uppercase) {
            out.push(c);
            out.push('_');
            out.push(chars[i + 1]);
            i += 2;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out.to_lowercase()
}

impl LabelKeys {
    /// The attribute key of label `key`.
    pub fn attribute(self, key: &str) -> String {
        match self {
            LabelKeys::Semconv => format!("k8s.node.label.{key}"),
            LabelKeys::SemconvGoogle => {
                let key: String = key
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("k8s.node.label.{key}")
            }
            LabelKeys::KubeStateMetrics => format!("label_{}", snake_case(&sanitize(key))),
        }
    }

    /// The Prometheus label the attribute of `key` becomes on `/metrics`.
    pub fn prometheus(self, key: &str) -> String {
        match self {
            LabelKeys::Semconv | LabelKeys::SemconvGoogle => format!("k8s_node_label_{}", sanitize(key)),
            LabelKeys::KubeStateMetrics => self.attribute(key),
        }
    }
}

/// The allowlist of `--node-labels`: exact keys and globs.
#[derive(Clone, Debug, Default)]
pub struct LabelSelector {
    globs: Option<GlobSet>,
    exact: Vec<String>,
    keys: LabelKeys,
}

impl LabelSelector {
    /// Builds the selector. Exact keys that would become the same Prometheus
    /// label are an error now; glob matches that would are resolved at read
    /// time (the lexically first key wins, in both outputs), since they are
    /// only known then. kube-state-metrics renames such labels `_conflictN`
    /// instead; a name that depends on which other labels exist cannot be
    /// written in a rule.
    pub fn new(patterns: &[String], keys: LabelKeys) -> Result<LabelSelector, LabelError> {
        let mut exact: Vec<String> = Vec::new();
        let mut builder = GlobSetBuilder::new();
        let mut any_glob = false;
        for p in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            if p.contains(['*', '?', '[', '{']) {
                let glob = Glob::new(p).map_err(|e| LabelError::BadPattern {
                    pattern: p.to_string(),
                    reason: e.to_string(),
                })?;
                builder.add(glob);
                any_glob = true;
            } else if !exact.iter().any(|e| e == p) {
                if let Some(other) = exact.iter().find(|e| keys.prometheus(e) == keys.prometheus(p)) {
                    return Err(LabelError::Collision {
                        a: other.clone(),
                        b: p.to_string(),
                        key: keys.prometheus(p),
                    });
                }
                exact.push(p.to_string());
            }
        }
        let globs = if any_glob {
            Some(builder.build().map_err(|e| LabelError::BadPattern {
                pattern: patterns.join(","),
                reason: e.to_string(),
            })?)
        } else {
            None
        };
        Ok(LabelSelector { globs, exact, keys })
    }

    /// True when no label is selected.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_none()
    }

    /// True if label `key` is selected.
    pub fn matches(&self, key: &str) -> bool {
        self.exact.iter().any(|e| e == key) || self.globs.as_ref().is_some_and(|g| g.is_match(key))
    }

    /// The node's selected labels as (attribute key, value), sorted by the
    /// Prometheus label they become.
    pub fn select<'a>(&self, node: &'a Node) -> Vec<(String, &'a str)> {
        if self.is_empty() {
            return Vec::new();
        }
        // Labels iterate in key order, so the lexically first key wins a collision.
        let mut out: BTreeMap<String, (String, &'a str)> = BTreeMap::new();
        for (k, v) in node.metadata.labels.iter().flatten() {
            if self.matches(k) {
                out.entry(self.keys.prometheus(k))
                    .or_insert_with(|| (self.keys.attribute(k), v.as_str()));
            }
        }
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(labels: &[(&str, &str)]) -> Node {
        let mut n = crate::readings::test_nodes::node("n", None);
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    }

    fn sel(patterns: &[&str]) -> Result<LabelSelector, LabelError> {
        sel_as(patterns, LabelKeys::Semconv)
    }

    fn sel_as(patterns: &[&str], keys: LabelKeys) -> Result<LabelSelector, LabelError> {
        LabelSelector::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>(), keys)
    }

    #[test]
    fn sanitizes_deterministically() {
        for (key, want) in [
            ("topology.kubernetes.io/zone", "topology_kubernetes_io_zone"),
            ("cloud.google.com/gke-nodepool", "cloud_google_com_gke_nodepool"),
            ("team", "team"),
            ("ünï", "_n_"),
        ] {
            assert_eq!(sanitize(key), want);
        }
    }

    #[test]
    fn exact_keys_and_globs() {
        let node = labelled(&[
            ("topology.kubernetes.io/zone", "z1"),
            ("topology.kubernetes.io/region", "r1"),
            ("cloud.google.com/gke-nodepool", "pool-a"),
            ("kubernetes.io/hostname", "n"),
        ]);
        let s = sel(&["cloud.google.com/gke-nodepool", "topology.kubernetes.io/*"]).unwrap();
        assert_eq!(
            s.select(&node),
            vec![
                (
                    "k8s.node.label.cloud.google.com/gke-nodepool".to_string(),
                    "pool-a"
                ),
                ("k8s.node.label.topology.kubernetes.io/region".to_string(), "r1"),
                ("k8s.node.label.topology.kubernetes.io/zone".to_string(), "z1"),
            ]
        );
        assert!(sel(&[]).unwrap().select(&node).is_empty());
        assert!(sel(&["missing"]).unwrap().select(&node).is_empty());
    }

    #[test]
    fn colliding_keys_are_refused_at_start_and_resolved_for_globs() {
        assert!(matches!(sel(&["a.b", "a_b"]), Err(LabelError::Collision { .. })));
        assert!(sel(&["a.b", "a.b"]).is_ok(), "a repeated key is not a collision");
        assert!(matches!(sel(&["[z"]), Err(LabelError::BadPattern { .. })));
        let node = labelled(&[("a.b", "dot"), ("a_b", "underscore")]);
        assert_eq!(
            sel(&["a*"]).unwrap().select(&node),
            vec![("k8s.node.label.a.b".to_string(), "dot")]
        );
        // Snake-casing makes more keys meet in kube-state-metrics naming.
        assert!(sel(&["nodeType", "node_type"]).is_ok());
        assert!(matches!(
            sel_as(&["nodeType", "node_type"], LabelKeys::KubeStateMetrics),
            Err(LabelError::Collision { .. })
        ));
    }

    #[test]
    fn kube_state_metrics_spelling() {
        // kube-state-metrics' internal/store/utils.go: label_ + toSnakeCase(SanitizeLabelName(key)).
        for (key, want) in [
            ("topology.kubernetes.io/zone", "label_topology_kubernetes_io_zone"),
            (
                "cloud.google.com/gke-nodepool",
                "label_cloud_google_com_gke_nodepool",
            ),
            ("nodeType", "label_node_type"),
            ("example.com/GPUModel", "label_example_com_gpumodel"),
            ("aBC", "label_a_bc"),
            ("aBcD", "label_a_bc_d"),
            ("v1Beta", "label_v1_beta"),
            ("Team", "label_team"),
            ("ünï", "label__n_"),
        ] {
            assert_eq!(LabelKeys::KubeStateMetrics.attribute(key), want, "{key}");
            assert_eq!(LabelKeys::KubeStateMetrics.prometheus(key), want, "{key}");
        }
        assert_eq!(
            LabelKeys::Semconv.prometheus("topology.kubernetes.io/zone"),
            "k8s_node_label_topology_kubernetes_io_zone"
        );
        assert_eq!(
            LabelKeys::SemconvGoogle.attribute("topology.kubernetes.io/zone"),
            "k8s.node.label.topology.kubernetes.io_zone"
        );
        assert_eq!(
            LabelKeys::SemconvGoogle.attribute("cloud.google.com/gke-nodepool"),
            "k8s.node.label.cloud.google.com_gke_nodepool"
        );
        assert_eq!(
            LabelKeys::SemconvGoogle.prometheus("topology.kubernetes.io/zone"),
            LabelKeys::Semconv.prometheus("topology.kubernetes.io/zone")
        );
    }
}

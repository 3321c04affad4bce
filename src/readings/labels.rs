//! Which node labels become attributes, and under which sanitized keys.

use std::collections::BTreeMap;

use crate::cluster::Node;
use globset::{Glob, GlobSet, GlobSetBuilder};

/// Why a label allowlist was refused.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// A pattern is not a valid glob.
    #[error("--node-labels: invalid pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    /// Two listed keys sanitize to the same attribute key.
    #[error("--node-labels: {a:?} and {b:?} would both become the attribute key {key:?}")]
    Collision { a: String, b: String, key: String },
}

/// A label key as an attribute-key suffix: every character other than ASCII
/// letters, digits and `_` becomes `_` (as kube-state-metrics does for `label_*`).
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

/// The allowlist of `--node-labels`: exact keys and globs.
#[derive(Clone, Debug, Default)]
pub struct LabelSelector {
    globs: Option<GlobSet>,
    exact: Vec<String>,
}

impl LabelSelector {
    /// Builds the selector. Exact keys that would collide once sanitized are an
    /// error now; glob matches that collide are resolved at read time (the
    /// lexically first key wins), since they are only known then.
    pub fn new(patterns: &[String]) -> Result<LabelSelector, LabelError> {
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
                if let Some(other) = exact.iter().find(|e| sanitize(e) == sanitize(p)) {
                    return Err(LabelError::Collision {
                        a: other.clone(),
                        b: p.to_string(),
                        key: sanitize(p),
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
        Ok(LabelSelector { globs, exact })
    }

    /// True when no label is selected.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_none()
    }

    /// True if label `key` is selected.
    pub fn matches(&self, key: &str) -> bool {
        self.exact.iter().any(|e| e == key) || self.globs.as_ref().is_some_and(|g| g.is_match(key))
    }

    /// The node's selected labels as (sanitized key, value), sorted by key.
    pub fn select<'a>(&self, node: &'a Node) -> Vec<(String, &'a str)> {
        if self.is_empty() {
            return Vec::new();
        }
        // Labels iterate in key order, so the lexically first key wins a collision.
        let mut out: BTreeMap<String, &'a str> = BTreeMap::new();
        for (k, v) in node.metadata.labels.iter().flatten() {
            if self.matches(k) {
                out.entry(sanitize(k)).or_insert(v.as_str());
            }
        }
        out.into_iter().collect()
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
        LabelSelector::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
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
                ("cloud_google_com_gke_nodepool".to_string(), "pool-a"),
                ("topology_kubernetes_io_region".to_string(), "r1"),
                ("topology_kubernetes_io_zone".to_string(), "z1"),
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
            vec![("a_b".to_string(), "dot")]
        );
    }
}

//! kube-state-metrics naming, held to kube-state-metrics' own node test
//! cases (`tests/ksm/`: `TestNodeStore` of a pinned release, as data). Each
//! case's Node is served by the fake API server, the exporter runs with
//! `--metric-naming kube-state-metrics --metric-profile full`, and its
//! `/metrics` is compared, family by family and series by series, with the
//! case's expected series (with `--optional-families` naming every optional
//! family, and without it they must not be served): every family the parity table in docs/metrics.md
//! calls identical must be equal, every family it calls absent must not be
//! served, and the table must name every node family kube-state-metrics has.

use std::collections::{BTreeMap, BTreeSet};

use kube_node_status::fake::{FakeApiServer, FakeOptions};
use serde_json::Value;

use crate::common::{self, Exporter};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The series of `family` in a text exposition (by exact name: ours has
/// families kube-state-metrics lacks whose names start like its own), as a
/// multiset: sorted, duplicates kept. Values are compared as numbers: Go
/// writes 1e+16 where we write 10000000000000000.
fn series_of(text: &str, family: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut out: Vec<String> = common::parse(&lines.join("\n"))
        .into_iter()
        .filter(|s| s.name == family)
        .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
        .collect();
    out.sort();
    out
}

/// Cases of this project's own, in kube-state-metrics' form, for families
/// its cases do not cover.
fn own_cases() -> Vec<Value> {
    vec![serde_json::json!({
        "name": "own-deletion-timestamp",
        "index": "own-0",
        "node": {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "127.0.0.1", "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        },
        "families": ["kube_node_deletion_timestamp", "kube_node_annotations"],
        "want": "kube_node_deletion_timestamp{node=\"127.0.0.1\"} 1.7672256e+09",
    })]
}

/// The parity table: kube-state-metrics node family → our verdict
/// (`identical`, `absent`, `differs`), read from docs/metrics.md.
pub(crate) fn parity() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    let table = doc.split("<!-- ksm-parity -->").nth(1).expect(
        "docs/metrics.md has the kube-state-metrics parity table between <!-- ksm-parity --> markers",
    );
    table
        .lines()
        .filter(|l| l.starts_with("| `kube_node_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_string(),
                cells[2].trim_matches('*').to_string(),
            )
        })
        .collect()
}

#[test]
fn the_parity_table_names_every_node_family_kube_state_metrics_has() {
    let families: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/ksm/node_families.json")).unwrap())
            .unwrap();
    let theirs: BTreeSet<String> = families
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    let table = parity();
    let named: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        named, theirs,
        "the parity table in docs/metrics.md, against tests/ksm/node_families.json"
    );
    for (family, verdict) in &table {
        assert!(
            ["identical", "absent", "differs"].contains(&verdict.as_str()),
            "{family}: {verdict:?} is not identical, absent or differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_state_metrics_own_node_cases_through_the_real_path() {
    let mut cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/ksm/node_cases.json")).unwrap())
            .unwrap();
    let upstream = cases.len();
    cases.extend(own_cases());
    let table = parity();
    let mut wrong = Vec::new();
    let mut compared = 0;
    // Identical families compared with series at least once, and absent ones checked.
    let mut shown: BTreeSet<String> = BTreeSet::new();
    let mut unservable = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let api = FakeApiServer::start(FakeOptions {
            nodes: 0,
            ..Default::default()
        })
        .await
        .expect("fake API server starts");
        if case["node"]["metadata"]["name"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            // A Node without a name: the API server refuses to store one
            // (metadata.name is required), so no watch ever delivers it.
            // kube-state-metrics' store is fed the Go object directly.
            assert!(
                !api.put_node(case["node"].clone()),
                "{name}: a nameless node is refused"
            );
            unservable.push(name.to_string());
            continue;
        }
        // The API server gives every object a uid; kube-state-metrics' cases,
        // fed to its store directly, have none. With one, a uid label on a
        // family kube-state-metrics does not label so would show as a difference.
        let mut node = case["node"].clone();
        if node["metadata"]["uid"].is_null() {
            node["metadata"]["uid"] = format!("ksm-case-{}", case["index"]).into();
        }
        assert!(api.put_node(node), "{name}: the node is served");
        let args = [
            "--metric-naming",
            "kube-state-metrics",
            "--metric-profile",
            "full",
            "--metrics-exporter",
            "prometheus",
        ];
        let optional = kube_node_status::config::OPTIONAL_FAMILIES;
        let listed = |f: &Value| optional.contains(&f.as_str().unwrap_or_default());
        if case["families"].as_array().unwrap().iter().any(listed) {
            // Served only when asked for: not without the flag.
            let exporter = Exporter::start_ready(&api.kubeconfig(), &args, &[]).await;
            let (_, body) = exporter.get("/metrics").await;
            for family in optional {
                if !series_of(&body, family).is_empty() {
                    wrong.push(format!("{name} {family}: served without --optional-families"));
                }
            }
        }
        let all = optional.join(",");
        let with_optional: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--optional-families", &all])
            .collect();
        let exporter = Exporter::start_ready(&api.kubeconfig(), &with_optional, &[]).await;
        let (_, body) = exporter.get("/metrics").await;
        for (family, verdict) in &table {
            if verdict == "absent" {
                if !series_of(&body, family).is_empty() {
                    wrong.push(format!("{name} {family}: documented absent, but served"));
                }
                shown.insert(family.clone());
            }
        }
        let want = case["want"].as_str().unwrap();
        for family in case["families"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
        {
            let ours = series_of(&body, family);
            let theirs: Vec<String> = series_of(want, family);
            match table.get(family).map(String::as_str) {
                Some("identical") => {
                    compared += 1;
                    if !theirs.is_empty() {
                        shown.insert(family.to_string());
                    }
                    if ours != theirs {
                        wrong.push(format!(
                            "{name} {family}:\n  ours:   {:?}\n  theirs: {:?}",
                            ours.iter().filter(|x| !theirs.contains(x)).collect::<Vec<_>>(),
                            theirs.iter().filter(|x| !ours.contains(x)).collect::<Vec<_>>()
                        ));
                    }
                }
                Some("absent") if !ours.is_empty() => wrong.push(format!(
                    "{name} {family}: documented absent, but served: {ours:?}"
                )),
                Some("absent" | "differs") => {}
                _ => wrong.push(format!("{name} {family}: not in the parity table")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {compared} (case, family) pairs differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(
        unservable,
        ["case-1-empty-node"],
        "only the nameless node cannot be served"
    );
    eprintln!(
        "kube-state-metrics node cases: {upstream} of theirs and {} of ours ({} not servable: {unservable:?}), {compared} (case, family) pairs identical",
        cases.len() - upstream,
        unservable.len()
    );
}

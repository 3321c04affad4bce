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

/// One series: its name, its labels, its value.
type Series = (String, BTreeMap<String, String>, f64);

/// The series of `family` in a text exposition (by exact name: ours has
/// families kube-state-metrics lacks whose names start like its own).
fn series_of(text: &str, family: &str) -> BTreeSet<String> {
    common::parse(
        &text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .into_iter()
    .filter(|s| s.name == family)
    .map(|s| {
        let series: Series = (s.name, s.labels, s.value);
        // Values as numbers: Go writes 1e+16 where we write 10000000000000000.
        format!("{}{:?} {}", series.0, series.1, series.2)
    })
    .collect()
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
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/ksm/node_cases.json")).unwrap())
            .unwrap();
    let table = parity();
    let mut wrong = Vec::new();
    let mut compared = 0;
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
        let want = case["want"].as_str().unwrap();
        for family in case["families"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
        {
            let ours = series_of(&body, family);
            let theirs = series_of(want, family);
            match table.get(family).map(String::as_str) {
                Some("identical") => {
                    compared += 1;
                    if ours != theirs {
                        wrong.push(format!(
                            "{name} {family}:\n  ours:   {:?}\n  theirs: {:?}",
                            ours.difference(&theirs).collect::<Vec<_>>(),
                            theirs.difference(&ours).collect::<Vec<_>>()
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
        "kube-state-metrics node cases: {} cases ({} not servable: {unservable:?}), {compared} (case, family) pairs identical",
        cases.len(),
        unservable.len()
    );
}

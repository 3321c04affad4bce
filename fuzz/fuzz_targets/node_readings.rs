//! Any bytes as a Node from the API: decoding may fail, but nothing that
//! decodes may panic in stripping or in any reading.
#![no_main]

use kube_node_status::{
    cluster::{Node, Seen, condition_changes, strip_keeping},
    readings::{
        self, ClusterSummary, ResourceList,
        labels::{LabelKeys, LabelSelector},
    },
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut node) = serde_json::from_slice::<Node>(data) else {
        return;
    };
    strip_keeping(
        &mut node,
        &|k| k.starts_with(readings::ROLE_LABEL_PREFIX) || k.len() % 2 == 0,
        data.len() % 2 == 0,
    );
    // What the watch loop does before storing; a node compared with itself has
    // changed nothing, live or across a relist.
    let details = condition_changes::take_details(&mut node);
    let seen = Seen::of(&node);
    for across_gap in [false, true] {
        let now = std::time::SystemTime::now();
        assert!(condition_changes::changes(Some(&seen), &node, &details, now, across_gap).is_empty());
    }
    let _ = readings::node_name(&node);
    let conditions = readings::conditions(&node);
    // One reading per condition type, whatever the object repeats.
    for (i, c) in conditions.iter().enumerate() {
        assert!(!c.type_.is_empty());
        assert!(conditions[..i].iter().all(|seen| seen.type_ != c.type_));
    }
    let _ = (readings::ready_status(&node), readings::is_ready(&node));
    let _ = (readings::unschedulable(&node), readings::taints(&node));
    let _ = readings::info(&node);
    for list in [ResourceList::Allocatable, ResourceList::Capacity] {
        for r in readings::resources(&node, list) {
            assert!(!r.value.is_nan(), "{} parsed as NaN", r.name);
            assert_eq!(readings::resource(&node, list, r.name), Some(r.value));
        }
    }
    let _ = (readings::created(&node), readings::deletion_timestamp(&node));
    let _ = readings::roles(&node);
    for keys in [
        LabelKeys::Semconv,
        LabelKeys::SemconvGoogle,
        LabelKeys::KubeStateMetrics,
    ] {
        if let Ok(selector) = LabelSelector::new(&["*".to_string()], keys) {
            let _ = selector.select(&node);
        }
    }
    let summary = ClusterSummary::of([&node]);
    assert_eq!(summary.total(), 1);
    assert!((0.0..=1.0).contains(&summary.not_ready_fraction()));
});

//! Leader election against the fake API server's Leases: of two replicas
//! only one ever exports node readings (the scenario: `common::failover`).

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_both_export_and_fail_over_within_the_lease_duration() {
    let api = common::fake_api(20).await;
    let leaders = common::failover::never_two_exporters(&api.kubeconfig()).await;
    let lease = api
        .lease("monitoring", "kube-node-status")
        .expect("the lease exists");
    let transitions = lease["spec"]["leaseTransitions"].as_u64().unwrap_or(0);
    assert_eq!(transitions as usize, leaders.len(), "{lease}");
}

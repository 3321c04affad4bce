//! The fake API server speaks the real protocol: checked with kube's own client
//! (the same code real tools use against a real API server) and raw HTTP.

use crate::common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{ListParams, WatchEvent, WatchParams},
};
use kube_node_status::fake::{FakeApiServer, FakeOptions, kube_config_for};

async fn list_rv(api: &Api<Node>) -> String {
    let list = api.list(&ListParams::default()).await.unwrap();
    list.metadata.resource_version.unwrap()
}

async fn client(server: &FakeApiServer) -> Client {
    Client::try_from(kube_config_for(server).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_paginates_with_limit_and_continue() {
    let server = common::fake_api(7).await;
    let api: Api<Node> = Api::all(client(&server).await);
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(3);
    let mut pages = 0;
    let mut list_rv = None;
    let mut remaining = Vec::new();
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        list_rv.get_or_insert(page.metadata.resource_version.clone().unwrap());
        names.extend(page.items.iter().map(|n| n.metadata.name.clone().unwrap()));
        remaining.push(page.metadata.remaining_item_count);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    // What is left after each page, as the API server counts it.
    assert_eq!(remaining, [Some(4), Some(1), None]);
    let mut want = server.node_names();
    want.sort();
    assert_eq!(names, want);
    let node = &api.list(&ListParams::default()).await.unwrap().items[0];
    let size = serde_json::to_vec(node).unwrap().len();
    assert!(size > 12_000, "a realistic node is about 15 KB, got {size}");
    assert!(list_rv.unwrap().parse::<u64>().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_from_a_resource_version_with_every_event_type() {
    let server = common::fake_api(3).await;
    let api: Api<Node> = Api::all(client(&server).await);
    let rv = list_rv(&api).await;
    let names = server.node_names();
    server.set_condition(&names[0], "Ready", "False");
    server.delete_node(&names[1]);
    let added = server.add_generated(99);

    let stream = api.watch(&WatchParams::default().timeout(5), &rv).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(3), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(match event {
            WatchEvent::Added(n) => format!("ADDED {}", n.metadata.name.unwrap()),
            WatchEvent::Modified(n) => format!("MODIFIED {}", n.metadata.name.unwrap()),
            WatchEvent::Deleted(n) => format!("DELETED {}", n.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => "BOOKMARK".to_string(),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        });
    }
    assert_eq!(
        seen,
        [
            format!("MODIFIED {}", names[0]),
            format!("DELETED {}", names[1]),
            format!("ADDED {added}"),
            "BOOKMARK".to_string()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_resource_version_is_410_gone() {
    let server = common::fake_api(2).await;
    let api: Api<Node> = Api::all(client(&server).await);
    let rv = list_rv(&api).await;
    server.compact();
    let mut stream = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    // A continue token from before the compaction is 410 too.
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.unwrap();
    server.compact();
    let err = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 410), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_401_and_missing_rbac_is_403() {
    let server = FakeApiServer::start(FakeOptions {
        nodes: 1,
        token: Some("s3cret".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let (code, _) = common::http_get(server.addr(), "/api/v1/nodes", &[])
        .await
        .unwrap();
    assert_eq!(code, 401);
    let (code, _) = common::http_get(
        server.addr(),
        "/api/v1/nodes",
        &[("Authorization", "Bearer wrong")],
    )
    .await
    .unwrap();
    assert_eq!(code, 401);
    let api: Api<Node> = Api::all(client(&server).await);
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1,
        "the kubeconfig carries the token"
    );
    server.set_forbidden(true);
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err:?}");
}

#[tokio::test]
async fn leases_are_written_only_on_the_version_read() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Patch, PatchParams, PostParams};
    let server = FakeApiServer::start(FakeOptions::default()).await.unwrap();
    let api: Api<Lease> = Api::namespaced(client(&server).await, "monitoring");
    assert!(api.get_opt("l").await.unwrap().is_none());
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &lease).await.unwrap();
    let again = api.create(&PostParams::default(), &lease).await.unwrap_err();
    assert!(
        matches!(again, kube::Error::Api(ref e) if e.code == 409 && e.reason == "AlreadyExists"),
        "{again:?}"
    );
    let rv = created.metadata.resource_version.clone();
    let take = |holder: &str, rv: &Option<String>| {
        Patch::Merge(
            serde_json::json!({"metadata": {"resourceVersion": rv}, "spec": {"holderIdentity": holder}}),
        )
    };
    let taken = api
        .patch("l", &PatchParams::default(), &take("b", &rv))
        .await
        .unwrap();
    assert_eq!(taken.spec.as_ref().unwrap().holder_identity.as_deref(), Some("b"));
    assert_eq!(
        taken.spec.as_ref().unwrap().lease_duration_seconds,
        Some(15),
        "merged, not replaced"
    );
    assert_ne!(taken.metadata.resource_version, rv);
    // A second writer that read the same version loses.
    let lost = api
        .patch("l", &PatchParams::default(), &take("c", &rv))
        .await
        .unwrap_err();
    assert!(
        matches!(lost, kube::Error::Api(ref e) if e.code == 409 && e.reason == "Conflict"),
        "{lost:?}"
    );
    assert_eq!(
        server.lease("monitoring", "l").unwrap()["spec"]["holderIdentity"],
        "b"
    );
}

//! The chart as the real Helm engine renders it (tests/chart/render_objects.py).

use std::{process::Command, time::Duration};

use kube_node_status::fake::{FakeApiServer, FakeOptions, Policy, Subject};
use serde_json::Value;

use super::peer;

/// Every object the chart renders for `values` (release kns in monitoring).
pub fn render(values: &Value) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chart/render_objects.py");
    let out = Command::new(peer("python3"))
        .arg(script)
        .arg(values.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "rendering the chart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the objects as JSON")
}

/// The exporter container of the rendered Deployment, and the pod's service account.
pub fn exporter_container(objects: &[Value]) -> (Value, String) {
    let deploy = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "kube-node-status"))
        .expect("the exporter container")
        .clone();
    (
        container,
        pod["serviceAccountName"]
            .as_str()
            .expect("a service account")
            .to_string(),
    )
}

/// The container's environment as the kubelet sets it for pod `pod` in
/// `monitoring`: the downward API's fields, then each value with `$(VAR)` expanded.
pub fn pod_env(container: &Value, pod: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_string();
        let value = match var["value"].as_str() {
            Some(v) => env
                .iter()
                .fold(v.to_string(), |v, (k, set)| v.replace(&format!("$({k})"), set)),
            None => match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_string(),
                Some("metadata.namespace") => "monitoring".to_string(),
                other => panic!("env {name}: a source the harness does not know: {other:?}"),
            },
        };
        env.push((name, value));
    }
    env
}

/// The rendered args, less `--listen-address` (a test listens on a loopback
/// port of its own; the rendered one must be the container port).
pub fn args_for_loopback(container: &Value) -> Vec<String> {
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string args").to_string())
        .collect();
    let port = container["ports"][0]["containerPort"]
        .as_u64()
        .expect("a container port");
    assert!(
        args.contains(&format!("--listen-address=0.0.0.0:{port}")),
        "the exporter listens on its container port: {args:?}"
    );
    args.into_iter()
        .filter(|a| !a.starts_with("--listen-address"))
        .collect()
}

/// The first rendered object of `kind`.
pub fn find<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

/// Dashboard panels whose title ends with this read the heartbeat readings,
/// served only with `nodeLeases.enabled` (`tests/it/heartbeats.rs` fills them).
pub const NEEDS_NODE_LEASES: &str = "(nodeLeases.enabled)";

/// The dashboard the chart renders for `naming`: each panel's title and its queries.
pub fn dashboard(naming: &str) -> Vec<(String, Vec<String>)> {
    let objects = render(&serde_json::json!({"grafanaDashboard": {"enabled": true}, "metricNaming": naming}));
    let map = objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-dashboard"))
        })
        .expect("the dashboard ConfigMap");
    let dashboard: Value = serde_json::from_str(
        map["data"]["kube-node-status.json"]
            .as_str()
            .expect("the dashboard"),
    )
    .expect("JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| {
            let queries = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| t["expr"].as_str().expect("an expression").to_string())
                .collect();
            (p["title"].as_str().unwrap_or_default().to_string(), queries)
        })
        .collect()
}

/// The groups of the rendered PrometheusRule, else GMP Rules, as a Prometheus rule file.
pub fn rule_file(objects: &[Value]) -> String {
    let rules = find(objects, "PrometheusRule")
        .or_else(|| find(objects, "Rules"))
        .or_else(|| find(objects, "ClusterRules"))
        .expect("rules");
    serde_yaml_ng::to_string(&serde_json::json!({"groups": rules["spec"]["groups"]})).expect("YAML")
}

/// A fake API server with `nodes` nodes, the chart's RBAC for the exporter's
/// service account in force, and the chart's Leases created.
pub async fn api_as_installed(objects: &[Value], nodes: usize) -> FakeApiServer {
    api_as_installed_with(objects, nodes, None).await
}

/// [`api_as_installed`], with kubelets renewing node Leases and a node
/// lifecycle controller as `heartbeats` says.
pub async fn api_as_installed_with(
    objects: &[Value],
    nodes: usize,
    heartbeats: Option<kube_node_status::fake::HeartbeatOptions>,
) -> FakeApiServer {
    let (_, account) = exporter_container(objects);
    let policy = Policy::from_objects(
        objects,
        Subject {
            namespace: "monitoring".into(),
            name: account,
        },
    );
    let api = FakeApiServer::start(FakeOptions {
        nodes,
        bookmark_interval: Duration::from_millis(500),
        rbac: Some(policy.into()),
        heartbeats,
        ..Default::default()
    })
    .await
    .expect("fake API server starts");
    for lease in objects.iter().filter(|o| o["kind"] == "Lease") {
        assert!(api.put_lease(lease.clone()), "{lease}");
    }
    api
}

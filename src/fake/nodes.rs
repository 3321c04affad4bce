//! Realistic generated Node objects: what a GKE node looks like on the wire
//! (about 20 KB of JSON, managed fields as server-side apply and the
//! controllers leave them, 60 images, attached volumes).

use serde_json::{Value, json};

/// The five conditions every kubelet reports, in the order it reports them.
pub const KUBELET_CONDITIONS: [&str; 5] = [
    "MemoryPressure",
    "DiskPressure",
    "PIDPressure",
    "Ready",
    "NetworkUnavailable",
];

/// Custom conditions that node-problem-detector adds on some nodes.
pub const NPD_CONDITIONS: [&str; 3] = [
    "KernelDeadlock",
    "ReadonlyFilesystem",
    "FrequentContainerdRestart",
];

const ZONES: [&str; 3] = ["us-central1-a", "us-central1-b", "us-central1-c"];
const POOLS: [&str; 3] = ["default-pool", "highmem-pool", "gpu-pool"];

/// The name of the `i`-th generated node.
pub fn name(i: usize) -> String {
    format!(
        "gke-demo-{}-{:08x}-{i:05}",
        POOLS[i % POOLS.len()],
        (i as u64).wrapping_mul(2654435761) & 0xffff_ffff
    )
}

/// The reason and message a kubelet gives a condition in `status`.
pub fn reason_and_message(type_: &str, status: &str) -> (&'static str, &'static str) {
    match (type_, status) {
        ("Ready", "True") => ("KubeletReady", "kubelet is posting ready status"),
        ("Ready", "Unknown") => ("NodeStatusUnknown", "Kubelet stopped posting node status."),
        ("Ready", _) => (
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false",
        ),
        ("NetworkUnavailable", _) => ("RouteCreated", "RouteController created a route"),
        (_, "False") => ("KubeletHasNoPressure", "kubelet has no pressure"),
        (_, "True") => ("KubeletHasPressure", "kubelet is under pressure"),
        _ => ("NodeStatusUnknown", "Kubelet stopped posting node status."),
    }
}

fn condition(type_: &str, status: &str, now: &str) -> Value {
    let (reason, message) = reason_and_message(type_, status);
    json!({
        "type": type_,
        "status": status,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    })
}

/// What server-side apply records for the node labels GKE's labeler owns.
fn managed_labels() -> Value {
    let labels: serde_json::Map<String, Value> = [
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "beta.kubernetes.io/os",
        "cloud.google.com/gke-boot-disk",
        "cloud.google.com/gke-container-runtime",
        "cloud.google.com/gke-nodepool",
        "cloud.google.com/gke-os-distribution",
        "cloud.google.com/machine-family",
        "cloud.google.com/gke-cpu-scaling-level",
        "cloud.google.com/gke-logging-variant",
        "cloud.google.com/gke-max-pods-per-node",
        "cloud.google.com/gke-memory-gb-scaling-level",
        "cloud.google.com/gke-provisioning",
        "cloud.google.com/gke-stack-type",
        "cloud.google.com/private-node",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "node.kubernetes.io/instance-type",
        "topology.gke.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ]
    .iter()
    .map(|k| (format!("f:{k}"), json!({})))
    .collect();
    json!({"f:metadata": {"f:labels": labels, "f:annotations": {"f:node.gke.io/last-applied-node-labels": {}, "f:node.gke.io/last-applied-node-taints": {}}}})
}

fn images(i: usize) -> Value {
    let repos = [
        "gke.gcr.io/gke-metrics-agent",
        "gke.gcr.io/fluent-bit",
        "gke.gcr.io/kube-proxy-amd64",
        "gke.gcr.io/netd",
        "gke.gcr.io/csi-node-driver-registrar",
        "gke.gcr.io/gcp-compute-persistent-disk-csi-driver",
        "gke.gcr.io/prometheus-to-sd",
        "gke.gcr.io/proxy-agent",
        "registry.k8s.io/pause",
        "docker.io/library/nginx",
    ];
    let list: Vec<Value> = (0..60)
        .map(|k| {
            let repo = repos[k % repos.len()];
            let digest = format!("{:064x}", ((i as u128 + 1) * 0x9e37_79b9_7f4a_7c15) ^ ((k as u128) << 7));
            json!({
                "names": [format!("{repo}@sha256:{}", &digest[..64]), format!("{repo}:v1.{}.{}-gke.{}", k % 30, k % 7, 100 + k)],
                "sizeBytes": 10_000_000 + (k as u64) * 1_234_567,
            })
        })
        .collect();
    Value::Array(list)
}

/// A full Node object as the API serves it, Ready, with resourceVersion `rv`.
pub fn node(i: usize, rv: u64, now: &str) -> Value {
    let name = name(i);
    let pool = POOLS[i % POOLS.len()];
    let zone = ZONES[i % ZONES.len()];
    let gpu = pool == "gpu-pool";
    let mut conditions: Vec<Value> = KUBELET_CONDITIONS
        .iter()
        .map(|t| condition(t, if *t == "Ready" { "True" } else { "False" }, now))
        .collect();
    if i.is_multiple_of(4) {
        conditions.extend(NPD_CONDITIONS.iter().map(|t| condition(t, "False", now)));
    }
    let mut capacity = json!({
        "cpu": "8", "memory": "32880584Ki", "ephemeral-storage": "98831908Ki", "pods": "110",
        "hugepages-1Gi": "0", "hugepages-2Mi": "0",
        "attachable-volumes-gce-pd": "127"
    });
    let mut allocatable = json!({
        "cpu": "7910m", "memory": "29094344Ki", "ephemeral-storage": "47060071478", "pods": "110",
        "hugepages-1Gi": "0", "hugepages-2Mi": "0",
        "attachable-volumes-gce-pd": "127"
    });
    if gpu {
        capacity["nvidia.com/gpu"] = json!("1");
        allocatable["nvidia.com/gpu"] = json!("1");
    }
    let taints = if gpu {
        json!([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
    } else if i % 10 == 1 {
        json!([{"key": "dedicated", "value": "batch", "effect": "PreferNoSchedule"}])
    } else {
        json!([])
    };
    let ip = format!("10.{}.{}.{}", 128 + (i >> 16) % 64, (i >> 8) & 255, i & 255);
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", i, i % 65536, i % 4096, (i * 7) % 4096, i * 2654435761usize % (1 << 48)),
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2026-11-01T08:00:00Z",
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/instance-type": if gpu { "n1-standard-8" } else { "e2-standard-8" },
                "beta.kubernetes.io/os": "linux",
                "cloud.google.com/gke-boot-disk": "pd-balanced",
                "cloud.google.com/gke-container-runtime": "containerd",
                "cloud.google.com/gke-nodepool": pool,
                "cloud.google.com/gke-os-distribution": "cos",
                "cloud.google.com/machine-family": if gpu { "n1" } else { "e2" },
                "failure-domain.beta.kubernetes.io/region": "us-central1",
                "failure-domain.beta.kubernetes.io/zone": zone,
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": if gpu { "n1-standard-8" } else { "e2-standard-8" },
                "topology.gke.io/zone": zone,
                "topology.kubernetes.io/region": "us-central1",
                "topology.kubernetes.io/zone": zone
            },
            "annotations": {
                "container.googleapis.com/instance_id": format!("{}", 1_000_000_000_000u64 + i as u64),
                "csi.volume.kubernetes.io/nodeid": format!("{{\"pd.csi.storage.gke.io\":\"projects/demo/zones/{zone}/instances/{name}\"}}"),
                "node.alpha.kubernetes.io/ttl": "0",
                "node.gke.io/last-applied-node-labels": "cloud.google.com/gke-boot-disk=pd-balanced,cloud.google.com/gke-container-runtime=containerd",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "node.gke.io/last-applied-node-taints": if gpu { "nvidia.com/gpu=present:NoSchedule" } else { "" },
                "alpha.kubernetes.io/provided-node-ip": ip.clone(),
                "container.googleapis.com/instance-template": format!("https://www.googleapis.com/compute/v1/projects/demo-project/global/instanceTemplates/gke-demo-{pool}-{:08x}", (i as u64).wrapping_mul(2654435761) & 0xffff_ffff),
                "node.gke.io/kubelet-config": "{\"kind\":\"KubeletConfiguration\",\"apiVersion\":\"kubelet.config.k8s.io/v1beta1\",\"cpuManagerPolicy\":\"none\",\"imageGCHighThresholdPercent\":85,\"imageGCLowThresholdPercent\":80,\"podPidsLimit\":4096,\"containerLogMaxSize\":\"10Mi\",\"containerLogMaxFiles\":5,\"topologyManagerPolicy\":\"none\",\"evictionHard\":{\"memory.available\":\"100Mi\",\"nodefs.available\":\"10%\",\"nodefs.inodesFree\":\"5%\",\"pid.available\":\"10%\"}}"
            },
            "managedFields": [
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:node.alpha.kubernetes.io/ttl": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}},
                   "f:labels": {".": {}, "f:beta.kubernetes.io/arch": {}, "f:beta.kubernetes.io/os": {}, "f:kubernetes.io/arch": {}, "f:kubernetes.io/hostname": {}, "f:kubernetes.io/os": {}}},
                   "f:spec": {"f:providerID": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:allocatable": {"f:ephemeral-storage": {}, "f:memory": {}}, "f:capacity": {"f:ephemeral-storage": {}},
                   "f:conditions": {"k:{\"type\":\"DiskPressure\"}": {"f:lastHeartbeatTime": {}}, "k:{\"type\":\"MemoryPressure\"}": {"f:lastHeartbeatTime": {}},
                     "k:{\"type\":\"PIDPressure\"}": {"f:lastHeartbeatTime": {}}, "k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}}},
                   "f:images": {}, "f:nodeInfo": {"f:bootID": {}}}}},
                {"manager": "node-controller", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"NetworkUnavailable\"}": {".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2026-11-01T08:00:05Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:node.alpha.kubernetes.io/ttl": {}}}, "f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}, format!("v:\"{}\"", format!("10.{}.{}.0/24", 64 + (i >> 8) % 64, i & 255)): {}}}}},
                {"manager": "gke-node-labeler", "operation": "Apply", "apiVersion": "v1", "time": "2026-11-01T08:00:07Z", "fieldsType": "FieldsV1",
                 "fieldsV1": managed_labels()},
                {"manager": "gcp-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2026-11-01T08:00:09Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:addresses": {".": {}, "k:{\"type\":\"ExternalIP\"}": {".": {}, "f:address": {}, "f:type": {}}, "k:{\"type\":\"Hostname\"}": {".": {}, "f:address": {}, "f:type": {}},
                   "k:{\"type\":\"InternalDNS\"}": {".": {}, "f:address": {}, "f:type": {}}, "k:{\"type\":\"InternalIP\"}": {".": {}, "f:address": {}, "f:type": {}}},
                   "f:conditions": {"k:{\"type\":\"NetworkUnavailable\"}": {".": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-01T08:00:01Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:container.googleapis.com/instance_id": {}, "f:csi.volume.kubernetes.io/nodeid": {}, "f:node.gke.io/last-applied-node-labels": {}, "f:node.gke.io/last-applied-node-taints": {}}},
                   "f:status": {"f:daemonEndpoints": {"f:kubeletEndpoint": {"f:Port": {}}}, "f:nodeInfo": {"f:architecture": {}, "f:bootID": {}, "f:containerRuntimeVersion": {}, "f:kernelVersion": {}, "f:kubeProxyVersion": {}, "f:kubeletVersion": {}, "f:machineID": {}, "f:operatingSystem": {}, "f:osImage": {}, "f:systemUUID": {}},
                     "f:runtimeHandlers": {}, "f:features": {".": {}, "f:supplementalGroupsPolicy": {}}, "f:volumesAttached": {}, "f:volumesInUse": {}}}}
            ]
        },
        "spec": {
            "podCIDR": format!("10.{}.{}.0/24", 64 + (i >> 8) % 64, i & 255),
            "podCIDRs": [format!("10.{}.{}.0/24", 64 + (i >> 8) % 64, i & 255)],
            "providerID": format!("gce://demo-project/{zone}/{name}"),
            "taints": taints
        },
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "ExternalIP", "address": format!("34.{}.{}.{}", 100 + (i >> 16) % 100, (i >> 8) & 255, i & 255)},
                {"type": "InternalDNS", "address": format!("{name}.us-central1-a.c.demo-project.internal")},
                {"type": "Hostname", "address": format!("{name}.us-central1-a.c.demo-project.internal")}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{:032x}", i as u128 * 0x1234_5678_9abc_def1),
                "systemUUID": format!("{:08x}-0000-4000-8000-{:012x}", i, i),
                "bootID": format!("{:08x}-1111-4111-8111-{:012x}", i, i),
                "kernelVersion": "6.1.100+",
                "osImage": "Container-Optimized OS from Google",
                "containerRuntimeVersion": "containerd://1.7.22",
                "kubeletVersion": "v1.31.5-gke.1023000",
                "kubeProxyVersion": "v1.31.5-gke.1023000",
                "operatingSystem": "linux",
                "architecture": "amd64"
            },
            "images": images(i),
            "volumesAttached": (0..6).map(|v| json!({
                "name": format!("kubernetes.io/csi/pd.csi.storage.gke.io^projects/demo-project/zones/{zone}/disks/pvc-{:08x}-{v:04x}-4000-8000-{:012x}", i, i * 31 + v),
                "devicePath": ""
            })).collect::<Vec<_>>(),
            "runtimeHandlers": [
                {"name": "", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}},
                {"name": "runc", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}},
                {"name": "gvisor", "features": {"recursiveReadOnlyMounts": false, "userNamespaces": false}}
            ],
            "features": {"supplementalGroupsPolicy": true},
            "config": {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    #[test]
    fn generated_nodes_are_valid_and_about_20_kb() {
        for i in [0, 1, 2, 3, 4, 9999] {
            let v = node(i, 7, "2026-11-27T00:00:00Z");
            let size = serde_json::to_vec(&v).unwrap().len();
            assert!((18_000..24_000).contains(&size), "node {i} is {size} bytes");
            let n: Node = serde_json::from_value(v).expect("a valid Node");
            assert_eq!(n.metadata.name.as_deref(), Some(name(i).as_str()));
            assert_eq!(n.metadata.resource_version.as_deref(), Some("7"));
            let conds = n.status.unwrap().conditions.unwrap();
            assert!(conds.len() >= 5);
        }
        assert_ne!(name(1), name(2));
    }
}

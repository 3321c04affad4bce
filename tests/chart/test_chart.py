"""The Helm chart, checked with the real Helm engine (helm-python-sdk), the
Kubernetes JSON schemas (kubernetes-validate) and promtool.

Run by scripts/test: .venv/bin/pytest tests/chart
"""
import copy
import json
import pathlib
import re
import subprocess

import helm_python
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kube-node-status"
KUBE_VERSION = "1.31.0"

VALUE_SETS = {
    "defaults": {},
    "everything": {
        "clusterName": "prod",
        "metricsExporter": "prometheus,otlp",
        "nodeLabels": ["topology.kubernetes.io/zone", "cloud.google.com/gke-nodepool"],
        "conditions": ["Ready", "MemoryPressure"],
        "metricDenylist": "k8s\\.node\\.info",
        "podMonitoring": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                           "relabelings": [{"action": "labeldrop", "regex": "pod"}]},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "gmpRules": {"enabled": True},
        "podDisruptionBudget": {"enabled": True},
        "networkPolicy": {"enabled": True, "ingressFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
        "collector": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"operator": "Exists"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "kube-node-status"}}}],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"a": "b"},
        "podLabels": {"team": "platform"},
        "extraArgs": ["--stale-after=90s"],
        "extraEnv": [{"name": "RUST_LOG", "value": "info"}],
    },
    "gmp-only": {"podMonitoring": {"enabled": True}},
    "node-leases": {"nodeLeases": {"enabled": True, "namespace": "kube-node-lease", "staleAfter": "45s"},
                    "podMonitoring": {"enabled": True}, "gmpRules": {"enabled": True},
                    "prometheusRule": {"enabled": True}, "alerts": {"controllerNotActingFor": "2m"}},
    "gmp-alerting": {"podMonitoring": {"enabled": True}, "gmpRules": {"enabled": True}},
    "gmp-cluster-rules": {"podMonitoring": {"enabled": True}, "metricNaming": "kube-state-metrics",
                          "gmpRules": {"enabled": True, "scope": "cluster", "labels": {"team": "platform"}},
                          "alerts": {"notReadyFor": "5m", "flapThreshold": 6}},
    "kube-rbac-auth": {"metricsAuth": {"enabled": True, "kubernetes": True}, "serviceMonitor": {"enabled": True},
                       "tls": {"enabled": True, "secretName": "kns-serving-cert", "caSecretName": "kns-ca"},
                       "podMonitoring": {"enabled": True}, "podMonitor": {"enabled": True}},
    "high-availability": {"replicas": 2, "metricsAuth": {"enabled": True, "secretName": "kns-scrape-token"},
                          "tls": {"enabled": True, "secretName": "kns-serving-cert", "caSecretName": "kns-ca"},
                          "podMonitoring": {"enabled": True}, "serviceMonitor": {"enabled": True},
                          "podMonitor": {"enabled": True}},
    "prometheus-operator-only": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "sidecar": {"collector": {"enabled": True, "config": "sidecar-telemetry-api.yaml"}},
    "gateway": {"collector": {"enabled": True, "config": "gateway.yaml", "env": [
        {"name": "OTLP_BACKEND_ENDPOINT", "value": "otel-gateway.monitoring.svc:4317"},
        {"name": "PROMETHEUS_REMOTE_WRITE_URL", "value": "http://prometheus.monitoring.svc:9090/api/v1/write"}]}},
    "kube-state-metrics-naming": {"metricNaming": "kube-state-metrics", "prometheusRule": {"enabled": True}},
    "google-telemetry-api": {"metricsExporter": "prometheus,otlp", "otlp": {"auth": "google"},
                             "serviceAccount": {"annotations": {
                                 "iam.gke.io/gcp-service-account": "kube-node-status@my-project.iam.gserviceaccount.com"}}},
}


def render(values, name="kns", namespace="monitoring"):
    """Every rendered object, as (template, object)."""
    with helm_python.Chart.load(str(CHART)) as chart:
        out = chart.render(copy.deepcopy(values), name=name, namespace=namespace, is_install=True)
    objects = []
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((template, doc))
    return objects


def kinds(objects):
    return sorted(o["kind"] for _, o in objects)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_is_clean(values):
    report = helm_python.lint(str(CHART), copy.deepcopy(values), strict=True, kube_version=f"v{KUBE_VERSION}")
    findings = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not findings, report


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_builtin_object_validates_against_the_kubernetes_schemas(values):
    objects = render(values)
    assert objects
    for template, obj in objects:
        if obj["apiVersion"].startswith(("monitoring.coreos.com/", "monitoring.googleapis.com/")):
            continue  # custom resources: see test_custom_resources_are_well_formed
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_custom_resources_are_well_formed():
    objects = dict(((o["kind"]), o) for _, o in render(VALUE_SETS["everything"]))
    pm = objects["PodMonitoring"]["spec"]
    assert pm["endpoints"][0]["port"] == "metrics" and pm["selector"]["matchLabels"]
    sm = objects["ServiceMonitor"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["relabelings"] == [{"action": "labeldrop", "regex": "pod"}]
    assert objects["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_defaults_render_only_the_core_objects():
    assert kinds(render({})) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Pod", "Service", "ServiceAccount"]


def test_podmonitoring_and_servicemonitor_are_two_documents():
    objects = render({"podMonitoring": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    ks = kinds(objects)
    assert ks.count("PodMonitoring") == 1 and ks.count("ServiceMonitor") == 1


def test_rbac_is_exactly_get_list_watch_on_nodes():
    objects = render({})
    roles = [o for _, o in objects if o["kind"] == "ClusterRole"]
    assert len(roles) == 1
    assert roles[0]["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    binding = next(o for _, o in objects if o["kind"] == "ClusterRoleBinding")
    sa = next(o for _, o in objects if o["kind"] == "ServiceAccount")
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "monitoring"}]
    assert not any(o["kind"] in ("Role", "RoleBinding") for _, o in objects)


def test_node_leases_are_read_with_a_role_in_their_namespace_and_nothing_more():
    objects = render({"nodeLeases": {"enabled": True, "staleAfter": "45s"}})
    roles = [o for _, o in objects if o["kind"] == "Role"]
    assert len(roles) == 1 and roles[0]["metadata"]["namespace"] == "kube-node-lease"
    assert roles[0]["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                  "verbs": ["get", "list", "watch"]}]
    binding = next(o for _, o in objects if o["kind"] == "RoleBinding")
    assert binding["metadata"]["namespace"] == "kube-node-lease"
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    sa = next(o for _, o in objects if o["kind"] == "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "monitoring"}]
    args = next(o for _, o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--node-leases", "--node-lease-namespace=kube-node-lease", "--heartbeat-stale-after=45s"} <= set(args)
    # Two releases in two namespaces bind their own accounts: the names differ.
    other = render({"nodeLeases": {"enabled": True}}, namespace="other")
    assert next(o for _, o in other if o["kind"] == "Role")["metadata"]["name"] != roles[0]["metadata"]["name"]
    assert "--node-leases" not in " ".join(
        next(o for _, o in render({}) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])


def test_two_replicas_elect_a_leader_on_a_lease_only_they_may_write():
    objects = render(VALUE_SETS["high-availability"], name="kns", namespace="monitoring")
    deploy = next(o for _, o in objects if o["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert deploy["spec"]["replicas"] == 2
    for flag in ["--leader-election", "--lease-name=kns-kube-node-status", "--lease-duration=15s"]:
        assert flag in args, args
    lease = next(o for _, o in objects if o["kind"] == "Lease")
    assert lease["metadata"] == {**lease["metadata"], "name": "kns-kube-node-status", "namespace": "monitoring"}
    assert "spec" not in lease or not lease["spec"], "the holder is the exporters' to write"
    role = next(o for _, o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-leader-election"))
    assert role["metadata"]["namespace"] == "monitoring"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "resourceNames": ["kns-kube-node-status"], "verbs": ["get", "patch"]}]
    binding = next(o for _, o in objects if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == role["metadata"]["name"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "monitoring"}]
    pdb = next(o for _, o in objects if o["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    # One replica: no election, no Lease, no Role, no PDB unless asked for.
    single = render({})
    assert not any(o["kind"] in ("Lease", "Role", "RoleBinding", "PodDisruptionBudget") for _, o in single)
    args = next(o for _, o in single if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--lease") or a == "--leader-election" for a in args)


def test_scrape_token_is_mounted_and_sent_by_every_scraper():
    objects = render(VALUE_SETS["high-availability"])
    pod = next(o for _, o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert "--auth-token-file=/var/run/kube-node-status/auth/token" in c["args"]
    assert {"name": "metrics-auth", "mountPath": "/var/run/kube-node-status/auth", "readOnly": True} in c["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "metrics-auth")
    assert volume["secret"] == {"secretName": "kns-scrape-token", "defaultMode": 0o440,
                                "items": [{"key": "token", "path": "token"}]}
    pm = next(o for _, o in objects if o["kind"] == "PodMonitoring")
    assert pm["spec"]["endpoints"][0]["authorization"] == {
        "type": "Bearer", "credentials": {"secret": {"name": "kns-scrape-token", "key": "token"}}}
    for kind, field in [("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints")]:
        cr = next(o for _, o in objects if o["kind"] == kind)
        assert cr["spec"][field][0]["authorization"] == {
            "type": "Bearer", "credentials": {"name": "kns-scrape-token", "key": "token"}}, kind
    # Managed Prometheus's collector may read that one Secret and no other.
    role = next(o for _, o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-gmp-scrape-token"))
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                              "resourceNames": ["kns-scrape-token", "kns-ca"],
                              "verbs": ["get", "list", "watch"]}]
    binding = next(o for _, o in objects if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == role["metadata"]["name"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "collector", "namespace": "gmp-system"}]


def test_tls_serves_the_secret_and_every_scraper_verifies_it():
    objects = render(VALUE_SETS["high-availability"], name="kns", namespace="monitoring")
    pod = next(o for _, o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    for flag in ["--tls-cert-file=/var/run/kube-node-status/tls/tls.crt",
                 "--tls-key-file=/var/run/kube-node-status/tls/tls.key"]:
        assert flag in c["args"], c["args"]
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS" and c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {"name": "tls", "mountPath": "/var/run/kube-node-status/tls", "readOnly": True} in c["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "kns-serving-cert"
    assert volume["secret"]["defaultMode"] == 0o440
    server_name = "kns-kube-node-status.monitoring.svc"
    pm = next(o for _, o in objects if o["kind"] == "PodMonitoring")["spec"]["endpoints"][0]
    assert pm["scheme"] == "https"
    assert pm["tls"] == {"serverName": server_name, "ca": {"secret": {"name": "kns-ca", "key": "ca.crt"}}}
    for kind, field in [("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints")]:
        ep = next(o for _, o in objects if o["kind"] == kind)["spec"][field][0]
        assert ep["scheme"] == "https", kind
        assert ep["tlsConfig"] == {"serverName": server_name, "ca": {"secret": {"name": "kns-ca", "key": "ca.crt"}}}
    test_pod = next(o for _, o in objects if o["kind"] == "Pod")
    script = test_pod["spec"]["containers"][0]["args"][0]
    assert "https://" in script and "Authorization: Bearer" in script
    with pytest.raises(helm_python.HelmError):
        render({"tls": {"enabled": True}})
    # Off by default: plain HTTP probes.
    c = next(o for _, o in render({}) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert not any(a.startswith("--tls") for a in c["args"])


def test_kubernetes_auth_reviews_tokens_and_offers_a_reader_role():
    objects = render(VALUE_SETS["kube-rbac-auth"], name="kns")
    c = next(o for _, o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--auth-kubernetes" in c["args"]
    assert not any(a.startswith("--auth-token-file") for a in c["args"])
    assert not any(m["name"] == "metrics-auth" for m in c.get("volumeMounts", []))
    exporter_role = next(o for _, o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "kns-kube-node-status-monitoring")
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]} in exporter_role["rules"]
    assert {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]} in exporter_role["rules"]
    reader = next(o for _, o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("-metrics-reader"))
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    # The monitors cannot send their own service-account token: the chart makes
    # a scraper identity, bound to the reader role, and every monitor sends its token.
    sa = next(o for _, o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "kns-kube-node-status-scraper")
    secret = next(o for _, o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == sa["metadata"]["name"])
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {"kubernetes.io/service-account.name": sa["metadata"]["name"]}
    binding = next(o for _, o in objects if o["kind"] == "ClusterRoleBinding" and o["roleRef"]["name"] == reader["metadata"]["name"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "monitoring"}]
    sent = {"name": secret["metadata"]["name"], "key": "token"}
    sm = next(o for _, o in objects if o["kind"] == "ServiceMonitor")["spec"]["endpoints"][0]
    assert sm["authorization"] == {"type": "Bearer", "credentials": sent}
    assert next(o for _, o in objects if o["kind"] == "PodMonitor")["spec"]["podMetricsEndpoints"][0]["authorization"] == {
        "type": "Bearer", "credentials": sent}
    pm = next(o for _, o in objects if o["kind"] == "PodMonitoring")["spec"]["endpoints"][0]
    assert pm["authorization"] == {"type": "Bearer", "credentials": {"secret": sent}}
    gmp_role = next(o for _, o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-gmp-scrape-token"))
    assert gmp_role["rules"][0]["resourceNames"] == [secret["metadata"]["name"], "kns-ca"]
    # The helm test pod sends no API-valid token over TLS it cannot verify.
    test_pod = next(o for _, o in objects if o["kind"] == "Pod")
    assert "volumes" not in test_pod["spec"]
    assert "Authorization" not in test_pod["spec"]["containers"][0]["args"][0]
    # A long release name: the scraper's objects never take the exporter's names.
    long = render(VALUE_SETS["kube-rbac-auth"], name="node-readiness-exporter-production-europe-west1")
    names = [(o["kind"], o["metadata"]["name"]) for _, o in long]
    assert len(names) == len(set(names)), sorted(names)


def test_third_party_images_are_pinned_by_digest_and_audiences_reach_the_exporter():
    objects = render({"collector": {"enabled": True}, "image": {"tag": "1.2.3", "digest": "sha256:" + "ab" * 32},
                      "metricsAuth": {"enabled": True, "kubernetes": True, "audiences": ["kube-node-status", "b"]},
                      "tls": {"enabled": True, "secretName": "s"}})
    pod = next(o for _, o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in pod["containers"]}
    digest = re.compile(r"^[^@]+:[^@]+@sha256:[0-9a-f]{64}$")
    assert images["kube-node-status"] == "ghcr.io/kube-node-status/kube-node-status:1.2.3@sha256:" + "ab" * 32
    assert digest.match(images["otel-collector"]), images
    test_pod = next(o for _, o in objects if o["kind"] == "Pod")
    assert digest.match(test_pod["spec"]["containers"][0]["image"]), test_pod["spec"]["containers"][0]["image"]
    exporter = next(c for c in pod["containers"] if c["name"] == "kube-node-status")
    assert "--auth-token-audiences=kube-node-status,b" in exporter["args"]
    # By default the exporter image follows the chart's appVersion, by tag.
    default = next(o for _, o in render({}) if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "@" not in default["image"]
    assert not any(a.startswith("--auth-token-audiences") for a in default["args"])


REFUSED = {
    "optional families in OTel naming": ({"optionalFamilies": ["kube_node_status_addresses"]},
                                          "need metricNaming kube-state-metrics"),
    "an optional family that does not exist": ({"optionalFamilies": ["kube_node_images"], "metricNaming": "kube-state-metrics"},
                                               "optionalFamilies"),
    "an export interval of zero": ({"otlp": {"exportInterval": "0s"}}, "otlp.exportInterval=0s is under 1s"),
    "an export interval under a second": ({"otlp": {"exportInterval": "500ms"}}, "is under 1s"),
    "an export interval of half a second": ({"otlp": {"exportInterval": "0.5s"}}, "is under 1s"),
    # Units under a millisecond: the values schema takes ms, s, m and h only.
    "an export interval in microseconds": ({"otlp": {"exportInterval": "999999us"}}, "exportInterval"),
    "an export interval in nanoseconds": ({"otlp": {"exportInterval": "1ns"}}, "exportInterval"),
    "kubernetes review without TLS": ({"metricsAuth": {"enabled": True, "kubernetes": True}}, "metricsAuth.kubernetes needs tls.enabled"),
    "audiences without kubernetes review": ({"metricsAuth": {"enabled": True, "secretName": "s", "audiences": ["kns"]}},
                                            "metricsAuth.audiences needs metricsAuth.enabled and metricsAuth.kubernetes"),
    "audiences with the chart's monitors": ({"metricsAuth": {"enabled": True, "kubernetes": True, "audiences": ["kns"]},
                                             "tls": {"enabled": True, "secretName": "s"}, "serviceMonitor": {"enabled": True}},
                                            "metricsAuth.audiences with the chart's monitors"),
    "an image digest that is not one": ({"image": {"digest": "sha256:abc"}}, "digest"),
    "GMP reading the serving key": ({"podMonitoring": {"enabled": True}, "tls": {"enabled": True, "secretName": "s"}},
                                    "needs tls.caSecretName"),
    "GMP rules over OTLP (Telemetry API)": ({"gmpRules": {"enabled": True}, "metricsExporter": "prometheus,otlp",
                                             "otlp": {"auth": "google"}}, "gmpRules needs podMonitoring.enabled"),
    "GMP rules over a sidecar": ({"gmpRules": {"enabled": True}, "collector": {"enabled": True}},
                                 "gmpRules needs podMonitoring.enabled"),
    "gateway without its backends": ({"collector": {"enabled": True, "config": "gateway.yaml"}},
                                     "needs OTLP_BACKEND_ENDPOINT and PROMETHEUS_REMOTE_WRITE_URL"),
    "a monitor without /metrics": ({"serviceMonitor": {"enabled": True}, "metricsExporter": "otlp"},
                                   "serves no /metrics"),
    "rules without /metrics": ({"prometheusRule": {"enabled": True}, "metricsExporter": "none"}, "serves no /metrics"),
    "rules without the ready reading": ({"prometheusRule": {"enabled": True}, "metricDenylist": "k8s\\.node\\.ready"},
                                        "leave out k8s.node.ready"),
    "rules with an allowlist that leaves it out": ({"prometheusRule": {"enabled": True}, "metricNaming": "kube-state-metrics",
                                                   "metricAllowlist": "kube_node_status_condition"},
                                                  "leave out kube_node_status_ready"),
}


@pytest.mark.parametrize("values,message", REFUSED.values(), ids=REFUSED.keys())
def test_combinations_that_cannot_work_are_refused_naming_the_values(values, message):
    with pytest.raises(helm_python.HelmError) as refused:
        render(values)
    assert message in str(refused.value)


def test_optional_families_are_passed_in_kube_state_metrics_naming():
    values = {"metricNaming": "kube-state-metrics",
              "optionalFamilies": ["kube_node_status_addresses", "kube_node_spec_pod_cidrs"]}
    assert "--optional-families=kube_node_status_addresses,kube_node_spec_pod_cidrs" in exporter_args(values)
    assert not any(a.startswith("--optional-families") for a in exporter_args({}))


def test_export_intervals_of_a_second_or_more_are_taken():
    for interval in ["1s", "1000ms", "1500ms", "30s", "1m", "1m30s"]:
        render({"otlp": {"exportInterval": interval}})


def test_a_sidecar_to_the_telemetry_api_spells_label_keys_as_that_api_takes_them():
    assert "--otlp-label-keys=google" in exporter_args(VALUE_SETS["sidecar"])
    assert not any(a.startswith("--otlp-label-keys") for a in exporter_args({"collector": {"enabled": True}}))
    assert not any(a.startswith("--otlp-label-keys") for a in exporter_args({}))


def test_gateway_collector_gets_its_backends():
    pod = next(o for _, o in render(VALUE_SETS["gateway"]) if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    collector = next(c for c in pod["containers"] if c["name"] == "otel-collector")
    assert {e["name"] for e in collector["env"]} == {"OTLP_BACKEND_ENDPOINT", "PROMETHEUS_REMOTE_WRITE_URL"}


def test_the_notes_and_helm_test_find_the_leader_with_any_replica_count():
    for replicas in (1, 2, 3):
        with helm_python.Chart.load(str(CHART)) as chart:
            notes = chart.render({"replicas": replicas}, name="kns", namespace="monitoring", is_install=True)
        notes = next(v for k, v in notes.items() if k.endswith("NOTES.txt"))
        if replicas > 1:
            assert "get lease kns-kube-node-status -o jsonpath='{.spec.holderIdentity}'" in notes
            assert 'port-forward "pod/$leader"' in notes
        else:
            assert "port-forward service/kns-kube-node-status" in notes
        script = next(o for _, o in render({"replicas": replicas}) if o["kind"] == "Pod")["spec"]["containers"][0]["args"][0]
        assert "for i in $(seq 1 60)" in script and "grep -q '^k8s_node_ready'" in script


def test_two_releases_have_disjoint_cluster_scoped_names():
    cluster_scoped = ("ClusterRole", "ClusterRoleBinding")
    a = {o["metadata"]["name"] for _, o in render({}, name="one") if o["kind"] in cluster_scoped}
    b = {o["metadata"]["name"] for _, o in render({}, name="two") if o["kind"] in cluster_scoped}
    assert a and b and not a & b
    # The same release name in two namespaces, with every cluster-scoped object there is.
    values = VALUE_SETS["kube-rbac-auth"]
    a = {(o["kind"], o["metadata"]["name"]) for _, o in render(values, name="kns", namespace="a") if o["kind"] in cluster_scoped}
    b = {(o["kind"], o["metadata"]["name"]) for _, o in render(values, name="kns", namespace="b") if o["kind"] in cluster_scoped}
    assert len(a) == 4 and len(b) == 4 and not a & b, (a, b)


@pytest.mark.parametrize("values", [VALUE_SETS["defaults"], VALUE_SETS["sidecar"]], ids=["defaults", "sidecar"])
def test_default_install_meets_the_restricted_pod_security_profile(values):
    pods = [o["spec"]["template"]["spec"] for _, o in render(values) if o["kind"] == "Deployment"]
    pods += [o["spec"] for _, o in render(values) if o["kind"] == "Pod"]
    for pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["runAsNonRoot"] is True
            assert c["resources"]["requests"] and c["resources"]["limits"]
        assert not pod.get("hostNetwork") and not pod.get("hostPID")
        for v in pod.get("volumes", []):
            assert "hostPath" not in v


def test_deployment_wires_probes_port_and_downward_api():
    deploy = next(o for _, o in render({"clusterName": "prod"}) if o["kind"] == "Deployment")
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "k8s.namespace.name=$(POD_NAMESPACE)" in env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    assert "--cluster-name=prod" in c["args"]
    service = next(o for _, o in render({}) if o["kind"] == "Service")
    assert service["spec"]["ports"][0]["name"] == "metrics" and service["spec"]["ports"][0]["port"] == 9464


def test_sidecar_gets_its_config_and_the_exporter_sends_to_it():
    objects = render(VALUE_SETS["sidecar"])
    deploy = next(o for _, o in objects if o["kind"] == "Deployment")
    containers = {c["name"]: c for c in deploy["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"kube-node-status", "otel-collector"}
    env = {e["name"]: e.get("value") for e in containers["kube-node-status"]["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    assert "--metrics-exporter=prometheus,otlp" in containers["kube-node-status"]["args"]
    cm = next(o for _, o in objects if o["kind"] == "ConfigMap")
    shipped = (ROOT / "otel-collector" / "sidecar-telemetry-api.yaml").read_text()
    assert yaml.safe_load(cm["data"]["config.yaml"]) == yaml.safe_load(shipped)


def test_google_mode_passes_its_flags_and_refuses_what_cannot_work():
    values = dict(VALUE_SETS["google-telemetry-api"], clusterLocation="us-central1", gcpProjectId="my-project")
    deploy = next(o for _, o in render(values) if o["kind"] == "Deployment")
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    for flag in ["--otlp-auth=google", "--cluster-location=us-central1", "--gcp-project-id=my-project",
                 "--metrics-exporter=prometheus,otlp"]:
        assert flag in c["args"], c["args"]
    env = {e["name"] for e in c["env"]}
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env, "Google mode picks its own endpoint"
    for bad in [{"otlp": {"auth": "google"}},
                {"metricsExporter": "prometheus,otlp", "otlp": {"auth": "google"}, "collector": {"enabled": True}},
                {"otlp": {"auth": "basic"}}, {"gcpProjectId": "Not A Project"}]:
        with pytest.raises(helm_python.HelmError):
            render(bad)


def exporter_args(values):
    deploy = next(o for _, o in render(values) if o["kind"] == "Deployment")
    return deploy["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("values,profile", [
    ({}, "full"),
    ({"serviceMonitor": {"enabled": True}}, "full"),
    (VALUE_SETS["gateway"], "full"),
    # Google Cloud bills every sample: the cheap profile unless told otherwise.
    (VALUE_SETS["gmp-only"], "readiness"),
    (VALUE_SETS["gmp-alerting"], "readiness"),
    (VALUE_SETS["google-telemetry-api"], "readiness"),
    (VALUE_SETS["sidecar"], "readiness"),
    ({"collector": {"enabled": True}}, "readiness"),
    (dict(VALUE_SETS["gmp-only"], metricProfile="standard"), "standard"),
    ({"metricProfile": "readiness"}, "readiness"),
])
def test_the_profile_is_cheap_where_google_bills_each_sample(values, profile):
    args = exporter_args(values)
    assert f"--metric-profile={profile}" in args, args
    assert not any(a.startswith("--sparse-readings") for a in args), "the profile's own default"


def test_resource_per_node_is_passed_and_refused_in_google_mode():
    assert "--otlp-resource-per-node" in exporter_args({"metricsExporter": "prometheus,otlp",
                                                        "otlp": {"resourcePerNode": True}})
    assert "--otlp-resource-per-node" not in exporter_args({})
    with pytest.raises(helm_python.HelmError):
        render(dict(VALUE_SETS["google-telemetry-api"], otlp={"auth": "google", "resourcePerNode": True}))


def test_sparse_readings_is_passed_only_when_set():
    assert "--sparse-readings=false" in exporter_args({"podMonitoring": {"enabled": True}, "sparseReadings": False})
    assert "--sparse-readings=true" in exporter_args({"metricProfile": "full", "sparseReadings": True})
    with pytest.raises(helm_python.HelmError):
        render({"metricProfile": "cheap"})


def test_the_notes_say_which_profile_and_why():
    with helm_python.Chart.load(str(CHART)) as chart:
        gmp = chart.render(copy.deepcopy(VALUE_SETS["gmp-only"]), name="kns", namespace="m", is_install=True)
        plain = chart.render({}, name="kns", namespace="m", is_install=True)
    notes = lambda out: next(t for n, t in out.items() if n.endswith("NOTES.txt"))
    assert "Metric profile: readiness, chosen because the readings go to Google Cloud" in notes(gmp)
    assert "Metric profile: full." in notes(plain)


def test_unknown_values_are_rejected_by_the_schema():
    for bad in [{"bogus": 1}, {"replicas": 0}, {"leaderElection": {"leaseDuration": "1.5s"}},
                {"metricsAuth": {"enabled": True}}, {"metricNaming": "prometheus"}, {"collector": {"config": "nope.yaml"}},
                {"staleAfter": "soon"}, {"metricsExporter": "console"}]:
        with pytest.raises(helm_python.HelmError):
            render(bad)


def test_every_value_is_in_the_schema():
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(vals, sch, path):
        props = sch.get("properties")
        if not isinstance(vals, dict) or props is None:
            return
        for key, val in vals.items():
            assert key in props, f"{path}{key} is not in values.schema.json"
            assert props[key].get("description") or props[key].get("properties"), f"{path}{key} has no description"
            walk(val, props[key], f"{path}{key}.")

    walk(values, schema, "")


def promtool(*args, stdin=""):
    out = subprocess.run([str(ROOT / ".venv/bin/promtool") if (ROOT / ".venv/bin/promtool").exists() else "promtool", *args],
                         input=stdin, capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr


NODE_ALERTS = {"NodeNotReady", "NodeUnreachable", "NodeUnderPressure", "NodeReadinessFlapping"}
# With nodeLeases.enabled only.
HEARTBEAT_ALERTS = {"NodeHeartbeatLost", "NodeLifecycleControllerNotActing"}
EXPORTER_ALERTS = {"KubeNodeStatusExporterDown", "KubeNodeStatusWatchErrors", "KubeNodeStatusViewStale",
                   "KubeNodeStatusNoLeader", "KubeNodeStatusOtlpDataRejected", "KubeNodeStatusCertificateExpiring"}
ALERTS = NODE_ALERTS | EXPORTER_ALERTS


@pytest.mark.parametrize("scope", ["namespace", "cluster"])
@pytest.mark.parametrize("naming", ["otel", "kube-state-metrics"])
def test_alert_rules_are_written_once_and_pass_promtool_as_prometheusrule_and_gmp_rules(naming, scope, tmp_path):
    objects = render({"prometheusRule": {"enabled": True}, "gmpRules": {"enabled": True, "scope": scope},
                      "podMonitoring": {"enabled": True},
                      "metricNaming": naming})
    rule = next(o for _, o in objects if o["kind"] == "PrometheusRule")
    gmp = next(o for _, o in objects if o["apiVersion"] == "monitoring.googleapis.com/v1" and "Rules" in o["kind"])
    assert gmp["kind"] == ("ClusterRules" if scope == "cluster" else "Rules")
    assert ("namespace" in gmp["metadata"]) == (scope == "namespace")
    assert gmp["spec"]["groups"] == rule["spec"]["groups"], "the same rules both ways"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == ALERTS
    with_leases = render({"prometheusRule": {"enabled": True}, "nodeLeases": {"enabled": True}, "metricNaming": naming})
    rule = next(o for _, o in with_leases if o["kind"] == "PrometheusRule")
    assert {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]} == ALERTS | HEARTBEAT_ALERTS
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": gmp["spec"]["groups"]}))
    code, output = promtool("check", "rules", str(path))
    assert code == 0, output


RULE_TESTS = ROOT / "tests" / "rules"
# The node alerts' series differ by profile: one-hot (full, standard) or sparse (readiness).
PROFILES = ["full", "readiness"]


def rule_unit_tests(naming, profile, tmp_path, **values):
    """Runs tests/rules/<naming>.<profile>.test.yaml and exporter.test.yaml
    against the chart's rules (as GMP Rules: the same groups as the
    PrometheusRule, asserted above)."""
    objects = render({"gmpRules": {"enabled": True}, "podMonitoring": {"enabled": True}, "metricNaming": naming,
                      "nodeLeases": {"enabled": True}, **values})
    rules = next(o for _, o in objects if o["kind"] == "Rules")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rules["spec"]["groups"]}))
    files = []
    for name in [f"{naming}.{profile}.test.yaml", "exporter.test.yaml"]:
        (tmp_path / name).write_text((RULE_TESTS / name).read_text())
        files.append(str(tmp_path / name))
    return promtool("test", "rules", *files)


def alerts_tested_in(name):
    return set(re.findall(r"alertname: (\w+)", (RULE_TESTS / name).read_text()))


def test_every_rule_test_file_is_run():
    run = {f"{n}.{p}.test.yaml" for n in ["otel", "kube-state-metrics"] for p in PROFILES} | {"exporter.test.yaml"}
    assert {p.name for p in RULE_TESTS.glob("*.yaml")} == run


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("naming", ["otel", "kube-state-metrics"])
def test_every_alert_fires_where_it_should_and_stays_quiet_elsewhere(naming, profile, tmp_path):
    assert alerts_tested_in(f"{naming}.{profile}.test.yaml") == NODE_ALERTS | HEARTBEAT_ALERTS
    assert alerts_tested_in("exporter.test.yaml") == EXPORTER_ALERTS
    code, output = rule_unit_tests(naming, profile, tmp_path)
    assert code == 0, output


@pytest.mark.parametrize("profile", PROFILES)
def test_the_alert_unit_tests_can_fail(profile, tmp_path):
    code, output = rule_unit_tests("otel", profile, tmp_path, alerts={"notReadyFor": "25m"})
    assert code != 0 and "NodeNotReady" in output, output


COLLECTOR_CONFIGS = sorted((ROOT / "otel-collector").glob("*.yaml"))


@pytest.mark.parametrize("path", COLLECTOR_CONFIGS, ids=[p.name for p in COLLECTOR_CONFIGS])
def test_collector_config_pipelines_reference_defined_components(path):
    text = path.read_text()
    assert text.startswith("# Use when:"), "each config starts with a comment saying when to use it"
    cfg = yaml.safe_load(text)
    service = cfg["service"]
    for ext in service.get("extensions", []):
        assert ext in cfg.get("extensions", {}), f"extension {ext} is not defined"
    assert service["pipelines"]
    for name, pipeline in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in cfg.get(kind, {}), f"{name}: {kind[:-1]} {component} is not defined"
        assert pipeline["receivers"] and pipeline["exporters"]


def test_the_chart_ships_the_same_collector_configs():
    shipped = {p.name: p.read_text() for p in COLLECTOR_CONFIGS}
    in_chart = {p.name: p.read_text() for p in sorted((CHART / "files").glob("*.yaml"))}
    assert in_chart == shipped, "run: cp otel-collector/*.yaml helm/kube-node-status/files/"


def test_packaging_script_yields_an_archive_and_an_index_helm_accepts(tmp_path):
    out = tmp_path / "charts"
    run = subprocess.run([str(ROOT / "scripts" / "package-chart"), str(out), "https://charts.example.org"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    archive = out / f"kube-node-status-{chart['version']}.tgz"
    assert archive.exists()
    with helm_python.Chart.load(str(archive)) as loaded:
        assert loaded.name == "kube-node-status"
        assert loaded.render({}, name="from-archive", namespace="x")
    index = yaml.safe_load((out / "index.yaml").read_text())
    entry = index["entries"]["kube-node-status"][0]
    assert entry["version"] == chart["version"]
    assert entry["urls"] == [f"https://charts.example.org/kube-node-status-{chart['version']}.tgz"]
    assert entry["digest"]


def test_helm_show_readme_gives_the_quickstart():
    readme = helm_python.show(str(CHART), output_format="readme")
    quickstart = readme.split("## Quickstart", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in quickstart.strip().splitlines() if line.strip()]
    assert [c.split()[:2] for c in commands] == [["helm", "repo"], ["helm", "install"], ["helm", "test"]], commands
    # The values it names are the chart's.
    for key in re.findall(r"`([a-zA-Z]+(?:\.[a-zA-Z]+)+)=", readme):
        node = yaml.safe_load((CHART / "values.yaml").read_text())
        for part in key.split("."):
            assert part in node, key
            node = node[part]


DASHBOARD = CHART / "dashboards" / "kube-node-status.json"
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "time", "rate", "increase", "irate", "delta", "absent", "bool", "offset",
    "topk", "bottomk", "sort", "sort_desc", "vector", "scalar", "clamp_min", "clamp_max", "label_replace",
}


def metric_names(expr):
    """The metric names an expression reads: identifiers outside label matchers,
    grouping clauses, ranges and strings, that are not PromQL words."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL_WORDS}


def documented_prometheus_names():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    names = set()
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 6:
            names.add(cells[1].strip("`"))
    return names


def test_dashboard_queries_use_only_documented_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    documented = documented_prometheus_names()
    assert "k8s_node_ready" in documented and len(documented) > 30
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= documented, f"{expr}: undocumented {names - documented}"
        used |= names
    # The panels the dashboard promises: readiness, how long NotReady, flaps, cordons, taints, exporter health.
    for needed in ["k8s_node_ready", "k8s_node_condition_last_transition_time_seconds", "k8s_node_condition_transitions_total",
                   "k8s_node_unschedulable", "k8s_node_taint", "kube_node_status_view_age_seconds",
                   "kube_node_status_watch_errors_total", "kube_node_status_otlp_export_failures_total"]:
        assert needed in used, needed
    assert metric_names('sum by (a) (rate(x_total{y="z"}[5m])) and on (b) k8s_node_ready') == {"x_total", "k8s_node_ready"}


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar():
    objects = render({"grafanaDashboard": {"enabled": True}})
    cm = next(o for _, o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kube-node-status.json"]) == json.loads(DASHBOARD.read_text())


def validate_custom_resources(objects):
    run = subprocess.run(["node", str(ROOT / "tests" / "chart" / "validate_crs.cjs")], cwd=ROOT,
                         input=json.dumps(objects), capture_output=True, text=True)
    return run.returncode, run.stdout + run.stderr


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_prometheus_operator_resources_validate_against_the_published_crd_schemas(values):
    crs = [o for _, o in render(values) if o["apiVersion"].startswith("monitoring.coreos.com/")]
    code, output = validate_custom_resources(crs)
    assert code == 0, output


def test_the_crd_validation_can_fail():
    sm = next(o for _, o in render(VALUE_SETS["everything"]) if o["kind"] == "ServiceMonitor")
    sm["spec"]["endpoints"][0]["interval"] = "often"
    code, output = validate_custom_resources([sm])
    assert code == 1 and "ServiceMonitor" in output


GMP_CRDS = ROOT / "tests" / "chart" / "crds" / "gmp"


def gmp_schemas():
    """(apiVersion, kind) → openAPIV3Schema, from the vendored GMP CRDs."""
    schemas = {}
    for path in sorted(GMP_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def unknown_fields(value, schema, path):
    """Fields the schema does not define: the API server would drop them
    without a word (a typo'd field is a setting that never applies)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in value.items():
            if key in schema["properties"]:
                found += unknown_fields(sub, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{path}.{key}: not in the schema")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, sub in value.items():
            found += unknown_fields(sub, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            found += unknown_fields(sub, schema["items"], f"{path}[{i}]")
    return found


# The CRDs mark durations `format: duration`; GMP takes Prometheus durations ("30s", "1h30m").
PROMETHEUS_DURATION = re.compile(r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$")


def gmp_problems(objects):
    import jsonschema
    formats = jsonschema.FormatChecker()
    formats.checks("duration")(lambda v: not isinstance(v, str) or (v != "" and bool(PROMETHEUS_DURATION.match(v))))
    schemas = gmp_schemas()
    problems = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        schema = schemas.get((obj["apiVersion"], obj["kind"]))
        if schema is None:
            problems.append(f"{name}: no CRD for {obj['apiVersion']}")
            continue
        for e in jsonschema.Draft7Validator(schema, format_checker=formats).iter_errors(obj):
            problems.append(f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
        problems += unknown_fields(obj, schema, name)
    return problems


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_gmp_resources_validate_against_gmps_own_crds(values):
    gmp = [o for _, o in render(values) if o["apiVersion"].startswith("monitoring.googleapis.com/")]
    assert not gmp_problems(gmp)


def test_every_gmp_kind_the_chart_renders_is_checked():
    rendered = {o["kind"] for values in VALUE_SETS.values() for _, o in render(values)
                if o["apiVersion"].startswith("monitoring.googleapis.com/")}
    assert rendered == {"PodMonitoring", "Rules", "ClusterRules"}, rendered
    assert {k for _, k in gmp_schemas()} >= rendered


def test_the_gmp_validation_can_fail():
    objects = [o for _, o in render(VALUE_SETS["gmp-alerting"]) if o["apiVersion"].startswith("monitoring.googleapis.com/")]
    pm = copy.deepcopy(next(o for o in objects if o["kind"] == "PodMonitoring"))
    pm["spec"]["endpoints"][0]["interval"] = "often"
    rules = copy.deepcopy(next(o for o in objects if o["kind"] == "Rules"))
    rules["spec"]["groups"][0]["rules"][0]["alertname"] = "typo"
    problems = gmp_problems([pm, rules])
    assert any("PodMonitoring" in p and "interval" in p for p in problems), problems
    assert any("Rules" in p and "alertname: not in the schema" in p for p in problems), problems


def test_security_scan_has_no_failed_checks(tmp_path):
    """checkov over every value set: each remaining finding is justified inline
    (checkov.io/skip annotations in the templates)."""
    for name, values in VALUE_SETS.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all([o for _, o in render(values)]))
    run = subprocess.run([str(ROOT / ".venv-checkov" / "bin" / "checkov"), "-d", str(tmp_path), "--framework", "kubernetes",
                          "--quiet", "--compact", "--skip-download", "--output", "json"], capture_output=True, text=True)
    report = json.loads(run.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["passed"] > 500, summary
    failed = report["results"]["failed_checks"] if isinstance(report, dict) else report[0]["results"]["failed_checks"]
    assert summary["failed"] == 0, [(f["check_id"], f["resource"]) for f in failed]

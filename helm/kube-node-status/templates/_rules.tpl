{{/*
The alerting rules, written once: rendered as a Prometheus Operator
PrometheusRule (prometheusrule.yaml) and as Google Managed Prometheus Rules or
ClusterRules (gmp-rules.yaml). Expressions follow metricNaming. The settings
(for, thresholds) are under .Values.alerts. Every expression asks for
what is wrong (`== 1` of a problem), never for the healthy state, so it works
on one-hot and sparse readings alike (--sparse-readings, the readiness profile).
*/}}
{{- define "kns.ruleGroups" -}}
{{- $fullname := include "kns.fullname" . }}
{{- $ksm := eq .Values.metricNaming "kube-state-metrics" }}
{{- $a := .Values.alerts }}
{{- $node := ternary "node" "k8s_node_name" $ksm }}
{{- $nodeLabel := printf "{{ $labels.%s }}" $node }}
{{- /*
A failover or rollout moves the node series to another pod and instance. So
every node alert reads them without those labels (its identity, and so its
`for` and firing state, carries over), and across the gap between the old
leader's last scrape and the new leader's first (the Lease handover, then one
scrape interval) it reads each series' last value within alerts.failoverBridge.
That fallback holds only while no replica serves node readings at all, so a
deleted or recovered node is never held: "S(x)" below is a node series x,
read live or as its last value. Live, each node's series is the newest
sample among the replicas' (Managed Prometheus has no staleness markers and
keeps a replaced leader's last values for 5 minutes: a max over both would
let the old leader's "Ready" hide a node the new one sees NotReady).
NodeNotReady in kube-state-metrics naming also reads without `status`, so
that Ready going False to Unknown is the same alert, not a new one.
*/}}
{{- $ready := ternary "kube_node_status_ready" "k8s_node_ready" $ksm }}
{{- $newest := "${1} and (timestamp(${1}) == ignoring (instance, pod) group_left max without (instance, pod) (timestamp(${1})))" }}
{{- $live := printf "max without (instance, pod) (%s)" $newest }}
{{- $last := printf "max without (instance, pod) (last_over_time(${1}[%s]))" $a.failoverBridge }}
{{- $liveNotReady := ternary (printf "max without (instance, pod, status) (%s)" $newest) $live $ksm }}
{{- $lastNotReady := ternary (printf "max without (instance, pod, status) (last_over_time(${1}[%s]))" $a.failoverBridge) $last $ksm }}
{{- $gap := printf "unless on (job, namespace) count by (job, namespace) (%s)" $ready }}
{{- $notReady := ternary "S(kube_node_status_condition{condition=\"Ready\",status!=\"true\"}) == 1 unless on (node) S(kube_node_spec_unschedulable) == 1" "S(k8s_node_ready) == 0 unless on (k8s_node_name) S(k8s_node_unschedulable) == 1" $ksm }}
{{- $unreachable := ternary "S(kube_node_spec_taint{key=\"node.kubernetes.io/unreachable\"}) == 1 unless on (node) S(kube_node_spec_unschedulable) == 1" "S(k8s_node_taint{k8s_node_taint_key=\"node.kubernetes.io/unreachable\"}) == 1 unless on (k8s_node_name) S(k8s_node_unschedulable) == 1" $ksm }}
{{- $pressure := ternary "S(kube_node_status_condition{condition=~\"MemoryPressure|DiskPressure|PIDPressure\",status=\"true\"}) == 1" "S(k8s_node_condition_status{k8s_node_condition_type=~\"MemoryPressure|DiskPressure|PIDPressure\",k8s_node_condition_status=\"true\"}) == 1" $ksm }}
- name: kube-node-status.nodes
  rules:
    - alert: NodeNotReady
      expr: ({{ regexReplaceAll "S\\(([^)]*)\\)" $notReady $liveNotReady }}) or (({{ regexReplaceAll "S\\(([^)]*)\\)" $notReady $lastNotReady }}) {{ $gap }})
      for: {{ $a.notReadyFor }}
      labels:
        severity: warning
      annotations:
        summary: Node {{ $nodeLabel }} is not Ready and not cordoned.
        description: The node has not been Ready for {{ $a.notReadyFor }}, and nobody cordoned it.
    - alert: NodeUnreachable
      expr: ({{ regexReplaceAll "S\\(([^)]*)\\)" $unreachable $live }}) or (({{ regexReplaceAll "S\\(([^)]*)\\)" $unreachable $last }}) {{ $gap }})
      for: {{ $a.unreachableFor }}
      labels:
        severity: warning
      annotations:
        summary: Node {{ $nodeLabel }} is unreachable (its kubelet stopped posting status).
        description: The node controller tainted the node node.kubernetes.io/unreachable {{ $a.unreachableFor }} ago; its pods are being evicted.
    - alert: NodeUnderPressure
      expr: ({{ regexReplaceAll "S\\(([^)]*)\\)" $pressure $live }}) or (({{ regexReplaceAll "S\\(([^)]*)\\)" $pressure $last }}) {{ $gap }})
      for: {{ $a.pressureFor }}
      labels:
        severity: warning
      annotations:
        summary: Node {{ $nodeLabel }} reports {{ if $ksm }}{{ "{{ $labels.condition }}" }}{{ else }}{{ "{{ $labels.k8s_node_condition_type }}" }}{{ end }}.
        description: The kubelet has reported the pressure for {{ $a.pressureFor }}; it is evicting pods or refusing new ones.
    - alert: NodeReadinessFlapping
      {{- if $ksm }}
      expr: max without (instance, pod) (increase(kube_node_status_condition_transitions_total{condition="Ready"}[1h])) > {{ $a.flapThreshold }}
      {{- else }}
      expr: max without (instance, pod) (increase(k8s_node_condition_transitions_total{k8s_node_condition_type="Ready"}[1h])) > {{ $a.flapThreshold }}
      {{- end }}
      for: {{ $a.flapFor }}
      labels:
        severity: warning
      annotations:
        summary: Node {{ $nodeLabel }} changed Ready status more than {{ $a.flapThreshold }} times in an hour.
{{- if .Values.nodeLeases.enabled }}
{{- /* Both read whether the heartbeat is stale, as the exporter ages it on its own
clock from when it saw each renewal, never the kubelet's renewTime: a kubelet's
clock skew would move a threshold on time() - renewTime. NotActing is the same
condition held past any grace period; `for` survives a failover (see above). */}}
{{- $stale := ternary "kube_node_heartbeat_stale" "k8s_node_heartbeat_stale" $ksm }}
{{- $heartbeatLost := printf "S(%s) == 1 and on (%s) S(%s) == 1" $stale $node $ready }}
{{- $lost := printf "(%s) or ((%s) %s)" (regexReplaceAll "S\\(([^)]*)\\)" $heartbeatLost $live) (regexReplaceAll "S\\(([^)]*)\\)" $heartbeatLost $last) $gap }}
- name: kube-node-status.heartbeats
  rules:
    - alert: NodeHeartbeatLost
      expr: {{ $lost }}
      for: {{ $a.heartbeatLostFor }}
      labels:
        severity: warning
      annotations:
        summary: The kubelet on node {{ $nodeLabel }} stopped renewing its node Lease; the node is still Ready.
        description: The early warning before NodeNotReady. The kubelet died, hangs, or cannot reach the API server; the node lifecycle controller sets Ready Unknown once the Lease has gone unrenewed for its grace period (40 s, 50 s since Kubernetes 1.32). If Ready never changes, NodeLifecycleControllerNotActing fires.
    - alert: NodeLifecycleControllerNotActing
      expr: {{ $lost }}
      for: {{ $a.controllerNotActingFor }}
      labels:
        severity: critical
      annotations:
        summary: Node {{ $nodeLabel }}'s kubelet stopped renewing its Lease, and the node has stayed Ready for {{ $a.controllerNotActingFor }} since.
        description: The node lifecycle controller (kube-controller-manager) should have set Ready Unknown after its grace period and is not acting, so pods on dead nodes are not evicted and every readiness signal says the cluster is healthy. A control-plane problem, not a node problem - check kube-controller-manager (running, partitioned, holding its leader Lease).
{{- end }}
- name: kube-node-status.exporter
  rules:
    - alert: KubeNodeStatusExporterDown
      expr: absent(up{job=~"{{ $fullname }}|{{ .Release.Namespace }}/{{ $fullname }}",namespace="{{ .Release.Namespace }}"} == 1)
      for: {{ $a.exporterDownFor }}
      labels:
        severity: warning
      annotations:
        summary: kube-node-status is not being scraped; node readiness is not monitored.
    - alert: KubeNodeStatusWatchErrors
      expr: sum by (namespace, pod) (rate(kube_node_status_watch_errors_total[5m])) > 0 and on (namespace, pod) kube_node_status_view_age_seconds > 0
      for: {{ $a.watchErrorsFor }}
      labels:
        severity: warning
      annotations:
        summary: kube-node-status cannot watch nodes; its readings are getting stale.
        description: The node watch has been failing for 10 minutes. Check the exporter's log for the error (a missing RBAC permission is named there).
    - alert: KubeNodeStatusOtlpDataRejected
      expr: sum by (namespace, pod) (increase(kube_node_status_otlp_export_rejected_total[15m])) > 0 or sum by (namespace, pod) (increase(kube_node_status_logs_records_total{outcome="rejected"}[15m])) > 0
      labels:
        severity: warning
      annotations:
        summary: The OTLP receiver took kube-node-status's requests but refused some of their metric points or condition-change records; they were never stored.
        description: The receiver answered with a partial success. The exporter logs its message once per streak (an attribute key or metric name the backend refuses, points too old). Backends such as Google's Telemetry API do this instead of failing the request.
    - alert: KubeNodeStatusCertificateExpiring
      expr: min by (namespace, pod) (kube_node_status_tls_certificate_expiration_timestamp_seconds) - time() < {{ $a.certificateExpiryDays }} * 86400
      for: 1h
      labels:
        severity: warning
      annotations:
        summary: The TLS certificate kube-node-status serves /metrics with expires in {{ "{{ $value | humanizeDuration }}" }}.
        description: The exporter serves the certificate in its mounted Secret and picks up a renewed one within a second of the kubelet updating the files. Check that cert-manager (or whoever issues it) renews the Secret; kube_node_status_tls_certificate_reload_failures_total counts renewed files that did not load.
    - alert: KubeNodeStatusViewStale
      expr: max by (namespace, pod) (kube_node_status_view_age_seconds) > {{ $a.staleAfterSeconds }}
      labels:
        severity: critical
      annotations:
        summary: kube-node-status has not seen the node API for over {{ $a.staleAfterSeconds }} s; node readings are stale.
        description: Readings show the cluster as it was when the watch broke. /readyz fails too; check the exporter's log and the API server.
    - alert: KubeNodeStatusNoLeader
      expr: sum by (namespace, job) (kube_node_status_leader) == 0
      for: {{ $a.noLeaderFor }}
      labels:
        severity: warning
      annotations:
        summary: kube-node-status has {{ "{{ $value }}" }} replicas holding the leader Lease, not one; node readings are exported by none or by several.
        description: With --leader-election exactly one replica reports kube_node_status_leader 1. With none, check that the Lease can be written (RBAC on coordination.k8s.io leases); with several, check each replica's log for when it became the leader.
    {{- /* Several leaders: held for longer than Managed Prometheus's 5-minute lookback, which has no staleness markers, so a replaced leader's last 1 beside its successor's during a rollout does not fire it. */}}
    - alert: KubeNodeStatusNoLeader
      expr: sum by (namespace, job) (kube_node_status_leader) > 1
      for: 6m
      labels:
        severity: warning
      annotations:
        summary: kube-node-status has {{ "{{ $value }}" }} replicas holding the leader Lease, not one; node readings are exported by none or by several.
        description: With --leader-election exactly one replica reports kube_node_status_leader 1. With none, check that the Lease can be written (RBAC on coordination.k8s.io leases); with several, check each replica's log for when it became the leader.
{{- end }}

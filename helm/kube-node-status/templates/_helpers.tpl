{{/* Chart name, overridable. */}}
{{- define "kns.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped full name: every object, including cluster-scoped ones, is named from it so two releases never collide. */}}
{{- define "kns.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kns.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kns.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kns.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kns.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kns.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kns.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kns.image" -}}
{{- include "kns.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) }}
{{- end }}

{{/* repository:tag, with @digest when one is set: the digest is what is pulled, the tag says what it is. */}}
{{- define "kns.imageRef" -}}
{{- if .digest }}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" .digest) }}
{{- fail (printf "image digest %q is not sha256:<64 hex digits>" .digest) }}
{{- end }}
{{- printf "%s:%s@%s" .repository .tag .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}

{{/* The exporters in effect: OTLP is implied by the collector sidecar. */}}
{{- define "kns.metricsExporter" -}}
{{- if and .Values.collector.enabled (not (contains "otlp" .Values.metricsExporter)) }}
{{- printf "%s,otlp" .Values.metricsExporter | trimPrefix "none," }}
{{- else }}
{{- .Values.metricsExporter }}
{{- end }}
{{- end }}

{{/* The name scrapers verify in the serving certificate. */}}
{{- define "kns.tlsServerName" -}}
{{- default (printf "%s.%s.svc" (include "kns.fullname" .) .Release.Namespace) .Values.tls.serverName }}
{{- end }}

{{/*
The name of the release's cluster-scoped objects (ClusterRoles and their
bindings): the full name and the namespace, so that releases of one name in
two namespaces do not claim the same objects. Cut before the namespace is
added, so that a long name keeps it.
*/}}
{{- define "kns.clusterName" -}}
{{- printf "%s-%s" (include "kns.fullname" . | trunc (int (sub 62 (len .Release.Namespace)))) .Release.Namespace | trimSuffix "-" }}
{{- end }}

{{/* The scraper service account of metricsAuth.kubernetes, and its token Secret. */}}
{{- define "kns.scraperName" -}}
{{- /* Cut before the suffix, so that a long name never ends up the exporter's own. */}}
{{- printf "%s-scraper" (include "kns.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* The Secret whose token the chart's monitors send, empty when /metrics is open. */}}
{{- define "kns.scrapeSecretName" -}}
{{- if .Values.metricsAuth.enabled }}{{ if .Values.metricsAuth.kubernetes }}{{ include "kns.scraperName" . }}{{ else }}{{ .Values.metricsAuth.secretName }}{{ end }}{{ end }}
{{- end }}

{{/* The key of that Secret. */}}
{{- define "kns.scrapeSecretKey" -}}
{{- if .Values.metricsAuth.kubernetes }}token{{ else }}{{ .Values.metricsAuth.secretKey }}{{ end }}
{{- end }}

{{/* The Secret scrapers read the CA from. */}}
{{- define "kns.caSecretName" -}}
{{- default .Values.tls.secretName .Values.tls.caSecretName }}
{{- end }}

{{/*
Refuses value combinations that render but cannot work, each in one message
naming the values. Included once, by the Deployment.
*/}}
{{- define "kns.validate" -}}
{{- if and .Values.optionalFamilies (ne .Values.metricNaming "kube-state-metrics") }}
{{- fail (printf "optionalFamilies=%s are kube-state-metrics families: they need metricNaming kube-state-metrics" (join "," .Values.optionalFamilies)) }}
{{- end }}
{{- if regexMatch "^(0+(\\.0*)?(ms|s|m|h))+$|^[0-9]{1,3}(\\.[0-9]+)?ms$|^0?\\.[0-9]+s$" (toString .Values.otlp.exportInterval) }}
{{- fail (printf "otlp.exportInterval=%s is under 1s, which the exporter refuses (every interval and timeout has a 1 s floor)" (toString .Values.otlp.exportInterval)) }}
{{- end }}
{{- if and .Values.metricsAuth.audiences (not (and .Values.metricsAuth.enabled .Values.metricsAuth.kubernetes)) }}
{{- fail "metricsAuth.audiences needs metricsAuth.enabled and metricsAuth.kubernetes: audiences are checked by the TokenReview" }}
{{- end }}
{{- if and .Values.metricsAuth.enabled .Values.metricsAuth.kubernetes .Values.metricsAuth.audiences (or .Values.serviceMonitor.enabled .Values.podMonitor.enabled .Values.podMonitoring.enabled) }}
{{- fail "metricsAuth.audiences with the chart's monitors: they send the <fullname>-scraper token Secret, a kubernetes.io/service-account-token that Kubernetes issues for the API server's audience only, so the exporter would refuse it. Have the scrapers send a projected token with one of the audiences (serviceAccountToken.audience), and turn the chart's monitors off" }}
{{- end }}
{{- if and .Values.metricsAuth.enabled .Values.metricsAuth.kubernetes (not .Values.tls.enabled) }}
{{- fail "metricsAuth.kubernetes needs tls.enabled: scrapers then send service-account tokens that are valid against the API server, which must not cross the pod network in cleartext" }}
{{- end }}
{{- if and .Values.podMonitoring.enabled .Values.tls.enabled (not .Values.tls.caSecretName) }}
{{- fail "podMonitoring with tls.enabled needs tls.caSecretName: a Secret holding only ca.crt. GMP's collector must be allowed to read the Secret its PodMonitoring names, and RBAC grants a Secret whole, so tls.secretName would give it tls.key" }}
{{- end }}
{{- $scraped := or .Values.serviceMonitor.enabled .Values.podMonitor.enabled .Values.podMonitoring.enabled }}
{{- if and (or $scraped .Values.prometheusRule.enabled .Values.gmpRules.enabled) (not (has "prometheus" (splitList "," .Values.metricsExporter))) }}
{{- fail (printf "metricsExporter=%s serves no /metrics, which serviceMonitor, podMonitor, podMonitoring, prometheusRule and gmpRules read: add prometheus to metricsExporter, or turn those off" .Values.metricsExporter) }}
{{- end }}
{{- $ready := ternary "kube_node_status_ready" "k8s.node.ready" (eq .Values.metricNaming "kube-state-metrics") }}
{{- if and (or .Values.prometheusRule.enabled .Values.gmpRules.enabled) (or (and .Values.metricDenylist (regexMatch (printf "^(?:%s)$" .Values.metricDenylist) $ready)) (and .Values.metricAllowlist (not (regexMatch (printf "^(?:%s)$" .Values.metricAllowlist) $ready)))) }}
{{- fail (printf "metricAllowlist/metricDenylist leave out %s, which the alert rules (prometheusRule, gmpRules) read to tell a failover's gap from a healthy cluster" $ready) }}
{{- end }}
{{- if and .Values.gmpRules.enabled (not .Values.podMonitoring.enabled) }}
{{- fail "gmpRules needs podMonitoring.enabled: the rules read the names /metrics serves (k8s_node_ready, *_total, up), and over OTLP (otlp.auth=google, a sidecar-* collector config) Google stores other names and no up, so no alert could fire and KubeNodeStatusExporterDown would fire forever" }}
{{- end }}
{{- if and .Values.collector.enabled (eq .Values.collector.config "gateway.yaml") }}
{{- $names := list }}
{{- range .Values.collector.env }}{{ $names = append $names .name }}{{ end }}
{{- if not (and (has "OTLP_BACKEND_ENDPOINT" $names) (has "PROMETHEUS_REMOTE_WRITE_URL" $names)) }}
{{- fail "collector.config=gateway.yaml needs OTLP_BACKEND_ENDPOINT and PROMETHEUS_REMOTE_WRITE_URL in collector.env: the collector cannot start without them" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Non-empty when scrapes carry the token of a shared Secret (metricsAuth without kubernetes). */}}
{{- define "kns.tokenSecret" -}}
{{- if and .Values.metricsAuth.enabled (not .Values.metricsAuth.kubernetes) }}{{ .Values.metricsAuth.secretName }}{{ end }}
{{- end }}

{{/*
The interval /metrics is scraped at: the PodMonitoring's, else the
ServiceMonitor's or PodMonitor's, else Prometheus's common 30s.
*/}}
{{- define "kns.scrapeInterval" -}}
{{- if .Values.podMonitoring.enabled -}}{{ .Values.podMonitoring.interval }}
{{- else if .Values.serviceMonitor.enabled -}}{{ .Values.serviceMonitor.interval }}
{{- else if .Values.podMonitor.enabled -}}{{ .Values.podMonitor.interval }}
{{- else -}}30s
{{- end -}}
{{- end }}

{{/*
The metric profile: metricProfile when set; otherwise readiness when the
readings go to Google Cloud, which bills every sample (a PodMonitoring or GMP
rules, the Telemetry API, or a collector sidecar config that sends to Google),
and full elsewhere.
*/}}
{{- define "kns.metricProfile" -}}
{{- if .Values.metricProfile -}}{{ .Values.metricProfile }}
{{- else if include "kns.toGoogle" . -}}readiness
{{- else -}}full
{{- end -}}
{{- end }}

{{/* Non-empty when the chart sends the readings to Google Cloud. */}}
{{- define "kns.toGoogle" -}}
{{- if or .Values.podMonitoring.enabled .Values.gmpRules.enabled (eq .Values.otlp.auth "google") (and .Values.collector.enabled (hasPrefix "sidecar-" .Values.collector.config)) }}true{{ end }}
{{- end }}

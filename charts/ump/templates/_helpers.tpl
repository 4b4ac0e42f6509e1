{{/* Common labels for every object of the release. */}}
{{- define "ump.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ump
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "api"). */}}
{{- define "ump.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Name of a release object: "<release>-<suffix>", cut to a DNS label. */}}
{{- define "ump.name" -}}
{{- printf "%s-%s" .root.Release.Name .suffix | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ump.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" .Release.Name) .Values.operator.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ump.api.serviceAccountName" -}}
{{- printf "%s-api" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ump.worker.serviceAccountName" -}}
{{- default (printf "%s-worker" .Release.Name) .Values.worker.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ump.events.serviceAccountName" -}}
{{- default (printf "%s-events" .Release.Name) .Values.events.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The namespace of the channels (and of the workers). */}}
{{- define "ump.channelsNamespace" -}}
{{- default .Release.Namespace .Values.channels.namespace }}
{{- end }}

{{- define "ump.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The chart-made Secret of inline URLs (development). */}}
{{- define "ump.connectionsSecret" -}}
{{- include "ump.name" (dict "root" . "suffix" "connections") }}
{{- end }}

{{/*
A connection URL as an EnvVar from a Secret: (dict "root" $ "name" "UMP_REDIS_URL" "values"
.Values.redis "key" "redis-url" "what" "redis"). Empty when neither a Secret nor a URL is given.
*/}}
{{- define "ump.urlEnv" -}}
{{- if .values.existingSecret }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef: {name: {{ .values.existingSecret | quote }}, key: {{ .values.existingSecretKey | quote }}}
{{- else if .values.url }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef: {name: {{ include "ump.connectionsSecret" .root | quote }}, key: {{ .key | quote }}}
{{- end }}
{{- end }}

{{/*
Connection settings shared by the API, the operator's Kafka clients and the workers: Kafka TLS and
SASL as UMP_KAFKA_CONFIG_* (read by ump_core::queue::KafkaSettings), then, with "urls", Redis,
MySQL and AMQP URLs from Secrets. UMP_KAFKA_BOOTSTRAP is not here: the operator sets it on the
workers itself.
*/}}
{{- define "ump.kafkaEnv" -}}
{{- $kafka := .Values.kafka }}
{{- $protocol := "" }}
{{- if and $kafka.tls.enabled $kafka.sasl.mechanism }}{{ $protocol = "SASL_SSL" }}
{{- else if $kafka.tls.enabled }}{{ $protocol = "SSL" }}
{{- else if $kafka.sasl.mechanism }}{{ $protocol = "SASL_PLAINTEXT" }}
{{- end }}
{{- if $protocol }}
- name: UMP_KAFKA_CONFIG_SECURITY_PROTOCOL
  value: {{ $protocol }}
{{- end }}
{{- if $kafka.tls.enabled }}
- name: UMP_KAFKA_CONFIG_SSL_CA_LOCATION
  value: {{ $kafka.tls.caFile | quote }}
{{- end }}
{{- if $kafka.sasl.mechanism }}
{{- if not $kafka.sasl.existingSecret }}
{{- fail "kafka.sasl.existingSecret: name the Secret holding the SASL user name and password (kafka.sasl.mechanism is set)" }}
{{- end }}
- name: UMP_KAFKA_CONFIG_SASL_MECHANISM
  value: {{ $kafka.sasl.mechanism | quote }}
- name: UMP_KAFKA_CONFIG_SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $kafka.sasl.existingSecret | quote }}, key: {{ $kafka.sasl.usernameKey | quote }}}
- name: UMP_KAFKA_CONFIG_SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $kafka.sasl.existingSecret | quote }}, key: {{ $kafka.sasl.passwordKey | quote }}}
{{- end }}
{{- range $property, $value := $kafka.config }}
{{- /* YAML numbers arrive as floats: 1048576 must not become 1.048576e+06. */}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}{{ $value = $value | int64 }}{{ end }}
- name: {{ printf "UMP_KAFKA_CONFIG_%s" ($property | upper | replace "." "_") }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Redis, MySQL and (optional) AMQP URLs, each from a Secret. */}}
{{- define "ump.urlsEnv" -}}
{{- include "ump.urlEnv" (dict "root" . "name" "UMP_REDIS_URL" "values" .Values.redis "key" "redis-url") }}
{{- include "ump.urlEnv" (dict "root" . "name" "UMP_MYSQL_URL" "values" .Values.mysql "key" "mysql-url") }}
{{- include "ump.urlEnv" (dict "root" . "name" "UMP_AMQP_URL" "values" .Values.activemq "key" "amqp-url") }}
{{- end }}

{{/* Fails with a clear message when a required connection is missing. */}}
{{- define "ump.validate" -}}
{{- if not .Values.kafka.bootstrap }}
{{- fail "kafka.bootstrap is required: the Kafka bootstrap servers, e.g. --set kafka.bootstrap=b-1.msk.example:9096" }}
{{- end }}
{{- if not (or .Values.redis.existingSecret .Values.redis.url) }}
{{- fail "Redis is required: set redis.existingSecret (a Secret holding the URL) or, for development, redis.url" }}
{{- end }}
{{- if not (or .Values.mysql.existingSecret .Values.mysql.url) }}
{{- fail "MySQL is required: set mysql.existingSecret (a Secret holding the URL) or, for development, mysql.url" }}
{{- end }}
{{- $scaling := .Values.events.autoscaling }}
{{- if and .Values.events.enabled $scaling.enabled (gt (int $scaling.minReplicas) (int $scaling.maxReplicas)) }}
{{- fail "events.autoscaling: minReplicas must not be above maxReplicas" }}
{{- end }}
{{- if and .Values.api.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.api.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.api.podDisruptionBudget.maxUnavailable)) }}
{{- fail "api.podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security Standard, for every container of the chart. */}}
{{- define "ump.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ump.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ not .Values.dev.writableRootFilesystem }}
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* Volumes and mounts every UMP container has: a writable /tmp and the optional tls Secret. */}}
{{- define "ump.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret | quote }}
{{- end }}
{{- end }}

{{- define "ump.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.existingSecret }}
- name: tls
  mountPath: /etc/ump/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* Common labels for every object of the release. */}}
{{- define "ump.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "ump.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" .Release.Name) .Values.operator.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- end }}

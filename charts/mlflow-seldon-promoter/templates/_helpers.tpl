{{/* The release's full name: the release name when it already holds the chart's name. */}}
{{- define "promoter.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "promoter.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "promoter.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: {{ .Chart.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "promoter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "promoter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator's PROMOTER_* settings, with the metrics port the Service and probes use. */}}
{{- define "promoter.settings" -}}
{{- if hasKey .Values.settings "PROMOTER_METRICS_PORT" }}
{{- fail "settings.PROMOTER_METRICS_PORT: set metrics.port instead (the Service and the container port follow it)" }}
{{- end }}
{{- $settings := merge (dict "PROMOTER_METRICS_PORT" (toString .Values.metrics.port)) .Values.settings -}}
{{- range $key, $value := $settings }}
{{- if not (regexMatch "^PROMOTER_[A-Z_]+$" $key) }}
{{- fail (printf "settings.%s: the operator reads PROMOTER_* variables only" $key) }}
{{- end }}
{{ $key }}: {{ toString $value | quote }}
{{- end }}
{{- end -}}

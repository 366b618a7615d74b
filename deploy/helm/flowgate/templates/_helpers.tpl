{{/*
Name of every object of the release: the release name when it contains "flowgate" (a release
named flowgate gives flowgate, flowgate-api-token, ...), else "<release>-flowgate".
*/}}
{{- define "flowgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the agent's pods (DaemonSet selector, Service selector). */}}
{{- define "flowgate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "flowgate.labels" -}}
{{ include "flowgate.selectorLabels" . }}
app.kubernetes.io/component: agent
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The Secret holding the API token. */}}
{{- define "flowgate.tokenSecret" -}}
{{- .Values.apiToken.existingSecret | default (printf "%s-api-token" (include "flowgate.fullname" .)) -}}
{{- end -}}

{{/* FLOWGATE_HTTP_ADDR: bindAddress and port, IPv6 addresses in brackets. */}}
{{- define "flowgate.httpAddr" -}}
{{- if contains ":" .Values.http.bindAddress -}}
{{- printf "[%s]:%d" .Values.http.bindAddress (int .Values.http.port) -}}
{{- else -}}
{{- printf "%s:%d" .Values.http.bindAddress (int .Values.http.port) -}}
{{- end -}}
{{- end -}}

{{/* The chart's name, or nameOverride. */}}
{{- define "crawler-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: fullnameOverride, else "<release>-<name>" (just "<release>"
when the release name already contains the chart name). Truncated so that the longest suffix
added below ("-controller-leader-election", 27 characters) still fits in 63.
*/}}
{{- define "crawler-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 36 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 36 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 36 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "crawler-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object, besides name and instance. */}}
{{- define "crawler-operator.baseLabels" -}}
helm.sh/chart: {{ include "crawler-operator.chart" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: crawler-operator
{{- end }}

{{/* Labels on every object. */}}
{{- define "crawler-operator.labels" -}}
app.kubernetes.io/name: {{ include "crawler-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "crawler-operator.baseLabels" . }}
{{- end }}

{{/*
Labels of a Pod template: the given selector labels (which win), the base labels, then the
user's extra labels. Call with (list $ "<selectorLabels template>" $extraLabels).
*/}}
{{- define "crawler-operator.podLabels" -}}
{{- $root := index . 0 }}
{{- $selector := include (index . 1) $root | fromYaml }}
{{- $base := include "crawler-operator.baseLabels" $root | fromYaml }}
{{- toYaml (merge (dict) $selector $base (index . 2 | default dict)) }}
{{- end }}

{{/* Selector labels of the controller Pods (immutable once installed). */}}
{{- define "crawler-operator.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crawler-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
Selector labels of the worker Pods (immutable once installed). The component label is also what
the controller's default --worker-selector matches.
*/}}
{{- define "crawler-operator.worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crawler-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: crawler-worker
{{- end }}

{{- define "crawler-operator.controller.fullname" -}}
{{- printf "%s-controller" (include "crawler-operator.fullname" .) }}
{{- end }}

{{- define "crawler-operator.worker.fullname" -}}
{{- printf "%s-worker" (include "crawler-operator.fullname" .) }}
{{- end }}

{{- define "crawler-operator.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "crawler-operator.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "crawler-operator.worker.serviceAccountName" -}}
{{- if .Values.worker.serviceAccount.create }}
{{- default (include "crawler-operator.worker.fullname" .) .Values.worker.serviceAccount.name }}
{{- else }}
{{- required "worker.serviceAccount.name is required when worker.serviceAccount.create is false" .Values.worker.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Where the workers run: the watched namespace when the controller watches one, else the release
namespace. The controller only assigns a CrawlerResource to workers in the resource's own
namespace, so workers anywhere else would never get work.
*/}}
{{- define "crawler-operator.workerNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}

{{/* The leader-election Lease (in the release namespace). */}}
{{- define "crawler-operator.leaseName" -}}
{{- default (printf "%s-leader" (include "crawler-operator.fullname" .)) .Values.controller.leaderElection.leaseName }}
{{- end }}

{{- define "crawler-operator.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Environment both processes share: who they are (downward API) and how they log. */}}
{{- define "crawler-operator.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
- name: RUST_LOG
  value: {{ .Values.logging.level | quote }}
- name: CRAWLER_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
{{- end }}

{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "mdo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; names every object of the release. */}}
{{- define "mdo.fullname" -}}
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

{{- define "mdo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mdo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mdo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mdo.labels" -}}
helm.sh/chart: {{ include "mdo.chart" . }}
{{ include "mdo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "mdo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mdo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false: name an existing ServiceAccount" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mdo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "mdo.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtime.image.repository (default .Chart.AppVersion .Values.runtime.image.tag) }}
{{- end }}

{{/* The Secret holding MLflow/S3 credentials: an existing one or the one this chart creates. */}}
{{- define "mdo.mlflowSecretName" -}}
{{- default (printf "%s-mlflow" (include "mdo.fullname" .)) .Values.mlflow.existingSecret }}
{{- end }}

{{/* Secret name the runtime pods get as env (MDO_RUNTIME_ENV_SECRET); empty: none. */}}
{{- define "mdo.runtimeEnvSecret" -}}
{{- if .Values.runtime.envSecret }}
{{- .Values.runtime.envSecret }}
{{- else if .Values.runtime.shareMlflowSecret }}
{{- include "mdo.mlflowSecretName" . }}
{{- end }}
{{- end }}

{{- define "mdo.operatorNamespace" -}}
{{- default .Release.Namespace .Values.operator.namespace }}
{{- end }}

{{/*
Watched namespaces as a JSON list. Cluster-wide: as given (empty = every namespace). Namespaced: as
given or the release namespace, never empty (an empty list would make the operator watch the whole
cluster, which namespaced RBAC forbids).
*/}}
{{- define "mdo.watchNamespaces" -}}
{{- if and (not .Values.rbac.clusterWide) (empty .Values.operator.watchNamespaces) }}
{{- list .Release.Namespace | toJson }}
{{- else }}
{{- .Values.operator.watchNamespaces | default list | uniq | toJson }}
{{- end }}
{{- end }}

{{/* Fail early, naming the value and the fix, on combinations the operator cannot run with. */}}
{{- define "mdo.validate" -}}
{{- if not .Values.rbac.clusterWide }}
{{- $watched := include "mdo.watchNamespaces" . | fromJsonArray }}
{{- $target := include "mdo.operatorNamespace" . }}
{{- if and .Values.operator.mlflowPoll.enabled (not (has $target $watched)) }}
{{- fail (printf "operator.namespace %q (where MLflow-managed ModelDeployments are created) is not in operator.watchNamespaces %v; with rbac.clusterWide=false add it to operator.watchNamespaces" $target $watched) }}
{{- end }}
{{- end }}
{{- if and (not .Values.mlflow.existingSecret) (not .Values.mlflow.trackingUri) }}
{{- fail "mlflow.trackingUri is empty: set it to the MLflow server URL, or set mlflow.existingSecret to a Secret with key MLFLOW_TRACKING_URI" }}
{{- end }}
{{- range $name, $value := dict "metrics.port" .Values.metrics.port "metrics.kopfLivenessPort" .Values.metrics.kopfLivenessPort }}
{{- $port := int $value }}
{{- if or (lt $port 1024) (gt $port 65535) }}
{{- fail (printf "%s %d: the operator runs as non-root, so use a port between 1024 and 65535" $name $port) }}
{{- end }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.metrics.kopfLivenessPort) }}
{{- fail (printf "metrics.port and metrics.kopfLivenessPort are both %d: the metrics server and kopf's liveness server need different ports" (int .Values.metrics.port)) }}
{{- end }}
{{- end }}

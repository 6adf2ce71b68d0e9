{{/* Chart name, overridable. */}}
{{- define "paxos-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects; names are cut at 63 characters because some Kubernetes name
fields are limited to that (DNS labels). A release named like the chart does not repeat it.
*/}}
{{- define "paxos-operator.fullname" -}}
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

{{/* Value of the helm.sh/chart label. */}}
{{- define "paxos-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "paxos-operator.labels" -}}
helm.sh/chart: {{ include "paxos-operator.chart" . }}
{{ include "paxos-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels the Deployment and the metrics Service select on: stable across upgrades. */}}
{{- define "paxos-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paxos-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "paxos-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paxos-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "paxos-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Default paxos-node image of PaxosGroups without spec.image. */}}
{{- define "paxos-operator.nodeImage" -}}
{{- printf "%s:%s" .Values.nodeImage.repository (default .Chart.AppVersion .Values.nodeImage.tag) }}
{{- end }}

{{/*
What the operator may do with the objects it manages. Shared by the ClusterRole and the Role so
the two scopes grant the same verbs. Leases are not here: leader election needs them only in the
release namespace (see leader-election-rbac.yaml).
*/}}
{{- define "paxos-operator.rules" -}}
- apiGroups: ["paxos.dev"]
  resources: ["paxosgroups"]
  verbs: ["get", "list", "watch", "update", "patch"]
- apiGroups: ["paxos.dev"]
  resources: ["paxosgroups/status"]
  verbs: ["get", "update", "patch"]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: ["paxos.dev"]
  resources: ["paxosgroups/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Pods are read for exit codes and deleted after a checkpoint load (exit 75) or for a rolling
# update; PVCs are grown (patch) when spec.storage.size grows and deleted only when a member is
# removed for good.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

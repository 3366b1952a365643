{{- define "raftmq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "raftmq.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "raftmq.name" .) .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s-operator" .Release.Name (include "raftmq.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "raftmq.selectorLabels" -}}
{{- /* Fixed: brokers' NetworkPolicies admit the operator by this label. */}}
app.kubernetes.io/name: raftmq-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "raftmq.labels" -}}
{{ include "raftmq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: raftmq
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "raftmq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "raftmq.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The rules the operator needs on the namespaces it manages. */}}
{{- define "raftmq.managerRules" -}}
- apiGroups: [raftmq.io]
  resources: [mqttclusters]
  verbs: [get, list, watch]
- apiGroups: [raftmq.io]
  resources: [mqttclusters/status]
  verbs: [get, patch, update]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [services, configmaps, secrets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, patch]
# Membership management reads the pods (ready, which template) before it
# calls their brokers' Admin service.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, update, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, create, patch, update, delete]
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [get, create, patch, update, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* The example cluster's name. */}}
{{- define "raftmq.exampleClusterName" -}}
{{- printf "%s-mqtt" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/*
Where the example cluster goes, and the namespace the NOTES' commands use:
exampleCluster.namespace, else the first watched namespace, else the
release namespace. A namespace the operator does not watch is refused: the
cluster would sit there with nobody reconciling it.
*/}}
{{- define "raftmq.clusterNamespace" -}}
{{- $ns := .Values.exampleCluster.namespace | default (first .Values.watchNamespaces) | default .Release.Namespace -}}
{{- if and .Values.watchNamespaces (not (has $ns .Values.watchNamespaces)) -}}
{{- fail (printf "exampleCluster.namespace %s is not one of watchNamespaces (%s): the operator would never reconcile a cluster there" $ns (join ", " .Values.watchNamespaces)) -}}
{{- end -}}
{{- $ns -}}
{{- end -}}

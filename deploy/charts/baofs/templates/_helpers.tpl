{{/*
Name of every object: the release name, or <release>-baofs when the release name does not
contain "baofs".
*/}}
{{- define "baofs.fullname" -}}
{{- if contains "baofs" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-baofs" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "baofs.selectorLabels" -}}
app.kubernetes.io/name: baofs
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "baofs.labels" -}}
{{ include "baofs.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: baofs
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* kubelet's root directory: kubeletRootDir, else linux.kubeletRootDir; no trailing slash. */}}
{{- define "baofs.kubeletRootDir" -}}
{{- $dir := .Values.kubeletRootDir | default .Values.linux.kubeletRootDir | default "/var/lib/kubelet" -}}
{{- if ne $dir "/" }}{{ $dir | trimSuffix "/" }}{{ else }}{{ $dir }}{{ end -}}
{{- end -}}

{{/*
Host directory of the CSI socket: upstream's plugins/csi-secrets-store for the upstream driver
name (same registration path as the Secrets Store CSI Driver), plugins/<driverName> otherwise.
*/}}
{{- define "baofs.pluginDir" -}}
{{- if eq .Values.driverName "secrets-store.csi.k8s.io" -}}
{{ include "baofs.kubeletRootDir" . }}/plugins/csi-secrets-store
{{- else -}}
{{ include "baofs.kubeletRootDir" . }}/plugins/{{ .Values.driverName }}
{{- end -}}
{{- end -}}

{{/*
The holder DaemonSet's labels. Its selector (name baofs-holder) and the driver's (name baofs)
never match each other's pods; the driver's selector is immutable, so it stays as it was.
*/}}
{{- define "baofs.holderSelectorLabels" -}}
app.kubernetes.io/name: baofs-holder
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "baofs.holderLabels" -}}
{{ include "baofs.holderSelectorLabels" . }}
app.kubernetes.io/component: holder
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: baofs
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
The driver DaemonSet's updateStrategy: linux.updateStrategy when set; else, with the holder, a
surge (the new pod takes the volumes over from the old one, KEP-1591); without it, OnDelete
(a driver restart would break the node's mounts).
*/}}
{{- define "baofs.driverUpdateStrategy" -}}
{{- if .Values.linux.updateStrategy -}}
{{ toYaml .Values.linux.updateStrategy }}
{{- else if .Values.holder.enabled -}}
type: RollingUpdate
rollingUpdate:
  maxSurge: 1
  maxUnavailable: 0
{{- else -}}
type: OnDelete
{{- end -}}
{{- end -}}

{{- define "baofs.serviceAccountName" -}}
{{ include "baofs.fullname" . }}
{{- end -}}

{{/* baofs' log filter: logLevel, else logVerbosity mapped (0-3 info, 4-5 debug, 6+ trace). */}}
{{- define "baofs.logLevel" -}}
{{- if .Values.logLevel -}}
{{ .Values.logLevel }}
{{- else -}}
{{- $v := int (.Values.logVerbosity | default 0) -}}
{{- if ge $v 6 }}trace{{ else if ge $v 4 }}debug{{ else }}info{{ end -}}
{{- end -}}
{{- end -}}

{{- define "baofs.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Refusals: configurations that would deploy and then fail every mount. */}}
{{- define "baofs.validate" -}}
{{- $audiences := list -}}
{{- range .Values.tokenRequests }}{{ $audiences = append $audiences .audience }}{{ end -}}
{{- if not $audiences -}}
{{- fail "tokenRequests is empty: baofs logs in to OpenBao with the pod's token that kubelet passes for the SPC's audience (default openbao)" -}}
{{- end -}}
{{- if ne (len $audiences) (len (uniq $audiences)) -}}
{{- fail "tokenRequests: each audience may appear once" -}}
{{- end -}}
{{- end -}}

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
{{- if .Values.holder.enabled -}}
{{- fail "holder.enabled: baofs has no FUSE fd holder yet (restart-survival issue); leave it false" -}}
{{- end -}}
{{- $audiences := list -}}
{{- range .Values.tokenRequests }}{{ $audiences = append $audiences .audience }}{{ end -}}
{{- if not $audiences -}}
{{- fail "tokenRequests is empty: baofs logs in to OpenBao with the pod's token that kubelet passes for the SPC's audience (default openbao)" -}}
{{- end -}}
{{- if ne (len $audiences) (len (uniq $audiences)) -}}
{{- fail "tokenRequests: each audience may appear once" -}}
{{- end -}}
{{- end -}}

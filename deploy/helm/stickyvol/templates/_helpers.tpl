{{/*
Labels of every object: the base's part-of, plus the ones that tell which
release and chart made it.
*/}}
{{- define "stickyvol.labels" -}}
app.kubernetes.io/part-of: stickyvol
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of the agent's pods, and so the DaemonSet's selector, which cannot
change once created: keep it to this one label.
*/}}
{{- define "stickyvol.selectorLabels" -}}
app.kubernetes.io/name: stickyvol-node
{{- end }}

{{/*
Refuses a data root at or below the kubelet root: a mount below the
Bidirectional kubelet root propagates back to the host and is left there at
every container restart.
*/}}
{{- define "stickyvol.checkRoots" -}}
{{- $kubelet := printf "%s/" (trimSuffix "/" .Values.kubeletRoot) -}}
{{- $data := printf "%s/" (trimSuffix "/" .Values.dataRoot) -}}
{{- if hasPrefix $kubelet $data -}}
{{- fail (printf "dataRoot %s must not lie in kubeletRoot %s: a mount below the Bidirectional kubelet root is left on the host at every restart" .Values.dataRoot .Values.kubeletRoot) -}}
{{- end -}}
{{- end }}

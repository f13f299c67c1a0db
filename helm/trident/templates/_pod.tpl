{{/*
The parts of a pod spec that node and server share. Called with a dict:
  root: the chart context, component: "node" | "server", c: that component's values.
*/}}
{{- define "trident.podMeta" -}}
{{- $root := .root -}}
labels:
  {{- include "trident.selectorLabels" $root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
annotations:
  checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
  {{- with .c.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "trident.podSpecCommon" -}}
{{- $root := .root -}}
{{- with $root.Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{ end -}}
serviceAccountName: {{ include "trident.serviceAccountName" $root }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ int .c.terminationGracePeriodSeconds }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (include "trident.initContainers" $root) }}
initContainers:
  {{- . | nindent 2 }}
{{- end }}
volumes:
  {{- include "trident.volumes" $root | nindent 2 }}
{{- end }}

{{/* Container resources with `gpus` added as the nvidia.com/gpu limit. */}}
{{- define "trident.resources" -}}
{{- $res := deepCopy (default dict .c.resources) }}
{{- if gt (int .c.gpus) 0 }}
{{- $limits := deepCopy (default dict $res.limits) }}
{{- $_ := set $limits "nvidia.com/gpu" (int .c.gpus) }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
Probes. The server's /health is ready only once the model is loaded and its workers are up; a
node is probed on its metrics port, which it opens once its pipeline runs.
Called with a dict: c (component values), port (port name), http (true: GET /health).
*/}}
{{- define "trident.probe" -}}
{{- if .http -}}
httpGet:
  path: /health
  port: {{ .port }}
{{- else -}}
tcpSocket:
  port: {{ .port }}
{{- end -}}
{{- end }}

{{- define "trident.probes" -}}
{{- if .c.probes.enabled -}}
startupProbe:
  {{- include "trident.probe" . | nindent 2 }}
  periodSeconds: 5
  failureThreshold: 120
readinessProbe:
  {{- include "trident.probe" . | nindent 2 }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  {{- include "trident.probe" . | nindent 2 }}
  periodSeconds: 15
  timeoutSeconds: 5
  failureThreshold: 4
{{- end }}
{{- end }}

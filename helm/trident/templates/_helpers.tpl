{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "trident.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trident.fullname" -}}
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

{{- define "trident.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trident.labels" -}}
helm.sh/chart: {{ include "trident.chart" . }}
{{ include "trident.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "trident.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trident.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "trident.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trident.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trident.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The model directory as trident sees it inside the container. */}}
{{- define "trident.modelDir" -}}
{{- if eq .Values.model.source "path" }}
{{- .Values.model.path }}
{{- else if .Values.model.subDir }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.subDir }}
{{- else }}
{{- .Values.model.mountPath }}
{{- end }}
{{- end }}

{{- define "trident.validate" -}}
{{- if not (has .Values.model.source (list "pvc" "download" "path")) }}
{{- fail (printf "model.source must be one of pvc, download, path (got %q)" .Values.model.source) }}
{{- end }}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName" }}
{{- end }}
{{- if and (eq .Values.model.source "path") (not (hasPrefix "/" .Values.model.path)) }}
{{- fail "model.source=path needs an absolute model.path" }}
{{- end }}
{{- if not (or .Values.modes.dense .Values.modes.sparse .Values.modes.colbert) }}
{{- fail "modes: at least one of dense, sparse, colbert must be true" }}
{{- end }}
{{- range $c := list "node" "server" }}
{{- if lt (int (index $.Values $c).gpus) 0 }}
{{- fail (printf "%s.gpus must be 0 or more (got %v)" $c (index $.Values $c).gpus) }}
{{- end }}
{{- end }}
{{- if lt (int .Values.batching.workersPerGpu) 1 }}
{{- fail "batching.workersPerGpu must be at least 1" }}
{{- end }}
{{- if and .Values.keda.enabled (not .Values.node.enabled) }}
{{- fail "keda.enabled scales the node Deployment: node.enabled must be true" }}
{{- end }}
{{- end }}

{{/* Volumes shared by node and server pods: the model, the config, a writable /tmp. */}}
{{- define "trident.volumes" -}}
- name: tmp
  emptyDir: {}
- name: config
  configMap:
    name: {{ include "trident.fullname" . }}
{{- if eq .Values.model.source "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ .Values.model.pvc.claimName }}
    readOnly: true
{{- else if eq .Values.model.source "download" }}
- name: model
  emptyDir:
    sizeLimit: {{ .Values.model.download.sizeLimit }}
{{- else if .Values.model.hostPath }}
- name: model
  hostPath:
    path: {{ .Values.model.hostPath }}
    type: Directory
{{- end }}
{{- end }}

{{- define "trident.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: config
  mountPath: /etc/trident
  readOnly: true
{{- if or (eq .Values.model.source "pvc") (eq .Values.model.source "download") }}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- else if .Values.model.hostPath }}
- name: model
  mountPath: {{ .Values.model.path }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Init container that downloads the model from the Hugging Face Hub (model.source=download). */}}
{{- define "trident.initContainers" -}}
{{- if eq .Values.model.source "download" }}
{{- $d := .Values.model.download -}}
- name: model-download
  image: "{{ $d.image.repository }}:{{ $d.image.tag }}"
  imagePullPolicy: {{ $d.image.pullPolicy }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  env:
    - name: HOME
      value: /tmp
    - name: HF_HUB_DISABLE_TELEMETRY
      value: "1"
    - name: MODEL_REPO
      value: {{ $d.repo | quote }}
    - name: MODEL_REVISION
      value: {{ $d.revision | quote }}
    - name: MODEL_DIR
      value: {{ include "trident.modelDir" . | quote }}
    - name: MODEL_FILES
      value: {{ join " " $d.files | quote }}
    {{- if $d.tokenSecret }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ $d.tokenSecret }}
          key: token
    {{- end }}
  command: ["/bin/sh", "-c"]
  args:
    - |
      set -e
      pip install --no-cache-dir --quiet --target /tmp/py "huggingface_hub=={{ $d.huggingfaceHubVersion }}"
      PYTHONPATH=/tmp/py python - <<'PY'
      import os
      from huggingface_hub import snapshot_download
      snapshot_download(repo_id=os.environ["MODEL_REPO"], revision=os.environ["MODEL_REVISION"],
                        local_dir=os.environ["MODEL_DIR"],
                        allow_patterns=os.environ["MODEL_FILES"].split())
      PY
      ls -l "$MODEL_DIR"
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: model
      mountPath: {{ .Values.model.mountPath }}
  {{- with $d.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The pod's CUDA ordinals, "0,1,…", one per GPU. Called with a component's values. */}}
{{- define "trident.devices" -}}
{{- range $i, $e := until (int .gpus) }}{{ if $i }},{{ end }}{{ $i }}{{ end }}
{{- end }}

{{/* Environment shared by node and server containers. */}}
{{- define "trident.env" -}}
- name: TRIDENT_LOG
  value: info
- name: TRIDENT_MODEL
  value: {{ include "trident.modelDir" . | quote }}
{{- if .Values.redis.urlSecret }}
- name: TRIDENT_REDIS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.urlSecret }}
      key: url
{{- end }}
{{- end }}

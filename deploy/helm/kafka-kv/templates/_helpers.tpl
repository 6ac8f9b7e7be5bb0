{{/*
The release's resource name: fullnameOverride, else the release name when it already names the
role (`kv-writer` for a writer, not `kv-writer-writer`), else `<release>-<role>`.
*/}}
{{- define "kafka-kv.name" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Values.role .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Values.role | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kafka-kv.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kafka-kv.labels" -}}
helm.sh/chart: {{ include "kafka-kv.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kafka-kv
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "kafka-kv.selector" . }}
{{- end -}}

{{- define "kafka-kv.selector" -}}
app.kubernetes.io/name: kafka-kv
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.role }}
{{- end -}}

{{/* A reader on disk is a StatefulSet; a writer and a reader in memory are Deployments. */}}
{{- define "kafka-kv.onDisk" -}}
{{- if and (eq .Values.role "reader") (eq .Values.reader.storage "disk") }}true{{ end -}}
{{- end -}}

{{/* A sharded reader is a StatefulSet too: its shard index is the pod's ordinal. */}}
{{- define "kafka-kv.sharded" -}}
{{- if and (eq .Values.role "reader") .Values.reader.sharding.enabled }}true{{ end -}}
{{- end -}}

{{/* Whether the reader's Redis-protocol read port is on (docs/api.md). */}}
{{- define "kafka-kv.resp" -}}
{{- if and (eq .Values.role "reader") .Values.reader.resp.enabled }}true{{ end -}}
{{- end -}}

{{- define "kafka-kv.statefulSet" -}}
{{- if or (include "kafka-kv.onDisk" .) (include "kafka-kv.sharded" .) }}true{{ end -}}
{{- end -}}

{{- define "kafka-kv.resources" -}}
{{- if eq .Values.role "writer" -}}
{{- toYaml .Values.resources.writer -}}
{{- else if eq .Values.reader.storage "disk" -}}
{{- toYaml .Values.resources.readerDisk -}}
{{- else -}}
{{- toYaml .Values.resources.readerMemory -}}
{{- end -}}
{{- end -}}

{{/* The selector the alerts use: the series Prometheus scraped from this release's Service. */}}
{{/* Whether this reader release's pods are owner candidates (`reader.owner`, or its older name). */}}
{{- define "kafka-kv.owner" -}}
{{- if and (eq .Values.role "reader") (or .Values.reader.owner .Values.reader.ttlSweeper) -}}true{{- end -}}
{{- end -}}

{{- define "kafka-kv.alertSelector" -}}
namespace="{{ .Release.Namespace }}", job="{{ include "kafka-kv.name" . }}"
{{- end -}}

{{/* The pod template: the same for the writer Deployment and the reader StatefulSet/Deployment. */}}
{{- define "kafka-kv.podTemplate" -}}
metadata:
  labels:
    {{- include "kafka-kv.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or .Values.podAnnotations .Values.configFile .Values.stateRules }}
  annotations:
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- if or .Values.configFile .Values.stateRules }}
    # Settings and rules are read at start-up: a change rolls the pods.
    checksum/config: {{ printf "%s%s" (toJson .Values.configFile) (.Values.stateRules | default "") | sha256sum }}
    {{- end }}
  {{- end }}
spec:
  # The pods never call the Kubernetes API.
  automountServiceAccountToken: false
  {{- with .Values.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  # No KAFKA_PORT, KAFKA_SERVICE_HOST, ... from a Service named `kafka`: every KAFKA_* variable
  # is a librdkafka property to the services, and an unknown one stops start-up.
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  # preStop pause + the service's own shutdown (in-flight writes, producer flush) + a margin.
  terminationGracePeriodSeconds: {{ add .Values.preStopSeconds (div .Values.shutdownTimeoutMs 1000) 10 }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  topologySpreadConstraints:
    {{- if .Values.topologySpreadConstraints }}
    {{- toYaml .Values.topologySpreadConstraints | nindent 4 }}
    {{- else }}
    # Default: spread the replicas over nodes, softly.
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "kafka-kv.selector" . | nindent 10 }}
    {{- end }}
  containers:
    - name: {{ .Values.role }}
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["kv-{{ .Values.role }}"]
      ports:
        - name: http
          containerPort: 8080
        {{- if include "kafka-kv.resp" . }}
        - name: resp
          containerPort: {{ .Values.reader.resp.port }}
        {{- end }}
      env:
        {{- include "kafka-kv.env" . | nindent 8 }}
      {{- with .Values.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      # Liveness: the process is not wedged (a reader: its consumer loop runs). Start-up: it
      # serves HTTP. Readiness: a writer that serves HTTP stays in the Service during a Kafka
      # outage, so clients get the JSON 503 with Retry-After rather than connection refused
      # (Kafka's health is in /healthz/ready's body and the metrics); a reader is ready once
      # caught up with the topic.
      # Timings from `probes` (the start-up probe's default 45 x 2 s covers auth discovery's
      # 60 s of retries before the listener opens).
      livenessProbe:
        httpGet:
          path: /healthz/live
          port: http
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: {{ if eq .Values.role "writer" }}{{ .Values.writer.readinessPath }}{{ else }}/healthz/ready{{ end }}
          port: http
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml .Values.probes.startup | nindent 8 }}
      lifecycle:
        # Endpoints are removed asynchronously; keep serving until they are, then SIGTERM.
        preStop:
          sleep:
            seconds: {{ .Values.preStopSeconds }}
      resources:
        {{- include "kafka-kv.resources" . | nindent 8 }}
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        {{- if .Values.kafka.tlsSecret }}
        - name: kafka-tls
          mountPath: /kafka/secrets
          readOnly: true
        {{- end }}
        {{- if .Values.encryption.onKafka }}
        - name: aes-key
          mountPath: /kv/secrets
          readOnly: true
        {{- end }}
        {{- if include "kafka-kv.onDisk" . }}
        - name: data
          mountPath: /var/lib/kv
        {{- else }}
        - name: tmp
          mountPath: /tmp
        {{- end }}
        {{- if or .Values.configFile .Values.stateRules }}
        - name: config-file
          mountPath: /etc/kafka-kv
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  {{- if or .Values.kafka.tlsSecret .Values.encryption.onKafka (not (include "kafka-kv.onDisk" .)) .Values.configFile .Values.stateRules .Values.extraVolumes }}
  volumes:
    {{- if .Values.kafka.tlsSecret }}
    - name: kafka-tls
      secret:
        secretName: {{ .Values.kafka.tlsSecret }}
        defaultMode: 0440
    {{- end }}
    {{- if .Values.encryption.onKafka }}
    - name: aes-key
      secret:
        secretName: {{ required "encryption.keySecret is required with encryption.onKafka" .Values.encryption.keySecret }}
        defaultMode: 0440
        items:
          - key: aes-key
            path: aes-key
    {{- end }}
    {{- if not (include "kafka-kv.onDisk" .) }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- end }}
    {{- if or .Values.configFile .Values.stateRules }}
    - name: config-file
      configMap:
        name: {{ include "kafka-kv.name" . }}-config
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* The gateway's objects: their own component, so neither the role's Service nor its PDB selects them. */}}
{{- define "kafka-kv.gatewayName" -}}
{{- printf "%s-gateway" (include "kafka-kv.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kafka-kv.gatewaySelector" -}}
app.kubernetes.io/name: kafka-kv
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "kafka-kv.gatewayLabels" -}}
helm.sh/chart: {{ include "kafka-kv.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kafka-kv
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "kafka-kv.gatewaySelector" . }}
{{- end -}}

{{- define "kafka-kv.env" -}}
- name: KV_API_LISTEN
  value: "0.0.0.0:8080"
- name: KV_API_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- if .Values.configFile }}
- name: KV_API_CONFIG_FILE
  value: /etc/kafka-kv/config.yaml
{{- end }}
{{- if .Values.stateRules }}
- name: KV_API_STATE_RULES
  value: /etc/kafka-kv/rules.yaml
{{- end }}
{{- with .Values.logLevel }}
- name: RUST_LOG
  value: {{ . | quote }}
{{- end }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
- name: KV_API_KAFKA_KEY_VALUE_TOPIC
  value: {{ .Values.kafka.topic | quote }}
{{- with .Values.kafka.securityProtocol }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.kafka.tlsSecret }}
- name: KAFKA_SSL_CA_PEM_LOCATION
  value: /kafka/secrets/ca.crt
{{- if .Values.kafka.tlsClientCertificate }}
- name: KAFKA_SSL_CERTIFICATE_LOCATION
  value: /kafka/secrets/client.crt
- name: KAFKA_SSL_KEY_LOCATION
  value: /kafka/secrets/client.key
{{- if .Values.kafka.tlsKeyPassword }}
- name: KAFKA_SSL_KEY_PASSWORD_LOCATION
  value: /kafka/secrets/key-password
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.kafka.sasl.mechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ required "kafka.sasl.username is required with kafka.sasl.mechanism" $.Values.kafka.sasl.username | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.passwordSecret is required with kafka.sasl.mechanism" $.Values.kafka.sasl.passwordSecret }}
      key: {{ $.Values.kafka.sasl.passwordKey }}
{{- end }}
{{- range $name, $value := .Values.kafka.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
- name: KV_API_DISABLE_API_AUTH
  value: {{ .Values.auth.disabled | quote }}
{{- if not .Values.auth.disabled }}
- name: OIDC_IDP_ADDRESS_FOR_SERVER
  value: {{ required "auth.issuerForServer is required while auth is on" .Values.auth.issuerForServer | quote }}
{{- with .Values.auth.issuerForUsers }}
- name: OIDC_IDP_ADDRESS_FOR_USERS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.auth.jwksUri }}
- name: OIDC_JWKS_URI
  value: {{ . | quote }}
{{- end }}
- name: OIDC_AUDIENCE
  value: {{ required "auth.audience is required while auth is on" .Values.auth.audience | quote }}
- name: OIDC_REQUIRE_HTTPS_METADATA
  value: {{ .Values.auth.requireHttpsMetadata | quote }}
- name: KV_API_AUTH_CLAIM
  value: {{ .Values.auth.claim | quote }}
{{- with .Values.auth.prefixes }}
- name: KV_API_AUTH_PREFIXES
  value: {{ . | quote }}
{{- end }}
{{- if eq .Values.role "reader" }}
- name: KV_API_AUTH_READ
  value: {{ .Values.auth.read | quote }}
- name: KV_API_AUTH_ADMIN
  value: {{ .Values.auth.admin | quote }}
{{- else }}
- name: KV_API_AUTH_WRITE
  value: {{ .Values.auth.write | quote }}
- name: KV_API_AUTH_DELETE
  value: {{ .Values.auth.delete | quote }}
{{- end }}
{{- end }}
{{- if .Values.encryption.onKafka }}
- name: KV_API_ENCRYPT_DATA_ON_KAFKA
  value: "true"
- name: KV_API_AES_KEY_LOCATION
  value: /kv/secrets/aes-key
{{- end }}
{{- if eq .Values.role "writer" }}
- name: KV_API_SHUTDOWN_TIMEOUT_MS
  value: {{ .Values.shutdownTimeoutMs | quote }}
{{- else }}
{{- if .Values.reader.groupIdPerPod }}
# One consumer group per pod, so each replica's committed progress and lag are its own.
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: KAFKA_GROUP_ID
  value: "{{ .Values.reader.groupId }}-$(POD_NAME)"
{{- else }}
- name: KAFKA_GROUP_ID
  value: {{ .Values.reader.groupId | quote }}
{{- end }}
{{- if include "kafka-kv.sharded" . }}
{{- if gt (int .Values.reader.sharding.replicas) (int .Values.replicaCount) }}
{{- fail (printf "reader.sharding.replicas (%d) cannot exceed replicaCount (%d), the number of shards" (int .Values.reader.sharding.replicas) (int .Values.replicaCount)) }}
{{- end }}
# The shard index is the pod's ordinal (Kubernetes 1.28+ labels every StatefulSet pod with it);
# the number of shards is replicaCount: changing it changes every shard's partitions.
- name: POD_INDEX
  valueFrom:
    fieldRef:
      fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
- name: KV_API_SHARD
  value: "$(POD_INDEX)/{{ .Values.replicaCount }}"
- name: KV_API_SHARD_REPLICAS
  value: {{ .Values.reader.sharding.replicas | quote }}
- name: KV_API_SHARD_PEERS
  value: "http://{{ include "kafka-kv.name" . }}-{i}.{{ include "kafka-kv.name" . }}-headless.{{ .Release.Namespace }}.svc:8080"
{{- end }}
{{- if .Values.reader.bootstrap.enabled }}
# The readers' own Service routes only to ready pods: any of them serves a snapshot.
- name: KV_API_BOOTSTRAP_PEERS
  value: "http://{{ include "kafka-kv.name" . }}.{{ .Release.Namespace }}.svc:{{ .Values.service.port }}"
{{- with .Values.reader.bootstrap.clientSecret }}
- name: KV_API_BOOTSTRAP_CLIENT_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: client-id
- name: KV_API_BOOTSTRAP_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: client-secret
- name: KV_API_BOOTSTRAP_ALLOW_HTTP_TOKEN
  value: {{ $.Values.reader.bootstrap.allowHttpToken | quote }}
{{- end }}
{{- end }}
- name: KV_API_STATE_STORAGE_TYPE
  value: {{ .Values.reader.storage | quote }}
{{- if eq .Values.reader.storage "disk" }}
- name: KV_API_STATE_STORAGE_DISK_LOCATION
  value: /var/lib/kv
- name: KV_API_STATE_STORAGE_CACHE_MB
  value: {{ .Values.reader.storageCacheMb | quote }}
{{- with .Values.reader.storagePasswordSecret }}
- name: KV_API_STATE_STORAGE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: password
{{- end }}
{{- end }}
{{- if include "kafka-kv.owner" . }}
- name: KV_API_OWNER
  value: "true"
{{- end }}
{{- if .Values.reader.resp.enabled }}
- name: KV_API_RESP_LISTEN
  value: "0.0.0.0:{{ .Values.reader.resp.port }}"
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* reader.volumeSize in bytes (for the volume alert): a whole number with Ki/Mi/Gi/Ti or none. */}}
{{- define "kafka-kv.volumeBytes" -}}
{{- $size := toString .Values.reader.volumeSize -}}
{{- $n := regexFind "^[0-9]+" $size | int64 -}}
{{- $unit := trimPrefix (toString $n) $size -}}
{{- $factor := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if not (hasKey $factor $unit) -}}
{{- fail (printf "reader.volumeSize %q: use a whole number with Ki, Mi, Gi or Ti" $size) -}}
{{- end -}}
{{- mul $n (get $factor $unit) -}}
{{- end -}}

{{- define "kafka-kv.name" -}}
{{- printf "%s-%s" .Release.Name .Values.role | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kafka-kv.labels" -}}
app.kubernetes.io/name: kafka-kv
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.role }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "kafka-kv.selector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.role }}
{{- end -}}

{{/* The container shared by the writer Deployment and the reader StatefulSet/Deployment. */}}
{{- define "kafka-kv.container" -}}
- name: {{ .Values.role }}
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["kv-{{ .Values.role }}"]
  ports:
    - name: http
      containerPort: 8080
  env:
    - name: KV_API_LISTEN
      value: "0.0.0.0:8080"
    - name: KV_API_LOG_FORMAT
      value: {{ .Values.logFormat | quote }}
    - name: KAFKA_BOOTSTRAP_SERVERS
      value: {{ .Values.kafka.bootstrapServers | quote }}
    - name: KV_API_KAFKA_KEY_VALUE_TOPIC
      value: {{ .Values.kafka.topic | quote }}
    {{- with .Values.kafka.securityProtocol }}
    - name: KAFKA_SECURITY_PROTOCOL
      value: {{ . | quote }}
    {{- end }}
    {{- if .Values.kafka.tlsSecret }}
    - name: KAFKA_SSL_CA_PEM_LOCATION
      value: /kafka/secrets/ca.crt
    - name: KAFKA_SSL_CERTIFICATE_LOCATION
      value: /kafka/secrets/client.crt
    - name: KAFKA_SSL_KEY_LOCATION
      value: /kafka/secrets/client.key
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
    - name: OIDC_AUDIENCE
      value: {{ required "auth.audience is required while auth is on" .Values.auth.audience | quote }}
    - name: OIDC_REQUIRE_HTTPS_METADATA
      value: {{ .Values.auth.requireHttpsMetadata | quote }}
    - name: KV_API_AUTH_CLAIM
      value: {{ .Values.auth.claim | quote }}
    - name: KV_API_AUTH_READ
      value: {{ .Values.auth.read | quote }}
    - name: KV_API_AUTH_WRITE
      value: {{ .Values.auth.write | quote }}
    - name: KV_API_AUTH_DELETE
      value: {{ .Values.auth.delete | quote }}
    {{- end }}
    {{- if .Values.encryption.onKafka }}
    - name: KV_API_ENCRYPT_DATA_ON_KAFKA
      value: "true"
    - name: KV_API_AES_KEY
      valueFrom:
        secretKeyRef:
          name: {{ required "encryption.keySecret is required with encryption.onKafka" .Values.encryption.keySecret }}
          key: aes-key
    {{- end }}
    {{- if eq .Values.role "reader" }}
    - name: KAFKA_GROUP_ID
      value: {{ .Values.reader.groupId | quote }}
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
    {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz/live
      port: http
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /healthz/ready
      port: http
    periodSeconds: 5
    failureThreshold: 2
  startupProbe:
    httpGet:
      path: /healthz
      port: http
    periodSeconds: 2
    failureThreshold: 60
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
  volumeMounts:
    {{- if .Values.kafka.tlsSecret }}
    - name: kafka-secrets
      mountPath: /kafka/secrets
      readOnly: true
    {{- end }}
    {{- if and (eq .Values.role "reader") (eq .Values.reader.storage "disk") }}
    - name: data
      mountPath: /var/lib/kv
    {{- end }}
{{- end -}}

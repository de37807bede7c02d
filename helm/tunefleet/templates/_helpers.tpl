{{/*
Names, labels and the database connection shared by the templates.
*/}}

{{- define "tunefleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-tunefleet, or the release name if it already contains it. */}}
{{- define "tunefleet.fullname" -}}
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

{{- define "tunefleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tunefleet.labels" -}}
helm.sh/chart: {{ include "tunefleet.chart" . }}
app.kubernetes.io/name: {{ include "tunefleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tunefleet
{{- end }}

{{/* Selector labels of one component: pass (dict "ctx" $ "component" "controller"). */}}
{{- define "tunefleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tunefleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tunefleet.componentLabels" -}}
{{ include "tunefleet.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tunefleet.controllerServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-controller" (include "tunefleet.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Fixed names the controller relies on in every study namespace (RBAC resourceNames use them). */}}
{{- define "tunefleet.trialServiceAccountName" -}}tunefleet-trial{{- end }}
{{- define "tunefleet.trialSecretName" -}}tunefleet-db-credentials{{- end }}
{{- define "tunefleet.accountingFinalizer" -}}tunefleet.dev/gpu-accounting{{- end }}

{{- define "tunefleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* True ("true") when the bundled PostgreSQL is rendered. */}}
{{- define "tunefleet.bundledDatabase" -}}
{{- if and .Values.postgresql.enabled (not .Values.externalDatabase.host) }}true{{ end }}
{{- end }}

{{- define "tunefleet.postgresqlName" -}}
{{- printf "%s-postgresql" (include "tunefleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tunefleet.validateDatabase" -}}
{{- if .Values.externalDatabase.host }}
{{- if not .Values.externalDatabase.existingSecret }}
{{- fail "externalDatabase.existingSecret is required when externalDatabase.host is set: name a Secret in the release namespace that holds the database password" }}
{{- end }}
{{- else if not .Values.postgresql.enabled }}
{{- fail "no database: set postgresql.enabled=true for the bundled PostgreSQL, or externalDatabase.host and externalDatabase.existingSecret" }}
{{- end }}
{{- end }}

{{/* Namespace-qualified host: trial pods in study namespaces connect to it too. */}}
{{- define "tunefleet.databaseHost" -}}
{{- if .Values.externalDatabase.host }}
{{- .Values.externalDatabase.host }}
{{- else }}
{{- printf "%s.%s.svc.%s" (include "tunefleet.postgresqlName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}
{{- end }}

{{- define "tunefleet.databasePort" -}}
{{- if .Values.externalDatabase.host }}{{ .Values.externalDatabase.port }}{{ else }}5432{{ end }}
{{- end }}

{{- define "tunefleet.databaseName" -}}
{{- if .Values.externalDatabase.host }}{{ .Values.externalDatabase.database }}{{ else }}{{ .Values.postgresql.database }}{{ end }}
{{- end }}

{{- define "tunefleet.databaseUser" -}}
{{- if .Values.externalDatabase.host }}{{ .Values.externalDatabase.user }}{{ else }}{{ .Values.postgresql.username }}{{ end }}
{{- end }}

{{- define "tunefleet.databaseSslmode" -}}
{{- if .Values.externalDatabase.host }}{{ .Values.externalDatabase.sslmode }}{{ else }}disable{{ end }}
{{- end }}

{{/* The Secret (release namespace) holding the database password, and its key. */}}
{{- define "tunefleet.databaseSecretName" -}}
{{- if .Values.externalDatabase.host }}{{ .Values.externalDatabase.existingSecret }}{{ else }}{{ include "tunefleet.postgresqlName" . }}{{ end }}
{{- end }}

{{- define "tunefleet.databaseSecretKey" -}}
{{- if .Values.externalDatabase.host }}{{ .Values.externalDatabase.existingSecretPasswordKey }}{{ else }}password{{ end }}
{{- end }}

{{/*
The database URL without the password (it travels as its own env var, so no character of it needs
escaping): pass (dict "ctx" $ "scheme" "postgresql").
*/}}
{{- define "tunefleet.databaseUrl" -}}
{{- $ctx := .ctx }}
{{- printf "%s://%s@%s:%s/%s?sslmode=%s" .scheme (include "tunefleet.databaseUser" $ctx | urlquery) (include "tunefleet.databaseHost" $ctx) (include "tunefleet.databasePort" $ctx) (include "tunefleet.databaseName" $ctx) (include "tunefleet.databaseSslmode" $ctx) }}
{{- end }}

{{/* tunefleet's storage URL: tunefleet opens any PostgreSQL spelling with the driver it ships. */}}
{{- define "tunefleet.storageUrl" -}}
{{- include "tunefleet.databaseUrl" (dict "ctx" . "scheme" "postgresql") }}
{{- end }}

{{/* The database, as the controller, the hook and the gateway read it. */}}
{{- define "tunefleet.databaseEnv" -}}
- name: TUNEFLEET_STORAGE_URL
  value: {{ include "tunefleet.storageUrl" . | quote }}
- name: TUNEFLEET_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tunefleet.databaseSecretName" . }}
      key: {{ include "tunefleet.databaseSecretKey" . }}
{{- end }}

{{/* Environment shared by the controller and the pre-delete hook. */}}
{{- define "tunefleet.controllerEnv" -}}
{{ include "tunefleet.databaseEnv" . }}
- name: TUNEFLEET_DB_SECRET
  value: {{ include "tunefleet.databaseSecretName" . | quote }}
- name: TUNEFLEET_LOG_FORMAT
  value: {{ .Values.controller.logFormat | quote }}
- name: TUNEFLEET_TRIAL_SERVICE_ACCOUNT
  value: {{ include "tunefleet.trialServiceAccountName" . | quote }}
- name: TUNEFLEET_POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/* --namespace flags: one per watched namespace; none means cluster-wide. */}}
{{- define "tunefleet.namespaceArgs" -}}
{{- range .Values.watchNamespaces }}
- --namespace
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The trial gateway. Its Service name is fixed (trial pods and the docs name it), one per namespace.
Secrets are mounted as files under gatewayDir: the controller gets the CA and the token keys, never
the server's private key; the gateway gets its certificate, its key and the token keys.
*/}}
{{- define "tunefleet.gatewayServiceName" -}}tunefleet-gateway{{- end }}
{{- define "tunefleet.gatewayGrpcPort" -}}7443{{- end }}
{{- define "tunefleet.gatewayHttpPort" -}}8080{{- end }}
{{- define "tunefleet.gatewayDir" -}}/etc/tunefleet/gateway{{- end }}
{{- define "tunefleet.gatewayTokenKeysFile" -}}token-keys{{- end }}

{{- define "tunefleet.gatewayName" -}}
{{- printf "%s-gateway" (include "tunefleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* HOST:PORT trial pods dial (TUNEFLEET_GATEWAY_ADDRESS); a name the certificate covers. */}}
{{- define "tunefleet.gatewayAddress" -}}
{{- printf "%s.%s.svc:%s" (include "tunefleet.gatewayServiceName" .) .Release.Namespace (include "tunefleet.gatewayGrpcPort" .) }}
{{- end }}

{{/* The DNS names of the gateway Service, as a list: the certificate's subject alternative names. */}}
{{- define "tunefleet.gatewayDnsNames" -}}
{{- $svc := include "tunefleet.gatewayServiceName" . }}
{{- $ns := .Release.Namespace }}
{{- toJson (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain)) }}
{{- end }}

{{/* Secret (kubernetes.io/tls) with tls.crt, tls.key and ca.crt: generated, or cert-manager's. */}}
{{- define "tunefleet.gatewayTlsSecretName" -}}
{{- printf "%s-gateway-tls" (include "tunefleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Secret with the token keys (one per line; the first signs, every one verifies). */}}
{{- define "tunefleet.gatewayTokenKeysSecretName" -}}
{{- if .Values.gateway.tokenKeys.existingSecret }}
{{- .Values.gateway.tokenKeys.existingSecret }}
{{- else }}
{{- printf "%s-gateway-token-keys" (include "tunefleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tunefleet.gatewayTokenKeysSecretKey" -}}
{{- if .Values.gateway.tokenKeys.existingSecret }}{{ .Values.gateway.tokenKeys.existingSecretKey }}{{ else }}keys{{ end }}
{{- end }}

{{- define "tunefleet.validateGateway" -}}
{{- if and .Values.gateway.tls.certManager.enabled (not .Values.gateway.tls.certManager.issuerRef.name) }}
{{- fail "gateway.tls.certManager.issuerRef.name is required when gateway.tls.certManager.enabled is true: name the cert-manager Issuer or ClusterIssuer that signs the gateway's certificate" }}
{{- end }}
{{- end }}

{{/*
Names and labels.
*/}}
{{- define "ntb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ntb.fullname" -}}
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

{{- define "ntb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selects every pod of the release: server pods and migration pods. */}}
{{- define "ntb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ntb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selects the API server pods only (Deployment, Service, PDB, HPA, spread). */}}
{{- define "ntb.serverSelectorLabels" -}}
{{ include "ntb.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "ntb.labels" -}}
helm.sh/chart: {{ include "ntb.chart" . }}
{{ include "ntb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: neto-token-broker
{{- end }}

{{- define "ntb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ntb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ntb.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end }}

{{/*
Secret handling.
ntb.secret.generate: "true" when the chart must generate the Secret from secret.data.
ntb.secret.name: the Secret every pod reads its secret variables from.
*/}}
{{- define "ntb.secret.generate" -}}
{{- $d := .Values.secret.data -}}
{{- if and (not .Values.secret.existingSecret) (or $d.databaseUrl $d.encryptionKeys $d.jwtHs256Keys $d.netoClientSecret $d.netoApps $d.metricsToken) -}}
{{- if and .Values.metrics.requireToken (not $d.metricsToken) -}}
{{- fail "metrics.requireToken is true but secret.data.metricsToken is empty: set a scrape token of at least 32 characters (openssl rand -hex 32), or metrics.requireToken=false" -}}
{{- end -}}
true
{{- end -}}
{{- end }}

{{- define "ntb.secret.name" -}}
{{- $d := .Values.secret.data -}}
{{- if and .Values.secret.existingSecret (or $d.databaseUrl $d.encryptionKeys $d.jwtHs256Keys $d.netoClientSecret $d.netoApps $d.metricsToken) -}}
{{- fail "secret.existingSecret and secret.data are mutually exclusive: keep secret values in the existing Secret, or leave existingSecret empty to let the chart generate one" -}}
{{- end -}}
{{- if and .Values.secret.requireExisting (not .Values.secret.existingSecret) -}}
{{- fail "secret.existingSecret is required (secret.requireExisting is true): create a Secret with the keys listed under secret.keys (BROKER_DATABASE_URL, BROKER_ENCRYPTION_KEYS, ...) and set secret.existingSecret to its name" -}}
{{- end -}}
{{- default (include "ntb.fullname" .) .Values.secret.existingSecret -}}
{{- end }}

{{/*
Environment variables whose values are secret, read from the Secret by key. The database
URL and the encryption keys must be present (the broker cannot run without them); the
HS256 keys (JWKS may be used instead), the OAuth client secret (without it only the
OAuth endpoints are off) and BROKER_NETO_APPS (several add-ons, their secrets inline in
the JSON) are optional.
*/}}
{{- define "ntb.secretEnv" -}}
{{- $name := include "ntb.secret.name" . -}}
{{- $k := .Values.secret.keys -}}
- name: BROKER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $k.databaseUrl }}
- name: BROKER_ENCRYPTION_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $k.encryptionKeys }}
- name: BROKER_JWT_HS256_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $k.jwtHs256Keys }}
      optional: true
- name: BROKER_NETO_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $k.netoClientSecret }}
      optional: true
- name: BROKER_NETO_APPS
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $k.netoApps }}
      optional: true
{{- end }}

{{/*
The /metrics scrape token, for the server pods only (migrations do not need it). With
metrics.requireToken the key must exist: a pod without it does not start, rather than
serve /metrics to anyone who reaches the port.
*/}}
{{- define "ntb.metricsTokenEnv" -}}
- name: BROKER_METRICS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "ntb.secret.name" . }}
      key: {{ .Values.secret.keys.metricsToken }}
      optional: {{ not .Values.metrics.requireToken }}
{{- end }}

{{/*
One Ingress: the public one (root: ., values: .Values.ingress, paths fixed to /oauth) or
the internal one (values: .Values.internalIngress and its paths).
*/}}
{{- define "ntb.ingress" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $fullname := include "ntb.fullname" $root -}}
{{- $port := $root.Values.service.port -}}
{{- $paths := .paths -}}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ printf "%s%s" $fullname .suffix }}
  labels:
    {{- include "ntb.labels" $root | nindent 4 }}
    app.kubernetes.io/component: server
    neto-token-broker/exposure: {{ .exposure }}
  {{- if or $v.annotations $v.underscoresInHeadersRequired }}
  annotations:
    {{- if $v.underscoresInHeadersRequired }}
    {{- /*
    A marker, not a switch: ingress-nginx has no per-Ingress setting for underscore
    headers. The controller needs `enable-underscores-in-headers: "true"` in its
    ConfigMap; see values.yaml and NOTES.txt.
    */}}
    neto-token-broker/underscores-in-headers: required
    {{- end }}
    {{- with $v.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  {{- with $v.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with $v.tls }}
  tls:
    {{- range . }}
    - secretName: {{ .secretName }}
      hosts:
        {{- toYaml .hosts | nindent 8 }}
    {{- end }}
  {{- end }}
  rules:
    {{- range $v.hosts }}
    - host: {{ .host | quote }}
      http:
        paths:
          {{- range $paths }}
          - path: {{ . }}
            pathType: Prefix
            backend:
              service:
                name: {{ $fullname }}
                port:
                  number: {{ $port }}
          {{- end }}
    {{- end }}
{{- end }}

{{/*
Non-secret settings as a flat NAME: value map (YAML). The ConfigMap renders it as data,
and the migration Job as plain env (the ConfigMap does not exist yet when a pre-install
hook runs). Empty values are left out so the broker's own defaults apply.
*/}}
{{- define "ntb.configEnvMap" -}}
{{- $c := .Values.config -}}
{{- $m := dict "BROKER_ENV" $c.env -}}
{{- $_ := set $m "BROKER_PUBLIC_URL" $c.publicUrl -}}
{{- $_ := set $m "BROKER_NETO_CLIENT_ID" $c.netoClientId -}}
{{- $_ := set $m "BROKER_NETO_OAUTH_URL" $c.netoOauthUrl -}}
{{- $_ := set $m "BROKER_NETO_API_URL_TEMPLATE" $c.netoApiUrlTemplate -}}
{{- $_ := set $m "BROKER_JWT_AUDIENCE" $c.jwtAudience -}}
{{- $_ := set $m "BROKER_JWT_ISSUERS" $c.jwtIssuers -}}
{{- $_ := set $m "BROKER_BUNDLE_TTL_SECONDS" $c.bundleTtlSeconds -}}
{{- $_ := set $m "BROKER_STATE_TTL_SECONDS" $c.stateTtlSeconds -}}
{{- $_ := set $m "BROKER_EGRESS_ALLOW_PRIVATE" $c.egressAllowPrivate -}}
{{- $_ := set $m "BROKER_RETURN_URL_PREFIXES" $c.returnUrlPrefixes -}}
{{- $_ := set $m "BROKER_LOG_LEVEL" $c.logLevel -}}
{{- $_ := set $m "BROKER_DB_POOL_SIZE" $c.dbPoolSize -}}
{{- $_ := set $m "BROKER_DB_MAX_OVERFLOW" $c.dbMaxOverflow -}}
{{- $_ := set $m "BROKER_DB_STATEMENT_TIMEOUT_MS" $c.dbStatementTimeoutMs -}}
{{- if include "ntb.jwks.enabled" . -}}
{{- $_ := set $m "BROKER_JWT_PUBLIC_KEYS_FILE" (printf "%s/%s" .Values.jwks.mountPath .Values.jwks.key) -}}
{{- end -}}
{{- /* Behind the public Ingress the peer is the controller: count from X-Forwarded-For. */ -}}
{{- if .Values.ingress.enabled -}}
{{- if hasKey $c.extraEnv "BROKER_TRUSTED_PROXIES" -}}
{{- fail "config.extraEnv.BROKER_TRUSTED_PROXIES: with the Ingress on, the chart sets it from ingress.trustedProxies; set that instead" -}}
{{- end -}}
{{- $_ := set $m "BROKER_TRUSTED_PROXIES" .Values.ingress.trustedProxies -}}
{{- end -}}
{{- $secretNames := list "BROKER_DATABASE_URL" "BROKER_ENCRYPTION_KEYS" "BROKER_JWT_HS256_KEYS" "BROKER_NETO_CLIENT_SECRET" "BROKER_NETO_APPS" -}}
{{- range $k, $v := $c.extraEnv -}}
{{- if has $k $secretNames -}}
{{- fail (printf "config.extraEnv.%s is a secret setting: it belongs in the Secret (secret.existingSecret or secret.data), never in the ConfigMap" $k) -}}
{{- end -}}
{{- if hasKey $m $k -}}
{{- fail (printf "config.extraEnv.%s duplicates a named config value: set it there instead" $k) -}}
{{- end -}}
{{- $_ := set $m $k $v -}}
{{- end -}}
{{- range $k, $v := $m -}}
{{- /* Values arrive as float64 when numbers: print whole ones as integers, not 1.5e+06. */ -}}
{{- $s := toString $v -}}
{{- if and (kindIs "float64" $v) (eq ($v | int64 | float64) $v) -}}
{{- $s = $v | int64 | toString -}}
{{- end -}}
{{- if ne $s "" }}
{{ $k }}: {{ $s | quote }}
{{- end -}}
{{- end -}}
{{- end }}

{{/* JWKS file: "true" when a source is configured; fails on more than one. */}}
{{- define "ntb.jwks.enabled" -}}
{{- $n := 0 -}}
{{- if .Values.jwks.existingConfigMap }}{{ $n = add1 $n }}{{ end -}}
{{- if .Values.jwks.existingSecret }}{{ $n = add1 $n }}{{ end -}}
{{- if .Values.jwks.inline }}{{ $n = add1 $n }}{{ end -}}
{{- if gt $n 1 -}}
{{- fail "jwks: set only one of existingConfigMap, existingSecret and inline" -}}
{{- end -}}
{{- if eq $n 1 -}}
true
{{- end -}}
{{- end }}

{{- define "ntb.jwks.configMapName" -}}
{{- printf "%s-jwks" (include "ntb.fullname" .) -}}
{{- end }}

{{/* The pod volumes shared by the server and the migration Job. */}}
{{- define "ntb.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if include "ntb.jwks.enabled" . }}
- name: jwks
{{- if .Values.jwks.existingSecret }}
  secret:
    secretName: {{ .Values.jwks.existingSecret }}
    items:
      - key: {{ .Values.jwks.key }}
        path: {{ .Values.jwks.key }}
{{- else }}
  configMap:
    name: {{ default (include "ntb.jwks.configMapName" .) .Values.jwks.existingConfigMap }}
    items:
      - key: {{ .Values.jwks.key }}
        path: {{ .Values.jwks.key }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ntb.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "ntb.jwks.enabled" . }}
- name: jwks
  mountPath: {{ .Values.jwks.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
The standard OTEL_* variables of tracing.env, and OTEL_EXPORTER_OTLP_HEADERS from
tracing.headersSecret (README "Tracing"). Nothing when neither is set.
*/}}
{{- define "ntb.tracingEnv" -}}
{{- range $name, $value := .Values.tracing.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.tracing.headersSecret }}
{{- if and .name .key }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end }}

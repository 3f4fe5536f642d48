{{- define "eho.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "eho.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "eho.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "eho.serviceAccountName" -}}
{{- default (include "eho.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "eho.leaseName" -}}
{{- default (include "eho.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- /* The EST Service, which is also the name of the EndpointSlice the leader writes for it. */ -}}
{{- define "eho.estService" -}}
{{- printf "%s-est" (include "eho.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* The Secret of the operator's EST CA (the operator's default when est.caSecret is empty). */ -}}
{{- define "eho.estCaSecret" -}}
{{- default "edge-hierarchy-operator-est-ca" .Values.est.caSecret -}}
{{- end -}}

{{- /* `--est-addr`: listenAddress:port, with an IPv6 address in brackets. */ -}}
{{- define "eho.estAddr" -}}
{{- $host := .Values.est.listenAddress | trimPrefix "[" | trimSuffix "]" -}}
{{- if contains ":" $host -}}
[{{ $host }}]:{{ .Values.est.port }}
{{- else -}}
{{ $host }}:{{ .Values.est.port }}
{{- end -}}
{{- end -}}

{{- /* The folder (an emptyDir) where the metrics server writes the address it listens on when
it picks its own port (hostNetwork); the exec probes read it. */ -}}
{{- define "eho.runDir" -}}
/var/run/edge-hierarchy-operator
{{- end -}}

{{- /* Env for Pods that talk to the apiserver: its address when the cluster has no kube-proxy. */ -}}
{{- define "eho.apiServerEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.apiServer.port | toString | quote }}
{{- end }}
{{- end -}}

{{- /* Pod-level settings shared by the operator's Pods and the test Pod. */ -}}
{{- define "eho.podNetwork" -}}
{{- if .Values.hostNetwork }}
hostNetwork: true
# Names of Services still resolve through the cluster's DNS.
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end -}}

{{- /* Combinations of values the schema cannot express; each failure says what to change. */ -}}
{{- define "eho.validate" -}}
{{- $v := .Values -}}
{{- if and $v.apiServer.host (not $v.apiServer.port) -}}
{{- fail "apiServer.host is set but apiServer.port is not: set both (they become KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT) or neither" -}}
{{- end -}}
{{- if and $v.apiServer.port (not $v.apiServer.host) -}}
{{- fail "apiServer.port is set but apiServer.host is not: set both (they become KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT) or neither" -}}
{{- end -}}
{{- if and (gt (int $v.replicaCount) 1) (not $v.leaderElection.enabled) -}}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: without leader election every replica would reconcile the same hierarchies; set replicaCount to 1 or enable leader election" (int $v.replicaCount)) -}}
{{- end -}}
{{- if and $v.hostNetwork $v.serviceMonitor.enabled -}}
{{- fail "serviceMonitor.enabled needs the metrics port, which hostNetwork: true does not publish (the metrics server listens on 127.0.0.1 there); turn one of them off" -}}
{{- end -}}
{{- if and $v.hostNetwork $v.podMonitor.enabled -}}
{{- fail "podMonitor.enabled needs the metrics port, which hostNetwork: true does not publish (the metrics server listens on 127.0.0.1 there); turn one of them off" -}}
{{- end -}}
{{- if and $v.serviceMonitor.enabled (not $v.metricsService.enabled) -}}
{{- fail "serviceMonitor.enabled scrapes the metrics Service: set metricsService.enabled too" -}}
{{- end -}}
{{- if and $v.est.enabled (not $v.est.url) (has ($v.est.listenAddress | trimPrefix "[" | trimSuffix "]") (list "0.0.0.0" "::")) -}}
{{- fail (printf "est.enabled with est.listenAddress %s needs est.url: the URL devices use (e.g. https://est.factory.example:%d/.well-known/est; its host is the name in the server certificate), or set est.listenAddress to a specific address" $v.est.listenAddress (int $v.est.port)) -}}
{{- end -}}
{{- if and $v.serviceMonitor.enabled $v.podMonitor.enabled -}}
{{- fail "serviceMonitor.enabled and podMonitor.enabled would scrape every replica twice: enable one" -}}
{{- end -}}
{{- end -}}

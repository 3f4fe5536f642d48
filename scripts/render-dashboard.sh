#!/usr/bin/env bash
# Renders docs/images/dashboard.png from a real run: starts a local control plane, the IoT Hub
# emulator, the operator and simulated edge devices (edge-sim) for examples/tutorial.yaml and
# examples/factory.yaml, has a Prometheus server scrape the operator's /metrics every 5 s while a
# scripted scenario plays (see below), then draws the Grafana dashboard of the chart
# (charts/edge-hierarchy-operator/dashboards/edge-hierarchy.json) with scripts/render-dashboard.py,
# which runs the dashboard's own queries against that Prometheus. Grafana is not involved: the
# PNG says so in its footer.
#
# The scenario, on a timeline scaled to DURATION (offsets for the default 720 s):
#   0 s     both hierarchies applied (namespaces iot and plant), edge-sim starts their devices;
#           the steps below wait for both to be Ready first
#   216 s   the factory's hub Secret is broken (HostName only): Stalled, BadCredentials
#   324 s   the Secret is restored: Ready again
#   396 s   the tutorial is applied without the top layer's API proxy: the lower layer's modules
#           cannot pull their images and fail
#   468 s   a factory device is disabled in the hub behind the operator's back: drift, corrected
#   576 s   the tutorial is restored: modules recover
#   720 s   the end; the PNG covers the whole run
# Each step is a numbered marker in the PNG's time series.
#
# Everything runs on 127.0.0.1 (free ports picked at start), state goes to a temporary folder,
# and every process the script starts is stopped on exit, Ctrl-C included.
#
# Needs: the Rust binaries (control-plane, iothub-emulator, edge-hierarchy-operator, edge-sim) in
# BINDIR, Go (etcd, kube-apiserver, kube-controller-manager from e2e/tools/build.sh, the Prometheus
# server from e2e/tools/prometheus/build.sh, both cached in ~/.cache/edge-hierarchy-operator/tools),
# kubectl, Python 3 with venv; matplotlib (scripts/render-dashboard.requirements.txt) is installed
# into .venv-dashboard/ on first use.
#
# Usage: scripts/render-dashboard.sh [DURATION_SECONDS] [OUTPUT_PNG]
#        defaults: 720 and docs/images/dashboard.png
# Env:   BINDIR      the Rust binaries (default: ${CARGO_TARGET_DIR:-target}/debug)
#        KEEP_STATE  1 keeps the temporary state folder (logs, Prometheus data) and prints it
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
duration="${1:-720}"
out="${2:-$root/docs/images/dashboard.png}"
if ! [[ "$duration" =~ ^[0-9]+$ ]] || [ "$duration" -lt 120 ]; then
  echo "render-dashboard: DURATION_SECONDS must be a number of seconds, at least 120" >&2; exit 2
fi
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
bin="${BINDIR:-$target/debug}"

say() { echo "render-dashboard: $*" >&2 2>/dev/null || true; }
for b in control-plane iothub-emulator edge-hierarchy-operator edge-sim; do
  [ -x "$bin/$b" ] || { say "$bin/$b is missing (build with cargo build --workspace, or set BINDIR)"; exit 1; }
done
command -v kubectl >/dev/null 2>&1 || { say "kubectl is not on PATH"; exit 1; }

tools="$("$root/e2e/tools/build.sh")"
prometheus="$("$root/e2e/tools/prometheus/build.sh")"
export PATH="$tools:$PATH"
# control-plane otherwise runs e2e/tools/build.sh of the tree it was compiled in, which need not
# exist when BINDIR holds binaries built elsewhere.
export EHO_TOOLS_BIN="$tools"

# The renderer's venv, re-created when the requirements change.
venv="$root/.venv-dashboard"
reqs="$root/scripts/render-dashboard.requirements.txt"
stamp="$(sha256sum "$reqs" | cut -c1-16)"
if [ "$(cat "$venv/.requirements" 2>/dev/null || true)" != "$stamp" ]; then
  say "installing matplotlib into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
  echo "$stamp" >"$venv/.requirements"
fi

state="$(mktemp -d "${TMPDIR:-/tmp}/render-dashboard.XXXXXX")"
pids=()
cleanup() {
  local rc=$?
  trap - EXIT
  say "stopping"
  local i
  if [ -n "${waiting:-}" ]; then kill -TERM "$waiting" 2>/dev/null || true; fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP_STATE:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    say "state (logs, Prometheus data) kept in $state"
  else
    rm -rf "$state"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_for_line FILE PATTERN SECONDS PID: waits for a process's ready line; fails at once if it exits.
wait_for_line() {
  local file="$1" pattern="$2" seconds="$3" pid="$4"
  for _ in $(seq 1 "$((seconds * 5))"); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { say "$(basename "$file" .log) exited:"; tail -n 20 "$file" >&2; exit 1; }
    sleep 0.2
  done
  say "timed out waiting for '$pattern' in $file:"; tail -n 20 "$file" >&2; exit 1
}
wait_for_url() {
  local url="$1" seconds="$2"
  for _ in $(seq 1 "$((seconds * 5))"); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.2
  done
  say "timed out waiting for $url"; exit 1
}
# mark LABEL: a numbered marker in the PNG at this moment.
mark() { printf '%s\t%s\n' "$(date +%s.%N)" "$1" >>"$state/events.tsv"; say "step: $1"; }
# Long waits run in the background so that Ctrl-C or TERM reach the traps at once (bash runs a
# trap only after the foreground command ends).
waiting=""
bg_wait() { local rc=0; "$@" & waiting=$!; wait "$waiting" || rc=$?; waiting=""; return "$rc"; }
alive() { kill -0 "$operator" 2>/dev/null || { say "the operator exited:"; tail -n 20 "$state/operator.log" >&2; exit 1; }; }
# at OFFSET: sleeps until OFFSET seconds after the hierarchies were applied.
at() {
  local now; now="$(date +%s)"
  if [ "$((t0 + $1))" -gt "$now" ]; then bg_wait sleep "$((t0 + $1 - now))"; fi
  alive
}
poke() { kubectl -n "$1" annotate eh "$2" edgehierarchy.dev/sync="$(date +%s.%N)" --overwrite >/dev/null; }

say "state in $state"
start="$(date +%s)"
"$bin/control-plane" up --dir "$state/cluster" >"$state/control-plane.log" 2>&1 &
pids+=($!)
wait_for_line "$state/control-plane.log" '^ready KUBECONFIG=' 180 "${pids[-1]}"
export KUBECONFIG="$state/cluster/kubeconfig"
# The CRD first: the operator exits when it cannot list EdgeHierarchy resources.
kubectl apply -f "$root/crds/edgehierarchy.yaml" >/dev/null
kubectl wait --for condition=established --timeout=60s crd/edgehierarchies.edgehierarchy.dev >/dev/null

# An S1 hub (its per-minute quotas apply), configurations evaluated every 15 s as in the demo.
"$bin/iothub-emulator" --port 0 --dir "$state/hub" --hub dashboard-hub --sku S1 --config-eval-interval-secs 15 >"$state/emulator.log" 2>&1 &
pids+=($!)
wait_for_line "$state/emulator.log" '^ready' 30 "${pids[-1]}"

metrics_port="$(free_port)"
"$bin/edge-hierarchy-operator" run --metrics-addr "127.0.0.1:$metrics_port" >"$state/operator.log" 2>&1 &
operator=$!
pids+=("$operator")
wait_for_url "http://127.0.0.1:$metrics_port/metrics" 60

prom_port="$(free_port)"
cat >"$state/prometheus.yml" <<EOF
global: {scrape_interval: 5s, evaluation_interval: 5s}
scrape_configs:
  - job_name: edge-hierarchy-operator
    honor_labels: true    # as the chart's PodMonitor: keep the hierarchies' own namespace label
    static_configs: [{targets: ["127.0.0.1:$metrics_port"]}]
EOF
"$prometheus" --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/prometheus" \
  --web.listen-address="127.0.0.1:$prom_port" --storage.tsdb.retention.time=1d >"$state/prometheus.log" 2>&1 &
pids+=($!)
wait_for_url "http://127.0.0.1:$prom_port/-/ready" 60
say "Prometheus on http://127.0.0.1:$prom_port (API only), scraping the operator on 127.0.0.1:$metrics_port"

good="$(cat "$state/hub/connection-string")"
for ns in iot plant; do
  kubectl create namespace "$ns" >/dev/null
  kubectl -n "$ns" create secret generic iothub-service --save-config --from-literal=connectionString="$good" >/dev/null
  kubectl -n "$ns" create secret generic iothub-ca --from-file=ca.crt="$state/hub/ca.crt" >/dev/null
done
# The examples as published, plus the emulator's CA and a 20 s resync (as scripts/demo.sh).
example() {
  sed -e 's/^\(    connectionStringSecretRef:.*\)$/\1\n    caSecretRef: {name: iothub-ca}/' \
      -e 's/^  devices:$/  policy: {resyncInterval: 20s}\n  devices:/' "$root/examples/$1"
}
example tutorial.yaml >"$state/tutorial.yaml"
example factory.yaml >"$state/factory.yaml"
# The tutorial without the top layer's API proxy (as without_api_proxy in the e2e tests).
python3 - "$state/tutorial.yaml" >"$state/tutorial-noproxy.yaml" <<'PY'
import sys
y = open(sys.argv[1]).read()
start = y.index("                IoTEdgeAPIProxy:")
end = y.index("          $edgeHub:", start)
print(y[:start] + y[end:], end="")
PY

t0="$(date +%s)"
mark "tutorial (iot) and factory (plant) applied; edge-sim starts their devices"
kubectl -n iot apply -f "$state/tutorial.yaml" >/dev/null
kubectl -n plant apply -f "$state/factory.yaml" >/dev/null
"$bin/edge-sim" run --namespace iot --hierarchy tutorial --emulator-dir "$state/hub" --state-dir "$state/sim-iot" >"$state/edge-sim-iot.log" 2>&1 &
pids+=($!)
"$bin/edge-sim" run --namespace plant --hierarchy factory --emulator-dir "$state/hub" --state-dir "$state/sim-plant" >"$state/edge-sim-plant.log" 2>&1 &
pids+=($!)

step() { echo "$((duration * $1 / 100))"; }
ready_timeout="$(( $(step 30) > 60 ? $(step 30) : 60 ))"
bg_wait kubectl -n iot wait --for=condition=Ready eh/tutorial --timeout="${ready_timeout}s" >/dev/null \
  || say "the tutorial is not Ready after ${ready_timeout}s; going on"
bg_wait kubectl -n plant wait --for=condition=Ready eh/factory --timeout="${ready_timeout}s" >/dev/null \
  || say "the factory is not Ready after ${ready_timeout}s; going on"
alive
say "converged after $(( $(date +%s) - t0 ))s: $(kubectl get eh -A --no-headers 2>/dev/null | tr -s ' ' | tr '\n' ';')"

at "$(step 30)"
mark "plant/factory: hub Secret broken (HostName only)"
kubectl -n plant create secret generic iothub-service --from-literal=connectionString="HostName=only-a-host" \
  --dry-run=client -o yaml | kubectl -n plant apply -f - >/dev/null
poke plant factory

at "$(step 45)"
mark "plant/factory: hub Secret restored"
kubectl -n plant create secret generic iothub-service --from-literal=connectionString="$good" \
  --dry-run=client -o yaml | kubectl -n plant apply -f - >/dev/null

at "$(step 55)"
mark "iot/tutorial: deployment without the API proxy"
kubectl -n iot apply -f "$state/tutorial-noproxy.yaml" >/dev/null

at "$(step 65)"
mark "plant/factory: site1-gw disabled in the hub (drift)"
python3 - "$state/hub" site1-gw <<'PY' || say "could not disable site1-gw in the hub"
# Disables a device through the IoT Hub REST API (2021-04-12), standard library only.
import base64, hashlib, hmac, json, ssl, sys, time, urllib.parse, urllib.request
hub_dir, device = sys.argv[1], sys.argv[2]
cs = dict(p.split("=", 1) for p in open(f"{hub_dir}/connection-string").read().strip().split(";"))
host = cs["HostName"]
expiry = str(int(time.time()) + 600)
resource = urllib.parse.quote(host, safe="").lower()
sig = base64.b64encode(hmac.new(base64.b64decode(cs["SharedAccessKey"]), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest())
token = f"SharedAccessSignature sr={resource}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}&skn={cs['SharedAccessKeyName']}"
ctx = ssl.create_default_context(cafile=f"{hub_dir}/ca.crt")
url = f"https://{host}/devices/{device}?api-version=2021-04-12"   # the emulator's host is localhost:PORT
def call(method, body=None, etag=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", token)
    req.add_header("Content-Type", "application/json")
    if etag:
        req.add_header("If-Match", f'"{etag}"')
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.load(r)
d = call("GET")
d["status"] = "disabled"
call("PUT", d, d.get("etag"))
PY

at "$(step 80)"
mark "iot/tutorial: deployment restored"
kubectl -n iot apply -f "$state/tutorial.yaml" >/dev/null

at "$duration"
bg_wait sleep 6   # one more scrape
end="$(date +%s)"
kubectl get eh -A >"$state/final.txt" 2>&1 || true
say "run over after $((end - t0))s (everything started $((end - start))s ago):"
cat "$state/final.txt" >&2

mkdir -p "$(dirname "$out")"
"$venv/bin/python" "$root/scripts/render-dashboard.py" \
  --prometheus "http://127.0.0.1:$prom_port" --start "$t0" --end "$end" --scrape-interval 5 \
  --dashboard "$root/charts/edge-hierarchy-operator/dashboards/edge-hierarchy.json" \
  --events "$state/events.tsv" --out "$out"
say "wrote $out ($(du -k "$out" | cut -f1) KB)"

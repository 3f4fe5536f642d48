#!/usr/bin/env bash
# `make demo`: a local control plane, the IoT Hub emulator, the operator and (when built) the
# simulated edge devices, with examples/tutorial.yaml applied and its tree printed as it
# converges. Ctrl-C stops everything. State lives in .demo/ (recreated on each run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"
demo="$root/.demo"
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
tools="$(e2e/tools/build.sh)"
export PATH="$tools:$PATH"

pids=()
cleanup() {
  trap - EXIT
  # The terminal (or a pipe such as `| tee`) may be gone already: never let a message stop the
  # cleanup.
  echo "demo: stopping" >&2 2>/dev/null || true
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
# Background jobs of a script ignore Ctrl-C, so every way out goes through cleanup, including a
# closed pipe or terminal.
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

rm -rf "$demo" && mkdir -p "$demo"

# wait_for_line FILE PATTERN SECONDS: waits until a process's log shows its ready line.
wait_for_line() {
  local file="$1" pattern="$2" seconds="$3"
  for _ in $(seq 1 "$((seconds * 5))"); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "demo: timed out waiting for '$pattern' in $file:" >&2
  tail -n 20 "$file" >&2
  exit 1
}

echo "demo: starting etcd, kube-apiserver and kube-controller-manager"
"$bin/control-plane" up --dir "$demo/cluster" >"$demo/control-plane.log" 2>&1 &
pids+=($!)
wait_for_line "$demo/control-plane.log" '^ready KUBECONFIG=' 120
export KUBECONFIG="$demo/cluster/kubeconfig"

echo "demo: starting the IoT Hub emulator"
# Azure's timing, except that configurations are evaluated every 15 s instead of every five
# minutes, so the demo's modules show up while you watch.
"$bin/iothub-emulator" --port 0 --dir "$demo/hub" --hub demo-hub --config-eval-interval-secs 15 >"$demo/emulator.log" 2>&1 &
pids+=($!)
wait_for_line "$demo/emulator.log" '^ready' 30

kubectl apply -f crds/edgehierarchy.yaml >/dev/null
kubectl wait --for condition=established --timeout=60s crd/edgehierarchies.edgehierarchy.dev >/dev/null
kubectl create namespace iot >/dev/null
kubectl -n iot create secret generic iothub-service --from-file=connectionString="$demo/hub/connection-string" >/dev/null
kubectl -n iot create secret generic iothub-ca --from-file=ca.crt="$demo/hub/ca.crt" >/dev/null

echo "demo: starting the operator (log: .demo/operator.log)"
"$bin/edge-hierarchy-operator" run >"$demo/operator.log" 2>&1 &
pids+=($!)

# The tutorial as published, plus the emulator's CA as an extra trust anchor and a 20 s resync
# so module health shows up quickly.
sed -e 's/^\(    connectionStringSecretRef:.*\)$/\1\n    caSecretRef: {name: iothub-ca}/' \
    -e 's/^  devices:$/  policy: {resyncInterval: 20s}\n  devices:/' examples/tutorial.yaml |
  kubectl -n iot apply -f - >/dev/null

if [ -x "$bin/edge-sim" ] && "$bin/edge-sim" --help 2>/dev/null | grep -q ' run'; then
  echo "demo: starting simulated edge devices (log: .demo/edge-sim.log)"
  "$bin/edge-sim" run --namespace iot --hierarchy tutorial --emulator-dir "$demo/hub" >"$demo/edge-sim.log" 2>&1 &
  pids+=($!)
fi

cat <<HELP
demo: ready. In another terminal:
  export KUBECONFIG=$KUBECONFIG
  kubectl -n iot get eh
  kubectl -n iot describe eh tutorial
  $bin/kubectl-edgehierarchy tree tutorial -n iot
Ctrl-C stops the demo.
HELP
sleep 2
while true; do
  clear 2>/dev/null || printf '\033[2J\033[H'
  date '+%H:%M:%S'
  "$bin/kubectl-edgehierarchy" tree tutorial -n iot || true
  echo
  kubectl -n iot get events --field-selector involvedObject.kind=EdgeHierarchy --sort-by=.lastTimestamp 2>/dev/null | tail -n 6 || true
  sleep 3
done

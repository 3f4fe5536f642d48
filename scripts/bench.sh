#!/usr/bin/env bash
# `make bench`: the benchmarks, printed and never asserted (numbers describe this machine).
#   1. the IoT Hub emulator: requests per second for device GET and bulk create
#   2. the PKI: certificates issued per second per key algorithm (if the pki_bench example exists)
#   3. the operator's targets (operator-bench): a 1,000-device hierarchy at the S3 quota, then
#      resynced, edited and restarted; the same with the quota out of the way beside Microsoft's
#      Python SDK device by device; ten hierarchies on one hub. Arguments go to operator-bench:
#      `scripts/bench.sh --scenario scale` (or `make bench BENCH_ARGS="--scenario scale"`) runs
#      one scenario alone, and `--help` lists the rest.
# Builds what it needs in release mode first. `make bench` has already run `make tools venv`.
# Every section runs even if one before it failed; the exit status says whether all passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
CARGO="${CARGO:-cargo}"
target="${CARGO_TARGET_DIR:-target}/release"
started=$SECONDS
failed=()

section() { printf '\n== %s\n' "$*"; }

section "build (release): iothub-emulator, edge-hierarchy-operator, e2e-bench"
build_started=$SECONDS
# One cargo invocation, so the crates they share are built once with one feature set.
if ! "$CARGO" build --release --quiet -p iothub-emulator -p edge-hierarchy-operator -p e2e-bench --bins; then
  echo "bench: the release build failed; nothing to run" >&2
  exit 1
fi
have_pki_bench=no
if [ -f operator/examples/pki_bench.rs ]; then
  if "$CARGO" build --release --quiet -p edge-hierarchy-operator --example pki_bench; then
    have_pki_bench=yes
  else
    failed+=("pki_bench build")
  fi
fi
# The control plane's Go tools (cached by e2e/tools/build.sh; `make tools` built them).
if tools="$(e2e/tools/build.sh)"; then
  export EHO_TOOLS_BIN="$tools"
else
  failed+=("e2e/tools/build.sh")
fi
echo "built in $((SECONDS - build_started)) s"

section "IoT Hub emulator: requests per second (emulator-bench)"
"$target/emulator-bench" || failed+=("emulator-bench")

section "PKI: edge CA certificates issued per second per algorithm (pki_bench)"
if [ "$have_pki_bench" = yes ]; then
  "$target/examples/pki_bench" 3 || failed+=("pki_bench")
else
  echo "skipped: operator/examples/pki_bench.rs is not in this checkout or did not build"
fi

section "operator: 1,000 devices in 5 layers at the hub's limit, its targets beside their goals (operator-bench)"
"$target/operator-bench" \
  --operator "$target/edge-hierarchy-operator" \
  --emulator "$target/iothub-emulator" "$@" ||
  failed+=("operator-bench")

section "done in $((SECONDS - started)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "bench: failed: ${failed[*]}" >&2
  exit 1
fi

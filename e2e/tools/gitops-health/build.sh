#!/usr/bin/env bash
# Builds gitops-health (main.go beside this script: kstatus from Flux's cli-utils fork and Argo CD's
# Lua runtime, at the versions pinned in go.mod/go.sum) into the same tools cache as
# e2e/tools/build.sh, and prints the binary's path.
#
# The same pattern as e2e/tools/imagebuild/build.sh: the folder is keyed by a hash of the Go
# version, this script and the module's files; a build goes to a temporary name, must report the
# pinned versions, and only then moves into place; concurrent runs take a lock, so one builds and
# the others wait and reuse.
#
# Usage: e2e/tools/gitops-health/build.sh   prints the path of the gitops-health binary on stdout
# Env:   EHO_TOOLS_CACHE  cache root (default: $XDG_CACHE_HOME or ~/.cache, /edge-hierarchy-operator/tools)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${EHO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-hierarchy-operator/tools}"

# The libraries `gitops-health -version` names, in its order.
modules=(github.com/fluxcd/cli-utils github.com/yuin/gopher-lua layeh.com/gopher-json)

if ! command -v go >/dev/null 2>&1; then
  echo "gitops-health/build.sh: Go is not on PATH; it is needed to build the GitOps health checker" >&2
  exit 1
fi

key="$( { go env GOVERSION; cat "${BASH_SOURCE[0]}" "$here"/go.mod "$here"/go.sum "$here"/*.go; } | sha256sum | cut -c1-16)"
dir="$cache_root/gitops-health-$key"
out="$dir/gitops-health"
mkdir -p "$dir"

exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then
  if ! flock -n 9; then
    echo "gitops-health/build.sh: another build of $key is running; waiting for it" >&2
    flock 9
  fi
else
  echo "gitops-health/build.sh: flock not found; not guarding against concurrent builds" >&2
fi

if [ ! -x "$out" ]; then
  export CGO_ENABLED=0 GOFLAGS=-mod=readonly
  expected=""
  for m in "${modules[@]}"; do
    v="$(cd "$here" && go list -m -f '{{.Version}}' "$m")"
    if [[ ! "$v" =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]]; then
      echo "gitops-health/build.sh: could not read the pinned version of $m from go.mod (got '$v')" >&2
      exit 1
    fi
    expected="${expected:+$expected }$m $v"
  done
  tmp="$dir/.gitops-health.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  start=$SECONDS
  echo "gitops-health/build.sh: building gitops-health on $expected" >&2
  (cd "$here" && go build -trimpath -ldflags "-s -w" -o "$tmp" .)
  if ! reported="$("$tmp" -version 2>&1)" || [[ "$reported" != "$expected" ]]; then
    echo "gitops-health/build.sh: gitops-health was built but \`gitops-health -version\` did not report $expected:" >&2
    echo "$reported" | head -n 20 >&2
    exit 1
  fi
  mv "$tmp" "$out"
  echo "gitops-health/build.sh: built gitops-health in $((SECONDS - start))s" >&2
fi

echo "$out"

#!/usr/bin/env bash
# Builds the Prometheus server (github.com/prometheus/prometheus/cmd/prometheus, at the Prometheus
# module version pinned in go.mod/go.sum beside this script: the same v0.316.0 as
# e2e/tools/promtool) into the same tools cache as e2e/tools/build.sh, and prints the binary's
# path. scripts/render-dashboard.sh runs it on loopback to scrape a real run of the operator and
# answer the dashboard's queries.
#
# The pattern of e2e/tools/promtool/build.sh: its own folder, keyed by a hash of the Go version,
# this script and the module's files, so a change here never invalidates the other tools; a build
# goes to a temporary name, must report the pinned Prometheus version, and only then moves into
# place; concurrent runs take a lock, so one builds and the others wait and reuse.
#
# The web UI's assets are not built in (no `builtinassets` tag, which needs the UI compiled with
# npm first): the HTTP API, all render-dashboard.sh uses, works without them; the UI pages do not.
#
# Prometheus tags its Go module v0.3MM.P for release 3.MM.P (v0.316.0 is 3.16.0). A plain
# `go build` leaves the version empty (the Makefile sets it with -X), so the version is set here
# from the pin, after checking it against the VERSION file the module ships.
#
# Usage: e2e/tools/prometheus/build.sh   prints the path of the prometheus binary on stdout
# Env:   EHO_TOOLS_CACHE  cache root (default: $XDG_CACHE_HOME or ~/.cache, /edge-hierarchy-operator/tools)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${EHO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-hierarchy-operator/tools}"

if ! command -v go >/dev/null 2>&1; then
  echo "prometheus/build.sh: Go is not on PATH; it is needed to build prometheus" >&2
  exit 1
fi

key="$( { go env GOVERSION; cat "${BASH_SOURCE[0]}" "$here"/go.mod "$here"/go.sum "$here"/*.go; } | sha256sum | cut -c1-16)"
dir="$cache_root/prometheus-$key"
out="$dir/prometheus"
mkdir -p "$dir"

exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then
  if ! flock -n 9; then
    echo "prometheus/build.sh: another build of $key is running; waiting for it" >&2
    flock 9
  fi
else
  echo "prometheus/build.sh: flock not found; not guarding against concurrent builds" >&2
fi

if [ ! -x "$out" ]; then
  export CGO_ENABLED=0 GOFLAGS=-mod=readonly
  module="$(cd "$here" && go list -m -f '{{.Version}}' github.com/prometheus/prometheus)"
  if [[ ! "$module" =~ ^v0\.3([0-9][0-9])\.([0-9]+)$ ]]; then
    echo "prometheus/build.sh: expected a Prometheus 3.x module version (v0.3MM.P) in go.mod, got '$module'" >&2
    exit 1
  fi
  release="3.$((10#${BASH_REMATCH[1]})).${BASH_REMATCH[2]}"
  # The module's own VERSION file must agree with the mapping; a mismatch means the mapping is wrong.
  (cd "$here" && go mod download github.com/prometheus/prometheus)
  moddir="$(cd "$here" && go list -m -f '{{.Dir}}' github.com/prometheus/prometheus)"
  shipped="$(tr -d '[:space:]' <"$moddir/VERSION" 2>/dev/null || true)"
  if [ "$shipped" != "$release" ]; then
    echo "prometheus/build.sh: module $module should be Prometheus $release but its VERSION file says '$shipped'" >&2
    exit 1
  fi
  v=github.com/prometheus/common/version
  ldflags="-s -w -X $v.Version=$release -X $v.Revision=$module -X $v.Branch=HEAD -X $v.BuildUser=edge-hierarchy-operator"
  tmp="$dir/.prometheus.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  start=$SECONDS
  echo "prometheus/build.sh: building prometheus from Prometheus $release (module $module); the first build takes minutes" >&2
  (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$tmp" github.com/prometheus/prometheus/cmd/prometheus)
  if ! reported="$("$tmp" --version 2>&1)" || [[ "$reported" != "prometheus, version $release "* ]]; then
    echo "prometheus/build.sh: prometheus was built but \`prometheus --version\` did not report $release:" >&2
    echo "$reported" | head -n 20 >&2
    exit 1
  fi
  mv "$tmp" "$out"
  echo "prometheus/build.sh: built prometheus $release in $((SECONDS - start))s" >&2
fi

echo "$out"

#!/usr/bin/env bash
# Builds promtool (github.com/prometheus/prometheus/cmd/promtool, at the Prometheus module version
# pinned in go.mod/go.sum beside this script) into the same tools cache as e2e/tools/build.sh, and
# prints the binary's path. scripts/check-monitoring.sh uses it to check and unit-test the chart's
# alerting rules.
#
# The pattern of e2e/tools/imagebuild/build.sh: its own folder, keyed by a hash of the Go version,
# this script and the module's files, so a change here never invalidates the Kubernetes binaries;
# a build goes to a temporary name, must report the pinned Prometheus version, and only then moves
# into place; concurrent runs take a lock, so one builds and the others wait and reuse.
#
# Prometheus tags its Go module v0.3MM.P for release 3.MM.P (v0.316.0 is 3.16.0). A plain
# `go build` leaves the version empty (promtool's Makefile sets it with -X), so the version is set
# here from the pin, after checking it against the VERSION file the module ships.
#
# Usage: e2e/tools/promtool/build.sh   prints the path of the promtool binary on stdout
# Env:   EHO_TOOLS_CACHE  cache root (default: $XDG_CACHE_HOME or ~/.cache, /edge-hierarchy-operator/tools)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${EHO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-hierarchy-operator/tools}"

if ! command -v go >/dev/null 2>&1; then
  echo "promtool/build.sh: Go is not on PATH; it is needed to build promtool" >&2
  exit 1
fi

key="$( { go env GOVERSION; cat "${BASH_SOURCE[0]}" "$here"/go.mod "$here"/go.sum "$here"/*.go; } | sha256sum | cut -c1-16)"
dir="$cache_root/promtool-$key"
out="$dir/promtool"
mkdir -p "$dir"

exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then
  if ! flock -n 9; then
    echo "promtool/build.sh: another build of $key is running; waiting for it" >&2
    flock 9
  fi
else
  echo "promtool/build.sh: flock not found; not guarding against concurrent builds" >&2
fi

if [ ! -x "$out" ]; then
  export CGO_ENABLED=0 GOFLAGS=-mod=readonly
  module="$(cd "$here" && go list -m -f '{{.Version}}' github.com/prometheus/prometheus)"
  if [[ ! "$module" =~ ^v0\.3([0-9][0-9])\.([0-9]+)$ ]]; then
    echo "promtool/build.sh: expected a Prometheus 3.x module version (v0.3MM.P) in go.mod, got '$module'" >&2
    exit 1
  fi
  release="3.$((10#${BASH_REMATCH[1]})).${BASH_REMATCH[2]}"
  # The module's own VERSION file must agree with the mapping; a mismatch means the mapping is wrong.
  (cd "$here" && go mod download github.com/prometheus/prometheus)
  moddir="$(cd "$here" && go list -m -f '{{.Dir}}' github.com/prometheus/prometheus)"
  shipped="$(tr -d '[:space:]' <"$moddir/VERSION" 2>/dev/null || true)"
  if [ "$shipped" != "$release" ]; then
    echo "promtool/build.sh: module $module should be Prometheus $release but its VERSION file says '$shipped'" >&2
    exit 1
  fi
  v=github.com/prometheus/common/version
  ldflags="-s -w -X $v.Version=$release -X $v.Revision=$module -X $v.Branch=HEAD -X $v.BuildUser=edge-hierarchy-operator"
  tmp="$dir/.promtool.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  start=$SECONDS
  echo "promtool/build.sh: building promtool from Prometheus $release (module $module); the first build takes minutes" >&2
  # remove_all_sd is Prometheus' own build tag for leaving out the service-discovery plugins (AWS,
  # Azure, GCE, ... SDKs; file and HTTP discovery stay): promtool checks and tests rules and lints
  # metrics here, never discovers targets, and without them a cold build takes 3 minutes, not 8.
  (cd "$here" && go build -trimpath -tags remove_all_sd -ldflags "$ldflags" -o "$tmp" github.com/prometheus/prometheus/cmd/promtool)
  if ! reported="$("$tmp" --version 2>&1)" || [[ "$reported" != "promtool, version $release "* ]]; then
    echo "promtool/build.sh: promtool was built but \`promtool --version\` did not report $release:" >&2
    echo "$reported" | head -n 20 >&2
    exit 1
  fi
  mv "$tmp" "$out"
  echo "promtool/build.sh: built promtool $release in $((SECONDS - start))s" >&2
fi

echo "$out"

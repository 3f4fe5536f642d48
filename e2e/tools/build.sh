#!/usr/bin/env bash
# Builds the real Kubernetes parts the e2e tests run (etcd, kube-apiserver,
# kube-controller-manager, and for a test node kube-scheduler, kubelet and the sandbox `pause`
# program) and helm from the pinned Go wrapper modules beside this script.
#
# Binaries go to a cache folder outside the clone, keyed by a hash of the wrapper modules, this
# script and the Go version, so a rebuild happens only when a pin (or Go, or how we build)
# changes. CI clones afresh each run; the cache (and Go's own module and build caches) survive on
# the machine when it is kept, and everything is rebuilt from the module proxy when it is not.
#
# Re-entrant: a second run with everything cached only prints the folder. Concurrent runs (two
# test binaries starting at once) take a lock, so one builds and the other waits and reuses.
#
# Usage: e2e/tools/build.sh            builds what is missing, prints the bin folder on stdout
# Env:   EHO_TOOLS_CACHE  cache root (default: $XDG_CACHE_HOME or ~/.cache, /edge-hierarchy-operator/tools)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${EHO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-hierarchy-operator/tools}"

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: Go is not on PATH; it is needed to build etcd, the Kubernetes components and helm" >&2
  exit 1
fi

key="$( { go env GOVERSION; cat "${BASH_SOURCE[0]}" "$here"/{etcd,kubernetes,helm}/go.mod "$here"/{etcd,kubernetes,helm}/go.sum "$here"/pause/go.mod "$here"/pause/*.go; } | sha256sum | cut -c1-16)"
bin="$cache_root/$key/bin"
mkdir -p "$bin"

# One builder per key at a time; the others wait here and then find the binaries built.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/$key/.lock"
  if ! flock -n 9; then
    echo "build.sh: another build of $key is running; waiting for it" >&2
    flock 9
  fi
else
  echo "build.sh: flock not found; not guarding against concurrent builds" >&2
fi

export CGO_ENABLED=0 GOFLAGS=-mod=readonly

# The pinned version of a module, as the wrapper's go.mod resolves it.
module_version() { (cd "$here/$1" && go list -m -f '{{.Version}}' "$2"); }

# build_one MODULE_DIR OUTPUT PACKAGE LDFLAGS EXPECTED_VERSION VERSION_ARGS...
# Builds into a temporary name, checks that the binary runs and reports the pinned version, and
# only then moves it into place, so an interrupted or broken build is never reused.
tmp=""
trap 'if [ -n "$tmp" ]; then rm -f "$tmp"; fi' EXIT
build_one() {
  local dir="$1" out="$2" pkg="$3" ldflags="$4" expected="$5"
  shift 5
  if [ -x "$bin/$out" ]; then return 0; fi
  local start=$SECONDS
  tmp="$bin/.$out.tmp.$$"
  echo "build.sh: building $out from $pkg (first build of this pin takes minutes)" >&2
  (cd "$here/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp" "$pkg")
  local reported
  if ! reported="$("$tmp" "$@" 2>&1)" || [[ "$reported" != *"$expected"* ]]; then
    echo "build.sh: $out was built but \`$out $*\` did not report $expected:" >&2
    echo "$reported" | head -n 20 >&2
    exit 1
  fi
  mv "$tmp" "$bin/$out"
  tmp=""
  echo "build.sh: built $out in $((SECONDS - start))s" >&2
}

etcd_version="$(module_version etcd go.etcd.io/etcd/server/v3)"
k8s_version="$(module_version kubernetes k8s.io/kubernetes)"
helm_version="$(module_version helm helm.sh/helm/v3)"
for v in "$etcd_version" "$k8s_version" "$helm_version"; do
  if [[ ! "$v" =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]]; then
    echo "build.sh: could not read the pinned versions from the go.mod files (got '$etcd_version' '$k8s_version' '$helm_version')" >&2
    exit 1
  fi
done
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
# Without these the binaries say v0.0.0-master; an empty gitVersion makes them panic at start.
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor"

build_one etcd etcd go.etcd.io/etcd/server/v3 "" "etcd Version: ${etcd_version#v}" --version
build_one kubernetes kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags" "Kubernetes $k8s_version" --version
build_one kubernetes kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags" "Kubernetes $k8s_version" --version
build_one kubernetes kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags" "Kubernetes $k8s_version" --version
build_one kubernetes kubelet k8s.io/kubernetes/cmd/kubelet "$k8s_ldflags" "Kubernetes $k8s_version" --version
build_one pause pause . "" "pause (edge-hierarchy-operator test node)" -version
build_one helm helm helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$helm_version" "$helm_version" version --template '{{.Version}}'

echo "$bin"

#!/usr/bin/env bash
# Builds imagebuild (main.go beside this script, on the go-containerregistry version pinned in
# go.mod/go.sum) into the same tools cache as e2e/tools/build.sh, and prints the binary's path.
#
# Kept apart from e2e/tools/build.sh so that `make image` never waits for the Kubernetes build and
# a change here does not invalidate the Kubernetes binaries' cache key. The same pattern: the
# folder is keyed by a hash of the Go version, this script and the module's files; a build goes to
# a temporary name, must report the pinned version, and only then moves into place; concurrent
# runs take a lock, so one builds and the others wait and reuse.
#
# Usage: e2e/tools/imagebuild/build.sh   prints the path of the imagebuild binary on stdout
# Env:   EHO_TOOLS_CACHE  cache root (default: $XDG_CACHE_HOME or ~/.cache, /edge-hierarchy-operator/tools)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${EHO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-hierarchy-operator/tools}"

if ! command -v go >/dev/null 2>&1; then
  echo "imagebuild/build.sh: Go is not on PATH; it is needed to build the image assembler" >&2
  exit 1
fi

key="$( { go env GOVERSION; cat "${BASH_SOURCE[0]}" "$here"/go.mod "$here"/go.sum "$here"/*.go; } | sha256sum | cut -c1-16)"
dir="$cache_root/imagebuild-$key"
out="$dir/imagebuild"
mkdir -p "$dir"

exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then
  if ! flock -n 9; then
    echo "imagebuild/build.sh: another build of $key is running; waiting for it" >&2
    flock 9
  fi
else
  echo "imagebuild/build.sh: flock not found; not guarding against concurrent builds" >&2
fi

if [ ! -x "$out" ]; then
  export CGO_ENABLED=0 GOFLAGS=-mod=readonly
  expected="$(cd "$here" && go list -m -f '{{.Version}}' github.com/google/go-containerregistry)"
  if [[ ! "$expected" =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]]; then
    echo "imagebuild/build.sh: could not read the pinned go-containerregistry version from go.mod (got '$expected')" >&2
    exit 1
  fi
  tmp="$dir/.imagebuild.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  start=$SECONDS
  echo "imagebuild/build.sh: building imagebuild on go-containerregistry $expected" >&2
  (cd "$here" && go build -trimpath -ldflags "-s -w" -o "$tmp" .)
  if ! reported="$("$tmp" -version 2>&1)" || [[ "$reported" != *"go-containerregistry $expected" ]]; then
    echo "imagebuild/build.sh: imagebuild was built but \`imagebuild -version\` did not report $expected:" >&2
    echo "$reported" | head -n 20 >&2
    exit 1
  fi
  mv "$tmp" "$out"
  echo "imagebuild/build.sh: built imagebuild in $((SECONDS - start))s" >&2
fi

echo "$out"

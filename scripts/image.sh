#!/usr/bin/env bash
# `make image`: builds the operator's container image offline, without Docker or a registry, and
# writes it as a docker-archive tar:
#
#   target/image/edge-hierarchy-operator.tar     tag edge-hierarchy-operator:dev
#
# (`target/` is the repository's, even when CARGO_TARGET_DIR puts cargo's output elsewhere.)
# `docker load -i`, `ctr images import` and `skopeo copy docker-archive:...` read it.
#
# It is the image the Dockerfile describes: the same release build, the same root file system
# laid out by scripts/image-rootfs.sh (here with this machine's Debian libraries; the Dockerfile
# builds on rust:*-bookworm, the same Debian release), and the same config (user 65532:65532,
# entrypoint /edge-hierarchy-operator, default argument run, the same environment). The
# Dockerfile's base images cannot be pulled here, so the layer is packed by e2e/tools/imagebuild
# (go-containerregistry, pinned in its go.mod) instead; scripts/image-check.py checks the result
# against the Dockerfile.
#
# Works on a fresh machine with the toolchains: installs ca-certificates if missing (through
# scripts/install-deps.sh), builds imagebuild once into the tools cache, and the release binary
# into cargo's target folder (a no-op when it is up to date).
#
# IMAGE_PROFILE=debug packs the debug binary instead (`make test` does: the e2e tests run that
# same binary outside the image, it is built already, and a cold release build would add about
# ten minutes to CI). Everything else about the image is the same.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tag="edge-hierarchy-operator:dev"
out_dir="target/image"
out="$out_dir/edge-hierarchy-operator.tar"
cargo="${CARGO:-cargo}"
profile="${IMAGE_PROFILE:-release}"
case "$profile" in
  release) profile_args=(--release) ;;
  debug) profile_args=() ;;
  *)
    echo "image: IMAGE_PROFILE must be release or debug, not '$profile'" >&2
    exit 2
    ;;
esac
bin="${CARGO_TARGET_DIR:-target}/$profile/edge-hierarchy-operator"
start=$SECONDS

scripts/install-deps.sh
imagebuild="$(e2e/tools/imagebuild/build.sh)"

echo "image: cargo build ${profile_args[*]:+${profile_args[*]} }-p edge-hierarchy-operator --bin edge-hierarchy-operator" >&2
"$cargo" build "${profile_args[@]}" --locked --quiet -p edge-hierarchy-operator --bin edge-hierarchy-operator

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
scripts/image-rootfs.sh "$bin" "$work/rootfs"

# One timestamp for the config and every file: the last commit's, so a rebuild of the same commit
# gives the same layer.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH

mkdir -p "$out_dir"
# Keep these in step with the Dockerfile's last stage (scripts/image-check.py compares them).
"$imagebuild" \
  -rootfs "$work/rootfs" \
  -tag "$tag" \
  -out "$out" \
  -user 65532:65532 \
  -workdir / \
  -entrypoint /edge-hierarchy-operator \
  -cmd run \
  -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  -env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  -label org.opencontainers.image.title=edge-hierarchy-operator \
  -label "org.opencontainers.image.description=Kubernetes operator for Azure IoT Edge hierarchies" \
  -label org.opencontainers.image.licenses=MIT >&2
# Which binary is inside, for scripts/image-check.py (it compares the file byte for byte).
echo "$profile" >"$out_dir/profile"
echo "image: wrote $out ($tag, $profile build, $(du -h "$out" | cut -f1)) in $((SECONDS - start))s" >&2

# The operator's container image. Build it on your own machine (Docker 23+ with BuildKit, or
# podman/buildah) and push it to a registry your cluster reads:
#
#   docker build -t REGISTRY/edge-hierarchy-operator:TAG .
#   docker push REGISTRY/edge-hierarchy-operator:TAG
#   helm install eho charts/edge-hierarchy-operator -n edge-system --create-namespace \
#     --set image.repository=REGISTRY/edge-hierarchy-operator --set image.tag=TAG
#
# This file has not been built in the project's development environment, which cannot pull base
# images. There `make image` builds the same image offline (scripts/image.sh): the same release
# build, the same root file system from scripts/image-rootfs.sh, the same config below, written
# to target/image/edge-hierarchy-operator.tar as edge-hierarchy-operator:dev; `make image-check`
# compares that image's config with this file's last stage.
#
# The result runs as 65532:65532, needs no writable path (the chart sets
# readOnlyRootFilesystem), and holds only the binary, the glibc libraries `ldd` names for it, the
# public CA roots and passwd/group entries: no shell, no package manager.

# Debian 12 (bookworm), like the machines `make image` runs on. aws-lc-sys (rustls' crypto)
# compiles C with the image's gcc; on x86_64 and aarch64 Linux it needs neither cmake, nasm nor
# bindgen. The toolchain must be at least the workspace's rust-version (1.89).
ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep crates and compiled dependencies between builds; the binary is laid out
# into /rootfs in the same step, since the target cache is not part of the stage.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p edge-hierarchy-operator --bin edge-hierarchy-operator \
 && scripts/image-rootfs.sh target/release/edge-hierarchy-operator /rootfs

FROM scratch
COPY --from=build /rootfs/ /
# Keep these in step with scripts/image.sh (scripts/image-check.py compares them).
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="edge-hierarchy-operator"
LABEL org.opencontainers.image.description="Kubernetes operator for Azure IoT Edge hierarchies"
LABEL org.opencontainers.image.licenses="MIT"
USER 65532:65532
WORKDIR /
# The chart passes `args: [run]`, which replaces CMD, so both `docker run IMAGE` and the chart
# start the controller; `docker run IMAGE crd` prints the CRD.
ENTRYPOINT ["/edge-hierarchy-operator"]
CMD ["run"]

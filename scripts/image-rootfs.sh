#!/usr/bin/env bash
# Lays out the operator image's whole root file system in a new folder. Both ways of building the
# image run this one script on a freshly built release binary, so they produce the same files:
# the Dockerfile in its build stage (then copies the folder onto `scratch`), and `make image`
# (scripts/image.sh) on this machine (then packs the folder with e2e/tools/imagebuild).
#
#   /edge-hierarchy-operator              the binary, 0755, owned by root (the container user
#                                         can run it but not change it)
#   /lib*/..., /usr/lib*/...              exactly the shared libraries `ldd` names for the binary
#                                         (glibc's libc, libm, libgcc_s and the dynamic loader;
#                                         TLS is rustls on aws-lc, compiled in, so no libssl)
#   /etc/ssl/certs/ca-certificates.crt    public roots: reqwest's rustls-platform-verifier reads
#                                         the system roots on Linux, and Azure IoT Hub's
#                                         certificates chain to them (a hierarchy's caSecretRef
#                                         only adds to them)
#   /etc/passwd, /etc/group               root and nonroot (65532), the user the image runs as
#   /etc/nsswitch.conf                    files, then DNS (glibc 2.34+ has both built in)
#   /tmp                                  1777; the operator writes nothing, so a read-only root
#                                         file system is fine
#
# Usage: scripts/image-rootfs.sh BINARY DIR     (DIR must not exist yet)
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BINARY DIR" >&2
  exit 2
fi
binary="$1" root="$2"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if [ ! -x "$binary" ]; then
  echo "image-rootfs: $binary is not an executable file; build it with cargo build --release -p edge-hierarchy-operator" >&2
  exit 1
fi
if [ -e "$root" ]; then
  echo "image-rootfs: $root already exists; give a new folder" >&2
  exit 1
fi
if [ ! -s "$ca_bundle" ]; then
  echo "image-rootfs: $ca_bundle is missing; install the ca-certificates package (or set CA_BUNDLE)" >&2
  exit 1
fi

umask 022
mkdir -p "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
install -m 0755 "$binary" "$root/edge-hierarchy-operator"
install -m 0644 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"

# The libraries, at the paths the dynamic loader will look for them (the loader at the path
# written in the binary, the others in the loader's default folders), copied as regular files.
# A library ldd cannot find, or a binary ldd cannot read, stops the build.
if ! deps="$(ldd "$binary" 2>&1)"; then
  if [[ "$deps" == *"not a dynamic executable"* || "$deps" == *"statically linked"* ]]; then
    deps=""
  else
    echo "image-rootfs: ldd $binary failed:" >&2
    echo "$deps" >&2
    exit 1
  fi
fi
if [[ "$deps" == *"not found"* ]]; then
  echo "image-rootfs: the binary needs libraries this machine does not have:" >&2
  echo "$deps" >&2
  exit 1
fi
while read -r first arrow path _; do
  if [ "$arrow" = "=>" ]; then
    lib="$path" mode=0644          # libfoo.so.N => /lib/.../libfoo.so.N (0x...)
  elif [[ "$first" == /* ]]; then
    lib="$first" mode=0755         # /lib64/ld-linux-x86-64.so.2 (0x...): the loader
  else
    continue                       # linux-vdso.so.1 (0x...): provided by the kernel
  fi
  mkdir -p "$root$(dirname "$lib")"
  install -m "$mode" "$(readlink -f "$lib")" "$root$lib"
done <<<"$deps"

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"

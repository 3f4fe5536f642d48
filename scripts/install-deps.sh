#!/usr/bin/env bash
# Installs the few Debian packages the tests and `make image` call (a fresh CI machine has only the toolchains).
set -euo pipefail
missing=()
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
# The public roots `make image` puts into the operator's image; `ip` for `make image-check`.
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# The EST conformance harness (e2e/est-conformance): Bouncy Castle's client on a JDK, built by
# Maven, which downloads Bouncy Castle 1.87 into ~/.m2 the first time.
command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# The test node of `control-plane up --node`: its container runtime and the CNI loopback plugin.
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: please install: ${missing[*]} (needs root)" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

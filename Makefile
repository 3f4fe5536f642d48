# The two commands the README promises: `make demo` and `make test`. Both work on a fresh machine
# that has only the toolchains (Rust, Go, Python, kubectl); everything else is built or installed here.

SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PYTHON := $(VENV)/bin/python
# Where cargo puts binaries (CI points CARGO_TARGET_DIR at a cache outside the clone).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# Which operator build `make image` packs: release (the Dockerfile's), or debug (what `make test`
# packs for the test node: the binary the other e2e tests run, already built).
IMAGE_PROFILE ?= release

.PHONY: all build tools test-tools venv deps crd crd-check lint test unit e2e conformance demo bench clean-demo image image-check chaos

all: build

## Rust binaries: the operator, kubectl plugin, emulator, edge simulator, control-plane harness.
build:
	$(CARGO) build --workspace --bins

## etcd, kube-apiserver, kube-controller-manager and helm from pinned Go modules (cached).
tools:
	@e2e/tools/build.sh >/dev/null

## Every Go tool a test uses: `tools`, and promtool, the GitOps health checker and the image
## packer (each its own pinned module). `make test` builds them before the tests start; CI starts
## this in the background while `make lint` runs.
test-tools: tools
	@e2e/tools/promtool/build.sh >/dev/null
	@e2e/tools/gitops-health/build.sh >/dev/null
	@e2e/tools/imagebuild/build.sh >/dev/null

## Python venv with Microsoft's azure-iot-hub SDK for the emulator conformance suite.
venv: $(VENV)/.installed
$(VENV)/.installed: e2e/iothub-emulator/conformance/requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r e2e/iothub-emulator/conformance/requirements.txt
	touch $@

## System packages the tests use (shellcheck for install.sh, openssl for certificate checks).
deps:
	@scripts/install-deps.sh

## Regenerate the CRD from the Rust types (never edit crds/ by hand).
crd:
	$(CARGO) run --quiet -p edge-hierarchy-operator --bin edge-hierarchy-operator -- crd > crds/edgehierarchy.yaml
	@if [ -d charts/edge-hierarchy-operator/crds ]; then cp crds/edgehierarchy.yaml charts/edge-hierarchy-operator/crds/; fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Every test: unit, e2e against a real control plane + the emulator, and the SDK conformance suite.
## The image comes first: the chart's e2e test (helm_on_node) runs it on the test node. It packs
## the debug binary `build` made (IMAGE_PROFILE=debug), which spares CI a cold release build.
## scripts/run-tests.py runs the workspace's test binaries (what `cargo test --workspace` runs)
## several at a time, EHO_TEST_JOBS of them (default 3), each binary's output printed whole.
test: deps test-tools venv build
	@IMAGE_PROFILE=debug scripts/image.sh
	python3 scripts/run-tests.py
	IOTHUB_EMULATOR_BIN=$(TARGET_DIR)/debug/iothub-emulator $(PYTHON) -m pytest -q e2e/iothub-emulator/conformance

## Only the chaos suite (docs/chaos.md); `make test` runs it too. CHAOS_SEED=N replays the
## operator's SIGKILL points of an earlier run.
chaos: tools build
	$(CARGO) test -p e2e-tests --test chaos -- --nocapture

## Local demo: control plane, IoT Hub emulator, operator and simulated devices; Ctrl-C stops all.
demo: tools build
	@scripts/demo.sh

## Benchmarks (printed ratios, never asserted). BENCH_ARGS go to operator-bench, for example
## BENCH_ARGS="--scenario scale" to run one scenario alone.
bench: tools venv
	@scripts/bench.sh $(BENCH_ARGS)

## The operator's container image, built offline (no Docker, no registry) from the release binary
## (IMAGE_PROFILE=debug: the debug one): target/image/edge-hierarchy-operator.tar, a
## docker-archive tagged edge-hierarchy-operator:dev.
image:
	@IMAGE_PROFILE=$(IMAGE_PROFILE) scripts/image.sh

## Checks that image (tag, platform, user, entrypoint, the Dockerfile's config) and runs its binary
## inside it as 65532 on a read-only root. .ci/run calls it after `make test` with
## IMAGE_PROFILE=debug (`make test` has built that image already, so only the checks run).
image-check: image
	@python3 scripts/image-check.py

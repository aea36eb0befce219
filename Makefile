# Portcullis — two commands: `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test bench build deps lint fmt clean

## Install missing build tools (cmake, a C compiler, curl) where possible.
deps:
	@scripts/install-deps.sh

## Build every binary of the workspace.
build: deps
	$(CARGO) build --workspace --bins --examples

## Start the demo upstream, the issuer and the gateway on 127.0.0.1 (Ctrl-C stops them all).
run: build
	@scripts/install-deps.sh jq
	@scripts/run.sh

## Unit tests, then end-to-end tests that start the real binaries on loopback.
test: build
	@scripts/install-deps.sh nginx postgres promtool
	@CARGO=$(CARGO) scripts/test.sh

## Benchmarks: the gateway against nginx, bare Pingora, HAProxy (+ jwt_verify) and nginx +
## auth_request with wrk; instructions per request (callgrind); TLS, HTTP/2 and idle connections
## against nginx; criterion micro-benchmarks of the verifier; issuer throughput; revocation.
## Writes bench/RESULTS.md. BENCH_QUICK=1 make bench is a short smoke run.
bench: deps
	@scripts/install-deps.sh nginx wrk haproxy h2load openssl valgrind strace
	$(CARGO) build --release --workspace --bins
	@CARGO=$(CARGO) bench/run.sh

## Formatting and lints, as required before every commit.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p portcullis-gateway --all-targets --features bench-internals -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf data

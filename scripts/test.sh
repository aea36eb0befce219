#!/usr/bin/env bash
# `make test`: unit tests of every crate, then the end-to-end suites (real processes on
# loopback), then the issuer's OpenAPI conformance run (scripts/openapi-fuzz.sh, counted as
# one test). Ends with one summary line: "tests: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

status=0
# One invocation for every crate, so dependencies are built once with one feature set (the
# same `make build` used); two test threads: the end-to-end suites start real processes.
$cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee -a "$log" || status=1

passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .*; ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1   # a build error or crash counts as a failure even without a test line
fi

# The OpenAPI document against the running issuer (Schemathesis, installed on first use into
# target/schemathesis-venv): one test, however many cases it generates.
echo
echo "openapi-fuzz: the issuer's OpenAPI document against a running issuer"
if $cargo build -q -p portcullis-issuer && scripts/openapi-fuzz.sh; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
  status=1
fi
echo
echo "tests: $passed passed, $failed failed"
exit $status

#!/usr/bin/env bash
# The Python environment of the end-to-end tests that drive third-party clients (authlib and
# requests, from PyPI, pinned) against the real issuer: target/py-venv. The Rust tests run
# this themselves (tests/tests/issuer_oauth.rs), so `cargo test` and `make test` both get it.
#
# Idempotent and safe to run concurrently: a stamp file records the pinned requirements, so a
# second run changes nothing, and a lock serialises test processes that start together.
# Prints the path of the environment's python on stdout (everything else goes to stderr).
# Usage: scripts/py-venv.sh   (PY_VENV overrides the location)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${PY_VENV:-${CARGO_TARGET_DIR:-$root/target}/py-venv}
requirements="authlib==1.9.10 requests==2.34.2"
stamp=$venv/.portcullis-requirements

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ "$(cat "$stamp" 2>/dev/null)" != "$requirements" ]; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    scripts/install-deps.sh venv >&2
  fi
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  # shellcheck disable=SC2086 # one word per requirement
  "$venv/bin/pip" install -q --disable-pip-version-check $requirements >&2
  echo "$requirements" >"$stamp"
fi
echo "$venv/bin/python"

#!/usr/bin/env bash
# Installs the build tools Portcullis needs when they are missing (Debian/Ubuntu, as root or via sudo).
# Usage: scripts/install-deps.sh [extra-tool ...]   e.g. scripts/install-deps.sh nginx wrk
set -euo pipefail

declare -A pkg=([cmake]=cmake [cc]=gcc [c++]=g++ [make]=make [nginx]=nginx [wrk]=wrk [openssl]=openssl [curl]=curl [jq]=jq [postgres]=postgresql [venv]=python3-venv [promtool]=prometheus [haproxy]=haproxy [valgrind]=valgrind [strace]=strace [h2load]=nghttp2-client)
want=(cmake cc c++ curl "$@")
missing=()
have() {
  # PostgreSQL's server binaries live outside PATH on Debian.
  if [ "$1" = postgres ]; then
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
  elif [ "$1" = venv ]; then
    # A module, not a command: `python3 -m venv` also needs ensurepip (python3-venv on Debian).
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1
  else
    command -v "$1" >/dev/null 2>&1
  fi
}
for tool in "${want[@]}"; do
  have "$tool" || missing+=("${pkg[$tool]:-$tool}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: apt-get not found; please install: ${missing[*]}" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: not root and no sudo; please install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null

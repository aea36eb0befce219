#!/usr/bin/env bash
# Installs the build tools Portcullis needs when they are missing (Debian/Ubuntu, as root or via sudo).
# Usage: scripts/install-deps.sh [extra-tool ...]   e.g. scripts/install-deps.sh nginx wrk
set -euo pipefail

declare -A pkg=([cmake]=cmake [cc]=gcc [c++]=g++ [make]=make [nginx]=nginx [wrk]=wrk [openssl]=openssl [curl]=curl)
want=(cmake cc c++ curl "$@")
missing=()
for tool in "${want[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg[$tool]:-$tool}")
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

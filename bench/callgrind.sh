#!/usr/bin/env bash
# User-space instructions per proxied request, counted with valgrind's callgrind: repeatable
# on a noisy machine, where wall-clock figures drift. Compares gateway binaries side by side.
#
# Usage: bench/callgrind.sh LABEL=BINARY [LABEL=BINARY ...]
#   e.g. bench/callgrind.sh before=/tmp/old/portcullis-gateway after=target/release/portcullis-gateway
# Environment: CG_CONFIG (a gateway.yaml.in with @PORT@ @ADMIN_PORT@ @UPSTREAM_PORT@ @DIR@,
#   default bench/callgrind-gateway.yaml.in), CG_PATHS ["/public/x"] (space-separated request
#   paths, one measurement each), CG_SMALL [100] and CG_LARGE [900] requests: the cost per
#   request is (I(large) - I(small)) / (large - small), so start-up and shutdown cancel out
#   (one connection carries them all: stay below keepalive_requests, 1000 by default).
# Paths under /api/ carry an ES256 token minted by bench/tokengen (the JWT route, cache warm).
# Prints one line per binary and path: instructions per request.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=${CG_CONFIG:-$ROOT/bench/callgrind-gateway.yaml.in}
PATHS=${CG_PATHS:-/public/x}
SMALL=${CG_SMALL:-100}
LARGE=${CG_LARGE:-900}
UPSTREAM_BIN=${CG_UPSTREAM:-$ROOT/target/release/portcullis-demo-upstream}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }

TMP=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

KEYS=$TMP/keys
cargo build --quiet --release --manifest-path "$ROOT/bench/tokengen/Cargo.toml" --target-dir "$ROOT/target"
"$ROOT/target/release/tokengen" --out "$KEYS" --iss https://bench.portcullis.test --aud demo \
  --count 1 --ttl 7200 2>/dev/null
TOKEN=$(head -n 1 "$KEYS/tokens-ES256.txt")

UP_PORT=$(free_port)
"$UPSTREAM_BIN" --listen "127.0.0.1:$UP_PORT" --name cg >"$TMP/upstream.log" 2>&1 &
pids+=($!)

# send PORT PATH N: N keep-alive GETs on one connection, each answer read in full.
send() {
  python3 - "$1" "$2" "$3" "$TOKEN" <<'EOF'
import socket, sys
port, path, n, token = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.create_connection(("127.0.0.1", port), timeout=60)
auth = f"Authorization: Bearer {token}\r\n" if path.startswith("/api/") else ""
req = f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind\r\n{auth}\r\n".encode()
buf = b""
for _ in range(n):
    s.sendall(req)
    while True:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if len(rest) >= length:
                status = head.split(b" ")[1]
                if status != b"200":
                    sys.exit(f"status {status.decode()} for {path}")
                buf = rest[length:]
                break
        data = s.recv(65536)
        if not data:
            sys.exit("connection closed")
        buf += data
EOF
}

# count BIN PATH N: total instructions of one gateway run that served N requests.
count() {
  local bin=$1 path=$2 n=$3 dir
  dir=$(mktemp -d -p "$TMP")
  local port admin
  port=$(free_port)
  admin=$(free_port)
  sed -e "s#@PORT@#$port#g" -e "s#@ADMIN_PORT@#$admin#g" -e "s#@UPSTREAM_PORT@#$UP_PORT#g" \
    -e "s#@DIR@#$dir#g" -e "s#@KEYS@#$KEYS#g" "$CONFIG" >"$dir/gateway.yaml"
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" -c "$dir/gateway.yaml" \
    >"$dir/gw.log" 2>&1 &
  local vg=$!
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "http://127.0.0.1:$admin/healthz" 2>/dev/null && break
    sleep 0.1
  done
  send "$port" "$path" 20 # warm-up: connection pools, lazy statics
  send "$port" "$path" "$n"
  kill -TERM "$vg"
  wait "$vg" || true
  awk '/^summary:/ {print $2}' "$dir/cg.out"
}

for spec in "$@"; do
  label=${spec%%=*}
  bin=${spec#*=}
  for path in $PATHS; do
    small=$(count "$bin" "$path" "$SMALL")
    large=$(count "$bin" "$path" "$LARGE")
    awk -v l="$label" -v p="$path" -v a="$small" -v b="$large" -v n=$((LARGE - SMALL)) \
      'BEGIN {printf "%-10s %-14s %8.1f k instructions/request\n", l, p, (b - a) / n / 1000}'
  done
done

#!/usr/bin/env bash
# User-space instructions per proxied request, counted with valgrind's callgrind: repeatable
# on a noisy machine, where wall-clock figures drift. Compares gateway binaries side by side.
#
# Usage: bench/callgrind.sh LABEL=BINARY [LABEL=BINARY ...]
#   e.g. bench/callgrind.sh before=/tmp/old/portcullis-gateway after=target/release/portcullis-gateway
# A BINARY named `nginx` runs bench/nginx/proxy.conf.in (one process: no master, one worker), one
# named `bare-pingora` runs the bare Pingora floor (bench/bare-pingora, one thread); any other
# is a portcullis-gateway. nginx and bare-pingora serve /public/ only.
# Environment: CG_TOKENGEN (a prebuilt bench/tokengen; else built),
#   CG_CONFIG (a gateway.yaml.in with @PORT@ @ADMIN_PORT@ @UPSTREAM_PORT@ @DIR@, default
#   bench/callgrind-gateway.yaml.in), CG_PATHS ["/public/x"] (space-separated request paths,
#   one measurement each), CG_SMALL [100] and CG_LARGE [900] requests: the cost per
#   request is (I(large) - I(small)) / (large - small), so start-up and shutdown cancel out
#   (one connection carries them all: stay below keepalive_requests, 1000 by default).
# Paths under /api/ carry an ES256 token minted by bench/tokengen (the JWT route, cache warm).
# CG_TOKENS=N: rotate through N distinct tokens (N >= CG_LARGE + 20) with a verified-token cache
#   of one entry, so every request pays a full verification (the gateway's cache-miss path).
# CG_FEED=N: start a real issuer (SQLite) holding N revoked sessions and follow its revocation
#   feed (default config bench/callgrind-revocation.yaml.in); each run waits for the snapshot.
# Prints one line per binary and path: instructions per request.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FEED=${CG_FEED:-}
if [ -n "$FEED" ]; then
  CONFIG=${CG_CONFIG:-$ROOT/bench/callgrind-revocation.yaml.in}
else
  CONFIG=${CG_CONFIG:-$ROOT/bench/callgrind-gateway.yaml.in}
fi
PATHS=${CG_PATHS:-/public/x}
SMALL=${CG_SMALL:-100}
LARGE=${CG_LARGE:-900}
UPSTREAM_BIN=${CG_UPSTREAM:-$ROOT/target/release/portcullis-demo-upstream}
NTOKENS=${CG_TOKENS:-1}
CACHE_ENTRIES=100000
[ "$NTOKENS" -gt 1 ] && CACHE_ENTRIES=1
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
TOKENGEN=${CG_TOKENGEN:-}
if [ -z "$TOKENGEN" ]; then
  cargo build --quiet --release --manifest-path "$ROOT/bench/tokengen/Cargo.toml" --target-dir "$ROOT/target"
  TOKENGEN=$ROOT/target/release/tokengen
fi
"$TOKENGEN" --out "$KEYS" --iss https://bench.portcullis.test --aud demo \
  --count "$NTOKENS" --ttl 7200 2>/dev/null

FEED_URL=none FEED_TOKEN_FILE=none READY=/healthz
if [ -n "$FEED" ]; then
  ISS_PORT=$(free_port)
  mkdir -p "$TMP/issuer"
  cat >"$TMP/issuer/issuer.yaml" <<YAML
listen: 127.0.0.1:$ISS_PORT
admin_listen: 127.0.0.1:$(free_port)
database_url: sqlite://$TMP/issuer/issuer.db
issuer: http://127.0.0.1:$ISS_PORT
secrets:
  dir: $TMP/issuer/secrets
YAML
  "${CG_ISSUER:-$ROOT/target/release/portcullis-issuer}" -c "$TMP/issuer/issuer.yaml" >"$TMP/issuer.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ISS_PORT/readyz" 2>/dev/null && break
    sleep 0.1
  done
  # N revoked sessions, as N logouts would leave them (sids unlike the bench token's).
  python3 - "$TMP/issuer/issuer.db" "$FEED" <<'PY'
import sqlite3, sys, time
db, n = sqlite3.connect(sys.argv[1]), int(sys.argv[2])
now = int(time.time())
db.executemany(
    "INSERT INTO revocations (seq, kind, target, not_before, created_at, relevant_until)"
    " VALUES (?, 'session', ?, NULL, ?, ?)",
    ((i + 1, f"revoked-session-{i:09d}", now, now + 7200) for i in range(n)))
db.execute("UPDATE revocation_feed SET last_seq = ?", (n,))
db.commit()
PY
  FEED_URL=http://127.0.0.1:$ISS_PORT/v1/revocations
  FEED_TOKEN_FILE=$TMP/issuer/secrets/feed-token
  READY=/readyz
fi

UP_PORT=$(free_port)
"$UPSTREAM_BIN" --listen "127.0.0.1:$UP_PORT" --name cg >"$TMP/upstream.log" 2>&1 &
pids+=($!)

# send PORT PATH N: N keep-alive GETs on one connection, each answer read in full.
send() {
  python3 - "$1" "$2" "$3" "$KEYS/tokens-ES256.txt" <<'EOF'
import socket, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
tokens = open(sys.argv[4]).read().split()
s = socket.create_connection(("127.0.0.1", port), timeout=60)
buf = b""
for i in range(n):
    auth = f"Authorization: Bearer {tokens[i % len(tokens)]}\r\n" if path.startswith("/api/") else ""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind\r\n{auth}\r\n".encode())
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

# count BIN PATH N: total instructions of one proxy run that served N requests.
count() {
  local bin=$1 path=$2 n=$3 dir port admin ready curl_ready=(curl -sS)
  dir=$(mktemp -d -p "$TMP")
  port=$(free_port)
  admin=$(free_port)
  ready=http://127.0.0.1:$port/
  local cmd=(valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out")
  case $(basename "$bin") in
    nginx)
      sed -e "s#@WORKERS@#1#g" -e "s#@DIR@#$dir#g" -e "s#@PORT@#$port#g" \
        -e "s#@UPSTREAM_PORT@#$UP_PORT#g" "$ROOT/bench/nginx/proxy.conf.in" >"$dir/nginx.conf"
      cmd+=("$bin" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g "master_process off;")
      ;;
    bare-pingora)
      cmd+=("$bin" "127.0.0.1:$port" "127.0.0.1:$UP_PORT" /public 1)
      ;;
    *)
      sed -e "s#@PORT@#$port#g" -e "s#@ADMIN_PORT@#$admin#g" -e "s#@UPSTREAM_PORT@#$UP_PORT#g" \
        -e "s#@DIR@#$dir#g" -e "s#@KEYS@#$KEYS#g" -e "s#@FEED_URL@#$FEED_URL#g" \
        -e "s#@FEED_TOKEN_FILE@#$FEED_TOKEN_FILE#g" -e "s#@CACHE_ENTRIES@#$CACHE_ENTRIES#g" \
        "$CONFIG" >"$dir/gateway.yaml"
      cmd+=("$bin" -c "$dir/gateway.yaml")
      ready=http://127.0.0.1:$admin$READY
      curl_ready=(curl -fsS) # the admin endpoint must say 200; for the others any answer will do
      ;;
  esac
  "${cmd[@]}" >"$dir/proxy.log" 2>&1 &
  local vg=$!
  for _ in $(seq 1 600); do
    "${curl_ready[@]}" -o /dev/null "$ready" 2>/dev/null && break
    sleep 0.1
  done
  send "$port" "$path" 20 # warm-up: connection pools, lazy statics
  send "$port" "$path" "$n"
  # nginx's graceful stop is SIGQUIT (SIGTERM is its fast stop, which would drop the profile);
  # bare-pingora has Pingora's default grace period (minutes) on SIGTERM, so it gets SIGINT (an
  # immediate exit); the gateway's config sets a 1 s grace period.
  case $(basename "$bin") in
    nginx) kill -QUIT "$vg" ;;
    bare-pingora) kill -INT "$vg" ;;
    *) kill -TERM "$vg" ;;
  esac
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

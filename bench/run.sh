#!/usr/bin/env bash
# Portcullis benchmarks: the gateway against nginx and HAProxy, side by side, on loopback; writes
# bench/RESULTS.md. `make bench` installs nginx, HAProxy and wrk, builds the release binaries and
# runs this script. Everything listens on 127.0.0.1 (ports picked free); every process started
# here is stopped on exit, error or Ctrl-C.
#
# Environment (defaults in brackets):
#   BENCH_QUICK=1            smoke run: 1 round x 3 s, 1 s warm-up, short criterion run
#   BENCH_ROUNDS [3]         interleaved rounds of every proxy case
#   BENCH_DURATION [10]      seconds measured per case and round
#   BENCH_WARMUP [2]         seconds of warm-up before each measurement (not counted)
#   BENCH_ISSUER_DURATION    seconds per issuer endpoint [= BENCH_DURATION]
#   BENCH_THREADS [2]        wrk threads
#   BENCH_CONNECTIONS [64]   wrk connections
#   BENCH_RSS_CONNECTIONS [256]  connections of the peak-RSS case
#   BENCH_WORKERS [2]        gateway threads = nginx worker_processes
#   BENCH_TOKEN_COUNT [10000] distinct tokens per algorithm for the many-tokens cases
#   BENCH_CRITERION [1]      0 skips the criterion micro-benchmarks
#   BENCH_POSTGRES [auto]    0 skips the issuer-on-PostgreSQL runs and the revocation
#                            benchmarks (auto: when initdb exists)
#   BENCH_REVOCATION [1]     0 skips the revocation benchmarks (bench/revocation.sh: propagation
#                            to 3 gateways from 2 issuer replicas, 1,000,000 revoked sessions)
#   BENCH_ONLY=revocation    runs only those and puts their section into the existing report
#   BENCH_INSTRUCTIONS [1]   0 skips the instructions-per-request table (bench/instructions.sh:
#                            callgrind over nginx, bare Pingora and the gateway's routes)
#   BENCH_ONLY=instructions  runs only that and puts its section into the existing report
#   BENCH_EDGE [1]           0 skips the edge benchmarks (bench/edge.sh: the gateway against
#                            nginx over TLS 1.3 with one certificate: new connections/s,
#                            keep-alive and HTTP/2 throughput, memory per idle connection)
#   BENCH_ONLY=edge          runs only those and puts their section into the existing report
#   BENCH_BIN_DIR            where the release binaries are [target/release]
#   BENCH_TOKENGEN           a prebuilt bench/tokengen binary (skips its cargo build)
#                            [built into target/release/tokengen]
#   BENCH_OUT                the report [bench/RESULTS.md]
#   BENCH_KEEP_TMP=1         keep the temporary directory (configs, logs, raw wrk output)
#   BENCH_BASELINE_BIN       an older portcullis-gateway binary: its public and JWT routes run
#                            side by side with this one ("before/after" in the report); its
#                            config is bench/gateway.yaml.in without the `limit:` lines
#   CARGO [cargo]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/bench
CARGO=${CARGO:-cargo}
BIN_DIR=${BENCH_BIN_DIR:-$ROOT/target/release}
OUT=${BENCH_OUT:-$BENCH_DIR/RESULTS.md}
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  d_rounds=1 d_duration=3 d_warmup=1
else
  d_rounds=3 d_duration=10 d_warmup=2
fi
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
DURATION=${BENCH_DURATION:-$d_duration}
WARMUP=${BENCH_WARMUP:-$d_warmup}
ISSUER_DURATION=${BENCH_ISSUER_DURATION:-$DURATION}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNECTIONS:-64}
RSS_CONNS=${BENCH_RSS_CONNECTIONS:-256}
WORKERS=${BENCH_WORKERS:-2}
NTOKENS=${BENCH_TOKEN_COUNT:-10000}
CRITERION=${BENCH_CRITERION:-1}
POSTGRES=${BENCH_POSTGRES:-auto}
# Every contestant forwards to this path of the demo upstream: a small constant JSON answer,
# so the upstream's cost does not depend on how many headers a contestant forwards.
UPSTREAM_PATH=/healthz
BENCH_ISS=https://bench.portcullis.test
USER_EMAIL=bench@example.com
USER_PASSWORD="bench correct horse battery staple"
# The gateway's cache bound in the many-tokens cases: one entry, so rotating through
# BENCH_TOKEN_COUNT tokens misses (nearly) every time and every request pays a verification.
MISS_CACHE=1
DEFAULT_CACHE=100000

export BENCH_WRK_DIR=$BENCH_DIR/wrk BENCH_WRK_THREADS=$THREADS
export LC_ALL=C

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

case ${BENCH_ONLY:-} in
  "") ;;
  revocation) exec "$BENCH_DIR/revocation.sh" --splice "$OUT" ;;
  instructions) exec "$BENCH_DIR/instructions.sh" --splice "$OUT" ;;
  edge) exec "$BENCH_DIR/edge.sh" --splice "$OUT" ;;
  *) die "BENCH_ONLY=${BENCH_ONLY}: only \"revocation\", \"instructions\" and \"edge\" are known" ;;
esac
REVOCATION=${BENCH_REVOCATION:-1}
INSTRUCTIONS=${BENCH_INSTRUCTIONS:-1}
EDGE=${BENCH_EDGE:-1}

for tool in wrk nginx haproxy openssl python3 curl awk sed; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "$tool is missing (make bench installs nginx, haproxy, wrk and openssl)"
done
for b in portcullis-gateway portcullis-issuer portcullis-demo-upstream bare-pingora; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: cargo build --release --workspace --bins"
done
[ "$THREADS" -le "$CONNS" ] || die "BENCH_THREADS must not exceed BENCH_CONNECTIONS"

start_run portcullis-bench

# ---------------------------------------------------------------------------------------------
# Build the helpers, keys and tokens
# ---------------------------------------------------------------------------------------------
if [ -n "${BENCH_TOKENGEN:-}" ]; then
  TOKENGEN=$BENCH_TOKENGEN
  [ -x "$TOKENGEN" ] || die "BENCH_TOKENGEN=$TOKENGEN is not an executable"
  log "using the prebuilt tokengen $TOKENGEN"
else
  log "building bench/tokengen"
  "$CARGO" build --quiet --release --manifest-path "$BENCH_DIR/tokengen/Cargo.toml" \
    --target-dir "$ROOT/target" || die "building bench/tokengen failed"
  TOKENGEN=$ROOT/target/release/tokengen
fi
KEYS=$TMP/keys
log "minting $NTOKENS tokens per algorithm (ES256, RS256, EdDSA)"
"$TOKENGEN" --out "$KEYS" --iss "$BENCH_ISS" --aud demo --count "$NTOKENS" --ttl 7200 \
  2>"$TMP/logs/tokengen.err" || die "tokengen failed: $(cat "$TMP/logs/tokengen.err")"
TOKEN_ES256=$(head -n 1 "$KEYS/tokens-ES256.txt")
TOKEN_RS256=$(head -n 1 "$KEYS/tokens-RS256.txt")
# HAProxy's jwt_verify reads a PEM file: the ES256 tokens' key, converted from its JWK.
"$BENCH_DIR/haproxy/jwt.py" pem "$KEYS/jwks.json" "$KEYS/tokens-ES256.txt" >"$KEYS/es256.pem" ||
  die "converting the ES256 JWK to PEM failed"

# ---------------------------------------------------------------------------------------------
# Criterion micro-benchmarks (first, while nothing else runs)
# ---------------------------------------------------------------------------------------------
declare -A CRIT=()
CRIT_CMD="(skipped: BENCH_CRITERION=0)"
CRIT_NOTES=""
if [ "$CRITERION" != 0 ]; then
  if [ "$QUICK" = 1 ]; then
    crit_args=(--warm-up-time 0.5 --measurement-time 1 --sample-size 20)
  else
    crit_args=(--warm-up-time 1 --measurement-time 3)
  fi
  CRIT_CMD="$CARGO bench -p portcullis-gateway --features bench-internals --bench verifier -- ${crit_args[*]} --noplot --output-format bencher"
  log "criterion: $CRIT_CMD"
  (cd "$ROOT" && "$CARGO" bench -p portcullis-gateway --features bench-internals --bench verifier -- "${crit_args[@]}" \
    --noplot --output-format bencher) >"$TMP/criterion.txt" 2>"$TMP/logs/criterion.err" ||
    die "criterion failed: $(tail -n 20 "$TMP/logs/criterion.err")"
  while read -r name ns; do
    CRIT[$name]=$ns
  done < <(awk '/^test .* bench:/ {v = $5; gsub(",", "", v); print $2, v}' "$TMP/criterion.txt")
  CRIT_NOTES=$(grep 'cache hits' "$TMP/logs/criterion.err" || true)
  [ ${#CRIT[@]} -gt 0 ] || die "no criterion results in $TMP/criterion.txt"
fi

# ---------------------------------------------------------------------------------------------
# Shared services: the upstream, and the issuer on SQLite
# ---------------------------------------------------------------------------------------------
pick_port UP_PORT
spawn upstream "$BIN_DIR/portcullis-demo-upstream" --name demo --listen "127.0.0.1:$UP_PORT"
UP_PID=$SPAWNED
wait_http "http://127.0.0.1:$UP_PORT/healthz" 200 20 || die "the demo upstream did not start"

# start_issuer NAME DATABASE_URL: sets ISS_NAME ISS_CFG ISS_PID ISS_PORT ISS_ADMIN ADMIN_TOKEN.
start_issuer() {
  local dir=$TMP/run/issuer-$1
  ISS_NAME=$1 ISS_CFG=$dir/issuer.yaml
  mkdir -p "$dir"
  pick_port ISS_PORT
  pick_port ISS_ADMIN
  render "$BENCH_DIR/issuer.yaml.in" "$ISS_CFG" PORT="$ISS_PORT" ADMIN_PORT="$ISS_ADMIN" \
    DATABASE_URL="$2" DIR="$dir"
  launch_issuer "issuer-$1"
  ADMIN_TOKEN=$(cat "$dir/secrets/admin-token")
}

# launch_issuer LOGNAME: (re)starts the issuer of $ISS_CFG; sets ISS_PID.
launch_issuer() {
  spawn "$1" "$BIN_DIR/portcullis-issuer" -c "$ISS_CFG"
  ISS_PID=$SPAWNED
  wait_http "http://127.0.0.1:$ISS_PORT/readyz" 200 60 ||
    die "issuer ($1) did not start: $(tail -n 5 "$TMP/logs/$1.err")"
}

# The issuer can be left unable to write (every login/refresh answers 503) when a client
# disconnects in the middle of one of its database transactions, which is what wrk does to
# its in-flight requests at the end of every run (see bench/findings.md). Before each run the
# issuer is probed with a real login; a wedged issuer is restarted (same database) and the
# event is counted and reported.
ISSUER_RESTARTS=()
issuer_probe() {
  http_code -X POST -H "Authorization: ApiKey $API_KEY" "http://127.0.0.1:$ISS_PORT/v1/auth/api-key"
}
ensure_issuer() {
  local code
  code=$(issuer_probe)
  [ "$code" = 200 ] && return 0
  ISSUER_RESTARTS+=("$ISS_NAME, after $1: API-key login answered $code")
  log "issuer ($ISS_NAME) answers $code after $1: restarting it on the same database"
  stop_pid "$ISS_PID" TERM
  launch_issuer "issuer-$ISS_NAME-restart${#ISSUER_RESTARTS[@]}"
  code=$(issuer_probe)
  [ "$code" = 200 ] || die "issuer ($ISS_NAME) still answers $code after a restart"
}

# seed_issuer: a user (password login), an API key bound to it, and an access token from it.
# Sets API_KEY and ACCESS.
seed_issuer() {
  local admin="http://127.0.0.1:$ISS_ADMIN" user_id answer
  answer=$(curl -s --max-time 30 -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' \
    -d "{\"email\":\"$USER_EMAIL\",\"password\":\"$USER_PASSWORD\",\"roles\":[\"user\"]}" \
    "$admin/admin/users")
  user_id=$(json_str id <<<"$answer")
  [ -n "$user_id" ] || die "creating the bench user failed: $answer"
  answer=$(curl -s --max-time 30 -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' \
    -d "{\"subject\":\"$user_id\",\"scopes\":[\"orders:read\"],\"roles\":[\"user\"]}" \
    "$admin/admin/api-keys")
  API_KEY=$(json_str api_key <<<"$answer")
  [ -n "$API_KEY" ] || die "creating the bench API key failed: $answer"
  answer=$(curl -s --max-time 30 -X POST -H "Authorization: ApiKey $API_KEY" \
    "http://127.0.0.1:$ISS_PORT/v1/auth/api-key")
  ACCESS=$(json_str access_token <<<"$answer")
  [ -n "$ACCESS" ] || die "API-key login failed: $answer"
}

log "starting the issuer on SQLite"
start_issuer sqlite "sqlite://$TMP/run/issuer-sqlite/issuer.db"
SQLITE_ISS_PID=$ISS_PID SQLITE_ISS_PORT=$ISS_PORT SQLITE_ISS_ADMIN=$ISS_ADMIN
seed_issuer
SQLITE_API_KEY=$API_KEY SQLITE_ACCESS=$ACCESS

# ---------------------------------------------------------------------------------------------
# Contestants
# ---------------------------------------------------------------------------------------------
CASES=(direct nginx bare nginx_auth_issuer nginx_auth_gateway haproxy haproxy_jwt_one_es256
  haproxy_jwt_many_es256 gw_public gw_one_es256 gw_one_rs256 gw_many_es256 gw_many_rs256
  gw_many_eddsa gw_invalid_es256 gw_rss_es256)
BASELINE_BIN=${BENCH_BASELINE_BIN:-}
if [ -n "$BASELINE_BIN" ]; then
  [ -x "$BASELINE_BIN" ] || die "BENCH_BASELINE_BIN=$BASELINE_BIN is not an executable"
  CASES+=(gw_public_base gw_one_es256_base)
fi
declare -A LABEL=(
  [direct]="direct: wrk → upstream"
  [nginx]="nginx proxy_pass"
  [bare]="bare Pingora (bench/bare-pingora: upstream_peer + path rewrite)"
  [nginx_auth_issuer]="nginx + auth_request → issuer (GET /v1/users/me)"
  [nginx_auth_gateway]="nginx + auth_request → gateway /_portcullis/verify (1 token)"
  [haproxy]="haproxy proxy"
  [haproxy_jwt_one_es256]="haproxy + jwt_verify, 1 token, ES256"
  [haproxy_jwt_many_es256]="haproxy + jwt_verify, $NTOKENS tokens, ES256"
  [gw_public]="gateway, public route"
  [gw_one_es256]="gateway, JWT route, 1 token (cache warm), ES256"
  [gw_one_rs256]="gateway, JWT route, 1 token (cache warm), RS256"
  [gw_many_es256]="gateway, JWT route, $NTOKENS tokens (every one verified), ES256"
  [gw_many_rs256]="gateway, JWT route, $NTOKENS tokens (every one verified), RS256"
  [gw_many_eddsa]="gateway, JWT route, $NTOKENS tokens (every one verified), EdDSA"
  [gw_invalid_es256]="gateway, JWT route, bad-signature tokens (401), ES256"
  [gw_rss_es256]="gateway, JWT route, $NTOKENS tokens all cached, $RSS_CONNS connections, ES256"
  [gw_public_base]="baseline gateway (BENCH_BASELINE_BIN), public route"
  [gw_one_es256_base]="baseline gateway (BENCH_BASELINE_BIN), JWT route, 1 token (cache warm), ES256"
)
declare -A CMD=()

# start_gateway NAME CACHE_ENTRIES [BINARY]: sets GW_PID GW_PORT GW_ADMIN. A baseline binary
# gets the config without the `limit:` lines (older gateways do not know them).
start_gateway() {
  local name=$1 cache=$2 bin=${3:-$BIN_DIR/portcullis-gateway} dir=$TMP/run/$1-gateway
  mkdir -p "$dir"
  pick_port GW_PORT
  pick_port GW_ADMIN
  render "$BENCH_DIR/gateway.yaml.in" "$dir/gateway.yaml" WORKERS="$WORKERS" DIR="$dir" \
    PORT="$GW_PORT" ADMIN_PORT="$GW_ADMIN" UPSTREAM_PORT="$UP_PORT" KEYS="$KEYS" \
    CACHE_ENTRIES="$cache"
  if [ "$bin" != "$BIN_DIR/portcullis-gateway" ]; then
    sed -i -e '/^ *limit:$/{N;d}' -e '/rate limiting/d' "$dir/gateway.yaml"
  fi
  spawn "$name-gateway" "$bin" -c "$dir/gateway.yaml"
  GW_PID=$SPAWNED
  wait_http "http://127.0.0.1:$GW_ADMIN/readyz" 200 30 ||
    die "gateway ($name) did not become ready: $(tail -n 5 "$TMP/logs/$name-gateway.err")"
}

# start_nginx NAME TEMPLATE [NAME=VALUE...]: sets NGX_PID NGX_PORT.
start_nginx() {
  local name=$1 tpl=$2 dir=$TMP/run/$1-nginx
  shift 2
  mkdir -p "$dir"
  pick_port NGX_PORT
  render "$BENCH_DIR/nginx/$tpl" "$dir/nginx.conf" WORKERS="$WORKERS" DIR="$dir" \
    PORT="$NGX_PORT" UPSTREAM_PORT="$UP_PORT" "$@"
  spawn "$name-nginx" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  NGX_PID=$SPAWNED
  wait_http "http://127.0.0.1:$NGX_PORT/" 404 20 ||
    die "nginx ($name) did not start: $(cat "$dir/error.log" "$TMP/logs/$name-nginx.err" 2>/dev/null | tail -n 5)"
}

# start_haproxy NAME KEY_PEM: bench/haproxy/haproxy.cfg.in with KEY_PEM as the jwt_verify key;
# sets HAP_PID HAP_PORT.
start_haproxy() {
  local name=$1 dir=$TMP/run/$1-haproxy
  mkdir -p "$dir"
  pick_port HAP_PORT
  render "$BENCH_DIR/haproxy/haproxy.cfg.in" "$dir/haproxy.cfg" WORKERS="$WORKERS" \
    PORT="$HAP_PORT" UPSTREAM_PORT="$UP_PORT" ISS="$BENCH_ISS" AUD=demo KEY="$2"
  spawn "$name-haproxy" haproxy -db -f "$dir/haproxy.cfg"
  HAP_PID=$SPAWNED
  if ! wait_http "http://127.0.0.1:$HAP_PORT/" 404 20 || ! alive "$HAP_PID"; then
    die "haproxy ($name) did not start: $(tail -n 5 "$TMP/logs/$name-haproxy.err")"
  fi
}

# setup_case CASE: starts the contestant; sets URL, CONN, SCRIPT, HDRS, WENV, EXPECT, PROBE
# (a token for the sanity check), MEAS (processes measured), STOP (to stop, in order), ADMIN
# (gateway admin port or empty) and SHOW (the command for the report).
setup_case() {
  local c=$1 base
  CONN=$CONNS SCRIPT=plain.lua EXPECT=200 ADMIN="" PROBE=""
  HDRS=() WENV=() MEAS=() STOP=()
  case $c in
    direct)
      URL="http://127.0.0.1:$UP_PORT$UPSTREAM_PATH"
      ;;
    nginx)
      start_nginx "$c" proxy.conf.in
      MEAS=("$NGX_PID") STOP=("$NGX_PID")
      URL="http://127.0.0.1:$NGX_PORT/public$UPSTREAM_PATH"
      ;;
    bare)
      pick_port BARE_PORT
      spawn "$c" "$BIN_DIR/bare-pingora" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP_PORT" /public "$WORKERS"
      BARE_PID=$SPAWNED MEAS=("$SPAWNED") STOP=("$SPAWNED")
      URL="http://127.0.0.1:$BARE_PORT/public$UPSTREAM_PATH"
      wait_http "$URL" 200 20 || die "bare-pingora did not start: $(tail -n 5 "$TMP/logs/$c.err")"
      ;;
    nginx_auth_issuer)
      start_nginx "$c" auth-issuer.conf.in ISSUER_PORT="$SQLITE_ISS_PORT"
      MEAS=("$NGX_PID") STOP=("$NGX_PID")
      URL="http://127.0.0.1:$NGX_PORT/api$UPSTREAM_PATH"
      PROBE=$SQLITE_ACCESS
      ;;
    nginx_auth_gateway)
      start_gateway "$c" "$DEFAULT_CACHE"
      start_nginx "$c" auth-gateway.conf.in GATEWAY_PORT="$GW_PORT"
      MEAS=("$NGX_PID" "$GW_PID") STOP=("$NGX_PID" "$GW_PID") ADMIN=$GW_ADMIN
      URL="http://127.0.0.1:$NGX_PORT/api$UPSTREAM_PATH"
      PROBE=$TOKEN_ES256
      ;;
    haproxy*)
      start_haproxy "$c" "$KEYS/es256.pem"
      MEAS=("$HAP_PID") STOP=("$HAP_PID")
      URL="http://127.0.0.1:$HAP_PORT/api$UPSTREAM_PATH"
      case $c in
        haproxy) URL="http://127.0.0.1:$HAP_PORT/public$UPSTREAM_PATH" ;;
        haproxy_jwt_one_es256) PROBE=$TOKEN_ES256 ;;
        # The gateway's many-tokens case's script and tokens.
        haproxy_jwt_many_es256)
          SCRIPT=tokens.lua WENV=("BENCH_TOKEN_FILE=$KEYS/tokens-ES256.txt")
          ;;
      esac
      ;;
    gw_*_base)
      start_gateway "$c" "$DEFAULT_CACHE" "$BASELINE_BIN"
      MEAS=("$GW_PID") STOP=("$GW_PID") ADMIN=$GW_ADMIN
      URL="http://127.0.0.1:$GW_PORT/api$UPSTREAM_PATH"
      case $c in
        gw_public_base) URL="http://127.0.0.1:$GW_PORT/public$UPSTREAM_PATH" ;;
        gw_one_es256_base) PROBE=$TOKEN_ES256 ;;
      esac
      ;;
    gw_*)
      case $c in
        gw_many_* | gw_rss_* | gw_invalid_*) SCRIPT=tokens.lua ;;
      esac
      if [ "${c#gw_many_}" != "$c" ]; then
        start_gateway "$c" "$MISS_CACHE"
      else
        start_gateway "$c" "$DEFAULT_CACHE"
      fi
      MEAS=("$GW_PID") STOP=("$GW_PID") ADMIN=$GW_ADMIN
      base="http://127.0.0.1:$GW_PORT"
      URL="$base/api$UPSTREAM_PATH"
      case $c in
        gw_public) URL="$base/public$UPSTREAM_PATH" ;;
        gw_one_es256) PROBE=$TOKEN_ES256 ;;
        gw_one_rs256) PROBE=$TOKEN_RS256 ;;
        gw_many_es256 | gw_rss_es256) WENV=("BENCH_TOKEN_FILE=$KEYS/tokens-ES256.txt") ;;
        gw_many_rs256) WENV=("BENCH_TOKEN_FILE=$KEYS/tokens-RS256.txt") ;;
        gw_many_eddsa) WENV=("BENCH_TOKEN_FILE=$KEYS/tokens-EdDSA.txt") ;;
        gw_invalid_es256) WENV=("BENCH_TOKEN_FILE=$KEYS/bad-ES256.txt") EXPECT=401 ;;
      esac
      [ "$c" = gw_rss_es256 ] && CONN=$RSS_CONNS
      ;;
    *) die "unknown case $c" ;;
  esac
  local path="/${URL#http://127.0.0.1:*/}"
  if [ "$SCRIPT" = tokens.lua ]; then
    WENV+=("BENCH_PATH=$path")
    PROBE=$(head -n 1 "${WENV[0]#BENCH_TOKEN_FILE=}")
  elif [ -n "$PROBE" ]; then
    HDRS=(-H "Authorization: Bearer $PROBE")
  fi
  local shown_env="" e
  for e in "${WENV[@]}"; do
    shown_env+="${e/#BENCH_TOKEN_FILE=$KEYS/BENCH_TOKEN_FILE=\$KEYS} "
  done
  local shown_hdr=""
  [ ${#HDRS[@]} -gt 0 ] && shown_hdr="-H 'Authorization: Bearer \$TOKEN' "
  SHOW="${shown_env}wrk -t$THREADS -c$CONN -d${DURATION}s --latency ${shown_hdr}-s bench/wrk/$SCRIPT http://127.0.0.1:\$PORT$path"
}

teardown_case() {
  local pid
  for pid in "${STOP[@]}"; do
    # Pingora (the gateway, bare-pingora) exits at once on SIGINT (SIGTERM would drain for
    # its grace period first); nginx's fast shutdown is SIGTERM, HAProxy's hard stop too.
    if [ "$pid" = "${GW_PID:-}" ] || [ "$pid" = "${BARE_PID:-}" ]; then
      stop_pid "$pid" INT
    else
      stop_pid "$pid" TERM
    fi
  done
}

# Sanity check before measuring: one request answers what the case expects.
probe_case() {
  local c=$1 code
  if [ -n "$PROBE" ]; then
    code=$(http_code -H "Authorization: Bearer $PROBE" "$URL")
  else
    code=$(http_code "$URL")
  fi
  [ "$code" = "$EXPECT" ] || die "$c: $URL answered $code, expected $EXPECT"
}

# check_haproxy: before any measurement, the haproxy + jwt_verify cases must refuse what the
# gateway refuses (or they would measure a plain proxy): aborts the run otherwise.
#  1. HAProxy with the bench key: a bench ES256 token passes; the same token with a flipped
#     signature bit, the RS256 and EdDSA bench tokens, a token signed by another P-256 key, a
#     missing token and a non-bearer Authorization are refused.
#  2. HAProxy with a throwaway P-256 key (openssl): bench/haproxy/jwt.py signs tokens with it,
#     each wrong in one way (aud, iss, exp, nbf, iat, typ, alg, signature) or valid in a way
#     the gateway accepts (aud list, exp within the 30 s leeway, ...); each must get the answer
#     the gateway gives.
#  3. Both routes forward /x to the upstream with the forwarding headers (its JSON echo).
# Sets HAP_CHECKED (the number of requests checked).
check_haproxy() {
  local dir=$TMP/run/haproxy-check key tokens expect name tok code n=0 body path want
  mkdir -p "$dir"
  if ! { openssl ecparam -name prime256v1 -genkey -noout -out "$dir/probe.key" &&
    openssl ec -in "$dir/probe.key" -pubout -out "$dir/probe.pem"; } 2>"$TMP/logs/openssl.err"; then
    die "openssl could not make a P-256 key: $(cat "$TMP/logs/openssl.err")"
  fi
  "$BENCH_DIR/haproxy/jwt.py" probes "$dir/probe.key" "$BENCH_ISS" demo >"$dir/probes.txt" ||
    die "bench/haproxy/jwt.py probes failed"
  {
    echo "200 bench-ES256-token $TOKEN_ES256"
    echo "401 bench-ES256-token-flipped-signature-bit $(head -n 1 "$KEYS/bad-ES256.txt")"
    echo "401 bench-RS256-token $TOKEN_RS256"
    echo "401 bench-EdDSA-token $(head -n 1 "$KEYS/tokens-EdDSA.txt")"
    echo "401 signed-by-another-P-256-key $(awk '$2 == "valid" {print $3}' "$dir/probes.txt")"
  } >"$dir/bench-key.txt"
  for key in bench probe; do
    if [ "$key" = bench ]; then
      start_haproxy check-bench "$KEYS/es256.pem"
      tokens=$dir/bench-key.txt
    else
      start_haproxy check-probe "$dir/probe.pem"
      tokens=$dir/probes.txt
    fi
    local api="http://127.0.0.1:$HAP_PORT/api"
    while read -r expect name tok; do
      code=$(http_code -H "Authorization: Bearer $tok" "$api$UPSTREAM_PATH")
      [ "$code" = "$expect" ] ||
        die "haproxy + jwt_verify ($key key): token $name answered $code, the gateway answers $expect"
      n=$((n + 1))
    done <"$tokens"
    if [ "$key" = bench ]; then
      code=$(http_code "$api$UPSTREAM_PATH")
      [ "$code" = 401 ] || die "haproxy + jwt_verify: no token answered $code, expected 401"
      code=$(http_code -H "Authorization: Basic $TOKEN_ES256" "$api$UPSTREAM_PATH")
      [ "$code" = 401 ] || die "haproxy + jwt_verify: a Basic Authorization answered $code, expected 401"
      n=$((n + 2))
      for path in public api; do
        body=$(curl -s --max-time 5 -H "Authorization: Bearer $TOKEN_ES256" \
          "http://127.0.0.1:$HAP_PORT/$path/bench-check?q=1")
        for want in '"path":"/bench-check"' '"query":"q=1"' '"x-real-ip":"127.0.0.1"' \
          '"x-forwarded-for":"127.0.0.1"' '"x-forwarded-proto":"http"'; do
          [[ $body == *"$want"* ]] ||
            die "haproxy /$path/bench-check: the upstream's echo lacks $want: $body"
        done
        n=$((n + 1))
      done
    fi
    stop_pid "$HAP_PID" TERM
  done
  HAP_CHECKED=$n
  log "haproxy + jwt_verify: $n requests answered as the gateway answers them"
}

RECORDS=$TMP/records.tsv
: >"$RECORDS"

# measure_case CASE ROUND: one measurement; appends a line to $RECORDS.
measure_case() {
  local c=$1 r=$2
  setup_case "$c"
  CMD[$c]=$SHOW
  probe_case "$c"
  local raw=$TMP/wrk/$c.r$r.txt
  run_wrk "$TMP/wrk/$c.r$r.warmup.txt" "$CONN" "$WARMUP" "$URL" "${WENV[@]}" -- \
    "${HDRS[@]}" -s "$BENCH_DIR/wrk/$SCRIPT"
  local pids=() h0=0 m0=0 ok0=0 bad0=0 h1=0 m1=0 ok1=0 bad1=0 t0=0 t1=0
  if [ ${#MEAS[@]} -gt 0 ]; then
    mapfile -t pids < <(proc_tree "${MEAS[@]}")
  fi
  if [ -n "$ADMIN" ]; then
    h0=$(metric "$ADMIN" 'portcullis_token_cache_total.*result="hit"')
    m0=$(metric "$ADMIN" 'portcullis_token_cache_total.*result="miss"')
    ok0=$(metric "$ADMIN" 'portcullis_auth_total.*outcome="ok"')
    bad0=$(metric "$ADMIN" 'portcullis_auth_total.*reason="bad_signature"')
  fi
  [ ${#pids[@]} -gt 0 ] && t0=$(cpu_ticks "${pids[@]}")
  run_wrk "$raw" "$CONN" "$DURATION" "$URL" "${WENV[@]}" -- \
    "${HDRS[@]}" -s "$BENCH_DIR/wrk/$SCRIPT"
  [ ${#pids[@]} -gt 0 ] && t1=$(cpu_ticks "${pids[@]}")
  if [ -n "$ADMIN" ]; then
    h1=$(metric "$ADMIN" 'portcullis_token_cache_total.*result="hit"')
    m1=$(metric "$ADMIN" 'portcullis_token_cache_total.*result="miss"')
    ok1=$(metric "$ADMIN" 'portcullis_auth_total.*outcome="ok"')
    bad1=$(metric "$ADMIN" 'portcullis_auth_total.*reason="bad_signature"')
  fi
  local rss="-" cpu="-"
  if [ ${#pids[@]} -gt 0 ]; then
    rss=$(peak_rss_kb "${pids[@]}")
  fi
  parse_bench "$raw"
  if [ ${#pids[@]} -gt 0 ]; then
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$R_requests" \
      'BEGIN {printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0)}')
  fi
  teardown_case
  local other=$((R_err_connect + R_err_read + R_err_write + R_err_timeout))
  local rps
  rps=$(awk -v n="$R_requests" -v d="$R_duration_us" 'BEGIN {printf "%.1f", n / (d / 1e6)}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$c" "$r" "$R_requests" "$R_duration_us" "$rps" "$R_p50_us" "$R_p99_us" "$R_p999_us" \
    "$R_max_us" "$other" "$R_err_status" "$cpu" "$rss" $((h1 - h0)) $((m1 - m0)) \
    "$((R_bytes / (R_requests > 0 ? R_requests : 1)))" $((ok1 - ok0)) $((bad1 - bad0)) "$m1" \
    >>"$RECORDS"
  log "$(printf '%-20s round %s: %9s req/s  p50 %6.2f ms  p99 %6.2f ms  cpu %s us/req  rss %s kB  non-2xx %s' \
    "$c" "$r" "$rps" "$(awk -v v="$R_p50_us" 'BEGIN {print v / 1000}')" \
    "$(awk -v v="$R_p99_us" 'BEGIN {print v / 1000}')" "$cpu" "$rss" "$R_err_status")"
}

check_haproxy
log "proxy cases: $ROUNDS round(s) x ${DURATION} s (+${WARMUP} s warm-up), wrk -t$THREADS -c$CONNS"
n_cases=${#CASES[@]}
for ((round = 1; round <= ROUNDS; round++)); do
  # Interleaved, and each round starts one case later, so no case always runs first or last.
  for ((k = 0; k < n_cases; k++)); do
    measure_case "${CASES[(k + round - 1) % n_cases]}" "$round"
  done
done

# ---------------------------------------------------------------------------------------------
# Issuer throughput: SQLite, then PostgreSQL
# ---------------------------------------------------------------------------------------------
ISSUER_RECORDS=$TMP/issuer.tsv
: >"$ISSUER_RECORDS"
ISSUER_CASES=(apikey_login refresh introspect jwks users_me password_login)
declare -A ISSUER_LABEL=(
  [apikey_login]="API-key login (POST /v1/auth/api-key)"
  [refresh]="refresh rotation (POST /v1/auth/refresh, each token used once)"
  [introspect]="introspection (POST /oauth/introspect, access token)"
  [jwks]="JWKS (GET /.well-known/jwks.json)"
  [users_me]="GET /v1/users/me (the auth_request call)"
  [password_login]="password login (POST /v1/auth/password, argon2id 19 MiB, t=2)"
)
declare -A ISSUER_CMD=()

# harvest OUT SECONDS: a pool of fresh refresh tokens from API-key logins.
harvest() {
  local out=$1 dur=$2
  rm -f "$out".*
  run_wrk "$TMP/wrk/harvest.txt" "$CONNS" "$dur" "http://127.0.0.1:$ISS_PORT/v1/auth/api-key" \
    "BENCH_APIKEY=$API_KEY" "BENCH_HARVEST=$out" -- -s "$BENCH_DIR/wrk/harvest.lua"
  cat "$out".* >"$out"
  local n
  n=$(wc -l <"$out")
  [ "$n" -ge $((2 * CONNS)) ] || die "only $n refresh tokens harvested"
}

# issuer_case DB CASE
issuer_case() {
  local db=$1 c=$2 url="http://127.0.0.1:$ISS_PORT" envs=() args=() show conns=$CONNS
  local script=plain.lua timeout=(--timeout 10s)
  case $c in
    apikey_login)
      url+=/v1/auth/api-key
      envs=(BENCH_METHOD=POST)
      args=(-H "Authorization: ApiKey $API_KEY")
      show="BENCH_METHOD=POST wrk … -H 'Authorization: ApiKey \$API_KEY' -s bench/wrk/plain.lua $url"
      ;;
    refresh)
      url+=/v1/auth/refresh
      script=refresh.lua
      envs=("BENCH_TOKEN_FILE=$TMP/refresh-pool")
      show="BENCH_TOKEN_FILE=\$POOL wrk … -s bench/wrk/refresh.lua $url   (pool: 1 s of bench/wrk/harvest.lua)"
      ;;
    introspect)
      url+=/oauth/introspect
      envs=(BENCH_METHOD=POST "BENCH_BODY=token=$ACCESS" BENCH_CONTENT_TYPE=application/x-www-form-urlencoded)
      args=(-H "Authorization: ApiKey $API_KEY")
      show="BENCH_METHOD=POST BENCH_BODY='token=\$ACCESS' BENCH_CONTENT_TYPE=application/x-www-form-urlencoded wrk … -H 'Authorization: ApiKey \$API_KEY' -s bench/wrk/plain.lua $url"
      ;;
    jwks)
      url+=/.well-known/jwks.json
      show="wrk … -s bench/wrk/plain.lua $url"
      ;;
    users_me)
      url+=/v1/users/me
      args=(-H "Authorization: Bearer $ACCESS")
      show="wrk … -H 'Authorization: Bearer \$ACCESS' -s bench/wrk/plain.lua $url"
      ;;
    password_login)
      url+=/v1/auth/password
      envs=(BENCH_METHOD=POST "BENCH_BODY={\"email\":\"$USER_EMAIL\",\"password\":\"$USER_PASSWORD\"}"
        BENCH_CONTENT_TYPE=application/json)
      timeout=(--timeout 30s)
      show="BENCH_METHOD=POST BENCH_BODY='{\"email\":…,\"password\":…}' BENCH_CONTENT_TYPE=application/json wrk … --timeout 30s -s bench/wrk/plain.lua $url"
      ;;
  esac
  # Status counts, so that a non-2xx answer can be named in the report.
  [ "$script" != plain.lua ] || envs+=(BENCH_COUNT_STATUS=1)
  ISSUER_CMD[$c]="${show/wrk …/wrk -t$THREADS -c$conns -d${ISSUER_DURATION}s --latency}"
  ISSUER_CMD[$c]=${ISSUER_CMD[$c]//$ISS_PORT/\$PORT}
  ensure_issuer "$ISSUER_PREV_RUN"
  if [ "$c" = refresh ]; then
    harvest "$TMP/refresh-pool" 1
    ensure_issuer "harvesting refresh tokens"
  fi
  run_wrk "$TMP/wrk/issuer-$db-$c.warmup.txt" "$conns" "$WARMUP" "$url" "${envs[@]}" -- \
    "${args[@]}" "${timeout[@]}" -s "$BENCH_DIR/wrk/$script"
  ensure_issuer "the $c warm-up"
  if [ "$c" = refresh ]; then
    harvest "$TMP/refresh-pool" 1
    ensure_issuer "harvesting refresh tokens"
  fi
  local raw=$TMP/wrk/issuer-$db-$c.txt t0 t1
  ISSUER_PREV_RUN="the $c run"
  t0=$(cpu_ticks "$ISS_PID")
  run_wrk "$raw" "$conns" "$ISSUER_DURATION" "$url" "${envs[@]}" -- \
    "${args[@]}" "${timeout[@]}" -s "$BENCH_DIR/wrk/$script"
  t1=$(cpu_ticks "$ISS_PID")
  parse_bench "$raw"
  local rps cpu statuses
  statuses=$(sed -n 's/^BENCH_STATUS //p' "$raw" | tail -n 1)
  rps=$(awk -v n="$R_requests" -v d="$R_duration_us" 'BEGIN {printf "%.1f", n / (d / 1e6)}')
  cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$R_requests" \
    'BEGIN {printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0)}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$db" "$c" "$R_requests" "$rps" \
    "$R_p50_us" "$R_p99_us" "$R_p999_us" \
    $((R_err_connect + R_err_read + R_err_write + R_err_timeout)) "$R_err_status" "$cpu" \
    "$(peak_rss_kb "$ISS_PID")" "${statuses:--}" >>"$ISSUER_RECORDS"
  log "$(printf 'issuer %-8s %-15s %9s req/s  p99 %8.2f ms  non-2xx %s  statuses %s' "$db" "$c" \
    "$rps" "$(awk -v v="$R_p99_us" 'BEGIN {print v / 1000}')" "$R_err_status" "${statuses:--}")"
}

issuer_suite() {
  local db=$1 c
  for c in "${ISSUER_CASES[@]}"; do
    issuer_case "$db" "$c"
  done
}

log "issuer throughput on SQLite: ${ISSUER_DURATION} s per endpoint"
ISS_PID=$SQLITE_ISS_PID ISS_PORT=$SQLITE_ISS_PORT ISS_ADMIN=$SQLITE_ISS_ADMIN
ISSUER_PREV_RUN="the proxy cases"
API_KEY=$SQLITE_API_KEY ACCESS=$SQLITE_ACCESS
issuer_suite sqlite
ensure_issuer "the last run"
stop_pid "$ISS_PID" TERM

PG_STATUS="not run"
if [ "$POSTGRES" = 0 ]; then
  PG_STATUS="skipped (BENCH_POSTGRES=0)"
elif ! pg_bindir >/dev/null; then
  PG_STATUS="skipped: initdb not found (scripts/install-deps.sh postgres installs it)"
  [ "$POSTGRES" = 1 ] && die "BENCH_POSTGRES=1 but initdb was not found"
else
  log "starting a throwaway PostgreSQL cluster"
  if start_postgres; then
    start_issuer postgres "postgres://postgres@127.0.0.1:$PG_PORT/portcullis"
    ISSUER_PREV_RUN="seeding"
    seed_issuer
    log "issuer throughput on PostgreSQL: ${ISSUER_DURATION} s per endpoint"
    issuer_suite postgres
    ensure_issuer "the last run"
    stop_pid "$ISS_PID" TERM
    PG_STATUS="run"
  else
    PG_STATUS="failed to start (see logs)"
    [ "$POSTGRES" = 1 ] && die "PostgreSQL did not start: $(tail -n 5 "$TMP"/logs/*.log)"
    log "PostgreSQL did not start; skipping"
  fi
  if [ ${#PG_STOP[@]} -gt 0 ]; then
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    PG_STOP=()
  fi
fi
stop_pid "$UP_PID" TERM

# ---------------------------------------------------------------------------------------------
# Sections by their own scripts (each starts and stops its own processes, which stop with this
# script too): instructions per request under callgrind (bench/instructions.sh, the figures
# issue 14's per-request targets are judged on), the edge over TLS 1.3, HTTP/2 and idle
# connections against nginx (bench/edge.sh), revocation propagation and 1,000,000 revoked
# sessions (bench/revocation.sh, with its own PostgreSQL cluster)
# ---------------------------------------------------------------------------------------------
# run_section NAME ENABLED TITLE [VAR=VALUE...]: bench/NAME.sh writes $TMP/NAME.md, or, when
# ENABLED is 0, a section that says it was skipped.
run_section() {
  local name=$1 enabled=$2 title=$3 pid
  shift 3
  if [ "$enabled" = 0 ]; then
    printf '%s\n## %s\n\nNot measured: BENCH_%s=0.\n%s\n' "<!-- $name:begin (bench/$name.sh) -->" \
      "$title" "${name^^}" "<!-- $name:end -->" >"$TMP/$name.md"
    return
  fi
  log "$title (bench/$name.sh)"
  env "$@" "$BENCH_DIR/$name.sh" "$TMP/$name.md" &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || die "bench/$name.sh failed"
  stop_pid "$pid"
}
run_section instructions "$INSTRUCTIONS" "Instructions per request (callgrind)" BENCH_TOKENGEN="$TOKENGEN"
run_section edge "$EDGE" "The edge as users run it: TLS, HTTP/2 and idle connections against nginx"
run_section revocation "$REVOCATION" "Revocation propagation and 1,000,000 revoked sessions"

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
log "writing $OUT"
ELAPSED=$((SECONDS - START_SECONDS))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# col CASE N: the values of column N of a case, one per round.
col() {
  awk -F'\t' -v c="$1" -v n="$2" '$1 == c && $n != "-" {print $n}' "$RECORDS"
}

declare -A RPS P50 P99 P999 CPU RSS HITR ERRS
for c in "${CASES[@]}"; do
  RPS[$c]=$(col "$c" 5 | median)
  P50[$c]=$(col "$c" 6 | median)
  P99[$c]=$(col "$c" 7 | median)
  P999[$c]=$(col "$c" 8 | median)
  CPU[$c]=$(col "$c" 12 | median)
  RSS[$c]=$(col "$c" 13 | maxv)
  hits=$(col "$c" 14 | sumv)
  misses=$(col "$c" 15 | sumv)
  if [ $((hits + misses)) -gt 0 ]; then
    HITR[$c]=$(calc 'h / (h + m) * 100' h="$hits" m="$misses")%
  else
    HITR[$c]="-"
  fi
  ERRS[$c]=$(col "$c" 10 | sumv)
done

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
# shellcheck source=/dev/null
os_name=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}")
fs_type=$(stat -f -c %T "$TMP" 2>/dev/null || echo "?")
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
git_dirty=""
if git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??'; then
  git_dirty=" (with uncommitted changes)"
fi

{
  echo "# Benchmark results"
  echo
  echo "Generated by \`make bench\` (bench/run.sh) on $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$git_rev\`$git_dirty."
  if [ "$QUICK" = 1 ]; then
    echo "**QUICK smoke run (BENCH_QUICK=1): too short to draw conclusions from.**"
  fi
  echo "The runner took $((ELAPSED / 60)) min $((ELAPSED % 60)) s (plus the release build)."
  echo "Absolute figures depend on the machine and drift on shared hosts; the ratios, measured"
  echo "side by side in one run, are what the targets are about."
  echo
  echo "## Machine"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| CPU | $(nproc) × ${cpu_model:-unknown} |"
  echo "| memory | $mem_total |"
  echo "| kernel | $(uname -sr) |"
  echo "| OS | ${os_name:-unknown} |"
  echo "| temp dir filesystem (SQLite, PostgreSQL) | $fs_type |"
  echo "| rustc | $(rustc -V 2>/dev/null || echo unknown) |"
  echo "| nginx | $(nginx -v 2>&1 | sed 's/^nginx version: //') |"
  echo "| HAProxy | $(haproxy -v 2>&1 | head -n 1 | sed 's/^HAProxy version //; s/ - https.*//') |"
  echo "| wrk | $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}') |"
  echo "| PostgreSQL | ${PG_VERSION:-—} |"
  echo "| load average (1, 5, 15 min) before / after the run | $LOAD_START / $LOAD_END |"
  echo
  if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN {exit !(l > 0.5 * n)}'; then
    echo "**Warning: the machine was busy with other work when the run started (load average"
    echo "${LOAD_START%% *} on $(nproc) CPUs); the figures are less reliable than usual.**"
    echo
  fi
  echo "## Setup"
  echo
  echo "- Everything on 127.0.0.1, on the same $(nproc) cores: wrk, the proxy, the upstream (and the"
  echo "  issuer or the verifying gateway where the case has one). Nothing is pinned."
  echo "- Upstream for every case: \`portcullis-demo-upstream\` (release), path \`$UPSTREAM_PATH\`"
  echo "  (a constant small JSON answer). Proxies receive \`/public$UPSTREAM_PATH\` or \`/api$UPSTREAM_PATH\`"
  echo "  and forward \`$UPSTREAM_PATH\` (gateway \`strip_prefix\`, nginx \`proxy_pass http://demo/\`)."
  echo "- nginx: \`worker_processes $WORKERS\`, upstream \`keepalive 64\`, \`access_log off\`, the same"
  echo "  forwarding headers the gateway sets (configs: \`bench/nginx/*.conf.in\`)."
  echo "- HAProxy: \`nbthread $WORKERS\`, no logging, \`http-reuse always\` to the upstream, the same path"
  echo "  rewrite and forwarding headers as nginx (config: \`bench/haproxy/haproxy.cfg.in\`). *haproxy +"
  echo "  jwt_verify* checks on every request (HAProxy has no JWKS and no cache of verified tokens) what"
  echo "  the gateway's JWT route checks: the bearer token's ES256 signature (\`jwt_verify\` with the"
  echo "  bench key as a PEM file), \`alg\` ES256, \`typ\` at+jwt, \`iss\`, \`aud\` demo, \`exp\` (and \`nbf\`,"
  echo "  \`iat\` when present) with the gateway's 30 s leeway; anything else answers 401. Before the"
  echo "  measurements, ${HAP_CHECKED:-0} requests (valid tokens, a flipped signature bit, other keys and"
  echo "  algorithms, wrong or expired claims, no token) got the answers the gateway gives. It forwards"
  echo "  no identity headers (the gateway injects 8)."
  echo "- Gateway: \`server.threads: $WORKERS\`, access log off, keys from a local JWKS file"
  echo "  (\`key_file\`, written by \`bench/tokengen\`), config \`bench/gateway.yaml.in\`. It injects the"
  echo "  8 identity headers on the JWT route. Verified-token cache: $DEFAULT_CACHE entries, except"
  echo "  the *many tokens* cases: $MISS_CACHE entry, so that rotating through $NTOKENS distinct tokens"
  echo "  misses and every request pays a full verification (the measured hit rate is in the table)."
  echo "- Tokens: issuer-shaped access tokens (\`typ: at+jwt\`, \`kid\`, 12 claims, ~$(head -n 1 "$KEYS/tokens-ES256.txt" | wc -c | awk '{print $1 - 1}') bytes for ES256)"
  echo "  signed by P-256, RSA-2048 and Ed25519 keys generated for the run."
  echo "- nginx + auth_request → issuer: the issuer (release, SQLite, normal argon2 parameters)"
  echo "  answers **\`GET /v1/users/me\`** with the client's bearer token (issuer-signed, ES256): it"
  echo "  verifies the JWT, checks the session and loads the account. \`POST /oauth/introspect\` cannot"
  echo "  be called by \`auth_request\` (which sends the original GET without a body)."
  echo "- Each case: a fresh proxy process, a ${WARMUP} s warm-up (not counted; it also fills the cache"
  echo "  of the one-token cases), then ${DURATION} s measured; $ROUNDS interleaved round(s), each round"
  echo "  starting one case later. Figures are medians over the rounds; peak RSS is the maximum."
  echo "- *proxy CPU* = user + system CPU time of the proxy process(es) during the measured run"
  echo "  (\`/proc/PID/stat\`; nginx: master + workers; HAProxy: its one process, all threads;"
  echo "  auth_request → gateway: nginx + gateway) divided by the requests completed."
  echo "  *peak RSS* = VmHWM (nginx: sum over master and workers)."
  echo
  echo "## Proxy contestants"
  echo
  echo "wrk \`-t$THREADS -c$CONNS --latency\` (peak-RSS case: \`-c$RSS_CONNS\`). Latencies in ms."
  echo
  echo "| case | req/s (median) | req/s min–max | p50 | p99 | p99.9 | proxy CPU µs/req | peak RSS MiB | cache hits | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for c in "${CASES[@]}"; do
    rss_mib="-"
    [ "${RSS[$c]}" != "-" ] && rss_mib=$(calc 'v / 1024' v="${RSS[$c]}")
    status_note=""
    st=$(col "$c" 11 | sumv)
    if [ "$c" = gw_invalid_es256 ]; then
      status_note=" (401: $st of $(col "$c" 3 | sumv), as expected)"
    elif [ "$st" -gt 0 ]; then
      status_note=" (non-2xx: $st)"
    fi
    printf '| %s | %.0f | %.0f–%.0f | %s | %s | %s | %s | %s | %s | %s%s |\n' \
      "${LABEL[$c]}" "${RPS[$c]}" "$(col "$c" 5 | minv)" "$(col "$c" 5 | maxv)" \
      "$(ms "${P50[$c]}")" "$(ms "${P99[$c]}")" "$(ms "${P999[$c]}")" "${CPU[$c]}" \
      "$rss_mib" "${HITR[$c]}" "${ERRS[$c]}" "$status_note"
  done
  echo
  echo "*errors* = connect/read/write errors and timeouts reported by wrk. For the bad-signature case"
  echo "the gateway's \`portcullis_auth_total{reason=\"bad_signature\"}\` counted $(col gw_invalid_es256 18 | sumv) refusals"
  echo "for $(col gw_invalid_es256 3 | sumv) requests."
  echo

  # ---- targets
  echo "## Targets"
  echo
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  for alg in es256 rs256; do
    A=${alg^^}
    r=$(calc 'a / b' a="${RPS[gw_one_$alg]}" b="${RPS[nginx]}")
    ok=$(cmp_ge "$r" 1.0)
    echo "| gateway JWT route (1 token, $A) ≥ 1.0× nginx plain proxy throughput | ${r}× ($(printf '%.0f' "${RPS[gw_one_$alg]}") vs $(printf '%.0f' "${RPS[nginx]}") req/s) | $(verdict "$ok") |"
    ok=$(cmp_le "${P99[gw_one_$alg]}" "${P99[nginx]}")
    echo "| gateway JWT route (1 token, $A) p99 ≤ nginx p99 | $(ms "${P99[gw_one_$alg]}") ms vs $(ms "${P99[nginx]}") ms | $(verdict "$ok") |"
  done
  for alg in es256 rs256; do
    A=${alg^^}
    r=$(calc 'a / b' a="${RPS[gw_one_$alg]}" b="${RPS[nginx_auth_issuer]}")
    ok=$(cmp_ge "$r" 2.5)
    echo "| gateway JWT route (1 token, $A) ≥ 2.5× nginx + auth_request → issuer | ${r}× | $(verdict "$ok") |"
  done
  for alg in es256 rs256; do
    A=${alg^^}
    r=$(calc 'a / b' a="${RPS[gw_one_$alg]}" b="${RPS[gw_public]}")
    ok=$(cmp_ge "$r" 0.95)
    echo "| gateway JWT route (1 token, cache warm, $A) ≥ 0.95× gateway public route | ${r}× | $(verdict "$ok") |"
  done
  for alg in es256 rs256 eddsa; do
    A=${alg^^}
    [ "$A" = EDDSA ] && A=EdDSA
    sig_ns=${CRIT[signature/$A]:-}
    c=gw_many_$alg
    hits=$(col "$c" 14 | sumv)
    misses=$(col "$c" 15 | sumv)
    if [ -z "$sig_ns" ] || [ "${CPU[$c]}" = "-" ] || [ "$misses" -eq 0 ]; then
      echo "| $NTOKENS tokens ($A): extra CPU per request over the public route ≤ 1.3× bare signature verification | not measured (criterion skipped) | — |"
      continue
    fi
    extra=$(calc '(m - p) / (mi / (h + mi))' m="${CPU[$c]}" p="${CPU[gw_public]}" mi="$misses" h="$hits")
    r=$(calc 'e / (s / 1000)' e="$extra" s="$sig_ns")
    ok=$(cmp_le "$r" 1.3)
    echo "| $NTOKENS tokens ($A): extra CPU per verification over the public route ≤ 1.3× bare signature verification | ${extra} µs vs $(calc 's / 1000' s="$sig_ns") µs = ${r}× | $(verdict "$ok") |"
  done
  r=$(calc 'a / b' a="${RPS[gw_many_es256]}" b="${RPS[haproxy_jwt_many_es256]}")
  ok=$(cmp_ge "$r" 1.0)
  echo "| gateway JWT route, every token new ($NTOKENS tokens, ES256) ≥ 1.0× haproxy + jwt_verify, $NTOKENS tokens | ${r}× ($(printf '%.0f' "${RPS[gw_many_es256]}") vs $(printf '%.0f' "${RPS[haproxy_jwt_many_es256]}") req/s) | $(verdict "$ok") |"
  r=$(calc 'a / b' a="${RPS[gw_one_es256]}" b="${RPS[haproxy_jwt_one_es256]}")
  ok=$(cmp_ge "$r" 2.0)
  echo "| gateway JWT route, cached token (1 token, ES256) ≥ 2.0× haproxy + jwt_verify, 1 token | ${r}× ($(printf '%.0f' "${RPS[gw_one_es256]}") vs $(printf '%.0f' "${RPS[haproxy_jwt_one_es256]}") req/s) | $(verdict "$ok") |"
  rss_kb=${RSS[gw_rss_es256]}
  cached=$(col gw_rss_es256 19 | maxv)
  rss_mib=$(calc 'v / 1024' v="$rss_kb")
  ok=$(cmp_le "$rss_mib" 64)
  echo "| gateway peak RSS ≤ 64 MiB with $NTOKENS cached tokens and $RSS_CONNS connections | ${rss_mib} MiB (${cached} tokens verified and cached) | $(verdict "$ok") |"
  for pair in "apikey_login 2000" "refresh 2000" "introspect 10000"; do
    read -r ic want <<<"$pair"
    v=$(awk -F'\t' -v c="$ic" '$1 == "sqlite" && $2 == c {print $4}' "$ISSUER_RECORDS")
    ok=$(cmp_ge "${v:-0}" "$want")
    echo "| issuer on SQLite: ${ISSUER_LABEL[$ic]%% (*} ≥ $want/s | $(printf '%.0f' "${v:-0}")/s | $(verdict "$ok") |"
  done
  echo
  echo "Other ratios from the same run (no target):"
  echo
  echo "| ratio | value |"
  echo "|---|---:|"
  echo "| gateway public route ÷ nginx proxy_pass | $(calc 'a / b' a="${RPS[gw_public]}" b="${RPS[nginx]}")× |"
  echo "| gateway public route ÷ direct upstream | $(calc 'a / b' a="${RPS[gw_public]}" b="${RPS[direct]}")× |"
  echo "| nginx proxy_pass ÷ direct upstream | $(calc 'a / b' a="${RPS[nginx]}" b="${RPS[direct]}")× |"
  echo "| gateway public route ÷ haproxy proxy | $(calc 'a / b' a="${RPS[gw_public]}" b="${RPS[haproxy]}")× |"
  echo "| haproxy proxy ÷ nginx proxy_pass | $(calc 'a / b' a="${RPS[haproxy]}" b="${RPS[nginx]}")× |"
  echo "| proxy CPU µs per request of JWT verification, every token new (ES256): haproxy ($NTOKENS tokens − proxy) / gateway ($NTOKENS tokens − public route) | $(calc 'a - b' a="${CPU[haproxy_jwt_many_es256]}" b="${CPU[haproxy]}") / $(calc 'a - b' a="${CPU[gw_many_es256]}" b="${CPU[gw_public]}") |"
  echo "| proxy CPU per request: gateway public route ÷ nginx proxy_pass | $(calc 'a / b' a="${CPU[gw_public]}" b="${CPU[nginx]}")× |"
  for alg in es256 rs256 eddsa; do
    A=${alg^^}
    [ "$A" = EDDSA ] && A=EdDSA
    echo "| gateway, $NTOKENS tokens, every one verified ($A) ÷ nginx + auth_request → issuer | $(calc 'a / b' a="${RPS[gw_many_$alg]}" b="${RPS[nginx_auth_issuer]}")× |"
  done
  echo "| gateway, bad-signature tokens (ES256) ÷ gateway public route | $(calc 'a / b' a="${RPS[gw_invalid_es256]}" b="${RPS[gw_public]}")× |"
  echo "| nginx + auth_request → gateway ÷ nginx + auth_request → issuer | $(calc 'a / b' a="${RPS[nginx_auth_gateway]}" b="${RPS[nginx_auth_issuer]}")× |"
  echo
  if [ -n "$BASELINE_BIN" ]; then
    echo "### Before/after: this gateway against a baseline binary"
    echo
    echo "The same routes served by \`BENCH_BASELINE_BIN\` ($(basename "$(dirname "$BASELINE_BIN")")/$(basename "$BASELINE_BIN"), \`$("$BASELINE_BIN" --version 2>/dev/null || echo '?')\`),"
    echo "in the same rounds. This gateway runs with its default edge limits (head bounds, timeouts,"
    echo "1 MiB bodies, connection cap) and the rate limit of \`bench/gateway.yaml.in\` on both routes."
    echo
    echo "| route | this gateway req/s | baseline req/s | ratio | CPU µs/req this / baseline |"
    echo "|---|---:|---:|---:|---:|"
    for pair in "public gw_public gw_public_base" "JWT, 1 token, ES256 gw_one_es256 gw_one_es256_base"; do
      # shellcheck disable=SC2086 # split on purpose
      set -- $pair
      now=${*: -2:1} was=${*: -1}
      label=${pair% "$now" "$was"}
      echo "| $label | ${RPS[$now]} | ${RPS[$was]} | $(calc 'a / b' a="${RPS[$now]}" b="${RPS[$was]}")× | ${CPU[$now]} / ${CPU[$was]} |"
    done
    echo
  fi
  echo "### Many tokens: CPU per verification"
  echo
  echo "*extra CPU per verification* = (proxy CPU µs/req of the many-tokens case − proxy CPU µs/req"
  echo "of the public route) ÷ (token-cache miss rate of that case); both CPU figures are the gateway"
  echo "process's own user + system time from \`/proc\`, in this run. *bare signature verification* ="
  echo "criterion \`signature/<alg>\` (median, one core): the \`jsonwebtoken::crypto::verify\` call"
  echo "alone. The throughput-based estimate (1/rps_many − 1/rps_public) × $(nproc) cores counts the whole"
  echo "machine (wrk and the upstream too) and is shown for comparison only. \`verify_uncached\` ÷"
  echo "\`signature\` is the verifier's own overhead over the signature, measured in isolation."
  echo
  echo "| algorithm | CPU µs/req many | CPU µs/req public | miss rate | extra µs per verification | criterion \`signature\` µs | ratio (target ≤ 1.3) | criterion \`verify_uncached\` µs | \`verify_uncached\` ÷ \`signature\` | throughput-based estimate µs |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for alg in es256 rs256 eddsa; do
    A=${alg^^}
    [ "$A" = EDDSA ] && A=EdDSA
    c=gw_many_$alg
    hits=$(col "$c" 14 | sumv)
    misses=$(col "$c" 15 | sumv)
    miss_rate="-" extra="-" sig="-" unc="-" r="-"
    if [ "$misses" -gt 0 ] && [ "${CPU[$c]}" != "-" ]; then
      miss_rate=$(calc 'mi / (h + mi) * 100' mi="$misses" h="$hits")%
      extra=$(calc '(m - p) / (mi / (h + mi))' m="${CPU[$c]}" p="${CPU[gw_public]}" mi="$misses" h="$hits")
    fi
    [ -n "${CRIT[signature/$A]:-}" ] && sig=$(calc 's / 1000' s="${CRIT[signature/$A]}")
    [ -n "${CRIT[verify_uncached/$A]:-}" ] && unc=$(calc 's / 1000' s="${CRIT[verify_uncached/$A]}")
    [ "$sig" != "-" ] && [ "$extra" != "-" ] && r=$(calc 'e / s' e="$extra" s="$sig")×
    iso="-"
    [ "$sig" != "-" ] && [ "$unc" != "-" ] && iso=$(calc 'u / s' u="$unc" s="$sig")×
    echo "| $A | ${CPU[$c]} | ${CPU[gw_public]} | $miss_rate | $extra | $sig | $r | $unc | $iso | $(calc '(1 / a - 1 / b) * n * 1e6' a="${RPS[$c]}" b="${RPS[gw_public]}" n="$(nproc)") |"
  done
  echo

  # ---- criterion
  echo "## Verifier micro-benchmarks (criterion)"
  echo
  if [ ${#CRIT[@]} -eq 0 ]; then
    echo "Skipped (BENCH_CRITERION=0)."
  else
    echo "\`gateway/benches/verifier.rs\`, median time per call, one thread."
    echo
    echo "| benchmark | time | what |"
    echo "|---|---:|---|"
    for name in $(printf '%s\n' "${!CRIT[@]}" | sort); do
      case $name in
        signature/*) what="bare signature check (\`jsonwebtoken::crypto::verify\`)" ;;
        verify_uncached/*) what="\`Verifier::verify\`, token not cached: parse, key lookup, signature, claims, identity headers, cache insert" ;;
        verify_cached/*) what="\`Verifier::verify\`, cache hit (keyed SipHash of the token, lookup, full comparison, exp, key and revocation checks)" ;;
        route_match/prefix_1000_*) what="\`Router::lookup\`, 1,000 prefix routes" ;;
        route_match/mixed_1000_*) what="\`Router::lookup\`, 1,000 routes: 800 prefix, 150 exact, 50 regex" ;;
        identity_headers/*) what="8 identity headers into a \`RequestHeader\` (\`Identity::headers\`)" ;;
        revocation/verify_cached/no_feed) what="\`Verifier::verify\`, cache hit, issuer without a revocation feed" ;;
        revocation/verify_cached/1M_revoked) what="the same through an issuer holding 1,000,000 revoked sessions (the token's not among them)" ;;
        revocation/check/1M_revoked) what="the revocation check alone (session and subject lookups, 1,000,000 held); target ≤ 0.2 µs" ;;
        *) what="" ;;
      esac
      v=${CRIT[$name]}
      if [ "$v" -ge 10000 ]; then
        t="$(calc 'v / 1000' v="$v") µs"
      else
        t="$v ns"
      fi
      echo "| \`$name\` | $t | $what |"
    done
    if [ -n "${CRIT[revocation/check/1M_revoked]:-}" ]; then
      v=${CRIT[revocation/check/1M_revoked]}
      echo
      echo "Revocation check with 1,000,000 revoked sessions: $v ns per request (target ≤ 200 ns): $([ "$v" -le 200 ] && echo MET || echo NOT MET)."
    fi
    if [ -n "$CRIT_NOTES" ]; then
      echo
      echo "Cache hits during the uncached benchmarks (should be ~0):"
      echo
      echo '```'
      echo "$CRIT_NOTES"
      echo '```'
    fi
  fi
  echo

  # ---- issuer
  echo "## Issuer throughput"
  echo
  echo "wrk \`-t$THREADS -c$CONNS --latency\`, ${ISSUER_DURATION} s per endpoint after a ${WARMUP} s warm-up, one"
  echo "round; the issuer alone (release build) on the same machine. Refresh: every request presents"
  echo "a refresh token never used before (\`bench/wrk/refresh.lua\` chains the rotated tokens from a"
  echo "pool of fresh sessions). PostgreSQL: $PG_STATUS."
  echo
  echo "| database | endpoint | req/s | p50 ms | p99 ms | p99.9 ms | issuer CPU µs/req | issuer peak RSS MiB (process lifetime) | errors | statuses |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
  while IFS=$'\t' read -r db ic n rps p50 p99 p999 other st cpu rss statuses; do
    [ "$statuses" != "-" ] || statuses="non-2xx: $st"
    printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$db" "${ISSUER_LABEL[$ic]}" \
      "$rps" "$(ms "$p50")" "$(ms "$p99")" "$(ms "$p999")" "$cpu" "$(calc 'v / 1024' v="$rss")" \
      "$other" "$statuses"
  done <"$ISSUER_RECORDS"
  echo
  txdepth=$(cat "$TMP"/logs/issuer-*.err 2>/dev/null | grep -c 'non-zero transaction depth' || true)
  if [ ${#ISSUER_RESTARTS[@]} -eq 0 ]; then
    echo "The issuer stayed healthy between runs (probed with an API-key login before each one)."
  else
    echo "**The issuer stopped answering logins ${#ISSUER_RESTARTS[@]} time(s)** (probed with an API-key login before each run) and was restarted on the"
    echo "same database before the next run (it logged \"attempted to call begin_with at non-zero"
    echo "transaction depth\" $txdepth times); see Findings:"
    echo
    for w in "${ISSUER_RESTARTS[@]}"; do
      echo "- $w"
    done
  fi
  echo
  echo "Password login is bound by argon2id by design (OWASP parameters, at most"
  echo "\`max_concurrent_hashes\` = 4 at once); it is not a target."
  echo

  # ---- instructions, edge
  cat "$TMP/instructions.md"
  echo
  cat "$TMP/edge.md"
  echo

  # ---- revocation
  cat "$TMP/revocation.md"
  echo

  # ---- commands
  echo "## Commands"
  echo
  echo '```sh'
  echo "make bench          # = scripts/install-deps.sh nginx wrk; cargo build --release --workspace --bins; bench/run.sh"
  if [ -n "${BENCH_TOKENGEN:-}" ]; then
    echo "\$BENCH_TOKENGEN --out \$KEYS --iss $BENCH_ISS --aud demo --count $NTOKENS --ttl 7200   # prebuilt bench/tokengen"
  else
    echo "$CARGO build --release --manifest-path bench/tokengen/Cargo.toml --target-dir target"
    echo "target/release/tokengen --out \$KEYS --iss $BENCH_ISS --aud demo --count $NTOKENS --ttl 7200"
  fi
  echo "bench/haproxy/jwt.py pem \$KEYS/jwks.json \$KEYS/tokens-ES256.txt >\$KEYS/es256.pem   # jwt_verify's key"
  echo "$CRIT_CMD"
  echo '```'
  echo
  echo "Per case (\$PORT: the contestant's port; each command also ran for ${WARMUP} s as warm-up;"
  echo "\`BENCH_WRK_DIR=bench/wrk BENCH_WRK_THREADS=$THREADS\` are exported for every run):"
  echo
  echo '```sh'
  for c in "${CASES[@]}"; do
    echo "# ${LABEL[$c]}"
    echo "${CMD[$c]}"
  done
  for ic in "${ISSUER_CASES[@]}"; do
    echo "# issuer: ${ISSUER_LABEL[$ic]}"
    echo "${ISSUER_CMD[$ic]:-}"
  done
  echo '```'
  echo
  echo "Processes: \`portcullis-demo-upstream --listen 127.0.0.1:\$PORT\`, \`portcullis-gateway -c gateway.yaml\`,"
  echo "\`nginx -p \$DIR -e \$DIR/error.log -c nginx.conf\`, \`haproxy -db -f haproxy.cfg\` (\`bench/haproxy/haproxy.cfg.in\`),"
  echo "\`portcullis-issuer -c issuer.yaml\` (\`bench/issuer.yaml.in\`)."
  echo
  if [ -f "$BENCH_DIR/findings.md" ]; then
    echo "## Findings"
    echo
    cat "$BENCH_DIR/findings.md"
    echo
  fi
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s: $OUT"

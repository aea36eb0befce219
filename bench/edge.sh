#!/usr/bin/env bash
# Portcullis edge benchmarks (issue 14 item 5): "the edge as users run it", the gateway's public
# route against nginx over TLS 1.3 with the same certificate, on loopback:
#
#  1. conn: TLS 1.3 new connections per second, one request per connection (h2load --h1 with
#     `Connection: close`: a new connection, and a full handshake, for every request)
#  2. keepalive: TLS keep-alive throughput (wrk over https)
#  3. h2: HTTP/2 throughput over TLS (ALPN h2), h2load with 64 streams in flight in all
#  4. idle: memory per idle keep-alive connection: BENCH_EDGE_IDLE plain HTTP/1.1 connections,
#     each after one complete request and its answer (bench/idle_conns.py), RSS before/after
#
# One ECDSA P-256 self-signed certificate (openssl, made per run) for both; the same upstream
# (portcullis-demo-upstream, /healthz) behind /public/healthz; nginx worker_processes = gateway
# server.threads = BENCH_WORKERS; nginx `ssl_protocols TLSv1.3`, `ssl_session_cache off`,
# `ssl_session_tickets off`. Each case: a fresh proxy, interleaved rounds, medians.
#
# Usage: bench/edge.sh FRAGMENT           writes the report section (markdown) to FRAGMENT
#        bench/edge.sh --splice REPORT    puts it into REPORT (bench/RESULTS.md), replacing the
#                                         previous edge section, keeping the rest
# bench/run.sh calls the first form (BENCH_EDGE=0 skips it), and the second on BENCH_ONLY=edge.
# Every process started here is stopped on exit, error or Ctrl-C.
#
# Environment (defaults in brackets; the BENCH_* settings of bench/run.sh apply too):
#   BENCH_QUICK=1                 1 round x 3 s, 1 s warm-up, 2 s hold
#   BENCH_EDGE_ROUNDS [3]         interleaved rounds [BENCH_ROUNDS]
#   BENCH_CONNECTIONS [64]        client connections of the conn and keepalive cases
#   BENCH_EDGE_H2_CLIENTS [4]     h2load connections of the h2 case (-c)
#   BENCH_EDGE_H2_STREAMS [16]    streams in flight per connection (-m): 4 x 16 = 64 in all
#   BENCH_EDGE_IDLE [10000]       idle connections held
#   BENCH_EDGE_HOLD [5]           seconds they are held before the measurement
#   BENCH_EDGE_VERIFY [2000]      connections of the one-request-per-connection check
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/bench
BIN_DIR=${BENCH_BIN_DIR:-$ROOT/target/release}
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  d_rounds=1 d_duration=3 d_warmup=1 d_hold=2 d_verify=500
else
  d_rounds=3 d_duration=10 d_warmup=2 d_hold=5 d_verify=2000
fi
ROUNDS=${BENCH_EDGE_ROUNDS:-${BENCH_ROUNDS:-$d_rounds}}
DURATION=${BENCH_DURATION:-$d_duration}
WARMUP=${BENCH_WARMUP:-$d_warmup}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNECTIONS:-64}
WORKERS=${BENCH_WORKERS:-2}
H2_CLIENTS=${BENCH_EDGE_H2_CLIENTS:-4}
H2_STREAMS=${BENCH_EDGE_H2_STREAMS:-16}
IDLE=${BENCH_EDGE_IDLE:-10000}
HOLD=${BENCH_EDGE_HOLD:-$d_hold}
VERIFY_N=${BENCH_EDGE_VERIFY:-$d_verify}
UPSTREAM_PATH=/healthz
PUBLIC_PATH=/public$UPSTREAM_PATH
# wrk, h2load and OpenSSL's default client order all put it first; h2load is told so (its own
# default list starts with AES-128), so that every client and server pair uses the same suite.
TLS13_SUITE=TLS_AES_256_GCM_SHA384
GATEWAY_LOG=${RUST_LOG:-info,pingora_core=warn,pingora_proxy=warn,pingora_core::services::listening=off}

export BENCH_WRK_DIR=$BENCH_DIR/wrk BENCH_WRK_THREADS=$THREADS
export LC_ALL=C

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
log() { printf '[bench edge %s] %s\n' "$(date +%T)" "$*" >&2; }

section_args edge.sh "$@"

BEGIN_MARK='<!-- edge:begin (bench/edge.sh) -->'
END_MARK='<!-- edge:end -->'

for tool in h2load wrk nginx openssl python3 curl ss awk sed timeout; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "$tool is missing (scripts/install-deps.sh nginx wrk h2load openssl installs the benchmark tools; ss: apt-get install iproute2)"
done
# Optional: without it the one-request-per-connection check counts on the server side only.
HAVE_STRACE=0
command -v strace >/dev/null 2>&1 && HAVE_STRACE=1
for b in portcullis-gateway portcullis-demo-upstream bare-pingora; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: cargo build --release --workspace --bins"
done
[ "$THREADS" -le "$CONNS" ] || die "BENCH_THREADS must not exceed BENCH_CONNECTIONS"
[ "$THREADS" -le "$H2_CLIENTS" ] || die "BENCH_THREADS must not exceed BENCH_EDGE_H2_CLIENTS"

# File descriptors: the proxy holds IDLE client connections, the client IDLE sockets; both
# inherit this limit (nginx also gets worker_rlimit_nofile). The gateway does not change its own.
NOFILE=$((IDLE + 1024))
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt "$NOFILE" ]; then
  ulimit -Sn "$NOFILE" 2>/dev/null || ulimit -n "$NOFILE" 2>/dev/null ||
    die "ulimit -n $NOFILE failed (hard limit $(ulimit -Hn)): lower BENCH_EDGE_IDLE or raise the hard limit"
fi

start_run portcullis-bench-edge

# ---------------------------------------------------------------------------------------------
# Certificate, upstream
# ---------------------------------------------------------------------------------------------
CERT=$TMP/tls/cert.pem KEY=$TMP/tls/key.pem
mkdir -p "$TMP/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$KEY" -out "$CERT" >"$TMP/logs/openssl-req.log" 2>&1 ||
  die "openssl req failed: $(cat "$TMP/logs/openssl-req.log")"
chmod 644 "$KEY" # nginx workers (another user) read it
CERT_DESC=$(openssl x509 -in "$CERT" -noout -text |
  awk '/Public Key Algorithm/ {a = $NF} /NIST CURVE/ {c = $NF} /Signature Algorithm/ && !s {s = $NF} END {print a ", " c ", signed " s}')

pick_port UP_PORT
spawn upstream "$BIN_DIR/portcullis-demo-upstream" --name demo --listen "127.0.0.1:$UP_PORT"
wait_http "http://127.0.0.1:$UP_PORT$UPSTREAM_PATH" 200 20 || die "the demo upstream did not start"

# ---------------------------------------------------------------------------------------------
# Contestants
# ---------------------------------------------------------------------------------------------
PX_PID='' PX_TLS='' PX_PLAIN='' PX_ADMIN='' PX_STATUS=''
# start_proxy PROXY NAME [ACCESS_LOG]: gateway or nginx, fresh; sets PX_PID PX_TLS PX_PLAIN and
# PX_ADMIN (gateway) or PX_STATUS (nginx stub_status).
start_proxy() {
  local p=$1 name=$2 dir=$TMP/run/$2
  mkdir -p "$dir"
  pick_port PX_TLS
  pick_port PX_PLAIN
  PX_ADMIN='' PX_STATUS=''
  if [ "$p" = bare ]; then
    # Pingora's own floor for the idle case (plain HTTP only): bench/bare-pingora.
    spawn "$name" "$BIN_DIR/bare-pingora" "127.0.0.1:$PX_PLAIN" "127.0.0.1:$UP_PORT" /public "$WORKERS"
    PX_PID=$SPAWNED
    wait_http "http://127.0.0.1:$PX_PLAIN$PUBLIC_PATH" 200 20 ||
      die "bare-pingora ($name) did not start: $(tail -n 5 "$TMP/logs/$name.err")"
    return
  elif [ "$p" = gateway ]; then
    pick_port PX_ADMIN
    render "$BENCH_DIR/gateway-edge.yaml.in" "$dir/gateway.yaml" WORKERS="$WORKERS" DIR="$dir" \
      TLS_PORT="$PX_TLS" PORT="$PX_PLAIN" ADMIN_PORT="$PX_ADMIN" UPSTREAM_PORT="$UP_PORT" \
      CERT="$CERT" KEY="$KEY" MAX_CONNECTIONS="$NOFILE"
    spawn "$name" env RUST_LOG="$GATEWAY_LOG" "$BIN_DIR/portcullis-gateway" -c "$dir/gateway.yaml"
    PX_PID=$SPAWNED
    wait_http "http://127.0.0.1:$PX_ADMIN/readyz" 200 30 ||
      die "gateway ($name) did not become ready: $(tail -n 5 "$TMP/logs/$name.err")"
  else
    pick_port PX_STATUS
    render "$BENCH_DIR/nginx/edge.conf.in" "$dir/nginx.conf" WORKERS="$WORKERS" DIR="$dir" \
      TLS_PORT="$PX_TLS" PORT="$PX_PLAIN" STATUS_PORT="$PX_STATUS" UPSTREAM_PORT="$UP_PORT" \
      CERT="$CERT" KEY="$KEY" NOFILE="$NOFILE" ACCESS_LOG="${3:-off}"
    spawn "$name" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    PX_PID=$SPAWNED
    wait_http "http://127.0.0.1:$PX_STATUS/status" 200 20 ||
      die "nginx ($name) did not start: $(cat "$dir/error.log" "$TMP/logs/$name.err" 2>/dev/null | tail -n 5)"
  fi
  local v
  v=$(curl -sk --tlsv1.3 --http1.1 -o /dev/null -w '%{http_code}' --max-time 5 "https://127.0.0.1:$PX_TLS$PUBLIC_PATH" || true)
  [ "$v" = 200 ] || die "$name: https://127.0.0.1:$PX_TLS$PUBLIC_PATH answered $v over HTTP/1.1"
  v=$(curl -sk --tlsv1.3 --http2 -o /dev/null -w '%{http_code} %{http_version}' --max-time 5 "https://127.0.0.1:$PX_TLS$PUBLIC_PATH" || true)
  [ "$v" = "200 2" ] || die "$name: HTTP/2 over TLS answered '$v' (status, version), expected '200 2'"
  v=$(http_code "http://127.0.0.1:$PX_PLAIN$PUBLIC_PATH")
  [ "$v" = 200 ] || die "$name: http://127.0.0.1:$PX_PLAIN$PUBLIC_PATH answered $v"
}

stop_proxy() {
  # Pingora exits at once on SIGINT (SIGTERM drains first); nginx's fast shutdown is TERM.
  if [ "$1" = nginx ]; then stop_pid "$PX_PID" TERM; else stop_pid "$PX_PID" INT; fi
}

# accepts: nginx's stub_status "accepts" (its own request included).
accepts() {
  curl -s --max-time 5 "http://127.0.0.1:$PX_STATUS/status" | awk 'NR == 3 {print $1}'
}

# ---------------------------------------------------------------------------------------------
# h2load
# ---------------------------------------------------------------------------------------------
# run_h2load OUT LIMIT_SECONDS ARGS...: h2load ARGS under `timeout`; fails on no summary.
run_h2load() {
  local out=$1 limit=$2
  shift 2
  if ! timeout -k 5 "$limit" h2load "$@" >"$out" 2>&1; then
    tail -n 20 "$out" >&2
    die "h2load failed or ran over ${limit} s: h2load $*"
  fi
  grep -q '^finished in' "$out" || die "no summary in $out"
}

# parse_h2load FILE: H_secs H_rps H_total H_done H_ok H_failed H_errored H_timeout H_2xx
# H_non2xx H_proto H_cipher H_kx
# shellcheck disable=SC2034 # H_total and H_2xx are kept for completeness
parse_h2load() {
  local f=$1 line
  line=$(grep '^finished in' "$f")
  H_secs=$(awk '{v = $3; sub(",", "", v); if (v ~ /ms$/) {sub("ms", "", v); v /= 1000} else sub("s", "", v); print v}' <<<"$line")
  H_rps=$(awk '{print $4}' <<<"$line")
  read -r H_total H_done H_ok H_failed H_errored H_timeout < <(awk '/^requests:/ {print $2, $6, $8, $10, $12, $14}' "$f")
  read -r H_2xx H_non2xx < <(awk '/^status codes:/ {print $3, $5 + $7 + $9}' "$f")
  H_proto=$(awk -F': ' '/^Application protocol:/ {print $2}' "$f")
  H_cipher=$(awk -F': ' '/^Cipher:/ {print $2}' "$f")
  H_kx=$(awk -F': ' '/^Server Temp Key:/ {print $2}' "$f")
  H_tls=$(awk -F': ' '/^TLS Protocol:/ {print $2}' "$f")
}

# cpu_us TICKS N: CPU µs per unit.
cpu_us() {
  awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN {printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0)}'
}
rss_kb() { status_kb VmRSS "$@"; }

H1_CLOSE=(--h1 -H 'Connection: close' "--tls13-ciphers=$TLS13_SUITE")
declare -A CMD=()
CMD[conn]="h2load --h1 -H 'Connection: close' --tls13-ciphers=$TLS13_SUITE -c $CONNS -t $THREADS -n \$N https://127.0.0.1:\$PORT$PUBLIC_PATH   (N = the warm-up's rate x ${DURATION} s, a multiple of $CONNS)"
CMD[keepalive]="wrk -t$THREADS -c$CONNS -d${DURATION}s --latency -s bench/wrk/plain.lua https://127.0.0.1:\$PORT$PUBLIC_PATH"
CMD[h2]="h2load --tls13-ciphers=$TLS13_SUITE -c $H2_CLIENTS -m $H2_STREAMS -t $THREADS -D $DURATION https://127.0.0.1:\$PORT$PUBLIC_PATH"
CMD[idle]="python3 bench/idle_conns.py --port \$PLAIN_PORT --path $PUBLIC_PATH --count $IDLE"

RECORDS=$TMP/records.tsv
: >"$RECORDS"
# record CASE PROXY ROUND VALUE CPU ERRORS NON2XX DETAIL
record() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RECORDS"
}

# measure CASE PROXY ROUND
measure() {
  local c=$1 p=$2 r=$3 name="$2-$1-r$3" pids=() t0 t1 url
  start_proxy "$p" "$name"
  mapfile -t pids < <(proc_tree "$PX_PID")
  url="https://127.0.0.1:$PX_TLS$PUBLIC_PATH"
  case $c in
    conn)
      local wn=$((CONNS * 20)) n limit
      run_h2load "$TMP/h2load/$name.warmup.txt" 300 "${H1_CLOSE[@]}" -c "$CONNS" -t "$THREADS" -n "$wn" "$url"
      parse_h2load "$TMP/h2load/$name.warmup.txt"
      n=$(awk -v r="$H_rps" -v d="$DURATION" -v c="$CONNS" 'BEGIN {n = int(r * d / c) * c; if (n < 20 * c) n = 20 * c; print n}')
      limit=$((DURATION * 10 + 60))
      t0=$(cpu_ticks "${pids[@]}")
      run_h2load "$TMP/h2load/$name.txt" "$limit" "${H1_CLOSE[@]}" -c "$CONNS" -t "$THREADS" -n "$n" "$url"
      t1=$(cpu_ticks "${pids[@]}")
      parse_h2load "$TMP/h2load/$name.txt"
      if [ "$H_tls" != TLSv1.3 ] || [ "$H_proto" != http/1.1 ]; then
        die "$name: $H_tls / $H_proto, expected TLSv1.3 / http/1.1"
      fi
      record "$c" "$p" "$r" "$H_rps" "$(cpu_us $((t1 - t0)) "$H_done")" \
        $((H_failed + H_errored + H_timeout)) "$H_non2xx" "n=$n secs=$H_secs cipher=$H_cipher kx=${H_kx// /_}"
      log "$(printf '%-9s %-7s round %s: %9s conn/s  cpu %s us/conn  failed %s' "$c" "$p" "$r" "$H_rps" \
        "$(cpu_us $((t1 - t0)) "$H_done")" $((H_failed + H_errored + H_timeout)))"
      ;;
    keepalive)
      run_wrk "$TMP/wrk/$name.warmup.txt" "$CONNS" "$WARMUP" "$url" -- -s "$BENCH_DIR/wrk/plain.lua"
      t0=$(cpu_ticks "${pids[@]}")
      run_wrk "$TMP/wrk/$name.txt" "$CONNS" "$DURATION" "$url" -- -s "$BENCH_DIR/wrk/plain.lua"
      t1=$(cpu_ticks "${pids[@]}")
      parse_bench "$TMP/wrk/$name.txt"
      local rps
      rps=$(awk -v n="$R_requests" -v d="$R_duration_us" 'BEGIN {printf "%.1f", n / (d / 1e6)}')
      record "$c" "$p" "$r" "$rps" "$(cpu_us $((t1 - t0)) "$R_requests")" \
        $((R_err_connect + R_err_read + R_err_write + R_err_timeout)) "$R_err_status" "p50_us=$R_p50_us p99_us=$R_p99_us"
      log "$(printf '%-9s %-7s round %s: %9s req/s   cpu %s us/req  p99 %s us' "$c" "$p" "$r" "$rps" \
        "$(cpu_us $((t1 - t0)) "$R_requests")" "$R_p99_us")"
      ;;
    h2)
      local limit=$((DURATION * 3 + 60))
      run_h2load "$TMP/h2load/$name.warmup.txt" $((WARMUP * 3 + 60)) "--tls13-ciphers=$TLS13_SUITE" \
        -c "$H2_CLIENTS" -m "$H2_STREAMS" -t "$THREADS" -D "$WARMUP" "$url"
      t0=$(cpu_ticks "${pids[@]}")
      run_h2load "$TMP/h2load/$name.txt" "$limit" "--tls13-ciphers=$TLS13_SUITE" \
        -c "$H2_CLIENTS" -m "$H2_STREAMS" -t "$THREADS" -D "$DURATION" "$url"
      t1=$(cpu_ticks "${pids[@]}")
      parse_h2load "$TMP/h2load/$name.txt"
      [ "$H_proto" = h2 ] || die "$name: ALPN chose '$H_proto', expected h2"
      record "$c" "$p" "$r" "$H_rps" "$(cpu_us $((t1 - t0)) "$H_done")" \
        $((H_failed + H_errored + H_timeout)) "$H_non2xx" "done=$H_done secs=$H_secs cipher=$H_cipher"
      log "$(printf '%-9s %-7s round %s: %9s req/s   cpu %s us/req  failed %s' "$c" "$p" "$r" "$H_rps" \
        "$(cpu_us $((t1 - t0)) "$H_done")" $((H_failed + H_errored + H_timeout)))"
      ;;
    idle)
      local k before after est line pid out=$TMP/logs/$name-client.out deadline closed
      for k in 1 2 3 4 5; do
        http_code "http://127.0.0.1:$PX_PLAIN$PUBLIC_PATH" >/dev/null
      done
      sleep 1
      mapfile -t pids < <(proc_tree "$PX_PID")
      before=$(rss_kb "${pids[@]}")
      spawn "$name-client" python3 "$BENCH_DIR/idle_conns.py" --port "$PX_PLAIN" \
        --path "$PUBLIC_PATH" --count "$IDLE"
      pid=$SPAWNED
      out=$TMP/logs/$name-client.out
      deadline=$((SECONDS + 300))
      until grep -q '^READY' "$out" 2>/dev/null; do
        alive "$pid" || die "$name: the idle client exited: $(tail -n 5 "$TMP/logs/$name-client.err")"
        [ "$SECONDS" -le "$deadline" ] || die "$name: the idle client did not get its $IDLE answers in 300 s"
        sleep 0.2
      done
      line=$(grep '^READY' "$out")
      sleep "$HOLD"
      est=$(ss -Htn state established "( sport = :$PX_PLAIN )" | wc -l)
      mapfile -t pids < <(proc_tree "$PX_PID")
      after=$(rss_kb "${pids[@]}")
      stop_pid "$pid" TERM
      closed=$(sed -n 's/^CLOSED //p' "$TMP/logs/$name-client.err" | tail -n 1)
      local per ok failed
      per=$(awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN {printf "%.2f", (a - b) / n}')
      ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$line")
      failed=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$line")
      record "$c" "$p" "$r" "$per" "-" "$failed" "0" \
        "before_kb=$before after_kb=$after established=$est ok=$ok closed_by_server=${closed:-?} procs=${#pids[@]}"
      log "$(printf '%-9s %-7s round %s: %s KiB/conn  RSS %s -> %s kB  established %s of %s  failed %s' \
        "$c" "$p" "$r" "$per" "$before" "$after" "$est" "$IDLE" "$failed")"
      ;;
  esac
  stop_proxy "$p"
}

mkdir -p "$TMP/h2load"
CASES=(conn keepalive h2 idle)
PROXIES=(gateway nginx)
log "$ROUNDS round(s): ${CASES[*]}, each for the gateway and nginx (${DURATION} s + ${WARMUP} s warm-up)"
for ((round = 1; round <= ROUNDS; round++)); do
  # Interleaved: each round starts one case later, and runs the two proxies of a case back to
  # back (the first alternating), so that a round's ratio shares that moment's load.
  for ((k = 0; k < ${#CASES[@]}; k++)); do
    c=${CASES[(k + round - 1) % ${#CASES[@]}]}
    if ((round % 2)); then
      measure "$c" gateway "$round"
      measure "$c" nginx "$round"
    else
      measure "$c" nginx "$round"
      measure "$c" gateway "$round"
    fi
    if [ "$c" = idle ]; then
      measure idle bare "$round"
    fi
  done
done

# ---------------------------------------------------------------------------------------------
# Checks: one request per connection, no TLS resumption
# ---------------------------------------------------------------------------------------------
# h2load makes a new SSL object for every connection and can only resume a session by calling
# SSL_set_session, which it does not even import.
if command -v nm >/dev/null 2>&1; then
  if nm -D "$(command -v h2load)" 2>/dev/null | grep -q ' SSL_set_session'; then
    H2LOAD_RESUME="h2load imports SSL_set_session: it may resume sessions"
  else
    H2LOAD_RESUME="\`nm -D \$(command -v h2load)\` lists no \`SSL_set_session\`: h2load cannot offer a session to resume, every connection does a full handshake"
  fi
else
  H2LOAD_RESUME="not checked (nm is missing)"
fi

declare -A V_CONNECTS=() V_DONE=() V_SERVER=() V_RESUMED=()
for p in "${PROXIES[@]}"; do
  start_proxy "$p" "$p-verify" "$TMP/run/$p-verify/access.log edge"
  a0='' m0=''
  if [ "$p" = nginx ]; then
    : >"$TMP/run/$p-verify/access.log" # the start-up probes out (nginx appends)
    a0=$(accepts)
  else
    m0=$(metric "$PX_ADMIN" '^portcullis_requests_total')
  fi
  # strace counts the client's connect() calls to the proxy: TCP connections opened.
  tracer=()
  [ "$HAVE_STRACE" = 1 ] && tracer=(strace -f -qq -e trace=connect -o "$TMP/logs/$p-verify.strace")
  "${tracer[@]}" timeout -k 5 300 h2load "${H1_CLOSE[@]}" -c "$CONNS" -t "$THREADS" -n "$VERIFY_N" \
    "https://127.0.0.1:$PX_TLS$PUBLIC_PATH" >"$TMP/h2load/$p-verify.txt" 2>&1 ||
    die "$p: the verification run failed: $(tail -n 5 "$TMP/h2load/$p-verify.txt")"
  parse_h2load "$TMP/h2load/$p-verify.txt"
  V_DONE[$p]=$H_ok
  V_CONNECTS[$p]="(not counted: strace is missing)"
  if [ "$HAVE_STRACE" = 1 ]; then
    V_CONNECTS[$p]=$(grep -c "sin_port=htons($PX_TLS)" "$TMP/logs/$p-verify.strace" || true)
  fi
  if [ "$p" = nginx ]; then
    a1=$(accepts)
    # TLS requests only (the status requests are logged too).
    log_lines=$(awk '$4 == "TLSv1.3"' "$TMP/run/$p-verify/access.log" | wc -l)
    one=$(awk '$4 == "TLSv1.3" && $2 == 1' "$TMP/run/$p-verify/access.log" | wc -l)
    V_RESUMED[$p]=$(awk '$4 == "TLSv1.3" && $3 == "r"' "$TMP/run/$p-verify/access.log" | wc -l)
    V_SERVER[$p]="stub_status accepts +$((a1 - a0 - 1)) (the status request itself not counted); access log: $log_lines TLS 1.3 requests, $one of them the first on their connection (\`\$connection_requests\` = 1), ${V_RESUMED[$p]} on a resumed TLS session (\`\$ssl_session_reused\`)"
  else
    m1=$(metric "$PX_ADMIN" '^portcullis_requests_total')
    V_SERVER[$p]="\`portcullis_requests_total\` +$((m1 - m0)) (the gateway counts no accepted connections)"
  fi
  # Would this server resume a session a client offered? openssl s_client: one connection
  # saves its session (reading a whole answer, so that the TLS 1.3 tickets arrive), the next
  # offers it.
  printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$PUBLIC_PATH" |
    timeout 10 openssl s_client -connect "127.0.0.1:$PX_TLS" -tls1_3 -ign_eof \
      -sess_out "$TMP/run/$p-verify/session.pem" >"$TMP/logs/$p-sclient1.txt" 2>&1 || true
  if [ -s "$TMP/run/$p-verify/session.pem" ]; then
    timeout 10 openssl s_client -connect "127.0.0.1:$PX_TLS" -tls1_3 \
      -sess_in "$TMP/run/$p-verify/session.pem" </dev/null >"$TMP/logs/$p-sclient2.txt" 2>&1 || true
    tickets=$(grep -c 'Post-Handshake New Session Ticket' "$TMP/logs/$p-sclient1.txt" || true)
    if grep -q '^Reused, TLSv1.3' "$TMP/logs/$p-sclient2.txt"; then
      V_RESUMED[$p-server]="resumes: it sent $tickets TLS 1.3 session ticket(s) and accepted one back (\`openssl s_client -sess_out\`, then \`-sess_in\`: \"Reused\")"
    else
      V_RESUMED[$p-server]="does not resume: $tickets ticket(s) sent, the session offered back was not accepted (\"New\")"
    fi
  else
    V_RESUMED[$p-server]="not checked (s_client saved no session)"
  fi
  stop_proxy "$p"
  log "check $p: ${V_CONNECTS[$p]} connect() for ${V_DONE[$p]} answers; ${V_SERVER[$p]}; server ${V_RESUMED[$p-server]}"
done

# ---------------------------------------------------------------------------------------------
# Report section
# ---------------------------------------------------------------------------------------------
colv() { awk -F'\t' -v c="$1" -v p="$2" -v n="$3" '$1 == c && $2 == p && $n != "-" {print $n}' "$RECORDS"; }
detail() { colv "$1" "$2" 8 | tr ' ' '\n' | sed -n "s/^$3=//p"; }
num() { awk -v v="$1" 'BEGIN {if (v == "-") print "-"; else printf "%.0f", v}'; }
# grouped N: 10000 → 10,000.
grouped() { num "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta'; }
ELAPSED=$((SECONDS - START_SECONDS))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
declare -A MED=() CPU=() ERRS=() NON2XX=() LO=() HI=()
for c in "${CASES[@]}"; do
  for p in "${PROXIES[@]}"; do
    MED[$c/$p]=$(colv "$c" "$p" 4 | median)
    LO[$c/$p]=$(colv "$c" "$p" 4 | minv)
    HI[$c/$p]=$(colv "$c" "$p" 4 | maxv)
    CPU[$c/$p]=$(colv "$c" "$p" 5 | median)
    ERRS[$c/$p]=$(colv "$c" "$p" 6 | sumv)
    NON2XX[$c/$p]=$(colv "$c" "$p" 7 | sumv)
  done
done
MED[idle/bare]=$(colv idle bare 4 | median)
LO[idle/bare]=$(colv idle bare 4 | minv)
HI[idle/bare]=$(colv idle bare 4 | maxv)
ERRS[idle/bare]=$(colv idle bare 6 | sumv)
ratio() { calc 'a / b' a="${MED[$1/gateway]}" b="${MED[$1/nginx]}"; }
# round_ratios CASE: gateway ÷ nginx of each round (the two ran back to back), one a line.
round_ratios() {
  awk -F'\t' -v c="$1" '$1 == c {v[$3 "/" $2] = $4; r[$3] = 1}
    END {for (k in r) if (v[k "/nginx"] > 0) printf "%s %.2f\n", k, v[k "/gateway"] / v[k "/nginx"]}' "$RECORDS" |
    sort -n | awk '{print $2}'
}
# rratio CASE: the median of the per-round ratios (cancels the drift of other work between rounds).
rratio() { calc 'r' r="$(round_ratios "$1" | median)"; }
rlist() { round_ratios "$1" | paste -sd ' '; }
H2LOAD_V=$(h2load --version 2>&1 | head -n 1)
NGINX_V=$(nginx -v 2>&1 | sed 's/^nginx version: //')
NGINX_SSL=$(nginx -V 2>&1 | sed -n 's/^built with //p')
OPENSSL_V=$(openssl version)
WRK_V=$(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}') || true
GW_V=$("$BIN_DIR/portcullis-gateway" --version 2>/dev/null || echo '?')
RUSTLS_V=$(awk '/^name = "rustls"$/ {getline; gsub(/"/, "", $3); print $3; exit}' "$ROOT/Cargo.lock" 2>/dev/null || true)
PINGORA_V=$(awk '/^name = "pingora-core"$/ {getline; gsub(/"/, "", $3); print $3; exit}' "$ROOT/Cargo.lock" 2>/dev/null || true)

FRAG=$TMP/section.md
{
  echo "$BEGIN_MARK"
  echo "## The edge as users run it: TLS, HTTP/2 and idle connections against nginx"
  echo
  echo "\`bench/edge.sh\` ($([ "$MODE" = splice ] && echo "BENCH_ONLY=edge, ")$(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$GIT_REV\`, ${ELAPSED} s; load average"
  echo "$LOAD_START before, $LOAD_END after; $(nproc) cores shared by the clients, the proxies and the upstream)."
  if [ "$QUICK" = 1 ]; then
    echo "**QUICK smoke run (BENCH_QUICK=1): too short to draw conclusions from.**"
  fi
  if awk -v a="${LOAD_START%% *}" -v b="${LOAD_END%% *}" -v n="$(nproc)" 'BEGIN {exit !(a > 0.5 * n || b > 0.5 * n)}'; then
    echo "**Warning: the machine was busy with other work (load average ${LOAD_START%% *} before, ${LOAD_END%% *} after, on"
    echo "$(nproc) CPUs); the figures are less reliable than usual.**"
  fi
  echo
  echo "Both proxies serve \`GET $PUBLIC_PATH\` from the same upstream (\`portcullis-demo-upstream\`,"
  echo "\`$UPSTREAM_PATH\`; gateway route \`auth: public\`, \`strip_prefix: /public\`, no rate limit;"
  echo "nginx \`proxy_pass http://demo/\` with upstream keep-alive), with the same certificate: $CERT_DESC,"
  echo "self-signed (\`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1\`, made per run)."
  echo "nginx: \`worker_processes $WORKERS\`, \`ssl_protocols TLSv1.3\`, \`ssl_session_cache off\`,"
  echo "\`ssl_session_tickets off\`, \`listen … ssl http2\` (nginx 1.22 has no \`http2 on\`), \`keepalive_requests 1000000\`,"
  echo "\`access_log off\` (\`bench/nginx/edge.conf.in\`). Gateway: \`server.threads: $WORKERS\`, a \`tls:\` listener"
  echo "with \`http2: true\` (Pingora $PINGORA_V, rustls $RUSTLS_V with the *ring* provider), \`keepalive_requests: 0\`,"
  echo "access log off (\`bench/gateway-edge.yaml.in\`). Each measurement starts a fresh proxy; $ROUNDS interleaved"
  echo "round(s), each starting one item later; figures are medians over the rounds (min–max beside them);"
  echo "*CPU* = user + system time of the proxy (nginx: master + workers) from \`/proc/PID/stat\` during"
  echo "the measured run, divided by the requests (case 1: connections) completed. TLS 1.3 suite"
  echo "\`$TLS13_SUITE\` for every client (OpenSSL's and wrk's default first choice; h2load is told)."
  echo
  echo "**Resumption.** nginx as configured keeps no session cache and has tickets off (OpenSSL"
  echo "still sends its default 2 TLS 1.3 tickets, which refer to sessions nobody keeps). The gateway does"
  echo "not configure resumption, so it runs with rustls's defaults: a stateful in-memory session"
  echo "cache of 256 entries per listener (\`ServerSessionMemoryCache::new(256)\`), 2 TLS 1.3 tickets"
  echo "sent after every full handshake (\`send_tls13_tickets: 2\`; the tickets are keys into that cache,"
  echo "no stateless ticketer), no 0-RTT. Checked in this run with \`openssl s_client -sess_out\` /"
  echo "\`-sess_in\`: the gateway ${V_RESUMED[gateway-server]}; nginx ${V_RESUMED[nginx-server]}."
  echo "So a client that resumed would make the gateway's handshakes cheaper than nginx's: wrk does"
  echo "(it keeps its \`SSL\` object across reconnects, \`SSL_shutdown\` + \`SSL_clear\`, which keeps the"
  echo "session and offers it again), which is why the new-connection case uses h2load, which does not:"
  echo "$H2LOAD_RESUME."
  echo
  echo "### 1. TLS 1.3 new connections per second, one request per connection"
  echo
  echo "h2load \`--h1 -H 'Connection: close' -c $CONNS -t $THREADS -n N\`: $CONNS clients, each opening a new TCP"
  echo "connection and doing a full TLS 1.3 handshake for every request; N = the rate of a warm-up run of"
  echo "$((CONNS * 20)) connections × ${DURATION} s."
  echo
  echo "| proxy | connections/s (median) | min–max | CPU µs per connection | failed | non-2xx | cipher, key exchange |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  for p in "${PROXIES[@]}"; do
    echo "| $p | $(num "${MED[conn/$p]}") | $(num "${LO[conn/$p]}")–$(num "${HI[conn/$p]}") | ${CPU[conn/$p]} | ${ERRS[conn/$p]} | ${NON2XX[conn/$p]} | $(detail conn "$p" cipher | sort -u | paste -sd ' '), $(detail conn "$p" kx | sort -u | tr '_' ' ' | paste -sd ' ') |"
  done
  echo "| gateway ÷ nginx | $(ratio conn)× (per round: $(rlist conn)) | | $(calc 'a / b' a="${CPU[conn/gateway]}" b="${CPU[conn/nginx]}")× | | | |"
  echo
  echo "One request per connection, checked on a separate run of $VERIFY_N requests per proxy under"
  echo "\`strace -f -e trace=connect\` (the client's \`connect()\` calls to the proxy's port), with nginx's"
  echo "access log on for that run:"
  echo
  for p in "${PROXIES[@]}"; do
    echo "- $p: ${V_CONNECTS[$p]} connections for ${V_DONE[$p]} answers; ${V_SERVER[$p]}."
  done
  echo
  echo "### 2. TLS keep-alive throughput"
  echo
  echo "wrk \`-t$THREADS -c$CONNS -d${DURATION}s\` over https (HTTP/1.1, $CONNS connections kept open)."
  echo
  echo "| proxy | req/s (median) | min–max | p99 ms | CPU µs/req | errors | non-2xx |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for p in "${PROXIES[@]}"; do
    echo "| $p | $(num "${MED[keepalive/$p]}") | $(num "${LO[keepalive/$p]}")–$(num "${HI[keepalive/$p]}") | $(ms "$(detail keepalive "$p" p99_us | median)") | ${CPU[keepalive/$p]} | ${ERRS[keepalive/$p]} | ${NON2XX[keepalive/$p]} |"
  done
  echo "| gateway ÷ nginx | $(ratio keepalive)× (per round: $(rlist keepalive)) | | | $(calc 'a / b' a="${CPU[keepalive/gateway]}" b="${CPU[keepalive/nginx]}")× | | |"
  echo
  echo "### 3. HTTP/2 throughput"
  echo
  echo "h2load \`-c $H2_CLIENTS -m $H2_STREAMS -t $THREADS -D $DURATION\`: $H2_CLIENTS TLS connections (ALPN h2 on both), $H2_STREAMS"
  echo "concurrent streams each, i.e. $((H2_CLIENTS * H2_STREAMS)) streams in flight in all."
  echo
  echo "| proxy | req/s (median) | min–max | CPU µs/req | failed | non-2xx |"
  echo "|---|---:|---:|---:|---:|---:|"
  for p in "${PROXIES[@]}"; do
    echo "| $p | $(num "${MED[h2/$p]}") | $(num "${LO[h2/$p]}")–$(num "${HI[h2/$p]}") | ${CPU[h2/$p]} | ${ERRS[h2/$p]} | ${NON2XX[h2/$p]} |"
  done
  echo "| gateway ÷ nginx | $(ratio h2)× (per round: $(rlist h2)) | | $(calc 'a / b' a="${CPU[h2/gateway]}" b="${CPU[h2/nginx]}")× | | |"
  echo
  echo "### 4. Memory per idle keep-alive connection"
  echo
  echo "$(grouped "$IDLE") plain HTTP/1.1 connections to \`$PUBLIC_PATH\` (\`bench/idle_conns.py\`, Python standard"
  echo "library, at most 256 being set up at once); each sends one complete request, reads the whole"
  echo "answer and then stays open and idle. RSS = \`VmRSS\` (nginx: master + workers) after 5 warm-up"
  echo "requests and 1 s, then again after every connection had its answer and ${HOLD} s more; per"
  echo "connection = the difference ÷ $(grouped "$IDLE"). *established* = \`ss -tn state established\` on the proxy's"
  echo "port at the measurement. The gateway's \`server.limits.max_connections\` is raised to $NOFILE (default"
  echo "10,000 per process) and \`keepalive_timeout\` to 300 s; nginx \`worker_connections\` $NOFILE,"
  echo "\`keepalive_timeout 300s\`; \`ulimit -n\` $(ulimit -n) for both and for the client. nginx allocates its"
  echo "connection and event arrays for all \`worker_connections\` at start, so they are in its *before*"
  echo "figure; the gateway allocates per connection as it accepts."
  echo
  echo "| proxy | KiB per connection (median) | min–max | RSS before → after MiB (median round) | established at the measurement | failed | closed by the server meanwhile |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for p in "${PROXIES[@]}" bare; do
    kb0=$(detail idle "$p" before_kb | median)
    kb1=$(detail idle "$p" after_kb | median)
    echo "| $p | ${MED[idle/$p]} | ${LO[idle/$p]}–${HI[idle/$p]} | $(calc 'v / 1024' v="$kb0") → $(calc 'v / 1024' v="$kb1") | $(detail idle "$p" established | paste -sd ' ') | ${ERRS[idle/$p]} | $(detail idle "$p" closed_by_server | paste -sd ' ') |"
  done
  echo "| gateway ÷ nginx | $(ratio idle)× | | | | | |"
  echo
  echo "*bare* = bench/bare-pingora (\`upstream_peer\` + the path rewrite, the gateway's Pingora, allocator"
  echo "and release profile, $WORKERS threads): what any Pingora 0.9 proxy holds per idle connection (its task"
  echo "with the proxy future, the session's buffers, a 64 KiB read buffer per stream); the gateway's own"
  echo "share is the difference, $(calc 'a - b' a="${MED[idle/gateway]}" b="${MED[idle/bare]}") KiB."
  echo
  echo "### Edge targets"
  echo
  echo "Throughput targets are judged on the median of the per-round ratios (each round runs the two"
  echo "proxies back to back, so a ratio shares that moment's load; the ratio of the medians is beside it)."
  echo "*spread* = the per-round ratios straddle the target: this run cannot decide it."
  echo
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  for pair in "conn 1.8" "h2 1.0"; do
    read -r c want <<<"$pair"
    r=$(rratio "$c")
    spread=""
    if round_ratios "$c" | awk -v w="$want" '$1 >= w {a = 1} $1 < w {b = 1} END {exit !(a && b)}'; then
      spread=" (spread: inconclusive)"
    fi
    if [ "$c" = conn ]; then
      what="TLS 1.3 new connections/s (1 request each): gateway ≥ 1.8× nginx"
      unit="/s; CPU per connection $(calc 'a / b' a="${CPU[conn/gateway]}" b="${CPU[conn/nginx]}")×"
    else
      what="HTTP/2 throughput, $((H2_CLIENTS * H2_STREAMS)) streams in flight: gateway ≥ 1.0× nginx"
      unit=" req/s; CPU per request $(calc 'a / b' a="${CPU[h2/gateway]}" b="${CPU[h2/nginx]}")×"
    fi
    echo "| $what | ${r}× (per round: $(rlist "$c"); ratio of the medians $(ratio "$c")×: $(num "${MED[$c/gateway]}") vs $(num "${MED[$c/nginx]}")$unit) | $(verdict "$(cmp_ge "$r" "$want")")$spread |"
  done
  ok=$(cmp_le "${MED[idle/gateway]}" 8)
  [ "$(detail idle gateway established | minv)" -ge "$IDLE" ] 2>/dev/null || ok=0
  echo "| memory per idle keep-alive connection: gateway ≤ 8 KiB | ${MED[idle/gateway]} KiB (nginx: ${MED[idle/nginx]} KiB, bare Pingora: ${MED[idle/bare]} KiB) | $(verdict "$ok") |"
  echo "| TLS keep-alive throughput (no target) | $(rratio keepalive)× nginx (per round: $(rlist keepalive)) | — |"
  echo
  echo "Versions: $H2LOAD_V; $NGINX_V (built with $NGINX_SSL); $OPENSSL_V (the clients');"
  echo "$WRK_V; $GW_V."
  echo
  echo "Commands (\$PORT: the proxy's TLS port, \$PLAIN_PORT its plain HTTP port):"
  echo
  echo '```sh'
  for c in "${CASES[@]}"; do
    echo "${CMD[$c]}"
  done
  echo "strace -f -qq -e trace=connect -o \$FILE h2load --h1 -H 'Connection: close' --tls13-ciphers=$TLS13_SUITE -c $CONNS -t $THREADS -n $VERIFY_N https://127.0.0.1:\$PORT$PUBLIC_PATH"
  echo '```'
  echo
  echo "Run alone: \`BENCH_ONLY=edge bench/run.sh\` (puts this section into bench/RESULTS.md)."
  echo "$END_MARK"
} >"$FRAG"
place "$FRAG"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s"

#!/usr/bin/env bash
# Portcullis revocation benchmarks (issue 13 item 4), on loopback, with a throwaway PostgreSQL:
#
#  1. Propagation: 2 issuer replicas on one database, 3 gateways reading the revocation feed
#     (gw1 → replica A, gw2 → replica B, gw3 → replica A). Sessions are logged out one after
#     the other, alternating replicas, while pollers call the JWT route of every gateway with
#     that session's access token; the time from the logout's answer to each gateway's first
#     401 is recorded (bench/revocation_driver.py). Control clients call with tokens of
#     sessions never logged out meanwhile: their failures must be 0.
#  2. 1,000,000 revoked sessions: loaded into an issuer's revocations table with SQL; a gateway
#     reading that feed against an identical gateway whose issuer's feed is empty (same keys,
#     same token): snapshot load time, JWT-route throughput (wrk, interleaved rounds), RSS.
#
# Usage: bench/revocation.sh FRAGMENT     writes the report section (markdown) to FRAGMENT
#        bench/revocation.sh --splice REPORT
#                                         puts it into REPORT (bench/RESULTS.md), replacing
#                                         the previous revocation section, keeping the rest
# bench/run.sh calls the first form (BENCH_REVOCATION=0 skips it), and the second on
# BENCH_ONLY=revocation. Every process started here is stopped on exit, error or Ctrl-C.
#
# Environment (defaults in brackets; the BENCH_* settings of bench/run.sh apply too):
#   BENCH_QUICK=1                   30 logouts, 100,000 records, 1 round x 3 s
#   BENCH_REVOCATION_LOGOUTS [200]  logouts observed
#   BENCH_REVOCATION_RECORDS [1000000]  revoked sessions loaded for part 2
#   BENCH_REVOCATION_ROUNDS [5]     interleaved wrk rounds of the two gateways [BENCH_ROUNDS]
#   BENCH_REVOCATION_CONCURRENCY [2]    logouts observed at once
#   BENCH_REVOCATION_INTERVAL [0.003]   seconds between a poller's calls
#   BENCH_REVOCATION_TIMEOUT [10]   seconds to wait for a gateway's 401 before giving up
#   BENCH_REVOCATION_DRY_RUN=1      gateways without `revocation:` (a gateway that does not
#                                   know it yet): exercises the harness, nothing is refused
#   BENCH_POSTGRES=0                skips everything (PostgreSQL is required)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/bench
BIN_DIR=${BENCH_BIN_DIR:-$ROOT/target/release}
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  d_rounds=1 d_duration=3 d_warmup=1 d_logouts=30 d_records=100000
else
  d_rounds=5 d_duration=10 d_warmup=2 d_logouts=200 d_records=1000000
fi
# Two gateways only, compared against a 3 % target on a shared machine: more rounds than run.sh.
ROUNDS=${BENCH_REVOCATION_ROUNDS:-${BENCH_ROUNDS:-$d_rounds}}
DURATION=${BENCH_DURATION:-$d_duration}
WARMUP=${BENCH_WARMUP:-$d_warmup}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNECTIONS:-64}
WORKERS=${BENCH_WORKERS:-2}
POSTGRES=${BENCH_POSTGRES:-auto}
LOGOUTS=${BENCH_REVOCATION_LOGOUTS:-$d_logouts}
RECORDS=${BENCH_REVOCATION_RECORDS:-$d_records}
CONCURRENCY=${BENCH_REVOCATION_CONCURRENCY:-2}
INTERVAL=${BENCH_REVOCATION_INTERVAL:-0.003}
TIMEOUT=${BENCH_REVOCATION_TIMEOUT:-10}
DRY_RUN=${BENCH_REVOCATION_DRY_RUN:-0}
UPSTREAM_PATH=/healthz
GATEWAY_LOG=${RUST_LOG:-info,pingora_core=warn,pingora_proxy=warn,pingora_core::services::listening=off}
BENCH_EMAIL=bench@example.com
BENCH_PASSWORD="bench correct horse battery staple"

export BENCH_WRK_DIR=$BENCH_DIR/wrk BENCH_WRK_THREADS=$THREADS
export LC_ALL=C

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
log() { printf '[bench revocation %s] %s\n' "$(date +%T)" "$*" >&2; }

section_args revocation.sh "$@"

BEGIN_MARK='<!-- revocation:begin (bench/revocation.sh) -->'
END_MARK='<!-- revocation:end -->'

# skip_section REASON: a section that only says why nothing was measured.
skip_section() {
  local frag
  frag=$(mktemp)
  {
    echo "$BEGIN_MARK"
    echo "## Revocation propagation and 1,000,000 revoked sessions"
    echo
    echo "Not measured: $1."
    echo "$END_MARK"
  } >"$frag"
  place "$frag"
  rm -f "$frag"
  exit 0
}

if [ "$POSTGRES" = 0 ]; then
  skip_section "BENCH_POSTGRES=0 (these benchmarks need PostgreSQL)"
fi
if ! pg_bindir >/dev/null; then
  [ "$POSTGRES" = 1 ] && die "BENCH_POSTGRES=1 but initdb was not found"
  skip_section "initdb was not found (these benchmarks need PostgreSQL: scripts/install-deps.sh postgres installs it)"
fi
command -v python3 >/dev/null 2>&1 ||
  skip_section "python3 was not found (the propagation driver, bench/revocation_driver.py, needs it)"
for tool in wrk curl awk sed; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done
for b in portcullis-gateway portcullis-issuer portcullis-demo-upstream; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: cargo build --release --workspace --bins"
done
if [ "$LOGOUTS" -lt 1 ] || [ "$RECORDS" -lt 1 ]; then
  die "BENCH_REVOCATION_LOGOUTS and BENCH_REVOCATION_RECORDS must be at least 1"
fi

start_run portcullis-bench-revocation

# now_s: seconds since the epoch, microsecond resolution.
now_s() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

# ---------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------
log "starting a throwaway PostgreSQL cluster"
start_postgres || die "PostgreSQL did not start: $(tail -n 5 "$TMP"/logs/*.log)"
PG_BIN=$(pg_bindir)
PSQL=$PG_BIN/psql
[ -x "$PSQL" ] || PSQL=$(command -v psql) || die "psql is missing"
PG_URL="postgres://postgres@127.0.0.1:$PG_PORT"
sql() {
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$1" -At -c "$2"
}
for db in revoked empty; do
  "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$db" >>"$TMP/logs/createdb.log" 2>&1 ||
    die "createdb $db failed"
done

pick_port UP_PORT
spawn upstream "$BIN_DIR/portcullis-demo-upstream" --name demo --listen "127.0.0.1:$UP_PORT"
wait_http "http://127.0.0.1:$UP_PORT/healthz" 200 20 || die "the demo upstream did not start"

I_PID='' I_PORT='' I_ADMIN='' G_PID='' G_PORT='' G_ADMIN=''
# start_issuer NAME DATABASE_URL ISS SECRETS: an issuer whose `iss` is ISS (empty: its own
# URL) and whose secrets directory (admin and feed tokens, API-key pepper) is SECRETS; replicas
# share both, and the database, where the signing keys live. Sets I_PID I_PORT I_ADMIN I_ISS I_SECRETS.
start_issuer() {
  local name=$1 dir=$TMP/run/issuer-$1
  mkdir -p "$dir"
  pick_port I_PORT
  pick_port I_ADMIN
  I_ISS=${3:-http://127.0.0.1:$I_PORT} I_SECRETS=${4:-$dir/secrets}
  render "$BENCH_DIR/issuer.yaml.in" "$dir/issuer.yaml" PORT="$I_PORT" ADMIN_PORT="$I_ADMIN" \
    DATABASE_URL="$2" DIR="$dir"
  sed -i -e "s|^issuer: .*|issuer: $I_ISS|" -e "s|^  dir: .*|  dir: $I_SECRETS|" "$dir/issuer.yaml"
  spawn "issuer-$name" "$BIN_DIR/portcullis-issuer" -c "$dir/issuer.yaml"
  I_PID=$SPAWNED
  wait_http "http://127.0.0.1:$I_PORT/readyz" 200 60 ||
    die "issuer $name did not start: $(tail -n 5 "$TMP/logs/issuer-$name.err")"
  [ -s "$I_SECRETS/feed-token" ] || die "issuer $name: no feed token in $I_SECRETS"
}

# start_gateway NAME ISSUER_URL ISS THREADS [FEED_URL]: keys from ISSUER_URL, the revocation
# feed from FEED_URL [ISSUER_URL]; sets G_PID G_PORT G_ADMIN.
start_gateway() {
  local name=$1 dir=$TMP/run/gateway-$1
  mkdir -p "$dir"
  pick_port G_PORT
  pick_port G_ADMIN
  render "$BENCH_DIR/gateway-revocation.yaml.in" "$dir/gateway.yaml" WORKERS="$4" DIR="$dir" \
    PORT="$G_PORT" ADMIN_PORT="$G_ADMIN" UPSTREAM_PORT="$UP_PORT" ISSUER="$3" \
    KEYS_URL="$2" FEED_URL="${5:-$2}" FEED_TOKEN_FILE="$FEED_TOKEN_FILE"
  if [ "$DRY_RUN" = 1 ]; then
    sed -i '/^    revocation:$/,/^      timeout:/d' "$dir/gateway.yaml"
  fi
  # The gateway's default filter, less pingora's accept-loop error: a gateway stopped with
  # SIGINT was once seen logging it in a busy loop (220 MB in 5 s) until SIGKILL.
  spawn "gateway-$name" env RUST_LOG="$GATEWAY_LOG" "$BIN_DIR/portcullis-gateway" -c "$dir/gateway.yaml"
  G_PID=$SPAWNED
}

# wait_gateway NAME SECONDS: until /readyz answers 200.
wait_gateway() {
  local deadline=$((SECONDS + $2))
  while [ "$SECONDS" -le "$deadline" ]; do
    [ "$(http_code "http://127.0.0.1:$G_ADMIN/readyz")" = 200 ] && return 0
    if ! alive "$G_PID"; then
      if grep -q 'revocation' "$TMP/logs/gateway-$1.err"; then
        die "gateway $1 exited: does it know \`revocation:\` yet (issue 13 item 2)? BENCH_REVOCATION_DRY_RUN=1 runs without it. $(tail -n 3 "$TMP/logs/gateway-$1.err")"
      fi
      die "gateway $1 exited: $(tail -n 5 "$TMP/logs/gateway-$1.err")"
    fi
    sleep 0.05
  done
  die "gateway $1 not ready after $2 s: $(tail -n 5 "$TMP/logs/gateway-$1.err")"
}

# records ADMIN_PORT KIND: the gateway's portcullis_revocation_records{kind=KIND}.
records() {
  metric "$1" "^portcullis_revocation_records[{].*kind=\"$2\""
}

vm_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------------------
# 1. Propagation: 2 replicas, 3 gateways
# ---------------------------------------------------------------------------------------------
log "propagation: 2 issuer replicas on PostgreSQL, 3 gateways"
start_issuer replica-a "$PG_URL/portcullis"
A_PID=$I_PID A_PORT=$I_PORT A_ADMIN=$I_ADMIN ISS1=$I_ISS SECRETS1=$I_SECRETS
start_issuer replica-b "$PG_URL/portcullis" "$ISS1" "$SECRETS1"
B_PID=$I_PID B_PORT=$I_PORT
cmp -s "$SECRETS1/feed-token" "$TMP/run/issuer-replica-a/secrets/feed-token" ||
  die "the replicas do not share their secrets"
FEED_TOKEN_FILE=$SECRETS1/feed-token
A_URL=http://127.0.0.1:$A_PORT B_URL=http://127.0.0.1:$B_PORT
GW_FEEDS=("$A_URL" "$B_URL" "$A_URL")
GW_FEED_NAMES=(A B A)
GW_URLS=() GW_ADMINS=() GW_PIDS=()
for k in 0 1 2; do
  start_gateway "gw$((k + 1))" "${GW_FEEDS[k]}" "$ISS1" 1
  GW_URLS+=("http://127.0.0.1:$G_PORT") GW_ADMINS+=("$G_ADMIN") GW_PIDS+=("$G_PID")
  wait_gateway "gw$((k + 1))" 60
done
log "gateways ready: ${GW_URLS[*]} (feeds from replicas ${GW_FEED_NAMES[*]})"

driver_args=(--replicas "$A_URL,$B_URL" --admin "http://127.0.0.1:$A_ADMIN"
  --admin-token-file "$SECRETS1/admin-token" --gateways "$(
    IFS=,
    echo "${GW_URLS[*]}"
  )"
  --path "/api$UPSTREAM_PATH" --logouts "$LOGOUTS" --workers "$CONCURRENCY"
  --interval "$INTERVAL" --timeout "$TIMEOUT" --raw "$TMP/propagation.tsv")
log "driver: $LOGOUTS logouts, $CONCURRENCY at once, polls every ${INTERVAL} s"
PROP_T0=$SECONDS
python3 "$BENCH_DIR/revocation_driver.py" "${driver_args[@]}" >"$TMP/propagation.env" \
  2> >(tee "$TMP/logs/driver.err" >&2) || die "the driver failed: $(tail -n 5 "$TMP/logs/driver.err")"
PROP_SECONDS=$((SECONDS - PROP_T0))
declare -A P=()
while IFS='=' read -r k v; do
  P[$k]=$v
done <"$TMP/propagation.env"
[ -n "${P[logouts]:-}" ] || die "no driver summary in $TMP/propagation.env"
DRIVER_PROBLEMS=$(grep 'problem:' "$TMP/logs/driver.err" || true)
# The gauges are refreshed once a second: wait (up to 5 s) for every logout to be counted.
GW_RECORDS=()
for k in 0 1 2; do
  deadline=$((SECONDS + 5))
  while n=$(records "${GW_ADMINS[k]}" session) && [ "$n" != "$LOGOUTS" ] && [ "$SECONDS" -le "$deadline" ]; do
    sleep 0.2
  done
  GW_RECORDS+=("$n")
done
log "propagation: p50 ${P[all_p50_ms]} ms, p99 ${P[all_p99_ms]} ms, max ${P[all_max_ms]} ms; control failures ${P[control_failures]}; never refused ${P[never_refused]}"
for ((k = ${#GW_PIDS[@]} - 1; k >= 0; k--)); do
  stop_pid "${GW_PIDS[k]}" INT
done
stop_pid "$B_PID" TERM
stop_pid "$A_PID" TERM

# ---------------------------------------------------------------------------------------------
# 2. 1,000,000 revoked sessions against none
# ---------------------------------------------------------------------------------------------
log "large feed: issuers on the databases 'revoked' and 'empty'"
start_issuer revoked "$PG_URL/revoked"
R_PID=$I_PID R_PORT=$I_PORT R_ADMIN=$I_ADMIN ISS2=$I_ISS SECRETS2=$I_SECRETS
start_issuer empty "$PG_URL/empty" "$ISS2" "$SECRETS2"
E_PID=$I_PID E_PORT=$I_PORT
FEED_TOKEN_FILE=$SECRETS2/feed-token

log "loading $RECORDS revoked sessions into 'revoked' with SQL"
LOAD_SQL="BEGIN;
INSERT INTO revocations (seq, kind, target, not_before, created_at, relevant_until)
  SELECT f.last_seq + g, 'session', md5('bench-revoked-' || g), NULL,
         extract(epoch FROM now())::bigint, extract(epoch FROM now())::bigint + 7260
  FROM revocation_feed f, generate_series(1, $RECORDS) AS g WHERE f.id = 1;
UPDATE revocation_feed SET last_seq = last_seq + $RECORDS WHERE id = 1;
COMMIT;"
t0=$(now_s)
sql revoked "$LOAD_SQL" >"$TMP/logs/load.log" 2>&1 || die "loading the records failed: $(cat "$TMP/logs/load.log")"
SQL_LOAD_S=$(elapsed "$t0" "$(now_s)")
# Autovacuum and a checkpoint would otherwise do this work during the first wrk rounds.
{ sql revoked "VACUUM ANALYZE revocations" && sql revoked "CHECKPOINT"; } >>"$TMP/logs/load.log" 2>&1 ||
  die "VACUUM / CHECKPOINT failed: $(cat "$TMP/logs/load.log")"
HELD=$(sql revoked "SELECT count(*) FROM revocations WHERE relevant_until > extract(epoch FROM now())")
LAST_SEQ=$(sql revoked "SELECT last_seq FROM revocation_feed WHERE id = 1")
[ "$HELD" = "$RECORDS" ] || die "$HELD records in the table, $RECORDS expected"
TABLE_SIZE=$(sql revoked "SELECT pg_size_pretty(pg_total_relation_size('revocations'))")
log "$RECORDS records in ${SQL_LOAD_S} s (last_seq $LAST_SEQ, table + indexes $TABLE_SIZE)"

# The same token passes both gateways: both take the keys of the issuer on 'revoked' (the
# signing keys live in the database); its sid is in neither feed.
answer=$(curl -s --max-time 30 -H "Authorization: Bearer $(cat "$SECRETS2/admin-token")" \
  -H 'Content-Type: application/json' \
  -d "{\"email\":\"$BENCH_EMAIL\",\"password\":\"$BENCH_PASSWORD\",\"roles\":[\"user\"]}" \
  "http://127.0.0.1:$R_ADMIN/admin/users")
[ -n "$(json_str id <<<"$answer")" ] || die "creating the bench user failed: $answer"
login() {
  curl -s --max-time 30 -H 'Content-Type: application/json' \
    -d "{\"email\":\"$BENCH_EMAIL\",\"password\":\"$BENCH_PASSWORD\"}" \
    "http://127.0.0.1:$R_PORT/v1/auth/password" | json_str access_token
}
TOKEN=$(login)
[ -n "$TOKEN" ] || die "password login failed"

declare -A G_PIDS=() G_ADMINS=() G_URLS=() READY_S=() RSS_KB=() HWM_KB=() RSS_AFTER_KB=()
declare -A FEED_OF=([many]="http://127.0.0.1:$R_PORT" [none]="http://127.0.0.1:$E_PORT")
for c in many none; do
  t0=$(now_s)
  start_gateway "$c" "http://127.0.0.1:$R_PORT" "$ISS2" "$WORKERS" "${FEED_OF[$c]}"
  wait_gateway "$c" 600
  READY_S[$c]=$(elapsed "$t0" "$(now_s)")
  G_PIDS[$c]=$G_PID G_ADMINS[$c]=$G_ADMIN G_URLS[$c]="http://127.0.0.1:$G_PORT/api$UPSTREAM_PATH"
  log "gateway '$c' ready in ${READY_S[$c]} s"
done
want=$RECORDS
[ "$DRY_RUN" = 1 ] && want=0
deadline=$((SECONDS + 120))
while [ "$(records "${G_ADMINS[many]}" session)" != "$want" ]; do
  [ "$SECONDS" -le "$deadline" ] ||
    die "gateway 'many' holds $(records "${G_ADMINS[many]}" session) session records, $want expected"
  sleep 0.2
done
RECORDS_AT_READY=$(records "${G_ADMINS[many]}" session)
READS_AT_READY=$(metric "${G_ADMINS[many]}" '^portcullis_revocation_feed_reads_total[{].*result="ok"')
RECORDS_NONE=$(records "${G_ADMINS[none]}" session)
sleep 1
for c in many none; do
  RSS_KB[$c]=$(vm_kb "${G_PIDS[$c]}" VmRSS)
  HWM_KB[$c]=$(vm_kb "${G_PIDS[$c]}" VmHWM)
done
log "RSS after the snapshot: ${RSS_KB[many]} kB with $RECORDS_AT_READY records, ${RSS_KB[none]} kB with $RECORDS_NONE"
for c in many none; do
  code=$(http_code -H "Authorization: Bearer $TOKEN" "${G_URLS[$c]}")
  [ "$code" = 200 ] || die "gateway '$c' answered $code to the bench token"
done

# Interleaved rounds, as bench/run.sh: each round starts with the other gateway.
: >"$TMP/large.tsv"
CASES=(many none)
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < 2; k++)); do
    c=${CASES[(k + round - 1) % 2]}
    url=${G_URLS[$c]}
    run_wrk "$TMP/wrk/$c.r$round.warmup.txt" "$CONNS" "$WARMUP" "$url" -- \
      -H "Authorization: Bearer $TOKEN" -s "$BENCH_DIR/wrk/plain.lua"
    mapfile -t pids < <(proc_tree "${G_PIDS[$c]}")
    t0=$(cpu_ticks "${pids[@]}")
    run_wrk "$TMP/wrk/$c.r$round.txt" "$CONNS" "$DURATION" "$url" -- \
      -H "Authorization: Bearer $TOKEN" -s "$BENCH_DIR/wrk/plain.lua"
    t1=$(cpu_ticks "${pids[@]}")
    parse_bench "$TMP/wrk/$c.r$round.txt"
    rps=$(awk -v n="$R_requests" -v d="$R_duration_us" 'BEGIN {printf "%.1f", n / (d / 1e6)}')
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$R_requests" \
      'BEGIN {printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0)}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$round" "$rps" "$R_p50_us" "$R_p99_us" \
      $((R_err_connect + R_err_read + R_err_write + R_err_timeout)) "$R_err_status" "$cpu" \
      >>"$TMP/large.tsv"
    log "$(printf '%-4s round %s: %9s req/s  p99 %6.2f ms  cpu %s us/req  non-2xx %s' "$c" "$round" \
      "$rps" "$(awk -v v="$R_p99_us" 'BEGIN {print v / 1000}')" "$cpu" "$R_err_status")"
  done
done
for c in many none; do
  RSS_AFTER_KB[$c]=$(vm_kb "${G_PIDS[$c]}" VmRSS)
done

# A logout on top of the million: refused at once by the gateway holding them.
TOKEN2=$(login)
[ -n "$TOKEN2" ] || die "password login failed"
code_before=$(http_code -H "Authorization: Bearer $TOKEN2" "${G_URLS[many]}")
LAG_METRIC=$(curl -s --max-time 5 "http://127.0.0.1:${G_ADMINS[many]}/metrics" |
  awk '/^portcullis_revocation_feed_lag_seconds/ {print $NF; exit}')
LAG_METRIC=${LAG_METRIC:--}
code_logout=$(http_code -X POST -H "Authorization: Bearer $TOKEN2" "http://127.0.0.1:$R_PORT/v1/auth/logout")
t0=$(now_s)
code_after=000 ON_TOP_S="-"
deadline=$((SECONDS + 5))
while [ "$SECONDS" -le "$deadline" ]; do
  code_after=$(http_code -H "Authorization: Bearer $TOKEN2" "${G_URLS[many]}")
  if [ "$code_after" = 401 ]; then
    ON_TOP_S=$(elapsed "$t0" "$(now_s)")
    break
  fi
  sleep 0.005
done
deadline=$((SECONDS + 5))
while ON_TOP_RECORDS=$(records "${G_ADMINS[many]}" session) &&
  [ "$ON_TOP_RECORDS" != $((RECORDS + 1)) ] && [ "$SECONDS" -le "$deadline" ]; do
  sleep 0.2
done
log "logout on top of $RECORDS: $code_before → logout $code_logout → $code_after after ${ON_TOP_S} s"
for c in none many; do
  stop_pid "${G_PIDS[$c]}" INT
done
stop_pid "$E_PID" TERM
stop_pid "$R_PID" TERM

# ---------------------------------------------------------------------------------------------
# Report section
# ---------------------------------------------------------------------------------------------
colv() { awk -F'\t' -v c="$1" -v n="$2" '$1 == c {print $n}' "$TMP/large.tsv"; }
mib() { awk -v v="$1" 'BEGIN {printf "%.1f", v / 1024}'; }
num() { awk -v v="$1" 'BEGIN {printf "%.0f", v}'; }
# grouped N: 1000000 → 1,000,000.
grouped() { num "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta'; }
ELAPSED=$((SECONDS - START_SECONDS))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A RPS=() P99=() CPU=() ERRS=() NON2XX=()
for c in many none; do
  RPS[$c]=$(colv "$c" 3 | median)
  P99[$c]=$(colv "$c" 5 | median)
  CPU[$c]=$(colv "$c" 8 | median)
  ERRS[$c]=$(colv "$c" 6 | sumv)
  NON2XX[$c]=$(colv "$c" 7 | sumv)
done
RATIO_OF_MEDIANS=$(calc 'a / b' a="${RPS[many]}" b="${RPS[none]}")
# Each round runs the two gateways back to back: the median of the per-round ratios cancels
# the drift of the machine's other load, which the ratio of medians does not.
RATIO=$(for ((round = 1; round <= ROUNDS; round++)); do
  awk -F'\t' -v r="$round" '$2 == r {v[$1] = $3} END {if (v["none"] > 0) printf "%.4f\n", v["many"] / v["none"]}' "$TMP/large.tsv"
done | median)
RATIO=$(calc 'r' r="$RATIO")
ROUND_RATIOS=$(for ((round = 1; round <= ROUNDS; round++)); do
  awk -F'\t' -v r="$round" '$2 == r {v[$1] = $3} END {if (v["none"] > 0) printf "%.2f\n", v["many"] / v["none"]}' "$TMP/large.tsv"
done | paste -sd ' ')
DELTA_MIB=$(calc '(a - b) / 1024' a="${RSS_KB[many]}" b="${RSS_KB[none]}")
PER_RECORD=$(calc '(a - b) * 1024 / n' a="${RSS_KB[many]}" b="${RSS_KB[none]}" n="$RECORDS")
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")

FRAG=$TMP/section.md
{
  echo "$BEGIN_MARK"
  echo "## Revocation propagation and $(grouped "$RECORDS") revoked sessions"
  echo
  echo "\`bench/revocation.sh\` ($( [ "$MODE" = splice ] && echo "BENCH_ONLY=revocation, " )$(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$GIT_REV\`, ${ELAPSED} s; load average"
  echo "$LOAD_START before, $LOAD_END after; $(nproc) cores shared by every process below; $PG_VERSION)."
  if [ "$QUICK" = 1 ]; then
    echo "**QUICK smoke run (BENCH_QUICK=1): too short to draw conclusions from.**"
  fi
  if awk -v a="${LOAD_START%% *}" -v b="${LOAD_END%% *}" -v n="$(nproc)" 'BEGIN {exit !(a > 0.5 * n || b > 0.5 * n)}'; then
    echo "**Warning: the machine was busy with other work (load average ${LOAD_START%% *} before, ${LOAD_END%% *} after, on"
    echo "$(nproc) CPUs); the figures, the throughput ratio above all, are less reliable than usual.**"
  fi
  if [ "$DRY_RUN" = 1 ]; then
    echo "**DRY RUN (BENCH_REVOCATION_DRY_RUN=1): the gateways had no \`revocation:\` configured, so"
    echo "nothing could be refused; these figures only show that the harness runs.**"
  fi
  echo
  echo "### Propagation: logout answered → first 401 at each gateway"
  echo
  echo "Two issuer replicas (A, B) on one PostgreSQL database (where the signing keys live) with one"
  echo "secrets directory (admin and feed tokens, API-key pepper) and one \`iss\`; three gateways"
  echo "(\`server.threads: 1\`, keys from the replica they read the feed from) reading the"
  echo "feed with \`revocation: {max_stale: 60s, on_stale: accept, timeout: 35s}\`: gw1 → A,"
  echo "gw2 → B, gw3 → A. ${P[logouts]} sessions (password logins) are logged out"
  echo "(\`POST /v1/auth/logout\` with the access token), alternating A and B, $CONCURRENCY at a time; for"
  echo "each, one poller per gateway calls \`GET /api$UPSTREAM_PATH\` with that access token, pausing"
  echo "$(awk -v v="$INTERVAL" 'BEGIN {print v * 1000}') ms between calls (keep-alive). It must be accepted by all three before the logout;"
  echo "the latency is from the logout's 204 received to the first 401 received (a 401 that"
  echo "arrives before the 204 counts as 0: ${P[refused_before_answer]} of them). Resolution ≈ the poll pause + one request."
  echo "Driver: \`bench/revocation_driver.py\` (Python 3 standard library)."
  echo
  echo "| gateway (feed from) | refused | p50 ms | p99 ms | max ms | session records held at the end |"
  echo "|---|---:|---:|---:|---:|---:|"
  for k in 0 1 2; do
    g=gw$((k + 1))
    echo "| $g (replica ${GW_FEED_NAMES[k]}) | ${P[${g}_refused]} / ${P[logouts]} | ${P[${g}_p50_ms]} | ${P[${g}_p99_ms]} | ${P[${g}_max_ms]} | ${GW_RECORDS[k]:--} |"
  done
  echo "| all | ${P[all_refused]} / $((P[logouts] * 3)) | ${P[all_p50_ms]} | ${P[all_p99_ms]} | ${P[all_max_ms]} | |"
  echo
  echo "Control clients: ${P[control_requests]} calls with tokens of sessions never logged out (other"
  echo "sessions of the same users, and a user who never logs out), spread over the 3 gateways"
  echo "during the run: **${P[control_failures]} failures** (${P[control_failure_detail]})."
  echo "Logouts never refused within ${TIMEOUT} s (per gateway): ${P[never_refused]}; accepted again after a"
  echo "refusal: ${P[accepted_after_refusal]}; refused before their logout: ${P[refused_before_logout]}; other"
  echo "statuses or transport errors in the pollers: ${P[other_statuses]}; logged-out tokens still accepted"
  echo "in a final sweep of every gateway: ${P[accepted_at_the_end]}. Poller calls: ${P[poll_requests]}; the"
  echo "logouts took ${P[run_seconds]} s (driver total ${PROP_SECONDS} s, logins included)."
  if [ -n "$DRIVER_PROBLEMS" ]; then
    echo
    echo "Driver problems:"
    echo
    echo '```'
    echo "$DRIVER_PROBLEMS" | head -n 20
    echo '```'
  fi
  echo
  echo "### $(grouped "$RECORDS") revoked sessions held against none"
  echo
  echo "$(grouped "$RECORDS") \`session\` records (32-hex \`sid\`s like the issuer's, \`relevant_until\` = now + 2 h 1 min)"
  echo "inserted into the \`revocations\` table of one issuer's database with one"
  echo "\`INSERT … SELECT … generate_series\` (and \`revocation_feed.last_seq\` moved on): ${SQL_LOAD_S} s,"
  echo "table + indexes $TABLE_SIZE. Gateway *many* reads that issuer's feed; gateway *none* has the same"
  echo "config (keys from the same issuer) but reads the feed of a second issuer (same secrets directory"
  echo "and \`iss\`, its own empty database). Both"
  echo "\`server.threads: $WORKERS\`, default token cache; the same access token (issuer ES256, with a \`sid\`"
  echo "in neither feed) on \`GET /api$UPSTREAM_PATH\`, as the JWT case above; wrk \`-t$THREADS -c$CONNS\`, ${WARMUP} s warm-up + ${DURATION} s,"
  echo "$ROUNDS interleaved round(s) (each round runs both, back to back, the first alternating), medians; the"
  echo "throughput ratio is the median of the per-round ratios, which cancels the drift of the machine's other"
  echo "load between rounds. The table is vacuumed, analysed and checkpointed before the gateways start."
  echo "RSS = \`VmRSS\` from \`/proc/PID/status\`, 1 s after"
  echo "\`/readyz\` and the records metric were both reached, before any traffic."
  echo
  echo "| gateway | start → /readyz 200 s | session records | RSS MiB after load | peak RSS (VmHWM) MiB | RSS MiB after the rounds | req/s (median) | req/s min–max | p99 ms | CPU µs/req | errors / non-2xx |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  echo "| many | ${READY_S[many]} | $RECORDS_AT_READY | $(mib "${RSS_KB[many]}") | $(mib "${HWM_KB[many]}") | $(mib "${RSS_AFTER_KB[many]}") | $(num "${RPS[many]}") | $(num "$(colv many 3 | minv)")–$(num "$(colv many 3 | maxv)") | $(ms "${P99[many]}") | ${CPU[many]} | ${ERRS[many]} / ${NON2XX[many]} |"
  echo "| none | ${READY_S[none]} | $RECORDS_NONE | $(mib "${RSS_KB[none]}") | $(mib "${HWM_KB[none]}") | $(mib "${RSS_AFTER_KB[none]}") | $(num "${RPS[none]}") | $(num "$(colv none 3 | minv)")–$(num "$(colv none 3 | maxv)") | $(ms "${P99[none]}") | ${CPU[none]} | ${ERRS[none]} / ${NON2XX[none]} |"
  echo
  if awk -v a="$(colv many 3 | minv)" -v b="$(colv many 3 | maxv)" -v c="$(colv none 3 | minv)" \
    -v d="$(colv none 3 | maxv)" 'BEGIN {exit !(a <= d && c <= b)}'; then
    echo "The two gateways' per-round req/s ranges overlap: the difference between them is within this"
    echo "run's noise, which is larger than the 3 % the target allows; the check's own cost is what the"
    echo "criterion \`revocation\` group measures."
    echo
  fi
  echo "Gateway *many* had made $READS_AT_READY successful feed reads (snapshot pages of at most 1,000 records)"
  echo "when its records metric reached $RECORDS_AT_READY."
  echo
  echo "RSS delta: $DELTA_MIB MiB = $PER_RECORD bytes per record. A logout on top of the"
  if [ "$ON_TOP_S" = - ]; then
    on_top="still $code_after 5 s after the logout's answer"
  else
    on_top="then 401 ${ON_TOP_S} s after the logout's answer (curl calls every ~5 ms)"
  fi
  echo "$(grouped "$RECORDS") records at gateway *many*: the token answered $code_before before, the logout $code_logout,"
  echo "$on_top; records held afterwards: $ON_TOP_RECORDS. (\`portcullis_revocation_feed_lag_seconds\` just"
  echo "before the logout: $LAG_METRIC; it counts from the last answer, so an idle feed shows up to the issuer's"
  echo "long-poll wait, 25 s.)"
  echo
  echo "### Revocation targets"
  echo
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  for k in 1 2 3; do
    g=gw$k
    p99=${P[${g}_p99_ms]}
    ok=0
    [ "$p99" != - ] && [ "${P[never_refused]}" = 0 ] && ok=$(cmp_le "$p99" 1000)
    echo "| propagation p99 ≤ 1 s to $g | $p99 ms | $(verdict "$ok") |"
  done
  ok=0
  [ "${P[all_max_ms]}" != - ] && [ "${P[never_refused]}" = 0 ] && ok=$(cmp_le "${P[all_max_ms]}" 2000)
  echo "| propagation max ≤ 2 s (all gateways, ${P[logouts]} logouts, ≥ 200 asked) | ${P[all_max_ms]} ms, ${P[never_refused]} never refused | $(verdict "$ok") |"
  ok=0
  [ "${P[control_failures]}" = 0 ] && [ "${P[accepted_at_the_end]}" = 0 ] && ok=1
  echo "| no failure for sessions not logged out; no logged-out token accepted afterwards | ${P[control_failures]} failures of ${P[control_requests]}; ${P[accepted_at_the_end]} accepted | $(verdict "$ok") |"
  ok=$(cmp_ge "$RATIO" 0.97)
  spread=""
  # Round ratios further apart than the target's margin: the verdict cannot be trusted.
  if tr ' ' '\n' <<<"$ROUND_RATIOS" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {exit !(NR > 0 && hi - lo > 0.06)}'; then
    spread=" (inconclusive: the per-round ratios spread wider than the 3 % margin)"
  fi
  echo "| JWT-route throughput with $(grouped "$RECORDS") revoked sessions ≥ 0.97× without | ${RATIO}× (median of the per-round ratios $ROUND_RATIOS; ratio of the medians ${RATIO_OF_MEDIANS}×: $(num "${RPS[many]}") vs $(num "${RPS[none]}") req/s) | $(verdict "$ok")$spread |"
  ok=$(cmp_le "$DELTA_MIB" 64)
  echo "| gateway memory with $(grouped "$RECORDS") revoked sessions ≤ 64 MiB more than with none | $DELTA_MIB MiB | $(verdict "$ok") |"
  echo
  echo "Run alone: \`BENCH_ONLY=revocation bench/run.sh\` (puts this section into bench/RESULTS.md)."
  echo "$END_MARK"
} >"$FRAG"
place "$FRAG"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s"

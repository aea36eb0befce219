# Shared helpers of the benchmark scripts (bench/run.sh, bench/revocation.sh): logging, process
# bookkeeping and cleanup, free ports, HTTP waits, templates, /proc sampling, wrk, a throwaway
# PostgreSQL cluster, report arithmetic. Sourced, never run. The caller sets TMP (with logs/ in
# it) before starting anything, and installs the traps:
#   trap cleanup EXIT; trap 'exit 130' INT; trap 'exit 143' TERM
# shellcheck shell=bash

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Processes: every one started here is recorded and stopped on exit.
# ---------------------------------------------------------------------------------------------
PIDS=()
PG_STOP=()

alive() {
  local line
  [ -r "/proc/$1/stat" ] || return 1
  read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  line=${line##*) }
  [ "${line%% *}" != Z ]
}

# stop_pid PID [SIGNAL]: signal, wait up to 5 s, then SIGKILL; reaps the child.
stop_pid() {
  local pid=$1 sig=${2:-TERM} i
  if alive "$pid"; then
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      log "pid $pid ignored SIG$sig for 5 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do
    [ "$p" = "$pid" ] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  # Newest first: proxies before the upstream and the issuer they talk to.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    stop_pid "$pid"
  done
  if [ ${#PG_STOP[@]} -gt 0 ]; then
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
  fi
  if [ "$rc" -eq 0 ] && [ "${BENCH_KEEP_TMP:-0}" != 1 ]; then
    rm -rf "$TMP"
  else
    log "configs, logs and raw wrk output kept in $TMP"
  fi
  exit "$rc"
}

# start_run NAME: the run's temporary directory as TMP (logs/, run/, wrk/; removed by cleanup
# after a successful run), the cleanup traps, START_SECONDS and LOAD_START (other work on the
# machine skews everything: the load is recorded in the report).
# shellcheck disable=SC2034 # START_SECONDS and LOAD_START are read by the sourcing script
start_run() {
  START_SECONDS=$SECONDS
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  # nginx workers and a PostgreSQL cluster owned by another user must reach their directories.
  chmod 755 "$TMP"
  mkdir -p "$TMP/logs" "$TMP/run" "$TMP/wrk"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  log "temporary directory: $TMP"
}

# spawn NAME CMD...: start CMD in the background (output in $TMP/logs/NAME.*); sets SPAWNED.
SPAWNED=
spawn() {
  local name=$1
  shift
  "$@" >"$TMP/logs/$name.out" 2>"$TMP/logs/$name.err" </dev/null &
  SPAWNED=$!
  PIDS+=("$SPAWNED")
}

# ---------------------------------------------------------------------------------------------
# Ports, HTTP helpers, templates
# ---------------------------------------------------------------------------------------------
USED_PORTS=" "

port_busy() {
  local hex
  hex=$(printf ':%04X ' "$1")
  grep -qi "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null && return 0
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pick_port VAR: a port free on 127.0.0.1, below the ephemeral range wrk's sockets use.
pick_port() {
  local p i
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + RANDOM % 12000))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    port_busy "$p" && continue
    USED_PORTS+="$p "
    printf -v "$1" '%s' "$p"
    return 0
  done
  die "no free port found"
}

http_code() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true
}

# wait_http URL STATUS SECONDS [CURL ARGS...]
wait_http() {
  local url=$1 want=$2 limit=$3
  shift 3
  local deadline=$((SECONDS + limit))
  while [ "$SECONDS" -le "$deadline" ]; do
    [ "$(http_code "$@" "$url")" = "$want" ] && return 0
    sleep 0.1
  done
  return 1
}

# json_str FIELD: the string value of "FIELD" in the JSON on stdin (flat answers only).
json_str() {
  sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -n 1
}

# render TEMPLATE OUT NAME=VALUE...: replaces every @NAME@.
render() {
  local tpl=$1 out=$2 kv
  shift 2
  local args=()
  for kv in "$@"; do
    args+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
  done
  sed "${args[@]}" "$tpl" >"$out"
  if grep -q '@[A-Z_]*@' "$out"; then
    die "unrendered placeholder in $out"
  fi
}

# ---------------------------------------------------------------------------------------------
# /proc sampling: CPU time and peak RSS of the proxy processes (nginx: master + workers)
# ---------------------------------------------------------------------------------------------
# shellcheck disable=SC2034 # used by the callers
CLK_TCK=$(getconf CLK_TCK)

# proc_tree PID...: the PIDs and their direct children.
proc_tree() {
  local want=" $* " f line rest fields
  for f in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$f" || continue
    rest=${line##*) }
    read -r -a fields <<<"$rest"
    case "$want" in *" ${fields[1]} "*) echo "${line%% *}" ;; esac
  done
  [ $# -gt 0 ] && printf '%s\n' "$@"
  return 0
}

# cpu_ticks PID...: user + system clock ticks of all of them.
cpu_ticks() {
  local pid line rest fields total=0
  for pid in "$@"; do
    read -r line 2>/dev/null <"/proc/$pid/stat" || continue
    rest=${line##*) }
    read -r -a fields <<<"$rest"
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}

# status_kb FIELD PID...: sum of a /proc/PID/status field in kB over the processes (VmRSS: the
# resident set now; VmHWM: each process's peak).
status_kb() {
  local field=$1 pid total=0 v
  shift
  for pid in "$@"; do
    v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
peak_rss_kb() { status_kb VmHWM "$@"; }

# metric ADMIN_PORT REGEX: sum of the Prometheus samples whose line matches REGEX.
metric() {
  curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
    awk -v re="$2" '$0 ~ re && $0 !~ /^#/ {s += $NF} END {printf "%d\n", s}'
}

# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------
# run_wrk OUTFILE CONNECTIONS SECONDS URL [ENV=VALUE... --] [WRK ARGS...]
run_wrk() {
  local out=$1 conns=$2 dur=$3 url=$4
  shift 4
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    envs+=("$1")
    shift
  done
  [ $# -gt 0 ] && shift
  local cmd=(wrk "-t$THREADS" "-c$conns" "-d${dur}s" --latency "$@" "$url")
  if ! env "${envs[@]}" "${cmd[@]}" >"$out" 2>&1; then
    cat "$out" >&2
    die "wrk failed: ${cmd[*]}"
  fi
  grep -q '^BENCH ' "$out" || die "no BENCH line in $out"
}

# parse_bench FILE: sets R_requests, R_duration_us, R_p50_us, ... from the BENCH line.
# shellcheck disable=SC2034 # set by parse_bench, read by the callers
R_requests=0 R_duration_us=1 R_bytes=0 R_p50_us=0 R_p99_us=0 R_p999_us=0 R_max_us=0
# shellcheck disable=SC2034
R_err_connect=0 R_err_read=0 R_err_write=0 R_err_status=0 R_err_timeout=0
parse_bench() {
  local line kv
  line=$(grep '^BENCH ' "$1" | tail -n 1)
  for kv in ${line#BENCH }; do
    printf -v "R_${kv%%=*}" '%s' "${kv#*=}"
  done
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------
# PostgreSQL: a throwaway cluster (as an unprivileged user when root), like tests/src/issuer.rs.
pg_bindir() {
  local d
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    d=$(dirname "$(readlink -f "$(command -v initdb)")")
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  fi
  d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  return 1
}

PG_VERSION=""
start_postgres() {
  local bindir as=() user
  bindir=$(pg_bindir) || return 1
  # shellcheck disable=SC2034 # the callers report it
  PG_VERSION=$("$bindir/postgres" --version 2>/dev/null || true)
  local dir=$TMP/pg
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    user=postgres
    id -u postgres >/dev/null 2>&1 || user=nobody
    chown "$user" "$dir"
    as=(runuser -u "$user" --)
  fi
  "${as[@]}" "$bindir/initdb" -A trust -U postgres -E UTF8 --no-locale --no-sync -D "$dir/data" \
    >"$TMP/logs/initdb.log" 2>&1 || return 1
  pick_port PG_PORT
  # Server defaults otherwise (fsync and synchronous_commit on), like the issuer's SQLite
  # (synchronous = FULL).
  "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" \
    -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=100" \
    -w -t 60 start >"$TMP/logs/pg_ctl.log" 2>&1 || return 1
  PG_STOP=("${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop)
  "$bindir/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres portcullis \
    >"$TMP/logs/createdb.log" 2>&1 || return 1
}

# ---------------------------------------------------------------------------------------------
# Report arithmetic
# ---------------------------------------------------------------------------------------------
median() {
  sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
maxv() {
  sort -g | tail -n 1 | awk 'NF {print; f = 1} END {if (!f) print "-"}'
}
minv() {
  sort -g | head -n 1 | awk 'NF {print; f = 1} END {if (!f) print "-"}'
}
sumv() {
  awk '{s += $1} END {printf "%d\n", s}'
}
# calc EXPR [VAR=VALUE...]: awk arithmetic, printed with %.2f.
calc() {
  local expr=$1
  shift
  local a=() kv
  for kv in "$@"; do a+=(-v "$kv"); done
  awk "${a[@]}" "BEGIN {printf \"%.2f\", $expr}"
}
ms() { awk -v v="$1" 'BEGIN {if (v == "-") print "-"; else printf "%.2f", v / 1000}'; }
# verdict OK: MET or NOT MET.
verdict() {
  if [ "$1" = 1 ]; then echo "**MET**"; else echo "**NOT MET**"; fi
}
cmp_ge() { awk -v a="$1" -v b="$2" 'BEGIN {r = (a + 0 >= b + 0) ? 1 : 0; print r}'; }
cmp_le() { awk -v a="$1" -v b="$2" 'BEGIN {r = (a + 0 <= b + 0) ? 1 : 0; print r}'; }

# section_args SCRIPT ARGS...: a section script's command line, `FRAGMENT` or `--splice REPORT`;
# sets MODE (fragment or splice) and TARGET.
section_args() {
  local script=$1
  MODE=fragment
  case ${2:-} in
    --splice)
      MODE=splice
      TARGET=${3:?usage: bench/$script --splice REPORT}
      ;;
    "" | -*) die "usage: bench/$script FRAGMENT | --splice REPORT" ;;
    *) TARGET=$2 ;;
  esac
}

# place FRAGMENT: a section script's output: $TARGET is the FRAGMENT itself (MODE=fragment, when
# bench/run.sh runs the script) or a report to splice it into (MODE=splice, BENCH_ONLY=…),
# between BEGIN_MARK and END_MARK.
place() {
  if [ "$MODE" = fragment ]; then
    cp "$1" "$TARGET"
  else
    splice_section "$1" "$TARGET" "$BEGIN_MARK" "$END_MARK"
  fi
  log "section written into $TARGET"
}

# splice_section FRAGMENT REPORT BEGIN END: puts a section (FRAGMENT, which starts with the line
# BEGIN and ends with END) into REPORT: in place of the one between the same markers, else
# before the revocation section or `## Commands` (whichever comes first), else at the end; a
# missing REPORT is created. Used by the scripts whose sections can be re-run alone
# (BENCH_ONLY=…) without regenerating the whole report.
splice_section() {
  local frag=$1 report=$2 begin=$3 end=$4 before
  if [ ! -f "$report" ]; then
    { echo "# Benchmark results"; echo; cat "$frag"; } >"$report"
  elif grep -qxF "$begin" "$report"; then
    awk -v b="$begin" -v e="$end" -v f="$frag" '
      $0 == b {while ((getline l < f) > 0) print l; skip = 1; next}
      skip && $0 == e {skip = 0; next}
      !skip {print}' "$report" >"$report.tmp"
    mv "$report.tmp" "$report"
  else
    before=$(grep -m 1 -E '^(<!-- revocation:begin|## Commands$)' "$report" || true)
    if [ -n "$before" ]; then
      awk -v f="$frag" -v m="$before" '
        $0 == m && !done {while ((getline l < f) > 0) print l; print ""; done = 1}
        {print}' "$report" >"$report.tmp"
      mv "$report.tmp" "$report"
    else
      { echo; cat "$frag"; } >>"$report"
    fi
  fi
}

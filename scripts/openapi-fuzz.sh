#!/usr/bin/env bash
# OpenAPI conformance of the issuer, checked by a client nobody here wrote: Schemathesis
# generates requests from each listener's /openapi.json (examples, boundary cases, random
# valid and invalid data) against a real issuer on loopback: the public document against the
# public listener, the admin document (admin API, /metrics) against the admin listener. It
# fails on
#   - any 5xx, any answer whose status, content type, headers or body the document does not
#     declare,
#   - any request the document allows that the server refuses as malformed
#     (scripts/openapi/checks.py).
# Usage: scripts/openapi-fuzz.sh [extra schemathesis args]   (ISSUER_BIN, ST_MAX_EXAMPLES)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${ISSUER_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/portcullis-issuer}
venv=${ST_VENV:-$root/target/schemathesis-venv}
version=4.32.5
max_examples=${ST_MAX_EXAMPLES:-40}

[ -x "$bin" ] || { echo "openapi-fuzz: $bin missing (cargo build -p portcullis-issuer)" >&2; exit 1; }
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  scripts/install-deps.sh venv
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
fi

dir=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pub=$(free_port)
adm=$(free_port)
mkdir -p "$dir/config"
cat > "$dir/config/issuer.yaml" <<YAML
listen: 127.0.0.1:$pub
admin_listen: 127.0.0.1:$adm
database_url: sqlite://../data/issuer.db
issuer: http://127.0.0.1:$pub
audiences: [demo]
password:
  memory_kib: 8192          # fewer argon2 cycles: this run is about shapes, not hashing cost
  iterations: 1
  # Every generated request comes from 127.0.0.1: with the default budgets most of them would
  # meet a 429 and never reach the code behind it. The limits have their own suite
  # (tests/tests/issuer_limits.rs); here they are out of the way.
  max_failures_per_account: 1000000
  max_failures_per_ip: 1000000
limits:
  anonymous: {per_ip: off, global: off}
  signup: {per_ip: off, global: off}
  confirm_resend: {per_ip: off}
  email_confirm: {per_ip: off}
  password_reset: {per_ip: off}
  refresh: {per_ip: off}
  token: {per_ip: off}
  introspect: {per_client: off}
  revoke: {per_client: off}
  api_key: {per_ip: off}
email:
  enabled: true
  mailer: file
  confirm_url: "http://127.0.0.1/confirm?token={token}"
  reset_url: "http://127.0.0.1/reset?token={token}"
  file: {dir: ../data/mail}
sms:
  provider: log
  log: {file: ../data/sms.log}
  max_sends_per_ip_per_hour: 1000000
  max_sends_per_phone_per_hour: 1000000
  min_interval: 1s
  max_sends_per_hour: 1000000
  max_verifications_per_ip_per_hour: 1000000
revocation_feed:
  max_wait: 1s              # a read with nothing new waits this long: keep the run short
YAML
"$bin" -c "$dir/config/issuer.yaml" -t
"$bin" -c "$dir/config/issuer.yaml" >"$dir/issuer.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$pub/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$pub/readyz" >/dev/null || { cat "$dir/issuer.log"; exit 1; }

# Credentials for the security schemes the operations declare (scripts/openapi/schemathesis.toml).
# The API key belongs to a user (unconfirmed address, a password), so that the access tokens
# it yields also reach /v1/users/me and the resend of the confirmation link.
user_id=$("$bin" -c "$dir/config/issuer.yaml" users add --email fuzz@example.com --username fuzz-user \
  --password "fuzz-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')")
key_out=$("$bin" -c "$dir/config/issuer.yaml" api-keys create --subject "$user_id" --roles admin --scopes read,write)
PC_API_KEY=$(awk '/^api key:/ {print $3}' <<<"$key_out")
PC_CLIENT_ID=$(awk '/^id:/ {print $2}' <<<"$key_out")
PC_ADMIN_TOKEN=$(cat "$dir/data/secrets/admin-token")
PC_FEED_TOKEN=$(cat "$dir/data/secrets/feed-token")
export PC_API_KEY PC_CLIENT_ID PC_ADMIN_TOKEN PC_FEED_TOKEN
export SCHEMATHESIS_HOOKS=checks PYTHONPATH="$root/scripts/openapi"

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,valid_request_accepted
status=0
# run LISTENER ARGS...: the listener's own document against the listener.
run() {
  local base=http://127.0.0.1:$1
  shift
  "$venv/bin/schemathesis" --config-file "$root/scripts/openapi/schemathesis.toml" run \
    "$base/openapi.json" --url "$base" --checks "$checks" --max-examples "$max_examples" \
    --seed 20261207 --workers 1 --phases examples,coverage,fuzzing "$@" || status=1
}
echo "openapi-fuzz: public listener 127.0.0.1:$pub"
run "$pub" "${@}"
echo "openapi-fuzz: admin listener 127.0.0.1:$adm"
run "$adm" "${@}"
if [ $status -ne 0 ]; then
  echo "openapi-fuzz: FAILED (issuer log: last lines below)"
  tail -n 20 "$dir/issuer.log"
fi
exit $status

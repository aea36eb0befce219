#!/usr/bin/env bash
# `make run`: start the issuer, the demo upstream and the gateway on loopback, seed demo
# accounts on first run, print a walk-through, and stop everything on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/debug
mkdir -p data

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# Demo admin, user and API key, created once; their secrets stay in data/secrets/demo.txt.
"$bin/portcullis-issuer" -c config/issuer.yaml demo-seed >/dev/null
"$bin/portcullis-issuer" -c config/issuer.yaml &
pids+=($!)
"$bin/portcullis-demo-upstream" --name demo --listen 127.0.0.1:9000 &
pids+=($!)
"$bin/portcullis-gateway" -c config/gateway.yaml &
pids+=($!)

for _ in $(seq 1 150); do
  curl -fsS -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null && break
  sleep 0.1
done

user_pw=$(awk '/^user@example.com/ {print $3}' data/secrets/demo.txt)
admin_pw=$(awk '/^admin@example.com/ {print $3}' data/secrets/demo.txt)
api_key=$(awk '/^demo API key/ {print $4}' data/secrets/demo.txt)

cat <<TXT

Portcullis is running:
  gateway        http://127.0.0.1:8080   https://127.0.0.1:8443 (self-signed dev cert)
  gateway admin  http://127.0.0.1:9901/healthz  /readyz  /metrics
  issuer         http://127.0.0.1:8081 (public API, /openapi.json; also through the gateway at /auth/)
  issuer admin   http://127.0.0.1:8082 (admin API, token in data/secrets/admin-token; /metrics, /openapi.json)
  revocations    http://127.0.0.1:8081/v1/revocations (feed for gateways, token in data/secrets/feed-token)
  demo upstream  http://127.0.0.1:9000 (echoes the request it receives)

Demo accounts (data/secrets/demo.txt):
  user@example.com   ${user_pw}
  admin@example.com  ${admin_pw}   (role admin)
  API key            ${api_key}

Walk-through:
  # 1. log in through the gateway
  curl -s http://127.0.0.1:8080/auth/v1/auth/password -H 'Content-Type: application/json' \\
       -d '{"email":"user@example.com","password":"${user_pw}"}' > /tmp/login.json
  TOKEN=\$(jq -r .access_token /tmp/login.json); REFRESH=\$(jq -r .refresh_token /tmp/login.json)
  # 2. call a protected route: the upstream echoes the identity headers the gateway injected
  curl -s http://127.0.0.1:8080/api/orders -H "Authorization: Bearer \$TOKEN" | jq .headers
  curl -s -i http://127.0.0.1:8080/api/orders                 # no token: 401
  curl -s -i http://127.0.0.1:8080/admin/panel -H "Authorization: Bearer \$TOKEN"   # 403: role admin needed
  # 3. refresh (a new refresh token each time), then log out
  curl -s http://127.0.0.1:8080/auth/v1/auth/refresh -H 'Content-Type: application/json' \\
       -d "{\"refresh_token\":\"\$REFRESH\"}" > /tmp/refresh.json
  curl -s -X POST http://127.0.0.1:8080/auth/v1/auth/logout -H "Authorization: Bearer \$(jq -r .access_token /tmp/refresh.json)"
  # 4. the logged-out session's refresh token is refused
  curl -s http://127.0.0.1:8080/auth/v1/auth/refresh -H 'Content-Type: application/json' \\
       -d "{\"refresh_token\":\"\$(jq -r .refresh_token /tmp/refresh.json)\"}"
  #    and so is its access token, at the gateway (revocation feed)
  curl -s http://127.0.0.1:8080/api/orders -H "Authorization: Bearer \$(jq -r .access_token /tmp/refresh.json)"
  # 5. sign in by phone: the SMS code goes to data/sms.log (log provider), the first
  #    verification creates the account
  curl -s http://127.0.0.1:8080/auth/v1/auth/sms/start -H 'Content-Type: application/json' \\
       -d '{"phone":"+1 201 555 0123"}'
  CODE=\$(awk -F'\t' '\$1=="+12015550123" {c=\$2} END {print c}' data/sms.log)
  curl -s http://127.0.0.1:8080/auth/v1/auth/sms/verify -H 'Content-Type: application/json' \\
       -d "{\"phone\":\"+12015550123\",\"code\":\"\$CODE\"}" > /tmp/sms-login.json
  curl -s http://127.0.0.1:8080/api/orders -H "Authorization: Bearer \$(jq -r .access_token /tmp/sms-login.json)" | jq .headers
  # machines: exchange the API key for a token pair
  curl -s -X POST http://127.0.0.1:8080/auth/v1/auth/api-key -H "Authorization: ApiKey ${api_key}"

Press Ctrl-C to stop.
TXT
wait

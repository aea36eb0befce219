#!/usr/bin/env bash
# `make run`: start the demo upstream and the gateway on loopback, print a walk-through,
# and stop both on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/debug
mkdir -p data

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/portcullis-demo-upstream" --name demo --listen 127.0.0.1:9000 &
pids+=($!)
"$bin/portcullis-gateway" -c config/gateway.yaml &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null && break
  sleep 0.1
done

cat <<'TXT'

Portcullis is running:
  gateway        http://127.0.0.1:8080   https://127.0.0.1:8443 (self-signed dev cert)
  gateway admin  http://127.0.0.1:9901/healthz  /readyz  /metrics
  demo upstream  http://127.0.0.1:9000 (echoes the request it receives)

Try:
  curl -s http://127.0.0.1:8080/public/hello                  # proxied: the echo of what the upstream saw
  curl -s http://127.0.0.1:8080/public/hello -H 'X-Auth-Subject: admin'
                                                               # forged identity header: stripped, not in the echo
  curl -s -i http://127.0.0.1:8080/api/orders                 # protected route: 401 with WWW-Authenticate: Bearer
  curl -s -i 'http://127.0.0.1:8080/public/..%2Fadmin'        # ambiguous path: 400
  curl -sk --http2 https://127.0.0.1:8443/healthz             # TLS + HTTP/2
  curl -s http://127.0.0.1:9901/metrics | grep portcullis_    # Prometheus metrics
  kill -HUP $(cat /tmp/portcullis-gateway.pid)                # reload config/ and conf.d/

Press Ctrl-C to stop.
TXT
wait

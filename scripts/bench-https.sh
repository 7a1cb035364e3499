#!/usr/bin/env bash
# HTTPS with a new TLS connection per request (how mobile clients arrive in a storm):
# GET /gateways on the real router (1,000 nodes) against nginx serving a static body of
# the same size with the same certificate, same machine, same load generator (ab
# without keep-alive: a full handshake per request), in one run. Rounds rotate between
# the servers; medians are reported, with the ratio.
#
#   scripts/bench-https.sh [ROUNDS] [REQUESTS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}; requests=${2:-5000}; conc=${3:-32}

missing=()
command -v ab >/dev/null 2>&1 || missing+=(apache2-utils)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
scripts/deps.sh
cargo build --quiet --release -p router-server --example bench_router

. scripts/bench-common.sh
chmod 755 "$work"  # nginx workers run as another user

# One certificate for both: ECDSA P-256, as a modern deployment would use.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=router.test" -addext "subjectAltName=DNS:router.test,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null


rport=$(free_port)
target/release/examples/bench_router 1000 "127.0.0.1:$rport" "$work/cert.pem" "$work/key.pem" \
  > "$work/router.out" 2> "$work/router.err" &
router_pid=$!
pids+=($router_pid)
for _ in $(seq 1 600); do grep -q "listening on" "$work/router.out" 2>/dev/null && break; sleep 0.05; done
grep -q "listening on" "$work/router.out" || { cat "$work/router.err"; exit 1; }

# nginx, two workers (one per core, as the router's runtime has), the same body size.
body=$(curl -sk "https://127.0.0.1:$rport/gateways")
printf "%s" "$body" > "$work/body.json"; chmod 644 "$work/body.json"
nport=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$nport ssl;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location = /gateways { default_type application/json; alias $work/body.json; }
  }
}
CONF
"$nginx_bin" -c "$work/nginx.conf" -p "$work/nginx" -g 'daemon off;' 2> "$work/nginx.err" &
nginx_pid=$!
pids+=($nginx_pid)
for _ in $(seq 1 200); do curl -skf "https://127.0.0.1:$nport/gateways" >/dev/null 2>&1 && break; sleep 0.05; done
echo "answer sizes: router $(curl -sk "https://127.0.0.1:$rport/gateways" | wc -c) B, nginx $(curl -sk "https://127.0.0.1:$nport/gateways" | wc -c) B"
echo "TLS: router $(echo | openssl s_client -connect 127.0.0.1:$rport 2>/dev/null | grep -m1 -o 'TLSv1\.[0-9]*, Cipher is [A-Z0-9_-]*'), nginx $(echo | openssl s_client -connect 127.0.0.1:$nport 2>/dev/null | grep -m1 -o 'TLSv1\.[0-9]*, Cipher is [A-Z0-9_-]*')"


run_ab() { # port pid -> "req/s server_cpu_us_per_request"
  local before after
  before=$(cpu_ticks "$2")
  # Two clients (ab is single-threaded: one alone would be the bottleneck).
  local c abs=()
  for c in 1 2; do
    ab -q -n "$((requests / 2))" -c "$((conc / 2))" "https://127.0.0.1:$1/gateways" > "$work/ab$c.txt" 2>&1 &
    abs+=($!)
  done
  wait "${abs[@]}" || true
  after=$(cpu_ticks "$2")
  local rps=0 f
  for f in "$work/ab1.txt" "$work/ab2.txt"; do
    if ! grep -q "Requests per second" "$f" || grep -q "^Non-2xx" "$f" \
       || ! awk '/Failed requests/ {exit ($3 != 0)}' "$f"; then cat "$f" >&2; exit 1; fi
    rps=$(awk -v t="$rps" '/Requests per second/ {print t + $4}' "$f")
  done
  echo "$rps $(( (after - before) * 1000000 / hz / requests ))"
}

: > "$work/r.res"; : > "$work/n.res"
for i in $(seq 1 "$rounds"); do
  run_ab "$rport" "$router_pid" >> "$work/r.res"
  run_ab "$nport" "$nginx_pid" >> "$work/n.res"
  echo "round $i: router $(tail -1 "$work/r.res")  nginx $(tail -1 "$work/n.res")  (req/s, server CPU us/request)"
done
r=$(col r 1); n=$(col n 1); rc=$(col r 2); nc=$(col n 2)
printf '\nHTTPS GET /gateways, new connection per request (%s x %s, c=%s; medians)\n' "$rounds" "$requests" "$conc"
printf '%-28s %10s %18s\n' "" "req/s" "server CPU us/req"
printf '%-28s %10.0f %18.0f\n' "router (1,000 nodes)" "$r" "$rc" "nginx static (same cert)" "$n" "$nc"
awk -v r="$r" -v n="$n" 'BEGIN {printf "throughput ratio router/nginx: %.3f (target >= 1.0)\n", r/n}'
awk -v r="$rc" -v n="$nc" 'BEGIN {printf "CPU per request router/nginx:  %.3f (lower is better)\n", r/n}'
echo "(ab clients share the 2 cores with the server under test)"

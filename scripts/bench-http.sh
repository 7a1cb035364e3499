#!/usr/bin/env bash
# HTTP throughput of GET /gateways (real router, 1,000 nodes) against a static-response
# server built the same way (same router stack and server, fixed body instead of
# scheduling), same machine, same load generator (wrk), in one run. A bare-axum static
# server is measured too, for what the framework alone costs. Rounds rotate between the
# servers; medians are reported, with the ratios.
#
#   scripts/bench-http.sh [ROUNDS] [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}; secs=${2:-5}; conns=${3:-64}

command -v wrk >/dev/null 2>&1 || {
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk >/dev/null
}
scripts/deps.sh
cargo build --quiet --release -p router-server --example bench_router --example static_server --example bare_static_server

. scripts/bench-common.sh

spawn router target/release/examples/bench_router 1000 127.0.0.1:0
spawn static target/release/examples/static_server 127.0.0.1:0
spawn bare target/release/examples/bare_static_server 127.0.0.1:0
router=$(listen_addr router); static=$(listen_addr static); bare=$(listen_addr bare)
[ -n "$router" ] && [ -n "$static" ] && [ -n "$bare" ] || { cat "$work"/*.err; exit 1; }
# Same answer size, so both push the same bytes.
echo "answer sizes: router $(curl -s "http://$router/gateways" | wc -c) B, static $(curl -s "http://$static/gateways" | wc -c) B, bare $(curl -s "http://$bare/gateways" | wc -c) B"

run_wrk() { # addr -> "rps p99_ms"
  wrk -t2 -c"$conns" -d"${secs}s" --latency "http://$1/gateways" > "$work/wrk.txt"
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/wrk.txt")
  if grep -q "Non-2xx" "$work/wrk.txt"; then echo "non-2xx answers:" >&2; cat "$work/wrk.txt" >&2; exit 1; fi
  echo "$rps $p99"
}


: > "$work/router.res"; : > "$work/static.res"; : > "$work/bare.res"
for i in $(seq 1 "$rounds"); do
  run_wrk "$router" >> "$work/router.res"
  run_wrk "$static" >> "$work/static.res"
  run_wrk "$bare" >> "$work/bare.res"
  echo "round $i: router $(tail -1 "$work/router.res")  static $(tail -1 "$work/static.res")  bare $(tail -1 "$work/bare.res")  (req/s p99_ms)"
done
col() { awk -v c="$2" '{print $c}' "$work/$1.res" | median; }
r_rps=$(col router 1); s_rps=$(col static 1); b_rps=$(col bare 1)
printf '\n%-34s %12s %12s\n' "GET /gateways ($rounds x ${secs}s, c=$conns)" "req/s" "p99 ms"
printf '%-34s %12.0f %12.3f\n' "router (1,000 nodes)" "$r_rps" "$(col router 2)"
printf '%-34s %12.0f %12.3f\n' "static, same stack (baseline)" "$s_rps" "$(col static 2)"
printf '%-34s %12.0f %12.3f\n' "static, bare axum" "$b_rps" "$(col bare 2)"
awk -v r="$r_rps" -v s="$s_rps" 'BEGIN {printf "throughput ratio router/same-stack static: %.3f (target >= 0.9)\n", r/s}'
awk -v r="$r_rps" -v b="$b_rps" 'BEGIN {printf "throughput ratio router/bare axum static:  %.3f\n", r/b}'

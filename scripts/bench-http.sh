#!/usr/bin/env bash
# HTTP throughput of GET /gateways (real router, 1,000 nodes) against a static-response
# server built the same way (same router stack and server, fixed body instead of
# scheduling), same machine, same load generator (wrk), in one run. A bare-axum static
# server is measured too, for what the framework alone costs. Rounds rotate between the
# servers; medians are reported, with the ratios.
#
# Mid-burst: the same router with every node at one reported load and no report
# coming (BENCH_LEVELLED=1), at 100, 1,000 and 10,000 nodes (10 regions; wrk -t1 -c32
# on one). Each answer moves a node in the herd-adjusted order; the goal is the same
# req/s at any fleet size, within 10 % (10,000 nodes / 100 nodes >= 0.9).
#
# BENCH_BASELINE=PATH adds another build of bench_router (an older commit's, built
# with `cargo build --release -p router-server --example bench_router` in a checkout of
# it) to the rotation, at 1,000 nodes, with the ratio of this build to it.
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
if [ -n "${BENCH_BASELINE:-}" ]; then spawn baseline "$BENCH_BASELINE" 1000 127.0.0.1:0; fi
export BENCH_LEVELLED=1
spawn burst100 target/release/examples/bench_router 100 127.0.0.1:0
spawn burst1000 target/release/examples/bench_router 1000 127.0.0.1:0
spawn burst10000 target/release/examples/bench_router 10000 127.0.0.1:0
unset BENCH_LEVELLED
router=$(listen_addr router); static=$(listen_addr static); bare=$(listen_addr bare)
baseline=""; [ -z "${BENCH_BASELINE:-}" ] || baseline=$(listen_addr baseline)
[ -n "$router" ] && [ -n "$static" ] && [ -n "$bare" ] || { cat "$work"/*.err; exit 1; }
declare -A burst
for n in 100 1000 10000; do
  burst[$n]=$(listen_addr "burst$n")
  [ -n "${burst[$n]}" ] || { cat "$work"/*.err; exit 1; }
done
# Same answer size, so both push the same bytes.
echo "answer sizes: router $(curl -s "http://$router/gateways" | wc -c) B, static $(curl -s "http://$static/gateways" | wc -c) B, bare $(curl -s "http://$bare/gateways" | wc -c) B"

run_wrk() { # addr [threads connections] -> "rps p99_ms"
  wrk -t"${2:-2}" -c"${3:-$conns}" -d"${secs}s" --latency "http://$1/gateways" > "$work/wrk.txt"
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/wrk.txt")
  if grep -q "Non-2xx" "$work/wrk.txt"; then echo "non-2xx answers:" >&2; cat "$work/wrk.txt" >&2; exit 1; fi
  echo "$rps $p99"
}


: > "$work/router.res"; : > "$work/static.res"; : > "$work/bare.res"; : > "$work/baseline.res"
for n in 100 1000 10000; do : > "$work/burst$n.res"; done
for i in $(seq 1 "$rounds"); do
  run_wrk "$router" >> "$work/router.res"
  run_wrk "$static" >> "$work/static.res"
  run_wrk "$bare" >> "$work/bare.res"
  if [ -n "$baseline" ]; then
    run_wrk "$baseline" >> "$work/baseline.res"
    echo "round $i: baseline build $(tail -1 "$work/baseline.res")"
  fi
  echo "round $i: router $(tail -1 "$work/router.res")  static $(tail -1 "$work/static.res")  bare $(tail -1 "$work/bare.res")  (req/s p99_ms)"
  for n in 100 1000 10000; do run_wrk "${burst[$n]}" 1 32 >> "$work/burst$n.res"; done
  echo "round $i mid-burst: 100 nodes $(tail -1 "$work/burst100.res")  1,000 $(tail -1 "$work/burst1000.res")  10,000 $(tail -1 "$work/burst10000.res")"
done
col() { awk -v c="$2" '{print $c}' "$work/$1.res" | median; }
r_rps=$(col router 1); s_rps=$(col static 1); b_rps=$(col bare 1)
printf '\n%-34s %12s %12s\n' "GET /gateways ($rounds x ${secs}s, c=$conns)" "req/s" "p99 ms"
printf '%-34s %12.0f %12.3f\n' "router (1,000 nodes)" "$r_rps" "$(col router 2)"
printf '%-34s %12.0f %12.3f\n' "static, same stack (baseline)" "$s_rps" "$(col static 2)"
printf '%-34s %12.0f %12.3f\n' "static, bare axum" "$b_rps" "$(col bare 2)"
awk -v r="$r_rps" -v s="$s_rps" 'BEGIN {printf "throughput ratio router/same-stack static: %.3f (target >= 0.9)\n", r/s}'
awk -v r="$r_rps" -v b="$b_rps" 'BEGIN {printf "throughput ratio router/bare axum static:  %.3f\n", r/b}'
if [ -n "$baseline" ]; then
  printf '%-34s %12.0f %12.3f\n' "baseline build (1,000 nodes)" "$(col baseline 1)" "$(col baseline 2)"
  awk -v r="$r_rps" -v b="$(col baseline 1)" 'BEGIN {printf "throughput ratio this build/baseline build: %.3f\n", r/b}'
fi

printf '\n%-34s %12s %12s\n' "mid-burst, levelled ($rounds x ${secs}s, -t1 -c32)" "req/s" "p99 ms"
for n in 100 1000 10000; do
  printf '%-34s %12.0f %12.3f\n' "router ($n nodes)" "$(col "burst$n" 1)" "$(col "burst$n" 2)"
done
awk -v a="$(col burst10000 1)" -v b="$(col burst100 1)" 'BEGIN {printf "mid-burst ratio 10,000 / 100 nodes: %.3f (target >= 0.9)\n", a/b}'

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
# Each server's CPU time per request (user + system, every thread) is reported beside
# its rate: on two shared cores the rates swing by 10 % between rounds, the CPU a
# request costs much less. Mid-burst is compared with bare axum under the same load
# (-t1 -c32).
#
# BENCH_BASELINE=PATH adds another build of bench_router (an older commit's, built
# with `cargo build --release -p router-server --example bench_router` in a checkout of
# it) to the rotation, at 1,000 nodes quiet and levelled, with the ratios of this build
# to it.
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
declare -A pid_of
pid_of[router]=${pids[-3]}; pid_of[static]=${pids[-2]}; pid_of[bare]=${pids[-1]}
if [ -n "${BENCH_BASELINE:-}" ]; then
  [ -x "$BENCH_BASELINE" ] || {
    echo "BENCH_BASELINE=$BENCH_BASELINE: not an executable; give the path of another build's bench_router" >&2
    exit 2
  }
  spawn baseline "$BENCH_BASELINE" 1000 127.0.0.1:0; pid_of[baseline]=${pids[-1]}
  BENCH_LEVELLED=1 spawn baseburst "$BENCH_BASELINE" 1000 127.0.0.1:0; pid_of[baseburst]=${pids[-1]}
fi
export BENCH_LEVELLED=1
spawn burst100 target/release/examples/bench_router 100 127.0.0.1:0
spawn burst1000 target/release/examples/bench_router 1000 127.0.0.1:0
spawn burst10000 target/release/examples/bench_router 10000 127.0.0.1:0
pid_of[burst100]=${pids[-3]}; pid_of[burst1000]=${pids[-2]}; pid_of[burst10000]=${pids[-1]}
unset BENCH_LEVELLED
router=$(listen_addr router); static=$(listen_addr static); bare=$(listen_addr bare)
baseline=""; baseburst=""
[ -z "${BENCH_BASELINE:-}" ] || { baseline=$(listen_addr baseline); baseburst=$(listen_addr baseburst); }
[ -n "$router" ] && [ -n "$static" ] && [ -n "$bare" ] || { cat "$work"/*.err; exit 1; }
declare -A burst
for n in 100 1000 10000; do
  burst[$n]=$(listen_addr "burst$n")
  [ -n "${burst[$n]}" ] || { cat "$work"/*.err; exit 1; }
done
# Same answer size, so both push the same bytes.
echo "answer sizes: router $(curl -s "http://$router/gateways" | wc -c) B, static $(curl -s "http://$static/gateways" | wc -c) B, bare $(curl -s "http://$bare/gateways" | wc -c) B"

run_wrk() { # name addr [threads connections] -> "rps p99_ms cpu_us_per_request"
  local before after rps p99 total
  before=$(cpu_ticks "${pid_of[$1]}")
  wrk -t"${3:-2}" -c"${4:-$conns}" -d"${secs}s" --latency "http://$2/gateways" > "$work/wrk.txt"
  after=$(cpu_ticks "${pid_of[$1]}")
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  total=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/wrk.txt")
  if grep -q "Non-2xx" "$work/wrk.txt"; then echo "non-2xx answers:" >&2; cat "$work/wrk.txt" >&2; exit 1; fi
  echo "$rps $p99 $(awk -v t=$((after - before)) -v hz="$hz" -v n="$total" 'BEGIN {printf "%.3f", t / hz * 1e6 / n}')"
}


pid_of[bare1]=${pid_of[bare]}
names=(router static bare bare1 burst100 burst1000 burst10000)
[ -z "$baseline" ] || names+=(baseline baseburst)
for n in "${names[@]}"; do : > "$work/$n.res"; done
for i in $(seq 1 "$rounds"); do
  run_wrk router "$router" >> "$work/router.res"
  run_wrk static "$static" >> "$work/static.res"
  run_wrk bare "$bare" >> "$work/bare.res"
  if [ -n "$baseline" ]; then
    run_wrk baseline "$baseline" >> "$work/baseline.res"
    echo "round $i: baseline build $(tail -1 "$work/baseline.res")"
  fi
  echo "round $i: router $(tail -1 "$work/router.res")  static $(tail -1 "$work/static.res")  bare $(tail -1 "$work/bare.res")  (req/s p99_ms cpu_us/req)"
  for n in 100 1000 10000; do run_wrk "burst$n" "${burst[$n]}" 1 32 >> "$work/burst$n.res"; done
  run_wrk bare1 "$bare" 1 32 >> "$work/bare1.res"
  [ -z "$baseburst" ] || run_wrk baseburst "$baseburst" 1 32 >> "$work/baseburst.res"
  echo "round $i mid-burst: 100 nodes $(tail -1 "$work/burst100.res")  1,000 $(tail -1 "$work/burst1000.res")  10,000 $(tail -1 "$work/burst10000.res")  bare $(tail -1 "$work/bare1.res")"
done
row() { printf '%-34s %12.0f %12.3f %12.2f\n' "$1" "$(col "$2" 1)" "$(col "$2" 2)" "$(col "$2" 3)"; }
ratio() { # LABEL A B: A/B's rate and B/A's CPU per request (above 1: A does better),
  # medians of the rounds' pairs
  printf '%-46s rate %.3f, per CPU second %.3f\n' "$1" "$(pair_median "$2" 1 "$3" 1)" "$(pair_median "$3" 3 "$2" 3)"
}
printf '\n%-34s %12s %12s %12s\n' "GET /gateways ($rounds x ${secs}s, c=$conns)" "req/s" "p99 ms" "CPU us/req"
row "router (1,000 nodes)" router
row "static, same stack (baseline)" static
row "static, bare axum" bare
ratio "router / same-stack static (target >= 0.9):" router static
ratio "router / bare axum (target >= 0.95):" router bare
if [ -n "$baseline" ]; then
  row "baseline build (1,000 nodes)" baseline
  ratio "this build / baseline build:" router baseline
fi

printf '\n%-34s %12s %12s %12s\n' "mid-burst, levelled ($rounds x ${secs}s, -t1 -c32)" "req/s" "p99 ms" "CPU us/req"
for n in 100 1000 10000; do row "router ($n nodes)" "burst$n"; done
row "static, bare axum" bare1
ratio "mid-burst 1,000 nodes / bare axum (>= 0.95):" burst1000 bare1
ratio "mid-burst 10,000 / 100 nodes (>= 0.9):" burst10000 burst100
if [ -n "$baseburst" ]; then
  row "baseline build (1,000 nodes)" baseburst
  ratio "mid-burst this build / baseline build:" burst1000 baseburst
fi

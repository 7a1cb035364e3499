#!/usr/bin/env bash
# The registry path at fleet scale, against a stock etcd (Debian's defaults): a router
# following 10,000 nodes while their records change at a steady rate.
#
#   1. restart: a router started with 10,000 nodes present, until /readyz is 200;
#   2. the report floor, NODES / 30 updates/s (every agent at the 30 s floor: 333/s at
#      10,000 nodes, 3,333/s at 100,000): the router's CPU following them alone, then
#      with a request loop and a visibility probe asking meanwhile; etcd's own CPU
#      meanwhile and its database size after;
#   3. 2,000 updates/s: CPU, peak RSS, update -> visible in /gateways (p50 / p99), and
#      non-200 answers of a request loop running meanwhile;
#   4. the same 2,000 updates/s with the router following etcd over TLS with a client
#      certificate (etcd's --client-cert-auth): its CPU beside plain HTTP's;
#   5. two data centres: a router following two registries of NODES nodes each, at
#      2,000 updates/s in one of them, beside the one-registry router of phase 3.
#
#   scripts/bench-registry.sh [NODES] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-10000}; secs=${2:-30}
scripts/deps.sh --test
cargo build --quiet --release -p router-server --bin router-server --example registry_load

. scripts/bench-common.sh
start_etcd
target/release/examples/registry_load "$etcd_url" "$nodes" 0 0

hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_router() { # [ETCD-URL SECURITY-FLAGS...]
  rport=$(free_port)
  printf '[rate_limit]\nper_ip_per_sec = 0\n' > "$work/router.toml"
  local t0 url=${1:-$etcd_url}; t0=$(date +%s.%N)
  [ $# -gt 0 ] && shift
  target/release/router-server --etcd "$url" --listen "127.0.0.1:$rport" \
    --config "$work/router.toml" "$@" > "$work/router.log" 2>&1 &
  router_pid=$!
  pids+=($router_pid)
  until curl -sf "http://127.0.0.1:$rport/readyz" >/dev/null 2>&1; do sleep 0.01; done
  ready_s=$(echo "$(date +%s.%N) - $t0" | bc)
}

# Measures the router's CPU (cores) and peak RSS while `registry_load` runs at RATE;
# leaves "cores rss_mb rest" in `result` (it runs in this shell, so `pids` sees the load).
phase() { # rate [quiet]
  local t0 r0 e0 peak=0 out target="127.0.0.1:$rport"
  [ "${2:-}" = quiet ] && target=""
  r0=$(ticks "$router_pid"); e0=$(ticks "$etcd_pid"); t0=$(date +%s.%N)
  target/release/examples/registry_load "$etcd_url" "$nodes" "$1" "$secs" $target > "$work/load.out" &
  local lp=$!
  pids+=($lp)
  while kill -0 "$lp" 2>/dev/null; do
    local r; r=$(rss_kb "$router_pid"); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.5
  done
  wait "$lp"
  local cores dt
  dt=$(echo "$(date +%s.%N) - $t0" | bc)
  cores=$(echo "scale=4; ($(ticks "$router_pid") - $r0) / $hz / $dt" | bc)
  etcd_cores=$(echo "scale=4; ($(ticks "$etcd_pid") - $e0) / $hz / $dt" | bc)
  local builds
  builds=$(curl -s "http://127.0.0.1:$rport/metrics" | awk '/^router_snapshot_build(s_total|_seconds_total) / {printf "%s ", $2}')
  result="$cores $((peak / 1024)) $(cat "$work/load.out") snapshot_builds/seconds_total $builds"
}

start_router
echo "router ready with $nodes nodes in ${ready_s} s (goal < 2 s)"
floor=$((nodes / 30))
db_mb() { curl -s "$etcd_url/metrics" | awk '/^etcd_mvcc_db_total_size_in_bytes / {printf "%.1f", $2 / 1048576}'; }
phase "$floor" quiet; read -r q333 qrss333 qrest333 <<<"$result"
echo "$floor updates/s (the 30 s report floor) for ${secs}s, following alone: router CPU ${q333} cores (goal <= 0.05 at 10,000 nodes, 0.5 at 100,000), peak RSS ${qrss333} MB; etcd CPU ${etcd_cores} cores; $qrest333"
phase "$floor"; read -r c333 rss333 rest333 <<<"$result"
echo "$floor updates/s for ${secs}s, with requests: router CPU ${c333} cores, peak RSS ${rss333} MB; etcd CPU ${etcd_cores} cores; $rest333"
echo "etcd database after the floor phases: $(db_mb) MB (Debian's defaults: no auto-compaction)"
phase 2000; read -r c2k rss2k rest2k <<<"$result"
echo "2000 updates/s for ${secs}s: router CPU ${c2k} cores (goal <= 0.25), peak RSS ${rss2k} MB (goal <= 100); etcd CPU ${etcd_cores} cores; $rest2k"
echo "(goals: update -> visible p99 <= 100 ms, zero non-200 answers)"
echo "router 'registry unreachable' lines: $(grep -c "registry unreachable" "$work/router.log" || true)"

# 4. The same over TLS: a second etcd with an https:// listener requiring client
# certificates (the load still writes over http://), a router following it over TLS.
kill "$router_pid" 2>/dev/null || true; wait "$router_pid" 2>/dev/null || true
plain_url=$etcd_url
start_etcd tls
target/release/examples/registry_load "$etcd_url" "$nodes" 0 0
start_router "$etcd_tls_url" --etcd-cacert "$work/pki/ca.pem" \
  --etcd-cert "$work/pki/client.pem" --etcd-key "$work/pki/client-key.pem"
phase 2000; read -r ctls rsstls resttls <<<"$result"
echo "2000 updates/s for ${secs}s over TLS: router CPU ${ctls} cores, peak RSS ${rsstls} MB; $resttls"
echo "TLS / plain router CPU at 2000 updates/s: $(echo "scale=3; $ctls / $c2k" | bc) (${ctls} vs ${c2k} cores; plain etcd $plain_url)"

# 5. Two DCs: the plain etcd of phases 1-3 and a second one with a fleet of its own,
# followed by one router (its own DC first); 2,000 updates/s in the first.
kill "$router_pid" 2>/dev/null || true; wait "$router_pid" 2>/dev/null || true
start_etcd dc2
second_url=$etcd_url
REGISTRY_LOAD_ID_PREFIX=dc2 target/release/examples/registry_load "$second_url" "$nodes" 0 0
etcd_url=$plain_url
rport=$(free_port)
t0=$(date +%s.%N)
target/release/router-server --registry "a=$plain_url" --registry "b=$second_url" \
  --listen "127.0.0.1:$rport" --config "$work/router.toml" > "$work/router.log" 2>&1 &
router_pid=$!
pids+=($router_pid)
until curl -sf "http://127.0.0.1:$rport/gateways?count=1" >/dev/null 2>&1 \
  && [ "$(curl -s "http://127.0.0.1:$rport/ops/fleet.json" | grep -o '"nodes":[0-9]*' | grep -c ":$nodes\|:$((nodes + 1))")" -ge 2 ]; do sleep 0.05; done
echo "router following two registries of $nodes nodes ready in $(echo "$(date +%s.%N) - $t0" | bc) s"
phase 2000; read -r c2dc rss2dc rest2dc <<<"$result"
echo "2000 updates/s for ${secs}s in one of two registries: router CPU ${c2dc} cores, peak RSS ${rss2dc} MB; $rest2dc"
echo "two registries / one: CPU $(echo "scale=3; $c2dc / $c2k" | bc) (${c2dc} vs ${c2k} cores), peak RSS ${rss2dc} vs ${rss2k} MB"

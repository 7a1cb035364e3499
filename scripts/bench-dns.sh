#!/usr/bin/env bash
# DNS throughput of the router's zone against NSD serving a static zone of the same
# names and size, then DNS-over-HTTPS GETs against GET /gateways on the router's
# listener. Same machine, same load generators, one run; rounds alternate between the
# servers and medians are reported, with the ratios: of the medians, and the median of
# the rounds' back-to-back pairs, which a round the whole machine ran slower does not
# move (the goals are read from it, as in bench-http.sh).
#
# Servers run on core 1 and load generators on core 0 (taskset), so each server gets
# one core: NSD with `server-count: 1`, the router with its runtime sized to that core.
# The router answers from 1,000 nodes (in-memory registry, `bench_router` example):
# every answer is chosen by load and counted in the herd accounting; NSD's are fixed.
#
# The load generators share the other core, and dnsperf alone can hold about as many
# queries a second as either server answers: the figure that decides is then the
# server's CPU time per query (user + system, every thread and child, from /proc),
# printed beside the rate. Goals (issue 35): router/NSD >= 1.0 in queries per CPU
# second, DoH >= 0.9 x /gateways.
#
#   scripts/bench-dns.sh [ROUNDS] [SECONDS] [NODES]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-10}; nodes=${3:-1000}

need=()
command -v nsd >/dev/null 2>&1 || need+=(nsd)
command -v dnsperf >/dev/null 2>&1 || need+=(dnsperf)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
scripts/deps.sh
cargo build --quiet --release -p router-server --example bench_router

. scripts/bench-common.sh

zone=gw.bench.test
# A port free for UDP and TCP alike.
udp_tcp_port() {
  python3 -c 'import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass'
}
rport=$(udp_tcp_port)
BENCH_DNS_LISTEN="127.0.0.1:$rport" spawn router taskset -c 1 target/release/examples/bench_router "$nodes" 127.0.0.1:0
router_pid=${pids[-1]}
router=$(listen_addr router)
[ -n "$router" ] || { cat "$work/router.err"; exit 1; }

# NSD: the same names (apex, r0-r9, {tcp,ws}.r0-r9), three A records each, plus one name
# per node, so the zone is as large as the fleet.
mkdir -p "$work/nsd"
{
  echo "\$ORIGIN $zone."
  echo "\$TTL 10"
  echo "@ IN SOA ns.$zone. hostmaster.$zone. 1 3600 600 86400 10"
  echo "@ IN NS ns.$zone."
  echo "ns IN A 127.0.0.1"
  for n in 1 2 3; do echo "@ IN A 10.0.0.$n"; done
  for r in $(seq 0 9); do
    for name in "r$r" "tcp.r$r" "ws.r$r"; do
      for n in 1 2 3; do echo "$name IN A 10.0.$((r + 1)).$n"; done
    done
  done
  for i in $(seq 1 "$nodes"); do printf 'gw-%05d IN A 10.%d.%d.%d\n' "$i" $((i >> 16 & 255)) $((i >> 8 & 255)) $((i & 255)); done
} > "$work/nsd/$zone.zone"
nport=$(udp_tcp_port)
cat > "$work/nsd/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$nport
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$work/nsd"
  database: ""
  zonelistfile: "$work/nsd/zone.list"
  xfrdfile: "$work/nsd/xfrd.state"
  xfrdir: "$work/nsd"
  pidfile: "$work/nsd/nsd.pid"
  logfile: "$work/nsd/nsd.log"
  minimal-responses: yes
  hide-version: yes
  verbosity: 0
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: $zone
  zonefile: $zone.zone
CONF
nsd-checkconf "$work/nsd/nsd.conf"
spawn nsd taskset -c 1 nsd -d -c "$work/nsd/nsd.conf"
nsd_pid=${pids[-1]}

answer() { # port name: the A records, one line
  dig @127.0.0.1 -p "$1" "$2" A +short +tries=1 +time=2 | tr '\n' ' '
}
for _ in $(seq 1 200); do
  [ -n "$(answer "$nport" "$zone")" ] && [ -n "$(answer "$rport" "$zone")" ] && break
  sleep 0.05
done
echo "router: $zone -> $(answer "$rport" "$zone")| r5.$zone -> $(answer "$rport" "r5.$zone")"
echo "nsd:    $zone -> $(answer "$nport" "$zone")| r5.$zone -> $(answer "$nport" "r5.$zone")"

# The query mix: the apex (region by address), each region, each region's tcp name.
{
  echo "$zone A"
  for r in $(seq 0 9); do echo "r$r.$zone A"; echo "tcp.r$r.$zone A"; done
} > "$work/queries.txt"

run_dnsperf() { # port pid -> "qps lost cpu_us_per_query"
  local before after
  before=$(cpu_ticks "$2")
  taskset -c 0 dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -l "$secs" -c 4 -q 200 > "$work/dnsperf.txt" 2>&1
  after=$(cpu_ticks "$2")
  local qps lost done
  qps=$(awk '/Queries per second:/ {print $4}' "$work/dnsperf.txt")
  lost=$(awk '/Queries lost:/ {print $3}' "$work/dnsperf.txt")
  done=$(awk '/Queries completed:/ {print $3}' "$work/dnsperf.txt")
  [ -n "$qps" ] || { cat "$work/dnsperf.txt" >&2; exit 1; }
  if grep -Eq 'NOERROR [0-9]+ \(100' "$work/dnsperf.txt"; then :; else
    echo "not every answer was NOERROR:" >&2; grep -A8 "Response codes" "$work/dnsperf.txt" >&2 || true
  fi
  echo "$qps $lost $(awk -v t=$((after - before)) -v hz="$hz" -v n="$done" 'BEGIN {printf "%.3f", t * 1e6 / hz / n}')"
}
: > "$work/router.res"; : > "$work/nsd.res"
for i in $(seq 1 "$rounds"); do
  run_dnsperf "$rport" "$router_pid" >> "$work/router.res"
  run_dnsperf "$nport" "$nsd_pid" >> "$work/nsd.res"
  echo "round $i: router $(tail -1 "$work/router.res")  nsd $(tail -1 "$work/nsd.res")  (queries/s lost CPU-µs/query)"
done
r_qps=$(col router 1); n_qps=$(col nsd 1); r_cpu=$(col router 3); n_cpu=$(col nsd 3)
r_lost=$(awk '{t += $2} END {print t}' "$work/router.res")
printf '\n%-44s %12s %14s\n' "DNS over UDP ($rounds x ${secs}s, dnsperf -c 4 -q 200)" "queries/s" "CPU-µs/query"
printf '%-44s %12.0f %14.3f\n' "router ($nodes nodes, load-aware)" "$r_qps" "$r_cpu"
printf '%-44s %12.0f %14.3f\n' "NSD (static zone, same names)" "$n_qps" "$n_cpu"
awk -v r="$r_qps" -v n="$n_qps" -v rc="$r_cpu" -v nc="$n_cpu" -v l="$r_lost" 'BEGIN {
  printf "ratio router/NSD, medians of the columns: %.3f in queries/s, %.3f in queries per CPU second; router lost %d\n", r/n, nc/rc, l}'
printf 'ratio router/NSD, medians of the rounds'"'"' pairs: %.3f in queries/s, %.3f in queries per CPU second (goal >= 1.0)\n' \
  "$(pair_median router 1 nsd 1)" "$(pair_median nsd 3 router 3)"

# DNS over HTTPS (GET, RFC 8484) against /gateways: the same listener, the same wrk.
doh=$(python3 -c 'import base64, struct, sys
name = b"".join(bytes([len(l)]) + l.encode() for l in sys.argv[1].split(".")) + b"\0"
msg = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
print(base64.urlsafe_b64encode(msg).decode().rstrip("="))' "$zone")
run_wrk() { # path -> "rps cpu_us_per_request"
  local before after
  before=$(cpu_ticks "$router_pid")
  taskset -c 0 wrk -t1 -c32 -d"${secs}s" "http://$router$1" > "$work/wrk.txt"
  after=$(cpu_ticks "$router_pid")
  if grep -q "Non-2xx" "$work/wrk.txt"; then echo "non-2xx answers:" >&2; cat "$work/wrk.txt" >&2; exit 1; fi
  local n
  n=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  echo "$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt") $(awk -v t=$((after - before)) -v hz="$hz" -v n="$n" 'BEGIN {printf "%.3f", t * 1e6 / hz / n}')"
}
: > "$work/doh.res"; : > "$work/gw.res"
for i in $(seq 1 "$rounds"); do
  run_wrk "/dns-query?dns=$doh" >> "$work/doh.res"
  run_wrk "/gateways" >> "$work/gw.res"
  echo "round $i: DoH $(tail -1 "$work/doh.res")  /gateways $(tail -1 "$work/gw.res")  (req/s CPU-µs/request)"
done
d_rps=$(col doh 1); g_rps=$(col gw 1); d_cpu=$(col doh 2); g_cpu=$(col gw 2)
printf '\n%-44s %12s %14s\n' "HTTP GET, plain ($rounds x ${secs}s, wrk -c32)" "req/s" "CPU-µs/req"
printf '%-44s %12.0f %14.3f\n' "/dns-query?dns= (DoH)" "$d_rps" "$d_cpu"
printf '%-44s %12.0f %14.3f\n' "/gateways" "$g_rps" "$g_cpu"
awk -v d="$d_rps" -v g="$g_rps" 'BEGIN {printf "ratio DoH//gateways, medians of the columns: %.3f\n", d/g}'
printf 'ratio DoH//gateways, medians of the rounds'"'"' pairs: %.3f by rate, %.3f per CPU second (goal >= 0.9)\n' \
  "$(pair_median doh 1 gw 1)" "$(pair_median gw 2 doh 2)"

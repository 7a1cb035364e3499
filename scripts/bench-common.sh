# Sourced by the registry benchmarks: a scratch directory and process list cleaned up on
# exit, `free_port`, and a stock etcd (Debian's defaults) on free loopback ports, whose
# URL is left in `etcd_url`.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_etcd() {
  local cport pport
  cport=$(free_port); pport=$(free_port)
  etcd --name bench --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "bench=http://127.0.0.1:$pport" > "$work/etcd.log" 2>&1 &
  pids+=($!)
  etcd_url="http://127.0.0.1:$cport"
  for _ in $(seq 1 200); do curl -sf "$etcd_url/health" | grep -q true && break; sleep 0.05; done
}

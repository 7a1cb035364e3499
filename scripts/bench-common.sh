# Sourced by every scripts/bench-*.sh: a scratch directory and the processes the
# script starts, all stopped when it ends, whether it succeeds, fails or is
# interrupted (Ctrl-C, SIGTERM); `spawn`, `listen_addr`, `free_port`, `median`, `col`,
# `pair_median`, `cpu_ticks` (and `hz`), and a stock etcd (Debian's defaults) on free loopback ports, whose URL is left in `etcd_url`
# and its pid in `etcd_pid`.
#
# Start every process through `spawn` (or add its pid to `pids` in this shell, never
# inside a command substitution, whose variables do not reach this shell).
work=$(mktemp -d)
pids=()
cleanup() {
  trap - EXIT INT TERM
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# spawn NAME CMD...: CMD in the background, its output in $work/NAME.out and .err.
spawn() {
  local name=$1; shift
  "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
}
# listen_addr NAME: waits (up to 30 s) for NAME's "listening on ADDR" line; prints ADDR.
listen_addr() {
  for _ in $(seq 1 600); do
    grep -q "listening on" "$work/$1.out" 2>/dev/null && break
    sleep 0.05
  done
  grep -o "listening on .*" "$work/$1.out" | awk '{print $3}'
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# cpu_ticks PID...: CPU time (clock ticks, user + system) of processes, every thread
# of each and of all their descendants (NSD's server is its main process's grandchild).
cpu_ticks() {
  local t=0 p kids
  for p in "$@"; do
    # utime and stime, counted after the name, which may hold spaces ("nsd: server 1").
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
    kids=$(pgrep -P "$p" | tr '\n' ' ' || true)
    # shellcheck disable=SC2086
    [ -n "$kids" ] && t=$((t + $(cpu_ticks $kids)))
  done
  echo "$t"
}
hz=$(getconf CLK_TCK)
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# col NAME C: the median over the rounds (lines) of column C of $work/NAME.res.
col() { awk -v c="$2" '{print $c}' "$work/$1.res" | median; }
# pair_median A CA B CB: the median over the rounds of A's column CA over B's column CB,
# each round's line of $work/A.res beside the same round's of $work/B.res. The pair
# was measured back to back, so a round the whole machine ran slower (on shared cores
# a round can run 20 % slower than the next) does not move the ratio.
pair_median() {
  local width
  width=$(awk '{print NF; exit}' "$work/$1.res")
  paste -d' ' "$work/$1.res" "$work/$3.res" | awk -v a="$2" -v b=$((width + $4)) '{print $a / $b}' | median
}

start_etcd() { # [tls | NAME]: tls adds an https:// listener requiring client certificates
  local cport pport sport name=bench${1:-}
  cport=$(free_port); pport=$(free_port)
  local listen="http://127.0.0.1:$cport" tlsargs=()
  if [ "${1:-}" = tls ]; then
    make_certs
    sport=$(free_port)
    listen="$listen,https://127.0.0.1:$sport"
    tlsargs=(--cert-file "$work/pki/server.pem" --key-file "$work/pki/server-key.pem"
      --trusted-ca-file "$work/pki/ca.pem" --client-cert-auth)
    etcd_tls_url="https://127.0.0.1:$sport"
  fi
  spawn "etcd$name" etcd --name "$name" --data-dir "$work/etcd$name" "${tlsargs[@]}" \
    --listen-client-urls "$listen" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$name=http://127.0.0.1:$pport"
  etcd_url="http://127.0.0.1:$cport"
  etcd_pid=${pids[-1]}
  for _ in $(seq 1 200); do curl -sf "$etcd_url/health" | grep -q true && break; sleep 0.05; done
}

# A CA, a server certificate for 127.0.0.1 and a client certificate (CN=root) in
# $work/pki, with openssl.
make_certs() {
  local d="$work/pki"
  [ -f "$d/ca.pem" ] && return
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench CA" -keyout "$d/ca-key.pem" -out "$d/ca.pem" 2>/dev/null
  local leaf
  for leaf in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=$([ $leaf = server ] && echo localhost || echo root)" \
      -keyout "$d/$leaf-key.pem" -out "$d/$leaf.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' \
      "$([ $leaf = server ] && echo serverAuth || echo clientAuth)" > "$d/$leaf.ext"
    openssl x509 -req -in "$d/$leaf.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" \
      -CAcreateserial -days 2 -extfile "$d/$leaf.ext" -out "$d/$leaf.pem" 2>/dev/null
  done
  # The binaries refuse private keys that group or others can read.
  chmod 600 "$d"/*-key.pem
}

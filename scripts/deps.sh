#!/usr/bin/env bash
# Installs what building and testing need, checking that each tool works rather than
# that its name is on PATH. Debian/Ubuntu packages.
#
#   scripts/deps.sh           # building: protoc with its well-known types (etcd-client)
#   scripts/deps.sh --test    # and the tools the tests drive (see `checks` below)
#
# Each check does a small real task with the tool. A package whose check fails is
# installed (or reinstalled), and the check runs again: if it still fails, the script
# stops and says which capability is missing, so a test never finds out later.
#
# Packages are installed with --no-install-recommends: every capability the scripts
# and tests use is checked below after the install, so a Recommends that one of them
# needs would fail here, by name, instead of in a test. (protoc's well-known types are
# the case that taught this: they live in libprotobuf-dev, a Recommends of
# protobuf-compiler, and are now installed explicitly.)
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# --- checks: each returns 0 when the capability works -------------------------------

# etcd-client's build script compiles etcd's protos, which import protobuf's
# well-known types (google/protobuf/descriptor.proto and friends).
check_protoc() {
  command -v protoc >/dev/null 2>&1 || return 1
  printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nimport "google/protobuf/timestamp.proto";\nmessage M { google.protobuf.Timestamp t = 1; }\n' \
    > "$scratch/wkt.proto"
  protoc -I "$scratch" --descriptor_set_out="$scratch/wkt.pb" "$scratch/wkt.proto" 2>/dev/null
}
# A real etcd member answers its health endpoint, and etcdctl writes and reads a key
# through it (both binaries are what the tests start).
check_etcd() {
  command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1 || return 1
  local c p pid ok=1
  c=$(free_port) && p=$(free_port) || return 1
  etcd --name deps-check --data-dir "$scratch/etcd" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "deps-check=http://127.0.0.1:$p" >"$scratch/etcd.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do
    if ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$c" --dial-timeout 1s put deps-check ok >/dev/null 2>&1 &&
       [ "$(ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$c" get --print-value-only deps-check 2>/dev/null)" = ok ]; then
      ok=0; break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return $ok
}
# promtool checks a rule file (the alerting rules' and the dashboard's checks).
check_promtool() {
  command -v promtool >/dev/null 2>&1 || return 1
  printf 'groups:\n- name: g\n  rules:\n  - record: x:up\n    expr: sum(up)\n' > "$scratch/rules.yml"
  promtool check rules "$scratch/rules.yml" >/dev/null 2>&1
}
check_prlimit() { prlimit --nofile=1024:1024 true >/dev/null 2>&1; }
# Headless Chromium renders a page, and chromedriver of the same build runs.
check_chromium() {
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || return 1
  chromedriver --version >/dev/null 2>&1 || return 1
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$scratch/chrome" --dump-dom 'data:text/html,<p id=x>deps-ok</p>' 2>/dev/null \
    | grep -q deps-ok
}
# systemd-analyze verifies a unit file (and reports a broken one).
check_systemd_analyze() {
  command -v systemd-analyze >/dev/null 2>&1 || return 1
  printf '[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n' > "$scratch/deps-check.service"
  systemd-analyze verify "$scratch/deps-check.service" >/dev/null 2>&1
}
# unbound parses a configuration with DNS-over-HTTPS (its DoH test), which needs its
# nghttp2 build.
check_unbound() {
  command -v unbound >/dev/null 2>&1 && command -v unbound-checkconf >/dev/null 2>&1 || return 1
  local version
  version=$(unbound -V 2>/dev/null) || return 1
  grep -q nghttp2 <<<"$version" || return 1
  printf 'server:\n  interface: 127.0.0.1\n  port: 5353\n  https-port: 8443\n  username: ""\n  chroot: ""\n' \
    > "$scratch/unbound.conf"
  unbound-checkconf "$scratch/unbound.conf" >/dev/null 2>&1
}
# dig runs (the DNS tests ask the router with it); kdig speaks DNS over HTTPS.
# (Output is read whole before it is searched: `grep -q` stops at the first match, the
# tool then dies of SIGPIPE, and pipefail would call the check failed.)
check_dig() {
  command -v dig >/dev/null 2>&1 || return 1
  local out
  out=$(dig -v 2>&1) || return 1
  grep -q '^DiG 9' <<<"$out"
}
check_kdig() {
  command -v kdig >/dev/null 2>&1 || return 1
  local version help
  version=$(kdig --version 2>&1) || return 1
  help=$(kdig --help 2>&1) || return 1
  grep -q 'Knot DNS' <<<"$version" && grep -q 'https' <<<"$help"
}
# faketime shifts a process's wall clock (the herd-accounting skew tests).
check_faketime() {
  command -v faketime >/dev/null 2>&1 || return 1
  local now shifted
  now=$(date +%s)
  shifted=$(faketime -f '+3600s' date +%s 2>/dev/null) || return 1
  [ $((shifted - now)) -ge 3590 ] && [ $((shifted - now)) -le 3610 ]
}
# The schemathesis script makes a virtualenv with pip in it.
check_venv() {
  python3 -m venv "$scratch/venv" >/dev/null 2>&1 && [ -x "$scratch/venv/bin/pip" ]
}
check_curl() { command -v curl >/dev/null 2>&1 && curl --version >/dev/null 2>&1; }
# openssl makes a certificate (the benchmarks' TLS etcd).
check_openssl() {
  command -v openssl >/dev/null 2>&1 || return 1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=x \
    -keyout "$scratch/k.pem" -out "$scratch/c.pem" >/dev/null 2>&1
}
# Network namespaces joined by a bridge (the partition tests): one namespace is made,
# given a bridge and a veth pair, and removed again.
check_netns() {
  command -v ip >/dev/null 2>&1 || return 1
  local ns="deps-check-$$" ok=1
  ip netns add "$ns" >/dev/null 2>&1 || return 1
  ip -n "$ns" link add br0 type bridge >/dev/null 2>&1 \
    && ip -n "$ns" link add v0 type veth peer name v1 >/dev/null 2>&1 \
    && ip -n "$ns" link set v0 master br0 >/dev/null 2>&1 \
    && ip netns exec "$ns" true >/dev/null 2>&1 && ok=0
  ip netns del "$ns" >/dev/null 2>&1
  # `ip netns add` bind-mounts /run/netns once; leave no mount behind.
  if mountpoint -q /run/netns 2>/dev/null && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
    umount /run/netns 2>/dev/null || true
  fi
  return $ok
}
# The Kotlin bindings' test: a JDK, JNA (as Android apps load native code), and
# kotlinc with its kotlinx-coroutines (the generated suspend functions need it).
check_java() { java -version >/dev/null 2>&1 && javac -version >/dev/null 2>&1; }
check_jna() { [ -s /usr/share/java/jna.jar ]; }
check_npm() { npm --version >/dev/null 2>&1; }
kotlin_version=2.4.20
check_kotlinc() {
  local k
  k=$(command -v kotlinc 2>/dev/null) || return 1
  [ -s "$(dirname "$(readlink -f "$k")")/../lib/kotlinx-coroutines-core-jvm.jar" ] || return 1
  local v
  v=$(kotlinc -version 2>&1) || return 1
  [[ "$v" == *"kotlinc-jvm"* ]]
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- what each capability needs ------------------------------------------------------
# name | check | Debian packages
checks=("protoc|check_protoc|protobuf-compiler libprotobuf-dev")
if [ "$want_test" = 1 ]; then
  checks+=(
    "curl|check_curl|curl"
    "python venv|check_venv|python3-venv"
    "etcd and etcdctl|check_etcd|etcd-server etcd-client"
    "promtool|check_promtool|prometheus"
    "prlimit|check_prlimit|util-linux"
    "headless chromium and chromedriver|check_chromium|chromium chromium-driver"
    "systemd-analyze verify|check_systemd_analyze|systemd"
    "unbound with DNS-over-HTTPS|check_unbound|unbound"
    "dig|check_dig|bind9-dnsutils"
    "kdig with DNS-over-HTTPS|check_kdig|knot-dnsutils"
    "faketime|check_faketime|faketime"
    "network namespaces (ip netns, bridges, veth)|check_netns|iproute2"
    "openssl|check_openssl|openssl"
    "java and javac|check_java|default-jdk-headless"
    "JNA|check_jna|libjna-java"
    "npm (for kotlinc)|check_npm|npm"
  )
fi

failing=()
packages=()
for entry in "${checks[@]}"; do
  IFS='|' read -r name check pkgs <<<"$entry"
  if ! "$check"; then
    failing+=("$entry")
    read -ra more <<<"$pkgs"
    packages+=("${more[@]}")
  fi
done
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
install_debian() {

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: these do not work here: $(for e in "${failing[@]}"; do printf '%s; ' "${e%%|*}"; done)" >&2
  echo "install them with your package manager (Debian names: ${packages[*]})" >&2
  exit 1
fi
echo "installing ${packages[*]} ..." >&2
$sudo apt-get update -qq
# --reinstall repairs a package that is there but broken (a file removed by hand).
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends --reinstall \
  "${packages[@]}" >/dev/null

bad=()
for entry in "${failing[@]}"; do
  IFS='|' read -r name check pkgs <<<"$entry"
  "$check" || bad+=("$name (from $pkgs)")
done
if [ "${#bad[@]}" -gt 0 ]; then
  printf 'error: still not working after the install: %s\n' "${bad[@]}" >&2
  exit 1
fi
}
[ "${#failing[@]}" -eq 0 ] || install_debian

# kotlinc comes from the npm registry (Debian has no Kotlin compiler).
if [ "$want_test" = 1 ] && ! check_kotlinc; then
  command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to install kotlinc (kotlin-compiler)" >&2; exit 1; }
  echo "installing kotlin-compiler@$kotlin_version from npm ..." >&2
  npm install -g --silent "kotlin-compiler@$kotlin_version" >/dev/null
  # The package links only kotlinc-js; the JVM compiler is in its bin/ beside it.
  kdir="$(npm root -g)/kotlin-compiler/bin"
  chmod +x "$kdir/kotlinc" "$kdir/kotlinc-jvm" "$kdir/kotlin" 2>/dev/null || true
  $sudo ln -sf "$kdir/kotlinc" /usr/local/bin/kotlinc
  hash -r
  check_kotlinc || { echo "error: still not working after the install: kotlinc (npm kotlin-compiler@$kotlin_version)" >&2; exit 1; }
fi

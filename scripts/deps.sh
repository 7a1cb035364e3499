#!/usr/bin/env bash
# Installs what building and testing need, when missing: protoc (etcd-client's build)
# and, with --test, etcd + etcdctl (tests run a real etcd), promtool (metrics and
# alerting rules are checked with it), prlimit, chromium + chromedriver (the fleet page
# is tested in a real browser) and systemd-analyze (the unit files are verified with
# it). Debian/Ubuntu packages.
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ "$want_test" = 1 ]; then
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v unbound >/dev/null 2>&1 || missing+=(unbound)
fi
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing ${missing[*]} ..." >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

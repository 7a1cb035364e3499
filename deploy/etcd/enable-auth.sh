#!/usr/bin/env bash
# Turns on etcd's authentication for the gateway registry, once per cluster: adds the
# `root` user (no password: it authenticates with the client certificate whose common
# name is root, which make-certs.sh makes) and enables auth. Run it from a host that
# holds root's certificate; afterwards only certificate holders with a role get in, and
# `router-server ctl auth apply` creates the routers', agents' and operators' roles.
#
#   deploy/etcd/enable-auth.sh ENDPOINTS PKI_DIR
#   deploy/etcd/enable-auth.sh https://10.0.1.11:2379,https://10.0.1.12:2379 /etc/etcd/pki
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,9p' "$0"; exit 2; }
ctl() {
  ETCDCTL_API=3 etcdctl --endpoints "$1" --cacert "$2/ca.pem" \
    --cert "$2/root.pem" --key "$2/root-key.pem" "${@:3}"
}
if ctl "$1" "$2" user get root >/dev/null 2>&1; then
  echo "user root exists"
else
  ctl "$1" "$2" user add root --no-password
fi
ctl "$1" "$2" auth enable

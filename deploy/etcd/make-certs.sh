#!/usr/bin/env bash
# Makes the certificates a DC's registry needs, with openssl, into DIR:
#   ca.pem, ca-key.pem          the CA (keep ca-key.pem offline)
#   member.pem, member-key.pem  the etcd members' certificate (server and peer), valid
#                               for every address in MEMBER_ADDRS (comma-separated IPs)
#   NAME.pem, NAME-key.pem      a client certificate per NAME in CLIENTS (comma-
#                               separated): its common name is the etcd user (root,
#                               gateway-router-ID's user ID, an agent's node id, ...)
# Keys are written mode 0600. Existing files are kept, so it can add clients later.
#
#   deploy/etcd/make-certs.sh DIR MEMBER_ADDRS CLIENTS [DAYS]
#   deploy/etcd/make-certs.sh /etc/etcd/pki 10.0.1.11,10.0.1.12,10.0.1.13 root,r1,gw-1,alice
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,13p' "$0"; exit 2; }
dir=$1 addrs=$2 clients=$3 days=${4:-825}
mkdir -p "$dir"
cd "$dir"
umask 077
if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=gateway registry CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
fi
sign() { # NAME SUBJECT EXTENSIONS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -days "$days" -extfile <(printf '%s\n' "$3") -out "$1.pem" 2>/dev/null
  rm -f "$1.csr"
}
if [ ! -f member.pem ]; then
  san=$(printf 'IP:%s,' ${addrs//,/ })
  sign member "/CN=etcd member" \
    "subjectAltName=${san}DNS:localhost
extendedKeyUsage=serverAuth,clientAuth
keyUsage=digitalSignature"
fi
for name in ${clients//,/ }; do
  [ -f "$name.pem" ] || sign "$name" "/CN=$name" \
    "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
done
chmod 0644 ./*.pem
chmod 0600 ./*-key.pem
echo "certificates in $dir: ca.pem member.pem $(printf '%s.pem ' ${clients//,/ })"

#!/usr/bin/env bash
# Runs the real router on an in-memory registry with simulated gateways.
# Installs protoc (needed to build etcd-client) when missing. Extra arguments go to
# `router-server demo` (e.g. --listen 127.0.0.1:9090 --nodes 40).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
exec cargo run --quiet --release -p router-server -- demo "$@"

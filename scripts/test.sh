#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, and end-to-end tests against a
# real etcd and the real binaries. Installs protoc and etcd first when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --test

# End-to-end tests spawn the binaries; build them before the tests start.
cargo build --workspace --bins --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

# Property-based API tests of openapi.yaml against a live router.
scripts/schemathesis.sh

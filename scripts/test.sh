#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, and end-to-end tests against a
# real etcd and the real binaries. Installs protoc and etcd first when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --test

# The partition tests' `ip netns add` bind-mounts /run/netns onto itself (iproute2
# does so once per machine). Once no namespace is left, undo it, so a machine (or a
# chroot, which cannot be unmounted while it stays) is left as it was found.
release_netns() {
  if mountpoint -q /run/netns 2>/dev/null && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
    umount /run/netns 2>/dev/null || true
  fi
}
trap release_netns EXIT

# End-to-end tests spawn the binaries; build them before the tests start.
cargo build --workspace --bins --quiet
# The bindings' generator, which tests/tests/bindings.rs runs (scripts/bindings.sh).
cargo build --quiet -p gateway-sdk-bindings --features bindgen
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

# Property-based API tests of openapi.yaml against a live router.
scripts/schemathesis.sh

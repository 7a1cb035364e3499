#!/usr/bin/env bash
# Fuzzes everything the project parses from strangers, each target for SECONDS (default
# 20): node records, commands, node bindings and block-list entries from etcd, the /gateways query string, HTTPDNS answers,
# the SDK's cache file and DNS queries. Starts from the committed corpora (fuzz/corpus/, left
# unchanged: new inputs go to a scratch copy) and fails on the first crash, leaving the
# input under fuzz/artifacts/. Installs cargo-fuzz when missing. libFuzzer's coverage
# instrumentation needs flags the stable compiler accepts only with RUSTC_BOOTSTRAP=1;
# no sanitizer is used (`-s none`): the targets are safe Rust, so a crash is a panic.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}; shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(node_record command binding block_entry query_string httpdns_answer cache_file dns_query doh_answer)

scripts/deps.sh
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --quiet --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
(cd fuzz && cargo fuzz build -s none --release >/dev/null)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  # A target without a committed corpus would start from nothing, or (libFuzzer) not
  # start at all and still look like it passed.
  if [ -z "$(ls -A "fuzz/corpus/$t" 2>/dev/null)" ]; then
    echo "fuzz target $t has no committed corpus (fuzz/corpus/$t)"; exit 1
  fi
  mkdir -p "$scratch/$t"
  echo "fuzzing $t for ${secs}s"
  log="$scratch/$t.log"
  (cd fuzz && cargo fuzz run -s none --release "$t" "$scratch/$t" "corpus/$t" -- \
     -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1) || true
  grep -E "^(Done|stat::number_of_executed_units)|ERROR|panicked" "$log" || true
  # cargo fuzz exits non-zero on a crash; look for the artifact.
  if ls fuzz/artifacts/"$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $t crashed; inputs:"; ls fuzz/artifacts/"$t"/
    exit 1
  fi
  # A run that never executed an input (a missing directory, a build that did not
  # start) proves nothing: fail unless libFuzzer reports the inputs it ran.
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ -z "$runs" ] || [ "$runs" -eq 0 ]; then
    echo "fuzz target $t ran no input:"; tail -20 "$log"
    exit 1
  fi
  echo "$t: $runs inputs"
done

#!/usr/bin/env bash
# Fuzzes everything the project parses from strangers, each target for SECONDS (default
# 20). One fuzz crate per crate that parses outside input:
#   registry/fuzz        node records, commands, node bindings, block-list entries,
#                        policies (etcd)
#   httpdns-client/fuzz  HTTPDNS answers, DoH answers, the SDK's cache file
#   router-server/fuzz   the /gateways query string, DNS queries
# Starts from the committed corpora (CRATE/fuzz/corpus/TARGET, left unchanged: new
# inputs go to a scratch copy) and fails on the first crash, leaving the input under
# CRATE/fuzz/artifacts/, and on a target that has no corpus or ran no input. Installs
# cargo-fuzz when missing. libFuzzer's coverage instrumentation needs flags the stable
# compiler accepts only with RUSTC_BOOTSTRAP=1; no sanitizer is used (`-s none`): the
# targets are safe Rust, so a crash is a panic.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}; shift || true

# Every target, with the crate whose fuzz directory holds it.
declare -A crate_of=(
  [node_record]=registry [command]=registry [binding]=registry [block_entry]=registry
  [policy]=registry
  [httpdns_answer]=httpdns-client [cache_file]=httpdns-client [doh_answer]=httpdns-client
  [query_string]=router-server [dns_query]=router-server
)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(node_record command binding block_entry policy query_string httpdns_answer cache_file dns_query doh_answer)
for t in "${targets[@]}"; do
  [ -n "${crate_of[$t]:-}" ] || { echo "unknown fuzz target $t (known: ${!crate_of[*]})"; exit 2; }
done
# Every fuzz crate's targets are listed above, so none is left out of CI.
for d in */fuzz; do
  for f in "$d"/fuzz_targets/*.rs; do
    t=$(basename "$f" .rs)
    [ "${crate_of[$t]:-}/fuzz" = "$d" ] || { echo "fuzz target $f is not listed in scripts/fuzz.sh"; exit 1; }
  done
done

scripts/deps.sh
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --quiet --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
built=" "
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  dir="${crate_of[$t]}/fuzz"
  if [[ "$built" != *" $dir "* ]]; then
    (cd "$dir" && cargo fuzz build -s none --release >/dev/null)
    built="$built$dir "
  fi
  # A target without a committed corpus would start from nothing, or (libFuzzer) not
  # start at all and still look like it passed.
  if [ -z "$(ls -A "$dir/corpus/$t" 2>/dev/null)" ]; then
    echo "fuzz target $t has no committed corpus ($dir/corpus/$t)"; exit 1
  fi
  mkdir -p "$scratch/$t"
  echo "fuzzing $t for ${secs}s"
  log="$scratch/$t.log"
  (cd "$dir" && cargo fuzz run -s none --release "$t" "$scratch/$t" "corpus/$t" -- \
     -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1) || true
  grep -E "^(Done|stat::number_of_executed_units)|ERROR|panicked" "$log" || true
  # cargo fuzz exits non-zero on a crash; look for the artifact.
  if ls "$dir"/artifacts/"$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $t crashed; inputs:"; ls "$dir"/artifacts/"$t"/
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

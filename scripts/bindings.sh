#!/usr/bin/env bash
# Builds the SDK's native library (bindings/, uniffi) and generates its Kotlin, Swift
# and Python sources beside it.
#
#   scripts/bindings.sh                         # debug build into target/bindings (CARGO_TARGET_DIR honoured)
#   scripts/bindings.sh --release               # what apps ship: the `sdk` profile
#                                               #   (size-optimised, LTO, stripped) and
#                                               #   its size against the 3 MB goal
#   scripts/bindings.sh --out DIR --languages kotlin,python
#
# Kotlin and Python are compiled and run by the tests (tests/tests/bindings.rs). Swift
# is generated here but cannot be compiled on Linux; it is built on macOS with Xcode.
# Android's .so files come from `cargo ndk` with the Android NDK (see docs/sdk.md).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
# Cargo's target directory, wherever CARGO_TARGET_DIR puts it.
target=${CARGO_TARGET_DIR:-target}
out=$target/bindings
languages=kotlin,python,swift
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=sdk ;;
    --out) out=$2; shift ;;
    --languages) languages=$2; shift ;;
    *) echo "usage: $0 [--release] [--out DIR] [--languages kotlin,python,swift]" >&2; exit 2 ;;
  esac
  shift
done
flags=()
[ "$profile" = sdk ] && flags=(--profile sdk)

# The FFI glue is uniffi's; the crate's own code holds no unsafe.
if grep -rnw --include='*.rs' unsafe bindings/src; then
  echo "bindings/src: no hand-written unsafe code (uniffi generates the FFI glue)" >&2
  exit 1
fi

# A debug build shares one feature set with the generator (uniffi compiled once); the
# release library is built without the generator's code.
lib_features=(--features bindgen)
[ "$profile" = sdk ] && lib_features=()
# Built with its symbols: the generator reads uniffi's metadata from the symbol table;
# the copy apps ship is stripped below.
CARGO_PROFILE_SDK_STRIP=false cargo build --quiet "${flags[@]}" "${lib_features[@]}" -p gateway-sdk-bindings --lib
mkdir -p "$out"
# A copy: a concurrent build may replace target/'s file while it is read.
# (The generator reads the library's metadata; it is built once, in debug.)
cp "$target/$profile/libgateway_sdk.so" "$out/libgateway_sdk.so"
lang_flags=()
IFS=, read -ra langs <<<"$languages"
for l in "${langs[@]}"; do lang_flags+=(-l "$l"); done
cargo run --quiet -p gateway-sdk-bindings --features bindgen --bin uniffi-bindgen -- \
  generate "$out/libgateway_sdk.so" "${lang_flags[@]}" -o "$out" --no-format >/dev/null
# Python ends a thread that calls into the interpreter while it finalizes, by
# unwinding it; a library thread caught waking an awaitable then would abort the
# process. The module waits for those calls at exit, before finalization
# (bindings/src/runtime.rs).
if [[ ",$languages," == *,python,* ]]; then
  cat >>"$out/gateway_sdk.py" <<'PY'

# Added by scripts/bindings.sh: at exit, before the interpreter finalizes, wait for the
# library's threads to leave Python (see `settle`).
import atexit as _uniffi_atexit
_uniffi_atexit.register(settle, 5000)
PY
fi
echo "generated ${languages} bindings and libgateway_sdk.so in $out"

if [ "$profile" = sdk ]; then
  strip --strip-all "$out/libgateway_sdk.so"
  bytes=$(stat -c %s "$out/libgateway_sdk.so")
  awk -v b="$bytes" 'BEGIN { printf "libgateway_sdk.so (release, stripped, x86_64): %d bytes = %.2f MB (goal <= 3 MB): %s\n", b, b / 1048576, (b <= 3 * 1048576 ? "met" : "NOT met") }'
fi

#!/bin/sh
# tools/fuzz.sh [SECONDS] -- builds every libFuzzer target in tests/fuzz with
# clang (-fsanitize=fuzzer,address,undefined) and runs each for SECONDS
# (default 30) on its corpus.  New interesting inputs are kept in a scratch
# corpus; a crash leaves crash-* in build-fuzz/ and fails the run: add that
# input to tests/fuzz/corpus/<target>/ as a regression test.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
secs=${1:-30}
out=$top/build-fuzz
mkdir -p "$out"
command -v clang >/dev/null || { echo "fuzz: clang is not installed (apt-get install clang)" >&2; exit 1; }
CFLAGS="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I$top/server \
  -I$top/agents -DPACKAGE_VERSION=\"fuzz\" $(pkg-config --cflags jansson lua5.4)"
LIBS="$(pkg-config --libs jansson libcrypto lua5.4) -lm"
status=0
for target in frame sfdp flashparts lua_json; do
  src="$top/tests/fuzz/fuzz_$target.c"
  case $target in
    frame) deps="server/frame.c server/util.c server/metrics.c" ;;
    sfdp) deps="server/sfdp.c server/util.c" ;;
    flashparts) deps="server/flashparts.c server/util.c" ;;
    lua_json) deps="agents/runtime.c server/util.c" ;;
  esac
  # shellcheck disable=SC2086
  clang $CFLAGS -o "$out/fuzz_$target" "$src" $(for d in $deps; do echo "$top/$d"; done) $LIBS
  mkdir -p "$out/corpus_$target"
  echo "fuzz: $target for ${secs}s"
  (cd "$out" && ./fuzz_$target -max_total_time="$secs" -max_len=65536 -timeout=10 \
      "corpus_$target" "$top/tests/fuzz/corpus/$target" >"fuzz_$target.log" 2>&1) || {
    echo "fuzz: $target FAILED, see $out/fuzz_$target.log" >&2
    tail -n 30 "$out/fuzz_$target.log" >&2
    status=1
  }
  grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "$out/fuzz_$target.log" | tail -n 1 || true
done
exit $status

#!/bin/sh
# tools/fuzz.sh [SECONDS] -- builds every libFuzzer target in tests/fuzz with
# clang (-fsanitize=fuzzer,address,undefined) and runs each for SECONDS
# (default 30) on its corpus (FUZZ_TARGETS="api frame" picks some).  New interesting inputs are kept in a scratch
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
  -I$top/agents -DPACKAGE_VERSION=\"fuzz\" -DTN_DATADIR=\"/nonexistent\" $(pkg-config --cflags jansson lua5.4)"
LIBS="$(pkg-config --libs jansson libcrypto lua5.4) -lm"
status=0
# The API target links the whole daemon (and its generated sources).
sh "$top/tools/embed-schema.sh" "$top"/schema/0*.sql > "$out/schema_sql.c"
sh "$top/tools/embed-text.sh" flashtable_seed_csv "$top/schema/flash_parts.csv" > "$out/flash_seed.c"
daemon_srcs="$(ls server/*.c agents/*.c | grep -v '^server/main.c$') build-fuzz/schema_sql.c build-fuzz/flash_seed.c"
for target in ${FUZZ_TARGETS:-frame frame_diff sfdp flashparts lua_json agent_env api}; do
  src="$top/tests/fuzz/fuzz_$target.c"
  case $target in
    frame|frame_diff) deps="server/frame.c server/util.c server/metrics.c" ;;
    sfdp) deps="server/sfdp.c server/util.c" ;;
    flashparts) deps="server/flashparts.c server/util.c" ;;
    lua_json) deps="agents/runtime.c agents/lpattern.c server/util.c" ;;
    agent_env) deps="agents/envelope.c server/util.c" ;;
    api) deps="$daemon_srcs" ;;
  esac
  libs=$LIBS
  opts=""
  if [ "$target" = api ]; then
    libs="$(pkg-config --libs libwebsockets libmicrohttpd sqlite3 jansson libcrypto lua5.4) -lev -lpthread -lm"
    # the daemon's threads allocate while an input runs: per-input leak
    # checks would blame them (ASan still checks every access)
    opts="-detect_leaks=0"
  fi
  if [ "$target" = lua_json ]; then
    # the agent lives across inputs, its small Lua blocks in pages LeakSanitizer
    # does not scan (agents/runtime.c): a per-input leak check would blame
    # what only those blocks point to.  Leaks are checked when the corpus is
    # replayed under ASan in make check, where the agent is freed at exit.
    opts="-detect_leaks=0"
  fi
  # shellcheck disable=SC2086
  clang $CFLAGS $(pkg-config --cflags libwebsockets libmicrohttpd sqlite3) -o "$out/fuzz_$target" "$src" \
    $(for d in $deps; do echo "$top/$d"; done) $libs
  mkdir -p "$out/corpus_$target"
  echo "fuzz: $target for ${secs}s"
  (cd "$out" && ./fuzz_$target -max_total_time="$secs" -max_len=65536 -timeout=10 $opts \
      "corpus_$target" "$top/tests/fuzz/corpus/$target" >"fuzz_$target.log" 2>&1) || {
    echo "fuzz: $target FAILED, see $out/fuzz_$target.log" >&2
    tail -n 30 "$out/fuzz_$target.log" >&2
    status=1
  }
  grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "$out/fuzz_$target.log" | tail -n 1 || true
done
exit $status

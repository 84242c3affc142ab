#!/bin/sh
# tools/quickstart.sh -- the README's two commands, on a fresh Debian 12 (as root):
#   tools/quickstart.sh run  [tenderd options]   install, build, start tenderd on ./tender-data
#   tools/quickstart.sh test                     install, build, run every test (plain and
#                                                ASan+UBSan builds), print "N passed, N failed"
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

PKGS="build-essential autoconf automake pkg-config \
  libwebsockets-dev libwebsockets-evlib-ev libev-dev libmicrohttpd-dev libsqlite3-dev libjansson-dev liblua5.4-dev \
  libssl-dev libcurl4-openssl-dev check nodejs node-ws curl sqlite3 openssl"
# only for `test`: the libFuzzer runs, the browser tests (Debian's
# chromium driven by playwright-core from the npm registry), tools/valgrind.sh
TEST_PKGS="clang libclang-rt-14-dev chromium valgrind"

install_packages() {
  missing=""
  for p in $PKGS "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "quickstart: these Debian packages are missing:$missing" >&2
    echo "quickstart: run as root (or: sudo apt-get install$missing)" >&2
    exit 1
  fi
  echo "quickstart: installing$missing"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
}

# build DIR [configure options]: configure once, then make.
build() {
  dir=$1; shift
  [ -x "$top/configure" ] && [ "$top/configure" -nt "$top/configure.ac" ] || (cd "$top" && autoreconf -fi)
  mkdir -p "$top/$dir"
  if [ ! -f "$top/$dir/Makefile" ]; then
    (cd "$top/$dir" && "$top/configure" -q "$@")
  fi
  make -C "$top/$dir" -j"$(nproc)" >/dev/null
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
run)
  install_packages
  build build
  echo "quickstart: starting tenderd (data in ./tender-data; stop with Ctrl-C)"
  exec "$top/build/tenderd" --data-dir "$top/tender-data" "$@"
  ;;
test)
  # npm comes with some Node.js builds and is Debian's package `npm` otherwise.
  if command -v npm >/dev/null 2>&1; then install_packages $TEST_PKGS; else install_packages $TEST_PKGS npm; fi
  if [ ! -f "$top/tests/browser/node_modules/playwright-core/package.json" ]; then
    (cd "$top/tests/browser" && npm install --no-audit --no-fund --loglevel=error)
  fi
  status=0
  # Everything is installed and this runs as root: a test may not skip.
  [ "$(id -u)" = 0 ] && export TENDER_TEST_STRICT=1
  build build
  make -C "$top/build" -j"$(nproc)" check || status=1
  build build-asan --enable-sanitizers
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
    make -C "$top/build-asan" -j"$(nproc)" check || status=1
  # Every parser's fuzzer, for a bounded time (FUZZ_SECONDS each, default 30).
  sh "$top/tools/fuzz.sh" "${FUZZ_SECONDS:-30}" || status=1
  # Two integration tests with tenderd under valgrind memcheck (a few minutes).
  sh "$top/tools/valgrind.sh" "$top/build" || status=1
  sh "$top/tools/test-summary.sh" "$top/build" "$top/build-asan" "$top/build/valgrind" || status=1
  exit $status
  ;;
*)
  echo "usage: tools/quickstart.sh run [tenderd options] | test" >&2
  exit 2
  ;;
esac

#!/bin/sh
# tools/valgrind.sh BUILD_DIR [TEST...] -- runs integration tests (default
# test_01_basics test_02_devices) with every tenderd they start under valgrind
# memcheck, through the harness's TENDERD_WRAPPER.  A definite leak or a
# memory error makes tenderd exit 99, and the harness fails the test whose
# clean stop did not exit 0.  Each test's output goes to
# BUILD_DIR/valgrind/tests/integration/NAME.log with a NAME.trs beside it,
# the form tools/test-summary.sh counts (pass it BUILD_DIR/valgrind), and
# valgrind's own report to NAME.vg.PID.  Exits 1 if any test failed, 77 if
# valgrind is not installed.  VALGRIND_TIMEOUT bounds each test (seconds,
# default 600).
set -u
build=$(cd "${1:?usage: tools/valgrind.sh BUILD_DIR [TEST...]}" && pwd)
shift
top=$(cd "$(dirname "$0")/.." && pwd)
tests=${*:-"test_01_basics test_02_devices"}
command -v valgrind >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)" >&2; exit 77; }
out=$build/valgrind/tests/integration
mkdir -p "$out"
status=0
for t in $tests; do
  make -C "$build" -s "tenderd" "tender-sim" "tenderctl" "tests/integration/$t" >/dev/null || { status=1; continue; }
  rm -f "$out/$t".vg.*
  # Under valgrind tenderd runs ~20x slower: Check's timeouts stretch too.
  TENDERD_WRAPPER="valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite \
--error-exitcode=99 --log-file=$out/$t.vg.%p" \
  TN_BUILDDIR=$build TN_SRCDIR=$top CK_TIMEOUT_MULTIPLIER=5 \
    timeout "${VALGRIND_TIMEOUT:-600}" "$build/tests/integration/$t" >"$out/$t.log" 2>&1
  rc=$?
  # Valgrind's reports (empty when clean) go into the log, for the record.
  for vg in "$out/$t".vg.*; do
    [ -s "$vg" ] && { echo "--- $vg"; cat "$vg"; } >>"$out/$t.log"
  done
  if [ $rc -eq 0 ]; then result=PASS; else result=FAIL; status=1; fi
  printf ':test-result: %s\n' "$result" >"$out/$t.trs"
  echo "valgrind: $result $t" >&2
done
exit $status

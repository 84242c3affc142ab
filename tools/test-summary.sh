#!/bin/sh
# tools/test-summary.sh BUILD_DIR... -- adds up the Check results of every
# test program's log under each build dir and prints "N passed, N failed"
# (automake's harness only counts programs).  A program that died without
# Check's summary line counts as one failed test.  Exits 1 if any failed.
set -u
passed=0
failed=0
skipped=0
for dir in "$@"; do
  for trs in $(find "$dir/tests" -name '*.trs' 2>/dev/null | sort); do
    log=${trs%.trs}.log
    if [ "$(sed -n 's/^:test-result: //p' "$trs")" = "SKIP" ]; then
      echo "test-summary: $log skipped: $(head -n 1 "$log")" >&2
      skipped=$((skipped + 1))
      continue
    fi
    line=$(grep -E '^[0-9]+%: Checks: [0-9]+, Failures: [0-9]+, Errors: [0-9]+' "$log" 2>/dev/null | tail -n 1)
    if [ -n "$line" ]; then
      n=$(echo "$line" | sed -E 's/.*Checks: ([0-9]+),.*/\1/')
      f=$(echo "$line" | sed -E 's/.*Failures: ([0-9]+),.*/\1/')
      e=$(echo "$line" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
      bad=$((f + e))
      result=$(sed -n 's/^:test-result: //p' "$trs")
      # Check passed but the program failed anyway (a sanitizer report at exit).
      if [ "$bad" -eq 0 ] && [ "$result" != "PASS" ]; then bad=1; fi
      passed=$((passed + n - (f + e)))
      failed=$((failed + bad))
    else
      echo "test-summary: $log has no Check summary (crashed?)" >&2
      failed=$((failed + 1))
    fi
  done
done
# The last line is exactly "N passed, N failed" (CI reads it); skips before it.
[ "$skipped" -gt 0 ] && echo "$skipped test programs skipped"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

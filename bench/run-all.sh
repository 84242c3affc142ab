#!/bin/bash
# bench/run-all.sh -- every benchmark in turn, then all their tables together.
# Binaries from TENDERD and TENDER_SIM (default ../build/ beside bench/);
# BENCH_ROUNDS sets the A B rounds of each.  Exits 1 if a benchmark could
# not run; a goal missed is reported in its table, not in the exit status.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$(mktemp -d /tmp/tender-bench-all.XXXXXX) || exit 1
trap 'rm -rf "$OUT"' EXIT
set -o pipefail
status=0
for b in idle_memory events_persisted connect_rate; do
	echo "== $b" >&2
	if ! "$BENCH_DIR/$b.sh" | tee "$OUT/$b.txt"; then
		echo "run-all: $b failed" >&2
		status=1
	fi
done
echo
echo "== all tables"
cat "$OUT"/idle_memory.txt "$OUT"/events_persisted.txt "$OUT"/connect_rate.txt 2>/dev/null
exit $status

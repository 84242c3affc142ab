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
BENCHES="idle_memory agent_memory connect_rate round_trip events_persisted log_fanout firmware_delivery"
for b in $BENCHES; do
	echo "== $b" >&2
	if ! "$BENCH_DIR/$b.sh" | tee "$OUT/$b.txt"; then
		echo "run-all: $b failed" >&2
		status=1
	fi
done
echo
echo "== all tables"
for b in $BENCHES; do
	cat "$OUT/$b.txt" 2>/dev/null
done
exit $status

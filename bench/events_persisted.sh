#!/bin/bash
# bench/events_persisted.sh [EVENTS [DEVICES]] -- device log lines stored per second.
# tenderd (synchronous as shipped): DEVICES devices (default 50) registered
# over the HTTP API send EVENTS log lines in all (default 400000) as fast as
# tender-sim can (--log-count, unpaced); the time runs from the sim's start
# until /metrics tender_events_written_total counts every one of them (and
# the DEVICES "Device connected" events).  The per-device log rate limit
# (--log-rate, 100 lines/s by default, where tenderd has it) is turned off:
# it is a policy, not the storage path measured here.
# Ceiling: bench/sqlite_ceiling.c inserting the same rows into a fresh
# database of the same schema (schema/001_init.sql) in one tight loop, one
# transaction per 1024 rows.  Rounds alternate tenderd, ceiling.  Goal: >= 50%.
# Also the CPU time per stored line: tenderd's (all threads) and tender-sim's,
# against the ceiling's: on 2 cores the load generator takes its share too.

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EVENTS=${1:-400000}
DEVICES=${2:-50}
[[ $EVENTS =~ ^[0-9]+$ ]] && ((EVENTS >= 1000 && EVENTS <= 100000000)) ||
	bench_die "EVENTS: '$EVENTS' is not 1000 to 100000000"
[[ $DEVICES =~ ^[0-9]+$ ]] && ((DEVICES >= 1 && DEVICES <= 10000)) ||
	bench_die "DEVICES: '$DEVICES' is not 1 to 10000"
PER_DEVICE=$((EVENTS / DEVICES))
EVENTS=$((PER_DEVICE * DEVICES))
ID_BASE=$((0x3100000000000000))
SCHEMA=$BENCH_DIR/../schema/001_init.sql
TIMEOUT_S=240

bench_init
LIMIT_NOTE=
if tenderd_has_option --log-rate; then
	TD_ARGS=(--log-rate 0)
	LIMIT_NOTE="; tenderd --log-rate 0"
fi
[ -r "$SCHEMA" ] || bench_die "no schema at $SCHEMA"
CEILING=$BENCH_WORK/sqlite_ceiling
gcc -std=gnu11 -O2 -Wall -Wextra -o "$CEILING" "$BENCH_DIR/sqlite_ceiling.c" -lsqlite3 ||
	bench_die "cannot build sqlite_ceiling (needs gcc and libsqlite3-dev)"
echo "events_persisted: $EVENTS log lines from $DEVICES devices, $ROUNDS rounds (tenderd, ceiling alternating)${LIMIT_NOTE}" >&2

cpu_us() {
	awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1e6 / hz }' "/proc/$1/stat"
}

# tender_round: sets RATE to the log lines per second tenderd stored, CPU and
# SIM_CPU to tenderd's and tender-sim's CPU microseconds per line.
tender_round() {
	local dir=$BENCH_WORK/tenderd creds=$BENCH_WORK/creds w0 w target t0 t1 deadline c0 dropped
	rm -rf "$dir"
	tenderd_start "$dir"
	tenderd_register "$dir" "$DEVICES" "$ID_BASE" "$creds"
	w0=$(tenderd_metric tender_events_written_total)
	target=$((w0 + DEVICES + EVENTS))
	c0=$(cpu_us "$TD_PID")
	t0=$(bench_now_us)
	deadline=$((t0 + TIMEOUT_S * 1000000))
	"$TENDER_SIM" --creds "$creds" --url "ws://127.0.0.1:$TD_DEV_PORT/v1/device" \
		--log-count "$PER_DEVICE" --duration "$TIMEOUT_S" --quiet 2>"$BENCH_WORK/sim.err" &
	SIM_PID=$!
	BENCH_PIDS+=("$SIM_PID")
	while :; do
		w=$(tenderd_metric tender_events_written_total)
		t1=$(bench_now_us)
		((w >= target)) && break
		((t1 < deadline)) || bench_die "tenderd stored $((w - w0)) of $((target - w0)) events in ${TIMEOUT_S}s"
		dropped=$(tenderd_metric 'tender_errors_total{kind="device_log_rate"}')
		((dropped == 0)) || bench_die "tenderd dropped $dropped log lines over its per-device rate limit"
		sleep 0.05
	done
	CPU=$(calc "($(cpu_us "$TD_PID") - $c0) / $EVENTS")
	SIM_CPU=$(calc "$(cpu_us "$SIM_PID") / $EVENTS")
	bench_stop "$SIM_PID"
	bench_log "tenderd: $EVENTS log lines stored in $(calc "($t1 - $t0) / 1e6") s," \
		"$(tenderd_metric tender_store_commits_total) commits; CPU per line:" \
		"tenderd $CPU us, tender-sim $SIM_CPU us"
	tenderd_stop
	RATE=$(calc "$EVENTS / (($t1 - $t0) / 1e6)")
}

# ceiling_round: sets RATE to the ceiling's rows per second.
ceiling_round() {
	local db=$BENCH_WORK/ceiling.db out
	rm -f "$db" "$db-wal" "$db-shm"
	out=$("$CEILING" "$db" "$SCHEMA" "$EVENTS" "$DEVICES" 1024) || bench_die "sqlite_ceiling failed"
	bench_log "ceiling: $out"
	RATE=$(echo "$out" | awk '{ print $6 }')
	CPU=$(echo "$out" | awk '{ print $8 * 1e6 / $2 }')
	rm -f "$db" "$db-wal" "$db-shm"
}

td=() ce=() tu=() su=() cu=()
for ((r = 1; r <= ROUNDS; r++)); do
	tender_round
	td+=("$RATE") tu+=("$CPU") su+=("$SIM_CPU")
	bench_log "round $r tenderd: $RATE lines/s"
	ceiling_round
	ce+=("$RATE") cu+=("$CPU")
	bench_log "round $r ceiling: $RATE rows/s"
done

t=$(mean "${td[@]}")
p=$(mean "${ce[@]}")
ratio=$(calc "$t / $p")
goal=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.5 ? ">= 50% of ceiling: met" : ">= 50% of ceiling: MISSED") }')
table_row "events persisted, lines/s" "$(printf '%.0f' "$t")" "$(printf '%.0f' "$p")" \
	"$(calc "$ratio * 100" | xargs printf '%.0f%%')" "$goal"
t=$(mean "${tu[@]}")
p=$(mean "${cu[@]}")
table_row "CPU per stored line" "$(printf '%.1f us (+%.1f us sim)' "$t" "$(mean "${su[@]}")")" \
	"$(printf '%.1f us' "$p")" "$(calc "$t / $p" | xargs printf '%.2fx')" "(explains the row above)"
table_print "events_persisted ($(date -u +%F), $(nproc) cores, mean of $ROUNDS rounds; peer: raw SQLite $(sqlite3 --version 2>/dev/null | cut -d' ' -f1) inserts, 1024 rows a transaction$LIMIT_NOTE)"

#!/bin/bash
# bench/log_fanout.sh [SUBSCRIBERS [RATE [SECONDS]]] -- one device's events
# to many live log streams: delivery latency.
# One device sends log lines at RATE per second (default 1000) for SECONDS
# (default 10), each carrying its send time (tender-sim --log-text
# 'fanout t=%t', wall clock in microseconds); SUBSCRIBERS (default 1000)
# Server-Sent Events readers (bench/sse_fanout.c, built here with gcc) follow
# the device's log (GET /v1/devices/{id}/logs, Accept: text/event-stream)
# and time every line from its send time to its receipt: p50 and p99 over
# all deliveries.  tenderd runs with --log-rate 0 (its per-device limit of
# 100 lines/s is a policy, not the path measured) and --http-max-conns
# SUBSCRIBERS + 64.  There is no peer server; beside it, in the same run,
# the same with one subscriber: the floor the fan-out adds to.  Rounds
# alternate SUBSCRIBERS, 1.  Goal: p99 <= 50 ms at 1,000 events/s.
# Also printed per round: the client's split of the latency (up to the
# server's send() / from there to the client's read, from the kernel's
# receive timestamps: which side is behind), the client's own CPU time, and
# tenderd's CPU time per delivery (from the first line sent to the last one
# received).  BENCH_PERF=FILE records tenderd with perf record -g during the
# SUBSCRIBERS rounds; BENCH_PERF=stat:EVENTS counts EVENTS with perf stat
# (e.g. stat:syscalls:sys_enter_sendto,context-switches).

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUBS=${1:-1000}
RATE=${2:-1000}
SECS=${3:-10}
[[ $SUBS =~ ^[0-9]+$ ]] && ((SUBS >= 1 && SUBS <= 15000)) || bench_die "SUBSCRIBERS: '$SUBS' is not 1 to 15000"
[[ $RATE =~ ^[0-9]+$ ]] && ((RATE >= 1)) || bench_die "RATE: '$RATE' is not a positive integer"
[[ $SECS =~ ^[0-9]+$ ]] && ((SECS >= 1 && SECS <= 600)) || bench_die "SECONDS: '$SECS' is not 1 to 600"
EVENTS=$((RATE * SECS))
ID_BASE=$((0x4300000000000000))

bench_init
FANOUT=$BENCH_WORK/sse_fanout
gcc -std=gnu11 -O2 -Wall -Wextra -o "$FANOUT" "$BENCH_DIR/sse_fanout.c" ||
	bench_die "cannot build sse_fanout (needs gcc)"
TD_ARGS=(--log-rate 0 --http-max-conns $((SUBS + 64)))
echo "log_fanout: $SUBS subscribers, one device at $RATE lines/s for ${SECS}s, $ROUNDS rounds ($SUBS, 1 alternating)" >&2

TD_DIR=$BENCH_WORK/tenderd
CREDS=$BENCH_WORK/creds
tenderd_start "$TD_DIR"
tenderd_register "$TD_DIR" 1 "$ID_BASE" "$CREDS"
tenderd_stop
DEV=$(awk '{ print $1 }' "$CREDS")

# cpu_us PID: user and system CPU time of PID so far, in microseconds.
cpu_us() {
	awk -v hz="$(getconf CLK_TCK)" '{ printf "%d %d\n", $14 * 1e6 / hz, $15 * 1e6 / hz }' "/proc/$1/stat"
}

# fanout SUBSCRIBERS: sets P50, P99 (us), SENT_RATE (lines/s the device sent)
# and CPU_DLV (tenderd's CPU time per delivery, us, from the first line sent
# to the last one received).
fanout() {
	local subs=$1 i out=$BENCH_WORK/fanout.out t0 t1 fpid c0 c1
	tenderd_start "$TD_DIR"
	: >"$out"
	"$FANOUT" "$TD_HTTP_PORT" "/v1/devices/$DEV/logs" "$(cat "$TD_DIR/admin.token")" \
		"$subs" "$EVENTS" $((SECS + 60)) >"$out" 2>"$BENCH_WORK/fanout.err" &
	fpid=$!
	BENCH_PIDS+=("$fpid")
	for ((i = 0; i < 600; i++)); do
		grep -q ready "$out" && break
		kill -0 "$fpid" 2>/dev/null || break
		sleep 0.1
	done
	grep -q ready "$out" || { cat "$BENCH_WORK/fanout.err" >&2; bench_die "the subscribers did not all connect"; }
	c0=($(cpu_us "$TD_PID"))
	local perf_pid=
	if [ -n "${BENCH_PERF:-}" ] && ((subs > 1)); then
		case $BENCH_PERF in
		stat:*) perf stat -e "${BENCH_PERF#stat:}" -p "$TD_PID" 2>"$BENCH_WORK/perf.stat" & ;;
		*) perf record -q -g -o "$BENCH_PERF" -p "$TD_PID" 2>/dev/null & ;;
		esac
		perf_pid=$!
		BENCH_PIDS+=("$perf_pid")
	fi
	t0=$(bench_now_us)
	"$TENDER_SIM" --creds "$CREDS" --url "ws://127.0.0.1:$TD_DEV_PORT/v1/device" \
		--log-rate "$RATE" --log-count "$EVENTS" --log-text 'fanout t=%t' \
		--exit-when-done --quiet --duration $((SECS + 60)) 2>"$BENCH_WORK/sim.err" ||
		{ cat "$BENCH_WORK/sim.err" >&2; bench_die "tender-sim failed"; }
	t1=$(bench_now_us)
	wait "$fpid" || head -3 "$BENCH_WORK/fanout.err" >&2
	c1=($(cpu_us "$TD_PID"))
	if [ -n "$perf_pid" ]; then
		bench_stop "$perf_pid" INT
		[ -s "$BENCH_WORK/perf.stat" ] && grep -E "^ +[0-9]" "$BENCH_WORK/perf.stat" | sed "s/^/    /" >&2
	fi
	bench_forget "$fpid"
	tenderd_stop
	bench_log "$subs subscribers: $(grep deliveries "$out")"
	bench_log "$subs subscribers: $(grep '^split' "$out")"
	bench_log "$subs subscribers: $(grep '^client' "$out")"
	P50=$(sed -n "/^deliveries/s/.*p50 \([0-9]*\) us.*/\1/p" "$out")
	P99=$(sed -n "/^deliveries/s/.*p99 \([0-9]*\) us.*/\1/p" "$out")
	SENT_RATE=$(calc "$EVENTS / (($t1 - $t0) / 1e6)")
	# Streams cut off as too slow (--stream-queue) lose the rest: counted.
	LOST=$(awk '/^deliveries/ { print $4 - $2 }' "$out")
	local got
	got=$(awk '/^deliveries/ { print $2 }' "$out")
	CPU_DLV=$(calc "(${c1[0]} + ${c1[1]} - ${c0[0]} - ${c0[1]}) / ($got > 0 ? $got : 1)")
	bench_log "$subs subscribers: tenderd CPU $(calc "(${c1[0]} - ${c0[0]}) / 1e6") s user, $(calc "(${c1[1]} - ${c0[1]}) / 1e6") s system: $CPU_DLV us per delivery"
}

fp50=() fp99=() fcpu=() op50=() op99=() ocpu=() lost=0
for ((r = 1; r <= ROUNDS; r++)); do
	fanout "$SUBS"
	fp50+=("$P50") fp99+=("$P99") fcpu+=("$CPU_DLV") lost=$((lost + LOST))
	bench_log "round $r $SUBS subscribers: p50 $P50 us, p99 $P99 us, $CPU_DLV us CPU per delivery (device sent $SENT_RATE lines/s)"
	fanout 1
	op50+=("$P50") op99+=("$P99") ocpu+=("$CPU_DLV")
	bench_log "round $r 1 subscriber: p50 $P50 us, p99 $P99 us, $CPU_DLV us CPU per delivery"
done

us_row() {	# FIGURE T P GOAL
	table_row "$1" "$(calc "$2 / 1000" | xargs printf '%.1f ms')" "$(calc "$3 / 1000" | xargs printf '%.1f ms')" \
		"$(calc "$2 / $3" | xargs printf '%.2fx')" "$4"
}
t=$(mean "${fp50[@]}") p=$(mean "${op50[@]}")
us_row "log line delivery p50, $SUBS subscribers, $RATE/s" "$t" "$p" "(reference)"
t=$(mean "${fp99[@]}") p=$(mean "${op99[@]}")
us_row "log line delivery p99, $SUBS subscribers, $RATE/s" "$t" "$p" \
	"$(awk -v t="$t" -v l="$lost" 'BEGIN { print (t <= 50000 && !l ? "<= 50 ms: met" : "<= 50 ms: MISSED") }')"
# The peer's CPU is per line with one subscriber: the device's whole path.
t=$(mean "${fcpu[@]}") p=$(mean "${ocpu[@]}")
table_row "tenderd CPU per delivery, $SUBS subscribers" "$(printf '%.2f us' "$t")" "$(printf '%.0f us' "$p")" "" \
	"(reference)"
((lost)) && table_row "deliveries lost (streams cut off as too slow)" "$lost" "" "" "(none allowed)"
table_print "log_fanout ($(date -u +%F), $(nproc) cores, mean of $ROUNDS rounds; peer: the same tenderd with 1 subscriber; tenderd --log-rate 0)"

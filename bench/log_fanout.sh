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

# fanout SUBSCRIBERS: sets P50, P99 (us) and SENT_RATE (lines/s the device sent).
fanout() {
	local subs=$1 i out=$BENCH_WORK/fanout.out t0 t1 fpid
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
	t0=$(bench_now_us)
	"$TENDER_SIM" --creds "$CREDS" --url "ws://127.0.0.1:$TD_DEV_PORT/v1/device" \
		--log-rate "$RATE" --log-count "$EVENTS" --log-text 'fanout t=%t' \
		--exit-when-done --quiet --duration $((SECS + 60)) 2>"$BENCH_WORK/sim.err" ||
		{ cat "$BENCH_WORK/sim.err" >&2; bench_die "tender-sim failed"; }
	t1=$(bench_now_us)
	wait "$fpid" || head -3 "$BENCH_WORK/fanout.err" >&2
	bench_forget "$fpid"
	tenderd_stop
	bench_log "$subs subscribers: $(grep deliveries "$out")"
	P50=$(sed -n 's/.*p50 \([0-9]*\) us.*/\1/p' "$out")
	P99=$(sed -n 's/.*p99 \([0-9]*\) us.*/\1/p' "$out")
	SENT_RATE=$(calc "$EVENTS / (($t1 - $t0) / 1e6)")
	# Streams cut off as too slow (--stream-queue) lose the rest: counted.
	LOST=$(awk '/^deliveries/ { print $4 - $2 }' "$out")
}

fp50=() fp99=() op50=() op99=() lost=0
for ((r = 1; r <= ROUNDS; r++)); do
	fanout "$SUBS"
	fp50+=("$P50") fp99+=("$P99") lost=$((lost + LOST))
	bench_log "round $r $SUBS subscribers: p50 $P50 us, p99 $P99 us (device sent $SENT_RATE lines/s)"
	fanout 1
	op50+=("$P50") op99+=("$P99")
	bench_log "round $r 1 subscriber: p50 $P50 us, p99 $P99 us"
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
((lost)) && table_row "deliveries lost (streams cut off as too slow)" "$lost" "" "" "(none allowed)"
table_print "log_fanout ($(date -u +%F), $(nproc) cores, mean of $ROUNDS rounds; peer: the same tenderd with 1 subscriber; tenderd --log-rate 0)"

#!/bin/bash
# bench/round_trip.sh [DEVICES [RATE]] -- device -> agent -> device round trips.
# tenderd: DEVICES devices (default 100) in a group running the echo agent
# (agents/examples/echo.lua); each sends msg "echo" {"seq":n} and expects it
# back (tender-sim --expect), first at a fixed offered rate (RATE round trips
# per second in all, default 2000, for FIXED_S seconds): latency p50 and p99;
# then as fast as it can (each device keeps up to 256 in flight, MAX_PER_DEV
# each): the sustained rate, from the first reply to the last.  Peer:
# mosquitto, the same tender-sim in --mqtt mode, each client publishing to a
# topic it subscribes to (QoS 0), mosquitto with set_tcp_nodelay true (its
# default leaves Nagle on, which puts 40 ms delayed-ACK stalls in a round
# trip; tenderd's sockets have TCP_NODELAY, as lws sets it).  Rounds
# alternate tenderd, mosquitto.  Goals: p99 <= mosquitto's; >= 100,000/s.

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${1:-100}
RATE=${2:-2000}
[[ $DEVICES =~ ^[0-9]+$ ]] && ((DEVICES >= 1 && DEVICES <= 10000)) || bench_die "DEVICES: '$DEVICES' is not 1 to 10000"
[[ $RATE =~ ^[0-9]+$ ]] && ((RATE >= 1)) || bench_die "RATE: '$RATE' is not a positive integer"
FIXED_S=${FIXED_S:-10}
MAX_PER_DEV=${MAX_PER_DEV:-3000}
ID_BASE=$((0x4200000000000000))
ECHO=$BENCH_DIR/../agents/examples/echo.lua
TIMEOUT_S=120

bench_init
bench_need_mosquitto
[ -r "$ECHO" ] || bench_die "no echo agent at $ECHO"
echo "round_trip: $DEVICES devices, $RATE/s for ${FIXED_S}s, then unpaced ($MAX_PER_DEV each), $ROUNDS rounds (tenderd, mosquitto alternating)" >&2

TD_DIR=$BENCH_WORK/tenderd
CREDS=$BENCH_WORK/creds
tenderd_start "$TD_DIR"
tenderd_register "$TD_DIR" "$DEVICES" "$ID_BASE" "$CREDS" benchecho
tenderd_deploy "$TD_DIR" benchecho "$ECHO"
tenderd_stop

cpu_us() {
	awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1e6 / hz }' "/proc/$1/stat"
}

# trips PID URL [--mqtt]: sets P50, P99 (us) at the fixed rate, MAX (round
# trips per second unpaced) and CPU (the server's us per round trip, unpaced).
trips() {
	local pid=$1 url=$2 per summary c0 n
	shift 2
	per=$(calc "$RATE / $DEVICES")
	n=$(printf '%.0f' "$(calc "$per * $FIXED_S")")
	"$TENDER_SIM" --creds "$CREDS" --url "$url" "$@" --msg-name echo --expect echo \
		--msg-rate "$per" --msg-count "$n" --exit-when-done --quiet --duration "$TIMEOUT_S" \
		2>"$BENCH_WORK/fixed.err" || { cat "$BENCH_WORK/fixed.err" >&2; bench_die "fixed rate: replies missing"; }
	summary=$(grep 'replies of' "$BENCH_WORK/fixed.err")
	P50=$(echo "$summary" | sed -n 's/.*p50 \([0-9]*\) us.*/\1/p')
	P99=$(echo "$summary" | sed -n 's/.*p99 \([0-9]*\) us.*/\1/p')
	bench_log "fixed: $summary"
	c0=$(cpu_us "$pid")
	"$TENDER_SIM" --creds "$CREDS" --url "$url" "$@" --msg-name echo --expect echo \
		--msg-count "$MAX_PER_DEV" --exit-when-done --quiet --duration "$TIMEOUT_S" \
		2>"$BENCH_WORK/max.err" || { cat "$BENCH_WORK/max.err" >&2; bench_die "unpaced: replies missing"; }
	CPU=$(calc "($(cpu_us "$pid") - $c0) / ($DEVICES * $MAX_PER_DEV)")
	summary=$(grep 'replies of' "$BENCH_WORK/max.err")
	MAX=$(echo "$summary" | sed -n 's/.* \([0-9]*\) replies\/s.*/\1/p')
	bench_log "unpaced: $summary"
}

# tenderd's agents start at the first event: have them all running first.
warm_agents() {
	"$TENDER_SIM" --creds "$CREDS" --url "ws://127.0.0.1:$TD_DEV_PORT/v1/device" \
		--msg-name echo --expect echo --msg-count 1 --exit-when-done --quiet \
		--duration "$TIMEOUT_S" 2>"$BENCH_WORK/warm.err" ||
		{ cat "$BENCH_WORK/warm.err" >&2; bench_die "the echo agents did not answer"; }
}

tp50=() tp99=() tmax=() tcpu=() mp50=() mp99=() mmax=() mcpu=()
for ((r = 1; r <= ROUNDS; r++)); do
	tenderd_start "$TD_DIR"
	warm_agents
	trips "$TD_PID" "ws://127.0.0.1:$TD_DEV_PORT/v1/device"
	tenderd_stop
	tp50+=("$P50") tp99+=("$P99") tmax+=("$MAX") tcpu+=("$CPU")
	bench_log "round $r tenderd: p50 $P50 us, p99 $P99 us at $RATE/s; $MAX/s unpaced, $CPU us CPU each"

	MQ_EXTRA_CONF="set_tcp_nodelay true" mosquitto_start "$BENCH_WORK/mosquitto"
	trips "$MQ_PID" "mqtt://127.0.0.1:$MQ_PORT" --mqtt
	mosquitto_stop
	mp50+=("$P50") mp99+=("$P99") mmax+=("$MAX") mcpu+=("$CPU")
	bench_log "round $r mosquitto: p50 $P50 us, p99 $P99 us at $RATE/s; $MAX/s unpaced, $CPU us CPU each"
done

us_row() {	# FIGURE T P GOAL
	table_row "$1" "$(printf '%.0f us' "$2")" "$(printf '%.0f us' "$3")" \
		"$(calc "$2 / $3" | xargs printf '%.2fx')" "$4"
}
t=$(mean "${tp50[@]}") p=$(mean "${mp50[@]}")
us_row "round trip p50 at $RATE/s, $DEVICES devices" "$t" "$p" "(reference)"
t=$(mean "${tp99[@]}") p=$(mean "${mp99[@]}")
us_row "round trip p99 at $RATE/s" "$t" "$p" \
	"$(awk -v t="$t" -v p="$p" 'BEGIN { print (t <= p ? "<= mosquitto: met" : "<= mosquitto: MISSED") }')"
t=$(mean "${tmax[@]}") p=$(mean "${mmax[@]}")
table_row "max sustained round trips/s" "$(printf '%.0f/s' "$t")" "$(printf '%.0f/s' "$p")" \
	"$(calc "$t / $p" | xargs printf '%.2fx')" \
	"$(awk -v t="$t" 'BEGIN { print (t >= 100000 ? ">= 100000/s: met" : ">= 100000/s: MISSED") }')"
t=$(mean "${tcpu[@]}") p=$(mean "${mcpu[@]}")
us_row "server CPU per round trip" "$t" "$p" "(explains the row above)"
table_print "round_trip ($(date -u +%F), $(nproc) cores, mean of $ROUNDS rounds; peer: mosquitto $("$MOSQUITTO" -h 2>/dev/null | sed -n 's/.*version \([0-9.]*\).*/\1/p') set_tcp_nodelay, same client)"

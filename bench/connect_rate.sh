#!/bin/bash
# bench/connect_rate.sh [N] -- devices connected and welcomed per second.
# Cold: a freshly started server, one tender-sim with N devices (default
# 5000), timed from the sim's start to its Nth distinct welcome line.  Storm:
# then kill -9 the sim and start it again at once; timed the same way, while
# the server is still dropping the dead connections.  tenderd (devices
# registered over the HTTP API beforehand) versus mosquitto with the same
# client code (tender-sim --mqtt: a welcome is a CONNACK).  Also the server's
# CPU time (user + system, all threads) per connect, cold and storm together:
# the figure least moved by the other load on a shared machine.  Rounds
# alternate tenderd, mosquitto.  Goal: >= mosquitto.
# At most 64 connects are in flight (--max-pending 64): mosquitto listens
# with a backlog of 100, and more would overflow it, so that the time would
# be TCP's 1 s SYN retransmit rather than either server.

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-5000}
[[ $N =~ ^[0-9]+$ ]] && ((N >= 1 && N <= 19000)) || bench_die "N: '$N' is not 1 to 19000"
ID_BASE=$((0x5000000000000000))
TIMEOUT_S=120
MAX_PENDING=64

bench_init
bench_need_mosquitto
echo "connect_rate: $N devices, cold then a reconnect storm, $ROUNDS rounds (tenderd, mosquitto alternating)" >&2

TD_DIR=$BENCH_WORK/tenderd
CREDS=$BENCH_WORK/creds
tenderd_start "$TD_DIR"
tenderd_register "$TD_DIR" "$N" "$ID_BASE" "$CREDS"
tenderd_stop

cpu_ticks() {
	awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# connects PID URL [--mqtt]: sets COLD and STORM to devices welcomed per
# second, CPU to the server's CPU microseconds per connect.
connects() {
	local pid=$1 us c0
	shift
	c0=$(cpu_ticks "$pid")
	sim_start "$BENCH_WORK/sim" "$N" --creds "$CREDS" --max-pending "$MAX_PENDING" --url "$@" --duration 600
	us=$(sim_wait_welcomed "$BENCH_WORK/sim" "$TIMEOUT_S") || bench_die "cold: not all $N devices were welcomed"
	COLD=$(calc "$N / ($us / 1e6)")
	sim_stop KILL
	sim_start "$BENCH_WORK/sim" "$N" --creds "$CREDS" --max-pending "$MAX_PENDING" --url "$@" --duration 600
	us=$(sim_wait_welcomed "$BENCH_WORK/sim" "$TIMEOUT_S") || bench_die "storm: not all $N devices were welcomed"
	STORM=$(calc "$N / ($us / 1e6)")
	CPU=$(calc "($(cpu_ticks "$pid") - $c0) * 1e6 / $(getconf CLK_TCK) / (2 * $N)")
	sim_stop
}

tc=() ts=() tu=() mc=() ms=() mu=()
for ((r = 1; r <= ROUNDS; r++)); do
	tenderd_start "$TD_DIR"
	connects "$TD_PID" "ws://127.0.0.1:$TD_DEV_PORT/v1/device"
	tenderd_stop
	tc+=("$COLD") ts+=("$STORM") tu+=("$CPU")
	bench_log "round $r tenderd: cold $COLD/s, storm $STORM/s, $CPU us CPU/connect"

	mosquitto_start "$BENCH_WORK/mosquitto"
	connects "$MQ_PID" "mqtt://127.0.0.1:$MQ_PORT" --mqtt
	mosquitto_stop
	mc+=("$COLD") ms+=("$STORM") mu+=("$CPU")
	bench_log "round $r mosquitto: cold $COLD/s, storm $STORM/s, $CPU us CPU/connect"
done

# row FIGURE TENDER_MEAN PEER_MEAN
row() {
	local ratio
	ratio=$(calc "$2 / $3")
	table_row "$1" "$(printf '%.0f/s' "$2")" "$(printf '%.0f/s' "$3")" "$(printf '%.2fx' "$ratio")" \
		"$(awk -v r="$ratio" 'BEGIN { print (r >= 1 ? ">= mosquitto: met" : ">= mosquitto: MISSED") }')"
}
row "connect rate from cold, N=$N" "$(mean "${tc[@]}")" "$(mean "${mc[@]}")"
row "reconnect storm, N=$N" "$(mean "${ts[@]}")" "$(mean "${ms[@]}")"
t=$(mean "${tu[@]}")
p=$(mean "${mu[@]}")
table_row "server CPU per connect" "$(printf '%.0f us' "$t")" "$(printf '%.0f us' "$p")" \
	"$(calc "$t / $p" | xargs printf '%.2fx')" "(explains the rows above)"
table_print "connect_rate ($(date -u +%F), $(nproc) cores, mean of $ROUNDS rounds; peer: mosquitto $("$MOSQUITTO" -h 2>/dev/null | sed -n 's/.*version \([0-9.]*\).*/\1/p'), same client)"

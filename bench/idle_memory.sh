#!/bin/bash
# bench/idle_memory.sh [N] -- memory per connected idle device, tenderd vs mosquitto.
# tenderd: VmRSS after N devices are connected and welcomed (no agent, no
# traffic) minus VmRSS before, over N.  mosquitto: the same for N idle MQTT
# clients of tender-sim --mqtt.  Rounds alternate tenderd, mosquitto.
# N defaults to 5000 (one tender-sim process; at most 19000 here).

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-5000}
[[ $N =~ ^[0-9]+$ ]] && ((N >= 1 && N <= 19000)) || bench_die "N: '$N' is not 1 to 19000"
SETTLE=2		# seconds after the last welcome before RSS is read
ID_BASE=$((0x4000000000000000))

bench_init
bench_need_mosquitto
echo "idle_memory: $N idle devices, $ROUNDS rounds (tenderd, mosquitto alternating)" >&2

TD_DIR=$BENCH_WORK/tenderd
CREDS=$BENCH_WORK/creds
tenderd_start "$TD_DIR"
tenderd_register "$TD_DIR" "$N" "$ID_BASE" "$CREDS"
tenderd_stop

# measure PID URL [--mqtt]: sets PER_DEVICE to the RSS delta per device in bytes.
measure() {
	local pid=$1 url=$2 before after
	shift 2
	sleep 0.5
	before=$(bench_rss_kb "$pid")
	sim_start "$BENCH_WORK/sim" "$N" --creds "$CREDS" --url "$url" --max-pending 64 \
		--duration 600 "$@"
	sim_wait_welcomed "$BENCH_WORK/sim" 120 >/dev/null || bench_die "not all $N devices were welcomed"
	sleep "$SETTLE"
	after=$(bench_rss_kb "$pid")
	sim_stop
	bench_log "RSS ${before} kB -> ${after} kB"
	PER_DEVICE=$(calc "($after - $before) * 1024 / $N")
}

td=() mq=()
for ((r = 1; r <= ROUNDS; r++)); do
	tenderd_start "$TD_DIR"
	measure "$TD_PID" "ws://127.0.0.1:$TD_DEV_PORT/v1/device"
	td+=("$PER_DEVICE")
	tenderd_stop
	bench_log "round $r tenderd: ${td[-1]} bytes/device"

	mosquitto_start "$BENCH_WORK/mosquitto"
	measure "$MQ_PID" "mqtt://127.0.0.1:$MQ_PORT" --mqtt
	mq+=("$PER_DEVICE")
	mosquitto_stop
	bench_log "round $r mosquitto: ${mq[-1]} bytes/device"
done

t=$(mean "${td[@]}")
p=$(mean "${mq[@]}")
goal=$(awk -v t="$t" 'BEGIN { print (t <= 2048 ? "<= 2 KB: met" : "<= 2 KB: MISSED") }')
table_row "memory per idle device, N=$N" "$(calc "$t / 1024" | xargs printf '%.2f KB')" \
	"$(calc "$p / 1024" | xargs printf '%.2f KB')" "$(calc "$t / $p" | xargs printf '%.2fx')" "$goal"
table_print "idle_memory ($(date -u +%F), $(nproc) cores, mean of $ROUNDS rounds; peer: mosquitto $("$MOSQUITTO" -h 2>/dev/null | sed -n 's/.*version \([0-9.]*\).*/\1/p'))"

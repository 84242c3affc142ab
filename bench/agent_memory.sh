#!/bin/bash
# bench/agent_memory.sh [N] -- memory per connected device with a small agent.
# N devices (default 2000) in one group whose agent is bench/small_agent.lua
# (a counter saved with server.save at every connect, a message handler and
# a timer): VmRSS once all are welcomed and every agent has started, minus
# VmRSS before, over N.  Beside it, in the same run, the same tenderd with
# the same devices in a group without agent code (the idle figure), so the
# agent's own share is the difference.  Rounds alternate agent, no agent.
# There is no peer server to run here; the goal is absolute: <= 16 KB.

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-2000}
[[ $N =~ ^[0-9]+$ ]] && ((N >= 1 && N <= 19000)) || bench_die "N: '$N' is not 1 to 19000"
SETTLE=2		# seconds after the last agent start before RSS is read
TIMEOUT_S=120
ID_BASE=$((0x4100000000000000))
AGENT=$BENCH_DIR/small_agent.lua

bench_init
echo "agent_memory: $N devices with a small agent, $ROUNDS rounds (agent, no agent alternating)" >&2

TD_DIR=$BENCH_WORK/tenderd
CREDS=$BENCH_WORK/creds
CREDS_IDLE=$BENCH_WORK/creds.idle
tenderd_start "$TD_DIR"
tenderd_register "$TD_DIR" "$N" "$ID_BASE" "$CREDS" benchagents
tenderd_register "$TD_DIR" "$N" $((ID_BASE + 0x10000000)) "$CREDS_IDLE" benchidle
tenderd_deploy "$TD_DIR" benchagents "$AGENT"
tenderd_stop

# measure CREDS WANT_EVENTS: sets PER_DEVICE to the RSS delta per device in
# bytes, once WANT_EVENTS events per device have been stored (Device
# connected, and Agent started when there is an agent).
measure() {
	local creds=$1 want=$2 before after w0 w i id js
	tenderd_start "$TD_DIR"
	sleep 0.5
	before=$(bench_rss_kb "$TD_PID")
	w0=$(tenderd_metric tender_events_written_total)
	sim_start "$BENCH_WORK/sim" "$N" --creds "$creds" --url "ws://127.0.0.1:$TD_DEV_PORT/v1/device" \
		--max-pending 64 --duration 600
	sim_wait_welcomed "$BENCH_WORK/sim" "$TIMEOUT_S" >/dev/null || bench_die "not all $N devices were welcomed"
	for ((i = 0; i < TIMEOUT_S * 10; i++)); do
		w=$(tenderd_metric tender_events_written_total)
		((w - w0 >= want * N)) && break
		sleep 0.1
	done
	((w - w0 >= want * N)) || bench_die "only $((w - w0)) of $((want * N)) events stored"
	sleep "$SETTLE"
	after=$(bench_rss_kb "$TD_PID")
	if ((want > 1)); then
		id=$(awk 'NR == 1 { print $1 }' "$creds")
		js=$(tenderd_api "$TD_DIR" GET "/v1/devices/$id/agent")
		case $js in *'"state":"running"'*) ;; *) bench_die "the agent of $id is not running: $js" ;; esac
		LUA_BYTES=$(echo "$js" | sed -n 's/.*"memory":\([0-9]*\).*/\1/p')
		bench_log "one agent's Lua heap (GET /v1/devices/$id/agent): $LUA_BYTES bytes"
	fi
	sim_stop
	tenderd_stop
	bench_log "RSS ${before} kB -> ${after} kB"
	PER_DEVICE=$(calc "($after - $before) * 1024 / $N")
}

ag=() id=() lua=()
for ((r = 1; r <= ROUNDS; r++)); do
	measure "$CREDS" 2
	ag+=("$PER_DEVICE") lua+=("${LUA_BYTES:-0}")
	bench_log "round $r with agent: $PER_DEVICE bytes/device"
	measure "$CREDS_IDLE" 1
	id+=("$PER_DEVICE")
	bench_log "round $r no agent: $PER_DEVICE bytes/device"
done

t=$(mean "${ag[@]}")
p=$(mean "${id[@]}")
goal=$(awk -v t="$t" 'BEGIN { print (t <= 16384 ? "<= 16 KB: met" : "<= 16 KB: MISSED") }')
table_row "memory per device with a small agent, N=$N" "$(calc "$t / 1024" | xargs printf '%.2f KB')" \
	"$(calc "$p / 1024" | xargs printf '%.2f KB')" "$(calc "$t / $p" | xargs printf '%.2fx')" "$goal"
table_row "the agent's own share" "$(calc "($t - $p) / 1024" | xargs printf '%.2f KB')" "" "" "(the difference)"
table_row "of which its Lua heap (as the API reports)" "$(calc "$(mean "${lua[@]}") / 1024" | xargs printf '%.2f KB')" "" "" ""
table_print "agent_memory ($(date -u +%F), $(nproc) cores, mean of $ROUNDS rounds; peer: the same tenderd, devices without agent code)"

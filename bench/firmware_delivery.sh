#!/bin/bash
# bench/firmware_delivery.sh [DEVICES [SIZE [CHUNK]]] -- one firmware image to
# many devices at once: aggregate bytes per second.
# tenderd: DEVICES devices (default 1000, one tender-sim) online; an image of
# SIZE bytes (default 1 MiB) uploaded; one rollout to all of them at once
# (max_concurrent DEVICES); each device fetches it CHUNK bytes (default 16384,
# tender-sim's default) at a time over its WebSocket and checks its SHA-256.
# Timed from the first offer a device receives to the last device's last
# byte (its downloaded line): DEVICES * SIZE / time.  Peer: nginx (Debian)
# serving the same file over HTTP/1.1 to DEVICES clients at once
# (bench/http_fetch.c, libcurl multi, built here), each fetching it CHUNK
# bytes at a time with Range requests on a kept-alive connection and hashing
# it, timed from the start to the last byte.  Rounds alternate tenderd,
# nginx.  Goal: >= 50% of nginx.

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${1:-1000}
SIZE=${2:-1048576}
CHUNK=${3:-16384}
[[ $DEVICES =~ ^[0-9]+$ ]] && ((DEVICES >= 1 && DEVICES <= 15000)) || bench_die "DEVICES: '$DEVICES' is not 1 to 15000"
[[ $SIZE =~ ^[0-9]+$ ]] && ((SIZE >= 1024 && SIZE <= 16777216)) || bench_die "SIZE: '$SIZE' is not 1024 to 16777216"
[[ $CHUNK =~ ^[0-9]+$ ]] && ((CHUNK >= 1 && CHUNK <= 65536)) || bench_die "CHUNK: '$CHUNK' is not 1 to 65536"
ID_BASE=$((0x4400000000000000))
TIMEOUT_S=180
JEDEC=ef4018		# a Winbond W25Q128FV: in the seed flash-parts table

bench_init
bench_need_nginx
FETCH=$BENCH_WORK/http_fetch
gcc -std=gnu11 -O2 -Wall -Wextra -o "$FETCH" "$BENCH_DIR/http_fetch.c" -lcurl -lcrypto ||
	bench_die "cannot build http_fetch (needs gcc, libcurl and libssl headers)"
echo "firmware_delivery: a $SIZE-byte image to $DEVICES devices in $CHUNK-byte chunks, $ROUNDS rounds (tenderd, nginx alternating)" >&2

IMAGE_DIR=$BENCH_WORK/www
mkdir -p "$IMAGE_DIR"
head -c "$SIZE" /dev/urandom >"$IMAGE_DIR/fw.bin"
TD_DIR=$BENCH_WORK/tenderd
CREDS=$BENCH_WORK/creds

cpu_us() {
	awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1e6 / hz }' "/proc/$1/stat"
}

# tender_round N: sets RATE (bytes/s) and CPU (the server's us per MiB).
tender_round() {
	local r=$1 fw out i c0 us us0 rid
	rm -rf "$TD_DIR"
	tenderd_start "$TD_DIR"
	tenderd_register "$TD_DIR" "$DEVICES" "$ID_BASE" "$CREDS"
	out=$(curl -sS -H "Authorization: Bearer $(cat "$TD_DIR/admin.token")" \
		-F "image=@$IMAGE_DIR/fw.bin" \
		-F "metadata={\"version\":\"2.$r\",\"hw\":[\"benchfw\"]};type=application/json" \
		"http://127.0.0.1:$TD_HTTP_PORT/v1/firmware")
	fw=$(echo "$out" | sed -n 's/^{"id":\([0-9]*\).*/\1/p')
	[ -n "$fw" ] || bench_die "firmware upload: $out"
	SIM_COUNT=downloaded SIM_FIRST=update sim_start "$BENCH_WORK/sim" "$DEVICES" --creds "$CREDS" \
		--url "ws://127.0.0.1:$TD_DEV_PORT/v1/device" --max-pending 64 \
		--hw benchfw --fw 1.0 --jedec "$JEDEC" --flash-size 16777216 \
		--update accept --update-chunk "$CHUNK" --install-time 3600000 --duration 600
	for ((i = 0; i < 600; i++)); do
		(($(tenderd_metric tender_devices_connected) >= DEVICES)) && break
		sleep 0.1
	done
	(($(tenderd_metric tender_devices_connected) >= DEVICES)) || bench_die "not all $DEVICES devices came online"
	c0=$(cpu_us "$TD_PID")
	out=$(tenderd_api "$TD_DIR" POST /v1/rollouts \
		"{\"firmware\":$fw,\"hw\":\"benchfw\",\"max_concurrent\":$DEVICES,\"start\":true}")
	rid=$(echo "$out" | sed -n 's/^{"id":\([0-9]*\).*/\1/p')
	[ -n "$rid" ] || bench_die "rollout: $out"
	us=$(sim_wait_welcomed "$BENCH_WORK/sim" "$TIMEOUT_S") || bench_die "not all $DEVICES devices downloaded the image"
	us0=$(cat "$BENCH_WORK/sim.t0")
	CPU=$(calc "($(cpu_us "$TD_PID") - $c0) / ($DEVICES * $SIZE / 1048576)")
	sim_stop
	tenderd_stop
	RATE=$(calc "$DEVICES * $SIZE / (($us - $us0) / 1e6)")
	bench_log "tenderd: first offer after $(calc "$us0 / 1e6") s, all downloaded $(calc "($us - $us0) / 1e6") s later"
}

# nginx_round: sets RATE (bytes/s) and CPU (nginx's us per MiB, all workers).
nginx_round() {
	local out c0 c1 p
	nginx_start "$BENCH_WORK/nginx" "$IMAGE_DIR"
	sleep 0.3
	c0=0
	for p in $NG_PID $(pgrep -P "$NG_PID"); do c0=$(calc "$c0 + $(cpu_us "$p")"); done
	out=$("$FETCH" "http://127.0.0.1:$NG_PORT/fw.bin" "$DEVICES" "$SIZE" "$CHUNK" "$TIMEOUT_S") ||
		bench_die "http_fetch: $out"
	c1=0
	for p in $NG_PID $(pgrep -P "$NG_PID"); do c1=$(calc "$c1 + $(cpu_us "$p")"); done
	CPU=$(calc "($c1 - $c0) / ($DEVICES * $SIZE / 1048576)")
	nginx_stop
	bench_log "nginx: $out"
	RATE=$(echo "$out" | sed -n 's/.*: \([0-9]*\) bytes\/s.*/\1/p')
}

tr=() tu=() nr=() nu=()
for ((r = 1; r <= ROUNDS; r++)); do
	tender_round "$r"
	tr+=("$RATE") tu+=("$CPU")
	bench_log "round $r tenderd: $(calc "$RATE / 1048576") MiB/s, $CPU us CPU per MiB"
	nginx_round
	nr+=("$RATE") nu+=("$CPU")
	bench_log "round $r nginx: $(calc "$RATE / 1048576") MiB/s, $CPU us CPU per MiB"
done

t=$(mean "${tr[@]}")
p=$(mean "${nr[@]}")
ratio=$(calc "$t / $p")
table_row "firmware delivery, $DEVICES devices, $((SIZE / 1024)) KiB image, $((CHUNK / 1024)) KiB chunks" \
	"$(calc "$t / 1048576" | xargs printf '%.0f MiB/s')" "$(calc "$p / 1048576" | xargs printf '%.0f MiB/s')" \
	"$(calc "$ratio * 100" | xargs printf '%.0f%%')" \
	"$(awk -v r="$ratio" 'BEGIN { print (r >= 0.5 ? ">= 50% of nginx: met" : ">= 50% of nginx: MISSED") }')"
t=$(mean "${tu[@]}")
p=$(mean "${nu[@]}")
table_row "server CPU per MiB delivered" "$(printf '%.0f us' "$t")" "$(printf '%.0f us' "$p")" \
	"$(calc "$t / $p" | xargs printf '%.2fx')" "(explains the row above)"
table_print "firmware_delivery ($(date -u +%F), $(nproc) cores, mean of $ROUNDS rounds; peer: nginx $("$NGINX" -v 2>&1 | sed -n 's/.*nginx\/\([0-9.]*\).*/\1/p'), HTTP Range requests, same chunk size)"

# bench/lib.sh -- shared by the benchmark scripts; sourced, never run.
# Owns: the scratch dir, every process a benchmark starts (by pid, stopped at
#       exit), tenderd and mosquitto start/stop on free loopback ports,
#       device registration, RSS reads, timing of welcome lines, the table.
# Binaries come from TENDERD and TENDER_SIM (default ../build/ beside bench/).
# BENCH_ROUNDS (default 2) sets how many A B rounds each benchmark runs.

set -u

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TENDERD=${TENDERD:-$BENCH_DIR/../build/tenderd}
TENDER_SIM=${TENDER_SIM:-$BENCH_DIR/../build/tender-sim}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
ROUNDS=${BENCH_ROUNDS:-2}
# An awk that handles each line as it arrives: mawk waits to fill its buffer.
BENCH_AWK_LINES=awk
awk -W version 2>&1 | grep -q mawk && BENCH_AWK_LINES="awk -W interactive"

BENCH_PIDS=()
BENCH_WORK=
TD_ARGS=()		# options a benchmark adds to tenderd's defaults
TABLE_ROWS=()

bench_die() {
	echo "${0##*/}: $*" >&2
	exit 1
}

bench_log() {
	echo "  $*" >&2
}

# Stops what we started, by pid: TERM, then KILL after 5 s.
bench_cleanup() {
	local pid i
	for pid in "${BENCH_PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${BENCH_PIDS[@]}"; do
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	BENCH_PIDS=()
	[ -n "$BENCH_WORK" ] && rm -rf "$BENCH_WORK"
}

bench_forget() {	# pid: no longer ours to stop
	local keep=() p
	for p in "${BENCH_PIDS[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	BENCH_PIDS=("${keep[@]}")
}

# Stops one process we started: signal (default TERM), wait up to 10 s, then KILL.
bench_stop() {
	local pid=$1 sig=${2:-TERM} i
	kill "-$sig" "$pid" 2>/dev/null
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	bench_forget "$pid"
}

bench_init() {
	[ -x "$TENDERD" ] || bench_die "no tenderd at $TENDERD: build it (make tenderd) or set TENDERD"
	[ -x "$TENDER_SIM" ] || bench_die "no tender-sim at $TENDER_SIM: build it or set TENDER_SIM"
	BENCH_WORK=$(mktemp -d /tmp/tender-bench.XXXXXX) || bench_die "no scratch dir"
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
	# Every device is a socket: servers and sims inherit the hard limit.
	ulimit -n "$(ulimit -Hn)" 2>/dev/null
}

bench_need_mosquitto() {
	[ -x "$MOSQUITTO" ] && return 0
	bench_log "mosquitto missing: apt-get install -y mosquitto"
	if [ "$(id -u)" = 0 ]; then
		apt-get install -y -q mosquitto >/dev/null 2>&1 ||
			{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q mosquitto >/dev/null 2>&1; }
	fi
	MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
	[ -x "$MOSQUITTO" ] || bench_die "mosquitto is needed: apt-get install mosquitto"
}

# Microseconds since the epoch, without a fork.
bench_now_us() {
	echo "${EPOCHREALTIME//[.,]/}"
}

bench_rss_kb() {
	awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# A loopback port nobody listens on (mosquitto needs one given).
bench_free_port() {
	local p i
	for ((i = 0; i < 100; i++)); do
		p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

# tenderd_start DATADIR: sets TD_PID, TD_DEV_PORT, TD_HTTP_PORT.  As shipped:
# default options but ports 0, the data dir, TD_ARGS and, where tenderd has
# it, --max-conns-per-ip 0: every simulated device comes from 127.0.0.1,
# where real ones come from as many addresses.
tenderd_start() {
	local dir=$1 i
	mkdir -p "$dir"
	: >"$dir/tenderd.log"
	[ -z "${TD_PER_IP+x}" ] && { TD_PER_IP=(); tenderd_has_option --max-conns-per-ip && TD_PER_IP=(--max-conns-per-ip 0); }
	"$TENDERD" --data-dir "$dir" --device-port 0 --http-port 0 "${TD_PER_IP[@]}" "${TD_ARGS[@]}" \
		2>>"$dir/tenderd.log" &
	TD_PID=$!
	BENCH_PIDS+=("$TD_PID")
	TD_DEV_PORT= TD_HTTP_PORT=
	for ((i = 0; i < 200; i++)); do
		TD_DEV_PORT=$(sed -n 's/.*device endpoint listening on \([0-9]*\).*/\1/p' "$dir/tenderd.log" | tail -1)
		TD_HTTP_PORT=$(sed -n 's/.*http api listening on \([0-9]*\).*/\1/p' "$dir/tenderd.log" | tail -1)
		[ -n "$TD_DEV_PORT" ] && [ -n "$TD_HTTP_PORT" ] && grep -q ' ready' "$dir/tenderd.log" && return 0
		kill -0 "$TD_PID" 2>/dev/null || break
		sleep 0.05
	done
	cat "$dir/tenderd.log" >&2
	bench_die "tenderd did not start"
}

tenderd_stop() {
	bench_stop "$TD_PID"
}

# tenderd_register DATADIR N ID_BASE CREDS [GROUP]: registers N devices with
# consecutive ids (in GROUP if given) over the HTTP API (one curl, one
# kept-alive connection) and writes "id secret" lines to CREDS.
tenderd_register() {
	local dir=$1 n=$2 base=$3 creds=$4 group=${5:-} token i cfg grp=
	cfg=$dir/register.curl
	token=$(cat "$dir/admin.token") || bench_die "no admin token in $dir"
	[ -n "$group" ] && grp=",\\\"group\\\":\\\"$group\\\""
	for ((i = 0; i < n; i++)); do
		((i)) && echo next
		printf 'url = "http://127.0.0.1:%s/v1/devices"\n' "$TD_HTTP_PORT"
		printf 'header = "Authorization: Bearer %s"\n' "$token"
		printf 'header = "Content-Type: application/json"\n'
		printf 'data = "{\\"id\\":\\"%016x\\"%s}"\n' $((base + i)) "$grp"
		printf 'write-out = "\\n"\n'
	done >"$cfg"
	curl -sS -K "$cfg" |
		sed -n 's/.*"id":"\([0-9a-f]*\)".*"secret":"\([^"]*\)".*/\1 \2/p' >"$creds"
	[ "$(wc -l <"$creds")" -eq "$n" ] || bench_die "registered $(wc -l <"$creds") of $n devices"
}

# tenderd_deploy DATADIR GROUP FILE: deploys FILE as GROUP's agent code.
tenderd_deploy() {
	local out
	out=$(curl -sS -X PUT -H "Authorization: Bearer $(cat "$1/admin.token")" \
		-H 'Content-Type: text/plain' --data-binary "@$3" \
		"http://127.0.0.1:$TD_HTTP_PORT/v1/groups/$2/agent") || bench_die "deploy to $2 failed"
	case $out in *'"bytes"'*) ;; *) bench_die "deploy to $2: $out" ;; esac
}

# tenderd_api DATADIR METHOD PATH [JSON]: one API call, the body on stdout.
tenderd_api() {
	local args=(-sS -X "$2" -H "Authorization: Bearer $(cat "$1/admin.token")")
	[ $# -ge 4 ] && args+=(-H 'Content-Type: application/json' -d "$4")
	curl "${args[@]}" "http://127.0.0.1:$TD_HTTP_PORT$3"
}

# tenderd_has_option OPTION: whether this tenderd's --help lists OPTION.
tenderd_has_option() {
	"$TENDERD" --help 2>&1 | grep -q -- "^ *$1 "
}

# tenderd_metric NAME: the value of one metric from /metrics (NAME with its
# labels, as printed), 0 if it is not there.
tenderd_metric() {
	curl -sS "http://127.0.0.1:$TD_HTTP_PORT/metrics" |
		awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }'
}

# mosquitto_start DIR: sets MQ_PID, MQ_PORT.  Persistence off, anonymous,
# logging errors and warnings only (no line per connection); MQ_EXTRA_CONF
# lines are added (the round trip sets set_tcp_nodelay).
mosquitto_start() {
	local dir=$1 try i
	mkdir -p "$dir"
	for ((try = 0; try < 5; try++)); do
		MQ_PORT=$(bench_free_port) || bench_die "no free port"
		cat >"$dir/mosquitto.conf" <<-EOF
			listener $MQ_PORT 127.0.0.1
			allow_anonymous true
			persistence false
			log_dest stderr
			log_type error
			log_type warning
			connection_messages false
			${MQ_EXTRA_CONF:-}
		EOF
		"$MOSQUITTO" -c "$dir/mosquitto.conf" 2>>"$dir/mosquitto.log" &
		MQ_PID=$!
		BENCH_PIDS+=("$MQ_PID")
		for ((i = 0; i < 100; i++)); do
			if (exec 3<>"/dev/tcp/127.0.0.1/$MQ_PORT") 2>/dev/null; then
				return 0
			fi
			kill -0 "$MQ_PID" 2>/dev/null || break
			sleep 0.05
		done
		bench_stop "$MQ_PID"	# the port was taken after all: another
	done
	cat "$dir/mosquitto.log" >&2
	bench_die "mosquitto did not start"
}

mosquitto_stop() {
	bench_stop "$MQ_PID"
}

bench_need_nginx() {
	NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
	[ -x "$NGINX" ] && return 0
	bench_log "nginx missing: apt-get install -y nginx-light"
	if [ "$(id -u)" = 0 ]; then
		apt-get install -y -q nginx-light >/dev/null 2>&1 ||
			{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nginx-light >/dev/null 2>&1; }
	fi
	NGINX=$(command -v nginx || echo /usr/sbin/nginx)
	[ -x "$NGINX" ] || bench_die "nginx is needed: apt-get install nginx-light"
}

# nginx_start DIR ROOT: sets NG_PID, NG_PORT.  Serves ROOT on a free loopback
# port, in the foreground, with Debian's defaults where they matter
# (worker_processes auto, sendfile on, keepalive) but no access log and
# enough worker_connections for the clients.
nginx_start() {
	local dir=$1 root=$2 try i
	mkdir -p "$dir"
	for ((try = 0; try < 5; try++)); do
		NG_PORT=$(bench_free_port) || bench_die "no free port"
		cat >"$dir/nginx.conf" <<-EOF
			daemon off;
			user root;
			worker_processes auto;
			pid $dir/nginx.pid;
			error_log $dir/error.log warn;
			events { worker_connections 8192; }
			http {
				access_log off;
				sendfile on;
				tcp_nopush on;
				keepalive_requests 100000;
				client_body_temp_path $dir/body;
				proxy_temp_path $dir/proxy;
				fastcgi_temp_path $dir/fastcgi;
				uwsgi_temp_path $dir/uwsgi;
				scgi_temp_path $dir/scgi;
				server {
					listen 127.0.0.1:$NG_PORT;
					root $root;
				}
			}
		EOF
		"$NGINX" -p "$dir" -c "$dir/nginx.conf" 2>>"$dir/nginx.log" &
		NG_PID=$!
		BENCH_PIDS+=("$NG_PID")
		for ((i = 0; i < 100; i++)); do
			if (exec 3<>"/dev/tcp/127.0.0.1/$NG_PORT") 2>/dev/null; then
				return 0
			fi
			kill -0 "$NG_PID" 2>/dev/null || break
			sleep 0.05
		done
		bench_stop "$NG_PID"
	done
	cat "$dir/nginx.log" "$dir/error.log" >&2 2>/dev/null
	bench_die "nginx did not start"
}

nginx_stop() {
	bench_stop "$NG_PID"	# TERM: nginx stops its workers first
}

# sim_start OUT N ARGS...: starts tender-sim with ARGS and times its welcome
# lines: SIM_PID is the sim; OUT.t gets, once N distinct devices have been
# welcomed, the microseconds from the start to the Nth welcome.  The sim's
# lines go through a fifo to awk, so counting costs no polling.  SIM_COUNT
# names the line counted instead of welcome (e.g. downloaded); OUT.t0 then
# gets the microseconds from the start to the first SIM_FIRST line.
sim_start() {
	local out=$1 n=$2 t0
	shift 2
	rm -f "$out.fifo" "$out.t" "$out.t0"
	mkfifo "$out.fifo"
	t0=$(bench_now_us)
	$BENCH_AWK_LINES -v n="$n" -v t0="$t0" -v tf="$out.t" -v tf0="$out.t0" \
		-v word="${SIM_COUNT:-welcome}" -v first="${SIM_FIRST:-}" '
		$1 == first && !f++ {
			"date +%s%6N" | getline t
			close("date +%s%6N")
			print t - t0 > tf0
			close(tf0)
		}
		$1 == word && !seen[$2]++ && ++c == n {
			"date +%s%6N" | getline t
			print t - t0 > tf
			close(tf)
		}
		($1 == "connect-error" || $1 == "closed") && ++bad <= 5 { print > "/dev/stderr" }
	' <"$out.fifo" &
	SIM_AWK=$!
	BENCH_PIDS+=("$SIM_AWK")
	"$TENDER_SIM" "$@" >"$out.fifo" 2>"$out.err" &
	SIM_PID=$!
	disown "$SIM_PID"	# no job notice when the storm kills it with -9
	BENCH_PIDS+=("$SIM_PID")
}

# sim_wait_welcomed OUT TIMEOUT_S: prints the microseconds to N welcomes, or
# fails after TIMEOUT_S.
sim_wait_welcomed() {
	local out=$1 limit=$(($2 * 10)) i
	for ((i = 0; i < limit; i++)); do
		if [ -s "$out.t" ]; then
			cat "$out.t"
			return 0
		fi
		kill -0 "$SIM_PID" 2>/dev/null || break
		sleep 0.1
	done
	[ -s "$out.t" ] && { cat "$out.t"; return 0; }
	cat "$out.err" >&2
	return 1
}

# sim_stop [SIG]: stops the sim (and its awk).
sim_stop() {
	bench_stop "$SIM_PID" "${1:-TERM}"
	bench_stop "$SIM_AWK"
}

# calc EXPR: floating point through awk.
calc() {
	awk "BEGIN { printf \"%.6g\", $* }"
}

# mean VALUES...
mean() {
	local IFS=+
	calc "($*) / $#"
}

# table_row FIGURE TENDER PEER RATIO GOAL
table_row() {
	TABLE_ROWS+=("$1|$2|$3|$4|$5")
}

table_print() {
	local title=$1 row
	echo
	echo "$title"
	{
		echo "figure|tender|peer|ratio|goal"
		for row in "${TABLE_ROWS[@]}"; do
			echo "$row"
		done
	} | awk -F'|' '
		{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
		END {
			for (r = 1; r <= NR; r++) {
				line = ""
				for (i = 1; i <= 5; i++)
					line = line (i > 1 ? " | " : "") sprintf("%-" w[i] "s", cell[r, i])
				print line
				if (r == 1) {
					line = ""
					for (i = 1; i <= 5; i++) {
						dash = sprintf("%" w[i] "s", ""); gsub(/ /, "-", dash)
						line = line (i > 1 ? "-|-" : "") dash
					}
					print line
				}
			}
		}'
}

/* tools/tender-sim.c -- simulated devices for tenderd: test driver and load generator.
 * Owns: one lws client context, one struct sim_dev per simulated device (its
 *       connection, out queue, reassembly buffer, pacing and reconnect state,
 *       and its firmware update: the SHA-256 of the image downloaded so far,
 *       kept across reconnects) and the cron tick that paces frames, fetches, installs,
 *       reconnects devices and decides when to stop.
 * Threads: one.  main() runs the lws service loop and everything here runs on
 *       it; the signal handler only sets sim_signalled.
 * Speaks the device side of docs/protocol.md, firmware updates included
 * (SHA-256 from OpenSSL's libcrypto).  Prints one line per event on stdout for
 * the integration tests to parse (formats in --help) and a summary on stderr
 * at exit.
 * With --mqtt it speaks minimal MQTT 3.1.1 instead (CONNECT, SUBSCRIBE, QoS 0
 * PUBLISH, PINGREQ, DISCONNECT), so that the benchmarks drive an MQTT broker
 * with the same client code: the same devices, state machine, pacing and
 * cron, over lws raw client sockets (method "RAW") instead of WebSockets. */

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <jansson.h>
#include <libwebsockets.h>
#include <openssl/evp.h>

#define SIM_DEFAULT_URL		"ws://127.0.0.1:8600/v1/device"
#define SIM_DEFAULT_MQTT_URL	"mqtt://127.0.0.1:1883"
#define SIM_MAX_RX		(1024 * 1024)	/* larger server frames are an error */
#define SIM_QUEUE_MAX		32		/* paced frames queued per device */
#define SIM_COALESCE		(64 * 1024)	/* queued frames written in one send() */
#define SIM_MAX_RAW_AFTER	16
#define SIM_OVERSIZE_MIN	23		/* strlen("{\"type\":\"log\",\"msg\":\"\"}") */
#define SIM_OVERSIZE_MAX	(64L * 1024 * 1024)
#define SIM_RATE_MAX		1e6
#define SIM_SECONDS_MAX		1e9
#define SIM_DEVICES_MAX		1000000L
#define SIM_FD_RESERVE		32		/* fds lws and stdio need besides devices */
/* One cron walks every device when any of them has something due: per-device
 * timers would cost a sorted insert into lws's timer list for every frame. */
#define SIM_TICK_MIN_US		10000
#define SIM_TICK_MAX_US		100000
#define SIM_POKE_US		1000
#define SIM_LWS_TICK_US		50000
#define SIM_NEVER		INT64_MAX
#define SIM_BACKOFF_MIN_US	500000
#define SIM_BACKOFF_MAX_US	30000000
#define SIM_CLOSE_GRACE_US	3000000		/* wait for close handshakes at exit */
#define SIM_RX_BUFFER		4096		/* lws allocates this per connection */
#define SIM_IMAGE_MAX		(64L * 1024 * 1024)	/* larger offers are refused */
#define SIM_CHUNK_MAX		65536		/* fetch length limit (protocol) */
#define SIM_CHUNK_HDR		8		/* big-endian offset before the bytes */
#define SIM_UPD_STR		64		/* update id and version limit */
#define SIM_MS_MAX		86400000LL	/* --update-delay, --install-time */
#define SIM_MQTT_TOPIC_MAX	1024		/* --mqtt-topic prefix length */
#define SIM_MQTT_KEEPALIVE_MAX	65535		/* a 16-bit field in CONNECT */

enum sim_kind { SIM_FRAME_HELLO, SIM_FRAME_EXTRA, SIM_FRAME_LOG, SIM_FRAME_MSG,
		SIM_FRAME_UPDATE, SIM_FRAME_PING };

/* One text frame (or, with --mqtt, one MQTT packet: HELLO is CONNECT, EXTRA
 * SUBSCRIBE, MSG PUBLISH, PING PINGREQ) waiting for WRITEABLE, with LWS_PRE
 * bytes of headroom. */
struct sim_frame {
	struct sim_frame *next;
	enum sim_kind kind;
	size_t len;
	unsigned char buf[];		/* LWS_PRE + len */
};

/* Pacing of one kind of frame (log or msg) for one device.  Sequence numbers
 * go on across reconnects; frames dropped unsent with a connection are made
 * again with the same numbers. */
struct sim_pace {
	uint64_t made;			/* sent + queued; the next sequence is made + 1 */
	uint64_t sent;			/* handed to lws_write() */
	uint64_t base;			/* made when pacing (re)started */
	lws_usec_t start;		/* when pacing (re)started */
};

/*
 * Device life cycle; every transition goes through sim__dev_set_state().
 *
 *   IDLE --cron: retry_at reached and fewer than --max-pending pending--> CONNECTING
 *   CONNECTING --CLIENT_ESTABLISHED, hello queued--> OPEN
 *              (--mqtt: RAW_CONNECTED, CONNECT queued)
 *   OPEN --welcome frame--> WELCOMED
 *        (--mqtt: a CONNACK accepting the connection)
 *   CONNECTING, OPEN, WELCOMED --error, close or loss--> IDLE with --reconnect
 *                                                        (retry_at = now + backoff),
 *                                                        else DEAD
 *   OPEN, WELCOMED --reboot or --update-drop-after--> IDLE even without
 *                                                     --reconnect (once)
 *   IDLE --stop--> DEAD
 *
 * Invariants: wsi is non-NULL only in CONNECTING, OPEN and WELCOMED (in
 * CONNECTING it is NULL while lws_client_connect_via_info() runs); the out
 * queue is empty in IDLE and DEAD; pace.made - pace.sent is the number of
 * frames of that kind in the queue.
 */
enum sim_state { SIM_IDLE, SIM_CONNECTING, SIM_OPEN, SIM_WELCOMED, SIM_DEAD, SIM_NSTATES };

enum sim_upd_mode { SIM_UPD_ACCEPT, SIM_UPD_FAIL_DOWNLOAD, SIM_UPD_FAIL_INSTALL,
		    SIM_UPD_IGNORE };

/*
 * Firmware update of one device, driven by server frames and the cron.
 *
 *   NONE, HELD --offer--> FETCH (fetch for offset `have` queued; `have` is kept
 *                               when the offer repeats the id, size and sha256
 *                               of the image held, else the image starts afresh)
 *
 * The image is not kept: its bytes are hashed in order as each chunk is
 * whole and checked (a chunk is gathered in `chunk` first, so a connection
 * lost in the middle of one hashes none of it), as a device with a small
 * RAM would write them to flash.  Keeping 1 MiB per device made page faults
 * a fifth of tender-sim's time in bench/firmware_delivery.sh.
 *   FETCH --chunk, more to get--> FETCH (next fetch queued), or PAUSED with
 *                                 --update-delay (at = now + delay)
 *   PAUSED --cron: at reached--> FETCH
 *   FETCH --last chunk, sha256 matches--> INSTALL (downloaded and installing
 *                                         queued, at = now + --install-time)
 *   INSTALL --cron: at reached, queue written--> REBOOT (close 1000 rebooting,
 *                                                fw = the new version)
 *   INSTALL --connection gone--> REBOOT (the install finishes offline)
 *   REBOOT --welcome--> NONE (completed)
 *   FETCH, PAUSED --connection gone--> HELD (image kept for a re-offer)
 *   FETCH, PAUSED, INSTALL --failure, or a bad_update error frame--> NONE (failed)
 *   any --connection gone while the process stops--> unchanged (nothing more
 *                                                    is reported)
 *
 * Offers are taken only from a WELCOMED connection; offers in INSTALL and
 * REBOOT, and repeats of the current offer in FETCH and PAUSED, change nothing.
 * Invariants: md and chunk are non-NULL only in FETCH, PAUSED and HELD; md
 * has hashed the first `have` of the image's size bytes; chunk holds
 * --update-chunk bytes; asked > 0 only in FETCH,
 * while a fetch for [have, have + asked) is queued or answered in part;
 * have + asked <= size; FETCH, PAUSED and INSTALL have a WELCOMED connection
 * (until the process stops).
 */
enum sim_upd_state { SIM_UPD_NONE, SIM_UPD_FETCH, SIM_UPD_PAUSED, SIM_UPD_HELD,
		     SIM_UPD_INSTALL, SIM_UPD_REBOOT };

/* Allocated at a device's first offer and kept to the end.  Only touched on
 * the service thread. */
struct sim_upd {
	enum sim_upd_state state;
	char id[SIM_UPD_STR + 1], version[SIM_UPD_STR + 1];
	char running[SIM_UPD_STR + 1];		/* fw after the reboot; d->fw points here */
	unsigned char sha256[32];
	EVP_MD_CTX *md;				/* owned: SHA-256 of the first `have` bytes */
	unsigned char *chunk;			/* owned: the chunk being received */
	size_t size, have, asked;
	size_t chunk_got;			/* bytes of the binary message so far */
	unsigned char chunk_hdr[SIM_CHUNK_HDR];
	unsigned quarter;			/* next 25% step to report */
	bool reported;				/* progress sent on this connection */
	bool dropped;				/* --update-drop-after has happened */
	bool handled;				/* one update completed or failed */
	lws_usec_t at;				/* PAUSED: next fetch; INSTALL: the end */
};

#define SIM_RTT_RING 256		/* --expect: msgs in flight a device can time */
#define SIM_RTT_MAX (1 << 20)		/* latency samples kept */

/* One simulated device.  Only touched on the service thread. */
struct sim_dev {
	char id[17];
	const char *secret, *hw, *fw, *jedec;	/* borrowed: argv, line below, or
						   (fw after an update) upd->running */
	long long flash_size;			/* -1: not sent */
	char *line;				/* owned: --creds line the strings point into */

	enum sim_state state;
	struct lws *wsi;
	bool want_close;			/* close at the next WRITEABLE, with: */
	enum lws_close_status our_status;
	const char *our_reason;			/* static */
	bool we_closed;				/* our close: no closed line */
	bool rx_discard;			/* closing after a bad frame: drop what comes */
	bool rx_paused;				/* --no-pong: reads stopped */
	bool ever_welcomed;
	bool rx_binary;				/* inside a binary message */
	bool reconnect_once;			/* reconnect even without --reconnect, */
	bool reconnect_now;			/* then at once rather than after backoff */
	lws_usec_t wait_until;			/* --wait-update: first welcome + S */
	int close_code;				/* from the server's close frame; 0: none */
	char close_reason[124];

	struct sim_frame *q_head, *q_tail;	/* owned */
	unsigned q_len;
	unsigned char *rx;			/* owned: fragments of one server message */
	size_t rx_len, rx_cap;

	struct sim_pace log, msg;
	lws_usec_t retry_at, backoff;
	lws_usec_t last_tx;			/* --mqtt: last packet written (keepalive) */
	struct sim_upd *upd;			/* owned; NULL until the first offer */
	uint64_t replies;			/* --expect: in order so far */
	lws_usec_t sent_at[SIM_RTT_RING];	/* --expect: when seq % ring was queued */
};

struct sim_opts {
	const char *url;
	char host[256], hostport[300], path[1024];
	int port;
	const char *id, *secret, *creds;
	bool have_id_base;
	uint64_t id_base;
	long devices;				/* 0: not given */
	const char *hw, *fw, *jedec, *sfdp;
	long long flash_size;			/* -1: not given */
	double log_rate, msg_rate;
	long long log_count, msg_count;		/* -1: unlimited */
	const char *log_text, *log_level, *msg_name;
	const char *expect;			/* --expect: reply name, or NULL */
	double duration, stall_after;		/* < 0: not given */
	bool exit_when_done, reconnect, no_pong, quiet, verbose;
	const char *raw_first;
	const char *raw_after[SIM_MAX_RAW_AFTER];
	int n_raw_after;
	long oversize;				/* 0: not given */
	long max_pending;
	enum sim_upd_mode update;
	long update_chunk;
	long long update_delay_ms, install_ms;
	long long drop_after;			/* 0: not given */
	double wait_update;			/* < 0: not given */
	bool mqtt;
	long mqtt_keepalive;			/* seconds; 0: no PINGREQ */
	const char *mqtt_topic;			/* prefix: each device uses PREFIX/ID */
	bool tls, insecure;			/* --tls (or a wss:// URL), --insecure */
	const char *ca;				/* --ca FILE: trust this, not the system's */
};

enum sim_stop {
	SIM_RUNNING,
	SIM_STOP_SIGNAL,
	SIM_STOP_DURATION,
	SIM_STOP_DONE,
	SIM_STOP_ALL_CLOSED,
};

/* The whole process.  Only touched on the service thread. */
struct sim {
	struct sim_opts o;
	struct sim_dev *devs;			/* owned */
	size_t n_devs;
	uint64_t log_limit, msg_limit;		/* frames per device; UINT64_MAX: no limit */
	struct lws_context *ctx;
	struct ev_loop *ev;			/* lws runs on it (epoll), a pass at a time */
	/* The cron is a libev timer, not an lws one: on libev, lws re-arms its
	 * timer only from its own timer or its idle watcher, and an idle watcher
	 * never runs while I/O keeps coming, so a sooner lws timer set from a
	 * callback waited for the old one (connects paced at 64 per 100 ms).
	 * lws_tick, an lws timer every SIM_LWS_TICK_US, keeps lws's own
	 * deadlines (connect timeouts, async kills) that punctual. */
	ev_timer cron;
	lws_sorted_usec_list_t lws_tick;
	lws_usec_t deadline, stall_at, close_deadline;	/* 0: none */
	enum sim_stop stop;
	bool finished;				/* the service loop may end */
	bool stall_now, stalled, destroying, all_finished;
	bool in_cron, poked;			/* sim__cron_soon() during the cron */
	unsigned char *wbuf;			/* owned: LWS_PRE + SIM_COALESCE, frames coalesced */
	uint64_t mask_rng;			/* xorshift64 state for the frames' mask keys */
	lws_usec_t cron_at;			/* when the cron runs next */
	size_t n_state[SIM_NSTATES];
	uint64_t n_welcomed, n_log_sent, n_msg_sent, n_received;
	uint32_t *rtt_us;			/* --expect: latency samples (owned) */
	size_t n_rtt;
	lws_usec_t rtt_first, rtt_last;		/* --expect: first and last reply */
	uint64_t n_bad_replies;			/* --expect: out of order or unknown */
	uint64_t n_upd_done, n_upd_failed;
};

static volatile sig_atomic_t sim_signalled;

static void sim__cron(struct ev_loop *loop, ev_timer *w, int revents);
static void sim__cron_at(struct sim *sim, lws_usec_t delay);

/* ---- output ---------------------------------------------------------------- */

__attribute__((format(printf, 1, 2)))
static void sim__err(const char *fmt, ...)
{
	va_list ap;

	fputs("tender-sim: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* One event line on stdout.  Server-supplied text may hold newlines: they
 * become spaces so that every event stays one line for the tests. */
__attribute__((format(printf, 2, 3)))
static void sim__event(const struct sim *sim, const char *fmt, ...)
{
	char small[1024], *line = small;
	va_list ap;
	int n;

	if (sim->o.quiet)
		return;
	va_start(ap, fmt);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(small)) {
		line = malloc((size_t)n + 1);
		if (!line)
			return;
		va_start(ap, fmt);
		vsnprintf(line, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	for (int i = 0; i < n; i++)
		if (line[i] == '\n' || line[i] == '\r')
			line[i] = ' ';
	fwrite(line, 1, (size_t)n, stdout);
	fputc('\n', stdout);
	fflush(stdout);
	if (line != small)
		free(line);
}

static void sim__lws_log(int level, const char *line)
{
	fprintf(stderr, "tender-sim: lws: %s", line);
}

/* ---- command line ---------------------------------------------------------- */

static void sim__usage(FILE *f)
{
	fputs(
"Usage: tender-sim [OPTION]...\n"
"Simulates tenderd devices: the device side of docs/protocol.md over WebSocket\n"
"(or, with --mqtt, minimal MQTT 3.1.1 clients for an MQTT broker).\n"
"\n"
"Devices (one of):\n"
"  --id HEX16 --secret S      one device\n"
"  --creds FILE               one device per line: id secret [hw [fw [jedec [flash_size]]]]\n"
"                             ('#' starts a comment, blank lines are skipped; fields given\n"
"                             override --hw, --fw, --jedec and --flash-size, and '-' keeps\n"
"                             the option's value)\n"
"  --devices N --id-base HEX16 --secret S\n"
"                             N devices with consecutive ids from id-base, one secret\n"
"                             (--mqtt needs no --secret)\n"
"\n"
"Connection:\n"
"  --url URL                  server (default " SIM_DEFAULT_URL "; ws:// or wss://;\n"
"                             with --mqtt mqtt://HOST[:PORT], default " SIM_DEFAULT_MQTT_URL ")\n"
"  --tls                      TLS (wss), as a wss:// URL also says; the server's certificate\n"
"                             is verified against the system's CAs, and its name or IP\n"
"                             address against the URL's host\n"
"  --ca FILE                  with --tls: trust the CA certificate(s) in FILE (PEM) instead\n"
"  --insecure                 with --tls: skip verification (tests and benchmarks only)\n"
"  --reconnect                reconnect after a close or a failed connect: backoff from\n"
"                             0.5 s, doubling to 30 s, +-20% jitter, reset by a welcome.\n"
"                             Without it a closed device stays closed, and the process\n"
"                             exits once no device is connected or connecting: status 0\n"
"                             if every device had been welcomed, else 1\n"
"  --max-pending N            at most N connections between connect and welcome at once\n"
"                             (default 256; spreads the handshakes of many devices)\n"
"\n"
"Hello:\n"
"  --hw S                     hardware model (default sim; '' leaves hw out)\n"
"  --fw S                     firmware version (default 1.0.0; '' leaves fw out)\n"
"  --jedec HEX6               flash.jedec\n"
"  --flash-size N             flash.size in bytes\n"
"  --sfdp BASE64              flash.sfdp, sent as given\n"
"                             (the flash object is sent only with a jedec or a size)\n"
"\n"
"Traffic after welcome, per device:\n"
"  --log-rate R               log frames per second (default 0)\n"
"  --log-count N              stop after N log frames (default unlimited)\n"
"  --log-text S               log text; %n is the device's log sequence number from 1,\n"
"                             %t the wall-clock time the line was made, in microseconds\n"
"                             since the epoch (latency benches), %% is %\n"
"                             (default 'hello from sim %n')\n"
"  --log-level info|error     log level (default info)\n"
"  --msg-rate R               msg frames per second (default 0), each\n"
"                             {\"type\":\"msg\",\"name\":NAME,\"data\":{\"seq\":n}}\n"
"  --msg-count N              stop after N msg frames (default unlimited)\n"
"  --msg-name S               msg name (default ping)\n"
"  --expect NAME              scripted round trips: every msg sent expects a msg\n"
"                             NAME back with the same data.seq (an echo agent);\n"
"                             --exit-when-done waits for the replies; the summary\n"
"                             gives their count, latency (p50, p99, max) and rate\n"
"                             from the first reply to the last (with --mqtt every\n"
"                             PUBLISH received is a reply, whatever NAME); exit\n"
"                             status 1 if any is missing, late past --duration, or\n"
"                             out of order\n"
"                             A rate of 0 with a count sends the count as fast as the\n"
"                             connection takes it; a rate of 0 without a count sends none.\n"
"                             Counts and sequence numbers go on across reconnects.\n"
"\n"
"MQTT (the benchmarks' peer: the same client code against an MQTT broker):\n"
"  --mqtt                     speak MQTT 3.1.1 over TCP instead of the WebSocket protocol,\n"
"                             on libwebsockets raw client sockets (method \"RAW\") in the\n"
"                             same service loop, so devices, --max-pending, --reconnect,\n"
"                             pacing and the cron are the ones above.  A device sends\n"
"                             CONNECT (client id = device id, clean session, no user\n"
"                             name); a CONNACK with return code 0 is its welcome (the\n"
"                             welcome line is printed), any other code a connect-error.\n"
"                             With --msg-rate or --msg-count it first SUBSCRIBEs to\n"
"                             PREFIX/ID at QoS 0, then each msg is a QoS 0 PUBLISH to\n"
"                             PREFIX/ID with payload {\"seq\":n}, so the broker sends it\n"
"                             back: a round trip, printed as a msg line.  A device that\n"
"                             has written nothing for half the keepalive sends PINGREQ.\n"
"                             Closing sends DISCONNECT.  A connection the broker drops\n"
"                             prints closed <id> 1006 connection lost.  Not with --log-*,\n"
"                             --raw-*, --oversize (the hello options are unused)\n"
"  --mqtt-keepalive S         CONNECT keepalive in seconds (default 60; 0: none)\n"
"  --mqtt-topic PREFIX        topic prefix (default tender-sim)\n"
"\n"
"Misbehaving on purpose:\n"
"  --raw-first TEXT           send TEXT verbatim as the first frame instead of hello\n"
"  --raw-after TEXT           send TEXT verbatim right after welcome (repeatable, 16 at most)\n"
"  --oversize N               after welcome send one log frame of exactly N bytes (N >= 23)\n"
"  --no-pong                  after welcome stop reading the socket, so no ping is answered\n"
"                             (lws answers pings by itself and cannot be told not to; with\n"
"                             reads stopped it never sees them).  The device looks vanished,\n"
"                             but frames from --log-rate/--msg-rate still go out.\n"
"  --stall-after S            after S seconds stop servicing altogether: the process sleeps\n"
"                             (no reads, writes or pongs) until --duration ends or a signal\n"
"\n"
"Firmware updates (the server offers them; see docs/protocol.md):\n"
"  --update MODE              what a device does with an offer (default accept):\n"
"                             accept         fetch the image chunk by chunk, check its\n"
"                                            SHA-256, report downloaded and installing,\n"
"                                            then after --install-time close (1000,\n"
"                                            rebooting) and reconnect at once, even\n"
"                                            without --reconnect, with hello fw = the new\n"
"                                            version; the welcome completes the update\n"
"                             fail-download  report failed after the first chunk\n"
"                             fail-install   download, report installing and, after\n"
"                                            --install-time, failed instead of rebooting\n"
"                             ignore         nothing (the update line is still printed)\n"
"  --update-chunk N           bytes asked for per fetch (default 16384, 1..65536)\n"
"  --update-delay MS          pause between fetches, a slow link (default 0)\n"
"  --update-drop-after N      once per device, when N bytes of an image are in, drop the\n"
"                             connection without a close frame and reconnect after the\n"
"                             backoff, even without --reconnect\n"
"  --install-time MS          from installing to the reboot (default 200)\n"
"  --wait-update S            with --exit-when-done: a device is done only once an update\n"
"                             offered to it has completed or failed, or S seconds after\n"
"                             its first welcome if none was offered (or all were ignored)\n"
"                             Progress is reported (update_status downloading) after the\n"
"                             first chunk on each connection and at every 25%.  A device\n"
"                             keeps the bytes it has across reconnects: a re-offer of the\n"
"                             same id, size and sha256 resumes from the next missing\n"
"                             byte.  Offers over 64 MiB are refused (failed).  An error\n"
"                             frame bad_update ends the update without more reports.\n"
"\n"
"Running:\n"
"  --duration S               close everything and exit 0 after S seconds (default: run\n"
"                             until signalled)\n"
"  --exit-when-done           once every device has sent its log and msg counts (each needs\n"
"                             a count, or a rate of 0), lws has written them and no update\n"
"                             is in progress (offered, and neither failed nor completed by\n"
"                             the welcome after the reboot), close all connections (1000),\n"
"                             print done and exit 0.  If a device closes for good first,\n"
"                             exit as --reconnect says, no done\n"
"  --quiet                    no event lines; errors and the summary still go to stderr\n"
"  --verbose                  libwebsockets notices too\n"
"  --help                     this text\n"
"\n"
"Event lines on stdout, one per event:\n"
"  welcome <id>                       the welcome frame arrived\n"
"  closed <id> <code> <reason>        the server closed (reason may be empty); 1006 and\n"
"                                     'connection lost' when there was no close frame,\n"
"                                     1005 and '' for a close frame without a code\n"
"  connect-error <id> <message>       the connection or its handshake failed\n"
"  error-frame <id> <code> <message>  an error frame\n"
"  msg <id> <name> <data>             a msg frame; data as compact JSON (--mqtt: a\n"
"                                     PUBLISH: its topic and payload)\n"
"  frame <id> <text>                  any other server frame, as received (--mqtt:\n"
"                                     mqtt-packet-type N for an unexpected packet)\n"
"  update <id> <update-id> <version> <size>\n"
"                                     an update offer (re-offers too)\n"
"  downloaded <id> <update-id>        every byte is in and the SHA-256 matches\n"
"  installing <id> <update-id>        installing reported\n"
"  rebooting <id> <version>           closing to come back with the new version\n"
"  update-failed <id> <update-id> <reason>\n"
"                                     failed reported, with its error: sha256 mismatch,\n"
"                                     simulated download failure, simulated install\n"
"                                     failure, image too large, bad offer: <member>, bad\n"
"                                     chunk: <detail>, out of memory; or bad_update when\n"
"                                     the server's error frame ended the update\n"
"  done                               --exit-when-done completed\n"
"<id> is the device id as given; newlines in server text are printed as spaces.\n"
"SIGINT and SIGTERM close all connections and exit 0.  At exit a summary goes\n"
"to stderr, with the number of updates completed and failed.\n"
"Exit status: 0 success, 1 failure (see --reconnect), 2 bad command line.\n",
	      f);
}

static int sim__parse_double(const char *opt, const char *s, double min, double max,
			     double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= min && v <= max)) {
		sim__err("%s: '%s' is not a number from %.10g to %.10g", opt, s, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

static int sim__parse_ll(const char *opt, const char *s, long long min, long long max,
			 long long *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		sim__err("%s: '%s' is not an integer from %lld to %lld", opt, s, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

static bool sim__is_hex(const char *s, size_t digits)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (!isxdigit((unsigned char)s[i]))
			return false;
	return i == digits;
}

/* jansson refuses strings that are not UTF-8; say so once, naming the option. */
static int sim__check_utf8(const char *opt, const char *s)
{
	json_t *j = json_string(s);

	if (!j) {
		sim__err("%s: not valid UTF-8", opt);
		return -1;
	}
	json_decref(j);
	return 0;
}

/* Splits ws://host[:port][/path] (--mqtt: mqtt://host[:port]) into o->host,
 * o->port, o->path, o->hostport. */
static int sim__parse_url(struct sim_opts *o)
{
	const char *scheme = o->mqtt ? "mqtt://" : "ws://";
	const char *h, *hend, *p;
	long long port = o->mqtt ? 1883 : 80;
	char portbuf[8];
	size_t hlen;

	if (!o->url)
		o->url = o->mqtt ? SIM_DEFAULT_MQTT_URL : SIM_DEFAULT_URL;
	if (!o->mqtt && strncmp(o->url, "wss://", 6) == 0) {
		scheme = "wss://";
		o->tls = true;
	}
	if (o->tls && !o->mqtt && port == 80)
		port = 443;
	if (strncmp(o->url, scheme, strlen(scheme))) {
		sim__err("--url: '%s': only %s URLs are supported%s", o->url, scheme,
			 o->mqtt ? " with --mqtt" : "");
		return -1;
	}
	h = o->url + strlen(scheme);
	if (*h == '[') {
		hend = strchr(h, ']');
		if (!hend)
			goto bad;
		h++;
		p = hend + 1;
	} else {
		hend = h + strcspn(h, ":/");
		p = hend;
	}
	hlen = (size_t)(hend - h);
	if (!hlen || hlen >= sizeof(o->host))
		goto bad;
	memcpy(o->host, h, hlen);
	o->host[hlen] = '\0';
	if (*p == ':') {
		size_t plen = strcspn(p + 1, "/");

		if (!plen || plen >= sizeof(portbuf))
			goto bad;
		memcpy(portbuf, p + 1, plen);
		portbuf[plen] = '\0';
		if (sim__parse_ll("--url port", portbuf, 1, 65535, &port))
			return -1;
		p += 1 + plen;
	}
	if (strlen(p) >= sizeof(o->path) || (o->mqtt && *p && strcmp(p, "/")))
		goto bad;
	snprintf(o->path, sizeof(o->path), "%s", *p ? p : "/");
	o->port = (int)port;
	snprintf(o->hostport, sizeof(o->hostport), strchr(o->host, ':') ? "[%s]:%d" : "%s:%d",
		 o->host, o->port);
	return 0;
bad:
	sim__err("--url: '%s' is not %s", o->url, o->mqtt ? "mqtt://HOST[:PORT]"
							  : "ws[s]://HOST[:PORT][/PATH]");
	return -1;
}

enum {
	OPT_URL = 256, OPT_ID, OPT_SECRET, OPT_CREDS, OPT_DEVICES, OPT_ID_BASE, OPT_HW,
	OPT_FW, OPT_JEDEC, OPT_FLASH_SIZE, OPT_SFDP, OPT_LOG_RATE, OPT_LOG_COUNT,
	OPT_LOG_TEXT, OPT_LOG_LEVEL, OPT_MSG_RATE, OPT_MSG_COUNT, OPT_MSG_NAME, OPT_EXPECT,
	OPT_DURATION, OPT_EXIT_WHEN_DONE, OPT_RECONNECT, OPT_RAW_FIRST, OPT_RAW_AFTER,
	OPT_OVERSIZE, OPT_NO_PONG, OPT_STALL_AFTER, OPT_QUIET, OPT_VERBOSE, OPT_HELP,
	OPT_MAX_PENDING, OPT_UPDATE, OPT_UPDATE_CHUNK, OPT_UPDATE_DELAY, OPT_UPDATE_DROP_AFTER,
	OPT_INSTALL_TIME, OPT_WAIT_UPDATE, OPT_MQTT, OPT_MQTT_KEEPALIVE, OPT_MQTT_TOPIC,
	OPT_TLS, OPT_CA, OPT_INSECURE,
};

static const struct option sim_options[] = {
	{ "url", required_argument, NULL, OPT_URL },
	{ "id", required_argument, NULL, OPT_ID },
	{ "secret", required_argument, NULL, OPT_SECRET },
	{ "creds", required_argument, NULL, OPT_CREDS },
	{ "devices", required_argument, NULL, OPT_DEVICES },
	{ "id-base", required_argument, NULL, OPT_ID_BASE },
	{ "hw", required_argument, NULL, OPT_HW },
	{ "fw", required_argument, NULL, OPT_FW },
	{ "jedec", required_argument, NULL, OPT_JEDEC },
	{ "flash-size", required_argument, NULL, OPT_FLASH_SIZE },
	{ "sfdp", required_argument, NULL, OPT_SFDP },
	{ "log-rate", required_argument, NULL, OPT_LOG_RATE },
	{ "log-count", required_argument, NULL, OPT_LOG_COUNT },
	{ "log-text", required_argument, NULL, OPT_LOG_TEXT },
	{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
	{ "msg-rate", required_argument, NULL, OPT_MSG_RATE },
	{ "msg-count", required_argument, NULL, OPT_MSG_COUNT },
	{ "msg-name", required_argument, NULL, OPT_MSG_NAME },
	{ "expect", required_argument, NULL, OPT_EXPECT },
	{ "duration", required_argument, NULL, OPT_DURATION },
	{ "exit-when-done", no_argument, NULL, OPT_EXIT_WHEN_DONE },
	{ "reconnect", no_argument, NULL, OPT_RECONNECT },
	{ "raw-first", required_argument, NULL, OPT_RAW_FIRST },
	{ "raw-after", required_argument, NULL, OPT_RAW_AFTER },
	{ "oversize", required_argument, NULL, OPT_OVERSIZE },
	{ "no-pong", no_argument, NULL, OPT_NO_PONG },
	{ "stall-after", required_argument, NULL, OPT_STALL_AFTER },
	{ "max-pending", required_argument, NULL, OPT_MAX_PENDING },
	{ "update", required_argument, NULL, OPT_UPDATE },
	{ "update-chunk", required_argument, NULL, OPT_UPDATE_CHUNK },
	{ "update-delay", required_argument, NULL, OPT_UPDATE_DELAY },
	{ "update-drop-after", required_argument, NULL, OPT_UPDATE_DROP_AFTER },
	{ "install-time", required_argument, NULL, OPT_INSTALL_TIME },
	{ "wait-update", required_argument, NULL, OPT_WAIT_UPDATE },
	{ "mqtt", no_argument, NULL, OPT_MQTT },
	{ "mqtt-keepalive", required_argument, NULL, OPT_MQTT_KEEPALIVE },
	{ "mqtt-topic", required_argument, NULL, OPT_MQTT_TOPIC },
	{ "tls", no_argument, NULL, OPT_TLS },
	{ "ca", required_argument, NULL, OPT_CA },
	{ "insecure", no_argument, NULL, OPT_INSECURE },
	{ "quiet", no_argument, NULL, OPT_QUIET },
	{ "verbose", no_argument, NULL, OPT_VERBOSE },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

/* The update options that take a number; returns 1 when c was not one of them. */
static int sim__parse_update_opt(struct sim_opts *o, int c, const char *arg)
{
	long long v;

	switch (c) {
	case OPT_UPDATE_CHUNK:
		if (sim__parse_ll("--update-chunk", arg, 1, SIM_CHUNK_MAX, &v))
			return -1;
		o->update_chunk = (long)v;
		return 0;
	case OPT_UPDATE_DELAY:
		return sim__parse_ll("--update-delay", arg, 0, SIM_MS_MAX, &o->update_delay_ms);
	case OPT_UPDATE_DROP_AFTER:
		return sim__parse_ll("--update-drop-after", arg, 1, SIM_IMAGE_MAX, &o->drop_after);
	case OPT_INSTALL_TIME:
		return sim__parse_ll("--install-time", arg, 0, SIM_MS_MAX, &o->install_ms);
	case OPT_WAIT_UPDATE:
		return sim__parse_double("--wait-update", arg, 0, SIM_SECONDS_MAX,
					 &o->wait_update);
	}
	return 1;
}

/* Options that take a number; returns 1 when c was not one of them. */
static int sim__parse_number_opt(struct sim_opts *o, int c, const char *arg)
{
	long long v;

	switch (c) {
	case OPT_DEVICES:
		if (sim__parse_ll("--devices", arg, 1, SIM_DEVICES_MAX, &v))
			return -1;
		o->devices = (long)v;
		return 0;
	case OPT_FLASH_SIZE:
		return sim__parse_ll("--flash-size", arg, 1, 1LL << 53, &o->flash_size);
	case OPT_LOG_RATE:
		return sim__parse_double("--log-rate", arg, 0, SIM_RATE_MAX, &o->log_rate);
	case OPT_LOG_COUNT:
		return sim__parse_ll("--log-count", arg, 0, LLONG_MAX, &o->log_count);
	case OPT_MSG_RATE:
		return sim__parse_double("--msg-rate", arg, 0, SIM_RATE_MAX, &o->msg_rate);
	case OPT_MSG_COUNT:
		return sim__parse_ll("--msg-count", arg, 0, LLONG_MAX, &o->msg_count);
	case OPT_DURATION:
		return sim__parse_double("--duration", arg, 0, SIM_SECONDS_MAX, &o->duration);
	case OPT_STALL_AFTER:
		return sim__parse_double("--stall-after", arg, 0, SIM_SECONDS_MAX,
					 &o->stall_after);
	case OPT_OVERSIZE:
		if (sim__parse_ll("--oversize", arg, SIM_OVERSIZE_MIN, SIM_OVERSIZE_MAX, &v))
			return -1;
		o->oversize = (long)v;
		return 0;
	case OPT_MAX_PENDING:
		if (sim__parse_ll("--max-pending", arg, 1, SIM_DEVICES_MAX, &v))
			return -1;
		o->max_pending = (long)v;
		return 0;
	case OPT_MQTT_KEEPALIVE:
		if (sim__parse_ll("--mqtt-keepalive", arg, 0, SIM_MQTT_KEEPALIVE_MAX, &v))
			return -1;
		o->mqtt_keepalive = (long)v;
		return 0;
	}
	return sim__parse_update_opt(o, c, arg);
}

static int sim__parse_update_mode(struct sim_opts *o, const char *arg)
{
	static const char *const names[] = {
		[SIM_UPD_ACCEPT] = "accept", [SIM_UPD_FAIL_DOWNLOAD] = "fail-download",
		[SIM_UPD_FAIL_INSTALL] = "fail-install", [SIM_UPD_IGNORE] = "ignore",
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(arg, names[i])) {
			o->update = (enum sim_upd_mode)i;
			return 0;
		}
	sim__err("--update: '%s' is not accept, fail-download, fail-install or ignore", arg);
	return -1;
}

/* Options that take a string; returns 1 when c was not one of them. */
static int sim__parse_string_opt(struct sim_opts *o, int c, const char *arg)
{
	switch (c) {
	case OPT_URL: o->url = arg; return 0;
	case OPT_ID: o->id = arg; return 0;
	case OPT_SECRET: o->secret = arg; return 0;
	case OPT_CREDS: o->creds = arg; return 0;
	case OPT_ID_BASE:
		if (!sim__is_hex(arg, 16)) {
			sim__err("--id-base: '%s' is not 16 hex digits", arg);
			return -1;
		}
		o->id_base = strtoull(arg, NULL, 16);
		o->have_id_base = true;
		return 0;
	case OPT_HW: o->hw = arg; return 0;
	case OPT_FW: o->fw = arg; return 0;
	case OPT_JEDEC: o->jedec = arg; return 0;
	case OPT_SFDP: o->sfdp = arg; return 0;
	case OPT_LOG_TEXT: o->log_text = arg; return 0;
	case OPT_LOG_LEVEL: o->log_level = arg; return 0;
	case OPT_MSG_NAME: o->msg_name = arg; return 0;
	case OPT_EXPECT: o->expect = arg; return 0;
	case OPT_CA: o->ca = arg; return 0;
	case OPT_MQTT_TOPIC:
		if (!*arg || strlen(arg) > SIM_MQTT_TOPIC_MAX || strpbrk(arg, "+#")) {
			sim__err("--mqtt-topic: '%s' is not 1 to %d bytes without + or #", arg,
				 SIM_MQTT_TOPIC_MAX);
			return -1;
		}
		o->mqtt_topic = arg;
		return 0;
	case OPT_RAW_FIRST: o->raw_first = arg; return 0;
	case OPT_UPDATE: return sim__parse_update_mode(o, arg);
	case OPT_RAW_AFTER:
		if (o->n_raw_after == SIM_MAX_RAW_AFTER) {
			sim__err("--raw-after: at most %d are allowed", SIM_MAX_RAW_AFTER);
			return -1;
		}
		o->raw_after[o->n_raw_after++] = arg;
		return 0;
	}
	return 1;
}

static int sim__parse_flag_opt(struct sim_opts *o, int c)
{
	switch (c) {
	case OPT_EXIT_WHEN_DONE: o->exit_when_done = true; return 0;
	case OPT_RECONNECT: o->reconnect = true; return 0;
	case OPT_NO_PONG: o->no_pong = true; return 0;
	case OPT_QUIET: o->quiet = true; return 0;
	case OPT_VERBOSE: o->verbose = true; return 0;
	case OPT_MQTT: o->mqtt = true; return 0;
	case OPT_TLS: o->tls = true; return 0;
	case OPT_INSECURE: o->insecure = true; return 0;
	}
	return 1;
}

/* Which devices: exactly one of --id, --creds, --devices. */
static int sim__check_device_opts(const struct sim_opts *o)
{
	int ways = !!o->id + !!o->creds + !!o->devices;

	if (ways != 1) {
		sim__err(ways ? "--id, --creds and --devices exclude each other"
			      : "give --id and --secret, --creds, or --devices and --id-base");
		return -1;
	}
	if (o->id && !sim__is_hex(o->id, 16)) {
		sim__err("--id: '%s' is not 16 hex digits", o->id);
		return -1;
	}
	if (o->devices && !o->have_id_base) {
		sim__err("--devices needs --id-base");
		return -1;
	}
	if (o->have_id_base && !o->devices) {
		sim__err("--id-base needs --devices");
		return -1;
	}
	if (o->devices && o->id_base + (uint64_t)(o->devices - 1) < o->id_base) {
		sim__err("--devices: %ld ids from --id-base go past ffffffffffffffff", o->devices);
		return -1;
	}
	if ((o->id || o->devices) && !o->secret && !o->mqtt) {
		sim__err("%s needs --secret", o->id ? "--id" : "--devices");
		return -1;
	}
	if (o->creds && o->secret) {
		sim__err("--secret: --creds gives each device's secret");
		return -1;
	}
	return 0;
}

/* --mqtt has no logs and no way to misbehave in WebSocket frames. */
static int sim__check_mqtt_opts(const struct sim_opts *o)
{
	const char *bad = o->log_rate > 0 || o->log_count >= 0 ? "--log-rate and --log-count"
			  : o->raw_first || o->n_raw_after ? "--raw-first and --raw-after"
			  : o->oversize ? "--oversize" : NULL;

	if (!o->mqtt)
		return 0;
	if (bad) {
		sim__err("%s do not go with --mqtt (use --msg-rate, --msg-count)", bad);
		return -1;
	}
	return sim__check_utf8("--mqtt-topic", o->mqtt_topic);
}

/* Cross-option rules once everything is parsed. */
static int sim__check_tls_opts(const struct sim_opts *o)
{
	if (o->tls && o->mqtt) {
		sim__err("--tls is for the WebSocket protocol, not --mqtt");
		return -1;
	}
	if ((o->ca || o->insecure) && !o->tls) {
		sim__err("%s needs --tls (or a wss:// --url)", o->ca ? "--ca" : "--insecure");
		return -1;
	}
	if (o->ca && o->insecure) {
		sim__err("--ca and --insecure exclude each other");
		return -1;
	}
	if (o->ca && access(o->ca, R_OK)) {
		sim__err("--ca: cannot read %s: %s", o->ca, strerror(errno));
		return -1;
	}
	return 0;
}

static int sim__check_opts(struct sim_opts *o)
{
	if (sim__check_device_opts(o) || sim__parse_url(o) || sim__check_mqtt_opts(o) ||
	    sim__check_tls_opts(o))
		return -1;
	if (o->jedec && !sim__is_hex(o->jedec, 6)) {
		sim__err("--jedec: '%s' is not 6 hex digits", o->jedec);
		return -1;
	}
	if (strcmp(o->log_level, "info") && strcmp(o->log_level, "error")) {
		sim__err("--log-level: '%s' is not info or error", o->log_level);
		return -1;
	}
	if (o->exit_when_done && ((o->log_rate > 0 && o->log_count < 0) ||
				  (o->msg_rate > 0 && o->msg_count < 0))) {
		sim__err("--exit-when-done: a --log-rate or --msg-rate needs its --log-count "
			 "or --msg-count");
		return -1;
	}
	if (o->wait_update >= 0 && !o->exit_when_done) {
		sim__err("--wait-update needs --exit-when-done");
		return -1;
	}
	if ((o->secret && sim__check_utf8("--secret", o->secret)) ||
	    sim__check_utf8("--hw", o->hw) || sim__check_utf8("--fw", o->fw) ||
	    (o->sfdp && sim__check_utf8("--sfdp", o->sfdp)) ||
	    sim__check_utf8("--log-text", o->log_text) ||
	    sim__check_utf8("--msg-name", o->msg_name))
		return -1;
	return 0;
}

/* Returns 0 to run, 1 when --help was printed, -1 on a bad command line. */
static int sim__parse_args(struct sim_opts *o, int argc, char **argv)
{
	int c, r;

	*o = (struct sim_opts){
		.hw = "sim", .fw = "1.0.0", .flash_size = -1,
		.log_count = -1, .msg_count = -1, .log_text = "hello from sim %n",
		.log_level = "info", .msg_name = "ping", .duration = -1,
		.stall_after = -1, .max_pending = 256, .update = SIM_UPD_ACCEPT,
		.update_chunk = 16384, .install_ms = 200, .wait_update = -1,
		.mqtt_keepalive = 60, .mqtt_topic = "tender-sim",
	};
	while ((c = getopt_long(argc, argv, "", sim_options, NULL)) != -1) {
		if (c == OPT_HELP) {
			sim__usage(stdout);
			return 1;
		}
		if (c == '?' || c == ':')
			goto usage;	/* getopt_long has named the option */
		r = sim__parse_number_opt(o, c, optarg);
		if (r > 0)
			r = sim__parse_string_opt(o, c, optarg);
		if (r > 0)
			r = sim__parse_flag_opt(o, c);
		if (r)
			return -1;
	}
	if (optind < argc) {
		sim__err("unexpected argument '%s'", argv[optind]);
		goto usage;
	}
	return sim__check_opts(o);
usage:
	fputs("Try 'tender-sim --help'.\n", stderr);
	return -1;
}

/* ---- devices --------------------------------------------------------------- */

static struct sim_dev *sim__dev_add(struct sim *sim, size_t *cap)
{
	struct sim_dev *d;

	if (sim->n_devs == *cap) {
		size_t ncap = *cap ? *cap * 2 : 16;
		struct sim_dev *n = realloc(sim->devs, ncap * sizeof(*n));

		if (!n) {
			sim__err("out of memory for %zu devices", ncap);
			return NULL;
		}
		sim->devs = n;
		*cap = ncap;
	}
	d = &sim->devs[sim->n_devs++];
	*d = (struct sim_dev){
		.secret = sim->o.secret, .hw = sim->o.hw, .fw = sim->o.fw,
		.jedec = sim->o.jedec, .flash_size = sim->o.flash_size,
		.backoff = SIM_BACKOFF_MIN_US,
	};
	return d;
}

/* Fills d from one --creds line (owned by d from here on); 1: nothing on it. */
static int sim__creds_line(struct sim_dev *d, char *line, const char *where)
{
	char *f[7], *save = NULL, opt[PATH_MAX + 64];
	int n = 0;
	long long size;

	d->line = line;
	for (char *t = strtok_r(line, " \t\r\n", &save); t && *t != '#' && n < 7;
	     t = strtok_r(NULL, " \t\r\n", &save))
		f[n++] = t;
	if (!n)
		return 1;
	if (n < 2 || n > 6) {
		sim__err("--creds: %s: want id secret [hw [fw [jedec [flash_size]]]]", where);
		return -1;
	}
	if (!sim__is_hex(f[0], 16)) {
		sim__err("--creds: %s: id '%s' is not 16 hex digits", where, f[0]);
		return -1;
	}
	snprintf(d->id, sizeof(d->id), "%s", f[0]);
	d->secret = f[1];
	if (n > 2 && strcmp(f[2], "-"))
		d->hw = f[2];
	if (n > 3 && strcmp(f[3], "-"))
		d->fw = f[3];
	if (n > 4 && strcmp(f[4], "-")) {
		if (!sim__is_hex(f[4], 6)) {
			sim__err("--creds: %s: jedec '%s' is not 6 hex digits", where, f[4]);
			return -1;
		}
		d->jedec = f[4];
	}
	snprintf(opt, sizeof(opt), "--creds: %s: flash_size", where);
	if (n > 5) {
		if (sim__parse_ll(opt, f[5], 1, 1LL << 53, &size))
			return -1;
		d->flash_size = size;
	}
	snprintf(opt, sizeof(opt), "--creds: %s", where);
	if (sim__check_utf8(opt, d->secret) || sim__check_utf8(opt, d->hw) ||
	    sim__check_utf8(opt, d->fw))
		return -1;
	return 0;
}

/* Reads --creds: one device per line. */
static int sim__load_creds(struct sim *sim, size_t *cap)
{
	FILE *f = fopen(sim->o.creds, "r");
	char *buf = NULL, where[PATH_MAX + 32];
	size_t bufcap = 0;
	unsigned lineno = 0;
	int rc = 0;

	if (!f) {
		sim__err("--creds: %s: %s", sim->o.creds, strerror(errno));
		return -1;
	}
	while (!rc && getline(&buf, &bufcap, f) >= 0) {
		struct sim_dev *d = sim__dev_add(sim, cap);
		char *line = d ? strdup(buf) : NULL;

		if (!line) {
			sim__err("--creds: out of memory");
			if (d)
				sim->n_devs--;
			rc = -1;
			break;
		}
		snprintf(where, sizeof(where), "%s:%u", sim->o.creds, ++lineno);
		rc = sim__creds_line(d, line, where);
		if (rc) {		/* a blank line or an error: forget the slot */
			free(line);
			sim->n_devs--;
			rc = rc > 0 ? 0 : -1;
		}
	}
	free(buf);
	fclose(f);
	if (!rc && !sim->n_devs) {
		sim__err("--creds: %s: no devices", sim->o.creds);
		rc = -1;
	}
	return rc;
}

static int sim__make_devices(struct sim *sim)
{
	size_t cap = 0;
	struct sim_dev *d;

	if (sim->o.creds)
		return sim__load_creds(sim, &cap);
	if (sim->o.id) {
		d = sim__dev_add(sim, &cap);
		if (!d)
			return -1;
		snprintf(d->id, sizeof(d->id), "%s", sim->o.id);
		return 0;
	}
	for (long i = 0; i < sim->o.devices; i++) {
		d = sim__dev_add(sim, &cap);
		if (!d)
			return -1;
		snprintf(d->id, sizeof(d->id), "%016" PRIx64, sim->o.id_base + (uint64_t)i);
	}
	return 0;
}

/* ---- frames ---------------------------------------------------------------- */

/* Owned: caller frees (or pushes onto a queue). */
static struct sim_frame *sim__frame_alloc(size_t len, enum sim_kind kind)
{
	struct sim_frame *f = malloc(sizeof(*f) + LWS_PRE + len);

	if (!f)
		return NULL;
	f->next = NULL;
	f->kind = kind;
	f->len = len;
	return f;
}

static struct sim_frame *sim__frame_text(const char *s, size_t len, enum sim_kind kind)
{
	struct sim_frame *f = sim__frame_alloc(len, kind);

	if (f)
		memcpy(f->buf + LWS_PRE, s, len);
	return f;
}

/* Steals o, even on failure. */
static struct sim_frame *sim__frame_json(json_t *o, enum sim_kind kind)
{
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	struct sim_frame *f = s ? sim__frame_text(s, strlen(s), kind) : NULL;

	free(s);
	json_decref(o);
	return f;
}

static struct sim_frame *sim__build_hello(const struct sim *sim, const struct sim_dev *d)
{
	json_t *o = json_pack("{s:s, s:s, s:s}", "type", "hello", "id", d->id,
			      "secret", d->secret);
	json_t *flash;
	int err = 0;

	if (!o)
		return NULL;
	if (*d->hw)
		err |= json_object_set_new(o, "hw", json_string(d->hw));
	if (*d->fw)
		err |= json_object_set_new(o, "fw", json_string(d->fw));
	if (d->jedec || d->flash_size > 0) {
		flash = json_object();
		if (d->jedec)
			err |= json_object_set_new(flash, "jedec", json_string(d->jedec));
		if (d->flash_size > 0)
			err |= json_object_set_new(flash, "size", json_integer(d->flash_size));
		if (sim->o.sfdp)
			err |= json_object_set_new(flash, "sfdp", json_string(sim->o.sfdp));
		err |= json_object_set_new(o, "flash", flash);
	}
	if (err) {
		json_decref(o);
		return NULL;
	}
	return sim__frame_json(o, SIM_FRAME_HELLO);
}

/* The log text with %n replaced by seq, %t by the wall-clock time in
 * microseconds and %% by %.  Owned: caller frees. */
static char *sim__expand_text(const char *tmpl, uint64_t seq)
{
	size_t cap = strlen(tmpl) + 1;
	const char *p;
	char *out, *w;

	for (p = tmpl; (p = strchr(p, '%')); p++)
		cap += 20;
	out = malloc(cap);
	if (!out)
		return NULL;
	for (p = tmpl, w = out; *p; p++) {
		if (p[0] == '%' && p[1] == 'n') {
			w += sprintf(w, "%" PRIu64, seq);
			p++;
		} else if (p[0] == '%' && p[1] == 't') {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			w += sprintf(w, "%lld", (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
			p++;
		} else if (p[0] == '%' && p[1] == '%') {
			*w++ = '%';
			p++;
		} else {
			*w++ = *p;
		}
	}
	*w = '\0';
	return out;
}

static struct sim_frame *sim__build_log(const struct sim *sim, uint64_t seq)
{
	char *text = sim__expand_text(sim->o.log_text, seq);
	json_t *o;

	if (!text)
		return NULL;
	o = json_pack("{s:s, s:s, s:s}", "type", "log", "level", sim->o.log_level,
		      "msg", text);
	free(text);
	return sim__frame_json(o, SIM_FRAME_LOG);
}

static struct sim_frame *sim__mqtt_publish(const struct sim *sim, const struct sim_dev *d,
					   uint64_t seq);

static struct sim_frame *sim__build_msg(const struct sim *sim, const struct sim_dev *d,
					uint64_t seq)
{
	json_t *o;

	if (sim->o.mqtt)
		return sim__mqtt_publish(sim, d, seq);
	o = json_pack("{s:s, s:s, s:{s:I}}", "type", "msg", "name", sim->o.msg_name,
			      "data", "seq", (json_int_t)seq);

	return sim__frame_json(o, SIM_FRAME_MSG);
}

/* A valid log frame of exactly n bytes, padded out with its msg. */
static struct sim_frame *sim__build_oversize(size_t n)
{
	static const char head[] = "{\"type\":\"log\",\"msg\":\"", tail[] = "\"}";
	struct sim_frame *f = sim__frame_alloc(n, SIM_FRAME_EXTRA);
	unsigned char *p;

	if (!f)
		return NULL;
	p = f->buf + LWS_PRE;
	memcpy(p, head, sizeof(head) - 1);
	memset(p + sizeof(head) - 1, 'x', n - (sizeof(head) - 1) - (sizeof(tail) - 1));
	memcpy(p + n - (sizeof(tail) - 1), tail, sizeof(tail) - 1);
	return f;
}

static void sim__queue_push(struct sim_dev *d, struct sim_frame *f)
{
	if (d->q_tail)
		d->q_tail->next = f;
	else
		d->q_head = f;
	d->q_tail = f;
	d->q_len++;
}

static struct sim_frame *sim__queue_pop(struct sim_dev *d)
{
	struct sim_frame *f = d->q_head;

	if (f) {
		d->q_head = f->next;
		if (!d->q_head)
			d->q_tail = NULL;
		d->q_len--;
	}
	return f;
}

/* Frees what was never written; those frames are made again (same sequence
 * numbers) on the next connection. */
static void sim__queue_drop(struct sim_dev *d)
{
	struct sim_frame *f;

	while ((f = sim__queue_pop(d)))
		free(f);
	d->log.made = d->log.sent;
	d->msg.made = d->msg.sent;
}

/* ---- MQTT packets (--mqtt) ------------------------------------------------ */

#define SIM_MQTT_CONNECT	0x10
#define SIM_MQTT_CONNACK	2		/* packet types, the header's high nibble */
#define SIM_MQTT_PUBLISH	3
#define SIM_MQTT_SUBACK		9
#define SIM_MQTT_PINGRESP	13
#define SIM_MQTT_PUBLISH_QOS0	0x30		/* fixed header bytes we send */
#define SIM_MQTT_SUBSCRIBE	0x82
#define SIM_MQTT_PINGREQ	0xc0
#define SIM_MQTT_DISCONNECT	0xe0
#define SIM_MQTT_REM_MAX	268435455	/* largest remaining length */

/* A packet with fixed header byte `type` and a body of len bytes, which the
 * caller writes at *body.  Owned: caller frees (or pushes onto a queue). */
static struct sim_frame *sim__mqtt_alloc(unsigned type, size_t len, enum sim_kind kind,
					 unsigned char **body)
{
	unsigned char hdr[5];
	size_t n = 0, rem = len;
	struct sim_frame *f;

	assert(len <= SIM_MQTT_REM_MAX);
	hdr[n++] = (unsigned char)type;
	do {		/* remaining length: 7 bits a byte, low first */
		hdr[n] = rem & 0x7f;
		rem >>= 7;
		if (rem)
			hdr[n] |= 0x80;
		n++;
	} while (rem);
	f = sim__frame_alloc(n + len, kind);
	if (!f)
		return NULL;
	memcpy(f->buf + LWS_PRE, hdr, n);
	*body = f->buf + LWS_PRE + n;
	return f;
}

/* A 16-bit length, then the bytes. */
static unsigned char *sim__mqtt_put_str(unsigned char *p, const char *s, size_t len)
{
	assert(len <= 0xffff);
	*p++ = (unsigned char)(len >> 8);
	*p++ = (unsigned char)len;
	memcpy(p, s, len);
	return p + len;
}

/* d's topic, PREFIX/ID, into buf; returns its length. */
static size_t sim__mqtt_topic(const struct sim *sim, const struct sim_dev *d,
			      char buf[SIM_MQTT_TOPIC_MAX + 18])
{
	return (size_t)snprintf(buf, SIM_MQTT_TOPIC_MAX + 18, "%s/%s", sim->o.mqtt_topic, d->id);
}

/* CONNECT, protocol level 4 (3.1.1), clean session, client id = device id. */
static struct sim_frame *sim__mqtt_connect(const struct sim *sim, const struct sim_dev *d)
{
	static const unsigned char head[] = { 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02 };
	size_t idlen = strlen(d->id);
	unsigned char *p;
	struct sim_frame *f = sim__mqtt_alloc(SIM_MQTT_CONNECT, sizeof(head) + 2 + 2 + idlen,
					      SIM_FRAME_HELLO, &p);

	if (!f)
		return NULL;
	memcpy(p, head, sizeof(head));
	p += sizeof(head);
	*p++ = (unsigned char)(sim->o.mqtt_keepalive >> 8);
	*p++ = (unsigned char)sim->o.mqtt_keepalive;
	sim__mqtt_put_str(p, d->id, idlen);
	return f;
}

/* SUBSCRIBE to d's own topic at QoS 0 (packet id 1: one subscription each). */
static struct sim_frame *sim__mqtt_subscribe(const struct sim *sim, const struct sim_dev *d)
{
	char topic[SIM_MQTT_TOPIC_MAX + 18];
	size_t tlen = sim__mqtt_topic(sim, d, topic);
	unsigned char *p;
	struct sim_frame *f = sim__mqtt_alloc(SIM_MQTT_SUBSCRIBE, 2 + 2 + tlen + 1,
					      SIM_FRAME_EXTRA, &p);

	if (!f)
		return NULL;
	*p++ = 0;
	*p++ = 1;
	p = sim__mqtt_put_str(p, topic, tlen);
	*p = 0;
	return f;
}

/* PUBLISH QoS 0 of {"seq":n} to d's own topic: the msg frame of --mqtt. */
static struct sim_frame *sim__mqtt_publish(const struct sim *sim, const struct sim_dev *d,
					   uint64_t seq)
{
	char topic[SIM_MQTT_TOPIC_MAX + 18], payload[40];
	size_t tlen = sim__mqtt_topic(sim, d, topic);
	size_t plen = (size_t)snprintf(payload, sizeof(payload), "{\"seq\":%" PRIu64 "}", seq);
	unsigned char *p;
	struct sim_frame *f = sim__mqtt_alloc(SIM_MQTT_PUBLISH_QOS0, 2 + tlen + plen,
					      SIM_FRAME_MSG, &p);

	if (!f)
		return NULL;
	p = sim__mqtt_put_str(p, topic, tlen);
	memcpy(p, payload, plen);
	return f;
}

static struct sim_frame *sim__mqtt_pingreq(void)
{
	unsigned char *p;

	return sim__mqtt_alloc(SIM_MQTT_PINGREQ, 0, SIM_FRAME_PING, &p);
}

/* ---- pacing ---------------------------------------------------------------- */

/* Queues the frames of one kind due by now: at rate per second, or as fast as
 * the queue drains when rate is 0.  Returns how many were queued, or -1. */
static int sim__fill_kind(const struct sim *sim, struct sim_dev *d, struct sim_pace *p,
			  double rate, uint64_t limit, enum sim_kind kind, lws_usec_t now)
{
	uint64_t due = limit, behind_max;
	struct sim_frame *f;
	int n = 0;

	if (p->made >= limit)
		return 0;
	if (rate > 0) {
		due = p->base + 1 + (uint64_t)((double)(now - p->start) * rate / 1e6);
		/* Over a second's worth behind means the server is not reading:
		 * restart the pacing rather than burst once it reads again. */
		behind_max = rate > SIM_QUEUE_MAX ? (uint64_t)rate : SIM_QUEUE_MAX;
		if (due > p->made + behind_max) {
			p->start = now;
			p->base = p->made;
			due = p->made + 1;
		}
		if (due > limit)
			due = limit;
	}
	while (p->made < due && d->q_len < SIM_QUEUE_MAX) {
		/* --expect: at most a ring's worth of msgs waiting for their reply */
		if (kind != SIM_FRAME_LOG && sim->o.expect && p->made - d->replies >= SIM_RTT_RING)
			break;
		f = kind == SIM_FRAME_LOG ? sim__build_log(sim, p->made + 1)
					  : sim__build_msg(sim, d, p->made + 1);
		if (!f)
			return -1;
		if (kind != SIM_FRAME_LOG)
			d->sent_at[(p->made + 1) % SIM_RTT_RING] = now;
		sim__queue_push(d, f);
		p->made++;
		n++;
	}
	return n;
}

/* Tops up d's queue with due log and msg frames and asks for WRITEABLE. */
static int sim__dev_fill(const struct sim *sim, struct sim_dev *d, lws_usec_t now)
{
	int a, b;

	if (d->state != SIM_WELCOMED || d->want_close)
		return 0;
	a = sim__fill_kind(sim, d, &d->log, sim->o.log_rate, sim->log_limit, SIM_FRAME_LOG, now);
	b = sim__fill_kind(sim, d, &d->msg, sim->o.msg_rate, sim->msg_limit, SIM_FRAME_MSG, now);
	if (a < 0 || b < 0) {
		sim__err("%s: out of memory building a frame", d->id);
		return -1;
	}
	if (a + b)
		lws_callback_on_writable(d->wsi);
	return 0;
}

/* ---- connection ------------------------------------------------------------ */

static void sim__dev_set_state(struct sim *sim, struct sim_dev *d, enum sim_state s)
{
	sim->n_state[d->state]--;
	sim->n_state[s]++;
	d->state = s;
}

/* Have the cron run within a millisecond: a device changed in a way it acts
 * on (a connect slot freed, a device finished, closed or failed). */
static void sim__cron_soon(struct sim *sim)
{
	lws_usec_t soon;

	if (sim->in_cron) {
		sim->poked = true;
		return;
	}
	if (sim->finished || sim->destroying)
		return;
	soon = lws_now_usecs() + SIM_POKE_US;
	if (sim->cron_at > soon) {
		sim->cron_at = soon;
		sim__cron_at(sim, SIM_POKE_US);
	}
}

static lws_usec_t sim__jitter(lws_usec_t us)
{
	return (lws_usec_t)((double)us * (0.8 + 0.4 * drand48()));
}

/* Closes d's connection from our side (at its next WRITEABLE: lws only closes
 * cleanly from a callback's return, and returning an error from RECEIVE in
 * lws 4.1.6 can write past its rx buffer), or abandons a connect in progress.
 * The first reason given wins.  No closed line follows. */
static void sim__dev_close(struct sim_dev *d, enum lws_close_status status, const char *why)
{
	assert(d->wsi);
	d->we_closed = true;
	if (d->state == SIM_CONNECTING) {
		lws_set_timeout(d->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
		return;
	}
	if (d->want_close)
		return;
	d->want_close = true;
	d->our_status = status;
	d->our_reason = why;
	if (d->rx_paused) {	/* the close handshake needs reads again */
		lws_rx_flow_control(d->wsi, 1);
		d->rx_paused = false;
	}
	lws_callback_on_writable(d->wsi);
}

/* Have the cron run by `at`: an update timer its current schedule would miss.
 * Inside the cron the walk sees the timer by itself. */
static void sim__cron_by(struct sim *sim, lws_usec_t at)
{
	lws_usec_t now;

	if (sim->in_cron || sim->finished || sim->destroying || sim->cron_at <= at)
		return;
	now = lws_now_usecs();
	if (at < now + SIM_POKE_US)
		at = now + SIM_POKE_US;
	sim->cron_at = at;
	sim__cron_at(sim, at - now);
}

/* --update-drop-after: the connection just goes, without a close frame (lws
 * kills a timed-out connection without one), and d comes back after the
 * backoff.  No closed line follows. */
static void sim__dev_drop(struct sim_dev *d)
{
	assert(d->wsi);
	d->we_closed = true;
	d->reconnect_once = true;
	d->reconnect_now = false;
	lws_set_timeout(d->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

/* ---- firmware update ------------------------------------------------------- */

/* An offer's members, borrowed from its frame; NULL or 0 when missing. */
struct sim_offer {
	const char *id, *version, *sha256;
	json_int_t size;
};

/* 1 to max bytes of printable ASCII, as the server wants hello's fw. */
static bool sim__printable(const char *s, size_t max)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return false;
	return i >= 1 && i <= max;
}

static void sim__offer_get(json_t *root, struct sim_offer *o)
{
	json_t *size = json_object_get(root, "size");

	o->id = json_string_value(json_object_get(root, "id"));
	o->version = json_string_value(json_object_get(root, "version"));
	o->sha256 = json_string_value(json_object_get(root, "sha256"));
	o->size = json_is_integer(size) ? json_integer_value(size) : 0;
}

/* NULL if the offer can be taken, else the error to report. */
static const char *sim__offer_check(const struct sim_offer *o)
{
	if (!o->version || !sim__printable(o->version, SIM_UPD_STR))
		return "bad offer: version";
	if (o->size <= 0)
		return "bad offer: size";
	if (o->size > SIM_IMAGE_MAX)
		return "image too large";
	if (!o->sha256 || !sim__is_hex(o->sha256, 64))
		return "bad offer: sha256";
	return NULL;
}

static void sim__hex_decode(const char *hex, unsigned char *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char pair[3] = { hex[2 * i], hex[2 * i + 1], '\0' };

		out[i] = (unsigned char)strtoul(pair, NULL, 16);
	}
}

/* Queues one update frame (steals o, even NULL) and asks for WRITEABLE.  A
 * frame that cannot be built closes the connection, as elsewhere. */
static void sim__upd_send(struct sim_dev *d, json_t *o)
{
	struct sim_frame *f = sim__frame_json(o, SIM_FRAME_UPDATE);

	if (!f) {
		sim__err("%s: out of memory building an update frame", d->id);
		sim__dev_close(d, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return;
	}
	sim__queue_push(d, f);
	lws_callback_on_writable(d->wsi);
}

/* update_status for the current update; offset < 0 and error NULL leave
 * those members out. */
static void sim__upd_status(struct sim_dev *d, const char *state, long long offset,
			    const char *error)
{
	json_t *o = json_pack("{s:s, s:s, s:s}", "type", "update_status", "id", d->upd->id,
			      "state", state);
	int err = 0;

	if (o && offset >= 0)
		err |= json_object_set_new(o, "offset", json_integer(offset));
	if (o && error)
		err |= json_object_set_new(o, "error", json_string(error));
	if (err) {
		json_decref(o);
		o = NULL;
	}
	sim__upd_send(d, o);
}

/* Asks for the next chunk: one fetch outstanding at a time. */
static void sim__upd_fetch(const struct sim *sim, struct sim_dev *d)
{
	struct sim_upd *u = d->upd;
	size_t left = u->size - u->have;

	assert(u->state == SIM_UPD_FETCH && !u->asked && left);
	u->asked = left < (size_t)sim->o.update_chunk ? left : (size_t)sim->o.update_chunk;
	u->chunk_got = 0;
	sim__upd_send(d, json_pack("{s:s, s:s, s:I, s:I}", "type", "fetch", "id", u->id,
				   "offset", (json_int_t)u->have, "length", (json_int_t)u->asked));
}

/* The update is over, completed or failed. */
static void sim__upd_release(struct sim_upd *u)
{
	EVP_MD_CTX_free(u->md);
	u->md = NULL;
	free(u->chunk);
	u->chunk = NULL;
}

static void sim__upd_end(struct sim *sim, struct sim_upd *u)
{
	sim__upd_release(u);
	u->asked = 0;
	u->state = SIM_UPD_NONE;
	u->handled = true;
	sim__cron_soon(sim);	/* --exit-when-done may be complete */
}

/* Fails the current update, reporting failed when tell (not when the server
 * ended it or the connection is gone). */
static void sim__upd_fail(struct sim *sim, struct sim_dev *d, const char *reason, bool tell)
{
	sim__event(sim, "update-failed %s %s %s", d->id, d->upd->id, reason);
	if (tell)
		sim__upd_status(d, "failed", -1, reason);
	sim->n_upd_failed++;
	sim__upd_end(sim, d->upd);
}

/* From FETCH at offset `have`, progress reported again on this connection. */
static void sim__upd_begin(const struct sim *sim, struct sim_dev *d)
{
	struct sim_upd *u = d->upd;

	assert(u->md && u->chunk && u->have < u->size);
	u->state = SIM_UPD_FETCH;
	u->asked = 0;
	u->reported = false;
	u->quarter = (unsigned)((uint64_t)u->have * 4 / u->size) + 1;
	sim__upd_fetch(sim, d);
}

/* A new image replaces whatever was held; bad offers fail at once. */
static void sim__upd_start(struct sim *sim, struct sim_dev *d, const struct sim_offer *o,
			   const unsigned char *sha256)
{
	struct sim_upd *u = d->upd;
	const char *bad = sim__offer_check(o);

	sim__upd_release(u);
	snprintf(u->id, sizeof(u->id), "%s", o->id);
	snprintf(u->version, sizeof(u->version), "%s", o->version ? o->version : "");
	if (bad) {
		sim__upd_fail(sim, d, bad, true);
		return;
	}
	u->md = EVP_MD_CTX_new();
	u->chunk = malloc((size_t)sim->o.update_chunk);
	if (!u->md || !u->chunk) {
		sim__upd_fail(sim, d, "out of memory", true);
		return;
	}
	if (!EVP_DigestInit_ex(u->md, EVP_sha256(), NULL)) {
		sim__upd_fail(sim, d, "sha256 unavailable", true);
		return;
	}
	u->size = (size_t)o->size;
	u->have = 0;
	memcpy(u->sha256, sha256, sizeof(u->sha256));
	sim__upd_begin(sim, d);
}

/* Whether u holds (part of) the image offered. */
static bool sim__upd_holds(const struct sim_upd *u, const struct sim_offer *o,
			   const unsigned char *sha256)
{
	return u->md && !strcmp(u->id, o->id) && u->size == (size_t)o->size &&
	       !memcmp(u->sha256, sha256, sizeof(u->sha256));
}

/* An update frame.  The same image offered again resumes where it stopped. */
static void sim__on_offer(struct sim *sim, struct sim_dev *d, json_t *root, const char *buf,
			  size_t len)
{
	struct sim_offer o;
	struct sim_upd *u;
	unsigned char sha256[32] = { 0 };
	bool valid;

	sim__offer_get(root, &o);
	if (!o.id || !sim__printable(o.id, SIM_UPD_STR) || d->state != SIM_WELCOMED) {
		sim__event(sim, "frame %s %.*s", d->id, (int)len, buf);
		return;
	}
	sim__event(sim, "update %s %s %s %" JSON_INTEGER_FORMAT, d->id, o.id,
		   o.version ? o.version : "", o.size);
	if (sim->o.update == SIM_UPD_IGNORE)
		return;
	if (!d->upd && !(d->upd = calloc(1, sizeof(*d->upd)))) {
		sim__err("%s: out of memory for an update", d->id);
		sim__dev_close(d, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return;
	}
	u = d->upd;
	if (u->state == SIM_UPD_INSTALL || u->state == SIM_UPD_REBOOT)
		return;
	valid = !sim__offer_check(&o);
	if (valid)
		sim__hex_decode(o.sha256, sha256, sizeof(sha256));
	if (valid && sim__upd_holds(u, &o, sha256)) {
		if (u->state == SIM_UPD_HELD)
			sim__upd_begin(sim, d);
		return;		/* else a repeat while fetching */
	}
	sim__upd_start(sim, d, &o, sha256);
}

/* Every byte is in: check it, report downloaded and installing. */
static void sim__upd_verify(struct sim *sim, struct sim_dev *d)
{
	struct sim_upd *u = d->upd;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;

	if (!EVP_DigestFinal_ex(u->md, md, &mdlen)) {
		sim__upd_fail(sim, d, "sha256 unavailable", true);
		return;
	}
	if (mdlen != sizeof(u->sha256) || memcmp(md, u->sha256, sizeof(u->sha256))) {
		sim__upd_fail(sim, d, "sha256 mismatch", true);
		return;
	}
	sim__upd_release(u);
	sim__upd_status(d, "downloaded", -1, NULL);
	sim__event(sim, "downloaded %s %s", d->id, u->id);
	sim__upd_status(d, "installing", -1, NULL);
	sim__event(sim, "installing %s %s", d->id, u->id);
	u->state = SIM_UPD_INSTALL;
	u->at = lws_now_usecs() + (lws_usec_t)sim->o.install_ms * 1000;
	sim__cron_by(sim, u->at);
}

/* After each whole chunk: fail, drop, verify, or report and fetch on. */
static void sim__upd_progress(struct sim *sim, struct sim_dev *d)
{
	struct sim_upd *u = d->upd;

	if (sim->o.update == SIM_UPD_FAIL_DOWNLOAD) {
		sim__upd_fail(sim, d, "simulated download failure", true);
		return;
	}
	if (sim->o.drop_after && !u->dropped && u->have >= (size_t)sim->o.drop_after &&
	    u->have < u->size) {
		u->dropped = true;
		sim__dev_drop(d);
		return;
	}
	if (u->have == u->size) {
		sim__upd_verify(sim, d);
		return;
	}
	if (!u->reported || (uint64_t)u->have * 4 >= (uint64_t)u->quarter * u->size) {
		sim__upd_status(d, "downloading", (long long)u->have, NULL);
		u->reported = true;
		u->quarter = (unsigned)((uint64_t)u->have * 4 / u->size) + 1;
	}
	if (sim->o.update_delay_ms) {
		u->state = SIM_UPD_PAUSED;
		u->at = lws_now_usecs() + (lws_usec_t)sim->o.update_delay_ms * 1000;
		sim__cron_by(sim, u->at);
	} else {
		sim__upd_fetch(sim, d);
	}
}

/* A binary message is whole: the chunk asked for, or the update fails. */
static void sim__upd_chunk_done(struct sim *sim, struct sim_dev *d)
{
	struct sim_upd *u = d->upd;
	size_t got = u->chunk_got, n = got > SIM_CHUNK_HDR ? got - SIM_CHUNK_HDR : 0;
	uint64_t off = 0;
	char why[128];

	u->chunk_got = 0;
	for (int i = 0; i < SIM_CHUNK_HDR; i++)
		off = off << 8 | u->chunk_hdr[i];
	why[0] = '\0';
	if (got < SIM_CHUNK_HDR)
		snprintf(why, sizeof(why), "bad chunk: %zu bytes, no offset", got);
	else if (off != u->have)
		snprintf(why, sizeof(why), "bad chunk: offset %" PRIu64 ", asked for %zu", off,
			 u->have);
	else if (!n || n > u->asked)
		snprintf(why, sizeof(why), "bad chunk: %zu bytes, asked for %zu", n, u->asked);
	if (why[0]) {
		sim__upd_fail(sim, d, why, true);
		return;
	}
	if (!EVP_DigestUpdate(u->md, u->chunk, n)) {
		sim__upd_fail(sim, d, "sha256 unavailable", true);
		return;
	}
	u->have += n;
	u->asked = 0;
	sim__upd_progress(sim, d);
}

/* One piece of a binary message.  A chunk is SIM_CHUNK_HDR bytes of
 * big-endian offset, then the image from there: the bytes are gathered in
 * u->chunk (never past what was asked) and hashed and counted once the
 * message is whole and checked. */
static void sim__on_chunk(struct sim *sim, struct sim_dev *d, const unsigned char *in,
			  size_t len, bool final)
{
	struct sim_upd *u = d->upd;

	if (!u || u->state != SIM_UPD_FETCH || !u->asked) {
		if (final)
			sim__err("%s: a binary frame without a fetch; ignored", d->id);
		return;
	}
	for (; len && u->chunk_got < SIM_CHUNK_HDR; len--)
		u->chunk_hdr[u->chunk_got++] = *in++;
	if (len && u->chunk_got - SIM_CHUNK_HDR < u->asked) {
		size_t at = u->chunk_got - SIM_CHUNK_HDR, room = u->asked - at;

		memcpy(u->chunk + at, in, len < room ? len : room);
	}
	u->chunk_got += len;
	if (final)
		sim__upd_chunk_done(sim, d);
}

/* The device runs the new version from its next hello on, and reconnects at
 * once (a reboot), --reconnect or not. */
static void sim__upd_reboot(struct sim *sim, struct sim_dev *d)
{
	struct sim_upd *u = d->upd;

	sim__event(sim, "rebooting %s %s", d->id, u->version);
	memcpy(u->running, u->version, sizeof(u->running));
	d->fw = u->running;
	u->state = SIM_UPD_REBOOT;
	d->reconnect_once = true;
	d->reconnect_now = true;
}

/* --install-time is over: fail as told, or reboot. */
static void sim__upd_installed(struct sim *sim, struct sim_dev *d)
{
	if (sim->o.update == SIM_UPD_FAIL_INSTALL) {
		sim__upd_fail(sim, d, "simulated install failure", true);
		return;
	}
	sim__upd_reboot(sim, d);
	sim__dev_close(d, LWS_CLOSE_STATUS_NORMAL, "rebooting");
}

static bool sim__queue_has(const struct sim_dev *d, enum sim_kind kind)
{
	for (const struct sim_frame *f = d->q_head; f; f = f->next)
		if (f->kind == kind)
			return true;
	return false;
}

/* The cron's part for a WELCOMED device: the next fetch after --update-delay
 * and the end of --install-time (once installing is written).  Returns when
 * it has work next for d. */
static lws_usec_t sim__upd_tick(struct sim *sim, struct sim_dev *d, lws_usec_t now)
{
	struct sim_upd *u = d->upd;

	if (d->want_close || (u->state != SIM_UPD_PAUSED && u->state != SIM_UPD_INSTALL))
		return SIM_NEVER;
	if (now < u->at)
		return u->at;
	if (u->state == SIM_UPD_PAUSED) {
		u->state = SIM_UPD_FETCH;
		sim__upd_fetch(sim, d);
	} else if (sim__queue_has(d, SIM_FRAME_UPDATE)) {
		return now + SIM_TICK_MIN_US;
	} else {
		sim__upd_installed(sim, d);
	}
	return SIM_NEVER;
}

/* d's connection is gone: a download waits for the re-offer, an install
 * finishes offline.  While the process stops nothing more happens. */
static void sim__upd_gone(struct sim *sim, struct sim_dev *d)
{
	struct sim_upd *u = d->upd;

	if (!u)
		return;
	u->asked = u->chunk_got = 0;
	if (sim->stop != SIM_RUNNING || sim->destroying)
		return;
	if (u->state == SIM_UPD_FETCH || u->state == SIM_UPD_PAUSED)
		u->state = SIM_UPD_HELD;
	else if (u->state == SIM_UPD_INSTALL && sim->o.update == SIM_UPD_FAIL_INSTALL)
		sim__upd_fail(sim, d, "simulated install failure", false);
	else if (u->state == SIM_UPD_INSTALL)
		sim__upd_reboot(sim, d);
}

/* A welcome after the reboot completes the update. */
static void sim__upd_welcome(struct sim *sim, struct sim_dev *d)
{
	if (d->upd && d->upd->state == SIM_UPD_REBOOT) {
		sim->n_upd_done++;
		sim__upd_end(sim, d->upd);
	}
}

/* An error frame bad_update ends the update in progress, silently. */
static void sim__upd_refused(struct sim *sim, struct sim_dev *d)
{
	struct sim_upd *u = d->upd;

	if (u && (u->state == SIM_UPD_FETCH || u->state == SIM_UPD_PAUSED ||
		  u->state == SIM_UPD_INSTALL))
		sim__upd_fail(sim, d, "bad_update", false);
}

/* No update in progress and, with --wait-update, one has ended or the wait
 * is over. */
static bool sim__upd_settled(const struct sim *sim, const struct sim_dev *d, lws_usec_t now)
{
	const struct sim_upd *u = d->upd;

	if (u && u->state != SIM_UPD_NONE)
		return false;
	return sim->o.wait_update < 0 || (u && u->handled) || now >= d->wait_until;
}

/* ---- connection events ----------------------------------------------------- */

/* d reconnects: at once after a reboot, else after the backoff. */
static void sim__dev_retry(struct sim *sim, struct sim_dev *d)
{
	lws_usec_t now = lws_now_usecs();

	if (d->reconnect_once && d->reconnect_now) {
		d->retry_at = now;
	} else {
		d->retry_at = now + sim__jitter(d->backoff);
		d->backoff = d->backoff * 2 > SIM_BACKOFF_MAX_US ? SIM_BACKOFF_MAX_US
								: d->backoff * 2;
	}
	sim__dev_set_state(sim, d, SIM_IDLE);
}

/* d's connection is gone: failed, closed by either side, or lost.  Reports it
 * unless we closed it, drops the queue and decides what d does next. */
static void sim__dev_gone(struct sim *sim, struct sim_dev *d, const char *connect_error)
{
	if (d->state == SIM_IDLE || d->state == SIM_DEAD)
		return;		/* already reported through another callback */
	if (!d->we_closed && !sim->destroying) {
		if (connect_error)
			sim__event(sim, "connect-error %s %s", d->id, connect_error);
		else if (d->close_code)
			sim__event(sim, "closed %s %d %s", d->id, d->close_code, d->close_reason);
		else
			sim__event(sim, "closed %s 1006 connection lost", d->id);
	}
	sim__upd_gone(sim, d);
	sim__queue_drop(d);
	d->wsi = NULL;
	d->want_close = d->we_closed = d->rx_paused = d->rx_discard = d->rx_binary = false;
	d->close_code = 0;
	d->rx_len = 0;
	if ((sim->o.reconnect || d->reconnect_once) && sim->stop == SIM_RUNNING) {
		sim__dev_retry(sim, d);
	} else {
		sim__dev_set_state(sim, d, SIM_DEAD);
	}
	d->reconnect_once = d->reconnect_now = false;
	sim__cron_soon(sim);
}

static void sim__dev_connect(struct sim *sim, struct sim_dev *d)
{
	struct lws_client_connect_info ci;
	struct lws *wsi;

	memset(&ci, 0, sizeof(ci));
	ci.context = sim->ctx;
	ci.address = sim->o.host;
	ci.port = sim->o.port;
	ci.path = sim->o.path;
	ci.host = sim->o.hostport;
	ci.ietf_version_or_minus_one = -1;
	ci.local_protocol_name = "tender-sim";	/* no Sec-WebSocket-Protocol sent */
	ci.method = sim->o.mqtt ? "RAW" : NULL;	/* RAW: a bare TCP connection */
	if (sim->o.tls)
		ci.ssl_connection = LCCSCF_USE_SSL |
			(sim->o.insecure ? LCCSCF_ALLOW_SELFSIGNED | LCCSCF_ALLOW_EXPIRED |
			 LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK | LCCSCF_ALLOW_INSECURE : 0);
	ci.opaque_user_data = d;
	/* No lws validity timer: lws keeps its timers in one sorted list and
	 * re-inserts a connection's at every frame it receives (O(devices) a
	 * frame).  The server pings; lws answers by itself. */
	static const lws_retry_bo_t no_validity_timers = { .secs_since_valid_hangup = 0 };
	ci.retry_and_idle_policy = &no_validity_timers;
	sim__dev_set_state(sim, d, SIM_CONNECTING);
	wsi = lws_client_connect_via_info(&ci);
	/* A failure may have been reported from inside the call already. */
	if (d->state != SIM_CONNECTING)
		return;
	if (!wsi)
		sim__dev_gone(sim, d, "cannot start the connection");
	else if (!d->wsi)
		d->wsi = wsi;
}

static int sim__on_established(struct sim *sim, struct sim_dev *d, struct lws *wsi)
{
	struct sim_frame *f;

	d->wsi = wsi;
	sim__dev_set_state(sim, d, SIM_OPEN);
	if (sim->stop != SIM_RUNNING) {
		sim__dev_close(d, LWS_CLOSE_STATUS_NORMAL, "");
		return 0;
	}
	f = sim->o.mqtt ? sim__mqtt_connect(sim, d)
	    : sim->o.raw_first ? sim__frame_text(sim->o.raw_first, strlen(sim->o.raw_first),
						 SIM_FRAME_HELLO)
	    : sim__build_hello(sim, d);
	if (!f) {
		sim__err("%s: out of memory building hello", d->id);
		sim__dev_close(d, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return 0;
	}
	sim__queue_push(d, f);
	lws_callback_on_writable(wsi);
	return 0;
}

/* Welcome: queue --raw-after and --oversize, then start pacing. */
static int sim__on_welcome(struct sim *sim, struct sim_dev *d)
{
	lws_usec_t now = lws_now_usecs();
	struct sim_frame *f;

	sim__dev_set_state(sim, d, SIM_WELCOMED);
	if (!d->ever_welcomed) {
		d->ever_welcomed = true;
		sim->n_welcomed++;
		if (sim->o.wait_update >= 0)
			d->wait_until = now + (lws_usec_t)(sim->o.wait_update * 1e6);
	}
	sim__upd_welcome(sim, d);
	d->backoff = SIM_BACKOFF_MIN_US;
	d->log.start = d->msg.start = now;
	d->log.base = d->log.made;
	d->msg.base = d->msg.made;
	if (sim->o.mqtt && sim->msg_limit) {	/* msgs come back through it */
		f = sim__mqtt_subscribe(sim, d);
		if (!f)
			return -1;
		sim__queue_push(d, f);
	}
	for (int i = 0; i < sim->o.n_raw_after; i++) {
		f = sim__frame_text(sim->o.raw_after[i], strlen(sim->o.raw_after[i]),
				    SIM_FRAME_EXTRA);
		if (!f)
			return -1;
		sim__queue_push(d, f);
	}
	if (sim->o.oversize) {
		f = sim__build_oversize((size_t)sim->o.oversize);
		if (!f)
			return -1;
		sim__queue_push(d, f);
	}
	if (sim__dev_fill(sim, d, now))
		return -1;
	if (d->q_head)
		lws_callback_on_writable(d->wsi);
	if (sim->o.no_pong) {
		lws_rx_flow_control(d->wsi, 0);
		d->rx_paused = true;
	}
	sim__cron_soon(sim);	/* a connect slot is free; maybe nothing to send */
	return 0;
}

/* --expect: a reply must carry the next seq; its latency is kept. */
static void sim__expect_reply(struct sim *sim, struct sim_dev *d, json_t *data)
{
	json_t *seq = json_object_get(data, "seq");
	uint64_t want = d->replies + 1;

	if (!json_is_integer(seq) || (uint64_t)json_integer_value(seq) != want ||
	    want > d->msg.made || d->msg.made - want >= SIM_RTT_RING) {
		sim->n_bad_replies++;
		return;
	}
	d->replies = want;
	lws_usec_t now = lws_now_usecs();
	if (!sim->rtt_first)
		sim->rtt_first = now;
	sim->rtt_last = now;
	if (sim->rtt_us && sim->n_rtt < SIM_RTT_MAX) {
		lws_usec_t rtt = now - d->sent_at[want % SIM_RTT_RING];
		sim->rtt_us[sim->n_rtt++] = rtt > UINT32_MAX ? UINT32_MAX : (uint32_t)rtt;
	}
	/* The window moved: queue what it now allows. */
	if (d->state == SIM_WELCOMED && !sim__dev_fill(sim, d, now) && d->q_head)
		lws_callback_on_writable(d->wsi);
}

static void sim__print_msg(struct sim *sim, struct sim_dev *d, json_t *root)
{
	const char *name = json_string_value(json_object_get(root, "name"));
	json_t *data = json_object_get(root, "data");

	if (sim->o.expect && name && strcmp(name, sim->o.expect) == 0)
		sim__expect_reply(sim, d, data);
	char *s = data ? json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;

	sim__event(sim, "msg %s %s %s", d->id, name ? name : "", s ? s : "null");
	free(s);
}

/* One whole server message. */
static void sim__handle_frame(struct sim *sim, struct sim_dev *d, const char *buf, size_t len)
{
	json_t *root = json_loadb(buf, len, 0, NULL);
	const char *type = json_string_value(json_object_get(root, "type"));

	sim->n_received++;
	if (type && !strcmp(type, "welcome")) {
		sim__event(sim, "welcome %s", d->id);
		if (d->state == SIM_OPEN && sim__on_welcome(sim, d)) {
			sim__err("%s: out of memory after welcome", d->id);
			sim__dev_close(d, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		}
	} else if (type && !strcmp(type, "error")) {
		const char *code = json_string_value(json_object_get(root, "code"));
		const char *message = json_string_value(json_object_get(root, "message"));

		sim__event(sim, "error-frame %s %s %s", d->id, code ? code : "",
			   message ? message : "");
		if (code && !strcmp(code, "bad_update"))
			sim__upd_refused(sim, d);
	} else if (type && !strcmp(type, "msg")) {
		sim__print_msg(sim, d, root);
	} else if (type && !strcmp(type, "update")) {
		sim__on_offer(sim, d, root, buf, len);
	} else {
		sim__event(sim, "frame %s %.*s", d->id, (int)len, buf);
	}
	json_decref(root);
}

/* Appends one piece of a server message to d->rx; -1 if it cannot. */
static int sim__rx_append(struct sim_dev *d, const void *in, size_t len)
{
	size_t cap = d->rx_cap ? d->rx_cap : 4096;
	unsigned char *n;

	if (len > SIM_MAX_RX - d->rx_len) {
		sim__err("%s: server frame over %d bytes; closing", d->id, SIM_MAX_RX);
		sim__dev_close(d, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "frame too large");
		return -1;
	}
	if (d->rx_len + len > d->rx_cap) {
		while (cap < d->rx_len + len)
			cap *= 2;
		n = realloc(d->rx, cap);
		if (!n) {
			sim__err("%s: out of memory receiving", d->id);
			sim__dev_close(d, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
			return -1;
		}
		d->rx = n;
		d->rx_cap = cap;
	}
	memcpy(d->rx + d->rx_len, in, len);
	d->rx_len += len;
	return 0;
}

/* Reassembles fragments (lws hands a big frame over in pieces too); binary
 * messages (image chunks) are streamed instead.  Errors close the connection
 * later and drop what is still coming of the frame: never return an error
 * from here (see sim__dev_close). */
static int sim__on_receive(struct sim *sim, struct sim_dev *d, struct lws *wsi,
			   const void *in, size_t len)
{
	bool final = lws_is_final_fragment(wsi);

	if (d->rx_discard)
		return 0;
	if (!d->rx_len && !d->rx_binary)	/* a message starts */
		d->rx_binary = lws_frame_is_binary(wsi) != 0;
	if (d->rx_binary) {
		d->rx_binary = !final;
		sim->n_received += final;
		sim__on_chunk(sim, d, in, len, final);
		return 0;
	}
	if (!d->rx_len && final) {	/* the common case: no copy */
		sim__handle_frame(sim, d, in, len);
		return 0;
	}
	if (sim__rx_append(d, in, len)) {
		d->rx_discard = true;
		d->rx_len = 0;
		return 0;
	}
	if (!final)
		return 0;
	sim__handle_frame(sim, d, (const char *)d->rx, d->rx_len);
	d->rx_len = 0;
	if (d->rx_cap > 65536) {	/* do not hold big buffers for rare big frames */
		free(d->rx);
		d->rx = NULL;
		d->rx_cap = 0;
	}
	return 0;
}

/* CONNACK: return code 0 is the welcome, any other a refusal. */
static int sim__mqtt_on_connack(struct sim *sim, struct sim_dev *d, const unsigned char *b,
				size_t len)
{
	if (len != 2)
		return -1;
	if (d->state != SIM_OPEN)
		return 0;
	if (b[1]) {
		sim__event(sim, "connect-error %s CONNACK return code %u", d->id, b[1]);
		sim__dev_close(d, LWS_CLOSE_STATUS_NORMAL, "");
		return 0;
	}
	sim__event(sim, "welcome %s", d->id);
	if (sim__on_welcome(sim, d)) {
		sim__err("%s: out of memory after welcome", d->id);
		sim__dev_close(d, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
	}
	return 0;
}

static void sim__expect_reply(struct sim *sim, struct sim_dev *d, json_t *data);

/* PUBLISH: a msg line with its topic and payload.  With --expect every
 * PUBLISH is a reply: its payload is the {"seq":n} we published. */
static int sim__mqtt_on_publish(struct sim *sim, struct sim_dev *d, unsigned hdr,
				const unsigned char *b, size_t len)
{
	size_t tlen, skip;

	if (len < 2)
		return -1;
	tlen = (size_t)b[0] << 8 | b[1];
	skip = 2 + tlen + ((hdr >> 1 & 3) ? 2 : 0);	/* QoS 1 and 2 have a packet id */
	if (skip > len)
		return -1;
	if (sim->o.expect) {
		json_t *data = json_loadb((const char *)b + skip, len - skip, 0, NULL);

		sim__expect_reply(sim, d, data);
		json_decref(data);
	}
	sim__event(sim, "msg %s %.*s %.*s", d->id, (int)tlen, (const char *)b + 2,
		   (int)(len - skip), (const char *)b + skip);
	return 0;
}

/* One whole packet: fixed header byte hdr, then len bytes at b.  -1: malformed. */
static int sim__mqtt_packet(struct sim *sim, struct sim_dev *d, unsigned hdr,
			    const unsigned char *b, size_t len)
{
	sim->n_received++;
	switch (hdr >> 4) {
	case SIM_MQTT_CONNACK:
		return sim__mqtt_on_connack(sim, d, b, len);
	case SIM_MQTT_PUBLISH:
		return sim__mqtt_on_publish(sim, d, hdr, b, len);
	case SIM_MQTT_SUBACK:
	case SIM_MQTT_PINGRESP:
		return 0;
	default:
		sim__event(sim, "frame %s mqtt-packet-type %u", d->id, hdr >> 4);
		return 0;
	}
}

/* Handles the first packet in buf if it is whole.  Returns its size, 0 while
 * it is incomplete, or -1 if it is malformed or larger than SIM_MAX_RX. */
static long sim__mqtt_split(struct sim *sim, struct sim_dev *d, const unsigned char *buf,
			    size_t len)
{
	size_t rem = 0, i;

	for (i = 1;; i++) {		/* remaining length: at most 4 bytes */
		if (i > 4)
			return -1;
		if (i >= len)
			return 0;
		rem |= (size_t)(buf[i] & 0x7f) << (7 * (i - 1));
		if (!(buf[i] & 0x80))
			break;
	}
	if (rem > SIM_MAX_RX)
		return -1;
	if (len - (i + 1) < rem)
		return 0;
	if (sim__mqtt_packet(sim, d, buf[0], buf + i + 1, rem))
		return -1;
	return (long)(i + 1 + rem);
}

/* RAW_RX: a piece of the byte stream.  Whole packets are handled where they
 * lie; the start of one split across reads waits in d->rx.  Errors close the
 * connection later and drop what still comes, as on the WebSocket side. */
static int sim__mqtt_on_rx(struct sim *sim, struct sim_dev *d, const unsigned char *in,
			   size_t len)
{
	const unsigned char *p = in;
	size_t n = len;
	long used = 0;

	if (d->rx_discard)
		return 0;
	if (d->rx_len) {
		if (sim__rx_append(d, in, len))
			goto discard;
		p = d->rx;
		n = d->rx_len;
	}
	while (n && (used = sim__mqtt_split(sim, d, p, n)) > 0) {
		p += used;
		n -= (size_t)used;
	}
	if (used < 0) {
		sim__err("%s: malformed or oversized MQTT packet; closing", d->id);
		sim__dev_close(d, LWS_CLOSE_STATUS_PROTOCOL_ERR, "");
		goto discard;
	}
	if (d->rx_len) {
		memmove(d->rx, p, n);
		d->rx_len = n;
	} else if (n && sim__rx_append(d, p, n)) {
		goto discard;
	}
	return 0;
discard:
	d->rx_discard = true;
	d->rx_len = 0;
	return 0;
}

/* Our close with --mqtt: DISCONNECT first when it is a normal one. */
static int sim__mqtt_close(struct sim_dev *d, struct lws *wsi)
{
	unsigned char buf[LWS_PRE + 2] = { [LWS_PRE] = SIM_MQTT_DISCONNECT, 0 };

	if (d->state == SIM_WELCOMED && d->our_status == LWS_CLOSE_STATUS_NORMAL)
		lws_write(wsi, buf + LWS_PRE, 2, LWS_WRITE_RAW);
	return -1;
}

/* One lws_write per WRITEABLE, as lws requires. */
/* Counts a frame as sent and frees it. */
static void sim__sent(struct sim *sim, struct sim_dev *d, struct sim_frame *f)
{
	if (f->kind == SIM_FRAME_LOG) {
		d->log.sent++;
		sim->n_log_sent++;
	} else if (f->kind == SIM_FRAME_MSG) {
		d->msg.sent++;
		sim->n_msg_sent++;
	}
	free(f);
}

/* A client's WebSocket frame header (RFC 6455 5.2: FIN, text, masked) and
 * its masked payload at out; returns the bytes written.  The mask key comes
 * from a xorshift generator: lws reads /dev/urandom for every frame it
 * masks, which was a sixth of the simulator's time. */
static size_t sim__ws_frame(struct sim *sim, unsigned char *out, const unsigned char *in, size_t len)
{
	size_t h = 0;
	unsigned char key[4];
	uint64_t x = sim->mask_rng;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	sim->mask_rng = x;
	memcpy(key, &x, 4);
	out[h++] = 0x81;
	if (len < 126) {
		out[h++] = 0x80 | (unsigned char)len;
	} else if (len <= 0xffff) {
		out[h++] = 0x80 | 126;
		out[h++] = (unsigned char)(len >> 8);
		out[h++] = (unsigned char)len;
	} else {
		out[h++] = 0x80 | 127;
		for (int i = 0; i < 8; i++)
			out[h++] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
	}
	memcpy(out + h, key, 4);
	h += 4;
	for (size_t i = 0; i < len; i++)
		out[h + i] = in[i] ^ key[i & 3];
	return h + len;
}

/* Writes the queued frames that fit in SIM_COALESCE in one send() (raw:
 * framed and masked here, or MQTT packets as they are).  Returns -1 on a
 * failed write. */
static int sim__write_coalesced(struct sim *sim, struct sim_dev *d, struct lws *wsi)
{
	unsigned char *out = sim->wbuf + LWS_PRE;
	size_t used = 0;
	struct sim_frame *f;

	while ((f = d->q_head) && used + 14 + f->len <= SIM_COALESCE) {
		sim__queue_pop(d);
		if (sim->o.mqtt) {
			memcpy(out + used, f->buf + LWS_PRE, f->len);
			used += f->len;
		} else {
			used += sim__ws_frame(sim, out + used, f->buf + LWS_PRE, f->len);
		}
		sim__sent(sim, d, f);
	}
	if (lws_write(wsi, out, used, LWS_WRITE_RAW) < (int)used) {
		sim__err("%s: write failed", d->id);
		return -1;
	}
	return 0;
}

static int sim__on_writeable(struct sim *sim, struct sim_dev *d, struct lws *wsi)
{
	struct sim_frame *f;
	lws_usec_t now;
	int n;

	if (d->want_close && sim->o.mqtt)
		return sim__mqtt_close(d, wsi);
	if (d->want_close) {
		lws_close_reason(wsi, d->our_status, (unsigned char *)d->our_reason,
				 strlen(d->our_reason));
		return -1;
	}
	f = d->q_head;
	if (!f)
		return 0;
	if (f->len + 14 <= SIM_COALESCE) {
		if (sim__write_coalesced(sim, d, wsi))
			return -1;
	} else {
		/* Larger than the buffer: lws frames it. */
		sim__queue_pop(d);
		n = lws_write(wsi, f->buf + LWS_PRE, f->len, sim->o.mqtt ? LWS_WRITE_RAW : LWS_WRITE_TEXT);
		if (n < (int)f->len) {
			sim__err("%s: write failed", d->id);
			free(f);
			return -1;
		}
		sim__sent(sim, d, f);
	}
	now = lws_now_usecs();
	d->last_tx = now;
	if (sim__dev_fill(sim, d, now))
		sim__dev_close(d, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
	if (d->q_head)
		lws_callback_on_writable(wsi);
	else if (sim->o.exit_when_done)
		sim__cron_soon(sim);	/* d may have finished */
	return 0;
}

/* The server's close frame: 2 bytes of code, then the reason. */
static void sim__on_peer_close(struct sim_dev *d, const unsigned char *in, size_t len)
{
	size_t rlen;

	if (len < 2) {
		d->close_code = 1005;	/* RFC 6455: a close frame without a code */
		d->close_reason[0] = '\0';
		return;
	}
	d->close_code = (in[0] << 8) | in[1];
	rlen = len - 2 < sizeof(d->close_reason) - 1 ? len - 2 : sizeof(d->close_reason) - 1;
	memcpy(d->close_reason, in + 2, rlen);
	d->close_reason[rlen] = '\0';
}

static int sim__callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
			 void *in, size_t len)
{
	struct sim_dev *d = lws_get_opaque_user_data(wsi);
	struct sim *sim;

	if (!d)
		return 0;	/* not a device connection */
	sim = lws_context_user(lws_get_context(wsi));
	switch (reason) {
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		sim__dev_gone(sim, d, in ? (const char *)in : "unknown error");
		return 0;
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		return sim__on_established(sim, d, wsi);
	case LWS_CALLBACK_CLIENT_RECEIVE:
		return sim__on_receive(sim, d, wsi, in, len);
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		return sim__on_writeable(sim, d, wsi);
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		sim__on_peer_close(d, in, len);
		return 0;
	case LWS_CALLBACK_CLIENT_CLOSED:
	case LWS_CALLBACK_RAW_CLOSE:
		sim__dev_gone(sim, d, NULL);
		return 0;
	case LWS_CALLBACK_RAW_CONNECTED:		/* --mqtt from here on */
		return sim__on_established(sim, d, wsi);
	case LWS_CALLBACK_RAW_RX:
		return sim__mqtt_on_rx(sim, d, in, len);
	case LWS_CALLBACK_RAW_WRITEABLE:
		return sim__on_writeable(sim, d, wsi);
	case LWS_CALLBACK_WSI_DESTROY:
		/* Safety net for a wsi that went without either callback above. */
		if (d->wsi == wsi)
			sim__dev_gone(sim, d, d->state == SIM_CONNECTING ? "connection closed during the handshake"
									  : NULL);
		return 0;
	default:
		return 0;
	}
}

static struct lws_protocols sim_protocols[] = {	/* rx buffer set for TLS in sim__start */
	{ "tender-sim", sim__callback, 0, SIM_RX_BUFFER, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

/* ---- cron and stopping ----------------------------------------------------- */

static bool sim__dev_finished(const struct sim *sim, const struct sim_dev *d, lws_usec_t now)
{
	return d->ever_welcomed && !d->q_head && d->log.sent >= sim->log_limit &&
	       d->msg.sent >= sim->msg_limit && sim__upd_settled(sim, d, now) &&
	       (!sim->o.expect || d->replies >= sim->msg_limit);
}

static void sim__begin_stop(struct sim *sim, enum sim_stop why)
{
	if (sim->stop != SIM_RUNNING)
		return;
	sim->stop = why;
	sim->close_deadline = lws_now_usecs() + SIM_CLOSE_GRACE_US;
	for (size_t i = 0; i < sim->n_devs; i++) {
		struct sim_dev *d = &sim->devs[i];

		if (d->wsi)
			sim__dev_close(d, LWS_CLOSE_STATUS_NORMAL, "");
		else if (d->state == SIM_IDLE)
			sim__dev_set_state(sim, d, SIM_DEAD);
	}
}

static lws_usec_t sim__min(lws_usec_t a, lws_usec_t b)
{
	return a < b ? a : b;
}

/* When the next frame of this kind falls due (see sim__fill_kind). */
static lws_usec_t sim__pace_next(const struct sim_pace *p, double rate, uint64_t limit)
{
	if (rate <= 0 || p->made >= limit)
		return SIM_NEVER;
	return p->start + (lws_usec_t)((double)(p->made - p->base) * 1e6 / rate) + 1;
}

/* --mqtt: a WELCOMED device that has written nothing for half the keepalive
 * queues a PINGREQ (the broker drops a client silent for 1.5 keepalives).
 * Returns when it has work next for d. */
static lws_usec_t sim__mqtt_keepalive(struct sim_dev *d, long keepalive, lws_usec_t now)
{
	lws_usec_t half = (lws_usec_t)keepalive * 500000, due = d->last_tx + half;
	struct sim_frame *f;

	if (!keepalive || d->want_close)
		return SIM_NEVER;
	if (now < due)
		return due;
	if (d->q_head)			/* it is writing: last_tx moves on */
		return now + half;
	f = sim__mqtt_pingreq();
	if (!f) {
		sim__err("%s: out of memory building a PINGREQ", d->id);
		sim__dev_close(d, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return SIM_NEVER;
	}
	sim__queue_push(d, f);
	lws_callback_on_writable(d->wsi);
	return now + half;
}

/* Walks every device once: connects those due, paces traffic, runs update
 * timers, and notes whether --exit-when-done is complete.  Returns when it
 * has work next. */
static lws_usec_t sim__walk(struct sim *sim, lws_usec_t now)
{
	bool all_done = true, all_finished = true;
	size_t pending = sim->n_state[SIM_CONNECTING] + sim->n_state[SIM_OPEN];
	bool paced = sim->o.log_rate > 0 || sim->o.msg_rate > 0;
	lws_usec_t next = SIM_NEVER;

	for (size_t i = 0; i < sim->n_devs; i++) {
		struct sim_dev *d = &sim->devs[i];

		if (d->state == SIM_IDLE && d->retry_at > now) {
			next = sim__min(next, d->retry_at);
		} else if (d->state == SIM_IDLE && pending < (size_t)sim->o.max_pending) {
			sim__dev_connect(sim, d);
			pending++;
		} else if (d->state == SIM_WELCOMED && paced) {
			if (sim__dev_fill(sim, d, now))
				sim__dev_close(d, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION,
					       "out of memory");
			else if (d->q_len < SIM_QUEUE_MAX)	/* else WRITEABLE refills */
				next = sim__min(next, sim__min(
					sim__pace_next(&d->log, sim->o.log_rate, sim->log_limit),
					sim__pace_next(&d->msg, sim->o.msg_rate, sim->msg_limit)));
		}
		if (d->upd && d->state == SIM_WELCOMED)
			next = sim__min(next, sim__upd_tick(sim, d, now));
		if (sim->o.mqtt && d->state == SIM_WELCOMED)
			next = sim__min(next, sim__mqtt_keepalive(d, sim->o.mqtt_keepalive, now));
		if (!sim__dev_finished(sim, d, now)) {
			all_finished = false;
			if (d->state != SIM_DEAD)
				all_done = false;	/* it may still finish */
			if (d->wait_until > now)
				next = sim__min(next, d->wait_until);
		}
	}
	sim->all_finished = all_finished;
	if (sim->o.exit_when_done && all_done)
		sim__begin_stop(sim, SIM_STOP_DONE);
	else if (!sim->o.reconnect && sim->n_state[SIM_DEAD] == sim->n_devs)
		sim__begin_stop(sim, SIM_STOP_ALL_CLOSED);
	return next;
}

/* While stopping: done once no connection is left, or the grace is over. */
static lws_usec_t sim__stopping(struct sim *sim, lws_usec_t now)
{
	size_t live = sim->n_state[SIM_CONNECTING] + sim->n_state[SIM_OPEN] +
		      sim->n_state[SIM_WELCOMED];

	if (!live || now >= sim->close_deadline) {
		sim->finished = true;
		lws_cancel_service(sim->ctx);	/* end the loop's pass at once */
	}
	return sim->close_deadline;
}

static void sim__cron_at(struct sim *sim, lws_usec_t delay)
{
	ev_timer_stop(sim->ev, &sim->cron);
	ev_timer_set(&sim->cron, (double)delay / 1e6, 0.);
	ev_timer_start(sim->ev, &sim->cron);
}

static void sim__lws_tick(lws_sorted_usec_list_t *sul)
{
	struct sim *sim = lws_container_of(sul, struct sim, lws_tick);

	if (!sim->finished && !sim->destroying)
		lws_sul_schedule(sim->ctx, 0, &sim->lws_tick, sim__lws_tick, SIM_LWS_TICK_US);
}

/* The one periodic job of the service loop.  It sleeps until the next thing
 * it has to do (at most SIM_TICK_MAX_US, at least SIM_TICK_MIN_US): every
 * run walks every device, which at 10,000 devices is a fraction of a
 * millisecond.  Callbacks that change what it would decide call
 * sim__cron_soon(). */
static void sim__cron(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct sim *sim = lws_container_of(w, struct sim, cron);
	lws_usec_t now = lws_now_usecs(), next = SIM_NEVER, delay;

	sim->in_cron = true;
	sim->poked = false;
	if (sim_signalled)
		sim__begin_stop(sim, SIM_STOP_SIGNAL);
	if (sim->deadline && now >= sim->deadline)
		sim__begin_stop(sim, SIM_STOP_DURATION);
	if (sim->stop == SIM_RUNNING) {
		if (sim->stall_at && !sim->stalled && now >= sim->stall_at)
			sim->stall_now = true;
		next = sim__walk(sim, now);
		if (sim->stall_at && !sim->stalled)
			next = sim__min(next, sim->stall_at);
	}
	if (sim->deadline)
		next = sim__min(next, sim->deadline);
	if (sim->stop != SIM_RUNNING)
		next = sim__min(next, sim__stopping(sim, now));
	sim->in_cron = false;
	if (sim->finished)
		return;
	delay = next - now;
	if (delay > SIM_TICK_MAX_US)
		delay = SIM_TICK_MAX_US;
	if (delay < SIM_TICK_MIN_US)
		delay = SIM_TICK_MIN_US;
	if (sim->poked)
		delay = SIM_POKE_US;
	sim->cron_at = now + delay;
	sim__cron_at(sim, delay);
}

/* --stall-after: the whole process freezes, so the server sees no reads, no
 * writes and no pongs.  Wakes for a signal or the end of --duration. */
static void sim__stall(struct sim *sim)
{
	const struct timespec nap = { 0, 50 * 1000 * 1000 };

	sim->stall_now = false;
	sim->stalled = true;
	while (!sim_signalled && (!sim->deadline || lws_now_usecs() < sim->deadline))
		nanosleep(&nap, NULL);
}

/* ---- main ------------------------------------------------------------------ */

static void sim__on_signal(int sig)
{
	sim_signalled = 1;
}

static int sim__signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = sim__on_signal;	/* no SA_RESTART: poll() returns at once */
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL))
		return -errno;
	sa.sa_handler = SIG_IGN;
	if (sigaction(SIGPIPE, &sa, NULL))
		return -errno;
	return 0;
}

/* Every device is a socket: take all the open files the hard limit allows. */
static unsigned sim__raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		struct rlimit want = { rl.rlim_max, rl.rlim_max };

		if (!setrlimit(RLIMIT_NOFILE, &want))
			rl = want;
	}
	return rl.rlim_cur > 1048576 ? 1048576 : (unsigned)rl.rlim_cur;
}

static int sim__start(struct sim *sim, unsigned fd_limit)
{
	struct lws_context_creation_info info;
	lws_usec_t now = lws_now_usecs();
	int levels = sim->o.quiet ? LLL_ERR : LLL_ERR | LLL_WARN;

	if (sim->o.verbose)
		levels |= LLL_NOTICE | LLL_INFO | LLL_CLIENT;
	lws_set_log_level(levels, sim__lws_log);
	/* lws's poll() loop scans every socket at every wake-up: on libev
	 * (epoll) a wake-up costs what is ready, whatever the device count. */
	sim->wbuf = malloc(LWS_PRE + SIM_COALESCE);
	sim->mask_rng = ((uint64_t)lrand48() << 32 | (uint64_t)lrand48()) | 1;
	sim->ev = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (!sim->wbuf || !sim->ev) {
		sim__err("cannot create the event loop");
		return -1;
	}
	void *foreign_loops[1] = { sim->ev };
	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_LIBEV;
	/* With TLS, read a whole record (16 KiB at most) at once: what a smaller
	 * read leaves inside OpenSSL is served only from libev's idle watcher,
	 * which never runs while other sockets keep the loop busy. */
	if (sim->o.tls)
		sim_protocols[0].rx_buffer_size = 16384 + 64;
	info.foreign_loops = foreign_loops;
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = sim_protocols;
	info.fd_limit_per_thread = fd_limit;
	info.gid = -1;
	info.uid = -1;
	info.user = sim;
	if (sim->o.tls) {
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
		info.client_ssl_ca_filepath = sim->o.ca;	/* NULL: the system's CAs */
	}
	/* no info.extensions: permessage-deflate stays off */
	sim->ctx = lws_create_context(&info);
	if (!sim->ctx) {
		sim__err("cannot create the libwebsockets context (is Debian's "
			 "libwebsockets-evlib-ev installed?)");
		return -1;
	}
	sim->n_state[SIM_IDLE] = sim->n_devs;
	if (sim->o.duration >= 0)
		sim->deadline = now + (lws_usec_t)(sim->o.duration * 1e6) + 1;
	if (sim->o.stall_after >= 0)
		sim->stall_at = now + (lws_usec_t)(sim->o.stall_after * 1e6) + 1;
	sim->cron_at = now + 1;
	ev_timer_init(&sim->cron, sim__cron, 0., 0.);
	sim__cron_at(sim, 1);
	lws_sul_schedule(sim->ctx, 0, &sim->lws_tick, sim__lws_tick, SIM_LWS_TICK_US);
	return 0;
}

static int sim__exit_status(const struct sim *sim)
{
	if (sim->stop == SIM_STOP_DONE && sim->all_finished)
		return 0;
	if (sim->stop != SIM_STOP_DONE && sim->stop != SIM_STOP_ALL_CLOSED)
		return 0;	/* --duration or a signal */
	/* Every device closed by itself (or died before finishing its counts). */
	for (size_t i = 0; i < sim->n_devs; i++)
		if (!sim->devs[i].ever_welcomed)
			return 1;
	return 0;
}

static int sim__cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* --expect: "tender-sim: N replies of M, K bad; latency p50 .. p99 .. max .. us".
 * Returns nonzero when a reply is missing or bad. */
static int sim__report_replies(struct sim *sim)
{
	uint64_t replies = 0, sent = 0;
	for (size_t i = 0; i < sim->n_devs; i++) {
		replies += sim->devs[i].replies;
		sent += sim->devs[i].msg.made;
	}
	qsort(sim->rtt_us, sim->n_rtt, sizeof *sim->rtt_us, sim__cmp_u32);
	uint32_t p50 = 0, p99 = 0, max = 0;
	if (sim->n_rtt) {
		p50 = sim->rtt_us[sim->n_rtt / 2];
		p99 = sim->rtt_us[sim->n_rtt * 99 / 100];
		max = sim->rtt_us[sim->n_rtt - 1];
	}
	double span = (double)(sim->rtt_last - sim->rtt_first) / 1e6;
	fprintf(stderr, "tender-sim: %" PRIu64 " replies of %" PRIu64 " msgs, %" PRIu64
		" bad; latency p50 %u us, p99 %u us, max %u us; %.0f replies/s\n", replies, sent,
		sim->n_bad_replies, p50, p99, max, span > 0 ? (double)(replies - 1) / span : 0.0);
	return replies < sent || sim->n_bad_replies > 0;
}

static void sim__free(struct sim *sim)
{
	for (size_t i = 0; i < sim->n_devs; i++) {
		struct sim_dev *d = &sim->devs[i];

		sim__queue_drop(d);
		free(d->rx);
		free(d->line);
		if (d->upd)
			sim__upd_release(d->upd);
		free(d->upd);
	}
	free(sim->devs);
	free(sim->wbuf);
	free(sim->rtt_us);
}

int main(int argc, char **argv)
{
	static struct sim sim;
	unsigned fd_limit;
	int rc;

	rc = sim__parse_args(&sim.o, argc, argv);
	if (rc)
		return rc > 0 ? 0 : 2;
	sim.log_limit = sim.o.log_count >= 0 ? (uint64_t)sim.o.log_count
			: sim.o.log_rate > 0 ? UINT64_MAX : 0;
	sim.msg_limit = sim.o.msg_count >= 0 ? (uint64_t)sim.o.msg_count
			: sim.o.msg_rate > 0 ? UINT64_MAX : 0;
	fd_limit = sim__raise_nofile();
	if (sim__make_devices(&sim)) {
		sim__free(&sim);
		return 2;
	}
	if (sim.n_devs + SIM_FD_RESERVE > fd_limit) {
		sim__err("%zu devices need more open files than the limit of %u allows",
			 sim.n_devs, fd_limit);
		sim__free(&sim);
		return 2;
	}
	if (sim.o.expect && !(sim.rtt_us = malloc(SIM_RTT_MAX * sizeof *sim.rtt_us))) {
		sim__free(&sim);
		return 1;
	}
	srand48((long)time(NULL) ^ (long)getpid());
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (sim__signals() || sim__start(&sim, fd_limit)) {
		sim__free(&sim);
		return 1;
	}
	while (!sim.finished) {
		if (sim_signalled)
			sim__cron_soon(&sim);
		if (sim.stall_now)
			sim__stall(&sim);
		ev_run(sim.ev, EVRUN_ONCE);
	}
	sim.destroying = true;
	ev_timer_stop(sim.ev, &sim.cron);
	lws_sul_cancel(&sim.lws_tick);
	lws_context_destroy(sim.ctx);
	ev_loop_destroy(sim.ev);
	rc = sim__exit_status(&sim);
	if (sim.stop == SIM_STOP_DONE && sim.all_finished)
		sim__event(&sim, "done");
	fprintf(stderr, "tender-sim: %zu devices, %" PRIu64 " welcomed, %" PRIu64
		" log frames, %" PRIu64 " msg frames sent, %" PRIu64 " received, %" PRIu64
		" updates completed, %" PRIu64 " updates failed\n",
		sim.n_devs, sim.n_welcomed, sim.n_log_sent, sim.n_msg_sent, sim.n_received,
		sim.n_upd_done, sim.n_upd_failed);
	if (sim.o.expect && sim__report_replies(&sim) && rc == 0)
		rc = 1;
	sim__free(&sim);
	return rc;
}

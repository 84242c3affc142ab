/* server/device.c -- the device endpoint (see device.h, docs/protocol.md).
 *
 * A connection's life:
 *
 *   handshake --(path /v1/device)--> AWAIT_HELLO --(valid hello, secret ok)--> ONLINE
 *       |                                 |                                      |
 *       +-- other path: 404               +-- bad first frame, bad secret,       +-- close, idle
 *                                         |   hello timeout: close 1008          |   timeout, kick,
 *                                         v                                      v   replaced
 *                                       CLOSED (nothing logged)              CLOSED (offline,
 *                                                                            "Device disconnected"
 *                                                                            unless replaced/forgotten)
 *
 * Sockets are counted per address in `per_ip` from accept to
 * LWS_CALLBACK_WSI_DESTROY (the key rides in the wsi's opaque user data), so
 * handshakes under way count too.  At the upgrade, a connection from an
 * address holding more than --max-conns-per-ip is answered 503 and closed;
 * past DEVICE_FD_SLACK more, its sockets are closed at accept.
 *
 * Invariants: a device id maps to at most one ONLINE connection (`online`);
 * only that connection's close marks the device offline.  Connections are
 * closed from their own WRITEABLE callback (mark `closing`, ask for
 * writable), never freed from another's callback.
 *
 * Deadlines (hello timeout, keepalive ping, idle hang-up, the close
 * backstop) are tenderd's own, not lws timers: lws keeps its timers in one
 * sorted list and walks it at each insert, and re-inserting a validity timer
 * per received frame made every frame and connect O(connections)
 * (docs/performance.md).  Each connection sits in one of four FIFO lists,
 * whose entries share one delay so that appending keeps them in deadline
 * order; the cron pops expired heads once a second:
 *
 *   T_HELLO    established + hello_timeout        -> close "hello timeout"
 *   T_ACTIVE   last frame or pong + ping_interval -> ping, then T_PINGED
 *   T_PINGED   ping + (idle_timeout - ping)       -> dropped (no close frame)
 *   T_CLOSING  close asked + 5 s                  -> dropped
 *
 * A frame or pong from an ONLINE device moves it to the tail of T_ACTIVE.
 *
 * ONLY the service thread reads or writes a struct conn or the map. */
#define _GNU_SOURCE
#include "device.h"

#include <assert.h>
#include <errno.h>
#include <ev.h>
#include <jansson.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "enroll.h"
#include "events.h"
#include "frame.h"
#include "idmap.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "ratelimit.h"
#include "scheduler.h"
#include "supervisor.h"

#define DEVICE_MAX_BAD_STREAK 20
#define DEVICE_MAX_OUT_BYTES (256 * 1024) /* opt.max_out_bytes when 0 */
#define DEVICE_CRON_US (1000 * LWS_US_PER_MS)
#define DEVICE_SHUTDOWN_MS 2000

struct outmsg {
	struct outmsg *next;
	size_t len;
	int binary;
	unsigned char buf[]; /* LWS_PRE headroom, then the payload */
};

enum conn_state { AWAIT_HELLO, ONLINE };

/* One per connection, allocated by lws (per_session_data_size): kept small,
 * since an idle device costs mostly this and lws's own state. */
struct conn {
	struct lws *wsi;
	struct conn *prev, *next;      /* every connection, for shutdown */
	uint64_t id;
	uint64_t serial;               /* this connection, once ONLINE (never reused) */
	unsigned char state;           /* enum conn_state */
	unsigned char replaced : 1, forgotten : 1; /* closing without an offline event */
	unsigned char closing : 1, rx_binary : 1;
	unsigned char bad_streak;      /* at most DEVICE_MAX_BAD_STREAK */
	unsigned char tlist;           /* enum timing_list */
	unsigned char ping_due;        /* a ping to write at the next WRITEABLE */
	uint16_t close_code;
	char *close_reason;            /* owned; at most 123 bytes, as a close frame */
	char *rx;                      /* fragments of a frame so far, or NULL */
	size_t rx_len;
	struct outmsg *out_head, *out_tail;
	size_t out_bytes;
	device_loop *loop;
	ratelimit logs;                /* log lines per second */
	uint64_t ticket;               /* an enrollment under way, or 0 */
	struct pending_hello *pending; /* owned: its hello, parsed again once enrolled */
	struct conn *tprev, *tnext;    /* its place in d->timing[tlist] */
	int64_t deadline;              /* tn_mono_ms() when the cron acts on it */
	device_fetch_grant *grant;     /* one reference, or NULL: fetches served here */
};

/* Shared by the scheduler (until it revokes) and the connection holding it. */
struct device_fetch_grant {
	atomic_int refs;
	atomic_int revoked;
	fwstore_file *file;            /* one reference */
	char update_id[40];
};

static void device__grant_unref(device_fetch_grant *g)
{
	if (!g || atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
		return;
	fwstore_file_unref(g->file);
	free(g);
}

struct pending_hello {
	size_t len;
	char text[];
};

enum timing_list { T_NONE, T_HELLO, T_ACTIVE, T_PINGED, T_CLOSING, T_COUNT };
#define DEVICE_CLOSE_BACKSTOP_MS 5000

enum cmd_kind { CMD_KICK, CMD_SEND, CMD_ENROLLED, CMD_GRANT };

struct cmd {
	struct cmd *next;
	enum cmd_kind kind;
	uint64_t id;
	int code, forget;
	char reason[100];
	uint64_t serial;               /* CMD_SEND: only on this connection */
	struct outmsg *msg;            /* CMD_SEND: owned, built by the sender */
	char *secret;                  /* CMD_ENROLLED: owned */
	uint64_t ticket;               /* CMD_ENROLLED */
	int rc;
	device_fetch_grant *grant;     /* CMD_GRANT: one reference */
};

/* Frames of one connection written in one send() when several are queued
 * (an agent answering a burst, firmware chunks): lws allows one write per
 * WRITEABLE, and one syscall per frame was a quarter of the loop's time. */
#define DEVICE_COALESCE_BYTES (64 * 1024)

struct device_loop {
	device_loop_options opt;
	store *st;
	registry *reg;
	struct lws_context *ctx;
	struct ev_loop *ev;      /* the loop lws runs on (epoll): ours, so we can run it a pass at a time */
	struct lws_vhost *vhost;
	int port;
	pthread_t thread;

	/* service thread only */
	idmap online;            /* device id -> struct conn in ONLINE */
	struct conn *conns;      /* all connections */
	int nconns;
	int max_conns, at_limit;  /* the cap from RLIMIT_NOFILE; refusing now */
	int listen_fd;           /* ours: lws only adopts what we accept */
	ev_io accept_w;          /* on listen_fd; stopped while nsockets >= max_sockets */
	int nsockets, max_sockets; /* sockets lws holds for us (handshakes included) */
	int stopping;
	int64_t stop_deadline;
	uint64_t next_serial;
	uint64_t next_ticket;
	idmap enrolling;         /* ticket -> struct conn waiting for its enrollment */
	idmap per_ip;            /* address hash -> connections from it (as a pointer-sized int) */
	struct { struct conn *head, *tail; } timing[T_COUNT]; /* see the top of this file */
	lws_sorted_usec_list_t cron;

	unsigned char wbuf[LWS_PRE + DEVICE_COALESCE_BYTES]; /* service thread: frames coalesced */
	struct lws_protocols protocols[2]; /* device__protocols, adjusted for TLS */

	/* any thread, under lock */
	pthread_mutex_t lock;
	struct cmd *cmd_head, *cmd_tail; /* oldest first */
	int stop_requested;
};

/* --- deadlines ------------------------------------------------------------- */

static void device__untime(struct conn *c)
{
	device_loop *d = c->loop;
	if (c->tlist == T_NONE)
		return;
	if (c->tprev)
		c->tprev->tnext = c->tnext;
	else
		d->timing[c->tlist].head = c->tnext;
	if (c->tnext)
		c->tnext->tprev = c->tprev;
	else
		d->timing[c->tlist].tail = c->tprev;
	c->tprev = c->tnext = NULL;
	c->tlist = T_NONE;
}

/* Moves c to the tail of list `which`, due in delay_ms.  Every entry of a
 * list has the same delay, so the list stays in deadline order. */
static void device__time(struct conn *c, enum timing_list which, int64_t delay_ms)
{
	device_loop *d = c->loop;
	device__untime(c);
	c->deadline = tn_mono_ms() + delay_ms;
	c->tlist = (unsigned char)which;
	c->tprev = d->timing[which].tail;
	if (c->tprev)
		c->tprev->tnext = c;
	else
		d->timing[which].head = c;
	d->timing[which].tail = c;
}

/* A frame or a pong: the device is there. */
static void device__heard(struct conn *c)
{
	if (c->tlist == T_ACTIVE || c->tlist == T_PINGED)
		device__time(c, T_ACTIVE, (int64_t)c->loop->opt.ping_interval * 1000);
}

/* --- sending ---------------------------------------------------------------- */

static void device__close(struct conn *c, int code, const char *reason);

static struct outmsg *device__msg_new(const void *data, size_t len, int binary)
{
	struct outmsg *m = malloc(sizeof *m + LWS_PRE + len);
	if (!m)
		return NULL;
	m->next = NULL;
	m->len = len;
	m->binary = binary;
	memcpy(m->buf + LWS_PRE, data, len);
	return m;
}

/* Queues m (steals it) to be written to c. */
static void device__queue_msg(struct conn *c, struct outmsg *m)
{
	size_t len = m->len;
	if (c->closing) {
		free(m);
		return;
	}
	size_t cap = c->loop->opt.max_out_bytes ? c->loop->opt.max_out_bytes : DEVICE_MAX_OUT_BYTES;
	if (c->out_bytes + len > cap) {
		free(m);
		/* A device that does not read cannot hold the server's memory. */
		metrics_error(ERR_DEVICE_QUEUE_FULL);
		log_info("device %016llx: send queue full (%zu bytes unsent): closing",
			 (unsigned long long)c->id, c->out_bytes);
		/* device__close's timeout ends it even if it never reads again. */
		device__close(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, "send queue full");
		return;
	}
	if (c->out_tail)
		c->out_tail->next = m;
	else
		c->out_head = m;
	c->out_tail = m;
	c->out_bytes += len;
	lws_callback_on_writable(c->wsi);
}

static void device__queue(struct conn *c, const void *data, size_t len, int binary)
{
	struct outmsg *m = c->closing ? NULL : device__msg_new(data, len, binary);
	if (m)
		device__queue_msg(c, m);
}

static void device__send_json(struct conn *c, json_t *obj)
{
	char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
	if (text)
		device__queue(c, text, strlen(text), 0);
	free(text);
	json_decref(obj);
}

static void device__send_error(struct conn *c, const char *code, const char *message)
{
	device__send_json(c, json_pack("{ss ss ss}", "type", "error", "code", code, "message", message));
}

/* Closes c from its next WRITEABLE callback (or now, if `now` and we are in
 * c's own callback: the caller then returns -1). */
static void device__close(struct conn *c, int code, const char *reason)
{
	if (c->closing && c->close_code)
		return;
	c->closing = 1;
	c->close_code = (uint16_t)code;
	free(c->close_reason);
	c->close_reason = strndup(reason, 123); /* NULL: closed with the code alone */
	lws_callback_on_writable(c->wsi);
	/* Backstop: a peer that never lets us write still goes. */
	device__time(c, T_CLOSING, DEVICE_CLOSE_BACKSTOP_MS);
}

static int device__close_now(struct lws *wsi, int code, const char *reason)
{
	size_t len = strlen(reason);
	/* A close frame carries at most 123 bytes of reason. */
	lws_close_reason(wsi, (enum lws_close_status)code, (unsigned char *)reason, len > 123 ? 123 : len);
	return -1;
}

/* --- events ----------------------------------------------------------------- */

static void device__status(device_loop *d, uint64_t id, const char *msg)
{
	if (store_event_append(d->st, id, EV_STATUS, msg) < 0)
		log_warn("device %016llx: event not stored (shutting down): %s", (unsigned long long)id, msg);
}

/* --- receiving -------------------------------------------------------------- */

static int device__go_online(struct conn *c, const frame *f, const char *new_secret);

/* Returns -1 when the connection must close now (close reason set). */
static int device__on_hello(struct conn *c, const frame *f, const char *text, size_t len)
{
	device_loop *d = c->loop;
	char peer[64] = "", idhex[17];

	tn_device_id_format(f->u.hello.id, idhex);
	lws_get_peer_simple(c->wsi, peer, sizeof peer);
	if (f->u.hello.enroll) {
		/* Registration needs the disk: the enroll thread does it, and the
		 * answer comes back as CMD_ENROLLED.  Nothing else is read meanwhile. */
		int oom = 0;
		if (!d->opt.enroll || c->ticket)
			return device__close_now(c->wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION,
						 "enrollment refused: not available here");
		c->pending = malloc(sizeof *c->pending + len);
		if (!c->pending)
			return device__close_now(c->wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		memcpy(c->pending->text, text, len);
		c->pending->len = len;
		c->ticket = ++d->next_ticket;
		idmap_put(&d->enrolling, c->ticket, c, &oom);
		if (oom || enroll_request(d->opt.enroll, c->ticket, f->u.hello.id, f->u.hello.enroll)) {
			idmap_del(&d->enrolling, c->ticket);
			c->ticket = 0;
			return device__close_now(c->wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "enrollment failed");
		}
		log_info("device %s from %s: enrolling", idhex, peer);
		return 0;
	}
	int rc = registry_check(d->reg, f->u.hello.id, f->u.hello.secret);
	if (rc) {
		metrics_error(ERR_AUTH_FAILED);
		log_info("device %s from %s: authentication failed (%s)", idhex, peer,
			 rc == TN_ENOTFOUND ? "unknown device" : "wrong secret");
		return device__close_now(c->wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, "authentication failed");
	}
	return device__go_online(c, f, NULL);
}

/* Authenticated (or just enrolled, with its new secret): online. */
static int device__go_online(struct conn *c, const frame *f, const char *new_secret)
{
	device_loop *d = c->loop;
	char peer[64] = "", idhex[17];

	tn_device_id_format(f->u.hello.id, idhex);
	lws_get_peer_simple(c->wsi, peer, sizeof peer);
	c->state = ONLINE;
	c->id = f->u.hello.id;
	int oom = 0;
	struct conn *old = idmap_put(&d->online, c->id, c, &oom);
	if (oom) {
		c->state = AWAIT_HELLO;
		return device__close_now(c->wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
	}
	if (!c->closing)
		device__time(c, T_ACTIVE, (int64_t)d->opt.ping_interval * 1000);
	if (old) {
		old->replaced = 1;
		device__close(old, 4001, "replaced by a new connection");
		log_info("device %s: a new connection from %s replaces the old one", idhex, peer);
		device__status(d, c->id, "Device connection replaced: a new connection took over");
	} else {
		metrics_add(M_DEVICES_CONNECTED, 1);
	}
	store_hello h = {
		.hw = f->u.hello.hw, .fw = f->u.hello.fw, .sfdp = f->u.hello.sfdp,
		.has_jedec = f->u.hello.has_jedec, .jedec = f->u.hello.jedec,
		.flash_size = f->u.hello.flash_size,
	};
	store_device_online(d->st, c->id, &h, tn_now_ms());
	device__status(d, c->id, "Device connected");
	c->serial = ++d->next_serial;
	if (d->opt.sched) {
		sched_hello sh = {
			.hw = f->u.hello.hw, .fw = f->u.hello.fw, .sfdp = f->u.hello.sfdp,
			.has_jedec = f->u.hello.has_jedec, .jedec = f->u.hello.jedec,
			.flash_size = f->u.hello.flash_size,
		};
		sched_device_online(d->opt.sched, c->id, c->serial, &sh);
	}
	if (d->opt.sup)
		sup_device_online(d->opt.sup, c->id, c->serial);
	log_debug("device %s connected from %s", idhex, peer);
	json_t *welcome = json_pack("{ss ss ss si si}", "type", "welcome", "id", idhex, "server", "tender/" TN_VERSION,
				    "ping_interval", d->opt.ping_interval, "idle_timeout", d->opt.idle_timeout);
	if (welcome && new_secret)
		json_object_set_new(welcome, "secret", json_string(new_secret)); /* shown this once */
	device__send_json(c, welcome);
	return 0;
}

/* "N log lines dropped: over the limit of R per second", once they stop or
 * once a second while they go on. */
static void device__report_drops(struct conn *c)
{
	char line[128];
	if (ratelimit_report(&c->logs, c->loop->opt.log_rate, line, sizeof line))
		device__status(c->loop, c->id, line);
}

static void device__refuse(struct conn *c, metrics_error_kind kind, const char *message)
{
	metrics_error(kind);
	device__send_error(c, metrics_error_name(kind), message);
	if (++c->bad_streak >= DEVICE_MAX_BAD_STREAK) {
		metrics_error(ERR_TOO_MANY_BAD_FRAMES);
		device__close(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, "too many bad frames");
	}
}

static void device__grant_drop(struct conn *c)
{
	device__grant_unref(c->grant);
	c->grant = NULL;
}

/* A fetch answered from the connection's grant, without a trip through the
 * scheduler thread: 1 when answered; 0 when the scheduler must answer (no
 * grant or a revoked one, another update id, an offset past the end, a
 * failed read), with the same checks and messages as before. */
static int device__serve_fetch(struct conn *c, const frame *f)
{
	device_fetch_grant *g = c->grant;
	if (!g)
		return 0;
	if (atomic_load_explicit(&g->revoked, memory_order_acquire)) {
		device__grant_drop(c);
		return 0;
	}
	uint64_t size = fwstore_file_size(g->file), offset = (uint64_t)f->u.fetch.offset;
	if (f->u.fetch.offset < 0 || offset >= size || strcmp(f->u.fetch.id, g->update_id) != 0)
		return 0;
	size_t len = (size_t)(f->u.fetch.length > SCHED_MAX_CHUNK ? SCHED_MAX_CHUNK : f->u.fetch.length);
	if (offset + len > size)
		len = (size_t)(size - offset);
	/* A chunk: 8-byte big-endian offset, then the bytes, read in place. */
	struct outmsg *m = malloc(sizeof *m + LWS_PRE + 8 + len);
	if (!m)
		return 0;
	m->next = NULL;
	m->len = 8 + len;
	m->binary = 1;
	unsigned char *p = m->buf + LWS_PRE;
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(offset >> (56 - 8 * i));
	if (fwstore_file_read(g->file, offset, p + 8, len)) {
		free(m);
		device__grant_drop(c); /* the scheduler answers, and reopens the image */
		return 0;
	}
	metrics_inc(M_FIRMWARE_CHUNKS);
	metrics_inc(M_FIRMWARE_CHUNKS_LOOP);
	device__queue_msg(c, m);
	return 1;
}

static void device__on_frame_online(struct conn *c, const frame *f)
{
	device_loop *d = c->loop;

	switch (f->type) {
	case FRAME_HELLO:
		device__refuse(c, ERR_BAD_FRAME, "already connected: hello is only the first frame");
		return;
	case FRAME_LOG:
		if (!ratelimit_take(&c->logs, d->opt.log_rate, tn_mono_ms())) {
			metrics_error(ERR_LOG_RATE);
			break; /* counted; the cron says how many were dropped */
		}
		device__report_drops(c);
		if (f->u.log.is_error) {
			char *line = NULL;
			if (asprintf(&line, "ERROR: %s", f->u.log.msg) >= 0) {
				store_event_append(d->st, c->id, EV_DEVICE, line);
				free(line);
			}
		} else {
			store_event_append(d->st, c->id, EV_DEVICE, f->u.log.msg);
		}
		break;
	case FRAME_MSG:
		if (d->opt.sup)
			sup_device_message(d->opt.sup, c->id, f->u.msg.name, f->u.msg.data_json);
		break;
	case FRAME_UPDATE_STATUS:
		if (!d->opt.sched) {
			device__refuse(c, ERR_BAD_FRAME, "no firmware update is in progress for this device");
			return;
		}
		/* Its next step is the scheduler's, which revokes the grant: let go
		 * of it now, so a device that stays connected holds no image open. */
		device__grant_drop(c);
		sched_update_status(d->opt.sched, c->id, c->serial, f->u.update_status.id,
				    f->u.update_status.state, f->u.update_status.offset, f->u.update_status.error);
		break;
	case FRAME_FETCH:
		if (!d->opt.sched) {
			device__refuse(c, ERR_BAD_FRAME, "no firmware update is in progress for this device");
			return;
		}
		if (!device__serve_fetch(c, f))
			sched_fetch(d->opt.sched, c->id, c->serial, f->u.fetch.id, f->u.fetch.offset,
				    f->u.fetch.length);
		break;
	}
	c->bad_streak = 0;
}

/* One whole text frame.  Returns -1 to close now. */
static int device__on_text(struct conn *c, const char *buf, size_t len)
{
	frame f;
	metrics_error_kind kind;
	tn_error err = { 0 };

	metrics_inc(M_FRAMES_IN);
	metrics_add(M_BYTES_IN, (int64_t)len);
	int rc = frame_parse(buf, len, &f, &kind, &err);
	if (c->state == AWAIT_HELLO && c->ticket) {
		/* Enrolling: nothing is taken until the answer comes. */
		frame_release(&f);
		return device__close_now(c->wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION,
					 "hello required: wait for welcome before sending more");
	}
	if (c->state == AWAIT_HELLO) {
		char reason[sizeof err.msg + 32];
		if (rc == 0 && f.type == FRAME_HELLO) {
			rc = device__on_hello(c, &f, buf, len);
			frame_release(&f);
			return rc;
		}
		metrics_error(ERR_HELLO_REQUIRED);
		snprintf(reason, sizeof reason, "hello required: %s",
			 rc ? err.msg : "the first frame must be a hello");
		frame_release(&f);
		return device__close_now(c->wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, reason);
	}
	if (rc) {
		device__refuse(c, kind, err.msg);
		return 0;
	}
	device__on_frame_online(c, &f);
	frame_release(&f);
	return 0;
}

/* The reassembly buffer's size while it holds `used` bytes: the next power
 * of two above `used` (room for the NUL), at least 256. */
static size_t device__rx_cap(size_t used)
{
	size_t cap = 256;
	while (cap <= used)
		cap *= 2;
	return cap;
}

static int device__on_receive(struct conn *c, struct lws *wsi, const char *in, size_t len)
{
	int first = lws_is_first_fragment(wsi), final = lws_is_final_fragment(wsi) &&
					     lws_remaining_packet_payload(wsi) == 0;

	if (c->closing)
		return 0;
	device__heard(c);
	if (first && !c->rx) {
		c->rx_binary = lws_frame_is_binary(wsi);
		c->rx_len = 0;
	}
	if (first && final && !c->rx) {
		/* The common case: a whole frame in one piece, parsed in place. */
		if (c->rx_binary)
			goto binary;
		return device__on_text(c, in, len);
	}
	if (c->rx_len + len > (size_t)c->loop->opt.max_frame) {
		metrics_error(ERR_FRAME_TOO_LARGE);
		free(c->rx);
		c->rx = NULL;
		return device__close_now(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "frame too large");
	}
	/* Capacity in powers of two (implied by rx_len, so not stored): a large
	 * frame arrives in many pieces of rx_buffer_size, and growing by each
	 * piece would copy it over and over. */
	size_t need = c->rx_len + len + 1;
	if (!c->rx || need > device__rx_cap(c->rx_len)) {
		char *grown = realloc(c->rx, device__rx_cap(need - 1));
		if (!grown)
			return device__close_now(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		c->rx = grown;
	}
	memcpy(c->rx + c->rx_len, in, len);
	c->rx_len += len;
	if (!final)
		return 0;
	char *whole = c->rx;
	size_t whole_len = c->rx_len;
	c->rx = NULL;
	c->rx_len = 0;
	int rc = 0;
	if (!c->rx_binary)
		rc = device__on_text(c, whole, whole_len);
	free(whole);
	if (!c->rx_binary)
		return rc;
binary:
	metrics_inc(M_FRAMES_IN);
	if (c->state == AWAIT_HELLO) {
		metrics_error(ERR_HELLO_REQUIRED);
		return device__close_now(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION,
					 "hello required: the first frame must be a text hello");
	}
	device__refuse(c, ERR_BINARY_FRAME, "devices send text frames only");
	return 0;
}

/* --- connections per address ------------------------------------------------ */

#define DEVICE_PER_IP_REFUSED "too many connections from this address"

/* The address key of an adopted socket (net_addr_key | 1, so never NULL),
 * or 0. */
static uint64_t device__ip_key(struct lws *wsi)
{
	return (uint64_t)(uintptr_t)lws_get_opaque_user_data(wsi);
}

static uintptr_t device__ip_count(device_loop *d, uint64_t key)
{
	return (uintptr_t)idmap_get(&d->per_ip, key);
}

static void device__ip_add(device_loop *d, uint64_t key, int delta)
{
	if (!key)
		return; /* a socket not adopted through device__accept_cb */
	uintptr_t n = device__ip_count(d, key) + (uintptr_t)(intptr_t)delta;
	int oom = 0;

	if (n == 0 || n > UINTPTR_MAX / 2)
		idmap_del(&d->per_ip, key);
	else
		idmap_put(&d->per_ip, key, (void *)n, &oom); /* oom: this one goes uncounted */
}

/* Returns 1 (refused: answered 503) when the address is at its limit. */
static int device__over_ip_limit(device_loop *d, struct lws *wsi)
{
	/* This socket counts itself. */
	if (!d->opt.max_conns_per_ip ||
	    device__ip_count(d, device__ip_key(wsi)) <= (uintptr_t)d->opt.max_conns_per_ip)
		return 0;
	char peer[64] = "";
	lws_get_peer_simple(wsi, peer, sizeof peer);
	metrics_error(ERR_CONNS_PER_IP);
	log_debug("device connection from %s refused: it holds %d already (--max-conns-per-ip)",
		  peer, d->opt.max_conns_per_ip);
	lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, DEVICE_PER_IP_REFUSED);
	return 1;
}

/* --- file descriptors -------------------------------------------------------- */

/* The device endpoint gets RLIMIT_NOFILE less a quarter (at least 64) kept for
 * SQLite (three connections' files, more while API reads run), the HTTP API
 * and its threads, the log stream threads and the event loops: tenderd
 * holds about 30 descriptors with no client at all.  tenderd stops
 * accepting at that budget (device__accept_cb).  Below
 * it DEVICE_FD_SLACK are kept for handshakes under way, so a connection past
 * max_conns is still accepted and refused with a 503, rather than left to
 * fail accept() with EMFILE in a busy loop. */
#define DEVICE_FD_SLACK 16
#define DEVICE_REFUSED_FULL "server at its connection limit, try again later"

static unsigned device__fd_limit(void)
{
	struct rlimit rl;
	rlim_t n = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
	return n == RLIM_INFINITY || n > 1048576 ? 1048576 : (unsigned)n;
}

static unsigned device__fd_budget(void)
{
	rlim_t n = device__fd_limit();
	rlim_t keep = n / 4 > 64 ? n / 4 : 64;
	return n > keep + 2 * DEVICE_FD_SLACK ? (unsigned)(n - keep) : 2 * DEVICE_FD_SLACK;
}

/* The listener.  tenderd accepts and lws adopts: lws's own listener can
 * only be held back at its fd_limit_per_thread, and any limit below the
 * process's RLIMIT_NOFILE makes lws find each event's connection by a
 * linear scan of its fd table (O(connections) per event).  So lws gets the
 * whole limit, and tenderd stops accepting at max_sockets: what is past it
 * waits in the listen backlog, and the rest of the server keeps a quarter
 * of the descriptors. */
static void device__accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	device_loop *d = lws_container_of(w, device_loop, accept_w);
	for (int i = 0; i < 64; i++) {
		if (d->nsockets >= d->max_sockets || d->stopping) {
			ev_io_stop(loop, w); /* device__socket_gone() starts it again */
			return;
		}
		struct sockaddr_storage peer;
		socklen_t plen = sizeof peer;
		int fd = accept4(d->listen_fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE) {
				/* Out of descriptors after all: wait for the cron. */
				log_warn("device endpoint: accept: %s: pausing new connections", strerror(errno));
				ev_io_stop(loop, w);
			}
			return; /* EAGAIN, or a connection that went away meanwhile */
		}
		uint64_t key = net_addr_key((struct sockaddr *)&peer) | 1;
		if (d->opt.max_conns_per_ip &&
		    device__ip_count(d, key) >= (uintptr_t)d->opt.max_conns_per_ip + DEVICE_FD_SLACK) {
			/* Far over its limit (the upgrade answers 503 before this):
			 * not even a handshake's worth of memory for it. */
			metrics_error(ERR_CONNS_PER_IP);
			close(fd);
			continue;
		}
		/* lws closes fd itself if it cannot adopt it. */
		struct lws *wsi = lws_adopt_socket_vhost(d->vhost, fd);
		if (wsi) {
			lws_set_opaque_user_data(wsi, (void *)(uintptr_t)key);
			device__ip_add(d, key, 1);
		}
	}
}

/* An adopted socket is gone (LWS_CALLBACK_WSI_DESTROY). */
static void device__socket_gone(device_loop *d)
{
	d->nsockets--;
	if (d->nsockets < d->max_sockets && !d->stopping && !ev_is_active(&d->accept_w))
		ev_io_start(d->ev, &d->accept_w);
}

static int device__listen(device_loop *d, const char *bind_addr, int port, tn_error *err)
{
	int rc = net_listen(bind_addr, port, SOMAXCONN, 1, "devices", &d->listen_fd, &d->port, err);
	if (rc == 0)
		ev_io_init(&d->accept_w, device__accept_cb, d->listen_fd, EV_READ);
	return rc;
}

/* Returns 1 (refused: answered 503) when the loop holds max_conns. */
static int device__over_fd_limit(device_loop *d, struct lws *wsi)
{
	if (d->nconns < d->max_conns) {
		d->at_limit = 0;
		return 0;
	}
	if (!d->at_limit)
		log_warn("device connections at the limit of %d (from RLIMIT_NOFILE, see "
			 "docs/operations.md): refusing new ones until some close", d->max_conns);
	d->at_limit = 1;
	metrics_error(ERR_DEVICE_CONNS_FULL);
	lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, DEVICE_REFUSED_FULL);
	return 1;
}

/* --- connection lifecycle --------------------------------------------------- */

static void device__on_established(device_loop *d, struct conn *c, struct lws *wsi)
{
	memset(c, 0, sizeof *c);
	c->wsi = wsi;
	c->loop = d;
	c->state = AWAIT_HELLO;
	c->next = d->conns;
	if (d->conns)
		d->conns->prev = c;
	d->conns = c;
	d->nconns++;
	metrics_inc(M_CONNECTIONS_TOTAL);
	device__time(c, T_HELLO, (int64_t)d->opt.hello_timeout * 1000);
	if (d->stopping)
		device__close(c, LWS_CLOSE_STATUS_GOINGAWAY, "server shutting down");
}

static void device__on_closed(device_loop *d, struct conn *c)
{
	device__untime(c);
	if (c->ticket)
		idmap_del(&d->enrolling, c->ticket);
	free(c->pending);
	c->pending = NULL;
	device__grant_drop(c);
	free(c->close_reason);
	c->close_reason = NULL;
	if (c->state == ONLINE && idmap_get(&d->online, c->id) == c) {
		idmap_del(&d->online, c->id);
		metrics_add(M_DEVICES_CONNECTED, -1);
		if (!c->forgotten) {
			device__report_drops(c);
			store_device_offline(d->st, c->id, tn_now_ms());
			device__status(d, c->id, "Device disconnected");
		}
		if (d->opt.sched)
			sched_device_offline(d->opt.sched, c->id, c->serial);
		if (d->opt.sup)
			sup_device_offline(d->opt.sup, c->id, c->serial);
	}
	free(c->rx);
	while (c->out_head) {
		struct outmsg *m = c->out_head;
		c->out_head = m->next;
		free(m);
	}
	if (c->prev)
		c->prev->next = c->next;
	else
		d->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	d->nconns--;
	c->wsi = NULL;
}

static void device__pop(struct conn *c)
{
	struct outmsg *m = c->out_head;
	c->out_head = m->next;
	if (!c->out_head)
		c->out_tail = NULL;
	c->out_bytes -= m->len;
	free(m);
}

/* A WebSocket frame header (RFC 6455 5.2: FIN, opcode, unmasked length) of
 * a frame that fits in DEVICE_COALESCE_BYTES; returns its size (2 or 4). */
static size_t device__ws_header(unsigned char *p, size_t len, int binary)
{
	assert(len <= 0xffff);
	p[0] = 0x80 | (binary ? 0x2 : 0x1);
	if (len < 126) {
		p[1] = (unsigned char)len;
		return 2;
	}
	p[1] = 126;
	p[2] = (unsigned char)(len >> 8);
	p[3] = (unsigned char)len;
	return 4;
}

static int device__on_writeable(struct conn *c, struct lws *wsi)
{
	if (c->closing && c->close_code)
		return device__close_now(wsi, c->close_code, c->close_reason ? c->close_reason : "");
	if (c->ping_due) {
		/* A payload: lws 4.1 does not pass an empty pong up to us. */
		unsigned char ping[LWS_PRE + 4] = { [LWS_PRE] = 't', 'n', 'p', 'g' };
		c->ping_due = 0;
		if (lws_write(wsi, ping + LWS_PRE, 4, LWS_WRITE_PING) < 0)
			return -1;
		if (c->out_head)
			lws_callback_on_writable(wsi);
		return 0;
	}
	struct outmsg *m = c->out_head;
	if (!m)
		return 0;
	if (!m->next || m->len + m->next->len + 8 > DEVICE_COALESCE_BYTES) {
		int n = lws_write(wsi, m->buf + LWS_PRE, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
		if (n < (int)m->len)
			return -1;
		metrics_inc(M_FRAMES_OUT);
		metrics_add(M_BYTES_OUT, (int64_t)m->len);
		device__pop(c);
	} else {
		/* Several frames, framed here (a server's frames are not masked)
		 * and written raw in one go. */
		unsigned char *out = c->loop->wbuf + LWS_PRE;
		size_t used = 0;
		int64_t frames = 0, bytes = 0;
		while ((m = c->out_head) && used + 4 + m->len <= DEVICE_COALESCE_BYTES) {
			used += device__ws_header(out + used, m->len, m->binary);
			memcpy(out + used, m->buf + LWS_PRE, m->len);
			used += m->len;
			frames++;
			bytes += (int64_t)m->len;
			device__pop(c);
		}
		if (lws_write(wsi, out, used, LWS_WRITE_RAW) < (int)used)
			return -1;
		metrics_add(M_FRAMES_OUT, frames);
		metrics_add(M_BYTES_OUT, bytes);
	}
	if (c->out_head)
		lws_callback_on_writable(wsi);
	return 0;
}

/* --- commands from other threads -------------------------------------------- */

/* Hands cmd to the service thread (any thread).  One wake per batch: the
 * loop takes every queued command when it wakes, so only a push onto an
 * empty queue needs to wake it. */
static void device__push(device_loop *d, struct cmd *cmd)
{
	cmd->next = NULL;
	pthread_mutex_lock(&d->lock);
	int was_empty = !d->cmd_head;
	if (d->cmd_tail)
		d->cmd_tail->next = cmd;
	else
		d->cmd_head = cmd;
	d->cmd_tail = cmd;
	pthread_mutex_unlock(&d->lock);
	if (was_empty)
		lws_cancel_service(d->ctx);
}

static void device__on_enrolled(device_loop *d, struct cmd *cmd)
{
	struct conn *c = idmap_del(&d->enrolling, cmd->ticket);
	if (!c)
		return; /* it left meanwhile */
	c->ticket = 0;
	if (cmd->rc) {
		char reason[124];
		metrics_error(ERR_AUTH_FAILED);
		snprintf(reason, sizeof reason, "enrollment refused: %.100s", cmd->reason);
		device__close(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, reason);
		return;
	}
	frame f;
	metrics_error_kind kind;
	tn_error err;
	if (frame_parse(c->pending->text, c->pending->len, &f, &kind, &err) == 0) {
		if (device__go_online(c, &f, cmd->secret) < 0)
			device__close(c, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		frame_release(&f);
	}
	free(c->pending);
	c->pending = NULL;
}

/* From the enroll thread: hand the answer to the loop. */
static void device__enroll_done(void *arg, uint64_t ticket, int rc, const char *secret, const char *reason)
{
	device_loop *d = arg;
	struct cmd *cmd = calloc(1, sizeof *cmd);
	if (!cmd)
		return;
	cmd->kind = CMD_ENROLLED;
	cmd->ticket = ticket;
	cmd->rc = rc;
	cmd->secret = secret ? strdup(secret) : NULL;
	snprintf(cmd->reason, sizeof cmd->reason, "%s", reason ? reason : "");
	device__push(d, cmd);
}

static void device__cmd_free(struct cmd *cmd)
{
	device__grant_unref(cmd->grant);
	free(cmd->msg);
	free(cmd->secret);
	free(cmd);
}

static void device__run_commands(device_loop *d)
{
	pthread_mutex_lock(&d->lock);
	struct cmd *list = d->cmd_head;
	d->cmd_head = d->cmd_tail = NULL;
	int stop = d->stop_requested;
	pthread_mutex_unlock(&d->lock);

	for (struct cmd *cmd = list, *next; cmd; cmd = next) {
		next = cmd->next;
		struct conn *c = idmap_get(&d->online, cmd->id);
		if (cmd->kind == CMD_KICK && c) {
			device__grant_drop(c); /* a deleted device's rows are gone already */
			c->forgotten = !!cmd->forget;
			device__close(c, cmd->code, cmd->reason);
		} else if (cmd->kind == CMD_SEND && c && c->serial == cmd->serial) {
			device__queue_msg(c, cmd->msg);
			cmd->msg = NULL;
		} else if (cmd->kind == CMD_ENROLLED) {
			device__on_enrolled(d, cmd);
		} else if (cmd->kind == CMD_GRANT && c && c->serial == cmd->serial && !c->closing) {
			device__grant_drop(c);
			c->grant = cmd->grant;
			cmd->grant = NULL;
		}
		device__cmd_free(cmd);
	}
	if (stop && !d->stopping) {
		d->stopping = 1;
		ev_io_stop(d->ev, &d->accept_w);
		d->stop_deadline = tn_mono_ms() + DEVICE_SHUTDOWN_MS;
		for (struct conn *c = d->conns; c; c = c->next)
			device__close(c, LWS_CLOSE_STATUS_GOINGAWAY, "server shutting down");
	}
}

static int device__callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
			    void *in, size_t len)
{
	struct lws_vhost *vh = lws_get_vhost(wsi);
	device_loop *d = vh ? lws_get_vhost_user(vh) : NULL;
	struct conn *c = user;
	char uri[64];

	switch (reason) {
	case LWS_CALLBACK_HTTP:
		metrics_error(ERR_BAD_PATH);
		lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND,
				       "devices connect a WebSocket to /v1/device");
		return -1;
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
		if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0 ||
		    strcmp(uri, "/v1/device") != 0) {
			metrics_error(ERR_BAD_PATH);
			return 1;
		}
		return device__over_fd_limit(d, wsi) || device__over_ip_limit(d, wsi);
	case LWS_CALLBACK_ESTABLISHED:
		device__on_established(d, c, wsi);
		return 0;
	case LWS_CALLBACK_RECEIVE:
		return device__on_receive(c, wsi, in, len);
	case LWS_CALLBACK_RECEIVE_PONG:
		if (c && c->wsi == wsi)
			device__heard(c);
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return device__on_writeable(c, wsi);
	case LWS_CALLBACK_CLOSED:
		if (c && c->wsi == wsi)
			device__on_closed(d, c);
		return 0;
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		if (d)
			device__run_commands(d);
		return 0;
	case LWS_CALLBACK_WSI_CREATE:
		if (d)
			d->nsockets++;
		return 0;
	case LWS_CALLBACK_WSI_DESTROY:
		if (d) {
			device__ip_add(d, device__ip_key(wsi), -1);
			device__socket_gone(d);
		}
		return 0;
	default:
		return 0;
	}
}

static const struct lws_protocols device__protocols[] = {
	/* First, so that it serves clients that name no subprotocol. */
	{ .name = "tender-device", .callback = device__callback,
	  .per_session_data_size = sizeof(struct conn),
	  /* lws allocates this per connection, and hands frames up in pieces of
	   * at most this size: small, since an idle device costs mostly lws's
	   * state and this, and frames over it are reassembled here anyway
	   * (docs/performance.md, memory per idle device).  Most frames a
	   * device sends (msg, fetch, short log lines) fit in one piece. */
	  .rx_buffer_size = 128,
	  /* lws caps each send at rx_buffer_size unless told: a 16 KiB firmware
	   * chunk would go out in 16 send() calls (docs/performance.md). */
	  .tx_packet_size = 65536 + 64 },
	{ 0 }
};

/* --- the service thread ----------------------------------------------------- */

/* The connections whose deadline has passed, oldest first (see the top of
 * this file).  A connection dropped here closes in lws's next pass. */
static void device__expire(device_loop *d)
{
	int64_t now = tn_mono_ms();
	struct conn *c;

	while ((c = d->timing[T_HELLO].head) && c->deadline <= now) {
		metrics_error(ERR_HELLO_TIMEOUT);
		device__untime(c);
		device__close(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, "hello timeout"); /* -> T_CLOSING */
	}
	while ((c = d->timing[T_ACTIVE].head) && c->deadline <= now) {
		c->ping_due = 1;
		lws_callback_on_writable(c->wsi);
		device__time(c, T_PINGED, (int64_t)(d->opt.idle_timeout - d->opt.ping_interval) * 1000);
	}
	while ((c = d->timing[T_PINGED].head) && c->deadline <= now) {
		log_info("device %016llx: silent for %d s (no frame, no pong): dropped",
			 (unsigned long long)c->id, d->opt.idle_timeout);
		device__untime(c);
		lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_REASON_BASE + 2, LWS_TO_KILL_ASYNC);
	}
	while ((c = d->timing[T_CLOSING].head) && c->deadline <= now) {
		device__untime(c);
		lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_REASON_BASE + 1, LWS_TO_KILL_ASYNC);
	}
}

/* Periodic work of the loop, once a second (Redis' serverCron). */
static void device__cron(lws_sorted_usec_list_t *sul)
{
	device_loop *d = lws_container_of(sul, device_loop, cron);
	device__expire(d);
	if (d->nsockets < d->max_sockets && !d->stopping && !ev_is_active(&d->accept_w))
		ev_io_start(d->ev, &d->accept_w); /* after an EMFILE */
	for (struct conn *c = d->conns; c; c = c->next)
		if (c->state == ONLINE && c->logs.dropped)
			device__report_drops(c);
	lws_sul_schedule(d->ctx, 0, &d->cron, device__cron,
			 d->stopping ? 100 * LWS_US_PER_MS : DEVICE_CRON_US);
}

static void *device__thread(void *arg)
{
	pthread_setname_np(pthread_self(), "tn-devices"); /* for top -H, perf, gdb */
	device_loop *d = arg;

	lws_sul_schedule(d->ctx, 0, &d->cron, device__cron, DEVICE_CRON_US);
	ev_io_start(d->ev, &d->accept_w);
	for (;;) {
		/* One pass: waits for at least one event (a socket, lws's timers,
		 * lws_cancel_service), handles what is ready. */
		ev_run(d->ev, EVRUN_ONCE);
		if (d->stopping && (d->nconns == 0 || tn_mono_ms() > d->stop_deadline))
			break;
	}
	lws_sul_cancel(&d->cron);
	ev_io_stop(d->ev, &d->accept_w);
	return NULL;
}

int device_loop_start(device_loop **out, const device_loop_options *opt, store *st,
		      registry *reg, tn_error *err)
{
	struct lws_context_creation_info info;
	void *foreign_loops[1];
	device_loop *d = calloc(1, sizeof *d);
	int rc;

	if (!d)
		return tn_err(err, TN_ENOMEM, "out of memory");
	d->opt = *opt;
	d->listen_fd = -1;
	d->st = st;
	d->reg = reg;
	pthread_mutex_init(&d->lock, NULL);

	/* lws's own poll() loop scans every connection on every pass: with
	 * thousands held, that was a third of the CPU of a connect
	 * (docs/performance.md).  Its libev plugin waits with epoll instead;
	 * the loop is ours (a "foreign" loop) so that the thread can stop
	 * between passes. */
	d->ev = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (!d->ev) {
		rc = tn_err(err, TN_EIO, "cannot create the device event loop");
		goto fail;
	}
	foreign_loops[0] = d->ev;
	memset(&info, 0, sizeof info);
	info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_LIBEV;
	info.foreign_loops = foreign_loops;
	if (opt->tls_cert)
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	/* lws gets the whole limit: below it, lws finds a socket's connection
	 * by a linear scan of its table on every event instead of by index.
	 * tenderd's own cap (a quarter kept for the rest) is max_conns. */
	info.fd_limit_per_thread = device__fd_limit();
	d->max_sockets = (int)device__fd_budget();
	d->max_conns = d->max_sockets - DEVICE_FD_SLACK;
	d->ctx = lws_create_context(&info);
	if (!d->ctx) {
		rc = tn_err(err, TN_EIO, "cannot create the libwebsockets context (is its libev plugin, "
			    "Debian's libwebsockets-evlib-ev, installed?)");
		goto fail;
	}
	if ((rc = device__listen(d, opt->bind, opt->port, err)))
		goto fail;
	memset(&info, 0, sizeof info);
	info.port = CONTEXT_PORT_NO_LISTEN_SERVER; /* see device__accept_cb */
	memcpy(d->protocols, device__protocols, sizeof d->protocols);
	if (opt->tls_cert)
		/* With TLS, a whole record (16 KiB at most) is read at once: what a
		 * smaller read leaves inside OpenSSL is invisible to epoll, and lws
		 * serves it only from libev's idle watcher, which never runs while
		 * other sockets keep the loop busy.  OpenSSL's own state costs
		 * tens of KB per connection, so this is small beside it. */
		d->protocols[0].rx_buffer_size = 16384 + 64;
	info.protocols = d->protocols;
	info.vhost_name = "devices";
	info.user = d;
	/* No lws validity timers: the keepalive is ours (device__expire). */
	static const lws_retry_bo_t no_validity_timers = { .secs_since_valid_hangup = 0 };
	info.retry_and_idle_policy = &no_validity_timers;
	info.timeout_secs = 10; /* for the handshake */
	if (opt->tls_cert) {
		/* A chain file: lws loads it with SSL_CTX_use_certificate_chain_file.
		 * A plain ws client on this port fails its handshake. */
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT; /* lws reads it per vhost too */
		info.ssl_cert_filepath = opt->tls_cert;
		info.ssl_private_key_filepath = opt->tls_key;
		/* Devices speak WebSocket over HTTP/1.1: offering h2 would only add
		 * a protocol to attack. */
		info.alpn = "http/1.1";
		/* TLS 1.2 and up, whatever the system's OpenSSL policy says. */
		info.ssl_options_set = SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1;
	}
	d->vhost = lws_create_vhost(d->ctx, &info);
	if (!d->vhost) {
		rc = tn_err(err, TN_EIO, "cannot set up the device endpoint%s",
			    opt->tls_cert ? " (--tls-cert/--tls-key refused by OpenSSL?)" : "");
		goto fail;
	}
	if (opt->enroll)
		enroll_set_done(opt->enroll, device__enroll_done, d);
	if (pthread_create(&d->thread, NULL, device__thread, d) != 0) {
		rc = tn_err(err, TN_EIO, "cannot start the device loop thread");
		goto fail;
	}
	*out = d;
	return 0;
fail:
	if (d->ctx)
		lws_context_destroy(d->ctx);
	if (d->ev)
		ev_loop_destroy(d->ev);
	if (d->listen_fd >= 0)
		close(d->listen_fd);
	pthread_mutex_destroy(&d->lock);
	free(d);
	return rc;
}

int device_loop_port(const device_loop *d)
{
	return d->port;
}

int device_loop_kick(device_loop *d, uint64_t id, int code, const char *reason, int forget)
{
	struct cmd *cmd = calloc(1, sizeof *cmd);
	if (!cmd)
		return TN_ENOMEM;
	cmd->kind = CMD_KICK;
	cmd->id = id;
	cmd->code = code;
	cmd->forget = forget;
	snprintf(cmd->reason, sizeof cmd->reason, "%s", reason);
	device__push(d, cmd);
	return 0;
}

int device_loop_send(device_loop *d, uint64_t id, uint64_t conn, const void *data, size_t len, int binary)
{
	struct cmd *cmd = calloc(1, sizeof *cmd);
	if (!cmd || !(cmd->msg = device__msg_new(data, len, binary))) {
		free(cmd);
		return TN_ENOMEM;
	}
	cmd->kind = CMD_SEND;
	cmd->id = id;
	cmd->serial = conn;
	device__push(d, cmd);
	return 0;
}

device_fetch_grant *device_loop_grant_fetch(device_loop *d, uint64_t id, uint64_t conn, const char *update_id,
					    fwstore_file *file)
{
	struct cmd *cmd = calloc(1, sizeof *cmd);
	device_fetch_grant *g = calloc(1, sizeof *g);
	if (!cmd || !g) {
		free(cmd);
		free(g);
		return NULL;
	}
	atomic_init(&g->refs, 2); /* the caller's and the connection's */
	atomic_init(&g->revoked, 0);
	g->file = fwstore_file_ref(file);
	snprintf(g->update_id, sizeof g->update_id, "%s", update_id);
	cmd->kind = CMD_GRANT;
	cmd->id = id;
	cmd->serial = conn;
	cmd->grant = g;
	device__push(d, cmd);
	return g;
}

void device_fetch_revoke(device_fetch_grant *g)
{
	if (!g)
		return;
	atomic_store_explicit(&g->revoked, 1, memory_order_release);
	device__grant_unref(g);
}

void device_loop_stop(device_loop *d)
{
	if (!d)
		return;
	pthread_mutex_lock(&d->lock);
	d->stop_requested = 1;
	pthread_mutex_unlock(&d->lock);
	lws_cancel_service(d->ctx);
	pthread_join(d->thread, NULL);
	/* Connections still open after the grace period close here; their
	 * CLOSED callbacks still log "Device disconnected". */
	lws_context_destroy(d->ctx);
	ev_loop_destroy(d->ev);
	close(d->listen_fd);
	struct cmd *cmd = d->cmd_head;
	while (cmd) {
		struct cmd *next = cmd->next;
		device__cmd_free(cmd);
		cmd = next;
	}
	idmap_free(&d->online);
	idmap_free(&d->enrolling);
	idmap_free(&d->per_ip);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

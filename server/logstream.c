/* server/logstream.c -- live log streams over SSE (see logstream.h, docs/logs.md).
 *
 * A reader (one SSE connection) subscribes to the bus before it reads any
 * history, so nothing committed in between is missed; history comes from
 * the store (committed events only) and live events whose id it has already
 * sent are skipped, so nothing is sent twice.  When its queue is empty the
 * reader suspends its connection (under the subscriber's lock); the bus
 * resumes it when an event arrives.
 *
 * A live event's SSE frame is made once, by the first reader that sends it,
 * and kept in the bus's shared event for every other reader (bus_event_frame):
 * a reader copies it straight from there into MHD's buffer.
 *
 * Readers are resumed in batches: the bus's wake only puts the reader on a
 * list, and one thread (the waker) resumes every reader on it in passes, a
 * window apart that grows with the readers a pass resumed (1 ms for a few,
 * up to 25 ms for a thousand; see ls__waker).  A resumed reader sends what
 * it has in one write and then waits for the next pass, even if more came
 * meanwhile: at a high event rate a reader pays one resume, one send() and
 * its client's one recv() per pass instead of per event; an event that
 * arrives after a quiet spell is passed on at once.
 *
 * Named streams are bounded: at most opt.max_streams in all and
 * opt.max_per_owner per API token, and one not opened within
 * opt.open_timeout_ms of its creation is removed by the waker thread (it
 * would otherwise buffer events for no one, forever). */
#define _GNU_SOURCE
#include "logstream.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "log.h"
#include "logfmt.h"
#include "metrics.h"

#define LOGSTREAM_PAGE 500
/* The waker's window: after resuming n readers it waits n * PER_READER, at
 * least MIN and at most MAX, before the next pass. */
#define LOGSTREAM_WAKE_MIN_US 1000
#define LOGSTREAM_WAKE_MAX_US 25000
#define LOGSTREAM_WAKE_PER_READER_US 25
#define LOGSTREAM_BATCH 32          /* bus items taken under one lock */

struct stream {
	struct stream *next;
	char id[64];                /* "" for a device's own stream */
	bus_sub *sub;
	int has_reader;
	int64_t created;
	int64_t owner;              /* the API token that created it */
	int64_t open_by;            /* tn_mono_ms: removed if not opened by then */
	unsigned types;             /* 1 << event_type of each type it sends; 0: all */
};

struct reader {
	logstreams *ls;
	struct stream *st;
	struct MHD_Connection *conn;
	int text;
	uint64_t device;            /* history for this device, if after >= 0 */
	int64_t after;              /* -1: no history (left) */
	int64_t last_sent;
	struct reader *wake_next;   /* on ls->to_wake (under ls->wake_lock) */
	int wake_queued;
	int sent;                   /* handed MHD live data since its last resume */
	bus_item batch[LOGSTREAM_BATCH]; /* taken from the bus, not yet sent */
	int batch_i, batch_n;
	json_t *page;
	size_t page_idx;
	const char *out;            /* formatted, not yet handed to MHD: */
	size_t out_len, out_off;
	char *out_own;              /* owned (history, notices), or */
	bus_event *out_ev;          /* the shared event it is borrowed from */
	int ended;
};

struct logstreams {
	bus *b;
	store *st;
	logstreams_options opt;
	pthread_mutex_t lock;
	struct stream *streams;     /* the named ones */
	int nstreams;               /* under lock */
	_Atomic int readers;
	int closing;
	/* The waker thread and the readers it is to resume. */
	pthread_mutex_t wake_lock;
	pthread_cond_t wake_cond;
	struct reader *to_wake;
	int waker_running, waker_stop;   /* under wake_lock */
	pthread_t waker;
};

/* Resumes every queued reader.  Called with wake_lock held; returns with it
 * held, but releases it while it resumes, so that the bus's wakes (the store
 * writer, holding the bus's locks) never wait for a pass of a thousand
 * MHD_resume_connection calls.  Safe because a reader on the list is
 * suspended: MHD leaves it alone, so it cannot end and be freed until it is
 * resumed here (and its next pointer is read before that); it is marked not
 * queued before it is taken, so a wake after its resume queues it again. */
static int ls__wake_all_locked(logstreams *ls)
{
	struct reader *list = ls->to_wake;
	int n = 0;
	ls->to_wake = NULL;
	for (struct reader *r = list; r; r = r->wake_next) {
		r->wake_queued = 0;
		r->sent = 0;
		n++;
	}
	pthread_mutex_unlock(&ls->wake_lock);
	while (list) {
		struct reader *r = list;
		list = r->wake_next;
		MHD_resume_connection(r->conn);
	}
	pthread_mutex_lock(&ls->wake_lock);
	return n;
}

static void ls__stream_free(logstreams *ls, struct stream *st);

/* Removes the named streams nobody opened in time (the waker's cron). */
static void ls__expire(logstreams *ls)
{
	struct stream *gone = NULL;
	int64_t now = tn_mono_ms();
	pthread_mutex_lock(&ls->lock);
	for (struct stream **pp = &ls->streams; *pp;) {
		struct stream *st = *pp;
		if (st->has_reader || now < st->open_by) {
			pp = &st->next;
			continue;
		}
		*pp = st->next;
		st->next = gone;
		gone = st;
		ls->nstreams--;
	}
	pthread_mutex_unlock(&ls->lock);
	while (gone) {
		struct stream *st = gone;
		gone = st->next;
		log_info("log stream %.12s... was not opened within %d s of its creation: removed", st->id,
			 (int)(ls->opt.open_timeout_ms / 1000));
		metrics_inc(M_STREAMS_EXPIRED);
		metrics_add(M_STREAMS, -1);
		ls__stream_free(ls, st);
	}
}

/* The waker thread: resumes queued readers, then lets a window pass so that
 * the next batch gathers; once a second it expires streams.  The window
 * grows with the readers it resumed: a pass of n readers costs n sends (and
 * n reads in the clients), so waiting n * LOGSTREAM_WAKE_PER_READER_US
 * between passes bounds what the passes cost (about 40,000 sends a second),
 * while a few readers still get their events within a millisecond or two
 * and the window never passes LOGSTREAM_WAKE_MAX_US. */
static void *ls__waker(void *arg)
{
	logstreams *ls = arg;
	int64_t next_expiry = tn_mono_ms() + 1000;
	pthread_mutex_lock(&ls->wake_lock);
	while (!ls->waker_stop) {
		if (tn_mono_ms() >= next_expiry) {
			pthread_mutex_unlock(&ls->wake_lock);
			ls__expire(ls);
			next_expiry = tn_mono_ms() + 1000;
			pthread_mutex_lock(&ls->wake_lock);
			continue;
		}
		if (!ls->to_wake) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&ls->wake_cond, &ls->wake_lock, &ts);
			continue;
		}
		int64_t window = (int64_t)ls__wake_all_locked(ls) * LOGSTREAM_WAKE_PER_READER_US;
		pthread_mutex_unlock(&ls->wake_lock);
		usleep((useconds_t)(window < LOGSTREAM_WAKE_MIN_US ? LOGSTREAM_WAKE_MIN_US
				    : window > LOGSTREAM_WAKE_MAX_US ? LOGSTREAM_WAKE_MAX_US : window));
		pthread_mutex_lock(&ls->wake_lock);
	}
	ls__wake_all_locked(ls);
	pthread_mutex_unlock(&ls->wake_lock);
	return NULL;
}

/* Stops the waker, resuming what it had queued; later wakes resume at once. */
static void ls__waker_stop(logstreams *ls)
{
	pthread_mutex_lock(&ls->wake_lock);
	int running = ls->waker_running;
	ls->waker_running = 0;
	ls->waker_stop = 1;
	pthread_cond_signal(&ls->wake_cond);
	pthread_mutex_unlock(&ls->wake_lock);
	if (running)
		pthread_join(ls->waker, NULL);
}

int logstreams_new(logstreams **out, bus *b, store *st, const logstreams_options *opt)
{
	logstreams *ls = calloc(1, sizeof *ls);
	if (!ls)
		return TN_ENOMEM;
	ls->b = b;
	ls->st = st;
	ls->opt = *opt;
	if (ls->opt.open_timeout_ms <= 0)
		ls->opt.open_timeout_ms = 60000;
	pthread_mutex_init(&ls->lock, NULL);
	pthread_mutex_init(&ls->wake_lock, NULL);
	pthread_cond_init(&ls->wake_cond, NULL);
	if (pthread_create(&ls->waker, NULL, ls__waker, ls)) {
		pthread_cond_destroy(&ls->wake_cond);
		pthread_mutex_destroy(&ls->wake_lock);
		pthread_mutex_destroy(&ls->lock);
		free(ls);
		return TN_ENOMEM;
	}
	ls->waker_running = 1;
	*out = ls;
	return 0;
}

int logstreams_open_timeout_s(const logstreams *ls)
{
	return (int)(ls->opt.open_timeout_ms / 1000);
}

/* --- formatting ------------------------------------------------------------------ */

/* Where r->out comes from: text (owned), or ev's frame (a reference). */
static void ls__set_out(struct reader *r, char *text, bus_event *ev, const char *frame, size_t len)
{
	free(r->out_own);
	bus_event_release(r->out_ev);
	r->out_own = text;
	r->out_ev = ev;
	r->out = text ? text : frame;
	r->out_len = text ? strlen(text) : frame ? len : 0;
	r->out_off = 0;
}

/* The SSE frame of an event (form 1: ?format=text); malloc'd, NULL on ENOMEM. */
static char *ls__frame(const tn_event *ev, int text_form)
{
	char *text = NULL, line[20000];
	if (text_form) {
		events_format_text(ev, line, sizeof line);
		for (char *p = line; *p; p++)
			if (*p == '\n' || *p == '\r')
				*p = ' ';
		if (asprintf(&text, "id: %lld\nevent: message\ndata: %s\n\n", (long long)ev->id, line) < 0)
			text = NULL;
	} else {
		json_t *j = events_to_json(ev);
		char *data = j ? json_dumps(j, JSON_COMPACT) : NULL;
		json_decref(j);
		if (data && asprintf(&text, "id: %lld\nevent: message\ndata: %s\n\n", (long long)ev->id, data) < 0)
			text = NULL;
		free(data);
	}
	return text;
}

/* A history event (not shared: only this reader sends it). */
static void ls__format_event(struct reader *r, const tn_event *ev)
{
	r->last_sent = ev->id;
	ls__set_out(r, ls__frame(ev, r->text), NULL, NULL, 0);
}

/* A live event: its shared frame; takes the reference e. */
static void ls__format_shared(struct reader *r, bus_event *e)
{
	size_t len = 0;
	const char *frame = bus_event_frame(e, r->text ? 1 : 0, ls__frame, &len);
	r->last_sent = bus_event_get(e)->id;
	if (!frame) {
		bus_event_release(e);
		e = NULL;
	}
	ls__set_out(r, NULL, e, frame, len);
}

static void ls__format_notice(struct reader *r, const char *notice)
{
	char *text = NULL;
	if (asprintf(&text, "event: state_change\ndata: %s\n\n", notice) < 0)
		text = NULL;
	ls__set_out(r, text, NULL, NULL, 0);
}

/* --- the reader ------------------------------------------------------------------- */

/* The next history event into r->out; 0 when history is over. */
static int ls__history(struct reader *r)
{
	for (;;) {
		json_t *events = json_object_get(r->page, "events");
		if (r->page && r->page_idx < json_array_size(events)) {
			json_t *e = json_array_get(events, r->page_idx++);
			tn_event ev = {
				.id = json_integer_value(json_object_get(e, "id")), .device = r->device,
				.type = (event_type)events_type_parse(json_string_value(json_object_get(e, "type"))),
				.msg = json_string_value(json_object_get(e, "msg")),
			};
			logfmt_parse_iso8601(json_string_value(json_object_get(e, "ts")), &ev.ts_ms);
			r->after = ev.id;
			ls__format_event(r, &ev);
			return 1;
		}
		int had = r->page != NULL;
		size_t got = json_array_size(events);
		json_decref(r->page);
		r->page = NULL;
		r->page_idx = 0;
		if (had && got < LOGSTREAM_PAGE) {
			r->after = -1; /* caught up: live from here */
			return 0;
		}
		store_event_query q = { .device = r->device, .after = r->after, .limit = LOGSTREAM_PAGE };
		tn_error err;
		r->page = store_events_list(r->ls->st, &q, &err);
		if (!r->page) {
			r->after = -1;
			return 0;
		}
	}
}

static void ls__suspend(void *arg)
{
	struct reader *r = arg;
	MHD_suspend_connection(r->conn);
}

/* The bus's wake (from the publishing thread), or a reader that defers
 * (its own MHD thread, suspended): queue it for the waker's next pass. */
static void ls__wake(void *arg)
{
	struct reader *r = arg;
	logstreams *ls = r->ls;
	pthread_mutex_lock(&ls->wake_lock);
	if (!ls->waker_running) {
		r->sent = 0;
		MHD_resume_connection(r->conn);
	} else if (!r->wake_queued) {
		r->wake_queued = 1;
		r->wake_next = ls->to_wake;
		ls->to_wake = r;
		if (!r->wake_next)
			pthread_cond_signal(&ls->wake_cond);
	}
	pthread_mutex_unlock(&ls->wake_lock);
}

/* Copies into buf what the reader has to send, up to max bytes; returns
 * how much (0: it suspended, or it has ended). */
static size_t ls__fill(struct reader *r, char *buf, size_t max)
{
	size_t done = 0;

	while (done < max) {
		if (r->out && r->out_off < r->out_len) {
			size_t n = r->out_len - r->out_off;
			if (n > max - done)
				n = max - done;
			memcpy(buf + done, r->out + r->out_off, n);
			r->out_off += n;
			done += n;
			continue;
		}
		if (r->ended)
			return done;
		if (r->after >= 0 && ls__history(r))
			continue;
		if (r->batch_i < r->batch_n) {
			bus_item it = r->batch[r->batch_i++];
			if (it.ev && r->st->types && !(r->st->types & 1u << bus_event_get(it.ev)->type)) {
				bus_event_release(it.ev); /* a type this stream leaves out */
			} else if (it.ev && bus_event_get(it.ev)->id > r->last_sent) {
				ls__format_shared(r, it.ev);
			} else if (it.ev) {
				bus_event_release(it.ev);
			} else {
				ls__format_notice(r, it.notice);
				if (strcmp(it.notice, "closed") == 0)
					r->ended = 1; /* deleted: this was its last word */
				free(it.notice);
			}
			continue;
		}
		if (!done && r->sent && bus_sub_pending(r->st->sub)) {
			/* Sent once in this pass: the rest goes in the next. */
			MHD_suspend_connection(r->conn);
			ls__wake(r);
			return 0;
		}
		/* With something to hand over already, only look; else wait. */
		int n = bus_sub_take(r->st->sub, r->batch, LOGSTREAM_BATCH, done ? NULL : ls__suspend, r);
		if (n > 0) {
			r->batch_i = 0;
			r->batch_n = n;
		} else if (n == 0) {
			return done; /* 0: suspended, the bus resumes it */
		} else {
			r->ended = 1;
		}
	}
	return done;
}

/* Fills buf with as many events as fit; suspends when it has nothing, and
 * also when it has already handed over what it had since the waker resumed
 * it: what came meanwhile waits for the waker's next pass, so that a reader
 * makes one send() per pass, not one per event that arrives while MHD
 * sends.  A reader that filled buf is behind and goes on at once. */
static ssize_t ls__read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct reader *r = cls;
	(void)pos;
	size_t done = ls__fill(r, buf, max);
	if (done > 0 && done < max && r->after < 0)
		r->sent = 1;
	return done ? (ssize_t)done : r->ended ? MHD_CONTENT_READER_END_OF_STREAM : 0;
}

static void ls__stream_free(logstreams *ls, struct stream *st)
{
	bus_unsubscribe(ls->b, st->sub);
	free(st);
}

static void ls__reader_done(void *cls)
{
	struct reader *r = cls;
	logstreams *ls = r->ls;
	/* A stream lives as long as its connection. */
	if (r->st->id[0]) {
		pthread_mutex_lock(&ls->lock);
		for (struct stream **pp = &ls->streams; *pp; pp = &(*pp)->next)
			if (*pp == r->st) {
				*pp = r->st->next;
				ls->nstreams--;
				metrics_add(M_STREAMS, -1);
				break;
			}
		pthread_mutex_unlock(&ls->lock);
	}
	ls__stream_free(ls, r->st);
	pthread_mutex_lock(&ls->wake_lock);
	if (r->wake_queued)
		for (struct reader **pp = &ls->to_wake; *pp; pp = &(*pp)->wake_next)
			if (*pp == r) {
				*pp = r->wake_next;
				break;
			}
	pthread_mutex_unlock(&ls->wake_lock);
	for (; r->batch_i < r->batch_n; r->batch_i++) {
		bus_event_release(r->batch[r->batch_i].ev);
		free(r->batch[r->batch_i].notice);
	}
	json_decref(r->page);
	ls__set_out(r, NULL, NULL, NULL, 0);
	free(r);
	atomic_fetch_sub(&ls->readers, 1);
}

static struct MHD_Response *ls__response(logstreams *ls, struct MHD_Connection *conn, struct stream *st,
					 uint64_t device, int64_t after, int text)
{
	struct reader *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->ls = ls;
	r->st = st;
	r->conn = conn;
	r->text = text;
	r->device = device;
	r->after = after;
	r->last_sent = after > 0 ? after : 0;
	struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 65536, ls__read, r,
								      ls__reader_done);
	if (!resp) {
		free(r);
		return NULL;
	}
	atomic_fetch_add(&ls->readers, 1);
	bus_sub_set_wake(st->sub, ls__wake, r);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
	return resp;
}

struct MHD_Response *logstream_device_response(logstreams *ls, struct MHD_Connection *conn,
					       uint64_t device, int64_t after_id, int text)
{
	struct stream *st = calloc(1, sizeof *st);
	if (!st)
		return NULL;
	st->sub = bus_subscribe(ls->b, 0, NULL, NULL);
	if (!st->sub || bus_sub_add_device(st->sub, device)) {
		ls__stream_free(ls, st);
		return NULL;
	}
	struct MHD_Response *resp = ls__response(ls, conn, st, device, after_id >= 0 ? after_id : -1, text);
	if (!resp) {
		ls__stream_free(ls, st);
		return NULL;
	}
	return resp;
}

/* --- named multi-device streams -------------------------------------------------- */

static struct stream *ls__find_locked(logstreams *ls, const char *id)
{
	for (struct stream *st = ls->streams; st; st = st->next)
		if (strcmp(st->id, id) == 0)
			return st;
	return NULL;
}

/* Whether one more named stream fits, under ls->lock: 0, or an error
 * (counted) naming the limit. */
static int ls__admit_locked(logstreams *ls, int64_t owner, tn_error *err)
{
	if (ls->opt.max_streams > 0 && ls->nstreams >= ls->opt.max_streams) {
		metrics_error(ERR_STREAMS_FULL);
		return tn_err(err, TN_ESTATE, "the server holds its limit of %d log streams "
			      "(--max-streams): try again later", ls->opt.max_streams);
	}
	int mine = 0;
	for (struct stream *st = ls->streams; st; st = st->next)
		mine += st->owner == owner;
	if (ls->opt.max_per_owner > 0 && mine >= ls->opt.max_per_owner) {
		metrics_error(ERR_STREAMS_PER_TOKEN);
		return tn_err(err, TN_ETOOBIG, "this token holds its limit of %d log streams "
			      "(--max-streams-per-token): open or delete one first; one not opened within "
			      "%d s goes by itself", ls->opt.max_per_owner, (int)(ls->opt.open_timeout_ms / 1000));
	}
	return 0;
}

/* "types": ["status", ...] into a mask of 1 << event_type (absent: 0, all). */
static int ls__types(json_t *types, unsigned *mask, tn_error *err)
{
	json_t *v;
	size_t i;
	*mask = 0;
	if (!types)
		return 0;
	if (!json_is_array(types) || json_array_size(types) == 0)
		return tn_err(err, TN_EINVAL, "'types' must be a non-empty array of event types (status, "
			      "device, agent, firmware)");
	json_array_foreach(types, i, v) {
		int t = json_is_string(v) ? events_type_parse(json_string_value(v)) : -1;
		if (t < 0)
			return tn_err(err, TN_EINVAL, "'types[%zu]' is not an event type (status, device, agent, "
				      "firmware)", i);
		*mask |= 1u << t;
	}
	return 0;
}

int logstream_create(logstreams *ls, int64_t owner, json_t *body, json_t **out, tn_error *err)
{
	json_t *devices = json_object_get(body, "devices"), *group = json_object_get(body, "group"),
	       *all = json_object_get(body, "all"), *v, *list = json_array();
	const char *key;
	size_t i;
	unsigned types;

	json_object_foreach(body, key, v)
		if (strcmp(key, "devices") && strcmp(key, "group") && strcmp(key, "all") && strcmp(key, "types")) {
			json_decref(list);
			return tn_err(err, TN_EINVAL, "unknown member '%s'", key);
		}
	if (ls__types(json_object_get(body, "types"), &types, err)) {
		json_decref(list);
		return TN_EINVAL;
	}
	if (devices && (!json_is_array(devices) || json_array_size(devices) > 100000)) {
		json_decref(list);
		return tn_err(err, TN_EINVAL, "'devices' must be an array of device ids");
	}
	if (all && !json_is_boolean(all)) {
		json_decref(list);
		return tn_err(err, TN_EINVAL, "'all' must be true or false");
	}
	json_array_foreach(devices, i, v) {
		uint64_t id;
		if (!json_is_string(v) || tn_device_id_parse(json_string_value(v), &id)) {
			json_decref(list);
			return tn_err(err, TN_EINVAL, "'devices[%zu]' is not a device id", i);
		}
		json_array_append(list, v);
	}
	/* Refused early, before a group's listing; checked again when added. */
	pthread_mutex_lock(&ls->lock);
	int rc = ls__admit_locked(ls, owner, err);
	pthread_mutex_unlock(&ls->lock);
	if (rc) {
		json_decref(list);
		return rc;
	}
	if (group) {
		/* The group's devices now (devices moved in later are added with PUT). */
		store_device_filter f = { .online = -1, .group = json_string_value(group), .limit = 1000 };
		if (!json_is_string(group)) {
			json_decref(list);
			return tn_err(err, TN_EINVAL, "'group' must be a string");
		}
		for (;;) {
			json_t *page = store_device_list(ls->st, &f, err), *d;
			if (!page) {
				json_decref(list);
				return TN_EIO;
			}
			json_array_foreach(json_object_get(page, "devices"), i, d)
				json_array_append(list, json_object_get(d, "id"));
			json_t *next = json_object_get(page, "next");
			int more = json_is_string(next) && tn_device_id_parse(json_string_value(next), &f.after) == 0;
			f.has_after = 1;
			json_decref(page);
			if (!more)
				break;
		}
	}
	struct stream *st = calloc(1, sizeof *st);
	char secret[64];
	if (!st || auth_random_secret("ls_", secret)) {
		free(st);
		json_decref(list);
		return tn_err(err, TN_ENOMEM, "out of memory");
	}
	snprintf(st->id, sizeof st->id, "%.40s", secret);
	st->created = tn_now_ms();
	st->owner = owner;
	st->open_by = tn_mono_ms() + ls->opt.open_timeout_ms;
	st->types = types;
	st->sub = bus_subscribe(ls->b, json_is_true(all), NULL, NULL);
	if (!st->sub) {
		free(st);
		json_decref(list);
		return tn_err(err, TN_ENOMEM, "out of memory");
	}
	/* Subscribed at creation: events from now on wait for the reader. */
	bus_sub_notice(st->sub, "opened");
	json_array_foreach(list, i, v) {
		uint64_t id;
		char line[64];
		tn_device_id_parse(json_string_value(v), &id);
		bus_sub_add_device(st->sub, id);
		snprintf(line, sizeof line, "%s subscribed", json_string_value(v));
		bus_sub_notice(st->sub, line);
	}
	pthread_mutex_lock(&ls->lock);
	if ((rc = ls__admit_locked(ls, owner, err))) {
		pthread_mutex_unlock(&ls->lock);
		ls__stream_free(ls, st);
		json_decref(list);
		return rc;
	}
	st->next = ls->streams;
	ls->streams = st;
	ls->nstreams++;
	metrics_add(M_STREAMS, 1);
	pthread_mutex_unlock(&ls->lock);
	char url[128];
	snprintf(url, sizeof url, "/v1/logstreams/%s", st->id);
	json_t *type_list = json_array();
	for (int t = 0; t < EV__COUNT; t++)
		if (!types || types & 1u << t)
			json_array_append_new(type_list, json_string(events_type_name((event_type)t)));
	*out = json_pack("{ss ss so sb so}", "id", st->id, "url", url, "devices", list, "all", json_is_true(all),
			 "types", type_list);
	return 0;
}

struct MHD_Response *logstream_open(logstreams *ls, struct MHD_Connection *conn, const char *id, int text,
				    tn_error *err)
{
	pthread_mutex_lock(&ls->lock);
	struct stream *st = ls__find_locked(ls, id);
	if (!st) {
		pthread_mutex_unlock(&ls->lock);
		tn_err(err, TN_ENOTFOUND, "no log stream %s", id);
		return NULL;
	}
	if (st->has_reader) {
		pthread_mutex_unlock(&ls->lock);
		tn_err(err, TN_EEXIST, "log stream %s is already being read", id);
		return NULL;
	}
	st->has_reader = 1;
	pthread_mutex_unlock(&ls->lock);
	struct MHD_Response *resp = ls__response(ls, conn, st, 0, -1, text);
	if (!resp) {
		st->has_reader = 0;
		tn_err(err, TN_ENOMEM, "out of memory");
	}
	return resp;
}

int logstream_device(logstreams *ls, const char *id, uint64_t device, int add, tn_error *err)
{
	char line[64], hex[17];
	pthread_mutex_lock(&ls->lock);
	struct stream *st = ls__find_locked(ls, id);
	if (!st) {
		pthread_mutex_unlock(&ls->lock);
		return tn_err(err, TN_ENOTFOUND, "no log stream %s", id);
	}
	tn_device_id_format(device, hex);
	if (add)
		bus_sub_add_device(st->sub, device);
	else
		bus_sub_remove_device(st->sub, device);
	snprintf(line, sizeof line, "%s %s", hex, add ? "subscribed" : "unsubscribed");
	bus_sub_notice(st->sub, line);
	pthread_mutex_unlock(&ls->lock);
	return 0;
}

int logstream_delete(logstreams *ls, const char *id, tn_error *err)
{
	pthread_mutex_lock(&ls->lock);
	struct stream *st = ls__find_locked(ls, id);
	if (!st) {
		pthread_mutex_unlock(&ls->lock);
		return tn_err(err, TN_ENOTFOUND, "no log stream %s", id);
	}
	if (st->has_reader) {
		/* Its reader ends it: tell it to. */
		bus_sub_notice(st->sub, "closed");
		pthread_mutex_unlock(&ls->lock);
		return 0;
	}
	for (struct stream **pp = &ls->streams; *pp; pp = &(*pp)->next)
		if (*pp == st) {
			*pp = st->next;
			ls->nstreams--;
			metrics_add(M_STREAMS, -1);
			break;
		}
	pthread_mutex_unlock(&ls->lock);
	ls__stream_free(ls, st);
	return 0;
}

void logstreams_close(logstreams *ls)
{
	if (!ls)
		return;
	ls__waker_stop(ls);
	bus_close(ls->b);
	for (int i = 0; i < 500 && atomic_load(&ls->readers) > 0; i++)
		usleep(10 * 1000);
}

void logstreams_free(logstreams *ls)
{
	if (!ls)
		return;
	while (ls->streams) {
		struct stream *st = ls->streams;
		ls->streams = st->next;
		metrics_add(M_STREAMS, -1);
		ls__stream_free(ls, st);
	}
	ls__waker_stop(ls);
	pthread_cond_destroy(&ls->wake_cond);
	pthread_mutex_destroy(&ls->wake_lock);
	pthread_mutex_destroy(&ls->lock);
	free(ls);
}

/* server/logstream.c -- live log streams over SSE (see logstream.h, docs/logs.md).
 *
 * A reader (one SSE connection) subscribes to the bus before it reads any
 * history, so nothing committed in between is missed; history comes from
 * the store (committed events only) and live events whose id it has already
 * sent are skipped, so nothing is sent twice.  When its queue is empty the
 * reader suspends its connection (under the subscriber's lock); the bus
 * wakes it when an event arrives.
 *
 * A live event's SSE frame is made once, by the first reader that sends it,
 * and kept in the bus's shared event for every other reader (bus_event_frame).
 *
 * Readers are woken in passes: the bus's wake only puts the reader on its
 * waker's list, and the waker threads (one per core, at most
 * LOGSTREAM_WAKERS_MAX) take their lists in passes, a window apart that
 * grows with the readers a pass took (1 ms for a few, up to 25 ms for a
 * thousand; see ls__waker).  A reader that has caught up sends what it has
 * in one write per pass, even if more came meanwhile: at a high event rate a reader costs
 * one send() and its client's one recv() per pass instead of per event; an
 * event that arrives after a quiet spell is passed on at once.
 *
 * Who writes (the state diagram of a reader):
 *
 *   MHD's --(nothing to send, or sent once in this pass with more
 *            waiting; live, plain TCP, MHD wrote to it before:
 *            ls__on_wait, ls__fill)--> the waker's
 *   the waker's --(socket full, send failed, stream ended, server stopping:
 *                  ls__handback)--> MHD's
 *
 * MHD's reader: MHD calls ls__read, which copies frames into MHD's buffer;
 * history, TLS connections and readers whose socket is full are always
 * MHD's.  The waker's reader ("direct"): its connection stays suspended in
 * MHD and the waker send()s its frames to the socket itself, with no resume,
 * no MHD thread and no copy into MHD's buffer (a resume, its wake of an MHD
 * thread and two content-reader calls cost more than the send() itself).
 * Only the thread that owns a reader touches it; the hand-overs happen
 * under the subscriber's lock (to the waker) and by MHD_resume_connection
 * (back).
 *
 * Direct sending rests on what libmicrohttpd 0.9.75 does inside (its
 * connection.c and mhd_send.c), which its API does not promise:
 *  - it calls a content reader only once everything the reader returned
 *    before is on the socket, and the headers are on the socket before the
 *    first call; so when ls__read returns nothing and suspends, nothing of
 *    MHD's is left unsent;
 *  - it neither reads, writes nor times out a suspended connection;
 *  - it keeps its own record of the socket's TCP_CORK and TCP_NODELAY and
 *    sets them only when it writes; after its first whole body write on
 *    Linux the record says "not corked, TCP_NODELAY on" and that is true.
 *    So a reader becomes direct only after MHD has written to it once
 *    (every stream opens with a comment line, LOGSTREAM_COMMENT, which also
 *    pushes out the headers that MHD sent with MSG_MORE): the waker's
 *    send()s then go out at once with no setsockopt, and MHD's record is
 *    still right when the reader is handed back;
 *  - the response is HTTP/1.0, so there is no chunk framing to keep in step.
 * It is therefore used only with the libmicrohttpd it was checked against,
 * 0.9.75, both built with and running (MHD_VERSION, MHD_get_version);
 * with any other MHD writes every stream, as it does over TLS.
 *
 * The waker writing to a connection MHD holds is this module's exception
 * to STYLE rule 8 (threads hand work over only through a locked queue and
 * a wake-up).  The hand-over is still explicit and whole: the reader passes
 * to the waker under its subscriber's lock when its content reader returns
 * nothing and MHD suspends it, and back only by MHD_resume_connection, so
 * one thread at a time writes to the socket.  Going through MHD for every
 * pass, as the rule would have it, cost a resume, a wake of an MHD thread
 * and two content-reader calls per reader and pass: more than the send()
 * itself, and 43 ms instead of 30 ms of p99 at a thousand readers
 * (docs/performance.md).
 *
 * Named streams are bounded: at most opt.max_streams in all and
 * opt.max_per_owner per API token, and one not opened within
 * opt.open_timeout_ms of its creation is removed by the waker thread (it
 * would otherwise buffer events for no one, forever). */
#define _GNU_SOURCE
#include "logstream.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
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
#define LOGSTREAM_DIRECT_BUF 65536  /* the most a direct send() carries */
#define LOGSTREAM_DIRECT_BUDGET (16 * LOGSTREAM_DIRECT_BUF) /* a reader's sends in one pass */
#define LOGSTREAM_WAKERS_MAX 4
/* What every stream starts with, and what an idle one gets every
 * LOGSTREAM_HEARTBEAT_MS: an SSE comment, which clients ignore. */
#define LOGSTREAM_COMMENT ": \n\n"
#define LOGSTREAM_HEARTBEAT_MS 15000
#define LOGSTREAM_HEARTBEATS_MAX 256 /* per waker and second */
/* The libmicrohttpd whose insides direct sending was checked against. */
#define LOGSTREAM_DIRECT_MHD "0.9.75"
#if MHD_VERSION == 0x00097500
#define LOGSTREAM_DIRECT_BUILT 1
#else
#define LOGSTREAM_DIRECT_BUILT 0
#endif

struct stream {
	struct stream *next;
	char id[64];                /* "" for a device's own stream */
	bus_sub *sub;
	int has_reader;             /* under ls->lock */
	int64_t owner;              /* the API token that created it */
	int64_t open_by;            /* tn_mono_ms: removed if not opened by then */
};

/* A waker thread and the readers it is to resume or send to.  While the
 * thread runs, only it resumes its readers (ls__handback). */
struct waker {
	logstreams *ls;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct reader *to_wake;
	struct reader *susp;        /* its readers that are suspended (under lock) */
	int running;                /* under lock: a thread takes to_wake (else wakes resume at once) */
	int started, stop;          /* under lock: the thread was made, is to stop */
	pthread_t thread;
	int epfd;                   /* the suspended readers' sockets, for hang-ups */
	char *buf;                  /* LOGSTREAM_DIRECT_BUF bytes, for ls__direct */
};

struct reader {
	logstreams *ls;
	struct waker *w;            /* the one that wakes it */
	struct stream *st;
	struct MHD_Connection *conn;
	int text;
	uint64_t device;            /* history for this device, if after >= 0 */
	int64_t after;              /* -1: no history (left) */
	int64_t last_sent;
	struct reader *wake_next;   /* on w->to_wake (under w->lock) */
	int wake_queued;
	struct reader *susp_prev, *susp_next; /* on w->susp (under w->lock) */
	int suspended;              /* under w->lock */
	int64_t last_write;         /* tn_mono_ms of the last data handed out */
	int heartbeat;              /* idle: a comment goes out first */
	int sent;                   /* handed MHD live data since its last resume */
	bus_item batch[LOGSTREAM_BATCH]; /* taken from the bus, not yet sent */
	int batch_i, batch_n;
	json_t *page;
	size_t page_idx;
	const char *out;            /* formatted, not yet handed to MHD: */
	size_t out_len, out_off;
	char *out_own;              /* owned (history, notices), or */
	bus_event *out_ev;          /* the shared event it is borrowed from */
	char *unsent;               /* what a direct send() left, owned: goes first */
	size_t unsent_len, unsent_off;
	int ended;
	char last_word[300];        /* a closing notice made with no allocation (ls__cut) */
	/* Direct sending (see ls__direct). */
	int returned;               /* ls__read returned data once */
	int pushed;                 /* MHD wrote (and pushed) data of ours */
	int can_direct;             /* plain TCP: the waker may write to fd */
	int fd;
	int direct;                 /* the waker's now: MHD holds it suspended */
	int broken;                 /* a direct send() failed, or its client hung up: MHD closes it */
};

struct logstreams {
	bus *b;
	store *st;
	logstreams_options opt;
	pthread_mutex_t lock;
	struct stream *streams;     /* the named ones */
	int nstreams;               /* under lock */
	_Atomic int readers;
	_Atomic int suspended;      /* readers whose connection MHD holds suspended */
	_Atomic unsigned next_waker; /* readers are dealt to the wakers in turn */
	_Atomic int closing;        /* logstreams_close began: no new reader */
	struct waker wakers[LOGSTREAM_WAKERS_MAX];
	int nwakers;                /* made (and to free) */
	int direct_ok;              /* the MHD direct sending was checked against */
	int share;                  /* the wakers that share the send budget */
};

/* A pass: every queued reader is sent to (ls__direct) or resumed.  Called
 * with w->lock held; returns with it held, but releases it during the pass,
 * so that the bus's wakes (the store writer, holding the bus's locks) never
 * wait for a pass of a thousand sends or resumes.  Safe because a reader on
 * the list is suspended: MHD leaves it alone, so it cannot end and be freed
 * until it is handed back here (and its next pointer is read before that);
 * it is marked not queued before it is taken, so a wake during the pass
 * queues it for the next one. */
static void ls__direct(struct waker *w, struct reader *r);
static void ls__handback(struct reader *r);
static void ls__wake(void *arg);

static int64_t ls__mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Every suspend and resume of a reader's connection goes through these:
 * MHD must never be stopped with one suspended (logstreams_close).  A
 * suspended connection is outside MHD's epoll and timeouts: its waker
 * watches the socket for a hang-up (ls__hangups) and sends a heartbeat
 * when it is idle (ls__heartbeats). */
static void ls__suspend(struct reader *r)
{
	struct waker *w = r->w;
	atomic_fetch_add(&r->ls->suspended, 1);
	MHD_suspend_connection(r->conn);
	pthread_mutex_lock(&w->lock);
	r->suspended = 1;
	r->susp_prev = NULL;
	r->susp_next = w->susp;
	if (w->susp)
		w->susp->susp_prev = r;
	w->susp = r;
	pthread_mutex_unlock(&w->lock);
	if (r->fd >= 0) {
		struct epoll_event ev = { .events = EPOLLRDHUP, .data.ptr = r }; /* and HUP, ERR */
		epoll_ctl(w->epfd, EPOLL_CTL_ADD, r->fd, &ev);
	}
}

static void ls__resume(struct reader *r)
{
	logstreams *ls = r->ls;
	MHD_resume_connection(r->conn); /* r may be gone once it runs */
	atomic_fetch_sub(&ls->suspended, 1);
}

static int ls__wake_all_locked(struct waker *w)
{
	struct reader *list = w->to_wake;
	int n = 0, stopping = w->stop;
	w->to_wake = NULL;
	for (struct reader *r = list; r; r = r->wake_next) {
		r->wake_queued = 0;
		r->sent = 0;
		n++;
	}
	pthread_mutex_unlock(&w->lock);
	while (list) {
		struct reader *r = list;
		list = r->wake_next;
		if (r->direct && !stopping && !r->broken)
			ls__direct(w, r);
		else
			ls__handback(r);
	}
	pthread_mutex_lock(&w->lock);
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

/* Suspended readers whose client hung up go back to MHD, which closes them
 * (a reader on a quiet stream would otherwise hold its socket, its
 * subscription and a connection slot forever).  One that waits is claimed
 * from the bus first, so that no wake comes for it once it is MHD's; one
 * that was woken meanwhile is on to_wake, and its pass hands it back. */
static void ls__hangups(struct waker *w)
{
	struct epoll_event ev[64];
	int n = epoll_wait(w->epfd, ev, 64, 0);
	for (int i = 0; i < n; i++) {
		struct reader *r = ev[i].data.ptr;
		r->broken = 1;
		if (bus_sub_claim(r->st->sub))
			ls__handback(r);
	}
}

/* A reader that has sent nothing for LOGSTREAM_HEARTBEAT_MS gets a comment
 * line: proxies keep the connection, and a client that went away without
 * a word is found when the send fails.  The waker's cron, once a second. */
static void ls__heartbeats(struct waker *w)
{
	struct reader *idle[LOGSTREAM_HEARTBEATS_MAX];
	int n = 0;
	int64_t now = tn_mono_ms();
	pthread_mutex_lock(&w->lock);
	for (struct reader *r = w->susp; r && n < LOGSTREAM_HEARTBEATS_MAX; r = r->susp_next)
		if (!r->wake_queued && now - r->last_write >= LOGSTREAM_HEARTBEAT_MS)
			idle[n++] = r;
	pthread_mutex_unlock(&w->lock);
	/* Only this thread resumes them: they are still suspended. */
	for (int i = 0; i < n; i++)
		if (bus_sub_claim(idle[i]->st->sub)) {
			idle[i]->heartbeat = 1;
			ls__wake(idle[i]);
		}
}

/* A waker thread: makes a pass over its queued readers, then lets a window
 * pass so that the next batch gathers; after each pass, and at least once a
 * second, it looks for hang-ups; once a second it sends heartbeats, and the
 * first waker also expires streams.  The window grows with the readers a pass took: a pass of
 * n readers costs n sends (and n reads in the clients), so n *
 * LOGSTREAM_WAKE_PER_READER_US (times the wakers, which share that budget)
 * from the start of one pass to the next bounds what the passes cost (about
 * 40,000 sends a second in all), while a few readers still get their events
 * within a millisecond or two, and the window never passes
 * LOGSTREAM_WAKE_MAX_US.  The readers are dealt to as
 * many wakers as there are cores (at most LOGSTREAM_WAKERS_MAX): a pass of
 * a thousand sends is several milliseconds of one core's time. */
static void *ls__waker(void *arg)
{
	struct waker *w = arg;
	logstreams *ls = w->ls;
	int expires = w == &ls->wakers[0];
	pthread_setname_np(pthread_self(), "tn-logstream"); /* for top -H, perf, gdb */
	int64_t next_cron = tn_mono_ms() + 1000;
	pthread_mutex_lock(&w->lock);
	while (!w->stop) {
		if (tn_mono_ms() >= next_cron) {
			pthread_mutex_unlock(&w->lock);
			if (expires)
				ls__expire(ls);
			ls__heartbeats(w);
			next_cron = tn_mono_ms() + 1000;
			pthread_mutex_lock(&w->lock);
			continue;
		}
		if (!w->to_wake) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts); /* the cond's clock: immune to clock steps */
			ts.tv_sec += 1;
			pthread_cond_timedwait(&w->cond, &w->lock, &ts);
			pthread_mutex_unlock(&w->lock);
			ls__hangups(w);
			pthread_mutex_lock(&w->lock);
			continue;
		}
		int64_t start = ls__mono_us();
		int64_t window = (int64_t)ls__wake_all_locked(w) * ls->share * LOGSTREAM_WAKE_PER_READER_US;
		if (window > LOGSTREAM_WAKE_MAX_US)
			window = LOGSTREAM_WAKE_MAX_US;
		pthread_mutex_unlock(&w->lock);
		ls__hangups(w);
		window -= ls__mono_us() - start;
		usleep((useconds_t)(window < LOGSTREAM_WAKE_MIN_US ? LOGSTREAM_WAKE_MIN_US : window));
		pthread_mutex_lock(&w->lock);
	}
	ls__wake_all_locked(w);
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

/* Stops the wakers, each handing what it had queued back to MHD; later
 * wakes resume at once.  Wakes are queued until the thread is gone, so that
 * no other thread resumes a reader while it may be at work on it. */
static void ls__wakers_stop(logstreams *ls)
{
	for (int i = 0; i < ls->nwakers; i++) {
		struct waker *w = &ls->wakers[i];
		pthread_mutex_lock(&w->lock);
		int started = w->started;
		w->started = 0;
		w->stop = 1;
		pthread_cond_signal(&w->cond);
		pthread_mutex_unlock(&w->lock);
		if (started)
			pthread_join(w->thread, NULL);
		pthread_mutex_lock(&w->lock);
		w->running = 0;
		struct reader *list = w->to_wake;
		w->to_wake = NULL;
		for (struct reader *r = list; r; r = r->wake_next)
			r->wake_queued = 0;
		pthread_mutex_unlock(&w->lock);
		while (list) {
			struct reader *r = list;
			list = r->wake_next;
			ls__handback(r);
		}
	}
}

static void ls__wakers_free(logstreams *ls)
{
	ls__wakers_stop(ls);
	for (int i = 0; i < ls->nwakers; i++) {
		pthread_cond_destroy(&ls->wakers[i].cond);
		pthread_mutex_destroy(&ls->wakers[i].lock);
		if (ls->wakers[i].epfd >= 0)
			close(ls->wakers[i].epfd);
		free(ls->wakers[i].buf);
	}
	ls->nwakers = 0;
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
	ls->direct_ok = LOGSTREAM_DIRECT_BUILT && strcmp(MHD_get_version(), LOGSTREAM_DIRECT_MHD) == 0;
	if (!ls->direct_ok)
		log_info("log streams: libmicrohttpd %s (built with %x), not %s: it writes every stream itself",
			 MHD_get_version(), (unsigned)MHD_VERSION, LOGSTREAM_DIRECT_MHD);
	pthread_mutex_init(&ls->lock, NULL);
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	ls->share = cores < 1 ? 1 : cores > LOGSTREAM_WAKERS_MAX ? LOGSTREAM_WAKERS_MAX : (int)cores;
	for (int i = 0; i < ls->share; i++) {
		struct waker *w = &ls->wakers[i];
		w->ls = ls;
		w->epfd = -1;
		if (!(w->buf = malloc(LOGSTREAM_DIRECT_BUF)))
			goto fail;
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_mutex_init(&w->lock, NULL);
		pthread_cond_init(&w->cond, &ca);
		pthread_condattr_destroy(&ca);
		ls->nwakers++;
		if ((w->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
			goto fail;
		w->running = 1; /* before the thread: it reads it */
		if (pthread_create(&w->thread, NULL, ls__waker, w)) {
			w->running = 0;
			goto fail;
		}
		w->started = 1;
	}
	*out = ls;
	return 0;
fail:
	ls__wakers_free(ls);
	pthread_mutex_destroy(&ls->lock);
	free(ls);
	return TN_ENOMEM;
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

/* The reader cannot send what comes next (no memory to format it, the
 * store failed): rather than skip it, a silent gap, the stream ends here
 * with a last notice saying where to resume, made without allocating. */
static void ls__cut(struct reader *r, const char *why)
{
	int n;
	if (r->st->id[0])
		n = snprintf(r->last_word, sizeof r->last_word, "event: state_change\ndata: closed: %s; this stream "
			     "cannot resume: create a new one, and read what it missed with GET /v1/logs?after=%lld\n\n",
			     why, (long long)r->last_sent);
	else
		n = snprintf(r->last_word, sizeof r->last_word, "event: state_change\ndata: closed: %s; reconnect "
			     "with Last-Event-ID: %lld to resume\n\n", why, (long long)r->last_sent);
	ls__set_out(r, NULL, NULL, r->last_word, n > 0 ? (size_t)n : 0);
	r->ended = 1;
}

/* A history event (not shared: only this reader sends it). */
static void ls__format_event(struct reader *r, const tn_event *ev)
{
	char *text = ls__frame(ev, r->text);
	if (!text) {
		ls__cut(r, "out of memory");
		return;
	}
	r->last_sent = ev->id;
	ls__set_out(r, text, NULL, NULL, 0);
}

/* A live event: its shared frame; takes the reference e. */
static void ls__format_shared(struct reader *r, bus_event *e)
{
	size_t len = 0;
	const char *frame = bus_event_frame(e, r->text ? 1 : 0, ls__frame, &len);
	if (!frame) {
		bus_event_release(e);
		ls__cut(r, "out of memory");
		return;
	}
	r->last_sent = bus_event_get(e)->id;
	ls__set_out(r, NULL, e, frame, len);
}

static void ls__format_notice(struct reader *r, const char *notice)
{
	char *text = NULL;
	if (asprintf(&text, "event: state_change\ndata: %s\n\n", notice) < 0)
		ls__cut(r, "out of memory");
	else
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
			log_err("log stream: the history after %lld: %s", (long long)r->after, err.msg);
			r->after = -1;
			ls__cut(r, "the store could not read the history");
			return 1;
		}
	}
}

/* The reader has nothing to send and waits for the bus's wake (called under
 * its subscriber's lock).  MHD's reader suspends its connection, and a live
 * one on plain TCP that MHD has written to becomes the waker's to send to
 * (ls__direct; why this is sound: the file's header). */
static void ls__on_wait(void *arg)
{
	struct reader *r = arg;
	if (r->direct)
		return; /* the waker's: suspended already */
	ls__suspend(r);
	if (r->can_direct && r->pushed && r->after < 0)
		r->direct = 1;
}

/* The bus's wake (from the publishing thread), or a reader that defers
 * (its own MHD thread, suspended): queue it for the waker's next pass. */
static void ls__wake(void *arg)
{
	struct reader *r = arg;
	struct waker *w = r->w;
	pthread_mutex_lock(&w->lock);
	int now = !w->running;
	if (!now && !r->wake_queued) {
		r->wake_queued = 1;
		r->wake_next = w->to_wake;
		w->to_wake = r;
		if (!r->wake_next)
			pthread_cond_signal(&w->cond);
	}
	pthread_mutex_unlock(&w->lock);
	if (now)
		ls__handback(r);
}

/* Copies what is left of src[*off, len) into dst, at most room bytes;
 * moves *off past it and returns how much. */
static size_t ls__take(char *dst, size_t room, const char *src, size_t *off, size_t len)
{
	size_t n = len - *off;
	if (n > room)
		n = room;
	memcpy(dst, src + *off, n);
	*off += n;
	return n;
}

/* Copies into buf what the reader has to send, up to max bytes; returns
 * how much; 0: it waits for the bus (and may be the waker's already: the
 * caller must not touch r); -1: it has ended and sent everything. */
static ssize_t ls__fill(struct reader *r, char *buf, size_t max)
{
	size_t done = 0;

	if (r->heartbeat) {
		r->heartbeat = 0; /* a comment, unless something is on its way anyway */
		if (!r->unsent && !(r->out && r->out_off < r->out_len))
			ls__set_out(r, NULL, NULL, LOGSTREAM_COMMENT, sizeof LOGSTREAM_COMMENT - 1);
	}
	while (done < max) {
		if (r->unsent) {
			done += ls__take(buf + done, max - done, r->unsent, &r->unsent_off, r->unsent_len);
			if (r->unsent_off == r->unsent_len) {
				free(r->unsent);
				r->unsent = NULL;
			}
			continue;
		}
		if (r->out && r->out_off < r->out_len) {
			done += ls__take(buf + done, max - done, r->out, &r->out_off, r->out_len);
			continue;
		}
		if (r->ended)
			return done ? (ssize_t)done : -1;
		if (r->after >= 0 && ls__history(r))
			continue;
		if (r->batch_i < r->batch_n) {
			bus_item it = r->batch[r->batch_i++];
			if (it.ev && bus_event_get(it.ev)->id > r->last_sent) {
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
		if (!done && r->sent && !r->direct && bus_sub_pending(r->st->sub)) {
			/* Sent once in this pass: the rest goes in the next, by
			 * the waker itself if it may (else a reader handed back
			 * would stay MHD's for as long as events keep coming). */
			ls__suspend(r);
			if (r->can_direct && r->pushed && r->after < 0)
				r->direct = 1;
			ls__wake(r);
			return 0;
		}
		/* With something to hand over already, only look; else wait. */
		int n = bus_sub_take(r->st->sub, r->batch, LOGSTREAM_BATCH, done ? NULL : ls__on_wait, r);
		if (n > 0) {
			r->batch_i = 0;
			r->batch_n = n;
		} else if (n == 0) {
			return (ssize_t)done; /* 0: waiting, the bus wakes it */
		} else {
			r->ended = 1;
		}
	}
	return (ssize_t)done;
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
	if (r->broken)
		return MHD_CONTENT_READER_END_WITH_ERROR;
	/* Called again after it returned data: that is all on the socket, and
	 * MHD pushed it (its record of TCP_NODELAY is now true). */
	if (r->returned)
		r->pushed = 1;
	ssize_t done = ls__fill(r, buf, max);
	if (done > 0) { /* (with 0 it is suspended: r may be the waker's now) */
		r->returned = 1;
		r->last_write = tn_mono_ms();
		metrics_inc(M_STREAM_MHD_WRITES);
	}
	if (done < 0)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (done > 0 && (size_t)done < max && r->after < 0)
		r->sent = 1;
	return done; /* 0: suspended (r may be the waker's now) */
}

/* Hands a suspended reader (back) to MHD: it resumes the connection and
 * calls ls__read, which sends what is left, ends the response or, after a
 * failed send or a hang-up, closes it.  The reader must not be waiting for
 * the bus (nor claimable by a wake).  The caller must not touch r after
 * this. */
static void ls__handback(struct reader *r)
{
	struct waker *w = r->w;
	if (r->fd >= 0) /* before MHD may close the socket */
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, r->fd, NULL);
	pthread_mutex_lock(&w->lock);
	if (r->susp_prev)
		r->susp_prev->susp_next = r->susp_next;
	else
		w->susp = r->susp_next;
	if (r->susp_next)
		r->susp_next->susp_prev = r->susp_prev;
	r->suspended = 0;
	pthread_mutex_unlock(&w->lock);
	r->direct = 0;
	r->sent = 0;
	ls__resume(r);
}

/* Queues a direct reader for the waker's next pass (the waker's thread). */
static void ls__requeue(struct reader *r)
{
	ls__wake(r);
}

/* One pass for a direct reader, in the waker's thread: what it has goes to
 * its socket, with no resume, no MHD thread and no copy into MHD's buffer,
 * in one send() if it has caught up; one that is behind goes on while its
 * socket takes every byte, up to LOGSTREAM_DIRECT_BUDGET a pass (else it
 * would get LOGSTREAM_DIRECT_BUF a window: 2.6 MB/s with the windows of a
 * thousand readers); then it waits for the bus again.  It goes back to MHD
 * when it cannot go on alone: its socket took only part (the rest waits in
 * r->unsent, and MHD writes it once the socket drains, with its timeout),
 * the send failed (MHD closes it), the stream ended (MHD ends the
 * response), or the server is stopping. */
static void ls__direct(struct waker *w, struct reader *r)
{
	for (size_t budget = LOGSTREAM_DIRECT_BUDGET;; budget -= LOGSTREAM_DIRECT_BUF) {
		ssize_t n = ls__fill(r, w->buf, LOGSTREAM_DIRECT_BUF);
		if (n == 0)
			return; /* waiting: left to the bus's wake */
		if (n > 0) {
			ssize_t k;
			do
				k = send(r->fd, w->buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
			while (k < 0 && errno == EINTR);
			if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
				r->broken = 1;
				ls__handback(r);
				return;
			}
			if (k < 0) {
				k = 0;
			} else {
				r->last_write = tn_mono_ms();
				metrics_inc(M_STREAM_DIRECT_WRITES);
			}
			if (k < n) {
				r->unsent_len = (size_t)(n - k);
				r->unsent_off = 0;
				r->unsent = malloc(r->unsent_len);
				if (r->unsent)
					memcpy(r->unsent, w->buf + k, r->unsent_len);
				else
					r->broken = 1; /* never a silent gap */
				ls__handback(r);
				return;
			}
		}
		if (n < 0 || r->ended) {
			ls__handback(r); /* MHD ends the response */
			return;
		}
		if (n < LOGSTREAM_DIRECT_BUF)
			break; /* caught up */
		if (budget <= LOGSTREAM_DIRECT_BUF) {
			ls__requeue(r); /* more to send: the next pass */
			return;
		}
	}
	/* It sent all it had: wait, or go on in the next pass with what came
	 * meanwhile.  (Once it waits the bus may wake it at once: r is not
	 * touched after this.) */
	int m = bus_sub_take(r->st->sub, r->batch, LOGSTREAM_BATCH, ls__on_wait, r);
	if (m > 0) {
		r->batch_i = 0;
		r->batch_n = m;
		ls__requeue(r);
	} else if (m < 0) {
		r->ended = 1;
		ls__handback(r);
	}
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
	pthread_mutex_lock(&r->w->lock);
	if (r->wake_queued)
		for (struct reader **pp = &r->w->to_wake; *pp; pp = &(*pp)->wake_next)
			if (*pp == r) {
				*pp = r->wake_next;
				break;
			}
	pthread_mutex_unlock(&r->w->lock);
	for (; r->batch_i < r->batch_n; r->batch_i++) {
		bus_event_release(r->batch[r->batch_i].ev);
		free(r->batch[r->batch_i].notice);
	}
	json_decref(r->page);
	ls__set_out(r, NULL, NULL, NULL, 0);
	free(r->unsent);
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
	r->w = &ls->wakers[atomic_fetch_add(&ls->next_waker, 1) % (unsigned)ls->nwakers];
	r->st = st;
	r->conn = conn;
	r->text = text;
	r->device = device;
	r->after = after;
	r->last_sent = after > 0 ? after : 0;
	r->last_write = tn_mono_ms();
	/* The waker may write to a plain TCP socket itself (ls__direct); not
	 * to a TLS one, whose records only MHD can make. */
	/* (Each answer may be overwritten by the next call: read it first.) */
	const union MHD_ConnectionInfo *info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	r->fd = info ? info->connect_fd : -1;
	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	int tls = info && info->tls_session;
	r->can_direct = ls->direct_ok && r->fd >= 0 && !tls;
	ls__set_out(r, NULL, NULL, LOGSTREAM_COMMENT, sizeof LOGSTREAM_COMMENT - 1);
	struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 65536, ls__read, r,
								      ls__reader_done);
	if (!resp) {
		free(r);
		return NULL;
	}
	/* An HTTP/1.0 response: its body is the bytes as sent, with no chunk
	 * framing for direct sends to keep in step with MHD's (the stream ends
	 * when the connection closes, as an endless stream would anyway). */
	if (MHD_set_response_options(resp, MHD_RF_HTTP_VERSION_1_0_RESPONSE, MHD_RO_END) != MHD_YES)
		r->can_direct = 0;
	atomic_fetch_add(&ls->readers, 1);
	bus_sub_set_wake(st->sub, ls__wake, r);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
	return resp;
}

/* New readers are refused once the server is stopping (one that got past
 * this check meanwhile subscribes to a closed bus: it ends at once). */
static int ls__refuse_closing(logstreams *ls, tn_error *err)
{
	if (!atomic_load(&ls->closing))
		return 0;
	return tn_err(err, TN_ESTATE, "the server is shutting down: reconnect in a moment");
}

struct MHD_Response *logstream_device_response(logstreams *ls, struct MHD_Connection *conn,
					       uint64_t device, int64_t after_id, int text, tn_error *err)
{
	if (ls__refuse_closing(ls, err))
		return NULL;
	struct stream *st = calloc(1, sizeof *st);
	if (!st) {
		tn_err(err, TN_ENOMEM, "out of memory");
		return NULL;
	}
	st->sub = bus_subscribe(ls->b, 0, 0, 1);
	if (!st->sub || bus_sub_add_device(st->sub, device)) {
		ls__stream_free(ls, st);
		tn_err(err, TN_ENOMEM, "out of memory");
		return NULL;
	}
	struct MHD_Response *resp = ls__response(ls, conn, st, device, after_id >= 0 ? after_id : -1, text);
	if (!resp) {
		ls__stream_free(ls, st);
		tn_err(err, TN_ENOMEM, "out of memory");
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
	st->owner = owner;
	st->open_by = tn_mono_ms() + ls->opt.open_timeout_ms;
	st->sub = bus_subscribe(ls->b, json_is_true(all), types, 0);
	if (!st->sub) {
		free(st);
		json_decref(list);
		return tn_err(err, TN_ENOMEM, "out of memory");
	}
	/* Subscribed at creation: events from now on wait for the reader.  One
	 * notice for all the devices: a stream of a 100,000 devices must not
	 * start with its queue full of them (the answer lists them). */
	bus_sub_notice(st->sub, "opened");
	json_array_foreach(list, i, v) {
		uint64_t id;
		tn_device_id_parse(json_string_value(v), &id);
		if (bus_sub_add_device(st->sub, id)) {
			ls__stream_free(ls, st);
			json_decref(list);
			return tn_err(err, TN_ENOMEM, "out of memory");
		}
	}
	if (json_array_size(list)) {
		char line[64];
		snprintf(line, sizeof line, "%zu device%s subscribed", json_array_size(list),
			 json_array_size(list) == 1 ? "" : "s");
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
	if (ls__refuse_closing(ls, err))
		return NULL;
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
		pthread_mutex_lock(&ls->lock);
		st->has_reader = 0;
		pthread_mutex_unlock(&ls->lock);
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
	/* Refuse new readers first; then every reader is handed back to MHD:
	 * the wakers hand back what they hold as they stop (and resume at once
	 * whatever is woken later), and the closed bus ends every subscriber,
	 * waking those that wait, and ends new ones at birth, so that none
	 * suspends again. */
	atomic_store(&ls->closing, 1);
	ls__wakers_stop(ls);
	bus_close(ls->b);
	for (int i = 0; i < 500 && atomic_load(&ls->readers) > 0; i++)
		usleep(10 * 1000);
	/* None is left suspended (MHD_stop_daemon aborts on one): a reader
	 * suspends only while its subscriber is live, and none is now. */
	for (int ms = 0; atomic_load(&ls->suspended) > 0; ms++) {
		if (ms == 5000)
			log_err("log streams: %d readers still suspended 5 s after the bus closed; waiting",
				atomic_load(&ls->suspended));
		usleep(1000);
	}
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
	ls__wakers_free(ls);
	pthread_mutex_destroy(&ls->lock);
	free(ls);
}

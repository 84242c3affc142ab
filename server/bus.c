/* server/bus.c -- the event bus (see bus.h, docs/logs.md). */
#define _GNU_SOURCE
#include "bus.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idmap.h"
#include "log.h"
#include "metrics.h"

/* An event's wire form, made once (bus_event_frame). */
struct bus_frame {
	size_t len;
	char text[];
};

struct bus_event {
	atomic_int refs;      /* one per queue slot holding it, one per reader */
	tn_event ev;          /* ev.msg points into msg[] */
	_Atomic(struct bus_frame *) frame[BUS_FORMS];
	char msg[];
};

#define BUS_SHUTDOWN_NOTICE "closed: the server is shutting down"

/* Rings above this many slots are freed when they drain, so that one burst
 * does not pin a subscriber's memory. */
#define BUS_RING_KEEP 256

struct bus_sub {
	bus_sub *prev, *next;
	pthread_mutex_t lock;
	int all;
	idmap devices;        /* device -> (void *)1 */
	bus_item *q;          /* ring of cap slots (0 or a power of two) */
	size_t cap, head, len;
	int waiting;          /* the reader found nothing and waits for `wake` */
	int ended;            /* cut off or closed: no more events */
	int resumable;        /* its reader can resume with Last-Event-ID */
	unsigned types;       /* 1 << event_type of each type it takes; 0: all */
	size_t max_queue;
	int64_t last_id;      /* the last event queued for it (or published before it subscribed) */
	bus_wake_fn wake;
	void *wake_arg;
};

struct bus {
	bus_options opt;
	pthread_mutex_t lock;
	bus_sub *subs;
	int64_t last_id;      /* the last event published */
	int closed;           /* bus_close was called: new subscribers start ended */
};

int bus_new(bus **out, const bus_options *opt)
{
	bus *b = calloc(1, sizeof *b);
	if (!b)
		return TN_ENOMEM;
	b->opt = *opt;
	if (!b->opt.max_queue)
		b->opt.max_queue = 10000;
	pthread_mutex_init(&b->lock, NULL);
	*out = b;
	return 0;
}

/* --- shared events ---------------------------------------------------------------- */

static bus_event *bus__event_new(const tn_event *ev)
{
	size_t n = strlen(ev->msg);
	bus_event *e = malloc(sizeof *e + n + 1);
	if (!e)
		return NULL;
	atomic_init(&e->refs, 1);
	e->ev = *ev;
	memcpy(e->msg, ev->msg, n + 1);
	e->ev.msg = e->msg;
	for (int i = 0; i < BUS_FORMS; i++)
		atomic_init(&e->frame[i], NULL);
	return e;
}

const tn_event *bus_event_get(const bus_event *e)
{
	return &e->ev;
}

const char *bus_event_frame(bus_event *e, int form, bus_format_fn format, size_t *len)
{
	assert(form >= 0 && form < BUS_FORMS);
	struct bus_frame *f = atomic_load_explicit(&e->frame[form], memory_order_acquire);
	if (!f) {
		/* Readers on other threads may format it at the same moment: the
		 * first to store its frame wins, the others free theirs. */
		char *text = format(&e->ev, form);
		size_t n = text ? strlen(text) : 0;
		struct bus_frame *mine = text ? malloc(sizeof *mine + n + 1) : NULL;
		if (!mine) {
			free(text);
			return NULL;
		}
		mine->len = n;
		memcpy(mine->text, text, n + 1);
		free(text);
		if (atomic_compare_exchange_strong_explicit(&e->frame[form], &f, mine, memory_order_acq_rel,
							    memory_order_acquire))
			f = mine;
		else
			free(mine);
	}
	*len = f->len;
	return f->text;
}

void bus_event_release(bus_event *e)
{
	if (!e || atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (int i = 0; i < BUS_FORMS; i++)
		free(atomic_load_explicit(&e->frame[i], memory_order_relaxed));
	free(e);
}

/* --- a subscriber's queue ----------------------------------------------------------- */

static void bus__wake_locked(bus_sub *s)
{
	if (s->waiting) {
		s->waiting = 0;
		if (s->wake)
			s->wake(s->wake_arg);
	}
}

/* Appends a slot (the caller's reference or notice passes to the queue). */
static int bus__append_locked(bus_sub *s, bus_item sl)
{
	if (s->len == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		bus_item *q = malloc(cap * sizeof *q);
		if (!q)
			return TN_ENOMEM;
		for (size_t i = 0; i < s->len; i++)
			q[i] = s->q[(s->head + i) & (s->cap - 1)];
		free(s->q);
		s->q = q;
		s->cap = cap;
		s->head = 0;
	}
	s->q[(s->head + s->len) & (s->cap - 1)] = sl;
	s->len++;
	bus__wake_locked(s);
	return 0;
}

static void bus__free_items(bus_sub *s)
{
	for (size_t i = 0; i < s->len; i++) {
		bus_item *sl = &s->q[(s->head + i) & (s->cap - 1)];
		bus_event_release(sl->ev);
		free(sl->notice);
	}
	s->head = s->len = 0;
}

/* Appends a notice; a copy of text is owned by the queue. */
static void bus__notice_locked(bus_sub *s, const char *text)
{
	bus_item sl = { .notice = strdup(text) };
	if (sl.notice && bus__append_locked(s, sl))
		free(sl.notice);
}

/* The id before the oldest event it has waiting (or the last one it was
 * given, if none waits): it has seen everything up to there. */
static int64_t bus__seen_locked(bus_sub *s)
{
	for (size_t i = 0; i < s->len; i++) {
		bus_item *sl = &s->q[(s->head + i) & (s->cap - 1)];
		if (sl->ev)
			return sl->ev->ev.id - 1;
	}
	return s->last_id;
}

/* Ends the subscriber with a last notice (its queue is dropped: the notice
 * says where to resume from, or, for a reader that cannot resume, where
 * what it missed is). */
static void bus__cut_locked(bus_sub *s, const char *why)
{
	char text[400];
	long long seen = (long long)bus__seen_locked(s);
	bus__free_items(s);
	if (s->resumable)
		snprintf(text, sizeof text, "closed: %s; reconnect with Last-Event-ID: %lld to resume", why, seen);
	else
		snprintf(text, sizeof text, "closed: %s; this stream cannot resume: create a new one, and read "
			 "what it missed with GET /v1/logs?after=%lld", why, seen);
	bus__notice_locked(s, text);
	s->ended = 1;
	bus__wake_locked(s);
}

/* Its queue is full: cut it off, so that it neither holds the others back
 * nor grows. */
static void bus__too_slow_locked(bus_sub *s)
{
	char why[120];
	metrics_inc(M_STREAM_CUTOFFS);
	snprintf(why, sizeof why, "too slow: %zu events were waiting", s->len);
	bus__cut_locked(s, why);
}

void bus_publish(bus *b, const tn_event *ev)
{
	bus_event *e = NULL; /* made when the first subscriber takes it */
	pthread_mutex_lock(&b->lock);
	b->last_id = ev->id;
	for (bus_sub *s = b->subs; s; s = s->next) {
		pthread_mutex_lock(&s->lock);
		if (!s->ended && (!s->types || s->types & 1u << ev->type) &&
		    (s->all || idmap_get(&s->devices, ev->device))) {
			if (s->len >= s->max_queue) {
				bus__too_slow_locked(s);
			} else {
				if (!e)
					e = bus__event_new(ev);
				if (e)
					atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
				if (!e || bus__append_locked(s, (bus_item){ .ev = e })) {
					/* Never a silent gap: end it, saying where to resume. */
					bus_event_release(e);
					bus__cut_locked(s, "out of memory");
				} else {
					s->last_id = ev->id;
				}
			}
		}
		pthread_mutex_unlock(&s->lock);
	}
	pthread_mutex_unlock(&b->lock);
	bus_event_release(e); /* the publisher's own reference */
}

bus_sub *bus_subscribe(bus *b, int all, unsigned types, int resumable)
{
	bus_sub *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	pthread_mutex_init(&s->lock, NULL);
	s->all = all;
	s->types = types;
	s->resumable = resumable;
	s->max_queue = b->opt.max_queue;
	metrics_add(M_STREAM_SUBSCRIBERS, 1);
	pthread_mutex_lock(&b->lock);
	s->last_id = b->last_id;
	if (b->closed) {
		/* Subscribed during the shutdown: its reader gets the last word at
		 * once and never waits for an event (nothing would wake it). */
		bus__notice_locked(s, BUS_SHUTDOWN_NOTICE);
		s->ended = 1;
	}
	s->next = b->subs;
	if (b->subs)
		b->subs->prev = s;
	b->subs = s;
	pthread_mutex_unlock(&b->lock);
	return s;
}

void bus_sub_set_wake(bus_sub *s, bus_wake_fn wake, void *arg)
{
	pthread_mutex_lock(&s->lock);
	s->wake = wake;
	s->wake_arg = arg;
	pthread_mutex_unlock(&s->lock);
}

int bus_sub_add_device(bus_sub *s, uint64_t device)
{
	int oom = 0;
	pthread_mutex_lock(&s->lock);
	idmap_put(&s->devices, device, (void *)1, &oom);
	pthread_mutex_unlock(&s->lock);
	return oom ? TN_ENOMEM : 0;
}

void bus_sub_remove_device(bus_sub *s, uint64_t device)
{
	pthread_mutex_lock(&s->lock);
	idmap_del(&s->devices, device);
	pthread_mutex_unlock(&s->lock);
}

void bus_sub_notice(bus_sub *s, const char *text)
{
	pthread_mutex_lock(&s->lock);
	if (s->ended)
		;
	else if (s->len >= s->max_queue)
		bus__too_slow_locked(s); /* notices count as events do */
	else
		bus__notice_locked(s, text);
	pthread_mutex_unlock(&s->lock);
}

int bus_sub_take(bus_sub *s, bus_item *items, int max, void (*on_wait)(void *), void *arg)
{
	int n = 0;
	pthread_mutex_lock(&s->lock);
	if (s->len) {
		while (n < max && s->len) {
			items[n++] = s->q[s->head];
			s->head = (s->head + 1) & (s->cap - 1);
			s->len--;
		}
		if (!s->len && s->cap > BUS_RING_KEEP) {
			free(s->q);
			s->q = NULL;
			s->cap = s->head = 0;
		}
	} else if (s->ended) {
		n = -1;
	} else if (on_wait) {
		/* Only a reader that will be woken waits: one that merely looked
		 * (on_wait NULL) is not resumed for nothing. */
		s->waiting = 1;
		on_wait(arg);
	}
	pthread_mutex_unlock(&s->lock);
	return n;
}

int bus_sub_claim(bus_sub *s)
{
	pthread_mutex_lock(&s->lock);
	int was = s->waiting;
	s->waiting = 0;
	pthread_mutex_unlock(&s->lock);
	return was;
}

size_t bus_sub_pending(bus_sub *s)
{
	pthread_mutex_lock(&s->lock);
	size_t n = s->len;
	pthread_mutex_unlock(&s->lock);
	return n;
}

void bus_unsubscribe(bus *b, bus_sub *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&b->lock);
	if (s->prev)
		s->prev->next = s->next;
	else
		b->subs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	pthread_mutex_unlock(&b->lock);
	bus__free_items(s);
	free(s->q);
	idmap_free(&s->devices);
	pthread_mutex_destroy(&s->lock);
	free(s);
	metrics_add(M_STREAM_SUBSCRIBERS, -1);
}

void bus_close(bus *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&b->lock);
	b->closed = 1;
	for (bus_sub *s = b->subs; s; s = s->next) {
		pthread_mutex_lock(&s->lock);
		if (!s->ended) {
			bus__notice_locked(s, BUS_SHUTDOWN_NOTICE);
			s->ended = 1;
		}
		bus__wake_locked(s);
		pthread_mutex_unlock(&s->lock);
	}
	pthread_mutex_unlock(&b->lock);
}

void bus_free(bus *b)
{
	if (!b)
		return;
	pthread_mutex_destroy(&b->lock);
	free(b);
}

/* server/bus.c -- the event bus (see bus.h, docs/logs.md). */
#define _GNU_SOURCE
#include "bus.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idmap.h"
#include "log.h"
#include "metrics.h"

struct item {
	struct item *next;
	int is_notice;
	tn_event ev;          /* ev.msg owned */
	char *notice;         /* owned */
};

struct bus_sub {
	bus_sub *prev, *next;
	pthread_mutex_t lock;
	int all;
	idmap devices;        /* device -> (void *)1 */
	struct item *head, *tail;
	size_t len;
	int waiting;          /* the reader found nothing and waits for `wake` */
	int ended;            /* cut off or closed: no more events */
	char cut[160];
	bus_wake_fn wake;
	void *wake_arg;
};

struct bus {
	bus_options opt;
	pthread_mutex_t lock;
	bus_sub *subs;
	uint64_t cutoffs;
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

static void bus__wake_locked(bus_sub *s)
{
	if (s->waiting) {
		s->waiting = 0;
		if (s->wake)
			s->wake(s->wake_arg);
	}
}

static void bus__append_locked(bus_sub *s, struct item *it)
{
	it->next = NULL;
	if (s->tail)
		s->tail->next = it;
	else
		s->head = it;
	s->tail = it;
	s->len++;
	bus__wake_locked(s);
}

static void bus__free_items(bus_sub *s)
{
	while (s->head) {
		struct item *it = s->head;
		s->head = it->next;
		free((char *)it->ev.msg);
		free(it->notice);
		free(it);
	}
	s->tail = NULL;
	s->len = 0;
}

/* Ends the subscriber with a last notice (its queue is dropped: the notice
 * says where to resume from). */
static void bus__cut_locked(bus_sub *s, const char *why, int64_t last_id)
{
	char text[300];
	bus__free_items(s);
	snprintf(s->cut, sizeof s->cut, "%s", why);
	snprintf(text, sizeof text, "closed: %s; reconnect with Last-Event-ID: %lld to resume", why,
		 (long long)last_id);
	struct item *it = calloc(1, sizeof *it);
	if (it) {
		it->is_notice = 1;
		it->notice = strdup(text);
		bus__append_locked(s, it);
	}
	s->ended = 1;
	bus__wake_locked(s);
}

void bus_publish(bus *b, const tn_event *ev)
{
	pthread_mutex_lock(&b->lock);
	for (bus_sub *s = b->subs; s; s = s->next) {
		pthread_mutex_lock(&s->lock);
		if (!s->ended && (s->all || idmap_get(&s->devices, ev->device))) {
			if (s->len >= b->opt.max_queue) {
				/* Too slow: never let it hold the others back, nor grow. */
				b->cutoffs++;
				metrics_inc(M_STREAM_CUTOFFS);
				char why[120];
				snprintf(why, sizeof why, "too slow: %zu events were waiting", s->len);
				/* It has seen everything before its oldest waiting event. */
				bus__cut_locked(s, why, s->head && !s->head->is_notice ? s->head->ev.id - 1
										 : ev->id - 1);
			} else {
				struct item *it = calloc(1, sizeof *it);
				char *msg = it ? strdup(ev->msg) : NULL;
				if (it && msg) {
					it->ev = *ev;
					it->ev.msg = msg;
					bus__append_locked(s, it);
				} else {
					free(it);
				}
			}
		}
		pthread_mutex_unlock(&s->lock);
	}
	pthread_mutex_unlock(&b->lock);
}

bus_sub *bus_subscribe(bus *b, int all, bus_wake_fn wake, void *wake_arg)
{
	bus_sub *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	pthread_mutex_init(&s->lock, NULL);
	s->all = all;
	s->wake = wake;
	s->wake_arg = wake_arg;
	metrics_add(M_STREAM_SUBSCRIBERS, 1);
	pthread_mutex_lock(&b->lock);
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

int bus_sub_has_device(bus_sub *s, uint64_t device)
{
	pthread_mutex_lock(&s->lock);
	int has = s->all || idmap_get(&s->devices, device) != NULL;
	pthread_mutex_unlock(&s->lock);
	return has;
}

void bus_sub_notice(bus_sub *s, const char *text)
{
	struct item *it = calloc(1, sizeof *it);
	if (!it || !(it->notice = strdup(text))) {
		free(it);
		return;
	}
	it->is_notice = 1;
	pthread_mutex_lock(&s->lock);
	if (!s->ended)
		bus__append_locked(s, it);
	else {
		free(it->notice);
		free(it);
	}
	pthread_mutex_unlock(&s->lock);
}

int bus_sub_next(bus_sub *s, tn_event *ev, char **notice, void (*on_wait)(void *), void *arg)
{
	int rc;
	pthread_mutex_lock(&s->lock);
	struct item *it = s->head;
	if (it) {
		s->head = it->next;
		if (!s->head)
			s->tail = NULL;
		s->len--;
		if (it->is_notice) {
			*notice = it->notice;
			rc = 2;
		} else {
			*ev = it->ev;
			rc = 1;
		}
		free(it);
	} else if (s->ended) {
		rc = -1;
	} else {
		/* Only a reader that will be woken waits: one that merely looked
		 * (on_wait NULL) is not resumed for nothing. */
		if (on_wait) {
			s->waiting = 1;
			on_wait(arg);
		}
		rc = 0;
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

const char *bus_sub_cut_reason(bus_sub *s)
{
	return s->cut;
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
	idmap_free(&s->devices);
	pthread_mutex_destroy(&s->lock);
	free(s);
	metrics_add(M_STREAM_SUBSCRIBERS, -1);
}

uint64_t bus_cutoffs(bus *b)
{
	pthread_mutex_lock(&b->lock);
	uint64_t n = b->cutoffs;
	pthread_mutex_unlock(&b->lock);
	return n;
}

void bus_close(bus *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&b->lock);
	for (bus_sub *s = b->subs; s; s = s->next) {
		pthread_mutex_lock(&s->lock);
		if (!s->ended) {
			struct item *it = calloc(1, sizeof *it);
			if (it && (it->notice = strdup("closed: the server is shutting down"))) {
				it->is_notice = 1;
				bus__append_locked(s, it);
			} else {
				free(it);
			}
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

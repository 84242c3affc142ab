/* server/bus.h -- the event bus: every event, once committed by the store,
 * goes to the live subscribers whose filter takes it (log streams over SSE).
 * A subscriber that cannot keep up is cut off with a final notice saying how
 * to resume; it can never block the store, the devices or other subscribers,
 * and its memory is bounded.
 * An event is copied once, into a reference-counted bus_event that every
 * subscriber's queue points to; its wire forms (the SSE frames) are made once,
 * on first use, and shared too: the cost per delivery is a pointer, not a copy.
 * Owns: the subscriber list, each subscriber's queue, the published events.
 * Threads: bus_publish from the store writer; the rest from any thread (one
 * mutex for the list, one per subscriber). */
#ifndef TN_BUS_H
#define TN_BUS_H

#include <stddef.h>
#include <stdint.h>

#include "events.h"
#include "tn.h"

typedef struct bus bus;
typedef struct bus_sub bus_sub;
typedef struct bus_event bus_event;

/* The forms an event can be rendered in (logstream's JSON and text frames). */
#define BUS_FORMS 2

typedef struct bus_options {
	size_t max_queue;     /* events and notices a subscriber may have waiting (default 10000) */
} bus_options;

int bus_new(bus **out, const bus_options *opt);
/* Ends every subscriber (each gets a last notice and wakes); one that
 * subscribes later starts ended, with that notice. */
void bus_close(bus *b);
/* Frees the bus once every subscriber has unsubscribed. */
void bus_free(bus *b);

/* Called by the store writer for every committed event, in id order. */
void bus_publish(bus *b, const tn_event *ev);

/* A subscriber.  `wake` is called (under the subscriber's lock, from the
 * publishing thread) when something arrives while it waits; keep it short. */
typedef void (*bus_wake_fn)(void *arg);

/* Filter: every device (all = 1), or the devices in its set; events of the
 * types in `types` (1 << event_type each; 0: all), so that the others
 * neither wake its reader nor fill its queue.  resumable:
 * its reader can resume with Last-Event-ID (a device's stream), which is
 * what a cut-off notice tells it to do; else the notice says to create a
 * new stream and where the history of what it missed is. */
bus_sub *bus_subscribe(bus *b, int all, unsigned types, int resumable);
/* Sets who is woken (a reader attached after the subscription was made). */
void bus_sub_set_wake(bus_sub *s, bus_wake_fn wake, void *arg);
int bus_sub_add_device(bus_sub *s, uint64_t device);
void bus_sub_remove_device(bus_sub *s, uint64_t device);

/* Queues a control notice (an SSE `state_change`) for this subscriber;
 * like an event, one that finds the queue full cuts the subscriber off. */
void bus_sub_notice(bus_sub *s, const char *text);

/* A published event, shared by every queue it is in.  bus_event_get: the
 * event (borrowed, as long as the reference is held). */
const tn_event *bus_event_get(const bus_event *e);
/* Its form `form` (0 .. BUS_FORMS - 1): made by `format` (returns a malloc'd
 * string, NULL on ENOMEM) by the first caller and kept for all the others;
 * borrowed, valid while the reference is held; *len its length.  NULL on
 * ENOMEM.  Any thread. */
typedef char *(*bus_format_fn)(const tn_event *ev, int form);
const char *bus_event_frame(bus_event *e, int form, bus_format_fn format, size_t *len);
/* Drops a reference bus_sub_take handed over (NULL is fine). */
void bus_event_release(bus_event *e);

/* A queued item: an event (a reference) or a notice, the other NULL. */
typedef struct bus_item {
	bus_event *ev;
	char *notice;
} bus_item;

/* Takes up to `max` items, oldest first, under one lock: returns how many
 * (each owned by the caller: bus_event_release() the event, free() the
 * notice); 0 nothing now: the subscriber is marked waiting and
 * `on_wait(arg)` is called under its lock (so that suspending the reader
 * cannot race the `wake` that resumes it); with on_wait NULL nothing is
 * marked; -1 the subscriber has ended (its final notice was taken already). */
int bus_sub_take(bus_sub *s, bus_item *items, int max, void (*on_wait)(void *), void *arg);

/* Takes a waiting subscriber out of waiting, so that its `wake` is not
 * called (its reader is to be handed on by whoever claimed it): 1 if it was
 * waiting, 0 if it was not (woken already, or not waiting at all). */
int bus_sub_claim(bus_sub *s);

/* How many items wait in its queue now (a look: it may change at once). */
size_t bus_sub_pending(bus_sub *s);

/* Removes and frees the subscriber (after its connection ended). */
void bus_unsubscribe(bus *b, bus_sub *s);

#endif

/* server/bus.h -- the event bus: every event, once committed by the store,
 * goes to the live subscribers whose filter takes it (log streams over SSE).
 * A subscriber that cannot keep up is cut off with a final notice saying how
 * to resume; it can never block the store, the devices or other subscribers,
 * and its memory is bounded.
 * Owns: the subscriber list and each subscriber's queue.
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

typedef struct bus_options {
	size_t max_queue;     /* events a subscriber may have waiting (default 10000) */
} bus_options;

int bus_new(bus **out, const bus_options *opt);
/* Ends every subscriber (each gets a last notice and wakes). */
void bus_close(bus *b);
/* Frees the bus once every subscriber has unsubscribed. */
void bus_free(bus *b);

/* Called by the store writer for every committed event, in id order. */
void bus_publish(bus *b, const tn_event *ev);

/* A subscriber.  `wake` is called (under the subscriber's lock, from the
 * publishing thread) when something arrives while it waits; keep it short. */
typedef void (*bus_wake_fn)(void *arg);

/* Filter: every device (all = 1), or the devices in its set. */
bus_sub *bus_subscribe(bus *b, int all, bus_wake_fn wake, void *wake_arg);
/* Sets who is woken (a reader attached after the subscription was made). */
void bus_sub_set_wake(bus_sub *s, bus_wake_fn wake, void *arg);
int bus_sub_add_device(bus_sub *s, uint64_t device);
void bus_sub_remove_device(bus_sub *s, uint64_t device);
int bus_sub_has_device(bus_sub *s, uint64_t device);

/* Queues a control notice (an SSE `state_change`) for this subscriber. */
void bus_sub_notice(bus_sub *s, const char *text);

/* Takes the next item: 1 an event (*ev filled; ev->msg is owned by the
 * caller: free() it), 2 a notice (*notice owned: free()), 0 nothing now: the
 * subscriber is marked waiting and `on_wait(arg)` is called under its lock
 * (so that suspending the reader cannot race the `wake` that resumes it);
 * with on_wait NULL nothing is marked, -1 the subscriber has ended (its
 * final notice was taken already). */
int bus_sub_next(bus_sub *s, tn_event *ev, char **notice, void (*on_wait)(void *), void *arg);

/* Why it was cut off ("" if it was not). */
const char *bus_sub_cut_reason(bus_sub *s);

/* Removes and frees the subscriber (after its connection ended). */
void bus_unsubscribe(bus *b, bus_sub *s);

/* Subscribers cut off for being too slow, so far. */
uint64_t bus_cutoffs(bus *b);

#endif

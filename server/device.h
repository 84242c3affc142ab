/* server/device.h -- the device endpoint: a libwebsockets server on its own
 * service thread holding every device's WebSocket (docs/protocol.md).
 * Owns: the lws context, every connection, the map of online devices.
 * Threads: device_loop_start/stop from the main thread; device_loop_kick and
 * device_loop_port from any thread (they queue to the loop and wake it with
 * lws_cancel_service); everything else runs on the service thread only. */
#ifndef TN_DEVICE_H
#define TN_DEVICE_H

#include <stdint.h>

#include "registry.h"
#include "store.h"
#include "tn.h"

typedef struct device_loop device_loop;

typedef struct device_loop_options {
	const char *bind;
	int port;           /* 0: pick a free one */
	int ping_interval;  /* seconds */
	int idle_timeout;   /* seconds */
	int hello_timeout;  /* seconds */
	int max_frame;      /* bytes */
} device_loop_options;

/* Listens and starts the service thread.  Borrows st and reg until stopped. */
int device_loop_start(device_loop **out, const device_loop_options *opt, store *st,
		      registry *reg, tn_error *err);

/* The port it listens on. */
int device_loop_port(const device_loop *d);

/* Closes the device's connection, if any, with a close code and reason; when
 * `forget` is set the device no longer exists and nothing is logged for it. */
int device_loop_kick(device_loop *d, uint64_t id, int code, const char *reason, int forget);

/* Closes every connection (1001, "server shutting down"), waits up to 2 s for
 * them to go, stops the thread and frees everything.  Accepts NULL. */
void device_loop_stop(device_loop *d);

#endif

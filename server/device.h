/* server/device.h -- the device endpoint: a libwebsockets server on its own
 * service thread holding every device's WebSocket (docs/protocol.md).
 * Owns: the lws context, every connection, the map of online devices.
 * Threads: device_loop_start/stop from the main thread; device_loop_kick and
 * device_loop_port from any thread (they queue to the loop and wake it with
 * lws_cancel_service); everything else runs on the service thread only. */
#ifndef TN_DEVICE_H
#define TN_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "fwstore.h"
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
	int log_rate;       /* device log lines per second (0: no limit) */
	int max_conns_per_ip; /* connections one address may hold (0: no limit) */
	size_t max_out_bytes; /* unsent bytes a device may have queued before it is closed (0: 256 KiB) */
	const char *tls_cert; /* PEM files, already checked: wss instead of ws; NULL: plain */
	const char *tls_key;
	struct scheduler *sched; /* told of hellos, closes and update frames; may be NULL */
	struct supervisor *sup;  /* told of hellos, closes and msg frames; may be NULL */
	struct enroller *enroll; /* registers devices that say hello with a token; may be NULL */
} device_loop_options;

/* Listens and starts the service thread.  Borrows st and reg until stopped. */
int device_loop_start(device_loop **out, const device_loop_options *opt, store *st,
		      registry *reg, tn_error *err);

/* The port it listens on. */
int device_loop_port(const device_loop *d);

/* Closes the device's connection, if any, with a close code and reason; when
 * `forget` is set the device no longer exists and nothing is logged for it. */
int device_loop_kick(device_loop *d, uint64_t id, int code, const char *reason, int forget);

/* Sends one frame to the device, but only on connection `conn` (the serial
 * the scheduler was given with the device's hello): if the device has
 * reconnected since, the frame is dropped.  `data` is copied. */
int device_loop_send(device_loop *d, uint64_t id, uint64_t conn, const void *data, size_t len, int binary);

/* Firmware fetches of a device that is already downloading are answered by
 * the device loop itself, from a grant the scheduler hands it (docs/updates.md,
 * "Who answers a fetch"): the image, its update id, and a flag the scheduler
 * sets to take it back.  The flag is read before every chunk, so a revoke
 * takes effect at once and cannot fail; a fetch the grant does not cover
 * (another id, an offset past the end, a revoked grant) goes to the scheduler
 * as before, which answers it or says why not. */
typedef struct device_fetch_grant device_fetch_grant;

/* Grants connection `conn` of device `id` fetches of `update_id` from
 * `file` (a reference is taken).  Returns the grant for device_fetch_revoke,
 * or NULL when out of memory (the scheduler keeps answering). */
device_fetch_grant *device_loop_grant_fetch(device_loop *d, uint64_t id, uint64_t conn, const char *update_id,
					    fwstore_file *file);

/* Takes a grant back (at once) and drops the caller's reference.  Accepts NULL. */
void device_fetch_revoke(device_fetch_grant *g);

/* Closes every connection (1001, "server shutting down"), waits up to 2 s for
 * them to go, stops the thread and frees everything.  Accepts NULL. */
void device_loop_stop(device_loop *d);

#endif

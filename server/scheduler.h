/* server/scheduler.h -- the update scheduler: walks running rollouts, decides
 * for each targeted device eligible / blocked (with the reason) / up to date,
 * and only then triggers; drives each device's update state machine from its
 * frames; serves firmware chunks; fails steps past their deadline.
 * Owns: its thread, the live facts of online devices (from their hello), the
 * rollout_devices rows of running rollouts, and, while devices download, each
 * one's row as last read and the firmware images they fetch (info and one
 * open descriptor per firmware, shared), so that a fetch costs no SQL; once
 * a device is downloading it grants the device loop its connection's later
 * fetches (device_loop_grant_fetch) and revokes that at its next transition.
 * Threads: sched_* notifications may be called from any thread (the device
 * loop calls them); they queue to the scheduler thread and wake it. */
#ifndef TN_SCHEDULER_H
#define TN_SCHEDULER_H

#include <stdint.h>

#include "store.h"
#include "tn.h"

typedef struct scheduler scheduler;
struct device_loop;

/* The most firmware bytes one chunk carries (a fetch may ask for more). */
#define SCHED_MAX_CHUNK 65536

typedef struct sched_options {
	const char *firmware_dir;   /* DATA_DIR/firmware */
	int tick_ms;                /* cron period (default 500) */
} sched_options;

int sched_start(scheduler **out, const sched_options *opt, store *st, tn_error *err);
/* The device loop to send offers and chunks through (set once, before devices connect). */
void sched_set_device_loop(scheduler *s, struct device_loop *d);
/* Stops the thread; notifications after this are dropped.  sched_free() then
 * frees it (the device loop may still call sched_* in between). */
void sched_stop(scheduler *s);
void sched_free(scheduler *s);

/* What a device's hello said, copied. `conn` identifies the connection: an
 * offer is sent only on the connection whose facts were checked. */
typedef struct sched_hello {
	const char *hw, *fw, *sfdp;     /* may be NULL */
	int has_jedec;
	uint32_t jedec;
	int64_t flash_size;
} sched_hello;

void sched_device_online(scheduler *s, uint64_t device, uint64_t conn, const sched_hello *h);
void sched_device_offline(scheduler *s, uint64_t device, uint64_t conn);

/* An update_status frame: state is downloading, downloaded, installing or failed. */
void sched_update_status(scheduler *s, uint64_t device, uint64_t conn, const char *update_id,
			 const char *state, int64_t offset, const char *error);

/* A fetch frame: the device asks for `length` bytes at `offset` of update `update_id`. */
void sched_fetch(scheduler *s, uint64_t device, uint64_t conn, const char *update_id,
		 int64_t offset, int64_t length);

/* Wakes the scheduler now (a rollout was created, resumed, paused...); what it
 * keeps in memory of downloads in progress is read again from the store. */
void sched_kick(scheduler *s);

#endif

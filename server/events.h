/* server/events.h -- log events: what they are and their JSON form.
 * An event is one line of a device's log {id, device_id, ts, type, msg};
 * ids are monotonic (assigned by the store as events are queued), so log
 * streams can resume from Last-Event-ID.
 * Threads: any. */
#ifndef TN_EVENTS_H
#define TN_EVENTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { EV_STATUS = 0, EV_DEVICE = 1, EV_AGENT = 2, EV_FIRMWARE = 3, EV__COUNT } event_type;

typedef struct tn_event {
	int64_t id;
	uint64_t device;
	int64_t ts_ms;
	event_type type;
	const char *msg; /* borrowed */
} tn_event;

/* "status", "device", "agent", "firmware". */
const char *events_type_name(event_type t);

/* The inverse; returns -1 for an unknown name. */
int events_type_parse(const char *name);

/* {"id","device_id","ts","type","msg"}.  owned: caller json_decref()s; NULL on ENOMEM. */
json_t *events_to_json(const tn_event *ev);

/* The operator's text form, "2016-09-08 17:16:15 UTC+2 [Status] Device connected". */
int events_format_text(const tn_event *ev, char *buf, size_t cap);

#endif

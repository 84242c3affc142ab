/* server/logstream.h -- live log streams over Server-Sent Events: one
 * device's log (GET /v1/devices/{id}/logs with Accept: text/event-stream or
 * ?follow=1, resuming from Last-Event-ID), and multi-device streams
 * (POST /v1/logstreams, GET /v1/logstreams/{id}, PUT/DELETE
 * /v1/logstreams/{id}/devices/{dev}).  See docs/logs.md.
 * Owns: the streams and their bus subscriptions.
 * Threads: called from the HTTP API's threads; the bus wakes suspended
 * readers from the store writer. */
#ifndef TN_LOGSTREAM_H
#define TN_LOGSTREAM_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdint.h>

#include "bus.h"
#include "store.h"

typedef struct logstreams logstreams;

typedef struct logstreams_options {
	int max_streams;         /* named streams in all (0: no limit) */
	int max_per_owner;       /* named streams per API token (0: no limit) */
	int64_t open_timeout_ms; /* a named stream not opened by then is removed */
} logstreams_options;

int logstreams_new(logstreams **out, bus *b, store *st, const logstreams_options *opt);
/* Seconds a named stream may wait to be opened (a Retry-After for refusals). */
int logstreams_open_timeout_s(const logstreams *ls);
/* Ends every stream (their readers get a last notice), refuses new ones
 * (TN_ESTATE), waits up to 5 s for their connections to finish and until
 * none is suspended; call before MHD_stop_daemon. */
void logstreams_close(logstreams *ls);
void logstreams_free(logstreams *ls);

/* A response that streams one device's log, first what came after
 * `after_id` (-1: nothing old; 0: the whole log), then live.  text: the
 * text form.  NULL with err: TN_ESTATE while the server stops, TN_ENOMEM.
 * The connection must allow suspend/resume. */
struct MHD_Response *logstream_device_response(logstreams *ls, struct MHD_Connection *conn,
					       uint64_t device, int64_t after_id, int text, tn_error *err);

/* POST /v1/logstreams: body {"devices":[...]} or {"group": "g"} or
 * {"all": true}, and optionally "types": [...] (only events of those types
 * are sent; notices always), by the API token `owner`.  Returns 0 with *out
 * {"id","url","devices","all","types"} (owned); TN_ETOOBIG when the token holds
 * max_per_owner streams, TN_ESTATE when the server holds max_streams. */
int logstream_create(logstreams *ls, int64_t owner, json_t *body, json_t **out, tn_error *err);

/* GET /v1/logstreams/{id}: its SSE response (one reader at a time), or NULL
 * with err (TN_ENOTFOUND, TN_EEXIST when a reader is already attached,
 * TN_ESTATE while the server stops). */
struct MHD_Response *logstream_open(logstreams *ls, struct MHD_Connection *conn, const char *id,
				    int text, tn_error *err);

/* PUT (add = 1) / DELETE (add = 0) /v1/logstreams/{id}/devices/{dev}. */
int logstream_device(logstreams *ls, const char *id, uint64_t device, int add, tn_error *err);

/* DELETE /v1/logstreams/{id} */
int logstream_delete(logstreams *ls, const char *id, tn_error *err);

#endif

/* server/metrics.h -- counters for GET /metrics (Prometheus text format).
 * Threads: any; every counter is a relaxed atomic. */
#ifndef TN_METRICS_H
#define TN_METRICS_H

#include <stdint.h>

/* Kinds of error, each a label value of tender_errors_total{kind=...}. */
typedef enum {
	ERR_BAD_JSON, ERR_BAD_FRAME, ERR_UNKNOWN_TYPE, ERR_BINARY_FRAME,
	ERR_HELLO_REQUIRED, ERR_AUTH_FAILED, ERR_HELLO_TIMEOUT, ERR_TOO_MANY_BAD_FRAMES,
	ERR_FRAME_TOO_LARGE, ERR_BAD_PATH, ERR_DEVICE_QUEUE_FULL, ERR_STORE,
	ERR_HTTP_UNAUTHORIZED, ERR_HTTP_BAD_REQUEST, ERR_HTTP_TOO_LARGE, ERR_HTTP_NOT_FOUND,
	ERR_HTTP_METHOD, ERR_HTTP_MEDIA_TYPE, ERR_LOG_RATE, ERR_AGENT_LOG_RATE,
	ERR_CONNS_PER_IP,   /* a device connection over --max-conns-per-ip */
	ERR_HTTP_FORBIDDEN,        /* a token without the role a call needs */
	ERR_HTTP_AUTH_THROTTLED,   /* refused: too many failed token attempts from the address */
	ERR_DEVICE_CONNS_FULL,     /* a device connection refused: tenderd is at its descriptor budget */
	ERR_STORE_QUEUE_FULL,      /* a log line dropped: the store's write queue is full */
	ERR_STREAMS_PER_TOKEN,     /* POST /v1/logstreams over --max-streams-per-token (429) */
	ERR_STREAMS_FULL,          /* POST /v1/logstreams over --max-streams (503) */
	ERR_AGENT_MEMORY,          /* an agent stopped over --agent-memory */
	ERR_AGENT_BUDGET,          /* a handler stopped over --agent-budget or --agent-cpu-ms */
	ERR_AGENT_OFFLINE_QUEUE,   /* a message to an offline device dropped: its queue was full */
	ERR_HTTP_CONNS_FULL,       /* an HTTP connection over --http-max-conns, answered 503 */
	ERR_HTTP_CONNS_PER_IP,     /* an HTTP connection over --max-conns-per-ip, answered 503 */
	ERR_HTTP_CONNS_REFUSED,    /* an HTTP connection past libmicrohttpd's hard cap, closed */
	ERR_HTTP_HEADER_TOO_LARGE, /* request line or headers over libmicrohttpd's pool: 431 */
	ERR_HTTP_TIMEOUT,          /* an HTTP connection closed by --http-timeout */
	ERR_DEVICE_HEADER_TOO_LARGE, /* a device's upgrade request over lws's header space: closed */
	ERR__COUNT
} metrics_error_kind;

typedef enum {
	M_DEVICES_CONNECTED,   /* gauge */
	M_CONNECTIONS_TOTAL,   /* device WebSocket handshakes accepted */
	M_FRAMES_IN, M_FRAMES_OUT, M_BYTES_IN, M_BYTES_OUT,
	M_EVENTS_QUEUED, M_EVENTS_WRITTEN, M_STORE_COMMITS,
	M_HTTP_REQUESTS,
	M_STREAM_SUBSCRIBERS,  /* gauge */
	M_STREAM_CUTOFFS,
	M_EVENTS_EXPIRED,
	M_STORE_QUEUE_BYTES,   /* gauge: bytes waiting for the store writer */
	M_STREAMS,             /* gauge: named log streams held */
	M_STREAMS_EXPIRED,     /* named log streams removed, not opened in time */
	M_STREAM_DIRECT_WRITES, /* log stream writes made by the waker threads */
	M_STREAM_MHD_WRITES,   /* log stream writes left to libmicrohttpd */
	M_FIRMWARE_CHUNKS,     /* firmware chunks sent (either thread) */
	M_FIRMWARE_CHUNKS_LOOP, /* of those, answered by the device loop from a grant */
	M__COUNT
} metrics_counter;

void metrics_add(metrics_counter c, int64_t n);
static inline void metrics_inc(metrics_counter c) { metrics_add(c, 1); }
int64_t metrics_get(metrics_counter c);

void metrics_error(metrics_error_kind kind);
int64_t metrics_error_count(metrics_error_kind kind);
const char *metrics_error_name(metrics_error_kind kind);

/* The whole exposition, NUL-terminated.  owned: caller frees with free(). */
char *metrics_render(void);

#endif

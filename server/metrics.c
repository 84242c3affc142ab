/* server/metrics.c -- counters and their Prometheus text exposition. */
#define _GNU_SOURCE
#include "metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static _Atomic int64_t metrics__counters[M__COUNT];
static _Atomic int64_t metrics__errors[ERR__COUNT];

static const char *const metrics__error_names[ERR__COUNT] = {
	[ERR_BAD_JSON] = "bad_json", [ERR_BAD_FRAME] = "bad_frame",
	[ERR_UNKNOWN_TYPE] = "unknown_type", [ERR_BINARY_FRAME] = "binary_frame",
	[ERR_HELLO_REQUIRED] = "hello_required", [ERR_AUTH_FAILED] = "auth_failed",
	[ERR_HELLO_TIMEOUT] = "hello_timeout", [ERR_TOO_MANY_BAD_FRAMES] = "too_many_bad_frames",
	[ERR_FRAME_TOO_LARGE] = "frame_too_large", [ERR_BAD_PATH] = "bad_path",
	[ERR_DEVICE_QUEUE_FULL] = "device_queue_full", [ERR_STORE] = "store",
	[ERR_HTTP_UNAUTHORIZED] = "http_unauthorized", [ERR_HTTP_BAD_REQUEST] = "http_bad_request",
	[ERR_HTTP_TOO_LARGE] = "http_too_large", [ERR_HTTP_NOT_FOUND] = "http_not_found",
	[ERR_HTTP_METHOD] = "http_method_not_allowed", [ERR_HTTP_MEDIA_TYPE] = "http_unsupported_media_type",
	[ERR_LOG_RATE] = "device_log_rate", [ERR_AGENT_LOG_RATE] = "agent_log_rate",
	[ERR_CONNS_PER_IP] = "device_conns_per_ip",
	[ERR_HTTP_FORBIDDEN] = "http_forbidden", [ERR_HTTP_AUTH_THROTTLED] = "http_auth_throttled",
	[ERR_DEVICE_CONNS_FULL] = "device_conns_full",
	[ERR_STORE_QUEUE_FULL] = "store_queue_full",
	[ERR_STREAMS_PER_TOKEN] = "log_streams_per_token", [ERR_STREAMS_FULL] = "log_streams_full",
	[ERR_AGENT_MEMORY] = "agent_memory", [ERR_AGENT_BUDGET] = "agent_budget",
	[ERR_AGENT_OFFLINE_QUEUE] = "agent_offline_queue_full",
	[ERR_HTTP_CONNS_FULL] = "http_conns_full", [ERR_HTTP_CONNS_PER_IP] = "http_conns_per_ip",
	[ERR_HTTP_CONNS_REFUSED] = "http_conns_refused", [ERR_HTTP_HEADER_TOO_LARGE] = "http_header_too_large",
	[ERR_DEVICE_HEADER_TOO_LARGE] = "device_header_too_large",
	[ERR_HTTP_TIMEOUT] = "http_timeout",
};

static const struct {
	const char *name, *type, *help;
} metrics__info[M__COUNT] = {
	[M_DEVICES_CONNECTED] = { "tender_devices_connected", "gauge", "Devices with an authenticated connection." },
	[M_CONNECTIONS_TOTAL] = { "tender_device_connections_total", "counter", "Device WebSocket connections accepted." },
	[M_FRAMES_IN] = { "tender_frames_in_total", "counter", "Frames received from devices." },
	[M_FRAMES_OUT] = { "tender_frames_out_total", "counter", "Frames sent to devices." },
	[M_BYTES_IN] = { "tender_bytes_in_total", "counter", "Frame payload bytes received from devices." },
	[M_BYTES_OUT] = { "tender_bytes_out_total", "counter", "Frame payload bytes sent to devices." },
	[M_EVENTS_QUEUED] = { "tender_events_queued_total", "counter", "Events handed to the store writer." },
	[M_EVENTS_WRITTEN] = { "tender_events_written_total", "counter", "Events committed to the store." },
	[M_STORE_COMMITS] = { "tender_store_commits_total", "counter", "Store write transactions committed." },
	[M_HTTP_REQUESTS] = { "tender_http_requests_total", "counter", "HTTP requests answered." },
	[M_STREAM_SUBSCRIBERS] = { "tender_log_stream_subscribers", "gauge", "Live log stream subscriptions." },
	[M_STREAM_CUTOFFS] = { "tender_log_stream_cutoffs_total", "counter",
			       "Log stream subscribers cut off for being too slow." },
	[M_EVENTS_EXPIRED] = { "tender_events_expired_total", "counter", "Events deleted by retention." },
	[M_STORE_QUEUE_BYTES] = { "tender_store_queue_bytes", "gauge",
				  "Bytes of writes waiting for the store writer (capped by --store-queue)." },
	[M_STREAMS] = { "tender_log_streams", "gauge", "Named log streams (POST /v1/logstreams) held." },
	[M_STREAMS_EXPIRED] = { "tender_log_streams_expired_total", "counter",
				"Named log streams removed because nobody opened them in time." },
	[M_STREAM_DIRECT_WRITES] = { "tender_log_stream_direct_writes_total", "counter",
				     "Log stream writes the waker threads made themselves (caught-up readers on plain TCP)." },
	[M_STREAM_MHD_WRITES] = { "tender_log_stream_mhd_writes_total", "counter",
				  "Log stream writes left to libmicrohttpd (history, TLS, readers behind or with a full socket)." },
	[M_FIRMWARE_CHUNKS] = { "tender_firmware_chunks_total", "counter", "Firmware chunks sent to devices." },
	[M_FIRMWARE_CHUNKS_LOOP] = { "tender_firmware_chunks_device_loop_total", "counter",
				     "Firmware chunks the device loop answered itself (a device already downloading)." },
};

void metrics_add(metrics_counter c, int64_t n)
{
	atomic_fetch_add_explicit(&metrics__counters[c], n, memory_order_relaxed);
}

int64_t metrics_get(metrics_counter c)
{
	return atomic_load_explicit(&metrics__counters[c], memory_order_relaxed);
}

void metrics_error(metrics_error_kind kind)
{
	atomic_fetch_add_explicit(&metrics__errors[kind], 1, memory_order_relaxed);
}

int64_t metrics_error_count(metrics_error_kind kind)
{
	return atomic_load_explicit(&metrics__errors[kind], memory_order_relaxed);
}

const char *metrics_error_name(metrics_error_kind kind)
{
	return metrics__error_names[kind];
}

char *metrics_render(void)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	for (int i = 0; i < M__COUNT; i++)
		fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %lld\n", metrics__info[i].name,
			metrics__info[i].help, metrics__info[i].name, metrics__info[i].type,
			metrics__info[i].name, (long long)metrics_get((metrics_counter)i));
	fprintf(f, "# HELP tender_errors_total Refused frames, failed handshakes and other errors, by kind.\n"
		   "# TYPE tender_errors_total counter\n");
	for (int i = 0; i < ERR__COUNT; i++)
		fprintf(f, "tender_errors_total{kind=\"%s\"} %lld\n", metrics__error_names[i],
			(long long)metrics_error_count((metrics_error_kind)i));
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

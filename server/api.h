/* server/api.h -- the HTTP API (libmicrohttpd), see docs/api.md.
 * Owns: the MHD daemon, its listening socket, per-request bodies.
 * Threads: api_start/api_stop on the main thread; handlers run on MHD's
 * thread pool and reach the rest only through thread-safe calls (store reads
 * on pooled connections, store_sync writes, registry, device_loop_kick). */
#ifndef TN_API_H
#define TN_API_H

#include "device.h"
#include "registry.h"
#include "store.h"
#include "tn.h"

typedef struct api api;

typedef struct api_options {
	const char *bind;
	int port;          /* 0: pick a free one */
	int threads;
	int max_conns;
	int conn_timeout;  /* seconds */
	int max_body;      /* bytes */
	int max_firmware;  /* bytes of a firmware upload */
	const char *firmware_dir;
	const char *web_dir;  /* the dashboard's files, served at / (NULL: none) */
	int max_conns_per_ip; /* 0: no limit */
	const char *tls_cert_pem; /* borrowed until api_stop; both set: https only */
	const char *tls_key_pem;
	int auth_fail_limit;  /* failed token attempts per address per window (0: no limit) */
	int auth_fail_window; /* seconds */
} api_options;

/* The parts the API works with, borrowed until api_stop. */
typedef struct api_deps {
	store *st;
	registry *reg;
	device_loop *dev;
	struct scheduler *sched;
	struct supervisor *sup;
	struct logstreams *streams;
} api_deps;

int api_start(api **out, const api_options *opt, const api_deps *deps, tn_error *err);
int api_port(const api *a);
void api_stop(api *a);

#endif

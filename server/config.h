/* server/config.h -- tenderd's settings: defaults, command line, config file.
 * Owns: struct tn_config (filled once at start, read-only afterwards).
 * Threads: parsed on the main thread before any other starts. */
#ifndef TN_CONFIG_H
#define TN_CONFIG_H

#include <stdio.h>

#include "tn.h"

typedef struct tn_config {
	char *data_dir;          /* owned */
	char *bind;              /* owned */
	char *admin_token_file;  /* owned; NULL means DATA_DIR/admin.token */
	char *web_dir;           /* owned; NULL: ./web if there, else the installed one */
	char *tls_cert;          /* owned; PEM certificate chain, NULL: no TLS */
	char *tls_key;           /* owned; PEM private key, given with tls_cert */
	char *tls_cert_pem;      /* owned; tls_cert's contents, checked at parse time */
	char *tls_key_pem;       /* owned; tls_key's contents (wiped by config_free) */
	int device_port;
	int http_port;
	int ping_interval;       /* seconds of silence before the server pings */
	int idle_timeout;        /* seconds without valid traffic before a drop */
	int hello_timeout;       /* seconds a new connection has to say hello */
	int max_frame;           /* bytes per device frame after reassembly */
	int max_body;            /* bytes per HTTP request body */
	int max_firmware;        /* bytes per firmware image */
	int http_threads;
	int http_max_conns;
	int http_timeout;        /* seconds an idle HTTP connection is kept */
	int max_conns_per_ip;    /* connections one address may hold per port (0: no limit) */
	int auth_fail_limit;     /* failed API token attempts per address per window (0: no limit) */
	int auth_fail_window;    /* seconds */
	int batch_max;           /* events per store transaction, at most */
	int log_rate;            /* device log lines per second */
	int agent_log_rate;      /* agent log lines per second */
	int stream_queue;        /* events a log stream subscriber may have waiting */
	int max_streams;         /* named log streams in all (0: no limit) */
	int max_streams_per_token; /* named log streams per API token (0: no limit) */
	int stream_open_timeout; /* seconds a named log stream may wait to be opened */
	int device_send_queue;   /* unsent bytes per device before it is closed */
	int agent_offline_queue; /* messages an agent keeps for its offline device */
	int store_queue;         /* bytes of writes waiting for the disk, at most */
	int retention_days;      /* events older are deleted (0: kept) */
	int retention_seconds;   /* the same in seconds, for tests; overrides days */
	int retention_count;     /* events kept per device (0: all) */
	int agent_workers;       /* 0: one per core */
	int agent_memory;        /* bytes per agent */
	int agent_budget;        /* Lua instructions per agent event */
	int agent_cpu_ms;        /* CPU time per agent event, ms */
	int sync_full;           /* PRAGMA synchronous=FULL instead of NORMAL */
	int log_level;
} tn_config;

/* Fills cfg with the defaults. */
void config_defaults(tn_config *cfg);

/* Parses argv (and a --config FILE among them, whose settings the command line
 * overrides).  With --tls-cert and --tls-key it also reads both files and
 * checks that they hold a certificate and its key.  Returns 0, 1 when --help
 * or --version was printed (exit 0), or TN_EINVAL with err naming the bad
 * option, line or file. */
int config_parse_args(tn_config *cfg, int argc, char **argv, tn_error *err);

/* Parses "key = value" lines (keys are the long option names).  `origin`
 * names the source in errors.  Returns 0 or TN_EINVAL. */
int config_parse_text(tn_config *cfg, const char *text, const char *origin, tn_error *err);

void config_free(tn_config *cfg);

/* The --help text. */
void config_usage(FILE *out);

#endif

/* server/config.c -- tenderd's settings: one table drives the command line,
 * the config file and --help, so the three cannot drift apart. */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

enum opt_kind { OPT_STR, OPT_INT, OPT_BOOL, OPT_LEVEL };

struct opt {
	const char *name;
	enum opt_kind kind;
	size_t offset;
	long min, max;
	const char *arg, *help;
};

#define OFF(f) offsetof(tn_config, f)
static const struct opt config__opts[] = {
	{ "data-dir", OPT_STR, OFF(data_dir), 0, 0, "DIR",
	  "database, tokens and firmware files (default ./tender-data; created if missing)" },
	{ "bind", OPT_STR, OFF(bind), 0, 0, "ADDR", "numeric IPv4 or IPv6 address both ports listen on (default 127.0.0.1; 0.0.0.0 or :: for all)" },
	{ "web-dir", OPT_STR, OFF(web_dir), 0, 0, "DIR",
	  "the dashboard's files, served at / (default ./web if present, else " TN_DATADIR "/web)" },
	{ "device-port", OPT_INT, OFF(device_port), 0, 65535, "N",
	  "WebSocket device endpoint (default 8600; 0 picks a free port)" },
	{ "http-port", OPT_INT, OFF(http_port), 0, 65535, "N",
	  "HTTP API and dashboard (default 8601; 0 picks a free port)" },
	{ "admin-token-file", OPT_STR, OFF(admin_token_file), 0, 0, "FILE",
	  "admin token file (default DATA_DIR/admin.token); an existing file's token is accepted" },
	{ "tls-cert", OPT_STR, OFF(tls_cert), 0, 0, "FILE",
	  "PEM certificate (chain): both ports speak TLS (wss, https); needs --tls-key" },
	{ "tls-key", OPT_STR, OFF(tls_key), 0, 0, "FILE",
	  "PEM private key (unencrypted) of --tls-cert; a restart picks up new files" },
	{ "max-conns-per-ip", OPT_INT, OFF(max_conns_per_ip), 0, 1000000, "N",
	  "connections one address may hold on each port (default 1000, 0: no limit)" },
	{ "ping-interval", OPT_INT, OFF(ping_interval), 0, 3600, "S",
	  "seconds of device silence before a ping (default 0: half the idle timeout, at most 20)" },
	{ "idle-timeout", OPT_INT, OFF(idle_timeout), 2, 7200, "S",
	  "seconds without valid device traffic before it is dropped and marked offline (default 45)" },
	{ "hello-timeout", OPT_INT, OFF(hello_timeout), 1, 600, "S",
	  "seconds a new device connection has to send hello (default 10)" },
	{ "max-frame", OPT_INT, OFF(max_frame), 256, 16 << 20, "BYTES",
	  "largest device frame after reassembly (default 65536)" },
	{ "max-body", OPT_INT, OFF(max_body), 1024, 256 << 20, "BYTES",
	  "largest HTTP request body (default 1048576)" },
	{ "max-firmware", OPT_INT, OFF(max_firmware), 1024, 1 << 30, "BYTES",
	  "largest firmware image (default 67108864)" },
	{ "device-send-queue", OPT_INT, OFF(device_send_queue), 131072, 1 << 30, "BYTES",
	  "unsent bytes a device may have queued (it stopped reading) before it is closed "
	  "'1008 send queue full' (default 262144)" },
	{ "auth-fail-limit", OPT_INT, OFF(auth_fail_limit), 0, 1000000, "N",
	  "failed API token attempts one address may make per window before it is refused "
	  "(429) until the window ends (default 20, 0: no limit)" },
	{ "auth-fail-window", OPT_INT, OFF(auth_fail_window), 1, 86400, "S",
	  "the window of --auth-fail-limit, in seconds (default 60)" },
	{ "http-threads", OPT_INT, OFF(http_threads), 1, 256, "N", "HTTP worker threads (default 4)" },
	{ "http-max-conns", OPT_INT, OFF(http_max_conns), 1, 100000, "N",
	  "concurrent HTTP connections (default 1024)" },
	{ "http-timeout", OPT_INT, OFF(http_timeout), 1, 3600, "S",
	  "seconds an idle HTTP connection is kept (default 30)" },
	{ "store-queue", OPT_INT, OFF(store_queue), 65536, 1 << 30, "BYTES",
	  "writes waiting for the disk, at most; past it device and agent log lines are dropped "
	  "and counted, and API writes answer 503, until it drains (default 67108864)" },
	{ "batch-max", OPT_INT, OFF(batch_max), 1, 100000, "N",
	  "events committed per store transaction, at most (default 1024)" },
	{ "log-rate", OPT_INT, OFF(log_rate), 0, 1000000, "N",
	  "log lines per second a device may send; more are dropped and counted (default 100, 0: no limit)" },
	{ "agent-log-rate", OPT_INT, OFF(agent_log_rate), 0, 1000000, "N",
	  "log lines per second an agent may write (default 100, 0: no limit)" },
	{ "retention-days", OPT_INT, OFF(retention_days), 0, 36500, "DAYS",
	  "delete events older than this, in the background (default 90, 0: keep)" },
	{ "retention-seconds", OPT_INT, OFF(retention_seconds), 0, 2000000000, "S",
	  "the same in seconds (overrides --retention-days when set)" },
	{ "retention-count", OPT_INT, OFF(retention_count), 0, 2000000000, "N",
	  "keep at most the newest N events per device (default 100000, 0: all)" },
	{ "stream-queue", OPT_INT, OFF(stream_queue), 10, 10000000, "N",
	  "events a log stream may have waiting before it is cut off as too slow (default 10000)" },
	{ "max-streams", OPT_INT, OFF(max_streams), 0, 1000000, "N",
	  "named log streams (POST /v1/logstreams) held at once; more are refused with 503 "
	  "(default 1000, 0: no limit)" },
	{ "max-streams-per-token", OPT_INT, OFF(max_streams_per_token), 0, 1000000, "N",
	  "named log streams one API token may hold; more are refused with 429 (default 100, 0: no limit)" },
	{ "stream-open-timeout", OPT_INT, OFF(stream_open_timeout), 1, 86400, "S",
	  "seconds a named log stream may wait to be opened before it is removed (default 60)" },
	{ "agent-workers", OPT_INT, OFF(agent_workers), 0, 64, "N",
	  "agent worker threads (default 0: one per core)" },
	{ "agent-memory", OPT_INT, OFF(agent_memory), 65536, 1 << 30, "BYTES",
	  "memory each agent's Lua state may use (default 1048576)" },
	{ "agent-budget", OPT_INT, OFF(agent_budget), 1000, 2000000000, "N",
	  "Lua instructions an agent may run per event (default 10000000)" },
	{ "agent-cpu-ms", OPT_INT, OFF(agent_cpu_ms), 10, 600000, "MS",
	  "CPU time an agent may use per event, a backstop to --agent-budget (default 2000)" },
	{ "agent-offline-queue", OPT_INT, OFF(agent_offline_queue), 1, 100000, "N",
	  "messages an agent keeps for its offline device; past it the oldest is dropped (default 64)" },
	{ "sync-full", OPT_BOOL, OFF(sync_full), 0, 1, NULL,
	  "PRAGMA synchronous=FULL: survive power loss, not only crashes (slower)" },
	{ "log-level", OPT_LEVEL, OFF(log_level), 0, 0, "LEVEL", "error, warn, info (default) or debug" },
};

void config_defaults(tn_config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->data_dir = strdup("./tender-data");
	cfg->bind = strdup("127.0.0.1");
	cfg->device_port = 8600;
	cfg->http_port = 8601;
	cfg->idle_timeout = 45;
	cfg->hello_timeout = 10;
	cfg->max_frame = 65536;
	cfg->max_body = 1 << 20;
	cfg->max_firmware = 64 << 20;
	cfg->http_threads = 4;
	cfg->http_max_conns = 1024;
	cfg->http_timeout = 30;
	/* Generous: a fleet behind one NAT shares an address (docs/security.md). */
	cfg->max_conns_per_ip = 1000;
	cfg->auth_fail_limit = 20;
	cfg->auth_fail_window = 60;
	cfg->batch_max = 1024;
	cfg->store_queue = 64 << 20;
	cfg->agent_memory = 1 << 20;
	cfg->stream_queue = 10000;
	cfg->max_streams = 1000;
	cfg->max_streams_per_token = 100;
	cfg->stream_open_timeout = 60;
	cfg->retention_days = 90;
	cfg->retention_count = 100000;
	cfg->log_rate = 100;
	cfg->agent_log_rate = 100;
	cfg->agent_budget = 10000000;
	cfg->agent_cpu_ms = 2000;
	cfg->device_send_queue = 256 << 10;
	cfg->agent_offline_queue = 64;
	cfg->log_level = LOG_INFO;
}

void config_free(tn_config *cfg)
{
	if (!cfg)
		return;
	free(cfg->data_dir);
	free(cfg->bind);
	free(cfg->admin_token_file);
	free(cfg->web_dir);
	free(cfg->tls_cert);
	free(cfg->tls_key);
	free(cfg->tls_cert_pem);
	if (cfg->tls_key_pem)
		explicit_bzero(cfg->tls_key_pem, strlen(cfg->tls_key_pem));
	free(cfg->tls_key_pem);
	memset(cfg, 0, sizeof *cfg);
}

static const struct opt *config__find(const char *name)
{
	for (size_t i = 0; i < TN_ARRAY_LEN(config__opts); i++)
		if (strcmp(config__opts[i].name, name) == 0)
			return &config__opts[i];
	return NULL;
}

static int config__set(tn_config *cfg, const struct opt *o, const char *val,
		       const char *origin, tn_error *err)
{
	char *field = (char *)cfg + o->offset;

	switch (o->kind) {
	case OPT_STR: {
		if (!val || !*val)
			return tn_err(err, TN_EINVAL, "%s: %s needs a value", origin, o->name);
		char *copy = strdup(val);
		if (!copy)
			return tn_err(err, TN_ENOMEM, "out of memory");
		free(*(char **)field);
		*(char **)field = copy;
		return 0;
	}
	case OPT_INT: {
		char *end;
		errno = 0;
		long v = val ? strtol(val, &end, 10) : 0;
		if (!val || !*val || *end || errno || v < o->min || v > o->max)
			return tn_err(err, TN_EINVAL, "%s: %s must be an integer from %ld to %ld, not '%s'",
				      origin, o->name, o->min, o->max, val ? val : "");
		*(int *)field = (int)v;
		return 0;
	}
	case OPT_BOOL:
		if (!val || strcmp(val, "true") == 0 || strcmp(val, "1") == 0 || strcmp(val, "yes") == 0)
			*(int *)field = 1;
		else if (strcmp(val, "false") == 0 || strcmp(val, "0") == 0 || strcmp(val, "no") == 0)
			*(int *)field = 0;
		else
			return tn_err(err, TN_EINVAL, "%s: %s must be true or false, not '%s'",
				      origin, o->name, val);
		return 0;
	case OPT_LEVEL: {
		int lvl = val ? log_level_parse(val) : -1;
		if (lvl < 0)
			return tn_err(err, TN_EINVAL, "%s: %s must be error, warn, info or debug, not '%s'",
				      origin, o->name, val ? val : "");
		*(int *)field = lvl;
		return 0;
	}
	}
	return TN_EINVAL;
}

static char *config__trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}

int config_parse_text(tn_config *cfg, const char *text, const char *origin, tn_error *err)
{
	char *copy = strdup(text), where[300];
	int lineno = 0, rc = 0;

	if (!copy)
		return tn_err(err, TN_ENOMEM, "out of memory");
	/* strtok_r would skip empty lines and miscount; split by hand. */
	for (char *line = copy, *next; line && rc == 0; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		lineno++;
		char *s = config__trim(line);
		if (*s == '\0' || *s == '#')
			continue;
		snprintf(where, sizeof where, "%s:%d", origin, lineno);
		char *eq = strchr(s, '=');
		char *key = s, *val = NULL;
		if (eq) {
			*eq = '\0';
			key = config__trim(s);
			val = config__trim(eq + 1);
		}
		const struct opt *o = config__find(key);
		if (!o)
			rc = tn_err(err, TN_EINVAL, "%s: unknown setting '%s'", where, key);
		else if (!val && o->kind != OPT_BOOL)
			rc = tn_err(err, TN_EINVAL, "%s: '%s' needs '= value'", where, key);
		else
			rc = config__set(cfg, o, val, where, err);
	}
	free(copy);
	return rc;
}

static int config__load_file(tn_config *cfg, const char *path, tn_error *err)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return tn_err(err, TN_EINVAL, "--config: cannot open %s: %s", path, strerror(errno));
	char *buf = NULL;
	size_t cap = 0;
	ssize_t n = getdelim(&buf, &cap, '\0', f);
	fclose(f);
	if (n < 0) {
		free(buf);
		buf = strdup("");
	}
	int rc = config_parse_text(cfg, buf ? buf : "", path, err);
	free(buf);
	return rc;
}

/* --- TLS files --------------------------------------------------------------- */

#define CONFIG_PEM_MAX (1 << 20)

static int config__read_pem(const char *opt, const char *path, char **out, tn_error *err)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return tn_err(err, TN_EINVAL, "--%s: cannot read %s: %s", opt, path, strerror(errno));
	char *buf = malloc(CONFIG_PEM_MAX + 1);
	size_t n = buf ? fread(buf, 1, CONFIG_PEM_MAX + 1, f) : 0;
	int bad = ferror(f);
	fclose(f);
	if (!buf)
		return tn_err(err, TN_ENOMEM, "out of memory");
	if (bad || n == 0 || n > CONFIG_PEM_MAX) {
		free(buf);
		return tn_err(err, TN_EINVAL, "--%s: %s is %s", opt, path,
			      bad ? "unreadable" : n ? "too large for a PEM file" : "empty");
	}
	buf[n] = '\0';
	free(*out);
	*out = buf;
	return 0;
}

/* An encrypted key would make OpenSSL prompt on the terminal: refuse instead. */
static int config__no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

/* Reads both files and checks them with OpenSSL, so that a wrong file is
 * named here, at start, rather than failing every handshake later. */
static int config__check_tls(tn_config *cfg, tn_error *err)
{
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	BIO *bio = NULL;
	int rc;

	if ((rc = config__read_pem("tls-cert", cfg->tls_cert, &cfg->tls_cert_pem, err)) ||
	    (rc = config__read_pem("tls-key", cfg->tls_key, &cfg->tls_key_pem, err)))
		return rc;
	bio = BIO_new_mem_buf(cfg->tls_cert_pem, -1);
	cert = bio ? PEM_read_bio_X509(bio, NULL, config__no_passphrase, NULL) : NULL;
	BIO_free(bio);
	if (!cert) {
		rc = tn_err(err, TN_EINVAL, "--tls-cert: %s holds no PEM certificate", cfg->tls_cert);
		goto done;
	}
	bio = BIO_new_mem_buf(cfg->tls_key_pem, -1);
	key = bio ? PEM_read_bio_PrivateKey(bio, NULL, config__no_passphrase, NULL) : NULL;
	BIO_free(bio);
	if (!key) {
		rc = tn_err(err, TN_EINVAL, "--tls-key: %s holds no PEM private key (or an encrypted one, "
			    "which is not supported)", cfg->tls_key);
		goto done;
	}
	if (X509_check_private_key(cert, key) != 1) {
		rc = tn_err(err, TN_EINVAL, "--tls-key: the key in %s does not match the certificate in %s",
			    cfg->tls_key, cfg->tls_cert);
		goto done;
	}
	rc = 0;
done:
	ERR_clear_error();
	X509_free(cert);
	EVP_PKEY_free(key);
	return rc;
}

void config_usage(FILE *out)
{
	fprintf(out,
		"Usage: tenderd [OPTION]...\n"
		"Tender fleet server: holds device WebSockets, runs their agents, answers the HTTP API.\n"
		"Runs in the foreground, logs to stderr, stops cleanly on SIGTERM or SIGINT.\n\n"
		"  --config FILE              read settings from FILE ('name = value' lines, names as below);\n"
		"                             the command line overrides it\n");
	for (size_t i = 0; i < TN_ARRAY_LEN(config__opts); i++) {
		const struct opt *o = &config__opts[i];
		char left[64];
		snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
		fprintf(out, "  %-26s %s\n", left, o->help);
	}
	fprintf(out, "  --help                     this text\n"
		     "  --version                  print the version\n\n"
		     "The chosen ports are printed on stderr as 'device endpoint listening on PORT'\n"
		     "and 'http api listening on PORT'.\n");
}

int config_parse_args(tn_config *cfg, int argc, char **argv, tn_error *err)
{
	int rc;

	/* A config file first, so that the command line overrides it. */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0) {
			if (i + 1 >= argc)
				return tn_err(err, TN_EINVAL, "--config needs a FILE");
			if ((rc = config__load_file(cfg, argv[i + 1], err)))
				return rc;
		} else if (strncmp(argv[i], "--config=", 9) == 0) {
			if ((rc = config__load_file(cfg, argv[i] + 9, err)))
				return rc;
		}
	}
	for (int i = 1; i < argc; i++) {
		char *arg = argv[i];
		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			config_usage(stdout);
			return 1;
		}
		if (strcmp(arg, "--version") == 0) {
			printf("tenderd %s\n", TN_VERSION);
			return 1;
		}
		if (strncmp(arg, "--", 2) != 0)
			return tn_err(err, TN_EINVAL, "unexpected argument '%s' (see --help)", arg);
		char name[64];
		const char *val = NULL;
		const char *eq = strchr(arg + 2, '=');
		size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
		if (len >= sizeof name)
			return tn_err(err, TN_EINVAL, "unknown option '%s' (see --help)", arg);
		memcpy(name, arg + 2, len);
		name[len] = '\0';
		if (strcmp(name, "config") == 0) {
			if (!eq)
				i++;
			continue;
		}
		const struct opt *o = config__find(name);
		if (!o)
			return tn_err(err, TN_EINVAL, "unknown option '--%s' (see --help)", name);
		if (eq)
			val = eq + 1;
		else if (o->kind != OPT_BOOL) {
			if (i + 1 >= argc)
				return tn_err(err, TN_EINVAL, "--%s needs a value", name);
			val = argv[++i];
		}
		char origin[80];
		snprintf(origin, sizeof origin, "option --%s", name);
		if ((rc = config__set(cfg, o, val, origin, err)))
			return rc;
	}
	if (!cfg->tls_cert != !cfg->tls_key)
		return tn_err(err, TN_EINVAL, "--tls-cert and --tls-key go together: %s given without %s",
			      cfg->tls_cert ? "--tls-cert" : "--tls-key", cfg->tls_cert ? "--tls-key" : "--tls-cert");
	if (cfg->tls_cert && (rc = config__check_tls(cfg, err)))
		return rc;
	if (cfg->ping_interval == 0)
		cfg->ping_interval = cfg->idle_timeout / 2 > 20 ? 20 : cfg->idle_timeout / 2;
	if (cfg->ping_interval >= cfg->idle_timeout)
		return tn_err(err, TN_EINVAL, "--ping-interval (%d) must be less than --idle-timeout (%d)",
			      cfg->ping_interval, cfg->idle_timeout);
	return 0;
}

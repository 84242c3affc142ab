/* server/daemon.c -- start and stop tenderd's parts in order (see daemon.h). */
#define _GNU_SOURCE
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "auth.h"
#include "device.h"
#include "log.h"
#include "bus.h"
#include "enroll.h"
#include "flashtable.h"
#include "logstream.h"
#include "registry.h"
#include "scheduler.h"
#include "store.h"
#include "supervisor.h"

struct tenderd {
	bus *bus;
	logstreams *streams;
	store *st;
	registry *reg;
	scheduler *sched;
	supervisor *sup;
	enroller *enroll;
	device_loop *dev;
	api *http;
	char *firmware_dir;
};

static int daemon__mkdirs(const char *dir, tn_error *err)
{
	char *copy = strdup(dir);
	if (!copy)
		return tn_err(err, TN_ENOMEM, "out of memory");
	for (char *p = copy + 1; ; p++) {
		if (*p == '/' || *p == '\0') {
			char saved = *p;
			*p = '\0';
			if (mkdir(copy, 0700) != 0 && errno != EEXIST) {
				int e = errno;
				free(copy);
				return tn_err(err, TN_EIO, "cannot create the data dir %s: %s", dir, strerror(e));
			}
			*p = saved;
			if (!saved)
				break;
		}
	}
	free(copy);
	return 0;
}

static int daemon__read_token(const char *path, char *buf, size_t cap)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, cap - 1, f);
	fclose(f);
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return n > 0 ? 0 : -1;
}

int daemon_admin_token(store *st, const char *path, int *created, tn_error *err)
{
	char token[300], hash[AUTH_HASH_HEX];
	int rc;

	*created = 0;
	if (daemon__read_token(path, token, sizeof token) == 0) {
		auth_hash_hex(token, strlen(token), hash);
		return store_token_add(st, hash, "admin", "admin token file", err);
	}
	if (access(path, F_OK) == 0)
		return tn_err(err, TN_EINVAL, "the admin token file %s is empty or unreadable", path);
	int count = store_token_count(st);
	if (count < 0)
		return tn_err(err, TN_EIO, "cannot read the tokens");
	if (count > 0) {
		log_warn("the admin token file %s is missing; the tokens already stored still work "
			 "(write a new token into that file and restart to add it)", path);
		return 0;
	}
	if ((rc = auth_random_secret("tdt_", token)))
		return tn_err(err, rc, "no randomness available for a token");
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return tn_err(err, TN_EIO, "cannot write the admin token to %s: %s", path, strerror(errno));
	size_t len = strlen(token);
	token[len] = '\n';
	ssize_t w = write(fd, token, len + 1);
	token[len] = '\0';
	if (w != (ssize_t)len + 1 || fsync(fd) != 0) {
		close(fd);
		unlink(path);
		return tn_err(err, TN_EIO, "cannot write the admin token to %s", path);
	}
	close(fd);
	auth_hash_hex(token, len, hash);
	if ((rc = store_token_add(st, hash, "admin", "generated admin token", err))) {
		unlink(path);
		return rc;
	}
	*created = 1;
	return 0;
}

/* There is no reload: say early when the certificate needs replacing. */
static void daemon__log_cert_expiry(const tn_config *cfg)
{
	BIO *bio = BIO_new_mem_buf(cfg->tls_cert_pem, -1);
	X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
	int days = 0, secs = 0;

	if (cert && ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(cert))) {
		if (days < 0 || secs < 0)
			log_warn("the TLS certificate %s has expired: clients that check will refuse it",
				 cfg->tls_cert);
		else if (days < 30)
			log_warn("the TLS certificate %s expires in %d days: replace it and restart",
				 cfg->tls_cert, days);
		else
			log_info("the TLS certificate %s expires in %d days", cfg->tls_cert, days);
	}
	X509_free(cert);
	BIO_free(bio);
}

int daemon_start(tenderd **out, const tn_config *cfg, tn_error *err)
{
	tenderd *t = calloc(1, sizeof *t);
	char *token_path = NULL;
	int rc, created = 0;

	if (!t)
		return tn_err(err, TN_ENOMEM, "out of memory");
	store_options so = {
		.batch_max = cfg->batch_max, .sync_full = cfg->sync_full,
		.retention_age_ms = cfg->retention_seconds ? (int64_t)cfg->retention_seconds * 1000
							   : (int64_t)cfg->retention_days * 86400 * 1000,
		.retention_count = cfg->retention_count,
		.max_queue_bytes = (size_t)cfg->store_queue,
	};
	bus_options bo = { .max_queue = (size_t)cfg->stream_queue };
	if ((rc = daemon__mkdirs(cfg->data_dir, err)) || (rc = bus_new(&t->bus, &bo)) ||
	    (rc = store_open(&t->st, cfg->data_dir, &so, err)))
		goto fail;
	store_set_bus(t->st, t->bus);
	logstreams_options lo = {
		.max_streams = cfg->max_streams, .max_per_owner = cfg->max_streams_per_token,
		.open_timeout_ms = (int64_t)cfg->stream_open_timeout * 1000,
	};
	if ((rc = logstreams_new(&t->streams, t->bus, t->st, &lo))) {
		tn_err(err, rc, "out of memory");
		goto fail;
	}
	if (cfg->admin_token_file)
		token_path = strdup(cfg->admin_token_file);
	else if (asprintf(&token_path, "%s/admin.token", cfg->data_dir) < 0)
		token_path = NULL;
	if (!token_path) {
		rc = tn_err(err, TN_ENOMEM, "out of memory");
		goto fail;
	}
	if ((rc = daemon_admin_token(t->st, token_path, &created, err)))
		goto fail;
	if (created)
		log_info("admin token written to %s", token_path);
	else
		log_info("admin token file: %s", token_path);
	if ((rc = registry_open(&t->reg, t->st, err)) || (rc = flashtable_seed(t->st, err)))
		goto fail;
	if (asprintf(&t->firmware_dir, "%s/firmware", cfg->data_dir) < 0) {
		t->firmware_dir = NULL;
		rc = tn_err(err, TN_ENOMEM, "out of memory");
		goto fail;
	}
	sched_options sopt = { .firmware_dir = t->firmware_dir };
	if ((rc = sched_start(&t->sched, &sopt, t->st, err)))
		goto fail;
	sup_options supopt = {
		.workers = cfg->agent_workers,
		.limits = { .memory = (size_t)cfg->agent_memory, .instructions = (uint64_t)cfg->agent_budget,
			    .cpu_ms = (uint32_t)cfg->agent_cpu_ms },
		.log_rate = cfg->agent_log_rate, .offline_queue = cfg->agent_offline_queue,
	};
	if ((rc = sup_start(&t->sup, &supopt, t->st, err)) || (rc = enroll_start(&t->enroll, t->st, t->reg, err)))
		goto fail;

	device_loop_options dopt = {
		.bind = cfg->bind, .port = cfg->device_port, .ping_interval = cfg->ping_interval,
		.idle_timeout = cfg->idle_timeout, .hello_timeout = cfg->hello_timeout,
		.max_frame = cfg->max_frame, .sched = t->sched, .sup = t->sup, .log_rate = cfg->log_rate,
		.enroll = t->enroll, .max_conns_per_ip = cfg->max_conns_per_ip,
		.max_out_bytes = (size_t)cfg->device_send_queue,
		.tls_cert = cfg->tls_cert, .tls_key = cfg->tls_key,
	};
	if ((rc = device_loop_start(&t->dev, &dopt, t->st, t->reg, err)))
		goto fail;
	sched_set_device_loop(t->sched, t->dev);
	sup_set_device_loop(t->sup, t->dev);
	const char *web = cfg->web_dir;
	if (!web)
		web = access("./web/index.html", R_OK) == 0 ? "./web" : TN_DATADIR "/web";
	if (access(web, R_OK) != 0) {
		log_warn("no dashboard: %s is not readable (--web-dir)", web);
		web = NULL;
	}
	api_options aopt = {
		.bind = cfg->bind, .port = cfg->http_port, .threads = cfg->http_threads,
		.max_conns = cfg->http_max_conns, .conn_timeout = cfg->http_timeout,
		.max_body = cfg->max_body, .max_firmware = cfg->max_firmware,
		.firmware_dir = t->firmware_dir, .web_dir = web,
		.max_conns_per_ip = cfg->max_conns_per_ip,
		.tls_cert_pem = cfg->tls_cert_pem, .tls_key_pem = cfg->tls_key_pem,
		.auth_fail_limit = cfg->auth_fail_limit, .auth_fail_window = cfg->auth_fail_window,
	};
	api_deps deps = { .st = t->st, .reg = t->reg, .dev = t->dev, .sched = t->sched, .sup = t->sup,
			  .streams = t->streams };
	if ((rc = api_start(&t->http, &aopt, &deps, err)))
		goto fail;

	/* Tests and scripts read these two lines to find the ports. */
	log_info("data dir %s (schema version %d)", cfg->data_dir, store_schema_version(t->st));
	log_info("device endpoint listening on %d", device_loop_port(t->dev));
	log_info("http api listening on %d", api_port(t->http));
	const char *sfx = cfg->tls_cert ? "s" : "";  /* wss, https */
	if (cfg->tls_cert) {
		log_info("TLS on both ports (device endpoint %d: wss, http api %d: https) with %s; "
			 "a restart picks up a renewed certificate", device_loop_port(t->dev),
			 api_port(t->http), cfg->tls_cert);
		daemon__log_cert_expiry(cfg);
	} else {
		log_info("no TLS: both ports speak plain text (see --tls-cert)");
	}
	log_info("devices connect to ws%s://%s:%d/v1/device; the API is at http%s://%s:%d/v1/",
		 sfx, cfg->bind, device_loop_port(t->dev), sfx, cfg->bind, api_port(t->http));
	if (web)
		log_info("dashboard at http%s://%s:%d/ (files from %s)", sfx, cfg->bind, api_port(t->http), web);
	free(token_path);
	*out = t;
	return 0;
fail:
	free(token_path);
	daemon_stop(t);
	return rc;
}

void daemon_stop(tenderd *t)
{
	if (!t)
		return;
	api_stop(t->http);
	/* The scheduler stops first (it sends through the device loop); the
	 * device loop's last closes are then dropped by it, not lost: the store
	 * still records every "Device disconnected". */
	sched_stop(t->sched);
	sup_stop(t->sup);  /* every agent: "Agent stopped: shutdown." */
	enroll_stop(t->enroll);
	device_loop_stop(t->dev);
	sched_free(t->sched);
	sup_free(t->sup);
	registry_free(t->reg);
	logstreams_close(t->streams); /* if the API never started */
	store_close(t->st);
	logstreams_free(t->streams);
	bus_free(t->bus);
	free(t->firmware_dir);
	free(t);
}

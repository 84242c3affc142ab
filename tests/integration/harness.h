/* tests/integration/harness.h -- what every integration test needs: start the
 * real tenderd on free ports in a temporary data dir, talk HTTP to it with
 * libcurl, run tender-sim, tenderctl and the node WebSocket client, and wait
 * (bounded) for things to happen.  Like Redis' start_server and Mosquitto's
 * test/broker helpers.  Binaries are found through $TN_BUILDDIR. */
#ifndef TN_HARNESS_H
#define TN_HARNESS_H

#include <check.h>
#include <jansson.h>
#include <sys/types.h>

typedef struct th_server {
	pid_t pid;
	char dir[256];       /* data dir */
	char log[300];       /* tenderd's stderr */
	char extra[512];     /* extra command-line options */
	int http_port, device_port;
	char token[128];     /* the admin token */
	char ws_url[128];    /* ws://127.0.0.1:PORT/v1/device (wss:// with --tls-cert) */
	char http_url[128];  /* http://127.0.0.1:PORT (https:// with --tls-cert) */
	char cacert[300];    /* set by the test: th_http trusts this CA file */
} th_server;

/* Starts tenderd with a new data dir and `extra` options (may be NULL);
 * fails the test if it is not listening within 15 s (60 s with
 * $TENDERD_WRAPPER, a command that prefixes tenderd's, e.g. valgrind). */
void th_server_start(th_server *s, const char *extra);

/* Every tenderd started after this runs with RLIMIT_NOFILE n (soft and
 * hard; 0: inherited), set in the child before exec. */
void th_set_daemon_nofile(long n);

/* Starts it again on the same data dir (after a stop or a kill). */
void th_server_restart(th_server *s);

/* Starts it again on the same data dir and the same ports (devices that
 * reconnect find it where it was). */
void th_server_restart_same_ports(th_server *s);

/* SIGTERM and wait (15 s at most, 60 with $TENDERD_WRAPPER); returns the exit status, or -1. */
int th_server_stop(th_server *s);

/* SIGKILL and reap. */
void th_server_kill9(th_server *s);

/* Stops it if running and removes the data dir. */
void th_server_cleanup(th_server *s);

typedef struct th_resp {
	long status;
	char *body;
	json_t *json;        /* the parsed body, or NULL */
	char content_type[128];
	char allow[128];
} th_resp;

/* An HTTP request.  token NULL: the admin token; "": no Authorization.
 * ctype NULL with a body: application/json. */
void th_http(th_server *s, const char *method, const char *path, const char *ctype,
	     const char *body, const char *token, th_resp *out);
void th_resp_free(th_resp *r);

/* GET path as admin and return the parsed JSON (owned), asserting `status`. */
json_t *th_get_json(th_server *s, const char *path, long status);

/* Uploads a firmware image (multipart/form-data, as operators do); returns
 * the response (the caller checks the status). */
void th_upload_firmware(th_server *s, const char *metadata_json, const void *image, size_t len,
			th_resp *out);

/* Registers a device; returns its secret (owned: free()). */
char *th_register(th_server *s, const char *id, const char *group);

/* Waits until the device's `online` is as given.  Returns 0, or -1 on timeout. */
int th_wait_online(th_server *s, const char *id, int online, int timeout_ms);

/* Waits until the device's log has an event with exactly this msg (and type,
 * if not NULL).  Returns the event's id, or -1 on timeout. */
long long th_wait_event(th_server *s, const char *id, const char *type, const char *msg,
			int timeout_ms);

/* The number of events with this msg in the device's (whole) log. */
int th_count_events(th_server *s, const char *id, const char *msg);

/* A metric's value from /metrics (name with labels, e.g.
 * tender_errors_total{kind="bad_json"}), or -1. */
long long th_metric(th_server *s, const char *name);

/* Path of a built program ("tenderd", "tender-sim", "tenderctl"). */
const char *th_bin(const char *name);
/* Path of a source file (relative to the source tree). */
const char *th_src(const char *rel);

/* Starts argv in the background with stdout to out_path (stderr to
 * out_path.err); returns the pid. */
pid_t th_spawn(char *const argv[], const char *out_path);

/* Runs argv to completion (timeout_s at most, then SIGKILL), capturing
 * stdout into *out (owned, may be NULL).  Returns the exit status, or -1. */
int th_run(char *const argv[], char **out, int timeout_s);

/* Waits for a process to exit (timeout_ms); returns its exit status, or -1. */
int th_wait_pid(pid_t pid, int timeout_ms);

/* Waits until the file contains needle.  0, or -1 on timeout. */
int th_wait_file(const char *path, const char *needle, int timeout_ms);

/* Reads a whole file (owned), or NULL. */
char *th_read_file(const char *path);

/* Runs these tests as one suite (each with this timeout, and a fixture if
 * setup is not NULL); returns the test program's exit status.  TN_ONLY=WORD
 * in the environment keeps only the tests whose name holds WORD. */
int th_run_tests(const char *suite, int timeout_s, const TTest *const *tests, size_t n,
		 void (*setup)(void), void (*teardown)(void));

/* Whether a test may skip what this machine cannot do (no chromium, no
 * root for a tmpfs).  The README's test command sets TENDER_TEST_STRICT=1,
 * where it installs everything and runs as root: there a skip would hide a
 * check that never ran, so it is a failure. */
int th_may_skip(void);

/* A temp file path unique to this process (static buffer per call slot). */
const char *th_tmp(th_server *s, const char *name);

#endif

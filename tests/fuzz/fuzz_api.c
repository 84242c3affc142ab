/* tests/fuzz/fuzz_api.c -- libFuzzer target for the HTTP API's request
 * bodies: the whole daemon runs in this process (store in a temporary data
 * dir) and each input is sent over loopback, as an admin, to one of the
 * routes that take a body: the first byte picks the route, the rest is the
 * body.  Every answer must be a well-formed HTTP response with a JSON body
 * (or none), never a 500, and the daemon must keep answering (one
 * kept-alive connection, as a busy client would use).  Built by
 * tools/fuzz.sh; the corpus (tests/fuzz/corpus/api) is replayed in `make
 * check` by tests/unit/test_fuzz_corpus.c. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_TOKEN "tda_fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz"

static const struct {
	const char *method, *path, *ctype;
} routes[] = {
	{ "POST", "/v1/devices", "application/json" },
	{ "PATCH", "/v1/devices/30000c2a690c77c5", "application/json" },
	{ "POST", "/v1/rollouts", "application/json" },
	{ "POST", "/v1/enrollment-tokens", "application/json" },
	{ "POST", "/v1/tokens", "application/json" },
	{ "POST", "/v1/logstreams", "application/json" },
	{ "POST", "/v1/flash-parts/import", "application/json" },
	{ "PUT", "/v1/flash-parts/ef4018", "application/json" },
	{ "PUT", "/v1/groups/fuzz/agent", "text/plain" },
	{ "POST", "/v1/firmware", "multipart/form-data; boundary=XyZ" },
	{ "POST", "/v1/flash-parts/import", "text/csv" },
};

static tenderd *fuzz_daemon;
static tn_config fuzz_cfg;
static int fuzz_port;
static char fuzz_dir[64];
static int fuzz_fd = -1;   /* the kept-alive connection */

static void fuzz_stop(void)
{
	if (fuzz_fd >= 0)
		close(fuzz_fd);
	daemon_stop(fuzz_daemon);
	config_free(&fuzz_cfg);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", fuzz_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "fuzz_api: cannot remove %s\n", fuzz_dir);
}

/* A free loopback port (the daemon binds it a moment later). */
static int fuzz_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof a;
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || getsockname(fd, (struct sockaddr *)&a, &len))
		abort();
	close(fd);
	return ntohs(a.sin_port);
}

static size_t fuzz_exchange(const char *head, size_t head_len, const uint8_t *body, size_t body_len,
			    char *resp, size_t cap);

static void fuzz_start(void)
{
	tn_error err = { 0 };
	snprintf(fuzz_dir, sizeof fuzz_dir, "/tmp/tender-fuzz-api-XXXXXX");
	if (!mkdtemp(fuzz_dir))
		abort();
	char path[128];
	snprintf(path, sizeof path, "%s/admin.token", fuzz_dir);
	FILE *f = fopen(path, "w");
	if (!f)
		abort();
	fputs(FUZZ_TOKEN "\n", f);
	fclose(f);
	chmod(path, 0600);
	log_level = LOG_ERR;
	config_defaults(&fuzz_cfg);
	free(fuzz_cfg.data_dir);
	fuzz_cfg.data_dir = strdup(fuzz_dir);
	fuzz_cfg.device_port = 0;
	fuzz_cfg.http_port = fuzz_port = fuzz_free_port();
	fuzz_cfg.agent_workers = 1;
	fuzz_cfg.auth_fail_limit = 0;
	if (daemon_start(&fuzz_daemon, &fuzz_cfg, &err)) {
		fprintf(stderr, "fuzz_api: cannot start the daemon: %s\n", err.msg);
		abort();
	}
	atexit(fuzz_stop);
	/* A device for the PATCH route to reach past its 404. */
	static const char reg[] = "{\"id\":\"30000c2a690c77c5\",\"group\":\"fuzz\"}";
	char head[512], resp[4096];
	int hl = snprintf(head, sizeof head,
			  "POST /v1/devices HTTP/1.1\r\nHost: fuzz\r\n"
			  "Authorization: Bearer " FUZZ_TOKEN "\r\nContent-Type: application/json\r\n"
			  "Content-Length: %zu\r\n\r\n", sizeof reg - 1);
	fuzz_exchange(head, (size_t)hl, (const uint8_t *)reg, sizeof reg - 1, resp, sizeof resp);
	if (!strstr(resp, "201 Created")) {
		fprintf(stderr, "fuzz_api: cannot register the device: %.300s\n", resp);
		abort();
	}
}

static int fuzz_connect(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)fuzz_port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
		perror("fuzz_api: the daemon does not accept connections any more");
		abort();
	}
	struct timeval tv = { .tv_sec = 30 };
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	/* head and body go in two writes: no waiting for a delayed ACK */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

/* Reads one response (headers, then Content-Length bytes).  0 if the
 * connection closed before any byte. */
static size_t fuzz_read_response(int fd, char *resp, size_t cap)
{
	size_t n = 0, need = 0;
	ssize_t got;
	char *end = NULL;
	resp[0] = '\0';
	while (n + 1 < cap && (!end || n < need)) {
		if ((got = read(fd, resp + n, cap - 1 - n)) <= 0)
			break;
		n += (size_t)got;
		resp[n] = '\0';
		if (!end && (end = strstr(resp, "\r\n\r\n"))) {
			const char *cl = strcasestr(resp, "\r\nContent-Length:");
			need = (size_t)(end + 4 - resp) + (cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0);
		}
	}
	return n;
}

/* Sends one request on the kept-alive connection (a new one if the server
 * closed it: after an error it may) and reads the answer.  One connection
 * for the whole run: a connection per input would run out of ports. */
static size_t fuzz_exchange(const char *head, size_t head_len, const uint8_t *body, size_t body_len,
			    char *resp, size_t cap)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (fuzz_fd < 0)
			fuzz_fd = fuzz_connect();
		size_t n = 0;
		if (send(fuzz_fd, head, head_len, MSG_NOSIGNAL) == (ssize_t)head_len &&
		    (!body_len || send(fuzz_fd, body, body_len, MSG_NOSIGNAL) == (ssize_t)body_len))
			n = fuzz_read_response(fuzz_fd, resp, cap);
		if (n > 0 && !strcasestr(resp, "\r\nConnection: close"))
			return n;
		close(fuzz_fd);
		fuzz_fd = -1;
		if (n > 0)
			return n;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char resp[1 << 20];
	char head[512];

	if (!fuzz_daemon)
		fuzz_start();
	if (size < 1)
		return 0;
	size_t r = data[0] % (sizeof routes / sizeof routes[0]);
	const uint8_t *body = data + 1;
	size_t body_len = size - 1;
	int hl = snprintf(head, sizeof head,
			  "%s %s HTTP/1.1\r\nHost: fuzz\r\n"
			  "Authorization: Bearer " FUZZ_TOKEN "\r\nContent-Type: %s\r\n"
			  "Content-Length: %zu\r\n\r\n",
			  routes[r].method, routes[r].path, routes[r].ctype, body_len);
	size_t n = fuzz_exchange(head, (size_t)hl, body, body_len, resp, sizeof resp);

	int status = 0;
	if (n < 12 || sscanf(resp, "HTTP/1.1 %d", &status) != 1) {
		fprintf(stderr, "fuzz_api: %s %s: no HTTP answer: %.200s\n", routes[r].method, routes[r].path, resp);
		abort();
	}
	if (status >= 500) {
		fprintf(stderr, "fuzz_api: %s %s answered %d: %.500s\n", routes[r].method, routes[r].path, status,
			resp);
		abort();
	}
	char *payload = strstr(resp, "\r\n\r\n");
	if (status != 204 && payload && payload[4]) {
		json_error_t e;
		json_t *j = json_loads(payload + 4, 0, &e);
		if (!j) {
			fprintf(stderr, "fuzz_api: %s %s answered %d with a body that is not JSON: %.300s\n",
				routes[r].method, routes[r].path, status, payload + 4);
			abort();
		}
		json_decref(j);
	}
	return 0;
}

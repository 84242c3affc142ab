/* tests/fuzz/fuzz_api.c -- libFuzzer target for the HTTP API: the whole
 * daemon runs in this process (store in a temporary data dir) and each input
 * is sent over loopback as one request, on one kept-alive connection (as a
 * busy client would use).  An input is one of two forms, told by its first
 * byte:
 *
 *   below 0x80 (body form): byte % 11 picks one of the routes that take a
 *     body, sent as an admin; the rest is the body.
 *   0x80 and up (request form): the bits below 0x80 pick the token (bits 0-1:
 *     admin, a wrong one, a viewer's, none), the Content-Type (bits 2-4) and
 *     whether to ask for an event stream (bit 5); then a line "METHOD TARGET"
 *     (TARGET: path and query, %XX escapes as they are, so a path may decode
 *     to any bytes, invalid UTF-8 too; a line without a space is a GET of it);
 *     the rest is the body.  Bytes that would end the request line (CR, LF,
 *     space, tab, NUL) are sent %XX-escaped; a method's are replaced by '_'.
 *
 * Every answer must be a well-formed HTTP response: JSON when it says so,
 * never a 5xx but 503 (a state, e.g. an agent that cannot move now), and
 * anything not JSON only from libmicrohttpd's own refusals or a 2xx of a
 * non-API resource.  After each input the newest page of the audit trail
 * (GET /v1/audit?limit=1) must answer 200 with one entry: a request recorded
 * in a way the trail cannot show is a finding.  Built by tools/fuzz.sh; the
 * corpus (tests/fuzz/corpus/api) is replayed in `make check` by
 * tests/unit/test_fuzz_corpus.c. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <jansson.h>
#include <limits.h>
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
#include "tokens.h"

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

/* The request form's Content-Types (NULL: none sent). */
static const char *const ctypes[8] = {
	"application/json", "text/plain", "multipart/form-data; boundary=XyZ", "text/csv",
	"application/x-www-form-urlencoded", "application/json; charset=utf-8", "text/plain; charset=latin1", NULL,
};

enum { TOKEN_ADMIN, TOKEN_WRONG, TOKEN_VIEWER, TOKEN_NONE };

static tenderd *fuzz_daemon;
static tn_config fuzz_cfg;
static int fuzz_port;
static char fuzz_dir[64];
static int fuzz_fd = -1;   /* the kept-alive connection */
static char fuzz_viewer[128];

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
			    int head_only, char *resp, size_t cap);

/* An admin's POST during start-up; aborts unless it answers 201.  Returns the body. */
static const char *fuzz_setup_post(const char *path, const char *body)
{
	static char resp[4096];
	char head[512];
	int hl = snprintf(head, sizeof head,
			  "POST %s HTTP/1.1\r\nHost: fuzz\r\n"
			  "Authorization: Bearer " FUZZ_TOKEN "\r\nContent-Type: application/json\r\n"
			  "Content-Length: %zu\r\n\r\n", path, strlen(body));
	fuzz_exchange(head, (size_t)hl, (const uint8_t *)body, strlen(body), 0, resp, sizeof resp);
	const char *payload = strstr(resp, "\r\n\r\n");
	if (!strstr(resp, "201 Created") || !payload) {
		fprintf(stderr, "fuzz_api: POST %s during start-up: %.300s\n", path, resp);
		abort();
	}
	return payload + 4;
}

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
	/* every refusal its own entry, for the audit check after each input */
	audit_refusal_limits(INT_MAX, INT_MAX);
	if (daemon_start(&fuzz_daemon, &fuzz_cfg, &err)) {
		fprintf(stderr, "fuzz_api: cannot start the daemon: %s\n", err.msg);
		abort();
	}
	atexit(fuzz_stop);
	/* A device for the PATCH route to reach past its 404, and a viewer's
	 * token for the request form's refusals. */
	fuzz_setup_post("/v1/devices", "{\"id\":\"30000c2a690c77c5\",\"group\":\"fuzz\"}");
	json_t *tok = json_loads(fuzz_setup_post("/v1/tokens", "{\"role\":\"viewer\",\"name\":\"fuzz viewer\"}"),
				 0, NULL);
	if (!json_is_string(json_object_get(tok, "token")))
		abort();
	snprintf(fuzz_viewer, sizeof fuzz_viewer, "%s", json_string_value(json_object_get(tok, "token")));
	json_decref(tok);
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

/* Reads one response: its headers, then Content-Length bytes unless
 * head_only (the answer to a HEAD).  An answer without a Content-Length (an
 * event stream) ends with its headers and sets *more: the connection still
 * carries its body.  0 if the connection closed before any byte. */
static size_t fuzz_read_response(int fd, int head_only, char *resp, size_t cap, int *more)
{
	size_t n = 0, need = 0;
	ssize_t got;
	char *end = NULL;
	resp[0] = '\0';
	*more = 0;
	while (n + 1 < cap && (!end || n < need)) {
		if ((got = read(fd, resp + n, cap - 1 - n)) <= 0)
			break;
		n += (size_t)got;
		resp[n] = '\0';
		if (!end && (end = strstr(resp, "\r\n\r\n"))) {
			const char *cl = strcasestr(resp, "\r\nContent-Length:");
			need = (size_t)(end + 4 - resp);
			if (cl && cl < end && !head_only)
				need += strtoul(cl + 17, NULL, 10);
			else if (!cl || cl > end)
				*more = 1;
		}
	}
	if (end && need < n)
		resp[need] = '\0';
	return n;
}

/* Sends one request on the kept-alive connection (a new one if the server
 * closed it: after an error it may) and reads the answer.  One connection
 * for the whole run: a connection per input would run out of ports. */
static size_t fuzz_exchange(const char *head, size_t head_len, const uint8_t *body, size_t body_len,
			    int head_only, char *resp, size_t cap)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (fuzz_fd < 0)
			fuzz_fd = fuzz_connect();
		size_t n = 0;
		int more = 0;
		if (send(fuzz_fd, head, head_len, MSG_NOSIGNAL) == (ssize_t)head_len &&
		    (!body_len || send(fuzz_fd, body, body_len, MSG_NOSIGNAL) == (ssize_t)body_len))
			n = fuzz_read_response(fuzz_fd, head_only, resp, cap, &more);
		if (n > 0 && !more && !strcasestr(resp, "\r\nConnection: close"))
			return n;
		close(fuzz_fd);
		fuzz_fd = -1;
		if (n > 0)
			return n;
	}
	return 0;
}

/* Appends the request target to *p (up to end), escaping what would end the
 * request line; the rest stays as the input has it, %XX escapes included. */
static void fuzz_put_target(char **p, const char *end, const uint8_t *t, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	if (!len || t[0] != '/')
		*(*p)++ = '/';
	for (size_t i = 0; i < len && *p + 3 < end; i++) {
		if (t[i] == '\r' || t[i] == '\n' || t[i] == ' ' || t[i] == '\t' || t[i] == '\0') {
			*(*p)++ = '%';
			*(*p)++ = hex[t[i] >> 4];
			*(*p)++ = hex[t[i] & 15];
		} else {
			*(*p)++ = (char)t[i];
		}
	}
}

/* Whether the target's path, %XX-decoded, contains `part` (anywhere: the
 * guard below must not miss a path the server reads as the same one). */
static int fuzz_path_has(const uint8_t *t, size_t len, const char *part)
{
	char dec[64];
	size_t n = 0;
	for (size_t i = 0; i < len && t[i] != '?' && n + 1 < sizeof dec; i++) {
		unsigned v;
		if (t[i] == '%' && i + 2 < len && sscanf((const char *)t + i + 1, "%2x", &v) == 1) {
			dec[n++] = (char)v;
			i += 2;
		} else {
			dec[n++] = (char)t[i];
		}
	}
	dec[n] = '\0';
	return strstr(dec, part) != NULL;
}

/* Builds the request form's head from data (first byte >= 0x80); its body is
 * what follows the line. */
static int fuzz_request_head(const uint8_t *data, size_t size, char *head, size_t cap, const uint8_t **body,
			     size_t *body_len, char *what, size_t what_cap, int *head_only)
{
	const uint8_t *line = data + 1, *nl = memchr(line, '\n', size - 1);
	size_t line_len = nl ? (size_t)(nl - line) : size - 1;
	const uint8_t *sp = memchr(line, ' ', line_len);
	char method[33] = "GET";
	const uint8_t *target = line;
	size_t target_len = line_len;

	if (sp) {
		size_t ml = (size_t)(sp - line) < sizeof method - 1 ? (size_t)(sp - line) : sizeof method - 1;
		for (size_t i = 0; i < ml; i++)
			method[i] = line[i] <= ' ' || line[i] == 0x7f ? '_' : (char)line[i];
		method[ml] = '\0';
		if (!ml)
			snprintf(method, sizeof method, "GET");
		target = sp + 1;
		target_len = line_len - (size_t)(sp + 1 - line);
	}
	/* Revoking tokens could lock the fuzzer out (it may have made another
	 * admin).  "v1/tokens/1" without its slash is the same path once
	 * fuzz_put_target adds it: a libFuzzer run found that way round a
	 * prefix check and revoked the fuzzer's own token. */
	if (strcmp(method, "DELETE") == 0 && fuzz_path_has(target, target_len, "tokens"))
		snprintf(method, sizeof method, "GET");
	*head_only = strcmp(method, "HEAD") == 0;
	*body = nl ? nl + 1 : data + size;
	*body_len = nl ? size - (size_t)(nl + 1 - data) : 0;

	char *p = head, *end = head + cap - 512;
	p += sprintf(p, "%s ", method);
	char *t0 = p;
	fuzz_put_target(&p, end, target, target_len);
	snprintf(what, what_cap, "%s %.*s", method, (int)(p - t0) < 300 ? (int)(p - t0) : 300, t0);
	p += sprintf(p, " HTTP/1.1\r\nHost: fuzz\r\n");
	int token = data[0] & 3;
	if (token != TOKEN_NONE)
		p += sprintf(p, "Authorization: Bearer %s\r\n",
			     token == TOKEN_ADMIN ? FUZZ_TOKEN : token == TOKEN_VIEWER ? fuzz_viewer
										 : "tdt_wrongwrongwrong");
	const char *ctype = ctypes[(data[0] >> 2) & 7];
	if (ctype)
		p += sprintf(p, "Content-Type: %s\r\n", ctype);
	if (data[0] & 0x20)
		p += sprintf(p, "Accept: text/event-stream\r\n");
	p += sprintf(p, "Content-Length: %zu\r\n\r\n", *body_len);
	return (int)(p - head);
}

/* The answer's checks (see the top of the file). */
static void fuzz_check_answer(const char *what, const char *resp, size_t n)
{
	int status = 0;
	if (n < 12 || sscanf(resp, "HTTP/1.%*[01] %d", &status) != 1) {
		fprintf(stderr, "fuzz_api: %s: no HTTP answer: %.200s\n", what, resp);
		abort();
	}
	if (status >= 500 && status != 503) {
		fprintf(stderr, "fuzz_api: %s answered %d: %.500s\n", what, status, resp);
		abort();
	}
	const char *payload = strstr(resp, "\r\n\r\n"), *ct = strcasestr(resp, "\r\nContent-Type:");
	int is_json = ct && payload && ct < payload && strncasecmp(ct + 15 + strspn(ct + 15, " "),
								   "application/json", 16) == 0;
	if (is_json && status != 204 && payload[4]) {
		json_error_t e;
		json_t *j = json_loads(payload + 4, 0, &e);
		if (!j) {
			fprintf(stderr, "fuzz_api: %s answered %d with a body that is not JSON: %.300s\n", what,
				status, payload + 4);
			abort();
		}
		json_decref(j);
	} else if (!is_json && status >= 300 && status != 400 && status != 413 && status != 414 &&
		   status != 431) {
		fprintf(stderr, "fuzz_api: %s answered %d without JSON: %.300s\n", what, status, resp);
		abort();
	}
}

/* The newest page of the audit trail answers, with its entry. */
static void fuzz_check_audit(const char *what)
{
	static char resp[1 << 16];
	static const char head[] = "GET /v1/audit?limit=1 HTTP/1.1\r\nHost: fuzz\r\n"
				   "Authorization: Bearer " FUZZ_TOKEN "\r\n\r\n";
	size_t n = fuzz_exchange(head, sizeof head - 1, NULL, 0, 0, resp, sizeof resp);
	const char *payload = strstr(resp, "\r\n\r\n");
	json_t *j = payload ? json_loads(payload + 4, 0, NULL) : NULL;
	if (n < 12 || strncmp(resp, "HTTP/1.1 200", 12) != 0 || json_array_size(json_object_get(j, "entries")) != 1) {
		fprintf(stderr, "fuzz_api: after %s, GET /v1/audit?limit=1 answered: %.500s\n", what, resp);
		abort();
	}
	json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char resp[1 << 20];
	static char head[8192];
	char what[400];
	const uint8_t *body;
	size_t body_len;
	int hl, head_only = 0;

	if (!fuzz_daemon)
		fuzz_start();
	if (size < 1)
		return 0;
	if (data[0] < 0x80) {
		size_t r = data[0] % (sizeof routes / sizeof routes[0]);
		body = data + 1;
		body_len = size - 1;
		snprintf(what, sizeof what, "%s %s", routes[r].method, routes[r].path);
		hl = snprintf(head, sizeof head,
			      "%s %s HTTP/1.1\r\nHost: fuzz\r\n"
			      "Authorization: Bearer " FUZZ_TOKEN "\r\nContent-Type: %s\r\n"
			      "Content-Length: %zu\r\n\r\n",
			      routes[r].method, routes[r].path, routes[r].ctype, body_len);
	} else {
		hl = fuzz_request_head(data, size, head, sizeof head, &body, &body_len, what, sizeof what,
				       &head_only);
	}
	size_t n = fuzz_exchange(head, (size_t)hl, body, body_len, head_only, resp, sizeof resp);
	fuzz_check_answer(what, resp, n);
	fuzz_check_audit(what);
	return 0;
}

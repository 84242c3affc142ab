/* tests/integration/test_03_errors.c -- every refused device frame and HTTP
 * request gets its documented error, is counted in /metrics, and the server
 * keeps serving a device that stays connected throughout.  The second suite
 * starts a server of its own per test, with its limits set low: each limit
 * is hit, answered with its documented error and counted. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define GOOD "00000000000000aa"
#define BAD "00000000000000bb"

static th_server s;
static pid_t good_sim;
static int good_seq;

/* A device that stays connected through every test. */
static void setup(void)
{
	th_server_start(&s, "--hello-timeout 2 --max-frame 4096");
	char *secret = th_register(&s, GOOD, NULL);
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", GOOD,
			       "--secret", secret, "--msg-rate", "5", NULL };
	good_sim = th_spawn(argv, th_tmp(&s, "good.out"));
	ck_assert_int_eq(th_wait_file(th_tmp(&s, "good.out"), "welcome " GOOD, 10000), 0);
	free(secret);
	free(th_register(&s, BAD, NULL));
}

static void teardown(void)
{
	kill(good_sim, SIGKILL);
	waitpid(good_sim, NULL, 0);
	th_server_cleanup(&s);
}

/* The good device is still served: a log line sent now is stored. */
static void assert_good_device_still_served(void)
{
	char line[64], frame[128], *out = NULL;
	snprintf(line, sizeof line, "still here %d", ++good_seq);
	snprintf(frame, sizeof frame, "{\"type\":\"log\",\"msg\":\"%s\"}", line);
	/* A second connection would replace the sim's; check via the API that the
	 * sim is online and a fresh device can connect and log. */
	ck_assert_int_eq(th_wait_online(&s, GOOD, 1, 2000), 0);
	char id[17];
	snprintf(id, sizeof id, "00000000000001%02x", (unsigned char)good_seq);
	char *secret = th_register(&s, id, NULL);
	char *const argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"),
			       "connect", s.ws_url, "hello", id, secret, "expect", "welcome",
			       "send", frame, "wait", "100", "close", NULL };
	ck_assert_int_eq(th_run(argv, &out, 30), 0);
	free(out);
	free(secret);
	ck_assert_int_ge(th_wait_event(&s, id, "device", line, 5000), 1);
	char *sim_out = th_read_file(th_tmp(&s, "good.out"));
	ck_assert_ptr_nonnull(sim_out);
	ck_assert_msg(strstr(sim_out, "closed") == NULL, "the good device was closed: %s", sim_out);
	free(sim_out);
}

/* Runs the node client with these steps; returns its output (owned). */
static char *node(const char *const *steps)
{
	char *argv[32], *out = NULL;
	int n = 0;
	argv[n++] = "/usr/bin/node";
	argv[n++] = (char *)th_src("tests/integration/wsclient.js");
	argv[n++] = "connect";
	argv[n++] = s.ws_url;
	for (; *steps && n < 30; steps++)
		argv[n++] = (char *)*steps;
	argv[n] = NULL;
	th_run(argv, &out, 30);
	return out ? out : strdup("");
}

START_TEST(wrong_secret)
{
	const char *steps[] = { "hello", BAD, "tds_not_the_secret", "hold", NULL };
	char *out = node(steps);
	ck_assert_msg(strstr(out, "closed 1008 authentication failed") != NULL, "%s", out);
	free(out);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"auth_failed\"}"), 1);
	ck_assert_int_eq(th_count_events(&s, BAD, "Device connected"), 0);
	assert_good_device_still_served();
}
END_TEST

START_TEST(unknown_id)
{
	const char *steps[] = { "hello", "0123456789abcdef", "tds_whatever", "hold", NULL };
	char *out = node(steps);
	ck_assert_msg(strstr(out, "closed 1008 authentication failed") != NULL, "%s", out);
	free(out);
	ck_assert_int_eq(th_wait_file(s.log, "0123456789abcdef from 127.0.0.1: authentication failed "
				      "(unknown device)", 2000), 0);
	assert_good_device_still_served();
}
END_TEST

START_TEST(garbage_before_hello)
{
	const char *steps[] = { "send", "\x01\x02 not json at all", "hold", NULL };
	char *out = node(steps);
	ck_assert_msg(strstr(out, "closed 1008 hello required: invalid JSON") != NULL, "%s", out);
	free(out);
	const char *steps2[] = { "send", "{\"type\":\"log\",\"msg\":\"too early\"}", "hold", NULL };
	out = node(steps2);
	ck_assert_msg(strstr(out, "closed 1008 hello required: the first frame must be a hello") != NULL,
		      "%s", out);
	free(out);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"hello_required\"}"), 2);
	assert_good_device_still_served();
}
END_TEST

START_TEST(garbage_after_hello_gets_error_frames)
{
	char *secret = th_register(&s, "00000000000000cc", NULL);
	const char *steps[] = { "hello", "00000000000000cc", secret, "expect", "welcome",
				"send", "{not json", "expect", "error",
				"send", "{\"type\":\"teleport\"}", "expect", "error",
				"send", "{\"type\":\"log\"}", "expect", "error",
				"binary", "expect", "error",
				"send", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
				"expect", "error", "close", NULL };
	char *out = node(steps);
	ck_assert_msg(strstr(out, "\"code\":\"bad_json\"") != NULL, "%s", out);
	ck_assert_ptr_nonnull(strstr(out, "\"code\":\"unknown_type\",\"message\":\"unknown frame type 'teleport'\""));
	ck_assert_ptr_nonnull(strstr(out, "\"code\":\"bad_frame\",\"message\":\"'msg' is required\""));
	ck_assert_ptr_nonnull(strstr(out, "\"code\":\"binary_frame\""));
	ck_assert_ptr_nonnull(strstr(out, "nested deeper than 32 levels"));
	ck_assert_ptr_nonnull(strstr(out, "closed 1000")); /* still open until we closed it */
	free(out);
	free(secret);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"bad_json\"}"), 2);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"unknown_type\"}"), 1);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"binary_frame\"}"), 1);
	assert_good_device_still_served();
}
END_TEST

START_TEST(oversize_frames_close_1009)
{
	char *secret = th_register(&s, "00000000000000dd", NULL);
	const char *steps[] = { "hello", "00000000000000dd", secret, "expect", "welcome",
				"big", "5000", "hold", NULL };
	char *out = node(steps);
	ck_assert_msg(strstr(out, "closed 1009 frame too large") != NULL, "%s", out);
	free(out);
	/* Fragmented: the limit applies to the reassembled frame. */
	const char *steps2[] = { "hello", "00000000000000dd", secret, "expect", "welcome",
				 "fragmented", "3000", "wait", "200", "fragmented", "6000", "hold", NULL };
	out = node(steps2);
	ck_assert_msg(strstr(out, "closed 1009 frame too large") != NULL, "%s", out);
	free(out);
	free(secret);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"frame_too_large\"}"), 2);
	/* The 3000-byte fragmented frame fit and was logged. */
	ck_assert_int_eq(th_count_events(&s, "00000000000000dd", "Device connected"), 2);
	assert_good_device_still_served();
}
END_TEST

START_TEST(too_many_bad_frames_close)
{
	char *secret = th_register(&s, "00000000000000ee", NULL);
	const char *steps[64] = { "hello", "00000000000000ee", secret, "expect", "welcome" };
	int n = 5;
	for (int i = 0; i < 20; i++) {
		steps[n++] = "send";
		steps[n++] = "{}";
	}
	steps[n++] = "hold";
	/* node() takes at most 26 steps: build argv by hand. */
	char *argv[64], *out = NULL;
	int k = 0;
	argv[k++] = "/usr/bin/node";
	argv[k++] = (char *)th_src("tests/integration/wsclient.js");
	argv[k++] = "connect";
	argv[k++] = s.ws_url;
	for (int i = 0; i < n; i++)
		argv[k++] = (char *)steps[i];
	argv[k] = NULL;
	th_run(argv, &out, 30);
	ck_assert_msg(strstr(out, "closed 1008 too many bad frames") != NULL, "%s", out);
	free(out);
	free(secret);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"too_many_bad_frames\"}"), 1);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"bad_frame\"}"), 20);
	assert_good_device_still_served();
}
END_TEST

START_TEST(hello_timeout)
{
	const char *steps[] = { "hold", NULL };
	char *out = node(steps);
	ck_assert_msg(strstr(out, "closed 1008 hello timeout") != NULL, "%s", out);
	free(out);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"hello_timeout\"}"), 1);
	assert_good_device_still_served();
}
END_TEST

START_TEST(http_errors)
{
	th_resp r;
	struct {
		const char *method, *path, *ctype, *body, *token;
		long status;
		const char *code;
	} cases[] = {
		{ "GET", "/v1/devices", NULL, NULL, "", 401, "unauthorized" },
		{ "GET", "/v1/devices", NULL, NULL, "tdt_nope", 401, "unauthorized" },
		{ "GET", "/v1/nothing", NULL, NULL, NULL, 404, "not_found" },
		{ "GET", "/v1/devices/ffffffffffffffff", NULL, NULL, NULL, 404, "not_found" },
		{ "GET", "/v1/devices/not-an-id", NULL, NULL, NULL, 404, "not_found" },
		{ "PUT", "/v1/devices", NULL, "{}", NULL, 405, "method_not_allowed" },
		{ "POST", "/v1/devices", "text/plain", "{\"id\":\"0000000000000001\"}", NULL, 415,
		  "unsupported_media_type" },
		{ "POST", "/v1/devices", NULL, "{\"id\":", NULL, 400, "bad_request" },
		{ "POST", "/v1/devices", NULL, "{\"id\":\"xyz\"}", NULL, 400, "bad_request" },
		{ "POST", "/v1/devices", NULL, "{\"id\":\"0000000000000001\",\"colour\":1}", NULL, 400,
		  "bad_request" },
		{ "POST", "/v1/devices", NULL, "{\"id\":\"" GOOD "\"}", NULL, 409, "conflict" },
		{ "GET", "/v1/devices?limit=0", NULL, NULL, NULL, 400, "bad_request" },
		{ "GET", "/v1/devices?online=maybe", NULL, NULL, NULL, 400, "bad_request" },
		{ "PATCH", "/v1/devices/" GOOD, NULL, "{\"group\":42}", NULL, 400, "bad_request" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		th_http(&s, cases[i].method, cases[i].path, cases[i].ctype, cases[i].body, cases[i].token, &r);
		ck_assert_msg(r.status == cases[i].status, "%s %s: %ld %s", cases[i].method, cases[i].path,
			      r.status, r.body);
		json_t *err = json_object_get(r.json, "error");
		ck_assert_msg(json_is_object(err), "%s %s: no JSON error: %s", cases[i].method,
			      cases[i].path, r.body);
		ck_assert_str_eq(json_string_value(json_object_get(err, "code")), cases[i].code);
		ck_assert(json_string_length(json_object_get(err, "message")) > 0);
		if (r.status == 405)
			ck_assert_str_eq(r.allow, "GET, POST");
		th_resp_free(&r);
	}
	/* 413: a body over --max-body (1 MiB default). */
	size_t big = (1 << 20) + 100;
	char *body = malloc(big + 1);
	memset(body, ' ', big);
	body[big] = '\0';
	body[0] = '{';
	body[big - 1] = '}';
	th_http(&s, "POST", "/v1/devices", NULL, body, NULL, &r);
	ck_assert_int_eq(r.status, 413);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r.json, "error"), "code")),
			 "payload_too_large");
	th_resp_free(&r);
	free(body);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"http_too_large\"}"), 1);
	ck_assert_int_ge(th_metric(&s, "tender_errors_total{kind=\"http_unauthorized\"}"), 2);
	assert_good_device_still_served();
}
END_TEST

START_TEST(wrong_path_on_device_port)
{
	char url[128];
	snprintf(url, sizeof url, "ws://127.0.0.1:%d/elsewhere", s.device_port);
	char *argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"), "connect", url,
			 "hold", NULL };
	char *out = NULL;
	ck_assert_int_ne(th_run(argv, &out, 20), 0);
	ck_assert_ptr_null(strstr(out, "\nopen"));
	free(out);
	ck_assert_int_ge(th_metric(&s, "tender_errors_total{kind=\"bad_path\"}"), 1);
	assert_good_device_still_served();
}
END_TEST

/* --- limits, each with a server of its own ----------------------------------- */

/* Creates an API token with this role; returns it (owned). */
static char *make_token(th_server *srv, const char *role, const char *name)
{
	char body[128];
	th_resp r;
	snprintf(body, sizeof body, "{\"role\":\"%s\",\"name\":\"%s\"}", role, name);
	th_http(srv, "POST", "/v1/tokens", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "token: %ld %s", r.status, r.body);
	char *tok = strdup(json_string_value(json_object_get(r.json, "token")));
	th_resp_free(&r);
	return tok;
}

/* POST /v1/logstreams as `token`; the stream's id (owned) on 201, else NULL
 * with the status and body left in *r (the caller frees it). */
static char *new_stream(th_server *srv, const char *token, th_resp *r)
{
	th_http(srv, "POST", "/v1/logstreams", NULL, "{\"devices\":[\"" GOOD "\"]}", token, r);
	if (r->status != 201)
		return NULL;
	char *id = strdup(json_string_value(json_object_get(r->json, "id")));
	th_resp_free(r);
	return id;
}

/* A curl run's headers and body (-i), as text (owned). */
static char *curl_i(th_server *srv, const char *method, const char *path, const char *token)
{
	char url[512], auth[200], *out = NULL;
	snprintf(url, sizeof url, "%s%s", srv->http_url, path);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
	char *const argv[] = { "/usr/bin/curl", "-s", "-i", "-X", (char *)method, "-H", auth, "-H",
			       "Content-Type: application/json", "--data", "{\"devices\":[]}", url, NULL };
	th_run(argv, &out, 30);
	return out ? out : strdup("");
}

START_TEST(log_streams_are_bounded_and_expire)
{
	th_server srv;
	th_resp r;
	th_server_start(&srv, "--max-streams 5 --max-streams-per-token 3 --stream-open-timeout 2");
	free(th_register(&srv, GOOD, NULL));
	char *v1 = make_token(&srv, "viewer", "viewer one"), *v2 = make_token(&srv, "viewer", "viewer two");
	char *ids[5];
	for (int i = 0; i < 3; i++) {
		ids[i] = new_stream(&srv, v1, &r);
		ck_assert_msg(ids[i] != NULL, "stream %d: %ld %s", i, r.status, r.body);
	}
	/* A fourth from the same token: 429, saying which limit and what to do. */
	ck_assert_ptr_null(new_stream(&srv, v1, &r));
	ck_assert_int_eq(r.status, 429);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r.json, "error"), "code")),
			 "too_many_requests");
	ck_assert_msg(strstr(r.body, "this token holds its limit of 3 log streams (--max-streams-per-token)"),
		      "%s", r.body);
	th_resp_free(&r);
	char *head = curl_i(&srv, "POST", "/v1/logstreams", v1);
	ck_assert_msg(strstr(head, " 429") && strcasestr(head, "Retry-After: 2"), "%s", head);
	free(head);
	/* Another token may still create, up to the server's limit: then 503. */
	for (int i = 3; i < 5; i++) {
		ids[i] = new_stream(&srv, v2, &r);
		ck_assert_msg(ids[i] != NULL, "stream %d: %ld %s", i, r.status, r.body);
	}
	ck_assert_ptr_null(new_stream(&srv, v2, &r));
	ck_assert_int_eq(r.status, 503);
	ck_assert_msg(strstr(r.body, "the server holds its limit of 5 log streams (--max-streams)"), "%s", r.body);
	th_resp_free(&r);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"log_streams_per_token\"}"), 2);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"log_streams_full\"}"), 1);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"http_auth_throttled\"}"), 0);
	ck_assert_int_eq(th_metric(&srv, "tender_log_streams"), 5);

	/* One is opened (and read); the four nobody opened go after 2 s. */
	char url[512], auth[200];
	snprintf(url, sizeof url, "%s/v1/logstreams/%s", srv.http_url, ids[0]);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", v1);
	char *const reader_argv[] = { "/usr/bin/curl", "-s", "-N", "-H", auth, url, NULL };
	pid_t reader = th_spawn(reader_argv, th_tmp(&srv, "reader.out"));
	ck_assert_int_eq(th_wait_file(th_tmp(&srv, "reader.out"), "data: opened", 10000), 0);
	for (int waited = 0; th_metric(&srv, "tender_log_streams_expired_total") < 4; waited += 100) {
		ck_assert_msg(waited < 15000, "unopened streams were not removed");
		usleep(100 * 1000);
	}
	ck_assert_int_eq(th_metric(&srv, "tender_log_streams_expired_total"), 4);
	ck_assert_int_eq(th_metric(&srv, "tender_log_streams"), 1);
	ck_assert_int_eq(th_wait_file(srv.log, "was not opened within 2 s of its creation: removed", 5000), 0);
	char path[128];
	snprintf(path, sizeof path, "/v1/logstreams/%s", ids[1]);
	th_http(&srv, "GET", path, NULL, NULL, v1, &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);
	/* The opened one still streams; and the token may create again. */
	char *sec = th_register(&srv, "00000000000000cc", NULL);
	snprintf(path, sizeof path, "/v1/logstreams/%s/devices/00000000000000cc", ids[0]);
	th_http(&srv, "PUT", path, NULL, NULL, v1, &r);
	ck_assert_int_eq(r.status, 204);
	th_resp_free(&r);
	char *const dev_argv[] = { (char *)th_bin("tender-sim"), "--url", srv.ws_url, "--id", "00000000000000cc",
				   "--secret", sec, "--log-count", "1", "--log-text", "to the reader",
				   "--exit-when-done", NULL };
	ck_assert_int_eq(th_run(dev_argv, NULL, 30), 0);
	ck_assert_int_eq(th_wait_file(th_tmp(&srv, "reader.out"), "to the reader", 10000), 0);
	char *again = new_stream(&srv, v1, &r);
	ck_assert_msg(again != NULL, "after expiry: %ld %s", r.status, r.body);
	free(again);
	kill(reader, SIGKILL);
	waitpid(reader, NULL, 0);
	for (int i = 0; i < 5; i++)
		free(ids[i]);
	free(sec);
	free(v1);
	free(v2);
	th_server_cleanup(&srv);
}
END_TEST

/* How often needle occurs in the file. */
static int count_in_file(const char *path, const char *needle)
{
	char *text = th_read_file(path);
	int n = 0;
	for (const char *p = text; p && (p = strstr(p, needle)); p++)
		n++;
	free(text);
	return n;
}

/* A TCP connection to port from the loopback address src (127.0.0.N). */
static int raw_connect(int port, const char *src)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in from = { .sin_family = AF_INET }, to = { .sin_family = AF_INET };
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(inet_pton(AF_INET, src, &from.sin_addr), 1);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&from, sizeof from), 0);
	to.sin_port = htons((uint16_t)port);
	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&to, sizeof to), 0);
	return fd;
}

/* Reads into buf until it holds `until` (or EOF with until NULL), 15 s at
 * most; returns the bytes read (-1 when the peer reset it). */
static ssize_t raw_read(int fd, char *buf, size_t cap, const char *until)
{
	size_t n = 0;
	buf[0] = '\0';
	while (n + 1 < cap && !(until && strstr(buf, until))) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ck_assert_msg(poll(&p, 1, 15000) == 1, "no answer in 15 s: '%s'", buf);
		ssize_t got = recv(fd, buf + n, cap - 1 - n, 0);
		if (got < 0)
			return -1;
		if (got == 0)
			break;
		n += (size_t)got;
		buf[n] = '\0';
	}
	return (ssize_t)n;
}

/* A GET on a raw connection; the whole answer (a JSON body ends with '}'). */
static void raw_get(int fd, const char *path, char *buf, size_t cap)
{
	char req[256];
	int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: tender\r\n\r\n", path);
	ck_assert_int_eq(send(fd, req, (size_t)len, MSG_NOSIGNAL), len);
	raw_read(fd, buf, cap, "}");
}

/* A metric, asked from an address of its own (the limits count 127.0.0.1). */
static long long metric_from(th_server *srv, const char *src, const char *name)
{
	char buf[32768];
	int fd = raw_connect(srv->http_port, src);
	char req[128];
	int len = snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nHost: tender\r\nConnection: close\r\n\r\n");
	ck_assert_int_eq(send(fd, req, (size_t)len, MSG_NOSIGNAL), len);
	raw_read(fd, buf, sizeof buf, NULL);
	close(fd);
	const char *at = strstr(buf, name);
	ck_assert_msg(at && at[strlen(name)] == ' ', "no %s in %s", name, buf);
	return atoll(at + strlen(name) + 1);
}

/* Over --max-conns-per-ip and over --http-max-conns, a connection's request
 * is answered 503 with a JSON error, Retry-After and Connection: close (not
 * closed unanswered), each counted; past libmicrohttpd's hard caps above
 * those, connections are closed and counted too; all recover. */
START_TEST(http_connection_limits_answer_503)
{
	th_server srv;
	char buf[4096];
	th_server_start(&srv, "--max-conns-per-ip 3 --http-max-conns 6 --http-threads 1");
	int held[8], nheld = 0;
	/* 127.0.0.1 holds three kept-alive connections, each answered. */
	for (int i = 0; i < 3; i++) {
		held[nheld] = raw_connect(srv.http_port, "127.0.0.1");
		raw_get(held[nheld++], "/healthz", buf, sizeof buf);
		ck_assert_msg(strstr(buf, "HTTP/1.1 200"), "%s", buf);
	}
	int over = raw_connect(srv.http_port, "127.0.0.1");
	raw_get(over, "/healthz", buf, sizeof buf);
	ck_assert_msg(strstr(buf, "HTTP/1.1 503") && strstr(buf, "Retry-After: 1") &&
		      strstr(buf, "Connection: close") &&
		      strstr(buf, "{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections from this "
			     "address: it holds 3 already (--max-conns-per-ip); try again later\"}}"), "%s", buf);
	ck_assert_int_eq(raw_read(over, buf, sizeof buf, NULL), 0); /* then closed */
	close(over);
	ck_assert_int_eq(metric_from(&srv, "127.0.0.9", "tender_errors_total{kind=\"http_conns_per_ip\"}"), 1);

	/* Two more addresses fill --http-max-conns (6); the next is refused. */
	for (int i = 0; i < 3; i++) {
		held[nheld] = raw_connect(srv.http_port, i < 2 ? "127.0.0.2" : "127.0.0.3");
		raw_get(held[nheld++], "/healthz", buf, sizeof buf);
		ck_assert_msg(strstr(buf, "HTTP/1.1 200"), "%s", buf);
	}
	over = raw_connect(srv.http_port, "127.0.0.4");
	raw_get(over, "/v1/devices", buf, sizeof buf);
	ck_assert_msg(strstr(buf, "HTTP/1.1 503") && strstr(buf, "Retry-After: 1") &&
		      strstr(buf, "the server holds its limit of 6 HTTP connections (--http-max-conns); "
			     "try again later"), "%s", buf);
	close(over);
	for (int i = 0; i < nheld; i++)
		close(held[i]);
	usleep(200 * 1000);
	ck_assert_int_eq(metric_from(&srv, "127.0.0.9", "tender_errors_total{kind=\"http_conns_full\"}"), 1);
	ck_assert_int_eq(metric_from(&srv, "127.0.0.9", "tender_errors_total{kind=\"http_conns_refused\"}"), 0);

	/* Connections that never send a request hold their slots; past the
	 * hard cap (3 + 3/4 + 16 = 19 per address) they are closed at once. */
	int silent[30];
	for (int i = 0; i < 30; i++)
		silent[i] = raw_connect(srv.http_port, "127.0.0.5");
	for (int waited = 0; count_in_file(srv.log, "Server reached connection limit") < 11; waited += 100) {
		ck_assert_msg(waited < 10000, "%d closed at the hard cap",
			      count_in_file(srv.log, "Server reached connection limit"));
		usleep(100 * 1000);
	}
	for (int i = 0; i < 30; i++)
		close(silent[i]);
	usleep(300 * 1000);
	ck_assert_int_eq(count_in_file(srv.log, "Server reached connection limit"), 11);
	ck_assert_int_eq(metric_from(&srv, "127.0.0.9", "tender_errors_total{kind=\"http_conns_refused\"}"), 11);

	/* All gone: 127.0.0.1 is served again. */
	th_resp r;
	th_http(&srv, "GET", "/v1/devices", NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"http_conns_per_ip\"}"), 1);
	th_server_cleanup(&srv);
}
END_TEST

/* --http-timeout closes a connection that says nothing, one that stops in
 * the middle of its headers and one kept alive idle, each counted;
 * headers over libmicrohttpd's 32 KiB pool get 431, counted; a device's
 * upgrade request over libwebsockets' header space is closed, counted. */
START_TEST(http_timeout_and_header_size_are_counted)
{
	th_server srv;
	char buf[4096];
	th_server_start(&srv, "--http-timeout 1");
	int silent = raw_connect(srv.http_port, "127.0.0.1");
	int partial = raw_connect(srv.http_port, "127.0.0.1");
	const char *half = "GET /healthz HTTP/1.1\r\nHost: tender\r\n";
	ck_assert_int_eq(send(partial, half, strlen(half), MSG_NOSIGNAL), (ssize_t)strlen(half));
	int idle = raw_connect(srv.http_port, "127.0.0.1");
	raw_get(idle, "/healthz", buf, sizeof buf);
	ck_assert_msg(strstr(buf, "HTTP/1.1 200"), "%s", buf);
	/* Each is closed by the server (EOF, no answer), about a second later. */
	ck_assert_int_eq(raw_read(silent, buf, sizeof buf, NULL), 0);
	ck_assert_int_eq(raw_read(partial, buf, sizeof buf, NULL), 0);
	ck_assert_int_eq(raw_read(idle, buf, sizeof buf, NULL), 0);
	close(silent);
	close(partial);
	close(idle);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"http_timeout\"}"), 3);

	/* Headers: 30 KB fit, 40 KB do not. */
	char *big = malloc(41000);
	for (int size = 30000; size <= 40000; size += 10000) {
		int fd = raw_connect(srv.http_port, "127.0.0.1");
		int len = snprintf(big, 41000, "GET /healthz HTTP/1.1\r\nHost: tender\r\nX-Pad: %0*d\r\n"
				   "Connection: close\r\n\r\n", size, 0);
		ck_assert_int_eq(send(fd, big, (size_t)len, MSG_NOSIGNAL), len);
		raw_read(fd, buf, sizeof buf, NULL);
		close(fd);
		ck_assert_msg(strstr(buf, size == 30000 ? "HTTP/1.1 200" : "HTTP/1.1 431 Request Header Fields Too Large"),
			      "%d: %s", size, buf);
	}
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"http_header_too_large\"}"), 1);

	/* The device port's upgrade request: over libwebsockets' 4 KiB of
	 * header space it is closed unanswered, and counted. */
	int fd = raw_connect(srv.device_port, "127.0.0.1");
	int len = snprintf(big, 41000, "GET /v1/device HTTP/1.1\r\nHost: tender\r\nUpgrade: websocket\r\n"
			   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
			   "Sec-WebSocket-Version: 13\r\nX-Pad: %0*d\r\n\r\n", 6000, 0);
	ck_assert_int_eq(send(fd, big, (size_t)len, MSG_NOSIGNAL), len);
	ck_assert_int_le(raw_read(fd, buf, sizeof buf, NULL), 0);
	close(fd);
	free(big);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"device_header_too_large\"}"), 1);
	th_server_cleanup(&srv);
}
END_TEST

/* The agent limits, each hit once through the real daemon: the CPU-time
 * backstop, the instruction budget, the memory cap, the log rate and the
 * offline queue; each is said in the device's log and counted. */
static const char *limited_agent =
	"device.on('cmp', function()\n"
	"  local a, b = string.rep('x', 1000000) .. 'a', string.rep('x', 1000000) .. 'b'\n"
	"  local n = 0 while true do if a == b then n = n + 1 end end\n"
	"end)\n"
	"device.on('spin', function() local n = 0 while true do n = n + 1 end end)\n"
	"device.on('chatty', function() for i = 1, 50 do server.log('chat ' .. i) end end)\n"
	"device.on('hog', function() local t = {} while true do t[#t + 1] = string.rep('x', 100000) .. #t end end)\n"
	"http.onrequest(function(req, res)\n"
	"  for i = 1, 70 do device.send('queued', {i = i}) end\n"
	"  res.send(200, 'sent')\n"
	"end)\n";

static void send_msg(th_server *srv, const char *id, const char *secret, const char *name)
{
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", srv->ws_url, "--id", (char *)id,
			       "--secret", (char *)secret, "--msg-name", (char *)name, "--msg-count", "1",
			       "--exit-when-done", "--quiet", NULL };
	ck_assert_int_eq(th_run(argv, NULL, 30), 0);
}

#define AGENT_DEV "00000000000000a7"

START_TEST(agent_limits_are_counted)
{
	th_server srv;
	th_resp r;
	/* A budget so large that only the CPU clock can stop `cmp` (one == of
	 * two 1 MB strings is one instruction); `spin` meets one or the other. */
	th_server_start(&srv, "--agent-memory 4194304 --agent-cpu-ms 100 --agent-budget 2000000000 "
			"--agent-log-rate 5 --agent-workers 1");
	th_http(&srv, "PUT", "/v1/groups/limited/agent", "text/plain", limited_agent, NULL, &r);
	ck_assert_msg(r.status == 200, "deploy: %ld %s", r.status, r.body);
	th_resp_free(&r);
	char *secret = th_register(&srv, AGENT_DEV, "limited");

	send_msg(&srv, AGENT_DEV, secret, "cmp");
	ck_assert_int_ge(th_wait_event(&srv, AGENT_DEV, "agent", "ERROR: the 'cmp' handler stopped: over its "
				       "CPU time limit of 100 ms", 30000), 1);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"agent_budget\"}"), 1);

	send_msg(&srv, AGENT_DEV, secret, "chatty");
	ck_assert_int_ge(th_wait_event(&srv, AGENT_DEV, "agent", "chat 1", 10000), 1);
	long long dropped = th_metric(&srv, "tender_errors_total{kind=\"agent_log_rate\"}");
	ck_assert_int_ge(dropped, 30); /* 50 lines, a burst of 10 allowed at 5 a second */
	char line[96];
	snprintf(line, sizeof line, "%lld log lines dropped: over the limit of 5 per second", dropped);
	ck_assert_int_ge(th_wait_event(&srv, AGENT_DEV, "status", line, 10000), 1);
	ck_assert_int_eq(th_count_events(&srv, AGENT_DEV, "chat 50") + th_count_events(&srv, AGENT_DEV, "chat 11"), 0);

	/* The device is offline now: 70 messages into a queue of 64. */
	json_t *a = th_get_json(&srv, "/v1/devices/" AGENT_DEV "/agent", 200);
	char path[160];
	snprintf(path, sizeof path, "/agent/%s/push", json_string_value(json_object_get(a, "agent_id")));
	json_decref(a);
	th_http(&srv, "POST", path, "text/plain", "go", "", &r);
	ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
	th_resp_free(&r);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"agent_offline_queue_full\"}"), 6);

	send_msg(&srv, AGENT_DEV, secret, "spin");
	for (int waited = 0; th_metric(&srv, "tender_errors_total{kind=\"agent_budget\"}") < 2; waited += 100) {
		ck_assert_msg(waited < 30000, "spin was not stopped");
		usleep(100 * 1000);
	}
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"agent_memory\"}"), 0);
	send_msg(&srv, AGENT_DEV, secret, "hog");
	ck_assert_int_ge(th_wait_event(&srv, AGENT_DEV, "status", "Agent stopped: out of memory.", 30000), 1);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"agent_memory\"}"), 1);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"agent_budget\"}"), 2);
	free(secret);
	th_server_cleanup(&srv);
}
END_TEST

/* Runs the node client against srv with steps after connect; output owned. */
static char *node_on(th_server *srv, const char *const *steps)
{
	char *argv[32], *out = NULL;
	int n = 0;
	argv[n++] = "/usr/bin/node";
	argv[n++] = (char *)th_src("tests/integration/wsclient.js");
	argv[n++] = "connect";
	argv[n++] = srv->ws_url;
	for (; *steps && n < 31; steps++)
		argv[n++] = (char *)*steps;
	argv[n] = NULL;
	th_run(argv, &out, 30);
	return out ? out : strdup("");
}

/* {"type":"log","msg":"xxx..."} with a msg of n bytes (owned). */
static char *log_frame(size_t n)
{
	char *f = malloc(n + 64);
	int at = sprintf(f, "{\"type\":\"log\",\"msg\":\"");
	memset(f + at, 'x', n);
	strcpy(f + at + n, "\"}");
	return f;
}

/* n levels of [ ] (owned). */
static char *nested(int n)
{
	char *b = malloc((size_t)n * 2 + 1);
	memset(b, '[', (size_t)n);
	memset(b + n, ']', (size_t)n);
	b[n * 2] = '\0';
	return b;
}

/* The size limits nothing else would catch being lifted: a device log line
 * of 16 KiB, --max-firmware, and the nesting depth of an API body. */
START_TEST(size_limits_are_refused_clearly)
{
	th_server srv;
	th_resp r;
	th_server_start(&srv, "--max-firmware 4096 --log-rate 0");
	char *secret = th_register(&srv, "00000000000000f1", NULL);
	char *fits = log_frame(16384), *over = log_frame(16385);
	const char *steps[] = { "hello", "00000000000000f1", secret, "expect", "welcome",
				"send", fits, "send", over, "expect", "error", "wait", "200", "close", NULL };
	char *out = node_on(&srv, steps);
	ck_assert_msg(strstr(out, "{\"type\":\"error\",\"code\":\"bad_frame\",\"message\":\"'msg' is longer "
			     "than 16384 bytes\"}") && strstr(out, "closed 1000"), "%.300s", out);
	free(out);
	/* The 16384-byte line is stored (once the device has closed, after it). */
	ck_assert_int_ge(th_wait_event(&srv, "00000000000000f1", "status", "Device disconnected", 10000), 1);
	json_t *page = th_get_json(&srv, "/v1/devices/00000000000000f1/logs?type=device", 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(page, "events")), 1);
	ck_assert_int_eq((int)json_string_length(json_object_get(json_array_get(json_object_get(page, "events"), 0),
								 "msg")), 16384);
	json_decref(page);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"bad_frame\"}"), 1);
	free(fits);
	free(over);
	free(secret);

	/* --max-firmware 4096: a small image goes in, a bigger one is 413. */
	static unsigned char image[5000];
	const char *meta = "{\"version\":\"1.0\",\"hw\":[\"imp003\"]}";
	th_upload_firmware(&srv, meta, image, 2000, &r);
	ck_assert_msg(r.status == 201, "%ld %s", r.status, r.body);
	th_resp_free(&r);
	th_upload_firmware(&srv, meta, image, sizeof image, &r);
	ck_assert_msg(r.status == 413 && strstr(r.body, "\"payload_too_large\""), "%ld %s", r.status, r.body);
	th_resp_free(&r);
	ck_assert_int_eq(th_metric(&srv, "tender_errors_total{kind=\"http_too_large\"}"), 1);

	/* An API body nested past jansson's 2048 levels: 400 with where. */
	char *deep = nested(2048);
	th_http(&srv, "POST", "/v1/devices", NULL, deep, NULL, &r);
	ck_assert_msg(r.status == 400 && strstr(r.body, "the body must be a JSON object"), "%ld %s", r.status, r.body);
	th_resp_free(&r);
	free(deep);
	deep = nested(2049);
	th_http(&srv, "POST", "/v1/devices", NULL, deep, NULL, &r);
	ck_assert_msg(r.status == 400 && strstr(r.body, "invalid JSON at line 1, column 2049: maximum parsing "
						"depth reached"), "%ld %s", r.status, r.body);
	th_resp_free(&r);
	free(deep);
	th_server_cleanup(&srv);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		wrong_secret,
		unknown_id,
		garbage_before_hello,
		garbage_after_hello_gets_error_frames,
		oversize_frames_close_1009,
		too_many_bad_frames_close,
		hello_timeout,
		http_errors,
		wrong_path_on_device_port,
	};
	const TTest *limits[] = {
		log_streams_are_bounded_and_expire,
		http_connection_limits_answer_503,
		http_timeout_and_header_size_are_counted,
		agent_limits_are_counted,
		size_limits_are_refused_clearly,
	};
	int failed = th_run_tests("03_errors", 90, tests, sizeof tests / sizeof tests[0], setup, teardown);
	failed |= th_run_tests("03_limits", 120, limits, sizeof limits / sizeof limits[0], NULL, NULL);
	return failed;
}

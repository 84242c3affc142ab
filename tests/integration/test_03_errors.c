/* tests/integration/test_03_errors.c -- every refused device frame and HTTP
 * request gets its documented error, is counted in /metrics, and the server
 * keeps serving a device that stays connected throughout.  The second suite
 * starts a server of its own per test, with its limits set low: each limit
 * is hit, answered with its documented error and counted. */
#define _GNU_SOURCE
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
	};
	/* TN_ONLY=WORD runs only the tests whose name holds WORD. */
	const char *only = getenv("TN_ONLY");
	const TTest *chosen[sizeof tests / sizeof tests[0]], *chosen_limits[sizeof limits / sizeof limits[0]];
	size_t n = 0, nl = 0;
	for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
		if (!only || strstr(tests[i]->name, only))
			chosen[n++] = tests[i];
	for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++)
		if (!only || strstr(limits[i]->name, only))
			chosen_limits[nl++] = limits[i];
	int failed = n ? th_run_tests("03_errors", 90, chosen, n, setup, teardown) : 0;
	failed |= nl ? th_run_tests("03_limits", 120, chosen_limits, nl, NULL, NULL) : 0;
	return failed;
}

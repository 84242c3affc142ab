/* tests/integration/test_03_errors.c -- every refused device frame and HTTP
 * request gets its documented error, is counted in /metrics, and the server
 * keeps serving a device that stays connected throughout. */
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
	return th_run_tests("03_errors", 90, tests, sizeof tests / sizeof tests[0], setup, teardown);
}

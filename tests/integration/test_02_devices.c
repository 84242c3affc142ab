/* tests/integration/test_02_devices.c -- devices registered over the API
 * connect (with tender-sim and with the independent node client), show
 * online, log, go offline when they leave or vanish, are replaced by a second
 * connection, and are listed, filtered, paged, patched and deleted. */
#define _GNU_SOURCE
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define DEV1 "30000c2a690c77c5"
#define DEV2 "30000c2a690c77c6"

static pid_t sim_start(th_server *s, const char *id, const char *secret, const char *out,
		       const char *extra1, const char *extra2)
{
	char *argv[20], *copies[2] = { NULL, NULL };
	int n = 0;
	argv[n++] = (char *)th_bin("tender-sim");
	argv[n++] = "--url";
	argv[n++] = s->ws_url;
	argv[n++] = "--id";
	argv[n++] = (char *)id;
	argv[n++] = "--secret";
	argv[n++] = (char *)secret;
	argv[n++] = "--hw";
	argv[n++] = "imp003";
	argv[n++] = "--fw";
	argv[n++] = "36.10";
	argv[n++] = "--jedec";
	argv[n++] = "012018";
	argv[n++] = "--flash-size";
	argv[n++] = "16777216";
	if (extra1) {
		/* "opt value" pairs split on the first space */
		char *e = copies[0] = strdup(extra1), *sp = strchr(e, ' ');
		argv[n++] = e;
		if (sp) {
			*sp = '\0';
			argv[n++] = sp + 1;
		}
	}
	if (extra2) {
		char *e = copies[1] = strdup(extra2), *sp = strchr(e, ' ');
		argv[n++] = e;
		if (sp) {
			*sp = '\0';
			argv[n++] = sp + 1;
		}
	}
	argv[n] = NULL;
	pid_t pid = th_spawn(argv, out);
	free(copies[0]);
	free(copies[1]);
	return pid;
}

START_TEST(tender_sim_connects_logs_and_disconnects)
{
	th_server s;
	th_server_start(&s, NULL);
	char *secret = th_register(&s, DEV1, "imps");
	const char *out = th_tmp(&s, "sim.out");

	pid_t sim = sim_start(&s, DEV1, secret, out, "--log-rate 20", "--log-count 3");
	ck_assert_int_eq(th_wait_file(out, "welcome " DEV1, 10000), 0);
	ck_assert_int_eq(th_wait_online(&s, DEV1, 1, 5000), 0);

	json_t *d = th_get_json(&s, "/v1/devices/" DEV1, 200);
	ck_assert(json_is_true(json_object_get(d, "online")));
	ck_assert_str_eq(json_string_value(json_object_get(d, "hw")), "imp003");
	ck_assert_str_eq(json_string_value(json_object_get(d, "fw")), "36.10");
	ck_assert_str_eq(json_string_value(json_object_get(d, "group")), "imps");
	json_t *flash = json_object_get(d, "flash");
	ck_assert_str_eq(json_string_value(json_object_get(flash, "jedec")), "012018");
	ck_assert_int_eq(json_integer_value(json_object_get(flash, "size")), 16777216);
	/* What the flash-parts table knows of that id, the most cautious answer. */
	ck_assert_str_eq(json_string_value(json_object_get(flash, "table")), "shared id");
	ck_assert_str_eq(json_string_value(json_array_get(json_object_get(flash, "parts"), 0)), "S25FL127S");
	ck_assert(json_is_false(json_object_get(flash, "uniform_4k_erase")));
	ck_assert_ptr_null(json_object_get(d, "secret")); /* shown once, at registration */
	json_decref(d);

	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Device connected", 5000), 1);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "device", "hello from sim 3", 5000), 1);
	ck_assert_int_eq(th_metric(&s, "tender_devices_connected"), 1);

	/* tenderctl prints the operator's text form. */
	char *text = NULL, url[160];
	snprintf(url, sizeof url, "--url=%s", s.http_url);
	char *const ctl[] = { (char *)th_bin("tenderctl"), url, "--token", s.token, "logs", DEV1, NULL };
	ck_assert_int_eq(th_run(ctl, &text, 20), 0);
	ck_assert_msg(strstr(text, " [Status] Device connected\n") != NULL, "tenderctl logs: %s", text);
	ck_assert_ptr_nonnull(strstr(text, " [Device] hello from sim 1\n"));
	ck_assert_ptr_nonnull(strstr(text, " UTC"));
	free(text);

	/* Killing the client: offline, and the log says so. */
	kill(sim, SIGKILL);
	waitpid(sim, NULL, 0);
	ck_assert_int_eq(th_wait_online(&s, DEV1, 0, 10000), 0);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Device disconnected", 5000), 1);
	ck_assert_int_eq(th_metric(&s, "tender_devices_connected"), 0);
	d = th_get_json(&s, "/v1/devices/" DEV1, 200);
	ck_assert(json_is_string(json_object_get(d, "last_seen")));
	json_decref(d);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(node_client_connects_and_logs)
{
	th_server s;
	th_server_start(&s, NULL);
	char *secret = th_register(&s, DEV2, NULL), *out = NULL;
	char *const argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"),
			       "connect", s.ws_url, "hello", DEV2, secret, "expect", "welcome",
			       "send", "{\"type\":\"log\",\"msg\":\"from node\"}",
			       "send", "{\"type\":\"log\",\"level\":\"error\",\"msg\":\"it hurts\"}",
			       "send", "{\"type\":\"msg\",\"name\":\"temp\",\"data\":{\"c\":21.5}}",
			       "wait", "300", "close", NULL };
	ck_assert_int_eq(th_run(argv, &out, 30), 0);
	ck_assert_msg(strstr(out, "\"type\":\"welcome\"") != NULL, "node client: %s", out);
	ck_assert_ptr_null(strstr(out, "\"type\":\"error\"")); /* msg frames are accepted */
	free(out);
	ck_assert_int_ge(th_wait_event(&s, DEV2, "device", "from node", 5000), 1);
	ck_assert_int_ge(th_wait_event(&s, DEV2, "device", "ERROR: it hurts", 5000), 1);
	ck_assert_int_ge(th_wait_event(&s, DEV2, "status", "Device disconnected", 5000), 1);
	json_t *d = th_get_json(&s, "/v1/devices/" DEV2, 200);
	ck_assert(json_is_false(json_object_get(d, "online")));
	ck_assert_str_eq(json_string_value(json_object_get(d, "hw")), "node");
	json_decref(d);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(vanished_device_goes_offline_within_idle_timeout)
{
	th_server s;
	th_server_start(&s, "--idle-timeout 3");
	char *secret = th_register(&s, DEV1, NULL);
	const char *out = th_tmp(&s, "node.out");
	char *const argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"),
			       "connect", s.ws_url, "hello", DEV1, secret, "expect", "welcome",
			       "hold", NULL };
	pid_t pid = th_spawn(argv, out);
	ck_assert_int_eq(th_wait_file(out, "welcome", 10000), 0);
	ck_assert_int_eq(th_wait_online(&s, DEV1, 1, 5000), 0);
	/* Stopped, the client neither reads nor answers pings, but its socket
	 * stays open: only the keepalive can notice. */
	kill(pid, SIGSTOP);
	ck_assert_int_eq(th_wait_online(&s, DEV1, 0, 8000), 0);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Device disconnected", 2000), 1);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

/* The other half of the keepalive: a device that sends nothing but answers
 * the server's pings stays online well past the idle timeout. */
START_TEST(quiet_device_answering_pings_stays_online)
{
	th_server s;
	th_server_start(&s, "--idle-timeout 3");
	char *secret = th_register(&s, DEV1, NULL);
	const char *out = th_tmp(&s, "node.out");
	char *const argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"),
			       "connect", s.ws_url, "hello", DEV1, secret, "expect", "welcome",
			       "hold", NULL };
	pid_t pid = th_spawn(argv, out);
	ck_assert_int_eq(th_wait_file(out, "welcome", 10000), 0);
	ck_assert_int_eq(th_wait_online(&s, DEV1, 1, 5000), 0);
	/* Three idle timeouts without a frame from the device (the ws library
	 * answers pings by itself). */
	sleep(9);
	ck_assert_int_eq(th_count_events(&s, DEV1, "Device disconnected"), 0);
	ck_assert_int_eq(th_wait_online(&s, DEV1, 1, 1000), 0);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

/* Frames the server queues for one device are written together (framed by
 * tenderd, one send()): an agent answers one message with a burst of frames
 * of every length class (under 126 bytes, 16-bit lengths, one near the
 * 64 KiB write), and an independent WebSocket client (node-ws, which
 * refuses any malformed frame) gets each one whole, in order. */
static const char burst_agent[] =
	"local sizes = { 1, 90, 110, 118, 119, 120, 200, 1000, 65400, 5, 30000, 40000, 2 }\n"
	"device.on('burst', function()\n"
	"  for i, n in ipairs(sizes) do device.send('b', { i = i, s = string.rep('x', n) }) end\n"
	"  device.send('last', #sizes)\n"
	"end)\n";

START_TEST(burst_of_frames_arrives_whole)
{
	static const int sizes[] = { 1, 90, 110, 118, 119, 120, 200, 1000, 65400, 5, 30000, 40000, 2 };
	const int n = (int)(sizeof sizes / sizeof sizes[0]);
	th_server s;
	th_resp r;
	th_server_start(&s, NULL);
	char *secret = th_register(&s, DEV1, "burst");
	th_http(&s, "PUT", "/v1/groups/burst/agent", "text/plain", burst_agent, NULL, &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	const char *out = th_tmp(&s, "burst.out");
	char *const argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"),
			       "connect", s.ws_url, "hello", DEV1, secret, "expect", "welcome",
			       "send", "{\"type\":\"msg\",\"name\":\"burst\",\"data\":1}",
			       "expectmsg", "last", "close", NULL };
	pid_t pid = th_spawn(argv, out);
	ck_assert_int_eq(th_wait_pid(pid, 30000), 0);
	char *text = th_read_file(out);
	ck_assert_ptr_nonnull(text);
	ck_assert_msg(!strstr(text, "closed 1002") && !strstr(text, "closed 1006"), "%s", text);
	/* Each frame whole and in order: msg "b" with data {i, s}, then "last". */
	int next = 1, last = 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		if (strncmp(line, "frame ", 6) != 0)
			continue;
		json_t *f = json_loads(line + 6, 0, NULL);
		ck_assert_msg(f, "not JSON: %.80s", line);
		const char *name = json_string_value(json_object_get(f, "name"));
		json_t *data = json_object_get(f, "data");
		if (name && strcmp(name, "b") == 0) {
			ck_assert_int_eq(json_integer_value(json_object_get(data, "i")), next);
			ck_assert_int_eq((long)json_string_length(json_object_get(data, "s")), sizes[next - 1]);
			next++;
		} else if (name && strcmp(name, "last") == 0) {
			last = 1;
		}
		json_decref(f);
	}
	ck_assert_int_eq(next, n + 1);
	ck_assert(last);
	free(text);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(second_connection_replaces_the_first)
{
	th_server s;
	th_server_start(&s, NULL);
	char *secret = th_register(&s, DEV1, NULL);
	const char *out1 = th_tmp(&s, "sim1.out"), *out2 = th_tmp(&s, "sim2.out");

	pid_t a = sim_start(&s, DEV1, secret, out1, NULL, NULL);
	ck_assert_int_eq(th_wait_file(out1, "welcome " DEV1, 10000), 0);
	pid_t b = sim_start(&s, DEV1, secret, out2, NULL, NULL);
	ck_assert_int_eq(th_wait_file(out2, "welcome " DEV1, 10000), 0);
	ck_assert_int_eq(th_wait_file(out1, "closed " DEV1 " 4001 replaced by a new connection", 10000), 0);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status",
				       "Device connection replaced: a new connection took over", 5000), 1);
	/* Still online through the second connection; one connected device. */
	ck_assert_int_eq(th_wait_online(&s, DEV1, 1, 2000), 0);
	ck_assert_int_eq(th_count_events(&s, DEV1, "Device disconnected"), 0);
	ck_assert_int_eq(th_metric(&s, "tender_devices_connected"), 1);
	kill(b, SIGTERM);
	waitpid(b, NULL, 0);
	th_wait_pid(a, 5000);
	ck_assert_int_eq(th_wait_online(&s, DEV1, 0, 5000), 0);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(list_filter_page_patch_delete)
{
	th_server s;
	char id[17], path[200];
	th_server_start(&s, NULL);
	for (int i = 0; i < 25; i++) {
		snprintf(id, sizeof id, "00000000000000%02x", (unsigned char)i);
		free(th_register(&s, id, i % 2 ? "odd" : "even"));
	}
	/* Walk the pages: every device exactly once, in order. */
	int seen = 0;
	char after[17] = "";
	for (;;) {
		snprintf(path, sizeof path, "/v1/devices?limit=7%s%s", *after ? "&after=" : "", after);
		json_t *page = th_get_json(&s, path, 200), *d;
		size_t i;
		json_array_foreach(json_object_get(page, "devices"), i, d) {
			snprintf(id, sizeof id, "00000000000000%02x", (unsigned char)seen++);
			ck_assert_str_eq(json_string_value(json_object_get(d, "id")), id);
		}
		json_t *next = json_object_get(page, "next");
		int more = json_is_string(next);
		if (more)
			snprintf(after, sizeof after, "%s", json_string_value(next));
		json_decref(page);
		if (!more)
			break;
	}
	ck_assert_int_eq(seen, 25);
	json_t *odd = th_get_json(&s, "/v1/devices?group=odd&limit=100", 200);
	ck_assert_int_eq(json_array_size(json_object_get(odd, "devices")), 12);
	json_decref(odd);
	json_t *online = th_get_json(&s, "/v1/devices?online=true", 200);
	ck_assert_int_eq(json_array_size(json_object_get(online, "devices")), 0);
	json_decref(online);

	/* Connect one so the online and hw filters have something to find. */
	char *secret = th_register(&s, DEV1, NULL);
	pid_t sim = sim_start(&s, DEV1, secret, th_tmp(&s, "sim.out"), NULL, NULL);
	ck_assert_int_eq(th_wait_online(&s, DEV1, 1, 10000), 0);
	online = th_get_json(&s, "/v1/devices?online=true", 200);
	ck_assert_int_eq(json_array_size(json_object_get(online, "devices")), 1);
	json_decref(online);
	json_t *hw = th_get_json(&s, "/v1/devices?hw=imp003", 200);
	ck_assert_int_eq(json_array_size(json_object_get(hw, "devices")), 1);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(json_array_get(json_object_get(hw, "devices"), 0),
									"flash"), "table")), "shared id");
	json_decref(hw);
	json_t *offline = th_get_json(&s, "/v1/devices?online=false&limit=1000", 200);
	ck_assert_int_eq(json_array_size(json_object_get(offline, "devices")), 25);
	json_decref(offline);

	th_resp r;
	th_http(&s, "PATCH", "/v1/devices/" DEV1, NULL, "{\"group\":\"lab\",\"name\":\"bench imp\"}", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "group")), "lab");
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "name")), "bench imp");
	th_resp_free(&r);
	th_http(&s, "PATCH", "/v1/devices/" DEV1, NULL, "{\"name\":null}", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert(json_is_null(json_object_get(r.json, "name")));
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "group")), "lab");
	th_resp_free(&r);

	/* Deleting a connected device closes its connection and forgets it. */
	th_http(&s, "DELETE", "/v1/devices/" DEV1, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 204);
	th_resp_free(&r);
	ck_assert_int_eq(th_wait_file(th_tmp(&s, "sim.out"), "closed " DEV1 " 4002 device deleted", 10000), 0);
	th_http(&s, "GET", "/v1/devices/" DEV1, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);
	th_http(&s, "GET", "/v1/devices/" DEV1 "/logs", NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);
	kill(sim, SIGKILL);
	waitpid(sim, NULL, 0);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(log_history_pages_newest_last)
{
	th_server s;
	th_server_start(&s, "--log-rate 0");
	char *secret = th_register(&s, DEV1, NULL);
	const char *out = th_tmp(&s, "sim.out");
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV1,
			       "--secret", secret, "--log-rate", "500", "--log-count", "250",
			       "--exit-when-done", NULL };
	pid_t sim = th_spawn(argv, out);
	ck_assert_int_eq(th_wait_pid(sim, 30000), 0);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "device", "hello from sim 250", 10000), 1);
	/* Newest page first (ascending inside), then walk back with next_before. */
	json_t *page = th_get_json(&s, "/v1/devices/" DEV1 "/logs?limit=100", 200);
	json_t *events = json_object_get(page, "events");
	ck_assert_int_eq(json_array_size(events), 100);
	long long prev = 0;
	size_t i;
	json_t *ev;
	json_array_foreach(events, i, ev) {
		long long id = json_integer_value(json_object_get(ev, "id"));
		ck_assert_int_gt(id, prev);
		prev = id;
		ck_assert_str_eq(json_string_value(json_object_get(ev, "device_id")), DEV1);
		ck_assert(json_is_string(json_object_get(ev, "ts")));
	}
	ck_assert(json_is_integer(json_object_get(page, "next_before")));
	json_decref(page);
	/* status lines + 250 device lines, each exactly once */
	ck_assert_int_eq(th_count_events(&s, DEV1, "hello from sim 1"), 1);
	ck_assert_int_eq(th_count_events(&s, DEV1, "hello from sim 125"), 1);
	ck_assert_int_eq(th_count_events(&s, DEV1, "Device connected"), 1);
	json_t *fwd = th_get_json(&s, "/v1/devices/" DEV1 "/logs?after=0&limit=2", 200);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(fwd, "events"), 0), "msg")),
			 "Device connected");
	json_decref(fwd);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

/* Enrolls `id` with `token` through the node client; returns its output. */
static char *enroll(th_server *s, const char *id, const char *token)
{
	char hello[300], *out = NULL;
	snprintf(hello, sizeof hello, "{\"type\":\"hello\",\"id\":\"%s\",\"enroll\":\"%s\",\"hw\":\"imp003\"}", id, token);
	char *const argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"), "connect", s->ws_url,
			       "send", hello, "wait", "1500", "close", NULL };
	th_run(argv, &out, 30);
	return out ? out : strdup("");
}

static char *enrollment_token(th_server *s, const char *body)
{
	th_resp r;
	th_http(s, "POST", "/v1/enrollment-tokens", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "%ld %s", r.status, r.body);
	char *tok = strdup(json_string_value(json_object_get(r.json, "token")));
	th_resp_free(&r);
	return tok;
}

START_TEST(devices_enroll_themselves_with_a_token)
{
	th_server s;
	th_server_start(&s, NULL);
	char *tok = enrollment_token(&s, "{\"group\":\"lab\",\"max_uses\":1}");
	char *out = enroll(&s, DEV1, tok);
	char *sec = strstr(out, "\"secret\":\"");
	ck_assert_msg(sec != NULL, "no secret in the welcome: %s", out);
	char secret[128];
	snprintf(secret, sizeof secret, "%.*s", (int)strcspn(sec + 10, "\""), sec + 10);
	free(out);
	json_t *d = th_get_json(&s, "/v1/devices/" DEV1, 200);
	ck_assert_str_eq(json_string_value(json_object_get(d, "group")), "lab");
	json_decref(d);
	/* The secret it was given works like any other. */
	pid_t sim = sim_start(&s, DEV1, secret, th_tmp(&s, "sim.out"), NULL, NULL);
	ck_assert_int_eq(th_wait_file(th_tmp(&s, "sim.out"), "welcome " DEV1, 10000), 0);
	kill(sim, SIGKILL);
	waitpid(sim, NULL, 0);
	/* Used up, expired, revoked, unknown, already registered: refused, saying why. */
	out = enroll(&s, DEV2, tok);
	ck_assert_msg(strstr(out, "closed 1008 enrollment refused: enrollment token used up (1 of 1)") != NULL, "%s", out);
	free(out);
	char *brief = enrollment_token(&s, "{\"expires_in\":1}");
	sleep(2);
	out = enroll(&s, DEV2, brief);
	ck_assert_msg(strstr(out, "closed 1008 enrollment refused: enrollment token expired") != NULL, "%s", out);
	free(out);
	char *revoked = enrollment_token(&s, "{}");
	json_t *list = th_get_json(&s, "/v1/enrollment-tokens", 200);
	long long rid = json_integer_value(json_object_get(json_array_get(json_object_get(list, "tokens"), 0), "id"));
	char *listed = json_dumps(list, 0);
	ck_assert_ptr_null(strstr(listed, "tde_")); /* listed without the tokens */
	free(listed);
	json_decref(list);
	char path[64];
	snprintf(path, sizeof path, "/v1/enrollment-tokens/%lld", rid);
	th_resp r;
	th_http(&s, "DELETE", path, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 204);
	th_resp_free(&r);
	out = enroll(&s, DEV2, revoked);
	ck_assert_msg(strstr(out, "closed 1008 enrollment refused: enrollment token revoked") != NULL, "%s", out);
	free(out);
	out = enroll(&s, DEV2, "tde_nothing_like_it");
	ck_assert_msg(strstr(out, "closed 1008 enrollment refused: unknown enrollment token") != NULL, "%s", out);
	free(out);
	char *again = enrollment_token(&s, "{}");
	out = enroll(&s, DEV1, again);
	ck_assert_msg(strstr(out, "closed 1008 enrollment refused: device " DEV1 " is already registered") != NULL,
		      "%s", out);
	free(out);
	json_t *none = th_get_json(&s, "/v1/devices?limit=10", 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(none, "devices")), 1);
	json_decref(none);
	free(tok);
	free(brief);
	free(revoked);
	free(again);
	th_server_cleanup(&s);
}
END_TEST

/* The dashboard's fleet view: search by id or name, counts at the top. */
START_TEST(search_and_fleet_counts)
{
	th_server s;
	th_server_start(&s, NULL);
	free(th_register(&s, "00000000000000a1", "imps"));
	free(th_register(&s, "00000000000000b2", "imps"));
	char *secret = th_register(&s, DEV1, "lamps");
	th_resp resp;
	th_http(&s, "PATCH", "/v1/devices/00000000000000b2", NULL, "{\"name\":\"Kitchen Lamp\"}", NULL, &resp);
	ck_assert_int_eq(resp.status, 200);
	th_resp_free(&resp);

	/* by name, any case; by part of the id; combined with a filter */
	json_t *l = th_get_json(&s, "/v1/devices?q=kitchen", 200);
	json_t *devs = json_object_get(l, "devices");
	ck_assert_int_eq((int)json_array_size(devs), 1);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(devs, 0), "id")), "00000000000000b2");
	ck_assert(json_is_null(json_object_get(json_array_get(devs, 0), "agent_state")));
	json_decref(l);
	l = th_get_json(&s, "/v1/devices?q=0000A", 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(l, "devices")), 1);
	json_decref(l);
	l = th_get_json(&s, "/v1/devices?q=000000&group=lamps", 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(l, "devices")), 0);
	json_decref(l);
	l = th_get_json(&s, "/v1/devices?q=%25", 200);   /* no wildcards: '%' matches nothing */
	ck_assert_int_eq((int)json_array_size(json_object_get(l, "devices")), 0);
	json_decref(l);
	l = th_get_json(&s, "/v1/devices?q=", 200);      /* empty: everything */
	ck_assert_int_eq((int)json_array_size(json_object_get(l, "devices")), 3);
	json_decref(l);

	const char *out = th_tmp(&s, "sim.out");
	pid_t pid = sim_start(&s, DEV1, secret, out, NULL, NULL);
	ck_assert_int_eq(th_wait_online(&s, DEV1, 1, 10000), 0);
	json_t *f = th_get_json(&s, "/v1/fleet", 200);
	ck_assert_int_eq((int)json_integer_value(json_object_get(f, "devices")), 3);
	ck_assert_int_eq((int)json_integer_value(json_object_get(f, "online")), 1);
	ck_assert_int_eq((int)json_integer_value(json_object_get(f, "offline")), 2);
	ck_assert_int_eq((int)json_integer_value(json_object_get(json_object_get(f, "groups"), "imps")), 2);
	ck_assert_int_eq((int)json_integer_value(json_object_get(json_object_get(f, "groups"), "lamps")), 1);
	ck_assert_int_eq((int)json_object_size(json_object_get(f, "hw")), 1);
	json_decref(f);
	/* With agent code deployed, the list shows each agent's state. */
	th_http(&s, "PUT", "/v1/groups/lamps/agent", "text/plain", "server.log('up')", NULL, &resp);
	ck_assert_int_eq(resp.status, 200);
	th_resp_free(&resp);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Agent started.", 10000), 1);
	/* The group's code can be read back (the dashboard's editor starts from it). */
	json_t *code = th_get_json(&s, "/v1/groups/lamps/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(code, "source")), "server.log('up')");
	ck_assert_int_eq(json_integer_value(json_object_get(code, "version")), 1);
	json_decref(code);
	th_http(&s, "GET", "/v1/groups/nocode/agent", NULL, NULL, NULL, &resp);
	ck_assert_int_eq(resp.status, 404);
	th_resp_free(&resp);
	th_http(&s, "PUT", "/v1/groups/lamps/agent", "text/plain", "-- \xff\xfe", NULL, &resp);
	ck_assert_int_eq(resp.status, 400);
	ck_assert_ptr_nonnull(strstr(resp.body, "not UTF-8 text"));
	th_resp_free(&resp);
	l = th_get_json(&s, "/v1/devices?group=lamps", 200);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(l, "devices"), 0),
							   "agent_state")), "running");
	json_decref(l);
	th_http(&s, "POST", "/v1/fleet", NULL, "{}", NULL, &resp);
	ck_assert_int_eq(resp.status, 405);
	th_resp_free(&resp);
	kill(pid, SIGTERM);
	th_wait_pid(pid, 5000);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		tender_sim_connects_logs_and_disconnects,
		node_client_connects_and_logs,
		vanished_device_goes_offline_within_idle_timeout, quiet_device_answering_pings_stays_online, burst_of_frames_arrives_whole,
		second_connection_replaces_the_first,
		list_filter_page_patch_delete,
		log_history_pages_newest_last,
		devices_enroll_themselves_with_a_token,
		search_and_fleet_counts,
	};
	return th_run_tests("02_devices", 90, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

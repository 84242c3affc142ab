/* tests/integration/test_07_agents.c -- agents with the real tenderd and real
 * clients: a device -> agent -> device round trip, an HTTP request answered
 * by the agent, server.save across a restart, a deploy reloading agents,
 * sandbox and resource limits that stop one agent while the others carry on
 * (and the out-of-memory restart with its backoff), messages queued for an
 * offline device (and the bound on them), the management API (the agent's
 * fields, restart, a refused deploy, a group change, 404 and 500 over HTTP),
 * deleting a device stops its agent, tenderctl, migration answers, migration under traffic (with timers moving
 * along), rebalancing of a busy worker, a catastrophic pattern stopped by
 * the budget, and device lists that a busy worker does not hold up.
 * T07_ONLY=name,name runs some of them. */
#define _GNU_SOURCE
#include <check.h>
#include <curl/curl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define DEV1 "00000000000a0001"
#define DEV2 "00000000000a0002"

static const char *echo_agent =
	"local count = (server.load() or {}).count or 0\n"
	"local seq = 0\n"
	"local cseq, ticks, ticker = {}, 0, nil\n"
	"device.on('ping', function(data) device.send('pong', data) end)\n"
	"device.on('save', function(data) count = count + 1; server.save({count = count}) end)\n"
	"device.on('spin', function() while true do end end)\n"
	"device.on('hog', function() local t = {} while true do t[#t + 1] = string.rep('x', 1000) .. #t end end)\n"
	"device.on('escape', function() os.execute('touch /tmp/tender-escaped') end)\n"
	"device.on('regex', function() return string.rep('a', 5000):find('.-.-.-.-.-b') end)\n"

	"http.onrequest(function(req, res)\n"
	"  if req.path == '/count' then res.send(200, {count = count, method = req.method, query = req.query}) return end\n"
	"  if req.path == '/seq' then seq = seq + 1 res.send(200, {seq = seq}) return end\n"
	"  if req.path == '/cseq' then cseq[req.query] = (cseq[req.query] or 0) + 1 res.send(200, {seq = cseq[req.query]}) return end\n"
	"  if req.path == '/tick' then ticker = ticker or timer.every(0.05, function() ticks = ticks + 1 end) res.send(200, {ticks = ticks}) return end\n"
	"  if req.path == '/arm' then timer.after(0.5, function() fired = (fired or 0) + 1 end) res.send(200) return end\n"
	"  if req.path == '/fired' then res.send(200, {fired = fired or 0}) return end\n"
	"  if req.path == '/req' then local n = 0 for _ in pairs(req.headers) do n = n + 1 end\n"
	"    res.send(200, {query = req.query, headers = n, h1 = req.headers['x-h1']}) return end\n"
	"  if req.path == '/push' then device.send('pushed', {n = tonumber(req.body)}) res.send(202, 'queued') return end\n"
	"  res.send(404, 'nothing at ' .. req.path)\n"
	"end)\n";

static void deploy(th_server *s, const char *group, const char *code, long want)
{
	char path[128];
	th_resp r;
	snprintf(path, sizeof path, "/v1/groups/%s/agent", group);
	th_http(s, "PUT", path, "text/plain", code, NULL, &r);
	ck_assert_msg(r.status == want, "deploy: %ld %s", r.status, r.body);
	th_resp_free(&r);
}

static char *agent_id_of(th_server *s, const char *dev)
{
	char path[128];
	snprintf(path, sizeof path, "/v1/devices/%s/agent", dev);
	json_t *a = th_get_json(s, path, 200);
	char *id = strdup(json_string_value(json_object_get(a, "agent_id")));
	json_decref(a);
	return id;
}

static int worker_of(th_server *s, const char *dev)
{
	char path[128];
	snprintf(path, sizeof path, "/v1/devices/%s/agent", dev);
	json_t *a = th_get_json(s, path, 200);
	int w = (int)json_integer_value(json_object_get(a, "worker"));
	json_decref(a);
	return w;
}

/* The agent's status lines ("Agent ...") in the device's log, oldest first
 * (owned: json_decref). */
static json_t *agent_lines(th_server *s, const char *dev)
{
	json_t *lines = json_array();
	long long after = 0;
	for (;;) {
		char path[200];
		snprintf(path, sizeof path, "/v1/devices/%s/logs?type=status&limit=1000&after=%lld", dev, after);
		json_t *page = th_get_json(s, path, 200), *ev;
		size_t i, n = json_array_size(json_object_get(page, "events"));
		json_array_foreach(json_object_get(page, "events"), i, ev) {
			const char *msg = json_string_value(json_object_get(ev, "msg"));
			long long id = json_integer_value(json_object_get(ev, "id"));
			ck_assert_int_gt(id, after);
			after = id;
			if (strncmp(msg, "Agent ", 6) == 0)
				json_array_append_new(lines, json_string(msg));
		}
		json_decref(page);
		if (n < 1000)
			return lines;
	}
}

/* Runs the node client with steps after "connect URL hello ID SECRET expect welcome". */
static char *node(th_server *s, const char *id, const char *secret, const char *const *steps, int timeout)
{
	char *argv[40], *out = NULL;
	int n = 0;
	argv[n++] = "/usr/bin/node";
	argv[n++] = (char *)th_src("tests/integration/wsclient.js");
	argv[n++] = "connect";
	argv[n++] = s->ws_url;
	argv[n++] = "hello";
	argv[n++] = (char *)id;
	argv[n++] = (char *)secret;
	argv[n++] = "expect";
	argv[n++] = "welcome";
	for (; *steps && n < 38; steps++)
		argv[n++] = (char *)*steps;
	argv[n] = NULL;
	th_run(argv, &out, timeout);
	return out ? out : strdup("");
}

START_TEST(round_trip_http_save_reload)
{
	th_server s;
	th_server_start(&s, NULL);
	/* Code that does not compile is refused with its line, nothing deployed. */
	char path[160];
	th_resp r;
	th_http(&s, "PUT", "/v1/groups/lab/agent", "text/plain", "device.on('x', function()\n  return = 1\nend)\n",
		NULL, &r);
	ck_assert_int_eq(r.status, 400);
	ck_assert_msg(strstr(r.body, ":2:") != NULL, "no line number: %s", r.body);
	th_resp_free(&r);
	deploy(&s, "lab", echo_agent, 200);
	char *sec = th_register(&s, DEV1, "lab");

	const char *steps[] = { "send", "{\"type\":\"msg\",\"name\":\"ping\",\"data\":{\"hello\":[1,2,3]}}",
				"expectmsg", "pong", "send", "{\"type\":\"msg\",\"name\":\"save\"}",
				"send", "{\"type\":\"msg\",\"name\":\"save\"}", "wait", "300", "close", NULL };
	char *out = node(&s, DEV1, sec, steps, 30);
	ck_assert_msg(strstr(out, "{\"type\":\"msg\",\"name\":\"pong\",\"data\":{\"hello\":[1,2,3]}}") != NULL,
		      "no pong: %s", out);
	free(out);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Agent started.", 5000), 1);

	/* The agent answers HTTP at its own address. */
	char *aid = agent_id_of(&s, DEV1);
	snprintf(path, sizeof path, "/agent/%s/count?color=blue", aid);
	th_http(&s, "GET", path, NULL, NULL, "", &r);
	ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "count")), 2);
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "method")), "GET");
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "query")), "color=blue");
	th_resp_free(&r);
	snprintf(path, sizeof path, "/agent/%s/count", aid);
	th_http(&s, "GET", "/agent/ag_not_an_agent/count", NULL, NULL, "", &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);

	/* server.save survives a restart of the daemon. */
	ck_assert_int_eq(th_server_stop(&s), 0);
	th_server_restart(&s);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Agent stopped: shutdown.", 5000), 1);
	th_http(&s, "GET", path, NULL, NULL, "", &r);
	ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "count")), 2);
	th_resp_free(&r);

	/* A deploy reloads the running agent. */
	deploy(&s, "lab", "http.onrequest(function(req, res) res.send(200, 'v2') end)\n", 200);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Agent restarted: reload.", 5000), 1);
	th_http(&s, "GET", path, NULL, NULL, "", &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.body, "v2");
	th_resp_free(&r);
	free(aid);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(bad_agents_are_stopped_and_others_carry_on)
{
	th_server s;
	th_server_start(&s, "--agent-budget 2000000 --agent-memory 1048576");
	deploy(&s, "lab", echo_agent, 200);
	char *sec1 = th_register(&s, DEV1, "lab"), *sec2 = th_register(&s, DEV2, "lab");
	unlink("/tmp/tender-escaped");
	/* The bad device: a spin, a memory hog, an escape attempt. */
	const char *bad[] = { "send", "{\"type\":\"msg\",\"name\":\"spin\"}",
			      "send", "{\"type\":\"msg\",\"name\":\"escape\"}",
			      "send", "{\"type\":\"msg\",\"name\":\"ping\",\"data\":1}", "expectmsg", "pong",
			      "send", "{\"type\":\"msg\",\"name\":\"hog\"}", "wait", "500", "close", NULL };
	char *out = node(&s, DEV1, sec1, bad, 60);
	ck_assert_msg(strstr(out, "\"name\":\"pong\"") != NULL, "the agent did not carry on after a spin: %s", out);
	free(out);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Agent stopped: out of memory.", 10000), 1);
	ck_assert_int_eq(access("/tmp/tender-escaped", F_OK), -1);
	json_t *page = th_get_json(&s, "/v1/devices/" DEV1 "/logs?limit=100", 200), *ev;
	size_t i;
	int budget = 0, escape = 0;
	json_array_foreach(json_object_get(page, "events"), i, ev) {
		const char *msg = json_string_value(json_object_get(ev, "msg"));
		if (strcmp(json_string_value(json_object_get(ev, "type")), "agent") != 0)
			continue;
		budget |= strstr(msg, "over its budget") != NULL;
		escape |= strstr(msg, "execute") != NULL;
	}
	json_decref(page);
	ck_assert_msg(budget, "no log line for the spinning handler");
	ck_assert_msg(escape, "no log line for os.execute");
	/* Another device's agent is unaffected. */
	const char *good[] = { "pingpong", "50", "close", NULL };
	out = node(&s, DEV2, sec2, good, 60);
	ck_assert_msg(strstr(out, "pingpong ok 50") != NULL, "%s", out);
	free(out);
	/* And the hog comes back after its backoff (1 s), counted once as a
	 * restart; a second time after 2 s. */
	for (int round = 1; round <= 2; round++) {
		if (round == 2) {
			const char *again[] = { "send", "{\"type\":\"msg\",\"name\":\"hog\"}", "wait", "300", "close", NULL };
			free(node(&s, DEV1, sec1, again, 30));
		}
		json_t *lines = NULL;
		size_t n = 0;
		for (int tries = 0; tries < 200; tries++) {
			json_decref(lines);
			lines = agent_lines(&s, DEV1);
			n = json_array_size(lines);
			if (n == (size_t)(2 * round + 1))
				break;
			usleep(50 * 1000);
		}
		ck_assert_int_eq(n, 2 * round + 1);
		for (size_t k = 0; k < n; k++)
			ck_assert_str_eq(json_string_value(json_array_get(lines, k)),
					 k % 2 ? "Agent stopped: out of memory." : "Agent started.");
		json_decref(lines);
		json_t *info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
		ck_assert_str_eq(json_string_value(json_object_get(info, "state")), "running");
		ck_assert_int_eq(json_integer_value(json_object_get(info, "restarts")), round);
		json_decref(info);
	}
	free(sec1);
	free(sec2);
	th_server_cleanup(&s);
}
END_TEST

/* A backtracking pattern runs in C, where only the matcher's step count can
 * stop it: it must, with an [Agent] error line, and the worker it shares with
 * another agent must go on serving both. */
START_TEST(a_catastrophic_pattern_is_stopped)
{
	th_server s;
	th_server_start(&s, "--agent-workers 1");
	deploy(&s, "lab", echo_agent, 200);
	char *sec1 = th_register(&s, DEV1, "lab"), *sec2 = th_register(&s, DEV2, "lab");
	const char *bad[] = { "send", "{\"type\":\"msg\",\"name\":\"regex\"}",
			      "send", "{\"type\":\"msg\",\"name\":\"ping\",\"data\":7}", "expectmsg", "pong",
			      "close", NULL };
	char *out = node(&s, DEV1, sec1, bad, 60);
	ck_assert_msg(strstr(out, "{\"type\":\"msg\",\"name\":\"pong\",\"data\":7}") != NULL,
		      "the agent did not carry on after its pattern: %s", out);
	free(out);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "agent",
				       "ERROR: the 'regex' handler stopped: pattern too complex: step budget exceeded "
				       "(over its budget of 10000000 instructions)", 5000), 1);
	/* The other agent on the same worker: messages and HTTP. */
	const char *good[] = { "pingpong", "50", "close", NULL };
	out = node(&s, DEV2, sec2, good, 60);
	ck_assert_msg(strstr(out, "pingpong ok 50") != NULL, "%s", out);
	free(out);
	char *aid = agent_id_of(&s, DEV2), path[160];
	th_resp r;
	snprintf(path, sizeof path, "/agent/%s/seq", aid);
	th_http(&s, "GET", path, NULL, NULL, "", &r);
	ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "seq")), 1);
	th_resp_free(&r);
	json_t *info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(info, "state")), "running");
	ck_assert_int_eq(json_integer_value(json_object_get(info, "worker")), 0);
	json_decref(info);
	free(aid);
	free(sec1);
	free(sec2);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(messages_for_an_offline_device_wait_in_order)
{
	th_server s;
	th_server_start(&s, NULL);
	deploy(&s, "lab", echo_agent, 200);
	char *sec = th_register(&s, DEV1, "lab");
	const char *first[] = { "send", "{\"type\":\"msg\",\"name\":\"ping\",\"data\":0}", "expectmsg", "pong",
				"close", NULL };
	free(node(&s, DEV1, sec, first, 30));
	ck_assert_int_eq(th_wait_online(&s, DEV1, 0, 5000), 0);
	char *aid = agent_id_of(&s, DEV1), path[160];
	snprintf(path, sizeof path, "/agent/%s/push", aid);
	for (int n = 1; n <= 3; n++) {
		char body[8];
		th_resp r;
		snprintf(body, sizeof body, "%d", n);
		th_http(&s, "POST", path, "text/plain", body, "", &r);
		ck_assert_int_eq(r.status, 202);
		th_resp_free(&r);
	}
	const char *again[] = { "expectmsg", "pushed", "wait", "300", "close", NULL };
	char *out = node(&s, DEV1, sec, again, 30);
	char *a = strstr(out, "\"data\":{\"n\":1}"), *b = strstr(out, "\"data\":{\"n\":2}"),
	     *c = strstr(out, "\"data\":{\"n\":3}");
	ck_assert_msg(a && b && c && a < b && b < c, "queued messages lost or reordered: %s", out);
	free(out);
	free(aid);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* Whether the device's log has an [Agent] line holding all of these. */
static int has_agent_line(th_server *s, const char *dev, const char *a, const char *b)
{
	char path[160];
	snprintf(path, sizeof path, "/v1/devices/%s/logs?type=agent&limit=1000", dev);
	json_t *page = th_get_json(s, path, 200), *ev;
	size_t i;
	int found = 0;
	json_array_foreach(json_object_get(page, "events"), i, ev) {
		const char *msg = json_string_value(json_object_get(ev, "msg"));
		found |= strstr(msg, a) && (!b || strstr(msg, b));
	}
	json_decref(page);
	return found;
}

static void wait_count(th_server *s, const char *dev, const char *msg, int n)
{
	int have = 0;
	for (int tries = 0; tries < 200 && (have = th_count_events(s, dev, msg)) < n; tries++)
		usleep(50 * 1000);
	ck_assert_msg(have == n, "%s: %d of '%s', not %d", dev, have, msg, n);
}

static void agent_get(th_server *s, const char *aid, const char *rest, th_resp *r)
{
	char path[200];
	snprintf(path, sizeof path, "/agent/%s%s", aid, rest);
	th_http(s, "GET", path, NULL, NULL, "", r);
}

/* The management API does what it says: GET .../agent's fields, restart,
 * a deploy that does not compile changes nothing, PATCH to another group
 * runs that group's code, and over real HTTP an agent without a handler
 * answers 404 and a failing handler 500 with its [Agent] line. */
START_TEST(agent_management)
{
	static const char *counter =
		"local hits = 0\n"
		"http.onrequest(function(req, res)\n"
		"  if req.path == '/boom' then error('kaboom') end\n"
		"  if req.path == '/err' then server.error('bad thing') res.send(200, 'logged') return end\n"
		"  hits = hits + 1\n"
		"  res.send(200, {hits = hits, v = 1})\n"
		"end)\n";
	th_server s;
	th_server_start(&s, NULL);
	deploy(&s, "lab", counter, 200);
	char *sec = th_register(&s, DEV1, "lab");
	char *aid = agent_id_of(&s, DEV1);
	th_resp r;
	json_t *info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(info, "state")), "not started");
	json_decref(info);
	for (int n = 1; n <= 2; n++) {
		agent_get(&s, aid, "/", &r);
		ck_assert_int_eq(r.status, 200);
		ck_assert_int_eq(json_integer_value(json_object_get(r.json, "hits")), n);
		th_resp_free(&r);
	}
	info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(info, "state")), "running");
	ck_assert_str_eq(json_string_value(json_object_get(info, "agent_id")), aid);
	ck_assert_str_eq(json_string_value(json_object_get(info, "group")), "lab");
	ck_assert_int_gt(json_integer_value(json_object_get(info, "memory")), 1000);
	ck_assert_int_eq(json_integer_value(json_object_get(info, "events")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(info, "restarts")), 0);
	ck_assert(!json_is_string(json_object_get(info, "last_error")));
	json_decref(info);

	/* server.error and a failing handler: last_error, 500, [Agent] lines. */
	agent_get(&s, aid, "/err", &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(info, "last_error")), "bad thing");
	ck_assert_int_eq(json_integer_value(json_object_get(info, "events")), 3);
	json_decref(info);
	ck_assert(has_agent_line(&s, DEV1, "ERROR: bad thing", NULL));
	agent_get(&s, aid, "/boom", &r);
	ck_assert_int_eq(r.status, 500);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r.json, "error"), "code")), "agent_error");
	th_resp_free(&r);
	ck_assert(has_agent_line(&s, DEV1, "ERROR: error in the http.onrequest handler", "kaboom"));
	info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_msg(strstr(json_string_value(json_object_get(info, "last_error")), "kaboom"), "%s",
		      json_string_value(json_object_get(info, "last_error")));
	ck_assert_str_eq(json_string_value(json_object_get(info, "state")), "running");
	json_decref(info);

	/* Restart: a new Lua state (hits counts from 1 again), counted. */
	th_http(&s, "POST", "/v1/devices/" DEV1 "/agent/restart", NULL, "", NULL, &r);
	ck_assert_int_eq(r.status, 202);
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "status")), "restarting");
	th_resp_free(&r);
	wait_count(&s, DEV1, "Agent started.", 2);
	agent_get(&s, aid, "/", &r);
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "hits")), 1);
	th_resp_free(&r);
	info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_int_eq(json_integer_value(json_object_get(info, "restarts")), 1);
	json_decref(info);

	/* Code that does not compile: 400, and nothing changes. */
	json_t *before = th_get_json(&s, "/v1/groups/lab/agent", 200);
	th_http(&s, "PUT", "/v1/groups/lab/agent", "text/plain", "http.onrequest(function(req, res)\n  res.send(200 'v2')\nend)\n",
		NULL, &r);
	ck_assert_int_eq(r.status, 400);
	ck_assert_msg(strstr(r.body, ":2:"), "%s", r.body);
	th_resp_free(&r);
	json_t *after = th_get_json(&s, "/v1/groups/lab/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(after, "source")), counter);
	ck_assert_int_eq(json_integer_value(json_object_get(after, "version")),
			 json_integer_value(json_object_get(before, "version")));
	json_decref(before);
	json_decref(after);
	agent_get(&s, aid, "/", &r);
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "hits")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "v")), 1);
	th_resp_free(&r);
	ck_assert_int_eq(th_count_events(&s, DEV1, "Agent restarted: reload."), 0);

	/* Another group: its code runs at once. */
	deploy(&s, "other", "http.onrequest(function(req, res) res.send(200, 'other code') end)\n", 200);
	th_http(&s, "PATCH", "/v1/devices/" DEV1, NULL, "{\"group\":\"other\"}", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	wait_count(&s, DEV1, "Agent started.", 3);
	agent_get(&s, aid, "/", &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(r.body, "other code");
	th_resp_free(&r);
	info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(info, "group")), "other");
	json_decref(info);

	/* An agent with no http.onrequest handler: 404. */
	deploy(&s, "quiet", "device.on('x', function() end)\n", 200);
	char *sec2 = th_register(&s, DEV2, "quiet"), *aid2 = agent_id_of(&s, DEV2);
	agent_get(&s, aid2, "/anything", &r);
	ck_assert_int_eq(r.status, 404);
	ck_assert_msg(strstr(r.body, "no http.onrequest handler"), "%s", r.body);
	/* tenderd's own answer, in the API's JSON form, says so (it said
	 * text/plain: found by tests/fuzz/fuzz_api.c) */
	ck_assert_msg(strncmp(r.content_type, "application/json", 16) == 0, "Content-Type: %s", r.content_type);
	th_resp_free(&r);
	free(aid);
	free(aid2);
	free(sec);
	free(sec2);
	th_server_cleanup(&s);
}
END_TEST

/* The offline queue is bounded: past --agent-offline-queue the oldest
 * message goes, with a log line each; the rest arrive in order. */
START_TEST(the_offline_queue_drops_the_oldest)
{
	th_server s;
	th_server_start(&s, "--agent-offline-queue 3");
	deploy(&s, "lab", echo_agent, 200);
	char *sec = th_register(&s, DEV1, "lab");
	const char *first[] = { "send", "{\"type\":\"msg\",\"name\":\"ping\",\"data\":0}", "expectmsg", "pong",
				"close", NULL };
	free(node(&s, DEV1, sec, first, 30));
	ck_assert_int_eq(th_wait_online(&s, DEV1, 0, 5000), 0);
	char *aid = agent_id_of(&s, DEV1), path[160];
	snprintf(path, sizeof path, "/agent/%s/push", aid);
	for (int n = 1; n <= 5; n++) {
		char body[8];
		th_resp r;
		snprintf(body, sizeof body, "%d", n);
		th_http(&s, "POST", path, "text/plain", body, "", &r);
		ck_assert_int_eq(r.status, 202);
		th_resp_free(&r);
	}
	wait_count(&s, DEV1, "message to the offline device dropped: its queue holds 3", 2);
	json_t *info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_int_eq(json_integer_value(json_object_get(info, "queued_messages")), 3);
	json_decref(info);
	const char *again[] = { "expectmsg", "pushed", "wait", "300", "close", NULL };
	char *out = node(&s, DEV1, sec, again, 30);
	ck_assert_msg(!strstr(out, "\"data\":{\"n\":1}") && !strstr(out, "\"data\":{\"n\":2}"), "the oldest stayed: %s", out);
	char *a = strstr(out, "\"data\":{\"n\":3}"), *b = strstr(out, "\"data\":{\"n\":4}"), *c = strstr(out, "\"data\":{\"n\":5}");
	ck_assert_msg(a && b && c && a < b && b < c, "the newest lost or reordered: %s", out);
	free(out);
	free(aid);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* DELETE /v1/devices/{id} stops its agent and forgets it: its timer stops
 * saving and logging, and a device registered again with the id starts
 * with nothing of the old one's. */
START_TEST(deleting_a_device_stops_its_agent)
{
	static const char *ticker =
		"local n = 0\n"
		"timer.every(0.05, function() n = n + 1 server.save({n = n}) server.log('tick ' .. n) end)\n"
		"http.onrequest(function(req, res) res.send(200, {saved = server.load() or 'nothing'}) end)\n";
	th_server s;
	th_server_start(&s, "--agent-workers 2");
	deploy(&s, "lab", ticker, 200);
	char *sec = th_register(&s, DEV1, "lab"), *aid = agent_id_of(&s, DEV1);
	th_resp r;
	agent_get(&s, aid, "/", &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "agent", "tick 3", 5000), 1);
	th_http(&s, "DELETE", "/v1/devices/" DEV1, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 204);
	th_resp_free(&r);
	th_http(&s, "GET", "/v1/devices/" DEV1 "/agent", NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);
	agent_get(&s, aid, "/", &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);

	/* The id again, in a group without code: nothing of the old agent's
	 * (its timer ticked every 50 ms). */
	char *sec2 = th_register(&s, DEV1, "none"), *aid2 = agent_id_of(&s, DEV1);
	ck_assert_str_ne(aid, aid2);
	usleep(500 * 1000);
	json_t *page = th_get_json(&s, "/v1/devices/" DEV1 "/logs?limit=1000", 200), *ev;
	size_t i;
	json_array_foreach(json_object_get(page, "events"), i, ev)
		ck_assert_msg(strncmp(json_string_value(json_object_get(ev, "msg")), "tick", 4) != 0,
			      "the deleted device's agent still runs: %s", json_string_value(json_object_get(ev, "msg")));
	json_decref(page);
	json_t *info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(info, "state")), "not started");
	json_decref(info);
	/* Into the group with code: a new agent, with no saved state. */
	th_http(&s, "PATCH", "/v1/devices/" DEV1, NULL, "{\"group\":\"lab\"}", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	agent_get(&s, aid2, "/", &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "saved")), "nothing");
	th_resp_free(&r);
	ck_assert_int_eq(th_count_events(&s, DEV1, "Agent started."), 1);
	free(aid);
	free(aid2);
	free(sec);
	free(sec2);
	th_server_cleanup(&s);
}
END_TEST

/* What an agent sees of a request (docs/agents.md, http): the query rebuilt
 * from the decoded arguments, an argument without a value left out, at
 * most 2047 bytes of it; the first 32 headers, names in lower case. */
START_TEST(an_http_request_as_the_agent_sees_it)
{
	th_server s;
	th_server_start(&s, NULL);
	deploy(&s, "lab", echo_agent, 200);
	char *sec = th_register(&s, DEV1, "lab"), *aid = agent_id_of(&s, DEV1);
	char *url = malloc(4000), *argv[100];
	int n = snprintf(url, 4000, "%s/agent/%s/req?flag&a=1&b=two%%20words&long=", s.http_url, aid);
	memset(url + n, 'A', 3000);
	url[n + 3000] = '\0';
	char hdrs[40][24];
	int k = 0;
	argv[k++] = "/usr/bin/curl";
	argv[k++] = "-s";
	for (int i = 0; i < 40; i++) {
		snprintf(hdrs[i], sizeof hdrs[i], "X-H%d: v%d", i + 1, i + 1);
		argv[k++] = "-H";
		argv[k++] = hdrs[i];
	}
	argv[k++] = url;
	argv[k] = NULL;
	char *out = NULL;
	ck_assert_int_eq(th_run(argv, &out, 30), 0);
	json_t *j = json_loads(out ? out : "", 0, NULL);
	ck_assert_msg(j, "%s", out);
	const char *q = json_string_value(json_object_get(j, "query"));
	ck_assert_msg(q && strncmp(q, "a=1&b=two words&long=AAAA", 25) == 0, "%s", q);
	ck_assert_uint_eq(strlen(q), 2047);
	ck_assert_int_eq(json_integer_value(json_object_get(j, "headers")), 32);
	ck_assert_str_eq(json_string_value(json_object_get(j, "h1")), "v1");
	json_decref(j);
	free(out);
	free(url);
	free(aid);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* Checks that a device's agent lines are "Agent started." followed by
 * pairs of "Agent stopped: migrating." and "Agent started.", and nothing
 * else; returns the number of moves (0 while a move is half logged). */
static int moves_logged(th_server *s, const char *dev, int *complete)
{
	json_t *lines = agent_lines(s, dev), *line;
	size_t i, n = json_array_size(lines);
	json_array_foreach(lines, i, line) {
		const char *want = i % 2 ? "Agent stopped: migrating." : "Agent started.";
		ck_assert_msg(strcmp(json_string_value(line), want) == 0, "%s: line %zu of the agent's is '%s', not '%s'",
			      dev, i, json_string_value(line), want);
	}
	json_decref(lines);
	*complete = n % 2 == 1;
	return (int)(n / 2);
}

struct cbuf {
	char data[512];
	size_t len;
};

static size_t cbuf_write(char *p, size_t size, size_t n, void *arg)
{
	struct cbuf *b = arg;
	size_t len = size * n, room = sizeof b->data - 1 - b->len;
	memcpy(b->data + b->len, p, len < room ? len : room);
	b->len += len < room ? len : room;
	b->data[b->len] = '\0';
	return size * n;
}

/* A numbered HTTP client, in a child process: GETs url until `stop` exists;
 * the answers must be {"seq":1}, {"seq":2}, ... (nothing lost, duplicated
 * or reordered); after the first one it writes "started" to report, at the
 * end "ok N" or what went wrong, and exits 0 or 1. */
static pid_t seq_client(const char *url, const char *stop, const char *report)
{
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid)
		return pid;
	CURL *c = curl_easy_init();
	long n = 0;
	char why[800] = "";
	while (c && access(stop, F_OK) != 0) {
		struct cbuf b = { .len = 0 };
		long status = 0;
		curl_easy_setopt(c, CURLOPT_URL, url);
		curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
		curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, cbuf_write);
		curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
		CURLcode rc = curl_easy_perform(c);
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
		json_t *j = rc == CURLE_OK ? json_loads(b.data, 0, NULL) : NULL;
		long long seq = json_integer_value(json_object_get(j, "seq"));
		json_decref(j);
		if (rc != CURLE_OK || status != 200 || seq != n + 1) {
			snprintf(why, sizeof why, "request %ld: %s, status %ld, seq %lld: %s", n + 1,
				 curl_easy_strerror(rc), status, seq, b.data);
			break;
		}
		if (++n == 1) {
			FILE *f = fopen(report, "w");
			fputs("started\n", f);
			fclose(f);
		}
	}
	FILE *f = fopen(report, "w");
	if (*why || !c)
		fprintf(f, "failed after %ld: %s\n", n, c ? why : "no curl");
	else
		fprintf(f, "ok %ld\n", n);
	fclose(f);
	_exit(*why || !c ? 1 : 0);
}

static int still_running(pid_t pid)
{
	return waitpid(pid, NULL, WNOHANG) == 0;
}

/* Three devices' agents move among three workers thousands of times while
 * each device exchanges numbered messages with its agent (tender-sim checks
 * every reply comes back once, in order) and four HTTP clients send numbered
 * requests (each checks its answers count 1, 2, 3, ... per client): all of
 * it overlaps the moves from start to end.  Nothing is lost, duplicated or
 * reordered; each device's log alternates "Agent stopped: migrating." and
 * "Agent started."; timers go along. */
START_TEST(migration_under_traffic_loses_nothing)
{
	enum { NDEV = 3, NCLIENT = 4, MOVES = 6000 };
	th_server s;
	th_server_start(&s, "--agent-workers 3");
	deploy(&s, "lab", echo_agent, 200);
	char ids[NDEV][17], *aids[NDEV], path[200];
	const char *creds = th_tmp(&s, "creds");
	FILE *f = fopen(creds, "w");
	for (int i = 0; i < NDEV; i++) {
		snprintf(ids[i], sizeof ids[i], "00000000000d%04x", (unsigned)i);
		char *sec = th_register(&s, ids[i], "lab");
		fprintf(f, "%s %s\n", ids[i], sec);
		free(sec);
	}
	fclose(f);
	const char *sim_out = th_tmp(&s, "sim.out");
	char *const sim_argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--creds", (char *)creds,
				   "--msg-rate", "100", "--expect", "pong", NULL };
	pid_t sim = th_spawn(sim_argv, sim_out);
	for (int i = 0; i < NDEV; i++) {
		char needle[64];
		snprintf(needle, sizeof needle, "msg %s pong", ids[i]);
		ck_assert_int_eq(th_wait_file(sim_out, needle, 20000), 0);
		aids[i] = agent_id_of(&s, ids[i]);
	}
	/* A one-shot timer and a repeating one, armed before the moves. */
	th_resp r;
	snprintf(path, sizeof path, "/agent/%s/arm", aids[0]);
	th_http(&s, "GET", path, NULL, NULL, "", &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	snprintf(path, sizeof path, "/agent/%s/tick", aids[1]);
	th_http(&s, "GET", path, NULL, NULL, "", &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);

	char stop[700], reports[NCLIENT][700];
	snprintf(stop, sizeof stop, "%s/stop-clients", s.dir);
	pid_t clients[NCLIENT];
	for (int k = 0; k < NCLIENT; k++) {
		char url[400];
		snprintf(url, sizeof url, "%s/agent/%s/cseq?c=%d", s.http_url, aids[k % NDEV], k);
		snprintf(reports[k], sizeof reports[k], "%s/client-%d", s.dir, k);
		clients[k] = seq_client(url, stop, reports[k]);
	}
	for (int k = 0; k < NCLIENT; k++)
		ck_assert_int_eq(th_wait_file(reports[k], "started", 20000), 0);

	/* Move them back and forth: to the next worker, then back to the one
	 * before, and now and then to where it is (200, nothing moves). */
	int moves = 0, at[NDEV];
	for (int i = 0; i < NDEV; i++)
		at[i] = worker_of(&s, ids[i]);
	for (int i = 0; i < MOVES; i++) {
		int d = i % NDEV, turn = i / NDEV, stay = turn % 10 == 9;
		if (turn % 2 == 0)
			snprintf(path, sizeof path, "/v1/devices/%s/agent/migrate", ids[d]);
		else
			snprintf(path, sizeof path, "/v1/devices/%s/agent/migrate?worker=%d", ids[d],
				 stay ? at[d] : (at[d] + 2) % 3);
		th_http(&s, "POST", path, NULL, "", NULL, &r);
		ck_assert_msg(r.status == (stay ? 200 : 202), "%s: %ld %s", path, r.status, r.body);
		json_t *to = json_object_get(r.json, stay ? "worker" : "to");
		ck_assert_int_eq(json_integer_value(to), stay ? at[d] : turn % 2 ? (at[d] + 2) % 3 : (at[d] + 1) % 3);
		at[d] = (int)json_integer_value(to);
		moves += r.status == 202;
		th_resp_free(&r);
	}
	/* The traffic ran all along. */
	ck_assert_msg(still_running(sim), "tender-sim stopped before the moves ended");
	for (int k = 0; k < NCLIENT; k++) {
		char *rep = th_read_file(reports[k]);
		ck_assert_msg(still_running(clients[k]), "HTTP client %d stopped before the moves ended: %s", k, rep);
		free(rep);
	}
	ck_assert_int_ge(moves, MOVES * 8 / 10);

	f = fopen(stop, "w");
	fclose(f);
	for (int k = 0; k < NCLIENT; k++) {
		int rc = th_wait_pid(clients[k], 60000);
		char *rep = th_read_file(reports[k]);
		ck_assert_msg(rc == 0 && rep && strncmp(rep, "ok ", 3) == 0, "HTTP client %d: %s", k, rep);
		ck_assert_msg(atol(rep + 3) >= 10, "HTTP client %d: %s", k, rep);
		fprintf(stderr, "migration_under_traffic: HTTP client %d: %s", k, rep);
		free(rep);
	}
	kill(sim, SIGINT);
	th_wait_pid(sim, 30000);
	char errpath[800];
	snprintf(errpath, sizeof errpath, "%s.err", sim_out);
	char *report = th_read_file(errpath);
	long long replies = -1, sent = -1, bad = -1;
	int parsed = 0;
	for (char *p = report; p && !parsed; p = strstr(p + 1, "tender-sim: "))
		parsed = sscanf(p, "tender-sim: %lld replies of %lld msgs, %lld bad", &replies, &sent, &bad) == 3;
	ck_assert_msg(parsed, "%s", report ? report : "(no report)");
	/* Every reply in order; only those in flight when it stopped missing. */
	ck_assert_msg(bad == 0 && sent - replies <= 30 && replies >= 100, "%s", report);
	free(report);

	/* The timers went along: the one-shot fired once, the other goes on. */
	snprintf(path, sizeof path, "/agent/%s/fired", aids[0]);
	long long fired = 0;
	for (int tries = 0; tries < 100 && fired == 0; tries++) {
		th_http(&s, "GET", path, NULL, NULL, "", &r);
		ck_assert_int_eq(r.status, 200);
		fired = json_integer_value(json_object_get(r.json, "fired"));
		th_resp_free(&r);
		if (!fired)
			usleep(100 * 1000);
	}
	ck_assert_int_eq(fired, 1);
	snprintf(path, sizeof path, "/agent/%s/tick", aids[1]);
	long long ticks[2];
	for (int t = 0; t < 2; t++) {
		if (t)
			usleep(500 * 1000);
		th_http(&s, "GET", path, NULL, NULL, "", &r);
		ck_assert_int_eq(r.status, 200);
		ticks[t] = json_integer_value(json_object_get(r.json, "ticks"));
		th_resp_free(&r);
	}
	ck_assert_msg(ticks[0] >= 10 && ticks[1] > ticks[0], "the repeating timer: %lld then %lld", ticks[0], ticks[1]);

	/* Each move logged both halves, in that order, once the last settled. */
	int logged = 0;
	for (int i = 0; i < NDEV; i++) {
		int n = 0, complete = 0;
		for (int tries = 0; tries < 100 && !complete; tries++) {
			n = moves_logged(&s, ids[i], &complete);
			if (!complete)
				usleep(100 * 1000);
		}
		ck_assert_msg(complete, "%s: a move never finished", ids[i]);
		ck_assert_int_ge(n, MOVES / NDEV / 4);
		logged += n;
	}
	ck_assert_int_eq(logged, moves);
	fprintf(stderr, "migration_under_traffic: %d moves asked, %d logged; %lld round trips; ticks %lld\n", moves,
		logged, replies, ticks[1]);
	for (int i = 0; i < NDEV; i++)
		free(aids[i]);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(tenderctl_deploys_and_shows_agents)
{
	th_server s;
	th_server_start(&s, "--agent-workers 2");
	char url[160], file[700], *out = NULL;
	snprintf(url, sizeof url, "--url=%s", s.http_url);
	snprintf(file, sizeof file, "%s/agent.lua", s.dir);
	FILE *f = fopen(file, "w");
	fputs(echo_agent, f);
	fclose(f);
	char *const deploy_argv[] = { (char *)th_bin("tenderctl"), url, "--token", s.token, "deploy", "lab", file, NULL };
	ck_assert_int_eq(th_run(deploy_argv, &out, 20), 0);
	ck_assert_ptr_nonnull(strstr(out, "deployed"));
	free(out);
	char *sec = th_register(&s, DEV1, "lab");
	const char *steps[] = { "send", "{\"type\":\"msg\",\"name\":\"ping\",\"data\":1}", "expectmsg", "pong",
				"close", NULL };
	free(node(&s, DEV1, sec, steps, 30));
	char *const agent_argv[] = { (char *)th_bin("tenderctl"), url, "--token", s.token, "agent", DEV1, NULL };
	ck_assert_int_eq(th_run(agent_argv, &out, 20), 0);
	ck_assert_msg(strstr(out, "state:") && strstr(out, "running") && strstr(out, "agent_id:"), "%s", out);
	free(out);

	char *const restart_argv[] = { (char *)th_bin("tenderctl"), url, "--token", s.token, "agent-restart", DEV1, NULL };
	ck_assert_int_eq(th_run(restart_argv, &out, 20), 0);
	ck_assert_msg(strstr(out, "restarting"), "%s", out);
	free(out);
	wait_count(&s, DEV1, "Agent started.", 2);
	json_t *info = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_int_eq(json_integer_value(json_object_get(info, "restarts")), 1);
	json_decref(info);

	int at = worker_of(&s, DEV1);
	char other[16], want[80];
	snprintf(other, sizeof other, "%d", 1 - at);
	char *const migrate_argv[] = { (char *)th_bin("tenderctl"), url, "--token", s.token, "agent-migrate", DEV1,
				       "--worker", other, NULL };
	ck_assert_int_eq(th_run(migrate_argv, &out, 20), 0);
	snprintf(want, sizeof want, "migrating from worker %d to worker %d", at, 1 - at);
	ck_assert_msg(strstr(out, want), "%s", out);
	free(out);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Agent stopped: migrating.", 5000), 1);
	ck_assert_int_eq(worker_of(&s, DEV1), 1 - at);
	ck_assert_int_eq(th_run(migrate_argv, &out, 20), 0);
	snprintf(want, sizeof want, "in place: the agent is on worker %d already", 1 - at);
	ck_assert_msg(strstr(out, want), "%s", out);
	free(out);
	char *const bad_argv[] = { (char *)th_bin("tenderctl"), url, "--token", s.token, "agent-migrate", DEV1,
				   "--worker", "7", NULL };
	ck_assert_int_ne(th_run(bad_argv, &out, 20), 0);
	free(out);
	ck_assert_int_eq(worker_of(&s, DEV1), 1 - at);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* tender-sim for the devices in creds: `count` messages `name` each, every
 * one expecting a "pong" with its seq; returns the pid (stdout to out). */
static pid_t sim_round_trips(th_server *s, const char *creds, const char *name, const char *count,
			     const char *out)
{
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s->ws_url, "--creds", (char *)creds,
			       "--msg-count", (char *)count, "--msg-name", (char *)name, "--expect", "pong",
			       "--exit-when-done", "--quiet", NULL };
	return th_spawn(argv, out);
}

/* What tender-sim's summary says ("N replies of M msgs, B bad"), asserted. */
static void sim_check(const char *out, long want)
{
	char errpath[700];
	snprintf(errpath, sizeof errpath, "%s.err", out);
	char *report = th_read_file(errpath);
	char want_text[80];
	snprintf(want_text, sizeof want_text, "%ld replies of %ld msgs, 0 bad", want, want);
	ck_assert_msg(report && strstr(report, want_text), "%s", report ? report : "(no report)");
	free(report);
}

/* Rebalancing weighs work.  Four agents piled onto worker 0 stay there while
 * they are idle; when they get busy, the supervisor spreads them as their
 * events arrive, and the moves lose nothing. */
START_TEST(a_busy_worker_is_rebalanced)
{
	static const char *busy_agent =
		"device.on('ping', function(d) device.send('pong', d) end)\n"
		"device.on('work', function(d) local x = 0 for i = 1, 300000 do x = x + i end device.send('pong', d) end)\n";
	th_server s;
	th_server_start(&s, "--agent-workers 2");
	deploy(&s, "lab", busy_agent, 200);
	char ids[4][17];
	const char *creds = th_tmp(&s, "creds");
	FILE *f = fopen(creds, "w");
	for (int i = 0; i < 4; i++) {
		snprintf(ids[i], sizeof ids[i], "00000000000c%04x", (unsigned)i);
		char *sec = th_register(&s, ids[i], "lab");
		fprintf(f, "%s %s\n", ids[i], sec);
		free(sec);
	}
	fclose(f);
	const char *out = th_tmp(&s, "sim.out");
	ck_assert_int_eq(th_wait_pid(sim_round_trips(&s, creds, "ping", "20", out), 60000), 0);
	sim_check(out, 80);

	/* Pile them onto worker 0. */
	th_resp r;
	char path[160];
	for (int i = 0; i < 4; i++) {
		snprintf(path, sizeof path, "/v1/devices/%s/agent/migrate?worker=0", ids[i]);
		th_http(&s, "POST", path, NULL, "", NULL, &r);
		ck_assert_msg(r.status == 202 || r.status == 200, "%ld %s", r.status, r.body);
		th_resp_free(&r);
	}
	for (int i = 0; i < 4; i++) {
		int tries = 0;
		while (worker_of(&s, ids[i]) != 0 && tries++ < 100)
			usleep(50 * 1000);
		ck_assert_int_eq(worker_of(&s, ids[i]), 0);
	}
	int piled = 0;
	for (int i = 0; i < 4; i++)
		piled += th_count_events(&s, ids[i], "Agent stopped: migrating.");

	/* Idle agents stay where they are: four on one worker is no imbalance. */
	ck_assert_int_eq(th_wait_pid(sim_round_trips(&s, creds, "ping", "20", out), 60000), 0);
	sim_check(out, 80);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(worker_of(&s, ids[i]), 0);

	/* Busy ones do not. */
	pid_t pid = sim_round_trips(&s, creds, "work", "500", out);
	int spread = 0, status = -1;
	for (int tries = 0; tries < 1200; tries++) {
		int on1 = 0;
		for (int i = 0; i < 4; i++)
			on1 += worker_of(&s, ids[i]) == 1;
		spread |= on1 > 0 && on1 < 4;
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
		usleep(100 * 1000);
	}
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "tender-sim: status %d", status);
	sim_check(out, 2000);
	ck_assert_msg(spread, "the busy worker's agents were never spread");
	int moved = 0;
	for (int i = 0; i < 4; i++)
		moved += th_count_events(&s, ids[i], "Agent stopped: migrating.");
	ck_assert_int_gt(moved, piled);
	th_server_cleanup(&s);
}
END_TEST

/* POST .../agent/migrate: to another worker 202 {"from","to"}; to where it is
 * 200 "in place" (nothing moves); to a worker that does not exist 400 naming
 * the range; for an agent that has not started 409. */
START_TEST(migrate_answers)
{
	th_server s;
	th_server_start(&s, "--agent-workers 2");
	deploy(&s, "lab", echo_agent, 200);
	char *sec = th_register(&s, DEV1, "lab"), *sec2 = th_register(&s, DEV2, "lab");
	const char *steps[] = { "send", "{\"type\":\"msg\",\"name\":\"ping\",\"data\":1}", "expectmsg", "pong",
				"close", NULL };
	free(node(&s, DEV1, sec, steps, 30));
	int at = worker_of(&s, DEV1), other = 1 - at;
	char path[160];
	th_resp r;
	snprintf(path, sizeof path, "/v1/devices/%s/agent/migrate?worker=%d", DEV1, at);
	th_http(&s, "POST", path, NULL, "", NULL, &r);
	ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "status")), "in place");
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "worker")), at);
	th_resp_free(&r);
	ck_assert_int_eq(worker_of(&s, DEV1), at);
	ck_assert_int_eq(th_count_events(&s, DEV1, "Agent stopped: migrating."), 0);

	th_http(&s, "POST", "/v1/devices/" DEV1 "/agent/migrate?worker=2", NULL, "", NULL, &r);
	ck_assert_int_eq(r.status, 400);
	ck_assert_msg(strstr(r.body, "from 0 to 1"), "%s", r.body);
	th_resp_free(&r);
	ck_assert_int_eq(worker_of(&s, DEV1), at);

	snprintf(path, sizeof path, "/v1/devices/%s/agent/migrate?worker=%d", DEV1, other);
	th_http(&s, "POST", path, NULL, "", NULL, &r);
	ck_assert_msg(r.status == 202, "%ld %s", r.status, r.body);
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "from")), at);
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "to")), other);
	th_resp_free(&r);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "status", "Agent stopped: migrating.", 5000), 1);
	ck_assert_int_eq(worker_of(&s, DEV1), other);
	/* No ?worker: the next one. */
	th_http(&s, "POST", "/v1/devices/" DEV1 "/agent/migrate", NULL, "", NULL, &r);
	ck_assert_msg(r.status == 202, "%ld %s", r.status, r.body);
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "to")), at);
	th_resp_free(&r);

	/* DEV2 never connected since the server started: nothing to move. */
	th_http(&s, "POST", "/v1/devices/" DEV2 "/agent/migrate?worker=0", NULL, "", NULL, &r);
	ck_assert_msg(r.status == 409, "%ld %s", r.status, r.body);
	ck_assert_msg(strstr(r.body, "has not started"), "%s", r.body);
	th_resp_free(&r);
	free(sec);
	free(sec2);
	th_server_cleanup(&s);
}
END_TEST

/* An agent that holds its worker in a handler until its saved state says
 * go, which the test writes into the store (let_go): nothing here depends
 * on how long anything takes.  The CPU bound only ends it if the test
 * fails before it lets go (over the 20 s its HTTP requests wait). */
static const char *holding_agent =
	"device.on('hold', function()\n"
	"  server.log('holding the worker')\n"
	"  local t0 = os.clock()\n"
	"  while not (server.load() or {}).go and os.clock() - t0 < 60 do end\n"
	"  server.log('let go')\n"
	"end)\n";

static void let_go(th_server *s, const char *dev)
{
	sqlite3 *db;
	char sql[200], *err = NULL;
	ck_assert_int_eq(sqlite3_open(th_tmp(s, "tender.db"), &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 20000);
	snprintf(sql, sizeof sql, "INSERT OR REPLACE INTO agent_state (device, saved, updated) "
		 "VALUES ('%s', '{\"go\":true}', 0)", dev);
	ck_assert_msg(sqlite3_exec(db, sql, NULL, NULL, &err) == SQLITE_OK, "%s", err ? err : "");
	sqlite3_close(db);
}

static const char *agent_state_in(json_t *list, const char *dev, int *found)
{
	json_t *d;
	size_t i;
	*found = 0;
	json_array_foreach(json_object_get(list, "devices"), i, d)
		if (strcmp(json_string_value(json_object_get(d, "id")), dev) == 0) {
			*found = 1;
			return json_string_value(json_object_get(d, "agent_state"));
		}
	return NULL;
}

/* With the only agent worker held by a busy handler, the device list, a
 * device, the agent of an idle device on that worker and the fleet counts
 * all answer (from what the worker published), with the right states; the
 * busy agent's own GET .../agent answers after its event, counting it. */
START_TEST(a_busy_worker_holds_up_no_device_list)
{
	th_server s;
	th_server_start(&s, "--agent-workers 1 --agent-cpu-ms 120000 --agent-budget 2000000000");
	deploy(&s, "lab", holding_agent, 200);
	char *sec1 = th_register(&s, DEV1, "lab"), *sec2 = th_register(&s, DEV2, "lab");
	free(th_register(&s, "00000000000a0003", "lab"));   /* never connects: "not started" */
	free(th_register(&s, "00000000000a0004", "plain")); /* no code in its group: null */
	const char *out2 = th_tmp(&s, "idle.out"), *out1 = th_tmp(&s, "busy.out");
	char *const idle[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"), "connect", s.ws_url,
			       "hello", DEV2, sec2, "expect", "welcome", "hold", NULL };
	pid_t pid2 = th_spawn(idle, out2);
	ck_assert_int_ge(th_wait_event(&s, DEV2, "status", "Agent started.", 20000), 1);
	char *const busy[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"), "connect", s.ws_url,
			       "hello", DEV1, sec1, "expect", "welcome",
			       "send", "{\"type\":\"msg\",\"name\":\"hold\",\"data\":null}", "hold", NULL };
	pid_t pid1 = th_spawn(busy, out1);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "agent", "holding the worker", 20000), 1);

	/* The worker runs the handler until let_go: each answer came meanwhile. */
	json_t *list = th_get_json(&s, "/v1/devices", 200);
	int found;
	const char *st = agent_state_in(list, DEV1, &found);
	ck_assert_msg(found && st && strcmp(st, "running") == 0, "busy: %s", st ? st : "null");
	st = agent_state_in(list, DEV2, &found);
	ck_assert_msg(found && st && strcmp(st, "running") == 0, "idle: %s", st ? st : "null");
	st = agent_state_in(list, "00000000000a0003", &found);
	ck_assert_msg(found && st && strcmp(st, "not started") == 0, "never connected: %s", st ? st : "null");
	st = agent_state_in(list, "00000000000a0004", &found);
	ck_assert_msg(found && !st, "no code: %s", st);
	json_decref(list);
	list = th_get_json(&s, "/v1/devices?online=true", 200);
	ck_assert_uint_eq(json_array_size(json_object_get(list, "devices")), 2);
	json_decref(list);
	json_t *d = th_get_json(&s, "/v1/devices/" DEV1, 200);
	ck_assert_str_eq(json_string_value(json_object_get(d, "agent_state")), "running");
	json_decref(d);
	d = th_get_json(&s, "/v1/devices/00000000000a0004", 200);
	ck_assert(json_is_null(json_object_get(d, "agent_state")));
	json_decref(d);
	json_t *a = th_get_json(&s, "/v1/devices/" DEV2 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(a, "state")), "running");
	ck_assert(json_is_true(json_object_get(a, "device_connected")));
	ck_assert_int_eq(json_integer_value(json_object_get(a, "worker")), 0);
	ck_assert_int_ge(json_integer_value(json_object_get(a, "events")), 1);
	ck_assert_int_gt(json_integer_value(json_object_get(a, "memory")), 0);
	json_decref(a);
	json_t *f = th_get_json(&s, "/v1/fleet", 200);
	ck_assert_int_eq(json_integer_value(json_object_get(f, "devices")), 4);
	ck_assert_int_eq(json_integer_value(json_object_get(f, "online")), 2);
	json_decref(f);
	ck_assert_int_eq(th_count_events(&s, DEV1, "let go"), 0);

	let_go(&s, DEV1);
	ck_assert_int_ge(th_wait_event(&s, DEV1, "agent", "let go", 20000), 1);
	a = th_get_json(&s, "/v1/devices/" DEV1 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(a, "state")), "running");
	ck_assert_int_eq(json_integer_value(json_object_get(a, "events")), 2); /* its connect and the hold */
	ck_assert_msg(!json_is_string(json_object_get(a, "last_error")), "%s",
		      json_string_value(json_object_get(a, "last_error")));
	json_decref(a);
	th_server_cleanup(&s);
	th_wait_pid(pid1, 20000);
	th_wait_pid(pid2, 20000);
	free(sec1);
	free(sec2);
}
END_TEST

START_TEST(tender_sim_scripted_round_trips)
{
	th_server s;
	th_server_start(&s, NULL);
	/* The example echo agent, as shipped. */
	char *code = th_read_file(th_src("agents/examples/echo.lua"));
	ck_assert_ptr_nonnull(code);
	deploy(&s, "lab", code, 200);
	free(code);
	char *sec = th_register(&s, DEV1, "lab");
	const char *out = th_tmp(&s, "sim.out");
	char errpath[700];
	snprintf(errpath, sizeof errpath, "%s.err", out);
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV1, "--secret", sec,
			       "--msg-count", "2000", "--msg-name", "echo", "--expect", "echo", "--exit-when-done",
			       "--quiet", NULL };
	pid_t pid = th_spawn(argv, out);
	ck_assert_int_eq(th_wait_pid(pid, 60000), 0);
	char *report = th_read_file(errpath);
	ck_assert_msg(strstr(report, "2000 replies of 2000 msgs, 0 bad; latency p50 ") != NULL, "%s", report);
	free(report);
	/* A reply that never comes is an error, not a hang. */
	char *const silent[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV1, "--secret", sec,
				 "--msg-count", "3", "--msg-name", "unheard", "--expect", "echo", "--exit-when-done",
				 "--duration", "2", "--quiet", NULL };
	pid = th_spawn(silent, out);
	ck_assert_int_eq(th_wait_pid(pid, 30000), 1);
	report = th_read_file(errpath);
	ck_assert_msg(strstr(report, "0 replies of 3 msgs") != NULL, "%s", report);
	free(report);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* A device online in a group without code has no agent ("no code"); a deploy
 * to its group starts one at once, connected to it, and the next reloads it. */
START_TEST(deploy_starts_agents_of_online_devices)
{
	th_server s;
	th_server_start(&s, NULL);
	deploy(&s, "lab", echo_agent, 200); /* some group has code, not DEV2's */
	char *sec = th_register(&s, DEV2, "later");
	const char *out = th_tmp(&s, "node.out");
	char *const argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"), "connect",
			       s.ws_url, "hello", DEV2, sec, "expect", "welcome", "expectmsg", "pushed",
			       "close", NULL };
	pid_t pid = th_spawn(argv, out);
	ck_assert_int_eq(th_wait_online(&s, DEV2, 1, 10000), 0);
	json_t *a = th_get_json(&s, "/v1/devices/" DEV2 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(a, "state")), "no code");
	ck_assert(json_is_true(json_object_get(a, "device_connected")));
	json_decref(a);
	deploy(&s, "later", echo_agent, 200);
	ck_assert_int_ge(th_wait_event(&s, DEV2, "status", "Agent started.", 5000), 1);
	a = th_get_json(&s, "/v1/devices/" DEV2 "/agent", 200);
	ck_assert_str_eq(json_string_value(json_object_get(a, "state")), "running");
	ck_assert(json_is_true(json_object_get(a, "device_connected")));
	json_decref(a);
	char *aid = agent_id_of(&s, DEV2), path[160];
	th_resp r;
	snprintf(path, sizeof path, "/agent/%s/push", aid);
	th_http(&s, "POST", path, "text/plain", "7", "", &r);
	ck_assert_int_eq(r.status, 202);
	th_resp_free(&r);
	ck_assert_int_eq(th_wait_pid(pid, 20000), 0);
	char *got = th_read_file(out);
	ck_assert_msg(got && strstr(got, "\"data\":{\"n\":7}"), "not delivered: %s", got ? got : "");
	free(got);
	deploy(&s, "later", echo_agent, 200);
	ck_assert_int_ge(th_wait_event(&s, DEV2, "status", "Agent restarted: reload.", 5000), 1);
	free(aid);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		round_trip_http_save_reload,
		bad_agents_are_stopped_and_others_carry_on,
		messages_for_an_offline_device_wait_in_order,
		a_catastrophic_pattern_is_stopped,
		migration_under_traffic_loses_nothing,
		tenderctl_deploys_and_shows_agents,
		a_busy_worker_is_rebalanced,
		migrate_answers,
		tender_sim_scripted_round_trips,
		agent_management,
		the_offline_queue_drops_the_oldest,
		deleting_a_device_stops_its_agent,
		an_http_request_as_the_agent_sees_it,
		deploy_starts_agents_of_online_devices,
		a_busy_worker_holds_up_no_device_list,
	};
	/* T07_ONLY=name,name runs only those tests (while working on one). */
	const TTest *chosen[sizeof tests / sizeof tests[0]];
	size_t n = 0;
	const char *only = getenv("T07_ONLY");
	for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
		const char *at = only ? strstr(only, tests[i]->name) : NULL;
		size_t len = strlen(tests[i]->name);
		if (!only || (at && (at == only || at[-1] == ',') && (at[len] == '\0' || at[len] == ',')))
			chosen[n++] = tests[i];
	}
	return th_run_tests("07_agents", 180, chosen, n, NULL, NULL);
}

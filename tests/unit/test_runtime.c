/* tests/unit/test_runtime.c -- one agent's Lua runtime (agents/runtime.c)
 * against docs/agents.md, with a fake host that records log lines, sends and
 * saves, and a fake clock: every API function, the sandbox, the instruction
 * budget and the memory cap (including the ways a script might escape them),
 * the counted pattern functions (Lua 5.4.4's results, runaways stopped),
 * the Lua <-> JSON mapping, the lifecycle, and the example agents in
 * agents/examples. */
#define _GNU_SOURCE
#include <check.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

/* --- the fake host ------------------------------------------------------------ */

#define MAXREC 256

static struct fake {
	int nlogs, nsends, saves;
	char *log[MAXREC];
	int log_err[MAXREC];
	char *send_name[MAXREC], *send_data[MAXREC];
	char *saved;            /* what server.save stored last (owned) */
	int save_fail;          /* server.save fails with "disk full" */
	int connected;
	int64_t now;
} F;

static void fake_log(void *ctx, int is_error, const char *msg)
{
	ck_assert_ptr_eq(ctx, &F);
	if (F.nlogs < MAXREC) {
		F.log[F.nlogs] = strdup(msg);
		F.log_err[F.nlogs] = is_error;
	}
	F.nlogs++;
}

static void fake_send(void *ctx, const char *name, const char *data_json)
{
	ck_assert_ptr_eq(ctx, &F);
	if (F.nsends < MAXREC) {
		F.send_name[F.nsends] = strdup(name);
		F.send_data[F.nsends] = strdup(data_json);
	}
	F.nsends++;
}

static int fake_connected(void *ctx)
{
	return F.connected;
}

static int fake_save(void *ctx, const char *json, size_t len, char *err, size_t errcap)
{
	ck_assert_uint_eq(strlen(json), len);
	ck_assert_uint_le(len, AGENT_SAVE_MAX);
	if (F.save_fail) {
		snprintf(err, errcap, "disk full");
		return -1;
	}
	free(F.saved);
	F.saved = strdup(json);
	F.saves++;
	return 0;
}

static char *fake_load(void *ctx)
{
	return F.saved ? strdup(F.saved) : NULL;
}

static int64_t fake_now(void *ctx)
{
	return F.now;
}

static const agent_host host = {
	.ctx = &F, .log = fake_log, .send = fake_send, .is_connected = fake_connected,
	.save = fake_save, .load = fake_load, .now_ms = fake_now,
};

static void forget(void)
{
	for (int i = 0; i < F.nlogs && i < MAXREC; i++)
		free(F.log[i]);
	for (int i = 0; i < F.nsends && i < MAXREC; i++) {
		free(F.send_name[i]);
		free(F.send_data[i]);
	}
	F.nlogs = F.nsends = 0;
}

static void setup(void)
{
	memset(&F, 0, sizeof F);
	F.connected = 1;
	F.now = 1000;
}

static void teardown(void)
{
	forget();
	free(F.saved);
	memset(&F, 0, sizeof F);
}

/* --- helpers ------------------------------------------------------------------ */

static agent_rt *start_lim(const char *src, size_t memory, uint64_t instructions)
{
	agent_rt *a = NULL;
	tn_error err = { 0 };
	agent_limits lim = { .memory = memory, .instructions = instructions };
	int rc = agent_rt_new(&a, src, strlen(src), &lim, &host, &err);
	ck_assert_msg(rc == 0, "agent_rt_new: %d %s", rc, err.msg);
	ck_assert_ptr_nonnull(a);
	return a;
}

static agent_rt *start(const char *src)
{
	return start_lim(src, 0, 0);
}

/* The index of the first log line holding needle (with is_error as given,
 * or either when -1), or -1. */
static int find_log(const char *needle, int is_error)
{
	for (int i = 0; i < F.nlogs && i < MAXREC; i++)
		if (strstr(F.log[i], needle) && (is_error < 0 || F.log_err[i] == is_error))
			return i;
	return -1;
}

#define ck_assert_log(needle, is_error) \
	ck_assert_msg(find_log(needle, is_error) >= 0, "no log line with '%s' (%d lines; first: %s)", needle, \
		      F.nlogs, F.nlogs ? F.log[0] : "-")

/* got and want are the same JSON value (types included: 1 is not 1.0). */
static void ck_json_eq(const char *got, const char *want)
{
	json_error_t e;
	json_t *g = json_loads(got, JSON_DECODE_ANY, &e), *w = json_loads(want, JSON_DECODE_ANY, &e);
	ck_assert_msg(g != NULL, "not JSON: %s", got);
	ck_assert_msg(w != NULL, "bad expectation: %s", want);
	ck_assert_msg(json_equal(g, w), "got %s, want %s", got, want);
	json_decref(g);
	json_decref(w);
}

/* Runs message "m" with data and checks the one send it makes. */
static void ck_sends(agent_rt *a, const char *data, const char *name, const char *want)
{
	forget();
	int rc = agent_rt_message(a, "m", data);
	ck_assert_msg(rc == AGENT_OK, "message %s: rc %d, log: %s", data, rc, F.nlogs ? F.log[0] : "-");
	ck_assert_int_eq(F.nsends, 1);
	ck_assert_str_eq(F.send_name[0], name);
	ck_json_eq(F.send_data[0], want);
}

static char *repeat(const char *s, int n)
{
	size_t len = strlen(s);
	char *out = malloc(len * (size_t)n + 1);
	ck_assert_ptr_nonnull(out);
	for (int i = 0; i < n; i++)
		memcpy(out + len * (size_t)i, s, len);
	out[len * (size_t)n] = '\0';
	return out;
}

static const char *res_header(const agent_http_res *res, const char *name)
{
	for (char **h = res->headers; h && h[0] && h[1]; h += 2)
		if (strcasecmp(h[0], name) == 0)
			return h[1];
	return NULL;
}

static agent_http_req get(const char *path)
{
	agent_http_req req = { .method = "GET", .path = path, .query = "", .body = "", .body_len = 0 };
	return req;
}

static const char *echo = "device.on('m', function(d) device.send('r', d) end)\n";

/* --- device ------------------------------------------------------------------- */

START_TEST(device_on_and_send)
{
	agent_rt *a = start("device.on('ping', function(d) device.send('pong', d) end)\n");
	ck_assert_int_eq(agent_rt_message(a, "ping", "{\"hello\":[1,2,3]}"), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	ck_assert_str_eq(F.send_name[0], "pong");
	ck_assert_str_eq(F.send_data[0], "{\"hello\":[1,2,3]}");
	/* No data is nil, sent back as null. */
	ck_assert_int_eq(agent_rt_message(a, "ping", NULL), AGENT_OK);
	ck_assert_int_eq(F.nsends, 2);
	ck_assert_str_eq(F.send_data[1], "null");
	ck_assert_int_eq(F.nlogs, 0);
	agent_rt_free(a);
}
END_TEST

START_TEST(device_message_without_handler_is_ignored)
{
	agent_rt *a = start(echo);
	ck_assert_int_eq(agent_rt_message(a, "nobody", "1"), AGENT_OK);
	ck_assert_int_eq(F.nsends, 0);
	ck_assert_int_eq(F.nlogs, 0);
	agent_rt_free(a);
}
END_TEST

START_TEST(device_on_replaces_the_handler)
{
	agent_rt *a = start("device.on('m', function() device.send('first') end)\n"
			    "device.on('m', function() device.send('second') end)\n");
	ck_assert_int_eq(agent_rt_message(a, "m", NULL), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	ck_assert_str_eq(F.send_name[0], "second");
	agent_rt_free(a);
}
END_TEST

START_TEST(device_send_refusals)
{
	agent_rt *a = start("device.on('long', function() device.send(string.rep('n', 129), 1) end)\n"
			    "device.on('fn', function() device.send('x', print) end)\n"
			    "device.on('noname', function() device.send({}, 1) end)\n"
			    "device.on('ok128', function() device.send(string.rep('n', 128), 1) end)\n"
			    "device.on('nohandler', function() device.on('x', 1) end)\n");
	ck_assert_int_eq(agent_rt_message(a, "long", NULL), AGENT_ERROR);
	ck_assert_log("device.send: the name is longer than 128 bytes", 1);
	ck_assert_int_eq(agent_rt_message(a, "fn", NULL), AGENT_ERROR);
	ck_assert_log("device.send: a function cannot be sent as JSON", 1);
	ck_assert_int_eq(agent_rt_message(a, "noname", NULL), AGENT_ERROR);
	ck_assert_int_eq(agent_rt_message(a, "nohandler", NULL), AGENT_ERROR);
	ck_assert_log("function expected", 1);
	ck_assert_int_eq(F.nsends, 0);
	ck_assert_int_eq(agent_rt_message(a, "ok128", NULL), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	agent_rt_free(a);
}
END_TEST

START_TEST(device_onconnect_ondisconnect_isconnected)
{
	agent_rt *none = start(echo);
	ck_assert_int_eq(agent_rt_connect(none), AGENT_OK);
	ck_assert_int_eq(agent_rt_disconnect(none), AGENT_OK);
	ck_assert_int_eq(F.nsends + F.nlogs, 0);
	agent_rt_free(none);

	agent_rt *a = start("device.onconnect(function() device.send('hi', device.isconnected()) end)\n"
			    "device.ondisconnect(function() server.log('gone: ' .. tostring(device.isconnected())) end)\n");
	F.connected = 1;
	ck_assert_int_eq(agent_rt_connect(a), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	ck_assert_str_eq(F.send_name[0], "hi");
	ck_assert_str_eq(F.send_data[0], "true");
	F.connected = 0;
	ck_assert_int_eq(agent_rt_disconnect(a), AGENT_OK);
	ck_assert_int_eq(F.nlogs, 1);
	ck_assert_str_eq(F.log[0], "gone: false");
	ck_assert_int_eq(F.log_err[0], 0);
	agent_rt_free(a);
}
END_TEST

/* --- http --------------------------------------------------------------------- */

START_TEST(http_request_fields)
{
	agent_rt *a = start("http.onrequest(function(req, res)\n"
			    "  res.send(200, {method = req.method, path = req.path, query = req.query,\n"
			    "    body = req.body:gsub('%z', '0'), len = #req.body,\n"
			    "    auth = req.headers['x-auth'], ct = req.headers['content-type']})\n"
			    "end)\n");
	const char *headers[] = { "X-Auth", "s3cret", "Content-Type", "text/plain", NULL };
	agent_http_req req = { .method = "POST", .path = "/a/b", .query = "x=1", .body = "ab\0cd",
			       .body_len = 5, .headers = headers };
	agent_http_res res;
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 200);
	ck_json_eq(res.body, "{\"method\":\"POST\",\"path\":\"/a/b\",\"query\":\"x=1\",\"body\":\"ab0cd\",\"len\":5,"
			     "\"auth\":\"s3cret\",\"ct\":\"text/plain\"}");
	ck_assert_uint_eq(res.body_len, strlen(res.body));
	ck_assert_str_eq(res_header(&res, "Content-Type"), "application/json");
	agent_http_res_clear(&res);
	ck_assert_ptr_null(res.body);
	/* No query and no headers. */
	req = (agent_http_req){ .method = "GET", .path = "/" };
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_json_eq(res.body, "{\"method\":\"GET\",\"path\":\"/\",\"query\":\"\",\"body\":\"\",\"len\":0}");
	agent_http_res_clear(&res);
	agent_rt_free(a);
}
END_TEST

START_TEST(http_res_header_and_send_string)
{
	agent_rt *a = start("http.onrequest(function(req, res)\n"
			    "  res.header('X-One', '1') res.header('Cache-Control', 'no-store')\n"
			    "  res.send(201, 'made ' .. req.path)\n"
			    "end)\n");
	agent_http_req req = get("/thing");
	agent_http_res res;
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 201);
	ck_assert_str_eq(res.body, "made /thing");
	ck_assert_uint_eq(res.body_len, 11);
	ck_assert_str_eq(res_header(&res, "X-One"), "1");
	ck_assert_str_eq(res_header(&res, "Cache-Control"), "no-store");
	ck_assert_ptr_null(res_header(&res, "Content-Type")); /* the server adds text/plain */
	agent_http_res_clear(&res);
	agent_rt_free(a);
}
END_TEST

START_TEST(http_res_send_table_is_json)
{
	agent_rt *a = start("http.onrequest(function(req, res) res.send(200, {ok = true, n = {1, 2.5}}) end)\n");
	agent_http_req req = get("/");
	agent_http_res res;
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 200);
	ck_json_eq(res.body, "{\"ok\":true,\"n\":[1,2.5]}");
	ck_assert_str_eq(res_header(&res, "Content-Type"), "application/json");
	agent_http_res_clear(&res);
	agent_rt_free(a);
}
END_TEST

START_TEST(http_without_answer_is_500)
{
	agent_rt *a = start("http.onrequest(function(req, res) end)\n");
	agent_http_req req = get("/");
	agent_http_res res;
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 500);
	ck_assert_str_eq(res.body, "the agent did not answer");
	ck_assert_uint_eq(res.body_len, strlen("the agent did not answer"));
	agent_http_res_clear(&res);
	agent_rt_free(a);
}
END_TEST

START_TEST(http_without_handler_is_status_0)
{
	agent_rt *a = start(echo);
	agent_http_req req = get("/");
	agent_http_res res;
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 0);
	ck_assert_ptr_null(res.body);
	agent_http_res_clear(&res);
	agent_rt_free(a);
}
END_TEST

START_TEST(http_handler_failures)
{
	agent_rt *a = start_lim("http.onrequest(function(req, res)\n"
				"  if req.path == '/before' then error('early') end\n"
				"  if req.path == '/spin' then while true do end end\n"
				"  res.header('X-A', 'b')\n"
				"  res.send(200, 'sent')\n"
				"  error('late')\n"
				"end)\n",
				0, 200000);
	agent_http_req req = get("/before");
	agent_http_res res;
	/* Failed before res.send: status 0, the caller answers 500. */
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_ERROR);
	ck_assert_int_eq(res.status, 0);
	ck_assert_ptr_null(res.body);
	agent_http_res_clear(&res);
	ck_assert_log("error in the http.onrequest handler: agent.lua:2: early", 1);
	req = get("/spin");
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_BUDGET);
	ck_assert_int_eq(res.status, 0);
	agent_http_res_clear(&res);
	/* Failed after res.send: the answer stands. */
	req = get("/after");
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_ERROR);
	ck_assert_int_eq(res.status, 200);
	ck_assert_str_eq(res.body, "sent");
	ck_assert_str_eq(res_header(&res, "X-A"), "b");
	agent_http_res_clear(&res);
	ck_assert_log("agent.lua:6: late", 1);
	agent_rt_free(a);
}
END_TEST

START_TEST(http_res_misuse)
{
	agent_rt *a = start("local saved\n"
			    "http.onrequest(function(req, res)\n"
			    "  saved = res\n"
			    "  local r = {}\n"
			    "  r[1] = select(2, pcall(res.send, 99, 'x'))\n"
			    "  r[2] = select(2, pcall(res.header, 'X-Bad', 'a\\r\\nInjected: 1'))\n"
			    "  r[3] = select(2, pcall(res.header, 'X:Bad', 'a'))\n"
			    "  for i = 1, 32 do res.header('X-' .. i, 'v') end\n"
			    "  r[4] = select(2, pcall(res.header, 'X-33', 'v'))\n"
			    "  r[5] = select(2, pcall(res.send, 200, {1}))\n"
			    "  res.send(200, 'first')\n"
			    "  r[6] = select(2, pcall(res.send, 200, 'second'))\n"
			    "  server.log(table.concat(r, '|'))\n"
			    "end)\n"
			    "device.on('m', function() saved.send(200, 'late') end)\n");
	agent_http_req req = get("/");
	agent_http_res res;
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 200);
	ck_assert_str_eq(res.body, "first");
	ck_assert_ptr_null(res_header(&res, "Injected"));
	ck_assert_ptr_null(res_header(&res, "X-33"));
	ck_assert_ptr_null(res_header(&res, "Content-Type")); /* the failed table send added none */
	agent_http_res_clear(&res);
	ck_assert_int_eq(F.nlogs, 1);
	const char *line = F.log[0];
	ck_assert_msg(strstr(line, "res.send: status must be from 100 to 599") != NULL, "%s", line);
	ck_assert_msg(strstr(line, "res.header: a header name or value may not contain CR, LF") != NULL, "%s", line);
	ck_assert_msg(strstr(line, "res.header: at most 32 headers") != NULL, "%s", line);
	ck_assert_msg(strstr(line, "res.send: the request has been answered already") != NULL, "%s", line);
	/* res outside its request. */
	ck_assert_int_eq(agent_rt_message(a, "m", NULL), AGENT_ERROR);
	ck_assert_log("res.send: the request has been answered already", 1);
	agent_rt_free(a);
}
END_TEST

/* --- server --------------------------------------------------------------------- */

START_TEST(server_log_error_print)
{
	agent_rt *a = start("server.log('hello') server.error('bad') print('printed')\n"
			    "server.log(42) server.log(nil) server.log(string.rep('x', 5000))\n");
	ck_assert_int_eq(F.nlogs, 6);
	ck_assert_str_eq(F.log[0], "hello");
	ck_assert_int_eq(F.log_err[0], 0);
	ck_assert_str_eq(F.log[1], "bad");
	ck_assert_int_eq(F.log_err[1], 1);
	ck_assert_str_eq(F.log[2], "printed");
	ck_assert_int_eq(F.log_err[2], 0);
	ck_assert_str_eq(F.log[3], "42");
	ck_assert_str_eq(F.log[4], "nil");
	ck_assert_uint_eq(strlen(F.log[5]), 4096); /* cut at 4096 bytes */
	agent_rt_free(a);
}
END_TEST

START_TEST(server_save_and_load)
{
	const char *src = "local s = server.load()\n"
			  "device.on('m', function(d) device.send('loaded', s) end)\n"
			  "device.on('save', function(d) server.save(d) end)\n";
	agent_rt *a = start(src);
	ck_sends(a, NULL, "loaded", "null"); /* nothing saved yet: nil */
	ck_assert_int_eq(agent_rt_message(a, "save", "{\"count\":3,\"list\":[1,2],\"f\":0.5}"), AGENT_OK);
	ck_assert_int_eq(F.saves, 1);
	ck_json_eq(F.saved, "{\"count\":3,\"list\":[1,2],\"f\":0.5}");
	agent_rt_free(a);
	a = start(src); /* a restart finds it */
	ck_sends(a, NULL, "loaded", "{\"count\":3,\"list\":[1,2],\"f\":0.5}");
	agent_rt_free(a);
	/* What the store holds is not JSON any more: nil. */
	free(F.saved);
	F.saved = strdup("{broken");
	a = start(src);
	ck_sends(a, NULL, "loaded", "null");
	agent_rt_free(a);
}
END_TEST

START_TEST(server_save_limits_and_failures)
{
	agent_rt *a = start_lim("device.on('m', function(d) server.save({s = string.rep('x', d)}) end)\n"
				"device.on('fn', function() server.save({f = print}) end)\n",
				4 << 20, 0);
	/* {"s":"..."} is 8 bytes around the string. */
	ck_assert_int_eq(agent_rt_message(a, "m", "65528"), AGENT_OK);
	ck_assert_int_eq(F.saves, 1);
	ck_assert_uint_eq(strlen(F.saved), AGENT_SAVE_MAX);
	ck_assert_int_eq(agent_rt_message(a, "m", "65529"), AGENT_ERROR);
	ck_assert_log("server.save: 65537 bytes is over the 65536-byte limit", 1);
	ck_assert_int_eq(agent_rt_message(a, "m", "100000"), AGENT_ERROR);
	ck_assert_int_eq(F.saves, 1);
	ck_assert_int_eq(agent_rt_message(a, "fn", NULL), AGENT_ERROR);
	ck_assert_log("server.save: a function cannot be sent as JSON", 1);
	F.save_fail = 1;
	ck_assert_int_eq(agent_rt_message(a, "m", "1"), AGENT_ERROR);
	ck_assert_log("server.save: disk full", 1);
	ck_assert_int_eq(F.saves, 1);
	agent_rt_free(a);
}
END_TEST

/* --- timers ------------------------------------------------------------------- */

START_TEST(timer_after_fires_once)
{
	F.now = 1000;
	agent_rt *a = start("timer.after(1.5, function() device.send('fired', 1) end)\n");
	ck_assert_int_eq(agent_rt_next_timer(a), 2500);
	ck_assert_int_eq(agent_rt_run_timers(a, 2499), AGENT_OK);
	ck_assert_int_eq(F.nsends, 0);
	ck_assert_int_eq(agent_rt_run_timers(a, 2500), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	ck_assert_int_eq(agent_rt_next_timer(a), -1);
	ck_assert_int_eq(agent_rt_run_timers(a, 9999), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	agent_rt_free(a);
}
END_TEST

START_TEST(timer_every_repeats)
{
	F.now = 0;
	agent_rt *a = start("local n = 0\n"
			    "timer.every(1, function() n = n + 1 device.send('tick', n) end)\n");
	ck_assert_int_eq(agent_rt_next_timer(a), 1000);
	for (int i = 1; i <= 3; i++) {
		ck_assert_int_eq(agent_rt_run_timers(a, i * 1000), AGENT_OK);
		ck_assert_int_eq(agent_rt_next_timer(a), (i + 1) * 1000);
	}
	ck_assert_int_eq(F.nsends, 3);
	ck_assert_str_eq(F.send_data[2], "3");
	/* Late: runs once, and the next is counted from when it ran. */
	ck_assert_int_eq(agent_rt_run_timers(a, 10500), AGENT_OK);
	ck_assert_int_eq(F.nsends, 4);
	ck_assert_int_eq(agent_rt_next_timer(a), 11500);
	agent_rt_free(a);
}
END_TEST

START_TEST(timer_cancel_and_handle_cancel)
{
	F.now = 0;
	agent_rt *a = start("local a = timer.after(1, function() device.send('a') end)\n"
			    "local b = timer.every(1, function() device.send('b') end)\n"
			    "local n = 0\n"
			    "local c\n"
			    "c = timer.every(1, function() n = n + 1 device.send('c', n) if n == 2 then c:cancel() end end)\n"
			    "timer.cancel(a)\n"
			    "b:cancel()\n"
			    "b:cancel() timer.cancel({id = 12345})  -- twice, or unknown: nothing\n"
			    "server.log(tostring(getmetatable(a)) .. ' ' .. math.type(a.id))\n");
	ck_assert_str_eq(F.log[0], "false integer");
	for (int i = 1; i <= 4; i++)
		ck_assert_int_eq(agent_rt_run_timers(a, i * 1000), AGENT_OK);
	ck_assert_int_eq(F.nsends, 2);
	ck_assert_str_eq(F.send_name[0], "c");
	ck_assert_str_eq(F.send_name[1], "c");
	ck_assert_int_eq(agent_rt_next_timer(a), -1);
	agent_rt_free(a);
}
END_TEST

START_TEST(timer_argument_refusals)
{
	agent_rt *a = start("local r = {}\n"
			    "r[1] = select(2, pcall(timer.after, 0, print))\n"
			    "r[2] = select(2, pcall(timer.after, 0.001, print))\n"
			    "r[3] = select(2, pcall(timer.every, 86400 * 366, print))\n"
			    "r[4] = select(2, pcall(timer.after, 1, 'not a function'))\n"
			    "r[5] = select(2, pcall(timer.after, 0 / 0, print))\n"
			    "server.log(table.concat(r, '|'))\n"
			    "timer.after(0.01, print)\n");
	ck_assert_int_eq(F.nlogs, 1);
	ck_assert_int_eq(F.log_err[0], 0);
	const char *l = F.log[0];
	ck_assert_msg(strstr(l, "timer: seconds must be from 0.01 to a year|timer: seconds must be from 0.01 to a "
				"year|timer: seconds must be from 0.01 to a year|") != NULL, "%s", l);
	ck_assert_msg(strstr(l, "function expected") != NULL, "%s", l);
	ck_assert_int_eq(agent_rt_next_timer(a), F.now + 10);
	agent_rt_free(a);
}
END_TEST

START_TEST(timer_at_most_10000)
{
	agent_rt *a = start_lim("for i = 1, 10000 do timer.after(i, print) end\n"
				"local ok, err = pcall(timer.after, 1, print)\n"
				"server.log(tostring(ok) .. ' ' .. err)\n",
				16 << 20, 0);
	ck_assert_int_eq(F.nlogs, 1);
	ck_assert_str_eq(F.log[0], "false timer: at most 10000 timers");
	agent_rt_free(a);
}
END_TEST

/* Every due timer runs in one round, once, in due order, though handlers add
 * and cancel timers (which moves the others around). */
START_TEST(timer_round_with_handlers_adding_and_cancelling)
{
	F.now = 0;
	const int64_t round = 1000;
	agent_rt *a = start("local x, y, z, w\n"
			    "x = timer.every(1, function() device.send('x') timer.after(0.5, function() device.send('new') end) end)\n"
			    "y = timer.after(1, function() device.send('y') end)\n"
			    "z = timer.after(1, function() device.send('z') w:cancel() end)\n"
			    "w = timer.after(1, function() device.send('w') end)\n"
			    "timer.after(0.5, function() device.send('early') end)\n");
	F.now = round; /* the clock timers are set by */
	ck_assert_int_eq(agent_rt_run_timers(a, round), AGENT_OK);
	ck_assert_int_eq(F.nsends, 4);
	ck_assert_str_eq(F.send_name[0], "early"); /* due at 500 */
	ck_assert_str_eq(F.send_name[1], "x");
	ck_assert_str_eq(F.send_name[2], "y");
	ck_assert_str_eq(F.send_name[3], "z"); /* w cancelled by z, 'new' waits */
	ck_assert_int_eq(agent_rt_next_timer(a), 1500);
	ck_assert_int_eq(agent_rt_run_timers(a, 1500), AGENT_OK);
	ck_assert_int_eq(F.nsends, 5);
	ck_assert_str_eq(F.send_name[4], "new");
	agent_rt_free(a);
}
END_TEST

START_TEST(timer_failures)
{
	F.now = 0;
	agent_rt *a = start_lim("timer.after(1, function() error('in a timer') end)\n"
				"timer.after(1, function() while true do end end)\n"
				"timer.after(1, function() device.send('still') end)\n",
				0, 200000);
	ck_assert_int_eq(agent_rt_run_timers(a, 1000), AGENT_BUDGET); /* the worst of the round */
	ck_assert_log("error in a timer: agent.lua:1: in a timer", 1);
	ck_assert_log("a timer stopped: over its budget of 200000 instructions", 1);
	ck_assert_int_eq(F.nsends, 1); /* each timer is its own event */
	agent_rt_free(a);
}
END_TEST

/* --- the sandbox ---------------------------------------------------------------- */

static const char *probe_names =
	"local function lookup(name)\n"
	"  local v = _G\n"
	"  for part in name:gmatch('[^.]+') do if type(v) ~= 'table' then return nil end v = v[part] end\n"
	"  return v\n"
	"end\n"
	"device.on('m', function(names)\n"
	"  local found = {}\n"
	"  for _, n in ipairs(names) do if lookup(n) ~= nil then found[#found + 1] = n end end\n"
	"  device.send('found', found)\n"
	"end)\n";

START_TEST(sandbox_absent)
{
	agent_rt *a = start(probe_names);
	ck_sends(a,
		 "[\"io\",\"os.execute\",\"os.exit\",\"os.getenv\",\"os.remove\",\"os.rename\",\"os.tmpname\","
		 "\"os.setlocale\",\"require\",\"package\",\"dofile\",\"loadfile\",\"debug\",\"string.dump\","
		 "\"collectgarbage\",\"loadstring\",\"module\",\"setfenv\",\"getfenv\"]",
		 "found", "{}");
	agent_rt_free(a);
}
END_TEST

START_TEST(sandbox_present)
{
	const char *names = "[\"string.format\",\"string.rep\",\"string.find\",\"table.insert\",\"table.sort\","
			    "\"table.concat\",\"table.unpack\",\"math.floor\",\"math.type\",\"utf8.char\","
			    "\"coroutine.wrap\",\"os.time\",\"os.clock\",\"os.date\",\"pcall\",\"xpcall\",\"error\","
			    "\"load\",\"setmetatable\",\"getmetatable\",\"pairs\",\"ipairs\",\"select\",\"tostring\","
			    "\"tonumber\",\"type\",\"next\",\"rawget\",\"rawset\",\"print\",\"device.on\",\"server.log\","
			    "\"timer.after\",\"http.onrequest\"]";
	agent_rt *a = start(probe_names);
	ck_sends(a, names, "found", names);
	agent_rt_free(a);
}
END_TEST

START_TEST(sandbox_escape_attempts_fail)
{
	agent_rt *a = start("device.on('m', function() os.execute('touch /tmp/tender-escaped') end)\n"
			    "device.on('req', function() require('io') end)\n"
			    "device.on('meta', function()\n"
			    "  device.send('meta', {tostring(getmetatable('')), tostring(pcall(setmetatable, 'x', {}))})\n"
			    "end)\n");
	ck_assert_int_eq(agent_rt_message(a, "m", NULL), AGENT_ERROR);
	ck_assert_log("attempt to call a nil value (field 'execute')", 1);
	ck_assert_int_eq(agent_rt_message(a, "req", NULL), AGENT_ERROR);
	ck_assert_log("attempt to call a nil value (global 'require')", 1);
	ck_assert_int_eq(agent_rt_message(a, "meta", NULL), AGENT_OK);
	ck_assert_str_eq(F.send_data[0], "[\"false\",\"false\"]"); /* the string metatable is protected */
	agent_rt_free(a);
}
END_TEST

struct chunk {
	char buf[4096];
	size_t len;
};

static int chunk_writer(lua_State *L, const void *p, size_t sz, void *ud)
{
	struct chunk *c = ud;
	ck_assert_uint_le(c->len + sz, sizeof c->buf);
	memcpy(c->buf + c->len, p, sz);
	c->len += sz;
	return 0;
}

START_TEST(sandbox_binary_chunks_refused)
{
	/* Bytecode made by a plain Lua state, outside any agent. */
	struct chunk c = { .len = 0 };
	lua_State *plain = luaL_newstate();
	ck_assert_int_eq(luaL_loadstring(plain, "device.send('bytecode', 1) return 1"), LUA_OK);
	ck_assert_int_eq(lua_dump(plain, chunk_writer, &c, 0), 0);
	lua_close(plain);
	ck_assert_int_eq(c.buf[0], 0x1b);

	agent_rt *a = start("http.onrequest(function(req, res)\n"
			    "  local f1, e1 = load(req.body)\n"
			    "  local f2, e2 = load(req.body, 'x', 'b')\n"
			    "  local f3, e3 = load(function() local s = req.body req.body = nil return s end)\n"
			    "  res.send(200, {tostring(f1), e1, tostring(f2), e2, tostring(f3), e3})\n"
			    "end)\n");
	agent_http_req req = { .method = "POST", .path = "/", .body = c.buf, .body_len = c.len };
	agent_http_res res;
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	json_t *j = json_loads(res.body, 0, NULL);
	ck_assert_ptr_nonnull(j);
	for (size_t i = 0; i < 6; i += 2) {
		ck_assert_str_eq(json_string_value(json_array_get(j, i)), "nil");
		ck_assert_msg(strstr(json_string_value(json_array_get(j, i + 1)), "attempt to load a binary chunk"),
			      "%s", res.body);
	}
	json_decref(j);
	agent_http_res_clear(&res);
	ck_assert_int_eq(F.nsends, 0);
	agent_rt_free(a);

	/* Nor as the agent's code. */
	tn_error err = { 0 };
	agent_rt *b = NULL;
	ck_assert_int_eq(agent_rt_check(c.buf, c.len, &err), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "binary") != NULL, "%s", err.msg);
	ck_assert_int_eq(agent_rt_new(&b, c.buf, c.len, NULL, &host, &err), TN_EINVAL);
	ck_assert_ptr_null(b);
}
END_TEST

START_TEST(sandbox_text_load_works)
{
	agent_rt *a = start("local env = {x = 5}\n"
			    "local f = load('return x * 2', 'calc', 't', env)\n"
			    "local g, err = load('return +', 'broken')\n"
			    "server.log(f() .. ' ' .. tostring(g) .. ' ' .. err)\n"
			    "server.log(load('return 1 + 1')() .. ' ' .. load('return x', nil, nil, env)())\n");
	ck_assert_int_eq(F.nlogs, 2);
	ck_assert_str_eq(F.log[1], "2 5");
	ck_assert_msg(strncmp(F.log[0], "10 nil [string \"broken\"]:1:", 27) == 0, "%s", F.log[0]);
	agent_rt_free(a);
}
END_TEST

START_TEST(sandbox_no_finalizers)
{
	/* Lua runs __gc with hooks off, beyond any budget. */
	agent_rt *a = start("local ok, err = pcall(setmetatable, {}, {__gc = function() while true do end end})\n"
			    "local ok2 = pcall(setmetatable, {}, {__gc = true})\n"
			    "local mt = {} local t = setmetatable({}, mt) mt.__gc = function() while true do end end\n"
			    "server.log(tostring(ok) .. ' ' .. err .. ' ' .. tostring(ok2))\n");
	ck_assert_int_eq(F.nlogs, 1);
	ck_assert_str_eq(F.log[0], "false setmetatable: __gc is not available to agents false");
	agent_rt_free(a); /* a __gc added later is never called */
}
END_TEST

/* The string library is opened at its first use, by its global name or by a
 * method call on a string; until then the string metatable already does the
 * string arithmetic.  Either way an agent sees what it would with the
 * library opened at the start. */
static const char *string_probe =
	"local function try(f) local ok, v = pcall(f) return tostring(ok) .. ' ' .. tostring(v) end\n"
	"device.on('m', function()\n"
	"  local r = {}\n"
	"  for _, f in ipairs({\n"
	"    function() return '10' + 1 end, function() return '3' * '4' end, function() return -'2' end,\n"
	"    function() return '10' // '3' end, function() return '2' ^ 2 end, function() return '7' % '4' end,\n"
	"    function() return '1' / '2' end, function() return '0x10' + 0 end, function() return '10' - '4' end,\n"
	"    function() return math.type('10' + 1) end, function() return 'a' + 1 end,\n"
	"    function() return 1 + {} end, function() return '1' + {} end, function() return ('x')[1] end,\n"
	"    function() return ('x').nope end, function() return ('x'):nope() end,\n"
	"    function() return tostring(getmetatable('')) end, function() return ('abc'):upper() end,\n"
	"    function() return ('ab'):rep(3, ',') end, function() return ('x'):rep(1e9) end,\n"
	"    function() return ('hello'):find('l+') end, function() return ('x').dump == nil end,\n"
	"    function() return string.upper == ('').upper end, function() return #string.format('%5d', 1) end,\n"
	"  }) do r[#r + 1] = try(f) end\n"
	"  device.send('r', r)\n"
	"end)\n";

START_TEST(sandbox_string_library_at_first_use)
{
	/* The same answers, first use by method or by name. */
	agent_rt *lazy = start(string_probe);
	char *src = NULL;
	ck_assert_int_ge(asprintf(&src, "local _ = string.len %s", string_probe), 0);
	agent_rt *opened = start(src);
	free(src);
	ck_assert_int_eq(agent_rt_message(opened, "m", NULL), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	char *want = strdup(F.send_data[0]);
	ck_sends(lazy, NULL, "r", want);
	ck_assert_msg(strstr(want, "\"true 11\",\"true 12\",\"true -2\",\"true 3\",\"true 4.0\",\"true 3\","
				   "\"true 0.5\",\"true 16\",\"true 6\",\"true integer\",\"false ") == want + 1,
		      "%s", want);
	ck_assert_msg(strstr(want, "\"true false\",\"true ABC\",\"true ab,ab,ab\",\"false ") != NULL, "%s", want);
	ck_assert_msg(strstr(want, "\"true 3\",\"true true\",\"true true\",\"true 5\"]") != NULL, "%s", want);
	free(want);
	agent_rt_free(lazy);
	agent_rt_free(opened);
	forget();

	/* Not opened until used: an agent that never uses it saves its memory. */
	agent_rt *a = start("device.on('up', function(s) device.send('r', s:upper()) end)\n"
			    "device.on('name', function() device.send('r', rawget(_G, 'string') ~= nil) end)\n");
	size_t before = agent_rt_memory(a);
	ck_assert_int_eq(agent_rt_message(a, "name", NULL), AGENT_OK);
	ck_assert_str_eq(F.send_data[0], "false");
	ck_assert_int_eq(agent_rt_message(a, "up", "\"abc\""), AGENT_OK);
	ck_assert_str_eq(F.send_data[1], "\"ABC\"");
	ck_assert_uint_gt(agent_rt_memory(a), before + 1000);
	/* Opened by a method, the library is not put in _G: its name goes
	 * there at its own first use. */
	ck_assert_int_eq(agent_rt_message(a, "name", NULL), AGENT_OK);
	ck_assert_str_eq(F.send_data[2], "false"); /* still not assigned in _G */
	agent_rt_free(a);
	forget();

	/* The name is only a way in: assigned first, the methods still work;
	 * what is added to the library is seen by the methods. */
	a = start("string = nil\n"
		  "device.on('m', function() device.send('r', {('ab'):rep(2), tostring(string)}) end)\n");
	ck_sends(a, NULL, "r", "[\"abab\", \"nil\"]");
	agent_rt_free(a);
	a = start("function string.shout(s) return s:upper() .. '!' end\n"
		  "local co = coroutine.wrap(function() return ('hi'):shout() end)\n"
		  "device.on('m', function() device.send('r', {co(), ('x').shout == string.shout}) end)\n");
	ck_sends(a, NULL, "r", "[\"HI!\", true]");
	agent_rt_free(a);

	/* setmetatable(_G, ...) opens every library first, string too. */
	a = start("setmetatable(_G, {})\n"
		  "device.on('m', function() device.send('r', {rawget(_G, 'string') ~= nil, ('x'):upper()}) end)\n");
	ck_sends(a, NULL, "r", "[true, \"X\"]");
	agent_rt_free(a);
}
END_TEST

/* --- limits ------------------------------------------------------------------- */

START_TEST(limit_budget_stops_a_loop_and_the_agent_goes_on)
{
	agent_rt *a = start_lim("device.on('spin', function() while true do end end)\n"
				"device.on('m', function(d) device.send('r', d) end)\n",
				0, 1000000);
	ck_assert_int_eq(agent_rt_message(a, "spin", NULL), AGENT_BUDGET);
	ck_assert_log("the 'spin' handler stopped: over its budget of 1000000 instructions", 1);
	ck_sends(a, "7", "r", "7");
	agent_rt_free(a);
}
END_TEST

START_TEST(limit_cpu_time_stops_costly_instructions)
{
	/* == on two long strings that differ at the end compares them whole, in
	 * one instruction: the instruction budget alone would let this run for
	 * minutes; the CPU time backstop stops it. */
	agent_rt *a = NULL;
	tn_error err = { 0 };
	agent_limits lim = { .memory = 4 << 20, .instructions = 2000000000, .cpu_ms = 200 };
	const char *src = "local x = string.rep('a', 1000000) .. 'b'\n"
			  "local y = string.rep('a', 1000000) .. 'c'\n"
			  "device.on('spin', function() local n = 0 while true do if x == y then n = n + 1 end end end)\n"
			  "device.on('m', function(d) device.send('r', d) end)\n";
	ck_assert_int_eq(agent_rt_new(&a, src, strlen(src), &lim, &host, &err), 0);
	ck_assert_int_eq(agent_rt_message(a, "spin", NULL), AGENT_BUDGET);
	ck_assert_log("the 'spin' handler stopped: over its CPU time limit of 200 ms", 1);
	ck_sends(a, "7", "r", "7");
	/* and it cannot be caught either */
	ck_assert_int_eq(agent_rt_message(a, "spin", NULL), AGENT_BUDGET);
	agent_rt_free(a);
}
END_TEST

START_TEST(limit_budget_default_is_10_million)
{
	agent_rt *a = start("device.on('m', function(n) for i = 1, n do end end)\n");
	/* A numeric for loop is about one instruction a turn. */
	ck_assert_int_eq(agent_rt_message(a, "m", "9000000"), AGENT_OK);
	ck_assert_int_eq(agent_rt_message(a, "m", "11000000"), AGENT_BUDGET);
	ck_assert_log("over its budget of 10000000 instructions", 1);
	agent_rt_free(a);
}
END_TEST

START_TEST(limit_budget_cannot_be_caught)
{
	static const char *const escapes[] = {
		"pcall(function() while true do end end) device.send('after')",
		"while true do pcall(function() while true do end end) end",
		"while true do pcall(pcall, function() while true do end end) end",
		"while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
		"while true do pcall(coroutine.wrap(function() while true do end end)) end",
		"xpcall(function() while true do end end, function() while true do end end)",
		"while true do xpcall(function() while true do end end, function(e) return e end) end",
		"local co = coroutine.wrap(function() while true do pcall(function() while true do end end) "
		"coroutine.yield() end end) while true do co() end",
		"while true do pcall(string.gsub, 'aaaa', 'a', function() while true do end end) end",
		"while true do pcall(table.sort, {3, 2, 1}, function() while true do end end) end",
		"while true do pcall(load('while true do end')) end",
	};
	for (size_t i = 0; i < sizeof escapes / sizeof escapes[0]; i++) {
		char src[600];
		snprintf(src, sizeof src, "device.on('m', function() %s end)\ndevice.on('ok', function() device.send('ok') end)\n",
			 escapes[i]);
		agent_rt *a = start_lim(src, 0, 300000);
		forget();
		ck_assert_msg(agent_rt_message(a, "m", NULL) == AGENT_BUDGET, "escaped: %s", escapes[i]);
		ck_assert_int_eq(agent_rt_message(a, "ok", NULL), AGENT_OK);
		ck_assert_int_ge(F.nsends, 1);
		ck_assert_str_eq(F.send_name[F.nsends - 1], "ok");
		agent_rt_free(a);
	}
}
END_TEST

/* A C function that builds a big string costs one instruction but time in
 * proportion to the string: the bytes count towards the budget, so a loop
 * of them stops after a few thousand turns, not millions. */
START_TEST(limit_budget_counts_what_c_builds)
{
	static const char *const loops[] = {
		"string.rep('x', 300000)", "big:upper()", "big:reverse()", "big .. 'x'",
		"table.concat({big, big})", "string.format('%s%s', big, 'y')", "big:sub(2)",
		"big:gsub('x', 'y')",
	};
	for (size_t i = 0; i < sizeof loops / sizeof loops[0]; i++) {
		char src[600];
		snprintf(src, sizeof src, "local big = string.rep('x', 300000)\nn = 0\n"
			 "device.on('m', function() while true do n = n + 1 local _ = %s end end)\n"
			 "device.on('n', function() device.send('n', n) end)\n", loops[i]);
		agent_rt *a = start_lim(src, 4 << 20, 0);
		forget();
		ck_assert_msg(agent_rt_message(a, "m", NULL) == AGENT_BUDGET, "%s was not stopped", loops[i]);
		ck_assert_log("over its budget of 10000000 instructions", 1); /* gsub's: as a pattern */
		forget();
		ck_assert_int_eq(agent_rt_message(a, "n", NULL), AGENT_OK);
		long turns = strtol(F.send_data[0], NULL, 10);
		/* 300,000 bytes count as 18,750 instructions: ~530 turns (without
		 * the count, about a million). */
		ck_assert_msg(turns >= 1 && turns < 2000, "%s: %ld turns", loops[i], turns);
		agent_rt_free(a);
	}
}
END_TEST

START_TEST(limit_budget_in_the_top_level)
{
	agent_rt *a = start_lim("device.on('m', function() device.send('r', 1) end)\nwhile true do end\n", 0, 200000);
	ck_assert_log("the top level stopped: over its budget of 200000 instructions", 1);
	ck_sends(a, NULL, "r", "1"); /* what it registered before still runs */
	agent_rt_free(a);
}
END_TEST

START_TEST(limit_out_of_memory)
{
	static const char *const hogs[] = {
		"local t = {} while true do t[#t + 1] = string.rep('x', 1000) .. #t end",
		"local t = {} while true do pcall(function() t[#t + 1] = string.rep('x', 1000) .. #t end) end",
		"local s = 'x' while true do s = s .. s end",
		"local t = {} for i = 1, 1e9 do t[i] = i end",
		"xpcall(function() local t = {} while true do t[#t + 1] = string.rep('x', 1000) .. #t end end, "
		"function() while true do end end)",
		"local t = {} while true do coroutine.resume(coroutine.create(function() t[#t + 1] = {} end)) end",
	};
	for (size_t i = 0; i < sizeof hogs / sizeof hogs[0]; i++) {
		char src[400];
		snprintf(src, sizeof src, "device.on('hog', function() %s end)\n%s", hogs[i], echo);
		agent_rt *a = start(src);
		forget();
		ck_assert_msg(agent_rt_message(a, "hog", NULL) == AGENT_OOM, "not out of memory: %s", hogs[i]);
		ck_assert_uint_le(agent_rt_memory(a), 1 << 20);
		/* Dead: nothing runs any more. */
		ck_assert_int_eq(agent_rt_message(a, "m", "1"), AGENT_OOM);
		ck_assert_int_eq(agent_rt_connect(a), AGENT_OOM);
		ck_assert_int_eq(agent_rt_disconnect(a), AGENT_OOM);
		ck_assert_int_eq(agent_rt_run_timers(a, 1 << 30), AGENT_OOM);
		agent_http_req req = get("/");
		agent_http_res res;
		ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OOM);
		ck_assert_int_eq(res.status, 0);
		agent_http_res_clear(&res);
		ck_assert_int_eq(F.nsends, 0);
		agent_rt_free(a);
	}
}
END_TEST

/* Over the cap while the runtime itself builds an event's arguments: an
 * error there, unprotected, would abort the whole process. */
START_TEST(limit_out_of_memory_outside_handlers)
{
	agent_rt *a = start_lim(echo, 256 << 10, 0);
	char *items = repeat("{},", 40000), *big = NULL;
	items[strlen(items) - 1] = '\0';
	ck_assert_int_ge(asprintf(&big, "[%s]", items), 0);
	free(items);
	ck_assert_int_eq(agent_rt_message(a, "m", big), AGENT_OOM);
	agent_rt_free(a);
	/* The same from server.load, even in a pcall. */
	F.saved = big;
	a = start_lim("device.on('m', function() while true do pcall(server.load) end end)\n", 256 << 10, 0);
	ck_assert_int_eq(agent_rt_message(a, "m", NULL), AGENT_OOM);
	agent_rt_free(a);

	a = start_lim("http.onrequest(function(req, res) res.send(200, #req.body) end)\n", 256 << 10, 0);
	size_t n = 300 << 10;
	char *body = malloc(n);
	ck_assert_ptr_nonnull(body);
	memset(body, 'b', n);
	agent_http_req req = { .method = "POST", .path = "/", .body = body, .body_len = n };
	agent_http_res res;
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OOM);
	ck_assert_int_eq(res.status, 0);
	agent_http_res_clear(&res);
	free(body);
	agent_rt_free(a);

	/* Too little to even start. */
	for (size_t mem = 1024; mem <= 16384; mem *= 2) {
		agent_rt *b = NULL;
		tn_error err = { 0 };
		agent_limits lim = { .memory = mem };
		ck_assert_int_eq(agent_rt_new(&b, echo, strlen(echo), &lim, &host, &err), TN_ENOMEM);
		ck_assert_ptr_null(b);
	}
}
END_TEST

START_TEST(limit_string_rep)
{
	agent_rt *a = start_lim("device.on('big', function() return string.rep('x', 1e9) end)\n"
			    "device.on('method', function() return ('x'):rep(1e9) end)\n"
			    "device.on('sep', function() return string.rep('', 1e9, 'x') end)\n"
			    "device.on('m', function()\n"
			    "  device.send('r', {string.rep('ab', 3, ','), #string.rep('', 1e15), #string.rep('x', 1 << 20),\n"
			    "    string.rep('x', 0), string.rep('x', -1)})\n"
			    "end)\n",
			    4 << 20, 0);
	ck_assert_int_eq(agent_rt_message(a, "big", NULL), AGENT_ERROR);
	ck_assert_log("string.rep: the result would be over 1048576 bytes", 1);
	forget();
	ck_assert_int_eq(agent_rt_message(a, "method", NULL), AGENT_ERROR);
	ck_assert_log("string.rep: the result would be over 1048576 bytes", 1);
	forget();
	ck_assert_int_eq(agent_rt_message(a, "sep", NULL), AGENT_ERROR);
	ck_assert_log("string.rep: the result would be over 1048576 bytes", 1);
	/* An empty string repeated for ever is empty, at once. */
	ck_sends(a, NULL, "r", "[\"ab,ab,ab\",0,1048576,\"\",\"\"]");
	agent_rt_free(a);
}
END_TEST

/* table.insert/remove/move/sort/concat loop in C, out of the budget's reach. */
START_TEST(limit_table_loops)
{
	agent_rt *a = start("device.on('move', function() table.move({}, 1, 1e15, 1, {}) end)\n"
			    "device.on('len', function()\n"
			    "  table.insert(setmetatable({}, {__len = function() return 1e15 end}), 1, 'x')\n"
			    "end)\n"
			    "device.on('sparse', function()\n"
			    "  local t = {} for i = 40, 0, -1 do t[1 << i] = 1 end  -- #t is 2^40\n"
			    "  table.remove(t, 1)\n"
			    "end)\n"
			    "device.on('m', function()\n"
			    "  local t = {5, 3, 1}\n"
			    "  table.insert(t, 4) table.insert(t, 1, 9) table.remove(t, 2) table.sort(t)\n"
			    "  local u = table.move(t, 1, 3, 2, {0})\n"
			    "  local obj = setmetatable({}, {__index = {}})\n"
			    "  table.insert(obj, 'o')\n"
			    "  device.send('r', {table.concat(t, ','), table.concat(u, ',', 2, 3), obj[1]})\n"
			    "end)\n");
	ck_assert_int_eq(agent_rt_message(a, "move", NULL), AGENT_ERROR);
	ck_assert_log("table.move: over 65536 elements", 1);
	ck_assert_int_eq(agent_rt_message(a, "len", NULL), AGENT_ERROR);
	ck_assert_log("table.insert: not for a table with a __len metamethod", 1);
	ck_assert_int_eq(agent_rt_message(a, "sparse", NULL), AGENT_ERROR);
	ck_assert_log("table.remove: over 65536 elements", 1);
	ck_sends(a, NULL, "r", "[\"1,3,4,9\",\"1,3\",\"o\"]");
	agent_rt_free(a);
}
END_TEST

START_TEST(limit_handler_error_has_a_traceback)
{
	agent_rt *a = start("local function inner(x)\n"
			    "  error('boom ' .. x)\n"
			    "end\n"
			    "device.on('m', function(d) inner(d) end)\n"
			    "device.on('obj', function() error({}) end)\n");
	ck_assert_int_eq(agent_rt_message(a, "m", "\"now\""), AGENT_ERROR);
	ck_assert_int_eq(F.nlogs, 1);
	ck_assert_int_eq(F.log_err[0], 1);
	const char *l = F.log[0];
	ck_assert_msg(strncmp(l, "error in the 'm' handler: agent.lua:2: boom now\nstack traceback:\n", 64) == 0,
		      "%s", l);
	ck_assert_msg(strstr(l, "agent.lua:2: in ") != NULL && strstr(l, "agent.lua:4: in function") != NULL, "%s",
		      l);
	ck_assert_int_eq(agent_rt_message(a, "obj", NULL), AGENT_ERROR);
	ck_assert_log("error in the 'obj' handler: (an error object that is not a string)", 1);
	agent_rt_free(a);
}
END_TEST

START_TEST(limit_memory_of_a_small_agent)
{
	agent_rt *a = start(echo);
	ck_assert_uint_gt(agent_rt_memory(a), 1000);
	ck_assert_uint_lt(agent_rt_memory(a), 64 << 10);
	agent_rt_free(a);
	agent_rt_free(NULL);
}
END_TEST

START_TEST(limit_thousand_agents)
{
	static agent_rt *agents[1000];
	size_t total = 0;
	for (int i = 0; i < 1000; i++) {
		agents[i] = start(echo);
		total += agent_rt_memory(agents[i]);
	}
	ck_assert_uint_lt(total, 1000u * (64 << 10));
	ck_sends(agents[999], "[999]", "r", "[999]");
	for (int i = 0; i < 1000; i++)
		agent_rt_free(agents[i]);
}
END_TEST

/* --- small blocks (the allocator under the Lua states) ------------------------- */

/* A host for agents on other threads: F is not theirs. */
struct quiet {
	int sends;
};

static void quiet_log(void *ctx, int is_error, const char *msg) {}
static void quiet_send(void *ctx, const char *name, const char *data_json) { ((struct quiet *)ctx)->sends++; }
static int quiet_connected(void *ctx) { return 1; }
static int quiet_save(void *ctx, const char *json, size_t len, char *err, size_t errcap) { return 0; }
static char *quiet_load(void *ctx) { return strdup("{\"connects\":3,\"ticks\":0}"); }
static int64_t quiet_now(void *ctx) { return 1000; }

static agent_rt *start_quiet(struct quiet *q, const char *src)
{
	agent_host h = { .ctx = q, .log = quiet_log, .send = quiet_send, .is_connected = quiet_connected,
			 .save = quiet_save, .load = quiet_load, .now_ms = quiet_now };
	agent_rt *a = NULL;
	tn_error err = { 0 };
	int rc = agent_rt_new(&a, src, strlen(src), NULL, &h, &err);
	ck_assert_msg(rc == 0, "agent_rt_new: %d %s", rc, err.msg);
	return a;
}

/* bench/small_agent.lua, what bench/agent_memory.sh runs */
static const char *small_agent =
	"local state = server.load() or {}\n"
	"state.connects = state.connects or 0\n"
	"state.ticks = state.ticks or 0\n"
	"local beats = 0\n"
	"device.onconnect(function() state.connects = state.connects + 1 server.save(state) end)\n"
	"device.on('tick', function() state.ticks = state.ticks + 1 end)\n"
	"timer.every(60, function() beats = beats + 1 end)\n";

/* Lua's small blocks cost what Lua asks for, rounded to 8 bytes, with no
 * malloc header: a small agent's whole footprint (its Lua heap, the blocks'
 * pages, everything malloc'd for it) is within 1.5 KB of what it reports as
 * its memory (0.9 KB measured: struct agent_rt, its timers, rounding); with
 * malloc under every block it was 2.8 KB. */
START_TEST(memory_small_blocks_have_no_header)
{
#ifdef __SANITIZE_ADDRESS__
	/* ASan's malloc has its own headers and redzones: nothing to measure. */
#else
	enum { N = 300 };
	static agent_rt *agents[N];
	struct quiet q = { 0 };
	size_t in0, in1, empty0, empty1, lua = 0;
	malloc_trim(0);
	struct mallinfo2 m0 = mallinfo2();
	agent_rt_pages(&in0, &empty0);
	for (int i = 0; i < N; i++) {
		agents[i] = start_quiet(&q, small_agent);
		ck_assert_int_eq(agent_rt_connect(agents[i]), AGENT_OK);
		lua += agent_rt_memory(agents[i]);
	}
	struct mallinfo2 m1 = mallinfo2();
	agent_rt_pages(&in1, &empty1);
	double pages = ((double)in1 + (double)empty1 - (double)in0 - (double)empty0) * 4096;
	double footprint = ((double)m1.uordblks - (double)m0.uordblks + pages) / N;
	ck_assert_msg(footprint < (double)lua / N + 1536, "%.0f bytes per agent for %.0f of Lua heap", footprint,
		      (double)lua / N);
	for (int i = 0; i < N; i++)
		agent_rt_free(agents[i]);
#endif
}
END_TEST

/* The pages go back to the pool when their agents go, serve the next
 * agents, and those that stay unused there go back to the system. */
START_TEST(memory_pages_are_reused_and_given_back)
{
	enum { N = 400 };
	static agent_rt *agents[N];
	struct quiet q = { 0 };
	size_t in0, empty0, in1, empty1, in2, empty2;
	agent_rt_pages(&in0, &empty0);
	for (int i = 0; i < N; i++)
		agents[i] = start_quiet(&q, small_agent);
	agent_rt_pages(&in1, &empty1);
	ck_assert_uint_gt(in1, in0 + N); /* more than a page per agent */
	for (int i = 0; i < N; i++)
		agent_rt_free(agents[i]);
	agent_rt_pages(&in2, &empty2);
	/* All but the one page each size class keeps. */
	ck_assert_uint_le(in2, in0 + 16);
	/* The next agents take them from the pool. */
	for (int i = 0; i < N; i++)
		agents[i] = start_quiet(&q, small_agent);
	size_t in3, empty3;
	agent_rt_pages(&in3, &empty3);
	ck_assert_uint_ge(in3 + empty3, in1 - 32);
	ck_assert_uint_le(in3 + empty3, in2 + empty2 + 32); /* no new pages */
	for (int i = 0; i < N; i++)
		agent_rt_free(agents[i]);
	/* A few agents at a time, over and over: the top of the pool moves,
	 * its bottom stays unused and goes back to the system. */
	size_t before, in4, empty4;
	agent_rt_pages(&in4, &before);
	ck_assert_uint_gt(before, 300);
	for (int k = 0; k < 60; k++) {
		for (int i = 0; i < 20; i++)
			agents[i] = start_quiet(&q, small_agent);
		for (int i = 0; i < 20; i++)
			agent_rt_free(agents[i]);
	}
	agent_rt_pages(&in4, &empty4);
	ck_assert_msg(empty4 < 200, "%zu empty pages in memory (%zu before)", empty4, before);
}
END_TEST

/* An agent handling messages holds little garbage: a collection cycle
 * starts once its heap is 25 % over what the last one left (Lua's default,
 * 100 %, held 55 % more on average here). */
START_TEST(memory_garbage_is_collected_early)
{
	agent_rt *a = start("local n = 0\n"
			    "device.on('m', function(d) n = n + 1 device.send('r', {d.a, d.b, tostring(d.c), n}) end)\n");
	double live = (double)agent_rt_memory(a), sum = 0;
	for (int i = 0; i < 400; i++) {
		ck_assert_int_eq(agent_rt_message(a, "m", "{\"a\":1,\"b\":\"hello there\",\"c\":[1,2,3]}"), AGENT_OK);
		sum += (double)agent_rt_memory(a);
		forget();
	}
	ck_assert_msg(sum / 400 < live * 1.3, "%.0f bytes on average, %.0f after the start", sum / 400, live);
	agent_rt_free(a);
}
END_TEST

struct worker_run {
	pthread_t thread;
	agent_rt *handed_in, *handed_out; /* an agent started on one thread, freed on another */
	int messages;
};

static void *memory_worker(void *arg)
{
	struct worker_run *w = arg;
	struct quiet q = { 0 };
	agent_rt *agents[20];
	for (int i = 0; i < 20; i++)
		agents[i] = start_quiet(&q, "device.on('m', function(d) device.send('r', {d, tostring(d) .. '!', {d}}) end)\n");
	for (int k = 0; k < 200; k++)
		for (int i = 0; i < 20; i++)
			if (agent_rt_message(agents[i], "m", "\"a message\"") == AGENT_OK)
				w->messages++;
	w->handed_out = agents[0];
	for (int i = 1; i < 20; i++)
		agent_rt_free(agents[i]);
	return NULL;
}

/* The pages are shared by the agents of every worker thread, and an agent
 * moves between them. */
START_TEST(memory_blocks_shared_by_threads)
{
	struct worker_run w[4] = { { 0 } };
	size_t in0, empty0, in1, empty1;
	agent_rt_pages(&in0, &empty0);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_create(&w[i].thread, NULL, memory_worker, &w[i]), 0);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(pthread_join(w[i].thread, NULL), 0);
		ck_assert_int_eq(w[i].messages, 20 * 200);
	}
	/* Each thread's last agent goes on here, and is freed here. */
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(agent_rt_message(w[i].handed_out, "m", "1"), AGENT_OK);
		agent_rt_free(w[i].handed_out);
	}
	agent_rt_pages(&in1, &empty1);
	ck_assert_uint_le(in1, in0 + 16);
}
END_TEST

/* --- JSON ------------------------------------------------------------------------ */

START_TEST(json_round_trips)
{
	static const char *const same[] = {
		"{\"a\":{\"b\":{\"c\":[1,2,{\"d\":[true,false]}]}}}",
		"[1,\"two\",true,false,1.5,-3,[[1],[2,[3]]]]",
		"{}", "\"text\"", "\"\\u00fc\\u00f1\\u00ee \\u20ac \\ud83d\\ude00\"", "\"quote \\\" and \\\\ and \\n\"",
		"0", "-42", "9223372036854775807", "-9223372036854775808", "9007199254740993",
		"1.0", "-0.5", "1e+300", "2.5e-300", "true", "null", "{\"k\":\"\"}", "{\"1\":\"string key\"}",
	};
	agent_rt *a = start(echo);
	for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
		ck_sends(a, same[i], "r", same[i]);
	/* What does not come back the same. */
	ck_sends(a, "[]", "r", "{}");                 /* an empty table is an object */
	ck_sends(a, "{\"a\":null,\"b\":1}", "r", "{\"b\":1}"); /* null is nil: no key */
	ck_sends(a, "[1,2,null]", "r", "[1,2]");      /* a trailing nil is no element */
	ck_sends(a, "{bad json", "r", "null");        /* malformed: nil */
	ck_sends(a, "{\"a\":1,\"a\":2}", "r", "null"); /* duplicate keys: malformed */
	ck_sends(a, "", "r", "null");
	agent_rt_free(a);
}
END_TEST

START_TEST(json_integers_and_floats)
{
	agent_rt *a = start("device.on('m', function(d)\n"
			    "  device.send('r', {math.type(d[1]), math.type(d[2]), math.type(d[3]), d[1] == d[2]})\n"
			    "end)\n"
			    "device.on('lua', function() device.send('r', {1, 1.0, 2^53, 3 / 2, 7 // 2, 2^63, math.mininteger}) end)\n");
	ck_sends(a, "[1,1.0,1e2]", "r", "[\"integer\",\"float\",\"float\",true]");
	forget();
	ck_assert_int_eq(agent_rt_message(a, "lua", NULL), AGENT_OK);
	json_t *j = json_loads(F.send_data[0], 0, NULL);
	ck_assert_ptr_nonnull(j);
	ck_assert(json_is_integer(json_array_get(j, 0)));
	ck_assert(json_is_real(json_array_get(j, 1)));
	ck_assert(json_is_real(json_array_get(j, 2)));
	ck_assert(json_real_value(json_array_get(j, 2)) == 9007199254740992.0);
	ck_assert(json_is_real(json_array_get(j, 3)));
	ck_assert(json_is_integer(json_array_get(j, 4)));
	ck_assert_int_eq(json_integer_value(json_array_get(j, 4)), 3);
	ck_assert(json_is_real(json_array_get(j, 5)));
	ck_assert(json_integer_value(json_array_get(j, 6)) == INT64_MIN);
	json_decref(j);
	agent_rt_free(a);
}
END_TEST

START_TEST(json_refusals)
{
	agent_rt *a = start("local function nest(n) local t = {} for i = 1, n - 1 do t = {t} end return t end\n"
			    "local function try(v) local ok, err = pcall(device.send, 'x', v) return ok and 'ok' or err end\n"
			    "local holed = {1, nil, 3, 4} holed[0] = 0\n"
			    "device.on('m', function()\n"
			    "  server.log(table.concat({\n"
			    "    try(print), try({f = print}), try(0 / 0), try(math.huge), try(-math.huge),\n"
			    "    try({1, a = 2}), try({1, nil, 3}), try(holed), try({[1.5] = 1}), try({[true] = 1}),\n"
			    "    try('\\xff'), try({['a\\0b'] = 1}), try({['\\xff'] = 1}), try(coroutine.create(print)),\n"
			    "    try({[-1] = 1}), try(nest(33)), try(nest(34))}, '\\n'))\n"
			    "end)\n");
	ck_assert_int_eq(agent_rt_message(a, "m", NULL), AGENT_OK);
	ck_assert_int_eq(F.nlogs, 1);
	static const char *const want[] = {
		"a function cannot be sent as JSON",
		"a function cannot be sent as JSON",
		"NaN and infinity cannot be sent as JSON",
		"NaN and infinity cannot be sent as JSON",
		"NaN and infinity cannot be sent as JSON",
		"a table mixes string and integer keys",
		"an array must have keys 1 to n with no holes",
		"an array must have keys 1 to n with no holes",
		"a table key must be a string or an integer",
		"a table key must be a string or an integer",
		"a string is not valid UTF-8 text",
		"a key holds a NUL byte",
		"a key is not valid UTF-8 text",
		"a thread cannot be sent as JSON",
		"an array must have keys 1 to n with no holes",
		"ok", /* 33 tables: the top and 32 levels below it */
		"data nested deeper than 32 levels",
	};
	char *lines = strdup(F.log[0]), *save = NULL, *line = strtok_r(lines, "\n", &save);
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		ck_assert_msg(line != NULL, "%zu lines only: %s", i, F.log[0]);
		ck_assert_msg(strstr(line, want[i]) != NULL, "#%zu: '%s', want '%s'", i + 1, line, want[i]);
		line = strtok_r(NULL, "\n", &save);
	}
	ck_assert_ptr_null(line);
	free(lines);
	ck_assert_int_eq(F.nsends, 1); /* nest(33) */
	agent_rt_free(a);
}
END_TEST

START_TEST(json_depth_of_incoming_data)
{
	agent_rt *a = start("device.on('m', function(d)\n"
			    "  local n, v = 0, d\n"
			    "  while type(v) == 'table' do n = n + 1 v = v[1] end\n"
			    "  device.send('depth', n)\n"
			    "end)\n");
	char deep[81];
	memset(deep, '[', 40);
	memset(deep + 40, ']', 40);
	deep[80] = '\0';
	ck_sends(a, deep, "depth", "33"); /* the top and 32 levels; deeper ones arrive as nil */
	ck_sends(a, "[[[[[]]]]]", "depth", "5");
	agent_rt_free(a);
}
END_TEST

/* --- lifecycle ------------------------------------------------------------------- */

START_TEST(check_reports_line_numbers)
{
	tn_error err = { 0 };
	const char *ok = "device.on('x', function() end)\n";
	ck_assert_int_eq(agent_rt_check(ok, strlen(ok), &err), 0);
	const char *bad = "device.on('x', function()\n  return = 1\nend)\n";
	ck_assert_int_eq(agent_rt_check(bad, strlen(bad), &err), TN_EINVAL);
	ck_assert_msg(strncmp(err.msg, "agent.lua:2:", 12) == 0, "%s", err.msg);
	const char *unclosed = "x = 1\ny = 2\nfunction f()\n";
	ck_assert_int_eq(agent_rt_check(unclosed, strlen(unclosed), &err), TN_EINVAL);
	ck_assert_msg(strncmp(err.msg, "agent.lua:3:", 12) == 0 || strncmp(err.msg, "agent.lua:4:", 12) == 0,
		      "%s", err.msg);
	/* Runtime errors are not compile errors. */
	const char *runtime = "error('only when run')\n";
	ck_assert_int_eq(agent_rt_check(runtime, strlen(runtime), &err), 0);
}
END_TEST

START_TEST(new_refuses_code_that_does_not_compile)
{
	agent_rt *a = NULL;
	tn_error err = { 0 };
	const char *bad = "x = 1\n\nlocal = 3\n";
	ck_assert_int_eq(agent_rt_new(&a, bad, strlen(bad), NULL, &host, &err), TN_EINVAL);
	ck_assert_ptr_null(a);
	ck_assert_msg(strncmp(err.msg, "agent.lua:3:", 12) == 0, "%s", err.msg);
	ck_assert_int_eq(F.nlogs, 0);
}
END_TEST

/* runtime.c starts an agent whose top level raised: the error is logged like
 * a handler's, and what the top level registered before it stays. */
START_TEST(new_with_a_top_level_error_still_starts)
{
	agent_rt *a = NULL;
	tn_error err = { 0 };
	const char *src = "device.on('m', function(d) device.send('r', d) end)\nlocal x = nil + 1\n"
			  "device.on('never', print)\n";
	ck_assert_int_eq(agent_rt_new(&a, src, strlen(src), NULL, &host, &err), 0);
	ck_assert_ptr_nonnull(a);
	ck_assert_int_eq(F.nlogs, 1);
	ck_assert_int_eq(F.log_err[0], 1);
	ck_assert_msg(strncmp(F.log[0], "error in the top level: agent.lua:2: attempt to perform arithmetic on a nil value",
			      80) == 0, "%s", F.log[0]);
	ck_assert_msg(strstr(F.log[0], "stack traceback:") != NULL, "%s", F.log[0]);
	ck_sends(a, "1", "r", "1");
	ck_assert_int_eq(agent_rt_message(a, "never", "1"), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	agent_rt_free(a);
}
END_TEST

START_TEST(new_with_default_limits)
{
	/* lim NULL, or zero fields: 1 MiB and 10 million. */
	agent_rt *a = NULL;
	tn_error err = { 0 };
	const char *src = "device.on('m', function(kb) local t = {} for i = 1, kb do t[i] = string.rep('x', 1024) .. i end end)\n";
	ck_assert_int_eq(agent_rt_new(&a, src, strlen(src), NULL, &host, &err), 0);
	ck_assert_int_eq(agent_rt_message(a, "m", "800"), AGENT_OK);
	ck_assert_int_eq(agent_rt_message(a, "m", "1100"), AGENT_OOM);
	agent_rt_free(a);
}
END_TEST

/* --- the examples in agents/examples ------------------------------------------ */

static char *read_example(const char *name)
{
	/* make check sets TN_SRCDIR; by hand, from the build or the source dir. */
	const char *dirs[] = { getenv("TN_SRCDIR"), "..", "." };
	for (size_t i = 0; i < 3; i++) {
		char path[600];
		if (!dirs[i])
			continue;
		snprintf(path, sizeof path, "%s/agents/examples/%s", dirs[i], name);
		FILE *f = fopen(path, "rb");
		if (!f)
			continue;
		char *buf = calloc(1, 65536);
		ck_assert_ptr_nonnull(buf);
		size_t n = fread(buf, 1, 65535, f);
		fclose(f);
		ck_assert_uint_gt(n, 0);
		tn_error err = { 0 };
		ck_assert_msg(agent_rt_check(buf, n, &err) == 0, "%s: %s", name, err.msg);
		return buf;
	}
	ck_abort_msg("agents/examples/%s not found (set TN_SRCDIR)", name);
	return NULL;
}

START_TEST(example_echo)
{
	char *src = read_example("echo.lua");
	agent_rt *a = start(src);
	ck_assert_int_eq(agent_rt_message(a, "echo", "{\"n\":[1,2,{\"x\":\"y\"}]}"), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	ck_assert_str_eq(F.send_name[0], "echo");
	ck_json_eq(F.send_data[0], "{\"n\":[1,2,{\"x\":\"y\"}]}");
	ck_assert_int_eq(agent_rt_connect(a), AGENT_OK);
	ck_assert_log("device connected", 0);
	ck_assert_int_eq(agent_rt_message(a, "other", "1"), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	agent_rt_free(a);
	free(src);
}
END_TEST

START_TEST(example_counter)
{
	char *src = read_example("counter.lua");
	agent_rt *a = start(src);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(agent_rt_message(a, "tick", NULL), AGENT_OK);
	ck_json_eq(F.saved, "{\"count\":3}");
	agent_http_req req = get("/count");
	agent_http_res res;
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 200);
	ck_json_eq(res.body, "{\"count\":3}");
	ck_assert_str_eq(res_header(&res, "Content-Type"), "application/json");
	agent_http_res_clear(&res);
	agent_rt_free(a);

	/* Restarted, it carries on from what it saved. */
	a = start(src);
	ck_assert_int_eq(agent_rt_message(a, "tick", NULL), AGENT_OK);
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_json_eq(res.body, "{\"count\":4}");
	agent_http_res_clear(&res);
	req = (agent_http_req){ .method = "POST", .path = "/reset" };
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 200);
	ck_json_eq(res.body, "{\"count\":0}");
	agent_http_res_clear(&res);
	ck_json_eq(F.saved, "{\"count\":0}");
	req = get("/nothing");
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 404);
	agent_http_res_clear(&res);
	req = (agent_http_req){ .method = "DELETE", .path = "/count" };
	ck_assert_int_eq(agent_rt_http(a, &req, &res), AGENT_OK);
	ck_assert_int_eq(res.status, 405);
	agent_http_res_clear(&res);
	agent_rt_free(a);
	free(src);
}
END_TEST

START_TEST(example_heartbeat)
{
	char *src = read_example("heartbeat.lua");
	F.now = 0;
	F.connected = 1;
	agent_rt *a = start(src);
	ck_assert_int_eq(agent_rt_next_timer(a), 60000);
	ck_assert_int_eq(agent_rt_run_timers(a, 60000), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	ck_assert_str_eq(F.send_name[0], "heartbeat");
	ck_assert_int_eq(agent_rt_message(a, "heartbeat", "{\"uptime\":12}"), AGENT_OK);
	ck_assert_log("heartbeat: uptime 12 s", 0);
	/* Offline: no sends; one error line after five missed beats. */
	F.connected = 0;
	for (int i = 2; i <= 8; i++)
		ck_assert_int_eq(agent_rt_run_timers(a, i * 60000), AGENT_OK);
	ck_assert_int_eq(F.nsends, 1);
	ck_assert_int_ge(find_log("offline for 5 minutes", 1), 0);
	int errors = 0;
	for (int i = 0; i < F.nlogs; i++)
		errors += F.log_err[i];
	ck_assert_int_eq(errors, 1);
	/* Back: beats again, and says so. */
	F.connected = 1;
	ck_assert_int_eq(agent_rt_connect(a), AGENT_OK);
	ck_assert_log("device back after 7 missed heartbeats", 0);
	ck_assert_int_eq(agent_rt_run_timers(a, 9 * 60000), AGENT_OK);
	ck_assert_int_eq(F.nsends, 2);
	agent_rt_free(a);
	free(src);
}
END_TEST

/* What a migration moves of the timers: exported with stable ids, then
 * re-armed by id, in the same state or in one rebuilt from the code. */
START_TEST(timer_export_and_rearm_by_id)
{
	const char *src = "timer.after(1, function() device.send('t', 1) end)\n"
			  "timer.every(2, function() device.send('t', 2) end)\n"
			  "timer.after(3, function() device.send('t', 3) end)\n"
			  "device.on('new', function() device.send('id', timer.after(1, function() end).id) end)\n";
	agent_rt *a = start(src);
	agent_timer *t = NULL;
	int next_id = 0;
	ck_assert_int_eq(agent_rt_timers(a, &t, &next_id), 3);
	ck_assert_int_eq(next_id, 4);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(t[i].id, i + 1);
		ck_assert_int_eq(t[i].due, 1000 + 1000 * (i + 1));
		ck_assert_int_eq(t[i].every, i == 1 ? 2000 : 0);
	}
	/* A rebuilt state (another node) finds them by id; one the sender no
	 * longer had is cancelled, one it had that the code did not make is
	 * not invented. */
	agent_rt *b = start(src);
	agent_timer moved[] = { { 2, 1500, 500 }, { 3, 1600, 0 }, { 99, 1000, 0 } };
	ck_assert_int_eq(agent_rt_rearm_timers(b, moved, 3, 50), 2);
	ck_assert_int_eq(agent_rt_next_timer(b), 1500);
	forget();
	ck_assert_int_eq(agent_rt_run_timers(b, 1600), AGENT_OK);
	ck_assert_int_eq(F.nsends, 2);
	ck_assert_str_eq(F.send_data[0], "2");
	ck_assert_str_eq(F.send_data[1], "3");
	ck_assert_int_eq(agent_rt_next_timer(b), 2100); /* the every, from when it ran, at its new interval */
	for (int id = 50; id <= 51; id++) { /* ids go on after the sender's */
		char want[8];
		forget();
		ck_assert_int_eq(agent_rt_message(b, "new", NULL), AGENT_OK);
		snprintf(want, sizeof want, "%d", id);
		ck_assert_str_eq(F.send_data[0], want);
	}
	/* Re-armed with none: all cancelled. */
	ck_assert_int_ge(agent_rt_rearm_timers(a, NULL, 0, 1), 0);
	ck_assert_int_eq(agent_rt_next_timer(a), -1);
	free(t);
	agent_rt_free(a);
	agent_rt_free(b);
}
END_TEST

/* --- pattern matching: Lua 5.4.4's behaviour, within the budget --------------- */

/* Serialises a call's results, types included, so that two states compare. */
#define PAT_SER \
	"local function ser(...)\n" \
	"  local t = {}\n" \
	"  for i = 1, select('#', ...) do local v = select(i, ...) t[i] = type(v) .. ':' .. tostring(v) end\n" \
	"  return table.concat(t, '|')\n" \
	"end\n"

/* Each is an expression; the agent's counted find/match/gmatch/gsub must
 * give what the stock string library of the system's Lua gives. */
static const char *const pattern_cases[] = {
	/* find */
	"string.find('hello world', 'o w')", "string.find('hello world', 'o', 6)",
	"string.find('hello', 'l+')", "string.find('hello', '(h)(e)')", "string.find('a.b', '.', 1, true)",
	"string.find('a+b', '+', 1, true)", "string.find('abc', 'b', -1)", "string.find('abc', 'c', -1)",
	"string.find('abc', '', 10)", "string.find('abc', '', 4)", "string.find('abc', 'x')",
	"('hello'):find('l')", "string.find('a\\0b', '\\0')", "string.find('a\\0b', 'b', 1, true)",
	"string.find('a\\0b', '%z')", "string.find('', '')", "string.find('abc', '()b()')",
	"string.find('abc', 'b', -100)", "string.find('abc', '[a-', 1)",
	/* match: captures, anchors, classes, %b, %f, back references, positions */
	"string.match('key = value', '(%w+)%s*=%s*(%w+)')", "string.match('hello', '()ll()')",
	"string.match('THE (quick) fox', '%((%a+)%)')", "string.match('f(a(b)c)d', '%b()')",
	"string.match('f(a(b)c', '%b()')", "string.match('THE (quick) fox', '%f[%a]%a+', 5)",
	"string.match('  trim  ', '^%s*(.-)%s*$')", "string.match('2024-05-01', '^(%d+)-(%d+)-(%d+)$')",
	"string.match('abc', '^b')", "string.match('aaa', 'a-b')", "string.match('aaab', 'a-b')",
	"string.match('xyz1', '[^%a]')", "string.match('x]y', '[]]')", "string.match('a-b', '[a%-]+')",
	"string.match('hello hello', '(%w+) %1')", "string.match('abc', '((a)(b))')",
	"string.match('x = 10', '(%a)%s*=%s*(%d+)$')", "string.match('hello', '.-(l+)(.*)')",
	"string.match('ab', '[%a-z]+')", "string.match('a$b', 'a$b')", "string.match('ab', 'b$')",
	"string.match('aXb', '%u')", "string.match('a b\\tc', '%s+(%S+)$')", "string.match('0x1F', '%x+$')",
	"string.match('hi!', '%p')", "string.match('a\\1b', '%c')", "string.match('a.b', '%.')",
	"string.match('aaa', 'a?a?a?a')", "string.match('abc', 'a*b?c+')", "string.match('THE END', '%f[%w]%w+$')",
	"string.match('word', '%f[%W]')", "string.match('abc', '()', 4)", "string.match('abc', 'b', 10)",
	/* gmatch */
	"(function() local t = {} for w in string.gmatch('one two  three', '%a+') do t[#t + 1] = w end "
	"return table.concat(t, ',') end)()",
	"(function() local t = {} for k, v in string.gmatch('k1=v1, k2=v2', '(%w+)=(%w+)') do "
	"t[#t + 1] = k .. ':' .. v end return table.concat(t, ',') end)()",
	"(function() local n = 0 for _ in string.gmatch('abc', '') do n = n + 1 end return n end)()",
	"(function() local t = {} for p in string.gmatch('hello', '()l') do t[#t + 1] = p end "
	"return table.concat(t, ',') end)()",
	"(function() local t = {} for w in string.gmatch('hello world from lua', '%a+', 7) do t[#t + 1] = w end "
	"return table.concat(t, ',') end)()",
	"(function() local t = {} for a in ('aXbXc'):gmatch('[^X]*') do t[#t + 1] = '<' .. a .. '>' end "
	"return table.concat(t) end)()",
	"(function() local t = {} for w in string.gmatch('abc', '.', 10) do t[#t + 1] = w end return #t end)()",
	/* gsub with strings, tables and functions */
	"string.gsub('hello world', 'o', '0')", "string.gsub('hello world', '(%w+)', '<%1>')",
	"string.gsub('hello world', '%w+', '%0 %0', 1)", "string.gsub('abc', '', '-')",
	"string.gsub('hello world', '(%w+) (%w+)', '%2 %1')",
	"string.gsub('$name is $age', '%$(%w+)', {name = 'bob', age = 42})",
	"string.gsub('$name $x', '%$(%w+)', {name = 'bob'})",
	"string.gsub('abc', '%w', function(c) return c:upper() .. '.' end)",
	"string.gsub('abc', '%w', function(c) if c == 'b' then return false end return 'X' end)",
	"string.gsub('hello', 'l', '%%')", "string.gsub('abc', '^a', 'X')", "string.gsub('abc', '^b', 'X')",
	"string.gsub('hello', '()', '%1')", "string.gsub('abc', 'b', 5)", "string.gsub('hello world', '%s', '_', 0)",
	"string.gsub('abc', '()', {[1] = 'x', [3] = 'y'})", "string.gsub('a,b,,c', ',,', ',nil,')",
	"string.gsub('abc', 'x', 'y')", "string.gsub('abc', '.', {a = 1, b = true})",
	"string.gsub('hello', '(l)(l)', function(a, b) return b .. a .. '!' end)",
	"string.gsub('abc', '%w', '%0%0', 2)", "string.gsub('  x  ', '^%s+', '')",
	"string.gsub('abc', '%f[%w]', '^')", "string.gsub('abc', '.', '%1')", "string.find('a]b', '[%]]')",
	"string.match('[]', '[%[]')", "string.find('aaa', 'a-', 2)", "string.match('hello', '(h)(e)(l)(l)(o)')",
	"string.gsub('hello world', 'o', {o = 0})", "string.gsub('abc', '(b)', '[%0|%1]')",
	"string.gsub(string.rep('ab', 100), 'b', '')", "string.find(string.rep('a', 100) .. 'b', 'a+b')",
	/* errors, with their messages */
	"string.find('a', '%')", "string.find('a', '[a')", "string.match('a', '%b')", "string.match('a', '%f')",
	"string.gsub('a', 'a', '%2')", "string.gsub('a', 'a', true)", "string.match('a', '(a')",
	"string.match('a', 'a)')", "string.gsub('abc', '%w', '%x')", "string.find('a', '%1')",
	"string.gsub('abc', 'a', function() return {} end)", "string.find(nil, 'a')", "string.gmatch('a')",
	"string.match(string.rep('a', 40), string.rep('(a)', 33))",
	"string.match(string.rep('a', 300), string.rep('a?', 300) .. string.rep('a', 300))",
	"string.match('abc', '%g+')",
	NULL,
};

/* What the system's own Lua says for code. */
static char *stock_result(const char *code)
{
	lua_State *L = luaL_newstate();
	ck_assert_ptr_nonnull(L);
	luaL_openlibs(L);
	int rc = luaL_loadstring(L, "local code = ...\n" PAT_SER
				    "local f = assert(load('return ' .. code))\n"
				    "return ser(pcall(f))\n");
	ck_assert_int_eq(rc, LUA_OK);
	lua_pushstring(L, code);
	ck_assert_int_eq(lua_pcall(L, 1, 1, 0), LUA_OK);
	char *out = strdup(lua_tostring(L, -1));
	lua_close(L);
	return out;
}

START_TEST(pattern_behaves_as_lua_5_4)
{
	agent_rt *a = start(PAT_SER "device.on('c', function(code)\n"
				    "  local f = assert(load('return ' .. code))\n"
				    "  device.send('r', ser(pcall(f)))\n"
				    "end)\n");
	for (const char *const *c = pattern_cases; *c; c++) {
		forget();
		json_t *code = json_string(*c);
		char *data = json_dumps(code, JSON_ENCODE_ANY);
		json_decref(code);
		int rc = agent_rt_message(a, "c", data);
		free(data);
		ck_assert_msg(rc == AGENT_OK, "%s: rc %d, %s", *c, rc, F.nlogs ? F.log[0] : "-");
		ck_assert_int_eq(F.nsends, 1);
		json_t *got = json_loads(F.send_data[0], JSON_DECODE_ANY, NULL);
		char *want = stock_result(*c);
		ck_assert_msg(json_is_string(got) && strcmp(json_string_value(got), want) == 0,
			      "%s:\n  agent: %s\n  lua:   %s", *c, F.send_data[0], want);
		free(want);
		json_decref(got);
	}
	agent_rt_free(a);
}
END_TEST

/* Each runaway match stops with the pattern error, whatever wraps it, and
 * the agent goes on with its next event. */
START_TEST(pattern_runaway_is_stopped)
{
	static const char *const runaways[] = {
		"find", "match", "gmatch", "gsub", "plain", "class", "pcall_loop", "coroutine", "gsub_fn", NULL,
	};
	agent_rt *a = start_lim(
		"local s = string.rep('a', 5000)\n"
		"device.on('find', function() return s:find('.-.-.-.-.-b') end)\n"
		"device.on('match', function() return s:match('(.*)(.*)(.*)(.*)b') end)\n"
		"device.on('gmatch', function() for w in s:gmatch('.-.-.-.-b') do end end)\n"
		"device.on('gsub', function() return s:gsub('a-a-a-a-b', 'x') end)\n"
		"device.on('plain', function()\n"
		"  local big = string.rep('a', 400000)\n"
		"  return big:find(string.rep('a', 200000) .. 'b', 1, true)\n"
		"end)\n"
		"device.on('class', function()\n"
		"  local big = string.rep('a', 100000)\n"
		"  return big:find('[' .. string.rep('b', 100000) .. ']*c')\n"
		"end)\n"
		"device.on('pcall_loop', function()\n"
		"  for i = 1, 1e9 do pcall(string.find, s, '.-.-.-.-.-b') end\n"
		"end)\n"
		"device.on('coroutine', function()\n"
		"  local co = coroutine.wrap(function() return s:find('.-.-.-.-.-b') end)\n"
		"  pcall(co)\n"
		"end)\n"
		"device.on('gsub_fn', function()\n"
		"  s:gsub('a', function() return s:find('.-.-.-.-b') end)\n"
		"end)\n"
		"device.on('m', function() device.send('r', {('k=v'):match('(%w)=(%w)')}) end)\n",
		8 << 20, 0);
	for (const char *const *r = runaways; *r; r++) {
		forget();
		ck_assert_msg(agent_rt_message(a, *r, NULL) == AGENT_BUDGET, "%s was not stopped", *r);
		ck_assert_int_eq(F.nlogs, 1);
		char want[200];
		snprintf(want, sizeof want, "the '%s' handler stopped: pattern too complex: step budget exceeded "
			 "(over its budget of 10000000 instructions)", *r);
		ck_assert_msg(strcmp(F.log[0], want) == 0, "%s: %s", *r, F.log[0]);
		ck_assert_int_eq(F.log_err[0], 1);
		ck_sends(a, NULL, "r", "[\"k\",\"v\"]");
	}
	agent_rt_free(a);
}
END_TEST

/* Matcher steps and VM instructions share the one budget: a handler whose
 * loop alone fits runs out when its patterns add their steps. */
START_TEST(pattern_steps_share_the_budget)
{
	agent_rt *a = start_lim("local s = string.rep('a', 200)\n"
				"device.on('small', function() for i = 1, 10 do s:find('.-b') end end)\n"
				"device.on('many', function() for i = 1, 200 do s:find('.-.-b') end end)\n",
				0, 1000000);
	ck_assert_int_eq(agent_rt_message(a, "small", NULL), AGENT_OK);
	ck_assert_int_eq(agent_rt_message(a, "many", NULL), AGENT_BUDGET);
	ck_assert_log("the 'many' handler stopped: pattern too complex: step budget exceeded", 1);
	ck_assert_int_eq(agent_rt_message(a, "small", NULL), AGENT_OK);
	agent_rt_free(a);
}
END_TEST

/* --- main --------------------------------------------------------------------------- */

static TCase *tcase(const char *name)
{
	TCase *tc = tcase_create(name);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	return tc;
}

int main(void)
{
	Suite *su = suite_create("runtime");
	TCase *tc = tcase("device");
	tcase_add_test(tc, device_on_and_send);
	tcase_add_test(tc, device_message_without_handler_is_ignored);
	tcase_add_test(tc, device_on_replaces_the_handler);
	tcase_add_test(tc, device_send_refusals);
	tcase_add_test(tc, device_onconnect_ondisconnect_isconnected);
	suite_add_tcase(su, tc);

	tc = tcase("http");
	tcase_add_test(tc, http_request_fields);
	tcase_add_test(tc, http_res_header_and_send_string);
	tcase_add_test(tc, http_res_send_table_is_json);
	tcase_add_test(tc, http_without_answer_is_500);
	tcase_add_test(tc, http_without_handler_is_status_0);
	tcase_add_test(tc, http_handler_failures);
	tcase_add_test(tc, http_res_misuse);
	suite_add_tcase(su, tc);

	tc = tcase("server");
	tcase_add_test(tc, server_log_error_print);
	tcase_add_test(tc, server_save_and_load);
	tcase_add_test(tc, server_save_limits_and_failures);
	suite_add_tcase(su, tc);

	tc = tcase("timers");
	tcase_add_test(tc, timer_after_fires_once);
	tcase_add_test(tc, timer_every_repeats);
	tcase_add_test(tc, timer_cancel_and_handle_cancel);
	tcase_add_test(tc, timer_argument_refusals);
	tcase_add_test(tc, timer_at_most_10000);
	tcase_add_test(tc, timer_round_with_handlers_adding_and_cancelling);
	tcase_add_test(tc, timer_failures);
	tcase_add_test(tc, timer_export_and_rearm_by_id);
	suite_add_tcase(su, tc);

	tc = tcase("sandbox");
	tcase_add_test(tc, sandbox_absent);
	tcase_add_test(tc, sandbox_present);
	tcase_add_test(tc, sandbox_escape_attempts_fail);
	tcase_add_test(tc, sandbox_binary_chunks_refused);
	tcase_add_test(tc, sandbox_text_load_works);
	tcase_add_test(tc, sandbox_no_finalizers);
	tcase_add_test(tc, sandbox_string_library_at_first_use);
	suite_add_tcase(su, tc);

	tc = tcase("limits");
	tcase_add_test(tc, limit_budget_stops_a_loop_and_the_agent_goes_on);
	tcase_add_test(tc, limit_budget_default_is_10_million);
	tcase_add_test(tc, limit_cpu_time_stops_costly_instructions);
	tcase_add_test(tc, limit_budget_cannot_be_caught);
	tcase_add_test(tc, limit_budget_in_the_top_level);
	tcase_add_test(tc, limit_budget_counts_what_c_builds);
	tcase_add_test(tc, limit_out_of_memory);
	tcase_add_test(tc, limit_out_of_memory_outside_handlers);
	tcase_add_test(tc, limit_string_rep);
	tcase_add_test(tc, limit_table_loops);
	tcase_add_test(tc, limit_handler_error_has_a_traceback);
	tcase_add_test(tc, limit_memory_of_a_small_agent);
	tcase_add_test(tc, limit_thousand_agents);
	suite_add_tcase(su, tc);

	tc = tcase("memory");
	tcase_add_test(tc, memory_small_blocks_have_no_header);
	tcase_add_test(tc, memory_pages_are_reused_and_given_back);
	tcase_add_test(tc, memory_blocks_shared_by_threads);
	tcase_add_test(tc, memory_garbage_is_collected_early);
	suite_add_tcase(su, tc);

	tc = tcase("patterns");
	tcase_add_test(tc, pattern_behaves_as_lua_5_4);
	tcase_add_test(tc, pattern_runaway_is_stopped);
	tcase_add_test(tc, pattern_steps_share_the_budget);
	suite_add_tcase(su, tc);

	tc = tcase("json");
	tcase_add_test(tc, json_round_trips);
	tcase_add_test(tc, json_integers_and_floats);
	tcase_add_test(tc, json_refusals);
	tcase_add_test(tc, json_depth_of_incoming_data);
	suite_add_tcase(su, tc);

	tc = tcase("lifecycle");
	tcase_add_test(tc, check_reports_line_numbers);
	tcase_add_test(tc, new_refuses_code_that_does_not_compile);
	tcase_add_test(tc, new_with_a_top_level_error_still_starts);
	tcase_add_test(tc, new_with_default_limits);
	suite_add_tcase(su, tc);

	tc = tcase("examples");
	tcase_add_test(tc, example_echo);
	tcase_add_test(tc, example_counter);
	tcase_add_test(tc, example_heartbeat);
	suite_add_tcase(su, tc);

	SRunner *sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

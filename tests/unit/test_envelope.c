/* tests/unit/test_envelope.c -- the migration envelope (agents/envelope.c):
 * a round trip of everything it holds, and a decoder that refuses every
 * truncation, corrupt length, bad flag or kind and left-over byte with a
 * reason, and never allocates more than its input could describe. */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

static char *hdrs[] = { "content-type", "text/plain", "x-n", "7", NULL };
static char body[] = { 'a', '\0', 'b', '\xff' };
static char *frames[] = { "{\"type\":\"msg\",\"name\":\"a\",\"data\":1}", "{\"type\":\"msg\",\"name\":\"b\",\"data\":null}" };
static agent_env_timer timers[] = { { 1, 5000, 5000 }, { 7, -20, 0 }, { 9, 1, 60000 } };

/* An envelope with every field and every kind of event. */
static void full(agent_env *env, agent_env_event ev[9])
{
	memset(env, 0, sizeof *env);
	memset(ev, 0, 9 * sizeof *ev);
	env->device = 0x00000000000a0001ULL;
	env->agent_id = "ag_5kq0abc";
	env->group = "thermo";
	for (int i = 0; i < 32; i++)
		env->code_hash[i] = (uint8_t)(i * 7);
	env->state = "running";
	env->last_error = "agent.lua:3: boom";
	env->saved = "{\"setpoint\":21.5}";
	env->events = 12345;
	env->restarts = 2;
	env->backoff_ms = 4000;
	env->restart_in_ms = -1;
	env->started_ms = 1700000000000LL;
	env->connected = 1;
	env->conn = 99;
	env->queued = frames;
	env->nqueued = 2;
	env->timers = timers;
	env->ntimers = 3;
	env->next_timer_id = 10;
	ev[0] = (agent_env_event){ .kind = AGENT_ENV_ONLINE, .conn = 5 };
	ev[1] = (agent_env_event){ .kind = AGENT_ENV_MSG, .name = "reading", .data = "{\"celsius\":19.2}" };
	ev[2] = (agent_env_event){ .kind = AGENT_ENV_MSG, .name = "ping" };
	ev[3] = (agent_env_event){ .kind = AGENT_ENV_HTTP, .reply = 42, .method = "POST", .path = "/a/b",
				   .query = "x=1", .body = body, .body_len = sizeof body, .headers = hdrs,
				   .nheaders = 2 };
	ev[4] = (agent_env_event){ .kind = AGENT_ENV_RELOAD };
	ev[5] = (agent_env_event){ .kind = AGENT_ENV_RESTART };
	ev[6] = (agent_env_event){ .kind = AGENT_ENV_MIGRATE, .target = 3 };
	ev[7] = (agent_env_event){ .kind = AGENT_ENV_INFO, .reply = 43 };
	ev[8] = (agent_env_event){ .kind = AGENT_ENV_DELETE, .reply = 44 };
	env->ev = ev;
	env->nev = 9;
}

static uint8_t *encode(const agent_env *env, size_t *len)
{
	uint8_t *buf = NULL;
	tn_error err = { 0 };
	ck_assert_msg(agent_env_encode(env, &buf, len, &err) == 0, "encode: %s", err.msg);
	return buf;
}

/* Decoding buf must fail with a reason holding `why` (or any when NULL). */
static void ck_refused(const uint8_t *buf, size_t len, const char *why)
{
	agent_env env;
	tn_error err = { 0 };
	int rc = agent_env_decode(buf, len, &env, &err);
	ck_assert_msg(rc == TN_EINVAL, "accepted %zu bytes (want: %s)", len, why ? why : "any reason");
	ck_assert_msg(strncmp(err.msg, "migration envelope: ", 20) == 0, "no reason: '%s'", err.msg);
	if (why)
		ck_assert_msg(strstr(err.msg, why) != NULL, "'%s' does not say '%s'", err.msg, why);
	agent_env_clear(&env);
}

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

START_TEST(round_trip)
{
	agent_env in, out;
	agent_env_event ev[9];
	tn_error err = { 0 };
	size_t len, len2;
	full(&in, ev);
	uint8_t *buf = encode(&in, &len);
	ck_assert_mem_eq(buf, "TNAE\x01\x00\x00\x00", 8);
	ck_assert_int_eq(agent_env_decode(buf, len, &out, &err), 0);
	ck_assert_uint_eq(out.device, in.device);
	ck_assert_str_eq(out.agent_id, in.agent_id);
	ck_assert_str_eq(out.group, in.group);
	ck_assert_mem_eq(out.code_hash, in.code_hash, 32);
	ck_assert_str_eq(out.state, in.state);
	ck_assert_str_eq(out.last_error, in.last_error);
	ck_assert_str_eq(out.saved, in.saved);
	ck_assert_int_eq(out.events, 12345);
	ck_assert_int_eq(out.restarts, 2);
	ck_assert_int_eq(out.backoff_ms, 4000);
	ck_assert_int_eq(out.restart_in_ms, -1);
	ck_assert_int_eq(out.started_ms, 1700000000000LL);
	ck_assert_int_eq(out.connected, 1);
	ck_assert_uint_eq(out.conn, 99);
	ck_assert_uint_eq(out.nqueued, 2);
	ck_assert_str_eq(out.queued[0], frames[0]);
	ck_assert_str_eq(out.queued[1], frames[1]);
	ck_assert_uint_eq(out.ntimers, 3);
	ck_assert_uint_eq(out.next_timer_id, 10);
	for (int i = 0; i < 3; i++) {
		ck_assert_uint_eq(out.timers[i].id, timers[i].id);
		ck_assert_int_eq(out.timers[i].due_in_ms, timers[i].due_in_ms);
		ck_assert_int_eq(out.timers[i].every_ms, timers[i].every_ms);
	}
	ck_assert_uint_eq(out.nev, 9);
	for (int i = 0; i < 9; i++)
		ck_assert_int_eq(out.ev[i].kind, ev[i].kind);
	ck_assert_uint_eq(out.ev[0].conn, 5);
	ck_assert_str_eq(out.ev[1].name, "reading");
	ck_assert_str_eq(out.ev[1].data, "{\"celsius\":19.2}");
	ck_assert_ptr_null(out.ev[2].data);
	ck_assert_uint_eq(out.ev[3].reply, 42);
	ck_assert_str_eq(out.ev[3].method, "POST");
	ck_assert_str_eq(out.ev[3].path, "/a/b");
	ck_assert_str_eq(out.ev[3].query, "x=1");
	ck_assert_uint_eq(out.ev[3].body_len, sizeof body);
	ck_assert_mem_eq(out.ev[3].body, body, sizeof body);
	ck_assert_uint_eq(out.ev[3].nheaders, 2);
	for (int i = 0; i < 4; i++)
		ck_assert_str_eq(out.ev[3].headers[i], hdrs[i]);
	ck_assert_ptr_null(out.ev[3].headers[4]);
	ck_assert_int_eq(out.ev[6].target, 3);
	ck_assert_uint_eq(out.ev[7].reply, 43);
	ck_assert_uint_eq(out.ev[8].reply, 44);
	/* What decodes encodes back to the same bytes. */
	uint8_t *again = encode(&out, &len2);
	ck_assert_uint_eq(len2, len);
	ck_assert_mem_eq(again, buf, len);
	free(again);
	agent_env_clear(&out);
	free(buf);
}
END_TEST

START_TEST(round_trip_of_an_empty_agent)
{
	agent_env in = { .agent_id = "", .group = "", .state = "stopped", .last_error = "", .restart_in_ms = 1000 };
	agent_env out;
	tn_error err = { 0 };
	size_t len;
	uint8_t *buf = encode(&in, &len);
	ck_assert_int_eq(agent_env_decode(buf, len, &out, &err), 0);
	ck_assert_str_eq(out.state, "stopped");
	ck_assert_ptr_null(out.saved);
	ck_assert_int_eq(out.restart_in_ms, 1000);
	ck_assert_uint_eq(out.nqueued + out.ntimers + out.nev, 0);
	agent_env_clear(&out);
	free(buf);
}
END_TEST

/* Every prefix is refused: as it is (the body length no longer matches),
 * and with the body length made to match (a field is cut short). */
START_TEST(every_truncation_is_refused)
{
	agent_env in;
	agent_env_event ev[9];
	size_t len;
	full(&in, ev);
	uint8_t *buf = encode(&in, &len);
	for (size_t n = 0; n < len; n++) {
		uint8_t *cut = malloc(n ? n : 1); /* exactly n bytes: ASan sees a read past them */
		memcpy(cut, buf, n);
		ck_refused(cut, n, n < AGENT_ENV_HEADER ? "the header is cut short" : "does not match");
		if (n >= AGENT_ENV_HEADER) {
			put_u32(cut + 8, (uint32_t)(n - AGENT_ENV_HEADER));
			ck_refused(cut, n, NULL); /* cut short, or a count more than the bytes left */
		}
		free(cut);
	}
	free(buf);
}
END_TEST

/* A minimal envelope's layout, for pointed corruption. */
enum { OFF_DEVICE = 12, OFF_AGENT_ID = 20 };

START_TEST(corrupt_lengths_are_refused)
{
	agent_env in;
	agent_env_event ev[9];
	size_t len;
	full(&in, ev);
	uint8_t *buf = encode(&in, &len);
	uint8_t *bad = malloc(len);
	/* The agent id's length: past the limit, past the input, one short. */
	memcpy(bad, buf, len);
	put_u32(bad + OFF_AGENT_ID, 0xffffffffu);
	ck_refused(bad, len, "the agent id is longer than its limit");
	put_u32(bad + OFF_AGENT_ID, (uint32_t)len);
	ck_refused(bad, len, "the agent id is cut short");
	put_u32(bad + OFF_AGENT_ID, (uint32_t)strlen(in.agent_id) - 1);
	ck_refused(bad, len, NULL);
	/* Any four bytes set to a huge length anywhere: refused or, where they
	 * were not a length, decoded to something that encodes back the same. */
	for (size_t off = AGENT_ENV_HEADER; off + 4 <= len; off++) {
		for (int v = 0; v < 3; v++) {
			uint32_t val = v == 0 ? 0xffffffffu : v == 1 ? 0x7fffffffu : (uint32_t)(len - off);
			agent_env out;
			tn_error err = { 0 };
			memcpy(bad, buf, len);
			put_u32(bad + off, val);
			if (agent_env_decode(bad, len, &out, &err) == 0) {
				size_t len2;
				uint8_t *again = encode(&out, &len2);
				ck_assert_uint_eq(len2, len);
				ck_assert_mem_eq(again, bad, len);
				free(again);
			} else {
				ck_assert_msg(strstr(err.msg, " at byte ") != NULL, "%s", err.msg);
			}
			agent_env_clear(&out);
		}
	}
	free(bad);
	free(buf);
}
END_TEST

/* An envelope with nothing but its counts, where each count is refused
 * before anything is allocated for it. */
START_TEST(counts_past_the_input_are_refused)
{
	agent_env in = { .agent_id = "", .group = "", .state = "", .last_error = "", .restart_in_ms = -1 };
	size_t len;
	uint8_t *buf = encode(&in, &len);
	/* The tail: u32 nqueued, u32 next_timer_id, u32 ntimers, u32 nev. */
	size_t nq = len - 16, nt = len - 8, ne = len - 4;
	uint8_t *bad = malloc(len);
	memcpy(bad, buf, len);
	put_u32(bad + nq, AGENT_ENV_MAX_QUEUE + 1);
	ck_refused(bad, len, "the queued message count is over its limit");
	put_u32(bad + nq, 1000);
	ck_refused(bad, len, "the queued message count is more than the bytes left");
	memcpy(bad, buf, len);
	put_u32(bad + nt, AGENT_ENV_MAX_TIMERS + 1);
	ck_refused(bad, len, "the timer count is over its limit");
	put_u32(bad + nt, 1);
	ck_refused(bad, len, "the timer count is more than the bytes left");
	memcpy(bad, buf, len);
	put_u32(bad + ne, AGENT_ENV_MAX_EVENTS + 1);
	ck_refused(bad, len, "the event count is over its limit");
	put_u32(bad + ne, 1);
	ck_refused(bad, len, "the event count is more than the bytes left");
	free(bad);
	free(buf);
}
END_TEST

START_TEST(malformed_envelopes_are_refused)
{
	agent_env in;
	agent_env_event ev[9];
	size_t len;
	full(&in, ev);
	uint8_t *buf = encode(&in, &len);
	uint8_t *bad = malloc(len + 1);
#define CORRUPT(off, byte, why) \
	do { \
		memcpy(bad, buf, len); \
		bad[off] = (uint8_t)(byte); \
		ck_refused(bad, len, why); \
	} while (0)
	CORRUPT(0, 'X', "the magic is not TNAE");
	CORRUPT(4, 2, "the version is not 1");
	CORRUPT(5, 1, "the version is not 1");
	CORRUPT(6, 1, "the flags are not 0");
	CORRUPT(8, bad[8] + 1, "does not match");
	/* A NUL inside the agent id. */
	CORRUPT(OFF_AGENT_ID + 4 + 2, 0, "the agent id holds a NUL byte");
	free(bad);
	free(buf);

	/* A bad flag byte, a bad kind, a negative counter, a bad timer id. */
	agent_env small = { .agent_id = "", .group = "", .state = "", .last_error = "", .restart_in_ms = -1 };
	agent_env_event one = { .kind = AGENT_ENV_RELOAD };
	small.ev = &one;
	small.nev = 1;
	buf = encode(&small, &len);
	bad = malloc(len + 1);
	size_t off_saved = OFF_AGENT_ID + 4 + 4 + 32 + 4 + 4; /* after the empty texts and the hash */
	CORRUPT(off_saved, 2, "the saved state is neither 0 nor 1");
	CORRUPT(len - 1, AGENT_ENV_KINDS, "an event's kind is unknown");
	CORRUPT(len - 1, 0, "an event's kind is unknown");
	CORRUPT(off_saved + 1 + 7, 0x80, "the event count is out of range"); /* events < 0 */
	/* A byte left over, with the body length made to cover it. */
	memcpy(bad, buf, len);
	bad[len] = 0;
	put_u32(bad + 8, (uint32_t)(len + 1 - AGENT_ENV_HEADER));
	ck_refused(bad, len + 1, "has bytes left over");
	free(bad);
	free(buf);

	agent_env_timer t0 = { 0, 1, 1 };
	agent_env tim = { .agent_id = "", .group = "", .state = "", .last_error = "", .restart_in_ms = -1,
			  .timers = &t0, .ntimers = 1 };
	buf = encode(&tim, &len);
	ck_refused(buf, len, "a timer's id is out of range");
	free(buf);
#undef CORRUPT
}
END_TEST

START_TEST(encoding_past_the_limits_is_refused)
{
	agent_env in;
	agent_env_event ev[9];
	uint8_t *buf = NULL;
	size_t len = 0;
	tn_error err = { 0 };
	full(&in, ev);
	ev[3].nheaders = AGENT_ENV_MAX_HEADERS + 1;
	ck_assert_int_eq(agent_env_encode(&in, &buf, &len, &err), TN_ETOOBIG);
	ck_assert_ptr_null(buf);
	full(&in, ev);
	char *longname = malloc(AGENT_ENV_MAX_NAME + 2);
	memset(longname, 'n', AGENT_ENV_MAX_NAME + 1);
	longname[AGENT_ENV_MAX_NAME + 1] = '\0';
	in.group = longname;
	ck_assert_int_eq(agent_env_encode(&in, &buf, &len, &err), TN_ETOOBIG);
	ck_assert_str_eq(err.msg, "the envelope would be over its limits");
	free(longname);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("envelope");
	TCase *tc = tcase_create("envelope");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, round_trip);
	tcase_add_test(tc, round_trip_of_an_empty_agent);
	tcase_add_test(tc, every_truncation_is_refused);
	tcase_add_test(tc, corrupt_lengths_are_refused);
	tcase_add_test(tc, counts_past_the_input_are_refused);
	tcase_add_test(tc, malformed_envelopes_are_refused);
	tcase_add_test(tc, encoding_past_the_limits_is_refused);
	suite_add_tcase(su, tc);
	SRunner *sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

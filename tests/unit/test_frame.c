/* tests/unit/test_frame.c -- the device frame parser (server/frame.c) against
 * docs/protocol.md: every frame type with its fields, every refusal with its
 * error kind, the nesting cap, and frame_release on what a failure leaves;
 * then the scanner for log and msg frames: what it takes (with the same
 * frame as jansson gives), what it leaves to jansson, and its limits. */
#define _GNU_SOURCE /* asprintf */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

/* A sentinel that frame_parse never sets, so we see that it set *kind. */
#define KIND_UNSET ERR__COUNT

static int parse(const char *json, frame *f, metrics_error_kind *kind, tn_error *err)
{
	*kind = KIND_UNSET;
	memset(err, 0, sizeof *err);
	return frame_parse(json, strlen(json), f, kind, err);
}

/* A string of n copies of c (owned: caller frees). */
static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);
	ck_assert_ptr_nonnull(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* --- frames that parse ------------------------------------------------------ */

START_TEST(hello_full)
{
	frame f;
	metrics_error_kind kind;
	tn_error err;
	const char *js = "{\"type\":\"hello\",\"id\":\"30000C2A690C77C5\",\"secret\":\"tds_abc\","
			 "\"hw\":\"imp003\",\"fw\":\"36.10\",\"flash\":{\"jedec\":\"01201f\","
			 "\"size\":16777216,\"sfdp\":\"U0ZEUA==\"},\"extra\":[1]}";

	ck_assert_int_eq(parse(js, &f, &kind, &err), 0);
	ck_assert_int_eq(kind, KIND_UNSET);
	ck_assert_int_eq(f.type, FRAME_HELLO);
	ck_assert_ptr_nonnull(f.root);
	/* Upper-case hex accepted (protocol: case-insensitive). */
	ck_assert_uint_eq(f.u.hello.id, UINT64_C(0x30000c2a690c77c5));
	ck_assert_str_eq(f.u.hello.secret, "tds_abc");
	ck_assert_str_eq(f.u.hello.hw, "imp003");
	ck_assert_str_eq(f.u.hello.fw, "36.10");
	ck_assert_int_eq(f.u.hello.has_flash, 1);
	ck_assert_int_eq(f.u.hello.has_jedec, 1);
	ck_assert_uint_eq(f.u.hello.jedec, 0x01201f);
	ck_assert_int_eq(f.u.hello.flash_size, 16777216);
	ck_assert_str_eq(f.u.hello.sfdp, "U0ZEUA==");
	frame_release(&f);
	ck_assert_ptr_null(f.root);
}
END_TEST

START_TEST(hello_minimal)
{
	frame f;
	metrics_error_kind kind;
	tn_error err;

	ck_assert_int_eq(parse("{\"type\":\"hello\",\"id\":\"0000000000000001\",\"secret\":\"s\"}",
			       &f, &kind, &err), 0);
	ck_assert_uint_eq(f.u.hello.id, 1);
	ck_assert_ptr_null(f.u.hello.hw);
	ck_assert_ptr_null(f.u.hello.fw);
	ck_assert_int_eq(f.u.hello.has_flash, 0);
	ck_assert_int_eq(f.u.hello.has_jedec, 0);
	ck_assert_int_eq(f.u.hello.flash_size, 0);
	ck_assert_ptr_null(f.u.hello.sfdp);
	frame_release(&f);

	/* null members count as absent; an empty flash object is a flash without facts */
	ck_assert_int_eq(parse("{\"type\":\"hello\",\"id\":\"ffffffffffffffff\",\"secret\":\"s\","
			       "\"hw\":null,\"flash\":null}", &f, &kind, &err), 0);
	ck_assert_uint_eq(f.u.hello.id, UINT64_MAX);
	ck_assert_ptr_null(f.u.hello.hw);
	ck_assert_int_eq(f.u.hello.has_flash, 0);
	frame_release(&f);
	ck_assert_int_eq(parse("{\"type\":\"hello\",\"id\":\"ffffffffffffffff\",\"secret\":\"s\","
			       "\"flash\":{}}", &f, &kind, &err), 0);
	ck_assert_int_eq(f.u.hello.has_flash, 1);
	ck_assert_int_eq(f.u.hello.has_jedec, 0);
	ck_assert_uint_eq(f.u.hello.jedec, 0);
	frame_release(&f);
}
END_TEST

START_TEST(log_frames)
{
	frame f;
	metrics_error_kind kind;
	tn_error err;

	ck_assert_int_eq(parse("{\"type\":\"log\",\"msg\":\"hello\\nworld\"}", &f, &kind, &err), 0);
	ck_assert_int_eq(f.type, FRAME_LOG);
	ck_assert_int_eq(f.u.log.is_error, 0); /* level defaults to info */
	ck_assert_str_eq(f.u.log.msg, "hello\nworld"); /* msg need not be printable */
	frame_release(&f);

	ck_assert_int_eq(parse("{\"type\":\"log\",\"level\":\"error\",\"msg\":\"boom\"}", &f, &kind, &err), 0);
	ck_assert_int_eq(f.u.log.is_error, 1);
	ck_assert_str_eq(f.u.log.msg, "boom");
	frame_release(&f);

	ck_assert_int_eq(parse("{\"type\":\"log\",\"level\":\"info\",\"msg\":\"\"}", &f, &kind, &err), 0);
	ck_assert_int_eq(f.u.log.is_error, 0);
	ck_assert_str_eq(f.u.log.msg, "");
	frame_release(&f);

	/* exactly FRAME_MAX_LOG_MSG bytes is allowed */
	char *big = repeat('m', FRAME_MAX_LOG_MSG), *js = NULL;
	ck_assert_int_ge(asprintf(&js, "{\"type\":\"log\",\"msg\":\"%s\"}", big), 0);
	ck_assert_int_eq(parse(js, &f, &kind, &err), 0);
	ck_assert_uint_eq(strlen(f.u.log.msg), FRAME_MAX_LOG_MSG);
	frame_release(&f);
	free(js);
	free(big);
}
END_TEST

START_TEST(msg_frames)
{
	frame f;
	metrics_error_kind kind;
	tn_error err;

	ck_assert_int_eq(parse("{\"type\":\"msg\",\"name\":\"temp\",\"data\":{\"c\":21.5}}", &f, &kind, &err), 0);
	ck_assert_int_eq(f.type, FRAME_MSG);
	ck_assert_str_eq(f.u.msg.name, "temp");
	ck_assert_str_eq(f.u.msg.data_json, "{\"c\":21.5}");
	frame_release(&f);

	ck_assert_int_eq(parse("{\"type\":\"msg\",\"name\":\"ping\"}", &f, &kind, &err), 0);
	ck_assert_ptr_null(f.u.msg.data_json);
	frame_release(&f);

	/* data is handed on as compact JSON text, as json_dumps writes it */
	ck_assert_int_eq(parse("{\"type\":\"msg\",\"name\":\"n\",\"data\": [ 1 , \"x\" ] }", &f, &kind, &err), 0);
	ck_assert_str_eq(f.u.msg.data_json, "[1,\"x\"]");
	frame_release(&f);
	ck_assert_int_eq(parse("{\"type\":\"msg\",\"name\":\"n\",\"data\":null}", &f, &kind, &err), 0);
	ck_assert_str_eq(f.u.msg.data_json, "null");
	frame_release(&f);
}
END_TEST

START_TEST(update_status_frames)
{
	frame f;
	metrics_error_kind kind;
	tn_error err;

	ck_assert_int_eq(parse("{\"type\":\"update_status\",\"id\":\"u1\",\"state\":\"downloading\"}",
			       &f, &kind, &err), 0);
	ck_assert_int_eq(f.type, FRAME_UPDATE_STATUS);
	ck_assert_str_eq(f.u.update_status.id, "u1");
	ck_assert_str_eq(f.u.update_status.state, "downloading");
	ck_assert_ptr_null(f.u.update_status.error);
	ck_assert_int_eq(f.u.update_status.offset, -1);
	frame_release(&f);

	ck_assert_int_eq(parse("{\"type\":\"update_status\",\"id\":\"u2\",\"state\":\"failed\","
			       "\"offset\":4096,\"error\":\"sha256 mismatch\"}", &f, &kind, &err), 0);
	ck_assert_str_eq(f.u.update_status.state, "failed");
	ck_assert_str_eq(f.u.update_status.error, "sha256 mismatch");
	ck_assert_int_eq(f.u.update_status.offset, 4096);
	frame_release(&f);

	const char *states[] = { "downloaded", "installing" };
	for (size_t i = 0; i < 2; i++) {
		char js[128];
		snprintf(js, sizeof js, "{\"type\":\"update_status\",\"id\":\"u\",\"state\":\"%s\"}", states[i]);
		ck_assert_int_eq(parse(js, &f, &kind, &err), 0);
		ck_assert_str_eq(f.u.update_status.state, states[i]);
		frame_release(&f);
	}
}
END_TEST

START_TEST(fetch_frames)
{
	frame f;
	metrics_error_kind kind;
	tn_error err;

	ck_assert_int_eq(parse("{\"type\":\"fetch\",\"id\":\"u1\",\"offset\":0,\"length\":1048576}",
			       &f, &kind, &err), 0);
	ck_assert_int_eq(f.type, FRAME_FETCH);
	ck_assert_str_eq(f.u.fetch.id, "u1");
	ck_assert_int_eq(f.u.fetch.offset, 0);
	ck_assert_int_eq(f.u.fetch.length, 1048576);
	frame_release(&f);
}
END_TEST

START_TEST(type_names)
{
	ck_assert_str_eq(frame_type_name(FRAME_HELLO), "hello");
	ck_assert_str_eq(frame_type_name(FRAME_LOG), "log");
	ck_assert_str_eq(frame_type_name(FRAME_MSG), "msg");
	ck_assert_str_eq(frame_type_name(FRAME_UPDATE_STATUS), "update_status");
	ck_assert_str_eq(frame_type_name(FRAME_FETCH), "fetch");
}
END_TEST

/* --- refusals --------------------------------------------------------------- */

#define HELLO "{\"type\":\"hello\",\"id\":\"30000c2a690c77c5\",\"secret\":\"s\""
#define S64 "0123456789012345678901234567890123456789012345678901234567890123"

static const struct bad {
	const char *json;
	metrics_error_kind kind;
	const char *msg; /* a substring of err.msg */
} bad_frames[] = {
	{ "", ERR_BAD_JSON, "invalid JSON at line 1" },
	{ "{\"type\":\"log\",", ERR_BAD_JSON, "invalid JSON at line 1" },
	{ "{\"type\":\"log\"} x", ERR_BAD_JSON, "invalid JSON" },
	{ "\"log\"", ERR_BAD_JSON, "invalid JSON" },
	{ "[{\"type\":\"log\",\"msg\":\"x\"}]", ERR_BAD_JSON, "must be a JSON object" },
	{ "{}", ERR_BAD_FRAME, "'type' is required" },
	{ "{\"type\":7}", ERR_BAD_FRAME, "'type' must be a string" },
	{ "{\"type\":\"welcome\"}", ERR_UNKNOWN_TYPE, "unknown frame type 'welcome'" },
	{ "{\"type\":\"HELLO\"}", ERR_UNKNOWN_TYPE, "unknown frame type 'HELLO'" },
	{ "{\"type\":\"log\",\"msg\":\"a\",\"msg\":\"b\"}", ERR_BAD_JSON, "duplicate" },
	/* hello */
	{ "{\"type\":\"hello\",\"secret\":\"s\"}", ERR_BAD_FRAME, "'id' is required" },
	{ "{\"type\":\"hello\",\"id\":12,\"secret\":\"s\"}", ERR_BAD_FRAME, "'id' must be a string" },
	{ "{\"type\":\"hello\",\"id\":\"30000c2a690c77c\",\"secret\":\"s\"}", ERR_BAD_FRAME,
	  "'id' must be 16 hex digits" },
	{ "{\"type\":\"hello\",\"id\":\"30000c2a690c77cg\",\"secret\":\"s\"}", ERR_BAD_FRAME,
	  "'id' must be 16 hex digits" },
	{ "{\"type\":\"hello\",\"id\":\"30000c2a690c77c5a\",\"secret\":\"s\"}", ERR_BAD_FRAME, "'id'" },
	{ "{\"type\":\"hello\",\"id\":\"\",\"secret\":\"s\"}", ERR_BAD_FRAME, "'id' must be 16 hex digits" },
	{ "{\"type\":\"hello\",\"id\":\"30000c2a690c77c5\"}", ERR_BAD_FRAME, "'secret' is required" },
	{ "{\"type\":\"hello\",\"id\":\"30000c2a690c77c5\",\"secret\":[]}", ERR_BAD_FRAME,
	  "'secret' must be a string" },
	{ "{\"type\":\"hello\",\"id\":\"30000c2a690c77c5\",\"secret\":\"" S64 S64 "x\"}", ERR_BAD_FRAME,
	  "'secret' is longer than 128 bytes" },
	{ HELLO ",\"hw\":\"" S64 "x\"}", ERR_BAD_FRAME, "'hw' is longer than 64 bytes" },
	{ HELLO ",\"fw\":\"" S64 "x\"}", ERR_BAD_FRAME, "'fw' is longer than 64 bytes" },
	{ HELLO ",\"hw\":5}", ERR_BAD_FRAME, "'hw' must be a string" },
	{ HELLO ",\"hw\":\"imp\\u0007\"}", ERR_BAD_FRAME, "'hw' must be printable ASCII" },
	{ HELLO ",\"hw\":\"imp\\t3\"}", ERR_BAD_FRAME, "'hw' must be printable ASCII" },
	{ HELLO ",\"fw\":\"caf\\u00e9\"}", ERR_BAD_FRAME, "'fw' must be printable ASCII" },
	{ HELLO ",\"flash\":\"012018\"}", ERR_BAD_FRAME, "'flash' must be an object" },
	{ HELLO ",\"flash\":[]}", ERR_BAD_FRAME, "'flash' must be an object" },
	{ HELLO ",\"flash\":{\"jedec\":\"01201\"}}", ERR_BAD_FRAME, "'flash.jedec' must be 6 hex digits" },
	{ HELLO ",\"flash\":{\"jedec\":\"01201g\"}}", ERR_BAD_FRAME, "'flash.jedec' must be 6 hex digits" },
	{ HELLO ",\"flash\":{\"jedec\":\"0120180\"}}", ERR_BAD_FRAME, "jedec" },
	{ HELLO ",\"flash\":{\"jedec\":73752}}", ERR_BAD_FRAME, "'jedec' must be a string" },
	{ HELLO ",\"flash\":{\"size\":0}}", ERR_BAD_FRAME, "'size' must be an integer" },
	{ HELLO ",\"flash\":{\"size\":-1}}", ERR_BAD_FRAME, "'size' must be an integer" },
	{ HELLO ",\"flash\":{\"size\":\"16\"}}", ERR_BAD_FRAME, "'size' must be an integer" },
	{ HELLO ",\"flash\":{\"size\":1.5}}", ERR_BAD_FRAME, "'size' must be an integer" },
	{ HELLO ",\"flash\":{\"sfdp\":7}}", ERR_BAD_FRAME, "'sfdp' must be a string" },
	/* log */
	{ "{\"type\":\"log\"}", ERR_BAD_FRAME, "'msg' is required" },
	{ "{\"type\":\"log\",\"msg\":1}", ERR_BAD_FRAME, "'msg' must be a string" },
	{ "{\"type\":\"log\",\"level\":\"warn\",\"msg\":\"x\"}", ERR_BAD_FRAME, "'level' must be" },
	{ "{\"type\":\"log\",\"level\":2,\"msg\":\"x\"}", ERR_BAD_FRAME, "'level' must be a string" },
	/* a NUL inside a string is refused (jansson's own check, without JSON_ALLOW_NUL) */
	{ "{\"type\":\"log\",\"msg\":\"a\\u0000b\"}", ERR_BAD_JSON, "invalid JSON" },
	/* msg */
	{ "{\"type\":\"msg\"}", ERR_BAD_FRAME, "'name' is required" },
	{ "{\"type\":\"msg\",\"name\":\"\"}", ERR_BAD_FRAME, "'name' must not be empty" },
	{ "{\"type\":\"msg\",\"name\":{}}", ERR_BAD_FRAME, "'name' must be a string" },
	{ "{\"type\":\"msg\",\"name\":\"" S64 S64 "x\"}", ERR_BAD_FRAME, "'name' is longer than 128 bytes" },
	/* update_status */
	{ "{\"type\":\"update_status\",\"state\":\"failed\"}", ERR_BAD_FRAME, "'id' is required" },
	{ "{\"type\":\"update_status\",\"id\":\"u\"}", ERR_BAD_FRAME, "'state' is required" },
	{ "{\"type\":\"update_status\",\"id\":\"u\",\"state\":\"done\"}", ERR_BAD_FRAME,
	  "'state' must be downloading, downloaded, installing or failed, not 'done'" },
	{ "{\"type\":\"update_status\",\"id\":\"u\",\"state\":\"failed\",\"offset\":-1}", ERR_BAD_FRAME,
	  "'offset' must be an integer" },
	{ "{\"type\":\"update_status\",\"id\":\"u\",\"state\":\"failed\",\"error\":false}", ERR_BAD_FRAME,
	  "'error' must be a string" },
	/* fetch */
	{ "{\"type\":\"fetch\",\"offset\":0,\"length\":1}", ERR_BAD_FRAME, "'id' is required" },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"length\":1}", ERR_BAD_FRAME, "'offset' is required" },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":0}", ERR_BAD_FRAME, "'length' is required" },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":0,\"length\":0}", ERR_BAD_FRAME, "'length' must be" },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":0,\"length\":1048577}", ERR_BAD_FRAME, "'length' must be" },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":\"0\",\"length\":1}", ERR_BAD_FRAME, "'offset' must be" },
};

/* One loop iteration per row, so a failure names the row (_i). */
START_TEST(refused)
{
	const struct bad *b = &bad_frames[_i];
	frame f;
	metrics_error_kind kind;
	tn_error err;

	ck_assert_msg(parse(b->json, &f, &kind, &err) == TN_EINVAL, "accepted: %s", b->json);
	ck_assert_msg(kind == b->kind, "kind %d, want %d for %s (%s)", kind, b->kind, b->json, err.msg);
	ck_assert_int_eq(err.code, TN_EINVAL);
	ck_assert_msg(strstr(err.msg, b->msg), "message '%s' lacks '%s'", err.msg, b->msg);
	ck_assert_ptr_null(f.root); /* left empty */
	frame_release(&f);          /* and releasing it is still safe */
}
END_TEST

START_TEST(bad_json_line_column)
{
	frame f;
	metrics_error_kind kind;
	tn_error err;

	/* The x is on line 3, column 10. */
	ck_assert_int_eq(parse("{\n  \"type\": \"log\",\n  \"msg\": x\n}", &f, &kind, &err), TN_EINVAL);
	ck_assert_int_eq(kind, ERR_BAD_JSON);
	ck_assert_msg(strstr(err.msg, "line 3, column 10"), "%s", err.msg);
	frame_release(&f);
}
END_TEST

START_TEST(raw_nul_byte)
{
	static const char js[] = "{\"type\":\"log\",\"msg\":\"a\0b\"}";
	frame f;
	metrics_error_kind kind = KIND_UNSET;
	tn_error err = { 0 };

	/* The length includes the NUL: the parser must not stop at it. */
	ck_assert_int_eq(frame_parse(js, sizeof js - 1, &f, &kind, &err), TN_EINVAL);
	ck_assert_int_eq(kind, ERR_BAD_JSON);
	ck_assert_ptr_null(f.root);
	frame_release(&f);
}
END_TEST

/* {"type":"msg","name":"n","data": then `arrays` nested arrays */
static char *nested(int arrays)
{
	char *s = NULL;
	char *open = repeat('[', (size_t)arrays), *close = repeat(']', (size_t)arrays);
	ck_assert_int_ge(asprintf(&s, "{\"type\":\"msg\",\"name\":\"n\",\"data\":%s%s}", open, close), 0);
	free(open);
	free(close);
	return s;
}

START_TEST(nesting_limit)
{
	frame f;
	metrics_error_kind kind;
	tn_error err;

	/* The frame object is level 1: 31 arrays inside make 32 levels. */
	char *ok = nested(FRAME_MAX_DEPTH - 1), *deep = nested(FRAME_MAX_DEPTH);
	ck_assert_int_eq(parse(ok, &f, &kind, &err), 0);
	ck_assert_int_eq(f.type, FRAME_MSG);
	frame_release(&f);
	ck_assert_int_eq(parse(deep, &f, &kind, &err), TN_EINVAL);
	ck_assert_int_eq(kind, ERR_BAD_JSON);
	ck_assert_msg(strstr(err.msg, "nested deeper than 32"), "%s", err.msg);
	ck_assert_ptr_null(f.root);
	frame_release(&f);
	free(ok);
	free(deep);

	/* Brackets inside strings, also after escaped quotes and backslashes, do not count. */
	char *br = repeat('[', 100), *cu = repeat('{', 100), *js = NULL;
	ck_assert_int_ge(asprintf(&js, "{\"type\":\"msg\",\"name\":\"\\\"%s\",\"data\":\"\\\\%s\"}",
				  br, cu), 0);
	ck_assert_int_eq(parse(js, &f, &kind, &err), 0);
	ck_assert_uint_eq(strlen(f.u.msg.name), 101);
	frame_release(&f);
	free(js);
	free(br);
	free(cu);
}
END_TEST

START_TEST(nesting_depth_function)
{
	const char *s;

	s = "[]";
	ck_assert_int_eq(frame_nesting_depth(s, strlen(s), 32), 1);
	s = "{\"a\":[{}],\"b\":[[[]]]}";
	ck_assert_int_eq(frame_nesting_depth(s, strlen(s), 32), 4);
	s = "{\"a\":\"[[[{{{\"}";
	ck_assert_int_eq(frame_nesting_depth(s, strlen(s), 32), 1);
	s = "[\"\\\"[[\",\"\\\\\",[]]"; /* ["\"[[","\\",[]] */
	ck_assert_int_eq(frame_nesting_depth(s, strlen(s), 32), 2);
	s = "42";
	ck_assert_int_eq(frame_nesting_depth(s, strlen(s), 32), 0);
	/* Stops once over the limit: reports limit + 1, not the full depth. */
	char *deep = repeat('[', 1000);
	ck_assert_int_eq(frame_nesting_depth(deep, 1000, 5), 6);
	/* Only len bytes are looked at. */
	ck_assert_int_eq(frame_nesting_depth(deep, 3, 32), 3);
	free(deep);
}
END_TEST

START_TEST(release_safe)
{
	frame f;

	memset(&f, 0, sizeof f);
	frame_release(&f);
	frame_release(NULL);
	metrics_error_kind kind;
	tn_error err;
	ck_assert_int_eq(parse("{\"type\":\"log\",\"msg\":\"x\"}", &f, &kind, &err), 0);
	frame_release(&f);
	frame_release(&f); /* released frames are zeroed: a second release is a no-op */
	ck_assert_ptr_null(f.root);
}
END_TEST

/* --- the fast path ---------------------------------------------------------- */

static void same_str(const char *a, const char *b, const char *what, const char *js)
{
	ck_assert_msg((a == NULL) == (b == NULL) && (!a || strcmp(a, b) == 0),
		      "%s: '%s' against '%s' for %s", what, a ? a : "(null)", b ? b : "(null)", js);
}

/* Parses js with the scanner, with jansson alone and with frame_parse; checks
 * that frame_parse answers as jansson does (error kind and message included)
 * and that what the scanner takes, jansson takes the same.  Returns whether
 * the scanner took it; *out keeps frame_parse's frame (caller releases). */
static int fast_checked(const char *js, size_t len, frame *out, int *rc)
{
	frame fast, slow;
	metrics_error_kind ks = KIND_UNSET, kb = KIND_UNSET;
	tn_error es = { 0 }, eb = { 0 };

	int took = frame_parse_fast(js, len, &fast);
	int rs = frame_parse_json(js, len, &slow, &ks, &es);
	*rc = frame_parse(js, len, out, &kb, &eb);
	ck_assert_int_eq(*rc, rs);
	ck_assert_int_eq(kb, ks);
	ck_assert_str_eq(eb.msg, es.msg);
	if (!took) {
		ck_assert_ptr_null(fast.text); /* left empty */
		ck_assert_ptr_null(fast.u.msg.name);
	} else {
		ck_assert_msg(rs == 0, "the scanner took what jansson refuses (%s): %s", es.msg, js);
		ck_assert_ptr_null(fast.root);
		ck_assert_int_eq(fast.type, slow.type);
		ck_assert_int_eq(out->type, slow.type);
		if (fast.type == FRAME_LOG) {
			ck_assert_int_eq(fast.u.log.is_error, slow.u.log.is_error);
			same_str(fast.u.log.msg, slow.u.log.msg, "msg", js);
			same_str(out->u.log.msg, slow.u.log.msg, "msg", js);
		} else if (fast.type == FRAME_FETCH) {
			same_str(fast.u.fetch.id, slow.u.fetch.id, "id", js);
			ck_assert_int_eq(fast.u.fetch.offset, slow.u.fetch.offset);
			ck_assert_int_eq(fast.u.fetch.length, slow.u.fetch.length);
			ck_assert_int_eq(out->u.fetch.offset, slow.u.fetch.offset);
		} else {
			same_str(fast.u.msg.name, slow.u.msg.name, "name", js);
			same_str(fast.u.msg.data_json, slow.u.msg.data_json, "data", js);
			same_str(out->u.msg.data_json, slow.u.msg.data_json, "data", js);
		}
	}
	frame_release(&fast);
	frame_release(&slow);
	return took;
}

static const struct hot {
	const char *json;
	frame_type type;
	int is_error;
	const char *text; /* log: msg; msg: name */
	const char *data; /* msg: data_json */
} hot_frames[] = {
	/* what tender-sim sends (bench/events_persisted.sh, bench/round_trip.sh) */
	{ "{\"type\":\"log\",\"level\":\"info\",\"msg\":\"hello from sim 12345\"}", FRAME_LOG, 0,
	  "hello from sim 12345", NULL },
	{ "{\"type\":\"msg\",\"name\":\"echo\",\"data\":{\"seq\":123456}}", FRAME_MSG, 0, "echo",
	  "{\"seq\":123456}" },
	/* keys in any order, level absent, null or error, whitespace anywhere JSON allows it */
	{ "{\"msg\":\"m\",\"level\":\"error\",\"type\":\"log\"}", FRAME_LOG, 1, "m", NULL },
	{ "{\"type\":\"log\",\"msg\":\"m\"}", FRAME_LOG, 0, "m", NULL },
	{ "{\"type\":\"log\",\"level\":null,\"msg\":\"m\"}", FRAME_LOG, 0, "m", NULL },
	{ " \r\n\t{ \"type\" :\"log\" ,\n\"msg\"\t: \"m\" } \n", FRAME_LOG, 0, "m", NULL },
	{ "{\"data\":1,\"name\":\"n\",\"type\":\"msg\"}", FRAME_MSG, 0, "n", "1" },
	{ "{\"type\":\"msg\",\"name\":\"n\"}", FRAME_MSG, 0, "n", NULL },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":null}", FRAME_MSG, 0, "n", "null" },
	/* every escape, unescaped; UTF-8 raw and from \u, surrogate pairs */
	{ "{\"type\":\"log\",\"msg\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"}", FRAME_LOG, 0, "\"\\/\b\f\n\r\t", NULL },
	{ "{\"type\":\"log\",\"msg\":\"caf\\u00e9 \\u20AC \\ud83d\\ude00 caf\xc3\xa9\"}", FRAME_LOG, 0,
	  "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 caf\xc3\xa9", NULL },
	{ "{\"type\":\"log\",\"msg\":\"\\u0001\\u001f\\u007f\x7f\"}", FRAME_LOG, 0, "\x01\x1f\x7f\x7f", NULL },
	{ "{\"type\":\"\\u006cog\",\"msg\":\"m\"}", FRAME_LOG, 0, "m", NULL }, /* an escaped value is fine */
	{ "{\"type\":\"msg\",\"name\":\"\xc3\xbc\",\"data\":\"x\"}", FRAME_MSG, 0, "\xc3\xbc", "\"x\"" },
	/* data as json_dumps writes it: compact, its escapes, its numbers */
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\": { \"a\" : [ 1 , { } , [ ] ] , \"b\" : true , \"c\":false } }",
	  FRAME_MSG, 0, "n", "{\"a\":[1,{},[]],\"b\":true,\"c\":false}" },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":\"\\u0041\\/\\u001f\\u00e9\\n\\\"\\\\\\u2028\"}", FRAME_MSG, 0,
	  "n", "\"A/\\u001F\xc3\xa9\\n\\\"\\\\\xe2\x80\xa8\"" },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":[0,-0,-1,-5,10,1000000000000000000,9223372036854775807,"
	  "-9223372036854775808,-9223372036854775807]}", FRAME_MSG, 0, "n",
	  "[0,0,-1,-5,10,1000000000000000000,9223372036854775807,-9223372036854775808,-9223372036854775807]" },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":[21.5,23.7,0.1,1.0,1e2,1E+2,2.5e-5,-0.0,1e-400,1e17]}",
	  FRAME_MSG, 0, "n",
	  "[21.5,23.699999999999999,0.10000000000000001,1.0,100.0,100.0,2.5000000000000001e-5,-0.0,0.0,1e17]" },
	/* the same key in sibling or nested objects is no duplicate */
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":[{\"a\":1},{\"a\":{\"a\":2}}]}", FRAME_MSG, 0, "n",
	  "[{\"a\":1},{\"a\":{\"a\":2}}]" },
};

START_TEST(fast_takes_hot_frames)
{
	const struct hot *h = &hot_frames[_i];
	frame f;
	int rc;

	ck_assert_msg(fast_checked(h->json, strlen(h->json), &f, &rc), "not taken: %s", h->json);
	ck_assert_int_eq(rc, 0);
	ck_assert_int_eq(f.type, h->type);
	ck_assert_ptr_null(f.root);
	ck_assert_ptr_nonnull(f.text);
	if (h->type == FRAME_LOG) {
		ck_assert_int_eq(f.u.log.is_error, h->is_error);
		ck_assert_str_eq(f.u.log.msg, h->text);
	} else {
		ck_assert_str_eq(f.u.msg.name, h->text);
		same_str(f.u.msg.data_json, h->data, "data", h->json);
	}
	frame_release(&f);
	ck_assert_ptr_null(f.text);
}
END_TEST

/* Frames the scanner leaves to jansson: some jansson takes, some it refuses;
 * either way frame_parse answers as jansson does (fast_checked). */
static const struct {
	const char *json;
	int accepted;
} left_frames[] = {
	/* taken by jansson */
	{ "{\"type\":\"log\",\"msg\":\"m\",\"ts\":1}", 1 },                /* a key log does not read */
	{ "{\"type\":\"log\",\"msg\":\"m\",\"data\":1}", 1 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"msg\":\"m\"}", 1 },
	{ "{\"ty\\u0070e\":\"log\",\"msg\":\"m\"}", 1 },                   /* an escaped key */
	{ HELLO "}", 1 },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":-0,\"length\":1}", 1 },      /* a sign */
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":0,\"length\":1,\"x\":1}", 1 }, /* a key fetch does not read */
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":0,\"length\":1,\"msg\":\"m\"}", 1 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":0.00000000000000000000000000000000000000000000000000000000000000001}", 1 },
	/* refused by jansson */
	{ "{\"type\":\"log\",\"msg\":\"a\",\"msg\":\"b\"}", 0 },
	{ "{\"type\":\"log\",\"type\":\"log\",\"msg\":\"m\"}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":{\"a\":1,\"b\":{},\"a\":2}}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":{\"a\":1,\"\\u0061\":2}}", 0 }, /* the same key, spelled two ways */
	{ "{\"type\":\"log\",\"msg\":\"a\\u0000b\"}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":{\"\\u0000\":1}}", 0 },
	{ "{\"type\":\"log\",\"msg\":\"\xc0\x80\"}", 0 },                  /* overlong */
	{ "{\"type\":\"log\",\"msg\":\"\xed\xa0\x80\"}", 0 },              /* a surrogate in UTF-8 */
	{ "{\"type\":\"log\",\"msg\":\"\xf4\x90\x80\x80\"}", 0 },          /* past U+10FFFF */
	{ "{\"type\":\"log\",\"msg\":\"\xe2\x82\"}", 0 },                  /* cut short */
	{ "{\"type\":\"log\",\"msg\":\"\\udc00\"}", 0 },
	{ "{\"type\":\"log\",\"msg\":\"\\ud800\"}", 0 },
	{ "{\"type\":\"log\",\"msg\":\"\\ud800\\u0041\"}", 0 },
	{ "{\"type\":\"log\",\"msg\":\"\\x\"}", 0 },
	{ "{\"type\":\"log\",\"msg\":\"\\u12g4\"}", 0 },
	{ "{\"type\":\"log\",\"msg\":\"tab\there\"}", 0 },                 /* a raw control character */
	{ "{\"type\":\"log\",\"level\":\"warn\",\"msg\":\"m\"}", 0 },
	{ "{\"type\":\"log\",\"level\":\"\",\"msg\":\"m\"}", 0 },
	{ "{\"type\":\"log\",\"level\":\"INFO\",\"msg\":\"m\"}", 0 },
	{ "{\"type\":\"log\",\"msg\":null}", 0 },
	{ "{\"type\":\"log\",\"msg\":[\"m\"]}", 0 },
	{ "{\"type\":\"log\"}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"\"}", 0 },
	{ "{\"type\":\"msg\",\"name\":null}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":9223372036854775808}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":-9223372036854775809}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":9999999999999999999}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":10000000000000000000}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":-00}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":1e400}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":01}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":1.}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":-}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":[1,]}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":{\"a\":1,}}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":[truex]}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":nul}", 0 },
	{ "{\"type\":\"msg\",\"name\":\"n\",\"data\":}", 0 },
	{ "{\"type\":\"log\",\"msg\":\"m\",}", 0 },
	{ "{\"type\":\"log\",\"msg\":\"m\"} x", 0 },
	{ "{\"type\":\"log\",\"msg\":\"m\"}\xc3\xa9", 0 },
	{ "{\"type\":\"log\",\"msg\":\"m\"", 0 },
	{ "{\"type\":\"log\",\"msg\":\"m", 0 },
	{ "{\"type\":\"log\",\"msg\":\"m\\", 0 },
	{ "\xef\xbb\xbf{\"type\":\"log\",\"msg\":\"m\"}", 0 },            /* a byte order mark */
	{ "{\"type\":\"log\",\"msg\":\"m\"}\f", 0 },                       /* not JSON whitespace */
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":1.0,\"length\":1}", 0 },    /* a real */
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":1e3,\"length\":1}", 0 },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":01,\"length\":1}", 0 },     /* not JSON */
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":-1,\"length\":1}", 0 },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":1099511627777,\"length\":1}", 0 }, /* 2^40 + 1 */
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":99999999999999,\"length\":1}", 0 },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":0,\"length\":0}", 0 },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":0,\"length\":1048577}", 0 },
	{ "{\"type\":\"fetch\",\"id\":\"\",\"offset\":0,\"length\":1}", 1 },        /* an empty id (taken, but rare) */
	{ "{\"type\":\"fetch\",\"id\":\"\\u00e9\",\"offset\":0,\"length\":1}", 0 }, /* not printable ASCII */
	{ "{\"type\":\"fetch\",\"id\":\"a\\u0000\",\"offset\":0,\"length\":1}", 0 },
	{ "{\"type\":\"fetch\",\"id\":\"\n\",\"offset\":0,\"length\":1}", 0 },
	{ "{\"type\":\"fetch\",\"id\":null,\"offset\":0,\"length\":1}", 0 },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":0,\"length\":1,\"id\":\"v\"}", 0 },
	{ "{\"type\":\"fetch\",\"id\":\"u\",\"offset\":0}", 0 },
};

/* Fetches (a downloading device's every chunk) are the scanner's too. */
static const struct {
	const char *json, *id;
	int64_t offset, length;
} fetch_frames_fast[] = {
	{ "{\"type\":\"fetch\",\"id\":\"7.1\",\"offset\":0,\"length\":16384}", "7.1", 0, 16384 },
	{ "{\"length\":1048576,\"offset\":1099511627776,\"id\":\"u\",\"type\":\"fetch\"}", "u",
	  INT64_C(1) << 40, 1 << 20 },
	{ " { \"type\" : \"fetch\" , \"id\":\"\\u0041 ~\", \"offset\": 65536 ,\"length\":1 } ", "A ~", 65536, 1 },
	{ "{\"type\":\"fetch\",\"id\":\"0123456789012345678901234567890123456789012345678901234567890123\","
	  "\"offset\":9,\"length\":9}", "0123456789012345678901234567890123456789012345678901234567890123", 9, 9 },
};

START_TEST(fast_takes_fetches)
{
	frame f;
	int rc;
	const char *js = fetch_frames_fast[_i].json;
	ck_assert_msg(fast_checked(js, strlen(js), &f, &rc), "not taken: %s", js);
	ck_assert_int_eq(rc, 0);
	ck_assert_int_eq(f.type, FRAME_FETCH);
	ck_assert_str_eq(f.u.fetch.id, fetch_frames_fast[_i].id);
	ck_assert_int_eq(f.u.fetch.offset, fetch_frames_fast[_i].offset);
	ck_assert_int_eq(f.u.fetch.length, fetch_frames_fast[_i].length);
	frame_release(&f);
}
END_TEST

START_TEST(fast_leaves_the_rest)
{
	const char *js = left_frames[_i].json;
	frame f;
	int rc;

	ck_assert_msg(!fast_checked(js, strlen(js), &f, &rc), "taken: %s", js);
	ck_assert_msg((rc == 0) == left_frames[_i].accepted, "rc %d for %s", rc, js);
	frame_release(&f);
}
END_TEST

/* A frame around data (owned: caller frees). */
static char *msg_with(const char *data)
{
	char *s = NULL;
	ck_assert_int_ge(asprintf(&s, "{\"type\":\"msg\",\"name\":\"n\",\"data\":%s}", data), 0);
	return s;
}

START_TEST(fast_limits)
{
	frame f;
	int rc;
	char *js = NULL, *body;

	/* FRAME_MAX_LOG_MSG counts bytes after unescaping: 8192 x \u00e9 is 16384 */
	size_t n = FRAME_MAX_LOG_MSG / 2;
	body = malloc(n * 6 + 1);
	ck_assert_ptr_nonnull(body);
	for (size_t i = 0; i < n; i++)
		memcpy(body + i * 6, "\\u00e9", 6);
	body[n * 6] = '\0';
	ck_assert_int_ge(asprintf(&js, "{\"type\":\"log\",\"msg\":\"%s\"}", body), 0);
	ck_assert(fast_checked(js, strlen(js), &f, &rc));
	ck_assert_uint_eq(strlen(f.u.log.msg), FRAME_MAX_LOG_MSG);
	frame_release(&f);
	free(js);
	/* one byte more: left to jansson, which refuses it */
	ck_assert_int_ge(asprintf(&js, "{\"type\":\"log\",\"msg\":\"x%s\"}", body), 0);
	ck_assert(!fast_checked(js, strlen(js), &f, &rc));
	ck_assert_int_eq(rc, TN_EINVAL);
	free(js);
	free(body);

	/* FRAME_MAX_NAME */
	body = repeat('n', FRAME_MAX_NAME);
	ck_assert_int_ge(asprintf(&js, "{\"type\":\"msg\",\"name\":\"%s\"}", body), 0);
	ck_assert(fast_checked(js, strlen(js), &f, &rc));
	frame_release(&f);
	free(js);
	ck_assert_int_ge(asprintf(&js, "{\"type\":\"msg\",\"name\":\"n%s\"}", body), 0);
	ck_assert(!fast_checked(js, strlen(js), &f, &rc));
	ck_assert_int_eq(rc, TN_EINVAL);
	free(js);
	free(body);

	/* FRAME_MAX_DEPTH, arrays and objects */
	js = nested(FRAME_MAX_DEPTH - 1);
	ck_assert(fast_checked(js, strlen(js), &f, &rc));
	frame_release(&f);
	free(js);
	js = nested(FRAME_MAX_DEPTH);
	ck_assert(!fast_checked(js, strlen(js), &f, &rc));
	ck_assert_int_eq(rc, TN_EINVAL);
	free(js);
	for (int depth = FRAME_MAX_DEPTH - 1; depth <= FRAME_MAX_DEPTH; depth++) {
		char *open = malloc((size_t)depth * 5 + 1), *close = repeat('}', (size_t)depth);
		for (int i = 0; i < depth; i++)
			memcpy(open + i * 5, "{\"a\":", 5);
		open[depth * 5] = '\0';
		char *inner = NULL;
		ck_assert_int_ge(asprintf(&inner, "%s1%s", open, close), 0);
		js = msg_with(inner);
		ck_assert_int_eq(fast_checked(js, strlen(js), &f, &rc), depth < FRAME_MAX_DEPTH);
		ck_assert_int_eq(rc, depth < FRAME_MAX_DEPTH ? 0 : TN_EINVAL);
		frame_release(&f);
		free(js);
		free(inner);
		free(open);
		free(close);
	}
}
END_TEST

START_TEST(fast_data_objects)
{
	frame f;
	int rc;
	char buf[2048], *js;
	size_t len;

	/* 64 keys open at once are the scanner's; one more is jansson's alone */
	for (int keys = 64; keys <= 65; keys++) {
		len = 0;
		buf[len++] = '{';
		for (int i = 0; i < keys; i++)
			len += (size_t)snprintf(buf + len, sizeof buf - len, "%s\"k%d\":%d", i ? "," : "", i, i);
		buf[len++] = '}';
		buf[len] = '\0';
		js = msg_with(buf);
		ck_assert_int_eq(fast_checked(js, strlen(js), &f, &rc), keys == 64);
		ck_assert_int_eq(rc, 0);
		ck_assert_str_eq(f.u.msg.data_json, buf);
		frame_release(&f);
		free(js);
	}
	/* a duplicate after many keys, and after a closed inner object */
	js = msg_with("{\"a\":1,\"b\":{\"c\":1,\"d\":2},\"c\":3,\"e\":4,\"d\":5,\"b\":6}");
	ck_assert(!fast_checked(js, strlen(js), &f, &rc));
	ck_assert_int_eq(rc, TN_EINVAL);
	free(js);

	/* data that grows when written as json_dumps does (0.1 is 19 bytes
	 * there): the scanner's buffer grows with it */
	len = 0;
	buf[len++] = '[';
	for (int i = 0; i < 400; i++) {
		if (i)
			buf[len++] = ',';
		memcpy(buf + len, "0.1", 3);
		len += 3;
	}
	buf[len++] = ']';
	buf[len] = '\0';
	js = msg_with(buf);
	ck_assert(fast_checked(js, strlen(js), &f, &rc));
	ck_assert_uint_eq(strlen(f.u.msg.data_json), 2 + 400 * 19 + 399);
	frame_release(&f);
	free(js);
}
END_TEST

START_TEST(fast_nul_bytes)
{
	static const char raw[] = "{\"type\":\"log\",\"msg\":\"a\0b\"}";
	frame f;
	int rc;

	/* a raw NUL and \u0000 are jansson's to refuse, as before */
	ck_assert(!fast_checked(raw, sizeof raw - 1, &f, &rc));
	ck_assert_int_eq(rc, TN_EINVAL);
	const char *esc = "{\"type\":\"log\",\"msg\":\"a\\u0000b\"}";
	ck_assert(!fast_checked(esc, strlen(esc), &f, &rc));
	ck_assert_int_eq(rc, TN_EINVAL);
	/* a NUL after the frame is not whitespace */
	static const char after[] = "{\"type\":\"log\",\"msg\":\"m\"}\0";
	ck_assert(!fast_checked(after, sizeof after - 1, &f, &rc));
	ck_assert_int_eq(rc, TN_EINVAL);
	/* only len bytes are read: the frame ends where len says */
	const char *js = "{\"type\":\"log\",\"msg\":\"m\"}{\"type\":\"log\"";
	ck_assert(fast_checked(js, 24, &f, &rc));
	ck_assert_str_eq(f.u.log.msg, "m");
	frame_release(&f);
}
END_TEST

static Suite *frame_suite(void)
{
	Suite *s = suite_create("frame");
	TCase *tc;

	tc = tcase_create("types");
	tcase_add_test(tc, hello_full);
	tcase_add_test(tc, hello_minimal);
	tcase_add_test(tc, log_frames);
	tcase_add_test(tc, msg_frames);
	tcase_add_test(tc, update_status_frames);
	tcase_add_test(tc, fetch_frames);
	tcase_add_test(tc, type_names);
	suite_add_tcase(s, tc);

	tc = tcase_create("errors");
	tcase_add_loop_test(tc, refused, 0, (int)TN_ARRAY_LEN(bad_frames));
	tcase_add_test(tc, bad_json_line_column);
	tcase_add_test(tc, raw_nul_byte);
	tcase_add_test(tc, release_safe);
	suite_add_tcase(s, tc);

	tc = tcase_create("nesting");
	tcase_add_test(tc, nesting_limit);
	tcase_add_test(tc, nesting_depth_function);
	suite_add_tcase(s, tc);

	tc = tcase_create("fast");
	tcase_add_loop_test(tc, fast_takes_hot_frames, 0, (int)TN_ARRAY_LEN(hot_frames));
	tcase_add_loop_test(tc, fast_leaves_the_rest, 0, (int)TN_ARRAY_LEN(left_frames));
	tcase_add_loop_test(tc, fast_takes_fetches, 0, (int)TN_ARRAY_LEN(fetch_frames_fast));
	tcase_add_test(tc, fast_limits);
	tcase_add_test(tc, fast_data_objects);
	tcase_add_test(tc, fast_nul_bytes);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(frame_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

/* tests/fuzz/fuzz_frame_diff.c -- differential libFuzzer target for the two
 * paths of the device frame parser (server/frame.c): every input goes through
 * the scanner (frame_parse_fast), the jansson path (frame_parse_json) and
 * frame_parse, and the target aborts when they disagree:
 *   - frame_parse must answer exactly as frame_parse_json: accepted or
 *     refused, the error kind and message, the type and every field;
 *   - what the scanner accepts, jansson must accept with the same fields
 *     ("data" byte for byte as json_dumps writes it); what it does not
 *     accept it must leave empty.
 * Each input is also tried as the value of a msg frame's "data", as the
 * text of a log line's "msg", as a fetch's "id" and as its "offset", so
 * mutations reach the scanner's value, string and number code without
 * having to keep a frame around them.
 * Built by tools/fuzz.sh (clang -fsanitize=fuzzer,address,undefined); its
 * corpus (tests/fuzz/corpus/frame_diff) is replayed in `make check` by
 * tests/unit/test_fuzz_corpus.c. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *diff__input;
static size_t diff__len;

static void diff__fail(const char *what)
{
	fprintf(stderr, "fuzz_frame_diff: %s for the %zu bytes: %.*s\n", what, diff__len,
		(int)(diff__len > 2000 ? 2000 : diff__len), diff__input);
	abort();
}

static void diff__str(const char *what, const char *a, const char *b)
{
	if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0))
		diff__fail(what);
}

/* The same type and fields (not root nor text: where they live may differ). */
static void diff__same(const frame *a, const frame *b)
{
	if (a->type != b->type)
		diff__fail("type differs");
	switch (a->type) {
	case FRAME_HELLO:
		if (a->u.hello.id != b->u.hello.id || a->u.hello.has_flash != b->u.hello.has_flash ||
		    a->u.hello.jedec != b->u.hello.jedec || a->u.hello.has_jedec != b->u.hello.has_jedec ||
		    a->u.hello.flash_size != b->u.hello.flash_size)
			diff__fail("hello differs");
		diff__str("hello.secret differs", a->u.hello.secret, b->u.hello.secret);
		diff__str("hello.hw differs", a->u.hello.hw, b->u.hello.hw);
		diff__str("hello.fw differs", a->u.hello.fw, b->u.hello.fw);
		diff__str("hello.enroll differs", a->u.hello.enroll, b->u.hello.enroll);
		diff__str("hello.sfdp differs", a->u.hello.sfdp, b->u.hello.sfdp);
		break;
	case FRAME_LOG:
		if (a->u.log.is_error != b->u.log.is_error)
			diff__fail("log.is_error differs");
		diff__str("log.msg differs", a->u.log.msg, b->u.log.msg);
		break;
	case FRAME_MSG:
		diff__str("msg.name differs", a->u.msg.name, b->u.msg.name);
		diff__str("msg.data_json differs", a->u.msg.data_json, b->u.msg.data_json);
		break;
	case FRAME_UPDATE_STATUS:
		if (a->u.update_status.offset != b->u.update_status.offset)
			diff__fail("update_status.offset differs");
		diff__str("update_status.id differs", a->u.update_status.id, b->u.update_status.id);
		diff__str("update_status.state differs", a->u.update_status.state, b->u.update_status.state);
		diff__str("update_status.error differs", a->u.update_status.error, b->u.update_status.error);
		break;
	case FRAME_FETCH:
		if (a->u.fetch.offset != b->u.fetch.offset || a->u.fetch.length != b->u.fetch.length)
			diff__fail("fetch differs");
		diff__str("fetch.id differs", a->u.fetch.id, b->u.fetch.id);
		break;
	default:
		diff__fail("unknown type");
	}
}

static int diff__empty(const frame *f)
{
	static const frame zero;
	return memcmp(f, &zero, sizeof *f) == 0;
}

static void diff__one(const char *buf, size_t len)
{
	frame fast, slow, both;
	metrics_error_kind ks = ERR__COUNT, kb = ERR__COUNT;
	tn_error es = { 0 }, eb = { 0 };

	diff__input = buf;
	diff__len = len;
	int fast_ok = frame_parse_fast(buf, len, &fast);
	int rs = frame_parse_json(buf, len, &slow, &ks, &es);
	int rb = frame_parse(buf, len, &both, &kb, &eb);

	if (rs != rb)
		diff__fail("frame_parse and frame_parse_json disagree on accepting");
	if (rs) {
		if (ks != kb || es.code != eb.code || strcmp(es.msg, eb.msg) != 0)
			diff__fail("frame_parse and frame_parse_json refuse differently");
		if (!diff__empty(&slow) || !diff__empty(&both))
			diff__fail("a refused frame is not left empty");
	} else {
		if (ks != ERR__COUNT || kb != ERR__COUNT)
			diff__fail("an accepted frame set the error kind");
		diff__same(&slow, &both);
	}
	if (fast_ok) {
		if (rs)
			diff__fail("the scanner accepted what jansson refuses");
		if (fast.type != FRAME_LOG && fast.type != FRAME_MSG && fast.type != FRAME_FETCH)
			diff__fail("the scanner took a frame type it does not know");
		if (fast.root)
			diff__fail("the scanner left a jansson tree");
		diff__same(&fast, &slow);
	} else if (!diff__empty(&fast)) {
		diff__fail("the scanner gave up but left the frame filled");
	}
	frame_release(&fast);
	frame_release(&slow);
	frame_release(&both);
}

/* head + the input + tail, in a buffer of exactly that size (so ASan sees
 * any read past the end). */
static void diff__wrapped(const char *head, const uint8_t *data, size_t size, const char *tail)
{
	size_t h = strlen(head), t = strlen(tail);
	char *buf = malloc(h + size + t);
	if (!buf)
		return;
	memcpy(buf, head, h);
	if (size)
		memcpy(buf + h, data, size);
	memcpy(buf + h + size, tail, t);
	diff__one(buf, h + size + t);
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The device loop hands the parser at most --max-frame bytes. */
	if (size > 1 << 20)
		return 0;
	diff__wrapped("", data, size, "");
	diff__wrapped("{\"type\":\"msg\",\"name\":\"n\",\"data\":", data, size, "}");
	diff__wrapped("{\"type\":\"log\",\"msg\":\"", data, size, "\"}");
	diff__wrapped("{\"type\":\"fetch\",\"offset\":0,\"length\":1,\"id\":\"", data, size, "\"}");
	diff__wrapped("{\"type\":\"fetch\",\"id\":\"u\",\"length\":1,\"offset\":", data, size, "}");
	return 0;
}

/* tests/fuzz/fuzz_lua_json.c -- libFuzzer target for the agent runtime's
 * JSON <-> Lua mapping (agents/runtime.c): the fuzz bytes are the data of a
 * device message to an echo agent, whose device.on('m') handler sends the
 * data back.  The echo must be JSON; malformed input must arrive as nil (and
 * so come back as null); a scalar must come back as it went.  Built by
 * tools/fuzz.sh with clang -fsanitize=fuzzer,address,undefined; the corpus
 * (tests/fuzz/corpus/lua_json) is replayed in `make check` by
 * tests/unit/test_fuzz_corpus.c. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_t *fuzz_in;     /* the input as jansson reads it, or NULL */
static int fuzz_sends;

static void fuzz_log(void *ctx, int is_error, const char *msg)
{
	(void)ctx;
	(void)is_error;
	(void)msg;
}

static void fuzz_send(void *ctx, const char *name, const char *data_json)
{
	(void)ctx;
	json_error_t e;
	json_t *out = json_loads(data_json, JSON_DECODE_ANY, &e);
	fuzz_sends++;
	if (strcmp(name, "m") != 0 || !out) {
		fprintf(stderr, "the echo is not JSON: %s (%s)\n", data_json, e.text);
		abort();
	}
	if (!fuzz_in && !json_is_null(out)) {
		fprintf(stderr, "malformed input did not arrive as nil: %s\n", data_json);
		abort();
	}
	if (fuzz_in && !json_is_object(fuzz_in) && !json_is_array(fuzz_in) && !json_equal(fuzz_in, out)) {
		fprintf(stderr, "a scalar changed on its way: %s\n", data_json);
		abort();
	}
	json_decref(out);
}

static int fuzz_connected(void *ctx)
{
	(void)ctx;
	return 1;
}

static int fuzz_save(void *ctx, const char *json, size_t len, char *err, size_t errcap)
{
	(void)ctx;
	(void)json;
	(void)len;
	(void)err;
	(void)errcap;
	return 0;
}

static char *fuzz_load(void *ctx)
{
	(void)ctx;
	return NULL;
}

static int64_t fuzz_now(void *ctx)
{
	(void)ctx;
	return 0;
}

static const agent_host fuzz_host = {
	.log = fuzz_log, .send = fuzz_send, .is_connected = fuzz_connected,
	.save = fuzz_save, .load = fuzz_load, .now_ms = fuzz_now,
};

static const char fuzz_src[] = "device.on('m', function(data) device.send('m', data) end)\n";

/* One agent for the whole run, as the supervisor keeps one per device; only
 * an input over its memory cap (which kills it) makes a new one. */
static agent_rt *fuzz_rt;

static agent_rt *fuzz_agent(void)
{
	if (!fuzz_rt) {
		tn_error err;
		if (agent_rt_new(&fuzz_rt, fuzz_src, sizeof fuzz_src - 1, NULL, &fuzz_host, &err) != 0) {
			fprintf(stderr, "agent_rt_new: %s\n", err.msg);
			abort();
		}
	}
	return fuzz_rt;
}

/* So that the run (and its replay under valgrind) ends with nothing held. */
__attribute__((destructor)) static void fuzz_cleanup(void)
{
	agent_rt_free(fuzz_rt);
	fuzz_rt = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The device loop hands over frames of at most --max-frame bytes. */
	if (size > 1 << 20)
		return 0;
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	fuzz_in = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
	fuzz_sends = 0;
	agent_rt *a = fuzz_agent();
	int rc = agent_rt_message(a, "m", text);
	if (rc == AGENT_OK && fuzz_sends != 1) {
		fprintf(stderr, "the echo handler ran without sending\n");
		abort();
	}
	if (rc == AGENT_BUDGET) {
		fprintf(stderr, "an echo ran out of budget\n");
		abort();
	}
	if (rc == AGENT_OOM) {
		agent_rt_free(fuzz_rt);
		fuzz_rt = NULL;
	}
	json_decref(fuzz_in);
	fuzz_in = NULL;
	free(text);
	return 0;
}

/* tests/fuzz/fuzz_agent_env.c -- libFuzzer target for the migration
 * envelope's decoder (agents/envelope.c): the fuzz bytes are an envelope as
 * another worker or node might send it.  The decoder must refuse it with a
 * reason or decode it; what it decodes must encode back to exactly the same
 * bytes (the format has one encoding per value, so nothing is lost or
 * invented on the way).  Built by tools/fuzz.sh with clang
 * -fsanitize=fuzzer,address,undefined; the corpus
 * (tests/fuzz/corpus/agent_env) is replayed in `make check` by
 * tests/unit/test_fuzz_corpus.c. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	agent_env env;
	tn_error err = { 0 };
	if (agent_env_decode(data, size, &env, &err) != 0) {
		if (strncmp(err.msg, "migration envelope: ", 20) != 0) {
			fprintf(stderr, "refused without a reason: '%s'\n", err.msg);
			abort();
		}
		agent_env_clear(&env);
		return 0;
	}
	uint8_t *again = NULL;
	size_t len = 0;
	if (agent_env_encode(&env, &again, &len, &err) != 0) {
		fprintf(stderr, "a decoded envelope does not encode: %s\n", err.msg);
		abort();
	}
	if (len != size || memcmp(again, data, size) != 0) {
		fprintf(stderr, "the envelope changed on a round trip (%zu -> %zu bytes)\n", size, len);
		abort();
	}
	free(again);
	agent_env_clear(&env);
	return 0;
}

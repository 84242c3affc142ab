/* tests/fuzz/fuzz_frame.c -- libFuzzer target for the device frame parser.
 * Built by tools/fuzz.sh with clang -fsanitize=fuzzer,address,undefined; its
 * corpus (tests/fuzz/corpus/frame) is replayed in `make check` by
 * tests/unit/test_fuzz_corpus.c, so every input that once crashed stays a
 * regression test. */
#include <stddef.h>
#include <stdint.h>

#include "frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	frame f;
	metrics_error_kind kind;
	tn_error err;

	/* The device loop hands the parser at most --max-frame bytes. */
	if (size > 1 << 20)
		return 0;
	if (frame_parse((const char *)data, size, &f, &kind, &err) == 0)
		frame_release(&f);
	return 0;
}

/* tests/fuzz/fuzz_sfdp.c -- libFuzzer target for the SFDP decoder.
 * Built with clang -fsanitize=fuzzer,address,undefined (server/sfdp.c and
 * server/util.c); its corpus (tests/fuzz/corpus/sfdp: the raw bytes of the
 * fixtures in tests/fixtures/sfdp and truncated or corrupted variants) is
 * replayed in `make check`, so every input that once crashed stays a
 * regression test.  The same bytes also go through sfdp_decode_base64 as a
 * string, since base64 is what a device actually sends.  Beyond not
 * crashing, it checks what sfdp.h promises: a refusal leaves nothing
 * decoded, and no coverage exceeds the density. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sfdp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz__check(int rc, const sfdp_info *info)
{
	static const uint32_t sizes[] = { 4096, 32768, 65536, 262144 };

	if (rc != 0) {
		if (info->density != 0 || info->has_sector_map)
			abort();
		return;
	}
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
		if (sfdp_coverage(info, sizes[i]) > info->density)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sfdp_info info;
	tn_error err;
	char *text;

	/* Lengths past SFDP_MAX_LEN are refused before any byte is read. */
	fuzz__check(sfdp_decode(data, size, &info, &err), &info);
	/* The hello frame caps the base64 at FRAME_MAX_SFDP (8192) characters. */
	if (size > 8192 || !(text = malloc(size + 1)))
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	fuzz__check(sfdp_decode_base64(text, &info, &err), &info);
	free(text);
	return 0;
}

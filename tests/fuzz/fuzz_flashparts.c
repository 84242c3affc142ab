/* tests/fuzz/fuzz_flashparts.c -- libFuzzer target for the flash-parts
 * import (server/flashparts.c): the same bytes go to the CSV reader, the
 * JSON reader and the erase_layouts grammar (on a 16 MiB part), and every
 * accepted row is checked against the rules the parser promises (bounded
 * NUL-terminated text, layouts spanning size_bytes, uniform_* flags agreeing
 * with coverage, a JSON round trip).  Built and run like fuzz_frame.c
 * (clang -fsanitize=fuzzer,address,undefined); its corpus
 * tests/fuzz/corpus/flashparts holds seed inputs, and any input that ever
 * fails belongs there too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "flashparts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_row(const flash_part *p)
{
	flash_part back;
	tn_error err;

	if (memchr(p->vendor, 0, sizeof p->vendor) == NULL || memchr(p->notes, 0, sizeof p->notes) == NULL ||
	    memchr(p->layouts_text, 0, sizeof p->layouts_text) == NULL)
		abort();
	if (p->size < FLASHPARTS_SIZE_MIN || p->size > FLASHPARTS_SIZE_MAX)
		abort();
	for (int i = 0; i < p->nlayouts; i++) {
		uint64_t total = 0;
		for (int j = 0; j < p->layouts[i].nregions; j++)
			total += p->layouts[i].regions[j].span;
		if (!p->layouts[i].chip && total != p->size)
			abort();
	}
	if (p->nlayouts && (p->uniform_4k != (flashparts_coverage(p, 4096) == p->size) ||
			    p->uniform_64k != (flashparts_coverage(p, 65536) == p->size)))
		abort();
	json_t *j = flashparts_to_json(p);
	if (!j || flashparts_from_json(j, &back, &err) || memcmp(p, &back, sizeof back))
		abort();
	json_decref(j);
}

static void check_import(int rc, const flashparts_import *imp)
{
	if (rc == 0 && imp->errors)
		abort();
	if (rc != 0 && (imp->rows || imp->nrows))
		abort();
	for (size_t i = 0; i < imp->nrows; i++)
		check_row(&imp->rows[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	flashparts_import imp;
	flash_part p;
	tn_error err;
	char *text;
	int rc;

	/* The API caps an import body well below this. */
	if (size > 1 << 20)
		return 0;
	rc = flashparts_parse_csv((const char *)data, size, &imp, &err);
	check_import(rc, &imp);
	flashparts_import_free(&imp);
	rc = flashparts_parse_json((const char *)data, size, &imp, &err);
	check_import(rc, &imp);
	flashparts_import_free(&imp);

	/* The grammar takes a C string: stop at the first NUL, as a caller would. */
	text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	memset(&p, 0, sizeof p);
	p.size = UINT64_C(16) << 20;
	if (flashparts_layouts_parse(&p, text, &err) == 0 && p.nlayouts > FLASH_MAX_LAYOUTS)
		abort();
	free(text);
	return 0;
}

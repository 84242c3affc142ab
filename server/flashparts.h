/* server/flashparts.h -- the flash-parts table's exchange format: parsing
 * imports (CSV or JSON, the CONTRACT columns) and erase_layouts strings into
 * flash_part rows, validated row by row with line-numbered errors.
 * Owns: nothing beyond the arrays it returns.  Threads: any (pure). */
#ifndef TN_FLASHPARTS_H
#define TN_FLASHPARTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "flash.h"

#define FLASHPARTS_MAX_ROWS 10000
#define FLASHPARTS_MAX_ERRORS 50
#define FLASHPARTS_FIELD_MAX 1024            /* bytes in one CSV field or JSON string */
#define FLASHPARTS_SIZE_MIN 4096             /* size_bytes bounds (inclusive) */
#define FLASHPARTS_SIZE_MAX (UINT64_C(1) << 32)

/* The columns, in CONTRACT order. */
extern const char *const flashparts_columns[11];

/* Parses an erase_layouts string (grammar in docs/flash-parts.md) into
 * p->layouts and p->nlayouts, keeping the text in p->layouts_text.  p->size
 * must be set: every command's regions must span exactly p->size.  An empty
 * (or blank) string means "no layouts known" (nlayouts 0).  Returns 0 or
 * TN_EINVAL with err naming the entry that is wrong; p is untouched then. */
int flashparts_layouts_parse(flash_part *p, const char *text, tn_error *err);

/* Bytes of the chip erasable in blocks of exactly `size` by some command
 * (the largest such coverage over the part's commands). */
uint64_t flashparts_coverage(const flash_part *p, uint32_t size);

/* Result of an import: either rows, or errors (never both). */
typedef struct flashparts_import {
	flash_part *rows;      /* owned */
	size_t nrows;
	json_t *errors;        /* owned: [{"line": N, "column": "...", "message": "..."}], or NULL */
} flashparts_import;

/* Parses CSV (header line required, columns in any order, unknown columns
 * refused) or JSON (an array of objects with the same keys).  Every row is
 * validated; if any row is bad, `errors` lists up to FLASHPARTS_MAX_ERRORS of
 * them and no row is returned, so nothing is half-imported.  Returns 0 when
 * every row is good, TN_EINVAL otherwise (err summarises), TN_ENOMEM.
 * In `errors`, CSV positions are physical lines (the header is line 1, a row
 * is named by the line it starts on); JSON positions are rows (array index
 * + 1), given as both "line" and "row".  out is always initialised. */
int flashparts_parse_csv(const char *text, size_t len, flashparts_import *out, tn_error *err);
int flashparts_parse_json(const char *text, size_t len, flashparts_import *out, tn_error *err);

void flashparts_import_free(flashparts_import *imp);

/* One row as JSON, the same keys as the import (jedec_mfr "0xEF", ...),
 * plus "jedec": "ef4018".  owned: json_decref. */
json_t *flashparts_to_json(const flash_part *p);

/* One row from a JSON object with the import keys (as PUT takes it).
 * Returns 0 or TN_EINVAL with err naming the bad key. */
int flashparts_from_json(json_t *obj, flash_part *out, tn_error *err);

#endif

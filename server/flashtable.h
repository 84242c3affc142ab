/* server/flashtable.h -- the flash-parts table in the store: rows by JEDEC id,
 * listing, replacing one id's rows, all-or-nothing imports, and the seed
 * table (schema/flash_parts.csv) loaded once into a new database.
 * Threads: any (reads on pooled connections, writes through store_sync). */
#ifndef TN_FLASHTABLE_H
#define TN_FLASHTABLE_H

#include <jansson.h>

#include "flash.h"
#include "store.h"

/* The seed table, embedded from schema/flash_parts.csv. */
extern const char flashtable_seed_csv[];

/* Loads the seed table unless this database already got it once (an
 * operator's later edits and deletions are never undone). */
int flashtable_seed(store *st, tn_error *err);

/* The rows carrying this JEDEC id.  owned: *rows, free() it (NULL when none). */
int flashtable_rows(store *st, uint32_t jedec, flash_part **rows, size_t *n, tn_error *err);

/* {"parts":[...]} in JEDEC id then part order; jedec < 0: every id.  owned. */
json_t *flashtable_list(store *st, int64_t jedec, tn_error *err);

/* Replaces every row of `jedec` with `rows` (all must carry that id). */
int flashtable_replace(store *st, uint32_t jedec, const flash_part *rows, size_t n, tn_error *err);

/* Inserts or replaces rows by (jedec, part), in one transaction. */
int flashtable_upsert(store *st, const flash_part *rows, size_t n, tn_error *err);

#endif

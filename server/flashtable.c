/* server/flashtable.c -- the flash-parts table in the store (see flashtable.h). */
#include "flashtable.h"

#include <stdlib.h>
#include <string.h>

#include "flashparts.h"
#include "log.h"

#define FLASHTABLE_COLS "jedec, part, vendor, size, uniform_4k, uniform_64k, erase_layouts, " \
			"shares_id_with, source, notes"

static void flashtable__copy(char *dst, size_t cap, const unsigned char *src)
{
	snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

/* A row back into a flash_part; its layouts are parsed again (they were
 * validated on the way in). */
static int flashtable__row(sqlite3_stmt *st, flash_part *p, tn_error *err)
{
	memset(p, 0, sizeof *p);
	p->jedec = (uint32_t)sqlite3_column_int64(st, 0);
	flashtable__copy(p->part, sizeof p->part, sqlite3_column_text(st, 1));
	flashtable__copy(p->vendor, sizeof p->vendor, sqlite3_column_text(st, 2));
	p->size = (uint64_t)sqlite3_column_int64(st, 3);
	p->uniform_4k = sqlite3_column_int(st, 4);
	p->uniform_64k = sqlite3_column_int(st, 5);
	flashtable__copy(p->shares_id_with, sizeof p->shares_id_with, sqlite3_column_text(st, 7));
	flashtable__copy(p->source, sizeof p->source, sqlite3_column_text(st, 8));
	flashtable__copy(p->notes, sizeof p->notes, sqlite3_column_text(st, 9));
	return flashparts_layouts_parse(p, (const char *)sqlite3_column_text(st, 6), err);
}

int flashtable_rows(store *st, uint32_t jedec, flash_part **rows, size_t *n, tn_error *err)
{
	sqlite3 *db = store_reader_get(st);
	sqlite3_stmt *q = NULL;
	flash_part *out = NULL;
	size_t count = 0;
	int rc = 0, step;

	*rows = NULL;
	*n = 0;
	if (!db)
		return tn_err(err, TN_EIO, "no read connection");
	if (sqlite3_prepare_v2(db, "SELECT " FLASHTABLE_COLS " FROM flash_parts WHERE jedec = ? "
			       "ORDER BY part", -1, &q, NULL) != SQLITE_OK) {
		rc = tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	sqlite3_bind_int64(q, 1, jedec);
	while ((step = sqlite3_step(q)) == SQLITE_ROW && count < 64) {
		flash_part *grown = realloc(out, (count + 1) * sizeof *out);
		if (!grown) {
			rc = tn_err(err, TN_ENOMEM, "out of memory");
			goto done;
		}
		out = grown;
		if ((rc = flashtable__row(q, &out[count], err)))
			goto done;
		count++;
	}
done:
	sqlite3_finalize(q);
	store_reader_put(st, db);
	if (rc) {
		free(out);
		return rc;
	}
	*rows = out;
	*n = count;
	return 0;
}

json_t *flashtable_list(store *st, int64_t jedec, tn_error *err)
{
	sqlite3 *db = store_reader_get(st);
	sqlite3_stmt *q = NULL;
	json_t *parts = json_array(), *out = NULL;
	flash_part p;

	if (!db || !parts) {
		tn_err(err, TN_EIO, "no read connection");
		goto done;
	}
	if (sqlite3_prepare_v2(db, "SELECT " FLASHTABLE_COLS " FROM flash_parts "
			       "WHERE ?1 < 0 OR jedec = ?1 ORDER BY jedec, part", -1, &q, NULL) != SQLITE_OK) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	sqlite3_bind_int64(q, 1, jedec);
	while (sqlite3_step(q) == SQLITE_ROW) {
		tn_error perr;
		if (flashtable__row(q, &p, &perr)) {
			log_warn("flash table: row %s does not parse: %s", sqlite3_column_text(q, 1), perr.msg);
			continue;
		}
		json_array_append_new(parts, flashparts_to_json(&p));
	}
	out = json_pack("{s:O}", "parts", parts);
done:
	sqlite3_finalize(q);
	store_reader_put(st, db);
	json_decref(parts);
	return out;
}

struct flashtable__write {
	const flash_part *rows;
	size_t n;
	int replace_id;     /* delete this id's rows first */
	uint32_t jedec;
	int seed;           /* only if not seeded yet; then mark seeded */
};

static int flashtable__insert(sqlite3 *db, const flash_part *p, tn_error *err)
{
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO flash_parts (" FLASHTABLE_COLS ", updated) "
			       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", -1, &q, NULL) != SQLITE_OK)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(q, 1, p->jedec);
	sqlite3_bind_text(q, 2, p->part, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, p->vendor, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 4, (int64_t)p->size);
	sqlite3_bind_int(q, 5, p->uniform_4k);
	sqlite3_bind_int(q, 6, p->uniform_64k);
	sqlite3_bind_text(q, 7, p->layouts_text, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 8, p->shares_id_with, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 9, p->source, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 10, p->notes, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 11, tn_now_ms());
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

static int flashtable__write(sqlite3 *db, void *arg, tn_error *err)
{
	struct flashtable__write *w = arg;
	sqlite3_stmt *q;
	int rc;

	if (w->seed) {
		if (sqlite3_prepare_v2(db, "SELECT 1 FROM meta WHERE key = 'flash_seed'", -1, &q, NULL))
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		int seeded = sqlite3_step(q) == SQLITE_ROW;
		sqlite3_finalize(q);
		if (seeded) {
			w->n = 0;
			return 0;
		}
		if (sqlite3_exec(db, "INSERT INTO meta (key, value) VALUES ('flash_seed', '1')", NULL, NULL,
				 NULL) != SQLITE_OK)
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	}
	if (w->replace_id) {
		if (sqlite3_prepare_v2(db, "DELETE FROM flash_parts WHERE jedec = ?", -1, &q, NULL))
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		sqlite3_bind_int64(q, 1, w->jedec);
		rc = sqlite3_step(q);
		sqlite3_finalize(q);
		if (rc != SQLITE_DONE)
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	}
	for (size_t i = 0; i < w->n; i++)
		if ((rc = flashtable__insert(db, &w->rows[i], err)))
			return rc;
	return 0;
}

int flashtable_replace(store *st, uint32_t jedec, const flash_part *rows, size_t n, tn_error *err)
{
	for (size_t i = 0; i < n; i++)
		if (rows[i].jedec != jedec)
			return tn_err(err, TN_EINVAL, "part %s has JEDEC id %06x, not %06x", rows[i].part,
				      rows[i].jedec, jedec);
	struct flashtable__write w = { .rows = rows, .n = n, .replace_id = 1, .jedec = jedec };
	return store_sync(st, flashtable__write, &w, err);
}

int flashtable_upsert(store *st, const flash_part *rows, size_t n, tn_error *err)
{
	struct flashtable__write w = { .rows = rows, .n = n };
	return store_sync(st, flashtable__write, &w, err);
}

int flashtable_seed(store *st, tn_error *err)
{
	flashparts_import imp = { 0 };
	int rc = flashparts_parse_csv(flashtable_seed_csv, strlen(flashtable_seed_csv), &imp, err);
	if (rc) {
		flashparts_import_free(&imp);
		return rc; /* a broken seed table is a build defect: the unit tests parse it too */
	}
	struct flashtable__write w = { .rows = imp.rows, .n = imp.nrows, .seed = 1 };
	rc = store_sync(st, flashtable__write, &w, err);
	if (rc == 0 && w.n)
		log_info("flash table: loaded %zu parts from the seed table", w.n);
	flashparts_import_free(&imp);
	return rc;
}

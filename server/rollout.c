/* server/rollout.c -- update campaigns (see rollout.h, docs/updates.md). */
#define _GNU_SOURCE
#include "rollout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashtable.h"
#include "log.h"
#include "logfmt.h"

static const char *const rollout__final[] = { "completed", "blocked", "up_to_date", "failed", "aborted" };
static const char *const rollout__active[] = { "triggered", "downloading", "downloaded", "installing" };
static const char *const rollout__all_states[] = {
	"pending", "triggered", "downloading", "downloaded", "installing", "retry_wait",
	"completed", "blocked", "up_to_date", "failed", "aborted",
};

int rollout_state_is_final(const char *state)
{
	for (size_t i = 0; i < TN_ARRAY_LEN(rollout__final); i++)
		if (strcmp(state, rollout__final[i]) == 0)
			return 1;
	return 0;
}

int rollout_state_is_active(const char *state)
{
	for (size_t i = 0; i < TN_ARRAY_LEN(rollout__active); i++)
		if (strcmp(state, rollout__active[i]) == 0)
			return 1;
	return 0;
}

/* --- the decision ------------------------------------------------------------ */

rollout_decision rollout_decide(store *st, const fwstore_info *fw, int allow_unknown_flash,
				const rollout_facts *f, char *reason, size_t cap, int *override)
{
	flash_part *rows = NULL;
	size_t nrows = 0;
	sfdp_info sfdp;
	tn_error err = { 0 }, sfdp_err = { 0 };
	int have_sfdp = 0;

	*override = 0;
	if (f->fw && strcmp(f->fw, fw->version) == 0) {
		snprintf(reason, cap, "already runs %s", fw->version);
		return DECIDE_UP_TO_DATE;
	}
	if (!f->hw || !fwstore_targets_hw(fw, f->hw)) {
		char *targets = json_dumps(fw->hw, JSON_COMPACT);
		if (f->hw)
			snprintf(reason, cap, "firmware %s is not built for hardware %s (it targets %s)",
				 fw->version, f->hw, targets ? targets : "?");
		else
			snprintf(reason, cap, "the device has not reported its hardware yet; firmware %s "
				 "targets %s", fw->version, targets ? targets : "?");
		free(targets);
		return DECIDE_BLOCKED;
	}
	if (f->has_jedec && flashtable_rows(st, f->jedec, &rows, &nrows, &err)) {
		/* Cannot read the table: never guess. */
		snprintf(reason, cap, "the flash-parts table cannot be read (%s)", err.msg);
		return DECIDE_BLOCKED;
	}
	if (f->sfdp && *f->sfdp)
		have_sfdp = sfdp_decode_base64(f->sfdp, &sfdp, &sfdp_err) == 0;
	flash_facts facts = {
		.has_jedec = f->has_jedec, .jedec = f->jedec, .rows = rows, .nrows = nrows,
		.sfdp = have_sfdp ? &sfdp : NULL,
		.sfdp_error = (f->sfdp && *f->sfdp && !have_sfdp) ? sfdp_err.msg : NULL,
		.reported_size = f->flash_size > 0 ? (uint64_t)f->flash_size : 0,
	};
	flash_verdict v = flash_check(&facts, &fw->req, fw->version, reason, cap);
	free(rows);
	if (v == FLASH_COMPATIBLE)
		return DECIDE_ELIGIBLE;
	if (v == FLASH_UNKNOWN && allow_unknown_flash) {
		*override = 1;
		size_t n = strlen(reason);
		snprintf(reason + n, cap - n, " (allowed: the rollout sets allow_unknown_flash)");
		return DECIDE_ELIGIBLE;
	}
	return DECIDE_BLOCKED;
}

/* --- options ----------------------------------------------------------------- */

static int rollout__int(json_t *obj, const char *key, int dflt, int min, int max, int *out,
			tn_error *err)
{
	json_t *v = json_object_get(obj, key);
	if (!v) {
		*out = dflt;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
		return tn_err(err, TN_EINVAL, "'%s' must be an integer from %d to %d", key, min, max);
	*out = (int)json_integer_value(v);
	return 0;
}

/* Reads the options members of a create body or a stored options object. */
static int rollout__read_options(json_t *obj, rollout_options *o, tn_error *err)
{
	json_t *stages = json_object_get(obj, "stages"), *dl = json_object_get(obj, "deadlines"), *v;
	size_t i;
	int rc;

	memset(o, 0, sizeof *o);
	if (!stages) {
		o->nstages = 1;
		o->stage_pct[0] = 100;
	} else {
		if (!json_is_array(stages) || json_array_size(stages) == 0 ||
		    json_array_size(stages) > ROLLOUT_MAX_STAGES)
			return tn_err(err, TN_EINVAL, "'stages' must be an array of 1 to %d cumulative "
				      "percentages, like [10, 50, 100]", ROLLOUT_MAX_STAGES);
		json_array_foreach(stages, i, v) {
			json_int_t pct = json_integer_value(v);
			if (!json_is_integer(v) || pct < 1 || pct > 100 ||
			    (i > 0 && pct <= o->stage_pct[i - 1]))
				return tn_err(err, TN_EINVAL, "'stages[%zu]' must be a percentage above the "
					      "previous stage's, at most 100", i);
			o->stage_pct[o->nstages++] = (int)pct;
		}
		if (o->stage_pct[o->nstages - 1] != 100)
			return tn_err(err, TN_EINVAL, "the last stage must be 100 (percent of the targets)");
	}
	if (dl && !json_is_object(dl))
		return tn_err(err, TN_EINVAL, "'deadlines' must be an object of seconds: "
			      "{\"trigger\", \"download\", \"install\"}");
	const char *key;
	json_object_foreach(dl, key, v)
		if (strcmp(key, "trigger") && strcmp(key, "download") && strcmp(key, "install"))
			return tn_err(err, TN_EINVAL, "deadlines: unknown member '%s'", key);
	json_t *allow = json_object_get(obj, "allow_unknown_flash");
	if (allow && !json_is_boolean(allow))
		return tn_err(err, TN_EINVAL, "'allow_unknown_flash' must be true or false");
	o->allow_unknown_flash = json_is_true(allow);
	if ((rc = rollout__int(obj, "max_concurrent", 50, 1, 100000, &o->max_concurrent, err)) ||
	    (rc = rollout__int(obj, "failure_threshold", 20, 0, 100, &o->failure_pct, err)) ||
	    (rc = rollout__int(obj, "retry_limit", 2, 0, 100, &o->retry_limit, err)) ||
	    (rc = rollout__int(obj, "retry_backoff", 30, 0, 86400, &o->retry_backoff, err)) ||
	    (rc = rollout__int(dl, "trigger", 120, 1, 86400 * 7, &o->deadline_trigger, err)) ||
	    (rc = rollout__int(dl, "download", 1800, 1, 86400 * 7, &o->deadline_download, err)) ||
	    (rc = rollout__int(dl, "install", 600, 1, 86400 * 7, &o->deadline_install, err)))
		return rc;
	return 0;
}

int rollout_options_parse(json_t *obj, rollout_options *out, tn_error *err)
{
	return rollout__read_options(obj, out, err);
}

static json_t *rollout__options_json(const rollout_options *o)
{
	json_t *stages = json_array();
	for (int i = 0; i < o->nstages; i++)
		json_array_append_new(stages, json_integer(o->stage_pct[i]));
	return json_pack("{s:o, s:i, s:i, s:i, s:i, s:{s:i, s:i, s:i}, s:b}",
			 "stages", stages, "max_concurrent", o->max_concurrent,
			 "failure_threshold", o->failure_pct, "retry_limit", o->retry_limit,
			 "retry_backoff", o->retry_backoff, "deadlines", "trigger", o->deadline_trigger,
			 "download", o->deadline_download, "install", o->deadline_install,
			 "allow_unknown_flash", o->allow_unknown_flash);
}

/* --- creating ---------------------------------------------------------------- */

struct rollout__create {
	int64_t firmware;
	json_t *body;            /* borrowed */
	char *options;           /* JSON text */
	int nstages;
	int start;
	int64_t id;
};

static int rollout__cmp_id(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* The targeted device ids, in id order, without duplicates. */
static int rollout__targets(sqlite3 *db, json_t *body, json_t **ids, tn_error *err)
{
	json_t *list = json_object_get(body, "devices"), *group = json_object_get(body, "group"),
	       *hw = json_object_get(body, "hw");
	int given = (list != NULL) + (group != NULL) + (hw != NULL);
	sqlite3_stmt *q = NULL;

	*ids = json_array();
	if (given != 1)
		return tn_err(err, TN_EINVAL, "give exactly one target: \"devices\": [...], \"group\" or \"hw\"");
	if (list) {
		size_t i;
		json_t *v;
		uint64_t id;
		char hex[17];
		if (!json_is_array(list) || json_array_size(list) == 0 || json_array_size(list) > 100000)
			return tn_err(err, TN_EINVAL, "'devices' must be an array of 1 to 100000 device ids");
		if (sqlite3_prepare_v2(db, "SELECT 1 FROM devices WHERE id = ?", -1, &q, NULL))
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		json_array_foreach(list, i, v) {
			if (!json_is_string(v) || tn_device_id_parse(json_string_value(v), &id)) {
				sqlite3_finalize(q);
				return tn_err(err, TN_EINVAL, "'devices[%zu]' is not a device id", i);
			}
			tn_device_id_format(id, hex);
			sqlite3_bind_text(q, 1, hex, -1, SQLITE_TRANSIENT);
			int found = sqlite3_step(q) == SQLITE_ROW;
			sqlite3_reset(q);
			if (!found) {
				sqlite3_finalize(q);
				return tn_err(err, TN_ENOTFOUND, "no device %s", hex);
			}
			json_array_append_new(*ids, json_string(hex));
		}
		sqlite3_finalize(q);
		/* id order, without duplicates */
		size_t n = json_array_size(*ids);
		char (*sorted)[17] = calloc(n ? n : 1, sizeof *sorted);
		if (!sorted)
			return tn_err(err, TN_ENOMEM, "out of memory");
		for (size_t k = 0; k < n; k++)
			memcpy(sorted[k], json_string_value(json_array_get(*ids, k)), 17);
		qsort(sorted, n, sizeof *sorted, rollout__cmp_id);
		json_array_clear(*ids);
		for (size_t k = 0; k < n; k++)
			if (k == 0 || strcmp(sorted[k], sorted[k - 1]) != 0)
				json_array_append_new(*ids, json_string(sorted[k]));
		free(sorted);
		return 0;
	}
	json_t *value = group ? group : hw;
	if (!json_is_string(value))
		return tn_err(err, TN_EINVAL, "'%s' must be a string", group ? "group" : "hw");
	if (sqlite3_prepare_v2(db, group ? "SELECT id FROM devices WHERE grp = ? ORDER BY id"
					 : "SELECT id FROM devices WHERE hw = ? ORDER BY id", -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, json_string_value(value), -1, SQLITE_STATIC);
	while (sqlite3_step(q) == SQLITE_ROW)
		json_array_append_new(*ids, json_string((const char *)sqlite3_column_text(q, 0)));
	sqlite3_finalize(q);
	if (json_array_size(*ids) == 0)
		return tn_err(err, TN_EINVAL, "no device is in %s '%s'", group ? "group" : "hw",
			      json_string_value(value));
	return 0;
}

static int rollout__create_tx(sqlite3 *db, void *arg, tn_error *err)
{
	struct rollout__create *c = arg;
	sqlite3_stmt *q = NULL;
	json_t *ids = NULL;
	int rc;
	int64_t now = tn_now_ms();

	if ((rc = rollout__targets(db, c->body, &ids, err)))
		goto done;
	/* One unfinished rollout per device: two would race to update it. */
	if (sqlite3_prepare_v2(db, "SELECT r.id FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout "
			       "WHERE d.device = ? AND r.state IN ('paused', 'running') AND d.state NOT IN "
			       "('completed', 'blocked', 'up_to_date', 'failed', 'aborted')", -1, &q, NULL)) {
		rc = tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	size_t i;
	json_t *v;
	json_array_foreach(ids, i, v) {
		sqlite3_bind_text(q, 1, json_string_value(v), -1, SQLITE_STATIC);
		if (sqlite3_step(q) == SQLITE_ROW) {
			rc = tn_err(err, TN_EEXIST, "device %s is already in unfinished rollout %lld",
				    json_string_value(v), (long long)sqlite3_column_int64(q, 0));
			goto done;
		}
		sqlite3_reset(q);
	}
	sqlite3_finalize(q);
	if (sqlite3_prepare_v2(db, "INSERT INTO rollouts (firmware, options, state, stage, nstages, reason, "
			       "created, updated) VALUES (?, ?, ?, 0, ?, ?, ?, ?)", -1, &q, NULL)) {
		rc = tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	sqlite3_bind_int64(q, 1, c->firmware);
	sqlite3_bind_text(q, 2, c->options, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, c->start ? "running" : "paused", -1, SQLITE_STATIC);
	sqlite3_bind_int(q, 4, c->nstages);
	sqlite3_bind_text(q, 5, c->start ? "started at creation" : "created paused: resume to start",
			  -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 6, now);
	sqlite3_bind_int64(q, 7, now);
	if (sqlite3_step(q) != SQLITE_DONE) {
		rc = tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	c->id = sqlite3_last_insert_rowid(db);
	sqlite3_finalize(q);
	if (sqlite3_prepare_v2(db, "INSERT INTO rollout_devices (rollout, device, stage, state, updated) "
			       "VALUES (?, ?, ?, 'pending', ?)", -1, &q, NULL)) {
		rc = tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	rollout_options o;
	json_t *opts = json_loads(c->options, 0, NULL);
	rollout__read_options(opts, &o, NULL);
	json_decref(opts);
	size_t n = json_array_size(ids);
	json_array_foreach(ids, i, v) {
		int stage = 0;
		/* Stage s holds the devices up to ceil(pct_s * n / 100), in id order. */
		while (stage < o.nstages - 1 && i >= ((size_t)o.stage_pct[stage] * n + 99) / 100)
			stage++;
		sqlite3_bind_int64(q, 1, c->id);
		sqlite3_bind_text(q, 2, json_string_value(v), -1, SQLITE_STATIC);
		sqlite3_bind_int(q, 3, stage);
		sqlite3_bind_int64(q, 4, now);
		if (sqlite3_step(q) != SQLITE_DONE) {
			rc = tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
			goto done;
		}
		sqlite3_reset(q);
	}
	rc = 0;
done:
	sqlite3_finalize(q);
	json_decref(ids);
	return rc;
}

int rollout_create(store *st, const char *fw_dir, json_t *body, json_t **out, tn_error *err)
{
	static const char *const keys[] = { "firmware", "devices", "group", "hw", "stages",
		"max_concurrent", "failure_threshold", "retry_limit", "retry_backoff", "deadlines",
		"allow_unknown_flash", "start", NULL };
	rollout_options o;
	const char *key;
	json_t *v;
	int rc;

	*out = NULL;
	json_object_foreach(body, key, v) {
		int ok = 0;
		for (const char *const *k = keys; *k; k++)
			ok |= strcmp(key, *k) == 0;
		if (!ok)
			return tn_err(err, TN_EINVAL, "unknown member '%s'", key);
	}
	json_t *fw = json_object_get(body, "firmware"), *start = json_object_get(body, "start");
	if (!json_is_integer(fw))
		return tn_err(err, TN_EINVAL, "'firmware' must be a firmware id (from POST /v1/firmware)");
	if (start && !json_is_boolean(start))
		return tn_err(err, TN_EINVAL, "'start' must be true or false");
	json_t *exists = fwstore_get(st, json_integer_value(fw));
	if (!exists)
		return tn_err(err, TN_ENOTFOUND, "no firmware %lld", (long long)json_integer_value(fw));
	json_decref(exists);
	if ((rc = rollout__read_options(body, &o, err)))
		return rc;
	json_t *opts = rollout__options_json(&o);
	json_t *target = json_object_get(body, "devices") ? json_pack("{s:O}", "devices", json_object_get(body, "devices"))
			 : json_object_get(body, "group") ? json_pack("{s:O}", "group", json_object_get(body, "group"))
			 : json_object_get(body, "hw") ? json_pack("{s:O}", "hw", json_object_get(body, "hw"))
			 : json_object();
	json_object_set_new(opts, "target", target);
	struct rollout__create c = {
		.firmware = json_integer_value(fw), .body = body,
		.options = json_dumps(opts, JSON_COMPACT), .nstages = o.nstages, .start = json_is_true(start),
	};
	json_decref(opts);
	rc = store_sync(st, rollout__create_tx, &c, err);
	free(c.options);
	if (rc)
		return rc;
	log_info("rollout %lld created (%s)", (long long)c.id, c.start ? "running" : "paused");
	(void)fw_dir;
	*out = rollout_get(st, c.id);
	return *out ? 0 : tn_err(err, TN_EIO, "the rollout was created but cannot be read back");
}

/* --- reading ----------------------------------------------------------------- */

static json_t *rollout__counts(sqlite3 *db, int64_t id, int64_t *total)
{
	json_t *counts = json_object();
	sqlite3_stmt *q;
	*total = 0;
	for (size_t i = 0; i < TN_ARRAY_LEN(rollout__all_states); i++)
		json_object_set_new(counts, rollout__all_states[i], json_integer(0));
	if (sqlite3_prepare_v2(db, "SELECT state, count(*) FROM rollout_devices WHERE rollout = ? "
			       "GROUP BY state", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(q, 1, id);
		while (sqlite3_step(q) == SQLITE_ROW) {
			json_object_set_new(counts, (const char *)sqlite3_column_text(q, 0),
					    json_integer(sqlite3_column_int64(q, 1)));
			*total += sqlite3_column_int64(q, 1);
		}
	}
	sqlite3_finalize(q);
	return counts;
}

#define ROLLOUT_COLS "r.id, r.firmware, f.version, r.options, r.state, r.stage, r.nstages, r.reason, " \
		     "r.created, r.updated"

static json_t *rollout__row(sqlite3 *db, sqlite3_stmt *q)
{
	char created[32], updated[32];
	int64_t id = sqlite3_column_int64(q, 0), total;
	logfmt_iso8601(created, sizeof created, sqlite3_column_int64(q, 8));
	logfmt_iso8601(updated, sizeof updated, sqlite3_column_int64(q, 9));
	json_t *opts = json_loads((const char *)sqlite3_column_text(q, 3), 0, NULL);
	json_t *target = json_incref(json_object_get(opts, "target"));
	json_object_del(opts, "target");
	json_t *counts = rollout__counts(db, id, &total);
	return json_pack("{s:I, s:{s:I, s:s}, s:o, s:o, s:s, s:i, s:i, s:s?, s:o, s:I, s:s, s:s}",
			 "id", (json_int_t)id, "firmware", "id", (json_int_t)sqlite3_column_int64(q, 1),
			 "version", (const char *)sqlite3_column_text(q, 2), "target", target ? target : json_null(),
			 "options", opts ? opts : json_null(), "state", (const char *)sqlite3_column_text(q, 4),
			 "stage", sqlite3_column_int(q, 5) + 1, "stages", sqlite3_column_int(q, 6),
			 "reason", (const char *)sqlite3_column_text(q, 7), "counts", counts,
			 "total", (json_int_t)total, "created", created, "updated", updated);
}

json_t *rollout_get(store *st, int64_t id)
{
	sqlite3 *db = store_reader_get(st);
	sqlite3_stmt *q = NULL;
	json_t *out = NULL;
	if (!db)
		return NULL;
	if (sqlite3_prepare_v2(db, "SELECT " ROLLOUT_COLS " FROM rollouts r JOIN firmware f ON "
			       "f.id = r.firmware WHERE r.id = ?", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(q, 1, id);
		if (sqlite3_step(q) == SQLITE_ROW)
			out = rollout__row(db, q);
	}
	sqlite3_finalize(q);
	store_reader_put(st, db);
	return out;
}

json_t *rollout_list(store *st, tn_error *err)
{
	return store_list_json(st, "SELECT " ROLLOUT_COLS " FROM rollouts r JOIN firmware f ON "
			       "f.id = r.firmware ORDER BY r.id DESC LIMIT 1000", "rollouts", rollout__row, err);
}

json_t *rollout_plan(store *st, const char *fw_dir, int64_t id, tn_error *err)
{
	json_t *r = rollout_get(st, id), *devices = json_array(), *out = NULL;
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	fwstore_info fw;
	int64_t n_eligible = 0, n_blocked = 0, n_current = 0;

	memset(&fw, 0, sizeof fw);
	if (!r) {
		tn_err(err, TN_ENOTFOUND, "no rollout %lld", (long long)id);
		goto done;
	}
	json_t *opts = json_object_get(r, "options");
	int allow = json_is_true(json_object_get(opts, "allow_unknown_flash"));
	if (fwstore_info_get(st, fw_dir, json_integer_value(json_object_get(json_object_get(r, "firmware"), "id")),
			     &fw, err))
		goto done;
	if (!(db = store_reader_get(st))) {
		tn_err(err, TN_EIO, "no read connection");
		goto done;
	}
	if (sqlite3_prepare_v2(db, "SELECT d.device, d.stage, d.state, d.reason, v.hw, v.fw, v.flash_jedec, "
			       "v.flash_size, v.flash_sfdp, d.attempts FROM rollout_devices d JOIN devices v ON "
			       "v.id = d.device WHERE d.rollout = ? ORDER BY d.stage, d.device", -1, &q,
			       NULL) != SQLITE_OK) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	sqlite3_bind_int64(q, 1, id);
	while (sqlite3_step(q) == SQLITE_ROW) {
		char reason[600];
		int override;
		rollout_facts f = {
			.hw = (const char *)sqlite3_column_text(q, 4), .fw = (const char *)sqlite3_column_text(q, 5),
			.has_jedec = sqlite3_column_type(q, 6) != SQLITE_NULL,
			.jedec = (uint32_t)sqlite3_column_int64(q, 6), .flash_size = sqlite3_column_int64(q, 7),
			.sfdp = (const char *)sqlite3_column_text(q, 8),
		};
		rollout_decision d = rollout_decide(st, &fw, allow, &f, reason, sizeof reason, &override);
		const char *name = d == DECIDE_ELIGIBLE ? "eligible" : d == DECIDE_BLOCKED ? "blocked" : "up-to-date";
		n_eligible += d == DECIDE_ELIGIBLE;
		n_blocked += d == DECIDE_BLOCKED;
		n_current += d == DECIDE_UP_TO_DATE;
		json_array_append_new(devices, json_pack("{s:s, s:i, s:s, s:s, s:s, s:s?, s:i}",
			"id", (const char *)sqlite3_column_text(q, 0), "stage", sqlite3_column_int(q, 1) + 1,
			"decision", name, "reason", reason, "state", (const char *)sqlite3_column_text(q, 2),
			"state_reason", (const char *)sqlite3_column_text(q, 3),
			"attempts", sqlite3_column_int(q, 9)));
	}
	out = json_pack("{s:I, s:s, s:s, s:{s:I, s:I, s:I}, s:O}", "rollout", (json_int_t)id,
			"firmware", fw.version, "rollout_state",
			json_string_value(json_object_get(r, "state")), "counts", "eligible",
			(json_int_t)n_eligible, "blocked", (json_int_t)n_blocked, "up-to-date",
			(json_int_t)n_current, "devices", devices);
done:
	sqlite3_finalize(q);
	store_reader_put(st, db);
	fwstore_info_clear(&fw);
	json_decref(devices);
	json_decref(r);
	return out;
}

/* --- control ----------------------------------------------------------------- */

struct rollout__control {
	int64_t id;
	const char *action;
};

static int rollout__control_tx(sqlite3 *db, void *arg, tn_error *err)
{
	struct rollout__control *c = arg;
	sqlite3_stmt *q;
	char state[32] = "";

	if (sqlite3_prepare_v2(db, "SELECT state FROM rollouts WHERE id = ?", -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(q, 1, c->id);
	if (sqlite3_step(q) == SQLITE_ROW)
		snprintf(state, sizeof state, "%s", sqlite3_column_text(q, 0));
	sqlite3_finalize(q);
	if (!state[0])
		return tn_err(err, TN_ENOTFOUND, "no rollout %lld", (long long)c->id);
	if (strcmp(state, "completed") == 0 || strcmp(state, "aborted") == 0)
		return tn_err(err, TN_ESTATE, "rollout %lld has ended (%s)", (long long)c->id, state);
	const char *to, *reason;
	if (strcmp(c->action, "pause") == 0) {
		to = "paused";
		reason = "paused by an operator";
	} else if (strcmp(c->action, "resume") == 0) {
		to = "running";
		reason = strcmp(state, "running") == 0 ? "running" : "resumed by an operator";
	} else {
		to = "aborted";
		reason = "aborted by an operator";
	}
	if (sqlite3_prepare_v2(db, "UPDATE rollouts SET state = ?, reason = ?, updated = ? WHERE id = ?", -1,
			       &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, to, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, reason, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 3, tn_now_ms());
	sqlite3_bind_int64(q, 4, c->id);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	if (strcmp(to, "aborted") == 0) {
		/* Updates already offered run their course; nothing new starts. */
		if (sqlite3_prepare_v2(db, "UPDATE rollout_devices SET state = 'aborted', reason = "
				       "'the rollout was aborted', updated = ? WHERE rollout = ? AND state IN "
				       "('pending', 'retry_wait')", -1, &q, NULL))
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		sqlite3_bind_int64(q, 1, tn_now_ms());
		sqlite3_bind_int64(q, 2, c->id);
		rc = sqlite3_step(q);
		sqlite3_finalize(q);
		if (rc != SQLITE_DONE)
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	}
	return 0;
}

int rollout_control(store *st, int64_t id, const char *action, tn_error *err)
{
	struct rollout__control c = { id, action };
	int rc = store_sync(st, rollout__control_tx, &c, err);
	if (rc == 0)
		log_info("rollout %lld: %s", (long long)id, action);
	return rc;
}

/* tests/unit/test_store.c -- the SQLite store (server/store.c) in a temporary
 * data dir: migrations, event ids across restarts and concurrent writers,
 * devices, their listing and paging, events paging, tokens, crash recovery,
 * and the bound on the write queue while the disk does not take writes. */
#define _GNU_SOURCE
#include <check.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "store.h"

static char root[64], dir[80]; /* root: made and removed by main, even when tests fail */
static store *st;

static void store_reopen(void)
{
	store_options opt = { 0 };
	tn_error err = { 0 };

	store_close(st);
	st = NULL;
	ck_assert_msg(store_open(&st, dir, &opt, &err) == 0, "store_open: %s", err.msg);
}

static void setup(void)
{
	snprintf(dir, sizeof dir, "%s/XXXXXX", root);
	ck_assert_ptr_nonnull(mkdtemp(dir));
	st = NULL;
	store_reopen();
}

static void teardown(void)
{
	store_close(st);
	st = NULL;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* One integer from a read connection. */
static int64_t query_int(const char *sql)
{
	sqlite3 *db = store_reader_get(st);
	sqlite3_stmt *q;
	int64_t v = -1;

	ck_assert_ptr_nonnull(db);
	ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
	if (sqlite3_step(q) == SQLITE_ROW)
		v = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	store_reader_put(st, db);
	return v;
}

static void create(uint64_t id, const char *name, const char *group)
{
	tn_error err = { 0 };
	ck_assert_msg(store_device_create(st, id, "hash", name, group, &err) == 0, "%s", err.msg);
}

static const char *str_member(json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

/* A member of store_device_get(id) as text: a string as it is, anything else
 * as compact JSON ("null", "true", {"jedec":...}); NULL for no device. */
static const char *dev_field(uint64_t id, const char *key)
{
	static char buf[256];
	json_t *d = store_device_get(st, id), *v = json_object_get(d, key);
	char *dump = v && !json_is_string(v) ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;

	if (!d)
		return NULL;
	snprintf(buf, sizeof buf, "%s", dump ? dump : v ? json_string_value(v) : "(absent)");
	free(dump);
	json_decref(d);
	return buf;
}

/* The events of one device, oldest first; after -1 is none (owned: json_decref). */
static json_t *events_of(uint64_t device, int64_t before, int64_t after, int limit)
{
	store_event_query q = { .device = device, .before = before, .after = after, .limit = limit };
	tn_error err = { 0 };
	json_t *out = store_events_list(st, &q, &err);
	ck_assert_msg(out != NULL, "store_events_list: %s", err.msg);
	return out;
}

/* --- schema ----------------------------------------------------------------- */

/* The newest migration's version (they are numbered 1, 2, 3...). */
static int latest_version(void)
{
	int v = 0;
	for (; store_migrations[v].version; v++)
		ck_assert_int_eq(store_migrations[v].version, v + 1);
	return v;
}

START_TEST(migrations_applied)
{
	ck_assert_int_ge(latest_version(), 1);
	ck_assert_int_eq(store_schema_version(st), latest_version());
	ck_assert_int_eq(query_int("PRAGMA user_version"), latest_version());
	ck_assert_int_eq(query_int("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
				   "name IN ('devices', 'events', 'tokens')"), 3);
	/* WAL, as the store promises readers beside the writer */
	ck_assert_int_eq(query_int("SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);

	/* Opening again applies nothing and loses nothing. */
	create(0x10, "keep", NULL);
	store_reopen();
	store_reopen();
	ck_assert_int_eq(store_schema_version(st), latest_version());
	ck_assert_int_eq(query_int("PRAGMA user_version"), latest_version());
	ck_assert_str_eq(dev_field(0x10, "name"), "keep");
}
END_TEST

/* --- event ids -------------------------------------------------------------- */

START_TEST(event_ids_monotonic)
{
	tn_error err = { 0 };
	int64_t last = 0, id;

	for (int i = 0; i < 20; i++) {
		id = store_event_append(st, (uint64_t)(i % 3), EV_DEVICE, "m");
		ck_assert_int_gt(id, last);
		last = id;
	}
	store_reopen(); /* commits the queue */
	ck_assert_int_eq(query_int("SELECT count(*) FROM events"), 20);
	ck_assert_int_gt(store_event_append(st, 1, EV_DEVICE, "after restart"), last);

	/* The device holding the newest ids goes, with its events: its ids stay
	 * used, across a restart (AUTOINCREMENT's sqlite_sequence) and in a run. */
	for (uint64_t dev = 0x77; dev <= 0x78; dev++) {
		create(dev, NULL, NULL);
		for (int i = 0; i < 5; i++)
			last = store_event_append(st, dev, EV_STATUS, "newest");
		ck_assert_int_eq(store_device_delete(st, dev, &err), 0);
		ck_assert_int_eq(query_int("SELECT max(id) FROM events"), last - 5);
		if (dev == 0x77)
			store_reopen();
		id = store_event_append(st, 1, EV_DEVICE, "next");
		ck_assert_int_gt(id, last);
		ck_assert_int_eq(store_flush(st), 0);
	}
}
END_TEST

/* Regression: store_event_append once read the id from the op after
 * unlocking, when the writer may already have freed it (use after free). */
START_TEST(append_id_after_commit)
{
	int64_t first = store_event_append(st, 9, EV_STATUS, "first");

	/* Right after a flush the writer is awake and takes each event at once. */
	for (int i = 1; i <= 300; i++) {
		ck_assert_int_eq(store_flush(st), 0);
		ck_assert_int_eq(store_event_append(st, 9, EV_STATUS, "again"), first + i);
	}
	ck_assert_int_eq(store_flush(st), 0);
	ck_assert_int_eq(query_int("SELECT count(*) FROM events WHERE device = 9"), 301);
}
END_TEST

#define WRITERS 4
#define PER_WRITER 500

struct writer_arg {
	uint64_t device;
	int64_t ids[PER_WRITER];
};

static void *writer_main(void *p)
{
	struct writer_arg *a = p;
	char msg[8];

	for (int i = 0; i < PER_WRITER; i++) {
		snprintf(msg, sizeof msg, "%d", i);
		a->ids[i] = store_event_append(st, a->device, EV_AGENT, msg);
	}
	return NULL;
}

START_TEST(concurrent_append)
{
	static struct writer_arg args[WRITERS];
	pthread_t th[WRITERS];

	for (int t = 0; t < WRITERS; t++) {
		args[t].device = 0x100 + (uint64_t)t;
		ck_assert_int_eq(pthread_create(&th[t], NULL, writer_main, &args[t]), 0);
	}
	for (int t = 0; t < WRITERS; t++)
		pthread_join(th[t], NULL);
	ck_assert_int_eq(store_flush(st), 0);
	ck_assert_int_eq(query_int("SELECT count(*) FROM events"), WRITERS * PER_WRITER);
	/* Per device, id order is the writer's order (msg i is its i-th event)... */
	ck_assert_int_eq(query_int("SELECT count(*) FROM (SELECT msg, row_number() OVER (PARTITION BY "
				   "device ORDER BY id) - 1 AS n FROM events) WHERE CAST(msg AS INT) != n"), 0);
	/* ...and append returned exactly the ids that were stored. */
	for (int t = 0; t < WRITERS; t++) {
		char sql[96];
		int64_t sum = 0;
		for (int i = 0; i < PER_WRITER; i++)
			sum += args[t].ids[i];
		snprintf(sql, sizeof sql, "SELECT sum(id) FROM events WHERE device = %d", 0x100 + t);
		ck_assert_int_eq(query_int(sql), sum);
		for (int i = 1; i < PER_WRITER; i++)
			ck_assert_int_gt(args[t].ids[i], args[t].ids[i - 1]);
	}
}
END_TEST

/* While another connection holds the write lock the writer cannot commit,
 * as on a full disk: the queue fills to its cap, log lines past it are
 * refused and counted, status lines still go in, a write someone would wait
 * for is refused at once; once the lock goes, everything queued is written
 * and the device's log says how many lines were dropped. */
static int write_queue_fn(sqlite3 *db, void *arg, tn_error *err)
{
	return 0;
}

/* A state machine's step (store_sync_state) while the queue is full. */
static int state_step_fn(sqlite3 *db, void *arg, tn_error *err)
{
	return store_event_insert_tx(st, db, 7, EV_STATUS, "firmware update completed: 1 -> 2") > 0 ? 0 : TN_EIO;
}

static void *state_step_thread(void *arg)
{
	tn_error err = { 0 };
	*(int *)arg = store_sync_state(st, state_step_fn, NULL, &err);
	return NULL;
}

START_TEST(write_queue_bounded)
{
	store_options opt = { .max_queue_bytes = 65536 };
	tn_error err = { 0 };
	sqlite3 *blocker;
	char path[128], line[1001];

	store_close(st);
	st = NULL;
	ck_assert_msg(store_open(&st, dir, &opt, &err) == 0, "store_open: %s", err.msg);
	snprintf(path, sizeof path, "%s/tender.db", dir);
	ck_assert_int_eq(sqlite3_open(path, &blocker), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(blocker, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);

	int64_t metric0 = metrics_error_count(ERR_STORE_QUEUE_FULL);
	memset(line, 'x', sizeof line - 1);
	line[sizeof line - 1] = '\0';
	int accepted = 0, refused = 0;
	for (int i = 0; i < 200; i++) {
		int64_t rc = store_event_append(st, 7, i % 2 ? EV_DEVICE : EV_AGENT, line);
		if (rc > 0)
			accepted++;
		else {
			ck_assert_int_eq(rc, TN_ETOOBIG);
			refused++;
		}
	}
	ck_assert_int_gt(accepted, 30);
	ck_assert_int_lt(accepted, 66); /* 64 KiB of 1 KB lines, each with its op */
	ck_assert_int_eq(refused, 200 - accepted);
	ck_assert_int_eq(metrics_error_count(ERR_STORE_QUEUE_FULL) - metric0, refused);
	ck_assert_int_le(metrics_get(M_STORE_QUEUE_BYTES), 65536);
	/* Status lines are never refused; a synchronous write is, with why. */
	ck_assert_int_gt(store_event_append(st, 7, EV_STATUS, "Device disconnected"), 0);
	ck_assert_int_eq(store_sync(st, write_queue_fn, NULL, &err), TN_ESTATE);
	ck_assert_msg(strstr(err.msg, "try again") && strstr(err.msg, "write queue is full"), "%s", err.msg);
	/* A state machine's step is not refused: it waits its turn. */
	pthread_t step;
	int step_rc = -1;
	ck_assert_int_eq(pthread_create(&step, NULL, state_step_thread, &step_rc), 0);
	usleep(300 * 1000); /* let it queue while the queue is full (it is, until the commit) */

	ck_assert_int_eq(sqlite3_exec(blocker, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(blocker);
	pthread_join(step, NULL);
	ck_assert_int_eq(step_rc, 0);
	ck_assert_int_eq(query_int("SELECT count(*) FROM events WHERE device = 7 AND msg = "
				   "'firmware update completed: 1 -> 2'"), 1);
	char want[160];
	snprintf(want, sizeof want, "SELECT count(*) FROM events WHERE device = 7 AND type = 0 AND msg = "
		 "'%d log lines dropped: the store''s write queue was full (the disk could not keep up)'", refused);
	for (int tries = 0; query_int(want) != 1; tries++) {
		ck_assert_msg(tries < 200, "no drop report");
		ck_assert_int_eq(store_flush(st), 0);
		usleep(50 * 1000);
	}
	ck_assert_int_eq(query_int("SELECT count(*) FROM events WHERE device = 7 AND type IN (1, 2)"), accepted);
	ck_assert_int_eq(query_int("SELECT count(*) FROM events WHERE device = 7 AND type = 0"), 3);
	ck_assert_int_eq(metrics_get(M_STORE_QUEUE_BYTES), 0);
	/* Drained: lines and synchronous writes are taken again. */
	ck_assert_int_gt(store_event_append(st, 7, EV_DEVICE, line), 0);
	ck_assert_int_eq(store_sync(st, write_queue_fn, NULL, &err), 0);
}
END_TEST

/* --- devices ---------------------------------------------------------------- */

START_TEST(device_crud)
{
	const uint64_t dev = UINT64_C(0x30000C2A690C77C5);
	tn_error err = { 0 };

	ck_assert_int_eq(store_device_create(st, dev, "h1", "lamp", "a", &err), 0);
	ck_assert_int_eq(store_device_create(st, dev, "h2", NULL, NULL, &err), TN_EEXIST);
	ck_assert_str_eq(dev_field(dev, "id"), "30000c2a690c77c5");
	ck_assert_str_eq(dev_field(dev, "name"), "lamp");
	ck_assert_str_eq(dev_field(dev, "group"), "a");
	ck_assert_str_eq(dev_field(dev, "hw"), "null");
	ck_assert_str_eq(dev_field(dev, "flash"), "null");
	ck_assert_str_eq(dev_field(dev, "online"), "false");
	ck_assert_str_eq(dev_field(dev, "last_seen"), "null");
	ck_assert_int_eq((int)strlen(dev_field(dev, "created")), 24);
	ck_assert_str_eq(dev_field(dev, "secret_hash"), "(absent)"); /* never shown */
	ck_assert_ptr_null(dev_field(0x99, "id"));

	/* NULL leaves a field, json null clears it. */
	json_t *name = json_string("desk lamp"), *null = json_null();
	ck_assert_int_eq(store_device_update(st, dev, name, NULL, &err), 0);
	ck_assert_str_eq(dev_field(dev, "name"), "desk lamp");
	ck_assert_str_eq(dev_field(dev, "group"), "a");
	ck_assert_int_eq(store_device_update(st, dev, NULL, null, &err), 0);
	ck_assert_str_eq(dev_field(dev, "name"), "desk lamp");
	ck_assert_str_eq(dev_field(dev, "group"), "null");
	ck_assert_int_eq(store_device_update(st, 0x99, name, NULL, &err), TN_ENOTFOUND);
	json_decref(name);
	json_decref(null);

	store_event_append(st, dev, EV_STATUS, "Device connected");
	ck_assert_int_eq(store_device_delete(st, dev, &err), 0);
	ck_assert_ptr_null(store_device_get(st, dev));
	ck_assert_int_eq(query_int("SELECT count(*) FROM events"), 0); /* its events went too */
	ck_assert_int_eq(store_device_delete(st, dev, &err), TN_ENOTFOUND);
	ck_assert_int_eq(err.code, TN_ENOTFOUND);
	ck_assert_int_eq(store_device_create(st, dev, "h3", NULL, NULL, &err), 0); /* free again */
}
END_TEST

/* The ids listed by a filter, less 0x1000, as "0,3,6" (static buffer). */
static const char *list_str(int online, const char *hw, const char *group)
{
	static char buf[256];
	store_device_filter f = { .online = online, .hw = hw, .group = group, .limit = 1000 };
	tn_error err = { 0 };
	json_t *out = store_device_list(st, &f, &err), *devs = json_object_get(out, "devices");
	size_t n = 0;
	uint64_t id;

	ck_assert_msg(out != NULL, "store_device_list: %s", err.msg);
	buf[0] = '\0';
	for (size_t i = 0; i < json_array_size(devs); i++) {
		ck_assert_int_eq(tn_device_id_parse(str_member(json_array_get(devs, i), "id"), &id), 0);
		n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%d", i ? "," : "", (int)(id - 0x1000));
	}
	ck_assert(json_is_null(json_object_get(out, "next")));
	json_decref(out);
	return buf;
}

/* 30 devices: group a for even ids, b for odd; hw imp003 for ids < 10,
 * imp004 for 10..19, none above; online when id % 3 == 0. */
static void make_fleet(void)
{
	for (uint64_t id = 0; id < 30; id++) {
		create(0x1000 + id, NULL, id % 2 ? "b" : "a");
		if (id < 20) {
			store_hello h = { .hw = id < 10 ? "imp003" : "imp004" };
			ck_assert_int_eq(store_device_online(st, 0x1000 + id, &h, 1000), 0);
			if (id % 3)
				ck_assert_int_eq(store_device_offline(st, 0x1000 + id, 2000), 0);
		} else if (id % 3 == 0) {
			ck_assert_int_eq(store_device_online(st, 0x1000 + id, NULL, 1000), 0);
		}
	}
	ck_assert_int_eq(store_flush(st), 0);
}

START_TEST(device_list_filters)
{
	make_fleet();
	ck_assert_str_eq(list_str(-1, NULL, NULL), "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,"
			 "20,21,22,23,24,25,26,27,28,29");
	ck_assert_str_eq(list_str(1, NULL, NULL), "0,3,6,9,12,15,18,21,24,27");
	ck_assert_str_eq(list_str(0, NULL, "b"), "1,5,7,11,13,17,19,23,25,29");
	ck_assert_str_eq(list_str(-1, "imp003", NULL), "0,1,2,3,4,5,6,7,8,9");
	ck_assert_str_eq(list_str(-1, "imp005", NULL), "");
	ck_assert_str_eq(list_str(-1, NULL, "c"), "");
	ck_assert_str_eq(list_str(1, "imp003", "a"), "0,6");
	ck_assert_str_eq(list_str(1, "imp004", "b"), "15");
	ck_assert_str_eq(list_str(0, "imp004", "a"), "10,14,16");
}
END_TEST

START_TEST(device_list_paging)
{
	make_fleet();
	for (int limit = 1; limit <= 31; limit++) {
		store_device_filter f = { .online = -1, .limit = limit };
		int seen = 0, pages = 0;
		do {
			json_t *out = store_device_list(st, &f, NULL), *devs = json_object_get(out, "devices");
			ck_assert_ptr_nonnull(out);
			ck_assert_int_le((int)json_array_size(devs), limit);
			for (size_t i = 0; i < json_array_size(devs); i++, seen++) {
				uint64_t id;
				ck_assert_int_eq(tn_device_id_parse(str_member(json_array_get(devs, i), "id"), &id), 0);
				ck_assert_uint_eq(id, 0x1000 + (uint64_t)seen); /* in order, none twice */
			}
			pages++;
			json_t *next = json_object_get(out, "next");
			if ((f.has_after = !json_is_null(next))) {
				ck_assert_int_eq((int)json_array_size(devs), limit); /* only full pages go on */
				ck_assert_int_eq(tn_device_id_parse(json_string_value(next), &f.after), 0);
			}
			json_decref(out);
		} while (f.has_after);
		ck_assert_int_eq(seen, 30);
		ck_assert_int_eq(pages, (30 + limit - 1) / limit); /* no empty last page */
	}
}
END_TEST

START_TEST(online_offline)
{
	store_hello h = { .hw = "imp003", .fw = "36.10", .sfdp = "U0ZEUA==", .has_jedec = 1,
			  .jedec = 0x012018, .flash_size = 16777216 };

	create(0x42, NULL, NULL);
	ck_assert_int_eq(store_device_online(st, 0x42, &h, INT64_C(1473347775000)), 0);
	ck_assert_int_eq(store_flush(st), 0);
	ck_assert_str_eq(dev_field(0x42, "online"), "true");
	ck_assert_str_eq(dev_field(0x42, "hw"), "imp003");
	ck_assert_str_eq(dev_field(0x42, "fw"), "36.10");
	ck_assert_str_eq(dev_field(0x42, "flash"), "{\"jedec\":\"012018\",\"size\":16777216}");
	ck_assert_str_eq(dev_field(0x42, "connected_at"), "2016-09-08T15:16:15.000Z");
	ck_assert_str_eq(dev_field(0x42, "last_seen"), "2016-09-08T15:16:15.000Z");

	ck_assert_int_eq(store_device_offline(st, 0x42, INT64_C(1473347815000)), 0);
	ck_assert_int_eq(store_flush(st), 0);
	ck_assert_str_eq(dev_field(0x42, "online"), "false");
	ck_assert_str_eq(dev_field(0x42, "last_seen"), "2016-09-08T15:16:55.000Z");

	/* A hello without hw/fw keeps the last known ones. */
	store_hello bare = { 0 };
	ck_assert_int_eq(store_device_online(st, 0x42, &bare, INT64_C(1473347900000)), 0);
	ck_assert_int_eq(store_flush(st), 0);
	ck_assert_str_eq(dev_field(0x42, "online"), "true");
	ck_assert_str_eq(dev_field(0x42, "hw"), "imp003");
	ck_assert_str_eq(dev_field(0x42, "fw"), "36.10");
}
END_TEST

START_TEST(recover_online)
{
	create(0x50, NULL, NULL);
	create(0x51, NULL, NULL);
	ck_assert_int_eq(store_device_online(st, 0x50, NULL, 5000), 0);
	store_event_append(st, 0x50, EV_STATUS, "Device connected");
	store_reopen(); /* as after a crash: 0x50 was never seen to leave */

	ck_assert_str_eq(dev_field(0x50, "online"), "false");
	ck_assert_str_eq(dev_field(0x50, "last_seen"), "1970-01-01T00:00:05.000Z");
	/* one status event after the last one it had, none for the offline device */
	ck_assert_int_eq(query_int("SELECT max(id) FROM events WHERE device = 80"),
			 query_int("SELECT id FROM events WHERE device = 80 AND type = 0 AND "
				   "msg = 'Device disconnected'"));
	ck_assert_int_eq(query_int("SELECT count(*) FROM events WHERE device = 80"), 2);
	ck_assert_int_eq(query_int("SELECT count(*) FROM events WHERE device = 81"), 0);
	/* and the recovery's event id is not handed out again */
	int64_t recovered = query_int("SELECT max(id) FROM events");
	ck_assert_int_gt(store_event_append(st, 0x50, EV_STATUS, "x"), recovered);
	store_reopen(); /* a second open finds nothing to recover */
	ck_assert_int_eq(query_int("SELECT count(*) FROM events WHERE msg = 'Device disconnected'"), 1);
}
END_TEST

/* --- events paging ---------------------------------------------------------- */

/* A page of device 0xd's events by their messages (the index of each
 * event), then the cursor, which must be one of the page's events:
 * "7,8,9 next_before=7". */
static const char *page(int64_t before, int64_t after, int limit)
{
	static char buf[128];
	json_t *out = events_of(0xd, before, after, limit), *evs = json_object_get(out, "events");
	const char *key = json_object_get(out, "next_after") ? "next_after" : "next_before";
	json_t *next = json_object_get(out, key);
	const char *cursor = json_is_null(next) ? "null" : "?";
	size_t n = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < json_array_size(evs); i++) {
		json_t *ev = json_array_get(evs, i);
		n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", i ? "," : "", str_member(ev, "msg"));
		if (json_equal(json_object_get(ev, "id"), next))
			cursor = str_member(ev, "msg");
	}
	snprintf(buf + n, sizeof buf - n, " %s=%s", key, cursor);
	json_decref(out);
	return buf;
}

START_TEST(events_paging)
{
	int64_t ids[10];

	char sql[80];

	for (int i = 0; i < 10; i++) {
		snprintf(sql, sizeof sql, "%d", i);
		store_event_append(st, 0xd, EV_DEVICE, sql);
		store_event_append(st, 0xe, EV_DEVICE, "other device, interleaved");
	}
	ck_assert_int_eq(store_flush(st), 0);
	for (int i = 0; i < 10; i++) { /* ids from the database, not append's return */
		snprintf(sql, sizeof sql, "SELECT id FROM events WHERE device = 13 AND msg = '%d'", i);
		ids[i] = query_int(sql);
	}

	/* Backwards from the end, 3 at a time, each page oldest first. */
	ck_assert_str_eq(page(0, -1, 3), "7,8,9 next_before=7");
	ck_assert_str_eq(page(ids[7], -1, 3), "4,5,6 next_before=4");
	ck_assert_str_eq(page(ids[4], -1, 3), "1,2,3 next_before=1");
	ck_assert_str_eq(page(ids[1], -1, 3), "0 next_before=null");
	ck_assert_str_eq(page(0, -1, 10), "0,1,2,3,4,5,6,7,8,9 next_before=null");
	/* Forwards after an id, oldest first; after 0 is from the start. */
	ck_assert_str_eq(page(0, 0, 2), "0,1 next_after=1");
	ck_assert_str_eq(page(0, ids[2], 4), "3,4,5,6 next_after=6");
	ck_assert_str_eq(page(0, ids[6], 4), "7,8,9 next_after=null");
	ck_assert_str_eq(page(0, ids[9], 4), " next_after=null");
	/* Both bounds: strictly between. */
	ck_assert_str_eq(page(ids[5], ids[2], 10), "3,4 next_after=null");
}
END_TEST

/* --- tokens and secrets ----------------------------------------------------- */

START_TEST(tokens)
{
	tn_error err = { 0 };
	char role[32];

	ck_assert_int_eq(store_token_count(st), 0);
	ck_assert_int_eq(store_token_lookup(st, "aaaa", role), TN_ENOTFOUND);
	ck_assert_int_eq(store_token_add(st, "aaaa", "admin", "first", &err), 0);
	ck_assert_int_eq(store_token_add(st, "bbbb", "reader", NULL, &err), 0);
	ck_assert_int_eq(store_token_count(st), 2);
	ck_assert_int_eq(store_token_lookup(st, "aaaa", role), 0);
	ck_assert_str_eq(role, "admin");
	ck_assert_int_eq(store_token_lookup(st, "bbbb", role), 0);
	ck_assert_str_eq(role, "reader");
	ck_assert_int_eq(store_token_lookup(st, "AAAA", role), TN_ENOTFOUND);
	store_reopen();
	ck_assert_int_eq(store_token_count(st), 2);
}
END_TEST

/* Appends "id=hash;" to the string at arg. */
static void collect(void *arg, uint64_t id, const char *hash)
{
	char *buf = arg;
	size_t n = strlen(buf);
	snprintf(buf + n, 256 - n, "%llx=%s;", (unsigned long long)id, hash);
}

START_TEST(foreach_secret)
{
	tn_error err = { 0 };
	char seen[256] = ";";

	ck_assert_int_eq(store_device_foreach_secret(st, collect, seen, &err), 0);
	ck_assert_str_eq(seen, ";");
	ck_assert_int_eq(store_device_create(st, 3, "h3", NULL, NULL, &err), 0);
	ck_assert_int_eq(store_device_create(st, UINT64_MAX, "hmax", NULL, NULL, &err), 0);
	ck_assert_int_eq(store_device_create(st, 1, "h1", NULL, NULL, &err), 0);
	ck_assert_int_eq(store_device_foreach_secret(st, collect, seen, &err), 0);
	ck_assert_int_eq((int)strlen(seen), (int)strlen(";3=h3;ffffffffffffffff=hmax;1=h1;"));
	ck_assert_ptr_nonnull(strstr(seen, ";3=h3;"));
	ck_assert_ptr_nonnull(strstr(seen, ";ffffffffffffffff=hmax;"));
	ck_assert_ptr_nonnull(strstr(seen, ";1=h1;"));
}
END_TEST

/* Everything above at once, then SQLite's own consistency check. */
START_TEST(integrity_after_workload)
{
	tn_error err = { 0 };

	make_fleet();
	for (int i = 0; i < 300; i++)
		store_event_append(st, 0x1000 + (uint64_t)(i % 30), (event_type)(i % EV__COUNT), "w");
	for (uint64_t id = 0; id < 30; id += 4)
		ck_assert_int_eq(store_device_delete(st, 0x1000 + id, &err), 0);
	ck_assert_int_eq(store_token_add(st, "cccc", "admin", NULL, &err), 0);
	store_reopen();
	/* the first row says "ok" only when nothing is wrong */
	ck_assert_int_eq(query_int("SELECT integrity_check = 'ok' FROM pragma_integrity_check"), 1);
	ck_assert_int_eq(query_int("SELECT count(*) FROM devices"), 22);
	/* 8 devices deleted with their 10 events each; the 7 left online got a
	 * "Device disconnected" on reopen */
	ck_assert_int_eq(query_int("SELECT count(*) FROM events"), 300 - 8 * 10 + 7);
}
END_TEST

static long long file_size(const char *name)
{
	char path[160];
	struct stat sb;
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
}

/* The WAL is copied back into the database while writes go on (by the
 * checkpointer thread), and it stays bounded however fast they come. */
START_TEST(wal_checkpointed_and_bounded)
{
	char msg[2001];
	long long wal_max = 0;

	memset(msg, 'x', sizeof msg - 1);
	msg[sizeof msg - 1] = '\0';
	for (int burst = 0; burst < 20; burst++) {
		for (int i = 0; i < 1000; i++)
			ck_assert_int_gt(store_event_append(st, 0x2000 + (uint64_t)(i % 50), EV_DEVICE, msg), 0);
		ck_assert_int_eq(store_flush(st), 0);
		long long wal = file_size("tender.db-wal");
		if (wal > wal_max)
			wal_max = wal;
	}
	/* 20,000 lines of 2,000 bytes: about 40 MB of pages went through the
	 * WAL, which never held more than the restart mark (16 MiB) and a batch. */
	ck_assert_msg(wal_max < 24LL << 20, "the WAL grew to %lld bytes", wal_max);
	ck_assert_msg(file_size("tender.db") > 20LL << 20, "the database holds %lld bytes before close",
		      file_size("tender.db"));
	ck_assert_int_eq(query_int("SELECT count(*) FROM events"), 20000);
}
END_TEST

static int audit_rows_fn(sqlite3 *db, void *arg, tn_error *err)
{
	int64_t now = *(int64_t *)arg;
	for (int i = 0; i < 60; i++) {
		char sql[200];
		/* 10 refusals from long ago, then 20 changes and 20 refusals now,
		 * interleaved */
		snprintf(sql, sizeof sql, "INSERT INTO audit (ts, actor, method, path, status) VALUES "
			 "(%lld, 'anonymous', 'POST', '/v1/devices', %d)",
			 (long long)(i < 10 ? now - 3600 * 1000 : now), i < 10 || i % 2 ? 401 : 201);
		if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
			return TN_EIO;
	}
	return 0;
}

/* The audit trail is trimmed by the writer's retention rounds, whatever
 * else is configured: refused requests beyond a tenth of its cap first
 * (so they cannot push the changes out), then by the events' age and the
 * cap. */
START_TEST(audit_trail_is_trimmed)
{
	store_options opt = { .retention_age_ms = 60 * 1000, .audit_max_rows = 30 };
	tn_error err = { 0 };
	int64_t now = tn_now_ms();

	store_close(st);
	st = NULL;
	ck_assert_msg(store_open(&st, dir, &opt, &err) == 0, "store_open: %s", err.msg);
	ck_assert_int_eq(store_sync(st, audit_rows_fn, &now, &err), 0);
	for (int tries = 0; query_int("SELECT count(*) FROM audit") != 28; tries++) {
		ck_assert_msg(tries < 150, "%lld audit rows left", (long long)query_int("SELECT count(*) FROM audit"));
		usleep(100 * 1000);
	}
	/* Every change kept, and the three newest refusals. */
	ck_assert_int_eq(query_int("SELECT count(*) FROM audit WHERE status = 201"), 25);
	ck_assert_int_eq(query_int("SELECT count(*) FROM audit WHERE status = 401"), 3);
	ck_assert_int_eq(query_int("SELECT min(id) FROM audit WHERE status = 401"), 56);
}
END_TEST

static int delete_device_events_fn(sqlite3 *db, void *arg, tn_error *err)
{
	return sqlite3_exec(db, "DELETE FROM events WHERE device = 0xA1", NULL, NULL, NULL) == SQLITE_OK ? 0 : TN_EIO;
}

static void wait_count(const char *sql, int64_t want)
{
	for (int tries = 0; query_int(sql) != want; tries++) {
		ck_assert_msg(tries < 150, "%s: %lld, want %lld", sql, (long long)query_int(sql), (long long)want);
		usleep(100 * 1000);
	}
}

/* --retention-count keeps each device's newest N, by counts kept up to
 * date as events are written (no scan of every event per round); a count
 * that is wrong (rows deleted behind its back) never deletes a kept row. */
START_TEST(retention_by_count_per_device)
{
	store_options opt = { .retention_count = 50 };
	tn_error err = { 0 };

	store_close(st);
	st = NULL;
	ck_assert_msg(store_open(&st, dir, &opt, &err) == 0, "store_open: %s", err.msg);
	int64_t last = 0;
	for (int i = 0; i < 200; i++)
		last = store_event_append(st, 0xA1, EV_DEVICE, "a");
	for (int i = 0; i < 30; i++)
		store_event_append(st, 0xB2, EV_DEVICE, "b");
	ck_assert_int_eq(store_flush(st), 0);
	wait_count("SELECT count(*) FROM events WHERE device = 0xA1", 50);
	ck_assert_int_eq(query_int("SELECT count(*) FROM events WHERE device = 0xB2"), 30);
	char sql[120];
	snprintf(sql, sizeof sql, "SELECT max(id) FROM events WHERE device = 0xA1");
	ck_assert_int_eq(query_int(sql), last);
	/* Its rows go behind the count's back: the next line must stay. */
	ck_assert_int_eq(store_sync(st, delete_device_events_fn, NULL, &err), 0);
	last = store_event_append(st, 0xA1, EV_DEVICE, "after");
	ck_assert_int_eq(store_flush(st), 0);
	usleep(1500 * 1000); /* a retention round or more */
	ck_assert_int_eq(query_int("SELECT count(*) FROM events WHERE device = 0xA1"), 1);
	/* and counting starts over right: 60 more leave the newest 50 */
	for (int i = 0; i < 60; i++)
		last = store_event_append(st, 0xA1, EV_DEVICE, "c");
	ck_assert_int_eq(store_flush(st), 0);
	wait_count("SELECT count(*) FROM events WHERE device = 0xA1", 50);
	ck_assert_int_eq(query_int(sql), last);
}
END_TEST

static TCase *add_tcase(Suite *s, const char *name)
{
	TCase *tc = tcase_create(name);
	tcase_add_checked_fixture(tc, setup, teardown);
	suite_add_tcase(s, tc);
	return tc;
}

static Suite *store_suite(void)
{
	Suite *s = suite_create("store");
	TCase *tc = add_tcase(s, "schema");

	tcase_add_test(tc, migrations_applied);
	tcase_add_test(tc, integrity_after_workload);
	tc = add_tcase(s, "events");
	tcase_set_timeout(tc, 30); /* retention rounds come every 5 s */
	tcase_add_test(tc, append_id_after_commit);
	tcase_add_test(tc, event_ids_monotonic);
	tcase_add_test(tc, concurrent_append);
	tcase_add_test(tc, events_paging);
	tcase_add_test(tc, write_queue_bounded);
	tcase_add_test(tc, wal_checkpointed_and_bounded);
	tcase_add_test(tc, audit_trail_is_trimmed);
	tcase_add_test(tc, retention_by_count_per_device);
	tc = add_tcase(s, "devices");
	tcase_add_test(tc, device_crud);
	tcase_add_test(tc, device_list_filters);
	tcase_add_test(tc, device_list_paging);
	tcase_add_test(tc, online_offline);
	tcase_add_test(tc, recover_online);
	tcase_add_test(tc, foreach_secret);
	tcase_add_test(tc, tokens);
	return s;
}

int main(void)
{
	log_level = LOG_ERR; /* no "applied migration" chatter */
	snprintf(root, sizeof root, "/tmp/tender-test-store-XXXXXX");
	if (!mkdtemp(root))
		return 2;
	SRunner *sr = srunner_create(store_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return failed ? 1 : 0;
}

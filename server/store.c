/* server/store.c -- persistence in SQLite (WAL), see store.h.
 *
 * Writes: every producer appends an op to one queue (a mutex, a condition
 * variable); the writer thread takes the whole queue, applies it in one
 * BEGIN IMMEDIATE ... COMMIT of at most batch_max events, and only then wakes
 * whoever waits for a sync op.  A failed commit is rolled back and retried,
 * so an event the API has shown is an event on disk, and nothing queued is
 * dropped while the disk is only briefly unhappy.
 *
 * The queue is bounded (opt.max_queue_bytes): past it, device and agent log
 * lines are refused (counted per device, and said in one status line each
 * once the queue has drained to half), and writes someone waits for
 * (store_sync: API calls, server.save) fail at once with TN_ESTATE.  State
 * changes, status lines and state machines' steps (store_sync_state: the
 * update scheduler) are always queued: they are few, bounded by
 * connections, and someone relies on them.
 *
 * Reads: a pool of read connections; WAL lets them run beside the writer.
 *
 * Checkpoints: a checkpointer thread with its own connection copies the WAL
 * back into the database once it holds STORE_CKPT_PAGES, beside the writer
 * (it was a tenth of the writer's time when SQLite did it in the commit).
 * The WAL starts over from its beginning only when a write begins while
 * nothing is left to copy, which a busy writer racing the checkpointer
 * rarely sees: at STORE_CKPT_RESTART_PAGES the writer makes it so itself
 * (a RESTART checkpoint), so the WAL stays bounded under any load. */
#define _GNU_SOURCE
#include "store.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "bus.h"
#include "idmap.h"
#include "log.h"
#include "logfmt.h"
#include "metrics.h"

enum op_kind { OP_EVENT, OP_ONLINE, OP_OFFLINE, OP_SYNC };

struct store_op {
	struct store_op *next;
	enum op_kind kind;
	int64_t id, ts;
	uint64_t device;
	int type;
	char *msg;                  /* event (owned) */
	char *hw, *fw, *sfdp;       /* online (owned) */
	int has_jedec;
	uint32_t jedec;
	int64_t flash_size;
	size_t bytes;               /* counted in queued_bytes until freed */
	store_sync_fn fn;           /* sync: the op lives on the waiter's stack */
	void *arg;
	tn_error *err;
	int result, done;
};

#define STORE_READERS_MAX 64
#define STORE_CKPT_PAGES 1000        /* SQLite's own auto-checkpoint threshold */
#define STORE_CKPT_RESTART_PAGES 4000 /* 16 MiB of WAL with 4 KiB pages */
#define STORE_BUSY_MS 5000
#define STORE_AUDIT_MAX_ROWS 1000000   /* default of opt.audit_max_rows */
#define STORE_AUDIT_REFUSALS_SHARE 10   /* refused requests keep at most a tenth of it */
#define STORE_AUDIT_TRIM_MS 60000       /* the audit trail is trimmed once a minute */
#define STORE_RESTART_BUSY_MS 100        /* what the writer waits for readers to restart the WAL */

struct store {
	char *path;
	sqlite3 *wdb;
	sqlite3_stmt *ins_event, *set_online, *set_offline;
	store_options opt;
	int schema_version;

	pthread_t writer;
	int writer_started;
	pthread_mutex_t lock;
	pthread_cond_t wake;        /* the writer waits for work */
	pthread_cond_t done;        /* sync callers wait for their commit */
	struct store_op *head, *tail;
	int64_t next_event_id;
	int stopping;

	pthread_mutex_t rlock;
	sqlite3 *readers[STORE_READERS_MAX];
	int nreaders;

	pthread_t ckpt;             /* the checkpointer thread */
	int ckpt_started;
	sqlite3 *cdb;               /* checkpointer thread only */
	pthread_cond_t ckpt_wake;   /* under lock */
	int ckpt_wanted;            /* under lock */
	pthread_mutex_t ckpt_run;   /* held while a checkpoint runs: SQLite lets one at a time */
	int restart_pages;          /* writer thread: WAL pages at which it restarts the WAL */

	struct bus *bus;
	int64_t next_retention;     /* writer thread: when retention runs next (mono ms) */
	int64_t next_audit_trim;    /* writer thread: when the audit trail is trimmed next */
	/* events written inside sync ops of the current transaction (writer
	 * thread only), published once it commits */
	tn_event *tx_events;
	size_t ntx_events, cap_tx_events;
	char write_err[256];        /* writer thread: why the last commit failed */
	int queued_syncs;           /* sync ops with a fn in the queue (under lock) */
	/* Under lock: bytes of the ops queued or being committed; while `full`
	 * (from the first refused line until the queue drains to half) log lines
	 * are refused, counted per device in `drops` (id -> count). */
	size_t queued_bytes;
	int full;
	idmap drops;
	/* Writer thread only, for --retention-count: events per device as far
	 * as known (count + 1; absent: not known, counted when needed) and the
	 * devices written since the last retention round.  A hint only: what
	 * is deleted is decided by an exact query. */
	idmap counts, dirty;
};

/* --- opening ---------------------------------------------------------------- */

static int store__exec(sqlite3 *db, const char *sql, tn_error *err)
{
	char *msg = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		tn_err(err, TN_EIO, "sqlite: %s", msg ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		return TN_EIO;
	}
	return 0;
}

static int store__open_conn(const char *path, sqlite3 **out, tn_error *err)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
				 SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		tn_err(err, TN_EIO, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		sqlite3_close(db);
		return TN_EIO;
	}
	sqlite3_busy_timeout(db, STORE_BUSY_MS);
	sqlite3_extended_result_codes(db, 1);
	*out = db;
	return 0;
}

static int store__query_int(sqlite3 *db, const char *sql, int64_t *out)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return TN_EIO;
	int rc = sqlite3_step(st);
	*out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : TN_EIO;
}

static int store__migrate(store *s, tn_error *err)
{
	int64_t version;
	int expected = 1, latest = 0;

	if (store__query_int(s->wdb, "PRAGMA user_version", &version))
		return tn_err(err, TN_EIO, "cannot read the schema version: %s", sqlite3_errmsg(s->wdb));
	for (const struct store_migration *m = store_migrations; m->version; m++, expected++) {
		if (m->version != expected)
			return tn_err(err, TN_EINVAL, "schema %s: migrations must be numbered 1, 2, 3...",
				      m->name);
		latest = m->version;
	}
	if (version > latest)
		return tn_err(err, TN_EINVAL, "the database has schema version %lld, newer than this "
			      "tenderd knows (%d): use a newer tenderd", (long long)version, latest);
	for (const struct store_migration *m = store_migrations; m->version; m++) {
		if (m->version <= version)
			continue;
		char pragma[64];
		snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", m->version);
		if (store__exec(s->wdb, "BEGIN IMMEDIATE", err))
			return TN_EIO;
		if (store__exec(s->wdb, m->sql, err) || store__exec(s->wdb, pragma, err)) {
			char detail[sizeof err->msg];
			snprintf(detail, sizeof detail, "%s", err ? err->msg : "");
			store__exec(s->wdb, "ROLLBACK", NULL);
			return tn_err(err, TN_EIO, "migration %s failed: %s", m->name, detail);
		}
		if (store__exec(s->wdb, "COMMIT", err))
			return TN_EIO;
		log_info("store: applied migration %s", m->name);
	}
	s->schema_version = latest;
	return 0;
}

/* Devices registered before agents existed get their agent id now. */
static int store__backfill_agent_ids(store *s, tn_error *err)
{
	sqlite3_stmt *sel = NULL, *upd = NULL;
	int rc = TN_EIO;
	char agent_id[64];

	if (store__exec(s->wdb, "BEGIN IMMEDIATE", err))
		return TN_EIO;
	if (sqlite3_prepare_v2(s->wdb, "SELECT id FROM devices WHERE agent_id IS NULL", -1, &sel, NULL) ||
	    sqlite3_prepare_v2(s->wdb, "UPDATE devices SET agent_id = ? WHERE id = ?", -1, &upd, NULL))
		goto out;
	while (sqlite3_step(sel) == SQLITE_ROW) {
		if (auth_random_secret("ag_", agent_id))
			goto out;
		sqlite3_bind_text(upd, 1, agent_id, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(upd, 2, (const char *)sqlite3_column_text(sel, 0), -1, SQLITE_TRANSIENT);
		if (sqlite3_step(upd) != SQLITE_DONE)
			goto out;
		sqlite3_reset(upd);
	}
	rc = 0;
out:
	sqlite3_finalize(sel);
	sqlite3_finalize(upd);
	if (rc == 0 && store__exec(s->wdb, "COMMIT", err) == 0)
		return 0;
	store__exec(s->wdb, "ROLLBACK", NULL);
	return tn_err(err, TN_EIO, "cannot assign agent ids: %s", sqlite3_errmsg(s->wdb));
}

/* After a crash, devices still marked online were not seen to leave. */
static int store__recover_online(store *s, tn_error *err)
{
	sqlite3_stmt *sel = NULL, *ins = NULL;
	int n = 0, rc = TN_EIO;
	int64_t now = tn_now_ms();

	if (store__exec(s->wdb, "BEGIN IMMEDIATE", err))
		return TN_EIO;
	if (sqlite3_prepare_v2(s->wdb, "SELECT id FROM devices WHERE online = 1", -1, &sel, NULL) ||
	    sqlite3_prepare_v2(s->wdb, "INSERT INTO events (device, ts, type, msg) VALUES (?, ?, 0, "
			       "'Device disconnected')", -1, &ins, NULL))
		goto out;
	while (sqlite3_step(sel) == SQLITE_ROW) {
		uint64_t id;
		if (tn_device_id_parse((const char *)sqlite3_column_text(sel, 0), &id))
			continue;
		sqlite3_bind_int64(ins, 1, (int64_t)id);
		sqlite3_bind_int64(ins, 2, now);
		if (sqlite3_step(ins) != SQLITE_DONE)
			goto out;
		sqlite3_reset(ins);
		n++;
	}
	if (store__exec(s->wdb, "UPDATE devices SET online = 0, last_seen = coalesce(last_seen, "
			"connected_at) WHERE online = 1", err))
		goto out;
	rc = 0;
out:
	sqlite3_finalize(sel);
	sqlite3_finalize(ins);
	if (rc == 0 && store__exec(s->wdb, "COMMIT", err) == 0) {
		if (n)
			log_info("store: %d devices left online by the previous run marked offline", n);
		return 0;
	}
	store__exec(s->wdb, "ROLLBACK", NULL);
	return tn_err(err, TN_EIO, "cannot mark devices offline: %s", sqlite3_errmsg(s->wdb));
}

static void *store__writer_main(void *arg);
static void *store__ckpt_main(void *arg);

/* SQLite calls this after each commit on the write connection (in place of
 * its auto-checkpoint). */
static int store__wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
	store *s = arg;
	if (pages >= s->restart_pages) {
		/* After the checkpointer's run, if any (a second checkpoint would
		 * only get SQLITE_BUSY).  Readers of old frames are waited for,
		 * briefly: a long read (a big history page) must not hold up every
		 * write; the restart is tried again a thousand pages later. */
		pthread_mutex_lock(&s->ckpt_run);
		sqlite3_busy_timeout(db, STORE_RESTART_BUSY_MS);
		int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
		sqlite3_busy_timeout(db, STORE_BUSY_MS);
		pthread_mutex_unlock(&s->ckpt_run);
		s->restart_pages = rc == SQLITE_OK ? STORE_CKPT_RESTART_PAGES : pages + STORE_CKPT_PAGES;
	} else if (pages >= STORE_CKPT_PAGES) {
		pthread_mutex_lock(&s->lock);
		s->ckpt_wanted = 1;
		pthread_cond_signal(&s->ckpt_wake);
		pthread_mutex_unlock(&s->lock);
	}
	return SQLITE_OK;
}
static void store__tx_events_done(store *s, int publish);

int store_open(store **out, const char *dir, const store_options *opt, tn_error *err)
{
	store *s = calloc(1, sizeof *s);
	int64_t maxid = 0, seq = 0;
	int rc;

	if (!s)
		return tn_err(err, TN_ENOMEM, "out of memory");
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->rlock, NULL);
	pthread_cond_init(&s->wake, NULL);
	pthread_cond_init(&s->done, NULL);
	pthread_cond_init(&s->ckpt_wake, NULL);
	pthread_mutex_init(&s->ckpt_run, NULL);
	s->opt = *opt;
	if (s->opt.batch_max < 1)
		s->opt.batch_max = 1024;
	if (s->opt.audit_max_rows < 1)
		s->opt.audit_max_rows = STORE_AUDIT_MAX_ROWS;
	if (asprintf(&s->path, "%s/tender.db", dir) < 0) {
		s->path = NULL;
		rc = tn_err(err, TN_ENOMEM, "out of memory");
		goto fail;
	}
	if ((rc = store__open_conn(s->path, &s->wdb, err)))
		goto fail;
	/* WAL: readers never block the writer; NORMAL loses nothing on a process
	 * crash (only on power loss), FULL on neither. */
	if ((rc = store__exec(s->wdb, "PRAGMA journal_mode = WAL", err)) ||
	    (rc = store__exec(s->wdb, s->opt.sync_full ? "PRAGMA synchronous = FULL"
						      : "PRAGMA synchronous = NORMAL", err)) ||
	    (rc = store__exec(s->wdb, "PRAGMA foreign_keys = ON", err)) ||
	    (rc = store__migrate(s, err)) || (rc = store__recover_online(s, err)) ||
	    (rc = store__backfill_agent_ids(s, err)))
		goto fail;
	if (store__query_int(s->wdb, "SELECT coalesce(max(id), 0) FROM events", &maxid) ||
	    store__query_int(s->wdb, "SELECT coalesce(max(seq), 0) FROM sqlite_sequence "
			     "WHERE name = 'events'", &seq)) {
		rc = tn_err(err, TN_EIO, "cannot read the event sequence: %s", sqlite3_errmsg(s->wdb));
		goto fail;
	}
	s->next_event_id = (maxid > seq ? maxid : seq) + 1;
	if (sqlite3_prepare_v3(s->wdb, "INSERT INTO events (id, device, ts, type, msg) "
			       "VALUES (?, ?, ?, ?, ?)", -1, SQLITE_PREPARE_PERSISTENT, &s->ins_event, NULL) ||
	    sqlite3_prepare_v3(s->wdb, "UPDATE devices SET online = 1, hw = coalesce(?, hw), "
			       "fw = coalesce(?, fw), flash_jedec = ?, flash_size = ?, flash_sfdp = ?, "
			       "connected_at = ?, last_seen = ? WHERE id = ?", -1,
			       SQLITE_PREPARE_PERSISTENT, &s->set_online, NULL) ||
	    sqlite3_prepare_v3(s->wdb, "UPDATE devices SET online = 0, last_seen = ? WHERE id = ?",
			       -1, SQLITE_PREPARE_PERSISTENT, &s->set_offline, NULL)) {
		rc = tn_err(err, TN_EIO, "cannot prepare statements: %s", sqlite3_errmsg(s->wdb));
		goto fail;
	}
	/* A connection sees the WAL only once it has read the database: until
	 * then its checkpoints do nothing. */
	if ((rc = store__open_conn(s->path, &s->cdb, err)) ||
	    (rc = store__exec(s->cdb, "SELECT count(*) FROM sqlite_master", err)))
		goto fail;
	if (pthread_create(&s->ckpt, NULL, store__ckpt_main, s) != 0) {
		rc = tn_err(err, TN_EIO, "cannot start the store checkpointer thread");
		goto fail;
	}
	s->ckpt_started = 1;
	s->restart_pages = STORE_CKPT_RESTART_PAGES;
	sqlite3_wal_hook(s->wdb, store__wal_hook, s);
	if (pthread_create(&s->writer, NULL, store__writer_main, s) != 0) {
		rc = tn_err(err, TN_EIO, "cannot start the store writer thread");
		goto fail;
	}
	s->writer_started = 1;
	*out = s;
	return 0;
fail:
	store_close(s);
	return rc;
}

void store_set_bus(store *s, struct bus *b)
{
	s->bus = b;
}

int store_schema_version(store *s)
{
	return s->schema_version;
}

/* --- the writer ------------------------------------------------------------- */

static void store__op_free(struct store_op *op)
{
	if (op->kind == OP_SYNC)
		return; /* on its waiter's stack */
	free(op->msg);
	free(op->hw);
	free(op->fw);
	free(op->sfdp);
	free(op);
}

static void store__bind_text_or_null(sqlite3_stmt *st, int i, const char *v)
{
	if (v)
		sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

static int store__step_reset(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE ? 0 : TN_EIO;
}

static int store__apply(store *s, struct store_op *op)
{
	char id[17];

	switch (op->kind) {
	case OP_EVENT:
		sqlite3_bind_int64(s->ins_event, 1, op->id);
		sqlite3_bind_int64(s->ins_event, 2, (int64_t)op->device);
		sqlite3_bind_int64(s->ins_event, 3, op->ts);
		sqlite3_bind_int(s->ins_event, 4, op->type);
		sqlite3_bind_text(s->ins_event, 5, op->msg, -1, SQLITE_STATIC);
		return store__step_reset(s->ins_event);
	case OP_ONLINE:
		tn_device_id_format(op->device, id);
		store__bind_text_or_null(s->set_online, 1, op->hw);
		store__bind_text_or_null(s->set_online, 2, op->fw);
		if (op->has_jedec)
			sqlite3_bind_int64(s->set_online, 3, op->jedec);
		if (op->flash_size > 0)
			sqlite3_bind_int64(s->set_online, 4, op->flash_size);
		store__bind_text_or_null(s->set_online, 5, op->sfdp);
		sqlite3_bind_int64(s->set_online, 6, op->ts);
		sqlite3_bind_int64(s->set_online, 7, op->ts);
		sqlite3_bind_text(s->set_online, 8, id, -1, SQLITE_STATIC);
		return store__step_reset(s->set_online);
	case OP_OFFLINE:
		tn_device_id_format(op->device, id);
		sqlite3_bind_int64(s->set_offline, 1, op->ts);
		sqlite3_bind_text(s->set_offline, 2, id, -1, SQLITE_STATIC);
		return store__step_reset(s->set_offline);
	case OP_SYNC:
		if (!op->fn) {
			op->result = 0;
			return 0;
		}
		if (store__exec(s->wdb, "SAVEPOINT op", op->err))
			return TN_EIO;
		op->result = op->fn(s->wdb, op->arg, op->err);
		if (op->result)
			store__exec(s->wdb, "ROLLBACK TO op", NULL);
		return store__exec(s->wdb, "RELEASE op", NULL);
	}
	return TN_EINVAL;
}

/* An event of device is written (known: add it to a known count; else
 * forget the count), and the device is due for the next retention round. */
static void store__counted(store *s, uint64_t device, int known)
{
	int oom = 0;
	uintptr_t n = (uintptr_t)idmap_get(&s->counts, device);
	if (n && known)
		idmap_put(&s->counts, device, (void *)(n + 1), &oom);
	else if (n)
		idmap_del(&s->counts, device);
	idmap_put(&s->dirty, device, (void *)1, &oom); /* oom: checked when next written */
}

/* Applies ops [first, end) in one transaction.  Returns 0 once committed. */
static int store__commit_chunk(store *s, struct store_op *first, struct store_op *end, int *nevents)
{
	tn_error err = { 0 };

	*nevents = 0;
	if (store__exec(s->wdb, "BEGIN IMMEDIATE", &err))
		goto fail;
	for (struct store_op *op = first; op != end; op = op->next) {
		if (store__apply(s, op)) {
			tn_err(&err, TN_EIO, "%s", sqlite3_errmsg(s->wdb));
			goto fail;
		}
		*nevents += op->kind == OP_EVENT;
	}
	if (store__exec(s->wdb, "COMMIT", &err))
		goto fail;
	if (s->opt.retention_count > 0) {
		for (struct store_op *op = first; op != end; op = op->next)
			if (op->kind == OP_EVENT)
				store__counted(s, op->device, 1);
		for (size_t i = 0; i < s->ntx_events; i++)
			store__counted(s, s->tx_events[i].device, 0);
	}
	/* Durable now: the live subscribers get them, in id order.  (Events
	 * written inside sync ops carry later ids than the plain ones before them
	 * in this chunk, and earlier ones than any after: publish in id order.) */
	if (s->bus) {
		size_t t = 0;
		for (struct store_op *op = first; op != end; op = op->next) {
			if (op->kind != OP_EVENT)
				continue;
			while (t < s->ntx_events && s->tx_events[t].id < op->id)
				bus_publish(s->bus, &s->tx_events[t++]);
			tn_event ev = { .id = op->id, .device = op->device, .ts_ms = op->ts,
					.type = (event_type)op->type, .msg = op->msg };
			bus_publish(s->bus, &ev);
		}
		while (t < s->ntx_events)
			bus_publish(s->bus, &s->tx_events[t++]);
		for (size_t i = 0; i < s->ntx_events; i++)
			free((char *)s->tx_events[i].msg);
		s->ntx_events = 0;
	} else {
		store__tx_events_done(s, 0);
	}
	return 0;
fail:
	store__tx_events_done(s, 0);
	snprintf(s->write_err, sizeof s->write_err, "%s", err.msg);
	log_err("store: a write transaction failed and will be retried: %s", err.msg);
	metrics_error(ERR_STORE);
	if (!sqlite3_get_autocommit(s->wdb))
		store__exec(s->wdb, "ROLLBACK", NULL);
	return TN_EIO;
}

/* Fails one sync op (under the lock): its waiter may return at once. */
static void store__fail_sync_locked(store *s, struct store_op *op)
{
	op->result = tn_err(op->err, TN_ESTATE, "the store cannot write now, try again (%s)", s->write_err);
	op->done = 1;
}

/* After a failed commit: the sync ops taken (list onwards, when `taken`:
 * the first failure) and those queued since (API calls, agents'
 * server.save) fail at once with TN_ESTATE (a 503) rather than wait for the
 * disk to recover; the events are kept and retried.  Returns the list
 * without them; *end moves past removed ones. */
static struct store_op *store__fail_syncs(store *s, struct store_op *list, struct store_op **end,
					  int taken)
{
	struct store_op **pp = &list, *prev = NULL;
	pthread_mutex_lock(&s->lock);
	while (taken && *pp) {
		struct store_op *op = *pp;
		if (op->kind != OP_SYNC || !op->fn) { /* a flush waits for the retry */
			pp = &op->next;
			continue;
		}
		*pp = op->next; /* read before `done` */
		if (*end == op)
			*end = op->next;
		store__fail_sync_locked(s, op);
	}
	/* The queue grows while the disk is full: walk it only for a sync op. */
	for (pp = &s->head; s->queued_syncs && *pp;) {
		struct store_op *op = *pp;
		if (op->kind != OP_SYNC || !op->fn) {
			prev = op;
			pp = &op->next;
			continue;
		}
		*pp = op->next;
		if (s->tail == op)
			s->tail = prev;
		s->queued_syncs--;
		store__fail_sync_locked(s, op);
	}
	pthread_cond_broadcast(&s->done);
	pthread_mutex_unlock(&s->lock);
	return list;
}

/* Commits a list taken off the queue, batch_max events at a time. */
static void store__commit_list(store *s, struct store_op *list)
{
	while (list) {
		struct store_op *end = list;
		int n = 0, nevents = 0, tries = 0, failures = 0;
		while (end && n < s->opt.batch_max) {
			n += end->kind == OP_EVENT;
			end = end->next;
		}
		/* Retry a failed commit (disk full, I/O error) rather than drop it.
		 * While stopping, give up after a few seconds so shutdown ends. */
		while (store__commit_chunk(s, list, end, &nevents) != 0) {
			list = store__fail_syncs(s, list, &end, failures++ == 0);
			if (list == end)
				break; /* only sync ops: nothing left to retry */
			pthread_mutex_lock(&s->lock);
			int stopping = s->stopping;
			pthread_mutex_unlock(&s->lock);
			if (stopping && ++tries > 30) {
				log_err("store: giving up on %d queued writes at shutdown", n);
				break;
			}
			usleep(100 * 1000);
		}
		metrics_add(M_EVENTS_WRITTEN, nevents);
		metrics_inc(M_STORE_COMMITS);
		/* Free what we own; a sync op belongs to its waiter, who may return
		 * the moment it sees `done`: read its next pointer before that. */
		struct store_op *syncs = NULL;
		size_t freed = 0;
		while (list != end) {
			struct store_op *next = list->next;
			if (list->kind == OP_SYNC) {
				list->next = syncs;
				syncs = list;
			} else {
				freed += list->bytes;
				store__op_free(list);
			}
			list = next;
		}
		pthread_mutex_lock(&s->lock);
		s->queued_bytes -= freed;
		metrics_add(M_STORE_QUEUE_BYTES, -(int64_t)freed);
		while (syncs) {
			struct store_op *next = syncs->next;
			if (tries > 30)
				syncs->result = TN_EIO;
			syncs->done = 1;
			syncs = next;
		}
		pthread_cond_broadcast(&s->done);
		pthread_mutex_unlock(&s->lock);
	}
}

#define STORE_RETENTION_CHUNK 10000

struct store__dirty_list {
	uint64_t *ids;
	size_t n, cap;
};

static void store__collect_dirty(void *arg, uint64_t key, void *val)
{
	struct store__dirty_list *l = arg;
	if (l->n < l->cap)
		l->ids[l->n++] = key;
}

/* --retention-count for the devices written since the last round (within
 * the caller's transaction), at most `budget` rows: a device's count is
 * read once (an index range) and then kept up to date, so a round costs
 * what was written, not a scan of every event.  Returns the rows deleted. */
static int store__retention_count(store *s, int budget)
{
	struct store__dirty_list l = { .cap = s->dirty.count < 4096 ? s->dirty.count : 4096 };
	sqlite3_stmt *cnt = NULL, *del = NULL;
	int deleted = 0, oom = 0;

	if (!l.cap || !(l.ids = malloc(l.cap * sizeof *l.ids)))
		return 0;
	idmap_foreach(&s->dirty, store__collect_dirty, &l);
	if (sqlite3_prepare_v2(s->wdb, "SELECT count(*) FROM events WHERE device = ?", -1, &cnt, NULL) ||
	    sqlite3_prepare_v2(s->wdb, "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE device = ?1 "
			       "AND id <= (SELECT id FROM events WHERE device = ?1 ORDER BY id DESC LIMIT 1 "
			       "OFFSET ?2) ORDER BY id LIMIT ?3)", -1, &del, NULL))
		goto done;
	for (size_t i = 0; i < l.n && deleted < budget; i++) {
		uint64_t device = l.ids[i];
		uintptr_t n = (uintptr_t)idmap_get(&s->counts, device);
		if (!n) {
			sqlite3_bind_int64(cnt, 1, (int64_t)device);
			if (sqlite3_step(cnt) == SQLITE_ROW)
				n = (uintptr_t)sqlite3_column_int64(cnt, 0) + 1;
			sqlite3_reset(cnt);
			if (!n)
				continue;
		}
		int over = (int64_t)(n - 1) > s->opt.retention_count;
		if (over) {
			/* The exact query decides what goes, whatever the hint said. */
			int limit = budget - deleted;
			sqlite3_bind_int64(del, 1, (int64_t)device);
			sqlite3_bind_int64(del, 2, s->opt.retention_count);
			sqlite3_bind_int(del, 3, limit);
			int gone = sqlite3_step(del) == SQLITE_DONE ? sqlite3_changes(s->wdb) : 0;
			sqlite3_reset(del);
			deleted += gone;
			if (gone == limit) {
				n -= (uintptr_t)gone; /* the budget ran out: more next round */
			} else {
				/* Everything beyond the newest N went: N are left, or,
				 * if nothing went (the hint was high), not known. */
				n = gone ? (uintptr_t)s->opt.retention_count + 1 : 0;
				over = 0;
			}
		}
		if (n)
			idmap_put(&s->counts, device, (void *)n, &oom);
		else
			idmap_del(&s->counts, device);
		if (!over)
			idmap_del(&s->dirty, device);
	}
done:
	sqlite3_finalize(cnt);
	sqlite3_finalize(del);
	free(l.ids);
	return deleted;
}

/* Deletes at most one chunk of expired events in its own transaction, so
 * writes queued meanwhile wait one short transaction at most.  Returns the
 * rows deleted. */
static int store__retention_chunk(store *s)
{
	int deleted = 0;
	tn_error err = { 0 };
	sqlite3_stmt *q = NULL;

	if (store__exec(s->wdb, "BEGIN IMMEDIATE", &err))
		return 0;
	if (s->opt.retention_age_ms > 0 &&
	    sqlite3_prepare_v2(s->wdb, "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ? "
			       "ORDER BY id LIMIT ?) RETURNING device", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(q, 1, tn_now_ms() - s->opt.retention_age_ms);
		sqlite3_bind_int(q, 2, STORE_RETENTION_CHUNK);
		while (sqlite3_step(q) == SQLITE_ROW) {
			/* Keep the known counts right. */
			uint64_t device = (uint64_t)sqlite3_column_int64(q, 0);
			uintptr_t n = (uintptr_t)idmap_get(&s->counts, device);
			int oom = 0;
			if (n > 1)
				idmap_put(&s->counts, device, (void *)(n - 1), &oom);
			deleted++;
		}
		sqlite3_finalize(q);
		q = NULL;
	}
	if (s->opt.retention_count > 0 && deleted < STORE_RETENTION_CHUNK)
		deleted += store__retention_count(s, STORE_RETENTION_CHUNK - deleted);
	/* The audit trail, once a minute: refused requests (401, 403, 429)
	 * beyond a tenth of the cap first, so that an attack cannot push the
	 * record of changes out; then by the events' age, and never more than
	 * opt.audit_max_rows in all. */
	int audit_deleted = 0;
	if (deleted < STORE_RETENTION_CHUNK && tn_mono_ms() >= s->next_audit_trim) {
		static const char *const sql[] = {
			"DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE status IN (401, 403, 429) "
			"AND id <= (SELECT id FROM audit WHERE status IN (401, 403, 429) ORDER BY id DESC "
			"LIMIT 1 OFFSET ?2) ORDER BY id LIMIT ?3)",
			"DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE ts < ?1 OR id <= (SELECT id "
			"FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?4) ORDER BY id LIMIT ?3)",
		};
		for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++) {
			if (sqlite3_prepare_v2(s->wdb, sql[i], -1, &q, NULL) != SQLITE_OK)
				continue;
			sqlite3_bind_int64(q, 1, s->opt.retention_age_ms > 0 ? tn_now_ms() - s->opt.retention_age_ms : 0);
			sqlite3_bind_int64(q, 2, s->opt.audit_max_rows / STORE_AUDIT_REFUSALS_SHARE);
			sqlite3_bind_int(q, 3, STORE_RETENTION_CHUNK);
			sqlite3_bind_int64(q, 4, s->opt.audit_max_rows);
			if (sqlite3_step(q) == SQLITE_DONE)
				audit_deleted += sqlite3_changes(s->wdb);
			sqlite3_finalize(q);
			q = NULL;
		}
		/* A full chunk: more to do at the next round. */
		s->next_audit_trim = tn_mono_ms() + (audit_deleted >= STORE_RETENTION_CHUNK ? 0 : STORE_AUDIT_TRIM_MS);
	}
	if (store__exec(s->wdb, "COMMIT", &err)) {
		store__exec(s->wdb, "ROLLBACK", NULL);
		return 0;
	}
	if (deleted)
		metrics_add(M_EVENTS_EXPIRED, deleted);
	return deleted + audit_deleted;
}

struct store__drop_report {
	store *s;
	int64_t ts;
};

static void store__drop_line(void *arg, uint64_t device, void *count)
{
	struct store__drop_report *r = arg;
	char line[160];
	unsigned n = (unsigned)(uintptr_t)count;
	snprintf(line, sizeof line, "%u log line%s dropped: the store's write queue was full "
		 "(the disk could not keep up)", n, n == 1 ? "" : "s");
	struct store_op *op = calloc(1, sizeof *op);
	if (!op || !(op->msg = strdup(line))) {
		free(op);
		return;
	}
	op->kind = OP_EVENT;
	op->device = device;
	op->type = EV_STATUS;
	op->ts = r->ts;
	op->id = r->s->next_event_id++;
	op->bytes = sizeof *op + strlen(line) + 1;
	/* Queued even while stopping: the writer is still there to commit it. */
	op->next = NULL;
	if (r->s->tail)
		r->s->tail->next = op;
	else
		r->s->head = op;
	r->s->tail = op;
	r->s->queued_bytes += op->bytes;
	metrics_add(M_STORE_QUEUE_BYTES, (int64_t)op->bytes);
	metrics_inc(M_EVENTS_QUEUED);
}

/* The queue has drained to half after it was full (writer, under the lock):
 * each device that lost lines gets one status line saying how many. */
static void store__report_drops_locked(store *s)
{
	struct store__drop_report r = { s, tn_now_ms() };
	log_warn("store: the write queue has drained; %zu devices lost log lines while it was full",
		 s->drops.count);
	idmap_foreach(&s->drops, store__drop_line, &r);
	idmap_free(&s->drops);
	memset(&s->drops, 0, sizeof s->drops);
	s->full = 0;
}

static void *store__writer_main(void *arg)
{
	store *s = arg;
	pthread_setname_np(pthread_self(), "tn-store"); /* for top -H, perf, gdb */

	s->next_retention = tn_mono_ms() + 1000;
	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (!s->head && !s->stopping) {
			if (tn_mono_ms() >= s->next_retention) {
				pthread_mutex_unlock(&s->lock);
				/* A full chunk means more to do: soon, but writes first. */
				int n = store__retention_chunk(s);
				s->next_retention = tn_mono_ms() + (n >= STORE_RETENTION_CHUNK ? 10 : 5000);
				pthread_mutex_lock(&s->lock);
				continue;
			}
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&s->wake, &s->lock, &ts);
		}
		if (!s->head)
			break; /* stopping, and everything is written */
		struct store_op *list = s->head;
		s->head = s->tail = NULL;
		s->queued_syncs = 0;
		pthread_mutex_unlock(&s->lock);
		store__commit_list(s, list);
		pthread_mutex_lock(&s->lock);
		if (s->full && s->queued_bytes <= s->opt.max_queue_bytes / 2)
			store__report_drops_locked(s);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static void *store__ckpt_main(void *arg)
{
	store *s = arg;
	pthread_setname_np(pthread_self(), "tn-checkpoint"); /* for top -H, perf, gdb */
	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (!s->ckpt_wanted && !s->stopping)
			pthread_cond_wait(&s->ckpt_wake, &s->lock);
		if (s->stopping)
			break;
		s->ckpt_wanted = 0;
		pthread_mutex_unlock(&s->lock);
		/* PASSIVE: copies what no reader still needs, never waits for the
		 * writer; SQLITE_BUSY (another checkpoint under way) is harmless. */
		pthread_mutex_lock(&s->ckpt_run);
		int rc = sqlite3_wal_checkpoint_v2(s->cdb, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
		pthread_mutex_unlock(&s->ckpt_run);
		if (rc != SQLITE_OK && rc != SQLITE_BUSY)
			log_warn("store: checkpoint: %s", sqlite3_errmsg(s->cdb));
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* Appends op (under the lock).  Returns TN_ESTATE once closing. */
static int store__push_locked(store *s, struct store_op *op)
{
	if (s->stopping && op->kind != OP_SYNC)
		return TN_ESTATE;
	op->next = NULL;
	if (s->tail)
		s->tail->next = op;
	else
		s->head = op;
	s->tail = op;
	s->queued_bytes += op->bytes;
	metrics_add(M_STORE_QUEUE_BYTES, (int64_t)op->bytes);
	pthread_cond_signal(&s->wake);
	return 0;
}

/* A log line that would take the queue past its cap (under the lock): it is
 * refused, counted for the device, and the queue is `full` until it drains. */
static int store__refuse_line_locked(store *s, const struct store_op *op)
{
	if (!s->opt.max_queue_bytes || (op->type != EV_DEVICE && op->type != EV_AGENT) ||
	    (!s->full && s->queued_bytes + op->bytes <= s->opt.max_queue_bytes))
		return 0;
	if (!s->full)
		log_warn("store: the write queue is full (%zu bytes wait for the disk, --store-queue %zu): "
			 "log lines are dropped and counted until it drains", s->queued_bytes,
			 s->opt.max_queue_bytes);
	s->full = 1;
	int oom = 0;
	uintptr_t n = (uintptr_t)idmap_get(&s->drops, op->device);
	idmap_put(&s->drops, op->device, (void *)(n + 1), &oom);
	metrics_error(ERR_STORE_QUEUE_FULL);
	return 1;
}

int64_t store_event_append(store *s, uint64_t device, event_type type, const char *msg)
{
	struct store_op *op = calloc(1, sizeof *op);
	if (!op || !(op->msg = strdup(msg))) {
		free(op);
		return TN_ENOMEM;
	}
	op->kind = OP_EVENT;
	op->device = device;
	op->type = type;
	op->ts = tn_now_ms();
	op->bytes = sizeof *op + strlen(msg) + 1;
	pthread_mutex_lock(&s->lock);
	/* The id is taken under the queue lock, so queue order is id order; and
	 * read here, since the writer may commit and free the op once unlocked. */
	int64_t id = op->id = s->next_event_id;
	int rc = store__refuse_line_locked(s, op) ? TN_ETOOBIG : store__push_locked(s, op);
	if (rc == 0)
		s->next_event_id++;
	pthread_mutex_unlock(&s->lock);
	if (rc) {
		store__op_free(op);
		return rc;
	}
	metrics_inc(M_EVENTS_QUEUED);
	return id;
}

int64_t store_event_insert_tx(store *s, sqlite3 *db, uint64_t device, event_type type, const char *msg)
{
	sqlite3_stmt *q;
	int64_t id;

	assert(db == s->wdb);
	pthread_mutex_lock(&s->lock);
	id = s->next_event_id++;
	pthread_mutex_unlock(&s->lock);
	if (sqlite3_prepare_v2(db, "INSERT INTO events (id, device, ts, type, msg) VALUES (?, ?, ?, ?, ?)",
			       -1, &q, NULL) != SQLITE_OK)
		return TN_EIO;
	int64_t ts = tn_now_ms();
	sqlite3_bind_int64(q, 1, id);
	sqlite3_bind_int64(q, 2, (int64_t)device);
	sqlite3_bind_int64(q, 3, ts);
	sqlite3_bind_int(q, 4, type);
	sqlite3_bind_text(q, 5, msg, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE)
		return TN_EIO;
	metrics_inc(M_EVENTS_QUEUED);
	metrics_inc(M_EVENTS_WRITTEN);
	if (s->ntx_events == s->cap_tx_events) {
		size_t cap = s->cap_tx_events ? s->cap_tx_events * 2 : 16;
		tn_event *grown = realloc(s->tx_events, cap * sizeof *grown);
		if (!grown)
			return id;
		s->tx_events = grown;
		s->cap_tx_events = cap;
	}
	char *copy = strdup(msg);
	if (copy)
		s->tx_events[s->ntx_events++] = (tn_event){ .id = id, .device = device, .ts_ms = ts,
							    .type = type, .msg = copy };
	return id;
}

/* After a commit (published) or a rollback (dropped). */
static void store__tx_events_done(store *s, int publish)
{
	for (size_t i = 0; i < s->ntx_events; i++) {
		if (publish && s->bus)
			bus_publish(s->bus, &s->tx_events[i]);
		free((char *)s->tx_events[i].msg);
	}
	s->ntx_events = 0;
}

static int store__push_state(store *s, struct store_op *op)
{
	pthread_mutex_lock(&s->lock);
	int rc = store__push_locked(s, op);
	pthread_mutex_unlock(&s->lock);
	if (rc)
		store__op_free(op);
	return rc;
}

int store_device_online(store *s, uint64_t device, const store_hello *hello, int64_t ts_ms)
{
	struct store_op *op = calloc(1, sizeof *op);
	if (!op)
		return TN_ENOMEM;
	op->kind = OP_ONLINE;
	op->device = device;
	op->ts = ts_ms;
	op->bytes = sizeof *op;
	if (hello) {
		op->hw = hello->hw ? strdup(hello->hw) : NULL;
		op->fw = hello->fw ? strdup(hello->fw) : NULL;
		op->sfdp = hello->sfdp ? strdup(hello->sfdp) : NULL;
		op->bytes += (op->hw ? strlen(op->hw) : 0) + (op->fw ? strlen(op->fw) : 0) +
			     (op->sfdp ? strlen(op->sfdp) : 0);
		op->has_jedec = hello->has_jedec;
		op->jedec = hello->jedec;
		op->flash_size = hello->flash_size;
	}
	return store__push_state(s, op);
}

int store_device_offline(store *s, uint64_t device, int64_t ts_ms)
{
	struct store_op *op = calloc(1, sizeof *op);
	if (!op)
		return TN_ENOMEM;
	op->kind = OP_OFFLINE;
	op->device = device;
	op->ts = ts_ms;
	op->bytes = sizeof *op;
	return store__push_state(s, op);
}

static int store__sync(store *s, store_sync_fn fn, void *arg, tn_error *err, int refusable)
{
	struct store_op op = { .kind = OP_SYNC, .fn = fn, .arg = arg, .err = err };

	pthread_mutex_lock(&s->lock);
	if (!s->writer_started) {
		pthread_mutex_unlock(&s->lock);
		return tn_err(err, TN_ESTATE, "the store is closed");
	}
	/* Behind a full queue it would wait for all of it: say so instead
	 * (a flush, with no fn, waits: shutdown and tests rely on it; so does
	 * a state machine's step, which must not be lost to a log flood). */
	if (fn && refusable && s->full) {
		size_t queued = s->queued_bytes;
		pthread_mutex_unlock(&s->lock);
		return tn_err(err, TN_ESTATE, "the store cannot write now, try again (its write queue is "
			      "full: %zu bytes wait for the disk)", queued);
	}
	store__push_locked(s, &op);
	if (fn)
		s->queued_syncs++;
	while (!op.done)
		pthread_cond_wait(&s->done, &s->lock);
	pthread_mutex_unlock(&s->lock);
	return op.result;
}

int store_sync(store *s, store_sync_fn fn, void *arg, tn_error *err)
{
	return store__sync(s, fn, arg, err, 1);
}

int store_sync_state(store *s, store_sync_fn fn, void *arg, tn_error *err)
{
	return store__sync(s, fn, arg, err, 0);
}

int store_flush(store *s)
{
	return store_sync(s, NULL, NULL, NULL);
}

void store_close(store *s)
{
	if (!s)
		return;
	if (s->writer_started) {
		pthread_mutex_lock(&s->lock);
		s->stopping = 1;
		pthread_cond_signal(&s->wake);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->writer, NULL);
		s->writer_started = 0;
	}
	if (s->ckpt_started) {
		pthread_mutex_lock(&s->lock);
		s->stopping = 1;
		pthread_cond_signal(&s->ckpt_wake);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->ckpt, NULL);
		s->ckpt_started = 0;
	}
	if (s->cdb)
		sqlite3_close(s->cdb); /* before the write connection, whose close checkpoints */
	for (int i = 0; i < s->nreaders; i++)
		sqlite3_close(s->readers[i]);
	store__tx_events_done(s, 0);
	free(s->tx_events);
	idmap_free(&s->drops);
	idmap_free(&s->counts);
	idmap_free(&s->dirty);
	sqlite3_finalize(s->ins_event);
	sqlite3_finalize(s->set_online);
	sqlite3_finalize(s->set_offline);
	if (s->wdb && sqlite3_close(s->wdb) != SQLITE_OK)
		log_err("store: closing the database: %s", sqlite3_errmsg(s->wdb));
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->rlock);
	pthread_cond_destroy(&s->wake);
	pthread_cond_destroy(&s->done);
	pthread_cond_destroy(&s->ckpt_wake);
	pthread_mutex_destroy(&s->ckpt_run);
	free(s->path);
	free(s);
}

/* --- readers ---------------------------------------------------------------- */

sqlite3 *store_reader_get(store *s)
{
	sqlite3 *db = NULL;

	pthread_mutex_lock(&s->rlock);
	if (s->nreaders > 0)
		db = s->readers[--s->nreaders];
	pthread_mutex_unlock(&s->rlock);
	if (db)
		return db;
	if (store__open_conn(s->path, &db, NULL))
		return NULL;
	sqlite3_exec(db, "PRAGMA query_only = 1", NULL, NULL, NULL);
	return db;
}

void store_reader_put(store *s, sqlite3 *db)
{
	if (!db)
		return;
	pthread_mutex_lock(&s->rlock);
	if (s->nreaders < STORE_READERS_MAX) {
		s->readers[s->nreaders++] = db;
		db = NULL;
	}
	pthread_mutex_unlock(&s->rlock);
	sqlite3_close(db); /* the pool is full: this one is surplus */
}

json_t *store_list_json(store *s, const char *sql, const char *key, store_row_fn row, tn_error *err)
{
	sqlite3 *db = store_reader_get(s);
	sqlite3_stmt *q = NULL;
	json_t *list = json_array(), *out = NULL;
	int rc;

	if (!db || !list) {
		tn_err(err, TN_EIO, "no read connection");
		goto done;
	}
	if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		json_t *j = row(db, q);
		if (j)
			json_array_append_new(list, j);
	}
	if (rc != SQLITE_DONE) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	out = json_pack("{s:O}", key, list);
done:
	sqlite3_finalize(q);
	store_reader_put(s, db);
	json_decref(list);
	return out;
}

/* --- devices ---------------------------------------------------------------- */

static json_t *store__time_json(sqlite3_stmt *st, int col)
{
	char buf[32];
	if (sqlite3_column_type(st, col) == SQLITE_NULL ||
	    logfmt_iso8601(buf, sizeof buf, sqlite3_column_int64(st, col)) < 0)
		return json_null();
	return json_string(buf);
}

static json_t *store__text_json(sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);
	return t ? json_string((const char *)t) : json_null();
}

#define STORE_DEVICE_COLS \
	"id, name, grp, hw, fw, flash_jedec, flash_size, online, connected_at, last_seen, created, agent_id"

static json_t *store__device_row(sqlite3_stmt *st)
{
	json_t *flash = json_null();
	if (sqlite3_column_type(st, 5) != SQLITE_NULL || sqlite3_column_type(st, 6) != SQLITE_NULL) {
		char jedec[8];
		snprintf(jedec, sizeof jedec, "%06llx",
			 (unsigned long long)sqlite3_column_int64(st, 5) & 0xffffff);
		flash = json_pack("{s:o, s:o}",
				  "jedec", sqlite3_column_type(st, 5) == SQLITE_NULL ? json_null()
										    : json_string(jedec),
				  "size", sqlite3_column_type(st, 6) == SQLITE_NULL
						  ? json_null() : json_integer(sqlite3_column_int64(st, 6)));
	}
	return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:b, s:o, s:o, s:o, s:o}",
			 "id", store__text_json(st, 0), "name", store__text_json(st, 1),
			 "group", store__text_json(st, 2), "hw", store__text_json(st, 3),
			 "fw", store__text_json(st, 4), "flash", flash,
			 "online", sqlite3_column_int(st, 7),
			 "connected_at", store__time_json(st, 8), "last_seen", store__time_json(st, 9),
			 "created", store__time_json(st, 10), "agent_id", store__text_json(st, 11));
}

json_t *store_device_get(store *s, uint64_t id)
{
	sqlite3 *db = store_reader_get(s);
	sqlite3_stmt *st = NULL;
	json_t *out = NULL;
	char hex[17];

	if (!db)
		return NULL;
	tn_device_id_format(id, hex);
	if (sqlite3_prepare_v2(db, "SELECT " STORE_DEVICE_COLS " FROM devices WHERE id = ?", -1,
			       &st, NULL) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW)
			out = store__device_row(st);
	}
	sqlite3_finalize(st);
	store_reader_put(s, db);
	return out;
}

json_t *store_device_list(store *s, const store_device_filter *f, tn_error *err)
{
	char sql[768], after[17];
	sqlite3 *db = store_reader_get(s);
	sqlite3_stmt *st = NULL;
	json_t *list = json_array(), *out = NULL;
	int n = 0, i = 1;

	if (!db || !list) {
		tn_err(err, TN_EIO, "no read connection");
		goto done;
	}
	snprintf(sql, sizeof sql, "SELECT " STORE_DEVICE_COLS " FROM devices WHERE 1%s%s%s%s%s "
		 "ORDER BY id LIMIT ?",
		 f->online >= 0 ? " AND online = ?" : "", f->hw ? " AND hw = ?" : "",
		 f->group ? " AND grp = ?" : "",
		 /* instr(), not LIKE: the operator's text holds no wildcards */
		 f->search ? " AND (instr(id, lower(?)) > 0 OR instr(lower(coalesce(name, '')), lower(?)) > 0)" : "",
		 f->has_after ? " AND id > ?" : "");
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	if (f->online >= 0)
		sqlite3_bind_int(st, i++, f->online);
	if (f->hw)
		sqlite3_bind_text(st, i++, f->hw, -1, SQLITE_STATIC);
	if (f->group)
		sqlite3_bind_text(st, i++, f->group, -1, SQLITE_STATIC);
	if (f->search) {
		sqlite3_bind_text(st, i++, f->search, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, i++, f->search, -1, SQLITE_STATIC);
	}
	if (f->has_after) {
		tn_device_id_format(f->after, after);
		sqlite3_bind_text(st, i++, after, -1, SQLITE_STATIC);
	}
	/* One row more than asked tells whether there is a next page. */
	sqlite3_bind_int(st, i, f->limit + 1);
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < f->limit) {
		json_array_append_new(list, store__device_row(st));
		n++;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	json_t *next = json_null();
	if (rc == SQLITE_ROW && n > 0)
		next = json_incref(json_object_get(json_array_get(list, (size_t)n - 1), "id"));
	out = json_pack("{s:O, s:o}", "devices", list, "next", next);
done:
	sqlite3_finalize(st);
	store_reader_put(s, db);
	json_decref(list);
	return out;
}

/* counts[key] = n for each row of a "SELECT key, count(*) ... GROUP BY key". */
static int store__count_by(sqlite3 *db, const char *sql, json_t *counts)
{
	sqlite3_stmt *st = NULL;
	int rc;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return -1;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *key = (const char *)sqlite3_column_text(st, 0);
		if (key)
			json_object_set_new(counts, key, json_integer(sqlite3_column_int64(st, 1)));
	}
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

json_t *store_fleet_summary(store *s, tn_error *err)
{
	sqlite3 *db = store_reader_get(s);
	json_t *online = json_object(), *hw = json_object(), *groups = json_object(), *out = NULL;

	if (!db) {
		tn_err(err, TN_EIO, "no read connection");
		goto done;
	}
	/* One snapshot: the counts add up even while devices come and go. */
	if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
	    store__count_by(db, "SELECT CASE online WHEN 1 THEN 'online' ELSE 'offline' END, count(*) "
			    "FROM devices GROUP BY 1", online) ||
	    store__count_by(db, "SELECT hw, count(*) FROM devices WHERE hw IS NOT NULL GROUP BY hw", hw) ||
	    store__count_by(db, "SELECT grp, count(*) FROM devices WHERE grp IS NOT NULL GROUP BY grp", groups)) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
		goto done;
	}
	sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	json_int_t on = json_integer_value(json_object_get(online, "online"));
	json_int_t off = json_integer_value(json_object_get(online, "offline"));
	out = json_pack("{sI sI sI sO sO}", "devices", (json_int_t)(on + off), "online", on,
			"offline", off, "hw", hw, "groups", groups);
done:
	store_reader_put(s, db);
	json_decref(online);
	json_decref(hw);
	json_decref(groups);
	return out;
}

int store_group_has_agent(store *s, const char *group)
{
	sqlite3 *db = store_reader_get(s);
	sqlite3_stmt *st = NULL;
	int has = 0;

	if (db && sqlite3_prepare_v2(db, "SELECT 1 FROM agent_code WHERE grp = ?", -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
		has = sqlite3_step(st) == SQLITE_ROW;
	}
	sqlite3_finalize(st);
	store_reader_put(s, db);
	return has;
}

json_t *store_group_agent(store *s, const char *group, tn_error *err)
{
	sqlite3 *db = store_reader_get(s);
	sqlite3_stmt *st = NULL;
	json_t *out = NULL;
	char when[32];

	if (!db) {
		tn_err(err, TN_EIO, "no read connection");
		return NULL;
	}
	if (sqlite3_prepare_v2(db, "SELECT source, version, updated FROM agent_code WHERE grp = ?", -1, &st,
			       NULL) != SQLITE_OK) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	} else {
		sqlite3_bind_text(st, 1, group, -1, SQLITE_STATIC);
		int rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			logfmt_iso8601(when, sizeof when, sqlite3_column_int64(st, 2));
			out = json_pack("{ss s:s% sI ss}", "group", group, "source",
					(const char *)sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0),
					"version", (json_int_t)sqlite3_column_int64(st, 1), "updated", when);
			if (!out)
				tn_err(err, TN_EIO, "the stored agent code of group %s is not valid UTF-8", group);
		} else if (rc == SQLITE_DONE) {
			tn_err(err, TN_ENOTFOUND, "group %s has no agent code", group);
		} else {
			tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		}
	}
	sqlite3_finalize(st);
	store_reader_put(s, db);
	return out;
}

int store_device_foreach_secret(store *s, void (*fn)(void *arg, uint64_t id, const char *hash),
				void *arg, tn_error *err)
{
	sqlite3 *db = store_reader_get(s);
	sqlite3_stmt *st = NULL;
	int rc = TN_EIO;

	if (!db)
		return tn_err(err, TN_EIO, "no read connection");
	if (sqlite3_prepare_v2(db, "SELECT id, secret_hash FROM devices", -1, &st, NULL) == SQLITE_OK) {
		int step;
		while ((step = sqlite3_step(st)) == SQLITE_ROW) {
			uint64_t id;
			if (tn_device_id_parse((const char *)sqlite3_column_text(st, 0), &id) == 0)
				fn(arg, id, (const char *)sqlite3_column_text(st, 1));
		}
		if (step == SQLITE_DONE)
			rc = 0;
	}
	if (rc)
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_finalize(st);
	store_reader_put(s, db);
	return rc;
}

struct store__device_args {
	uint64_t id;
	const char *secret_hash, *name, *group;
	json_t *jname, *jgroup;
};

static int store__device_create(sqlite3 *db, void *arg, tn_error *err)
{
	struct store__device_args *a = arg;
	sqlite3_stmt *st;
	char hex[17];

	tn_device_id_format(a->id, hex);
	char agent_id[64];
	if (auth_random_secret("ag_", agent_id))
		return tn_err(err, TN_EIO, "no randomness available for an agent id");
	if (sqlite3_prepare_v2(db, "INSERT INTO devices (id, secret_hash, name, grp, created, agent_id) "
			       "VALUES (?, ?, ?, ?, ?, ?)", -1, &st, NULL) != SQLITE_OK)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(st, 6, agent_id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a->secret_hash, -1, SQLITE_STATIC);
	store__bind_text_or_null(st, 3, a->name);
	store__bind_text_or_null(st, 4, a->group);
	sqlite3_bind_int64(st, 5, tn_now_ms());
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
		return tn_err(err, TN_EEXIST, "device %s is already registered", hex);
	if (rc != SQLITE_DONE)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	return 0;
}

int store_device_create(store *s, uint64_t id, const char *secret_hash, const char *name,
			const char *group, tn_error *err)
{
	struct store__device_args a = { .id = id, .secret_hash = secret_hash, .name = name, .group = group };
	return store_sync(s, store__device_create, &a, err);
}

static int store__bind_json_text(sqlite3_stmt *st, int i, json_t *v)
{
	if (json_is_string(v))
		return sqlite3_bind_text(st, i, json_string_value(v), -1, SQLITE_STATIC);
	return sqlite3_bind_null(st, i);
}

static int store__device_update(sqlite3 *db, void *arg, tn_error *err)
{
	struct store__device_args *a = arg;
	sqlite3_stmt *st;
	char hex[17];

	tn_device_id_format(a->id, hex);
	if (sqlite3_prepare_v2(db, "UPDATE devices SET name = CASE WHEN ?1 THEN ?2 ELSE name END, "
			       "grp = CASE WHEN ?3 THEN ?4 ELSE grp END WHERE id = ?5", -1, &st, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int(st, 1, a->jname != NULL);
	store__bind_json_text(st, 2, a->jname);
	sqlite3_bind_int(st, 3, a->jgroup != NULL);
	store__bind_json_text(st, 4, a->jgroup);
	sqlite3_bind_text(st, 5, hex, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	if (sqlite3_changes(db) == 0)
		return tn_err(err, TN_ENOTFOUND, "no device %s", hex);
	return 0;
}

int store_device_update(store *s, uint64_t id, json_t *name, json_t *group, tn_error *err)
{
	struct store__device_args a = { .id = id, .jname = name, .jgroup = group };
	return store_sync(s, store__device_update, &a, err);
}

static int store__device_delete(sqlite3 *db, void *arg, tn_error *err)
{
	struct store__device_args *a = arg;
	sqlite3_stmt *st;
	char hex[17];
	int rc, changed;

	tn_device_id_format(a->id, hex);
	if (sqlite3_prepare_v2(db, "DELETE FROM devices WHERE id = ?", -1, &st, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	changed = sqlite3_changes(db);
	if (rc != SQLITE_DONE)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	if (changed == 0)
		return tn_err(err, TN_ENOTFOUND, "no device %s", hex);
	if (sqlite3_prepare_v2(db, "DELETE FROM events WHERE device = ?", -1, &st, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(st, 1, (int64_t)a->id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	/* Its place in rollouts and its agent's saved state go with it, so no
	 * rollout waits for a device that no longer exists. */
	static const char *const more[] = { "DELETE FROM rollout_devices WHERE device = ?",
					    "DELETE FROM agent_state WHERE device = ?" };
	for (size_t i = 0; i < TN_ARRAY_LEN(more); i++) {
		if (sqlite3_prepare_v2(db, more[i], -1, &st, NULL))
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE)
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	}
	return 0;
}

int store_device_delete(store *s, uint64_t id, tn_error *err)
{
	struct store__device_args a = { .id = id };
	return store_sync(s, store__device_delete, &a, err);
}

/* --- events ----------------------------------------------------------------- */

json_t *store_events_list(store *s, const store_event_query *q, tn_error *err)
{
	sqlite3 *db = store_reader_get(s);
	sqlite3_stmt *st = NULL;
	json_t *list = json_array(), *out = NULL;
	int forward = q->after >= 0, n = 0, rc;

	if (!db || !list) {
		tn_err(err, TN_EIO, "no read connection");
		goto done;
	}
	char sql[512];
	snprintf(sql, sizeof sql, "SELECT id, device, ts, type, msg FROM events WHERE %s%s AND (?3 = 0 OR id < ?3)"
		 "%s%s%s%s ORDER BY id %s LIMIT ?4",
		 q->all_devices ? "1" : "device = ?1", forward ? " AND id > ?2" : "",
		 q->has_type ? " AND type = ?5" : "", q->since_ms ? " AND ts >= ?6" : "",
		 q->until_ms ? " AND ts < ?7" : "", q->text ? " AND instr(msg, ?8) > 0" : "",
		 forward ? "ASC" : "DESC");
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	sqlite3_bind_int64(st, 1, (int64_t)q->device);
	sqlite3_bind_int64(st, 2, q->after);
	sqlite3_bind_int64(st, 3, q->before);
	sqlite3_bind_int(st, 4, q->limit + 1);
	sqlite3_bind_int(st, 5, q->type);
	sqlite3_bind_int64(st, 6, q->since_ms);
	sqlite3_bind_int64(st, 7, q->until_ms);
	if (q->text)
		sqlite3_bind_text(st, 8, q->text, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < q->limit) {
		tn_event ev = {
			.id = sqlite3_column_int64(st, 0), .device = (uint64_t)sqlite3_column_int64(st, 1),
			.ts_ms = sqlite3_column_int64(st, 2), .type = (event_type)sqlite3_column_int(st, 3),
			.msg = (const char *)sqlite3_column_text(st, 4),
		};
		json_t *j = events_to_json(&ev);
		if (forward)
			json_array_append_new(list, j);
		else
			json_array_insert_new(list, 0, j);
		n++;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	int more = rc == SQLITE_ROW;
	json_t *first = json_object_get(json_array_get(list, 0), "id");
	json_t *last = json_object_get(json_array_get(list, json_array_size(list) - 1), "id");
	if (forward)
		out = json_pack("{s:O, s:o}", "events", list, "next_after",
				more && last ? json_incref(last) : json_null());
	else
		out = json_pack("{s:O, s:o}", "events", list, "next_before",
				more && first ? json_incref(first) : json_null());
done:
	sqlite3_finalize(st);
	store_reader_put(s, db);
	json_decref(list);
	return out;
}

/* --- tokens ----------------------------------------------------------------- */

int store_token_count(store *s)
{
	sqlite3 *db = store_reader_get(s);
	int64_t n = -1;
	if (!db)
		return TN_EIO;
	int rc = store__query_int(db, "SELECT count(*) FROM tokens", &n);
	store_reader_put(s, db);
	return rc ? TN_EIO : (int)n;
}

struct store__token_args {
	const char *hash, *role, *name;
};

static int store__token_add(sqlite3 *db, void *arg, tn_error *err)
{
	struct store__token_args *a = arg;
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, "INSERT OR IGNORE INTO tokens (hash, role, name, created) "
			       "VALUES (?, ?, ?, ?)", -1, &st, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(st, 1, a->hash, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a->role, -1, SQLITE_STATIC);
	store__bind_text_or_null(st, 3, a->name);
	sqlite3_bind_int64(st, 4, tn_now_ms());
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

int store_token_add(store *s, const char *hash, const char *role, const char *name, tn_error *err)
{
	struct store__token_args a = { hash, role, name };
	return store_sync(s, store__token_add, &a, err);
}

int store_token_lookup(store *s, const char *hash, char role[32])
{
	sqlite3 *db = store_reader_get(s);
	sqlite3_stmt *st = NULL;
	int rc = TN_ENOTFOUND;

	if (!db)
		return TN_EIO;
	if (sqlite3_prepare_v2(db, "SELECT role FROM tokens WHERE hash = ? AND "
			       "(expires IS NULL OR expires > ?)", -1, &st, NULL) != SQLITE_OK) {
		store_reader_put(s, db);
		return TN_EIO;
	}
	sqlite3_bind_text(st, 1, hash, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, tn_now_ms());
	if (sqlite3_step(st) == SQLITE_ROW) {
		snprintf(role, 32, "%s", (const char *)sqlite3_column_text(st, 0));
		rc = 0;
	}
	sqlite3_finalize(st);
	store_reader_put(s, db);
	return rc;
}

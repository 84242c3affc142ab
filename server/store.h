/* server/store.h -- persistence in SQLite (WAL).
 * Owns: the database file, the one write connection and its writer thread,
 * a pool of read connections, the event id sequence.
 * Threads: every function may be called from any thread.  Writes are queued
 * to the writer thread, which commits them in batches (group commit); reads
 * use a pooled read connection of their own. */
#ifndef TN_STORE_H
#define TN_STORE_H

#include <jansson.h>
#include <sqlite3.h>
#include <stdint.h>

#include "events.h"
#include "tn.h"

struct store_migration {
	int version;
	const char *name;
	const char *sql;
};
/* Generated from schema/ by tools/embed-schema.sh; ends with a zeroed entry. */
extern const struct store_migration store_migrations[];

typedef struct store store;

typedef struct store_options {
	int batch_max;  /* events per transaction, at most */
	int sync_full;  /* synchronous=FULL instead of NORMAL */
	int64_t retention_age_ms;   /* events older than this are deleted (0: kept) */
	int64_t retention_count;    /* events kept per device, the newest (0: all) */
	int64_t audit_max_rows;     /* audit entries kept, the newest (0: 1,000,000); they
				     * also go after retention_age_ms */
	size_t max_queue_bytes;     /* writes waiting for the disk, at most (0: no limit); past
				     * it log lines are refused and counted, and store_sync
				     * fails with TN_ESTATE until the queue drains to half */
} store_options;

/* Opens (creating) DIR/tender.db, applies pending migrations, marks devices
 * left online by an earlier run offline (with a Device disconnected event),
 * and starts the writer thread.  owned: close with store_close(). */
int store_open(store **out, const char *dir, const store_options *opt, tn_error *err);

/* Commits everything queued, stops the writer and closes every connection.
 * No reader may be in use.  Accepts NULL. */
void store_close(store *s);

/* Every event is handed to the bus once committed, in id order (set once,
 * before events flow). */
struct bus;
void store_set_bus(store *s, struct bus *b);

/* The schema version (PRAGMA user_version) after migrations. */
int store_schema_version(store *s);

/* --- writes ----------------------------------------------------------------- */

/* Queues one event and returns its id (> 0), TN_ESTATE once closing, or
 * TN_ETOOBIG for a device or agent log line refused because the write queue
 * is full (counted; the device's log says how many once it drains).
 * msg is copied. */
int64_t store_event_append(store *s, uint64_t device, event_type type, const char *msg);

/* What a hello tells about a device, recorded as it connects. */
typedef struct store_hello {
	const char *hw, *fw, *sfdp; /* borrowed, may be NULL */
	int has_jedec;
	uint32_t jedec;
	int64_t flash_size;         /* 0 when unknown */
} store_hello;

/* Queues "device is online" (with its hello) or "offline" at ts_ms. */
int store_device_online(store *s, uint64_t device, const store_hello *hello, int64_t ts_ms);
int store_device_offline(store *s, uint64_t device, int64_t ts_ms);

/* Runs fn on the writer connection inside the current batch's transaction
 * (under a savepoint: an error undoes only fn's changes) and waits until it
 * is committed.  Returns fn's result, TN_EIO if the commit failed, or
 * TN_ESTATE (err says why: "the store cannot write now, try again (...)")
 * while commits fail or the write queue is full. */
typedef int (*store_sync_fn)(sqlite3 *db, void *arg, tn_error *err);
int store_sync(store *s, store_sync_fn fn, void *arg, tn_error *err);
/* The same for a state machine's step (the update scheduler's transitions,
 * the supervisor's clean-up): never refused because the write queue is full
 * (it waits its turn behind it), only while commits fail. */
int store_sync_state(store *s, store_sync_fn fn, void *arg, tn_error *err);

/* Inside a store_sync fn (on the writer thread, within its transaction):
 * writes one event with the next id, so that a state change and the log
 * line that tells of it commit together or not at all.  Returns the id. */
int64_t store_event_insert_tx(store *s, sqlite3 *db, uint64_t device, event_type type, const char *msg);

/* Waits until everything queued so far is committed (for tests and shutdown). */
int store_flush(store *s);

/* --- reads ------------------------------------------------------------------ */

/* A read connection from the pool.  Give it back with store_reader_put(). */
sqlite3 *store_reader_get(store *s);
void store_reader_put(store *s, sqlite3 *db);

/* Runs `sql` (no parameters) on a read connection and answers
 * {key: [row(db, stmt) for each row]}.  owned: json_decref; NULL with err. */
typedef json_t *(*store_row_fn)(sqlite3 *db, sqlite3_stmt *q);
json_t *store_list_json(store *s, const char *sql, const char *key, store_row_fn row, tn_error *err);

/* --- devices ---------------------------------------------------------------- */

/* Registers a device with the hash of its secret.  TN_EEXIST if the id is taken. */
int store_device_create(store *s, uint64_t id, const char *secret_hash, const char *name,
			const char *group, tn_error *err);

/* Sets name and/or group (NULL leaves a field as it is; json null clears it). */
int store_device_update(store *s, uint64_t id, json_t *name, json_t *group, tn_error *err);

/* Deletes the device and its events.  TN_ENOTFOUND if there is none. */
int store_device_delete(store *s, uint64_t id, tn_error *err);

/* The device as the API shows it.  owned: json_decref.  NULL if not found. */
json_t *store_device_get(store *s, uint64_t id);

typedef struct store_device_filter {
	int online;          /* -1 any, 0 offline, 1 online */
	const char *hw;      /* NULL: any */
	const char *group;   /* NULL: any */
	const char *search;  /* NULL: any; else a substring of the id or name (any case) */
	uint64_t after;      /* paging cursor: ids greater than this */
	int has_after;
	int limit;
} store_device_filter;

/* {"devices":[...], "next": cursor or null}.  owned: json_decref. */
json_t *store_device_list(store *s, const store_device_filter *f, tn_error *err);

/* The fleet at a glance: {"devices","online","offline","hw":{name:n},
 * "groups":{name:n}} (devices without hw or group are not in those maps).
 * owned: json_decref. */
json_t *store_fleet_summary(store *s, tn_error *err);

/* 1 when the group has agent code deployed, 0 when not (or on error). */
int store_group_has_agent(store *s, const char *group);

/* The group's agent code: {"group","source","version","updated"}, or NULL
 * with TN_ENOTFOUND (none deployed) or TN_EIO in err.  owned. */
json_t *store_group_agent(store *s, const char *group, tn_error *err);

/* Calls fn for every device's id and secret hash (to load the registry). */
int store_device_foreach_secret(store *s, void (*fn)(void *arg, uint64_t id, const char *hash),
				void *arg, tn_error *err);

/* --- events ----------------------------------------------------------------- */

typedef struct store_event_query {
	uint64_t device;
	int all_devices;     /* the whole fleet (device is ignored) */
	int64_t before;      /* 0: none; else ids < before */
	int64_t after;       /* -1: none; else ids > after (forward paging) */
	int limit;
	int has_type;        /* filters: */
	event_type type;
	int64_t since_ms, until_ms;  /* 0: none; ts >= since, ts < until */
	const char *text;    /* NULL: none; msg contains this (case-sensitive) */
} store_event_query;

/* With `after` >= 0: {"events":[...], "next_after": id or null}, the oldest
 * `limit` events after it.  Otherwise {"events":[...], "next_before": id or
 * null}, the newest `limit` before `before` (or the end).  Events are oldest
 * first in both.  owned: json_decref. */
json_t *store_events_list(store *s, const store_event_query *q, tn_error *err);

/* --- tokens ----------------------------------------------------------------- */

/* Number of tokens, or a negative error. */
int store_token_count(store *s);
int store_token_add(store *s, const char *hash, const char *role, const char *name, tn_error *err);
/* The role of the token with this hash ("admin"), copied into role; TN_ENOTFOUND if none. */
int store_token_lookup(store *s, const char *hash, char role[32]);

#endif

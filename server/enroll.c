/* server/enroll.c -- enrollment tokens and self-registration (see enroll.h). */
#define _GNU_SOURCE
#include "enroll.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "log.h"
#include "logfmt.h"

struct request {
	struct request *next;
	uint64_t ticket, device;
	char token[160];
};

struct enroller {
	store *st;
	registry *reg;
	enroll_done_fn done;
	void *done_arg;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct request *head, *tail;
	int stopping;
};

struct enroll__tx {
	const char *token_hash, *secret_hash;
	uint64_t device;
	char reason[160];
	char group[80];
};

/* One transaction: the token is valid and has uses left, the id is free; then
 * the device exists and the token has one use fewer -- or nothing changed. */
static int enroll__tx(sqlite3 *db, void *arg, tn_error *err)
{
	struct enroll__tx *t = arg;
	sqlite3_stmt *q;
	char hex[17], agent_id[64];
	int64_t now = tn_now_ms();

	tn_device_id_format(t->device, hex);
	if (sqlite3_prepare_v2(db, "SELECT id, grp, expires, max_uses, uses, revoked FROM enrollment_tokens "
			       "WHERE hash = ?", -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, t->token_hash, -1, SQLITE_STATIC);
	if (sqlite3_step(q) != SQLITE_ROW) {
		sqlite3_finalize(q);
		snprintf(t->reason, sizeof t->reason, "unknown enrollment token");
		return TN_EAUTH;
	}
	int64_t id = sqlite3_column_int64(q, 0), expires = sqlite3_column_int64(q, 2);
	int64_t max_uses = sqlite3_column_int64(q, 3), uses = sqlite3_column_int64(q, 4);
	int revoked = sqlite3_column_int(q, 5);
	snprintf(t->group, sizeof t->group, "%s", sqlite3_column_text(q, 1) ? (const char *)sqlite3_column_text(q, 1) : "");
	sqlite3_finalize(q);
	if (revoked) {
		snprintf(t->reason, sizeof t->reason, "enrollment token revoked");
		return TN_EAUTH;
	}
	if (expires <= now) {
		snprintf(t->reason, sizeof t->reason, "enrollment token expired");
		return TN_EAUTH;
	}
	if (uses >= max_uses) {
		snprintf(t->reason, sizeof t->reason, "enrollment token used up (%lld of %lld)", (long long)uses,
			 (long long)max_uses);
		return TN_EAUTH;
	}
	if (auth_random_secret("ag_", agent_id))
		return tn_err(err, TN_EIO, "no randomness");
	if (sqlite3_prepare_v2(db, "INSERT INTO devices (id, secret_hash, grp, created, agent_id) VALUES (?, ?, ?, ?, ?)",
			       -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, hex, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, t->secret_hash, -1, SQLITE_STATIC);
	if (t->group[0])
		sqlite3_bind_text(q, 3, t->group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 4, now);
	sqlite3_bind_text(q, 5, agent_id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
		snprintf(t->reason, sizeof t->reason, "device %s is already registered", hex);
		return TN_EEXIST;
	}
	if (rc != SQLITE_DONE)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	if (sqlite3_prepare_v2(db, "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?", -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(q, 1, id);
	rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

static void enroll__one(enroller *e, struct request *r)
{
	char token_hash[AUTH_HASH_HEX], secret[64], secret_hash[AUTH_HASH_HEX];
	tn_error err = { 0 };

	auth_hash_hex(r->token, strlen(r->token), token_hash);
	if (auth_random_secret("tds_", secret)) {
		e->done(e->done_arg, r->ticket, TN_EIO, NULL, "the server has no randomness");
		return;
	}
	auth_hash_hex(secret, strlen(secret), secret_hash);
	struct enroll__tx t = { .token_hash = token_hash, .secret_hash = secret_hash, .device = r->device };
	int rc = store_sync(e->st, enroll__tx, &t, &err);
	if (rc == 0) {
		registry_set(e->reg, r->device, secret_hash);
		e->done(e->done_arg, r->ticket, 0, secret, NULL);
		return;
	}
	if (!t.reason[0])
		snprintf(t.reason, sizeof t.reason, "the server could not register the device");
	e->done(e->done_arg, r->ticket, rc, NULL, t.reason);
}

static void *enroll__main(void *arg)
{
	pthread_setname_np(pthread_self(), "tn-enroll"); /* for top -H, perf, gdb */
	enroller *e = arg;
	pthread_mutex_lock(&e->lock);
	for (;;) {
		while (!e->head && !e->stopping)
			pthread_cond_wait(&e->wake, &e->lock);
		if (!e->head)
			break;
		struct request *r = e->head;
		e->head = r->next;
		if (!e->head)
			e->tail = NULL;
		pthread_mutex_unlock(&e->lock);
		if (e->done)
			enroll__one(e, r);
		free(r);
		pthread_mutex_lock(&e->lock);
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

int enroll_start(enroller **out, store *st, registry *reg, tn_error *err)
{
	enroller *e = calloc(1, sizeof *e);
	if (!e)
		return tn_err(err, TN_ENOMEM, "out of memory");
	e->st = st;
	e->reg = reg;
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->wake, NULL);
	if (pthread_create(&e->thread, NULL, enroll__main, e) != 0) {
		free(e);
		return tn_err(err, TN_EIO, "cannot start the enrollment thread");
	}
	*out = e;
	return 0;
}

void enroll_set_done(enroller *e, enroll_done_fn done, void *arg)
{
	pthread_mutex_lock(&e->lock);
	e->done = done;
	e->done_arg = arg;
	pthread_mutex_unlock(&e->lock);
}

void enroll_stop(enroller *e)
{
	if (!e)
		return;
	pthread_mutex_lock(&e->lock);
	e->stopping = 1;
	/* Requests not started yet are dropped: their devices are closing too. */
	while (e->head) {
		struct request *r = e->head;
		e->head = r->next;
		free(r);
	}
	e->tail = NULL;
	pthread_cond_signal(&e->wake);
	pthread_mutex_unlock(&e->lock);
	pthread_join(e->thread, NULL);
	pthread_mutex_destroy(&e->lock);
	pthread_cond_destroy(&e->wake);
	free(e);
}

int enroll_request(enroller *e, uint64_t ticket, uint64_t device, const char *token)
{
	struct request *r = calloc(1, sizeof *r);
	if (!r)
		return TN_ENOMEM;
	r->ticket = ticket;
	r->device = device;
	snprintf(r->token, sizeof r->token, "%s", token);
	pthread_mutex_lock(&e->lock);
	if (e->stopping) {
		pthread_mutex_unlock(&e->lock);
		free(r);
		return TN_ESTATE;
	}
	if (e->tail)
		e->tail->next = r;
	else
		e->head = r;
	e->tail = r;
	pthread_cond_signal(&e->wake);
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* --- tokens ------------------------------------------------------------------ */

struct enroll__create {
	const char *hash, *group;
	int64_t expires, max_uses, id;
};

static int enroll__create_tx(sqlite3 *db, void *arg, tn_error *err)
{
	struct enroll__create *c = arg;
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "INSERT INTO enrollment_tokens (hash, grp, expires, max_uses, created) "
			       "VALUES (?, ?, ?, ?, ?)", -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, c->hash, -1, SQLITE_STATIC);
	if (c->group)
		sqlite3_bind_text(q, 2, c->group, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 3, c->expires);
	sqlite3_bind_int64(q, 4, c->max_uses);
	sqlite3_bind_int64(q, 5, tn_now_ms());
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	c->id = sqlite3_last_insert_rowid(db);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

int enroll_token_create(store *st, json_t *body, json_t **out, tn_error *err)
{
	const char *key;
	json_t *v, *group = json_object_get(body, "group"), *exp = json_object_get(body, "expires_in"),
		   *uses = json_object_get(body, "max_uses");
	char token[64], hash[AUTH_HASH_HEX], when[32];

	json_object_foreach(body, key, v)
		if (strcmp(key, "group") && strcmp(key, "expires_in") && strcmp(key, "max_uses"))
			return tn_err(err, TN_EINVAL, "unknown member '%s'", key);
	if (group && (!json_is_string(group) || json_string_length(group) == 0 || json_string_length(group) > 64))
		return tn_err(err, TN_EINVAL, "'group' must be a string of 1 to 64 bytes");
	if (exp && (!json_is_integer(exp) || json_integer_value(exp) < 1 || json_integer_value(exp) > 366 * 86400))
		return tn_err(err, TN_EINVAL, "'expires_in' must be seconds, from 1 to a year");
	if (uses && (!json_is_integer(uses) || json_integer_value(uses) < 1 || json_integer_value(uses) > 1000000))
		return tn_err(err, TN_EINVAL, "'max_uses' must be an integer from 1 to 1000000");
	if (auth_random_secret("tde_", token))
		return tn_err(err, TN_EIO, "no randomness available");
	auth_hash_hex(token, strlen(token), hash);
	struct enroll__create c = {
		.hash = hash, .group = json_string_value(group),
		.expires = tn_now_ms() + 1000 * (exp ? json_integer_value(exp) : 86400),
		.max_uses = uses ? json_integer_value(uses) : 1,
	};
	int rc = store_sync(st, enroll__create_tx, &c, err);
	if (rc)
		return rc;
	logfmt_iso8601(when, sizeof when, c.expires);
	*out = json_pack("{sI ss s:s? ss sI}", "id", (json_int_t)c.id, "token", token, "group", c.group,
			 "expires", when, "max_uses", (json_int_t)c.max_uses);
	return 0;
}

static json_t *enroll__token_row(sqlite3 *db, sqlite3_stmt *q)
{
	char when[32];
	logfmt_iso8601(when, sizeof when, sqlite3_column_int64(q, 2));
	return json_pack("{sI s:s? ss sI sI sb}", "id", (json_int_t)sqlite3_column_int64(q, 0),
			 "group", (const char *)sqlite3_column_text(q, 1), "expires", when,
			 "max_uses", (json_int_t)sqlite3_column_int64(q, 3),
			 "uses", (json_int_t)sqlite3_column_int64(q, 4), "revoked", sqlite3_column_int(q, 5));
}

json_t *enroll_token_list(store *st, tn_error *err)
{
	return store_list_json(st, "SELECT id, grp, expires, max_uses, uses, revoked FROM enrollment_tokens "
			       "ORDER BY id DESC", "tokens", enroll__token_row, err);
}

struct enroll__revoke {
	int64_t id;
	int changed;
};

static int enroll__revoke_tx(sqlite3 *db, void *arg, tn_error *err)
{
	struct enroll__revoke *r = arg;
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?", -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(q, 1, r->id);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	r->changed = sqlite3_changes(db);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

int enroll_token_revoke(store *st, int64_t id, tn_error *err)
{
	struct enroll__revoke r = { id, 0 };
	int rc = store_sync(st, enroll__revoke_tx, &r, err);
	if (rc == 0 && !r.changed)
		return tn_err(err, TN_ENOTFOUND, "no enrollment token %lld", (long long)id);
	return rc;
}

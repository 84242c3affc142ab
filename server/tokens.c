/* server/tokens.c -- API tokens, their scopes, the audit trail (refusals
 * bounded per address and window, the rest summarized by the tn-audit
 * thread) and the failed-authentication limiter (see tokens.h). */
#define _GNU_SOURCE  /* pthread_setname_np */
#include "tokens.h"

#include <assert.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "log.h"
#include "logfmt.h"
#include "tn.h"

/* --- roles ---------------------------------------------------------------- */

static const char *const tokens__roles[] = {
	[ROLE_NONE] = "none", [ROLE_VIEWER] = "viewer", [ROLE_OPERATOR] = "operator", [ROLE_ADMIN] = "admin",
};

const char *tokens_role_name(tn_role role)
{
	return role >= ROLE_NONE && role <= ROLE_ADMIN ? tokens__roles[role] : "none";
}

tn_role tokens_role_parse(const char *name)
{
	for (int r = ROLE_VIEWER; name && r <= ROLE_ADMIN; r++)
		if (strcmp(name, tokens__roles[r]) == 0)
			return (tn_role)r;
	return ROLE_NONE;
}

static int tokens__under(const char *path, const char *prefix)
{
	size_t n = strlen(prefix);
	return strncmp(path, prefix, n) == 0 && (path[n] == '\0' || path[n] == '/' || path[n] == '?');
}

tn_role tokens_required_role(const char *method, const char *path)
{
	int read = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;

	if (tokens__under(path, "/v1/tokens") || tokens__under(path, "/v1/audit"))
		return ROLE_ADMIN;
	/* The table every update decision rests on: changing it can unblock a
	 * part that cannot take a firmware. */
	if (tokens__under(path, "/v1/flash-parts") && !read)
		return ROLE_ADMIN;
	if (read)
		return ROLE_VIEWER;
	/* Opening and shaping a log stream is watching, not changing. */
	if (tokens__under(path, "/v1/logstreams"))
		return ROLE_VIEWER;
	return ROLE_OPERATOR;
}

/* --- tokens ----------------------------------------------------------------- */

int tokens_check(store *st, const char *token, tokens_who *who, tn_error *err)
{
	char hash[AUTH_HASH_HEX], when[32];
	sqlite3 *db;
	sqlite3_stmt *q = NULL;
	int rc;

	memset(who, 0, sizeof *who);
	if (!token || !*token || strlen(token) > TOKENS_MAX_LEN)
		return tn_err(err, TN_EAUTH, "unknown token");
	/* Looked up by hash: timing says nothing about a stored token. */
	auth_hash_hex(token, strlen(token), hash);
	if (!(db = store_reader_get(st)))
		return tn_err(err, TN_EIO, "no read connection");
	if (sqlite3_prepare_v2(db, "SELECT id, role, name, expires, revoked FROM tokens WHERE hash = ?", -1,
			       &q, NULL) != SQLITE_OK) {
		rc = tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	sqlite3_bind_text(q, 1, hash, -1, SQLITE_STATIC);
	if (sqlite3_step(q) != SQLITE_ROW) {
		rc = tn_err(err, TN_EAUTH, "unknown token");
		goto done;
	}
	who->id = sqlite3_column_int64(q, 0);
	who->role = tokens_role_parse((const char *)sqlite3_column_text(q, 1));
	snprintf(who->name, sizeof who->name, "%s",
		 sqlite3_column_text(q, 2) ? (const char *)sqlite3_column_text(q, 2) : "");
	if (sqlite3_column_int(q, 4)) {
		rc = tn_err(err, TN_EAUTH, "token %lld was revoked", (long long)who->id);
	} else if (sqlite3_column_type(q, 3) != SQLITE_NULL && sqlite3_column_int64(q, 3) <= tn_now_ms()) {
		logfmt_iso8601(when, sizeof when, sqlite3_column_int64(q, 3));
		rc = tn_err(err, TN_EAUTH, "token %lld expired at %s", (long long)who->id, when);
	} else if (who->role == ROLE_NONE) {
		rc = tn_err(err, TN_EAUTH, "token %lld has no known role", (long long)who->id);
	} else {
		rc = 0;
	}
done:
	sqlite3_finalize(q);
	store_reader_put(st, db);
	return rc;
}

struct tokens__create {
	const char *hash, *role, *name;
	int64_t created, expires;  /* expires 0: never */
	int64_t id;
};

static int tokens__create_tx(sqlite3 *db, void *arg, tn_error *err)
{
	struct tokens__create *c = arg;
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "INSERT INTO tokens (hash, role, name, created, expires) VALUES (?, ?, ?, ?, ?)",
			       -1, &q, NULL) != SQLITE_OK)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, c->hash, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, c->role, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, c->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 4, c->created);
	if (c->expires)
		sqlite3_bind_int64(q, 5, c->expires);
	else
		sqlite3_bind_null(q, 5);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	c->id = sqlite3_last_insert_rowid(db);
	return 0;
}

static int tokens__name_ok(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

int tokens_create(store *st, json_t *body, json_t **out, tn_error *err)
{
	const char *key;
	json_t *v, *role = json_object_get(body, "role"), *name = json_object_get(body, "name"),
		   *exp = json_object_get(body, "expires_in");
	char token[64], hash[AUTH_HASH_HEX], created[32], expires[32];

	json_object_foreach(body, key, v)
		if (strcmp(key, "role") && strcmp(key, "name") && strcmp(key, "expires_in"))
			return tn_err(err, TN_EINVAL, "unknown member '%s'", key);
	if (!json_is_string(role) || tokens_role_parse(json_string_value(role)) == ROLE_NONE)
		return tn_err(err, TN_EINVAL, "'role' must be \"admin\", \"operator\" or \"viewer\"");
	if (name && !json_is_null(name) &&
	    (!json_is_string(name) || json_string_length(name) == 0 || json_string_length(name) > 128 ||
	     !tokens__name_ok(json_string_value(name))))
		return tn_err(err, TN_EINVAL, "'name' must be a string of 1 to 128 bytes without control characters");
	if (exp && !json_is_null(exp) &&
	    (!json_is_integer(exp) || json_integer_value(exp) < 1 || json_integer_value(exp) > 10LL * 366 * 86400))
		return tn_err(err, TN_EINVAL, "'expires_in' must be seconds, from 1 to ten years (or absent: never)");
	if (auth_random_secret("tdt_", token))
		return tn_err(err, TN_EIO, "no randomness available");
	auth_hash_hex(token, strlen(token), hash);
	struct tokens__create c = {
		.hash = hash, .role = json_string_value(role),
		.name = json_is_string(name) ? json_string_value(name) : NULL,
		.created = tn_now_ms(),
	};
	if (json_is_integer(exp))
		c.expires = c.created + 1000 * json_integer_value(exp);
	int rc = store_sync(st, tokens__create_tx, &c, err);
	if (rc)
		return rc;
	logfmt_iso8601(created, sizeof created, c.created);
	if (c.expires)
		logfmt_iso8601(expires, sizeof expires, c.expires);
	*out = json_pack("{sI ss ss s:s? ss s:s?}", "id", (json_int_t)c.id, "token", token, "role", c.role,
			 "name", c.name, "created", created, "expires", c.expires ? expires : NULL);
	return 0;
}

static json_t *tokens__row(sqlite3 *db, sqlite3_stmt *q)
{
	char created[32], expires[32];
	(void)db;
	logfmt_iso8601(created, sizeof created, sqlite3_column_int64(q, 3));
	if (sqlite3_column_type(q, 4) != SQLITE_NULL)
		logfmt_iso8601(expires, sizeof expires, sqlite3_column_int64(q, 4));
	return json_pack("{sI ss s:s? ss s:s? sb}", "id", (json_int_t)sqlite3_column_int64(q, 0),
			 "role", (const char *)sqlite3_column_text(q, 1), "name", (const char *)sqlite3_column_text(q, 2),
			 "created", created, "expires", sqlite3_column_type(q, 4) != SQLITE_NULL ? expires : NULL,
			 "revoked", sqlite3_column_int(q, 5));
}

json_t *tokens_list(store *st, tn_error *err)
{
	return store_list_json(st, "SELECT id, role, name, created, expires, revoked FROM tokens ORDER BY id DESC",
			       "tokens", tokens__row, err);
}

struct tokens__revoke {
	int64_t id;
};

static int tokens__revoke_tx(sqlite3 *db, void *arg, tn_error *err)
{
	struct tokens__revoke *r = arg;
	sqlite3_stmt *q;
	int found = 0, others = 0, is_admin = 0;

	/* One transaction: two admins revoking each other cannot both win. */
	if (sqlite3_prepare_v2(db, "SELECT role = 'admin', (SELECT count(*) FROM tokens WHERE role = 'admin' "
			       "AND revoked = 0 AND (expires IS NULL OR expires > ?2) AND id != ?1) "
			       "FROM tokens WHERE id = ?1 AND revoked = 0", -1, &q, NULL) != SQLITE_OK)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(q, 1, r->id);
	sqlite3_bind_int64(q, 2, tn_now_ms());
	if (sqlite3_step(q) == SQLITE_ROW) {
		found = 1;
		is_admin = sqlite3_column_int(q, 0);
		others = sqlite3_column_int(q, 1);
	}
	sqlite3_finalize(q);
	if (!found)
		return tn_err(err, TN_ENOTFOUND, "no token %lld (or it is already revoked)", (long long)r->id);
	if (is_admin && others == 0)
		return tn_err(err, TN_ESTATE, "token %lld is the last usable admin token: create another admin "
			      "token before revoking it", (long long)r->id);
	if (sqlite3_prepare_v2(db, "UPDATE tokens SET revoked = 1 WHERE id = ?", -1, &q, NULL) != SQLITE_OK)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(q, 1, r->id);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

int tokens_revoke(store *st, int64_t id, tn_error *err)
{
	struct tokens__revoke r = { id };
	return store_sync(st, tokens__revoke_tx, &r, err);
}

/* --- audit ------------------------------------------------------------------- */

/* Length of the valid UTF-8 character at s (left bytes there), 1 to 4; 0 if
 * none starts there.  The rules jansson checks: no overlong form, no
 * surrogate, nothing past U+10FFFF; and no NUL (a C string would end). */
static size_t audit__utf8_len(const unsigned char *s, size_t left)
{
	uint32_t cp;
	size_t n;

	if (s[0] == 0)
		return 0;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xC2 && s[0] <= 0xDF)
		n = 2, cp = s[0] & 0x1F;
	else if (s[0] >= 0xE0 && s[0] <= 0xEF)
		n = 3, cp = s[0] & 0x0F;
	else if (s[0] >= 0xF0 && s[0] <= 0xF4)
		n = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (n > left)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3F);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return n;
}

/* s (len bytes) as valid UTF-8 of at most max bytes, cut between
 * characters.  escape: '%', control characters and every byte of no valid
 * character written %XX (a path, a method: what was requested stays
 * readable and exact); else such a byte becomes U+FFFD.  owned: caller
 * frees with free(); NULL when memory runs out. */
static char *audit__clean(const char *s, size_t len, size_t max, int escape)
{
	static const char hex[] = "0123456789ABCDEF";
	char *out = malloc(max + 1), *p = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len;) {
		const unsigned char *c = (const unsigned char *)s + i;
		size_t n = audit__utf8_len(c, len - i);
		const char *piece = (const char *)c;
		size_t piece_len = n;
		char esc[3];
		if (n == 0 || (escape && n == 1 && (*c < 0x20 || *c == 0x7f || *c == '%'))) {
			if (escape) {
				esc[0] = '%', esc[1] = hex[*c >> 4], esc[2] = hex[*c & 15];
				piece = esc;
			} else {
				piece = "\xEF\xBF\xBD";   /* U+FFFD REPLACEMENT CHARACTER */
			}
			piece_len = 3;
			n = 1;
		}
		if ((size_t)(p - out) + piece_len > max)
			break;
		memcpy(p, piece, piece_len);
		p += piece_len;
		i += n;
	}
	*p = '\0';
	return out;
}

void audit_copy(char *dst, size_t cap, const char *src)
{
	size_t len = strlen(src), keep = 0;

	if (!cap)
		return;
	while (keep < len) {
		size_t n = audit__utf8_len((const unsigned char *)src + keep, len - keep);
		if (keep + (n ? n : 1) > cap - 1)
			break;
		keep += n ? n : 1;
	}
	memcpy(dst, src, keep);
	dst[keep] = '\0';
}

static void tokens__bind_opt(sqlite3_stmt *q, int i, const char *s)
{
	if (s)
		sqlite3_bind_text(q, i, s, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(q, i);
}

static int audit__append_tx(sqlite3 *db, void *arg, tn_error *err)
{
	const audit_entry *e = arg;
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "INSERT INTO audit (ts, token_id, actor, role, addr, method, path, status, detail) "
			       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", -1, &q, NULL) != SQLITE_OK)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(q, 1, tn_now_ms());
	if (e->token_id)
		sqlite3_bind_int64(q, 2, e->token_id);
	else
		sqlite3_bind_null(q, 2);
	sqlite3_bind_text(q, 3, e->actor, -1, SQLITE_STATIC);
	tokens__bind_opt(q, 4, e->role);
	tokens__bind_opt(q, 5, e->addr);
	sqlite3_bind_text(q, 6, e->method, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 7, e->path, -1, SQLITE_STATIC);
	sqlite3_bind_int(q, 8, e->status);
	tokens__bind_opt(q, 9, e->detail);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

/* A text of an entry, cleaned (NULL stays NULL). */
static int audit__clean_opt(const char *s, size_t max, int escape, char **out)
{
	*out = s ? audit__clean(s, strlen(s), max, escape) : NULL;
	return s && !*out;
}

int audit_append(store *st, const audit_entry *e, tn_error *err)
{
	audit_entry c = *e;
	char *actor, *role, *addr, *method, *path, *detail;
	int oom = audit__clean_opt(e->actor ? e->actor : "anonymous", AUDIT_MAX_TEXT, 0, &actor) |
		  audit__clean_opt(e->role, AUDIT_MAX_TEXT, 0, &role) |
		  audit__clean_opt(e->addr, AUDIT_MAX_TEXT, 0, &addr) |
		  audit__clean_opt(e->method ? e->method : "", AUDIT_MAX_METHOD, 1, &method) |
		  audit__clean_opt(e->path ? e->path : "", AUDIT_MAX_PATH, 1, &path) |
		  audit__clean_opt(e->detail, AUDIT_MAX_TEXT, 0, &detail);
	int rc;

	if (oom) {
		rc = tn_err(err, TN_ENOMEM, "out of memory");
	} else {
		c.actor = actor, c.role = role, c.addr = addr, c.method = method, c.path = path, c.detail = detail;
		rc = store_sync(st, audit__append_tx, &c, err);
	}
	free(actor);
	free(role);
	free(addr);
	free(method);
	free(path);
	free(detail);
	return rc;
}

/* A text column as JSON: as stored, or cleaned like audit_append does when it
 * is not valid UTF-8 (rows written before it did).  NULL: out of memory. */
static json_t *audit__column(sqlite3_stmt *q, int col, int escape)
{
	if (sqlite3_column_type(q, col) == SQLITE_NULL)
		return json_null();
	const char *s = (const char *)sqlite3_column_text(q, col);
	size_t len = (size_t)sqlite3_column_bytes(q, col);
	if (!s)
		return NULL;
	json_t *j = json_stringn(s, len);
	if (j)
		return j;
	char *clean = audit__clean(s, len, 3 * len, escape);
	j = clean ? json_string(clean) : NULL;
	free(clean);
	return j;
}

/* One entry of GET /v1/audit.  NULL: out of memory. */
static json_t *audit__row(sqlite3_stmt *q)
{
	char ts[32];
	json_t *row = json_object();

	if (!row)
		return NULL;
	logfmt_iso8601(ts, sizeof ts, sqlite3_column_int64(q, 1));
	int bad = json_object_set_new(row, "id", json_integer(sqlite3_column_int64(q, 0))) |
		  json_object_set_new(row, "ts", json_string(ts)) |
		  json_object_set_new(row, "token_id", sqlite3_column_type(q, 2) == SQLITE_NULL
			? json_null() : json_integer(sqlite3_column_int64(q, 2))) |
		  json_object_set_new(row, "actor", audit__column(q, 3, 0)) |
		  json_object_set_new(row, "role", audit__column(q, 4, 0)) |
		  json_object_set_new(row, "addr", audit__column(q, 5, 0)) |
		  json_object_set_new(row, "method", audit__column(q, 6, 1)) |
		  json_object_set_new(row, "path", audit__column(q, 7, 1)) |
		  json_object_set_new(row, "status", json_integer(sqlite3_column_int(q, 8))) |
		  json_object_set_new(row, "detail", audit__column(q, 9, 0));
	if (bad) {
		json_decref(row);
		return NULL;
	}
	return row;
}

json_t *audit_list(store *st, int64_t before, int64_t token_id, int limit, tn_error *err)
{
	sqlite3 *db = store_reader_get(st);
	sqlite3_stmt *q = NULL;
	json_t *list = json_array(), *out = NULL;
	int n = 0, rc;
	int64_t last_id = 0;

	if (!db || !list) {
		tn_err(err, TN_EIO, "no read connection");
		goto done;
	}
	if (sqlite3_prepare_v2(db, "SELECT id, ts, token_id, actor, role, addr, method, path, status, detail "
			       "FROM audit WHERE (?1 = 0 OR id < ?1) AND (?2 = 0 OR token_id = ?2) "
			       "ORDER BY id DESC LIMIT ?3", -1, &q, NULL) != SQLITE_OK) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	sqlite3_bind_int64(q, 1, before);
	sqlite3_bind_int64(q, 2, token_id);
	sqlite3_bind_int(q, 3, limit + 1);
	/* Every row read is listed, so a page holds `limit` entries and
	 * next_before names the last of them. */
	while ((rc = sqlite3_step(q)) == SQLITE_ROW && n < limit) {
		int64_t id = sqlite3_column_int64(q, 0);
		json_t *row = audit__row(q);
		if (!row)
			row = json_pack("{sI ss}", "id", (json_int_t)id, "detail", "(this entry cannot be shown)");
		if (!row || json_array_append_new(list, row)) {
			tn_err(err, TN_ENOMEM, "out of memory");
			goto done;
		}
		last_id = id;
		n++;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		goto done;
	}
	out = json_pack("{sO so}", "entries", list, "next_before",
			rc == SQLITE_ROW && n > 0 ? json_integer(last_id) : json_null());
	if (!out)
		tn_err(err, TN_ENOMEM, "out of memory");
done:
	sqlite3_finalize(q);
	store_reader_put(st, db);
	json_decref(list);
	return out;
}

/* --- refused requests, bounded -------------------------------------------------- */

/* --- per-address windows, for the two limiters below --------------------------- */

/* An address's window: free (window_start 0) or live until window_ms has
 * passed since window_start. */
struct addr_window {
	char addr[48];
	int64_t window_start;
};

/* Among nslots slots of `size` bytes, each starting with a struct
 * addr_window, the live one of addr (*own set), else the victim to take
 * for it: a free or expired slot of its probe run, or else the oldest
 * there.  Linear probing from addr's FNV-1a hash. */
static struct addr_window *addr_window__find(void *slots, size_t size, int nslots, int probe, const char *addr,
					     int64_t now, int64_t window_ms, int *own)
{
	uint32_t h = 2166136261u;
	struct addr_window *victim = NULL;
	int victim_live = 1;

	for (const char *p = addr; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	*own = 0;
	for (int i = 0; i < probe; i++) {
		struct addr_window *w = (struct addr_window *)((char *)slots + (size_t)((h + (uint32_t)i) % (uint32_t)nslots) * size);
		int live = w->window_start && now - w->window_start < window_ms;
		if (live && strcmp(w->addr, addr) == 0) {
			*own = 1;
			return w;
		}
		if (!live && victim_live) {
			victim = w;
			victim_live = 0;
		} else if (live && victim_live && (!victim || w->window_start < victim->window_start)) {
			victim = w;
		}
	}
	return victim;
}

#define AUDITLIMIT_SLOTS 1024  /* addresses tracked at once; a reused one's counts are summarized */
#define AUDITLIMIT_PROBE 8

static int audit__per_addr = AUDIT_REFUSALS_PER_ADDR, audit__per_window = AUDIT_REFUSALS_PER_WINDOW;

void audit_refusal_limits(int per_addr, int per_window)
{
	audit__per_addr = per_addr;
	audit__per_window = per_window;
}

/* Refusals counted, not recorded one by one: one summary entry's worth. */
struct audit__tally {
	int n401, n403, n429;
	int64_t first_ms, last_ms; /* wall-clock */
	int64_t token_id;          /* the token all of them presented; 0: none */
	int several;               /* not all the same token (or none) */
	int all;                   /* the summary of all addresses (addr: the last one) */
	char actor[129];
	char role[16];
	char addr[48];
};

struct auditlimit_slot {
	struct addr_window w;      /* first: see addr_window__find */
	int recorded;              /* its refusals recorded one by one in this window */
	struct audit__tally t;
};

/* A slot is free, or holds an address's window (live until window_ms has
 * passed since its first refusal) and counts in t what is not recorded one
 * by one.  A slot is retired -- t made a pending summary, or merged into
 * `all` once the total is reached -- when the thread finds its window over,
 * when it is taken for another address, and at shutdown.  Everything under
 * lock; the thread writes the pending summaries without it. */
struct auditlimit {
	store *st;
	int per_addr, per_window;
	int64_t window_ms;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_t thread;
	int stopping;
	int64_t window_start;      /* the window for all addresses; 0: none open */
	int recorded;              /* refusal entries of that window: one by one and summaries */
	struct audit__tally all;   /* what went over the total in it */
	struct audit__tally *pending;  /* summaries for the thread to write */
	size_t npending, cap_pending;
	struct auditlimit_slot slots[AUDITLIMIT_SLOTS];
};

static int audit__tally_count(const struct audit__tally *t)
{
	return t->n401 + t->n403 + t->n429;
}

/* Whose they are: one token's (or no token's), or several. */
static void audit__tally_token(struct audit__tally *t, int first, int64_t token_id, int several,
			       const char *actor, const char *role)
{
	if (first) {
		t->token_id = token_id;
		t->several = several;
		snprintf(t->actor, sizeof t->actor, "%s", actor ? actor : "");
		snprintf(t->role, sizeof t->role, "%s", role ? role : "");
	} else if (several || t->several || t->token_id != token_id) {
		t->several = 1;
		t->token_id = 0;
	}
}

/* now: wall-clock ms (the summary says when). */
static void audit__tally_add(struct audit__tally *t, const audit_entry *e, int64_t now)
{
	int first = audit__tally_count(t) == 0;
	audit__tally_token(t, first, e->token_id, 0, e->actor, e->role);
	if (first)
		t->first_ms = now;
	t->last_ms = now;
	if (e->status == 401)
		t->n401++;
	else if (e->status == 403)
		t->n403++;
	else
		t->n429++;
}

static void audit__tally_merge(struct audit__tally *into, const struct audit__tally *t)
{
	int first = audit__tally_count(into) == 0;
	audit__tally_token(into, first, t->token_id, t->several, t->actor, t->role);
	if (first || t->first_ms < into->first_ms)
		into->first_ms = t->first_ms;
	if (first || t->last_ms > into->last_ms)
		into->last_ms = t->last_ms;
	into->n401 += t->n401;
	into->n403 += t->n403;
	into->n429 += t->n429;
	memcpy(into->addr, t->addr, sizeof into->addr);
}

/* Queues a summary for the thread.  -1 without memory. */
static int auditlimit__push(auditlimit *l, const struct audit__tally *t)
{
	if (l->npending == l->cap_pending) {
		size_t cap = l->cap_pending ? 2 * l->cap_pending : 16;
		struct audit__tally *grown = realloc(l->pending, cap * sizeof *grown);
		if (!grown)
			return -1;
		l->pending = grown;
		l->cap_pending = cap;
	}
	l->pending[l->npending++] = *t;
	return 0;
}

/* Ends the window for all addresses once it is over (or now, with force):
 * what went over the total becomes its summary. */
static void auditlimit__roll(auditlimit *l, int64_t now, int force)
{
	if (!l->window_start || (!force && now - l->window_start < l->window_ms))
		return;
	if (audit__tally_count(&l->all)) {
		l->all.all = 1;
		if (auditlimit__push(l, &l->all))
			return;   /* kept, and tried again at the next roll */
	}
	memset(&l->all, 0, sizeof l->all);
	l->window_start = 0;
	l->recorded = 0;
}

/* An address's counts become its summary, within the total; past it, part
 * of the summary of all addresses. */
static void auditlimit__retire(auditlimit *l, struct auditlimit_slot *s, int64_t now)
{
	if (!audit__tally_count(&s->t))
		return;
	if (!l->window_start)
		l->window_start = now;
	memcpy(s->t.addr, s->w.addr, sizeof s->t.addr);
	if (l->recorded < l->per_window && auditlimit__push(l, &s->t) == 0)
		l->recorded++;
	else
		audit__tally_merge(&l->all, &s->t);
	memset(&s->t, 0, sizeof s->t);
}

/* The live slot of addr, or a new one: free, or its window over, or else the
 * oldest of its probe run (retired first). */
static struct auditlimit_slot *auditlimit__slot(auditlimit *l, const char *addr, int64_t now)
{
	int own;
	struct auditlimit_slot *victim = (struct auditlimit_slot *)addr_window__find(
		l->slots, sizeof l->slots[0], AUDITLIMIT_SLOTS, AUDITLIMIT_PROBE, addr, now, l->window_ms, &own);
	if (own)
		return victim;
	auditlimit__retire(l, victim, now);
	snprintf(victim->w.addr, sizeof victim->w.addr, "%s", addr);
	victim->w.window_start = now;
	victim->recorded = 0;
	return victim;
}

/* Retires the slots whose window is over (every one, with final) and ends
 * the window for all addresses when it is over (at once, with final). */
static void auditlimit__sweep(auditlimit *l, int64_t now, int final)
{
	auditlimit__roll(l, now, 0);
	for (int i = 0; i < AUDITLIMIT_SLOTS; i++) {
		struct auditlimit_slot *s = &l->slots[i];
		if (!s->w.window_start || (!final && now - s->w.window_start < l->window_ms))
			continue;
		auditlimit__retire(l, s, now);
		s->w.window_start = 0;
	}
	auditlimit__roll(l, now, final);
}

static void auditlimit__write(auditlimit *l, const struct audit__tally *t)
{
	char first[32], last[32], detail[512];
	int n = audit__tally_count(t), status = t->n401 >= t->n403 && t->n401 >= t->n429 ? 401
						: t->n403 >= t->n429 ? 403 : 429;
	tn_error err = { 0 };

	logfmt_iso8601(first, sizeof first, t->first_ms);
	logfmt_iso8601(last, sizeof last, t->last_ms);
	snprintf(detail, sizeof detail, "%d refused request%s from %s%s%s not recorded one by one, %s to %s: "
		 "401 x%d, 403 x%d, 429 x%d (recorded one by one: %d per address and %d in all per %lld s)",
		 n, n == 1 ? "" : "s", t->all ? "several addresses (the last " : t->addr, t->all ? t->addr : "",
		 t->all ? ")" : "", first, last, t->n401, t->n403, t->n429, l->per_addr, l->per_window,
		 (long long)(l->window_ms / 1000));
	audit_entry e = {
		.token_id = t->several ? 0 : t->token_id,
		.actor = t->several ? "(several)" : t->token_id ? t->actor : NULL,
		.role = !t->several && t->token_id && t->role[0] ? t->role : NULL,
		.addr = t->all ? NULL : t->addr, .method = "*", .path = "*", .status = status, .detail = detail,
	};
	if (audit_append(l->st, &e, &err))
		log_err("audit: cannot record a summary of %d refused requests from %s: %s", n,
			t->all ? "several addresses" : t->addr, err.msg);
}

/* Writes the pending summaries (called and returning under lock). */
static void auditlimit__drain(auditlimit *l)
{
	while (l->npending) {
		struct audit__tally *batch = l->pending;
		size_t n = l->npending;
		l->pending = NULL;
		l->npending = l->cap_pending = 0;
		pthread_mutex_unlock(&l->lock);
		for (size_t i = 0; i < n; i++)
			auditlimit__write(l, &batch[i]);
		free(batch);
		pthread_mutex_lock(&l->lock);
	}
}

static void *auditlimit__main(void *arg)
{
	pthread_setname_np(pthread_self(), "tn-audit"); /* for top -H, perf, gdb */
	auditlimit *l = arg;
	pthread_mutex_lock(&l->lock);
	for (;;) {
		if (!l->stopping) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&l->wake, &l->lock, &ts);
		}
		int final = l->stopping;
		auditlimit__sweep(l, tn_mono_ms(), final);
		auditlimit__drain(l);
		if (final)
			break;
	}
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

auditlimit *auditlimit_new(store *st, int window_s)
{
	auditlimit *l = calloc(1, sizeof *l);
	pthread_condattr_t ca;

	if (!l)
		return NULL;
	l->st = st;
	l->per_addr = audit__per_addr;
	l->per_window = audit__per_window;
	l->window_ms = (int64_t)(window_s > 0 ? window_s : 60) * 1000;
	pthread_mutex_init(&l->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->wake, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&l->thread, NULL, auditlimit__main, l) != 0) {
		pthread_cond_destroy(&l->wake);
		pthread_mutex_destroy(&l->lock);
		free(l);
		return NULL;
	}
	return l;
}

void auditlimit_free(auditlimit *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	l->stopping = 1;
	pthread_cond_signal(&l->wake);
	pthread_mutex_unlock(&l->lock);
	pthread_join(l->thread, NULL);   /* its last sweep wrote every summary */
	pthread_cond_destroy(&l->wake);
	pthread_mutex_destroy(&l->lock);
	free(l->pending);
	free(l);
}

int audit_refusal(auditlimit *l, const audit_entry *e, tn_error *err)
{
	int64_t now = tn_mono_ms();   /* windows; the summaries' times are wall-clock */
	int record;

	assert(e->status == 401 || e->status == 403 || e->status == 429);
	pthread_mutex_lock(&l->lock);
	auditlimit__roll(l, now, 0);
	if (!l->window_start)
		l->window_start = now;
	struct auditlimit_slot *s = auditlimit__slot(l, e->addr ? e->addr : "unknown", now);
	record = e->status != 429 && s->recorded < l->per_addr && l->recorded < l->per_window;
	if (record) {
		s->recorded++;
		l->recorded++;
	} else {
		audit__tally_add(&s->t, e, tn_now_ms());
	}
	pthread_mutex_unlock(&l->lock);
	return record ? audit_append(l->st, e, err) : 0;
}

/* --- the failed-authentication limiter ----------------------------------------- */

#define AUTHLIMIT_SLOTS 4096   /* addresses tracked at once; the oldest window is reused */
#define AUTHLIMIT_PROBE 8

struct authlimit_slot {
	struct addr_window w;      /* first: see addr_window__find */
	int failures;
};

struct authlimit {
	pthread_mutex_t lock;
	int max_failures;
	int64_t window_ms;
	struct authlimit_slot slots[AUTHLIMIT_SLOTS];
};

authlimit *authlimit_new(int max_failures, int window_s)
{
	authlimit *l = calloc(1, sizeof *l);
	if (!l)
		return NULL;
	pthread_mutex_init(&l->lock, NULL);
	l->max_failures = max_failures;
	l->window_ms = (int64_t)(window_s > 0 ? window_s : 60) * 1000;
	return l;
}

void authlimit_free(authlimit *l)
{
	if (!l)
		return;
	pthread_mutex_destroy(&l->lock);
	free(l);
}

/* The slot for addr (under lock): its own, a free or expired one, or the
 * oldest of its probe run.  create 0: NULL when addr has none. */
static struct authlimit_slot *authlimit__slot(authlimit *l, const char *addr, int64_t now, int create)
{
	int own;
	struct authlimit_slot *victim = (struct authlimit_slot *)addr_window__find(
		l->slots, sizeof l->slots[0], AUTHLIMIT_SLOTS, AUTHLIMIT_PROBE, addr, now, l->window_ms, &own);
	if (own)
		return victim;
	if (!create)
		return NULL;
	snprintf(victim->w.addr, sizeof victim->w.addr, "%s", addr);
	victim->w.window_start = now;
	victim->failures = 0;
	return victim;
}

int authlimit_wait(authlimit *l, const char *addr, int64_t now_ms)
{
	int wait = 0;
	if (!l || l->max_failures <= 0 || !addr)
		return 0;
	pthread_mutex_lock(&l->lock);
	struct authlimit_slot *s = authlimit__slot(l, addr, now_ms, 0);
	if (s && s->failures >= l->max_failures)
		wait = (int)((s->w.window_start + l->window_ms - now_ms + 999) / 1000);
	pthread_mutex_unlock(&l->lock);
	return wait > 0 ? wait : 0;
}

void authlimit_failed(authlimit *l, const char *addr, int64_t now_ms)
{
	if (!l || l->max_failures <= 0 || !addr)
		return;
	pthread_mutex_lock(&l->lock);
	struct authlimit_slot *s = authlimit__slot(l, addr, now_ms, 1);
	s->failures++;
	pthread_mutex_unlock(&l->lock);
}

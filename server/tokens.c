/* server/tokens.c -- API tokens, their scopes, the audit trail and the
 * failed-authentication limiter (see tokens.h). */
#include "tokens.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
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

/* --- the failed-authentication limiter ----------------------------------------- */

#define AUTHLIMIT_SLOTS 4096   /* addresses tracked at once; the oldest window is reused */
#define AUTHLIMIT_PROBE 8

struct authlimit_slot {
	char addr[48];
	int64_t window_start;      /* ms; 0: free */
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

static uint32_t authlimit__hash(const char *s)
{
	uint32_t h = 2166136261u;   /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* The slot for addr (under lock): its own, a free or expired one, or the
 * oldest of its probe run.  create 0: NULL when addr has none. */
static struct authlimit_slot *authlimit__slot(authlimit *l, const char *addr, int64_t now, int create)
{
	uint32_t h = authlimit__hash(addr);
	struct authlimit_slot *victim = NULL;
	int victim_live = 1;

	for (int i = 0; i < AUTHLIMIT_PROBE; i++) {
		struct authlimit_slot *s = &l->slots[(h + (uint32_t)i) % AUTHLIMIT_SLOTS];
		int live = s->window_start && now - s->window_start < l->window_ms;
		if (live && strcmp(s->addr, addr) == 0)
			return s;
		/* prefer a free or expired slot, else the oldest window */
		if (!live && victim_live) {
			victim = s;
			victim_live = 0;
		} else if (live && victim_live && (!victim || s->window_start < victim->window_start)) {
			victim = s;
		}
	}
	if (!create)
		return NULL;
	snprintf(victim->addr, sizeof victim->addr, "%s", addr);
	victim->window_start = now;
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
		wait = (int)((s->window_start + l->window_ms - now_ms + 999) / 1000);
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

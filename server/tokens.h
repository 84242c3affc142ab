/* server/tokens.h -- who may call the HTTP API, and what they did.
 * Owns: API token roles and scopes (admin, operator, viewer), token
 * creation, lookup, expiry and revocation; the audit trail (one entry per
 * change made through the API and per refused token); and the per-address
 * limit on failed authentication attempts.
 * Threads: any.  The limiter has its own lock; the rest goes through the
 * store (sync ops on its writer thread, reads on pooled readers). */
#ifndef TN_TOKENS_H
#define TN_TOKENS_H

#include <jansson.h>
#include <stdint.h>

#include "store.h"

/* Ordered: each role may do everything the roles below it may. */
typedef enum { ROLE_NONE = 0, ROLE_VIEWER = 1, ROLE_OPERATOR = 2, ROLE_ADMIN = 3 } tn_role;

const char *tokens_role_name(tn_role role);
/* "admin", "operator", "viewer" -> the role; ROLE_NONE for anything else. */
tn_role tokens_role_parse(const char *name);

/* The role a request needs: GETs need viewer, log streams viewer, changes
 * operator; tokens, the audit trail and changes to the flash-parts table
 * (the never-brick safety data) need admin.  path is the URL path. */
tn_role tokens_required_role(const char *method, const char *path);

/* Who presented a token. */
typedef struct tokens_who {
	int64_t id;
	tn_role role;
	char name[129];
} tokens_who;

#define TOKENS_MAX_LEN 256

/* Checks a presented token.  0 with *who filled; TN_EAUTH with the reason
 * in err ("unknown token", "token 4 expired at ...", "token 4 was
 * revoked"); TN_EIO if the store cannot be read. */
int tokens_check(store *st, const char *token, tokens_who *who, tn_error *err);

/* POST /v1/tokens body {"role", "name"?, "expires_in"? seconds}: 0 with *out
 * {"id","token","role","name","created","expires"} (the token shown once;
 * only its SHA-256 is kept), or TN_EINVAL naming the bad member. */
int tokens_create(store *st, json_t *body, json_t **out, tn_error *err);
/* {"tokens":[{"id","role","name","created","expires","revoked"}]}, newest first. */
json_t *tokens_list(store *st, tn_error *err);
/* Revokes a token: TN_ENOTFOUND, or TN_ESTATE when it is the last usable
 * admin token (nobody could manage tokens any more). */
int tokens_revoke(store *st, int64_t id, tn_error *err);

/* --- the audit trail ---------------------------------------------------------- */

typedef struct audit_entry {
	int64_t token_id;          /* 0: no valid token */
	const char *actor;         /* the token's name, or "anonymous" */
	const char *role;          /* NULL: none */
	const char *addr;          /* the client's address */
	const char *method, *path;
	int status;                /* the HTTP status answered */
	const char *detail;        /* NULL or why (e.g. the refusal's reason) */
} audit_entry;

/* Longest texts an entry keeps, in bytes (cut on a character boundary). */
#define AUDIT_MAX_METHOD 64
#define AUDIT_MAX_PATH 1024
#define AUDIT_MAX_TEXT 1024        /* actor, role, address, detail */

/* Appends one entry; durable when it returns 0.  Whatever bytes a request
 * held, the entry is stored as valid UTF-8 (jansson, and so GET /v1/audit,
 * accepts nothing else): in method and path, '%', control characters and
 * every byte that is not part of a valid UTF-8 character are written %XX
 * (the path is the decoded one, so /v1/devices/%ff is stored as
 * /v1/devices/%FF and a literal '%' as %25); in the other texts such a byte
 * becomes U+FFFD.  A text over its limit is cut on a character boundary. */
int audit_append(store *st, const audit_entry *e, tn_error *err);

/* Copies src into dst (cap bytes with the NUL) like snprintf("%s"), but cuts
 * a text too long for dst before the character the cut would split. */
void audit_copy(char *dst, size_t cap, const char *src);

/* Entries newest first: {"entries":[{"id","ts","token_id","actor","role",
 * "addr","method","path","status","detail"}], "next_before": id or null}.
 * before 0: from the newest; token_id 0: every token.  A stored text that is
 * not valid UTF-8 (written before audit_append cleaned its texts) is shown
 * cleaned the same way; a row that still cannot be shown is listed as
 * {"id", "detail": "(this entry cannot be shown)"}, never left out.  NULL
 * only when the store cannot be read (or memory runs out). */
json_t *audit_list(store *st, int64_t before, int64_t token_id, int limit, tn_error *err);

/* --- failed authentication, per address ---------------------------------------- */

typedef struct authlimit authlimit;

/* At most max_failures failed attempts per address within window_s seconds;
 * then the address is refused until the window ends.  max_failures 0: no limit. */
authlimit *authlimit_new(int max_failures, int window_s);
void authlimit_free(authlimit *l);
/* Seconds until addr may try again, or 0 when it may now. */
int authlimit_wait(authlimit *l, const char *addr, int64_t now_ms);
/* Counts a failed attempt from addr. */
void authlimit_failed(authlimit *l, const char *addr, int64_t now_ms);

#endif

/* server/tokens.h -- who may call the HTTP API, and what they did.
 * Owns: API token roles and scopes (admin, operator, viewer), token
 * creation, lookup, expiry and revocation; the audit trail (one entry per
 * change made through the API and per refused request, refusals bounded per
 * address and window); and the per-address limit on failed authentication
 * attempts.
 * Threads: any.  Each limiter has its own lock; the refusal limiter a thread
 * (tn-audit) that writes its summaries; the rest goes through the store
 * (sync ops on its writer thread, reads on pooled readers). */
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

/* --- refused requests in the audit trail, bounded -------------------------------- */

/* Refused requests -- a wrong, expired or revoked token (401), a token
 * without the role (403), an address throttled by the failed-attempt
 * limiter (429) -- could otherwise fill the trail and each cost a write
 * before its answer.  Within a window (--auth-fail-window), the first
 * AUDIT_REFUSALS_PER_ADDR 401s and 403s from an address, and at most
 * AUDIT_REFUSALS_PER_WINDOW entries for all addresses together, are recorded
 * one by one; 429s never are.  Everything else is counted in memory and
 * written when the address's window ends as one summary entry (method and
 * path "*", the counts by status, first and last time, the token if all
 * presented the same one); summaries too count against the total, and once
 * it is reached the rest go into one summary for all addresses at the end
 * of that window.  So a window holds at most AUDIT_REFUSALS_PER_WINDOW + 1
 * refusal entries, whatever the number of addresses.  At shutdown every
 * count is written; a crash loses at most the last window's. */
#define AUDIT_REFUSALS_PER_ADDR 20
#define AUDIT_REFUSALS_PER_WINDOW 200

typedef struct auditlimit auditlimit;

/* Starts the thread that writes summaries (at most a second after their
 * window ends) on st, borrowed until auditlimit_free.  NULL without memory
 * or a thread. */
auditlimit *auditlimit_new(store *st, int window_s);
/* Writes every summary still counted (open windows too) and stops. */
void auditlimit_free(auditlimit *l);
/* Records a refused request as its own entry (as audit_append, durable when
 * it returns 0) or counts it for a summary (0; nothing written now).  e's
 * status is 401, 403 or 429; its texts are borrowed for the call only. */
int audit_refusal(auditlimit *l, const audit_entry *e, tn_error *err);
/* Replaces the two limits for auditlimits made after it (tests and the API
 * fuzzer, which must see every entry; not an option). */
void audit_refusal_limits(int per_addr, int per_window);

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

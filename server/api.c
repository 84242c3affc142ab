/* server/api.c -- the HTTP API (see api.h, docs/api.md).
 * Each request: the body is gathered (capped at max_body), then one route
 * handler answers with JSON; errors are {"error":{"code","message"}}. */
#define _GNU_SOURCE
#include "api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "enroll.h"
#include "flashparts.h"
#include "flashtable.h"
#include "fwstore.h"
#include "idmap.h"
#include "log.h"
#include "logfmt.h"
#include "logstream.h"
#include "metrics.h"
#include "net.h"
#include "multipart.h"
#include "rollout.h"
#include "scheduler.h"
#include "supervisor.h"
#include "tokens.h"

#define API_DEFAULT_LIMIT 100
#define API_MAX_LIMIT 1000
#define API_MAX_NAME 128
#define API_MAX_GROUP 64
#define API_MAX_SEARCH 128

struct api {
	api_options opt;
	store *st;
	registry *reg;
	device_loop *dev;
	scheduler *sched;
	supervisor *sup;
	logstreams *streams;
	struct MHD_Daemon *mhd;
	int fd;
	int port;
	_Atomic int suspended;  /* /agent/ requests a worker still has to answer */
	authlimit *auth_limit;  /* failed token attempts per address */
	auditlimit *audit_limit; /* refusals recorded one by one, per address (tokens.h) */
	/* Connections, in all and per address (under conns_lock). */
	pthread_mutex_t conns_lock;
	int nconns;
	idmap per_ip;           /* address hash -> connections from it */
};

/* One request in flight. */
struct req {
	struct MHD_Connection *conn;
	api *a;
	const char *method, *url;
	char *body;
	size_t body_len;
	size_t max_body;     /* for this route */
	int too_large;
	/* an /agent/ request: 1 while the agent runs it (the connection is
	 * suspended), 2 once answered; the answer is copied here */
	int agent_state;
	int agent_status;
	char *agent_body;
	size_t agent_len;
	char **agent_headers;
	/* who made it (a /v1/ request with a valid token), and its audit entry */
	tokens_who who;
	char addr[48];
	int audit;             /* 1: record it in the audit trail when answered */
	int refusal;           /* ...as a refused request (401, 403, 429): bounded */
	char audit_detail[256];
	int retry_after;       /* seconds, for a 429 or 503 */
	int counted;           /* the refusal is counted already, as its own kind */
	int close;             /* answer with Connection: close */
};

/* --- responses -------------------------------------------------------------- */

/* Records an audited request with the status it is answered with.  A change
 * that cannot be recorded is still answered (the store is failing: the
 * change itself most likely failed too), and the failure is logged. */
static void api__audit(struct req *r, unsigned status)
{
	if (!r->audit)
		return;
	r->audit = 0;
	/* the texts are made valid UTF-8 by audit_append: r->url is decoded, any bytes */
	audit_entry e = {
		.token_id = r->who.id, .actor = r->who.id ? r->who.name : NULL,
		.role = r->who.id ? tokens_role_name(r->who.role) : NULL, .addr = r->addr,
		.method = r->method, .path = r->url, .status = (int)status,
		.detail = r->audit_detail[0] ? r->audit_detail : NULL,
	};
	tn_error err = { 0 };
	if (r->refusal ? audit_refusal(r->a->audit_limit, &e, &err) : audit_append(r->a->st, &e, &err))
		log_err("api: cannot record %s %s by token %lld in the audit trail: %s", r->method, r->url,
			(long long)r->who.id, err.msg);
}

static enum MHD_Result api__send(struct req *r, unsigned status, const char *type, char *text,
				 size_t len)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"tender\"");
	if (r->retry_after > 0) {
		char secs[16];
		snprintf(secs, sizeof secs, "%d", r->retry_after);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, secs);
	}
	if (r->close)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	api__audit(r, status);
	enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
	MHD_destroy_response(resp);
	metrics_inc(M_HTTP_REQUESTS);
	return ret;
}

/* Steals obj. */
static enum MHD_Result api__json(struct req *r, unsigned status, json_t *obj)
{
	char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
	json_decref(obj);
	if (!text)
		return MHD_NO;
	size_t len = strlen(text);
	text[len] = '\0';
	return api__send(r, status, "application/json", text, len);
}

static const struct {
	unsigned status;
	const char *code;
	metrics_error_kind kind;
} api__errors[] = {
	{ 400, "bad_request", ERR_HTTP_BAD_REQUEST },
	{ 401, "unauthorized", ERR_HTTP_UNAUTHORIZED },
	{ 403, "forbidden", ERR_HTTP_FORBIDDEN },
	{ 404, "not_found", ERR_HTTP_NOT_FOUND },
	{ 405, "method_not_allowed", ERR_HTTP_METHOD },
	{ 409, "conflict", ERR_HTTP_BAD_REQUEST },
	{ 413, "payload_too_large", ERR_HTTP_TOO_LARGE },
	{ 415, "unsupported_media_type", ERR_HTTP_MEDIA_TYPE },
	{ 429, "too_many_requests", ERR_HTTP_AUTH_THROTTLED },
	{ 500, "internal", ERR_STORE },
	{ 503, "unavailable", ERR_STORE },
};

static enum MHD_Result api__error(struct req *r, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Messages quote input (a compile error quotes the code, a 405 the method):
 * whatever the input was, the answer must be valid JSON, so valid UTF-8. */
static void api__valid_text(char *msg)
{
	json_t *probe = json_string(msg);
	if (!probe)
		for (char *p = msg; *p; p++)
			if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20)
				*p = '?';
	json_decref(probe);
}

static enum MHD_Result api__error(struct req *r, unsigned status, const char *fmt, ...)
{
	char msg[512];
	const char *code = "error";
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	api__valid_text(msg);
	if (r->audit && !r->audit_detail[0])
		audit_copy(r->audit_detail, sizeof r->audit_detail, msg);  /* not inside a character */
	for (size_t i = 0; i < TN_ARRAY_LEN(api__errors); i++)
		if (api__errors[i].status == status) {
			code = api__errors[i].code;
			if (!r->counted)
				metrics_error(api__errors[i].kind);
		}
	return api__json(r, status, json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg));
}

static enum MHD_Result api__method_not_allowed(struct req *r, const char *allow)
{
	char msg[128];
	snprintf(msg, sizeof msg, "%s is not allowed here; allowed: %s", r->method, allow);
	api__valid_text(msg);   /* a method may be any bytes */
	metrics_error(ERR_HTTP_METHOD);
	char *text = NULL;
	json_t *obj = json_pack("{s:{s:s, s:s}}", "error", "code", "method_not_allowed", "message", msg);
	text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
	json_decref(obj);
	if (!text)
		return MHD_NO;
	struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), text,
								    MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
	api__audit(r, MHD_HTTP_METHOD_NOT_ALLOWED);
	enum MHD_Result ret = MHD_queue_response(r->conn, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
	MHD_destroy_response(resp);
	metrics_inc(M_HTTP_REQUESTS);
	return ret;
}

static enum MHD_Result api__store_error(struct req *r, const tn_error *err)
{
	switch (err->code) {
	case TN_ENOTFOUND: return api__error(r, 404, "%s", err->msg);
	case TN_EEXIST: return api__error(r, 409, "%s", err->msg);
	case TN_EINVAL: return api__error(r, 400, "%s", err->msg);
	case TN_ESTATE: return api__error(r, 503, "%s", err->msg);
	default:
		log_err("api: %s %s: %s", r->method, r->url, err->msg);
		return api__error(r, 500, "the store failed: %s", err->msg);
	}
}

/* --- request helpers -------------------------------------------------------- */

static const char *api__arg(struct req *r, const char *key)
{
	return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

/* Parses ?key= as an integer in [min, max]; absent leaves *out.  -1 on error (answered). */
static int api__int_arg(struct req *r, const char *key, long long min, long long max,
			long long *out, enum MHD_Result *ret)
{
	const char *v = api__arg(r, key);
	char *end;
	if (!v)
		return 0;
	errno = 0;
	long long n = strtoll(v, &end, 10);
	if (!*v || *end || errno || n < min || n > max) {
		*ret = api__error(r, 400, "'%s' must be an integer from %lld to %lld, not '%s'", key, min,
				  max, v);
		return -1;
	}
	*out = n;
	return 0;
}

static json_t *api__json_any(struct req *r, enum MHD_Result *ret);

/* The body as a JSON object.  NULL when answered with an error. */
static json_t *api__json_body(struct req *r, enum MHD_Result *ret)
{
	json_t *obj = api__json_any(r, ret);
	if (obj && !json_is_object(obj)) {
		json_decref(obj);
		*ret = api__error(r, 400, "the body must be a JSON object");
		return NULL;
	}
	return obj;
}

/* The body as any JSON value.  NULL when answered with an error. */
static json_t *api__json_any(struct req *r, enum MHD_Result *ret)
{
	const char *type = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
						       MHD_HTTP_HEADER_CONTENT_TYPE);
	json_error_t jerr;

	if (!type || strncasecmp(type, "application/json", 16) != 0 ||
	    (type[16] != '\0' && type[16] != ';' && type[16] != ' ')) {
		*ret = api__error(r, 415, "the body must be JSON (Content-Type: application/json), not '%s'",
				  type ? type : "none");
		return NULL;
	}
	json_t *obj = json_loadb(r->body ? r->body : "", r->body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!obj) {
		*ret = api__error(r, 400, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
				  jerr.text);
		return NULL;
	}
	return obj;
}

/* Refuses keys other than `allowed` (NULL-terminated).  0 ok, -1 answered. */
static int api__only_keys(struct req *r, json_t *obj, const char *const *allowed, enum MHD_Result *ret)
{
	const char *key;
	json_t *v;
	json_object_foreach(obj, key, v) {
		int ok = 0;
		for (const char *const *k = allowed; *k; k++)
			ok |= strcmp(key, *k) == 0;
		if (!ok) {
			*ret = api__error(r, 400, "unknown member '%s'", key);
			return -1;
		}
	}
	return 0;
}

/* An optional string member (or null when `nullable`), at most max bytes of
 * printable characters.  0 ok, -1 answered. */
static int api__opt_string(struct req *r, json_t *obj, const char *key, size_t max, int nullable,
			   json_t **out, enum MHD_Result *ret)
{
	json_t *v = json_object_get(obj, key);
	*out = v;
	if (!v)
		return 0;
	if (json_is_null(v) && nullable)
		return 0;
	if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > max) {
		*ret = api__error(r, 400, "'%s' must be a string of 1 to %zu bytes%s", key, max,
				  nullable ? " or null" : "");
		return -1;
	}
	const char *s = json_string_value(v);
	for (size_t i = 0; s[i]; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
			*ret = api__error(r, 400, "'%s' must not contain control characters", key);
			return -1;
		}
	if (strlen(s) != json_string_length(v)) {
		*ret = api__error(r, 400, "'%s' must not contain NUL", key);
		return -1;
	}
	return 0;
}

/* --- /v1/devices ------------------------------------------------------------ */

/* Adds what the flash-parts table says of a device's part to its "flash":
 * "parts" (names), "table" ("known", "unknown" or "shared id") and the
 * conservative "uniform_4k_erase" / "uniform_64k_erase" over those parts.
 * The verdict against a particular firmware is in a rollout's plan. */
static void api__flash_facts(struct req *r, json_t *dev, json_t *cache)
{
	json_t *flash = json_object_get(dev, "flash");
	const char *jedec = json_string_value(json_object_get(flash, "jedec"));
	flash_part *rows = NULL;
	size_t n = 0;
	tn_error err;

	if (!jedec)
		return;
	/* A page of devices shares few parts: one table read per JEDEC id. */
	json_t *known = cache ? json_object_get(cache, jedec) : NULL;
	if (known) {
		json_object_update(flash, known);
		return;
	}
	if (flashtable_rows(r->a->st, (uint32_t)strtoul(jedec, NULL, 16), &rows, &n, &err))
		return;
	json_t *names = json_array();
	int u4 = n > 0, u64 = n > 0;
	for (size_t i = 0; i < n; i++) {
		json_array_append_new(names, json_string(rows[i].part));
		u4 &= rows[i].uniform_4k;
		u64 &= rows[i].uniform_64k;
	}
	json_object_set_new(flash, "parts", names);
	json_object_set_new(flash, "table", json_string(n == 0 ? "unknown" : n == 1 ? "known" : "shared id"));
	json_object_set_new(flash, "uniform_4k_erase", n ? json_boolean(u4) : json_null());
	json_object_set_new(flash, "uniform_64k_erase", n ? json_boolean(u64) : json_null());
	if (cache)
		json_object_set_new(cache, jedec, json_pack("{s:O, s:O, s:O, s:O}", "parts", names,
			"table", json_object_get(flash, "table"),
			"uniform_4k_erase", json_object_get(flash, "uniform_4k_erase"),
			"uniform_64k_erase", json_object_get(flash, "uniform_64k_erase")));
	free(rows);
}

/* Adds "agent_state": the agent's state as GET .../agent shows it, or null
 * when the device's group has no agent code.  What its worker published:
 * a list never waits for an agent worker (a busy one would hold an HTTP
 * thread per device).  groups (may be NULL) caches, per page, which groups
 * have code. */
static void api__agent_state(struct req *r, json_t *dev, json_t *groups)
{
	json_t *state = json_null();
	const char *id = json_string_value(json_object_get(dev, "id"));
	const char *group = json_string_value(json_object_get(dev, "group"));
	uint64_t dev_id;
	int has = 0;

	if (group) {
		json_t *known = groups ? json_object_get(groups, group) : NULL;
		has = known ? json_is_true(known) : store_group_has_agent(r->a->st, group);
		if (!known && groups)
			json_object_set_new(groups, group, json_boolean(has));
	}
	if (has && r->a->sup && id && tn_device_id_parse(id, &dev_id) == 0)
		state = json_string(sup_agent_state(r->a->sup, dev_id));
	json_object_set_new(dev, "agent_state", state);
}

static enum MHD_Result api__devices_list(struct req *r)
{
	store_device_filter f = { .online = -1, .limit = API_DEFAULT_LIMIT };
	enum MHD_Result ret = MHD_NO;
	long long limit = API_DEFAULT_LIMIT;
	const char *online = api__arg(r, "online"), *after = api__arg(r, "after");
	tn_error err = { 0 };

	if (api__int_arg(r, "limit", 1, API_MAX_LIMIT, &limit, &ret))
		return ret;
	f.limit = (int)limit;
	if (online) {
		if (strcmp(online, "true") == 0 || strcmp(online, "1") == 0)
			f.online = 1;
		else if (strcmp(online, "false") == 0 || strcmp(online, "0") == 0)
			f.online = 0;
		else
			return api__error(r, 400, "'online' must be true or false, not '%s'", online);
	}
	if (after) {
		if (tn_device_id_parse(after, &f.after))
			return api__error(r, 400, "'after' must be a device id (16 hex digits), not '%s'", after);
		f.has_after = 1;
	}
	f.hw = api__arg(r, "hw");
	f.group = api__arg(r, "group");
	f.search = api__arg(r, "q");
	if (f.search && strlen(f.search) > API_MAX_SEARCH)
		return api__error(r, 400, "'q' is at most %d bytes", API_MAX_SEARCH);
	if (f.search && !*f.search)
		f.search = NULL;
	json_t *out = store_device_list(r->a->st, &f, &err), *dev;
	if (!out)
		return api__store_error(r, &err);
	size_t i;
	json_t *cache = json_object(), *groups = json_object();
	json_array_foreach(json_object_get(out, "devices"), i, dev) {
		api__flash_facts(r, dev, cache);
		api__agent_state(r, dev, groups);
	}
	json_decref(cache);
	json_decref(groups);
	return api__json(r, 200, out);
}

static enum MHD_Result api__devices_create(struct req *r)
{
	static const char *const keys[] = { "id", "name", "group", NULL };
	enum MHD_Result ret = MHD_NO;
	json_t *body = api__json_body(r, &ret), *name, *group;
	char secret[64], hash[AUTH_HASH_HEX];
	tn_error err = { 0 };
	uint64_t id;

	if (!body)
		return ret;
	json_t *jid = json_object_get(body, "id");
	if (api__only_keys(r, body, keys, &ret) ||
	    api__opt_string(r, body, "name", API_MAX_NAME, 1, &name, &ret) ||
	    api__opt_string(r, body, "group", API_MAX_GROUP, 1, &group, &ret))
		goto done;
	if (!json_is_string(jid) || tn_device_id_parse(json_string_value(jid), &id)) {
		ret = api__error(r, 400, "'id' is required: 16 hex digits, like \"30000c2a690c77c5\"");
		goto done;
	}
	if (auth_random_secret("tds_", secret)) {
		ret = api__error(r, 500, "no randomness available for a secret");
		goto done;
	}
	auth_hash_hex(secret, strlen(secret), hash);
	int rc = store_device_create(r->a->st, id, hash, json_string_value(name),
				     json_string_value(group), &err);
	if (rc) {
		ret = api__store_error(r, &err);
		goto done;
	}
	registry_set(r->a->reg, id, hash);
	json_t *dev = store_device_get(r->a->st, id);
	if (!dev) {
		ret = api__error(r, 500, "the device was registered but cannot be read back");
		goto done;
	}
	json_object_set_new(dev, "secret", json_string(secret));
	ret = api__json(r, 201, dev);
done:
	json_decref(body);
	return ret;
}

static enum MHD_Result api__device_patch(struct req *r, uint64_t id)
{
	static const char *const keys[] = { "name", "group", NULL };
	enum MHD_Result ret = MHD_NO;
	json_t *body = api__json_body(r, &ret), *name, *group;
	tn_error err = { 0 };

	if (!body)
		return ret;
	if (api__only_keys(r, body, keys, &ret) ||
	    api__opt_string(r, body, "name", API_MAX_NAME, 1, &name, &ret) ||
	    api__opt_string(r, body, "group", API_MAX_GROUP, 1, &group, &ret))
		goto done;
	if (store_device_update(r->a->st, id, name, group, &err)) {
		ret = api__store_error(r, &err);
		goto done;
	}
	if (group) /* a new group: the agent now runs that group's code */
		sup_restart(r->a->sup, id, &err);
	json_t *dev = store_device_get(r->a->st, id);
	ret = dev ? api__json(r, 200, dev) : api__error(r, 404, "no such device");
done:
	json_decref(body);
	return ret;
}

static enum MHD_Result api__device_delete(struct req *r, uint64_t id)
{
	tn_error err = { 0 };
	if (store_device_delete(r->a->st, id, &err))
		return api__store_error(r, &err);
	registry_remove(r->a->reg, id);
	device_loop_kick(r->a->dev, id, 4002, "device deleted", 1);
	sup_device_deleted(r->a->sup, id); /* its agent, timers and saved state go too */
	return api__send(r, 204, "application/json", strdup(""), 0);
}

/* Queues a streaming response (SSE). */
static enum MHD_Result api__stream(struct req *r, struct MHD_Response *resp)
{
	if (!resp)
		return api__error(r, 500, "cannot open the stream");
	enum MHD_Result ret = MHD_queue_response(r->conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	metrics_inc(M_HTTP_REQUESTS);
	return ret;
}

static int api__wants_sse(struct req *r)
{
	const char *accept = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
	const char *follow = api__arg(r, "follow");
	return (accept && strstr(accept, "text/event-stream")) ||
	       (follow && (strcmp(follow, "1") == 0 || strcmp(follow, "true") == 0));
}

static int api__text_format(struct req *r)
{
	const char *f = api__arg(r, "format");
	return f && strcmp(f, "text") == 0;
}

/* ?type=, ?since=, ?until= (ISO 8601), ?q= (text in the message).  -1 answered. */
static int api__log_filters(struct req *r, store_event_query *q, enum MHD_Result *ret)
{
	const char *type = api__arg(r, "type"), *since = api__arg(r, "since"), *until = api__arg(r, "until");
	if (type) {
		int t = events_type_parse(type);
		if (t < 0) {
			*ret = api__error(r, 400, "'type' must be status, device, agent or firmware, not '%s'", type);
			return -1;
		}
		q->has_type = 1;
		q->type = (event_type)t;
	}
	if (since && logfmt_parse_iso8601(since, &q->since_ms)) {
		*ret = api__error(r, 400, "'since' must be a time like 2026-11-25T03:12:37Z, not '%s'", since);
		return -1;
	}
	if (until && logfmt_parse_iso8601(until, &q->until_ms)) {
		*ret = api__error(r, 400, "'until' must be a time like 2026-11-25T03:12:37Z, not '%s'", until);
		return -1;
	}
	q->text = api__arg(r, "q");
	if (q->text && (!*q->text || strlen(q->text) > 256)) {
		*ret = api__error(r, 400, "'q' must be 1 to 256 bytes of text to find");
		return -1;
	}
	return 0;
}

static enum MHD_Result api__device_logs(struct req *r, uint64_t id)
{
	store_event_query q = { .device = id };
	long long limit = API_DEFAULT_LIMIT, before = 0, after = -1;
	enum MHD_Result ret = MHD_NO;
	tn_error err = { 0 };

	if (api__wants_sse(r)) {
		/* Live, after replaying what came after Last-Event-ID (header or query). */
		const char *last = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID");
		long long resume = -1; /* none: live only; 0: the whole log first */
		if (!last)
			last = api__arg(r, "last_event_id");
		if (last) {
			char *end;
			resume = strtoll(last, &end, 10);
			if (*end || resume < 0)
				return api__error(r, 400, "Last-Event-ID must be an event id, not '%s'", last);
		}
		json_t *dev = store_device_get(r->a->st, id);
		if (!dev)
			return api__error(r, 404, "no such device");
		json_decref(dev);
		struct MHD_Response *resp = logstream_device_response(r->a->streams, r->conn, id, resume,
								      api__text_format(r), &err);
		if (!resp)
			return api__store_error(r, &err); /* 503 while stopping */
		return api__stream(r, resp);
	}

	if (api__int_arg(r, "limit", 1, API_MAX_LIMIT, &limit, &ret) ||
	    api__int_arg(r, "before", 1, INT64_MAX, &before, &ret) ||
	    api__int_arg(r, "after", 0, INT64_MAX, &after, &ret))
		return ret;
	json_t *dev = store_device_get(r->a->st, id);
	if (!dev)
		return api__error(r, 404, "no such device");
	json_decref(dev);
	q.limit = (int)limit;
	q.before = before;
	q.after = after;
	if (api__log_filters(r, &q, &ret))
		return ret;
	json_t *out = store_events_list(r->a->st, &q, &err);
	return out ? api__json(r, 200, out) : api__store_error(r, &err);
}

/* GET /v1/logs: the fleet's history (or one device's with ?device=). */
static enum MHD_Result api__fleet_logs(struct req *r)
{
	store_event_query q = { .all_devices = 1 };
	long long limit = API_DEFAULT_LIMIT, before = 0, after = -1;
	enum MHD_Result ret = MHD_NO;
	tn_error err = { 0 };
	const char *device = api__arg(r, "device");

	if (api__int_arg(r, "limit", 1, API_MAX_LIMIT, &limit, &ret) ||
	    api__int_arg(r, "before", 1, INT64_MAX, &before, &ret) ||
	    api__int_arg(r, "after", 0, INT64_MAX, &after, &ret))
		return ret;
	if (device) {
		if (tn_device_id_parse(device, &q.device))
			return api__error(r, 400, "'device' must be a device id, not '%s'", device);
		q.all_devices = 0;
	}
	q.limit = (int)limit;
	q.before = before;
	q.after = after;
	if (api__log_filters(r, &q, &ret))
		return ret;
	json_t *out = store_events_list(r->a->st, &q, &err);
	return out ? api__json(r, 200, out) : api__store_error(r, &err);
}

static enum MHD_Result api__device_agent(struct req *r, uint64_t id, const char *rest);

/* /v1/devices/{id}[/logs|/agent...] */
static enum MHD_Result api__device_route(struct req *r, const char *rest)
{
	char idtext[32];
	const char *slash = strchr(rest, '/');
	size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
	uint64_t id;

	if (n >= sizeof idtext)
		return api__error(r, 404, "no such device: device ids are 16 hex digits");
	memcpy(idtext, rest, n);
	idtext[n] = '\0';
	if (tn_device_id_parse(idtext, &id))
		return api__error(r, 404, "no such device '%s': device ids are 16 hex digits", idtext);
	if (!slash) {
		if (strcmp(r->method, "GET") == 0) {
			json_t *dev = store_device_get(r->a->st, id);
			if (!dev)
				return api__error(r, 404, "no such device %s", idtext);
			api__flash_facts(r, dev, NULL);
			api__agent_state(r, dev, NULL);
			return api__json(r, 200, dev);
		}
		if (strcmp(r->method, "PATCH") == 0)
			return api__device_patch(r, id);
		if (strcmp(r->method, "DELETE") == 0)
			return api__device_delete(r, id);
		return api__method_not_allowed(r, "GET, PATCH, DELETE");
	}
	if (strncmp(slash, "/agent", 6) == 0 && (slash[6] == '\0' || slash[6] == '/'))
		return api__device_agent(r, id, slash + 6);
	if (strcmp(slash, "/logs") == 0) {
		if (strcmp(r->method, "GET") != 0)
			return api__method_not_allowed(r, "GET");
		return api__device_logs(r, id);
	}
	return api__error(r, 404, "no such resource: %s", r->url);
}

/* --- /v1/flash-parts ------------------------------------------------------- */

/* "ef4018", "EF4018" or "0xef4018" -> 0xef4018. */
static int api__parse_jedec(const char *s, uint32_t *out)
{
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		s += 2;
	if (strlen(s) != 6)
		return -1;
	char *end;
	unsigned long v = strtoul(s, &end, 16);
	if (*end)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

/* Adds to each part the verdict a device carrying its JEDEC id would get
 * against fw from the table alone (no SFDP): the same flash_check() a
 * rollout's plan runs, over every part sharing the id. */
static int api__flash_verdicts(struct req *r, json_t *parts, const fwstore_info *fw, tn_error *err)
{
	json_t *by_jedec = json_object(), *part;
	size_t i;
	int rc = 0;

	json_array_foreach(parts, i, part) {
		const char *jedec = json_string_value(json_object_get(part, "jedec"));
		if (!jedec)
			continue;
		json_t *verdict = json_object_get(by_jedec, jedec);
		if (!verdict) {
			flash_part *rows = NULL;
			size_t n = 0;
			char reason[512];
			if ((rc = flashtable_rows(r->a->st, (uint32_t)strtoul(jedec, NULL, 16), &rows, &n, err)))
				break;
			flash_facts facts = { .has_jedec = 1, .jedec = (uint32_t)strtoul(jedec, NULL, 16),
					      .rows = rows, .nrows = n };
			flash_verdict v = flash_check(&facts, &fw->req, fw->version, reason, sizeof reason);
			free(rows);
			verdict = json_pack("{ss ss}", "decision", v == FLASH_COMPATIBLE ? "compatible" : "blocked",
					    "reason", reason);
			json_object_set_new(by_jedec, jedec, verdict);
		}
		json_object_set(part, "verdict", verdict);
	}
	json_decref(by_jedec);
	return rc;
}

static enum MHD_Result api__flash_list(struct req *r)
{
	const char *j = api__arg(r, "jedec");
	uint32_t jedec = 0;
	long long fw_id = 0;
	fwstore_info fw;
	enum MHD_Result ret = MHD_NO;
	tn_error err = { 0 };
	if (j && api__parse_jedec(j, &jedec))
		return api__error(r, 400, "'jedec' must be 6 hex digits, like ef4018");
	if (api__int_arg(r, "firmware", 1, INT64_MAX, &fw_id, &ret))
		return ret;
	if (fw_id && fwstore_info_get(r->a->st, r->a->opt.firmware_dir, fw_id, &fw, &err))
		return err.code == TN_ENOTFOUND ? api__error(r, 404, "%s", err.msg) : api__store_error(r, &err);
	json_t *out = flashtable_list(r->a->st, j ? (int64_t)jedec : -1, &err);
	if (out && fw_id && api__flash_verdicts(r, json_object_get(out, "parts"), &fw, &err)) {
		json_decref(out);
		out = NULL;
	}
	if (fw_id)
		fwstore_info_clear(&fw);
	return out ? api__json(r, 200, out) : api__store_error(r, &err);
}

/* An import's row errors as a 400 with "errors": [...]. */
static enum MHD_Result api__import_errors(struct req *r, const tn_error *err, json_t *errors)
{
	metrics_error(ERR_HTTP_BAD_REQUEST);
	return api__json(r, 400, json_pack("{s:{s:s, s:s, s:O}}", "error", "code", "bad_request",
					   "message", err->msg, "errors", errors ? errors : json_array()));
}

static enum MHD_Result api__flash_put(struct req *r, const char *idtext)
{
	enum MHD_Result ret = MHD_NO;
	uint32_t jedec;
	tn_error err = { 0 };

	if (api__parse_jedec(idtext, &jedec))
		return api__error(r, 404, "no such JEDEC id '%s': 6 hex digits, like ef4018", idtext);
	json_t *body = api__json_any(r, &ret);
	if (!body)
		return ret;
	json_t *list = json_is_array(body) ? json_incref(body) : json_pack("[O]", body);
	size_t n = json_array_size(list), i;
	flash_part *rows = calloc(n ? n : 1, sizeof *rows);
	json_t *v;
	if (!rows) {
		ret = api__error(r, 500, "out of memory");
		goto done;
	}
	if (n == 0 || n > 64) {
		ret = api__error(r, 400, "give 1 to 64 parts for one JEDEC id");
		goto done;
	}
	json_array_foreach(list, i, v) {
		if (flashparts_from_json(v, &rows[i], &err)) {
			ret = api__error(r, 400, "part %zu: %s", i + 1, err.msg);
			goto done;
		}
		if (rows[i].jedec != jedec) {
			ret = api__error(r, 400, "part %zu (%s) has JEDEC id %06x, not %06x", i + 1, rows[i].part,
					 rows[i].jedec, jedec);
			goto done;
		}
	}
	if (flashtable_replace(r->a->st, jedec, rows, n, &err)) {
		ret = api__store_error(r, &err);
		goto done;
	}
	sched_kick(r->a->sched);
	ret = api__json(r, 200, flashtable_list(r->a->st, jedec, &err));
done:
	free(rows);
	json_decref(list);
	json_decref(body);
	return ret;
}

static enum MHD_Result api__flash_import(struct req *r)
{
	const char *type = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
	flashparts_import imp = { 0 };
	tn_error err = { 0 };
	int rc;

	if (type && strncasecmp(type, "text/csv", 8) == 0)
		rc = flashparts_parse_csv(r->body ? r->body : "", r->body_len, &imp, &err);
	else if (type && strncasecmp(type, "application/json", 16) == 0)
		rc = flashparts_parse_json(r->body ? r->body : "", r->body_len, &imp, &err);
	else
		return api__error(r, 415, "import text/csv or application/json, not '%s'", type ? type : "none");
	enum MHD_Result ret;
	if (rc)
		ret = api__import_errors(r, &err, imp.errors);
	else if (flashtable_upsert(r->a->st, imp.rows, imp.nrows, &err))
		ret = api__store_error(r, &err);
	else {
		sched_kick(r->a->sched);
		ret = api__json(r, 200, json_pack("{s:I}", "imported", (json_int_t)imp.nrows));
	}
	flashparts_import_free(&imp);
	return ret;
}

/* --- /v1/firmware ----------------------------------------------------------- */

static enum MHD_Result api__firmware_create(struct req *r)
{
	const char *type = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
	char boundary[80];
	multipart_part parts[MULTIPART_MAX_PARTS];
	int nparts = 0;
	tn_error err = { 0 };
	json_error_t jerr;

	if (!type || strncasecmp(type, "multipart/form-data", 19) != 0)
		return api__error(r, 415, "upload firmware as multipart/form-data with parts 'image' and "
				  "'metadata', not '%s'", type ? type : "none");
	if (multipart_boundary(type, boundary, sizeof boundary, &err) ||
	    multipart_parse(r->body ? r->body : "", r->body_len, boundary, parts, &nparts, &err))
		return api__error(r, 400, "%s", err.msg);
	const multipart_part *image = multipart_find(parts, nparts, "image");
	const multipart_part *meta = multipart_find(parts, nparts, "metadata");
	if (!image || !meta)
		return api__error(r, 400, "the upload needs a part 'image' (the file) and a part 'metadata' "
				  "(JSON {\"version\", \"hw\", \"requirements\"})");
	json_t *md = json_loadb(meta->data, meta->len, JSON_REJECT_DUPLICATES, &jerr);
	if (!md)
		return api__error(r, 400, "metadata: invalid JSON at line %d, column %d: %s", jerr.line,
				  jerr.column, jerr.text);
	json_t *out = NULL;
	int rc = fwstore_add(r->a->st, r->a->opt.firmware_dir, md, image->data, image->len, &out, &err);
	json_decref(md);
	if (rc)
		return api__store_error(r, &err);
	log_info("firmware %s stored (%zu bytes)", json_string_value(json_object_get(out, "version")),
		 image->len);
	return api__json(r, 201, out);
}

static enum MHD_Result api__firmware_route(struct req *r, const char *rest)
{
	if (!*rest) {
		tn_error err = { 0 };
		if (strcmp(r->method, "GET") == 0) {
			json_t *out = fwstore_list(r->a->st, &err);
			return out ? api__json(r, 200, out) : api__store_error(r, &err);
		}
		if (strcmp(r->method, "POST") == 0)
			return api__firmware_create(r);
		return api__method_not_allowed(r, "GET, POST");
	}
	char *end;
	long long id = strtoll(rest + 1, &end, 10);
	if (rest[0] != '/' || *end || id <= 0)
		return api__error(r, 404, "no such resource: %s", r->url);
	if (strcmp(r->method, "GET") != 0)
		return api__method_not_allowed(r, "GET");
	json_t *fw = fwstore_get(r->a->st, id);
	return fw ? api__json(r, 200, fw) : api__error(r, 404, "no firmware %lld", id);
}

/* --- /v1/rollouts ----------------------------------------------------------- */

static enum MHD_Result api__rollout_route(struct req *r, const char *rest)
{
	tn_error err = { 0 };
	enum MHD_Result ret = MHD_NO;

	if (!*rest) {
		if (strcmp(r->method, "GET") == 0) {
			json_t *out = rollout_list(r->a->st, &err);
			return out ? api__json(r, 200, out) : api__store_error(r, &err);
		}
		if (strcmp(r->method, "POST") != 0)
			return api__method_not_allowed(r, "GET, POST");
		json_t *body = api__json_body(r, &ret), *out = NULL;
		if (!body)
			return ret;
		int rc = rollout_create(r->a->st, r->a->opt.firmware_dir, body, &out, &err);
		json_decref(body);
		if (rc)
			return api__store_error(r, &err);
		sched_kick(r->a->sched);
		return api__json(r, 201, out);
	}
	char *end;
	long long id = rest[0] == '/' ? strtoll(rest + 1, &end, 10) : 0;
	if (id <= 0)
		return api__error(r, 404, "no such resource: %s", r->url);
	if (!*end) {
		if (strcmp(r->method, "GET") != 0)
			return api__method_not_allowed(r, "GET");
		json_t *out = rollout_get(r->a->st, id);
		return out ? api__json(r, 200, out) : api__error(r, 404, "no rollout %lld", id);
	}
	if (strcmp(end, "/plan") == 0) {
		if (strcmp(r->method, "GET") != 0)
			return api__method_not_allowed(r, "GET");
		json_t *out = rollout_plan(r->a->st, r->a->opt.firmware_dir, id, &err);
		return out ? api__json(r, 200, out) : api__store_error(r, &err);
	}
	if (strcmp(end, "/pause") == 0 || strcmp(end, "/resume") == 0 || strcmp(end, "/abort") == 0) {
		if (strcmp(r->method, "POST") != 0)
			return api__method_not_allowed(r, "POST");
		if (rollout_control(r->a->st, id, end + 1, &err))
			return err.code == TN_ESTATE ? api__error(r, 409, "%s", err.msg) : api__store_error(r, &err);
		sched_kick(r->a->sched);
		return api__json(r, 200, rollout_get(r->a->st, id));
	}
	return api__error(r, 404, "no such resource: %s", r->url);
}

/* --- agents ------------------------------------------------------------------ */

static enum MHD_Result api__deploy(struct req *r, const char *rest)
{
	char group[128];
	const char *slash = strchr(rest, '/');
	tn_error err = { 0 };

	if (!slash || strcmp(slash, "/agent") != 0 || slash == rest || (size_t)(slash - rest) >= sizeof group)
		return api__error(r, 404, "no such resource: %s", r->url);
	memcpy(group, rest, (size_t)(slash - rest));
	group[slash - rest] = '\0';
	if (strcmp(r->method, "GET") == 0) {
		json_t *code = store_group_agent(r->a->st, group, &err);
		return code ? api__json(r, 200, code) : api__store_error(r, &err);
	}
	if (strcmp(r->method, "PUT") != 0)
		return api__method_not_allowed(r, "GET, PUT");
	const char *type = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
	if (!type || (strncasecmp(type, "text/plain", 10) != 0 && strncasecmp(type, "text/x-lua", 10) != 0))
		return api__error(r, 415, "agent code is Lua source: Content-Type: text/plain, not '%s'",
				  type ? type : "none");
	if (!r->body_len)
		return api__error(r, 400, "the agent code is empty");
	/* Text, so that GET can give it back as JSON, and the dashboard edit it. */
	json_t *text = json_stringn(r->body, r->body_len);
	if (!text || memchr(r->body, '\0', r->body_len))
		return json_decref(text), api__error(r, 400, "the agent code is not UTF-8 text");
	json_decref(text);
	if (sup_deploy(r->a->sup, group, r->body, r->body_len, &err))
		return err.code == TN_EINVAL ? api__error(r, 400, "%s", err.msg) : api__store_error(r, &err);
	return api__json(r, 200, json_pack("{ss sI}", "group", group, "bytes", (json_int_t)r->body_len));
}

/* /v1/devices/{id}/agent[/restart|/migrate] */
static enum MHD_Result api__device_agent(struct req *r, uint64_t id, const char *rest)
{
	tn_error err = { 0 };
	json_t *dev = store_device_get(r->a->st, id);
	if (!dev)
		return api__error(r, 404, "no such device");
	if (!*rest) {
		if (strcmp(r->method, "GET") != 0) {
			json_decref(dev);
			return api__method_not_allowed(r, "GET");
		}
		json_t *info = sup_agent_info(r->a->sup, id);
		json_object_set(info, "agent_id", json_object_get(dev, "agent_id"));
		json_object_set(info, "group", json_object_get(dev, "group"));
		json_decref(dev);
		return api__json(r, 200, info);
	}
	json_decref(dev);
	if (strcmp(r->method, "POST") != 0)
		return api__method_not_allowed(r, "POST");
	if (strcmp(rest, "/restart") == 0) {
		if (sup_restart(r->a->sup, id, &err))
			return api__store_error(r, &err);
		return api__json(r, 202, json_pack("{ss}", "status", "restarting"));
	}
	if (strcmp(rest, "/migrate") == 0) {
		long long worker = -1;
		enum MHD_Result ret = MHD_NO;
		int from, to;
		if (api__int_arg(r, "worker", 0, sup_workers(r->a->sup) - 1, &worker, &ret))
			return ret;
		if (sup_migrate(r->a->sup, id, (int)worker, &from, &to, &err))
			return err.code == TN_ESTATE ? api__error(r, 409, "%s", err.msg) : api__store_error(r, &err);
		if (from == to) /* asked for where it is: done, as a repeated call finds it */
			return api__json(r, 200, json_pack("{ss si ss}", "status", "in place", "worker", to,
							   "message", "the agent is on that worker already"));
		return api__json(r, 202, json_pack("{ss si si}", "status", "migrating", "from", from, "to", to));
	}
	return api__error(r, 404, "no such resource: %s", r->url);
}

/* Called by the agent's worker with its answer: copy it, wake the connection. */
static void api__agent_done(void *arg, int status, const char *const *headers, const char *body, size_t len)
{
	struct req *r = arg;
	r->agent_status = status;
	r->agent_body = malloc(len + 1);
	if (r->agent_body) {
		memcpy(r->agent_body, body ? body : "", len);
		r->agent_body[len] = '\0';
		r->agent_len = len;
	}
	size_t n = 0;
	while (headers && headers[n])
		n++;
	r->agent_headers = calloc(n + 1, sizeof *r->agent_headers);
	for (size_t i = 0; r->agent_headers && i < n; i++)
		r->agent_headers[i] = strdup(headers[i]);
	r->agent_state = 2;
	api *a = r->a;
	MHD_resume_connection(r->conn);
	atomic_fetch_sub(&a->suspended, 1);
}

struct api__hdrs {
	const char **list;
	size_t n, cap;
};

static enum MHD_Result api__collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
					   const char *value)
{
	struct api__hdrs *h = cls;
	if (h->n + 3 > h->cap || !value)
		return MHD_YES;
	h->list[h->n++] = key;
	h->list[h->n++] = value;
	h->list[h->n] = NULL;
	return MHD_YES;
}

/* ANY /agent/{agent_id}/...: handed to the agent's worker; the connection
 * is suspended until the agent answers. */
static enum MHD_Result api__agent_request(struct req *r, const char *rest)
{
	if (r->agent_state == 2) {
		struct MHD_Response *resp = MHD_create_response_from_buffer(r->agent_len, r->agent_body,
									    MHD_RESPMEM_MUST_FREE);
		if (!resp)
			return MHD_NO;
		r->agent_body = NULL;
		for (char **h = r->agent_headers; h && h[0] && h[1]; h += 2)
			MHD_add_response_header(resp, h[0], h[1]);
		if (!MHD_get_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE))
			MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
		enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)r->agent_status, resp);
		MHD_destroy_response(resp);
		metrics_inc(M_HTTP_REQUESTS);
		return ret;
	}
	char agent_id[80];
	const char *slash = strchr(rest, '/');
	size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
	if (n == 0 || n >= sizeof agent_id)
		return api__error(r, 404, "no such agent");
	memcpy(agent_id, rest, n);
	agent_id[n] = '\0';
	const char *hdr_list[66], *arg_list[66];
	struct api__hdrs h = { hdr_list, 0, 66 }, args = { arg_list, 0, 66 };
	hdr_list[0] = arg_list[0] = NULL;
	MHD_get_connection_values(r->conn, MHD_HEADER_KIND, api__collect_header, &h);
	/* The query again as text (decoded, in order): k=v&k2=v2 */
	MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, api__collect_header, &args);
	char query[2048] = "";
	size_t qn = 0;
	for (size_t i = 0; i + 1 < args.n && qn < sizeof query; i += 2)
		qn += (size_t)snprintf(query + qn, sizeof query - qn, "%s%s=%s", i ? "&" : "", arg_list[i],
				       arg_list[i + 1]);
	agent_http_req req = {
		.method = r->method, .path = slash ? slash : "/", .query = query,
		.body = r->body ? r->body : "", .body_len = r->body_len, .headers = hdr_list,
	};
	r->agent_state = 1;
	atomic_fetch_add(&r->a->suspended, 1);
	MHD_suspend_connection(r->conn);
	if (sup_http(r->a->sup, agent_id, &req, api__agent_done, r) != 0) {
		r->agent_state = 0;
		MHD_resume_connection(r->conn);
		atomic_fetch_sub(&r->a->suspended, 1);
		return api__error(r, 404, "no such agent");
	}
	return MHD_YES;
}

/* --- /v1/logstreams --------------------------------------------------------- */

static enum MHD_Result api__logstream_route(struct req *r, const char *rest)
{
	tn_error err = { 0 };
	enum MHD_Result ret = MHD_NO;

	if (!*rest) {
		if (strcmp(r->method, "POST") != 0)
			return api__method_not_allowed(r, "POST");
		json_t *body = api__json_body(r, &ret), *out = NULL;
		if (!body)
			return ret;
		int rc = logstream_create(r->a->streams, r->who.id, body, &out, &err);
		json_decref(body);
		if (rc == TN_ETOOBIG || rc == TN_ESTATE) { /* a stream limit, counted as its own kind */
			r->counted = 1;
			r->retry_after = logstreams_open_timeout_s(r->a->streams);
			return api__error(r, rc == TN_ETOOBIG ? 429 : 503, "%s", err.msg);
		}
		return rc ? api__store_error(r, &err) : api__json(r, 201, out);
	}
	char id[64];
	const char *p = rest + 1, *slash = strchr(p, '/');
	size_t n = slash ? (size_t)(slash - p) : strlen(p);
	if (rest[0] != '/' || n == 0 || n >= sizeof id)
		return api__error(r, 404, "no such log stream");
	memcpy(id, p, n);
	id[n] = '\0';
	if (!slash) {
		if (strcmp(r->method, "GET") == 0) {
			struct MHD_Response *resp = logstream_open(r->a->streams, r->conn, id, api__text_format(r), &err);
			if (!resp)
				return err.code == TN_EEXIST ? api__error(r, 409, "%s", err.msg) : api__store_error(r, &err);
			return api__stream(r, resp);
		}
		if (strcmp(r->method, "DELETE") == 0) {
			if (logstream_delete(r->a->streams, id, &err))
				return api__store_error(r, &err);
			return api__send(r, 204, "application/json", strdup(""), 0);
		}
		return api__method_not_allowed(r, "GET, DELETE");
	}
	uint64_t dev;
	if (strncmp(slash, "/devices/", 9) != 0 || tn_device_id_parse(slash + 9, &dev))
		return api__error(r, 404, "no such resource: %s", r->url);
	int add = strcmp(r->method, "PUT") == 0;
	if (!add && strcmp(r->method, "DELETE") != 0)
		return api__method_not_allowed(r, "PUT, DELETE");
	if (logstream_device(r->a->streams, id, dev, add, &err))
		return api__store_error(r, &err);
	return api__send(r, 204, "application/json", strdup(""), 0);
}

/* --- /v1/tokens and /v1/enrollment-tokens -------------------------------------- */

/* Both are collections of secrets shown once: list, create, revoke by id. */
struct api__secret_kind {
	const char *noun;    /* "token", "enrollment token" */
	json_t *(*list)(store *st, tn_error *err);
	int (*create)(store *st, json_t *body, json_t **out, tn_error *err);
	int (*revoke)(store *st, int64_t id, tn_error *err);
};

static const struct api__secret_kind api__api_tokens = { "token", tokens_list, tokens_create, tokens_revoke };
static const struct api__secret_kind api__enroll_tokens = {
	"enrollment token", enroll_token_list, enroll_token_create, enroll_token_revoke,
};

static enum MHD_Result api__secrets_route(struct req *r, const char *rest, const struct api__secret_kind *k)
{
	tn_error err = { 0 };
	enum MHD_Result ret = MHD_NO;

	if (!*rest) {
		if (strcmp(r->method, "GET") == 0) {
			json_t *out = k->list(r->a->st, &err);
			return out ? api__json(r, 200, out) : api__store_error(r, &err);
		}
		if (strcmp(r->method, "POST") != 0)
			return api__method_not_allowed(r, "GET, POST");
		json_t *body = api__json_body(r, &ret), *out = NULL;
		if (!body)
			return ret;
		int rc = k->create(r->a->st, body, &out, &err);
		json_decref(body);
		if (rc)
			return api__store_error(r, &err);
		const char *role = json_string_value(json_object_get(out, "role"));
		snprintf(r->audit_detail, sizeof r->audit_detail, "created %s %lld%s%s%s", k->noun,
			 (long long)json_integer_value(json_object_get(out, "id")), role ? " (" : "",
			 role ? role : "", role ? ")" : "");
		return api__json(r, 201, out);
	}
	char *end;
	long long id = rest[0] == '/' ? strtoll(rest + 1, &end, 10) : 0;
	if (id <= 0 || *end)
		return api__error(r, 404, "no such %s", k->noun);
	if (strcmp(r->method, "DELETE") != 0)
		return api__method_not_allowed(r, "DELETE");
	if (k->revoke(r->a->st, id, &err))
		return err.code == TN_ESTATE ? api__error(r, 409, "%s", err.msg) : api__store_error(r, &err);
	snprintf(r->audit_detail, sizeof r->audit_detail, "revoked %s %lld", k->noun, id);
	return api__send(r, 204, "application/json", strdup(""), 0);
}

/* GET /v1/audit?before=&token=&limit= */
static enum MHD_Result api__audit_list(struct req *r)
{
	long long before = 0, token = 0, limit = API_DEFAULT_LIMIT;
	enum MHD_Result ret = MHD_NO;
	tn_error err = { 0 };

	if (strcmp(r->method, "GET") != 0)
		return api__method_not_allowed(r, "GET");
	if (api__int_arg(r, "before", 1, INT64_MAX, &before, &ret) ||
	    api__int_arg(r, "token", 1, INT64_MAX, &token, &ret) ||
	    api__int_arg(r, "limit", 1, API_MAX_LIMIT, &limit, &ret))
		return ret;
	json_t *out = audit_list(r->a->st, before, token, (int)limit, &err);
	return out ? api__json(r, 200, out) : api__store_error(r, &err);
}


/* --- the dashboard's files ---------------------------------------------------- */

static const char *api__mime(const char *path)
{
	static const struct { const char *ext, *type; } types[] = {
		{ ".html", "text/html; charset=utf-8" }, { ".js", "text/javascript; charset=utf-8" },
		{ ".css", "text/css; charset=utf-8" }, { ".svg", "image/svg+xml" }, { ".png", "image/png" },
		{ ".json", "application/json" }, { ".ico", "image/x-icon" },
	};
	const char *dot = strrchr(path, '.');
	for (size_t i = 0; dot && i < TN_ARRAY_LEN(types); i++)
		if (strcmp(dot, types[i].ext) == 0)
			return types[i].type;
	return "application/octet-stream";
}

/* GET /, /app.js, ...: files of --web-dir; names are checked, never a path
 * outside it. */
static enum MHD_Result api__static(struct req *r)
{
	const char *name = strcmp(r->url, "/") == 0 ? "index.html" : r->url + 1;
	char path[1024];

	if (!r->a->opt.web_dir)
		return api__error(r, 404, "no such resource: %s (this tenderd serves no dashboard)", r->url);
	if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0)
		return api__method_not_allowed(r, "GET, HEAD");
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '.' || *p == '-' || *p == '_' || *p == '/') || (p[0] == '.' && p[1] == '.'))
			return api__error(r, 404, "no such file");
	snprintf(path, sizeof path, "%s/%s", r->a->opt.web_dir, name);
	struct stat sb;
	FILE *f = stat(path, &sb) == 0 && S_ISREG(sb.st_mode) ? fopen(path, "rb") : NULL;
	if (!f)
		return api__error(r, 404, "no such file: %s", r->url);
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	char *data = size >= 0 && size < (64 << 20) ? malloc((size_t)size + 1) : NULL;
	rewind(f);
	if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) {
		fclose(f);
		free(data);
		return api__error(r, 500, "cannot read %s", r->url);
	}
	fclose(f);
	return api__send(r, 200, api__mime(path), data, (size_t)size);
}

/* --- routing ---------------------------------------------------------------- */

/* The client's address as text, for the limiter and the audit trail. */
static void api__client_addr(struct req *r)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;

	snprintf(r->addr, sizeof r->addr, "unknown");
	if (sa && sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, r->addr, sizeof r->addr);
	else if (sa && sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->addr, sizeof r->addr);
}

/* The token a request presents: "Authorization: Bearer T", or for a GET
 * ?access_token=T (a browser's EventSource cannot send headers; docs/api.md
 * says so, and why).  NULL when it presents none. */
static const char *api__presented_token(struct req *r)
{
	const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
						    MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h && strcmp(r->method, "GET") == 0)
		return api__arg(r, "access_token");
	if (!h)
		return NULL;
	if (strncasecmp(h, "Bearer ", 7) != 0)
		return "";
	for (h += 7; *h == ' '; h++)
		;
	return h;
}

/* Authenticates and authorizes a /v1/ request.  0 when it may go on; else
 * answered (429 while its address is throttled, 401, 403) in *ret. */
static int api__check_access(struct req *r, enum MHD_Result *ret)
{
	tn_error err = { 0 };
	int64_t now = tn_now_ms();

	api__client_addr(r);
	int wait = authlimit_wait(r->a->auth_limit, r->addr, now);
	if (wait) {
		r->retry_after = wait;
		r->audit = r->refusal = 1;   /* counted in its address's summary */
		*ret = api__error(r, 429, "too many failed authentication attempts from %s: try again in %d s",
				  r->addr, wait);
		return -1;
	}
	const char *token = api__presented_token(r);
	if (!token) {
		*ret = api__error(r, 401, "a valid token is required: Authorization: Bearer TOKEN");
		return -1;
	}
	int rc = tokens_check(r->a->st, token, &r->who, &err);
	if (rc == TN_EIO) {
		*ret = api__store_error(r, &err);
		return -1;
	}
	if (rc) {
		/* A wrong, expired or revoked token is an attempt: counted per
		 * address, and recorded (with the token's id when it is known). */
		authlimit_failed(r->a->auth_limit, r->addr, now);
		r->audit = r->refusal = 1;
		*ret = api__error(r, 401, "%s: a valid token is required (Authorization: Bearer TOKEN)", err.msg);
		r->who.id = 0;
		return -1;
	}
	tn_role need = tokens_required_role(r->method, r->url);
	int change = strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0;
	if (change)
		r->audit = 1;
	if (r->who.role < need) {
		r->audit = r->refusal = 1;
		*ret = api__error(r, 403, "%s %s needs the %s role; this token (%lld) is %s", r->method, r->url,
				  tokens_role_name(need), (long long)r->who.id, tokens_role_name(r->who.role));
		return -1;
	}
	return 0;
}

static enum MHD_Result api__route(struct req *r)
{
	const char *url = r->url;

	if (strcmp(url, "/healthz") == 0) {
		if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0)
			return api__method_not_allowed(r, "GET, HEAD");
		return api__json(r, 200, json_pack("{ss ss}", "status", "ok", "version", TN_VERSION));
	}
	if (strcmp(url, "/metrics") == 0) {
		if (strcmp(r->method, "GET") != 0)
			return api__method_not_allowed(r, "GET");
		char *text = metrics_render();
		if (!text)
			return MHD_NO;
		return api__send(r, 200, "text/plain; version=0.0.4", text, strlen(text));
	}
	if (strncmp(url, "/agent/", 7) == 0) {
		/* The agent authenticates its own callers (the agent id is unguessable). */
		if (r->too_large)
			return api__error(r, 413, "the body is larger than %zu bytes", r->max_body);
		return api__agent_request(r, url + 7);
	}
	if (strncmp(url, "/v1/", 4) != 0)
		return api__static(r);
	enum MHD_Result denied;
	if (api__check_access(r, &denied))
		return denied;
	if (r->too_large)
		return api__error(r, 413, "the body is larger than %zu bytes", r->max_body);
	if (strcmp(url, "/v1/devices") == 0) {
		if (strcmp(r->method, "GET") == 0)
			return api__devices_list(r);
		if (strcmp(r->method, "POST") == 0)
			return api__devices_create(r);
		return api__method_not_allowed(r, "GET, POST");
	}
	if (strncmp(url, "/v1/devices/", 12) == 0)
		return api__device_route(r, url + 12);
	if (strcmp(url, "/v1/fleet") == 0) {
		if (strcmp(r->method, "GET") != 0)
			return api__method_not_allowed(r, "GET");
		tn_error err = { 0 };
		json_t *out = store_fleet_summary(r->a->st, &err);
		return out ? api__json(r, 200, out) : api__store_error(r, &err);
	}
	if (strncmp(url, "/v1/tokens", 10) == 0 && (url[10] == '\0' || url[10] == '/'))
		return api__secrets_route(r, url + 10, &api__api_tokens);
	if (strcmp(url, "/v1/audit") == 0)
		return api__audit_list(r);
	if (strncmp(url, "/v1/enrollment-tokens", 21) == 0 && (url[21] == '\0' || url[21] == '/'))
		return api__secrets_route(r, url + 21, &api__enroll_tokens);
	if (strcmp(url, "/v1/logs") == 0) {
		if (strcmp(r->method, "GET") != 0)
			return api__method_not_allowed(r, "GET");
		return api__fleet_logs(r);
	}
	if (strncmp(url, "/v1/groups/", 11) == 0)
		return api__deploy(r, url + 11);
	if (strncmp(url, "/v1/logstreams", 14) == 0 && (url[14] == '\0' || url[14] == '/'))
		return api__logstream_route(r, url + 14);
	if (strcmp(url, "/v1/flash-parts") == 0) {
		if (strcmp(r->method, "GET") != 0)
			return api__method_not_allowed(r, "GET");
		return api__flash_list(r);
	}
	if (strcmp(url, "/v1/flash-parts/import") == 0) {
		if (strcmp(r->method, "POST") != 0)
			return api__method_not_allowed(r, "POST");
		return api__flash_import(r);
	}
	if (strncmp(url, "/v1/flash-parts/", 16) == 0) {
		if (strcmp(r->method, "PUT") != 0 && strcmp(r->method, "GET") != 0)
			return api__method_not_allowed(r, "GET, PUT");
		if (strcmp(r->method, "GET") == 0) {
			uint32_t jedec;
			tn_error err = { 0 };
			if (api__parse_jedec(url + 16, &jedec))
				return api__error(r, 404, "no such JEDEC id '%s'", url + 16);
			json_t *out = flashtable_list(r->a->st, jedec, &err);
			if (out && json_array_size(json_object_get(out, "parts")) == 0) {
				json_decref(out);
				return api__error(r, 404, "no part with JEDEC id %06x in the table", jedec);
			}
			return out ? api__json(r, 200, out) : api__store_error(r, &err);
		}
		return api__flash_put(r, url + 16);
	}
	if (strncmp(url, "/v1/firmware", 12) == 0 && (url[12] == '\0' || url[12] == '/'))
		return api__firmware_route(r, url + 12);
	if (strncmp(url, "/v1/rollouts", 12) == 0 && (url[12] == '\0' || url[12] == '/'))
		return api__rollout_route(r, url + 12);
	return api__error(r, 404, "no such resource: %s", url);
}

/* --- connection limits ------------------------------------------------------ */

/* Every connection is counted, in all and per address
 * (MHD_OPTION_NOTIFY_CONNECTION).  One that arrives over --http-max-conns or
 * --max-conns-per-ip has its first request answered 503 with a JSON error,
 * Retry-After and Connection: close, rather than being closed unanswered.
 * libmicrohttpd's own caps sit above ours (api__hard_cap) and close only what
 * is past them: connections that send no request never reach our answer. */
struct api_conn {
	uint64_t ip_key;
	metrics_error_kind over;  /* ERR_HTTP_CONNS_FULL or _PER_IP when refused */
	int refused;
	int in_request;           /* a request line has arrived, not yet completed */
	int64_t idle_since;       /* tn_mono_ms: accepted, or its last request ended */
};

static unsigned api__hard_cap(int soft)
{
	return (unsigned)soft + (unsigned)soft / 4 + 16;
}

static struct api_conn *api__conn_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

/* The peer's address as a key for counting connections per address. */
static uint64_t api__ip_key(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	return net_addr_key(ci ? ci->client_addr : NULL);
}

static void api__conn_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
			     enum MHD_ConnectionNotificationCode toe)
{
	api *a = cls;
	struct api_conn *c = *socket_context;
	int oom = 0;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		if (!(c = calloc(1, sizeof *c)))
			return; /* uncounted */
		c->ip_key = api__ip_key(conn);
		c->idle_since = tn_mono_ms();
		pthread_mutex_lock(&a->conns_lock);
		uintptr_t from_ip = (uintptr_t)idmap_get(&a->per_ip, c->ip_key) + 1;
		idmap_put(&a->per_ip, c->ip_key, (void *)from_ip, &oom);
		a->nconns++;
		if (a->opt.max_conns_per_ip > 0 && from_ip > (uintptr_t)a->opt.max_conns_per_ip)
			c->over = ERR_HTTP_CONNS_PER_IP, c->refused = 1;
		else if (a->nconns > a->opt.max_conns)
			c->over = ERR_HTTP_CONNS_FULL, c->refused = 1;
		pthread_mutex_unlock(&a->conns_lock);
		*socket_context = c;
		return;
	}
	if (!c)
		return;
	pthread_mutex_lock(&a->conns_lock);
	uintptr_t from_ip = (uintptr_t)idmap_get(&a->per_ip, c->ip_key);
	if (from_ip <= 1)
		idmap_del(&a->per_ip, c->ip_key);
	else
		idmap_put(&a->per_ip, c->ip_key, (void *)(from_ip - 1), &oom);
	a->nconns--;
	pthread_mutex_unlock(&a->conns_lock);
	/* Closed with no request under way, --http-timeout after it went quiet:
	 * the timeout closed it (a request under way is told by api__completed). */
	if (!c->in_request && tn_mono_ms() - c->idle_since >= (int64_t)a->opt.conn_timeout * 1000 - 250)
		metrics_error(ERR_HTTP_TIMEOUT);
	*socket_context = NULL;
	free(c);
}

/* The request line has arrived (before the headers): from here on a timeout
 * is reported to api__completed, since libmicrohttpd then knows of a request. */
static void *api__uri_log(void *cls, const char *uri, struct MHD_Connection *conn)
{
	struct api_conn *c = api__conn_of(conn);
	if (c)
		c->in_request = 1;
	return NULL;
}

/* The first call of a request on a connection that came over a limit. */
static enum MHD_Result api__refuse_conn(struct req *r, const struct api_conn *c)
{
	metrics_error(c->over);
	r->counted = 1;
	r->close = 1;
	r->retry_after = 1;
	if (c->over == ERR_HTTP_CONNS_PER_IP)
		return api__error(r, 503, "too many connections from this address: it holds %d already "
				  "(--max-conns-per-ip); try again later", r->a->opt.max_conns_per_ip);
	return api__error(r, 503, "the server holds its limit of %d HTTP connections (--http-max-conns); "
			  "try again later", r->a->opt.max_conns);
}

static enum MHD_Result api__handler(void *cls, struct MHD_Connection *conn, const char *url,
				    const char *method, const char *version, const char *upload_data,
				    size_t *upload_data_size, void **con_cls)
{
	api *a = cls;
	struct req *r = *con_cls;

	if (!r) {
		r = calloc(1, sizeof *r);
		if (!r)
			return MHD_NO;
		r->conn = conn;
		r->a = a;
		r->method = method;
		r->url = url;
		r->max_body = strcmp(url, "/v1/firmware") == 0 ? (size_t)a->opt.max_firmware
							      : (size_t)a->opt.max_body;
		*con_cls = r;
		const struct api_conn *c = api__conn_of(conn);
		if (c && c->refused) {
			r->too_large = 1; /* its body, if any, is not kept */
			return api__refuse_conn(r, c);
		}
		/* Refuse a declared oversize body before reading any of it. */
		const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							     MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (cl && strtoull(cl, NULL, 10) > (unsigned long long)r->max_body) {
			r->too_large = 1;
			return api__error(r, 413, "the body is larger than %zu bytes", r->max_body);
		}
		return MHD_YES;
	}
	if (*upload_data_size > 0) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (r->too_large || r->body_len + n > r->max_body) {
			r->too_large = 1;
			free(r->body);
			r->body = NULL;
			r->body_len = 0;
			return MHD_YES;
		}
		char *grown = realloc(r->body, r->body_len + n + 1);
		if (!grown)
			return MHD_NO;
		r->body = grown;
		memcpy(r->body + r->body_len, upload_data, n);
		r->body_len += n;
		r->body[r->body_len] = '\0';
		return MHD_YES;
	}
	return api__route(r);
}

static void api__completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			   enum MHD_RequestTerminationCode toe)
{
	struct req *r = *con_cls;
	if (r) {
		free(r->body);
		free(r->agent_body);
		if (r->agent_headers)
			for (char **h = r->agent_headers; *h; h++)
				free(*h);
		free(r->agent_headers);
		free(r);
		*con_cls = NULL;
	}
	struct api_conn *c = api__conn_of(conn);
	if (toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED)
		metrics_error(ERR_HTTP_TIMEOUT);
	if (c) {
		c->in_request = 0;
		c->idle_since = tn_mono_ms();
	}
}

/* libmicrohttpd's messages go to our log; the refusals it makes by itself
 * are counted from them (it has no other hook for these; the formats are
 * libmicrohttpd 0.9.75's, and tests/integration/test_03_errors.c checks
 * them). */
static void api__mhd_log(void *cls, const char *fmt, va_list ap)
{
	static const char err_prefix[] = "Error processing request (HTTP response code is ";
	if (strncmp(fmt, "Server reached connection limit", 31) == 0) {
		metrics_error(ERR_HTTP_CONNS_REFUSED);
	} else if (strncmp(fmt, err_prefix, sizeof err_prefix - 1) == 0) {
		va_list copy;
		va_copy(copy, ap);
		unsigned status = va_arg(copy, unsigned);
		va_end(copy);
		/* 431 (headers), 414 (request line): over its memory pool */
		metrics_error(status == 431 || status == 414 ? ERR_HTTP_HEADER_TOO_LARGE : ERR_HTTP_BAD_REQUEST);
	}
	if (log_level >= LOG_WARN)
		log_vemit(LOG_WARN, fmt, ap);
}

/* Binds and listens ourselves, so that port 0 works and the chosen port is known. */
static int api__listen(api *a, tn_error *err)
{
	return net_listen(a->opt.bind, a->opt.port, 128, 0, "the HTTP API", &a->fd, &a->port, err);
}

int api_start(api **out, const api_options *opt, const api_deps *deps, tn_error *err)
{
	api *a = calloc(1, sizeof *a);
	int rc;

	if (!a)
		return tn_err(err, TN_ENOMEM, "out of memory");
	a->opt = *opt;
	a->st = deps->st;
	a->reg = deps->reg;
	a->dev = deps->dev;
	a->sched = deps->sched;
	a->sup = deps->sup;
	a->streams = deps->streams;
	a->fd = -1;
	pthread_mutex_init(&a->conns_lock, NULL);
	if (!(a->auth_limit = authlimit_new(opt->auth_fail_limit, opt->auth_fail_window))) {
		free(a);
		return tn_err(err, TN_ENOMEM, "out of memory");
	}
	if (!(a->audit_limit = auditlimit_new(a->st, opt->auth_fail_window))) {
		rc = tn_err(err, TN_ENOMEM, "cannot start the audit trail's summary thread");
		goto fail;
	}
	int tls = opt->tls_cert_pem && opt->tls_key_pem;
	if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
		rc = tn_err(err, TN_EINVAL, "--tls-cert: this libmicrohttpd was built without TLS");
		goto fail;
	}
	/* MHD keeps these pointers: the PEM text is borrowed until api_stop.
	 * GnuTLS's NORMAL still offers TLS 1.0 and 1.1; the device port
	 * (OpenSSL) does not, and neither do we here. */
	struct MHD_OptionItem tls_opts[4] = { { MHD_OPTION_END, 0, NULL } };
	if (tls) {
		tls_opts[0] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)opt->tls_cert_pem };
		tls_opts[1] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)opt->tls_key_pem };
		tls_opts[2] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_PRIORITIES, 0,
			(void *)"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2" };
	}
	if ((rc = api__listen(a, err)))
		goto fail;
	a->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
				  MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | (tls ? MHD_USE_TLS : 0),
				  0, NULL, NULL, api__handler, a,
				  /* first, so that MHD reports even option errors through it */
				  MHD_OPTION_EXTERNAL_LOGGER, api__mhd_log, a,
				  MHD_OPTION_LISTEN_SOCKET, a->fd,
				  MHD_OPTION_THREAD_POOL_SIZE, (unsigned)opt->threads,
				  /* hard caps above ours: see api__conn_notify */
				  MHD_OPTION_CONNECTION_LIMIT, api__hard_cap(opt->max_conns),
				  MHD_OPTION_PER_IP_CONNECTION_LIMIT,
				  opt->max_conns_per_ip ? api__hard_cap(opt->max_conns_per_ip) : 0u,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)opt->conn_timeout,
				  MHD_OPTION_NOTIFY_COMPLETED, api__completed, a,
				  MHD_OPTION_NOTIFY_CONNECTION, api__conn_notify, a,
				  MHD_OPTION_URI_LOG_CALLBACK, api__uri_log, a,
				  MHD_OPTION_ARRAY, tls_opts,
				  MHD_OPTION_END);
	if (!a->mhd) {
		rc = tn_err(err, TN_EIO, "cannot start the HTTP server (libmicrohttpd%s)",
			    tls ? ": the TLS certificate or key was refused" : "");
		goto fail;
	}
	a->fd = -1; /* MHD_stop_daemon closes it now */
	*out = a;
	return 0;
fail:
	api_stop(a);
	return rc;
}

int api_port(const api *a)
{
	return a->port;
}

void api_stop(api *a)
{
	if (!a)
		return;
	/* No new connection from here on (a quiesced MHD leaves its listening
	 * socket to us).  MHD must not stop under a suspended connection: end
	 * the log streams, and let the agents answer the requests they hold
	 * (5 s at most each). */
	if (a->mhd) {
		MHD_socket lfd = MHD_quiesce_daemon(a->mhd);
		if (lfd != MHD_INVALID_SOCKET)
			a->fd = lfd;
	}
	logstreams_close(a->streams);
	for (int i = 0; i < 500 && atomic_load(&a->suspended) > 0; i++)
		usleep(10 * 1000);
	if (a->mhd)
		MHD_stop_daemon(a->mhd);
	if (a->fd >= 0)
		close(a->fd);
	auditlimit_free(a->audit_limit);  /* no request left: writes the last summaries */
	authlimit_free(a->auth_limit);
	idmap_free(&a->per_ip);
	pthread_mutex_destroy(&a->conns_lock);
	free(a);
}

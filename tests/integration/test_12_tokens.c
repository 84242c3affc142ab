/* tests/integration/test_12_tokens.c -- API tokens with roles: each endpoint
 * checked against its scope (a viewer cannot deploy, start a rollout or get
 * a secret; an operator cannot manage tokens or the flash-parts table),
 * expiry and revocation, failed attempts throttled per address, and the
 * audit trail of who did what, surviving a restart. */
#define _GNU_SOURCE
#include <check.h>
#include <curl/curl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define DEV1 "30000c2a690c77c5"

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
	(void)p;
	(void)arg;
	return size * n;
}

/* Creates a token with the admin token; returns it (owned) and its id. */
static char *make_token(th_server *s, const char *role, const char *name, const char *extra, long long *id)
{
	char body[256];
	th_resp r;
	snprintf(body, sizeof body, "{\"role\":\"%s\",\"name\":\"%s\"%s}", role, name, extra ? extra : "");
	th_http(s, "POST", "/v1/tokens", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "%ld %s", r.status, r.body);
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "role")), role);
	char *tok = strdup(json_string_value(json_object_get(r.json, "token")));
	if (id)
		*id = json_integer_value(json_object_get(r.json, "id"));
	th_resp_free(&r);
	return tok;
}

static long call(th_server *s, const char *method, const char *path, const char *ctype, const char *body,
		 const char *token)
{
	th_resp r;
	th_http(s, method, path, ctype, body, token, &r);
	long status = r.status;
	if (status == 403) {
		const char *msg = json_string_value(json_object_get(json_object_get(r.json, "error"), "message"));
		ck_assert_msg(msg && strstr(msg, "needs the") != NULL, "403 without a reason: %s", r.body);
	}
	th_resp_free(&r);
	return status;
}

/* Every endpoint, with the least role it needs. */
static const struct {
	const char *method, *path, *ctype, *body, *need;
} endpoints[] = {
	{ "GET", "/v1/devices", NULL, NULL, "viewer" },
	{ "GET", "/v1/devices/" DEV1, NULL, NULL, "viewer" },
	{ "GET", "/v1/devices/" DEV1 "/logs", NULL, NULL, "viewer" },
	{ "GET", "/v1/devices/" DEV1 "/agent", NULL, NULL, "viewer" },
	{ "GET", "/v1/fleet", NULL, NULL, "viewer" },
	{ "GET", "/v1/logs", NULL, NULL, "viewer" },
	{ "GET", "/v1/flash-parts", NULL, NULL, "viewer" },
	{ "GET", "/v1/firmware", NULL, NULL, "viewer" },
	{ "GET", "/v1/rollouts", NULL, NULL, "viewer" },
	{ "GET", "/v1/enrollment-tokens", NULL, NULL, "viewer" },
	{ "GET", "/v1/groups/imps/agent", NULL, NULL, "viewer" },
	{ "POST", "/v1/logstreams", NULL, "{\"devices\":[\"" DEV1 "\"]}", "viewer" },
	{ "POST", "/v1/devices", NULL, "{\"id\":\"00000000000000c3\"}", "operator" },
	{ "PATCH", "/v1/devices/" DEV1, NULL, "{\"name\":\"renamed\"}", "operator" },
	{ "PUT", "/v1/groups/imps/agent", "text/plain", "server.log('hi')", "operator" },
	{ "POST", "/v1/devices/" DEV1 "/agent/restart", NULL, "", "operator" },
	{ "POST", "/v1/devices/" DEV1 "/agent/migrate", NULL, "", "operator" },
	{ "POST", "/v1/rollouts", NULL, "{\"firmware\":1,\"target\":{\"devices\":[\"" DEV1 "\"]}}", "operator" },
	{ "POST", "/v1/rollouts/1/resume", NULL, "", "operator" },
	{ "POST", "/v1/firmware", "multipart/form-data; boundary=x", "--x--\r\n", "operator" },
	{ "POST", "/v1/enrollment-tokens", NULL, "{}", "operator" },
	{ "DELETE", "/v1/enrollment-tokens/1", NULL, NULL, "operator" },
	{ "POST", "/v1/flash-parts/import", "text/csv", "vendor\n", "admin" },
	{ "PUT", "/v1/flash-parts/ef4018", NULL, "[]", "admin" },
	{ "GET", "/v1/tokens", NULL, NULL, "admin" },
	{ "POST", "/v1/tokens", NULL, "{\"role\":\"admin\"}", "admin" },
	{ "DELETE", "/v1/tokens/999", NULL, NULL, "admin" },
	{ "GET", "/v1/audit", NULL, NULL, "admin" },
};

static int rank(const char *role)
{
	return strcmp(role, "viewer") == 0 ? 1 : strcmp(role, "operator") == 0 ? 2 : 3;
}

START_TEST(each_endpoint_checks_its_scope)
{
	th_server s;
	th_server_start(&s, NULL);
	free(th_register(&s, DEV1, "imps"));
	const char *roles[] = { "viewer", "operator" };
	char *tokens[2];
	for (int i = 0; i < 2; i++)
		tokens[i] = make_token(&s, roles[i], roles[i], NULL, NULL);

	for (size_t e = 0; e < sizeof endpoints / sizeof endpoints[0]; e++) {
		for (int i = 0; i < 2; i++) {
			long st = call(&s, endpoints[e].method, endpoints[e].path, endpoints[e].ctype,
				       endpoints[e].body, tokens[i]);
			if (rank(roles[i]) < rank(endpoints[e].need))
				ck_assert_msg(st == 403, "%s %s as %s: %ld, want 403", endpoints[e].method,
					      endpoints[e].path, roles[i], st);
			else
				ck_assert_msg(st != 403 && st != 401, "%s %s as %s: %ld", endpoints[e].method,
					      endpoints[e].path, roles[i], st);
		}
	}
	/* A refused change changed nothing: the viewer's device does not exist. */
	ck_assert_int_eq(call(&s, "POST", "/v1/devices", NULL, "{\"id\":\"00000000000000d4\"}", tokens[0]), 403);
	ck_assert_int_eq(call(&s, "GET", "/v1/devices/00000000000000d4", NULL, NULL, NULL), 404);
	/* Viewers may use ?access_token= on a GET like admins. */
	char path[256];
	snprintf(path, sizeof path, "/v1/devices?access_token=%s", tokens[0]);
	ck_assert_int_eq(call(&s, "GET", path, NULL, NULL, ""), 200);
	ck_assert_int_ge(th_metric(&s, "tender_errors_total{kind=\"http_forbidden\"}"), 20);
	for (int i = 0; i < 2; i++)
		free(tokens[i]);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(tokens_expire_and_are_revoked)
{
	th_server s;
	th_resp r;
	th_server_start(&s, NULL);
	long long op_id, short_id, admin2_id;
	char *op = make_token(&s, "operator", "ci deployer", NULL, &op_id);
	char *brief = make_token(&s, "viewer", "brief", ",\"expires_in\":1", &short_id);
	ck_assert_int_eq(call(&s, "GET", "/v1/devices", NULL, NULL, op), 200);

	/* The list shows tokens' facts, never the tokens. */
	th_http(&s, "GET", "/v1/tokens", NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_ptr_null(strstr(r.body, op));
	ck_assert_ptr_nonnull(strstr(r.body, "\"ci deployer\""));
	ck_assert_int_ge((int)json_array_size(json_object_get(r.json, "tokens")), 3);
	th_resp_free(&r);

	/* Expiry: the brief token stops working, and says why. */
	int expired = 0;
	for (int i = 0; i < 50 && !expired; i++) {
		th_http(&s, "GET", "/v1/devices", NULL, NULL, brief, &r);
		if (r.status == 401) {
			ck_assert_msg(strstr(r.body, "expired at") != NULL, "%s", r.body);
			expired = 1;
		} else {
			ck_assert_int_eq(r.status, 200);
			usleep(200 * 1000);
		}
		th_resp_free(&r);
	}
	ck_assert(expired);

	/* Revocation. */
	char path[64];
	snprintf(path, sizeof path, "/v1/tokens/%lld", op_id);
	ck_assert_int_eq(call(&s, "DELETE", path, NULL, NULL, NULL), 204);
	th_http(&s, "GET", "/v1/devices", NULL, NULL, op, &r);
	ck_assert_int_eq(r.status, 401);
	ck_assert_msg(strstr(r.body, "was revoked") != NULL, "%s", r.body);
	th_resp_free(&r);
	ck_assert_int_eq(call(&s, "DELETE", path, NULL, NULL, NULL), 404);

	/* The last usable admin token cannot be revoked; once there is another, it can. */
	json_t *list = th_get_json(&s, "/v1/tokens", 200);
	long long admin_id = 0;
	size_t i;
	json_t *t;
	json_array_foreach(json_object_get(list, "tokens"), i, t)
		if (strcmp(json_string_value(json_object_get(t, "role")), "admin") == 0)
			admin_id = json_integer_value(json_object_get(t, "id"));
	json_decref(list);
	ck_assert_int_gt(admin_id, 0);
	snprintf(path, sizeof path, "/v1/tokens/%lld", admin_id);
	th_http(&s, "DELETE", path, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 409);
	ck_assert_msg(strstr(r.body, "last usable admin token") != NULL, "%s", r.body);
	th_resp_free(&r);
	char *admin2 = make_token(&s, "admin", "second admin", NULL, &admin2_id);
	ck_assert_int_eq(call(&s, "DELETE", path, NULL, NULL, admin2), 204);
	ck_assert_int_eq(call(&s, "GET", "/v1/tokens", NULL, NULL, NULL), 401);
	ck_assert_int_eq(call(&s, "GET", "/v1/tokens", NULL, NULL, admin2), 200);

	/* Bad bodies are refused with the member named. */
	th_http(&s, "POST", "/v1/tokens", NULL, "{\"role\":\"root\"}", admin2, &r);
	ck_assert_int_eq(r.status, 400);
	ck_assert_ptr_nonnull(strstr(r.body, "'role'"));
	th_resp_free(&r);
	th_http(&s, "POST", "/v1/tokens", NULL, "{\"role\":\"viewer\",\"expires_in\":0}", admin2, &r);
	ck_assert_int_eq(r.status, 400);
	th_resp_free(&r);
	th_http(&s, "POST", "/v1/tokens", NULL, "{\"role\":\"viewer\",\"scope\":1}", admin2, &r);
	ck_assert_int_eq(r.status, 400);
	ck_assert_ptr_nonnull(strstr(r.body, "unknown member 'scope'"));
	th_resp_free(&r);
	free(op);
	free(brief);
	free(admin2);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(failed_attempts_are_throttled_per_address)
{
	th_server s;
	th_resp r;
	th_server_start(&s, "--auth-fail-limit 3 --auth-fail-window 3");
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(call(&s, "GET", "/v1/devices", NULL, NULL, "tdt_wrong"), 401);
	th_http(&s, "GET", "/v1/devices", NULL, NULL, "tdt_wrong", &r);
	ck_assert_int_eq(r.status, 429);
	ck_assert_msg(strstr(r.body, "too many failed authentication attempts from 127.0.0.1") != NULL, "%s", r.body);
	th_resp_free(&r);
	/* While throttled, the address is refused even with a good token... */
	ck_assert_int_eq(call(&s, "GET", "/v1/devices", NULL, NULL, NULL), 429);
	/* ...told when to come back... */
	char url[256], *out = NULL;
	snprintf(url, sizeof url, "%s/v1/devices", s.http_url);
	char *const curl[] = { "/usr/bin/curl", "-s", "-i", url, NULL };
	ck_assert_int_eq(th_run(curl, &out, 10), 0);
	ck_assert_msg(strcasestr(out, "Retry-After: ") != NULL, "%s", out);
	free(out);
	ck_assert_int_ge(th_metric(&s, "tender_errors_total{kind=\"http_auth_throttled\"}"), 2);
	/* ...and let back in once the window is over. */
	long st = 429;
	for (int i = 0; i < 100 && st == 429; i++) {
		usleep(100 * 1000);
		st = call(&s, "GET", "/v1/devices", NULL, NULL, NULL);
	}
	ck_assert_int_eq(st, 200);
	/* Presenting no token at all is not an attempt: it is not counted. */
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(call(&s, "GET", "/v1/devices", NULL, NULL, ""), 401);
	ck_assert_int_eq(call(&s, "GET", "/v1/devices", NULL, NULL, NULL), 200);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(audit_trail_says_who_did_what)
{
	th_server s;
	th_server_start(&s, NULL);
	long long op_id, viewer_id;
	char *op = make_token(&s, "operator", "release bot", NULL, &op_id);
	char *viewer = make_token(&s, "viewer", "dashboard wall", NULL, &viewer_id);
	ck_assert_int_eq(call(&s, "POST", "/v1/devices", NULL, "{\"id\":\"" DEV1 "\"}", op), 201);
	ck_assert_int_eq(call(&s, "PUT", "/v1/groups/imps/agent", "text/plain", "server.log('x')", op), 200);
	ck_assert_int_eq(call(&s, "PUT", "/v1/groups/imps/agent", "text/plain", "x = = 1", op), 400);
	ck_assert_int_eq(call(&s, "PUT", "/v1/groups/imps/agent", "text/plain", "server.log('y')", viewer), 403);
	ck_assert_int_eq(call(&s, "GET", "/v1/devices", NULL, NULL, "tdt_guess"), 401);
	ck_assert_int_eq(call(&s, "GET", "/v1/devices", NULL, NULL, viewer), 200);  /* reads: not recorded */

	/* survives a restart */
	ck_assert_int_eq(th_server_stop(&s), 0);
	th_server_restart(&s);
	json_t *a = th_get_json(&s, "/v1/audit?limit=100", 200), *e;
	json_t *entries = json_object_get(a, "entries");
	size_t i;
	int seen = 0;
	json_array_foreach(entries, i, e) {
		const char *actor = json_string_value(json_object_get(e, "actor"));
		const char *method = json_string_value(json_object_get(e, "method"));
		const char *path = json_string_value(json_object_get(e, "path"));
		int status = (int)json_integer_value(json_object_get(e, "status"));
		const char *detail = json_string_value(json_object_get(e, "detail"));
		ck_assert_ptr_nonnull(json_string_value(json_object_get(e, "ts")));
		ck_assert_str_eq(json_string_value(json_object_get(e, "addr")), "127.0.0.1");
		ck_assert_msg(strcmp(method, "GET") != 0 || status == 401, "a read was recorded: %s", path);
		if (strcmp(actor, "release bot") == 0 && strcmp(path, "/v1/devices") == 0 && status == 201) {
			ck_assert_str_eq(json_string_value(json_object_get(e, "role")), "operator");
			ck_assert_int_eq(json_integer_value(json_object_get(e, "token_id")), op_id);
			seen |= 1;
		}
		if (strcmp(actor, "release bot") == 0 && strcmp(path, "/v1/groups/imps/agent") == 0) {
			seen |= status == 200 ? 2 : 0;
			if (status == 400) {
				ck_assert_msg(detail && strstr(detail, "agent.lua:1:") != NULL, "%s", detail);
				seen |= 4;
			}
		}
		if (strcmp(actor, "dashboard wall") == 0 && status == 403) {
			ck_assert_msg(detail && strstr(detail, "needs the operator role") != NULL, "%s", detail);
			seen |= 8;
		}
		if (strcmp(actor, "anonymous") == 0 && status == 401) {
			ck_assert(json_is_null(json_object_get(e, "token_id")));
			ck_assert_msg(detail && strstr(detail, "unknown token") != NULL, "%s", detail);
			seen |= 16;
		}
		if (strcmp(path, "/v1/tokens") == 0 && status == 201) {
			ck_assert_msg(detail && strstr(detail, "created token") != NULL, "%s", detail);
			seen |= 32;
		}
	}
	ck_assert_int_eq(seen, 63);
	json_decref(a);

	/* by token, and paged */
	char path[128];
	snprintf(path, sizeof path, "/v1/audit?token=%lld", op_id);
	a = th_get_json(&s, path, 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(a, "entries")), 3);
	json_decref(a);
	snprintf(path, sizeof path, "/v1/audit?token=%lld&limit=2", op_id);
	a = th_get_json(&s, path, 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(a, "entries")), 2);
	long long next = json_integer_value(json_object_get(a, "next_before"));
	ck_assert_int_gt(next, 0);
	json_decref(a);
	snprintf(path, sizeof path, "/v1/audit?token=%lld&limit=2&before=%lld", op_id, next);
	a = th_get_json(&s, path, 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(a, "entries")), 1);
	ck_assert(json_is_null(json_object_get(a, "next_before")));
	json_decref(a);
	free(op);
	free(viewer);
	th_server_cleanup(&s);
}
END_TEST

/* The entry of the audit trail with this path and status (borrowed), or NULL. */
static json_t *find_entry(json_t *list, const char *path, int status)
{
	size_t i;
	json_t *e;
	json_array_foreach(json_object_get(list, "entries"), i, e)
		if (strcmp(json_string_value(json_object_get(e, "path")), path) == 0 &&
		    json_integer_value(json_object_get(e, "status")) == status)
			return e;
	return NULL;
}

/* libmicrohttpd decodes %XX before tenderd sees a path, so a refused request
 * may carry any bytes, and an error quoting it may be cut anywhere: the
 * trail keeps them as valid UTF-8 (path and method %XX-escaped, other texts
 * with U+FFFD, cut between characters) and lists every entry, page by page.
 * Before, such a row was left out of its page, and a full page answered 500. */
START_TEST(audit_trail_lists_requests_with_any_bytes)
{
	static const struct {
		const char *method, *sent, *method_stored, *path_stored;
	} wrong[] = {
		{ "GET", "/v1/devices/%ff", "GET", "/v1/devices/%FF" },
		{ "GET", "/v1/devices/%25ff", "GET", "/v1/devices/%25ff" },
		{ "DELETE", "/v1/devices/%C3%A9%C3", "DELETE", "/v1/devices/\xC3\xA9%C3" },
		{ "GET", "/v1/devices/a%0Ab%7F", "GET", "/v1/devices/a%0Ab%7F" },
		/* a 4-byte character is kept; an encoded surrogate is not UTF-8 */
		{ "GET", "/v1/devices/%F0%9F%98%80%ED%A0%80", "GET", "/v1/devices/\xF0\x9F\x98\x80%ED%A0%80" },
		{ "\xFFX", "/v1/fleet", "%FFX", "/v1/fleet" },
	};
	th_server s;
	th_resp r;
	char path[1024], decoded[1024], msg[1200];

	th_server_start(&s, "--auth-fail-limit 0");
	long long viewer_id;
	char *viewer = make_token(&s, "viewer", "wall", NULL, &viewer_id);
	for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++)
		ck_assert_int_eq(call(&s, wrong[i].method, wrong[i].sent, NULL, NULL, "tdt_wrong"), 401);
	/* A refusal's detail quotes the path: 100 three-byte characters after 0,
	 * 1 or 2 ASCII ones, so the 255-byte detail ends inside a character in
	 * at least two of them. */
	for (int pre = 0; pre < 3; pre++) {
		int n = snprintf(path, sizeof path, "/v1/devices/%.*s", pre, "ab");
		int d = snprintf(decoded, sizeof decoded, "%s", path);
		for (int k = 0; k < 100; k++) {
			n += snprintf(path + n, sizeof path - (size_t)n, "%%E2%%82%%AC");
			d += snprintf(decoded + d, sizeof decoded - (size_t)d, "\xE2\x82\xAC");
		}
		ck_assert_int_eq(call(&s, "PATCH", path, NULL, "{}", viewer), 403);
	}

	json_t *all = th_get_json(&s, "/v1/audit?limit=1000", 200), *e;
	for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
		ck_assert_msg((e = find_entry(all, wrong[i].path_stored, 401)) != NULL, "no entry for %s",
			      wrong[i].sent);
		ck_assert_str_eq(json_string_value(json_object_get(e, "method")), wrong[i].method_stored);
	}
	for (int pre = 0; pre < 3; pre++) {
		int d = snprintf(decoded, sizeof decoded, "/v1/devices/%.*s", pre, "ab");
		for (int k = 0; k < 100; k++)
			d += snprintf(decoded + d, sizeof decoded - (size_t)d, "\xE2\x82\xAC");
		ck_assert_msg((e = find_entry(all, decoded, 403)) != NULL, "no 403 entry with %d ASCII bytes", pre);
		snprintf(msg, sizeof msg, "PATCH %s needs the operator role; this token (%lld) is viewer", decoded,
			 viewer_id);
		const char *detail = json_string_value(json_object_get(e, "detail"));
		size_t len = strlen(detail);
		ck_assert_msg(len >= 253 && len <= 255 && strncmp(detail, msg, len) == 0, "detail: %s", detail);
	}

	/* Page by page, one entry each: the same entries, in the same order. */
	size_t total = json_array_size(json_object_get(all, "entries")), pages = 0;
	ck_assert_int_ge((int)total, 10);
	long long before = 0;
	do {
		snprintf(path, sizeof path, "/v1/audit?limit=1%s%lld", before ? "&before=" : "&x=", before);
		th_http(&s, "GET", path, NULL, NULL, NULL, &r);
		ck_assert_msg(r.status == 200 && r.json, "%s: %ld %s", path, r.status, r.body);
		json_t *page = json_object_get(r.json, "entries");
		ck_assert_int_eq((int)json_array_size(page), 1);
		ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(page, 0), "id")),
				 json_integer_value(json_object_get(json_array_get(json_object_get(all, "entries"),
										   pages), "id")));
		pages++;
		before = json_integer_value(json_object_get(r.json, "next_before"));
		ck_assert(before > 0 || json_is_null(json_object_get(r.json, "next_before")));
		th_resp_free(&r);
	} while (before && pages <= total);
	ck_assert_int_eq((int)pages, (int)total);
	json_decref(all);

	/* A row stored raw before the trail cleaned its texts is listed cleaned. */
	ck_assert_int_eq(th_server_stop(&s), 0);
	sqlite3 *db;
	ck_assert_int_eq(sqlite3_open(th_tmp(&s, "tender.db"), &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(db, "INSERT INTO audit (ts, actor, addr, method, path, status, detail) "
				      "VALUES (1, CAST(X'6E616D65FF' AS TEXT), '10.0.0.1', 'GET', "
				      "CAST(X'2F7631FF' AS TEXT), 401, CAST(X'41C3' AS TEXT))", NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	th_server_restart(&s);
	all = th_get_json(&s, "/v1/audit?limit=1", 200);
	ck_assert_msg((e = find_entry(all, "/v1%FF", 401)) != NULL, "the raw row is not listed");
	ck_assert_str_eq(json_string_value(json_object_get(e, "actor")), "name\xEF\xBF\xBD");
	ck_assert_str_eq(json_string_value(json_object_get(e, "detail")), "A\xEF\xBF\xBD");
	json_decref(all);
	free(viewer);
	ck_assert_int_eq(th_server_stop(&s), 0);
	th_server_cleanup(&s);
}
END_TEST

/* A GET with a token from a source address of our own (127.0.0.N): the
 * answer's status. */
static long call_from(th_server *s, const char *src, const char *path, const char *token)
{
	CURL *c = curl_easy_init();
	char url[512], auth[300];
	long status = 0;
	struct curl_slist *h = NULL;

	ck_assert_ptr_nonnull(c);
	snprintf(url, sizeof url, "%s%s", s->http_url, path);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
	h = curl_slist_append(h, auth);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_INTERFACE, src);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_NOBODY, 0L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
	CURLcode rc = curl_easy_perform(c);
	ck_assert_msg(rc == CURLE_OK, "GET %s from %s: %s", url, src, curl_easy_strerror(rc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	return status;
}

/* The refusal entries of the whole trail (owned), newest first: those
 * recorded one by one in *one, the summaries (method "*") in *sums. */
static json_t *refusals(th_server *s, int *one, int *sums)
{
	json_t *all = th_get_json(s, "/v1/audit?limit=1000", 200), *e;
	size_t i;
	*one = *sums = 0;
	json_array_foreach(json_object_get(all, "entries"), i, e) {
		int status = (int)json_integer_value(json_object_get(e, "status"));
		if (status != 401 && status != 403 && status != 429)
			continue;
		if (strcmp(json_string_value(json_object_get(e, "method")), "*") == 0)
			(*sums)++;
		else
			(*one)++;
	}
	return all;
}

/* The first summary entry of a trail (borrowed), or NULL. */
static json_t *summary_of(json_t *all)
{
	size_t i;
	json_t *e;
	json_array_foreach(json_object_get(all, "entries"), i, e)
		if (strcmp(json_string_value(json_object_get(e, "method")), "*") == 0)
			return e;
	return NULL;
}

/* Refusals could fill the trail (every one was a row, written before its
 * answer): an address gets 20 entries one by one per window, the rest are
 * counted and written as one summary when its window ends; then it starts
 * again. */
START_TEST(refusals_are_recorded_up_to_a_limit_then_summarized)
{
	th_server s;
	int one, sums;
	th_server_start(&s, "--auth-fail-limit 0 --auth-fail-window 10");
	long long viewer_id;
	char *viewer = make_token(&s, "viewer", "wall", NULL, &viewer_id);
	for (int i = 0; i < 15; i++)
		ck_assert_int_eq(call(&s, "GET", "/v1/fleet", NULL, NULL, "tdt_wrong"), 401);
	for (int i = 0; i < 15; i++)
		ck_assert_int_eq(call(&s, "PUT", "/v1/groups/imps/agent", "text/plain", "x = 1", viewer), 403);
	json_t *all = refusals(&s, &one, &sums);
	ck_assert_int_eq(one, 20);
	ck_assert_int_eq(sums, 0);
	json_decref(all);

	/* The window ends (10 s after the first refusal): its summary says the rest. */
	json_t *e = NULL;
	for (int i = 0; i < 300 && !e; i++) {
		all = refusals(&s, &one, &sums);
		if (!(e = summary_of(all))) {
			json_decref(all);
			usleep(100 * 1000);
		}
	}
	ck_assert_msg(e != NULL, "no summary entry");
	ck_assert_int_eq(one, 20);
	ck_assert_int_eq(sums, 1);
	const char *detail = json_string_value(json_object_get(e, "detail"));
	ck_assert_msg(strncmp(detail, "10 refused requests from 127.0.0.1 not recorded one by one, ", 60) == 0 &&
		      strstr(detail, ": 401 x0, 403 x10, 429 x0 (recorded one by one: 20 per address and 200 in "
			     "all per 10 s)") != NULL, "%s", detail);
	ck_assert_str_eq(json_string_value(json_object_get(e, "path")), "*");
	ck_assert_str_eq(json_string_value(json_object_get(e, "addr")), "127.0.0.1");
	ck_assert_int_eq(json_integer_value(json_object_get(e, "status")), 403);
	/* all ten came with the viewer's token: the summary names it */
	ck_assert_int_eq(json_integer_value(json_object_get(e, "token_id")), viewer_id);
	ck_assert_str_eq(json_string_value(json_object_get(e, "actor")), "wall");
	ck_assert_str_eq(json_string_value(json_object_get(e, "role")), "viewer");
	json_decref(all);

	/* A new window: recorded one by one again. */
	ck_assert_int_eq(call(&s, "GET", "/v1/fleet", NULL, NULL, "tdt_wrong"), 401);
	all = refusals(&s, &one, &sums);
	ck_assert_int_eq(one, 21);
	json_decref(all);
	free(viewer);
	ck_assert_int_eq(th_server_stop(&s), 0);
	th_server_cleanup(&s);
}
END_TEST

/* Many addresses cannot fill the trail either: 200 refusal entries in all per
 * window, then one summary for every address; and what is still counted at
 * shutdown is written then.  Throttled requests (429) are only counted. */
START_TEST(refusals_from_many_addresses_are_bounded_in_all)
{
	th_server s;
	int one, sums;
	char src[32];
	th_server_start(&s, "--auth-fail-limit 25 --auth-fail-window 3600");
	/* 11 addresses, 22 wrong tokens each: 20 recorded from the first ten
	 * (the 200 of the window), and 2 each counted (429s after the 25th) */
	for (int a = 2; a <= 12; a++) {
		snprintf(src, sizeof src, "127.0.0.%d", a);
		for (int i = 0; i < 22; i++)
			ck_assert_int_eq(call_from(&s, src, "/v1/fleet", "tdt_wrong"), 401);
	}
	for (int i = 0; i < 30; i++)   /* 25 failures, then throttled */
		ck_assert_int_eq(call_from(&s, "127.0.0.13", "/v1/fleet", "tdt_wrong"), i < 25 ? 401 : 429);
	json_t *all = refusals(&s, &one, &sums);
	ck_assert_int_eq(one, 200);
	ck_assert_int_eq(sums, 0);
	json_decref(all);

	ck_assert_int_eq(th_server_stop(&s), 0);
	th_server_restart(&s);
	all = refusals(&s, &one, &sums);
	ck_assert_int_eq(one, 200);
	ck_assert_int_eq(sums, 1);
	json_t *e = summary_of(all);
	const char *detail = json_string_value(json_object_get(e, "detail"));
	/* 10 x 2 + 22 + 30 */
	ck_assert_msg(strncmp(detail, "72 refused requests from several addresses (the last 127.0.0.", 61) == 0 &&
		      strstr(detail, ": 401 x67, 403 x0, 429 x5 (") != NULL, "%s", detail);
	ck_assert(json_is_null(json_object_get(e, "addr")));
	ck_assert(json_is_null(json_object_get(e, "token_id")));
	ck_assert_str_eq(json_string_value(json_object_get(e, "actor")), "anonymous");
	json_decref(all);
	ck_assert_int_eq(th_server_stop(&s), 0);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		each_endpoint_checks_its_scope,
		tokens_expire_and_are_revoked,
		failed_attempts_are_throttled_per_address,
		audit_trail_says_who_did_what,
		audit_trail_lists_requests_with_any_bytes,
		refusals_are_recorded_up_to_a_limit_then_summarized,
		refusals_from_many_addresses_are_bounded_in_all,
	};
	return th_run_tests("12_tokens", 120, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

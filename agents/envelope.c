/* agents/envelope.c -- the migration envelope (see envelope.h, docs/agents.md).
 *
 * Layout (version 1), integers little-endian, a "text" is a u32 length and
 * that many bytes with no NUL, "bytes" the same with NULs allowed, "opt" a
 * u8 0 (absent) or 1 followed by the value:
 *
 *   "TNAE" u16 version u16 flags(0) u32 body-length
 *   u64 device, text agent_id, text group, 32 bytes code hash, text state,
 *   text last_error, opt text saved, i64 events, restarts, backoff_ms,
 *   restart_in_ms, started_ms, u8 connected, u64 conn,
 *   u32 n + n text queued frames, u32 next_timer_id,
 *   u32 n + n timers (u32 id, i64 due_in_ms, i64 every_ms),
 *   u32 n + n events (u8 kind, then by kind: conn u64 | text name, opt text
 *   data | u64 reply, text method, path, query, bytes body, u32 pairs, text
 *   name and value per pair | i32 target | u64 reply (info, delete) |
 *   nothing).
 *
 * The decoder trusts nothing: every length is checked against what is left
 * and against its limit before anything is allocated, so a hostile envelope
 * costs at most its own size in memory. */
#include "envelope.h"

#include <stdlib.h>
#include <string.h>

/* --- writing ---------------------------------------------------------------------- */

struct wr {
	uint8_t *buf;
	size_t len, cap;
	int oom, big;
};

static void wr__put(struct wr *w, const void *p, size_t n)
{
	if (w->oom || w->big)
		return;
	if (n > AGENT_ENV_MAX - w->len) {
		w->big = 1;
		return;
	}
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 256;
		while (cap < w->len + n)
			cap *= 2;
		uint8_t *grown = realloc(w->buf, cap);
		if (!grown) {
			w->oom = 1;
			return;
		}
		w->buf = grown;
		w->cap = cap;
	}
	if (n)
		memcpy(w->buf + w->len, p, n);
	w->len += n;
}

static void wr__u8(struct wr *w, uint8_t v)
{
	wr__put(w, &v, 1);
}

static void wr__u32(struct wr *w, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
	wr__put(w, b, 4);
}

static void wr__u64(struct wr *w, uint64_t v)
{
	wr__u32(w, (uint32_t)v);
	wr__u32(w, (uint32_t)(v >> 32));
}

static void wr__bytes(struct wr *w, const char *s, size_t n, size_t max)
{
	if (n > max) {
		w->big = 1;
		return;
	}
	wr__u32(w, (uint32_t)n);
	wr__put(w, s, n);
}

static void wr__text(struct wr *w, const char *s, size_t max)
{
	s = s ? s : "";
	wr__bytes(w, s, strlen(s), max);
}

static void wr__opt(struct wr *w, const char *s, size_t max)
{
	wr__u8(w, s != NULL);
	if (s)
		wr__text(w, s, max);
}

static void wr__event(struct wr *w, const agent_env_event *e)
{
	wr__u8(w, (uint8_t)e->kind);
	switch (e->kind) {
	case AGENT_ENV_ONLINE:
	case AGENT_ENV_OFFLINE:
		wr__u64(w, e->conn);
		break;
	case AGENT_ENV_MSG:
		wr__text(w, e->name, AGENT_ENV_MAX_NAME);
		wr__opt(w, e->data, AGENT_ENV_MAX_STR);
		break;
	case AGENT_ENV_HTTP:
		wr__u64(w, e->reply);
		wr__text(w, e->method, AGENT_ENV_MAX_NAME);
		wr__text(w, e->path, AGENT_ENV_MAX_STR);
		wr__text(w, e->query, AGENT_ENV_MAX_STR);
		wr__bytes(w, e->body ? e->body : "", e->body ? e->body_len : 0, AGENT_ENV_MAX_STR);
		if (e->nheaders > AGENT_ENV_MAX_HEADERS)
			w->big = 1;
		wr__u32(w, e->nheaders);
		for (uint32_t i = 0; i < 2 * e->nheaders && !w->big; i++)
			wr__text(w, e->headers[i], AGENT_ENV_MAX_STR);
		break;
	case AGENT_ENV_MIGRATE:
		wr__u32(w, (uint32_t)e->target);
		break;
	case AGENT_ENV_INFO:
	case AGENT_ENV_DELETE:
		wr__u64(w, e->reply);
		break;
	default: /* RELOAD, RESTART: the kind says it all */
		break;
	}
}

int agent_env_encode(const agent_env *env, uint8_t **out, size_t *len, tn_error *err)
{
	struct wr w = { 0 };
	*out = NULL;
	*len = 0;
	if (env->nqueued > AGENT_ENV_MAX_QUEUE || env->ntimers > AGENT_ENV_MAX_TIMERS ||
	    env->nev > AGENT_ENV_MAX_EVENTS)
		return tn_err(err, TN_ETOOBIG, "the envelope would be over its limits");
	wr__put(&w, AGENT_ENV_MAGIC, 4);
	wr__u8(&w, AGENT_ENV_VERSION & 0xff);
	wr__u8(&w, AGENT_ENV_VERSION >> 8);
	wr__u8(&w, 0);
	wr__u8(&w, 0);
	wr__u32(&w, 0); /* the body's length, filled in below */
	wr__u64(&w, env->device);
	wr__text(&w, env->agent_id, AGENT_ENV_MAX_NAME);
	wr__text(&w, env->group, AGENT_ENV_MAX_NAME);
	wr__put(&w, env->code_hash, sizeof env->code_hash);
	wr__text(&w, env->state, AGENT_ENV_MAX_NAME);
	wr__text(&w, env->last_error, AGENT_ENV_MAX_NAME);
	wr__opt(&w, env->saved, AGENT_ENV_MAX_STR);
	wr__u64(&w, (uint64_t)env->events);
	wr__u64(&w, (uint64_t)env->restarts);
	wr__u64(&w, (uint64_t)env->backoff_ms);
	wr__u64(&w, (uint64_t)env->restart_in_ms);
	wr__u64(&w, (uint64_t)env->started_ms);
	wr__u8(&w, env->connected != 0);
	wr__u64(&w, env->conn);
	wr__u32(&w, env->nqueued);
	for (uint32_t i = 0; i < env->nqueued; i++)
		wr__text(&w, env->queued[i], AGENT_ENV_MAX_STR);
	wr__u32(&w, env->next_timer_id);
	wr__u32(&w, env->ntimers);
	for (uint32_t i = 0; i < env->ntimers; i++) {
		wr__u32(&w, env->timers[i].id);
		wr__u64(&w, (uint64_t)env->timers[i].due_in_ms);
		wr__u64(&w, (uint64_t)env->timers[i].every_ms);
	}
	wr__u32(&w, env->nev);
	for (uint32_t i = 0; i < env->nev && !w.big; i++)
		wr__event(&w, &env->ev[i]);
	if (w.oom || w.big) {
		free(w.buf);
		return w.oom ? tn_err(err, TN_ENOMEM, "out of memory")
			     : tn_err(err, TN_ETOOBIG, "the envelope would be over its limits");
	}
	uint32_t body = (uint32_t)(w.len - AGENT_ENV_HEADER);
	for (int i = 0; i < 4; i++)
		w.buf[8 + i] = (uint8_t)(body >> (8 * i));
	*out = w.buf;
	*len = w.len;
	return 0;
}

/* --- reading ---------------------------------------------------------------------- */

struct rd {
	const uint8_t *p;
	size_t len, off;
	tn_error *err;
	int failed;
};

/* The first failure wins: later reads do nothing. */
static int rd__fail(struct rd *r, const char *what, const char *why)
{
	if (!r->failed)
		tn_err(r->err, TN_EINVAL, "migration envelope: %s %s at byte %zu", what, why, r->off);
	r->failed = 1;
	return -1;
}

static const uint8_t *rd__take(struct rd *r, size_t n, const char *what)
{
	if (r->failed)
		return NULL;
	if (n > r->len - r->off) {
		rd__fail(r, what, "is cut short");
		return NULL;
	}
	const uint8_t *p = r->p + r->off;
	r->off += n;
	return p;
}

static uint8_t rd__u8(struct rd *r, const char *what)
{
	const uint8_t *p = rd__take(r, 1, what);
	return p ? p[0] : 0;
}

static uint32_t rd__u32(struct rd *r, const char *what)
{
	const uint8_t *p = rd__take(r, 4, what);
	return p ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24 : 0;
}

static uint64_t rd__u64(struct rd *r, const char *what)
{
	uint64_t lo = rd__u32(r, what);
	return lo | (uint64_t)rd__u32(r, what) << 32;
}

static int rd__bool(struct rd *r, const char *what)
{
	uint8_t v = rd__u8(r, what);
	if (v > 1)
		rd__fail(r, what, "is neither 0 nor 1");
	return v;
}

/* A signed value within [lo, hi]. */
static int64_t rd__i64(struct rd *r, const char *what, int64_t lo, int64_t hi)
{
	int64_t v = (int64_t)rd__u64(r, what);
	if (!r->failed && (v < lo || v > hi))
		rd__fail(r, what, "is out of range");
	return v;
}

/* A length-prefixed string, NUL-terminated (owned); text refuses NUL bytes. */
static char *rd__str(struct rd *r, const char *what, size_t max, int text, size_t *outlen)
{
	uint32_t n = rd__u32(r, what);
	if (r->failed)
		return NULL;
	if (n > max) {
		rd__fail(r, what, "is longer than its limit");
		return NULL;
	}
	const uint8_t *p = rd__take(r, n, what);
	if (!p)
		return NULL;
	if (text && memchr(p, '\0', n)) {
		rd__fail(r, what, "holds a NUL byte");
		return NULL;
	}
	char *s = malloc((size_t)n + 1);
	if (!s) {
		rd__fail(r, what, "is more than memory allows");
		return NULL;
	}
	memcpy(s, p, n);
	s[n] = '\0';
	if (outlen)
		*outlen = n;
	return s;
}

static char *rd__text(struct rd *r, const char *what, size_t max)
{
	return rd__str(r, what, max, 1, NULL);
}

static char *rd__opt(struct rd *r, const char *what, size_t max)
{
	return rd__bool(r, what) ? rd__text(r, what, max) : NULL;
}

/* A count of items of at least `min` bytes each: within its limit and what
 * is left, so that the array it sizes cannot be larger than the input. */
static uint32_t rd__count(struct rd *r, const char *what, uint32_t max, size_t min)
{
	uint32_t n = rd__u32(r, what);
	if (r->failed)
		return 0;
	if (n > max)
		return rd__fail(r, what, "is over its limit"), 0;
	if ((uint64_t)n * min > r->len - r->off)
		return rd__fail(r, what, "is more than the bytes left"), 0;
	return n;
}

static void rd__event(struct rd *r, agent_env_event *e)
{
	e->kind = rd__u8(r, "an event's kind");
	e->target = -1;
	switch (e->kind) {
	case AGENT_ENV_ONLINE:
	case AGENT_ENV_OFFLINE:
		e->conn = rd__u64(r, "an event's connection");
		break;
	case AGENT_ENV_MSG:
		e->name = rd__text(r, "a message's name", AGENT_ENV_MAX_NAME);
		e->data = rd__opt(r, "a message's data", AGENT_ENV_MAX_STR);
		break;
	case AGENT_ENV_HTTP:
		e->reply = rd__u64(r, "a request's reply handle");
		e->method = rd__text(r, "a request's method", AGENT_ENV_MAX_NAME);
		e->path = rd__text(r, "a request's path", AGENT_ENV_MAX_STR);
		e->query = rd__text(r, "a request's query", AGENT_ENV_MAX_STR);
		e->body = rd__str(r, "a request's body", AGENT_ENV_MAX_STR, 0, &e->body_len);
		e->nheaders = rd__count(r, "a request's header count", AGENT_ENV_MAX_HEADERS, 8);
		if (r->failed)
			break;
		e->headers = calloc(2 * (size_t)e->nheaders + 1, sizeof *e->headers);
		if (!e->headers) {
			e->nheaders = 0;
			rd__fail(r, "a request's headers", "are more than memory allows");
			break;
		}
		for (uint32_t i = 0; i < 2 * e->nheaders && !r->failed; i++)
			e->headers[i] = rd__text(r, "a request header", AGENT_ENV_MAX_STR);
		break;
	case AGENT_ENV_RELOAD:
	case AGENT_ENV_RESTART:
		break;
	case AGENT_ENV_MIGRATE:
		e->target = (int32_t)rd__u32(r, "a migration's target");
		if (!r->failed && e->target < -1)
			rd__fail(r, "a migration's target", "is out of range");
		break;
	case AGENT_ENV_INFO:
		e->reply = rd__u64(r, "an info request's reply handle");
		break;
	case AGENT_ENV_DELETE:
		e->reply = rd__u64(r, "a delete's reply handle");
		break;
	default:
		if (!r->failed) {
			r->off--; /* point at the kind */
			rd__fail(r, "an event's kind", "is unknown");
		}
	}
}

static void rd__header(struct rd *r)
{
	const uint8_t *h = rd__take(r, AGENT_ENV_HEADER, "the header");
	if (!h)
		return;
	r->off = 0;
	if (memcmp(h, AGENT_ENV_MAGIC, 4) != 0) {
		rd__fail(r, "the magic", "is not " AGENT_ENV_MAGIC);
		return;
	}
	r->off = 4;
	if (rd__u8(r, "the version") != AGENT_ENV_VERSION || rd__u8(r, "the version") != 0) {
		r->off = 4;
		rd__fail(r, "the version", "is not 1");
		return;
	}
	if (rd__u8(r, "the flags") != 0 || rd__u8(r, "the flags") != 0) {
		r->off = 6;
		rd__fail(r, "the flags", "are not 0");
		return;
	}
	uint32_t body = rd__u32(r, "the body length");
	if (body != r->len - AGENT_ENV_HEADER) {
		r->off = 8;
		rd__fail(r, "the body length", "does not match the envelope's size");
	}
}

int agent_env_decode(const uint8_t *buf, size_t len, agent_env *env, tn_error *err)
{
	struct rd r = { buf, len, 0, err, 0 };
	memset(env, 0, sizeof *env);
	if (len > AGENT_ENV_MAX)
		return tn_err(err, TN_EINVAL, "migration envelope: %zu bytes is over the limit", len);
	rd__header(&r);
	env->device = rd__u64(&r, "the device");
	env->agent_id = rd__text(&r, "the agent id", AGENT_ENV_MAX_NAME);
	env->group = rd__text(&r, "the group", AGENT_ENV_MAX_NAME);
	const uint8_t *hash = rd__take(&r, sizeof env->code_hash, "the code hash");
	if (hash)
		memcpy(env->code_hash, hash, sizeof env->code_hash);
	env->state = rd__text(&r, "the state", AGENT_ENV_MAX_NAME);
	env->last_error = rd__text(&r, "the last error", AGENT_ENV_MAX_NAME);
	env->saved = rd__opt(&r, "the saved state", AGENT_ENV_MAX_STR);
	env->events = rd__i64(&r, "the event count", 0, INT64_MAX);
	env->restarts = rd__i64(&r, "the restart count", 0, INT64_MAX);
	env->backoff_ms = rd__i64(&r, "the backoff", 0, AGENT_ENV_MAX_MS);
	env->restart_in_ms = rd__i64(&r, "the pending restart", -1, AGENT_ENV_MAX_MS);
	env->started_ms = rd__i64(&r, "the start time", 0, INT64_MAX);
	env->connected = rd__bool(&r, "the connected flag");
	env->conn = rd__u64(&r, "the connection");
	env->nqueued = rd__count(&r, "the queued message count", AGENT_ENV_MAX_QUEUE, 4);
	if (env->nqueued) {
		env->queued = calloc(env->nqueued, sizeof *env->queued);
		if (!env->queued) {
			env->nqueued = 0;
			rd__fail(&r, "the queued messages", "are more than memory allows");
		}
	}
	for (uint32_t i = 0; i < env->nqueued && !r.failed; i++)
		env->queued[i] = rd__text(&r, "a queued message", AGENT_ENV_MAX_STR);
	env->next_timer_id = rd__u32(&r, "the next timer id");
	env->ntimers = rd__count(&r, "the timer count", AGENT_ENV_MAX_TIMERS, 20);
	if (env->ntimers) {
		env->timers = calloc(env->ntimers, sizeof *env->timers);
		if (!env->timers) {
			env->ntimers = 0;
			rd__fail(&r, "the timers", "are more than memory allows");
		}
	}
	for (uint32_t i = 0; i < env->ntimers && !r.failed; i++) {
		agent_env_timer *t = &env->timers[i];
		t->id = rd__u32(&r, "a timer's id");
		if (!r.failed && (t->id == 0 || t->id > INT32_MAX))
			rd__fail(&r, "a timer's id", "is out of range");
		t->due_in_ms = rd__i64(&r, "a timer's due time", -AGENT_ENV_MAX_MS, AGENT_ENV_MAX_MS);
		t->every_ms = rd__i64(&r, "a timer's interval", 0, AGENT_ENV_MAX_MS);
	}
	env->nev = rd__count(&r, "the event count", AGENT_ENV_MAX_EVENTS, 1);
	if (env->nev) {
		env->ev = calloc(env->nev, sizeof *env->ev);
		if (!env->ev) {
			env->nev = 0;
			rd__fail(&r, "the events", "are more than memory allows");
		}
	}
	for (uint32_t i = 0; i < env->nev && !r.failed; i++)
		rd__event(&r, &env->ev[i]);
	if (!r.failed && r.off != len)
		rd__fail(&r, "the envelope", "has bytes left over");
	if (!r.failed && (!env->agent_id || !env->group || !env->state || !env->last_error))
		rd__fail(&r, "the envelope", "is incomplete");
	return r.failed ? TN_EINVAL : 0;
}

static void agent_env__event_clear(agent_env_event *e)
{
	free(e->name);
	free(e->data);
	free(e->method);
	free(e->path);
	free(e->query);
	free(e->body);
	if (e->headers)
		for (uint32_t i = 0; i < 2 * e->nheaders; i++)
			free(e->headers[i]);
	free(e->headers);
}

void agent_env_clear(agent_env *env)
{
	free(env->agent_id);
	free(env->group);
	free(env->state);
	free(env->last_error);
	free(env->saved);
	for (uint32_t i = 0; env->queued && i < env->nqueued; i++)
		free(env->queued[i]);
	free(env->queued);
	free(env->timers);
	for (uint32_t i = 0; env->ev && i < env->nev; i++)
		agent_env__event_clear(&env->ev[i]);
	free(env->ev);
	memset(env, 0, sizeof *env);
}

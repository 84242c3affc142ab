/* agents/supervisor.c -- the agent supervisor (see supervisor.h, docs/agents.md).
 *
 * Each agent belongs to exactly one worker (`agent->worker`, changed only
 * under `route_lock`); every event for it goes to that worker's queue, so it
 * runs one event at a time, in the order the events were routed.
 *
 * Migration (worker A -> B), at an event boundary on A:
 *   1. A takes route_lock (no event can be routed meanwhile), takes out of
 *      its own queue every event still waiting for the agent, and encodes
 *      the agent -- saved state, counters, offline queue, timers, those
 *      events, HTTP replies by handle id -- into an envelope
 *      (agents/envelope.h); if that fails the events go back and the agent
 *      stays;
 *   2. A clears what it encoded from the agent, sets agent->worker = B and
 *      pushes MIGRATE_IN(envelope, the live Lua state) to B, which decodes
 *      the envelope, restores the agent from it, re-arms the state's timers
 *      from it and queues its events first;
 *   3. events routed from then on land on B behind MIGRATE_IN.
 * So nothing queued is lost or reordered.  In process the Lua state goes
 * along (it is never used by two threads); from another node there is none,
 * and B rebuilds it from the code and the saved state (docs/agents.md).
 *
 * What the API shows of an agent is read without a round trip to its
 * worker whenever that gives the same answer.  The owning worker publishes
 * it into the agent's pub_* fields after each of the agent's events and
 * timer runs (sup__publish), under that worker's lock, and writes the
 * agent's last_error and group under that lock too.  A reader takes
 * route_lock (the agent is neither deleted nor handed to another worker
 * meanwhile), then the lock of agent->worker.  sup_agent_state (a device
 * list) reads pub_state and never waits.  Every event routed to an agent
 * takes the next of its sequence numbers (agent->routed, under route_lock;
 * sup__seq) and pub_seq is the last one published; events run in the order
 * they were routed, so when the two are equal nothing sent to the agent is
 * waiting or running, and sup_agent_info answers from the published
 * fields; otherwise it queues an EV_INFO behind what is waiting (its answer
 * reflects every event sent before it).  A move keeps the count: its
 * MIGRATE_IN carries the last number routed before it, published once it
 * and the events it carries have run (until then the agent shows what it
 * was before the move).
 *
 * Lock order: route_lock, then a worker's lock, then group_lock. */
#define _GNU_SOURCE
#include "supervisor.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "device.h"
#include "envelope.h"
#include "events.h"
#include "idmap.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"

#define SUP_MAX_WORKERS 64
#define SUP_BACKOFF_MAX_MS 60000

/* An agent's state, as GET /v1/devices/{id}/agent names it (sup__states). */
enum sup_state { ST_STOPPED, ST_RUNNING, ST_NO_CODE, ST_NO_DEVICE, ST_ERROR, ST_OOM, ST_MIGRATING };
static const char *const sup__states[] = {
	[ST_STOPPED] = "stopped", [ST_RUNNING] = "running", [ST_NO_CODE] = "no code",
	[ST_NO_DEVICE] = "no device", [ST_ERROR] = "error", [ST_OOM] = "out of memory",
	[ST_MIGRATING] = "migrating",
};

enum ev_kind {
	EV_ONLINE, EV_OFFLINE, EV_MSG, EV_HTTP, EV_RELOAD, EV_RESTART, EV_MIGRATE_OUT, EV_MIGRATE_IN,
	EV_INFO, EV_STOP_ALL, EV_ADOPT, EV_DELETE,
};

struct sup_info_wait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done;
	json_t *info;
};

struct ev {
	struct ev *next;
	enum ev_kind kind;
	uint64_t device;
	uint64_t conn;
	char *name, *data;             /* EV_MSG (owned) */
	int target;                    /* EV_MIGRATE_OUT */
	struct agent *agent;           /* EV_ADOPT */
	uint8_t *env;                  /* EV_MIGRATE_IN: the envelope (owned) */
	size_t env_len;
	int64_t env_sent;              /* EV_MIGRATE_IN: when it was encoded (tn_mono_ms) */
	agent_rt *live;                /* EV_MIGRATE_IN: the Lua state, in process (owned) */
	uint64_t *handles;             /* EV_MIGRATE_IN: the reply handles its events use (owned):
					* what the sending side answers if the move fails */
	uint32_t nhandles;
	agent_http_req http;           /* EV_HTTP: strings owned (http_buf) */
	char *http_buf[5];
	char **http_headers;
	sup_http_done done;
	void *done_arg;
	struct sup_info_wait *wait;    /* EV_INFO, EV_DELETE */
	uint32_t seq;                  /* the agent's sequence number (sup__seq), 0: none */
};

/* CPU time used in the last second, for rebalancing: a sliding window made
 * of the current and the previous whole second (sup__window_*). */
struct sup_window {
	int64_t second;                /* tn_mono_ms() / 1000 of `cur` */
	int64_t cur, prev;             /* microseconds (may be negative: an adjustment) */
};

struct qmsg {
	struct qmsg *next;
	char *frame;                   /* the whole msg frame, JSON text */
};

struct agent {
	uint64_t device;
	char hex[17];
	uint8_t state;                 /* enum sup_state; owning worker only */
	uint8_t connected;             /* owning worker only */
	uint8_t pub_state;             /* published (see the top): under its worker's lock */
	int worker;                    /* under route_lock */
	/* Where it will be once the moves queued for it have run, and how many
	 * those are (under route_lock): where sup_migrate counts from. */
	int dest, moving;
	supervisor *sup;
	/* the rest: owning worker only, but for what says otherwise */
	agent_rt *rt;
	uint32_t routed;               /* the last sequence number routed (under route_lock) */
	uint32_t pub_seq;              /* the last one published (under its worker's lock) */
	const char *group;             /* interned (sup__intern): NULL until started;
					* written under its worker's lock */
	char *agent_id;                /* owned, NULL until started */
	unsigned char code_hash[32];   /* SHA-256 of the code rt runs */
	int q_len;
	int backoff_ms;
	uint64_t conn;
	struct qmsg *q_head, *q_tail;
	int64_t events, restarts, started_ms;
	int64_t restart_at;            /* ms (monotonic): restart after out of memory */
	char *last_error;              /* owned, NULL until the first error; written under
					* its worker's lock (sup__set_error) */
	ratelimit logs;
	struct sup_window load;        /* CPU time it used lately (under its worker's lock) */
	/* Its place in its worker's due heap (owning worker only): when its
	 * next timer, restart or log-drop report is due, and 1 + its index
	 * (0: not in the heap, nothing due). */
	int64_t due;
	int heap_pos;
	/* The rest of what is published (under its worker's lock), laid out
	 * to keep the struct in a 288-byte malloc chunk. */
	uint32_t pub_memory;
	int64_t pub_events, pub_restarts;
	int pub_queued;
	uint8_t pub_connected;
};

/* A group name, interned once for every agent of the group; `has_code` says
 * whether the group has agent code (under group_lock).  Never freed before
 * sup_free: there are as many as groups ever seen. */
struct sup_group {
	struct sup_group *next;
	int has_code;
	char name[];
};

struct worker {
	supervisor *sup;
	int index;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct ev *head, *tail;
	int nagents;                   /* for placing new agents; under route_lock */
	int stopped;                   /* after EV_STOP_ALL: no agent runs here (its thread only) */
	struct ev stop_ev;             /* the EV_STOP_ALL sup_stop sends (not malloc'd: cannot fail) */
	struct sup_window load;        /* CPU time it spent on agents lately (under lock) */
	struct sup_window shift;       /* the load of agents moved on or off it lately,
					* not yet in `load` (under route_lock) */
	idmap local;                   /* device -> agent, this worker's thread only */
	/* Its agents with something due, a min-heap on agent->due (this
	 * worker's thread only): after an event only that agent is looked at,
	 * and only the due ones at their time. */
	struct agent **heap;
	struct agent **ready;          /* the due ones of a round (sup__run_heap), heap_cap long */
	int heap_len, heap_cap;
	int stop;
};

struct supervisor {
	sup_options opt;
	store *st;
	device_loop *dev;
	int nworkers;
	struct worker workers[SUP_MAX_WORKERS];
	pthread_mutex_t route_lock;
	idmap route;                   /* device -> struct agent (under route_lock) */
	/* Devices seen online whose group had no code, so no struct agent:
	 * device -> SUP_SEEN(conn, online) (under route_lock).  An agent entry
	 * is made for them when code is deployed to their group, or an event
	 * other than online, offline or a message needs one. */
	idmap seen;
	pthread_mutex_t group_lock;    /* innermost: taken under route_lock too */
	struct sup_group *groups;
	int ncode;                     /* groups with code (under group_lock) */
	/* Rebalancing (under route_lock): the busiest and the least busy
	 * worker, as of balance_at, and when an agent last moved. */
	int64_t balance_at, last_move;
	int busiest, idlest;
	int64_t busiest_us, idlest_us;
	pthread_mutex_t reply_lock;
	idmap replies;                 /* handle id -> struct sup_reply, for envelopes */
	uint64_t next_reply;
	int stopping;                  /* sup_stop has begun: nothing is routed (under route_lock) */
};

/* Where an HTTP answer or an info reply goes: node-local, so an envelope
 * names it by a handle id. */
struct sup_reply {
	sup_http_done done;
	void *done_arg;
	struct sup_info_wait *wait;
};

/* A seen device's connection, as `seen` holds it (never NULL). */
#define SUP_SEEN(conn, online) ((void *)(uintptr_t)(((uint64_t)(conn) << 2) | 2u | ((online) ? 1u : 0u)))
#define SUP_SEEN_CONN(v) ((uint64_t)(uintptr_t)(v) >> 2)
#define SUP_SEEN_ONLINE(v) ((int)((uintptr_t)(v) & 1u))

/* --- groups -------------------------------------------------------------------- */

/* The interned name of `group` (NULL when out of memory); group_lock held. */
static struct sup_group *sup__group_locked(supervisor *s, const char *group)
{
	for (struct sup_group *g = s->groups; g; g = g->next)
		if (strcmp(g->name, group) == 0)
			return g;
	size_t len = strlen(group);
	struct sup_group *g = malloc(sizeof *g + len + 1);
	if (!g)
		return NULL;
	g->has_code = 0;
	memcpy(g->name, group, len + 1);
	g->next = s->groups;
	s->groups = g;
	return g;
}

static const char *sup__intern(supervisor *s, const char *group)
{
	pthread_mutex_lock(&s->group_lock);
	struct sup_group *g = sup__group_locked(s, group);
	pthread_mutex_unlock(&s->group_lock);
	return g ? g->name : NULL;
}

static int sup__has_code(supervisor *s, const char *group)
{
	int has = 0;
	pthread_mutex_lock(&s->group_lock);
	for (struct sup_group *g = s->groups; g; g = g->next)
		if (strcmp(g->name, group) == 0) {
			has = g->has_code;
			break;
		}
	pthread_mutex_unlock(&s->group_lock);
	return has;
}

static void sup__set_code(supervisor *s, const char *group)
{
	pthread_mutex_lock(&s->group_lock);
	struct sup_group *g = sup__group_locked(s, group);
	if (g && !g->has_code) {
		g->has_code = 1;
		s->ncode++;
	}
	pthread_mutex_unlock(&s->group_lock);
}

static int sup__any_code(supervisor *s)
{
	pthread_mutex_lock(&s->group_lock);
	int n = s->ncode;
	pthread_mutex_unlock(&s->group_lock);
	return n;
}

/* The agent's last_error and group, set by its owning worker under its lock
 * (readers elsewhere take it: see the top). */
static void sup__set_error(struct agent *a, const char *msg)
{
	char *copy = msg && *msg ? strdup(msg) : NULL, *old;
	struct worker *w = &a->sup->workers[a->worker];
	pthread_mutex_lock(&w->lock);
	old = a->last_error;
	a->last_error = copy;
	pthread_mutex_unlock(&w->lock);
	free(old);
}

static void sup__set_group(struct agent *a, const char *interned)
{
	struct worker *w = &a->sup->workers[a->worker];
	pthread_mutex_lock(&w->lock);
	a->group = interned;
	pthread_mutex_unlock(&w->lock);
}

/* --- queues ------------------------------------------------------------------- */

static void sup__ev_free(struct ev *e)
{
	if (!e)
		return;
	free(e->name);
	free(e->data);
	free(e->env);
	free(e->handles);
	agent_rt_free(e->live);
	for (int i = 0; i < 5; i++)
		free(e->http_buf[i]);
	if (e->http_headers) {
		for (char **h = e->http_headers; *h; h++)
			free(*h);
		free(e->http_headers);
	}
	free(e);
}

static void sup__push_locked(struct worker *w, struct ev *e)
{
	e->next = NULL;
	if (w->tail)
		w->tail->next = e;
	else
		w->head = e;
	w->tail = e;
	pthread_cond_signal(&w->wake);
}

static void sup__push(struct worker *w, struct ev *e)
{
	pthread_mutex_lock(&w->lock);
	sup__push_locked(w, e);
	pthread_mutex_unlock(&w->lock);
}

static struct ev *sup__ev(enum ev_kind kind, uint64_t device)
{
	struct ev *e = calloc(1, sizeof *e);
	if (e) {
		e->kind = kind;
		e->device = device;
	}
	return e;
}

/* Wakes whoever waits for an EV_INFO (with info, or NULL: none to give). */
static void sup__wake(struct sup_info_wait *w, json_t *info)
{
	pthread_mutex_lock(&w->lock);
	w->info = info;
	w->done = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

/* The headers of the answers the supervisor writes itself (errors, in the
 * API's JSON form), so that they say what they are. */
static const char *const sup__json_headers[] = { "Content-Type", "application/json", NULL };

/* An event no agent will run: an HTTP caller gets `status` with this
 * message, a state query its answer (none); the rest are dropped. */
static void sup__refuse(struct ev *e, int status, const char *code, const char *why)
{
	if (e->kind == EV_HTTP && e->done) {
		char body[300];
		int n = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, why);
		e->done(e->done_arg, status, sup__json_headers, body, (size_t)n);
		e->done = NULL;
	} else if (e->wait) {
		sup__wake(e->wait, NULL);
		e->wait = NULL;
	}
}

static char *sup__group_of(supervisor *s, const char *hex, int *exists, char **agent_id);

/* With no agent entry for the device (route_lock held, may be released and
 * taken again): 1 if the event needs one, created by the caller; else 0, and
 * the event only updates `seen`.  Only a device whose group has code gets an
 * agent when it comes online or sends a message; the group is looked up only
 * when some group has code. */
static int sup__wants_agent(supervisor *s, struct ev *e, struct agent **found)
{
	int oom = 0;
	if (e->kind == EV_OFFLINE) {
		void *v = idmap_get(&s->seen, e->device);
		if (v && SUP_SEEN_CONN(v) == e->conn)
			idmap_put(&s->seen, e->device, SUP_SEEN(e->conn, 0), &oom);
		return 0;
	}
	if (e->kind == EV_DELETE || e->kind == EV_INFO)
		return 0; /* nothing to delete, or to ask: deleted meanwhile */
	if (e->kind != EV_ONLINE && e->kind != EV_MSG)
		return 1;
	/* Seen online without an agent: its group had no code at its hello, and
	 * a deploy since would have made its agent.  No store read per message. */
	void *seen = idmap_get(&s->seen, e->device);
	if (e->kind == EV_MSG && seen && SUP_SEEN_ONLINE(seen))
		return 0;
	int has = 0;
	if (sup__any_code(s)) {
		char hex[17];
		int exists;
		tn_device_id_format(e->device, hex);
		pthread_mutex_unlock(&s->route_lock);
		char *group = sup__group_of(s, hex, &exists, NULL);
		pthread_mutex_lock(&s->route_lock);
		/* sup_deploy marks the group under route_lock before it looks for
		 * the group's seen devices: either it finds this one or has is 1. */
		has = group && sup__has_code(s, group);
		free(group);
		if ((*found = idmap_get(&s->route, e->device)))
			return 1;
	}
	if (has)
		return 1;
	if (e->kind == EV_ONLINE)
		idmap_put(&s->seen, e->device, SUP_SEEN(e->conn, 1), &oom);
	return 0;
}

/* The agent's next sequence number, for an event routed to it (route_lock
 * held; see the top).  Never 0, which means none. */
static uint32_t sup__seq(struct agent *a)
{
	if (++a->routed == 0)
		a->routed = 1;
	return a->routed;
}

/* --- rebalancing ------------------------------------------------------------- */

/* Rebalancing weighs work, not agents: CPU time over the last second. */
#define SUP_BALANCE_CHECK_MS 100     /* how often the workers' loads are compared */
#define SUP_MOVE_GAP_MS 1000         /* at most one rebalancing move a second */
#define SUP_BUSY_MIN_US 100000       /* "much busier": 10% of a core more, ... */
#define SUP_BUSY_FACTOR 2            /* ... and twice the least busy worker's load */

static void sup__window_add(struct sup_window *l, int64_t now_ms, int64_t us)
{
	int64_t sec = now_ms / 1000;
	if (sec != l->second) {
		l->prev = sec == l->second + 1 ? l->cur : 0;
		l->cur = 0;
		l->second = sec;
	}
	l->cur += us;
}

/* About the microseconds added in the last 1000 ms: the previous second
 * weighted by how much of it the window still covers, plus this one. */
static int64_t sup__window_get(const struct sup_window *l, int64_t now_ms)
{
	int64_t sec = now_ms / 1000, left = 1000 - now_ms % 1000;
	if (sec == l->second)
		return l->prev * left / 1000 + l->cur;
	if (sec == l->second + 1)
		return l->cur * left / 1000;
	return 0;
}

static int64_t sup__cpu_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A worker's load as rebalancing sees it (route_lock held). */
static int64_t sup__worker_load(struct worker *w, int64_t now)
{
	pthread_mutex_lock(&w->lock);
	int64_t us = sup__window_get(&w->load, now);
	pthread_mutex_unlock(&w->lock);
	return us + sup__window_get(&w->shift, now);
}

/* When one worker is much busier than the least busy one, an agent on it
 * whose event arrives moves over (the event goes along with it) -- if it
 * did some of that work, and at most half the difference, so that the move
 * narrows the gap without turning it around (no agent bounces back and
 * forth).  route_lock held. */
static void sup__rebalance(supervisor *s, struct agent *a, int64_t now)
{
	if (now - s->last_move < SUP_MOVE_GAP_MS)
		return;
	if (now - s->balance_at >= SUP_BALANCE_CHECK_MS) {
		s->balance_at = now;
		s->busiest = s->idlest = 0;
		s->busiest_us = s->idlest_us = sup__worker_load(&s->workers[0], now);
		for (int i = 1; i < s->nworkers; i++) {
			int64_t us = sup__worker_load(&s->workers[i], now);
			if (us > s->busiest_us) {
				s->busiest = i;
				s->busiest_us = us;
			}
			if (us < s->idlest_us) {
				s->idlest = i;
				s->idlest_us = us;
			}
		}
	}
	int64_t gap = s->busiest_us - s->idlest_us;
	if (a->moving || a->worker != s->busiest || gap < SUP_BUSY_MIN_US ||
	    s->busiest_us < SUP_BUSY_FACTOR * s->idlest_us)
		return;
	struct worker *from = &s->workers[a->worker], *to = &s->workers[s->idlest];
	pthread_mutex_lock(&from->lock);
	int64_t mine = sup__window_get(&a->load, now);
	pthread_mutex_unlock(&from->lock);
	if (mine <= 0 || 2 * mine > gap)
		return;
	struct ev *mo = sup__ev(EV_MIGRATE_OUT, a->device);
	if (!mo)
		return;
	mo->target = s->idlest;
	mo->seq = sup__seq(a);
	a->dest = s->idlest;
	a->moving++;
	sup__push(from, mo);
	/* Its work goes with it: count it there from now on, before the
	 * workers' own measures catch up. */
	sup__window_add(&from->shift, now, -mine);
	sup__window_add(&to->shift, now, mine);
	s->last_move = now;
	s->balance_at = 0;
}

/* Routes an event to the worker owning the device's agent, creating the
 * agent's entry (not started yet) on first use when it needs one. */
static void sup__route(supervisor *s, struct ev *e)
{
	int oom = 0;
	const char *refusal = NULL;
	pthread_mutex_lock(&s->route_lock);
	struct agent *a = s->stopping ? NULL : idmap_get(&s->route, e->device);
	if (!a && !s->stopping && !sup__wants_agent(s, e, &a)) {
		pthread_mutex_unlock(&s->route_lock);
		sup__refuse(e, 404, "not_found", "no such agent");
		sup__ev_free(e);
		return;
	}
	/* sup__wants_agent may have let go of route_lock for a moment. */
	if (s->stopping) { /* every worker has its EV_STOP_ALL: too late */
		refusal = "the server is shutting down";
		goto refuse;
	}
	if (!a) {
		a = calloc(1, sizeof *a);
		struct ev *adopt = sup__ev(EV_ADOPT, e->device);
		if (!a || !adopt || (idmap_put(&s->route, e->device, a, &oom), oom)) {
			free(a);
			free(adopt);
			refusal = "out of memory";
			goto refuse;
		}
		a->device = e->device;
		tn_device_id_format(e->device, a->hex);
		a->sup = s;
		a->state = a->pub_state = ST_STOPPED;
		/* Online before its agent was needed: connected, as EV_ONLINE
		 * would have made it (the worker adopts it before any event). */
		void *seen = idmap_get(&s->seen, e->device);
		if (seen) {
			a->connected = a->pub_connected = (uint8_t)SUP_SEEN_ONLINE(seen);
			a->conn = SUP_SEEN_CONN(seen);
			idmap_del(&s->seen, e->device);
		}
		/* The worker with the fewest agents. */
		int best = 0;
		for (int i = 1; i < s->nworkers; i++)
			if (s->workers[i].nagents < s->workers[best].nagents)
				best = i;
		a->worker = a->dest = best;
		s->workers[best].nagents++;
		adopt->agent = a;
		sup__push(&s->workers[best], adopt);
	}
	if (s->nworkers > 1 && (e->kind == EV_ONLINE || e->kind == EV_OFFLINE || e->kind == EV_MSG ||
				e->kind == EV_HTTP))
		sup__rebalance(s, a, tn_mono_ms());
	e->seq = sup__seq(a);
	sup__push(&s->workers[a->worker], e);
	pthread_mutex_unlock(&s->route_lock);
	return;
refuse:
	pthread_mutex_unlock(&s->route_lock);
	sup__refuse(e, 503, "unavailable", refusal);
	sup__ev_free(e);
}

/* --- the store ------------------------------------------------------------------ */

/* The device's group (owned) or NULL, and its agent id (owned, NULL when
 * empty) if agent_id is not NULL. */
static char *sup__group_of(supervisor *s, const char *hex, int *exists, char **agent_id)
{
	sqlite3 *db = store_reader_get(s->st);
	sqlite3_stmt *q = NULL;
	char *group = NULL;
	*exists = 0;
	if (!db)
		return NULL;
	if (sqlite3_prepare_v2(db, "SELECT grp, agent_id FROM devices WHERE id = ?", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_text(q, 1, hex, -1, SQLITE_STATIC);
		if (sqlite3_step(q) == SQLITE_ROW) {
			*exists = 1;
			const unsigned char *id = sqlite3_column_text(q, 1);
			if (agent_id)
				*agent_id = id && *id ? strdup((const char *)id) : NULL;
			if (sqlite3_column_text(q, 0))
				group = strdup((const char *)sqlite3_column_text(q, 0));
		}
	}
	sqlite3_finalize(q);
	store_reader_put(s->st, db);
	return group;
}

/* The group's agent code (owned) or NULL. */
static char *sup__code_of(supervisor *s, const char *group, size_t *len)
{
	sqlite3 *db = store_reader_get(s->st);
	sqlite3_stmt *q = NULL;
	char *code = NULL;
	if (!db)
		return NULL;
	if (sqlite3_prepare_v2(db, "SELECT source FROM agent_code WHERE grp = ?", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_text(q, 1, group, -1, SQLITE_STATIC);
		if (sqlite3_step(q) == SQLITE_ROW) {
			*len = (size_t)sqlite3_column_bytes(q, 0);
			code = malloc(*len + 1);
			if (code) {
				memcpy(code, sqlite3_column_text(q, 0), *len);
				code[*len] = '\0';
			}
		}
	}
	sqlite3_finalize(q);
	store_reader_put(s->st, db);
	return code;
}

/* --- the host side of the runtime ---------------------------------------------- */

static void sup__event(struct agent *a, event_type type, const char *msg)
{
	store_event_append(a->sup->st, a->device, type, msg);
}

static void sup__report_drops(struct agent *a)
{
	char line[128];
	if (ratelimit_report(&a->logs, a->sup->opt.log_rate, line, sizeof line))
		sup__event(a, EV_STATUS, line);
}

static void sup__host_log(void *ctx, int is_error, const char *msg)
{
	struct agent *a = ctx;
	if (!ratelimit_take(&a->logs, a->sup->opt.log_rate, tn_mono_ms())) {
		metrics_error(ERR_AGENT_LOG_RATE);
		if (is_error)
			sup__set_error(a, msg);
		return;
	}
	sup__report_drops(a);
	if (is_error) {
		char *line = NULL;
		if (asprintf(&line, "ERROR: %s", msg) >= 0) {
			sup__event(a, EV_AGENT, line);
			free(line);
		}
		sup__set_error(a, msg);
	} else {
		sup__event(a, EV_AGENT, msg);
	}
}

static void sup__deliver(struct agent *a, const char *frame)
{
	if (a->sup->dev)
		device_loop_send(a->sup->dev, a->device, a->conn, frame, strlen(frame), 0);
}

static void sup__host_send(void *ctx, const char *name, const char *data_json)
{
	struct agent *a = ctx;
	json_t *data = json_loads(data_json, JSON_DECODE_ANY, NULL);
	json_t *msg = json_pack("{ss ss so}", "type", "msg", "name", name, "data", data ? data : json_null());
	char *frame = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
	json_decref(msg);
	if (!frame)
		return;
	if (a->connected) {
		sup__deliver(a, frame);
		free(frame);
		return;
	}
	/* Offline: keep it for the reconnect, bounded, oldest dropped (and said). */
	struct qmsg *m = calloc(1, sizeof *m);
	if (!m) {
		free(frame);
		return;
	}
	m->frame = frame;
	if (a->q_tail)
		a->q_tail->next = m;
	else
		a->q_head = m;
	a->q_tail = m;
	if (++a->q_len > a->sup->opt.offline_queue) {
		struct qmsg *old = a->q_head;
		a->q_head = old->next;
		a->q_len--;
		metrics_error(ERR_AGENT_OFFLINE_QUEUE);
		char line[160];
		snprintf(line, sizeof line, "message to the offline device dropped: its queue holds %d",
			 a->sup->opt.offline_queue);
		sup__event(a, EV_AGENT, line);
		free(old->frame);
		free(old);
	}
}

static int sup__host_connected(void *ctx)
{
	return ((struct agent *)ctx)->connected;
}

struct sup__save {
	const char *hex, *json;
};

static int sup__save_tx(sqlite3 *db, void *arg, tn_error *err)
{
	struct sup__save *sv = arg;
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO agent_state (device, saved, updated) VALUES (?, ?, ?)",
			       -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, sv->hex, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, sv->json, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 3, tn_now_ms());
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

static int sup__host_save(void *ctx, const char *json, size_t len, char *errbuf, size_t errcap)
{
	struct agent *a = ctx;
	tn_error err = { 0 };
	struct sup__save sv = { a->hex, json };
	(void)len;
	/* Committed before server.save returns: durable across crashes. */
	if (store_sync(a->sup->st, sup__save_tx, &sv, &err)) {
		snprintf(errbuf, errcap, "%s", err.msg);
		return -1;
	}
	return 0;
}

static char *sup__host_load(void *ctx)
{
	struct agent *a = ctx;
	sqlite3 *db = store_reader_get(a->sup->st);
	sqlite3_stmt *q = NULL;
	char *out = NULL;
	if (!db)
		return NULL;
	if (sqlite3_prepare_v2(db, "SELECT saved FROM agent_state WHERE device = ?", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_text(q, 1, a->hex, -1, SQLITE_STATIC);
		if (sqlite3_step(q) == SQLITE_ROW)
			out = strdup((const char *)sqlite3_column_text(q, 0));
	}
	sqlite3_finalize(q);
	store_reader_put(a->sup->st, db);
	return out;
}

static int64_t sup__host_now(void *ctx)
{
	return tn_mono_ms();
}

/* --- lifecycle ------------------------------------------------------------------ */

static void sup__stop_agent(struct agent *a, const char *status_line, enum sup_state state)
{
	if (a->rt) {
		agent_rt_free(a->rt);
		a->rt = NULL;
		if (status_line)
			sup__event(a, EV_STATUS, status_line);
	}
	a->state = state;
}

/* Starts (or restarts) the agent with its group's current code. */
static void sup__start_agent(struct agent *a, const char *status_line)
{
	int exists;
	size_t len = 0;
	char *agent_id = NULL;
	char *group = sup__group_of(a->sup, a->hex, &exists, &agent_id);
	char *code = group ? sup__code_of(a->sup, group, &len) : NULL;
	tn_error err = { 0 };

	free(a->agent_id);
	a->agent_id = agent_id;
	sup__set_group(a, group ? sup__intern(a->sup, group) : NULL);
	free(group);
	if (!code) {
		sup__stop_agent(a, NULL, exists ? ST_NO_CODE : ST_NO_DEVICE);
		return;
	}
	unsigned int hlen = 0;
	EVP_Digest(code, len, a->code_hash, &hlen, EVP_sha256(), NULL);
	agent_host host = {
		.ctx = a, .log = sup__host_log, .send = sup__host_send, .is_connected = sup__host_connected,
		.save = sup__host_save, .load = sup__host_load, .now_ms = sup__host_now,
	};
	int rc = agent_rt_new(&a->rt, code, len, &a->sup->opt.limits, &host, &err);
	free(code);
	if (rc == TN_ENOMEM) {
		a->rt = NULL;
		metrics_error(ERR_AGENT_MEMORY);
		sup__event(a, EV_STATUS, "Agent stopped: out of memory.");
		a->state = ST_OOM;
		a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : 1000;
		if (a->backoff_ms > SUP_BACKOFF_MAX_MS)
			a->backoff_ms = SUP_BACKOFF_MAX_MS;
		a->restart_at = tn_mono_ms() + a->backoff_ms;
		return;
	}
	if (rc) {
		a->rt = NULL;
		char line[400];
		snprintf(line, sizeof line, "ERROR: the agent failed to start: %s", err.msg);
		sup__event(a, EV_AGENT, line);
		sup__set_error(a, err.msg);
		a->state = ST_ERROR;
		return;
	}
	a->started_ms = tn_now_ms();
	a->restart_at = 0;
	a->state = ST_RUNNING;
	sup__event(a, EV_STATUS, status_line);
}

/* After an event: an agent over its memory cap is stopped and restarted
 * later (the restart counts in `restarts` when it happens). */
static void sup__after(struct agent *a, int rc)
{
	a->events++;
	if (rc == AGENT_BUDGET)
		metrics_error(ERR_AGENT_BUDGET);
	if (rc == AGENT_OOM) {
		metrics_error(ERR_AGENT_MEMORY);
		sup__stop_agent(a, "Agent stopped: out of memory.", ST_OOM);
		a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : 1000;
		if (a->backoff_ms > SUP_BACKOFF_MAX_MS)
			a->backoff_ms = SUP_BACKOFF_MAX_MS;
		a->restart_at = tn_mono_ms() + a->backoff_ms;
	} else if (rc == AGENT_OK && a->backoff_ms && tn_now_ms() - a->started_ms > 60000) {
		a->backoff_ms = 0; /* a minute of health forgives earlier crashes */
	}
}

/* The agent runs if it can: started lazily, on its first event. */
static int sup__ensure_running(struct agent *a)
{
	if (!a->rt && a->state == ST_STOPPED)
		sup__start_agent(a, "Agent started.");
	return a->rt != NULL;
}

/* --- events ---------------------------------------------------------------------- */

static void sup__on_online(struct agent *a, struct ev *e)
{
	a->connected = 1;
	a->conn = e->conn;
	/* What the agent sent while the device was away, in order. */
	while (a->q_head) {
		struct qmsg *m = a->q_head;
		a->q_head = m->next;
		sup__deliver(a, m->frame);
		free(m->frame);
		free(m);
	}
	a->q_tail = NULL;
	a->q_len = 0;
	if (sup__ensure_running(a))
		sup__after(a, agent_rt_connect(a->rt));
}

static void sup__on_http(struct agent *a, struct ev *e)
{
	agent_http_res res = { 0 };
	if (!sup__ensure_running(a)) {
		const char *msg = "{\"error\":{\"code\":\"not_found\",\"message\":\"this device's agent is not running\"}}";
		e->done(e->done_arg, 404, sup__json_headers, msg, strlen(msg));
		return;
	}
	int rc = agent_rt_http(a->rt, &e->http, &res);
	sup__after(a, rc);
	if (rc != AGENT_OK || res.status == 0) {
		const char *msg = rc != AGENT_OK
			? "{\"error\":{\"code\":\"agent_error\",\"message\":\"the agent's handler failed: see the device's log\"}}"
			: "{\"error\":{\"code\":\"not_found\",\"message\":\"the agent has no http.onrequest handler\"}}";
		e->done(e->done_arg, rc != AGENT_OK ? 500 : 404, sup__json_headers, msg, strlen(msg));
	} else {
		e->done(e->done_arg, res.status, (const char *const *)res.headers, res.body, res.body_len);
	}
	agent_http_res_clear(&res);
}

/* What GET /v1/devices/{id}/agent shows of an agent (sup_agent_info). */
struct sup_view {
	enum sup_state state;
	const char *group;             /* interned, or NULL */
	int worker, connected, queued;
	size_t memory;
	int64_t events, restarts;
	const char *last_error;        /* borrowed, or NULL */
};

static json_t *sup__view_json(const char *hex, const struct sup_view *v)
{
	return json_pack("{ss ss ss si sI sI sI sb si ss?}", "device", hex,
			 "state", sup__states[v->state], "group", v->group ? v->group : "", "worker", v->worker,
			 "memory", (json_int_t)v->memory, "events", (json_int_t)v->events,
			 "restarts", (json_int_t)v->restarts, "device_connected", v->connected,
			 "queued_messages", v->queued, "last_error", v->last_error);
}

/* The agent as it is, on its owning worker. */
static json_t *sup__info(struct agent *a, struct worker *w)
{
	struct sup_view v = {
		.state = a->state, .group = a->group, .worker = w->index, .connected = a->connected,
		.queued = a->q_len, .memory = a->rt ? agent_rt_memory(a->rt) : 0, .events = a->events,
		.restarts = a->restarts, .last_error = a->last_error,
	};
	return sup__view_json(a->hex, &v);
}

/* Publishes the agent as it is now (see the top), and that the events up
 * to `seq` have run (0: no event of its); its owning worker, w->lock held. */
static void sup__publish(struct agent *a, uint32_t seq)
{
	size_t memory = a->rt ? agent_rt_memory(a->rt) : 0;
	a->pub_state = a->state;
	a->pub_connected = a->connected;
	a->pub_queued = a->q_len;
	a->pub_memory = memory > UINT32_MAX ? UINT32_MAX : (uint32_t)memory;
	a->pub_events = a->events;
	a->pub_restarts = a->restarts;
	if (seq)
		a->pub_seq = seq;
}

/* --- the due heap ---------------------------------------------------------------- */

static void sup__heap_set(struct worker *w, int i, struct agent *a)
{
	w->heap[i] = a;
	a->heap_pos = i + 1;
}

static void sup__heap_up(struct worker *w, int i)
{
	struct agent *a = w->heap[i];
	while (i > 0 && w->heap[(i - 1) / 2]->due > a->due) {
		sup__heap_set(w, i, w->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	sup__heap_set(w, i, a);
}

static void sup__heap_down(struct worker *w, int i)
{
	struct agent *a = w->heap[i];
	for (;;) {
		int c = 2 * i + 1;
		if (c >= w->heap_len)
			break;
		if (c + 1 < w->heap_len && w->heap[c + 1]->due < w->heap[c]->due)
			c++;
		if (w->heap[c]->due >= a->due)
			break;
		sup__heap_set(w, i, w->heap[c]);
		i = c;
	}
	sup__heap_set(w, i, a);
}

static void sup__heap_remove(struct worker *w, struct agent *a)
{
	if (!a->heap_pos)
		return;
	int i = a->heap_pos - 1;
	a->heap_pos = 0;
	struct agent *last = w->heap[--w->heap_len];
	if (i == w->heap_len)
		return;
	sup__heap_set(w, i, last);
	sup__heap_up(w, i);
	sup__heap_down(w, last->heap_pos - 1);
}

/* When something of the agent's is next due (ms, monotonic), or -1. */
static int64_t sup__due_of(struct agent *a)
{
	int64_t t = -1, u = -1;
	if (a->logs.dropped)
		t = a->logs.first_drop_ms + 1000;
	if (a->rt)
		u = agent_rt_next_timer(a->rt);
	else if (a->restart_at)
		u = a->restart_at;
	return t < 0 || (u >= 0 && u < t) ? u : t;
}

/* Puts the agent where its due time says in w's heap (or out of it). */
static void sup__schedule(struct worker *w, struct agent *a)
{
	int64_t due = sup__due_of(a);
	if (due < 0) {
		sup__heap_remove(w, a);
		return;
	}
	if (!a->heap_pos) {
		if (w->heap_len == w->heap_cap) {
			int cap = w->heap_cap ? 2 * w->heap_cap : 64;
			struct agent **h = realloc(w->heap, (size_t)cap * sizeof *h);
			struct agent **r = h ? realloc(w->ready, (size_t)cap * sizeof *r) : NULL;
			if (h)
				w->heap = h;
			if (!r) {
				log_err("agent of %s: out of memory: its timers wait for its next event", a->hex);
				return;
			}
			w->ready = r;
			w->heap_cap = cap;
		}
		a->due = due;
		sup__heap_set(w, w->heap_len++, a);
		sup__heap_up(w, w->heap_len - 1);
		return;
	}
	int64_t was = a->due;
	a->due = due;
	if (due < was)
		sup__heap_up(w, a->heap_pos - 1);
	else if (due > was)
		sup__heap_down(w, a->heap_pos - 1);
}

/* --- migration: the envelope (see the top, and agents/envelope.h) ------------- */

static uint64_t sup__reply_put(supervisor *s, const struct ev *e)
{
	struct sup_reply *r = malloc(sizeof *r);
	int oom = 0;
	if (!r)
		return 0;
	*r = (struct sup_reply){ e->done, e->done_arg, e->wait };
	pthread_mutex_lock(&s->reply_lock);
	uint64_t id = ++s->next_reply;
	idmap_put(&s->replies, id, r, &oom);
	pthread_mutex_unlock(&s->reply_lock);
	if (oom) {
		free(r);
		return 0;
	}
	return id;
}

static struct sup_reply *sup__reply_take(supervisor *s, uint64_t id)
{
	pthread_mutex_lock(&s->reply_lock);
	struct sup_reply *r = id ? idmap_del(&s->replies, id) : NULL;
	pthread_mutex_unlock(&s->reply_lock);
	return r;
}

/* Answers (and frees) a reply whose event the agent will not run: an HTTP
 * caller gets 503, a state query no state. */
static void sup__reply_fail(struct sup_reply *r)
{
	struct ev e = { .kind = r->done ? EV_HTTP : EV_INFO, .done = r->done, .done_arg = r->done_arg,
			.wait = r->wait };
	sup__refuse(&e, 503, "unavailable", "the agent's move to another worker failed: try again");
	free(r);
}

/* Frees what sup__env_fill allocated; the strings it points to are borrowed
 * from the agent and its events. */
static void sup__env_release(agent_env *env)
{
	free(env->saved);
	free(env->queued);
	free(env->timers);
	free(env->ev);
	memset(env, 0, sizeof *env);
}

/* The agent as an envelope sees it, without its in-flight events. */
static int sup__env_fill(struct agent *a, int64_t now, agent_env *env)
{
	memset(env, 0, sizeof *env);
	env->device = a->device;
	/* Borrowed for the encoding, never written to (nor freed). */
	env->agent_id = a->agent_id ? a->agent_id : (char *)"";
	env->group = (char *)(a->group ? a->group : "");
	memcpy(env->code_hash, a->code_hash, sizeof env->code_hash);
	env->state = (char *)sup__states[a->state];
	env->last_error = a->last_error ? a->last_error : (char *)"";
	env->saved = sup__host_load(a);
	env->events = a->events;
	env->restarts = a->restarts;
	env->backoff_ms = a->backoff_ms;
	env->restart_in_ms = a->restart_at ? (a->restart_at > now ? a->restart_at - now : 0) : -1;
	env->started_ms = a->started_ms;
	env->connected = a->connected;
	env->conn = a->conn;
	if (a->q_len && !(env->queued = calloc((size_t)a->q_len, sizeof *env->queued)))
		return -1;
	for (struct qmsg *m = a->q_head; m; m = m->next)
		env->queued[env->nqueued++] = m->frame;
	int next_id = 1;
	agent_timer *t = NULL;
	int n = a->rt ? agent_rt_timers(a->rt, &t, &next_id) : 0;
	if (n < 0)
		return -1;
	env->next_timer_id = (uint32_t)next_id;
	if (n && !(env->timers = calloc((size_t)n, sizeof *env->timers))) {
		free(t);
		return -1;
	}
	for (int i = 0; i < n; i++)
		env->timers[i] = (agent_env_timer){ (uint32_t)t[i].id, t[i].due - now, t[i].every };
	env->ntimers = (uint32_t)n;
	free(t);
	return 0;
}

/* Adds the carried events to env (their replies become handle ids). */
static int sup__env_events(supervisor *s, agent_env *env, struct ev *carried)
{
	static const int kinds[] = {
		[EV_ONLINE] = AGENT_ENV_ONLINE, [EV_OFFLINE] = AGENT_ENV_OFFLINE, [EV_MSG] = AGENT_ENV_MSG,
		[EV_HTTP] = AGENT_ENV_HTTP, [EV_RELOAD] = AGENT_ENV_RELOAD, [EV_RESTART] = AGENT_ENV_RESTART,
		[EV_MIGRATE_OUT] = AGENT_ENV_MIGRATE, [EV_INFO] = AGENT_ENV_INFO, [EV_DELETE] = AGENT_ENV_DELETE,
	};
	uint32_t n = 0;
	for (struct ev *e = carried; e; e = e->next)
		n++;
	if (n && !(env->ev = calloc(n, sizeof *env->ev)))
		return -1;
	for (struct ev *e = carried; e; e = e->next) {
		agent_env_event *x = &env->ev[env->nev++];
		x->kind = kinds[e->kind];
		x->conn = e->conn;
		x->name = e->name;
		x->data = e->data;
		x->target = e->target;
		if (e->kind == EV_HTTP) {
			x->method = e->http_buf[0];
			x->path = e->http_buf[1];
			x->query = e->http_buf[2];
			x->body = e->http_buf[3];
			x->body_len = e->http.body_len;
			x->headers = e->http_headers;
			while (x->headers && x->headers[2 * x->nheaders] && x->headers[2 * x->nheaders + 1])
				x->nheaders++;
		}
		int replied = e->kind == EV_HTTP || e->kind == EV_INFO || e->kind == EV_DELETE;
		if (replied && !(x->reply = sup__reply_put(s, e)))
			return -1;
	}
	return 0;
}

/* After a failed encoding: the handles go, the events stay with their ev. */
static void sup__env_unreply(supervisor *s, agent_env *env)
{
	for (uint32_t i = 0; env->ev && i < env->nev; i++)
		free(sup__reply_take(s, env->ev[i].reply));
}

/* Takes the device's events out of w's queue, in order (w->lock held). */
static struct ev *sup__take_events(struct worker *w, uint64_t device)
{
	struct ev *out = NULL, **tail = &out, **pp = &w->head;
	w->tail = NULL;
	while (*pp) {
		struct ev *e = *pp;
		if (e->device == device && e->kind != EV_STOP_ALL && e->kind != EV_MIGRATE_IN && e->kind != EV_ADOPT) {
			*pp = e->next;
			e->next = NULL;
			*tail = e;
			tail = &e->next;
		} else {
			w->tail = e;
			pp = &e->next;
		}
	}
	return out;
}

/* Puts events back at the head of w's queue (w->lock held). */
static void sup__put_back(struct worker *w, struct ev *c)
{
	if (!c)
		return;
	struct ev *last = c;
	while (last->next)
		last = last->next;
	last->next = w->head;
	if (!w->head)
		w->tail = last;
	w->head = c;
}

/* Forgets what the envelope took: the agent entry stays for routing. */
static void sup__detach(struct agent *a)
{
	while (a->q_head) {
		struct qmsg *m = a->q_head;
		a->q_head = m->next;
		free(m->frame);
		free(m);
	}
	a->q_tail = NULL;
	a->q_len = 0;
	a->events = a->restarts = a->started_ms = a->restart_at = 0;
	a->backoff_ms = 0;
	a->connected = 0;
	a->conn = 0;
	sup__set_error(a, NULL);
	free(a->agent_id);
	a->agent_id = NULL;
	sup__set_group(a, NULL);
	memset(a->code_hash, 0, sizeof a->code_hash);
	a->state = ST_MIGRATING;
}

/* One of the moves queued for the agent has run, or come to nothing
 * (route_lock held): when none is left, it is where it will be. */
static void sup__moved(struct agent *a)
{
	if (a->moving > 0 && --a->moving == 0)
		a->dest = a->worker;
}

/* Hands the agent and its waiting events to another worker (see the top). */
static void sup__migrate_out(struct worker *w, struct agent *a, int target)
{
	supervisor *s = w->sup;
	tn_error err = { 0 };
	agent_env env;
	if (target < 0)
		target = (w->index + 1) % s->nworkers;
	int64_t now = tn_mono_ms();
	struct ev *in = NULL;
	if (target >= s->nworkers || target == w->index) {
		/* there already (sup_migrate checks when asked), or one worker */
	} else if (!(in = sup__ev(EV_MIGRATE_IN, a->device)) || sup__env_fill(a, now, &env)) {
		if (in)
			sup__env_release(&env);
		free(in);
		in = NULL;
		log_warn("agent of %s stays on worker %d: out of memory", a->hex, w->index);
	}
	pthread_mutex_lock(&s->route_lock);
	if (!in || s->stopping) { /* stopping: the target may have stopped already */
		sup__moved(a);
		pthread_mutex_unlock(&s->route_lock);
		if (in)
			sup__env_release(&env);
		free(in);
		return;
	}
	pthread_mutex_lock(&w->lock);
	struct ev *carried = sup__take_events(w, a->device);
	pthread_mutex_unlock(&w->lock);
	int rc = sup__env_events(s, &env, carried) ? tn_err(&err, TN_ENOMEM, "out of memory")
						   : agent_env_encode(&env, &in->env, &in->env_len, &err);
	if (rc == 0 && env.nev && !(in->handles = calloc(env.nev, sizeof *in->handles)))
		rc = tn_err(&err, TN_ENOMEM, "out of memory");
	for (uint32_t i = 0; rc == 0 && i < env.nev; i++)
		if (env.ev[i].reply)
			in->handles[in->nhandles++] = env.ev[i].reply;
	if (rc) {
		sup__env_unreply(s, &env);
		pthread_mutex_lock(&w->lock);
		sup__put_back(w, carried);
		pthread_mutex_unlock(&w->lock);
		sup__moved(a);
		pthread_mutex_unlock(&s->route_lock);
		log_warn("agent of %s stays on worker %d: %s", a->hex, w->index, err.msg);
		sup__env_release(&env);
		sup__ev_free(in);
		return;
	}
	if (a->rt)
		sup__event(a, EV_STATUS, "Agent stopped: migrating.");
	in->env_sent = now;
	in->seq = a->routed; /* every event routed to it so far has run, or goes along */
	in->live = a->rt;
	a->rt = NULL;
	sup__detach(a);
	sup__heap_remove(w, a);
	idmap_del(&w->local, a->device);
	a->worker = target;
	sup__moved(a);
	w->nagents--;
	s->workers[target].nagents++;
	sup__push(&s->workers[target], in);
	pthread_mutex_unlock(&s->route_lock);
	sup__env_release(&env);
	while (carried) { /* in the envelope now, their replies behind handles */
		struct ev *e = carried;
		carried = e->next;
		sup__ev_free(e);
	}
}

/* An event of the envelope as the queue holds it (steals x's strings);
 * NULL when out of memory (its caller, if any, answered) or its reply
 * handle is gone. */
static struct ev *sup__ev_from_env(supervisor *s, uint64_t device, agent_env_event *x)
{
	static const enum ev_kind kinds[] = {
		[AGENT_ENV_ONLINE] = EV_ONLINE, [AGENT_ENV_OFFLINE] = EV_OFFLINE, [AGENT_ENV_MSG] = EV_MSG,
		[AGENT_ENV_HTTP] = EV_HTTP, [AGENT_ENV_RELOAD] = EV_RELOAD, [AGENT_ENV_RESTART] = EV_RESTART,
		[AGENT_ENV_MIGRATE] = EV_MIGRATE_OUT, [AGENT_ENV_INFO] = EV_INFO, [AGENT_ENV_DELETE] = EV_DELETE,
	};
	int replied = x->kind == AGENT_ENV_HTTP || x->kind == AGENT_ENV_INFO || x->kind == AGENT_ENV_DELETE;
	struct ev *e = sup__ev(kinds[x->kind], device);
	struct sup_reply *r = replied ? sup__reply_take(s, x->reply) : NULL;
	if (!e || (replied && !r)) {
		free(e);
		if (r)
			sup__reply_fail(r);
		return NULL;
	}
	e->conn = x->conn;
	e->target = x->target;
	e->name = x->name;
	e->data = x->data;
	x->name = x->data = NULL;
	if (r) {
		e->done = r->done;
		e->done_arg = r->done_arg;
		e->wait = r->wait;
		free(r);
	}
	if (x->kind == AGENT_ENV_HTTP) {
		e->http_buf[0] = x->method;
		e->http_buf[1] = x->path;
		e->http_buf[2] = x->query;
		e->http_buf[3] = x->body;
		e->http_headers = x->headers;
		e->http = (agent_http_req){ x->method, x->path, x->query, x->body, x->body_len,
					    (const char *const *)x->headers };
		x->method = x->path = x->query = x->body = NULL;
		x->headers = NULL;
		x->nheaders = 0;
	}
	return e;
}

/* The agent as the envelope says (steals its queued frames). */
static void sup__env_apply(struct agent *a, agent_env *env, int64_t base)
{
	free(a->agent_id);
	a->agent_id = env->agent_id && *env->agent_id ? strdup(env->agent_id) : NULL;
	sup__set_group(a, env->group && *env->group ? sup__intern(a->sup, env->group) : NULL);
	a->state = ST_STOPPED; /* a state this node does not know: stopped */
	for (size_t i = 0; env->state && i < sizeof sup__states / sizeof *sup__states; i++)
		if (strcmp(env->state, sup__states[i]) == 0)
			a->state = (enum sup_state)i;
	sup__set_error(a, env->last_error);
	memcpy(a->code_hash, env->code_hash, sizeof a->code_hash);
	a->events = env->events;
	a->restarts = env->restarts;
	a->backoff_ms = (int)env->backoff_ms;
	a->restart_at = env->restart_in_ms >= 0 ? base + env->restart_in_ms : 0;
	if (env->restart_in_ms >= 0 && !a->restart_at)
		a->restart_at = 1;
	a->started_ms = env->started_ms;
	a->connected = env->connected;
	a->conn = env->conn;
	for (uint32_t i = 0; i < env->nqueued; i++) {
		struct qmsg *m = calloc(1, sizeof *m);
		if (!m)
			break;
		m->frame = env->queued[i];
		env->queued[i] = NULL;
		if (a->q_tail)
			a->q_tail->next = m;
		else
			a->q_head = m;
		a->q_tail = m;
		a->q_len++;
	}
}

/* The state's timers as the envelope has them (due times from `base`). */
static void sup__rearm(struct agent *a, const agent_env *env, int64_t base)
{
	agent_timer *t = calloc(env->ntimers ? env->ntimers : 1, sizeof *t);
	if (!t)
		return;
	for (uint32_t i = 0; i < env->ntimers; i++)
		t[i] = (agent_timer){ (int)env->timers[i].id, base + env->timers[i].due_in_ms,
				      env->timers[i].every_ms };
	agent_rt_rearm_timers(a->rt, t, (int)env->ntimers, (int)env->next_timer_id);
	free(t);
}

/* With no Lua state (from another node), the cross-node rule: the saved
 * state goes into this node's store, the agent starts from its group's code,
 * and if that is the code it ran, its timers are re-armed by id. */
static void sup__rebuild(struct agent *a, const agent_env *env, int64_t base)
{
	char *have = sup__host_load(a);
	char err[300];
	if (env->saved && (!have || strcmp(have, env->saved) != 0))
		if (sup__host_save(a, env->saved, strlen(env->saved), err, sizeof err))
			log_warn("agent of %s: its saved state did not move: %s", a->hex, err);
	free(have);
	a->state = ST_STOPPED;
	sup__start_agent(a, "Agent started.");
	if (a->rt && memcmp(a->code_hash, env->code_hash, sizeof a->code_hash) == 0)
		sup__rearm(a, env, base);
}

/* After a move: every reply handle the move made that no event took is
 * answered (503), and what was lost is said in the device's log and the
 * daemon's.  `lost` events were dropped already; `why` is NULL when the
 * envelope was read. */
static void sup__move_losses(struct agent *a, struct ev *e, int lost, const char *why)
{
	supervisor *s = a->sup;
	int answered = 0;
	for (uint32_t i = 0; i < e->nhandles; i++) {
		struct sup_reply *r = sup__reply_take(s, e->handles[i]);
		if (r) {
			sup__reply_fail(r);
			answered++;
		}
	}
	if (!why && !lost && !answered)
		return;
	char line[400];
	if (why)
		snprintf(line, sizeof line, "Agent move failed: its events in flight were dropped (%s)", why);
	else
		snprintf(line, sizeof line, "Agent move lost %d of its events in flight", lost + answered);
	sup__event(a, EV_STATUS, line);
	log_err("agent of %s: %s; %d HTTP requests or state queries answered 503", a->hex, line, answered);
}

static void sup__migrate_in(struct worker *w, struct ev *e)
{
	supervisor *s = w->sup;
	tn_error err = { 0 };
	agent_env env;
	agent_rt *live = e->live;
	int oom = 0, lost = 0;
	e->live = NULL;
	pthread_mutex_lock(&s->route_lock);
	struct agent *a = idmap_get(&s->route, e->device);
	pthread_mutex_unlock(&s->route_lock);
	if (!a) {
		agent_rt_free(live);
		for (uint32_t i = 0; i < e->nhandles; i++) {
			struct sup_reply *r = sup__reply_take(s, e->handles[i]);
			if (r)
				sup__reply_fail(r);
		}
		return;
	}
	idmap_put(&w->local, a->device, a, &oom);
	if (oom)
		log_err("agent of %s: out of memory on worker %d: its events go unanswered", a->hex, w->index);
	int rc = agent_env_decode(e->env, e->env_len, &env, &err);
	if (rc == 0 && env.device != a->device)
		rc = tn_err(&err, TN_EINVAL, "migration envelope: for another device");
	if (rc) {
		agent_rt_free(live);
		agent_env_clear(&env);
		a->state = ST_STOPPED; /* it starts again from its code on its next event */
		sup__move_losses(a, e, 0, err.msg);
		return;
	}
	/* In process the clock is the same: due times count from the encoding.
	 * From another node they count from now. */
	int64_t base = live ? e->env_sent : tn_mono_ms();
	sup__env_apply(a, &env, base);
	if (live) {
		a->rt = live;
		sup__rearm(a, &env, base);
		sup__event(a, EV_STATUS, "Agent started.");
	} else if (a->state == ST_RUNNING) {
		sup__rebuild(a, &env, base);
	}
	/* The events that were waiting on the old worker go first, in order, at
	 * the head of this worker's queue: the newer ones are behind them.  (Run
	 * from the queue, not from here, so that a migration among them takes
	 * the rest along.) */
	struct ev *head = NULL, **tail = &head, *last = NULL;
	for (uint32_t i = 0; i < env.nev; i++) {
		struct ev *x = sup__ev_from_env(s, a->device, &env.ev[i]);
		if (!x) {
			lost++;
			if (env.ev[i].kind == AGENT_ENV_MIGRATE) {
				pthread_mutex_lock(&s->route_lock);
				sup__moved(a);
				pthread_mutex_unlock(&s->route_lock);
			}
			continue;
		}
		*tail = last = x;
		tail = &x->next;
	}
	agent_env_clear(&env);
	/* What was routed before the move has run once the last of them has
	 * (with none, once this has: sup__worker_main publishes e->seq). */
	if (last) {
		last->seq = e->seq;
		e->seq = 0;
	}
	pthread_mutex_lock(&w->lock);
	sup__put_back(w, head);
	pthread_mutex_unlock(&w->lock);
	sup__move_losses(a, e, lost, NULL);
}

static void sup__free_agent(void *arg, uint64_t key, void *val);

/* EV_DELETE: the device is gone; its agent stops (no status line: the log
 * went with the device) and is forgotten, timers, queued messages and all. */
static void sup__delete(struct worker *w, struct ev *e)
{
	supervisor *s = w->sup;
	struct agent *a = idmap_get(&w->local, e->device);
	if (!a) /* gone already (a move takes a delete along, in order) */
		return;
	sup__heap_remove(w, a);
	idmap_del(&w->local, a->device);
	pthread_mutex_lock(&s->route_lock);
	idmap_del(&s->route, a->device);
	w->nagents--;
	pthread_mutex_unlock(&s->route_lock);
	log_info("agent of %s stopped and forgotten: the device was deleted", a->hex);
	sup__free_agent(NULL, 0, a);
	sup__wake(e->wait, NULL);
	e->wait = NULL;
}

/* Handles one event; returns the agent it ran, if any (its work is counted
 * for rebalancing). */
static struct agent *sup__handle(struct worker *w, struct ev *e)
{
	if (e->kind == EV_MIGRATE_IN) {
		sup__migrate_in(w, e);
		return NULL;
	}
	if (e->kind == EV_ADOPT) {
		int oom = 0;
		idmap_put(&w->local, e->device, e->agent, &oom);
		return NULL;
	}
	if (w->stopped) { /* after EV_STOP_ALL nothing is routed here; just in case */
		sup__refuse(e, 503, "unavailable", "the server is shutting down");
		return NULL;
	}
	if (e->kind == EV_DELETE) {
		sup__delete(w, e);
		return NULL;
	}
	struct agent *a = idmap_get(&w->local, e->device);
	if (!a) {
		/* Not ours (any more): can only be a request racing a migration. */
		sup__refuse(e, 503, "unavailable", "try again");
		return NULL;
	}
	switch (e->kind) {
	case EV_ONLINE:
		sup__on_online(a, e);
		break;
	case EV_OFFLINE:
		if (a->connected && a->conn == e->conn) {
			a->connected = 0;
			if (a->rt)
				sup__after(a, agent_rt_disconnect(a->rt));
		}
		break;
	case EV_MSG:
		if (sup__ensure_running(a))
			sup__after(a, agent_rt_message(a->rt, e->name, e->data ? e->data : "null"));
		break;
	case EV_HTTP:
		sup__on_http(a, e);
		break;
	case EV_RELOAD:
		if (a->rt) {
			agent_rt_free(a->rt);
			a->rt = NULL;
			sup__start_agent(a, "Agent restarted: reload.");
		} else {
			a->state = ST_STOPPED;
			a->backoff_ms = 0;
			sup__ensure_running(a);
		}
		break;
	case EV_RESTART:
		sup__stop_agent(a, NULL, ST_STOPPED);
		a->backoff_ms = 0;
		a->restarts++;
		sup__start_agent(a, "Agent started.");
		break;
	case EV_MIGRATE_OUT:
		sup__migrate_out(w, a, e->target);
		return NULL;
	case EV_INFO:
		sup__wake(e->wait, sup__info(a, w));
		e->wait = NULL;
		return NULL;
	default:
		break;
	}
	return a;
}

/* After an event or a timer run: counts `us` of CPU time against the worker
 * and the agent that ran (if any), and publishes `pub` (if any: the agent
 * that is still this worker's) with the sequence number `seq` of the event
 * (0: none). */
static void sup__charge(struct worker *w, struct agent *ran, int64_t us, struct agent *pub, uint32_t seq)
{
	int64_t now = tn_mono_ms();
	pthread_mutex_lock(&w->lock);
	sup__window_add(&w->load, now, us);
	if (ran)
		sup__window_add(&ran->load, now, us);
	if (pub)
		sup__publish(pub, seq);
	pthread_mutex_unlock(&w->lock);
}

/* Runs what is due of the agent's at `now`: its timers, its restart after
 * out of memory, the report of its dropped log lines. */
static void sup__run_due(struct worker *w, struct agent *a, int64_t now)
{
	if (a->logs.dropped && now - a->logs.first_drop_ms >= 1000)
		sup__report_drops(a);
	if (a->rt) {
		int64_t t = agent_rt_next_timer(a->rt);
		if (t >= 0 && t <= now) {
			int64_t cpu = sup__cpu_us();
			sup__after(a, agent_rt_run_timers(a->rt, now));
			sup__charge(w, a, sup__cpu_us() - cpu, a, 0);
		}
	} else if (a->restart_at && a->restart_at <= now) {
		int64_t cpu = sup__cpu_us();
		a->restart_at = 0;
		a->restarts++;
		sup__start_agent(a, "Agent started.");
		sup__charge(w, a, sup__cpu_us() - cpu, a, 0);
	}
}

/* Runs every agent's due work; returns when the next is due, or -1.  The
 * due ones are taken out first, so that each runs once a round (a timer
 * made in a timer waits for the next round, as in agent_rt_run_timers); one
 * whose work could not run (out of memory) is tried again a millisecond
 * later rather than at once. */
static int64_t sup__run_heap(struct worker *w)
{
	int64_t now = tn_mono_ms();
	int n = 0;
	while (w->heap_len && w->heap[0]->due <= now) {
		struct agent *a = w->heap[0];
		sup__heap_remove(w, a);
		w->ready[n++] = a;
	}
	for (int i = 0; i < n; i++) {
		struct agent *a = w->ready[i];
		sup__run_due(w, a, now);
		sup__schedule(w, a);
		if (a->heap_pos && a->due <= now) {
			a->due = now + 1;
			sup__heap_down(w, a->heap_pos - 1);
		}
	}
	return w->heap_len ? w->heap[0]->due : -1;
}

static void sup__stop_one(void *arg, uint64_t key, void *val)
{
	struct worker *w = arg;
	struct agent *a = val;
	sup__stop_agent(a, "Agent stopped: shutdown.", ST_STOPPED);
	a->restart_at = 0; /* no restart after out of memory either */
	pthread_mutex_lock(&w->lock);
	sup__publish(a, 0);
	pthread_mutex_unlock(&w->lock);
}

static void *sup__worker_main(void *arg)
{
	struct worker *w = arg;
	int64_t next = -1;
	char name[16];

	snprintf(name, sizeof name, "tn-agents-%d", w->index);
	pthread_setname_np(pthread_self(), name); /* for top -H, perf, gdb */

	pthread_mutex_lock(&w->lock);
	for (;;) {
		if (!w->head && !w->stop) {
			if (next < 0) {
				pthread_cond_wait(&w->wake, &w->lock);
			} else {
				int64_t wait = next - tn_mono_ms();
				if (wait > 0) {
					struct timespec ts;
					clock_gettime(CLOCK_REALTIME, &ts);
					ts.tv_sec += wait / 1000;
					ts.tv_nsec += (wait % 1000) * 1000000;
					if (ts.tv_nsec >= 1000000000) {
						ts.tv_sec++;
						ts.tv_nsec -= 1000000000;
					}
					pthread_cond_timedwait(&w->wake, &w->lock, &ts);
				}
			}
		}
		if (w->stop && !w->head)
			break;
		/* One event at a time: a migration takes this agent's later events
		 * out of the queue, so they must still be in it. */
		struct ev *e = w->head;
		if (e) {
			w->head = e->next;
			if (!w->head)
				w->tail = NULL;
		}
		pthread_mutex_unlock(&w->lock);
		if (e) {
			if (e->kind == EV_STOP_ALL) {
				/* From now on no agent starts or arrives here (sup_stop
				 * routes nothing after this event, and no move starts):
				 * each that ran ends with exactly this line. */
				idmap_foreach(&w->local, sup__stop_one, w);
				w->stopped = 1;
				while (w->heap_len)
					w->heap[--w->heap_len]->heap_pos = 0;
				next = -1;
				pthread_mutex_lock(&w->lock);
				w->stop = 1;
				continue;
			}
			int64_t cpu = sup__cpu_us();
			uint64_t device = e->device;
			struct agent *ran = sup__handle(w, e);
			uint32_t seq = e->seq;
			if (e->wait) /* a delete with nothing to delete */
				sup__wake(e->wait, NULL);
			sup__ev_free(e);
			/* Only this agent can have changed: it is published, and
			 * its due time set (one that left this worker left its
			 * heap too, and is published by the one it went to). */
			struct agent *a = w->stopped ? NULL : idmap_get(&w->local, device);
			sup__charge(w, ran, sup__cpu_us() - cpu, a, seq);
			if (a)
				sup__schedule(w, a);
		}
		if (!w->stopped)
			next = sup__run_heap(w);
		pthread_mutex_lock(&w->lock);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

/* --- public ---------------------------------------------------------------------- */

int sup_start(supervisor **out, const sup_options *opt, store *st, tn_error *err)
{
	supervisor *s = calloc(1, sizeof *s);
	if (!s)
		return tn_err(err, TN_ENOMEM, "out of memory");
	s->opt = *opt;
	s->st = st;
	if (s->opt.offline_queue <= 0)
		s->opt.offline_queue = 64;
	s->nworkers = opt->workers > 0 ? opt->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (s->nworkers < 1)
		s->nworkers = 1;
	if (s->nworkers > SUP_MAX_WORKERS)
		s->nworkers = SUP_MAX_WORKERS;
	pthread_mutex_init(&s->route_lock, NULL);
	pthread_mutex_init(&s->reply_lock, NULL);
	pthread_mutex_init(&s->group_lock, NULL);
	/* The groups with code: only their devices get an agent when they come
	 * online (sup__wants_agent). */
	sqlite3 *db = store_reader_get(st);
	sqlite3_stmt *q = NULL;
	if (db && sqlite3_prepare_v2(db, "SELECT grp FROM agent_code", -1, &q, NULL) == SQLITE_OK)
		while (sqlite3_step(q) == SQLITE_ROW)
			if (sqlite3_column_text(q, 0))
				sup__set_code(s, (const char *)sqlite3_column_text(q, 0));
	sqlite3_finalize(q);
	if (db)
		store_reader_put(st, db);
	for (int i = 0; i < s->nworkers; i++) {
		struct worker *w = &s->workers[i];
		w->sup = s;
		w->index = i;
		pthread_mutex_init(&w->lock, NULL);
		pthread_cond_init(&w->wake, NULL);
		if (pthread_create(&w->thread, NULL, sup__worker_main, w) != 0) {
			s->nworkers = i;
			sup_free(s);
			return tn_err(err, TN_EIO, "cannot start agent worker %d", i);
		}
	}
	*out = s;
	return 0;
}

void sup_set_device_loop(supervisor *s, device_loop *d)
{
	s->dev = d;
}

void sup_stop(supervisor *s)
{
	if (!s)
		return;
	/* Under route_lock: every event routed before is ahead of EV_STOP_ALL
	 * in its worker's queue, none is routed after, and a move under way
	 * has pushed its MIGRATE_IN ahead of it too (sup__migrate_out). */
	pthread_mutex_lock(&s->route_lock);
	s->stopping = 1;
	for (int i = 0; i < s->nworkers; i++) {
		s->workers[i].stop_ev.kind = EV_STOP_ALL;
		sup__push(&s->workers[i], &s->workers[i].stop_ev);
	}
	pthread_mutex_unlock(&s->route_lock);
	for (int i = 0; i < s->nworkers; i++)
		pthread_join(s->workers[i].thread, NULL);
	s->nworkers = 0;
}

static void sup__free_agent(void *arg, uint64_t key, void *val)
{
	struct agent *a = val;
	if (a->rt)
		agent_rt_free(a->rt);
	while (a->q_head) {
		struct qmsg *m = a->q_head;
		a->q_head = m->next;
		free(m->frame);
		free(m);
	}
	free(a->agent_id);
	free(a->last_error);
	free(a);
}

static void sup__free_reply(void *arg, uint64_t key, void *val)
{
	free(val); /* an envelope that never arrived: as for a queued request, no answer */
}

void sup_free(supervisor *s)
{
	if (!s)
		return;
	int n = s->nworkers;
	sup_stop(s);
	for (int i = 0; i < SUP_MAX_WORKERS && (i < n || s->workers[i].sup); i++) {
		struct worker *w = &s->workers[i];
		while (w->head) {
			struct ev *e = w->head;
			w->head = e->next;
			sup__ev_free(e);
		}
		idmap_free(&w->local);
		free(w->heap);
		free(w->ready);
		pthread_mutex_destroy(&w->lock);
		pthread_cond_destroy(&w->wake);
	}
	idmap_foreach(&s->route, sup__free_agent, NULL);
	idmap_free(&s->route);
	idmap_free(&s->seen);
	while (s->groups) {
		struct sup_group *g = s->groups;
		s->groups = g->next;
		free(g);
	}
	pthread_mutex_destroy(&s->group_lock);
	idmap_foreach(&s->replies, sup__free_reply, NULL);
	idmap_free(&s->replies);
	pthread_mutex_destroy(&s->route_lock);
	pthread_mutex_destroy(&s->reply_lock);
	free(s);
}

void sup_device_online(supervisor *s, uint64_t device, uint64_t conn)
{
	struct ev *e = sup__ev(EV_ONLINE, device);
	if (e) {
		e->conn = conn;
		sup__route(s, e);
	}
}

void sup_device_offline(supervisor *s, uint64_t device, uint64_t conn)
{
	struct ev *e = sup__ev(EV_OFFLINE, device);
	if (e) {
		e->conn = conn;
		sup__route(s, e);
	}
}

void sup_device_message(supervisor *s, uint64_t device, const char *name, const char *data_json)
{
	struct ev *e = sup__ev(EV_MSG, device);
	if (!e)
		return;
	e->name = strdup(name);
	e->data = data_json ? strdup(data_json) : NULL;
	sup__route(s, e);
}

struct sup__deploy {
	const char *group, *source;
	size_t len;
};

static int sup__deploy_tx(sqlite3 *db, void *arg, tn_error *err)
{
	struct sup__deploy *d = arg;
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "INSERT INTO agent_code (grp, source, version, updated) VALUES (?1, ?2, 1, ?3) "
			       "ON CONFLICT (grp) DO UPDATE SET source = ?2, version = version + 1, updated = ?3",
			       -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, d->group, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, d->source, (int)d->len, SQLITE_STATIC);
	sqlite3_bind_int64(q, 3, tn_now_ms());
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

int sup_deploy(supervisor *s, const char *group, const char *source, size_t len, tn_error *err)
{
	int rc = agent_rt_check(source, len, err);
	if (rc)
		return rc;
	struct sup__deploy d = { group, source, len };
	if ((rc = store_sync(s->st, sup__deploy_tx, &d, err)))
		return rc;
	/* From now on the group's devices get an agent as they come online; the
	 * ones online already are in `seen` (see sup__wants_agent). */
	pthread_mutex_lock(&s->route_lock);
	sup__set_code(s, group);
	pthread_mutex_unlock(&s->route_lock);
	/* Reload every agent of the group that has an entry (running or not),
	 * or that would have had one before (seen online): sup__route makes
	 * the entry, connected as its device is. */
	sqlite3 *db = store_reader_get(s->st);
	sqlite3_stmt *q = NULL;
	if (db && sqlite3_prepare_v2(db, "SELECT id FROM devices WHERE grp = ?", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_text(q, 1, group, -1, SQLITE_STATIC);
		while (sqlite3_step(q) == SQLITE_ROW) {
			uint64_t id;
			if (tn_device_id_parse((const char *)sqlite3_column_text(q, 0), &id))
				continue;
			pthread_mutex_lock(&s->route_lock);
			int known = idmap_get(&s->route, id) || idmap_get(&s->seen, id);
			pthread_mutex_unlock(&s->route_lock);
			if (known) {
				struct ev *e = sup__ev(EV_RELOAD, id);
				if (e)
					sup__route(s, e);
			}
		}
	}
	sqlite3_finalize(q);
	store_reader_put(s->st, db);
	log_info("agent code deployed to group %s (%zu bytes)", group, len);
	return 0;
}

int sup_restart(supervisor *s, uint64_t device, tn_error *err)
{
	struct ev *e = sup__ev(EV_RESTART, device);
	if (!e)
		return tn_err(err, TN_ENOMEM, "out of memory");
	sup__route(s, e);
	return 0;
}

struct sup__forget {
	uint64_t id;
	char hex[17];
};

/* What the agent saved or logged after the device's rows went (unless the
 * id was registered again meanwhile). */
static int sup__forget_tx(sqlite3 *db, void *arg, tn_error *err)
{
	static const char *const sql[] = {
		"DELETE FROM agent_state WHERE device = ?1 AND NOT EXISTS (SELECT 1 FROM devices WHERE id = ?1)",
		"DELETE FROM events WHERE device = ?2 AND NOT EXISTS (SELECT 1 FROM devices WHERE id = ?1)",
	};
	struct sup__forget *f = arg;
	for (size_t i = 0; i < sizeof sql / sizeof *sql; i++) {
		sqlite3_stmt *q;
		if (sqlite3_prepare_v2(db, sql[i], -1, &q, NULL))
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
		sqlite3_bind_text(q, 1, f->hex, -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 2, (int64_t)f->id);
		int rc = sqlite3_step(q);
		sqlite3_finalize(q);
		if (rc != SQLITE_DONE)
			return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	}
	return 0;
}

/* Routes e (steals it) and waits until its worker has handled it; returns
 * what the worker answered (owned, may be NULL). */
static json_t *sup__route_and_wait(supervisor *s, struct ev *e)
{
	struct sup_info_wait wait = { .done = 0 };
	pthread_mutex_init(&wait.lock, NULL);
	pthread_cond_init(&wait.cond, NULL);
	e->wait = &wait;
	sup__route(s, e);
	pthread_mutex_lock(&wait.lock);
	while (!wait.done)
		pthread_cond_wait(&wait.cond, &wait.lock);
	pthread_mutex_unlock(&wait.lock);
	pthread_mutex_destroy(&wait.lock);
	pthread_cond_destroy(&wait.cond);
	return wait.info;
}

void sup_device_deleted(supervisor *s, uint64_t device)
{
	pthread_mutex_lock(&s->route_lock);
	idmap_del(&s->seen, device);
	int known = idmap_get(&s->route, device) != NULL;
	pthread_mutex_unlock(&s->route_lock);
	struct ev *e = known ? sup__ev(EV_DELETE, device) : NULL;
	if (e)
		json_decref(sup__route_and_wait(s, e));
	/* The agent can write no more: clear what it wrote since the delete. */
	struct sup__forget f = { .id = device };
	tn_error err = { 0 };
	tn_device_id_format(device, f.hex);
	if (store_sync_state(s->st, sup__forget_tx, &f, &err))
		log_warn("device %s deleted: its agent's last state or lines stay: %s", f.hex, err.msg);
}

int sup_workers(const supervisor *s)
{
	return s->nworkers;
}

int sup_migrate(supervisor *s, uint64_t device, int worker, int *from, int *to, tn_error *err)
{
	if (worker >= s->nworkers)
		return tn_err(err, TN_EINVAL, "'worker' must be from 0 to %d: this server runs %d agent worker%s",
			      s->nworkers - 1, s->nworkers, s->nworkers == 1 ? "" : "s");
	struct ev *e = sup__ev(EV_MIGRATE_OUT, device);
	if (!e)
		return tn_err(err, TN_ENOMEM, "out of memory");
	pthread_mutex_lock(&s->route_lock);
	struct agent *a = s->stopping ? NULL : idmap_get(&s->route, device);
	if (s->stopping) {
		pthread_mutex_unlock(&s->route_lock);
		sup__ev_free(e);
		return tn_err(err, TN_ESTATE, "the server is shutting down");
	}
	if (!a) {
		int seen = idmap_get(&s->seen, device) != NULL;
		pthread_mutex_unlock(&s->route_lock);
		sup__ev_free(e);
		return tn_err(err, TN_ESTATE, seen ? "the device's group has no agent code: there is no agent to move"
						 : "the device's agent has not started (nothing has called on it since "
						   "the server started): there is nothing to move");
	}
	*from = a->dest;
	*to = worker >= 0 ? worker : (a->dest + 1) % s->nworkers;
	if (*to == *from) {
		pthread_mutex_unlock(&s->route_lock);
		sup__ev_free(e);
		if (worker < 0)
			return tn_err(err, TN_ESTATE, "this server runs one agent worker: there is nowhere to move it");
		return 0;
	}
	e->target = *to;
	e->seq = sup__seq(a);
	a->dest = *to;
	a->moving++;
	sup__push(&s->workers[a->worker], e);
	pthread_mutex_unlock(&s->route_lock);
	return 0;
}

/* The published agent (see the top), under route_lock. */
static void sup__published(supervisor *s, struct agent *a, struct sup_view *v, int *fresh)
{
	struct worker *w = &s->workers[a->worker];
	pthread_mutex_lock(&w->lock);
	*v = (struct sup_view){
		.state = a->pub_state, .group = a->group, .worker = a->worker, .connected = a->pub_connected,
		.queued = a->pub_queued, .memory = a->pub_memory, .events = a->pub_events,
		.restarts = a->pub_restarts, .last_error = a->last_error ? strdup(a->last_error) : NULL,
	};
	*fresh = a->pub_seq == a->routed;
	pthread_mutex_unlock(&w->lock);
}

const char *sup_agent_state(supervisor *s, uint64_t device)
{
	const char *state = "not started";
	pthread_mutex_lock(&s->route_lock);
	struct agent *a = idmap_get(&s->route, device);
	if (a) {
		struct worker *w = &s->workers[a->worker];
		pthread_mutex_lock(&w->lock);
		state = sup__states[a->pub_state];
		pthread_mutex_unlock(&w->lock);
	} else if (idmap_get(&s->seen, device)) {
		state = "no code";
	}
	pthread_mutex_unlock(&s->route_lock);
	return state;
}

json_t *sup_agent_info(supervisor *s, uint64_t device)
{
	struct sup_view v = { 0 };
	int fresh = 0;
	char hex[17];
	tn_device_id_format(device, hex);
	pthread_mutex_lock(&s->route_lock);
	struct agent *a = idmap_get(&s->route, device);
	void *seen = a ? NULL : idmap_get(&s->seen, device);
	if (a) {
		sup__published(s, a, &v, &fresh);
		fresh |= s->stopping; /* nothing runs any more: what it was is what it is */
	}
	pthread_mutex_unlock(&s->route_lock);
	if (fresh) {
		json_t *info = sup__view_json(hex, &v);
		free((char *)v.last_error);
		return info;
	}
	free((char *)v.last_error);
	if (seen) {
		/* Seen online, its group without code: what its agent entry said
		 * when there was one for every device. */
		return json_pack("{ss ss ss si sI sI sI sb si}", "device", hex, "state", "no code", "group", "",
				 "worker", 0, "memory", (json_int_t)0, "events", (json_int_t)0, "restarts",
				 (json_int_t)0, "device_connected", SUP_SEEN_ONLINE(seen), "queued_messages", 0);
	}
	if (!a)
		return json_pack("{ss}", "state", "not started");
	/* Events sent to it are waiting or running: the answer comes after
	 * them, from its worker. */
	struct ev *e = sup__ev(EV_INFO, device);
	if (!e)
		return NULL;
	json_t *info = sup__route_and_wait(s, e);
	if (info)
		return info;
	/* No answer: deleted meanwhile, or a request racing a move. */
	pthread_mutex_lock(&s->route_lock);
	int known = idmap_get(&s->route, device) != NULL;
	pthread_mutex_unlock(&s->route_lock);
	return json_pack("{ss}", "state", known ? "migrating" : "not started");
}

int sup_http(supervisor *s, const char *agent_id, const agent_http_req *req, sup_http_done done, void *arg)
{
	sqlite3 *db = store_reader_get(s->st);
	sqlite3_stmt *q = NULL;
	uint64_t device = 0;
	int found = 0;
	if (db && sqlite3_prepare_v2(db, "SELECT id FROM devices WHERE agent_id = ?", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_text(q, 1, agent_id, -1, SQLITE_STATIC);
		if (sqlite3_step(q) == SQLITE_ROW)
			found = tn_device_id_parse((const char *)sqlite3_column_text(q, 0), &device) == 0;
	}
	sqlite3_finalize(q);
	store_reader_put(s->st, db);
	if (!found)
		return TN_ENOTFOUND;
	struct ev *e = sup__ev(EV_HTTP, device);
	if (!e)
		return TN_ENOMEM;
	/* Copy the request: the worker runs it after this returns. */
	e->http_buf[0] = strdup(req->method ? req->method : "GET");
	e->http_buf[1] = strdup(req->path ? req->path : "/");
	e->http_buf[2] = strdup(req->query ? req->query : "");
	e->http_buf[3] = malloc(req->body_len + 1);
	if (e->http_buf[3]) {
		if (req->body_len)
			memcpy(e->http_buf[3], req->body, req->body_len);
		e->http_buf[3][req->body_len] = '\0';
	}
	size_t nh = 0;
	while (req->headers && req->headers[nh])
		nh++;
	e->http_headers = calloc(nh + 1, sizeof *e->http_headers);
	for (size_t i = 0; e->http_headers && i < nh; i++)
		e->http_headers[i] = strdup(req->headers[i]);
	e->http.method = e->http_buf[0];
	e->http.path = e->http_buf[1];
	e->http.query = e->http_buf[2];
	e->http.body = e->http_buf[3];
	e->http.body_len = req->body_len;
	e->http.headers = (const char *const *)e->http_headers;
	e->done = done;
	e->done_arg = arg;
	sup__route(s, e);
	return 0;
}

/* agents/runtime.h -- one agent: a sandboxed Lua 5.4 state running a device's
 * server-side code (docs/agents.md).
 * Owns: the lua_State, its memory-capped allocator, its instruction budget,
 * its handlers (device.on, device.onconnect/ondisconnect, http.onrequest) and
 * timers; and, process-wide, the pages all agents' small Lua blocks come
 * from (agent_rt_pages).  Knows nothing of threads, sockets or the store: everything outside
 * goes through the agent_host callbacks.
 * Threads: an agent_rt is used by one thread at a time (its worker); it may
 * move to another worker between calls (migration). */
#ifndef TN_AGENT_RUNTIME_H
#define TN_AGENT_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "tn.h"

#define AGENT_SAVE_MAX (64 * 1024)   /* bytes of server.save() JSON */
#define AGENT_JSON_DEPTH 32          /* Lua <-> JSON nesting */

/* What the runtime asks of its host (the supervisor).  Strings are borrowed
 * for the duration of the call. */
typedef struct agent_host {
	void *ctx;
	/* server.log(msg) (is_error 0) and server.error(msg) (1); handler errors
	 * with their traceback come here too, with is_error 1. */
	void (*log)(void *ctx, int is_error, const char *msg);
	/* device.send(name, data): data as compact JSON ("null" when nil). */
	void (*send)(void *ctx, const char *name, const char *data_json);
	/* device.isconnected() */
	int (*is_connected)(void *ctx);
	/* server.save(tbl): the JSON (at most AGENT_SAVE_MAX bytes; the runtime
	 * checks).  Returns 0, or -1 with a message in err. */
	int (*save)(void *ctx, const char *json, size_t len, char *err, size_t errcap);
	/* server.load(): the saved JSON (owned: the runtime free()s it), or NULL. */
	char *(*load)(void *ctx);
	/* The clock timers run on, in ms (monotonic is fine). */
	int64_t (*now_ms)(void *ctx);
} agent_host;

typedef struct agent_limits {
	size_t memory;          /* bytes the Lua state may allocate (default 1 MiB) */
	uint64_t instructions;  /* VM instructions (and pattern matcher steps) per event
				 * (default 10 million) */
	uint32_t cpu_ms;        /* the thread's CPU time per event, a backstop for what one
				 * instruction can cost (comparing long strings); default 2000 */
} agent_limits;

/* Outcome of running an event. */
enum {
	AGENT_OK = 0,
	AGENT_ERROR = 1,      /* the handler raised an error: logged, the agent goes on */
	AGENT_BUDGET = 2,     /* over its instruction budget: stopped, logged, the agent goes on */
	AGENT_OOM = 3,        /* over its memory cap: the agent must be stopped */
};

typedef struct agent_rt agent_rt;

/* Checks that `source` compiles (text only, no bytecode).  Returns 0, or
 * TN_EINVAL with err like "agent.lua:3: '=' expected near 'end'". */
int agent_rt_check(const char *source, size_t len, tn_error *err);

/* Creates the state, loads the sandboxed libraries and the API, runs the
 * source's top level (which registers handlers and timers).  Returns 0 (a
 * top level that raised is logged through host->log like a handler's error,
 * and the agent runs with what it registered), TN_EINVAL (does not compile:
 * err says where), or TN_ENOMEM (over the memory cap while starting).  lim may be NULL, and
 * a zero field takes its default; host is copied and every callback in it
 * is required. */
int agent_rt_new(agent_rt **out, const char *source, size_t len, const agent_limits *lim,
		 const agent_host *host, tn_error *err);
void agent_rt_free(agent_rt *a);

/* Events.  Each returns AGENT_OK, AGENT_ERROR, AGENT_BUDGET or AGENT_OOM.
 * After AGENT_OOM the agent is dead: every later event returns AGENT_OOM
 * without running anything; the caller frees it. */
int agent_rt_message(agent_rt *a, const char *name, const char *data_json);
int agent_rt_connect(agent_rt *a);
int agent_rt_disconnect(agent_rt *a);

typedef struct agent_http_req {
	const char *method, *path, *query, *body;   /* path after /agent/{agent_id} */
	size_t body_len;
	const char *const *headers;                 /* name, value, name, value, ..., NULL */
} agent_http_req;

typedef struct agent_http_res {
	int status;          /* 0 when the agent has no http.onrequest handler */
	char *body;          /* owned: free() */
	size_t body_len;
	char **headers;      /* owned: name, value, ..., NULL; free with agent_http_res_clear */
} agent_http_res;

/* Runs http.onrequest.  res is always filled (owned: agent_http_res_clear):
 * - no handler: AGENT_OK with res->status 0 (the caller answers 404);
 * - the handler called res.send: res holds that answer, even if the handler
 *   failed afterwards (the return value still says so);
 * - the handler returned without res.send: AGENT_OK with status 500 and body
 *   "the agent did not answer";
 * - the handler failed before res.send (AGENT_ERROR, AGENT_BUDGET or
 *   AGENT_OOM): res->status is 0 and the caller answers 500. */
int agent_rt_http(agent_rt *a, const agent_http_req *req, agent_http_res *res);
void agent_http_res_clear(agent_http_res *res);

/* Timers: when the earliest is due (host clock, ms), or -1 when none. */
int64_t agent_rt_next_timer(agent_rt *a);
/* Runs every timer due at `now` (each is one event with its own budget). */
int agent_rt_run_timers(agent_rt *a, int64_t now);

/* A timer as a migration moves it (agents/envelope.h): the callback stays
 * in the Lua state, the id finds it again. */
typedef struct agent_timer {
	int id;
	int64_t due;            /* host clock, ms */
	int64_t every;          /* ms, 0 for a one-shot */
} agent_timer;

/* The agent's timers in *out (malloc'd; NULL when none), and the id the next
 * new timer would get in *next_id.  Returns how many, or -1 (out of memory). */
int agent_rt_timers(const agent_rt *a, agent_timer **out, int *next_id);

/* Re-arms the timers a migration moved: each of the state's timers whose id
 * is in t[0..n) takes that due time and interval; the state's others are
 * cancelled (the sender did not have them); the next new timer gets an id
 * of at least next_id.  Returns how many of t were found (-1: out of
 * memory, nothing changed). */
int agent_rt_rearm_timers(agent_rt *a, const agent_timer *t, int n, int next_id);

/* Bytes the Lua state holds now. */
size_t agent_rt_memory(const agent_rt *a);

/* The 4 KB pages all agents' small Lua blocks come from (process-wide, any
 * thread): those holding blocks (or kept for their size class), and the
 * empty ones kept in memory for reuse (not given back to the system). */
void agent_rt_pages(size_t *in_use, size_t *empty);

#endif

/* agents/envelope.h -- the migration envelope: everything about an agent that
 * can cross a node boundary, as versioned, bounded bytes (docs/agents.md,
 * "Migration").  The supervisor encodes it on the old worker and decodes it
 * on the new one, even in process, so the same code can later move an agent
 * between nodes.  The Lua state and timer callbacks are not in it.
 * Owns: the decoded agent_env (agent_env_clear frees it).
 * Threads: pure functions. */
#ifndef TN_AGENT_ENVELOPE_H
#define TN_AGENT_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "tn.h"

#define AGENT_ENV_MAGIC "TNAE"
#define AGENT_ENV_VERSION 1
#define AGENT_ENV_HEADER 12                  /* magic, u16 version, u16 flags, u32 body length */
#define AGENT_ENV_MAX (256u << 20)           /* bytes of a whole envelope */
#define AGENT_ENV_MAX_STR (64u << 20)        /* bytes of one string (a request body, ...) */
#define AGENT_ENV_MAX_NAME 4096              /* bytes of a short string (group, state, name, header) */
#define AGENT_ENV_MAX_QUEUE 65536            /* messages queued for the offline device */
#define AGENT_ENV_MAX_TIMERS 10000
#define AGENT_ENV_MAX_EVENTS (1u << 20)
#define AGENT_ENV_MAX_HEADERS 256            /* name/value pairs of one request */
#define AGENT_ENV_MAX_MS (366LL * 86400 * 1000) /* a timer's interval or due time */

/* The kinds of event in flight. */
enum {
	AGENT_ENV_ONLINE = 1,   /* conn */
	AGENT_ENV_OFFLINE,      /* conn */
	AGENT_ENV_MSG,          /* name, data (NULL: no data) */
	AGENT_ENV_HTTP,         /* reply, method, path, query, body, headers */
	AGENT_ENV_RELOAD,
	AGENT_ENV_RESTART,
	AGENT_ENV_MIGRATE,      /* target */
	AGENT_ENV_INFO,         /* reply */
	AGENT_ENV_DELETE,       /* reply: the device was deleted, the agent goes */
	AGENT_ENV_KINDS
};

typedef struct agent_env_event {
	int kind;
	uint64_t conn;
	char *name, *data;
	int32_t target;         /* a worker, or -1: the next one */
	uint64_t reply;         /* the node-local handle its answer goes to */
	char *method, *path, *query;
	char *body;             /* may hold NUL bytes */
	size_t body_len;
	char **headers;         /* name, value, ..., NULL; NULL when none */
	uint32_t nheaders;      /* pairs */
} agent_env_event;

typedef struct agent_env_timer {
	uint32_t id;            /* stable: the handle's id */
	int64_t due_in_ms;      /* from the moment of encoding (clocks need not agree) */
	int64_t every_ms;       /* 0: a one-shot */
} agent_env_timer;

typedef struct agent_env {
	uint64_t device;
	char *agent_id, *group, *state, *last_error;   /* never NULL once decoded */
	uint8_t code_hash[32];  /* SHA-256 of the code the agent runs */
	char *saved;            /* server.save JSON, or NULL */
	int64_t events, restarts, backoff_ms;
	int64_t restart_in_ms;  /* -1: no restart pending */
	int64_t started_ms;     /* wall clock */
	int connected;
	uint64_t conn;
	char **queued;          /* msg frames for the offline device, oldest first */
	uint32_t nqueued;
	agent_env_timer *timers;
	uint32_t ntimers, next_timer_id;
	agent_env_event *ev;    /* in flight, in order */
	uint32_t nev;
} agent_env;

/* Encodes env (malloc'd bytes in *out).  TN_ETOOBIG past the limits above
 * (nothing is cut: the caller keeps the agent where it is), TN_ENOMEM. */
int agent_env_encode(const agent_env *env, uint8_t **out, size_t *len, tn_error *err);

/* Decodes exactly `len` bytes into env (zeroed first; agent_env_clear it,
 * also after a failure).  TN_EINVAL with the reason and the offset for
 * anything malformed: truncated, a bad magic or version, a length past the
 * input or a limit, a NUL byte in a text, a bad flag or kind, bytes left
 * over.  What decodes encodes back to the same bytes. */
int agent_env_decode(const uint8_t *buf, size_t len, agent_env *env, tn_error *err);

void agent_env_clear(agent_env *env);

#endif

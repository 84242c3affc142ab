/* agents/supervisor.h -- the agent supervisor: a pool of worker threads, each
 * hosting many agents (agents/runtime.h), that starts, restarts, reloads and
 * migrates them and routes every event to the one worker that owns the agent.
 * Owns: the workers, the routing table (device -> worker), every agent.
 * Threads: sup_* may be called from any thread; each queues to the owning
 * worker (a locked queue and a condition variable). */
#ifndef TN_SUPERVISOR_H
#define TN_SUPERVISOR_H

#include <jansson.h>
#include <stdint.h>

#include "runtime.h"
#include "store.h"
#include "tn.h"

typedef struct supervisor supervisor;
struct device_loop;

typedef struct sup_options {
	int workers;              /* 0: one per core */
	agent_limits limits;
	int offline_queue;        /* messages kept for an offline device (default 64) */
	int log_rate;             /* agent log lines per second (0: no limit) */
} sup_options;

int sup_start(supervisor **out, const sup_options *opt, store *st, tn_error *err);
void sup_set_device_loop(supervisor *s, struct device_loop *d);
/* Stops every agent ("Agent stopped: shutdown.") and the workers. */
void sup_stop(supervisor *s);
void sup_free(supervisor *s);

/* From the device loop. */
void sup_device_online(supervisor *s, uint64_t device, uint64_t conn);
void sup_device_offline(supervisor *s, uint64_t device, uint64_t conn);
void sup_device_message(supervisor *s, uint64_t device, const char *name, const char *data_json);

/* The device was deleted (call after its rows are gone from the store, so
 * that nothing starts its agent again): its agent stops -- no status line,
 * its log went with it -- and is forgotten with its timers and queued
 * messages, and what it saved or logged meanwhile is removed.  Returns when
 * that is done. */
void sup_device_deleted(supervisor *s, uint64_t device);

/* Deploys `source` as the agent code of `group`: refused with line numbers if
 * it does not compile (nothing deployed); otherwise stored, and every running
 * agent of the group restarts with it ("Agent restarted: reload."). */
int sup_deploy(supervisor *s, const char *group, const char *source, size_t len, tn_error *err);

/* Restarts the device's agent (starting it if it was not running). */
int sup_restart(supervisor *s, uint64_t device, tn_error *err);

/* How many agent workers there are (0 to this minus one). */
int sup_workers(const supervisor *s);

/* Moves the device's agent to worker `worker`, or to the next one when
 * `worker` is -1.  Returns 0 with the agent's worker in *from and the one it
 * goes to in *to: equal when it is there already (nothing happens);
 * TN_EINVAL when `worker` is not one of this server's (err names the
 * range), TN_ESTATE when there is no agent to move (it has not started, or
 * its group has no code) or, with -1, nowhere to move it (one worker). */
int sup_migrate(supervisor *s, uint64_t device, int worker, int *from, int *to, tn_error *err);

/* The agent as the API shows it ({"device","state","group","worker",
 * "memory","events","restarts","device_connected","queued_messages",
 * "last_error"?}; {"state":"not started"} when nothing has called on it
 * since the server started), owned, or NULL when out of memory.  It
 * reflects every event sent to the agent before the call: answered at once
 * from what its worker published after its last event when no event of its
 * is waiting or running; otherwise its worker answers after those events
 * (the call waits for them). */
json_t *sup_agent_info(supervisor *s, uint64_t device);

/* The agent's state, as sup_agent_info names it ("running", "not started",
 * "no code", ...; static), as of its last event or timer run: never waits
 * for its worker.  For lists of devices. */
const char *sup_agent_state(supervisor *s, uint64_t device);

/* An HTTP request for the agent with this agent_id.  `done` is called once,
 * from a worker thread, with the response (status 404 when the agent has no
 * handler or does not exist, 500 when the handler failed). */
typedef void (*sup_http_done)(void *arg, int status, const char *const *headers, const char *body,
			      size_t len);
int sup_http(supervisor *s, const char *agent_id, const agent_http_req *req, sup_http_done done,
	     void *arg);

#endif

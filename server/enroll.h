/* server/enroll.h -- enrollment: tokens an operator hands out (group,
 * expiry, uses) and the registration of a new device that presents one in
 * its hello.  The device loop never waits for the disk: it queues the
 * request here, a thread of this module does the transaction, and the answer
 * goes back to the loop through `done`.
 * Threads: enroll_* from any thread; `done` is called on the enroll thread. */
#ifndef TN_ENROLL_H
#define TN_ENROLL_H

#include <jansson.h>
#include <stdint.h>

#include "registry.h"
#include "store.h"

typedef struct enroller enroller;

/* `done(arg, ticket, rc, secret, reason)`: rc 0 with the new device's secret,
 * or an error with the reason the device is told. */
typedef void (*enroll_done_fn)(void *arg, uint64_t ticket, int rc, const char *secret, const char *reason);

int enroll_start(enroller **out, store *st, registry *reg, tn_error *err);
void enroll_set_done(enroller *e, enroll_done_fn done, void *arg);
void enroll_stop(enroller *e);

/* Queues a registration of `device` with `token`; `ticket` comes back in done. */
int enroll_request(enroller *e, uint64_t ticket, uint64_t device, const char *token);

/* POST /v1/enrollment-tokens body {"group"?, "expires_in"? s, "max_uses"?}:
 * 0 with *out {"id","token","group","expires","max_uses"} (the token shown once). */
int enroll_token_create(store *st, json_t *body, json_t **out, tn_error *err);
/* {"tokens":[...]} without the tokens themselves. */
json_t *enroll_token_list(store *st, tn_error *err);
int enroll_token_revoke(store *st, int64_t id, tn_error *err);

#endif

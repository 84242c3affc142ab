/* server/daemon.h -- tenderd as a whole: starts the store, the registry, the
 * device loop and the HTTP API in order, and stops them in reverse.
 * Threads: the main thread only. */
#ifndef TN_DAEMON_H
#define TN_DAEMON_H

#include "config.h"
#include "tn.h"

typedef struct tenderd tenderd;

/* Starts everything and prints the listening lines on stderr. */
int daemon_start(tenderd **out, const tn_config *cfg, tn_error *err);

/* Stops in order: HTTP API, devices (each logged as disconnected), store
 * (everything queued committed).  Accepts NULL. */
void daemon_stop(tenderd *t);

/* Ensures the admin token: an existing token file's token is accepted; with
 * no token at all, a new one is written to the file (mode 0600).  Exposed for
 * tests.  `created` is set when a new token was written. */
struct store;
int daemon_admin_token(struct store *st, const char *path, int *created, tn_error *err);

#endif

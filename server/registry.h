/* server/registry.h -- the registered devices' secret hashes, in memory, so
 * the device loop authenticates a hello without touching the disk.
 * Loaded from the store at start; the API keeps it in step as it registers
 * and deletes devices.  Threads: any (one mutex; short critical sections). */
#ifndef TN_REGISTRY_H
#define TN_REGISTRY_H

#include <stdint.h>

#include "auth.h"
#include "store.h"

typedef struct registry registry;

int registry_open(registry **out, store *st, tn_error *err);
void registry_free(registry *r);

/* Adds or replaces a device's secret hash. */
int registry_set(registry *r, uint64_t id, const char *secret_hash);
void registry_remove(registry *r, uint64_t id);

/* 0 if the device exists and the secret matches (constant-time compare),
 * TN_ENOTFOUND for an unknown id, TN_EAUTH for a wrong secret. */
int registry_check(registry *r, uint64_t id, const char *secret);

#endif

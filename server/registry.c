/* server/registry.c -- device secret hashes in memory (see registry.h). */
#include "registry.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idmap.h"

struct registry {
	pthread_mutex_t lock;
	idmap ids; /* id -> char[AUTH_HASH_HEX] */
};

static void registry__load_one(void *arg, uint64_t id, const char *hash)
{
	registry_set(arg, id, hash);
}

int registry_open(registry **out, store *st, tn_error *err)
{
	registry *r = calloc(1, sizeof *r);
	if (!r)
		return tn_err(err, TN_ENOMEM, "out of memory");
	pthread_mutex_init(&r->lock, NULL);
	int rc = store_device_foreach_secret(st, registry__load_one, r, err);
	if (rc) {
		registry_free(r);
		return rc;
	}
	*out = r;
	return 0;
}

static void registry__free_one(void *arg, uint64_t id, void *val)
{
	free(val);
}

void registry_free(registry *r)
{
	if (!r)
		return;
	idmap_foreach(&r->ids, registry__free_one, NULL);
	idmap_free(&r->ids);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

int registry_set(registry *r, uint64_t id, const char *secret_hash)
{
	char *copy = strdup(secret_hash);
	int oom = 0;
	if (!copy)
		return TN_ENOMEM;
	pthread_mutex_lock(&r->lock);
	char *old = idmap_put(&r->ids, id, copy, &oom);
	pthread_mutex_unlock(&r->lock);
	free(old);
	if (oom) {
		free(copy);
		return TN_ENOMEM;
	}
	return 0;
}

void registry_remove(registry *r, uint64_t id)
{
	pthread_mutex_lock(&r->lock);
	char *old = idmap_del(&r->ids, id);
	pthread_mutex_unlock(&r->lock);
	free(old);
}

int registry_check(registry *r, uint64_t id, const char *secret)
{
	char given[AUTH_HASH_HEX], stored[AUTH_HASH_HEX];

	auth_hash_hex(secret, strlen(secret), given);
	pthread_mutex_lock(&r->lock);
	const char *h = idmap_get(&r->ids, id);
	if (h)
		snprintf(stored, sizeof stored, "%s", h);
	pthread_mutex_unlock(&r->lock);
	if (!h)
		return TN_ENOTFOUND;
	return auth_hash_equal(given, stored) ? 0 : TN_EAUTH;
}

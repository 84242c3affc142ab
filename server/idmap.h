/* server/idmap.h -- a hash map from 64-bit device ids to pointers.
 * Open addressing with linear probing and backward-shift deletion (no
 * tombstones), grown at 75% load: with a splitmix-mixed key, linear probing
 * stays short there, and the maps of online devices (the device loop's, the
 * scheduler's, the supervisor's) are a tenth of an idle device's memory.  Threads: none of its own; the owner locks. */
#ifndef TN_IDMAP_H
#define TN_IDMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct idmap {
	uint64_t *keys;
	void **vals;   /* NULL marks an empty slot: values must not be NULL */
	size_t cap;    /* a power of two, or 0 */
	size_t count;
} idmap;

/* Returns the value for key, or NULL. */
void *idmap_get(const idmap *m, uint64_t key);

/* Sets key to val (not NULL); returns the previous value (NULL if none),
 * or sets *oom and returns NULL when it cannot grow. */
void *idmap_put(idmap *m, uint64_t key, void *val, int *oom);

/* Removes key and returns its value, or NULL. */
void *idmap_del(idmap *m, uint64_t key);

/* Calls fn for every entry (the map must not change meanwhile). */
void idmap_foreach(const idmap *m, void (*fn)(void *arg, uint64_t key, void *val), void *arg);

/* Frees the table (not the values). */
void idmap_free(idmap *m);

#endif

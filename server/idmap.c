/* server/idmap.c -- a hash map from 64-bit ids to pointers (see idmap.h). */
#include "idmap.h"

#include <stdlib.h>

static size_t idmap__slot(uint64_t key, size_t cap)
{
	/* Device ids are often consecutive: mix the bits (splitmix64 finaliser). */
	key ^= key >> 30;
	key *= UINT64_C(0xbf58476d1ce4e5b9);
	key ^= key >> 27;
	key *= UINT64_C(0x94d049bb133111eb);
	key ^= key >> 31;
	return (size_t)key & (cap - 1);
}

void *idmap_get(const idmap *m, uint64_t key)
{
	if (m->cap == 0)
		return NULL;
	for (size_t i = idmap__slot(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
		if (!m->vals[i])
			return NULL;
		if (m->keys[i] == key)
			return m->vals[i];
	}
}

static int idmap__grow(idmap *m)
{
	size_t cap = m->cap ? m->cap * 2 : 64;
	uint64_t *keys = calloc(cap, sizeof *keys);
	void **vals = calloc(cap, sizeof *vals);

	if (!keys || !vals) {
		free(keys);
		free(vals);
		return -1;
	}
	for (size_t i = 0; i < m->cap; i++) {
		if (!m->vals[i])
			continue;
		size_t j = idmap__slot(m->keys[i], cap);
		while (vals[j])
			j = (j + 1) & (cap - 1);
		keys[j] = m->keys[i];
		vals[j] = m->vals[i];
	}
	free(m->keys);
	free(m->vals);
	m->keys = keys;
	m->vals = vals;
	m->cap = cap;
	return 0;
}

void *idmap_put(idmap *m, uint64_t key, void *val, int *oom)
{
	if ((m->count + 1) * 4 > m->cap * 3 && idmap__grow(m)) {
		if (oom)
			*oom = 1;
		return NULL;
	}
	size_t i = idmap__slot(key, m->cap);
	for (; m->vals[i]; i = (i + 1) & (m->cap - 1)) {
		if (m->keys[i] == key) {
			void *old = m->vals[i];
			m->vals[i] = val;
			return old;
		}
	}
	m->keys[i] = key;
	m->vals[i] = val;
	m->count++;
	return NULL;
}

void *idmap_del(idmap *m, uint64_t key)
{
	if (m->cap == 0)
		return NULL;
	size_t mask = m->cap - 1, i = idmap__slot(key, m->cap);
	while (m->vals[i] && m->keys[i] != key)
		i = (i + 1) & mask;
	if (!m->vals[i])
		return NULL;
	void *old = m->vals[i];
	m->vals[i] = NULL;
	m->count--;
	/* Backward-shift: move later members of the probe run into the hole when
	 * their home slot is not between the hole and where they sit. */
	for (size_t j = (i + 1) & mask; m->vals[j]; j = (j + 1) & mask) {
		size_t home = idmap__slot(m->keys[j], m->cap);
		int between = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
		if (between)
			continue;
		m->keys[i] = m->keys[j];
		m->vals[i] = m->vals[j];
		m->vals[j] = NULL;
		i = j;
	}
	return old;
}

void idmap_foreach(const idmap *m, void (*fn)(void *arg, uint64_t key, void *val), void *arg)
{
	for (size_t i = 0; i < m->cap; i++)
		if (m->vals[i])
			fn(arg, m->keys[i], m->vals[i]);
}

void idmap_free(idmap *m)
{
	free(m->keys);
	free(m->vals);
	m->keys = NULL;
	m->vals = NULL;
	m->cap = m->count = 0;
}

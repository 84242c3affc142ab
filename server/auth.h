/* server/auth.h -- secrets and tokens: generation, hashing, comparison.
 * Secrets and tokens are 256-bit random values, so one SHA-256 is enough to
 * store them (no password stretching needed); comparisons are constant-time.
 * Threads: any. */
#ifndef TN_AUTH_H
#define TN_AUTH_H

#include <stddef.h>

#define AUTH_HASH_HEX 65   /* 64 hex digits + NUL */

/* Fills out with a new random secret: prefix then 43 URL-safe characters
 * (256 bits).  `prefix` is at most 8 bytes ("tds_" for devices, "tdt_" for
 * API tokens).  out must hold 64 bytes.  Returns 0 or TN_EIO. */
int auth_random_secret(const char *prefix, char out[64]);

/* out = lower-case hex SHA-256 of data. */
void auth_hash_hex(const void *data, size_t len, char out[AUTH_HASH_HEX]);

/* 1 when a and b (NUL-terminated hex hashes of equal length) are equal;
 * the time taken does not depend on where they differ. */
int auth_hash_equal(const char *a, const char *b);

#endif

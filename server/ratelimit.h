/* server/ratelimit.h -- a token bucket that counts what it refuses, so a
 * device or agent that logs too fast is throttled with one line saying how
 * many lines were dropped -- never silently.
 * Threads: none of its own; each bucket belongs to one thread. */
#ifndef TN_RATELIMIT_H
#define TN_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct ratelimit {
	double tokens;
	int64_t last_ms;
	uint32_t dropped;        /* refused since the last report */
	int64_t first_drop_ms;
} ratelimit;

/* 1 if one more line may pass at `now_ms` under `rate` lines per second
 * (bursts up to 2 s worth); 0 if it is dropped (and counted).  rate <= 0:
 * no limit. */
int ratelimit_take(ratelimit *r, double rate, int64_t now_ms);

/* If lines were dropped, writes "N log lines dropped: over the limit of R
 * per second" into buf, resets the count and returns 1; else 0. */
int ratelimit_report(ratelimit *r, double rate, char *buf, size_t cap);

#endif

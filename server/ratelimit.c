/* server/ratelimit.c -- token buckets for log lines (see ratelimit.h). */
#include "ratelimit.h"

#include <stdio.h>

int ratelimit_take(ratelimit *r, double rate, int64_t now_ms)
{
	if (rate <= 0)
		return 1;
	double burst = rate * 2;
	if (r->last_ms == 0)
		r->tokens = burst;
	else
		r->tokens += (double)(now_ms - r->last_ms) * rate / 1000.0;
	if (r->tokens > burst)
		r->tokens = burst;
	r->last_ms = now_ms;
	if (r->tokens >= 1.0) {
		r->tokens -= 1.0;
		return 1;
	}
	if (r->dropped++ == 0)
		r->first_drop_ms = now_ms;
	return 0;
}

int ratelimit_report(ratelimit *r, double rate, char *buf, size_t cap)
{
	if (!r->dropped)
		return 0;
	snprintf(buf, cap, "%u log line%s dropped: over the limit of %g per second", r->dropped,
		 r->dropped == 1 ? "" : "s", rate);
	r->dropped = 0;
	return 1;
}

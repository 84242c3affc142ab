/* server/util.c -- the small helpers declared in tn.h. */
#define _GNU_SOURCE
#include "tn.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

int tn_err(tn_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
	}
	return code;
}

static int64_t util__clock_ms(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tn_now_ms(void) { return util__clock_ms(CLOCK_REALTIME); }
int64_t tn_mono_ms(void) { return util__clock_ms(CLOCK_MONOTONIC); }

int tn_device_id_parse(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; s[i]; i++) {
		char c = s[i];
		int d;
		if (i >= 16)
			return TN_EINVAL;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return TN_EINVAL;
		v = (v << 4) | (uint64_t)d;
	}
	if (i != 16)
		return TN_EINVAL;
	*out = v;
	return 0;
}

void tn_device_id_format(uint64_t id, char out[17])
{
	snprintf(out, 17, "%016llx", (unsigned long long)id);
}

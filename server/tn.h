/* server/tn.h -- what every module of tenderd shares: the error out-parameter,
 * error codes, and a few small helpers.  Threads: any. */
#ifndef TN_H
#define TN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define TN_VERSION PACKAGE_VERSION

/* Error codes: functions return 0 or one of these (negative). */
enum {
	TN_OK = 0,
	TN_EINVAL = -1,    /* bad input: the message says which part */
	TN_ENOMEM = -2,
	TN_ENOTFOUND = -3,
	TN_EEXIST = -4,
	TN_EIO = -5,       /* the store or the file system failed */
	TN_ETOOBIG = -6,   /* over a configured limit */
	TN_EAUTH = -7,
	TN_ESTATE = -8,    /* not possible in the current state (e.g. shutting down) */
};

/* The human detail of an error, filled by the callee (jansson's json_error_t). */
typedef struct tn_error {
	int code;
	char msg[256];
} tn_error;

/* Sets err (which may be NULL) and returns code, so callers can `return tn_err(...)`. */
int tn_err(tn_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Milliseconds since the epoch (wall clock) and since boot (monotonic). */
int64_t tn_now_ms(void);
int64_t tn_mono_ms(void);

/* Device ids are 16 hex digits; parse case-insensitively, print lower-case. */
int tn_device_id_parse(const char *s, uint64_t *out);
void tn_device_id_format(uint64_t id, char out[17]);

#define TN_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif

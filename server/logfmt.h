/* server/logfmt.h -- the text and time forms of log events.
 * Owns: nothing; pure functions shared by tenderd, tenderctl and tests.
 * Threads: any. */
#ifndef TN_LOGFMT_H
#define TN_LOGFMT_H

#include <stddef.h>
#include <stdint.h>

/* "Status" for "status", "Device", "Agent", "Firmware"; NULL for an unknown type. */
const char *logfmt_type_label(const char *type);

/* "2026-11-25T01:54:48.123Z" (UTC).  Returns the length, or -1 if cap is too small. */
int logfmt_iso8601(char *buf, size_t cap, int64_t ts_ms);

/* Parses the form above (the fraction and the 'Z' optional).  Returns 0 or -1. */
int logfmt_parse_iso8601(const char *s, int64_t *ts_ms);

/* The operator's text form, in the local time zone (TZ):
 * "2016-09-08 17:16:15 UTC+2 [Status] Device connected".
 * An unknown type is printed as "[type]".  Returns the length written (the
 * message is truncated to fit cap), or -1 if cap cannot hold the prefix. */
int logfmt_text(char *buf, size_t cap, int64_t ts_ms, const char *type, const char *msg);

#endif

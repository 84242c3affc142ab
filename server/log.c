/* server/log.c -- tenderd's stderr log and the libraries' loggers routed into it. */
#define _GNU_SOURCE
#include "log.h"
#include "metrics.h"

#include <libwebsockets.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int log_level = LOG_INFO;

static const char *const log__names[] = { "error", "warn", "info", "debug" };

void log_vemit(int level, const char *fmt, va_list ap)
{
	char line[1024];
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld tenderd %s: ",
			 tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
			 log__names[level]);
	int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	while (len > 0 && line[len - 1] == '\n') /* libraries end lines themselves */
		len--;
	line[len++] = '\n';
	/* One write per line so lines from different threads never interleave. */
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

void log__emit(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vemit(level, fmt, ap);
	va_end(ap);
}

int log_level_parse(const char *name)
{
	for (int i = 0; i < (int)(sizeof log__names / sizeof log__names[0]); i++)
		if (strcmp(name, log__names[i]) == 0)
			return i;
	return -1;
}

static void log__lws(int lws_level, const char *line)
{
	/* lws closes such a connection without telling its callback: its log
	 * line (an error, always routed) is the only sign of it. */
	if (strstr(line, "Ran out of header data space"))
		metrics_error(ERR_DEVICE_HEADER_TOO_LARGE);
	int level = (lws_level & LLL_ERR) ? LOG_ERR : (lws_level & LLL_WARN) ? LOG_WARN
		    : (lws_level & (LLL_NOTICE | LLL_INFO)) ? LOG_INFO : LOG_DEBUG;
	TN_LOG(level, "lws: %s", line);
}

static void log__sqlite(void *arg, int code, const char *msg)
{
	/* SQLITE_SCHEMA and WAL recovery notices are routine. */
	int level = (code == SQLITE_NOTICE || code == SQLITE_WARNING) ? LOG_INFO : LOG_WARN;
	TN_LOG(level, "sqlite (%d): %s", code, msg);
}

void log_route_libraries(void)
{
	int lws_mask = LLL_ERR | LLL_WARN;
	if (log_level >= LOG_DEBUG)
		lws_mask |= LLL_NOTICE | LLL_INFO;
	lws_set_log_level(lws_mask, log__lws);
	sqlite3_config(SQLITE_CONFIG_LOG, log__sqlite, NULL);
}

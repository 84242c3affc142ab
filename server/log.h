/* server/log.h -- tenderd's own log on stderr.
 * One macro checks the level before anything is formatted; libwebsockets,
 * libmicrohttpd and SQLite are routed into it (log_route_libraries()).
 * Threads: any (one write(2) per line). */
#ifndef TN_LOG_H
#define TN_LOG_H

#include <stdarg.h>

enum { LOG_ERR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

extern int log_level;

#define TN_LOG(lvl, ...) \
	do { if ((lvl) <= log_level) log__emit((lvl), __VA_ARGS__); } while (0)
#define log_err(...) TN_LOG(LOG_ERR, __VA_ARGS__)
#define log_warn(...) TN_LOG(LOG_WARN, __VA_ARGS__)
#define log_info(...) TN_LOG(LOG_INFO, __VA_ARGS__)
#define log_debug(...) TN_LOG(LOG_DEBUG, __VA_ARGS__)

void log__emit(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vemit(int level, const char *fmt, va_list ap);

/* "error", "warn", "info", "debug" -> level; -1 if unknown. */
int log_level_parse(const char *name);

/* Routes the libraries' loggers into ours (call once, before starting them). */
void log_route_libraries(void);

#endif

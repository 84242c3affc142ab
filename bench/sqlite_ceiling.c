/* bench/sqlite_ceiling.c -- the ceiling for bench/events_persisted.sh.
 * Owns: one SQLite database it creates, and the timing of one tight loop of
 *       inserts into its events table.
 * Threads: one.
 * Makes a fresh database as tenderd does (WAL, synchronous = NORMAL, unless
 * --sync-full), applies the schema file given (schema/001_init.sql), then
 * inserts ROWS device log lines -- the rows tenderd stores for tender-sim's
 * logs: explicit id, device, ts, type 1, "hello from sim N" -- with the
 * statement tenderd uses, one BEGIN IMMEDIATE ... COMMIT per BATCH rows.
 * Prints "rows N seconds S rate R cpu C" on stdout (C: CPU seconds of the loop).
 *
 * Usage: sqlite_ceiling DB SCHEMA.sql ROWS [DEVICES [BATCH]] [--sync-full] */

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#define CEIL_DEVICE_BASE	0x3100000000000000ULL
#define CEIL_SCHEMA_MAX		(1024 * 1024)

static double ceil__clock(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t ceil__now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ceil__parse(const char *what, const char *s, long long min, long long max,
		       long long *out)
{
	char *end;

	errno = 0;
	*out = strtoll(s, &end, 10);
	if (errno || end == s || *end || *out < min || *out > max) {
		fprintf(stderr, "sqlite_ceiling: %s: '%s' is not an integer from %lld to %lld\n",
			what, s, min, max);
		return -1;
	}
	return 0;
}

/* Owned: caller frees. */
static char *ceil__read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL;
	size_t n;

	if (!f) {
		fprintf(stderr, "sqlite_ceiling: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	buf = malloc(CEIL_SCHEMA_MAX + 1);
	if (buf) {
		n = fread(buf, 1, CEIL_SCHEMA_MAX, f);
		buf[n] = '\0';
	}
	fclose(f);
	return buf;
}

static int ceil__exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
		return 0;
	fprintf(stderr, "sqlite_ceiling: %.60s...: %s\n", sql, msg ? msg : "error");
	sqlite3_free(msg);
	return -1;
}

/* The timed loop: rows inserts, a commit every batch. */
static int ceil__insert(sqlite3 *db, sqlite3_stmt *ins, long long rows, long long devices,
			long long batch)
{
	char msg[64];
	int64_t ts = ceil__now_ms();

	for (long long i = 0; i < rows; i++) {
		int n;

		if (i % batch == 0 && ceil__exec(db, "BEGIN IMMEDIATE"))
			return -1;
		n = snprintf(msg, sizeof(msg), "hello from sim %lld", i / devices + 1);
		sqlite3_bind_int64(ins, 1, i + 1);
		sqlite3_bind_int64(ins, 2, (int64_t)(CEIL_DEVICE_BASE + (uint64_t)(i % devices)));
		sqlite3_bind_int64(ins, 3, ts);
		sqlite3_bind_int(ins, 4, 1);
		sqlite3_bind_text(ins, 5, msg, n, SQLITE_STATIC);
		if (sqlite3_step(ins) != SQLITE_DONE) {
			fprintf(stderr, "sqlite_ceiling: insert: %s\n", sqlite3_errmsg(db));
			return -1;
		}
		sqlite3_reset(ins);
		if ((i % batch == batch - 1 || i == rows - 1) && ceil__exec(db, "COMMIT"))
			return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	long long rows, devices = 100, batch = 1024;
	int sync_full = 0, nargs = 0;
	char *args[5], *schema = NULL;
	sqlite3 *db = NULL;
	sqlite3_stmt *ins = NULL;
	double t0, t1, c0, c1;
	int rc = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--sync-full"))
			sync_full = 1;
		else if (nargs < 5)
			args[nargs++] = argv[i];
		else
			nargs = 6;
	}
	if (nargs < 3 || nargs > 5) {
		fprintf(stderr, "Usage: sqlite_ceiling DB SCHEMA.sql ROWS [DEVICES [BATCH]] "
				"[--sync-full]\n");
		return 2;
	}
	if (ceil__parse("ROWS", args[2], 1, 1000000000, &rows) ||
	    (nargs > 3 && ceil__parse("DEVICES", args[3], 1, 1000000, &devices)) ||
	    (nargs > 4 && ceil__parse("BATCH", args[4], 1, 1000000, &batch)))
		return 2;
	schema = ceil__read_file(args[1]);
	if (!schema)
		goto out;
	if (sqlite3_open(args[0], &db) != SQLITE_OK) {
		fprintf(stderr, "sqlite_ceiling: %s: %s\n", args[0], sqlite3_errmsg(db));
		goto out;
	}
	if (ceil__exec(db, "PRAGMA journal_mode = WAL") ||
	    ceil__exec(db, sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL") ||
	    ceil__exec(db, "BEGIN") || ceil__exec(db, schema) || ceil__exec(db, "COMMIT"))
		goto out;
	if (sqlite3_prepare_v3(db, "INSERT INTO events (id, device, ts, type, msg) "
			       "VALUES (?, ?, ?, ?, ?)", -1, SQLITE_PREPARE_PERSISTENT, &ins,
			       NULL) != SQLITE_OK) {
		fprintf(stderr, "sqlite_ceiling: prepare: %s\n", sqlite3_errmsg(db));
		goto out;
	}
	t0 = ceil__clock(CLOCK_MONOTONIC);
	c0 = ceil__clock(CLOCK_PROCESS_CPUTIME_ID);
	if (ceil__insert(db, ins, rows, devices, batch))
		goto out;
	t1 = ceil__clock(CLOCK_MONOTONIC);
	c1 = ceil__clock(CLOCK_PROCESS_CPUTIME_ID);
	printf("rows %lld seconds %.6f rate %.0f cpu %.6f\n", rows, t1 - t0,
	       (double)rows / (t1 - t0), c1 - c0);
	rc = 0;
out:
	sqlite3_finalize(ins);
	sqlite3_close(db);
	free(schema);
	return rc;
}

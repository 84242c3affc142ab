/* tests/integration/test_04_crash.c -- kill -9 during a burst of device logs,
 * restart: every event the API had shown is still there, unchanged, the
 * database passes PRAGMA integrity_check, and the device left online is
 * marked offline with a "Device disconnected" line. */
#define _GNU_SOURCE
#include <check.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define DEV "30000c2a690c77c5"

/* Every event the API shows now, as id -> msg (a JSON object). */
static json_t *snapshot(th_server *s)
{
	json_t *all = json_object();
	long long after = 0;
	char path[160], key[32];
	for (;;) {
		snprintf(path, sizeof path, "/v1/devices/" DEV "/logs?limit=1000&after=%lld", after);
		json_t *page = th_get_json(s, path, 200), *ev;
		size_t i;
		json_array_foreach(json_object_get(page, "events"), i, ev) {
			after = json_integer_value(json_object_get(ev, "id"));
			snprintf(key, sizeof key, "%lld", after);
			json_object_set(all, key, json_object_get(ev, "msg"));
		}
		int more = json_is_integer(json_object_get(page, "next_after"));
		json_decref(page);
		if (!more)
			return all;
	}
}

START_TEST(kill9_during_burst_loses_nothing_shown)
{
	th_server s;
	th_server_start(&s, "--log-rate 0");
	char *secret = th_register(&s, DEV, NULL);
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV,
			       "--secret", secret, "--log-rate", "3000", NULL };
	pid_t sim = th_spawn(argv, th_tmp(&s, "sim.out"));
	ck_assert_int_eq(th_wait_file(th_tmp(&s, "sim.out"), "welcome " DEV, 10000), 0);
	ck_assert_int_ge(th_wait_event(&s, DEV, "device", "hello from sim 500", 15000), 1);

	/* Read what the API shows while the burst goes on, then kill at once. */
	json_t *shown = snapshot(&s);
	ck_assert_int_ge((int)json_object_size(shown), 500);
	th_server_kill9(&s);
	kill(sim, SIGKILL);
	waitpid(sim, NULL, 0);

	sqlite3 *db;
	sqlite3_stmt *q;
	ck_assert_int_eq(sqlite3_open(th_tmp(&s, "tender.db"), &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(q), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(q, 0), "ok");
	sqlite3_finalize(q);
	sqlite3_close(db);

	th_server_restart(&s);
	json_t *after = snapshot(&s);
	const char *key;
	json_t *msg;
	json_object_foreach(shown, key, msg) {
		json_t *now = json_object_get(after, key);
		ck_assert_msg(now != NULL, "event %s was shown before the crash and is gone", key);
		ck_assert_str_eq(json_string_value(now), json_string_value(msg));
	}
	ck_assert_int_ge((int)json_object_size(after), (int)json_object_size(shown));
	/* The device the crash left "online" is offline, and its log says so. */
	json_t *d = th_get_json(&s, "/v1/devices/" DEV, 200);
	ck_assert(json_is_false(json_object_get(d, "online")));
	json_decref(d);
	ck_assert_int_eq(th_count_events(&s, DEV, "Device disconnected"), 1);
	/* New events get ids after every old one. */
	long long max_before = 0;
	json_object_foreach(after, key, msg)
		if (atoll(key) > max_before)
			max_before = atoll(key);
	char *const again[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV,
				"--secret", secret, "--log-count", "0", "--exit-when-done", NULL };
	ck_assert_int_eq(th_run(again, NULL, 20), 0);
	for (int tries = 0; th_count_events(&s, DEV, "Device connected") < 2 && tries < 100; tries++)
		usleep(50 * 1000);
	ck_assert_int_eq(th_count_events(&s, DEV, "Device connected"), 2);
	json_t *fresh = th_get_json(&s, "/v1/devices/" DEV "/logs?limit=3", 200);
	json_t *evs = json_object_get(fresh, "events");
	json_t *last = json_array_get(evs, json_array_size(evs) - 1);
	ck_assert_msg(json_integer_value(json_object_get(last, "id")) > max_before, "newest %s, before the restart %lld", json_dumps(fresh, 0), max_before);
	json_decref(fresh);
	json_decref(shown);
	json_decref(after);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(clean_stop_logs_disconnect_and_flushes)
{
	th_server s;
	th_server_start(&s, "--log-rate 0");
	char *secret = th_register(&s, DEV, NULL);
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV,
			       "--secret", secret, "--log-rate", "200", "--log-count", "100", NULL };
	pid_t sim = th_spawn(argv, th_tmp(&s, "sim.out"));
	ck_assert_int_ge(th_wait_event(&s, DEV, "device", "hello from sim 100", 15000), 1);
	ck_assert_int_eq(th_server_stop(&s), 0);
	/* The device was told why it was closed. */
	ck_assert_int_eq(th_wait_file(th_tmp(&s, "sim.out"), "closed " DEV " 1001 server shutting down",
				      5000), 0);
	kill(sim, SIGKILL);
	waitpid(sim, NULL, 0);
	th_server_restart(&s);
	ck_assert_int_eq(th_count_events(&s, DEV, "Device disconnected"), 1);
	ck_assert_int_eq(th_count_events(&s, DEV, "hello from sim 100"), 1);
	free(secret);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		kill9_during_burst_loses_nothing_shown,
		clean_stop_logs_disconnect_and_flushes,
	};
	return th_run_tests("04_crash", 120, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

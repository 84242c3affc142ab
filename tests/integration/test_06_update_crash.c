/* tests/integration/test_06_update_crash.c -- kill -9 of tenderd at random
 * points of a rollout over 200 simulated devices, restarted each time: every
 * device ends completed, blocked or failed with a reason; none is triggered
 * twice for the same attempt; no incompatible or unknown part is ever
 * offered an update; the database passes PRAGMA integrity_check. */
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

#define NDEV 200
#define KILLS 5

/* Device i: a W25Q128FV (eligible) for i % 4 < 2, an S25FL127S (blocked)
 * for 2, an unknown part (blocked) for 3. */
static const char *jedec_of(int i)
{
	return i % 4 < 2 ? "ef4018" : i % 4 == 2 ? "012018" : "c2ffff";
}

START_TEST(kill9_at_random_points_of_a_rollout)
{
	th_server s;
	char path[700];
	th_server_start(&s, NULL);
	unsigned seed = (unsigned)getpid();

	/* Register the fleet and write tender-sim's credentials file. */
	snprintf(path, sizeof path, "%s/creds", s.dir);
	FILE *creds = fopen(path, "w");
	ck_assert_ptr_nonnull(creds);
	for (int i = 0; i < NDEV; i++) {
		char id[17];
		snprintf(id, sizeof id, "00000000000a%04x", (unsigned)i);
		char *secret = th_register(&s, id, "fleet");
		fprintf(creds, "%s %s imp003 36.10 %s 16777216\n", id, secret, jedec_of(i));
		free(secret);
	}
	fclose(creds);
	static unsigned char image[200000];
	for (size_t i = 0; i < sizeof image; i++)
		image[i] = (unsigned char)(i * 31);
	th_resp r;
	th_upload_firmware(&s, "{\"version\":\"36.11\",\"hw\":[\"imp003\"],\"requirements\":{\"flash\":"
			   "{\"uniform_erase\":[4096,65536]}}}", image, sizeof image, &r);
	ck_assert_int_eq(r.status, 201);
	long long fw = json_integer_value(json_object_get(r.json, "id"));
	th_resp_free(&r);

	const char *out = th_tmp(&s, "sim.out");
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--creds", path,
			       "--update", "accept", "--update-chunk", "16384", "--update-delay", "60",
			       "--reconnect", NULL };
	pid_t sim = th_spawn(argv, out);
	for (int waited = 0; th_metric(&s, "tender_devices_connected") < NDEV; waited += 100) {
		ck_assert_msg(waited < 30000, "only %lld devices connected",
			      th_metric(&s, "tender_devices_connected"));
		usleep(100 * 1000);
	}

	char body[256];
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"group\":\"fleet\",\"start\":true,"
		 "\"max_concurrent\":40,\"retry_limit\":5,\"retry_backoff\":1,"
		 "\"deadlines\":{\"trigger\":15,\"download\":15,\"install\":15}}", fw);
	th_http(&s, "POST", "/v1/rollouts", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "%ld %s", r.status, r.body);
	long long rid = json_integer_value(json_object_get(r.json, "id"));
	th_resp_free(&r);

	for (int k = 0; k < KILLS; k++) {
		usleep((useconds_t)(200 + rand_r(&seed) % 1500) * 1000);
		th_server_kill9(&s);
		usleep((useconds_t)(rand_r(&seed) % 500) * 1000);
		th_server_restart_same_ports(&s);
	}

	char rpath[64];
	snprintf(rpath, sizeof rpath, "/v1/rollouts/%lld", rid);
	for (int waited = 0;; waited += 250) {
		json_t *ro = th_get_json(&s, rpath, 200);
		int done = strcmp(json_string_value(json_object_get(ro, "state")), "completed") == 0;
		char *text = json_dumps(ro, 0);
		json_decref(ro);
		if (done) {
			free(text);
			break;
		}
		ck_assert_msg(waited < 120000, "the rollout did not complete: %s", text);
		free(text);
		usleep(250 * 1000);
	}

	/* Every device ended with a reason; attempts match the triggers logged. */
	snprintf(rpath, sizeof rpath, "/v1/rollouts/%lld/plan", rid);
	json_t *plan = th_get_json(&s, rpath, 200), *d;
	size_t i;
	char *offers = th_read_file(out);
	json_array_foreach(json_object_get(plan, "devices"), i, d) {
		const char *id = json_string_value(json_object_get(d, "id"));
		const char *state = json_string_value(json_object_get(d, "state"));
		int n = (int)strtol(id + 12, NULL, 16);
		ck_assert_msg(strcmp(state, "completed") == 0 || strcmp(state, "blocked") == 0 ||
			      strcmp(state, "failed") == 0, "device %s ended %s", id, state);
		ck_assert_msg(json_is_string(json_object_get(d, "state_reason")), "device %s: no reason", id);
		int attempts = (int)json_integer_value(json_object_get(d, "attempts"));
		ck_assert_int_eq(th_count_events(&s, id, "firmware update triggered"), attempts);
		char needle[64];
		snprintf(needle, sizeof needle, "update %s ", id);
		if (n % 4 >= 2) {
			/* Incompatible or unknown: blocked, and never offered anything. */
			ck_assert_str_eq(state, "blocked");
			ck_assert_int_eq(attempts, 0);
			ck_assert_msg(strstr(offers, needle) == NULL, "device %s (%s) was offered an update",
				      id, jedec_of(n));
		} else {
			ck_assert_msg(strcmp(state, "blocked") != 0, "device %s blocked: %s", id,
				      json_string_value(json_object_get(d, "state_reason")));
		}
	}
	free(offers);
	json_decref(plan);

	ck_assert_int_eq(th_server_stop(&s), 0);
	sqlite3 *db;
	sqlite3_stmt *q;
	ck_assert_int_eq(sqlite3_open(th_tmp(&s, "tender.db"), &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(q), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(q, 0), "ok");
	sqlite3_finalize(q);
	sqlite3_close(db);
	kill(sim, SIGKILL);
	waitpid(sim, NULL, 0);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		kill9_at_random_points_of_a_rollout,
	};
	return th_run_tests("06_update_crash", 240, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

/* tests/integration/test_01_basics.c -- tenderd starts on free ports, answers
 * /healthz and /metrics, creates and reuses its admin token, stops cleanly. */
#define _GNU_SOURCE
#include <check.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

START_TEST(starts_on_free_ports_and_answers_healthz)
{
	th_server s;
	th_resp r;

	th_server_start(&s, NULL);
	ck_assert_int_ne(s.http_port, s.device_port);
	th_http(&s, "GET", "/healthz", NULL, NULL, "", &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "status")), "ok");
	th_resp_free(&r);
	ck_assert_int_eq(th_server_stop(&s), 0);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(metrics_are_prometheus_text)
{
	th_server s;
	th_resp r;

	th_server_start(&s, NULL);
	th_http(&s, "GET", "/metrics", NULL, NULL, "", &r);
	ck_assert_int_eq(r.status, 200);
	ck_assert_ptr_nonnull(strstr(r.content_type, "text/plain"));
	ck_assert_ptr_nonnull(strstr(r.body, "# TYPE tender_devices_connected gauge\n"));
	ck_assert_ptr_nonnull(strstr(r.body, "tender_devices_connected 0\n"));
	ck_assert_ptr_nonnull(strstr(r.body, "# TYPE tender_frames_in_total counter\n"));
	ck_assert_ptr_nonnull(strstr(r.body, "tender_events_written_total "));
	ck_assert_ptr_nonnull(strstr(r.body, "tender_errors_total{kind=\"bad_json\"} 0\n"));
	th_resp_free(&r);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(admin_token_created_0600_and_reused)
{
	th_server s;
	struct stat st;
	char first[128];

	th_server_start(&s, NULL);
	ck_assert_int_eq(stat(th_tmp(&s, "admin.token"), &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	ck_assert_int_ge((int)strlen(s.token), 40);
	snprintf(first, sizeof first, "%s", s.token);
	/* The token works, a wrong one does not, and none at all does not. */
	json_t *list = th_get_json(&s, "/v1/devices", 200);
	json_decref(list);
	th_resp r;
	th_http(&s, "GET", "/v1/devices", NULL, NULL, "tdt_wrong", &r);
	ck_assert_int_eq(r.status, 401);
	th_resp_free(&r);
	ck_assert_int_eq(th_server_stop(&s), 0);
	/* Restarted on the same data dir: the same token still works. */
	th_server_restart(&s);
	ck_assert_str_eq(s.token, first);
	list = th_get_json(&s, "/v1/devices", 200);
	json_decref(list);
	/* The token is stored hashed, never in clear. */
	sqlite3 *db;
	sqlite3_stmt *q;
	ck_assert_int_eq(sqlite3_open_v2(th_tmp(&s, "tender.db"), &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT hash FROM tokens", -1, &q, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(q), SQLITE_ROW);
	const char *hash = (const char *)sqlite3_column_text(q, 0);
	ck_assert_int_eq((int)strlen(hash), 64);
	ck_assert_ptr_null(strstr(hash, first));
	ck_assert_ptr_null(strstr(first, hash));
	sqlite3_finalize(q);
	sqlite3_close(db);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(admin_token_file_option)
{
	th_server s;
	char extra[600], path[] = "/tmp/tender-token-XXXXXX";
	int fd = mkstemp(path);
	const char *tok = "tdt_operator_chosen_token_0123456789abcdef\n";

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, tok, strlen(tok)), (int)strlen(tok));
	close(fd);
	snprintf(extra, sizeof extra, "--admin-token-file %s", path);
	/* The harness reads DATA_DIR/admin.token, which this start does not write:
	 * start by hand through the same helpers. */
	th_server_start(&s, extra);
	th_resp r;
	th_http(&s, "GET", "/v1/devices", NULL, NULL, "tdt_operator_chosen_token_0123456789abcdef", &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	unlink(path);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(stops_cleanly_on_sigint_and_sigterm)
{
	th_server s;

	th_server_start(&s, NULL);
	kill(s.pid, SIGINT);
	ck_assert_int_eq(th_wait_pid(s.pid, 15000), 0);
	s.pid = 0;
	ck_assert_int_eq(th_wait_file(s.log, "tenderd info: stopped", 1000), 0);
	th_server_restart(&s);
	ck_assert_int_eq(th_server_stop(&s), 0);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(help_and_bad_options)
{
	char *out = NULL;
	char *const help[] = { (char *)th_bin("tenderd"), "--help", NULL };
	ck_assert_int_eq(th_run(help, &out, 10), 0);
	ck_assert_ptr_nonnull(strstr(out, "--device-port"));
	ck_assert_ptr_nonnull(strstr(out, "--idle-timeout"));
	free(out);
	char *const bad[] = { (char *)th_bin("tenderd"), "--device-port", "70000", NULL };
	ck_assert_int_eq(th_run(bad, NULL, 10), 2);
	char *const unknown[] = { (char *)th_bin("tenderd"), "--frobnicate", NULL };
	ck_assert_int_eq(th_run(unknown, NULL, 10), 2);
}
END_TEST

START_TEST(port_in_use_is_a_clear_error)
{
	th_server s;
	char cmd[700], port[16];

	th_server_start(&s, NULL);
	snprintf(port, sizeof port, "%d", s.http_port);
	char dir[] = "/tmp/tender-test2-XXXXXX";
	ck_assert_ptr_nonnull(mkdtemp(dir));
	char *out = NULL;
	snprintf(cmd, sizeof cmd, "'%s' --data-dir %s --device-port 0 --http-port %s 2>&1",
		 th_bin("tenderd"), dir, port);
	char *const argv[] = { "/bin/sh", "-c", cmd, NULL };
	ck_assert_int_eq(th_run(argv, &out, 15), 1);
	ck_assert_ptr_nonnull(strstr(out, "cannot listen"));
	free(out);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		starts_on_free_ports_and_answers_healthz,
		metrics_are_prometheus_text,
		admin_token_created_0600_and_reused,
		admin_token_file_option,
		stops_cleanly_on_sigint_and_sigterm,
		help_and_bad_options,
		port_in_use_is_a_clear_error,
	};
	return th_run_tests("01_basics", 60, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

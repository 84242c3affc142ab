/* tests/integration/test_04_crash.c -- kill -9 during a burst of device logs,
 * restart: every event the API had shown is still there, unchanged, the
 * database passes PRAGMA integrity_check, and the device left online is
 * marked offline with a "Device disconnected" line.  And kill -9 while agents
 * save state for every message under load: every save an agent acknowledged
 * to its device (it replies only after server.save returned) is on disk. */
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

static void assert_integrity_ok(th_server *s)
{
	sqlite3 *db;
	sqlite3_stmt *q;
	ck_assert_int_eq(sqlite3_open(th_tmp(s, "tender.db"), &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(q), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(q, 0), "ok");
	sqlite3_finalize(q);
	sqlite3_close(db);
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

	assert_integrity_ok(&s);

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

/* Each device's agent counts its pings and saves {n, seq} before it answers
 * pong {seq, n}: a pong the device got is a save that was committed. */
#define SAVE_NDEV 20
static const char *saving_agent =
	"local st = server.load() or {n = 0, seq = 0}\n"
	"device.on('ping', function(d)\n"
	"  st.n = st.n + 1\n"
	"  st.seq = d.seq\n"
	"  server.save(st)\n"
	"  device.send('pong', {seq = d.seq, n = st.n})\n"
	"end)\n";

static void save_dev_id(int i, char id[17])
{
	snprintf(id, 17, "00000000000c%04x", (unsigned)i);
}

/* The highest pong seq each device got, from tender-sim's "msg ID pong DATA"
 * lines; returns how many pongs there were. */
static int acked_seqs(const char *out, long long acked[SAVE_NDEV])
{
	int n = 0;
	for (const char *line = out; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		char id[17];
		if (sscanf(line, "msg %16s pong", id) != 1)
			continue;
		const char *data = strstr(line, " pong ");
		json_t *j = json_loadb(data + 6, strcspn(data + 6, "\n"), 0, NULL);
		ck_assert_msg(j != NULL, "unparsable pong: %.*s", (int)strcspn(line, "\n"), line);
		long long seq = json_integer_value(json_object_get(j, "seq"));
		json_decref(j);
		int dev = (int)strtol(id + 12, NULL, 16);
		ck_assert_int_lt(dev, SAVE_NDEV);
		if (seq > acked[dev])
			acked[dev] = seq;
		n++;
	}
	return n;
}

static int count_lines(const char *path, const char *needle)
{
	char *text = th_read_file(path);
	int n = 0;
	for (const char *p = text; p && (p = strstr(p, needle)); p++)
		n++;
	free(text);
	return n;
}

START_TEST(kill9_keeps_every_acknowledged_save)
{
	th_server s;
	th_resp r;
	char creds[700];
	th_server_start(&s, "--log-rate 0");
	th_http(&s, "PUT", "/v1/groups/savers/agent", "text/plain", saving_agent, NULL, &r);
	ck_assert_msg(r.status == 200, "deploy: %ld %s", r.status, r.body);
	th_resp_free(&r);
	snprintf(creds, sizeof creds, "%s/creds", s.dir);
	FILE *f = fopen(creds, "w");
	ck_assert_ptr_nonnull(f);
	for (int i = 0; i < SAVE_NDEV; i++) {
		char id[17];
		save_dev_id(i, id);
		char *secret = th_register(&s, id, "savers");
		fprintf(f, "%s %s\n", id, secret);
		free(secret);
	}
	fclose(f);

	/* Load: every device pings 25 times a second and logs 100 lines a
	 * second, so saves share their transactions with a stream of events. */
	const char *out = th_tmp(&s, "savers.out");
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--creds", creds,
			       "--msg-rate", "25", "--log-rate", "100", NULL };
	pid_t sim = th_spawn(argv, out);
	for (int waited = 0; count_lines(out, " pong ") < 1000; waited += 100) {
		ck_assert_msg(waited < 60000, "only %d pongs", count_lines(out, " pong "));
		usleep(100 * 1000);
	}
	th_server_kill9(&s);
	/* Without --reconnect tender-sim exits once every device is gone, with
	 * its output flushed. */
	if (th_wait_pid(sim, 20000) < 0) {
		kill(sim, SIGKILL);
		waitpid(sim, NULL, 0);
	}
	char *text = th_read_file(out);
	long long acked[SAVE_NDEV] = { 0 };
	int pongs = acked_seqs(text, acked);
	free(text);
	ck_assert_int_ge(pongs, 1000);

	assert_integrity_ok(&s);
	sqlite3 *db;
	sqlite3_stmt *q;
	long long saved_n[SAVE_NDEV] = { 0 };
	ck_assert_int_eq(sqlite3_open(th_tmp(&s, "tender.db"), &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT saved FROM agent_state WHERE device = ?", -1, &q,
					    NULL), SQLITE_OK);
	for (int i = 0; i < SAVE_NDEV; i++) {
		char id[17];
		save_dev_id(i, id);
		sqlite3_bind_text(q, 1, id, -1, SQLITE_TRANSIENT);
		int rc = sqlite3_step(q);
		ck_assert_msg(rc == SQLITE_ROW || acked[i] == 0, "device %s: acked save %lld, none on disk",
			      id, acked[i]);
		if (rc == SQLITE_ROW) {
			json_t *j = json_loads((const char *)sqlite3_column_text(q, 0), 0, NULL);
			ck_assert_ptr_nonnull(j);
			long long seq = json_integer_value(json_object_get(j, "seq"));
			saved_n[i] = json_integer_value(json_object_get(j, "n"));
			json_decref(j);
			ck_assert_msg(seq >= acked[i], "device %s: save of seq %lld was acknowledged, "
				      "the disk has %lld", id, acked[i], seq);
			/* One save per message, in order: the count and the seq agree. */
			ck_assert_int_eq(saved_n[i], seq);
		}
		sqlite3_reset(q);
	}
	sqlite3_finalize(q);
	sqlite3_close(db);

	/* After the restart each agent goes on from its saved count. */
	th_server_restart(&s);
	char id0[17];
	save_dev_id(0, id0);
	char *secret0 = NULL;
	text = th_read_file(creds);
	char *line = strstr(text, id0);
	ck_assert_ptr_nonnull(line);
	secret0 = strndup(line + 17, strcspn(line + 17, "\n"));
	free(text);
	const char *out2 = th_tmp(&s, "again.out");
	char *const again[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", id0,
				"--secret", secret0, "--msg-count", "1", "--expect", "pong",
				"--exit-when-done", NULL };
	pid_t p = th_spawn(again, out2);
	ck_assert_int_eq(th_wait_pid(p, 30000), 0);
	text = th_read_file(out2);
	char want[64];
	snprintf(want, sizeof want, "\"n\":%lld", saved_n[0] + 1);
	ck_assert_msg(strstr(text, want) != NULL, "after the restart, wanted %s in: %s", want, text);
	free(text);
	free(secret0);
	ck_assert_int_eq(th_server_stop(&s), 0);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		kill9_during_burst_loses_nothing_shown,
		clean_stop_logs_disconnect_and_flushes,
		kill9_keeps_every_acknowledged_save,
	};
	return th_run_tests("04_crash", 120, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

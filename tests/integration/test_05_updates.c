/* tests/integration/test_05_updates.c -- never brick: the seed report as a
 * test (an S25FL127S and a W25Q128FV in one rollout of firmware that needs
 * uniform 4 KB + 64 KB erase), the flash-parts table API, the firmware store,
 * a rollout pausing itself on failures, and the unknown-flash override. */
#define _GNU_SOURCE
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define S25 "30000c2a690c77c5"  /* the imp003 of the seed report */
#define W25 "30000c2a690c77c6"

#define NEEDS_4K_64K "{\"flash\":{\"uniform_erase\":[4096,65536],\"min_size\":524288}}"

static unsigned char image[300000];

static long long upload(th_server *s, const char *version, const char *hw, const char *req)
{
	char md[512];
	th_resp r;
	for (size_t i = 0; i < sizeof image; i++)
		image[i] = (unsigned char)(i * 7 + version[0]);
	snprintf(md, sizeof md, "{\"version\":\"%s\",\"hw\":[\"%s\"],\"requirements\":%s}", version, hw, req);
	th_upload_firmware(s, md, image, sizeof image, &r);
	ck_assert_msg(r.status == 201, "upload: %ld %s", r.status, r.body);
	long long id = json_integer_value(json_object_get(r.json, "id"));
	ck_assert_int_eq(json_integer_value(json_object_get(r.json, "size")), sizeof image);
	ck_assert_int_eq((int)strlen(json_string_value(json_object_get(r.json, "sha256"))), 64);
	th_resp_free(&r);
	return id;
}

/* A simulated device that takes updates; returns its pid.  `extra` is one
 * more option with its value ("--update-drop-after 100000"), or NULL. */
static pid_t device_ex(th_server *s, const char *id, const char *secret, const char *jedec,
		       const char *mode, const char *out, const char *extra_opt, const char *extra_val)
{
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s->ws_url, "--id", (char *)id,
			       "--secret", (char *)secret, "--hw", "imp003", "--fw", "36.10",
			       "--jedec", (char *)jedec, "--flash-size", "16777216", "--update", (char *)mode,
			       "--update-chunk", "32768", "--reconnect", (char *)extra_opt, (char *)extra_val, NULL };
	pid_t pid = th_spawn(argv, out);
	char line[64];
	snprintf(line, sizeof line, "welcome %s", id);
	ck_assert_int_eq(th_wait_file(out, line, 10000), 0);
	return pid;
}

static pid_t device(th_server *s, const char *id, const char *secret, const char *jedec, const char *mode,
		    const char *out)
{
	return device_ex(s, id, secret, jedec, mode, out, NULL, NULL);
}

static json_t *find_device(json_t *plan, const char *id)
{
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(plan, "devices"), i, d)
		if (strcmp(json_string_value(json_object_get(d, "id")), id) == 0)
			return d;
	return NULL;
}

static void wait_rollout_state(th_server *s, long long id, const char *state, int timeout_ms)
{
	char path[64];
	snprintf(path, sizeof path, "/v1/rollouts/%lld", id);
	for (int waited = 0;; waited += 100) {
		json_t *r = th_get_json(s, path, 200);
		int done = strcmp(json_string_value(json_object_get(r, "state")), state) == 0;
		char *text = json_dumps(r, 0);
		json_decref(r);
		if (done) {
			free(text);
			return;
		}
		ck_assert_msg(waited < timeout_ms, "rollout %lld never became %s: %s", id, state, text);
		free(text);
		usleep(100 * 1000);
	}
}

/* Creates a rollout (201) from a JSON body; returns its id. */
static long long rollout_create(th_server *s, const char *body)
{
	th_resp r;
	th_http(s, "POST", "/v1/rollouts", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "POST /v1/rollouts: %ld %s", r.status, r.body);
	long long id = json_integer_value(json_object_get(r.json, "id"));
	th_resp_free(&r);
	return id;
}

/* Waits until `n` of the rollout's devices are in `state`. */
static void wait_rollout_count(th_server *s, long long id, const char *state, json_int_t n, int timeout_ms)
{
	char path[64];
	snprintf(path, sizeof path, "/v1/rollouts/%lld", id);
	for (int waited = 0;; waited += 50) {
		json_t *ro = th_get_json(s, path, 200);
		json_int_t got = json_integer_value(json_object_get(json_object_get(ro, "counts"), state));
		json_decref(ro);
		if (got == n)
			return;
		ck_assert_msg(waited < timeout_ms, "rollout %lld: %lld devices %s, never %lld", id, (long long)got,
			      state, (long long)n);
		usleep(50 * 1000);
	}
}

START_TEST(seed_report_story)
{
	th_server s;
	th_server_start(&s, NULL);
	char *sec1 = th_register(&s, S25, NULL), *sec2 = th_register(&s, W25, NULL);
	long long fw = upload(&s, "36.11", "imp003", NEEDS_4K_64K);
	const char *out1 = th_tmp(&s, "s25.out"), *out2 = th_tmp(&s, "w25.out");
	pid_t d1 = device(&s, S25, sec1, "012018", "accept", out1);
	pid_t d2 = device(&s, W25, sec2, "ef4018", "accept", out2);
	ck_assert_int_eq(th_wait_online(&s, S25, 1, 5000), 0);
	ck_assert_int_eq(th_wait_online(&s, W25, 1, 5000), 0);

	char body[256];
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[\"%s\",\"%s\"]}", fw, S25, W25);
	th_resp r;
	th_http(&s, "POST", "/v1/rollouts", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "create: %ld %s", r.status, r.body);
	long long id = json_integer_value(json_object_get(r.json, "id"));
	ck_assert_str_eq(json_string_value(json_object_get(r.json, "state")), "paused");
	th_resp_free(&r);

	/* The dry run says who is blocked and why, before anything is sent. */
	char path[64];
	snprintf(path, sizeof path, "/v1/rollouts/%lld/plan", id);
	json_t *plan = th_get_json(&s, path, 200);
	json_t *p1 = find_device(plan, S25), *p2 = find_device(plan, W25);
	ck_assert_ptr_nonnull(p1);
	ck_assert_ptr_nonnull(p2);
	ck_assert_str_eq(json_string_value(json_object_get(p1, "decision")), "blocked");
	const char *why = "flash S25FL127S (JEDEC 01 20 18) has 4 KB erase in only 16 of 4096 4 KB blocks; "
			  "firmware 36.11 needs 4 KB and 64 KB erase across the whole chip, at least 512 KB";
	ck_assert_msg(strncmp(json_string_value(json_object_get(p1, "reason")), why, strlen(why)) == 0,
		      "%s", json_string_value(json_object_get(p1, "reason")));
	ck_assert_str_eq(json_string_value(json_object_get(p2, "decision")), "eligible");
	ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(p2, "reason")), "W25Q128FV"));
	json_decref(plan);

	snprintf(path, sizeof path, "/v1/rollouts/%lld/resume", id);
	th_http(&s, "POST", path, NULL, "", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	wait_rollout_state(&s, id, "completed", 30000);

	ck_assert_int_ge(th_wait_event(&s, W25, "status", "firmware update triggered", 1000), 1);
	ck_assert_int_ge(th_wait_event(&s, W25, "status", "firmware update completed: 36.10 -> 36.11", 1000), 1);
	json_t *d = th_get_json(&s, "/v1/devices/" W25, 200);
	ck_assert_str_eq(json_string_value(json_object_get(d, "fw")), "36.11");
	json_decref(d);
	/* The S25FL127S never saw an offer, and its log says exactly why. */
	json_t *page = th_get_json(&s, "/v1/devices/" S25 "/logs", 200), *ev;
	size_t k;
	int blocked_logged = 0;
	json_array_foreach(json_object_get(page, "events"), k, ev)
		blocked_logged |= strncmp(json_string_value(json_object_get(ev, "msg")), "firmware update blocked: ",
					  25) == 0 &&
				  strncmp(json_string_value(json_object_get(ev, "msg")) + 25, why, strlen(why)) == 0;
	json_decref(page);
	ck_assert_msg(blocked_logged, "the S25FL127S's log does not say why it was blocked");
	ck_assert_int_eq(th_count_events(&s, S25, "firmware update triggered"), 0);
	char *text = th_read_file(out1);
	ck_assert_msg(strstr(text, "update " S25) == NULL, "the S25FL127S was offered an update: %s", text);
	free(text);
	ck_assert_int_eq(th_count_events(&s, W25, "firmware update triggered"), 1);
	snprintf(path, sizeof path, "/v1/rollouts/%lld", id);
	json_t *ro = th_get_json(&s, path, 200);
	json_t *counts = json_object_get(ro, "counts");
	ck_assert_int_eq(json_integer_value(json_object_get(counts, "completed")), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(counts, "blocked")), 1);
	json_decref(ro);
	/* The plan says how the completed one ended, whole. */
	snprintf(path, sizeof path, "/v1/rollouts/%lld/plan", id);
	json_t *done_plan = th_get_json(&s, path, 200), *pd;
	size_t pi;
	int reason_seen = 0;
	json_array_foreach(json_object_get(done_plan, "devices"), pi, pd)
		if (strcmp(json_string_value(json_object_get(pd, "id")), W25) == 0) {
			ck_assert_str_eq(json_string_value(json_object_get(pd, "state_reason")), "completed: 36.10 -> 36.11");
			reason_seen = 1;
		}
	ck_assert(reason_seen);
	json_decref(done_plan);

	kill(d1, SIGKILL);
	kill(d2, SIGKILL);
	waitpid(d1, NULL, 0);
	waitpid(d2, NULL, 0);
	free(sec1);
	free(sec2);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(failures_pause_the_rollout_before_the_next_stage)
{
	th_server s;
	char ids[4][17], *secrets[4], outs[4][32], devs[512] = "";
	pid_t pids[4];
	th_server_start(&s, NULL);
	long long fw = upload(&s, "36.12", "imp003", NEEDS_4K_64K);
	for (int i = 0; i < 4; i++) {
		snprintf(ids[i], sizeof ids[i], "00000000000001%02x", (unsigned char)i);
		secrets[i] = th_register(&s, ids[i], NULL);
		snprintf(outs[i], sizeof outs[i], "dev%d.out", i);
		pids[i] = device(&s, ids[i], secrets[i], "ef4018", "fail-install", th_tmp(&s, outs[i]));
		snprintf(devs + strlen(devs), sizeof devs - strlen(devs), "%s\"%s\"", i ? "," : "", ids[i]);
	}
	char body[800];
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[%s],\"stages\":[25,100],"
		 "\"retry_limit\":0,\"failure_threshold\":0,\"start\":true}", fw, devs);
	th_resp r;
	th_http(&s, "POST", "/v1/rollouts", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "create: %ld %s", r.status, r.body);
	long long id = json_integer_value(json_object_get(r.json, "id"));
	th_resp_free(&r);
	wait_rollout_state(&s, id, "paused", 30000);
	char path[64];
	snprintf(path, sizeof path, "/v1/rollouts/%lld", id);
	json_t *ro = th_get_json(&s, path, 200);
	ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(ro, "reason")),
				     "paused automatically: 1 of 1 devices in stage 1 failed"));
	ck_assert_int_eq(json_integer_value(json_object_get(ro, "stage")), 1);
	json_decref(ro);
	ck_assert_int_ge(th_wait_event(&s, ids[0], "status",
				       "firmware update failed: the device reported: simulated install failure "
				       "(attempt 1 of 1; giving up)", 2000), 1);
	/* Stage 2 never started: nobody else was offered anything. */
	sleep(1);
	for (int i = 1; i < 4; i++) {
		char *text = th_read_file(th_tmp(&s, outs[i]));
		ck_assert_msg(strstr(text, "update ") == NULL, "device %d was offered an update", i);
		free(text);
		ck_assert_int_eq(th_count_events(&s, ids[i], "firmware update triggered"), 0);
	}
	for (int i = 0; i < 4; i++) {
		kill(pids[i], SIGKILL);
		waitpid(pids[i], NULL, 0);
		free(secrets[i]);
	}
	th_server_cleanup(&s);
}
END_TEST

START_TEST(unknown_flash_blocked_unless_overridden)
{
	th_server s;
	th_server_start(&s, NULL);
	char *sec = th_register(&s, W25, NULL);
	long long fw1 = upload(&s, "40.1", "imp003", NEEDS_4K_64K);
	pid_t d = device(&s, W25, sec, "c2ffff", "accept", th_tmp(&s, "d.out"));
	char body[256];
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[\"%s\"],\"start\":true}", fw1, W25);
	th_resp r;
	th_http(&s, "POST", "/v1/rollouts", NULL, body, NULL, &r);
	ck_assert_int_eq(r.status, 201);
	th_resp_free(&r);
	ck_assert_int_ge(th_wait_event(&s, W25, "status",
				       "firmware update blocked: flash JEDEC C2 FF FF is not in the flash-parts "
				       "table and the device sent no SFDP; firmware 40.1 needs 4 KB and 64 KB erase "
				       "across the whole chip, at least 512 KB", 10000), 1);
	/* An operator who knows better says so, and the log keeps it. */
	long long fw2 = upload(&s, "40.2", "imp003", NEEDS_4K_64K);
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[\"%s\"],\"start\":true,"
		 "\"allow_unknown_flash\":true}", fw2, W25);
	th_http(&s, "POST", "/v1/rollouts", NULL, body, NULL, &r);
	ck_assert_int_eq(r.status, 201);
	long long id = json_integer_value(json_object_get(r.json, "id"));
	th_resp_free(&r);
	wait_rollout_state(&s, id, "completed", 30000);
	ck_assert_int_ge(th_wait_event(&s, W25, "status", "firmware update completed: 36.10 -> 40.2", 1000), 1);
	json_t *page = th_get_json(&s, "/v1/devices/" W25 "/logs?limit=50", 200), *ev;
	size_t i;
	int override = 0;
	json_array_foreach(json_object_get(page, "events"), i, ev)
		override |= strncmp(json_string_value(json_object_get(ev, "msg")),
				    "firmware update allowed despite unknown flash (operator override)", 65) == 0;
	json_decref(page);
	ck_assert_msg(override, "the override is not in the device's log");
	kill(d, SIGKILL);
	waitpid(d, NULL, 0);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(flash_parts_and_firmware_api)
{
	th_server s;
	th_resp r;
	th_server_start(&s, NULL);
	/* The seed table is there. */
	json_t *parts = th_get_json(&s, "/v1/flash-parts/012018", 200);
	char *text = json_dumps(parts, 0);
	ck_assert_msg(strstr(text, "S25FL127S") != NULL, "%s", text);
	free(text);
	json_decref(parts);
	/* A bad import names its lines and imports nothing. */
	const char *csv = "vendor,part,jedec_mfr,jedec_dev,size_bytes,uniform_4k_erase,uniform_64k_erase,"
			  "erase_layouts,shares_id_with,source,notes\n"
			  "Acme,GOOD1,0xAA,0x0101,1048576,yes,yes,4K*256 @0x20;64K*16 @0xD8,,test,\n"
			  "Acme,BAD2,0xAA,0x0102,1048576,maybe,yes,4K*256 @0x20;64K*16 @0xD8,,test,\n";
	th_http(&s, "POST", "/v1/flash-parts/import", "text/csv", csv, NULL, &r);
	ck_assert_msg(r.status == 400, "%ld %s", r.status, r.body);
	json_t *errors = json_object_get(json_object_get(r.json, "error"), "errors");
	ck_assert_int_ge((int)json_array_size(errors), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(errors, 0), "line")), 3);
	th_resp_free(&r);
	th_http(&s, "GET", "/v1/flash-parts/aa0101", NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);
	/* A good one lands whole. */
	const char *good = "vendor,part,jedec_mfr,jedec_dev,size_bytes,uniform_4k_erase,uniform_64k_erase,"
			   "erase_layouts,shares_id_with,source,notes\n"
			   "Acme,GOOD1,0xAA,0x0101,1048576,yes,yes,4K*256 @0x20;64K*16 @0xD8,,test,\n";
	th_http(&s, "POST", "/v1/flash-parts/import", "text/csv", good, NULL, &r);
	ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
	th_resp_free(&r);
	parts = th_get_json(&s, "/v1/flash-parts/aa0101", 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(parts, "parts")), 1);
	json_decref(parts);

	/* Firmware: stored with its SHA-256; a second upload of the version is refused. */
	long long fw = upload(&s, "9.9", "imp003", NEEDS_4K_64K);
	char md[] = "{\"version\":\"9.9\",\"hw\":[\"imp003\"]}";
	th_upload_firmware(&s, md, image, 100, &r);
	ck_assert_int_eq(r.status, 409);
	th_resp_free(&r);
	th_upload_firmware(&s, "{\"version\":\"9.10\"}", image, 100, &r);
	ck_assert_int_eq(r.status, 400);
	th_resp_free(&r);
	th_upload_firmware(&s, "{\"version\":\"9.11\",\"hw\":[\"x\"],\"requirements\":{\"flash\":"
			   "{\"uniform_erase\":[3000]}}}", image, 100, &r);
	ck_assert_int_eq(r.status, 400);
	th_resp_free(&r);
	char path[64];
	snprintf(path, sizeof path, "/v1/firmware/%lld", fw);
	json_t *f = th_get_json(&s, path, 200);
	ck_assert_str_eq(json_string_value(json_object_get(f, "version")), "9.9");
	json_decref(f);

	/* Each part's verdict against that firmware, from the table alone. */
	snprintf(path, sizeof path, "/v1/flash-parts?firmware=%lld", fw);
	parts = th_get_json(&s, path, 200);
	size_t i;
	json_t *p;
	int seen = 0;
	json_array_foreach(json_object_get(parts, "parts"), i, p) {
		const char *name = json_string_value(json_object_get(p, "part"));
		json_t *v = json_object_get(p, "verdict");
		const char *decision = json_string_value(json_object_get(v, "decision"));
		const char *reason = json_string_value(json_object_get(v, "reason"));
		ck_assert_msg(decision && reason, "no verdict for %s", name);
		if (strcmp(name, "S25FL127S") == 0) {
			ck_assert_str_eq(decision, "blocked");
			ck_assert_msg(strstr(reason, "has 4 KB erase in only 16 of 4096 4 KB blocks") != NULL, "%s", reason);
			seen |= 1;
		}
		if (strcmp(name, "GOOD1") == 0) {
			ck_assert_str_eq(decision, "compatible");
			seen |= 2;
		}
	}
	ck_assert_int_eq(seen, 3);
	json_decref(parts);
	th_http(&s, "GET", "/v1/flash-parts?firmware=999", NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);
	th_http(&s, "GET", "/v1/flash-parts?firmware=x", NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 400);
	th_resp_free(&r);
	th_http(&s, "POST", "/v1/firmware", NULL, "{}", NULL, &r);
	ck_assert_int_eq(r.status, 415);
	th_resp_free(&r);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(dropped_download_resumes_and_silent_device_times_out)
{
	th_server s;
	th_server_start(&s, NULL);
	char *sec1 = th_register(&s, S25 "", NULL), *sec2 = th_register(&s, W25, NULL);
	(void)sec1;
	long long fw = upload(&s, "50.1", "imp003", NEEDS_4K_64K);
	/* Loses its connection 100 KB into the download, comes back, resumes. */
	const char *out = th_tmp(&s, "drop.out");
	pid_t d = device_ex(&s, W25, sec2, "ef4018", "accept", out, "--update-drop-after", "100000");
	char body[256];
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[\"%s\"],\"start\":true}", fw, W25);
	th_resp r;
	th_http(&s, "POST", "/v1/rollouts", NULL, body, NULL, &r);
	ck_assert_int_eq(r.status, 201);
	long long id = json_integer_value(json_object_get(r.json, "id"));
	th_resp_free(&r);
	wait_rollout_state(&s, id, "completed", 30000);
	ck_assert_int_eq(th_count_events(&s, W25, "firmware update triggered"), 1);
	ck_assert_int_ge(th_count_events(&s, W25, "Device disconnected"), 2); /* the drop and the reboot */
	char *text = th_read_file(out);
	/* Offered twice (the second time to resume), with the same update id. */
	char *first = strstr(text, "update " W25 " "), *second = first ? strstr(first + 1, "update " W25 " ") : NULL;
	ck_assert_msg(first && second, "no re-offer after the drop: %s", text);
	ck_assert_int_eq(strncmp(first, second, 30), 0);
	free(text);
	kill(d, SIGKILL);
	waitpid(d, NULL, 0);

	/* A device that never acts on its offer fails the step at its deadline. */
	char *sec3 = th_register(&s, "30000c2a690c77c7", NULL);
	long long fw2 = upload(&s, "50.2", "imp003", NEEDS_4K_64K);
	d = device(&s, "30000c2a690c77c7", sec3, "ef4018", "ignore", th_tmp(&s, "silent.out"));
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[\"30000c2a690c77c7\"],\"start\":true,"
		 "\"retry_limit\":0,\"deadlines\":{\"trigger\":2}}", fw2);
	th_http(&s, "POST", "/v1/rollouts", NULL, body, NULL, &r);
	ck_assert_int_eq(r.status, 201);
	th_resp_free(&r);
	ck_assert_int_ge(th_wait_event(&s, "30000c2a690c77c7", "status",
				       "firmware update failed: no progress: still triggered after 2 s "
				       "(attempt 1 of 1; giving up)", 15000), 1);
	kill(d, SIGKILL);
	waitpid(d, NULL, 0);
	free(sec1);
	free(sec2);
	free(sec3);
	th_server_cleanup(&s);
}
END_TEST

/* An update already offered runs its course when its rollout is paused and
 * then aborted in the middle of the download: what the scheduler keeps in
 * memory of a download answers fetches as the database would.  Two devices
 * fetch the one image at once (shared, then released). */
START_TEST(offered_update_runs_its_course_through_pause_and_abort)
{
	th_server s;
	th_server_start(&s, NULL);
	const char *ida = "30000c2a690c77d1", *idb = "30000c2a690c77d2";
	char *seca = th_register(&s, ida, NULL), *secb = th_register(&s, idb, NULL);
	long long fw = upload(&s, "60.1", "imp003", NEEDS_4K_64K);
	/* About 10 chunks of 32 KB, 300 ms apart: 3 s of downloading. */
	pid_t da = device_ex(&s, ida, seca, "ef4018", "accept", th_tmp(&s, "slow-a.out"), "--update-delay", "300");
	pid_t db = device_ex(&s, idb, secb, "ef4018", "accept", th_tmp(&s, "slow-b.out"), "--update-delay", "300");
	char body[256], path[64];
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[\"%s\",\"%s\"],\"start\":true}", fw, ida, idb);
	long long id = rollout_create(&s, body);
	th_resp r;
	wait_rollout_count(&s, id, "downloading", 2, 10000); /* the two at once */
	snprintf(path, sizeof path, "/v1/rollouts/%lld/pause", id);
	th_http(&s, "POST", path, NULL, "", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	usleep(400 * 1000); /* a fetch or two while paused */
	snprintf(path, sizeof path, "/v1/rollouts/%lld/abort", id);
	th_http(&s, "POST", path, NULL, "", NULL, &r);
	ck_assert_int_eq(r.status, 200);
	th_resp_free(&r);
	ck_assert_int_ge(th_wait_event(&s, ida, "status", "firmware update completed: 36.10 -> 60.1", 20000), 1);
	ck_assert_int_ge(th_wait_event(&s, idb, "status", "firmware update completed: 36.10 -> 60.1", 20000), 1);
	ck_assert_int_eq(th_count_events(&s, ida, "firmware update triggered"), 1);
	ck_assert_int_eq(th_count_events(&s, idb, "firmware update triggered"), 1);
	wait_rollout_state(&s, id, "aborted", 1000);
	kill(da, SIGKILL);
	kill(db, SIGKILL);
	waitpid(da, NULL, 0);
	waitpid(db, NULL, 0);
	free(seca);
	free(secb);
	th_server_cleanup(&s);
}
END_TEST

/* --- a device driven by hand (tests/integration/wsclient.js) --------------- */

/* The hello of a W25Q128FV device running 36.10. */
static void node_hello(char *buf, size_t n, const char *id, const char *secret)
{
	snprintf(buf, n, "{\"type\":\"hello\",\"id\":\"%s\",\"secret\":\"%s\",\"hw\":\"imp003\","
		 "\"fw\":\"36.10\",\"flash\":{\"jedec\":\"ef4018\",\"size\":16777216}}", id, secret);
}

/* Lets a client waiting at `waitfile path` go on. */
static void node_go(const char *path)
{
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
}

/* Waits for the client to finish, which it must do with status 0; returns
 * what it printed (owned). */
static char *node_finish(pid_t node, const char *out)
{
	int status = -1;
	for (int waited = 0; waitpid(node, &status, WNOHANG) == 0; waited += 50) {
		ck_assert_msg(waited < 30000, "the node client never finished");
		usleep(50 * 1000);
	}
	char *text = th_read_file(out);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "node client: %s", text);
	return text;
}

/* Once a device is downloading, the device loop answers its fetches itself
 * (a grant from the scheduler), and the device's next transition takes that
 * back: a fetch after "downloaded" is refused as before, not answered from a
 * stale grant.  A fetch the grant does not cover (another id, an offset past
 * the end) is still refused with the scheduler's reason.  An independent
 * client (node) drives the protocol by hand. */
START_TEST(downloading_device_is_served_by_the_device_loop_until_its_next_step)
{
	th_server s;
	th_server_start(&s, NULL);
	const char *id = "30000c2a690c77e1";
	char *sec = th_register(&s, id, NULL);
	long long fw = upload(&s, "70.1", "imp003", NEEDS_4K_64K);
	long long chunks0 = th_metric(&s, "tender_firmware_chunks_total");
	long long loop0 = th_metric(&s, "tender_firmware_chunks_device_loop_total");
	ck_assert_int_eq(chunks0, 0);
	ck_assert_int_eq(loop0, 0);

	char hello[300], go[256];
	node_hello(hello, sizeof hello, id, sec);
	snprintf(go, sizeof go, "%s", th_tmp(&s, "go"));
	const char *out = th_tmp(&s, "node-fetch.out");
	/* Ten chunks of 30000 bytes: the whole 300000-byte image. */
	char *const argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"),
		"connect", s.ws_url, "send", hello, "expect", "welcome", "expect", "update",
		"fetch", "0", "30000", "expect", "binary", "fetch", "30000", "30000", "expect", "binary",
		"fetch", "60000", "30000", "expect", "binary", "fetch", "90000", "30000", "expect", "binary",
		"fetch", "120000", "30000", "expect", "binary", "fetch", "150000", "30000", "expect", "binary",
		"fetch", "180000", "30000", "expect", "binary", "fetch", "210000", "30000", "expect", "binary",
		"fetch", "240000", "30000", "expect", "binary", "fetch", "270000", "30000", "expect", "binary",
		"fetch", "0", "100", "9.9", "expect", "error",          /* another update id */
		"fetch", "300000", "100", "expect", "error",            /* past the end */
		"status", "downloaded", "waitfile", go,
		"fetch", "0", "30000", "expect", "error", "wait", "200", "close", NULL };
	pid_t node = th_spawn(argv, out);
	ck_assert_int_eq(th_wait_file(out, "\"type\":\"welcome\"", 10000), 0);
	char body[256];
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[\"%s\"],\"start\":true}", fw, id);
	wait_rollout_count(&s, rollout_create(&s, body), "downloaded", 1, 20000);
	node_go(go);
	char *text = node_finish(node, out);
	/* Every chunk as asked, in order, and the three refusals with the
	 * scheduler's reasons: the last one after the grant was taken back. */
	const char *p = text;
	for (int i = 0; i < 10; i++) {
		char want[40];
		snprintf(want, sizeof want, "chunk %d 30000\n", i * 30000);
		p = strstr(p, want);
		ck_assert_msg(p != NULL, "no %s in %s", want, text);
	}
	ck_assert_msg((p = strstr(p, "update 9.9 is not the current one")) != NULL, "%s", text);
	ck_assert_msg((p = strstr(p, "offset 300000 is past the image's 300000 bytes")) != NULL, "%s", text);
	ck_assert_msg((p = strstr(p, "is downloaded: nothing more to fetch")) != NULL, "%s", text);
	ck_assert_msg(strstr(p, "chunk ") == NULL, "a chunk after downloaded: %s", text);
	free(text);
	ck_assert_int_eq(th_metric(&s, "tender_firmware_chunks_total"), 10);
	/* The first fetch moves it to downloading and the second brings the
	 * grant; of the other eight, the device loop answers at least the ones
	 * sent after the grant reached it (all but the first, at the latest). */
	long long by_loop = th_metric(&s, "tender_firmware_chunks_device_loop_total");
	ck_assert_msg(by_loop >= 7 && by_loop <= 8, "device loop answered %lld of 10 chunks", by_loop);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* The scheduler's own transitions take the grant back too: a device that
 * stops fetching in the middle of its download, and stays connected, fails
 * at the download deadline, and a fetch after that is refused (the device
 * loop would still answer it from a grant the failure did not revoke). */
START_TEST(download_deadline_revokes_the_device_loops_grant)
{
	th_server s;
	th_server_start(&s, NULL);
	const char *id = "30000c2a690c77e2";
	char *sec = th_register(&s, id, NULL);
	long long fw = upload(&s, "70.2", "imp003", NEEDS_4K_64K);
	char hello[300], go[256];
	node_hello(hello, sizeof hello, id, sec);
	snprintf(go, sizeof go, "%s", th_tmp(&s, "go"));
	const char *out = th_tmp(&s, "node-stall.out");
	char *const argv[] = { "/usr/bin/node", (char *)th_src("tests/integration/wsclient.js"),
		"connect", s.ws_url, "send", hello, "expect", "welcome", "expect", "update",
		"fetch", "0", "30000", "expect", "binary", "fetch", "30000", "30000", "expect", "binary",
		"fetch", "60000", "30000", "expect", "binary", "fetch", "90000", "30000", "expect", "binary",
		"waitfile", go, "fetch", "120000", "30000", "expect", "error", "wait", "200", "close", NULL };
	pid_t node = th_spawn(argv, out);
	ck_assert_int_eq(th_wait_file(out, "\"type\":\"welcome\"", 10000), 0);
	char body[256];
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[\"%s\"],\"start\":true,\"retry_limit\":0,"
		 "\"deadlines\":{\"download\":2}}", fw, id);
	rollout_create(&s, body);
	ck_assert_int_eq(th_wait_file(out, "chunk 90000 30000", 10000), 0);
	ck_assert_int_ge(th_metric(&s, "tender_firmware_chunks_device_loop_total"), 1); /* a grant was out */
	ck_assert_int_ge(th_wait_event(&s, id, "status",
				       "firmware update failed: no progress: still downloading after 2 s "
				       "(attempt 1 of 1; giving up)", 15000), 1);
	node_go(go);
	char *text = node_finish(node, out);
	ck_assert_msg(strstr(text, "chunk 120000") == NULL, "a chunk after the failure: %s", text);
	ck_assert_msg(strstr(text, "no firmware update is in progress for this device") != NULL, "%s", text);
	free(text);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		seed_report_story,
		failures_pause_the_rollout_before_the_next_stage,
		unknown_flash_blocked_unless_overridden,
		flash_parts_and_firmware_api,
		dropped_download_resumes_and_silent_device_times_out,
		offered_update_runs_its_course_through_pause_and_abort,
		downloading_device_is_served_by_the_device_loop_until_its_next_step,
		download_deadline_revokes_the_device_loops_grant,
	};
	return th_run_tests("05_updates", 120, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

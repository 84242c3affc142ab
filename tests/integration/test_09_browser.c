/* tests/integration/test_09_browser.c -- a real browser (Debian's chromium,
 * driven by playwright-core from tests/browser) against the dashboard tenderd
 * serves: EventSource live lines; keyboard-only sign-in, a 401 and a viewer's
 * 403; a device coming online without a reload, its log, deploying agent code
 * and a compile error; a rollout's plan with the block reason; pausing and
 * resuming a rollout; paging, search and filters, also over 10,000 devices;
 * no devices and an unreachable tenderd; phone and laptop widths; the
 * README's screenshots (tools/screenshots.sh); and, with curl, log streams'
 * "types" filter that the fleet view uses.  Each case sets up the server and
 * simulated devices, then runs one scenario of tests/browser/dashboard.js.
 * Screenshots go to $TN_BUILDDIR/tests/integration/screenshots/.  Skipped
 * (exit 77) only where chromium or playwright-core is not installed;
 * tools/quickstart.sh test installs both. */
#define _GNU_SOURCE
#include <check.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define DEV "00000000000f0001"
#define S25 "30000c2a690c77c5"  /* the imp003 of the seed report: S25FL127S */
#define W25 "30000c2a690c77c6"  /* a W25Q128FV: takes the update */

static const char *shot_dir(void)
{
	static char dir[600];
	const char *build = getenv("TN_BUILDDIR");
	snprintf(dir, sizeof dir, "%s/tests/integration/screenshots", build ? build : ".");
	mkdir(dir, 0755); /* its parent exists: the test binary lives there */
	return dir;
}

/* Starts tenderd serving the dashboard from the source tree. */
static void start(th_server *s)
{
	char extra[700];
	snprintf(extra, sizeof extra, "--web-dir %s", th_src("web"));
	th_server_start(s, extra);
}

/* Starts `node dashboard.js SCENARIO ...` with up to two more arguments. */
static pid_t scenario(th_server *s, const char *name, const char *a1, const char *a2, const char **out)
{
	*out = th_tmp(s, "browser.out");
	char *argv[] = { "/usr/bin/node", (char *)th_src("tests/browser/dashboard.js"), (char *)name, s->http_url,
			 s->token, (char *)shot_dir(), (char *)a1, (char *)a2, NULL };
	return th_spawn(argv, *out);
}

/* Waits for the scenario to finish and asserts that it passed. */
static void scenario_passed(pid_t browser, const char *out, const char *name, int timeout_ms)
{
	int rc = th_wait_pid(browser, timeout_ms);
	char *text = th_read_file(out);
	char want[64];
	snprintf(want, sizeof want, "ok %s", name);
	ck_assert_msg(rc == 0 && text && strstr(text, want), "browser (%s): %s", name, text ? text : "no output");
	free(text);
}

/* A simulated device with this hello (16 MiB of flash), more tender-sim
 * options after it (NULL-terminated); returns once it has its welcome. */
static pid_t sim(th_server *s, const char *name, const char *id, const char *secret, const char *hw,
		 const char *fw, const char *jedec, ...)
{
	char *argv[48] = { (char *)th_bin("tender-sim"), "--url", s->ws_url, "--id", (char *)id,
			   "--secret", (char *)secret, "--hw", (char *)hw, "--fw", (char *)fw,
			   "--jedec", (char *)jedec, "--flash-size", "16777216" };
	int n = 15;
	va_list ap;
	va_start(ap, jedec);
	for (char *a; (a = va_arg(ap, char *)) != NULL;) {
		ck_assert_int_lt(n, 46);
		argv[n++] = a;
	}
	va_end(ap);
	argv[n] = NULL;
	char out[600], line[64];
	snprintf(out, sizeof out, "%s", th_tmp(s, name));
	pid_t pid = th_spawn(argv, out);
	snprintf(line, sizeof line, "welcome %s", id);
	ck_assert_msg(th_wait_file(out, line, 20000) == 0, "%s never got its welcome", id);
	return pid;
}

/* A simulated imp003 that stays connected (and takes updates) until killed. */
static pid_t device(th_server *s, const char *id, const char *secret, const char *jedec, const char *name,
		    const char *log_count)
{
	return sim(s, name, id, secret, "imp003", "36.10", jedec, "--update", "accept", "--update-chunk", "32768",
		   "--reconnect", "--log-count", log_count, "--log-text", "from the test %n", NULL);
}

static void deploy(th_server *s, const char *group, const char *code)
{
	char path[128];
	th_resp r;
	snprintf(path, sizeof path, "/v1/groups/%s/agent", group);
	th_http(s, "PUT", path, "text/plain", code, NULL, &r);
	ck_assert_msg(r.status == 200, "deploy to %s: %ld %s", group, r.status, r.body);
	th_resp_free(&r);
}

static void stop(pid_t pid)
{
	kill(pid, SIGTERM);
	th_wait_pid(pid, 10000);
}

static void patch(th_server *s, const char *id, const char *body)
{
	char path[64];
	th_resp r;
	snprintf(path, sizeof path, "/v1/devices/%s", id);
	th_http(s, "PATCH", path, NULL, body, NULL, &r);
	ck_assert_msg(r.status == 200, "patch %s: %ld %s", id, r.status, r.body);
	th_resp_free(&r);
}

START_TEST(eventsource_in_chromium_gets_live_lines)
{
	th_server s;
	start(&s);
	char *sec = th_register(&s, DEV, NULL);
	char shot[700];
	snprintf(shot, sizeof shot, "%s/live-log.png", shot_dir());
	const char *out = th_tmp(&s, "browser.out");
	char *argv[] = { "/usr/bin/node", (char *)th_src("tests/browser/live_log.js"), s.http_url, s.token,
			 DEV, "5", shot, NULL };
	pid_t browser = th_spawn(argv, out);
	ck_assert_msg(th_wait_file(out, "following", 60000) == 0, "the browser did not start following");
	char *const sim[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV, "--secret", sec,
			      "--log-count", "5", "--log-rate", "5", "--log-text", "from the test %n",
			      "--exit-when-done", NULL };
	ck_assert_int_eq(th_run(sim, NULL, 30), 0);
	int rc = th_wait_pid(browser, 60000);
	char *text = th_read_file(out);
	ck_assert_msg(rc == 0 && strstr(text, "browser ok 5"), "browser: %s", text);
	free(text);
	ck_assert_int_eq(access(shot, R_OK), 0);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* The README's screenshots (docs/img/dashboard-fleet.png and
 * dashboard-device.png; tools/screenshots.sh runs only this case and copies
 * them there): a small fleet that looks like one.  The imp003 of the seed
 * report (S25FL127S) runs the group's agent and sends readings, so its log
 * has [Status], [Device] and [Agent] lines; one device has been and gone,
 * one never came, one has a part the table does not know. */
#define ROOF "30000c2a690c77c7"
#define COLD "30000c2a690c77c8"
#define SPARE "30000c2a690c77c9"
#define BENCH "30000c2a690c77ca"
#define BOILER_AGENT                                                                                            \
	"-- boiler.lua: keeps the latest reading\n"                                                          \
	"local last\n"                                                                                        \
	"server.log(\"agent ready\")\n"                                                                       \
	"device.on(\"reading\", function(data)\n"                                                             \
	"  last = data.seq\n"                                                                                 \
	"  server.log(\"reading \" .. data.seq .. \" stored\")\n"                                             \
	"end)\n"

START_TEST(screenshots_for_the_readme)
{
	th_server s;
	start(&s);
	char *boiler = th_register(&s, S25, "imps"), *dock = th_register(&s, W25, "imps"),
	     *roof = th_register(&s, ROOF, "weather"), *cold = th_register(&s, COLD, "imps"),
	     *bench = th_register(&s, BENCH, "lab");
	free(th_register(&s, SPARE, NULL));
	patch(&s, S25, "{\"name\":\"boiler room\"}");
	patch(&s, W25, "{\"name\":\"loading dock\"}");
	patch(&s, ROOF, "{\"name\":\"roof weather station\"}");
	patch(&s, COLD, "{\"name\":\"cold store 2\"}");
	patch(&s, BENCH, "{\"name\":\"test bench\"}");
	deploy(&s, "imps", BOILER_AGENT);
	/* Been and gone: offline, last seen a moment ago. */
	stop(sim(&s, "cold.out", COLD, cold, "imp003", "36.10", "012018", NULL));
	ck_assert_int_eq(th_wait_online(&s, COLD, 0, 10000), 0);
	pid_t d[4];
	d[0] = sim(&s, "dock.out", W25, dock, "imp003", "36.10", "ef4018", "--reconnect", NULL);
	d[1] = sim(&s, "roof.out", ROOF, roof, "imp004m", "37.2", "c22018", "--reconnect", NULL);
	d[2] = sim(&s, "bench.out", BENCH, bench, "imp004m", "37.3-rc1", "bf2641", "--reconnect", NULL);
	d[3] = sim(&s, "boiler.out", S25, boiler, "imp003", "36.10", "012018", "--reconnect", "--log-rate", "2",
		   "--log-count", "6", "--log-text", "flow temperature 6%n.5 C", "--msg-rate", "2", "--msg-count",
		   "6", "--msg-name", "reading", NULL);
	const char *out;
	pid_t browser = scenario(&s, "screenshots", S25, SPARE, &out);
	scenario_passed(browser, out, "screenshots", 150000);
	json_t *spare = th_get_json(&s, "/v1/devices/" SPARE, 200);
	ck_assert_str_eq(json_string_value(json_object_get(spare, "group")), "imps");
	json_decref(spare);
	for (int i = 0; i < 4; i++)
		stop(d[i]);
	free(boiler);
	free(dock);
	free(roof);
	free(cold);
	free(bench);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(keyboard_sign_in_and_401)
{
	th_server s;
	start(&s);
	free(th_register(&s, S25, "imps"));
	free(th_register(&s, W25, "imps"));
	th_resp r;
	th_http(&s, "POST", "/v1/tokens", NULL, "{\"role\":\"viewer\",\"name\":\"wall display\"}", NULL, &r);
	ck_assert_msg(r.status == 201, "viewer token: %ld %s", r.status, r.body);
	char viewer[200];
	snprintf(viewer, sizeof viewer, "%s", json_string_value(json_object_get(r.json, "token")));
	th_resp_free(&r);
	const char *out;
	pid_t browser = scenario(&s, "signin", viewer, S25, &out);
	scenario_passed(browser, out, "signin", 90000);
	th_server_cleanup(&s);
}
END_TEST

/* The device connects only once the fleet view shows it offline, so the
 * browser sees it come online live; its 250 lines make the history three
 * pages (one read by scrolling up, one with the button). */
START_TEST(device_online_live_log_and_agent_code)
{
	th_server s;
	start(&s);
	char *sec = th_register(&s, DEV, "web");
	patch(&s, DEV, "{\"name\":\"bench imp\"}");
	char *sec1 = th_register(&s, S25, "imps"), *sec2 = th_register(&s, W25, "imps");
	pid_t d1 = device(&s, S25, sec1, "012018", "s25.out", "0");
	pid_t d2 = device(&s, W25, sec2, "ef4018", "w25.out", "0");
	ck_assert_int_eq(th_wait_online(&s, W25, 1, 10000), 0);
	th_resp r;
	th_http(&s, "PUT", "/v1/groups/web/agent", "text/plain", "server.log(\"agent v1\")\n", NULL, &r);
	ck_assert_msg(r.status == 200, "deploy: %ld %s", r.status, r.body);
	th_resp_free(&r);
	const char *out;
	pid_t browser = scenario(&s, "live", DEV, NULL, &out);
	ck_assert_msg(th_wait_file(out, "fleet ready", 60000) == 0, "the fleet view never showed the device");
	pid_t dev = sim(&s, "dev.out", DEV, sec, "imp003", "36.10", "ef4018", "--reconnect", "--log-count", "250",
			"--log-rate", "50", "--log-text", "from the test %n", NULL);
	scenario_passed(browser, out, "live", 180000);
	stop(dev);
	stop(d1);
	stop(d2);
	free(sec);
	free(sec1);
	free(sec2);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(rollout_plan_shows_the_block_reason)
{
	th_server s;
	start(&s);
	char *sec1 = th_register(&s, S25, "imps"), *sec2 = th_register(&s, W25, "imps");
	pid_t d1 = device(&s, S25, sec1, "012018", "s25.out", "0");
	pid_t d2 = device(&s, W25, sec2, "ef4018", "w25.out", "0");
	ck_assert_int_eq(th_wait_online(&s, S25, 1, 10000), 0);
	ck_assert_int_eq(th_wait_online(&s, W25, 1, 10000), 0);
	const char *out;
	pid_t browser = scenario(&s, "rollout", S25, W25, &out);
	scenario_passed(browser, out, "rollout", 180000);
	ck_assert_int_ge(th_wait_event(&s, W25, "status", "firmware update completed: 36.10 -> 36.11", 1000), 1);
	ck_assert_int_eq(th_count_events(&s, S25, "firmware update triggered"), 0);
	stop(d1);
	stop(d2);
	free(sec1);
	free(sec2);
	th_server_cleanup(&s);
}
END_TEST

/* Three devices that take an update slowly (18 chunks, 0.4 s apart), one per
 * stage: the browser starts the rollout, pauses it while the first downloads,
 * sees no new trigger while paused, and resumes it to the end. */
#define DOCK2 "30000c2a690c77d1"
#define DOCK3 "30000c2a690c77d2"

START_TEST(rollout_pause_and_resume)
{
	th_server s;
	start(&s);
	const char *ids[3] = { W25, DOCK2, DOCK3 };
	pid_t d[3];
	for (int i = 0; i < 3; i++) {
		char *sec = th_register(&s, ids[i], "dock"), name[32];
		snprintf(name, sizeof name, "dock%d.out", i);
		d[i] = sim(&s, name, ids[i], sec, "imp003", "36.10", "ef4018", "--reconnect", "--update", "accept",
			   "--update-chunk", "4096", "--update-delay", "400", NULL);
		free(sec);
	}
	static unsigned char image[70000];
	memset(image, 0x5a, sizeof image);
	th_resp r;
	th_upload_firmware(&s, "{\"version\":\"36.11\",\"hw\":[\"imp003\"]}", image, sizeof image, &r);
	ck_assert_msg(r.status == 201, "upload: %ld %s", r.status, r.body);
	th_resp_free(&r);
	const char *out;
	pid_t browser = scenario(&s, "pause", W25, DOCK2, &out);
	scenario_passed(browser, out, "pause", 200000);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_ge(th_wait_event(&s, ids[i], "status", "firmware update completed: 36.10 -> 36.11", 1000), 1);
		ck_assert_int_eq(th_count_events(&s, ids[i], "firmware update triggered"), 1);
		stop(d[i]);
	}
	th_server_cleanup(&s);
}
END_TEST

/* No device yet: the fleet says how to register one.  Then tenderd stops
 * under the open dashboard, and its views say it cannot be reached; it
 * starts again on the same ports, and the fleet view recovers by itself. */
START_TEST(empty_fleet_and_unreachable_server)
{
	th_server s;
	start(&s);
	const char *out;
	pid_t browser = scenario(&s, "states", NULL, NULL, &out);
	char path[600];
	snprintf(path, sizeof path, "%s", out);
	ck_assert_msg(th_wait_file(path, "stop the server", 60000) == 0, "the empty fleet was not shown");
	ck_assert_int_eq(th_server_stop(&s), 0);
	ck_assert_msg(th_wait_file(path, "start the server", 90000) == 0, "the unreachable server was not shown");
	th_server_restart_same_ports(&s);
	scenario_passed(browser, path, "states", 90000);
	th_server_cleanup(&s);
}
END_TEST

/* --- many devices, and a status-only log stream ------------------------------ */

struct reg_slot {
	CURL *c;
	char body[128], *resp;
	size_t len;
	int index;
};

static size_t reg_write(char *p, size_t size, size_t n, void *arg)
{
	struct reg_slot *sl = arg;
	char *grown = realloc(sl->resp, sl->len + size * n + 1);
	if (!grown)
		return 0;
	sl->resp = grown;
	memcpy(sl->resp + sl->len, p, size * n);
	sl->len += size * n;
	sl->resp[sl->len] = '\0';
	return size * n;
}

/* Registers n devices (ids base, base + 1, ...) through POST /v1/devices, as
 * an operator's script would: 8 requests in flight on kept-alive
 * connections.  The first `keep` secrets go to secrets[] (owned). */
static void register_many(th_server *s, unsigned long long base, int n, int keep, char **secrets)
{
	enum { SLOTS = 8 };
	struct reg_slot slot[SLOTS] = { 0 };
	struct curl_slist *h = NULL;
	char url[256], auth[200];
	CURLM *m = curl_multi_init();
	int next = 0, done = 0, running;

	snprintf(url, sizeof url, "%s/v1/devices", s->http_url);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", s->token);
	h = curl_slist_append(h, auth);
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Expect:");
	for (int i = 0; i < SLOTS; i++) {
		slot[i].c = curl_easy_init();
		curl_easy_setopt(slot[i].c, CURLOPT_URL, url);
		curl_easy_setopt(slot[i].c, CURLOPT_HTTPHEADER, h);
		curl_easy_setopt(slot[i].c, CURLOPT_TIMEOUT, 60L);
		curl_easy_setopt(slot[i].c, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(slot[i].c, CURLOPT_WRITEFUNCTION, reg_write);
		curl_easy_setopt(slot[i].c, CURLOPT_WRITEDATA, &slot[i]);
		curl_easy_setopt(slot[i].c, CURLOPT_PRIVATE, &slot[i]);
	}
	for (int i = 0; i < SLOTS && next < n; i++) {
		slot[i].index = next;
		snprintf(slot[i].body, sizeof slot[i].body, "{\"id\":\"%016llx\",\"group\":\"fleet\"}", base + next++);
		curl_easy_setopt(slot[i].c, CURLOPT_POSTFIELDS, slot[i].body);
		curl_multi_add_handle(m, slot[i].c);
	}
	while (done < n) {
		ck_assert_int_eq(curl_multi_perform(m, &running), CURLM_OK);
		CURLMsg *msg;
		int left;
		while ((msg = curl_multi_info_read(m, &left))) {
			struct reg_slot *sl;
			long status = 0;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&sl);
			curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
			ck_assert_msg(msg->data.result == CURLE_OK && status == 201, "register %s: %s %ld %s", sl->body,
				      curl_easy_strerror(msg->data.result), status, sl->resp ? sl->resp : "");
			if (sl->index < keep) {
				json_t *j = json_loads(sl->resp, 0, NULL);
				secrets[sl->index] = strdup(json_string_value(json_object_get(j, "secret")));
				json_decref(j);
			}
			free(sl->resp);
			sl->resp = NULL;
			sl->len = 0;
			done++;
			curl_multi_remove_handle(m, sl->c);
			if (next < n) {
				sl->index = next;
				snprintf(sl->body, sizeof sl->body, "{\"id\":\"%016llx\",\"group\":\"fleet\"}", base + next++);
				curl_easy_setopt(sl->c, CURLOPT_POSTFIELDS, sl->body);
				curl_multi_add_handle(m, sl->c);
			}
		}
		if (done < n)
			curl_multi_poll(m, NULL, 0, 1000, NULL);
	}
	for (int i = 0; i < SLOTS; i++)
		curl_easy_cleanup(slot[i].c);
	curl_multi_cleanup(m);
	curl_slist_free_all(h);
}

/* 10,000 devices, 20 of them online and chatty: the fleet view shows one
 * page, counts all, finds one by search, pages; a 21st comes online live
 * while the view's stream carries status events only. */
#define BIG_N 10000
#define BIG_ONLINE 20
#define BIG_BASE 0x00000000000b0000ULL

START_TEST(ten_thousand_devices)
{
	th_server s;
	start(&s);
	char *secrets[BIG_ONLINE + 1] = { 0 };
	register_many(&s, BIG_BASE, BIG_N, BIG_ONLINE + 1, secrets);
	json_t *fleet = th_get_json(&s, "/v1/fleet", 200);
	ck_assert_int_eq(json_integer_value(json_object_get(fleet, "devices")), BIG_N);
	json_decref(fleet);
	/* Devices 1..20 online, sending a line a second each; device 0 later. */
	char creds[600];
	snprintf(creds, sizeof creds, "%s", th_tmp(&s, "big.creds"));
	FILE *f = fopen(creds, "w");
	ck_assert_ptr_nonnull(f);
	for (int i = 1; i <= BIG_ONLINE; i++)
		fprintf(f, "%016llx %s imp003 36.10 ef4018 16777216\n", BIG_BASE + i, secrets[i]);
	fclose(f);
	char *const many[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--creds", creds, "--reconnect",
			       "--log-rate", "1", "--log-text", "chatter %n", NULL };
	pid_t sims = th_spawn(many, th_tmp(&s, "big.out"));
	char id0[17], id_far[17], out[600];
	snprintf(id0, sizeof id0, "%016llx", BIG_BASE);
	snprintf(id_far, sizeof id_far, "%016llx", BIG_BASE + 9876);
	for (int i = 1; i <= BIG_ONLINE; i++) {
		char id[17];
		snprintf(id, sizeof id, "%016llx", BIG_BASE + i);
		ck_assert_int_eq(th_wait_online(&s, id, 1, 30000), 0);
	}
	const char *o;
	pid_t browser = scenario(&s, "big", id0, id_far, &o);
	snprintf(out, sizeof out, "%s", o);
	ck_assert_msg(th_wait_file(out, "fleet ready", 90000) == 0, "the fleet view never showed 10,000 devices");
	pid_t late = sim(&s, "late.out", id0, secrets[0], "imp003", "36.10", "ef4018", "--reconnect", "--log-rate",
			 "5", "--log-text", "late chatter %n", NULL);
	scenario_passed(browser, out, "big", 180000);
	stop(late);
	stop(sims);
	for (int i = 0; i <= BIG_ONLINE; i++)
		free(secrets[i]);
	th_server_cleanup(&s);
}
END_TEST

/* What the SSE stream carried until `until` appeared (or 30 s passed). */
struct sse_read {
	char *data;
	size_t len;
	const char *until;
};

static size_t sse_write(char *p, size_t size, size_t n, void *arg)
{
	struct sse_read *r = arg;
	char *grown = realloc(r->data, r->len + size * n + 1);
	if (!grown)
		return 0;
	r->data = grown;
	memcpy(r->data + r->len, p, size * n);
	r->len += size * n;
	r->data[r->len] = '\0';
	return strstr(r->data, r->until) ? 0 : size * n; /* 0: enough, stop */
}

static char *sse_read_until(th_server *s, const char *url_path, const char *until)
{
	struct sse_read r = { .until = until };
	char url[256], auth[200];
	struct curl_slist *h = NULL;
	CURL *c = curl_easy_init();
	snprintf(url, sizeof url, "%s%s", s->http_url, url_path);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", s->token);
	h = curl_slist_append(h, auth);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sse_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
	curl_easy_perform(c);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	return r.data ? r.data : strdup("");
}

static char *create_stream(th_server *s, const char *body, json_t **answer)
{
	th_resp r;
	th_http(s, "POST", "/v1/logstreams", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "POST /v1/logstreams %s: %ld %s", body, r.status, r.body);
	char *url = strdup(json_string_value(json_object_get(r.json, "url")));
	if (answer)
		*answer = json_incref(r.json);
	th_resp_free(&r);
	return url;
}

/* "types" on a log stream (what the fleet view asks for): a status-only
 * stream over a device that connects, sends five lines and leaves carries
 * its connect and disconnect and none of the lines, which an unfiltered
 * stream made at the same time does carry; bad types are refused. */
START_TEST(logstream_types_filter)
{
	th_server s;
	start(&s);
	char *sec = th_register(&s, DEV, NULL);
	json_t *answer;
	char *only = create_stream(&s, "{\"devices\":[\"" DEV "\"],\"types\":[\"status\"]}", &answer);
	json_t *types = json_object_get(answer, "types");
	ck_assert_int_eq(json_array_size(types), 1);
	ck_assert_str_eq(json_string_value(json_array_get(types, 0)), "status");
	json_decref(answer);
	char *every = create_stream(&s, "{\"devices\":[\"" DEV "\"]}", &answer);
	ck_assert_int_eq(json_array_size(json_object_get(answer, "types")), 4);
	json_decref(answer);
	static const char *const bad[][2] = {
		{ "{\"all\":true,\"types\":[\"status\",\"bogus\"]}", "'types[1]' is not an event type" },
		{ "{\"all\":true,\"types\":\"status\"}", "'types' must be a non-empty array" },
		{ "{\"all\":true,\"types\":[]}", "'types' must be a non-empty array" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		th_resp r;
		th_http(&s, "POST", "/v1/logstreams", NULL, bad[i][0], NULL, &r);
		ck_assert_msg(r.status == 400 && strstr(r.body, bad[i][1]), "%s: %ld %s", bad[i][0], r.status, r.body);
		th_resp_free(&r);
	}
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV, "--secret", sec,
			       "--log-count", "5", "--log-text", "line %n", "--exit-when-done", NULL };
	ck_assert_int_eq(th_run(argv, NULL, 30), 0);
	ck_assert_int_eq(th_wait_online(&s, DEV, 0, 10000), 0);
	char *all = sse_read_until(&s, every, "Device disconnected");
	ck_assert_msg(strstr(all, "\"type\":\"device\"") && strstr(all, "line 5"), "unfiltered: %s", all);
	char *status = sse_read_until(&s, only, "Device disconnected");
	ck_assert_msg(strstr(status, "data: opened") && strstr(status, "data: 1 device subscribed") &&
		      strstr(status, "Device connected") && strstr(status, "Device disconnected"), "status only: %s", status);
	ck_assert_msg(!strstr(status, "\"type\":\"device\"") && !strstr(status, "line "), "status only: %s", status);
	free(all);
	free(status);
	free(only);
	free(every);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* 120 devices: three pages by the server's cursor, search and a group
 * filter done by the server, counts from GET /v1/fleet. */
START_TEST(fleet_pages_search_and_filters)
{
	th_server s;
	start(&s);
	for (int i = 1; i <= 120; i++) {
		char body[160];
		th_resp r;
		snprintf(body, sizeof body, "{\"id\":\"00000000000a%04x\",\"name\":\"sensor %d\",\"group\":\"%s\"}", i, i,
			 i % 2 ? "odd" : "even");
		th_http(&s, "POST", "/v1/devices", NULL, body, NULL, &r);
		ck_assert_msg(r.status == 201, "register: %ld %s", r.status, r.body);
		th_resp_free(&r);
	}
	const char *out;
	pid_t browser = scenario(&s, "paging", NULL, NULL, &out);
	scenario_passed(browser, out, "paging", 90000);
	th_server_cleanup(&s);
}
END_TEST

/* Every view, a rollout's with its long block reason too, at a phone's
 * width and at a laptop's: no sideways scroll, every control labelled. */
START_TEST(phone_and_laptop_widths_have_no_sideways_scroll)
{
	th_server s;
	start(&s);
	char *sec = th_register(&s, S25, "imps");
	patch(&s, S25, "{\"name\":\"the imp003 with a Spansion flash from the seed report\"}");
	free(th_register(&s, W25, NULL));
	pid_t dev = device(&s, S25, sec, "012018", "s25.out", "3");
	static unsigned char image[70000];
	th_resp r;
	th_upload_firmware(&s, "{\"version\":\"36.11\",\"hw\":[\"imp003\"],\"requirements\":{\"flash\":"
			   "{\"uniform_erase\":[4096,65536],\"min_size\":524288}}}", image, sizeof image, &r);
	ck_assert_msg(r.status == 201, "upload: %ld %s", r.status, r.body);
	char body[200];
	snprintf(body, sizeof body, "{\"firmware\":%lld,\"devices\":[\"%s\",\"%s\"]}",
		 (long long)json_integer_value(json_object_get(r.json, "id")), S25, W25);
	th_resp_free(&r);
	th_http(&s, "POST", "/v1/rollouts", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "rollout: %ld %s", r.status, r.body);
	char ro[32];
	snprintf(ro, sizeof ro, "%lld", (long long)json_integer_value(json_object_get(r.json, "id")));
	th_resp_free(&r);
	const char *widths[] = { "phone", "laptop" };
	for (int i = 0; i < 2; i++) {
		const char *o;
		char out[600];
		pid_t browser = scenario(&s, widths[i], S25, ro, &o);
		snprintf(out, sizeof out, "%s", o);
		scenario_passed(browser, out, widths[i], 90000);
	}
	stop(dev);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	char module[600];
	snprintf(module, sizeof module, "%s", th_src("tests/browser/node_modules/playwright-core/package.json"));
	if (access("/usr/bin/chromium", X_OK) != 0 || access(module, R_OK) != 0) {
		printf("%s: chromium or playwright-core is not installed (tools/quickstart.sh test installs them)\n",
		       th_may_skip() ? "SKIP" : "FAIL (TENDER_TEST_STRICT)");
		return th_may_skip() ? 77 : 1;
	}
	const TTest *all[] = { eventsource_in_chromium_gets_live_lines, keyboard_sign_in_and_401,
			       device_online_live_log_and_agent_code, rollout_plan_shows_the_block_reason,
			       fleet_pages_search_and_filters, phone_and_laptop_widths_have_no_sideways_scroll,
			       screenshots_for_the_readme, rollout_pause_and_resume,
			       empty_fleet_and_unreachable_server, logstream_types_filter, ten_thousand_devices };
	/* TN_BROWSER_TESTS=name,name runs only those (tools/screenshots.sh). */
	const TTest *tests[sizeof all / sizeof *all];
	size_t n = 0;
	const char *only = getenv("TN_BROWSER_TESTS");
	for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
		char key[128];
		snprintf(key, sizeof key, ",%s,", all[i]->name);
		char list[1024];
		snprintf(list, sizeof list, ",%s,", only ? only : "");
		if (!only || !*only || strstr(list, key))
			tests[n++] = all[i];
	}
	if (!n) {
		printf("TN_BROWSER_TESTS=%s names no test\n", only);
		return 1;
	}
	return th_run_tests("09_browser", 240, tests, n, NULL, NULL);
}

/* tests/integration/test_09_browser.c -- a real browser (Debian's chromium,
 * driven by playwright-core from tests/browser) against the dashboard tenderd
 * serves: EventSource live lines; keyboard-only sign-in, a 401 and a viewer's
 * 403; a device coming online without a reload, its log, deploying agent code
 * and a compile error; a rollout's plan with the block reason; paging, search
 * and filters; a phone-width layout; the README's screenshots
 * (tools/screenshots.sh).  Each case sets up the server and
 * simulated devices, then runs one scenario of tests/browser/dashboard.js.
 * Screenshots go to $TN_BUILDDIR/tests/integration/screenshots/.  Skipped
 * (exit 77) only where chromium or playwright-core is not installed;
 * tools/quickstart.sh test installs both. */
#define _GNU_SOURCE
#include <check.h>
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

START_TEST(phone_width_has_no_sideways_scroll)
{
	th_server s;
	start(&s);
	char *sec = th_register(&s, S25, "imps");
	patch(&s, S25, "{\"name\":\"the imp003 with a Spansion flash from the seed report\"}");
	free(th_register(&s, W25, NULL));
	pid_t dev = device(&s, S25, sec, "012018", "s25.out", "3");
	const char *out;
	pid_t browser = scenario(&s, "phone", S25, NULL, &out);
	scenario_passed(browser, out, "phone", 90000);
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
			       fleet_pages_search_and_filters, phone_width_has_no_sideways_scroll,
			       screenshots_for_the_readme, rollout_pause_and_resume,
			       empty_fleet_and_unreachable_server };
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

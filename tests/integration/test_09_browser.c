/* tests/integration/test_09_browser.c -- a real browser (Debian's chromium,
 * driven by playwright-core from tests/browser) signs in to the dashboard
 * tenderd serves, follows a device with EventSource and sees its lines live,
 * each once.  Skipped (exit 77) only where chromium or playwright-core is not
 * installed; tools/quickstart.sh test installs both. */
#define _GNU_SOURCE
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define DEV "00000000000f0001"

START_TEST(eventsource_in_chromium_gets_live_lines)
{
	th_server s;
	char extra[700];
	snprintf(extra, sizeof extra, "--web-dir %s", th_src("web"));
	th_server_start(&s, extra);
	char *sec = th_register(&s, DEV, NULL);
	char shot[600];
	const char *build = getenv("TN_BUILDDIR");
	snprintf(shot, sizeof shot, "%s/tests/browser-live-log.png", build ? build : ".");
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

int main(void)
{
	char module[600];
	snprintf(module, sizeof module, "%s", th_src("tests/browser/node_modules/playwright-core/package.json"));
	if (access("/usr/bin/chromium", X_OK) != 0 || access(module, R_OK) != 0) {
		printf("SKIP: chromium or playwright-core is not installed (tools/quickstart.sh test installs them)\n");
		return 77;
	}
	const TTest *tests[] = { eventsource_in_chromium_gets_live_lines };
	return th_run_tests("09_browser", 120, tests, 1, NULL, NULL);
}

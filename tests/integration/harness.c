/* tests/integration/harness.c -- see harness.h. */
#define _GNU_SOURCE
#include "harness.h"

#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long th__now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void th__sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

const char *th_bin(const char *name)
{
	static char paths[4][512];
	static int slot;
	const char *dir = getenv("TN_BUILDDIR");
	char *p = paths[slot++ % 4];
	snprintf(p, 512, "%s/%s", dir ? dir : ".", name);
	return p;
}

const char *th_src(const char *rel)
{
	static char paths[4][512];
	static int slot;
	const char *dir = getenv("TN_SRCDIR");
	char *p = paths[slot++ % 4];
	snprintf(p, 512, "%s/%s", dir ? dir : "..", rel);
	return p;
}

int th_may_skip(void)
{
	const char *strict = getenv("TENDER_TEST_STRICT");
	return !strict || !*strict || strcmp(strict, "0") == 0;
}

const char *th_tmp(th_server *s, const char *name)
{
	static char paths[8][600];
	static int slot;
	char *p = paths[slot++ % 8];
	snprintf(p, 600, "%s/%s", s->dir, name);
	return p;
}

char *th_read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL;
	size_t cap = 0;
	if (!f)
		return NULL;
	if (getdelim(&buf, &cap, '\0', f) < 0) {
		free(buf);
		buf = strdup("");
	}
	fclose(f);
	return buf;
}

int th_wait_file(const char *path, const char *needle, int timeout_ms)
{
	long long end = th__now_ms() + timeout_ms;
	do {
		char *text = th_read_file(path);
		int found = text && strstr(text, needle);
		free(text);
		if (found)
			return 0;
		th__sleep_ms(50);
	} while (th__now_ms() < end);
	return -1;
}

pid_t th_spawn(char *const argv[], const char *out_path)
{
	char err_path[700];
	snprintf(err_path, sizeof err_path, "%s.err", out_path);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int null = open("/dev/null", O_RDONLY);
		dup2(null, 0);
		dup2(out, 1);
		dup2(err, 2);
		setpgid(0, 0);
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

int th_wait_pid(pid_t pid, int timeout_ms)
{
	long long end = th__now_ms() + timeout_ms;
	int status;
	do {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		if (r < 0)
			return -1;
		th__sleep_ms(20);
	} while (th__now_ms() < end);
	return -1;
}

int th_run(char *const argv[], char **out, int timeout_s)
{
	char path[] = "/tmp/tender-run-XXXXXX";
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	close(fd);
	pid_t pid = th_spawn(argv, path);
	int rc = th_wait_pid(pid, timeout_s * 1000);
	if (rc < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	if (out)
		*out = th_read_file(path);
	char err_path[64];
	snprintf(err_path, sizeof err_path, "%s.err", path);
	unlink(path);
	unlink(err_path);
	return rc;
}

/* --- tenderd ---------------------------------------------------------------- */

static rlim_t th__nofile; /* RLIMIT_NOFILE for tenderd, or 0: inherited */

void th_set_daemon_nofile(long n)
{
	th__nofile = n > 0 ? (rlim_t)n : 0;
}

static int th__port_from_log(const char *log, const char *prefix)
{
	const char *p = strstr(log, prefix);
	return p ? atoi(p + strlen(prefix)) : 0;
}

static void th__launch(th_server *s, int same_ports)
{
	char cmd[2048];
	int dport = same_ports ? s->device_port : 0, hport = same_ports ? s->http_port : 0;
	/* TENDERD_WRAPPER prefixes the daemon (tools/valgrind.sh: valgrind ...). */
	const char *wrapper = getenv("TENDERD_WRAPPER");
	int start_ms = wrapper && *wrapper ? 60000 : 15000;
	/* exec through sh so that `extra` can hold several options. */
	snprintf(cmd, sizeof cmd, "exec %s '%s' --data-dir '%s' --device-port %d --http-port %d %s 2>>'%s'",
		 wrapper ? wrapper : "", th_bin("tenderd"), s->dir, dport, hport, s->extra, s->log);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (th__nofile) {
			struct rlimit rl = { th__nofile, th__nofile };
			setrlimit(RLIMIT_NOFILE, &rl);
		}
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		dup2(null, 1);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	s->pid = pid;
	long long end = th__now_ms() + start_ms;
	for (;;) {
		char *log = th_read_file(s->log);
		/* Only this launch's lines count: find the last "ready". */
		const char *start = log;
		for (const char *p = log; p && (p = strstr(p, "starting tenderd")); p++)
			start = p;
		if (log && strstr(start, "ready")) {
			s->device_port = th__port_from_log(start, "device endpoint listening on ");
			s->http_port = th__port_from_log(start, "http api listening on ");
			free(log);
			break;
		}
		free(log);
		int status;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			char *text = th_read_file(s->log);
			ck_abort_msg("tenderd exited at start: %s", text ? text : "");
		}
		ck_assert_msg(th__now_ms() < end, "tenderd did not start within %d s", start_ms / 1000);
		th__sleep_ms(20);
	}
	ck_assert_int_gt(s->device_port, 0);
	ck_assert_int_gt(s->http_port, 0);
	const char *tls = strstr(s->extra, "--tls-cert") ? "s" : "";
	snprintf(s->ws_url, sizeof s->ws_url, "ws%s://127.0.0.1:%d/v1/device", tls, s->device_port);
	snprintf(s->http_url, sizeof s->http_url, "http%s://127.0.0.1:%d", tls, s->http_port);
	char path[600];
	snprintf(path, sizeof path, "%s/admin.token", s->dir);
	/* Absent when the test chose --admin-token-file: it then brings its own. */
	char *tok = th_read_file(path);
	if (tok)
		tok[strcspn(tok, "\r\n")] = '\0';
	snprintf(s->token, sizeof s->token, "%s", tok ? tok : "");
	free(tok);
}

void th_server_start(th_server *s, const char *extra)
{
	memset(s, 0, sizeof *s);
	snprintf(s->dir, sizeof s->dir, "/tmp/tender-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(s->dir));
	snprintf(s->log, sizeof s->log, "%s/tenderd.log", s->dir);
	snprintf(s->extra, sizeof s->extra, "%s", extra ? extra : "");
	/* A marker line so th__launch can tell this start's lines from earlier ones. */
	FILE *f = fopen(s->log, "a");
	fprintf(f, "starting tenderd\n");
	fclose(f);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	th__launch(s, 0);
}

void th_server_restart(th_server *s)
{
	FILE *f = fopen(s->log, "a");
	fprintf(f, "starting tenderd\n");
	fclose(f);
	th__launch(s, 0);
}

void th_server_restart_same_ports(th_server *s)
{
	FILE *f = fopen(s->log, "a");
	fprintf(f, "starting tenderd\n");
	fclose(f);
	th__launch(s, 1);
}

int th_server_stop(th_server *s)
{
	if (s->pid <= 0)
		return -1;
	kill(s->pid, SIGTERM);
	int rc = th_wait_pid(s->pid, getenv("TENDERD_WRAPPER") ? 60000 : 15000);
	if (rc < 0) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, NULL, 0);
	}
	s->pid = 0;
	return rc;
}

void th_server_kill9(th_server *s)
{
	if (s->pid <= 0)
		return;
	kill(s->pid, SIGKILL);
	waitpid(s->pid, NULL, 0);
	s->pid = 0;
}

static int th__rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

void th_server_cleanup(th_server *s)
{
	/* A clean stop exits 0: under the sanitizers that also means no leak
	 * and no memory error was reported at exit. */
	if (s->pid > 0) {
		int rc = th_server_stop(s);
		if (rc != 0) {
			char *log = th_read_file(s->log);
			size_t len = log ? strlen(log) : 0;
			ck_abort_msg("tenderd exited %d at its stop: %s", rc, log ? log + (len > 3000 ? len - 3000 : 0) : "");
		}
	}
	if (s->dir[0] && !getenv("TN_KEEP"))
		nftw(s->dir, th__rm, 16, FTW_DEPTH | FTW_PHYS);
	curl_global_cleanup();
}

/* --- HTTP ------------------------------------------------------------------- */

struct th__buf {
	char *data;
	size_t len;
};

static size_t th__write(char *ptr, size_t size, size_t n, void *arg)
{
	struct th__buf *b = arg;
	size_t add = size * n;
	char *grown = realloc(b->data, b->len + add + 1);
	if (!grown)
		return 0;
	b->data = grown;
	memcpy(b->data + b->len, ptr, add);
	b->len += add;
	b->data[b->len] = '\0';
	return add;
}

static size_t th__header(char *line, size_t size, size_t n, void *arg)
{
	th_resp *r = arg;
	size_t len = size * n;
	if (len > 6 && strncasecmp(line, "Allow:", 6) == 0)
		snprintf(r->allow, sizeof r->allow, "%.*s", (int)(len - 7), line + 7);
	r->allow[strcspn(r->allow, "\r\n")] = '\0';
	return len;
}

void th_http(th_server *s, const char *method, const char *path, const char *ctype,
	     const char *body, const char *token, th_resp *out)
{
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	struct th__buf b = { 0 };
	char url[1024], line[300];

	memset(out, 0, sizeof *out);
	ck_assert_ptr_nonnull(c);
	snprintf(url, sizeof url, "%s%s", s->http_url, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, th__write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, th__header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
	if (s->cacert[0])
		curl_easy_setopt(c, CURLOPT_CAINFO, s->cacert);
	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	if (!token)
		token = s->token;
	if (*token) {
		snprintf(line, sizeof line, "Authorization: Bearer %s", token);
		h = curl_slist_append(h, line);
	}
	if (body) {
		snprintf(line, sizeof line, "Content-Type: %s", ctype ? ctype : "application/json");
		h = curl_slist_append(h, line);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	}
	h = curl_slist_append(h, "Expect:");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	CURLcode rc = curl_easy_perform(c);
	ck_assert_msg(rc == CURLE_OK, "%s %s: %s", method, url, curl_easy_strerror(rc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
	char *ct = NULL;
	curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
	snprintf(out->content_type, sizeof out->content_type, "%s", ct ? ct : "");
	out->body = b.data ? b.data : strdup("");
	out->json = json_loads(out->body, 0, NULL);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
}

void th_upload_firmware(th_server *s, const char *metadata_json, const void *image, size_t len,
			th_resp *out)
{
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	struct th__buf b = { 0 };
	char url[256], line[300];

	memset(out, 0, sizeof *out);
	snprintf(url, sizeof url, "%s/v1/firmware", s->http_url);
	curl_mime *mime = curl_mime_init(c);
	curl_mimepart *part = curl_mime_addpart(mime);
	curl_mime_name(part, "image");
	curl_mime_filename(part, "firmware.bin");
	curl_mime_type(part, "application/octet-stream");
	curl_mime_data(part, image, len);
	part = curl_mime_addpart(mime);
	curl_mime_name(part, "metadata");
	curl_mime_type(part, "application/json");
	curl_mime_data(part, metadata_json, CURL_ZERO_TERMINATED);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, th__write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	snprintf(line, sizeof line, "Authorization: Bearer %s", s->token);
	h = curl_slist_append(h, line);
	h = curl_slist_append(h, "Expect:");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	CURLcode rc = curl_easy_perform(c);
	ck_assert_msg(rc == CURLE_OK, "upload: %s", curl_easy_strerror(rc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
	out->body = b.data ? b.data : strdup("");
	out->json = json_loads(out->body, 0, NULL);
	curl_slist_free_all(h);
	curl_mime_free(mime);
	curl_easy_cleanup(c);
}

void th_resp_free(th_resp *r)
{
	free(r->body);
	json_decref(r->json);
	memset(r, 0, sizeof *r);
}

json_t *th_get_json(th_server *s, const char *path, long status)
{
	th_resp r;
	th_http(s, "GET", path, NULL, NULL, NULL, &r);
	ck_assert_msg(r.status == status, "GET %s: %ld (wanted %ld): %s", path, r.status, status, r.body);
	json_t *j = json_incref(r.json);
	th_resp_free(&r);
	return j;
}

char *th_register(th_server *s, const char *id, const char *group)
{
	char body[256];
	th_resp r;
	if (group)
		snprintf(body, sizeof body, "{\"id\":\"%s\",\"group\":\"%s\"}", id, group);
	else
		snprintf(body, sizeof body, "{\"id\":\"%s\"}", id);
	th_http(s, "POST", "/v1/devices", NULL, body, NULL, &r);
	ck_assert_msg(r.status == 201, "register %s: %ld %s", id, r.status, r.body);
	char *secret = strdup(json_string_value(json_object_get(r.json, "secret")));
	th_resp_free(&r);
	return secret;
}

int th_wait_online(th_server *s, const char *id, int online, int timeout_ms)
{
	char path[128];
	long long end = th__now_ms() + timeout_ms;
	snprintf(path, sizeof path, "/v1/devices/%s", id);
	do {
		json_t *d = th_get_json(s, path, 200);
		int now = json_is_true(json_object_get(d, "online"));
		json_decref(d);
		if (now == online)
			return 0;
		th__sleep_ms(50);
	} while (th__now_ms() < end);
	return -1;
}

/* Walks the device's whole log; returns the id of the first match, or -1, and
 * the number of matches in *count. */
static long long th__scan_events(th_server *s, const char *id, const char *type, const char *msg,
				 int *count)
{
	char path[160];
	long long before = 0, found = -1;
	*count = 0;
	for (;;) {
		if (before)
			snprintf(path, sizeof path, "/v1/devices/%s/logs?limit=1000&before=%lld", id, before);
		else
			snprintf(path, sizeof path, "/v1/devices/%s/logs?limit=1000", id);
		json_t *page = th_get_json(s, path, 200), *ev;
		size_t i;
		json_array_foreach(json_object_get(page, "events"), i, ev) {
			if (strcmp(json_string_value(json_object_get(ev, "msg")), msg) != 0)
				continue;
			if (type && strcmp(json_string_value(json_object_get(ev, "type")), type) != 0)
				continue;
			(*count)++;
			found = json_integer_value(json_object_get(ev, "id"));
		}
		json_t *next = json_object_get(page, "next_before");
		before = json_is_integer(next) ? json_integer_value(next) : 0;
		json_decref(page);
		if (!before)
			return found;
	}
}

long long th_wait_event(th_server *s, const char *id, const char *type, const char *msg,
			int timeout_ms)
{
	long long end = th__now_ms() + timeout_ms;
	int count;
	do {
		long long found = th__scan_events(s, id, type, msg, &count);
		if (found >= 0)
			return found;
		th__sleep_ms(50);
	} while (th__now_ms() < end);
	return -1;
}

int th_count_events(th_server *s, const char *id, const char *msg)
{
	int count;
	th__scan_events(s, id, NULL, msg, &count);
	return count;
}

long long th_metric(th_server *s, const char *name)
{
	th_resp r;
	long long v = -1;
	th_http(s, "GET", "/metrics", NULL, NULL, "", &r);
	ck_assert_int_eq(r.status, 200);
	size_t n = strlen(name);
	for (char *line = r.body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		if (strncmp(line, name, n) == 0 && line[n] == ' ') {
			v = atoll(line + n + 1);
			break;
		}
	}
	th_resp_free(&r);
	return v;
}

int th_run_tests(const char *suite, int timeout_s, const TTest *const *tests, size_t n,
		 void (*setup)(void), void (*teardown)(void))
{
	/* TN_ONLY=WORD runs only the tests whose name holds WORD (while working
	 * on one); a suite left with none passes without running. */
	const char *only = getenv("TN_ONLY");
	size_t chosen = 0;
	for (size_t i = 0; i < n; i++)
		chosen += !only || strstr(tests[i]->name, only);
	if (!chosen)
		return 0;
	Suite *su = suite_create(suite);
	TCase *tc = tcase_create(suite);
	tcase_set_timeout(tc, timeout_s);
	if (setup)
		tcase_add_checked_fixture(tc, setup, teardown);
	for (size_t i = 0; i < n; i++)
		if (!only || strstr(tests[i]->name, only))
			tcase_add_test(tc, tests[i]);
	suite_add_tcase(su, tc);
	SRunner *sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

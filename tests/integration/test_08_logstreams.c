/* tests/integration/test_08_logstreams.c -- live log streams over SSE with
 * curl and raw sockets: every event exactly once across a disconnect and a
 * Last-Event-ID resume, also while the device logs fast; multi-device
 * streams with their state_change notices, bounded like events, and types
 * kept out of the queue; a stalled subscriber cut off with its notice while
 * devices and other subscribers carry on, its capture whole; a slow, bursty
 * reader whose sends are cut short again and again; many readers of one
 * device in both forms, sharing each event's formatted frame, each getting
 * every event once, in order; a stream's headers and opening comment at
 * once, heartbeats, readers that go away dropped with no event to send, and
 * a deleted stream that ends its connection (the waker's own sends, on
 * plain TCP); the same over TLS, where MHD sends everything; a stop while
 * clients keep reconnecting; the device's throttle, retention and the
 * fleet's history with filters. */
#define _GNU_SOURCE
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "harness.h"

#define DEV "00000000000e0001"
/* Makes a log line long enough to fill socket buffers soon. */
#define STEADY_PAD ", with some padding to fill the socket buffers: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

/* curl streaming a URL into out (SSE), optionally from a Last-Event-ID. */
static pid_t stream(th_server *s, const char *path, const char *last_id, const char *out)
{
	char url[300], auth[200], last[64];
	snprintf(url, sizeof url, "%s%s", s->http_url, path);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", s->token);
	snprintf(last, sizeof last, "Last-Event-ID: %s", last_id ? last_id : "");
	char *argv[] = { "/usr/bin/curl", "-sN", "-H", auth, "-H", "Accept: text/event-stream", "-H", last, url, NULL };
	if (!last_id) {
		argv[6] = url;
		argv[7] = NULL;
	}
	return th_spawn(argv, out);
}

/* curl following a device's log over https, trusting `cacert`. */
static pid_t stream_tls(th_server *s, const char *path, const char *cacert, const char *out)
{
	char url[300], auth[200];
	snprintf(url, sizeof url, "%s%s", s->http_url, path);
	snprintf(auth, sizeof auth, "Authorization: Bearer %s", s->token);
	char *argv[] = { "/usr/bin/curl", "-sN", "--cacert", (char *)cacert, "-H", auth, "-H",
			 "Accept: text/event-stream", url, NULL };
	return th_spawn(argv, out);
}

/* Waits until a metric has this value; returns it (the last one read). */
static long long wait_metric(th_server *s, const char *name, long long want, int timeout_ms)
{
	long long v = th_metric(s, name);
	for (int waited = 0; v != want && waited < timeout_ms; waited += 50) {
		usleep(50 * 1000);
		v = th_metric(s, name);
	}
	return v;
}

/* A stream's client on a raw socket with a receive buffer of rcvbuf bytes
 * (0: the default), for clients that read slowly, not at all, or leave:
 * returns the connected socket, the request sent. */
static int raw_stream(th_server *s, const char *path, int rcvbuf)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	if (rcvbuf)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s->http_port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	char req[600];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
			 "Accept: text/event-stream\r\n\r\n", path, s->token);
	ck_assert_int_eq(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
	return fd;
}

/* Reads fd into *text (grown, NUL-terminated) until it holds needle; 0, or
 * -1 after timeout_ms or at the end of the stream. */
static int recv_until(int fd, char **text, size_t *len, const char *needle, int timeout_ms)
{
	for (int waited = 0; !(*text && strstr(*text, needle)); ) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (waited >= timeout_ms)
			return -1;
		if (poll(&p, 1, 100) == 0) {
			waited += 100;
			continue;
		}
		char buf[65536];
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		if (n <= 0)
			return -1;
		char *grown = realloc(*text, *len + (size_t)n + 1);
		ck_assert_ptr_nonnull(grown);
		memcpy(grown + *len, buf, (size_t)n);
		*len += (size_t)n;
		grown[*len] = '\0';
		*text = grown;
	}
	return 0;
}

/* The ids of an SSE body's events, checking that it holds only whole
 * frames: comments, state_change notices, and events of "id:", "event:
 * message" and "data: {...}" lines.  Returns how many (at most max). */
static int parse_frames(const char *p, long long *ids, int max)
{
	int n = 0;
	while (*p) {
		const char *end = strstr(p, "\n\n");
		ck_assert_msg(end != NULL, "a frame cut short: %.80s", p);
		if (strncmp(p, "id: ", 4) == 0) {
			char *e;
			ck_assert_int_lt(n, max);
			ids[n++] = strtoll(p + 4, &e, 10);
			ck_assert_msg(strncmp(e, "\nevent: message\ndata: {", 23) == 0, "a bad frame: %.80s", p);
			const char *data = e + 22; /* its '{': one line, to the end of the frame */
			ck_assert_msg(end[-1] == '}' && !memchr(data, '\n', (size_t)(end - data)),
				      "a bad frame: %.*s", (int)(end - p), p);
		} else {
			ck_assert_msg(strncmp(p, ": ", 2) == 0 || strncmp(p, "event: state_change\ndata: ", 26) == 0,
				      "a bad frame: %.80s", p);
		}
		p = end + 2;
	}
	return n;
}

/* Checks an SSE capture against the device's log: after the HTTP headers,
 * only whole frames and, from its first event on, every event of the store
 * in order, each once; returns how many events. */
static int check_capture(th_server *s, const char *text, const char *last_msg)
{
	const char *p = strstr(text, "\r\n\r\n");
	ck_assert_ptr_nonnull(p);
	static long long ids[20000];
	int n = parse_frames(p + 4, ids, 20000);
	ck_assert_int_ge(n, 1);
	ck_assert_ptr_nonnull(strstr(text, last_msg));
	/* The store's events from the first one sent on: the same ids, in order. */
	char q[128];
	snprintf(q, sizeof q, "/v1/devices/" DEV "/logs?after=%lld&limit=1000", ids[0] - 1);
	int k = 0;
	for (;;) {
		json_t *page = th_get_json(s, q, 200), *ev;
		size_t i;
		json_array_foreach(json_object_get(page, "events"), i, ev) {
			if (k >= n)
				break;
			ck_assert_int_eq(ids[k], json_integer_value(json_object_get(ev, "id")));
			k++;
		}
		json_t *next = json_object_get(page, "next_after");
		int more = k < n && json_is_integer(next);
		if (more)
			snprintf(q, sizeof q, "/v1/devices/" DEV "/logs?after=%lld&limit=1000",
				 (long long)json_integer_value(next));
		json_decref(page);
		if (!more)
			break;
	}
	ck_assert_int_eq(k, n);
	return n;
}

/* tenderd's resident memory, in KB. */
static long rss_kb(pid_t pid)
{
	char path[64], *text;
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	text = th_read_file(path);
	char *p = text ? strstr(text, "VmRSS:") : NULL;
	long kb = p ? atol(p + 6) : -1;
	free(text);
	return kb;
}

/* The device sends count lines at rate (0: at once), over wss trusting
 * s->cacert if it is set. */
static void logs_at(th_server *s, const char *secret, const char *text, int count, const char *rate)
{
	char n[16];
	snprintf(n, sizeof n, "%d", count);
	char *argv[] = { (char *)th_bin("tender-sim"), "--url", s->ws_url, "--id", DEV, "--secret",
			 (char *)secret, "--log-count", n, "--log-text", (char *)text, "--log-rate", (char *)rate,
			 "--exit-when-done", NULL, NULL, NULL };
	if (s->cacert[0]) {
		argv[14] = "--ca";
		argv[15] = s->cacert;
	}
	ck_assert_int_eq(th_run(argv, NULL, 60), 0);
}

static void logs(th_server *s, const char *secret, const char *text, int count)
{
	logs_at(s, secret, text, count, "0");
}

/* Waits until the device is offline and each capture holds the newest
 * event of its log (its "Device disconnected"): then a count is exact. */
static void wait_store_end(th_server *s, const char *const *captures, int n, int timeout_ms)
{
	ck_assert_int_eq(th_wait_online(s, DEV, 0, timeout_ms), 0);
	json_t *page = th_get_json(s, "/v1/devices/" DEV "/logs?limit=1", 200);
	char line[40];
	snprintf(line, sizeof line, "id: %lld\n",
		 (long long)json_integer_value(json_object_get(json_array_get(json_object_get(page, "events"), 0), "id")));
	json_decref(page);
	for (int i = 0; i < n; i++)
		ck_assert_int_eq(th_wait_file(captures[i], line, timeout_ms), 0);
}

/* The ids of the "id:" lines of an SSE capture, in order. */
static int ids_of(const char *path, long long *ids, int max)
{
	char *text = th_read_file(path);
	int n = 0;
	for (char *p = text; p && (p = strstr(p, "\nid: ")) && n < max; p++)
		ids[n++] = atoll(p + 5);
	if (text && strncmp(text, "id: ", 4) == 0 && n < max) {
		memmove(ids + 1, ids, (size_t)n * sizeof *ids);
		ids[0] = atoll(text + 4);
		n++;
	}
	free(text);
	return n;
}

START_TEST(resume_with_last_event_id_gets_every_event_once)
{
	th_server s;
	th_server_start(&s, NULL);
	char *sec = th_register(&s, DEV, NULL);
	const char *a = th_tmp(&s, "a.sse"), *b = th_tmp(&s, "b.sse");

	pid_t c1 = stream(&s, "/v1/devices/" DEV "/logs?follow=1", NULL, a);
	ck_assert_int_eq(wait_metric(&s, "tender_log_stream_subscribers", 1, 10000), 1);
	logs(&s, sec, "first %n", 20);
	ck_assert_int_eq(th_wait_file(a, "first 20", 5000), 0);
	kill(c1, SIGKILL);
	waitpid(c1, NULL, 0);
	long long seen[1000];
	int n1 = ids_of(a, seen, 1000);
	ck_assert_int_ge(n1, 22); /* connected, 20 lines, disconnected (maybe not yet) */
	/* Missed while away. */
	logs(&s, sec, "second %n", 30);
	char last[32];
	snprintf(last, sizeof last, "%lld", seen[n1 - 1]);
	pid_t c2 = stream(&s, "/v1/devices/" DEV "/logs", last, b);
	ck_assert_int_eq(th_wait_file(b, "second 30", 5000), 0);
	logs(&s, sec, "third %n", 10);
	ck_assert_int_eq(th_wait_file(b, "third 10", 5000), 0);
	wait_store_end(&s, &b, 1, 10000);
	kill(c2, SIGKILL);
	waitpid(c2, NULL, 0);
	int n2 = ids_of(b, seen + n1, 1000 - n1);
	/* Every event of the device's log, exactly once, in order. */
	json_t *page = th_get_json(&s, "/v1/devices/" DEV "/logs?limit=1000", 200);
	json_t *events = json_object_get(page, "events");
	ck_assert_int_eq(n1 + n2, (int)json_array_size(events));
	for (int i = 0; i < n1 + n2; i++)
		ck_assert_int_eq(seen[i], json_integer_value(json_object_get(json_array_get(events, (size_t)i), "id")));
	json_decref(page);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(multi_device_stream_with_state_changes)
{
	th_server s;
	th_server_start(&s, NULL);
	char *sec = th_register(&s, DEV, NULL);
	free(th_register(&s, "00000000000e0002", NULL));
	th_resp r;
	th_http(&s, "POST", "/v1/logstreams", NULL, "{\"devices\":[\"00000000000e0002\"]}", NULL, &r);
	ck_assert_int_eq(r.status, 201);
	char path[200];
	snprintf(path, sizeof path, "/v1/logstreams/%s?format=text", json_string_value(json_object_get(r.json, "id")));
	char dpath[200];
	snprintf(dpath, sizeof dpath, "/v1/logstreams/%s/devices/" DEV, json_string_value(json_object_get(r.json, "id")));
	th_resp_free(&r);
	const char *out = th_tmp(&s, "ls.sse");
	pid_t c = stream(&s, path, NULL, out);
	ck_assert_int_eq(th_wait_file(out, "data: 1 device subscribed", 5000), 0);
	/* Not subscribed yet: not seen.  Then subscribed: seen, in the text form. */
	logs(&s, sec, "before %n", 1);
	th_http(&s, "PUT", dpath, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 204);
	th_resp_free(&r);
	ck_assert_int_eq(th_wait_file(out, "data: " DEV " subscribed", 5000), 0);
	logs(&s, sec, "after %n", 1);
	ck_assert_int_eq(th_wait_file(out, " [Device] after 1", 5000), 0);
	th_http(&s, "DELETE", dpath, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 204);
	th_resp_free(&r);
	ck_assert_int_eq(th_wait_file(out, "data: " DEV " unsubscribed", 5000), 0);
	char *text = th_read_file(out);
	ck_assert_ptr_null(strstr(text, "before 1"));
	ck_assert_ptr_nonnull(strstr(text, "event: state_change\ndata: opened"));
	free(text);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(stalled_subscriber_is_cut_off_others_carry_on)
{
	th_server s;
	th_server_start(&s, "--stream-queue 5000 --log-rate 0");
	char *sec = th_register(&s, DEV, NULL);
	const char *stalled = th_tmp(&s, "stalled.sse"), *good = th_tmp(&s, "good.sse");
	pid_t slow = stream(&s, "/v1/devices/" DEV "/logs?follow=1", NULL, stalled);
	pid_t fast = stream(&s, "/v1/devices/" DEV "/logs?follow=1", NULL, good);
	ck_assert_int_eq(wait_metric(&s, "tender_log_stream_subscribers", 2, 10000), 2);
	long rss_before = rss_kb(s.pid);
	kill(slow, SIGSTOP);
	/* Enough to fill the stalled socket's buffers and then its queue. */
	/* A busy device (2000 lines a second): enough to fill the stalled
	 * socket's buffers and then its queue, while the other keeps up (also
	 * in the sanitizer build, on a loaded machine). */
	logs_at(&s, sec, "busy line %n with some padding to fill the socket buffers faster, "
			 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 40000, "2000");
	ck_assert_int_eq(th_wait_file(good, "busy line 40000 ", 60000), 0);
	ck_assert_int_ge(th_metric(&s, "tender_log_stream_cutoffs_total"), 1);
	/* Every event was stored (the newest device line is the last one sent). */
	json_t *page = th_get_json(&s, "/v1/devices/" DEV "/logs?limit=3", 200), *ev;
	size_t i;
	int found = 0;
	json_array_foreach(json_object_get(page, "events"), i, ev)
		found |= strncmp(json_string_value(json_object_get(ev, "msg")), "busy line 40000 ", 16) == 0;
	json_decref(page);
	ck_assert(found);
	ck_assert_int_ge(th_metric(&s, "tender_events_written_total"), 40002);
	ck_assert_int_eq(th_metric(&s, "tender_log_stream_cutoffs_total"), 1); /* only the stalled one */
	/* Bounded: the stalled reader's queue was dropped; 40,000 lines of 150
	 * bytes held for it would be tens of MB with the parsed frames. */
	/* (Measured in the plain build: ASan's quarantine and shadow memory keep
	 * freed memory resident on purpose.) */
	long rss_after = rss_kb(s.pid);
	const char *san = getenv("TN_SANITIZERS");
	if (!san || !*san)
		ck_assert_msg(rss_before > 0 && rss_after - rss_before < 32 * 1024,
			      "tenderd grew from %ld to %ld KB", rss_before, rss_after);
	kill(slow, SIGCONT);
	ck_assert_int_eq(th_wait_file(stalled, "closed: too slow", 10000), 0);
	ck_assert_int_eq(th_wait_file(stalled, "reconnect with Last-Event-ID", 1000), 0);
	ck_assert_int_eq(th_wait_pid(slow, 10000), 0); /* the server ended it */
	/* What it got before its cut-off (the tail of a send its socket did not
	 * take went out later): whole frames, consecutive ids, none twice, and
	 * the notice says to resume right after the last one. */
	char *text = th_read_file(stalled);
	static long long ids[40100];
	int n = parse_frames(text, ids, 40100);
	ck_assert_int_ge(n, 2);
	for (int k = 1; k < n; k++)
		ck_assert_int_eq(ids[k], ids[k - 1] + 1);
	char resume[80];
	snprintf(resume, sizeof resume, "reconnect with Last-Event-ID: %lld to resume\n\n", ids[n - 1]);
	ck_assert_ptr_nonnull(strstr(text, resume));
	free(text);
	kill(fast, SIGKILL);
	waitpid(fast, NULL, 0);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(fast_logger_is_throttled_and_says_so)
{
	th_server s;
	th_server_start(&s, "--log-rate 10");
	char *sec = th_register(&s, DEV, NULL);
	logs(&s, sec, "flood %n", 100);
	/* Every line is either stored or counted in a status line: never silently lost. */
	int stored = 0, dropped = 0;
	for (int tries = 0; tries < 50 && stored + dropped < 100; tries++) {
		usleep(100 * 1000);
		stored = dropped = 0;
		json_t *page = th_get_json(&s, "/v1/devices/" DEV "/logs?limit=1000", 200), *ev;
		size_t i;
		json_array_foreach(json_object_get(page, "events"), i, ev) {
			const char *msg = json_string_value(json_object_get(ev, "msg"));
			if (strncmp(msg, "flood ", 6) == 0)
				stored++;
			else if (strstr(msg, "log lines dropped: over the limit of 10 per second") ||
				 strstr(msg, "log line dropped: over the limit of 10 per second"))
				dropped += atoi(msg);
		}
		json_decref(page);
	}
	ck_assert_int_eq(stored + dropped, 100);
	ck_assert_int_le(stored, 25);
	ck_assert_int_ge(dropped, 75);
	ck_assert_int_ge(th_metric(&s, "tender_errors_total{kind=\"device_log_rate\"}"), 75);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

static int count_device_events(th_server *s)
{
	json_t *page = th_get_json(s, "/v1/devices/" DEV "/logs?limit=1000", 200);
	int n = (int)json_array_size(json_object_get(page, "events"));
	json_decref(page);
	return n;
}

START_TEST(retention_by_count_then_by_age)
{
	th_server s;
	/* The retention pass runs a second after the start, then every 5 s:
	 * lines older than 8 s survive the pass that keeps the newest 50, even
	 * if writing them took seconds (a loaded machine, the sanitizers). */
	th_server_start(&s, "--retention-count 50 --retention-seconds 8 --log-rate 0");
	char *sec = th_register(&s, DEV, NULL);
	logs(&s, sec, "old %n", 300);
	ck_assert_int_ge(th_wait_event(&s, DEV, "device", "old 300", 5000), 1);
	/* In the background: the newest 50 stay, then nothing older than 4 s. */
	int n = 0;
	for (int i = 0; i < 100 && (n = count_device_events(&s)) > 50; i++)
		usleep(100 * 1000);
	ck_assert_int_eq(n, 50);
	ck_assert_int_ge(th_wait_event(&s, DEV, "device", "old 300", 100), 1);
	for (int i = 0; i < 250 && (n = count_device_events(&s)) > 0; i++)
		usleep(100 * 1000);
	ck_assert_int_eq(n, 0);
	ck_assert_int_ge(th_metric(&s, "tender_events_expired_total"), 302);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

START_TEST(fleet_history_with_filters)
{
	th_server s;
	th_server_start(&s, NULL);
	char *sec = th_register(&s, DEV, NULL);
	free(th_register(&s, "00000000000e0002", NULL));
	logs(&s, sec, "needle %n", 3);
	logs(&s, sec, "hay %n", 3);
	/* Stored a moment after the device left: two connects, two disconnects. */
	for (int i = 0; i < 100; i++) {
		json_t *st = th_get_json(&s, "/v1/devices/" DEV "/logs?type=status", 200);
		size_t got = json_array_size(json_object_get(st, "events"));
		json_decref(st);
		if (got >= 4)
			break;
		usleep(50 * 1000);
	}
	json_t *all = th_get_json(&s, "/v1/logs?limit=1000", 200);
	ck_assert_int_ge((int)json_array_size(json_object_get(all, "events")), 10);
	json_decref(all);
	json_t *found = th_get_json(&s, "/v1/logs?q=needle&type=device", 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(found, "events")), 3);
	json_decref(found);
	json_t *status = th_get_json(&s, "/v1/devices/" DEV "/logs?type=status", 200), *ev;
	size_t i;
	json_array_foreach(json_object_get(status, "events"), i, ev)
		ck_assert_str_eq(json_string_value(json_object_get(ev, "type")), "status");
	ck_assert_int_eq((int)json_array_size(json_object_get(status, "events")), 4);
	json_decref(status);
	json_t *future = th_get_json(&s, "/v1/logs?since=2100-01-01T00:00:00Z", 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(future, "events")), 0);
	json_decref(future);
	json_t *past = th_get_json(&s, "/v1/logs?until=2000-01-01T00:00:00Z&device=" DEV, 200);
	ck_assert_int_eq((int)json_array_size(json_object_get(past, "events")), 0);
	json_decref(past);
	th_resp r;
	th_http(&s, "GET", "/v1/logs?type=gossip", NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 400);
	th_resp_free(&r);
	th_http(&s, "GET", "/v1/logs?since=yesterday", NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 400);
	th_resp_free(&r);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* Each event is formatted once per form and shared by every reader's queue:
 * readers in both forms at once still each get every event, once, in order,
 * each in its own form. */
START_TEST(many_readers_share_each_event_in_both_forms)
{
	enum { READERS = 8, LINES = 300 };
	th_server s;
	th_server_start(&s, "--log-rate 0");
	char *sec = th_register(&s, DEV, NULL);
	const char *out[READERS];
	pid_t c[READERS];
	for (int i = 0; i < READERS; i++) {
		char name[32];
		snprintf(name, sizeof name, "r%d.sse", i);
		out[i] = th_tmp(&s, name);
		c[i] = stream(&s, i % 2 ? "/v1/devices/" DEV "/logs?follow=1&format=text" : "/v1/devices/" DEV "/logs?follow=1",
			      NULL, out[i]);
	}
	ck_assert_int_eq(wait_metric(&s, "tender_log_stream_subscribers", READERS, 10000), READERS);
	logs(&s, sec, "shared %n", LINES);
	for (int i = 0; i < READERS; i++)
		ck_assert_int_eq(th_wait_file(out[i], "shared 300", 10000), 0);
	wait_store_end(&s, out, READERS, 10000);
	static long long ids[READERS][1000];
	int n[READERS];
	for (int i = 0; i < READERS; i++) {
		kill(c[i], SIGKILL);
		waitpid(c[i], NULL, 0);
		n[i] = ids_of(out[i], ids[i], 1000);
		char *text = th_read_file(out[i]);
		ck_assert_ptr_nonnull(strstr(text, i % 2 ? " [Device] shared 150" : "\"msg\":\"shared 150\""));
		ck_assert_ptr_null(strstr(text, i % 2 ? "\"msg\":" : " [Device] "));
		free(text);
	}
	/* All the same events, in the store's order, none twice. */
	json_t *page = th_get_json(&s, "/v1/devices/" DEV "/logs?limit=1000", 200);
	json_t *events = json_object_get(page, "events");
	size_t first = 0;
	while (first < json_array_size(events) &&
	       json_integer_value(json_object_get(json_array_get(events, first), "id")) != ids[0][0])
		first++;
	ck_assert_int_ge(n[0], LINES);
	ck_assert_int_eq(n[0], (int)(json_array_size(events) - first));
	for (int i = 0; i < READERS; i++) {
		ck_assert_int_eq(n[i], n[0]);
		for (int k = 0; k < n[i]; k++)
			ck_assert_int_eq(ids[i][k],
					 json_integer_value(json_object_get(json_array_get(events, first + (size_t)k), "id")));
	}
	json_decref(page);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* Readers on plain TCP are sent to by the server's waker threads
 * themselves, MHD holding their connections suspended (outside its own
 * epoll and timeouts): a reader whose client went away is found at once
 * (the wakers watch the sockets for a hang-up), with no event to send, and
 * its connection and subscription end; a named stream deleted while read
 * gets its last "closed" notice and its connection ends. */
START_TEST(readers_that_leave_are_dropped_and_a_deleted_stream_ends)
{
	enum { READERS = 5 };
	th_server s;
	th_server_start(&s, "--log-rate 0");
	char *sec = th_register(&s, DEV, NULL);
	const char *out[READERS];
	pid_t c[READERS];
	for (int i = 0; i < READERS; i++) {
		char name[32];
		snprintf(name, sizeof name, "leave%d.sse", i);
		out[i] = th_tmp(&s, name);
		c[i] = stream(&s, "/v1/devices/" DEV "/logs?follow=1", NULL, out[i]);
	}
	ck_assert_int_eq(wait_metric(&s, "tender_log_stream_subscribers", READERS, 10000), READERS);
	logs(&s, sec, "here %n", 5);
	for (int i = 0; i < READERS; i++)
		ck_assert_int_eq(th_wait_file(out[i], "here 5", 10000), 0);
	/* Quiet from here on: nothing is sent that could fail. */
	for (int i = 0; i < READERS; i++) {
		kill(c[i], SIGKILL);
		waitpid(c[i], NULL, 0);
	}
	ck_assert_int_eq(wait_metric(&s, "tender_log_stream_subscribers", 0, 10000), 0);

	th_resp r;
	th_http(&s, "POST", "/v1/logstreams", NULL, "{\"devices\":[\"" DEV "\"]}", NULL, &r);
	ck_assert_int_eq(r.status, 201);
	char path[200], id[64];
	snprintf(id, sizeof id, "%s", json_string_value(json_object_get(r.json, "id")));
	th_resp_free(&r);
	snprintf(path, sizeof path, "/v1/logstreams/%s", id);
	const char *named = th_tmp(&s, "named.sse");
	pid_t n = stream(&s, path, NULL, named);
	ck_assert_int_eq(th_wait_file(named, "data: 1 device subscribed", 10000), 0);
	logs(&s, sec, "named %n", 3);
	ck_assert_int_eq(th_wait_file(named, "\"msg\":\"named 3\"", 10000), 0);
	th_http(&s, "DELETE", path, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 204);
	th_resp_free(&r);
	ck_assert_int_eq(th_wait_file(named, "event: state_change\ndata: closed\n", 10000), 0);
	ck_assert_int_eq(th_wait_pid(n, 10000), 0); /* the server ended the response */
	ck_assert_int_eq(wait_metric(&s, "tender_log_stream_subscribers", 0, 10000), 0);
	th_http(&s, "GET", path, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* A stream's headers go out at once, followed by a comment line, even on a
 * quiet device (libmicrohttpd sends headers with MSG_MORE: they would wait
 * for the first event); then, on plain TCP with the libmicrohttpd 0.9.75
 * direct sending was checked against, the server's waker threads write the
 * live events themselves.  (Over TLS MHD writes everything: a_stream_over_tls.) */
START_TEST(a_stream_opens_at_once_and_its_events_go_direct)
{
	th_server s;
	th_server_start(&s, "--log-rate 0");
	char *sec = th_register(&s, DEV, NULL);
	int fd = raw_stream(&s, "/v1/devices/" DEV "/logs?follow=1", 0);
	char *text = NULL;
	size_t len = 0;
	ck_assert_int_eq(recv_until(fd, &text, &len, "\r\n\r\n: \n\n", 10000), 0);
	ck_assert_int_eq(strncmp(text, "HTTP/1.0 200 OK\r\n", 17), 0);
	ck_assert_ptr_nonnull(strstr(text, "Content-Type: text/event-stream"));
	long long mhd = th_metric(&s, "tender_log_stream_mhd_writes_total");
	ck_assert_int_ge(mhd, 1); /* the opening comment */
	logs(&s, sec, "direct %n", 3);
	ck_assert_int_eq(recv_until(fd, &text, &len, "\"msg\":\"direct 3\"", 10000), 0);
	ck_assert_int_ge(th_metric(&s, "tender_log_stream_direct_writes_total"), 1);
	/* (One more if MHD's thread was held up between its write of the
	 * comment and its next call until the first event came.) */
	ck_assert_int_le(th_metric(&s, "tender_log_stream_mhd_writes_total"), mhd + 1);
	free(text);
	close(fd);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* A client that leaves a quiet named stream is noticed at once, with no
 * event to send: its connection ends, and with it the stream (a GET
 * answers 404, not 409 "already being read" forever), and the stream no
 * longer counts against its token.  A quiet stream gets a comment line
 * every 15 s (proxies keep it open; a client gone without a word is found
 * when it fails to send). */
START_TEST(a_quiet_stream_gets_heartbeats_and_one_left_is_dropped)
{
	th_server s;
	th_server_start(&s, "--log-rate 0");
	free(th_register(&s, DEV, NULL));
	th_resp r;
	th_http(&s, "POST", "/v1/logstreams", NULL, "{\"devices\":[\"" DEV "\"]}", NULL, &r);
	ck_assert_int_eq(r.status, 201);
	char path[200];
	snprintf(path, sizeof path, "/v1/logstreams/%s", json_string_value(json_object_get(r.json, "id")));
	th_resp_free(&r);
	int fd = raw_stream(&s, path, 0);
	char *text = NULL;
	size_t len = 0;
	ck_assert_int_eq(recv_until(fd, &text, &len, "data: opened\n\n", 10000), 0);
	ck_assert_int_eq(th_metric(&s, "tender_log_streams"), 1);
	close(fd);
	ck_assert_int_eq(wait_metric(&s, "tender_log_streams", 0, 10000), 0);
	ck_assert_int_eq(wait_metric(&s, "tender_log_stream_subscribers", 0, 10000), 0);
	th_http(&s, "GET", path, NULL, NULL, NULL, &r);
	ck_assert_int_eq(r.status, 404);
	th_resp_free(&r);

	free(text);
	text = NULL;
	len = 0;
	fd = raw_stream(&s, "/v1/devices/" DEV "/logs?follow=1", 0);
	ck_assert_int_eq(recv_until(fd, &text, &len, "\r\n\r\n: \n\n", 10000), 0);
	ck_assert_int_eq(recv_until(fd, &text, &len, "\r\n\r\n: \n\n: \n\n", 40000), 0);
	free(text);
	close(fd);
	ck_assert_int_eq(wait_metric(&s, "tender_log_stream_subscribers", 0, 10000), 0);
	th_server_cleanup(&s);
}
END_TEST

/* A named stream's notices are bounded like its events: a stream of 2000
 * devices starts with one notice for them all, not 2000 that would fill a
 * queue of 100 and cut it off at its first event; notices past the bound
 * (a PUT for each of 150 devices before anyone reads) cut it off, with
 * advice it can follow (a named stream cannot resume with Last-Event-ID). */
START_TEST(a_named_streams_notices_are_bounded)
{
	enum { MANY = 2000 };
	th_server s;
	th_server_start(&s, "--stream-queue 100 --log-rate 0");
	char *sec = th_register(&s, DEV, NULL);
	size_t cap = 64 + MANY * 20;
	char *body = malloc(cap);
	int n = snprintf(body, cap, "{\"devices\":[\"" DEV "\"");
	for (int i = 1; i < MANY; i++)
		n += snprintf(body + n, cap - (size_t)n, ",\"%016x\"", 0xa0000 + i);
	snprintf(body + n, cap - (size_t)n, "]}");
	th_resp r;
	th_http(&s, "POST", "/v1/logstreams", NULL, body, NULL, &r);
	free(body);
	ck_assert_int_eq(r.status, 201);
	ck_assert_int_eq((int)json_array_size(json_object_get(r.json, "devices")), MANY);
	char path[200];
	snprintf(path, sizeof path, "/v1/logstreams/%s", json_string_value(json_object_get(r.json, "id")));
	th_resp_free(&r);
	logs(&s, sec, "among many %n", 1);
	const char *out = th_tmp(&s, "many.sse");
	pid_t c = stream(&s, path, NULL, out);
	ck_assert_int_eq(th_wait_file(out, "\"msg\":\"among many 1\"", 10000), 0);
	char *text = th_read_file(out);
	ck_assert_ptr_nonnull(strstr(text, "data: opened\n\nevent: state_change\ndata: 2000 devices subscribed\n\n"));
	ck_assert_ptr_null(strstr(text, "closed"));
	free(text);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);

	th_http(&s, "POST", "/v1/logstreams", NULL, "{\"devices\":[\"" DEV "\"]}", NULL, &r);
	ck_assert_int_eq(r.status, 201);
	snprintf(path, sizeof path, "/v1/logstreams/%s", json_string_value(json_object_get(r.json, "id")));
	th_resp_free(&r);
	for (int i = 0; i < 150; i++) {
		char dpath[300];
		snprintf(dpath, sizeof dpath, "%s/devices/%016x", path, 0xb0000 + i);
		th_http(&s, "PUT", dpath, NULL, NULL, NULL, &r);
		ck_assert_int_eq(r.status, 204);
		th_resp_free(&r);
	}
	ck_assert_int_ge(th_metric(&s, "tender_log_stream_cutoffs_total"), 1);
	out = th_tmp(&s, "puts.sse");
	c = stream(&s, path, NULL, out);
	ck_assert_int_eq(th_wait_pid(c, 10000), 0); /* it ends after its last word */
	text = th_read_file(out);
	ck_assert_ptr_nonnull(strstr(text, "data: closed: too slow: 100 events were waiting; this stream cannot "
				     "resume: create a new one, and read what it missed with GET /v1/logs?after="));
	ck_assert_ptr_null(strstr(text, "Last-Event-ID"));
	free(text);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* A client that reads slowly, in bursts, through a small receive buffer,
 * while a device logs fast: the server's sends to it are cut short again
 * and again (what a send left goes to libmicrohttpd, which writes it once
 * the socket drains), and each time the reader catches up it goes back to
 * the waker's own sends; it gets every event of the store, whole, in
 * order, once. */
START_TEST(a_slow_bursty_reader_gets_every_event_once)
{
	enum { LINES = 1500 };
	th_server s;
	th_server_start(&s, "--log-rate 0 --stream-queue 100000");
	char *sec = th_register(&s, DEV, NULL);
	int fd = raw_stream(&s, "/v1/devices/" DEV "/logs?follow=1", 4096);
	char *text = NULL;
	size_t len = 0;
	ck_assert_int_eq(recv_until(fd, &text, &len, "\r\n\r\n: \n\n", 10000), 0);
	long long direct0 = th_metric(&s, "tender_log_stream_direct_writes_total"),
		  mhd0 = th_metric(&s, "tender_log_stream_mhd_writes_total");
	/* 3 KB lines, 1500 a second: 4.5 MB/s, more than the socket buffers
	 * hold (the server's grows to 4 MB) in a pause of the reader's. */
	static char line[3100], last[3200];
	char n[16];
	memset(line, 'x', 3000);
	memcpy(line, "bursty %n ", 10);
	snprintf(n, sizeof n, "%d", LINES);
	char *const sim[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV, "--secret", sec,
			      "--log-count", n, "--log-text", line, "--log-rate", "1500", "--exit-when-done", NULL };
	pid_t dev = th_spawn(sim, th_tmp(&s, "sim.out"));
	snprintf(last, sizeof last, "\"msg\":\"bursty %d %s\"", LINES, line + 10);
	/* 64 KB every 2 ms, faster than the device, with a pause of 600 ms
	 * after every 50 reads: about as fast on the whole. */
	static char buf[65536];
	for (int i = 0; i < 20000 && !(text && strstr(text + (len > 8000 ? len - 8000 : 0), last)); i++) {
		ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (got == 0)
			break;
		if (got > 0) {
			text = realloc(text, len + (size_t)got + 1);
			memcpy(text + len, buf, (size_t)got);
			len += (size_t)got;
			text[len] = '\0';
		}
		usleep(i % 50 == 49 ? 600000 : 2000);
	}
	ck_assert_int_eq(th_wait_pid(dev, 60000), 0);
	ck_assert_int_eq(recv_until(fd, &text, &len, last, 30000), 0);
	long long direct = th_metric(&s, "tender_log_stream_direct_writes_total") - direct0,
		  mhd = th_metric(&s, "tender_log_stream_mhd_writes_total") - mhd0;
	fprintf(stderr, "slow bursty reader: %lld direct writes, %lld by MHD\n", direct, mhd);
	ck_assert_int_ge(check_capture(&s, text, last), LINES);
	ck_assert_int_ge(mhd, 10);    /* cut short, handed back */
	ck_assert_int_ge(direct, 10); /* and back to the waker's sends */
	free(text);
	close(fd);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* A reader that resumes with Last-Event-ID while its device keeps logging
 * fast: it subscribes, then replays the store's history, then goes live,
 * skipping live events its history already sent; every event after the
 * resume point arrives whole, in order, exactly once. */
START_TEST(resume_while_the_device_logs_gets_every_event_once)
{
	enum { LINES = 4000 };
	th_server s;
	th_server_start(&s, "--log-rate 0");
	char *sec = th_register(&s, DEV, NULL);
	char n[16];
	snprintf(n, sizeof n, "%d", LINES);
	char *const sim[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV, "--secret", sec,
			      "--log-count", n, "--log-text", "racing %n" STEADY_PAD, "--log-rate", "1000",
			      "--exit-when-done", NULL };
	pid_t dev = th_spawn(sim, th_tmp(&s, "sim.out"));
	long long from = th_wait_event(&s, DEV, "device", "racing 100" STEADY_PAD, 20000);
	ck_assert_int_ge(from, 1);
	ck_assert_int_ge(th_wait_event(&s, DEV, "device", "racing 1000" STEADY_PAD, 20000), 1);
	/* Resumed from line 100's id, 900 lines behind and the device going on. */
	char path[128];
	snprintf(path, sizeof path, "/v1/devices/" DEV "/logs?follow=1&last_event_id=%lld", from);
	int fd = raw_stream(&s, path, 0);
	char *text = NULL;
	size_t len = 0;
	char last[200];
	snprintf(last, sizeof last, "\"msg\":\"racing %d%s\"", LINES, STEADY_PAD);
	ck_assert_int_eq(recv_until(fd, &text, &len, last, 60000), 0);
	ck_assert_int_eq(th_wait_pid(dev, 30000), 0);
	long long first;
	char *id = strstr(text, "\nid: ");
	ck_assert_ptr_nonnull(id);
	first = atoll(id + 5);
	ck_assert_int_eq(first, from + 1);
	ck_assert_int_ge(check_capture(&s, text, last), LINES - 100);
	free(text);
	close(fd);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* A stream of some types only: events of the other types never enter its
 * queue (200 device lines before it is read, a queue of 50: it is not cut
 * off), and it gets the status lines. */
START_TEST(other_types_stay_out_of_a_streams_queue)
{
	th_server s;
	th_server_start(&s, "--stream-queue 50 --log-rate 0");
	char *sec = th_register(&s, DEV, NULL);
	th_resp r;
	th_http(&s, "POST", "/v1/logstreams", NULL, "{\"devices\":[\"" DEV "\"],\"types\":[\"status\"]}", NULL, &r);
	ck_assert_int_eq(r.status, 201);
	char path[200];
	snprintf(path, sizeof path, "/v1/logstreams/%s", json_string_value(json_object_get(r.json, "id")));
	th_resp_free(&r);
	logs(&s, sec, "not a status %n", 200);
	ck_assert_int_eq(th_wait_online(&s, DEV, 0, 10000), 0);
	ck_assert_int_ge(th_wait_event(&s, DEV, "status", "Device disconnected", 10000), 1);
	const char *out = th_tmp(&s, "types.sse");
	pid_t c = stream(&s, path, NULL, out);
	ck_assert_int_eq(th_wait_file(out, "\"msg\":\"Device disconnected\"", 10000), 0);
	char *text = th_read_file(out);
	ck_assert_ptr_nonnull(strstr(text, "\"msg\":\"Device connected\""));
	ck_assert_ptr_null(strstr(text, "not a status"));
	ck_assert_ptr_null(strstr(text, "closed"));
	free(text);
	ck_assert_int_eq(th_metric(&s, "tender_log_stream_cutoffs_total"), 0);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

/* Over TLS only MHD can write the stream (its records): the same stream,
 * history then live, every event once and in order. */
START_TEST(a_stream_over_tls)
{
	char dir[] = "/tmp/tender-ls-tls-XXXXXX", cert[128], key[128];
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(cert, sizeof cert, "%s/cert.pem", dir);
	snprintf(key, sizeof key, "%s/key.pem", dir);
	char *const gen[] = { "/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
			      "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
			      "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", NULL };
	ck_assert_int_eq(th_run(gen, NULL, 30), 0);
	char extra[400];
	snprintf(extra, sizeof extra, "--log-rate 0 --tls-cert '%s' --tls-key '%s'", cert, key);
	th_server s;
	th_server_start(&s, extra);
	snprintf(s.cacert, sizeof s.cacert, "%s", cert);
	ck_assert_ptr_nonnull(strstr(s.http_url, "https://"));
	char *sec = th_register(&s, DEV, NULL);
	logs(&s, sec, "before %n", 20);
	ck_assert_int_ge(th_wait_event(&s, DEV, "device", "before 20", 10000), 1);
	const char *out = th_tmp(&s, "tls.sse");
	pid_t c = stream_tls(&s, "/v1/devices/" DEV "/logs?follow=1&last_event_id=0", cert, out);
	ck_assert_int_eq(th_wait_file(out, "\"msg\":\"before 20\"", 10000), 0);
	logs(&s, sec, "live %n", 200);
	ck_assert_int_eq(th_wait_file(out, "\"msg\":\"live 200\"", 10000), 0);
	ck_assert_int_eq(th_metric(&s, "tender_log_stream_direct_writes_total"), 0);
	ck_assert_int_ge(th_metric(&s, "tender_log_stream_mhd_writes_total"), 2);
	wait_store_end(&s, &out, 1, 10000);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	static long long ids[1000];
	int got = ids_of(out, ids, 1000);
	json_t *page = th_get_json(&s, "/v1/devices/" DEV "/logs?limit=1000", 200);
	json_t *events = json_object_get(page, "events");
	ck_assert_int_ge(got, 222);
	ck_assert_int_le(got, (int)json_array_size(events));
	for (int i = 0; i < got; i++)
		ck_assert_int_eq(ids[i], json_integer_value(json_object_get(json_array_get(events, (size_t)i), "id")));
	json_decref(page);
	free(sec);
	th_server_cleanup(&s);
	unlink(cert);
	unlink(key);
	rmdir(dir);
}
END_TEST

/* A client in a child process that reads a stream to its end and at once
 * connects again, until nothing listens (at most 100,000 times, 60 s);
 * exits with how many streams it read, at most 255. */
static pid_t reconnecting_client(th_server *s, const char *path)
{
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid)
		return pid;
	int streams = 0;
	time_t end = time(NULL) + 60;
	for (int i = 0; i < 100000 && time(NULL) < end; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s->http_port) };
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
			break;
		char req[600], buf[4096];
		int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
				 "Accept: text/event-stream\r\n\r\n", path, s->token);
		if (send(fd, req, (size_t)n, MSG_NOSIGNAL) == n)
			while (recv(fd, buf, sizeof buf, 0) > 0)
				;
		close(fd);
		streams++;
	}
	_exit(streams > 255 ? 255 : streams);
}

/* A server that stops while readers are attached and their clients keep
 * reconnecting (as `tenderctl logs -f` does, 500 ms after the
 * shutting-down notice; here at once), with a device logging that the stop
 * then disconnects: no stream opened during the shutdown is left suspended
 * when the HTTP server stops (libmicrohttpd aborts then), and no event
 * published afterwards wakes one.  tenderd exits 0 (and under the
 * sanitizers with no leak and no use after free). */
START_TEST(stop_while_readers_keep_reconnecting)
{
	enum { CLIENTS = 4 };
	th_server s;
	th_server_start(&s, "--log-rate 0");
	char *sec = th_register(&s, DEV, NULL);
	const char *first = th_tmp(&s, "first.sse"), *sim_out = th_tmp(&s, "sim.out");
	char *const sim[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV, "--secret", sec,
			      "--log-count", "1000000", "--log-text", "steady %n", "--log-rate", "200", NULL };
	pid_t dev = th_spawn(sim, sim_out);
	ck_assert_int_ge(th_wait_event(&s, DEV, "device", "steady 1", 10000), 1);
	pid_t c = stream(&s, "/v1/devices/" DEV "/logs?follow=1", NULL, first);
	pid_t again[CLIENTS];
	for (int i = 0; i < CLIENTS; i++)
		again[i] = reconnecting_client(&s, "/v1/devices/" DEV "/logs?follow=1");
	ck_assert_int_eq(wait_metric(&s, "tender_log_stream_subscribers", 1 + CLIENTS, 10000), 1 + CLIENTS);
	ck_assert_int_eq(th_wait_file(first, "steady ", 10000), 0);
	ck_assert_int_eq(th_server_stop(&s), 0);
	ck_assert_int_eq(th_wait_file(first, "closed: the server is shutting down", 1000), 0);
	for (int i = 0; i < CLIENTS; i++)
		ck_assert_int_ge(th_wait_pid(again[i], 70000), 1);
	th_wait_pid(c, 10000);
	if (th_wait_pid(dev, 10000) < 0) {
		kill(dev, SIGKILL);
		waitpid(dev, NULL, 0);
	}
	free(sec);
	th_server_cleanup(&s);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		resume_with_last_event_id_gets_every_event_once,
		multi_device_stream_with_state_changes,
		stalled_subscriber_is_cut_off_others_carry_on,
		fast_logger_is_throttled_and_says_so,
		retention_by_count_then_by_age,
		fleet_history_with_filters,
		many_readers_share_each_event_in_both_forms,
		readers_that_leave_are_dropped_and_a_deleted_stream_ends,
		a_stream_opens_at_once_and_its_events_go_direct,
		a_quiet_stream_gets_heartbeats_and_one_left_is_dropped,
		a_named_streams_notices_are_bounded,
		a_slow_bursty_reader_gets_every_event_once,
		resume_while_the_device_logs_gets_every_event_once,
		other_types_stay_out_of_a_streams_queue,
		a_stream_over_tls,
		stop_while_readers_keep_reconnecting,
	};
	return th_run_tests("08_logstreams", 120, tests, sizeof tests / sizeof tests[0], NULL, NULL);
}

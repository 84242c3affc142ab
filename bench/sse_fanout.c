/* bench/sse_fanout.c -- N Server-Sent Events subscribers on one URL, and the
 * delivery latency of what they receive.
 *
 *   sse_fanout PORT PATH TOKEN N EVENTS TIMEOUT_S
 *
 * Opens N connections to 127.0.0.1:PORT, each GET PATH with the bearer TOKEN
 * and Accept: text/event-stream, and prints "ready" on stdout once every one
 * has its 200 response head.  Every "data:" line that holds "t=DIGITS" (the
 * sender's wall-clock time in microseconds, tender-sim --log-text '%t') is
 * one delivery, timed against this process's wall clock.  Ends when every
 * connection has had EVENTS deliveries, or after TIMEOUT_S, and prints
 *   deliveries D of N*EVENTS; latency p50 A us, p99 B us, max C us
 * and, on stderr, how many streams the server ended early.  Exit status 0
 * when every delivery arrived, 1 otherwise, 2 on bad use.
 * HTTP/1.0, so the body comes unchunked: a line is never split by chunk
 * framing.  One thread, epoll, no library: the client should cost little
 * beside the server it measures. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_LEN 8192

struct sub {
	int fd;
	int head_done;		/* the response head has been read */
	long got;		/* deliveries */
	size_t len;		/* bytes of an unfinished line in buf */
	char buf[LINE_MAX_LEN];
};

static uint32_t *lat;
static size_t n_lat, cap_lat;

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int connect_one(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	if (fd < 0)
		return -1;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* One whole line of the stream (without its newline). */
static void on_line(struct sub *s, const char *line, size_t len, int64_t now)
{
	const char *t;

	if (!s->head_done) {
		if (len == 0 || (len == 1 && line[0] == '\r'))
			s->head_done = 1;
		else if (!strncmp(line, "HTTP/1.", 7) && strncmp(line + 9, "200", 3)) {
			fprintf(stderr, "sse_fanout: %.*s\n", (int)len, line);
			exit(1);
		}
		return;
	}
	if (len < 5 || strncmp(line, "data:", 5))
		return;
	t = memmem(line, len, "t=", 2);
	if (!t)
		return;
	int64_t sent = strtoll(t + 2, NULL, 10), d = now - sent;

	s->got++;
	if (n_lat == cap_lat) {
		cap_lat = cap_lat ? cap_lat * 2 : 1 << 16;
		lat = realloc(lat, cap_lat * sizeof *lat);
		if (!lat) {
			fprintf(stderr, "sse_fanout: out of memory\n");
			exit(1);
		}
	}
	lat[n_lat++] = d < 0 ? 0 : d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

/* Reads what is there; 0 when the server closed. */
static int on_readable(struct sub *s)
{
	char in[65536];
	ssize_t n = read(s->fd, in, sizeof in);
	int64_t now = now_us();

	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
		return 0;
	for (ssize_t i = 0; i < n; i++) {
		if (in[i] == '\n') {
			on_line(s, s->buf, s->len, now);
			s->len = 0;
		} else if (s->len < sizeof s->buf) {
			s->buf[s->len++] = in[i];
		}
	}
	return 1;
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: sse_fanout PORT PATH TOKEN N EVENTS TIMEOUT_S\n");
		return 2;
	}
	int port = atoi(argv[1]), n = atoi(argv[4]), ep = epoll_create1(0);
	long events = atol(argv[5]), ready = 0, done = 0, closed = 0;
	int64_t deadline = now_us() + atoll(argv[6]) * 1000000LL;
	struct sub *subs = calloc((size_t)n, sizeof *subs);
	char req[1024];
	int reqlen = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n"
			      "Authorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n",
			      argv[2], argv[3]);

	if (n < 1 || !subs || ep < 0)
		return 2;
	for (int i = 0; i < n; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &subs[i] };

		subs[i].fd = connect_one(port);
		if (subs[i].fd < 0 || write(subs[i].fd, req, (size_t)reqlen) != reqlen) {
			fprintf(stderr, "sse_fanout: connection %d: %s\n", i, strerror(errno));
			return 1;
		}
		epoll_ctl(ep, EPOLL_CTL_ADD, subs[i].fd, &ev);
	}
	while (done < n && now_us() < deadline) {
		struct epoll_event evs[256];
		int k = epoll_wait(ep, evs, 256, 100);

		for (int i = 0; i < k; i++) {
			struct sub *s = evs[i].data.ptr;
			int was_head = s->head_done;
			long was_got = s->got;

			if (!on_readable(s)) {
				epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
				if (s->got < events)
					closed++;
				done += s->got < events;
				continue;
			}
			if (!was_head && s->head_done && ++ready == n) {
				printf("ready\n");
				fflush(stdout);
			}
			if (was_got < events && s->got >= events)
				done++;
		}
	}
	if (closed)
		fprintf(stderr, "sse_fanout: the server ended %ld streams early\n", closed);
	qsort(lat, n_lat, sizeof *lat, cmp_u32);
	printf("deliveries %zu of %ld; latency p50 %u us, p99 %u us, max %u us\n", n_lat,
	       (long)n * events, n_lat ? lat[n_lat / 2] : 0, n_lat ? lat[n_lat * 99 / 100] : 0,
	       n_lat ? lat[n_lat - 1] : 0);
	return n_lat >= (size_t)n * (size_t)events ? 0 : 1;
}

/* bench/sse_fanout.c -- N Server-Sent Events subscribers on one URL, and the
 * delivery latency of what they receive.
 *
 *   sse_fanout PORT PATH TOKEN N EVENTS TIMEOUT_S
 *
 * Opens N connections to 127.0.0.1:PORT, each GET PATH with the bearer TOKEN
 * and Accept: text/event-stream, and prints "ready" on stdout once every one
 * has its 200 response head.  Every "data:" line that holds "t=DIGITS" (the
 * sender's wall-clock time in microseconds, tender-sim --log-text '%t') is
 * one delivery, timed against this process's wall clock when the read that
 * brought it returned.  Ends when every connection has had EVENTS
 * deliveries, or after TIMEOUT_S, and prints
 *   deliveries D of N*EVENTS; latency p50 A us, p99 B us, max C us
 *   split: to the server's send p50 A us, p99 B us; from there to this read p50 C us, p99 D us
 *   client: U s user, S s system, R reads, B bytes
 * and, on stderr, how many streams the server ended early.  Exit status 0
 * when every delivery arrived, 1 otherwise, 2 on bad use.
 *
 * The split says whose the latency is.  Each read asks the kernel for the
 * receive timestamp of the newest data it returns (SO_TIMESTAMPING, software
 * receive stamps): on loopback that is taken when the server's send() hands
 * the bytes to the loopback device, so "to the server's send" is the
 * server's part (device -> store -> bus -> SSE writer; an upper bound for an
 * event that came in an earlier segment of the same read) and "from there to
 * this read" is the time the bytes waited for this client (a lower bound).
 * If the second part is large, the client, not the server, is behind.
 *
 * HTTP/1.0, so the body comes unchunked: a line is never split by chunk
 * framing.  One thread, epoll, 256 KiB reads, lines found with memchr, and
 * latencies counted into fixed 10 us histograms (no per-event allocation,
 * no sort): the client should cost little beside the server it measures. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/net_tstamp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_LEN 8192
#define READ_LEN (256 * 1024)
#define HIST_US 10              /* bucket width */
#define HIST_N (1 << 20)        /* up to 10.5 s; beyond: the last bucket */

struct sub {
	int fd;
	int head_done;		/* the response head has been read */
	long got;		/* deliveries */
	size_t len;		/* bytes of an unfinished line in buf */
	char buf[LINE_MAX_LEN];
};

/* Latency histograms: whole, server's part, client's part. */
struct hist {
	uint32_t *n;
	uint64_t count;
	int64_t max;
};
static struct hist h_all, h_srv, h_cli;
static uint64_t n_reads, n_bytes;

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void hist_add(struct hist *h, int64_t us)
{
	if (us < 0)
		us = 0;
	int64_t b = us / HIST_US;
	h->n[b < HIST_N ? b : HIST_N - 1]++;
	h->count++;
	if (us > h->max)
		h->max = us;
}

/* The q-th quantile (0..1), in us (the bucket's lower edge). */
static int64_t hist_q(const struct hist *h, double q)
{
	uint64_t want = (uint64_t)(q * (double)h->count), seen = 0;

	if (!h->count)
		return 0;
	for (int64_t b = 0; b < HIST_N; b++) {
		seen += h->n[b];
		if (seen > want)
			return b * HIST_US;
	}
	return (int64_t)(HIST_N - 1) * HIST_US;
}

static int connect_one(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1,
	    stamps = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;

	if (fd < 0)
		return -1;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &stamps, sizeof stamps);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* One whole line of the stream (without its newline); `kern` is the
 * kernel's receive stamp of the read (0: none). */
static void on_line(struct sub *s, const char *line, size_t len, int64_t now, int64_t kern)
{
	const char *t;

	if (!s->head_done) {
		if (len == 0 || (len == 1 && line[0] == '\r'))
			s->head_done = 1;
		else if (len >= 12 && !strncmp(line, "HTTP/1.", 7) && strncmp(line + 9, "200", 3)) {
			fprintf(stderr, "sse_fanout: %.*s\n", (int)len, line);
			exit(1);
		}
		return;
	}
	if (len < 5 || memcmp(line, "data:", 5))
		return;
	t = memmem(line, len, "t=", 2);
	if (!t)
		return;
	int64_t sent = 0;
	for (t += 2; t < line + len && *t >= '0' && *t <= '9'; t++)
		sent = sent * 10 + (*t - '0');
	s->got++;
	hist_add(&h_all, now - sent);
	if (kern) {
		hist_add(&h_srv, kern - sent);
		hist_add(&h_cli, now - kern);
	}
}

/* Reads what is there; 0 when the server closed. */
static int on_readable(struct sub *s)
{
	static char in[READ_LEN];
	char ctl[256];
	struct iovec iov = { .iov_base = in, .iov_len = sizeof in };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
			     .msg_controllen = sizeof ctl };
	ssize_t n = recvmsg(s->fd, &mh, 0);
	int64_t now = now_us(), kern = 0;

	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
		return 0;
	if (n < 0)
		return 1;
	n_reads++;
	n_bytes += (uint64_t)n;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPING) {
			struct timespec ts[3];
			memcpy(ts, CMSG_DATA(c), sizeof ts);
			if (ts[0].tv_sec)
				kern = (int64_t)ts[0].tv_sec * 1000000 + ts[0].tv_nsec / 1000;
		}

	const char *p = in, *end = in + n;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t k = (size_t)((nl ? nl : end) - p);
		if (s->len || !nl) {
			/* A line split across reads: joined in buf (cut if too long). */
			size_t room = sizeof s->buf - s->len;
			memcpy(s->buf + s->len, p, k < room ? k : room);
			s->len += k < room ? k : room;
			if (nl) {
				on_line(s, s->buf, s->len, now, kern);
				s->len = 0;
			}
		} else {
			on_line(s, p, k, now, kern);
		}
		p += k + (nl != NULL);
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
	struct sub *subs = calloc((size_t)(n > 0 ? n : 1), sizeof *subs);
	char req[1024];
	int reqlen = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n"
			      "Authorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n",
			      argv[2], argv[3]);

	h_all.n = calloc(HIST_N, sizeof *h_all.n);
	h_srv.n = calloc(HIST_N, sizeof *h_srv.n);
	h_cli.n = calloc(HIST_N, sizeof *h_cli.n);
	if (n < 1 || !subs || ep < 0 || !h_all.n || !h_srv.n || !h_cli.n)
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

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("deliveries %llu of %ld; latency p50 %lld us, p99 %lld us, max %lld us\n",
	       (unsigned long long)h_all.count, (long)n * events, (long long)hist_q(&h_all, 0.5),
	       (long long)hist_q(&h_all, 0.99), (long long)h_all.max);
	printf("split: to the server's send p50 %lld us, p99 %lld us; from there to this read p50 %lld us, "
	       "p99 %lld us\n", (long long)hist_q(&h_srv, 0.5), (long long)hist_q(&h_srv, 0.99),
	       (long long)hist_q(&h_cli, 0.5), (long long)hist_q(&h_cli, 0.99));
	printf("client: %.2f s user, %.2f s system, %llu reads, %llu bytes\n",
	       ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6,
	       (unsigned long long)n_reads, (unsigned long long)n_bytes);
	return h_all.count >= (uint64_t)n * (uint64_t)events ? 0 : 1;
}

/* bench/http_fetch.c -- N clients each fetching one file over HTTP in chunks,
 * the way tender-sim's devices fetch a firmware image: the firmware
 * delivery benchmark's client for its peer (nginx).
 *
 *   http_fetch URL N SIZE CHUNK TIMEOUT_S
 *
 * N clients at once (libcurl multi, one kept-alive connection each), each
 * asking for the SIZE-byte file CHUNK bytes at a time (Range requests, one
 * at a time, as a device asks for one chunk at a time) and hashing what it
 * gets with SHA-256, as tender-sim does.  Prints
 *   fetched BYTES in SECONDS s: RATE bytes/s; sha256 OK|MISMATCH
 * the time from the start to the last byte of the last client.  Exit
 * status 0 when every client got every byte and the hashes agree, else 1;
 * 2 on bad use. */

#include <curl/curl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct client {
	CURL *h;
	EVP_MD_CTX *md;
	long off;		/* bytes received */
	char range[64];
	unsigned char digest[32];
	int done;
};

static long size, chunk;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t on_data(char *p, size_t sz, size_t n, void *arg)
{
	struct client *c = arg;

	EVP_DigestUpdate(c->md, p, sz * n);
	c->off += (long)(sz * n);
	return sz * n;
}

/* Asks for the next chunk. */
static void next_range(struct client *c)
{
	long end = c->off + chunk - 1;

	if (end >= size)
		end = size - 1;
	snprintf(c->range, sizeof c->range, "%ld-%ld", c->off, end);
	curl_easy_setopt(c->h, CURLOPT_RANGE, c->range);
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: http_fetch URL N SIZE CHUNK TIMEOUT_S\n");
		return 2;
	}
	int n = atoi(argv[2]), left, running = 0, ok = 1;
	size = atol(argv[3]);
	chunk = atol(argv[4]);
	double t0, deadline;
	struct client *cs = calloc((size_t)n, sizeof *cs);
	CURLM *m;

	if (n < 1 || size < 1 || chunk < 1 || !cs)
		return 2;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	m = curl_multi_init();
	curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)n + 16);
	t0 = now_s();
	deadline = t0 + atof(argv[5]);
	for (int i = 0; i < n; i++) {
		struct client *c = &cs[i];

		c->h = curl_easy_init();
		c->md = EVP_MD_CTX_new();
		EVP_DigestInit_ex(c->md, EVP_sha256(), NULL);
		curl_easy_setopt(c->h, CURLOPT_URL, argv[1]);
		curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, on_data);
		curl_easy_setopt(c->h, CURLOPT_WRITEDATA, c);
		curl_easy_setopt(c->h, CURLOPT_PRIVATE, c);
		curl_easy_setopt(c->h, CURLOPT_TCP_NODELAY, 1L);
		next_range(c);
		curl_multi_add_handle(m, c->h);
	}
	left = n;
	while (left > 0 && now_s() < deadline) {
		CURLMsg *msg;
		int q;

		curl_multi_perform(m, &running);
		while ((msg = curl_multi_info_read(m, &q))) {
			struct client *c;
			long code = 0;

			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
			curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &code);
			curl_multi_remove_handle(m, c->h);
			if (msg->data.result != CURLE_OK || code != 206) {
				fprintf(stderr, "http_fetch: %s, HTTP %ld\n",
					curl_easy_strerror(msg->data.result), code);
				return 1;
			}
			if (c->off < size) {
				next_range(c);
				curl_multi_add_handle(m, c->h);
			} else {
				EVP_DigestFinal_ex(c->md, c->digest, NULL);
				c->done = 1;
				left--;
			}
		}
		if (left > 0)
			curl_multi_poll(m, NULL, 0, 100, NULL);
	}
	double t = now_s() - t0;
	long long bytes = 0;

	for (int i = 0; i < n; i++) {
		bytes += cs[i].off;
		ok &= cs[i].done && !memcmp(cs[i].digest, cs[0].digest, 32);
	}
	printf("fetched %lld in %.3f s: %.0f bytes/s; sha256 %s\n", bytes, t, (double)bytes / t,
	       ok ? "OK" : "MISMATCH");
	return ok && left == 0 ? 0 : 1;
}

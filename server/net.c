/* server/net.c -- listening sockets and address keys (see net.h). */
#define _GNU_SOURCE
#include "net.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int net_listen(const char *bind_addr, int port, int backlog, int nonblocking, const char *what, int *fd,
	       int *bound_port, tn_error *err)
{
	struct addrinfo hints = { .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
				  .ai_socktype = SOCK_STREAM }, *res = NULL;
	char service[16];
	int one = 1, rc;

	snprintf(service, sizeof service, "%d", port);
	if ((rc = getaddrinfo(bind_addr, service, &hints, &res)) != 0)
		return tn_err(err, TN_EINVAL, "--bind %s: %s (a numeric IPv4 or IPv6 address)", bind_addr,
			      gai_strerror(rc));
	int s = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
	    bind(s, res->ai_addr, res->ai_addrlen) || listen(s, backlog)) {
		rc = tn_err(err, TN_EIO, "cannot listen on %s port %d for %s: %s", bind_addr, port, what,
			    strerror(errno));
		if (s >= 0)
			close(s);
		freeaddrinfo(res);
		return rc;
	}
	freeaddrinfo(res);
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	getsockname(s, (struct sockaddr *)&ss, &len);
	*bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						    : ((struct sockaddr_in *)&ss)->sin_port);
	*fd = s;
	return 0;
}

uint64_t net_addr_key(const struct sockaddr *sa)
{
	const unsigned char *p;
	size_t n;
	uint64_t h = 0xcbf29ce484222325ULL;

	if (sa && sa->sa_family == AF_INET) {
		p = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
		n = 4;
	} else if (sa && sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		p = a->s6_addr;
		n = 16;
		if (IN6_IS_ADDR_V4MAPPED(a)) {
			p += 12;
			n = 4;
		}
	} else {
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

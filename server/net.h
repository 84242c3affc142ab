/* server/net.h -- listening sockets and address keys, shared by the device
 * endpoint (device.c) and the HTTP API (api.c).
 * Threads: any (no state). */
#ifndef TN_NET_H
#define TN_NET_H

#include <stdint.h>
#include <sys/socket.h>

#include "tn.h"

/* A TCP socket listening on bind_addr (a numeric IPv4 or IPv6 address) and
 * port (0: one the kernel picks), close-on-exec, non-blocking when asked.
 * Sets *fd (owned: close it) and *bound_port.  `what` names the listener in
 * the error ("devices", "the HTTP API"). */
int net_listen(const char *bind_addr, int port, int backlog, int nonblocking, const char *what, int *fd,
	       int *bound_port, tn_error *err);

/* A 64-bit key for a peer's address (its bytes, FNV-1a; an IPv4-mapped IPv6
 * address keys as the IPv4 one), for counting connections per address: a
 * collision only makes two addresses share one count.  0 for another family. */
uint64_t net_addr_key(const struct sockaddr *sa);

#endif

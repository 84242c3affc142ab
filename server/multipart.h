/* server/multipart.h -- a bounded multipart/form-data parser (RFC 7578) for
 * firmware uploads; we avoid libmicrohttpd's POST processor.  Parts point
 * into the body, nothing is copied.  Threads: any (pure). */
#ifndef TN_MULTIPART_H
#define TN_MULTIPART_H

#include <stddef.h>

#include "tn.h"

#define MULTIPART_MAX_PARTS 8

typedef struct multipart_part {
	char name[64];          /* form field name */
	char filename[128];     /* "" when none */
	char content_type[96];  /* "" when none */
	const char *data;       /* borrowed from the body */
	size_t len;
} multipart_part;

/* The boundary from a Content-Type header value ("multipart/form-data;
 * boundary=..."), quoted or not.  Returns 0 or TN_EINVAL. */
int multipart_boundary(const char *content_type, char *out, size_t cap, tn_error *err);

/* Splits body into at most MULTIPART_MAX_PARTS parts.  Returns 0 or
 * TN_EINVAL saying what is malformed. */
int multipart_parse(const char *body, size_t len, const char *boundary, multipart_part *parts,
		    int *nparts, tn_error *err);

/* The part named `name`, or NULL. */
const multipart_part *multipart_find(const multipart_part *parts, int n, const char *name);

#endif

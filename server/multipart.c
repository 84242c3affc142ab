/* server/multipart.c -- bounded multipart/form-data parsing (see multipart.h). */
#define _GNU_SOURCE
#include "multipart.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

int multipart_boundary(const char *content_type, char *out, size_t cap, tn_error *err)
{
	if (!content_type || strncasecmp(content_type, "multipart/form-data", 19) != 0)
		return tn_err(err, TN_EINVAL, "the body must be multipart/form-data");
	const char *b = strcasestr(content_type, "boundary=");
	if (!b)
		return tn_err(err, TN_EINVAL, "multipart/form-data without a boundary");
	b += 9;
	size_t n;
	if (*b == '"') {
		b++;
		const char *end = strchr(b, '"');
		if (!end)
			return tn_err(err, TN_EINVAL, "unterminated quoted boundary");
		n = (size_t)(end - b);
	} else {
		n = strcspn(b, "; \t");
	}
	/* RFC 2046: 1 to 70 characters. */
	if (n == 0 || n > 70 || n >= cap)
		return tn_err(err, TN_EINVAL, "the boundary must be 1 to 70 characters");
	memcpy(out, b, n);
	out[n] = '\0';
	return 0;
}

/* Copies the value of `key="..."` from a Content-Disposition line. */
static void multipart__param(const char *line, size_t len, const char *key, char *out, size_t cap)
{
	char pattern[32];
	snprintf(pattern, sizeof pattern, "%s=\"", key);
	out[0] = '\0';
	const char *p = memmem(line, len, pattern, strlen(pattern));
	/* "name=" must not match inside "filename=". */
	while (p && p > line && p[-1] != ' ' && p[-1] != ';')
		p = memmem(p + 1, len - (size_t)(p + 1 - line), pattern, strlen(pattern));
	if (!p)
		return;
	p += strlen(pattern);
	const char *end = memchr(p, '"', len - (size_t)(p - line));
	if (!end)
		return;
	size_t n = (size_t)(end - p);
	if (n >= cap)
		n = cap - 1;
	memcpy(out, p, n);
	out[n] = '\0';
}

/* Parses the header block [h, h + len) of one part. */
static int multipart__headers(const char *h, size_t len, multipart_part *part, tn_error *err)
{
	while (len > 0) {
		const char *eol = memmem(h, len, "\r\n", 2);
		size_t n = eol ? (size_t)(eol - h) : len;
		if (n > 20 && strncasecmp(h, "Content-Disposition:", 20) == 0) {
			multipart__param(h, n, "name", part->name, sizeof part->name);
			multipart__param(h, n, "filename", part->filename, sizeof part->filename);
		} else if (n > 13 && strncasecmp(h, "Content-Type:", 13) == 0) {
			const char *v = h + 13;
			size_t vn = n - 13;
			while (vn && *v == ' ') {
				v++;
				vn--;
			}
			snprintf(part->content_type, sizeof part->content_type, "%.*s", (int)vn, v);
		}
		if (!eol)
			break;
		len -= n + 2;
		h = eol + 2;
	}
	if (!part->name[0])
		return tn_err(err, TN_EINVAL, "a part has no Content-Disposition name");
	return 0;
}

int multipart_parse(const char *body, size_t len, const char *boundary, multipart_part *parts,
		    int *nparts, tn_error *err)
{
	char delim[80];
	int dlen = snprintf(delim, sizeof delim, "--%s", boundary);
	const char *p = body, *end = body + len;

	*nparts = 0;
	if (dlen < 3 || (size_t)dlen >= sizeof delim)
		return tn_err(err, TN_EINVAL, "bad boundary");
	/* The first delimiter may follow a preamble. */
	p = memmem(p, len, delim, (size_t)dlen);
	if (!p)
		return tn_err(err, TN_EINVAL, "the body does not contain the boundary");
	for (;;) {
		p += dlen;
		if (end - p >= 2 && p[0] == '-' && p[1] == '-')
			return *nparts ? 0 : tn_err(err, TN_EINVAL, "the body has no parts");
		if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
			return tn_err(err, TN_EINVAL, "a boundary line must end with CRLF");
		p += 2;
		if (*nparts >= MULTIPART_MAX_PARTS)
			return tn_err(err, TN_EINVAL, "more than %d parts", MULTIPART_MAX_PARTS);
		const char *hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
		if (!hend)
			return tn_err(err, TN_EINVAL, "part %d: headers never end", *nparts + 1);
		multipart_part *part = &parts[*nparts];
		memset(part, 0, sizeof *part);
		if (multipart__headers(p, (size_t)(hend - p), part, err))
			return TN_EINVAL;
		const char *data = hend + 4;
		/* The data ends at CRLF + delimiter. */
		const char *next = data;
		for (;;) {
			next = memmem(next, (size_t)(end - next), delim, (size_t)dlen);
			if (!next)
				return tn_err(err, TN_EINVAL, "part '%s' is not terminated by the boundary",
					      part->name);
			if (next - data >= 2 && next[-2] == '\r' && next[-1] == '\n')
				break;
			if (next == data) /* empty data directly followed by a delimiter is malformed */
				return tn_err(err, TN_EINVAL, "part '%s' is malformed", part->name);
			next++;
		}
		part->data = data;
		part->len = (size_t)(next - 2 - data);
		(*nparts)++;
		p = next;
	}
}

const multipart_part *multipart_find(const multipart_part *parts, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (strcmp(parts[i].name, name) == 0)
			return &parts[i];
	return NULL;
}

/* server/frame.c -- the device frame parser (see frame.h and docs/protocol.md).
 * Owns: both paths of frame_parse -- the scanner for log, msg and fetch frames and
 * the jansson path for everything -- and the frame's owned text.
 * Threads: any (pure). */
#include "frame.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const frame__names[] = {
	[FRAME_HELLO] = "hello", [FRAME_LOG] = "log", [FRAME_MSG] = "msg",
	[FRAME_UPDATE_STATUS] = "update_status", [FRAME_FETCH] = "fetch",
};

const char *frame_type_name(frame_type t)
{
	return frame__names[t];
}

int frame_nesting_depth(const char *buf, size_t len, int limit)
{
	int depth = 0, max = 0, in_str = 0;

	for (size_t i = 0; i < len; i++) {
		char c = buf[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = 0;
		} else if (c == '"') {
			in_str = 1;
		} else if (c == '[' || c == '{') {
			if (++depth > max && (max = depth) > limit)
				return max;
		} else if (c == ']' || c == '}') {
			depth--;
		}
	}
	return max;
}

static int frame__fail(metrics_error_kind *kind, metrics_error_kind k, tn_error *err,
		       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int frame__fail(metrics_error_kind *kind, metrics_error_kind k, tn_error *err,
		       const char *fmt, ...)
{
	va_list ap;

	*kind = k;
	if (err) {
		err->code = TN_EINVAL;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
	}
	return TN_EINVAL;
}

/* A string member: required or optional, bounded, printable ASCII if asked. */
static int frame__str(json_t *obj, const char *key, int required, size_t max, int printable,
		      const char **out, metrics_error_kind *kind, tn_error *err)
{
	json_t *v = json_object_get(obj, key);
	*out = NULL;
	if (!v || json_is_null(v)) {
		if (required)
			return frame__fail(kind, ERR_BAD_FRAME, err, "'%s' is required", key);
		return 0;
	}
	if (!json_is_string(v))
		return frame__fail(kind, ERR_BAD_FRAME, err, "'%s' must be a string", key);
	size_t n = json_string_length(v);
	const char *s = json_string_value(v);
	if (n > max)
		return frame__fail(kind, ERR_BAD_FRAME, err, "'%s' is longer than %ld bytes", key, (long)max);
	if (strlen(s) != n)
		return frame__fail(kind, ERR_BAD_FRAME, err, "'%s' contains a NUL character", key);
	if (printable)
		for (size_t i = 0; i < n; i++)
			if (s[i] < 0x20 || s[i] > 0x7e)
				return frame__fail(kind, ERR_BAD_FRAME, err,
						   "'%s' must be printable ASCII (byte %ld is not)", key, (long)i);
	*out = s;
	return 0;
}

/* An integer member in [min, max]; absent gives `dflt` unless required. */
static int frame__int(json_t *obj, const char *key, int required, int64_t min, int64_t max,
		      int64_t dflt, int64_t *out, metrics_error_kind *kind, tn_error *err)
{
	json_t *v = json_object_get(obj, key);
	if (!v || json_is_null(v)) {
		if (required)
			return frame__fail(kind, ERR_BAD_FRAME, err, "'%s' is required", key);
		*out = dflt;
		return 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
		return frame__fail(kind, ERR_BAD_FRAME, err, "'%s' must be an integer from %lld to %lld", key,
				   (long long)min, (long long)max);
	*out = json_integer_value(v);
	return 0;
}

static int frame__hex(const char *s, size_t digits, uint64_t *out)
{
	uint64_t v = 0;
	if (strlen(s) != digits)
		return -1;
	for (size_t i = 0; i < digits; i++) {
		char c = s[i];
		int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
			: (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
		if (d < 0)
			return -1;
		v = v << 4 | (uint64_t)d;
	}
	*out = v;
	return 0;
}

static int frame__hello(frame *f, metrics_error_kind *kind, tn_error *err)
{
	json_t *o = f->root;
	const char *id;
	int rc;

	if ((rc = frame__str(o, "id", 1, 16, 1, &id, kind, err)))
		return rc;
	if (tn_device_id_parse(id, &f->u.hello.id))
		return frame__fail(kind, ERR_BAD_FRAME, err, "'id' must be 16 hex digits, not '%s'", id);
	if ((rc = frame__str(o, "enroll", 0, FRAME_MAX_SECRET, 1, &f->u.hello.enroll, kind, err)) ||
	    (rc = frame__str(o, "secret", !f->u.hello.enroll, FRAME_MAX_SECRET, 1, &f->u.hello.secret, kind, err)))
		return rc;
	if (f->u.hello.enroll && f->u.hello.secret)
		return frame__fail(kind, ERR_BAD_FRAME, err, "give 'secret' or 'enroll', not both");
	if ((rc = frame__str(o, "hw", 0, FRAME_MAX_SHORT, 1, &f->u.hello.hw, kind, err)) ||
	    (rc = frame__str(o, "fw", 0, FRAME_MAX_SHORT, 1, &f->u.hello.fw, kind, err)))
		return rc;

	json_t *flash = json_object_get(o, "flash");
	if (!flash || json_is_null(flash))
		return 0;
	if (!json_is_object(flash))
		return frame__fail(kind, ERR_BAD_FRAME, err, "'flash' must be an object");
	f->u.hello.has_flash = 1;
	const char *jedec;
	if ((rc = frame__str(flash, "jedec", 0, 6, 1, &jedec, kind, err)))
		return rc;
	if (jedec) {
		uint64_t v;
		if (frame__hex(jedec, 6, &v))
			return frame__fail(kind, ERR_BAD_FRAME, err,
					   "'flash.jedec' must be 6 hex digits, not '%s'", jedec);
		f->u.hello.jedec = (uint32_t)v;
		f->u.hello.has_jedec = 1;
	}
	if ((rc = frame__int(flash, "size", 0, 1, INT64_C(1) << 40, 0, &f->u.hello.flash_size, kind, err)))
		return rc;
	return frame__str(flash, "sfdp", 0, FRAME_MAX_SFDP, 1, &f->u.hello.sfdp, kind, err);
}

static int frame__log(frame *f, metrics_error_kind *kind, tn_error *err)
{
	const char *level;
	int rc;

	if ((rc = frame__str(f->root, "level", 0, 16, 1, &level, kind, err)) ||
	    (rc = frame__str(f->root, "msg", 1, FRAME_MAX_LOG_MSG, 0, &f->u.log.msg, kind, err)))
		return rc;
	if (level && strcmp(level, "info") != 0 && strcmp(level, "error") != 0)
		return frame__fail(kind, ERR_BAD_FRAME, err,
				   "'level' must be \"info\" or \"error\", not '%s'", level);
	f->u.log.is_error = level && strcmp(level, "error") == 0;
	return 0;
}

static int frame__msg(frame *f, metrics_error_kind *kind, tn_error *err)
{
	int rc = frame__str(f->root, "name", 1, FRAME_MAX_NAME, 0, &f->u.msg.name, kind, err);
	if (rc)
		return rc;
	if (f->u.msg.name[0] == '\0')
		return frame__fail(kind, ERR_BAD_FRAME, err, "'name' must not be empty");
	json_t *data = json_object_get(f->root, "data");
	if (!data)
		return 0;
	/* Handed on as text (sup_device_message): the fast path writes the same. */
	if (!(f->text = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY)))
		return frame__fail(kind, ERR_BAD_JSON, err, "out of memory encoding 'data'");
	f->u.msg.data_json = f->text;
	return 0;
}

static int frame__update_status(frame *f, metrics_error_kind *kind, tn_error *err)
{
	static const char *const states[] = { "downloading", "downloaded", "installing", "failed" };
	int rc;

	if ((rc = frame__str(f->root, "id", 1, 64, 1, &f->u.update_status.id, kind, err)) ||
	    (rc = frame__str(f->root, "state", 1, 32, 1, &f->u.update_status.state, kind, err)) ||
	    (rc = frame__str(f->root, "error", 0, 1024, 0, &f->u.update_status.error, kind, err)) ||
	    (rc = frame__int(f->root, "offset", 0, 0, INT64_C(1) << 40, -1, &f->u.update_status.offset,
			     kind, err)))
		return rc;
	for (size_t i = 0; i < TN_ARRAY_LEN(states); i++)
		if (strcmp(f->u.update_status.state, states[i]) == 0)
			return 0;
	return frame__fail(kind, ERR_BAD_FRAME, err,
			   "'state' must be downloading, downloaded, installing or failed, not '%s'",
			   f->u.update_status.state);
}

static int frame__fetch(frame *f, metrics_error_kind *kind, tn_error *err)
{
	int rc;
	if ((rc = frame__str(f->root, "id", 1, 64, 1, &f->u.fetch.id, kind, err)) ||
	    (rc = frame__int(f->root, "offset", 1, 0, INT64_C(1) << 40, 0, &f->u.fetch.offset, kind, err)) ||
	    (rc = frame__int(f->root, "length", 1, 1, 1 << 20, 0, &f->u.fetch.length, kind, err)))
		return rc;
	return 0;
}

int frame_parse_json(const char *buf, size_t len, frame *out, metrics_error_kind *kind, tn_error *err)
{
	static const struct {
		const char *name;
		frame_type type;
		int (*parse)(frame *, metrics_error_kind *, tn_error *);
	} types[] = {
		{ "hello", FRAME_HELLO, frame__hello }, { "log", FRAME_LOG, frame__log },
		{ "msg", FRAME_MSG, frame__msg },
		{ "update_status", FRAME_UPDATE_STATUS, frame__update_status },
		{ "fetch", FRAME_FETCH, frame__fetch },
	};
	json_error_t jerr;
	int rc;

	memset(out, 0, sizeof *out);
	if (frame_nesting_depth(buf, len, FRAME_MAX_DEPTH) > FRAME_MAX_DEPTH)
		return frame__fail(kind, ERR_BAD_JSON, err, "JSON nested deeper than %d levels", FRAME_MAX_DEPTH);
	out->root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!out->root) {
		*kind = ERR_BAD_JSON;
		return tn_err(err, TN_EINVAL, "invalid JSON at line %d, column %d: %s", jerr.line,
			      jerr.column, jerr.text);
	}
	if (!json_is_object(out->root)) {
		rc = frame__fail(kind, ERR_BAD_JSON, err, "a frame must be a JSON object");
		goto fail;
	}
	const char *type;
	if ((rc = frame__str(out->root, "type", 1, 32, 1, &type, kind, err)))
		goto fail;
	for (size_t i = 0; i < TN_ARRAY_LEN(types); i++) {
		if (strcmp(type, types[i].name) != 0)
			continue;
		out->type = types[i].type;
		if ((rc = types[i].parse(out, kind, err)))
			goto fail;
		return 0;
	}
	rc = frame__fail(kind, ERR_UNKNOWN_TYPE, err, "unknown frame type '%s'", type);
fail:
	frame_release(out);
	return rc;
}

/* --- the fast path ------------------------------------------------------------
 * Log lines and messages are nearly every frame a busy device sends, and
 * fetches every frame a downloading one sends; a jansson tree for them
 * (json_loadb, a hashtable per object, a string copy per member, then
 * json_dumps of "data" for the agent) cost more than the rest of their way to
 * the store, the agent or the image.  This scanner reads them in one pass
 * into one buffer.  It accepts a strict subset of what frame_parse_json
 * accepts and gives the same frame for it; anything it is not sure of (an
 * unknown or escaped key, a duplicate, bytes or escapes jansson would refuse,
 * \u0000, a number out of range, any limit reached) makes it give up, and the
 * jansson path decides, with its own error.  tests/fuzz/fuzz_frame_diff.c runs
 * both paths on every input and aborts on any difference. */

/* Keys of the objects inside "data" open at once; past it, jansson decides. */
#define FAST_MAX_KEYS 64

struct fast {
	const char *p, *end; /* what is left of the input */
	char *out;           /* owned: the values, NUL-terminated, become frame.text */
	size_t used, cap;
	struct {
		size_t off, len;   /* a key as written in out (unique per spelling) */
	} keys[FAST_MAX_KEYS];
	int nkeys;
};

static int fast__reserve(struct fast *s, size_t n)
{
	if (s->cap - s->used >= n)
		return 0;
	size_t cap = s->cap * 2 > s->used + n ? s->cap * 2 : s->used + n;
	char *out = realloc(s->out, cap);
	if (!out)
		return -1;
	s->out = out;
	s->cap = cap;
	return 0;
}

static int fast__putc(struct fast *s, char c)
{
	if (fast__reserve(s, 1))
		return -1;
	s->out[s->used++] = c;
	return 0;
}

/* JSON's whitespace, the same four bytes jansson skips. */
static void fast__ws(struct fast *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
		s->p++;
}

/* The length of the well-formed UTF-8 sequence at p (first byte >= 0x80), or
 * 0: no overlong forms, no surrogates, nothing past U+10FFFF (what jansson's
 * utf8_check_full refuses). */
static size_t fast__utf8(const unsigned char *p, const unsigned char *end)
{
	uint32_t cp, min;
	size_t n;

	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2, cp = p[0] & 0x1f, min = 0x80;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3, cp = p[0] & 0x0f, min = 0x800;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4, cp = p[0] & 0x07, min = 0x10000;
	else
		return 0;
	if ((size_t)(end - p) < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	return cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? 0 : n;
}

/* Four hex digits at p (at least 4 bytes there), or -1. */
static int32_t fast__hex4(const unsigned char *p)
{
	int32_t v = 0;
	for (int i = 0; i < 4; i++) {
		int c = p[i];
		int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
			: (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
		if (d < 0)
			return -1;
		v = v << 4 | d;
	}
	return v;
}

/* Writes code point cp: as its UTF-8 bytes, or with canon as json_dumps
 * writes it inside a string (\" \\ \b \f \n \r \t, other controls \u00XX). */
static char *fast__put_cp(char *o, uint32_t cp, int canon)
{
	static const char hex[] = "0123456789ABCDEF";

	if (canon && (cp == '"' || cp == '\\' || cp < 0x20)) {
		*o++ = '\\';
		switch (cp) {
		case '"': *o++ = '"'; break;
		case '\\': *o++ = '\\'; break;
		case '\b': *o++ = 'b'; break;
		case '\f': *o++ = 'f'; break;
		case '\n': *o++ = 'n'; break;
		case '\r': *o++ = 'r'; break;
		case '\t': *o++ = 't'; break;
		default:
			memcpy(o, "u00", 3);
			o[3] = hex[cp >> 4];
			o[4] = hex[cp & 15];
			o += 5;
		}
	} else if (cp < 0x80) {
		*o++ = (char)cp;
	} else if (cp < 0x800) {
		*o++ = (char)(0xc0 | cp >> 6);
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (char)(0xe0 | cp >> 12);
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (char)(0xf0 | cp >> 18);
		*o++ = (char)(0x80 | (cp >> 12 & 0x3f));
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	}
	return o;
}

/* Bytes a string holds as they are: printable ASCII but the quote and the
 * backslash (and DEL, which jansson writes raw too). */
static const unsigned char fast__plain[256] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* The string whose opening quote is at s->p.  Writes its value and a NUL, or
 * with canon the string as json_dumps writes it (quotes included, no NUL).
 * Never longer than its input: an escape is at least as long as what it
 * stands for, in either form. */
static int fast__string(struct fast *s, int canon)
{
	const unsigned char *p = (const unsigned char *)s->p + 1, *end = (const unsigned char *)s->end;

	if (fast__reserve(s, (size_t)(end - p) + 2))
		return -1;
	char *o = s->out + s->used;
	if (canon)
		*o++ = '"';
	for (;;) {
		const unsigned char *run = p;
		while (p < end && fast__plain[*p])
			p++;
		memcpy(o, run, (size_t)(p - run));
		o += p - run;
		if (p == end)
			return -1;
		if (*p == '"')
			break;
		if (*p >= 0x80) {
			size_t n = fast__utf8(p, end);
			if (!n)
				return -1;
			memcpy(o, p, n);
			o += n;
			p += n;
			continue;
		}
		if (*p < 0x20 || end - p < 2)
			return -1; /* a raw control character, or a lone backslash at the end */
		uint32_t cp;
		switch (p[1]) {
		case '"': cp = '"'; break;
		case '\\': cp = '\\'; break;
		case '/': cp = '/'; break;
		case 'b': cp = '\b'; break;
		case 'f': cp = '\f'; break;
		case 'n': cp = '\n'; break;
		case 'r': cp = '\r'; break;
		case 't': cp = '\t'; break;
		case 'u': {
			if (end - p < 6)
				return -1;
			int32_t v = fast__hex4(p + 2);
			if (v <= 0 || (v >= 0xdc00 && v <= 0xdfff))
				return -1; /* \u0000, a lone low surrogate */
			if (v >= 0xd800 && v <= 0xdbff) {
				if (end - p < 12 || p[6] != '\\' || p[7] != 'u')
					return -1;
				int32_t lo = fast__hex4(p + 8);
				if (lo < 0xdc00 || lo > 0xdfff)
					return -1;
				v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
				p += 6;
			}
			cp = (uint32_t)v;
			p += 4;
			break;
		}
		default:
			return -1;
		}
		p += 2;
		o = fast__put_cp(o, cp, canon);
	}
	*o++ = canon ? '"' : '\0';
	s->used = (size_t)(o - s->out);
	s->p = (const char *)p + 1;
	return 0;
}

/* A number, written as json_dumps writes what jansson reads from it: an
 * integer in strtoll's range as it is ("-0" as 0), a real (strtod, finite)
 * as "%.17g" with jansson's touches (a ".0" if it would read as an integer,
 * no '+' nor leading zeros in the exponent). */
static int fast__number(struct fast *s)
{
	const char *p = s->p, *end = s->end;
	int real = 0;
	char tok[64], *e;

#define FAST_DIGIT(p) ((p) < end && *(p) >= '0' && *(p) <= '9')
	if (p < end && *p == '-')
		p++;
	if (p < end && *p == '0')
		p++;
	else if (FAST_DIGIT(p))
		while (FAST_DIGIT(p))
			p++;
	else
		return -1;
	if (p < end && *p == '.') {
		real = 1;
		p++;
		if (!FAST_DIGIT(p))
			return -1;
		while (FAST_DIGIT(p))
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		real = 1;
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (!FAST_DIGIT(p))
			return -1;
		while (FAST_DIGIT(p))
			p++;
	}
#undef FAST_DIGIT
	const char *num = s->p;
	size_t n = (size_t)(p - num);
	if (!real) {
		/* strtoll's range, as jansson reads it: up to 18 digits always fit */
		size_t digits = n - (*num == '-');
		if (digits > 19 || (digits == 19 && memcmp(p - 19, *num == '-' ? "9223372036854775808"
							    : "9223372036854775807", 19) > 0))
			return -1;
		if (n == 2 && num[0] == '-' && num[1] == '0')
			num++, n = 1; /* -0 is the integer 0 */
		if (fast__reserve(s, n))
			return -1;
		memcpy(s->out + s->used, num, n);
		s->used += n;
		s->p = p;
		return 0;
	}
	if (n >= sizeof tok)
		return -1;
	memcpy(tok, num, n);
	tok[n] = '\0';
	s->p = p;
	double v = strtod(tok, &e);
	if (e != tok + n || !isfinite(v))
		return -1;
	int m = snprintf(tok, sizeof tok, "%.17g", v);
	if (m <= 0 || (size_t)m >= sizeof tok - 3 || strspn(tok, "-+.0123456789e") != (size_t)m)
		return -1; /* (a locale with another decimal point: jansson decides) */
	if (!strchr(tok, '.') && !strchr(tok, 'e')) {
		memcpy(tok + m, ".0", 3);
		m += 2;
	}
	char *x = strchr(tok, 'e');
	if (x) {
		char *from = x + 1, *to = x + 1;
		if (*from == '+')
			from++;
		else if (*from == '-')
			from++, to++;
		while (*from == '0')
			from++;
		memmove(to, from, strlen(from) + 1);
		m = (int)strlen(tok);
	}
	if (fast__reserve(s, (size_t)m))
		return -1;
	memcpy(s->out + s->used, tok, (size_t)m);
	s->used += (size_t)m;
	return 0;
}

static int fast__literal(struct fast *s, const char *word, size_t n)
{
	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0 || fast__reserve(s, n))
		return -1;
	memcpy(s->out + s->used, word, n);
	s->used += n;
	s->p += n;
	return 0;
}

static int fast__value(struct fast *s, int depth);

/* The object or array at s->p, at nesting level depth (the frame is 1). */
static int fast__container(struct fast *s, int depth)
{
	char close = *s->p == '{' ? '}' : ']';
	int base = s->nkeys;

	if (depth > FRAME_MAX_DEPTH || fast__putc(s, *s->p))
		return -1;
	s->p++;
	fast__ws(s);
	if (s->p < s->end && *s->p == close) {
		s->p++;
		return fast__putc(s, close);
	}
	for (;;) {
		if (close == '}') {
			/* A key, refused if this object has it already (as jansson's
			 * JSON_REJECT_DUPLICATES): keys are written in one canonical
			 * form, so equal keys are equal bytes. */
			size_t off = s->used;
			if (s->p == s->end || *s->p != '"' || fast__string(s, 1) || s->nkeys == FAST_MAX_KEYS)
				return -1;
			size_t len = s->used - off;
			for (int i = base; i < s->nkeys; i++)
				if (s->keys[i].len == len && memcmp(s->out + s->keys[i].off, s->out + off, len) == 0)
					return -1;
			s->keys[s->nkeys].off = off;
			s->keys[s->nkeys++].len = len;
			fast__ws(s);
			if (s->p == s->end || *s->p != ':' || fast__putc(s, ':'))
				return -1;
			s->p++;
			fast__ws(s);
		}
		if (fast__value(s, depth))
			return -1;
		fast__ws(s);
		if (s->p == s->end || (*s->p != ',' && *s->p != close) || fast__putc(s, *s->p))
			return -1;
		if (*s->p++ == close)
			break;
		fast__ws(s);
	}
	s->nkeys = base;
	return 0;
}

/* Any JSON value inside the frame object, written as json_dumps writes it. */
static int fast__value(struct fast *s, int depth)
{
	if (s->p == s->end)
		return -1;
	switch (*s->p) {
	case '{':
	case '[':
		return fast__container(s, depth + 1);
	case '"':
		return fast__string(s, 1);
	case 't':
		return fast__literal(s, "true", 4);
	case 'f':
		return fast__literal(s, "false", 5);
	case 'n':
		return fast__literal(s, "null", 4);
	default:
		return fast__number(s);
	}
}

enum { FAST_TYPE, FAST_LEVEL, FAST_MSG, FAST_NAME, FAST_DATA, FAST_ID, FAST_OFFSET, FAST_LENGTH, FAST__KEYS };

/* A non-negative integer written plainly ("0", or digits without a leading
 * zero), at most 13 digits: all a fetch needs.  Anything else (a sign, a
 * fraction, an exponent) is jansson's to judge. */
static int fast__count(struct fast *s, int64_t *out)
{
	const char *p = s->p;
	int64_t v = 0;
	int digits = 0;
	while (p < s->end && *p >= '0' && *p <= '9' && digits < 14) {
		v = v * 10 + (*p++ - '0');
		digits++;
	}
	if (digits == 0 || digits > 13 || (digits > 1 && *s->p == '0') ||
	    (p < s->end && (*p == '.' || *p == 'e' || *p == 'E')))
		return -1;
	s->p = p;
	*out = v;
	return fast__putc(s, '\0');
}

int frame_parse_fast(const char *buf, size_t len, frame *out)
{
	static const struct {
		const char *name;
		size_t len;
	} keys[FAST__KEYS] = {
		[FAST_TYPE] = { "type", 4 }, [FAST_LEVEL] = { "level", 5 }, [FAST_MSG] = { "msg", 3 },
		[FAST_NAME] = { "name", 4 }, [FAST_DATA] = { "data", 4 }, [FAST_ID] = { "id", 2 },
		[FAST_OFFSET] = { "offset", 6 }, [FAST_LENGTH] = { "length", 6 },
	};
	struct fast s; /* (not zeroed whole: keys[] is written before it is read) */
	size_t off[FAST__KEYS] = { 0 }, n[FAST__KEYS] = { 0 };
	unsigned seen = 0, level_null = 0;
	int64_t num[FAST__KEYS] = { 0 };
	frame_type type = FRAME_LOG;

	s.p = buf;
	s.end = buf + len;
	s.out = NULL;
	s.used = s.cap = 0;
	s.nkeys = 0;
	memset(out, 0, sizeof *out);
	fast__ws(&s);
	if (s.p == s.end || *s.p != '{' || fast__reserve(&s, len + 1))
		goto unsure;
	s.p++;
	for (;;) {
		/* One of our keys, spelled plainly, once. */
		fast__ws(&s);
		if (s.p == s.end || *s.p != '"')
			goto unsure;
		const char *k = s.p + 1, *q = memchr(k, '"', (size_t)(s.end - k));
		if (!q)
			goto unsure;
		int key = 0;
		while (key < FAST__KEYS && ((size_t)(q - k) != keys[key].len || memcmp(k, keys[key].name, keys[key].len)))
			key++;
		if (key == FAST__KEYS || seen & 1u << key)
			goto unsure;
		seen |= 1u << key;
		s.p = q + 1;
		fast__ws(&s);
		if (s.p == s.end || *s.p != ':')
			goto unsure;
		s.p++;
		fast__ws(&s);
		if (s.p == s.end)
			goto unsure;
		off[key] = s.used;
		if (key == FAST_DATA) {
			if (fast__value(&s, 1) || fast__putc(&s, '\0'))
				goto unsure;
		} else if (key == FAST_LEVEL && *s.p == 'n') {
			/* "level": null is no level (frame__str), i.e. info */
			if ((size_t)(s.end - s.p) < 4 || memcmp(s.p, "null", 4) != 0)
				goto unsure;
			s.p += 4;
			level_null = 1;
			if (fast__putc(&s, '\0'))
				goto unsure;
		} else if (key == FAST_OFFSET || key == FAST_LENGTH) {
			if (fast__count(&s, &num[key]))
				goto unsure;
		} else if (*s.p != '"' || fast__string(&s, 0)) {
			goto unsure;
		}
		n[key] = s.used - off[key] - 1;
		if (key == FAST_TYPE) {
			/* Other types (rare) are jansson's: stop here. */
			if (n[key] == 3 && memcmp(s.out + off[key], "log", 3) == 0)
				type = FRAME_LOG;
			else if (n[key] == 3 && memcmp(s.out + off[key], "msg", 3) == 0)
				type = FRAME_MSG;
			else if (n[key] == 5 && memcmp(s.out + off[key], "fetch", 5) == 0)
				type = FRAME_FETCH;
			else
				goto unsure;
		}
		fast__ws(&s);
		if (s.p == s.end || (*s.p != ',' && *s.p != '}'))
			goto unsure;
		if (*s.p++ == '}')
			break;
	}
	fast__ws(&s);
	if (s.p != s.end || !(seen & 1u << FAST_TYPE))
		goto unsure;

	/* The checks of frame__log, frame__msg and frame__fetch; a frame they
	 * would refuse is left to them, so the refusal reads the same. */
	if (type == FRAME_LOG) {
		if (seen & ~(1u << FAST_TYPE | 1u << FAST_LEVEL | 1u << FAST_MSG) || !(seen & 1u << FAST_MSG) ||
		    n[FAST_MSG] > FRAME_MAX_LOG_MSG)
			goto unsure;
		int is_error = 0;
		if (seen & 1u << FAST_LEVEL && !level_null) {
			const char *l = s.out + off[FAST_LEVEL];
			if (n[FAST_LEVEL] == 5 && memcmp(l, "error", 5) == 0)
				is_error = 1;
			else if (n[FAST_LEVEL] != 4 || memcmp(l, "info", 4) != 0)
				goto unsure;
		}
		out->u.log.is_error = is_error;
		out->u.log.msg = s.out + off[FAST_MSG];
	} else if (type == FRAME_FETCH) {
		const unsigned need = 1u << FAST_TYPE | 1u << FAST_ID | 1u << FAST_OFFSET | 1u << FAST_LENGTH;
		if (seen != need || n[FAST_ID] == 0 || n[FAST_ID] > 64 || num[FAST_OFFSET] > INT64_C(1) << 40 ||
		    num[FAST_LENGTH] < 1 || num[FAST_LENGTH] > 1 << 20)
			goto unsure;
		const char *id = s.out + off[FAST_ID];
		for (size_t i = 0; i < n[FAST_ID]; i++)
			if (id[i] < 0x20 || id[i] > 0x7e) /* NUL and non-ASCII too */
				goto unsure;
		out->u.fetch.id = id;
		out->u.fetch.offset = num[FAST_OFFSET];
		out->u.fetch.length = num[FAST_LENGTH];
	} else {
		if (seen & ~(1u << FAST_TYPE | 1u << FAST_NAME | 1u << FAST_DATA) || !(seen & 1u << FAST_NAME) ||
		    n[FAST_NAME] == 0 || n[FAST_NAME] > FRAME_MAX_NAME)
			goto unsure;
		out->u.msg.name = s.out + off[FAST_NAME];
		out->u.msg.data_json = seen & 1u << FAST_DATA ? s.out + off[FAST_DATA] : NULL;
	}
	out->type = type;
	out->text = s.out;
	return 1;
unsure:
	free(s.out);
	memset(out, 0, sizeof *out);
	return 0;
}

int frame_parse(const char *buf, size_t len, frame *out, metrics_error_kind *kind, tn_error *err)
{
	if (frame_parse_fast(buf, len, out))
		return 0;
	return frame_parse_json(buf, len, out, kind, err);
}

void frame_release(frame *f)
{
	if (!f)
		return;
	json_decref(f->root);
	free(f->text);
	memset(f, 0, sizeof *f);
}

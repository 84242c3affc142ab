/* server/frame.c -- the device frame parser (see frame.h and docs/protocol.md). */
#include "frame.h"

#include <stdarg.h>
#include <stdio.h>
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
	f->u.msg.data = json_object_get(f->root, "data");
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

int frame_parse(const char *buf, size_t len, frame *out, metrics_error_kind *kind, tn_error *err)
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

void frame_release(frame *f)
{
	if (!f)
		return;
	json_decref(f->root);
	memset(f, 0, sizeof *f);
}

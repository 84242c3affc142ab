/* server/frame.h -- the device frame parser: bytes of one text frame in, a
 * typed and validated frame out, or an error kind and a message saying what
 * is wrong.  Bounded: the caller caps the length, this caps the nesting.
 * Two paths with one result: the hot log, msg and fetch frames go through a strict
 * scanner (frame_parse_fast) that takes only what it is sure of, everything
 * else through a jansson tree (frame_parse_json).
 * Threads: any (pure). */
#ifndef TN_FRAME_H
#define TN_FRAME_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "tn.h"

#define FRAME_MAX_DEPTH 32
#define FRAME_MAX_LOG_MSG 16384
#define FRAME_MAX_NAME 128
#define FRAME_MAX_SHORT 64     /* hw, fw */
#define FRAME_MAX_SECRET 128
#define FRAME_MAX_SFDP 8192    /* base64 characters */

typedef enum { FRAME_HELLO, FRAME_LOG, FRAME_MSG, FRAME_UPDATE_STATUS, FRAME_FETCH } frame_type;

typedef struct frame {
	frame_type type;
	json_t *root; /* owned by the frame, or NULL (fast path): the pointers below borrow from it */
	char *text;   /* owned by the frame, or NULL: the pointers below that do not borrow from root */
	union {
		struct {
			uint64_t id;
			const char *secret, *hw, *fw; /* hw, fw may be NULL */
			const char *enroll;           /* an enrollment token instead of a secret, or NULL */
			int has_flash;
			uint32_t jedec;        /* 0 when absent */
			int has_jedec;
			int64_t flash_size;    /* 0 when absent */
			const char *sfdp;      /* base64 or NULL */
		} hello;
		struct {
			int is_error;
			const char *msg;
		} log;
		struct {
			const char *name;
			/* "data" as compact JSON text, exactly as json_dumps(JSON_COMPACT |
			 * JSON_ENCODE_ANY) writes it ("null" for null); NULL when absent */
			const char *data_json;
		} msg;
		struct {
			const char *id, *state, *error; /* error may be NULL */
			int64_t offset;                 /* -1 when absent */
		} update_status;
		struct {
			const char *id;
			int64_t offset, length;
		} fetch;
	} u;
} frame;

/* Parses one frame.  On error returns TN_EINVAL, sets *kind to ERR_BAD_JSON,
 * ERR_BAD_FRAME or ERR_UNKNOWN_TYPE and err->msg to the detail; out is then
 * left empty (frame_release is still safe). */
int frame_parse(const char *buf, size_t len, frame *out, metrics_error_kind *kind, tn_error *err);

/* The two paths of frame_parse, exposed for tests and the differential fuzzer
 * (tests/fuzz/fuzz_frame_diff.c).  frame_parse_fast returns 1 with *out filled
 * exactly as frame_parse_json fills it for the same bytes, or 0 with *out
 * empty when it is not sure: it takes only flat log, msg and fetch frames
 * whose keys are the ones the type reads ("type", "level", "msg"; "type",
 * "name", "data"; "type", "id", "offset", "length"), valid and within every
 * limit, and refuses nothing itself.
 * frame_parse_json is the whole jansson path, errors included. */
int frame_parse_fast(const char *buf, size_t len, frame *out);
int frame_parse_json(const char *buf, size_t len, frame *out, metrics_error_kind *kind, tn_error *err);

/* Releases what frame_parse took (accepts a zeroed or failed frame). */
void frame_release(frame *f);

/* The text of a frame's type ("hello", "log", ...). */
const char *frame_type_name(frame_type t);

/* Depth of the deepest nesting of [ and { in buf, not counting those inside
 * strings; stops counting once over limit.  Exposed for tests. */
int frame_nesting_depth(const char *buf, size_t len, int limit);

#endif

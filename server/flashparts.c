/* server/flashparts.c -- the flash-parts table's exchange format (CONTRACT
 * "The flash-parts import format"; docs/flash-parts.md): an RFC 4180 CSV
 * reader, its JSON twin, the erase_layouts grammar, and the row checks that
 * keep a wrong row out of the table.  The table decides whether a device's
 * flash can take an update, so a row is refused rather than guessed at:
 * bounded text, exact hex ids, erase maps that span the chip exactly,
 * uniform_* flags that agree with the maps, no duplicate (id, part) pairs,
 * and all-or-nothing imports.
 * Owns: nothing beyond the arrays it returns.  Threads: any (pure). */
#include "flashparts.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *const flashparts_columns[11] = {
	"vendor", "part", "jedec_mfr", "jedec_dev", "size_bytes", "uniform_4k_erase",
	"uniform_64k_erase", "erase_layouts", "shares_id_with", "source", "notes",
};

/* Column indexes, in flashparts_columns order. */
enum {
	FLASHPARTS__VENDOR, FLASHPARTS__PART, FLASHPARTS__MFR, FLASHPARTS__DEV,
	FLASHPARTS__SIZE, FLASHPARTS__U4K, FLASHPARTS__U64K, FLASHPARTS__LAYOUTS,
	FLASHPARTS__SHARES, FLASHPARTS__SOURCE, FLASHPARTS__NOTES, FLASHPARTS__NCOLS
};

#define FLASHPARTS__MAX_FIELDS 32   /* fields kept per CSV record; more is an error */
#define FLASHPARTS__SNIP 40         /* bytes of an offending value quoted in a message */

/* --- error collection ------------------------------------------------------ */

/* Where errors go.  `list` is NULL for a single-object parse (from_json),
 * which only needs the first message. */
typedef struct flashparts__errs {
	json_t *list;               /* owned: [{"line","column","message"}] */
	size_t count;               /* errors seen, kept or not */
	int rows;                   /* JSON import: positions are rows, not lines */
	int oom;
	char first[sizeof ((tn_error *)0)->msg];
} flashparts__errs;

static void flashparts__err(flashparts__errs *e, int line, const char *column,
			    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void flashparts__err(flashparts__errs *e, int line, const char *column,
			    const char *fmt, ...)
{
	char msg[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (e->count++ == 0) {
		const char *where = e->rows ? "row" : "line";
		if (line > 0 && *column)
			snprintf(e->first, sizeof e->first, "%s %d, column %s: %s", where, line, column, msg);
		else if (line > 0)
			snprintf(e->first, sizeof e->first, "%s %d: %s", where, line, msg);
		else if (*column)
			snprintf(e->first, sizeof e->first, "%s: %s", column, msg);
		else
			snprintf(e->first, sizeof e->first, "%s", msg);
	}
	if (!e->list || json_array_size(e->list) >= FLASHPARTS_MAX_ERRORS)
		return;
	json_t *item = e->rows
		? json_pack("{s:i, s:i, s:s, s:s}", "line", line, "row", line, "column", column,
			    "message", msg)
		: json_pack("{s:i, s:s, s:s}", "line", line, "column", column, "message", msg);
	if (!item || json_array_append_new(e->list, item))
		e->oom = 1;
}

/* A bounded, printable-ASCII copy of a value for messages (which must stay
 * valid UTF-8 and short whatever the input was). */
static void flashparts__snip(char out[FLASHPARTS__SNIP + 4], const char *s, size_t len)
{
	size_t n = len > FLASHPARTS__SNIP ? FLASHPARTS__SNIP : len, i;

	for (i = 0; i < n; i++)
		out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	strcpy(out + i, len > n ? "..." : "");
}

/* --- small lexical helpers ------------------------------------------------- */

static int flashparts__space(char c)
{
	return c == ' ' || c == '\t';
}

static void flashparts__trim(const char **s, size_t *len)
{
	while (*len && flashparts__space(**s))
		(*s)++, (*len)--;
	while (*len && flashparts__space((*s)[*len - 1]))
		(*len)--;
}

static int flashparts__hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* "0x" and exactly `digits` hex digits. */
static int flashparts__hex(const char *s, size_t len, size_t digits, uint32_t *out)
{
	uint32_t v = 0;

	if (len != digits + 2 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X'))
		return -1;
	for (size_t i = 2; i < len; i++) {
		int d = flashparts__hexval(s[i]);
		if (d < 0)
			return -1;
		v = v << 4 | (uint32_t)d;
	}
	*out = v;
	return 0;
}

/* Decimal digits, with an optional binary suffix from `suffixes` ("KM" or
 * "KMG", either case).  Refuses anything above max. */
static int flashparts__number(const char *s, size_t len, const char *suffixes, uint64_t max,
			      uint64_t *out)
{
	uint64_t v = 0, mult = 1;
	size_t i;
	char c = len ? (char)(s[len - 1] & ~0x20) : 0;

	if (c >= 'A' && c <= 'Z' && strchr(suffixes, c)) {
		mult = c == 'K' ? UINT64_C(1) << 10 : c == 'M' ? UINT64_C(1) << 20 : UINT64_C(1) << 30;
		len--;
	}
	if (len == 0 || len > 12)
		return -1;
	for (i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > max / mult)
		return -1;
	*out = v * mult;
	return 0;
}

static int flashparts__bool(const char *s, size_t len, int *out)
{
	static const char *const yes[] = { "yes", "true", "1" }, *const no[] = { "no", "false", "0" };

	for (size_t i = 0; i < 3; i++) {
		if (len == strlen(yes[i]) && !strncasecmp(s, yes[i], len))
			return *out = 1, 0;
		if (len == strlen(no[i]) && !strncasecmp(s, no[i], len))
			return *out = 0, 0;
	}
	return -1;
}

/* --- erase_layouts ----------------------------------------------------------- */

/* One `SIZE*COUNT` or `xSIZE*COUNT` region. */
static int flashparts__region(const char *s, size_t len, flash_region *r, const char **why)
{
	const char *star;
	uint64_t size, count;
	int off = 0;

	flashparts__trim(&s, &len);
	if (len && (s[0] == 'x' || s[0] == 'X'))
		off = 1, s++, len--;
	star = memchr(s, '*', len);
	if (!star)
		return *why = "a region is SIZE*COUNT (like 4K*4096 or x64K*255)", -1;
	const char *cs = star + 1;
	size_t slen = (size_t)(star - s), clen = len - slen - 1;
	flashparts__trim(&s, &slen);
	flashparts__trim(&cs, &clen);
	if (flashparts__number(s, slen, "KM", UINT32_MAX, &size) || size == 0)
		return *why = "block size must be 1..4294967295 bytes, or a number with K or M", -1;
	if (flashparts__number(cs, clen, "", UINT32_MAX, &count) || count == 0)
		return *why = "block count must be a whole number from 1 to 4294967295", -1;
	if (size * count > FLASHPARTS_SIZE_MAX)
		return *why = "a region spans more than 4 GiB", -1;
	r->size = off ? 0 : (uint32_t)size;
	r->count = (uint32_t)count;
	r->span = size * count;
	return 0;
}

/* The region list of one entry, into l->regions. */
static int flashparts__regions(const char *s, size_t len, flash_layout *l, const char **why)
{
	while (len) {
		const char *plus = memchr(s, '+', len);
		size_t rlen = plus ? (size_t)(plus - s) : len;
		if (l->nregions == FLASH_MAX_REGIONS)
			return *why = "more than 8 regions", -1;
		if (flashparts__region(s, rlen, &l->regions[l->nregions], why))
			return -1;
		l->nregions++;
		if (!plus)
			return 0;
		s = plus + 1;
		len -= rlen + 1;
		if (!len)
			return *why = "nothing after '+'", -1;
	}
	return *why = "no regions before '@'", -1;
}

/* One `REGIONS @0xOP` or `chip @0xOP` entry (number `idx`, 1-based). */
static int flashparts__entry(const flash_part *p, const char *s, size_t len, int idx,
			     flash_layout *l, tn_error *err)
{
	char snip[FLASHPARTS__SNIP + 4];
	const char *why = NULL, *at, *op;
	size_t llen, oplen;
	uint32_t opcode;
	uint64_t total = 0;

	flashparts__trim(&s, &len);
	flashparts__snip(snip, s, len);
	memset(l, 0, sizeof *l);
	if (!len)
		return tn_err(err, TN_EINVAL, "erase_layouts entry %d is empty", idx);
	at = memchr(s, '@', len);
	if (!at)
		return tn_err(err, TN_EINVAL, "erase_layouts entry %d (\"%s\") has no @0xOP opcode",
			      idx, snip);
	llen = (size_t)(at - s);
	op = at + 1;
	oplen = len - llen - 1;
	flashparts__trim(&s, &llen);
	flashparts__trim(&op, &oplen);
	if (flashparts__hex(op, oplen, 2, &opcode))
		return tn_err(err, TN_EINVAL,
			      "erase_layouts entry %d (\"%s\"): the opcode is two hex digits like @0x20",
			      idx, snip);
	l->opcode = (uint8_t)opcode;
	if (llen == 4 && !strncasecmp(s, "chip", 4)) {
		l->chip = 1;
		return 0;
	}
	if (flashparts__regions(s, llen, l, &why))
		return tn_err(err, TN_EINVAL, "erase_layouts entry %d (\"%s\"): %s", idx, snip, why);
	for (int i = 0; i < l->nregions; i++)
		total += l->regions[i].span;
	if (total != p->size)
		return tn_err(err, TN_EINVAL,
			      "erase_layouts entry %d (\"%s\") spans %" PRIu64 " bytes, %" PRIu64
			      " %s size_bytes %" PRIu64, idx, snip, total,
			      total < p->size ? p->size - total : total - p->size,
			      total < p->size ? "short of" : "beyond", p->size);
	return 0;
}

int flashparts_layouts_parse(flash_part *p, const char *text, tn_error *err)
{
	flash_layout tmp[FLASH_MAX_LAYOUTS];
	const char *s = text;
	size_t len = strlen(text);
	int n = 0;

	assert(p);
	flashparts__trim(&s, &len);
	if (len >= sizeof p->layouts_text)
		return tn_err(err, TN_EINVAL, "erase_layouts is %zu bytes, at most %zu", len,
			      sizeof p->layouts_text - 1);
	if (p->size == 0 && len)
		return tn_err(err, TN_EINVAL, "erase_layouts needs size_bytes");
	for (const char *e = s, *end = s + len; len; ) {
		const char *semi = memchr(e, ';', (size_t)(end - e));
		size_t elen = semi ? (size_t)(semi - e) : (size_t)(end - e);
		if (n == FLASH_MAX_LAYOUTS)
			return tn_err(err, TN_EINVAL, "erase_layouts has more than %d erase commands",
				      FLASH_MAX_LAYOUTS);
		if (flashparts__entry(p, e, elen, n + 1, &tmp[n], err))
			return TN_EINVAL;
		for (int i = 0; i < n; i++)
			if (tmp[i].opcode == tmp[n].opcode)
				return tn_err(err, TN_EINVAL,
					      "erase_layouts entries %d and %d both use opcode 0x%02X",
					      i + 1, n + 1, tmp[n].opcode);
		n++;
		if (!semi)
			break;
		e = semi + 1;
	}
	memcpy(p->layouts, tmp, (size_t)n * sizeof tmp[0]);
	p->nlayouts = n;
	memcpy(p->layouts_text, s, len);
	p->layouts_text[len] = '\0';
	return 0;
}

uint64_t flashparts_coverage(const flash_part *p, uint32_t size)
{
	uint64_t best = 0;

	if (size == 0)
		return 0;
	for (int i = 0; i < p->nlayouts; i++) {
		const flash_layout *l = &p->layouts[i];
		uint64_t c = 0;
		if (l->chip)
			c = p->size == size ? p->size : 0;
		for (int j = 0; j < l->nregions; j++)
			if (l->regions[j].size == size)
				c += l->regions[j].span;
		if (c > best)
			best = c;
	}
	return best;
}

/* --- one row ----------------------------------------------------------------- */

/* A column's value as read: a slice of the input (or of a scratch buffer). */
typedef struct flashparts__val {
	const char *s;             /* borrowed; not NUL-terminated */
	size_t len;
	int present;               /* the column/key is there and not blank */
	int toolong;               /* over FLASHPARTS_FIELD_MAX */
} flashparts__val;

/* A text column into a fixed buffer.  Identifiers stay on one line; only
 * notes may hold line breaks and tabs.  Returns 0 when stored. */
static int flashparts__text(flashparts__errs *e, int line, int col, const flashparts__val *v,
			    char *out, size_t cap, int multiline)
{
	const char *name = flashparts_columns[col];

	out[0] = '\0';
	if (!v->present)
		return 0;
	if (v->toolong || v->len >= cap) {
		if (v->toolong)
			flashparts__err(e, line, name, "is more than %d bytes, at most %zu",
					FLASHPARTS_FIELD_MAX, cap - 1);
		else
			flashparts__err(e, line, name, "is %zu bytes, at most %zu", v->len, cap - 1);
		return -1;
	}
	for (size_t i = 0; i < v->len; i++) {
		unsigned char c = (unsigned char)v->s[i];
		if ((c < 0x20 || c == 0x7f) && !(multiline && (c == '\n' || c == '\r' || c == '\t'))) {
			flashparts__err(e, line, name, "has a control character (0x%02X) at byte %zu",
					c, i + 1);
			return -1;
		}
	}
	json_t *probe = json_stringn(v->s, v->len); /* jansson checks UTF-8 for us */
	if (!probe) {
		flashparts__err(e, line, name, "is not valid UTF-8");
		return -1;
	}
	json_decref(probe);
	memcpy(out, v->s, v->len);
	out[v->len] = '\0';
	return 0;
}

static int flashparts__required(flashparts__errs *e, int line, int col, const flashparts__val *v)
{
	if (v->present)
		return 0;
	flashparts__err(e, line, flashparts_columns[col], "is required");
	return -1;
}

static int flashparts__jedec(flashparts__errs *e, int line, const flashparts__val *vals,
			     uint32_t *jedec)
{
	char snip[FLASHPARTS__SNIP + 4];
	const flashparts__val *m = &vals[FLASHPARTS__MFR], *d = &vals[FLASHPARTS__DEV];
	uint32_t mfr = 0, dev = 0;
	int rc = 0;

	if (flashparts__required(e, line, FLASHPARTS__MFR, m))
		rc = -1;
	else if (flashparts__hex(m->s, m->len, 2, &mfr)) {
		flashparts__snip(snip, m->s, m->len);
		flashparts__err(e, line, "jedec_mfr", "must be one byte in hex like 0xEF, not \"%s\"", snip);
		rc = -1;
	}
	if (flashparts__required(e, line, FLASHPARTS__DEV, d))
		rc = -1;
	else if (flashparts__hex(d->s, d->len, 4, &dev)) {
		flashparts__snip(snip, d->s, d->len);
		flashparts__err(e, line, "jedec_dev", "must be two bytes in hex like 0x4018, not \"%s\"",
				snip);
		rc = -1;
	}
	*jedec = mfr << 16 | dev;
	return rc;
}

static int flashparts__size(flashparts__errs *e, int line, const flashparts__val *v, uint64_t *size)
{
	char snip[FLASHPARTS__SNIP + 4];

	if (flashparts__required(e, line, FLASHPARTS__SIZE, v))
		return -1;
	if (flashparts__number(v->s, v->len, "KMG", FLASHPARTS_SIZE_MAX, size) ||
	    *size < FLASHPARTS_SIZE_MIN) {
		flashparts__snip(snip, v->s, v->len);
		flashparts__err(e, line, "size_bytes",
				"must be bytes (or a number with K, M or G) from 4096 to 4G, not \"%s\"",
				snip);
		return -1;
	}
	return 0;
}

/* A yes/no column: 1, 0, or -1 when blank (unknown). */
static int flashparts__flag(flashparts__errs *e, int line, int col, const flashparts__val *v,
			    int *flag)
{
	char snip[FLASHPARTS__SNIP + 4];

	*flag = -1;
	if (!v->present || !flashparts__bool(v->s, v->len, flag))
		return 0;
	flashparts__snip(snip, v->s, v->len);
	flashparts__err(e, line, flashparts_columns[col],
			"must be yes, no, true, false, 1 or 0, not \"%s\"", snip);
	return -1;
}

static void flashparts__layouts(flashparts__errs *e, int line, const flashparts__val *v,
				flash_part *out)
{
	char buf[sizeof out->layouts_text];
	tn_error terr;

	if (flashparts__text(e, line, FLASHPARTS__LAYOUTS, v, buf, sizeof buf, 0) || !v->present)
		return;
	if (flashparts_layouts_parse(out, buf, &terr))
		flashparts__err(e, line, "erase_layouts", "%s", terr.msg);
}

/* The uniform_* flags against the layouts: a flag that contradicts the map
 * is refused; a blank flag takes the map's answer, or "no" with no map (the
 * conservative reading of "unknown"). */
static void flashparts__agree(flashparts__errs *e, int line, int col, int flag, uint32_t block,
			      flash_part *out, int *field)
{
	uint64_t cov;
	int derived;

	if (out->nlayouts == 0) {
		*field = flag == 1;
		return;
	}
	cov = flashparts_coverage(out, block);
	derived = cov == out->size;
	if (flag >= 0 && flag != derived)
		flashparts__err(e, line, flashparts_columns[col],
				"says %s, but erase_layouts erase %" PRIu64 " of %" PRIu64
				" bytes in %" PRIu32 " KB blocks", flag ? "yes" : "no", cov, out->size,
				block / 1024);
	*field = derived;
}

/* Validates one row's values into out.  Every problem is reported; returns
 * the number of errors this row added. */
static size_t flashparts__row(flashparts__errs *e, int line, const flashparts__val *vals,
			      flash_part *out)
{
	size_t before = e->count;
	int u4k, u64k, size_ok;

	memset(out, 0, sizeof *out);
	if (!flashparts__required(e, line, FLASHPARTS__VENDOR, &vals[FLASHPARTS__VENDOR]))
		flashparts__text(e, line, FLASHPARTS__VENDOR, &vals[FLASHPARTS__VENDOR], out->vendor,
				 sizeof out->vendor, 0);
	if (!flashparts__required(e, line, FLASHPARTS__PART, &vals[FLASHPARTS__PART]))
		flashparts__text(e, line, FLASHPARTS__PART, &vals[FLASHPARTS__PART], out->part,
				 sizeof out->part, 0);
	flashparts__jedec(e, line, vals, &out->jedec);
	size_ok = !flashparts__size(e, line, &vals[FLASHPARTS__SIZE], &out->size);
	flashparts__flag(e, line, FLASHPARTS__U4K, &vals[FLASHPARTS__U4K], &u4k);
	flashparts__flag(e, line, FLASHPARTS__U64K, &vals[FLASHPARTS__U64K], &u64k);
	if (size_ok) /* without a size the spans cannot be checked */
		flashparts__layouts(e, line, &vals[FLASHPARTS__LAYOUTS], out);
	flashparts__text(e, line, FLASHPARTS__SHARES, &vals[FLASHPARTS__SHARES], out->shares_id_with,
			 sizeof out->shares_id_with, 0);
	flashparts__text(e, line, FLASHPARTS__SOURCE, &vals[FLASHPARTS__SOURCE], out->source,
			 sizeof out->source, 0);
	flashparts__text(e, line, FLASHPARTS__NOTES, &vals[FLASHPARTS__NOTES], out->notes,
			 sizeof out->notes, 1);
	flashparts__agree(e, line, FLASHPARTS__U4K, u4k, 4096, out, &out->uniform_4k);
	flashparts__agree(e, line, FLASHPARTS__U64K, u64k, 65536, out, &out->uniform_64k);
	return e->count - before;
}

/* --- the rows of one import -------------------------------------------------- */

typedef struct flashparts__rows {
	flash_part *v;             /* owned */
	int *line;                 /* owned: where each row came from */
	size_t n, cap;
} flashparts__rows;

static flash_part *flashparts__push(flashparts__rows *r, flashparts__errs *e, int line)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 64;
		flash_part *v = realloc(r->v, cap * sizeof *v);
		if (v)
			r->v = v;
		int *l = realloc(r->line, cap * sizeof *l);
		if (l)
			r->line = l;
		if (!v || !l) {
			e->oom = 1;
			return NULL;
		}
		r->cap = cap;
	}
	r->line[r->n] = line;
	return &r->v[r->n++];
}

typedef struct flashparts__key {
	uint32_t jedec;
	const char *part;
	int line;
} flashparts__key;

static int flashparts__keycmp(const void *a, const void *b)
{
	const flashparts__key *x = a, *y = b;
	int c;

	if (x->jedec != y->jedec)
		return x->jedec < y->jedec ? -1 : 1;
	if ((c = strcasecmp(x->part, y->part)))
		return c;
	return (x->line > y->line) - (x->line < y->line);
}

/* Two rows with the same JEDEC id and the same part name describe one part
 * twice (possibly differently): refuse.  Different names under one id are
 * the shared-id case the table exists to handle. */
static void flashparts__duplicates(flashparts__rows *r, flashparts__errs *e)
{
	flashparts__key *k;

	if (r->n < 2)
		return;
	k = malloc(r->n * sizeof *k);
	if (!k) {
		e->oom = 1;
		return;
	}
	for (size_t i = 0; i < r->n; i++)
		k[i] = (flashparts__key){ r->v[i].jedec, r->v[i].part, r->line[i] };
	qsort(k, r->n, sizeof *k, flashparts__keycmp);
	for (size_t i = 1; i < r->n; i++)
		if (k[i].jedec == k[i - 1].jedec && !strcasecmp(k[i].part, k[i - 1].part))
			flashparts__err(e, k[i].line, "part",
					"duplicate of %s %d (same JEDEC id %06" PRIx32 " and part name)",
					e->rows ? "row" : "line", k[i - 1].line, k[i].jedec);
	free(k);
}

/* Hands the rows or the errors to out, never both. */
static int flashparts__finish(flashparts__errs *e, flashparts__rows *r, flashparts_import *out,
			      tn_error *err)
{
	free(r->line);
	if (e->oom) {
		free(r->v);
		json_decref(e->list);
		return tn_err(err, TN_ENOMEM, "out of memory parsing the flash-parts import");
	}
	if (e->count) {
		free(r->v);
		out->errors = e->list;
		return tn_err(err, TN_EINVAL, "%zu error%s; first: %s", e->count,
			      e->count == 1 ? "" : "s", e->first);
	}
	json_decref(e->list);
	out->rows = r->v;
	out->nrows = r->n;
	return 0;
}

/* --- CSV --------------------------------------------------------------------- */

typedef struct flashparts__field {
	size_t len;
	int toolong;
	char buf[FLASHPARTS_FIELD_MAX];
} flashparts__field;

typedef struct flashparts__record {
	int line;                  /* where the record starts */
	int nfields;               /* may exceed FLASHPARTS__MAX_FIELDS; only that many kept */
	flashparts__field f[FLASHPARTS__MAX_FIELDS];
} flashparts__record;

typedef struct flashparts__csv {
	const char *p, *end;
	int line;                  /* the physical line p is on */
} flashparts__csv;

static void flashparts__newfield(flashparts__record *rec)
{
	if (rec->nfields++ < FLASHPARTS__MAX_FIELDS)
		rec->f[rec->nfields - 1].len = 0, rec->f[rec->nfields - 1].toolong = 0;
}

static void flashparts__append(flashparts__record *rec, char c)
{
	flashparts__field *f;

	if (rec->nfields > FLASHPARTS__MAX_FIELDS)
		return;
	f = &rec->f[rec->nfields - 1];
	if (f->len < FLASHPARTS_FIELD_MAX)
		f->buf[f->len++] = c;
	else
		f->toolong = 1;
}

/* After a field: 1 more fields follow, 0 the record ended, -1 a syntax error. */
static int flashparts__delim(flashparts__csv *c, flashparts__errs *e, const char *after)
{
	if (c->p == c->end)
		return 0;
	if (*c->p == ',') {
		c->p++;
		return 1;
	}
	if (*c->p == '\n' || (*c->p == '\r' && c->end - c->p > 1 && c->p[1] == '\n')) {
		c->p += *c->p == '\r' ? 2 : 1;
		c->line++;
		return 0;
	}
	if (*c->p == '\r')
		flashparts__err(e, c->line, "", "a carriage return not followed by a line feed");
	else
		flashparts__err(e, c->line, "", "unexpected character after %s", after);
	return -1;
}

/* A quoted field: "" is one quote; commas and line breaks are data. */
static int flashparts__quoted(flashparts__csv *c, flashparts__record *rec, flashparts__errs *e)
{
	int opened = c->line;

	c->p++;
	for (;;) {
		if (c->p == c->end) {
			flashparts__err(e, opened, "", "a quoted field is never closed");
			return -1;
		}
		char ch = *c->p++;
		if (ch == '"') {
			if (c->p == c->end || *c->p != '"')
				return flashparts__delim(c, e, "a closing quote");
			c->p++;
		} else if (ch == '\n') {
			c->line++;
		}
		flashparts__append(rec, ch);
	}
}

static int flashparts__unquoted(flashparts__csv *c, flashparts__record *rec, flashparts__errs *e)
{
	while (c->p < c->end && *c->p != ',' && *c->p != '\n' && *c->p != '\r') {
		if (*c->p == '"') {
			flashparts__err(e, c->line, "",
					"a quote inside an unquoted field (quote the whole field and double the quote)");
			return -1;
		}
		flashparts__append(rec, *c->p++);
	}
	return flashparts__delim(c, e, "a field");
}

/* The next record: 1 read, 0 end of input, -1 a syntax error (reported).
 * Blank lines between records are skipped. */
static int flashparts__record_read(flashparts__csv *c, flashparts__record *rec, flashparts__errs *e)
{
	int more;

	while (c->p < c->end && (*c->p == '\n' || (*c->p == '\r' && c->end - c->p > 1 &&
						   c->p[1] == '\n'))) {
		c->p += *c->p == '\r' ? 2 : 1;
		c->line++;
	}
	if (c->p == c->end)
		return 0;
	rec->line = c->line;
	rec->nfields = 0;
	do {
		flashparts__newfield(rec);
		more = (c->p < c->end && *c->p == '"') ? flashparts__quoted(c, rec, e)
						       : flashparts__unquoted(c, rec, e);
	} while (more == 1);
	return more < 0 ? -1 : 1;
}

static int flashparts__column(const char *s, size_t len)
{
	for (int i = 0; i < FLASHPARTS__NCOLS; i++)
		if (len == strlen(flashparts_columns[i]) && !strncasecmp(s, flashparts_columns[i], len))
			return i;
	return -1;
}

/* Maps header fields to columns (where[col] = field index or -1).
 * Returns 0 when the header is usable. */
static int flashparts__header(const flashparts__record *rec, flashparts__errs *e, int where[])
{
	static const int required[] = { FLASHPARTS__VENDOR, FLASHPARTS__PART, FLASHPARTS__MFR,
					FLASHPARTS__DEV, FLASHPARTS__SIZE };
	char snip[FLASHPARTS__SNIP + 4];
	size_t before = e->count;

	for (int i = 0; i < FLASHPARTS__NCOLS; i++)
		where[i] = -1;
	if (rec->nfields > FLASHPARTS__MAX_FIELDS) {
		flashparts__err(e, rec->line, "", "the header has %d columns; there are %d",
				rec->nfields, FLASHPARTS__NCOLS);
		return -1;
	}
	for (int i = 0; i < rec->nfields; i++) {
		const char *s = rec->f[i].buf;
		size_t len = rec->f[i].len;
		flashparts__trim(&s, &len);
		flashparts__snip(snip, s, len);
		int col = flashparts__column(s, len);
		if (col < 0)
			flashparts__err(e, rec->line, snip, "unknown column \"%s\"", snip);
		else if (where[col] >= 0)
			flashparts__err(e, rec->line, snip, "duplicate column \"%s\"", snip);
		else
			where[col] = i;
	}
	for (size_t i = 0; i < TN_ARRAY_LEN(required); i++)
		if (where[required[i]] < 0)
			flashparts__err(e, rec->line, flashparts_columns[required[i]],
					"missing required column");
	return e->count == before ? 0 : -1;
}

/* One data record into a row (appended to r when it is good). */
static void flashparts__csv_row(const flashparts__record *rec, const int where[], int nheader,
				flashparts__rows *r, flashparts__errs *e)
{
	flashparts__val vals[FLASHPARTS__NCOLS];
	flash_part part;

	if (rec->nfields != nheader) {
		flashparts__err(e, rec->line, "", "has %d fields, the header has %d", rec->nfields,
				nheader);
		return;
	}
	for (int i = 0; i < FLASHPARTS__NCOLS; i++) {
		flashparts__val *v = &vals[i];
		memset(v, 0, sizeof *v);
		if (where[i] < 0)
			continue;
		const flashparts__field *f = &rec->f[where[i]];
		v->s = f->buf;
		v->len = f->len;
		v->toolong = f->toolong;
		flashparts__trim(&v->s, &v->len);
		v->present = v->len > 0 || v->toolong;
	}
	if (flashparts__row(e, rec->line, vals, &part))
		return;
	flash_part *slot = flashparts__push(r, e, rec->line);
	if (slot)
		memcpy(slot, &part, sizeof part);
}

/* The records after the header, until the end, a syntax error, too many
 * rows or too many errors. */
static void flashparts__csv_rows(flashparts__csv *c, flashparts__record *rec, const int where[],
				 int nheader, flashparts__rows *r, flashparts__errs *e)
{
	size_t seen = 0;

	while (!e->oom && e->count < FLASHPARTS_MAX_ERRORS && flashparts__record_read(c, rec, e) == 1) {
		if (seen++ == FLASHPARTS_MAX_ROWS) {
			flashparts__err(e, rec->line, "", "more than %d rows", FLASHPARTS_MAX_ROWS);
			return;
		}
		flashparts__csv_row(rec, where, nheader, r, e);
	}
}

int flashparts_parse_csv(const char *text, size_t len, flashparts_import *out, tn_error *err)
{
	flashparts__errs e = { 0 };
	flashparts__rows r = { 0 };
	flashparts__csv c = { text, text + len, 1 };
	flashparts__record *rec;
	int where[FLASHPARTS__NCOLS];

	memset(out, 0, sizeof *out);
	e.list = json_array();
	rec = malloc(sizeof *rec);
	if (!e.list || !rec) {
		free(rec);
		json_decref(e.list);
		return tn_err(err, TN_ENOMEM, "out of memory parsing the flash-parts import");
	}
	if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) /* spreadsheets write a BOM */
		c.p += 3;
	int rc = flashparts__record_read(&c, rec, &e);
	if (rc == 0)
		flashparts__err(&e, 1, "", "no header line (expected %s,%s,...)", flashparts_columns[0],
				flashparts_columns[1]);
	else if (rc == 1 && !flashparts__header(rec, &e, where))
		flashparts__csv_rows(&c, rec, where, rec->nfields, &r, &e);
	free(rec);
	if (!e.oom)
		flashparts__duplicates(&r, &e);
	return flashparts__finish(&e, &r, out, err);
}

/* --- JSON -------------------------------------------------------------------- */

/* Scratch for values JSON gives as numbers or booleans, written as the CSV
 * spelling so that one set of checks serves both formats. */
typedef struct flashparts__scratch {
	char buf[FLASHPARTS__NCOLS][24];
	char jedec[12];            /* the optional "jedec" key, as given */
	int has_jedec;
} flashparts__scratch;

static int flashparts__intval(flashparts__errs *e, int line, int col, json_int_t v,
			      flashparts__scratch *sc, flashparts__val *out)
{
	const char *name = flashparts_columns[col];
	char *buf = sc->buf[col];

	if (col == FLASHPARTS__MFR && v >= 0 && v <= 0xff)
		snprintf(buf, sizeof sc->buf[col], "0x%02X", (unsigned)v);
	else if (col == FLASHPARTS__DEV && v >= 0 && v <= 0xffff)
		snprintf(buf, sizeof sc->buf[col], "0x%04X", (unsigned)v);
	else if (col == FLASHPARTS__SIZE && v >= 0)
		snprintf(buf, sizeof sc->buf[col], "%" JSON_INTEGER_FORMAT, v);
	else if ((col == FLASHPARTS__U4K || col == FLASHPARTS__U64K) && (v == 0 || v == 1))
		snprintf(buf, sizeof sc->buf[col], "%d", (int)v);
	else {
		flashparts__err(e, line, name, "the number %" JSON_INTEGER_FORMAT " is not allowed here", v);
		return -1;
	}
	out->s = buf;
	out->len = strlen(buf);
	out->present = 1;
	return 0;
}

/* One member of a row object into its column's value. */
static void flashparts__member(flashparts__errs *e, int line, int col, json_t *v,
			       flashparts__scratch *sc, flashparts__val *out)
{
	const char *name = flashparts_columns[col];
	int flag = col == FLASHPARTS__U4K || col == FLASHPARTS__U64K;
	int numeric = col == FLASHPARTS__MFR || col == FLASHPARTS__DEV || col == FLASHPARTS__SIZE;

	memset(out, 0, sizeof *out);
	if (json_is_string(v)) {
		out->s = json_string_value(v);
		out->len = json_string_length(v);
		out->toolong = out->len > FLASHPARTS_FIELD_MAX;
		flashparts__trim(&out->s, &out->len);
		out->present = out->len > 0 || out->toolong;
	} else if (json_is_integer(v) && (numeric || flag)) {
		flashparts__intval(e, line, col, json_integer_value(v), sc, out);
	} else if (json_is_boolean(v) && flag) {
		out->s = json_is_true(v) ? "yes" : "no";
		out->len = strlen(out->s);
		out->present = 1;
	} else if (!json_is_null(v)) {
		flashparts__err(e, line, name, "must be a string%s",
				flag ? " or a boolean" : numeric ? " or an integer" : "");
	}
}

/* The optional "jedec" key (six hex digits, as flashparts_to_json writes
 * it): fills jedec_mfr/jedec_dev when they are absent. */
static void flashparts__jedec_key(flashparts__errs *e, int line, json_t *v,
				  flashparts__scratch *sc, flashparts__val *vals)
{
	char hex[12] = "";
	uint32_t id;
	const char *s = json_string_value(v);
	size_t len = s ? json_string_length(v) : 0;

	if (!s || len != 6 || (snprintf(hex, sizeof hex, "0x%s", s), flashparts__hex(hex, 8, 6, &id))) {
		flashparts__err(e, line, "jedec", "must be six hex digits like \"ef4018\"");
		return;
	}
	sc->has_jedec = 1;
	snprintf(sc->jedec, sizeof sc->jedec, "%06" PRIx32, id);
	if (!vals[FLASHPARTS__MFR].present)
		flashparts__intval(e, line, FLASHPARTS__MFR, id >> 16, sc, &vals[FLASHPARTS__MFR]);
	if (!vals[FLASHPARTS__DEV].present)
		flashparts__intval(e, line, FLASHPARTS__DEV, id & 0xffff, sc, &vals[FLASHPARTS__DEV]);
}

/* One row object.  Returns the number of errors it added. */
static size_t flashparts__object(flashparts__errs *e, int line, json_t *obj, flash_part *out)
{
	flashparts__val vals[FLASHPARTS__NCOLS];
	flashparts__scratch sc;
	char snip[FLASHPARTS__SNIP + 4];
	json_t *v, *jedec = NULL;
	const char *key;
	size_t before = e->count;

	memset(vals, 0, sizeof vals);
	memset(&sc, 0, sizeof sc);
	memset(out, 0, sizeof *out);
	if (!json_is_object(obj)) {
		flashparts__err(e, line, "", "must be an object with the import keys");
		return e->count - before;
	}
	json_object_foreach(obj, key, v) {
		int col = flashparts__column(key, strlen(key));
		if (col >= 0 && !strcmp(key, flashparts_columns[col])) {
			flashparts__member(e, line, col, v, &sc, &vals[col]);
		} else if (!strcmp(key, "jedec")) {
			jedec = v;
		} else {
			flashparts__snip(snip, key, strlen(key));
			flashparts__err(e, line, snip, "unknown key");
		}
	}
	if (jedec)
		flashparts__jedec_key(e, line, jedec, &sc, vals);
	if (e->count != before)
		return e->count - before;
	flashparts__row(e, line, vals, out);
	if (sc.has_jedec && e->count == before &&
	    strtoul(sc.jedec, NULL, 16) != out->jedec)
		flashparts__err(e, line, "jedec", "\"%s\" disagrees with jedec_mfr and jedec_dev",
				sc.jedec);
	return e->count - before;
}

int flashparts_parse_json(const char *text, size_t len, flashparts_import *out, tn_error *err)
{
	flashparts__errs e = { .rows = 1 };
	flashparts__rows r = { 0 };
	json_error_t jerr;
	json_t *root;

	memset(out, 0, sizeof *out);
	e.list = json_array();
	if (!e.list)
		return tn_err(err, TN_ENOMEM, "out of memory parsing the flash-parts import");
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		e.rows = 0; /* a syntax error has a text line, not a row */
		flashparts__err(&e, jerr.line > 0 ? jerr.line : 1, "", "not valid JSON: %.150s",
				jerr.text);
	} else if (!json_is_array(root)) {
		flashparts__err(&e, 0, "", "must be a JSON array of row objects");
	} else if (json_array_size(root) > FLASHPARTS_MAX_ROWS) {
		flashparts__err(&e, 0, "", "more than %d rows", FLASHPARTS_MAX_ROWS);
	} else {
		for (size_t i = 0; i < json_array_size(root) && !e.oom &&
				   e.count < FLASHPARTS_MAX_ERRORS; i++) {
			flash_part part;
			if (flashparts__object(&e, (int)i + 1, json_array_get(root, i), &part))
				continue;
			flash_part *slot = flashparts__push(&r, &e, (int)i + 1);
			if (slot)
				memcpy(slot, &part, sizeof part);
		}
		if (!e.oom)
			flashparts__duplicates(&r, &e);
	}
	json_decref(root);
	return flashparts__finish(&e, &r, out, err);
}

void flashparts_import_free(flashparts_import *imp)
{
	if (!imp)
		return;
	free(imp->rows);
	json_decref(imp->errors);
	memset(imp, 0, sizeof *imp);
}

json_t *flashparts_to_json(const flash_part *p)
{
	char mfr[8], dev[8], jedec[8];

	snprintf(mfr, sizeof mfr, "0x%02" PRIX32, (p->jedec >> 16) & 0xff);
	snprintf(dev, sizeof dev, "0x%04" PRIX32, p->jedec & 0xffff);
	snprintf(jedec, sizeof jedec, "%06" PRIx32, p->jedec & 0xffffff);
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:b, s:b, s:s, s:s, s:s, s:s}",
			 "vendor", p->vendor, "part", p->part, "jedec_mfr", mfr, "jedec_dev", dev,
			 "jedec", jedec, "size_bytes", (json_int_t)p->size,
			 "uniform_4k_erase", p->uniform_4k, "uniform_64k_erase", p->uniform_64k,
			 "erase_layouts", p->layouts_text, "shares_id_with", p->shares_id_with,
			 "source", p->source, "notes", p->notes);
}

int flashparts_from_json(json_t *obj, flash_part *out, tn_error *err)
{
	flashparts__errs e = { 0 };
	flash_part part;

	if (!obj)
		return tn_err(err, TN_EINVAL, "a flash part must be a JSON object");
	flashparts__object(&e, 0, obj, &part);
	if (e.count)
		return tn_err(err, TN_EINVAL, "%s", e.first);
	memcpy(out, &part, sizeof part);
	return 0;
}

/* server/flash.c -- can this device's flash take this firmware? (see flash.h)
 *
 * Each source of facts about a part -- every table row that carries the
 * device's JEDEC id, and the part's own SFDP -- is checked on its own against
 * every requirement.  The verdict is the worst over the sources: parts that
 * share an id get the most conservative answer, and an SFDP that contradicts
 * the table wins when it is the more cautious.  No source means unknown, and
 * unknown blocks as surely as incompatible does. */
#define _GNU_SOURCE
#include "flash.h"

#include <stdio.h>
#include <string.h>

#include "flashparts.h"

const char *flash_verdict_name(flash_verdict v)
{
	switch (v) {
	case FLASH_COMPATIBLE: return "compatible";
	case FLASH_INCOMPATIBLE: return "incompatible";
	default: return "unknown";
	}
}

void flash_size_text(uint64_t bytes, char *buf, size_t cap)
{
	static const struct { uint64_t unit; const char *name; } units[] = {
		{ UINT64_C(1) << 30, "GB" }, { UINT64_C(1) << 20, "MB" }, { UINT64_C(1) << 10, "KB" },
	};
	for (size_t i = 0; i < TN_ARRAY_LEN(units); i++)
		if (bytes >= units[i].unit && bytes % units[i].unit == 0) {
			snprintf(buf, cap, "%llu %s", (unsigned long long)(bytes / units[i].unit), units[i].name);
			return;
		}
	snprintf(buf, cap, "%llu bytes", (unsigned long long)bytes);
}

static int flash__is_pow2(json_int_t v)
{
	return v > 0 && (v & (v - 1)) == 0;
}

int flash_requirements_parse(json_t *requirements, flash_requirements *out, tn_error *err)
{
	const char *key;
	json_t *v;

	memset(out, 0, sizeof *out);
	if (!requirements || json_is_null(requirements))
		return 0;
	if (!json_is_object(requirements))
		return tn_err(err, TN_EINVAL, "'requirements' must be an object");
	json_object_foreach(requirements, key, v)
		if (strcmp(key, "flash") != 0)
			return tn_err(err, TN_EINVAL, "requirements: unknown member '%s'", key);
	json_t *flash = json_object_get(requirements, "flash");
	if (!flash || json_is_null(flash))
		return 0;
	if (!json_is_object(flash))
		return tn_err(err, TN_EINVAL, "'requirements.flash' must be an object");
	json_object_foreach(flash, key, v) {
		if (strcmp(key, "uniform_erase") == 0) {
			size_t i;
			json_t *size;
			if (!json_is_array(v) || json_array_size(v) > FLASH_MAX_UNIFORM)
				return tn_err(err, TN_EINVAL, "'requirements.flash.uniform_erase' must be an "
					      "array of at most %d erase sizes", FLASH_MAX_UNIFORM);
			json_array_foreach(v, i, size) {
				json_int_t n = json_integer_value(size);
				if (!json_is_integer(size) || !flash__is_pow2(n) || n < 256 || n > (1 << 24))
					return tn_err(err, TN_EINVAL, "'requirements.flash.uniform_erase[%zu]' must "
						      "be a power of two from 256 to 16777216", i);
				out->uniform_erase[out->nuniform++] = (uint32_t)n;
			}
		} else if (strcmp(key, "min_size") == 0) {
			if (!json_is_integer(v) || json_integer_value(v) < 0)
				return tn_err(err, TN_EINVAL, "'requirements.flash.min_size' must be a "
					      "non-negative integer (bytes)");
			out->min_size = (uint64_t)json_integer_value(v);
		} else {
			return tn_err(err, TN_EINVAL, "requirements.flash: unknown member '%s'", key);
		}
	}
	return 0;
}

void flash_requirements_describe(const flash_requirements *req, char *buf, size_t cap)
{
	size_t n = 0;
	char size[32];

	buf[0] = '\0';
	for (int i = 0; i < req->nuniform && n < cap; i++) {
		flash_size_text(req->uniform_erase[i], size, sizeof size);
		n += (size_t)snprintf(buf + n, cap - n, "%s%s", i == 0 ? "" :
				      i == req->nuniform - 1 ? " and " : ", ", size);
	}
	if (req->nuniform && n < cap)
		n += (size_t)snprintf(buf + n, cap - n, " erase across the whole chip");
	if (req->min_size && n < cap) {
		flash_size_text(req->min_size, size, sizeof size);
		n += (size_t)snprintf(buf + n, cap - n, "%sat least %s", n ? ", " : "", size);
	}
	if (n == 0)
		snprintf(buf, cap, "a flash part the flash-parts table or its SFDP describes");
}

/* One source of facts, reduced to what the requirements ask about. */
struct flash__source {
	const flash_part *row;      /* or */
	const sfdp_info *sfdp;
	uint64_t size;
};

static uint64_t flash__coverage(const struct flash__source *s, uint32_t erase)
{
	return s->row ? flashparts_coverage(s->row, erase) : sfdp_coverage(s->sfdp, erase);
}

/* Checks one source.  Returns its verdict and writes the first unmet
 * requirement (or nothing) into detail. */
static flash_verdict flash__check_source(const struct flash__source *s, const flash_requirements *req,
					 uint64_t reported_size, char *detail, size_t cap)
{
	char a[32], b[32];

	detail[0] = '\0';
	if (s->size == 0) {
		snprintf(detail, cap, "has no known size");
		return FLASH_UNKNOWN;
	}
	if (reported_size && reported_size != s->size) {
		flash_size_text(reported_size, a, sizeof a);
		flash_size_text(s->size, b, sizeof b);
		snprintf(detail, cap, "is %s by the device's own report but %s by the %s", a, b,
			 s->row ? "flash-parts table" : "part's SFDP");
		return FLASH_UNKNOWN;
	}
	for (int i = 0; i < req->nuniform; i++) {
		uint32_t erase = req->uniform_erase[i];
		uint64_t covered = flash__coverage(s, erase);
		if (covered >= s->size)
			continue;
		flash_size_text(erase, a, sizeof a);
		if (covered == 0)
			snprintf(detail, cap, "has no %s erase", a);
		else
			snprintf(detail, cap, "has %s erase in only %llu of %llu %s blocks", a,
				 (unsigned long long)(covered / erase),
				 (unsigned long long)(s->size / erase), a);
		return FLASH_INCOMPATIBLE;
	}
	if (req->min_size && s->size < req->min_size) {
		flash_size_text(s->size, a, sizeof a);
		snprintf(detail, cap, "holds only %s", a);
		return FLASH_INCOMPATIBLE;
	}
	return FLASH_COMPATIBLE;
}

/* "S25FL127S", or "S25FL127S or S25FL128S" when parts share the id. */
static void flash__names(const flash_facts *f, char *buf, size_t cap)
{
	size_t n = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < f->nrows && n < cap; i++)
		n += (size_t)snprintf(buf + n, cap - n, "%s%s", i == 0 ? "" : " or ", f->rows[i].part);
	if (f->nrows == 0)
		snprintf(buf, cap, "%s", f->sfdp ? "(not in the flash-parts table)" : "(unknown part)");
}

static void flash__jedec_text(const flash_facts *f, char *buf, size_t cap)
{
	if (f->has_jedec)
		snprintf(buf, cap, "JEDEC %02X %02X %02X", (f->jedec >> 16) & 0xff, (f->jedec >> 8) & 0xff,
			 f->jedec & 0xff);
	else
		snprintf(buf, cap, "no JEDEC id reported");
}

flash_verdict flash_check(const flash_facts *f, const flash_requirements *req,
			  const char *fw_version, char *reason, size_t cap)
{
	char names[200], jedec[40], needs[200], detail[200], worst_detail[200] = "";
	struct flash__source sources[64];
	size_t nsources = 0;
	flash_verdict worst = FLASH_COMPATIBLE;

	flash__names(f, names, sizeof names);
	flash__jedec_text(f, jedec, sizeof jedec);
	flash_requirements_describe(req, needs, sizeof needs);
	for (size_t i = 0; i < f->nrows && nsources < TN_ARRAY_LEN(sources) - 1; i++)
		sources[nsources++] = (struct flash__source){ .row = &f->rows[i], .size = f->rows[i].size };
	if (f->sfdp)
		sources[nsources++] = (struct flash__source){ .sfdp = f->sfdp, .size = f->sfdp->density };

	if (nsources == 0) {
		char sfdp[200];
		if (f->sfdp_error)
			snprintf(sfdp, sizeof sfdp, "its SFDP was refused (%s)", f->sfdp_error);
		else
			snprintf(sfdp, sizeof sfdp, "the device sent no SFDP");
		if (f->has_jedec)
			snprintf(reason, cap, "flash %s is not in the flash-parts table and %s; firmware %s "
				 "needs %s", jedec, sfdp, fw_version, needs);
		else
			snprintf(reason, cap, "the device reported no flash part and %s; firmware %s needs %s",
				 sfdp, fw_version, needs);
		return FLASH_UNKNOWN;
	}
	size_t worst_source = 0;
	for (size_t i = 0; i < nsources; i++) {
		flash_verdict v = flash__check_source(&sources[i], req, f->reported_size, detail, sizeof detail);
		if (v > worst) {
			worst = v;
			worst_source = i;
			snprintf(worst_detail, sizeof worst_detail, "%s", detail);
		}
	}
	if (worst == FLASH_COMPATIBLE) {
		snprintf(reason, cap, "flash %s (%s) meets firmware %s's needs: %s", names, jedec,
			 fw_version, needs);
		return worst;
	}
	/* Name the part whose facts decided, and say when others share its id. */
	const struct flash__source *ws = &sources[worst_source];
	const char *who = ws->row ? ws->row->part : names;
	char shared[300] = "";
	if (f->nrows > 1)
		snprintf(shared, sizeof shared, " (%s is shared by %d parts in the table: %s; the verdict "
			 "is the most conservative of them)", jedec, (int)f->nrows, names);
	snprintf(reason, cap, "flash %s (%s)%s %s; firmware %s needs %s%s", who, jedec,
		 ws->sfdp ? " by its own SFDP" : "", worst_detail, fw_version, needs, shared);
	return worst;
}

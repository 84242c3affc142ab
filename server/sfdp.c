/* server/sfdp.c -- decoding a flash part's own SFDP (JESD216 up to rev F).
 *
 * The bytes, all little-endian:
 *   0x00  SFDP header: signature "SFDP" (0x50444653), minor, major, NPH (the
 *         number of parameter headers minus one), access protocol
 *   0x08  NPH+1 parameter headers of 8 bytes: ID LSB, minor, major, table
 *         length in DWORDs, 24-bit table pointer, ID MSB.  The first one is
 *         the Basic Flash Parameter Table's.
 *   ...   the tables, wherever their pointers say
 * Read: the Basic Flash Parameter Table (ID 0xFF00: DWORD1's "4 KB erase"
 * bits, DWORD2's density, DWORDs 8-9's erase types) and every Sector Map
 * Parameter Table (ID 0xFF81, JESD216B on: which erase types work in which
 * region, per configuration).  Other tables are skipped unread, so a table
 * we do not use can never make us refuse an SFDP.
 * Every offset is checked against `len` before the byte is read.
 * Owns: nothing.  Threads: any (pure). */
#include "sfdp.h"

#include <string.h>

#define SFDP__SIGNATURE 0x50444653u
#define SFDP__HEADER_LEN 8
#define SFDP__PARAM_LEN 8
#define SFDP__BFPT_ID 0xff00
#define SFDP__SMPT_ID 0xff81
#define SFDP__BFPT_MIN_DWORDS 9       /* JESD216 (1.0); later revisions add more */
/* The biggest serial NOR parts are a few Gbit; a terabyte is a broken table. */
#define SFDP__MAX_DENSITY_LOG2_BITS 43

/* Sector map descriptors (JESD216B 6.5). */
#define SFDP__SMPT_END 0x1u           /* DWORD1 bit 0: the last descriptor */
#define SFDP__SMPT_MAP 0x2u           /* DWORD1 bit 1: map (1) or detection command (0) */

/* A parameter header, decoded. */
typedef struct sfdp__param {
	uint16_t id;
	uint8_t major, minor;
	uint32_t ndwords;
	uint32_t ptr;
} sfdp__param;

static uint32_t sfdp__le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The i-th parameter header; the caller has checked that it lies in the buffer. */
static void sfdp__param_at(const uint8_t *buf, unsigned i, sfdp__param *out)
{
	const uint8_t *p = buf + SFDP__HEADER_LEN + (size_t)i * SFDP__PARAM_LEN;

	out->id = (uint16_t)(p[7] << 8 | p[0]);
	out->minor = p[1];
	out->major = p[2];
	out->ndwords = p[3];
	out->ptr = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16;
}

/* Points *table at a table once all its DWORDs are known to lie in the buffer. */
static int sfdp__table(const uint8_t *buf, size_t len, const sfdp__param *ph, const char *name,
		       const uint8_t **table, tn_error *err)
{
	size_t end = (size_t)ph->ptr + (size_t)ph->ndwords * 4;

	if (end > len)
		return tn_err(err, TN_EINVAL, "%s pointer/length past the end (0x%x + %u DWORDs > %zu bytes)",
			      name, ph->ptr, ph->ndwords, len);
	*table = buf + ph->ptr;
	return 0;
}

/* The SFDP header: signature, revision and how many parameter headers follow
 * (checked to lie in the buffer). */
static int sfdp__header(const uint8_t *buf, size_t len, sfdp_info *out, unsigned *nparams, tn_error *err)
{
	uint32_t sig;
	size_t need;

	if (len > SFDP_MAX_LEN)
		return tn_err(err, TN_EINVAL, "SFDP is %zu bytes, more than the %d a device may send",
			      len, SFDP_MAX_LEN);
	if (len < SFDP__HEADER_LEN)
		return tn_err(err, TN_EINVAL, "short buffer: %zu bytes, the SFDP header needs %d",
			      len, SFDP__HEADER_LEN);
	sig = sfdp__le32(buf);
	if (sig != SFDP__SIGNATURE)
		return tn_err(err, TN_EINVAL, "bad signature 0x%08x (want 0x%08x, \"SFDP\")", sig,
			      SFDP__SIGNATURE);
	out->minor = buf[4];
	out->major = buf[5];
	/* A new major revision would reorganize the tables (JESD216 4.1). */
	if (out->major != 1)
		return tn_err(err, TN_EINVAL, "unsupported SFDP revision %u.%u (JESD216 is 1.x)",
			      out->major, out->minor);
	/* NPH counts from zero, so a header cannot say "no parameter headers";
	 * what can happen is a buffer that ends before them. */
	if (len < SFDP__HEADER_LEN + SFDP__PARAM_LEN)
		return tn_err(err, TN_EINVAL, "zero parameter headers: the %zu bytes end before the "
			      "first (the BFPT's, at 0x08)", len);
	*nparams = (unsigned)buf[6] + 1;
	need = SFDP__HEADER_LEN + (size_t)*nparams * SFDP__PARAM_LEN;
	if (need > len)
		return tn_err(err, TN_EINVAL, "parameter headers past the end (NPH says %u headers, "
			      "%zu bytes; have %zu)", *nparams, need, len);
	return 0;
}

/* Picks the BFPT header: the first header must be one (JESD216 4.2); a later
 * one of the same major revision and a newer minor (or longer table at the
 * same minor) supersedes it, as Linux's spi-nor does. */
static int sfdp__find_bfpt(const uint8_t *buf, unsigned nparams, sfdp__param *bfpt, tn_error *err)
{
	sfdp__param ph;

	sfdp__param_at(buf, 0, bfpt);
	if (bfpt->id != SFDP__BFPT_ID)
		return tn_err(err, TN_EINVAL, "first parameter header is 0x%04x, not the BFPT (0xff00)",
			      bfpt->id);
	if (bfpt->major != 1)
		return tn_err(err, TN_EINVAL, "unsupported BFPT revision %u.%u", bfpt->major, bfpt->minor);
	for (unsigned i = 1; i < nparams; i++) {
		sfdp__param_at(buf, i, &ph);
		if (ph.id == SFDP__BFPT_ID && ph.major == bfpt->major &&
		    (ph.minor > bfpt->minor || (ph.minor == bfpt->minor && ph.ndwords > bfpt->ndwords)))
			*bfpt = ph;
	}
	return 0;
}

/* BFPT DWORD2: bit 31 clear, the density in bits minus one; set, log2 of the
 * density in bits (the form for parts over 2 Gbit). */
static int sfdp__density(uint32_t dword2, uint64_t *bytes, tn_error *err)
{
	uint64_t bits;

	if (dword2 & 0x80000000u) {
		uint32_t n = dword2 & 0x7fffffffu;
		if (n > SFDP__MAX_DENSITY_LOG2_BITS)
			return tn_err(err, TN_EINVAL, "density 2^%u bits is absurd (over 1 TiB)", n);
		bits = UINT64_C(1) << n;
	} else {
		bits = (uint64_t)dword2 + 1;
	}
	if (bits < 8)
		return tn_err(err, TN_EINVAL, "density 0 (%llu bits)", (unsigned long long)bits);
	if (bits % 8)
		return tn_err(err, TN_EINVAL, "density of %llu bits is not a whole number of bytes",
			      (unsigned long long)bits);
	*bytes = bits / 8;
	return 0;
}

/* BFPT DWORDs 8-9: four erase types, each a half-word of log2(size) and the
 * opcode; size 0 means the type does not exist. */
static int sfdp__erase_types(uint32_t dword8, uint32_t dword9, sfdp_info *out, tn_error *err)
{
	for (int i = 0; i < 4; i++) {
		uint32_t half = ((i < 2 ? dword8 : dword9) >> (16 * (i % 2))) & 0xffff;
		unsigned log2 = half & 0xff;

		if (log2 == 0)
			continue;
		if (log2 > 31 || (UINT64_C(1) << log2) > out->density)
			return tn_err(err, TN_EINVAL, "erase type %d size 2^%u is absurd (the chip is "
				      "%llu bytes)", i + 1, log2, (unsigned long long)out->density);
		out->erase[i].size = UINT32_C(1) << log2;
		out->erase[i].opcode = (uint8_t)(half >> 8);
	}
	return 0;
}

static int sfdp__bfpt(const uint8_t *buf, size_t len, const sfdp__param *ph, sfdp_info *out,
		      tn_error *err)
{
	const uint8_t *t;
	uint32_t dword1;
	int rc;

	if (ph->ndwords < SFDP__BFPT_MIN_DWORDS)
		return tn_err(err, TN_EINVAL, "BFPT is %u DWORDs, shorter than the %d of JESD216",
			      ph->ndwords, SFDP__BFPT_MIN_DWORDS);
	if ((rc = sfdp__table(buf, len, ph, "BFPT", &t, err)))
		return rc;
	out->bfpt_major = ph->major;
	out->bfpt_minor = ph->minor;
	if ((rc = sfdp__density(sfdp__le32(t + 4), &out->density, err)))
		return rc;
	/* Bits 1:0 == 01: "4 KB erase is supported throughout the device". */
	dword1 = sfdp__le32(t);
	out->erase_4k_uniform = (dword1 & 0x3) == 0x1;
	if (out->erase_4k_uniform)
		out->erase_4k_opcode = (uint8_t)(dword1 >> 8);
	return sfdp__erase_types(sfdp__le32(t + 28), sfdp__le32(t + 32), out, err);
}

/* One map descriptor at DWORD i of the sector map `t` (n DWORDs): its regions,
 * which must lie in the table and add up to the density.  Sets *used to the
 * DWORDs it spans. */
static int sfdp__smpt_map(const uint8_t *t, uint32_t n, uint32_t i, sfdp_info *out, uint32_t *used,
			  tn_error *err)
{
	uint32_t head = sfdp__le32(t + (size_t)i * 4);
	unsigned id = (head >> 8) & 0xff, count = ((head >> 16) & 0xff) + 1;
	uint64_t sum = 0;
	sfdp_config *cfg;

	if (count > n - i - 1)
		return tn_err(err, TN_EINVAL, "sector map configuration %u: %u regions run past the "
			      "table's %u DWORDs", id, count, n);
	if (out->nregions + count > SFDP_MAX_REGIONS)
		return tn_err(err, TN_EINVAL, "sector map has more than %d regions", SFDP_MAX_REGIONS);
	cfg = &out->configs[out->nconfigs++];
	cfg->id = (uint8_t)id;
	cfg->first = (uint8_t)out->nregions;
	cfg->nregions = (uint8_t)count;
	for (unsigned k = 0; k < count; k++) {
		uint32_t r = sfdp__le32(t + ((size_t)i + 1 + k) * 4);
		sfdp_region *region = &out->regions[out->nregions++];

		/* Bits 31:8: size in 256-byte units minus one; bits 3:0: erase types. */
		region->size = ((uint64_t)(r >> 8) + 1) * 256;
		region->erase_mask = (uint8_t)(r & 0xf);
		sum += region->size;
	}
	if (sum != out->density)
		return tn_err(err, TN_EINVAL, "sector map configuration %u: regions add up to %llu bytes, "
			      "the density is %llu", id, (unsigned long long)sum,
			      (unsigned long long)out->density);
	*used = 1 + count;
	return 0;
}

/* A Sector Map Parameter Table: configuration detection commands (two DWORDs
 * each, skipped: the server cannot run them), then map descriptors, the last
 * flagged.  Every map is kept; sfdp_coverage takes the worst. */
static int sfdp__smpt(const uint8_t *buf, size_t len, const sfdp__param *ph, sfdp_info *out,
		      tn_error *err)
{
	const uint8_t *t;
	uint32_t n = ph->ndwords, i = 0, used;
	int rc;

	if (n == 0)
		return tn_err(err, TN_EINVAL, "sector map is empty (0 DWORDs)");
	if ((rc = sfdp__table(buf, len, ph, "sector map", &t, err)))
		return rc;
	while (i < n && !(sfdp__le32(t + (size_t)i * 4) & SFDP__SMPT_MAP)) {
		if (i + 2 > n)
			return tn_err(err, TN_EINVAL, "sector map detection command at DWORD %u cut short", i);
		if (sfdp__le32(t + (size_t)i * 4) & SFDP__SMPT_END)
			return tn_err(err, TN_EINVAL, "sector map ends at DWORD %u before any map", i);
		i += 2;
	}
	if (i >= n)
		return tn_err(err, TN_EINVAL, "sector map has no map descriptor");
	for (;;) {
		uint32_t head = sfdp__le32(t + (size_t)i * 4);

		if (!(head & SFDP__SMPT_MAP))
			return tn_err(err, TN_EINVAL, "sector map DWORD %u: a detection command among the maps", i);
		if ((rc = sfdp__smpt_map(t, n, i, out, &used, err)))
			return rc;
		out->has_sector_map = 1;
		i += used;
		if (head & SFDP__SMPT_END)
			return 0;
		if (i >= n)
			return tn_err(err, TN_EINVAL, "sector map ends without its last map flagged");
	}
}

static int sfdp__decode(const uint8_t *buf, size_t len, sfdp_info *out, tn_error *err)
{
	sfdp__param bfpt, ph;
	unsigned nparams;
	int rc;

	if (!buf)
		return tn_err(err, TN_EINVAL, "no SFDP bytes");
	if ((rc = sfdp__header(buf, len, out, &nparams, err)) ||
	    (rc = sfdp__find_bfpt(buf, nparams, &bfpt, err)) ||
	    (rc = sfdp__bfpt(buf, len, &bfpt, out, err)))
		return rc;
	for (unsigned i = 0; i < nparams; i++) {
		sfdp__param_at(buf, i, &ph);
		if (ph.id == SFDP__SMPT_ID && (rc = sfdp__smpt(buf, len, &ph, out, err)))
			return rc;
	}
	return 0;
}

int sfdp_decode(const uint8_t *buf, size_t len, sfdp_info *out, tn_error *err)
{
	int rc;

	memset(out, 0, sizeof *out);
	rc = sfdp__decode(buf, len, out, err);
	/* Half-decoded facts must not look like facts. */
	if (rc)
		memset(out, 0, sizeof *out);
	return rc;
}

/* The 6-bit value of a standard base64 character (RFC 4648 table 1), or -1. */
static int sfdp__b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decodes standard base64 into out (cap bytes): padding optional, but if
 * present it must complete the last group; no other character, no bits left
 * over after the last byte (a canonical encoder leaves them zero). */
static int sfdp__unbase64(const char *s, uint8_t *out, size_t cap, size_t *outlen, tn_error *err)
{
	size_t len = strlen(s), pad = 0, n = 0;
	uint32_t acc = 0;
	int bits = 0;

	while (pad < 2 && len > 0 && s[len - 1] == '=') {
		len--;
		pad++;
	}
	/* The characters first: a stray one is the likelier fault, and it would
	 * otherwise show up as a length or padding error. */
	for (size_t i = 0; i < len; i++)
		if (sfdp__b64_value((unsigned char)s[i]) < 0)
			return tn_err(err, TN_EINVAL, "bad base64 character 0x%02x at %zu",
				      (unsigned)(unsigned char)s[i], i);
	if (pad && (len + pad) % 4 != 0)
		return tn_err(err, TN_EINVAL, "base64 padding does not end a group of 4 characters");
	if (len % 4 == 1)
		return tn_err(err, TN_EINVAL, "base64 of %zu characters cannot be (one left over)", len);
	if (len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0) > cap)
		return tn_err(err, TN_EINVAL, "SFDP is more than the %zu bytes a device may send", cap);
	for (size_t i = 0; i < len; i++) {
		acc = (acc << 6 | (uint32_t)sfdp__b64_value((unsigned char)s[i])) & 0xffff;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (uint8_t)(acc >> bits);
		}
	}
	if (acc & ((UINT32_C(1) << bits) - 1))
		return tn_err(err, TN_EINVAL, "base64 has stray bits after the last byte");
	*outlen = n;
	return 0;
}

int sfdp_decode_base64(const char *b64, sfdp_info *out, tn_error *err)
{
	uint8_t buf[SFDP_MAX_LEN];
	size_t len;
	int rc;

	memset(out, 0, sizeof *out);
	if (!b64)
		return tn_err(err, TN_EINVAL, "no SFDP");
	if ((rc = sfdp__unbase64(b64, buf, sizeof buf, &len, err)))
		return rc;
	return sfdp_decode(buf, len, out, err);
}

/* The erase types (bit i: type i+1) whose blocks are exactly `size` bytes. */
static uint8_t sfdp__types_of_size(const sfdp_info *info, uint32_t size)
{
	uint8_t mask = 0;

	for (int i = 0; i < 4; i++)
		if (info->erase[i].size == size)
			mask |= (uint8_t)(1u << i);
	return mask;
}

static uint64_t sfdp__config_coverage(const sfdp_info *info, const sfdp_config *cfg, uint8_t types)
{
	uint64_t bytes = 0;

	for (int k = cfg->first; k < cfg->first + cfg->nregions && k < SFDP_MAX_REGIONS; k++)
		if (info->regions[k].erase_mask & types)
			bytes += info->regions[k].size;
	return bytes;
}

uint64_t sfdp_coverage(const sfdp_info *info, uint32_t size)
{
	uint64_t least = UINT64_MAX;
	uint8_t types;

	if (!info || size == 0)
		return 0;
	types = sfdp__types_of_size(info, size);
	if (!info->has_sector_map)
		return types || (size == 4096 && info->erase_4k_uniform) ? info->density : 0;
	/* The map speaks only of erase types: DWORD1's 4 KB bit, which says
	 * nothing of regions, does not count here. */
	for (int c = 0; c < info->nconfigs && c < SFDP_MAX_REGIONS; c++) {
		uint64_t bytes = sfdp__config_coverage(info, &info->configs[c], types);
		if (bytes < least)
			least = bytes;
	}
	return info->nconfigs ? least : 0;
}

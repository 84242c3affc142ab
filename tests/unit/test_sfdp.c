/* tests/unit/test_sfdp.c -- the SFDP decoder (server/sfdp.c) against JESD216.
 * Images are assembled here field by field (SFDP header, parameter headers,
 * BFPT, optional sector map) to check every decoded field, every refusal and
 * its reason, every truncation, and the base64 layer.  The fixtures in
 * tests/fixtures/sfdp/ are two real parts:
 *
 *   w25q128fv.b64       Winbond W25Q128FV (EF 40 18, 16 MiB, 4K/32K/64K erase
 *                       everywhere, 20/52/D8): JESD216 1.0, one 9-DWORD BFPT at
 *                       0x80 in a 256-byte SFDP area filled with FF.  The BFPT
 *                       DWORDs are those of a published dump of a Winbond part
 *                       answering EF 40 18 (W25Q128JV-IQ, which reports 1.5 and
 *                       16 DWORDs); the 1.0 / 9-DWORD layout is our reading of
 *                       the FV's pre-JESD216A generation, not a dump.
 *   w25q128fv-smpt.b64  the same part rendered as JESD216B: the 16-DWORD BFPT of
 *                       that dump plus a one-configuration sector map (the whole
 *                       chip, types 4K|32K|64K), so the uniform case is also
 *                       checked through the sector-map path.
 *   s25fl127s.b64       Spansion S25FL127S (01 20 18, 16 MiB, hybrid sectors):
 *                       4 KB erase (20h) works only in the sixteen 4 KB
 *                       parameter sectors (64 KB, bottom or top by the OTP bit
 *                       TBPARM, CR1 bit 2), 64 KB erase (D8h) everywhere.  The
 *                       part's own BFPT sets DWORD1's "4 KB erase supported"
 *                       bits and lists a 4 KB erase type, with no sector map to
 *                       say where -- which is how an imp003 got bricked.  This
 *                       fixture is SYNTHETIC where it matters: a JESD216B image
 *                       whose BFPT follows the datasheet's command set (DWORDs
 *                       10-16 left FF, not reproduced) plus a sector map we
 *                       wrote to encode the hybrid layout: one detection
 *                       command (read CR1, 35h, mask 04h) and two
 *                       configurations, parameter sectors at the bottom (ID 0)
 *                       and at the top (ID 1), each a 64 KB region where types
 *                       {4K, 64K} work and the rest where only 64K works. */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sfdp.h"

#define MIB (UINT64_C(1) << 20)
#define IMG_CAP 1024
#define TABLES 0x30          /* where build() puts the first table */

/* --- building images ------------------------------------------------------- */

typedef struct image {
	uint8_t b[IMG_CAP];
	size_t len;
} image;

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* Writes parameter header i: id, revision 1.minor, n DWORDs at ptr. */
static void param_header(image *im, int i, uint16_t id, uint8_t minor, uint8_t ndwords, uint32_t ptr)
{
	uint8_t *p = im->b + 8 + 8 * i;

	p[0] = (uint8_t)id;
	p[1] = minor;
	p[2] = 1;
	p[3] = ndwords;
	p[4] = (uint8_t)ptr;
	p[5] = (uint8_t)(ptr >> 8);
	p[6] = (uint8_t)(ptr >> 16);
	p[7] = (uint8_t)(id >> 8);
}

/* Appends n DWORDs at the end of the image; returns where they start. */
static uint32_t append(image *im, const uint32_t *d, int n)
{
	uint32_t at = (uint32_t)im->len;

	ck_assert_uint_le(im->len + 4 * (size_t)n, IMG_CAP);
	for (int i = 0; i < n; i++)
		put32(im->b + im->len + 4 * i, d[i]);
	im->len += 4 * (size_t)n;
	return at;
}

/* SFDP 1.minor with the BFPT (and, when nsmpt > 0, a sector map) from 0x30
 * on; header slots up to `nparams` (at most 5) exist, unused ones are FF. */
static void build_n(image *im, uint8_t minor, int nparams, const uint32_t *bfpt, int nbfpt,
		    const uint32_t *smpt, int nsmpt)
{
	memset(im, 0xff, sizeof *im);
	put32(im->b, 0x50444653);
	im->b[4] = minor;
	im->b[5] = 1;
	im->b[6] = (uint8_t)(nparams - 1);
	im->len = TABLES;
	param_header(im, 0, 0xff00, minor, (uint8_t)nbfpt, append(im, bfpt, nbfpt));
	if (nsmpt > 0)
		param_header(im, 1, 0xff81, minor, (uint8_t)nsmpt, append(im, smpt, nsmpt));
}

static void build(image *im, uint8_t minor, const uint32_t *bfpt, int nbfpt, const uint32_t *smpt,
		  int nsmpt)
{
	build_n(im, minor, nsmpt > 0 ? 2 : 1, bfpt, nbfpt, smpt, nsmpt);
}

/* A 16-DWORD BFPT of a uniform part: 4 KB erase throughout (opcode 20h),
 * erase types 4K/20h, 32K/52h, 64K/D8h; density in bytes. */
static void bfpt_uniform(uint32_t d[16], uint64_t density)
{
	for (int i = 0; i < 16; i++)
		d[i] = 0xffffffff;
	d[0] = 0xfff920e5;
	d[1] = (uint32_t)(density * 8 - 1);
	d[7] = 0x520f200c;
	d[8] = 0xff00d810;
}

/* Sector map words. */
#define MAP(id, nregions, last) \
	(0xff0000fcu | (uint32_t)(id) << 8 | (uint32_t)((nregions) - 1) << 16 | 0x2u | ((last) ? 1u : 0u))
#define REGION(bytes, types) ((uint32_t)(((bytes) / 256 - 1) << 8) | 0xf0u | (types))
#define CMD(opcode, mask) (0x000000fcu | (uint32_t)(opcode) << 8 | (uint32_t)(mask) << 24)

/* Decodes the first len bytes from an exactly-sized heap copy, so a read
 * past len shows under valgrind and ASan. */
static int decode_len(const image *im, size_t len, sfdp_info *info, tn_error *err)
{
	uint8_t *copy = malloc(len ? len : 1);
	int rc;

	ck_assert_ptr_nonnull(copy);
	memcpy(copy, im->b, len);
	memset(err, 0, sizeof *err);
	rc = sfdp_decode(copy, len, info, err);
	free(copy);
	return rc;
}

static void decode_ok(const image *im, sfdp_info *info)
{
	tn_error err;
	int rc = decode_len(im, im->len, info, &err);

	ck_assert_msg(rc == 0, "decode failed: %s", err.msg);
}

static void refused_len(const image *im, size_t len, const char *reason)
{
	sfdp_info info;
	tn_error err;

	ck_assert_int_eq(decode_len(im, len, &info, &err), TN_EINVAL);
	ck_assert_int_eq(err.code, TN_EINVAL);
	ck_assert_msg(strstr(err.msg, reason) != NULL, "refusal \"%s\" lacks \"%s\"", err.msg, reason);
	/* Nothing half-decoded survives a refusal. */
	ck_assert_uint_eq(info.density, 0);
	ck_assert_int_eq(info.has_sector_map, 0);
}

static void refused(const image *im, const char *reason)
{
	refused_len(im, im->len, reason);
}

/* --- base64, written independently of the decoder -------------------------- */

static char *b64(const uint8_t *p, size_t n, int padded)
{
	static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *s = malloc(n / 3 * 4 + 5), *o = s;

	ck_assert_ptr_nonnull(s);
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
			     (i + 2 < n ? p[i + 2] : 0);
		size_t chars = n - i >= 3 ? 4 : n - i + 1;
		for (size_t k = 0; k < 4; k++)
			if (k < chars)
				*o++ = abc[(v >> (18 - 6 * k)) & 63];
			else if (padded)
				*o++ = '=';
	}
	*o = '\0';
	return s;
}

/* --- fixtures --------------------------------------------------------------- */

/* The fixture's base64, trailing newline removed (owned: caller frees). */
static char *fixture(const char *name)
{
	char path[600];
	const char *src = getenv("TN_SRCDIR");
	char *text = NULL;
	size_t cap = 0;
	ssize_t n;
	FILE *f;

	snprintf(path, sizeof path, "%s/tests/fixtures/sfdp/%s", src ? src : "..", name);
	f = fopen(path, "r");
	ck_assert_msg(f != NULL, "no fixture at %s", path);
	n = getline(&text, &cap, f);
	fclose(f);
	ck_assert_int_gt(n, 0);
	while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
		text[--n] = '\0';
	return text;
}

static void fixture_decode(const char *name, sfdp_info *info)
{
	char *text = fixture(name);
	tn_error err = { 0 };
	int rc = sfdp_decode_base64(text, info, &err);

	free(text);
	ck_assert_msg(rc == 0, "%s: %s", name, err.msg);
}

/* The fixture's raw bytes, as an image. */
static void fixture_image(const char *name, image *im)
{
	char *text = fixture(name);
	static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	uint32_t acc = 0;
	int bits = 0;

	memset(im, 0xff, sizeof *im);
	im->len = 0;
	for (const char *c = text; *c && *c != '='; c++) {
		const char *at = strchr(abc, *c);
		ck_assert_ptr_nonnull(at);
		acc = (acc << 6 | (uint32_t)(at - abc)) & 0xffff;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			ck_assert_uint_lt(im->len, IMG_CAP);
			im->b[im->len++] = (uint8_t)(acc >> bits);
		}
	}
	free(text);
}

/* --- the BFPT ---------------------------------------------------------------- */

START_TEST(bfpt_1_0_fields)
{
	uint32_t d[16];
	image im;
	sfdp_info info;

	bfpt_uniform(d, 16 * MIB);
	build(&im, 0, d, 9, NULL, 0);
	decode_ok(&im, &info);
	ck_assert_uint_eq(info.major, 1);
	ck_assert_uint_eq(info.minor, 0);
	ck_assert_uint_eq(info.bfpt_major, 1);
	ck_assert_uint_eq(info.bfpt_minor, 0);
	ck_assert_uint_eq(info.density, 16 * MIB);
	ck_assert_int_eq(info.erase_4k_uniform, 1);
	ck_assert_uint_eq(info.erase_4k_opcode, 0x20);
	ck_assert_uint_eq(info.erase[0].size, 4096);
	ck_assert_uint_eq(info.erase[0].opcode, 0x20);
	ck_assert_uint_eq(info.erase[1].size, 32768);
	ck_assert_uint_eq(info.erase[1].opcode, 0x52);
	ck_assert_uint_eq(info.erase[2].size, 65536);
	ck_assert_uint_eq(info.erase[2].opcode, 0xd8);
	ck_assert_uint_eq(info.erase[3].size, 0);
	ck_assert_int_eq(info.has_sector_map, 0);
	ck_assert_int_eq(info.nconfigs, 0);
	ck_assert_int_eq(info.nregions, 0);
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 16 * MIB);
	ck_assert_uint_eq(sfdp_coverage(&info, 32768), 16 * MIB);
	ck_assert_uint_eq(sfdp_coverage(&info, 65536), 16 * MIB);
	ck_assert_uint_eq(sfdp_coverage(&info, 262144), 0);
	ck_assert_uint_eq(sfdp_coverage(&info, 0), 0);
	ck_assert_uint_eq(sfdp_coverage(NULL, 4096), 0);
}
END_TEST

START_TEST(bfpt_revisions_and_types_3_4)
{
	uint32_t d[23];
	image im;
	sfdp_info info;

	bfpt_uniform(d, 32 * MIB);
	for (int i = 16; i < 23; i++)
		d[i] = 0xffffffff;
	d[8] = 0xdc12d810;                  /* type 3: 64K D8h; type 4: 256K DCh */
	for (uint8_t minor = 5; minor <= 10; minor++) {  /* JESD216A (1.5) to F (1.10) */
		build(&im, minor, d, minor >= 10 ? 23 : 16, NULL, 0);
		decode_ok(&im, &info);
		ck_assert_uint_eq(info.minor, minor);
		ck_assert_uint_eq(info.bfpt_minor, minor);
		ck_assert_uint_eq(info.density, 32 * MIB);
		ck_assert_uint_eq(info.erase[3].size, 262144);
		ck_assert_uint_eq(info.erase[3].opcode, 0xdc);
		ck_assert_uint_eq(sfdp_coverage(&info, 262144), 32 * MIB);
	}
}
END_TEST

START_TEST(density_forms)
{
	static const struct { uint32_t dword2; uint64_t bytes; } cases[] = {
		{ 0x0007ffff, 64 * 1024 },                /* 512 Kbit */
		{ 0x07ffffff, 16 * MIB },                 /* 128 Mbit */
		{ 0x7fffffff, 256 * MIB },                /* 2 Gbit, the largest linear form */
		{ 0x80000020, 512 * MIB },                /* 2^32 bits, the >2 Gbit form */
		{ 0x80000021, 1024 * MIB },
		{ 0x8000002b, UINT64_C(1) << 40 },        /* 2^43 bits: the largest we take */
	};
	uint32_t d[16];
	image im;
	sfdp_info info;

	for (size_t i = 0; i < TN_ARRAY_LEN(cases); i++) {
		bfpt_uniform(d, 16 * MIB);
		d[1] = cases[i].dword2;
		build(&im, 6, d, 16, NULL, 0);
		decode_ok(&im, &info);
		ck_assert_uint_eq(info.density, cases[i].bytes);
	}
}
END_TEST

START_TEST(erase_4k_bits)
{
	uint32_t d[16];
	image im;
	sfdp_info info;

	/* DWORD1 says "no 4 KB erase" and no erase type is 4 KB: none. */
	bfpt_uniform(d, 16 * MIB);
	d[0] = 0xffffffe7;
	d[7] = 0xff00d810;               /* type 1: 64K D8h, type 2 none */
	d[8] = 0xff00ff00;
	build(&im, 6, d, 16, NULL, 0);
	decode_ok(&im, &info);
	ck_assert_int_eq(info.erase_4k_uniform, 0);
	ck_assert_uint_eq(info.erase_4k_opcode, 0);
	ck_assert_uint_eq(info.erase[0].size, 65536);
	ck_assert_uint_eq(info.erase[1].size, 0);
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 0);
	ck_assert_uint_eq(sfdp_coverage(&info, 65536), 16 * MIB);

	/* DWORD1 alone says 4 KB throughout: the contract takes it. */
	d[0] = 0xffff21e5;
	build(&im, 6, d, 16, NULL, 0);
	decode_ok(&im, &info);
	ck_assert_int_eq(info.erase_4k_uniform, 1);
	ck_assert_uint_eq(info.erase_4k_opcode, 0x21);
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 16 * MIB);

	/* An erase type of 4 KB alone (no sector map) means throughout too. */
	d[0] = 0xffffffe7;
	d[7] = 0xd810200c;
	build(&im, 6, d, 16, NULL, 0);
	decode_ok(&im, &info);
	ck_assert_int_eq(info.erase_4k_uniform, 0);
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 16 * MIB);
}
END_TEST

START_TEST(newer_bfpt_header_wins)
{
	uint32_t d1[16], d2[16];
	image im;
	sfdp_info info;

	bfpt_uniform(d1, 8 * MIB);
	bfpt_uniform(d2, 16 * MIB);
	build_n(&im, 0, 2, d1, 9, NULL, 0);
	param_header(&im, 1, 0xff00, 6, 16, append(&im, d2, 16));
	decode_ok(&im, &info);
	ck_assert_uint_eq(info.bfpt_minor, 6);
	ck_assert_uint_eq(info.density, 16 * MIB);

	/* An older one after the first does not. */
	build_n(&im, 6, 2, d2, 16, NULL, 0);
	param_header(&im, 1, 0xff00, 0, 9, append(&im, d1, 9));
	decode_ok(&im, &info);
	ck_assert_uint_eq(info.density, 16 * MIB);
}
END_TEST

START_TEST(unknown_tables_are_not_read)
{
	uint32_t d[16];
	image im;
	sfdp_info info;

	/* A vendor table (Spansion, 01h) and a 4BAIT pointing far past the end:
	 * we use neither, so neither refuses the SFDP. */
	bfpt_uniform(d, 16 * MIB);
	build_n(&im, 6, 3, d, 16, NULL, 0);
	param_header(&im, 1, 0x0101, 0, 255, 0xfffff0);
	param_header(&im, 2, 0xff84, 0, 2, 0x001000);
	decode_ok(&im, &info);
	ck_assert_uint_eq(info.density, 16 * MIB);
	ck_assert_int_eq(info.has_sector_map, 0);
}
END_TEST

/* --- the sector map ------------------------------------------------------------ */

START_TEST(sector_map_one_configuration)
{
	uint32_t d[16];
	const uint32_t m[] = {
		MAP(0, 3, 1),
		REGION(65536, 0x5),             /* 4K and 64K */
		REGION(16 * MIB - 131072, 0x4), /* 64K only */
		REGION(65536, 0x5 | 0x8),       /* and type 4, which the BFPT leaves undefined */
	};
	image im;
	sfdp_info info;

	bfpt_uniform(d, 16 * MIB);
	build(&im, 6, d, 16, m, 4);
	decode_ok(&im, &info);
	ck_assert_int_eq(info.has_sector_map, 1);
	ck_assert_int_eq(info.nconfigs, 1);
	ck_assert_int_eq(info.nregions, 3);
	ck_assert_uint_eq(info.configs[0].id, 0);
	ck_assert_uint_eq(info.configs[0].first, 0);
	ck_assert_uint_eq(info.configs[0].nregions, 3);
	ck_assert_uint_eq(info.regions[0].size, 65536);
	ck_assert_uint_eq(info.regions[0].erase_mask, 0x5);   /* reserved bits 7:4 dropped */
	ck_assert_uint_eq(info.regions[1].size, 16 * MIB - 131072);
	ck_assert_uint_eq(info.regions[1].erase_mask, 0x4);
	ck_assert_uint_eq(info.regions[2].erase_mask, 0xd);
	/* The map overrides DWORD1's "4 KB throughout" and the uniform reading
	 * of the erase types. */
	ck_assert_int_eq(info.erase_4k_uniform, 1);
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 131072);
	ck_assert_uint_eq(sfdp_coverage(&info, 32768), 0);
	ck_assert_uint_eq(sfdp_coverage(&info, 65536), 16 * MIB);
}
END_TEST

START_TEST(sector_map_configurations_take_the_worst)
{
	uint32_t d[16];
	/* Two detection commands (four possible IDs), three maps given. */
	const uint32_t m[] = {
		CMD(0x35, 0x04), 0xffffffff,
		CMD(0x65, 0x08), 0x00800004,
		MAP(0, 2, 0), REGION(65536, 0x5), REGION(16 * MIB - 65536, 0x4),
		MAP(2, 2, 0), REGION(16 * MIB - 131072, 0x4), REGION(131072, 0x3),
		MAP(3, 1, 1), REGION(16 * MIB, 0x4),
	};
	image im;
	sfdp_info info;

	bfpt_uniform(d, 16 * MIB);
	build(&im, 6, d, 16, m, (int)TN_ARRAY_LEN(m));
	decode_ok(&im, &info);
	ck_assert_int_eq(info.nconfigs, 3);
	ck_assert_int_eq(info.nregions, 5);
	ck_assert_uint_eq(info.configs[1].id, 2);
	ck_assert_uint_eq(info.configs[1].first, 2);
	ck_assert_uint_eq(info.configs[2].id, 3);
	ck_assert_uint_eq(info.configs[2].first, 4);
	/* Per erase size, the least over the configurations -- each from a
	 * different one. */
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 0);              /* config 3 */
	ck_assert_uint_eq(sfdp_coverage(&info, 32768), 0);             /* configs 0, 3 */
	ck_assert_uint_eq(sfdp_coverage(&info, 65536), 16 * MIB - 131072); /* config 2 */
}
END_TEST

START_TEST(sector_map_regions_at_the_cap)
{
	uint32_t d[16], m[1 + SFDP_MAX_REGIONS];
	image im;
	sfdp_info info;

	bfpt_uniform(d, 16 * MIB);
	m[0] = MAP(0, SFDP_MAX_REGIONS, 1);
	for (int i = 0; i < SFDP_MAX_REGIONS; i++)
		m[1 + i] = REGION(16 * MIB / SFDP_MAX_REGIONS, i == 0 ? 0x7 : 0x6);
	build(&im, 6, d, 16, m, 1 + SFDP_MAX_REGIONS);
	decode_ok(&im, &info);
	ck_assert_int_eq(info.nregions, SFDP_MAX_REGIONS);
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 16 * MIB / SFDP_MAX_REGIONS);
	ck_assert_uint_eq(sfdp_coverage(&info, 32768), 16 * MIB);
}
END_TEST

/* --- refusals ---------------------------------------------------------------- */

START_TEST(refuse_header)
{
	uint32_t d[16];
	image im;
	sfdp_info info;
	tn_error err;

	bfpt_uniform(d, 16 * MIB);
	build(&im, 6, d, 16, NULL, 0);
	for (size_t len = 0; len < 8; len++)
		refused_len(&im, len, "short buffer");
	for (size_t len = 8; len < 16; len++)
		refused_len(&im, len, "zero parameter headers");
	ck_assert_int_eq(sfdp_decode(NULL, 16, &info, &err), TN_EINVAL);
	ck_assert_str_eq(err.msg, "no SFDP bytes");

	im.b[3] = 'Q';
	refused(&im, "bad signature 0x51444653");
	im.b[3] = 'P';
	im.b[5] = 2;
	refused(&im, "unsupported SFDP revision 2.6");
	im.b[5] = 1;
	im.b[6] = 255;                   /* 256 headers: 2056 bytes */
	refused(&im, "parameter headers past the end (NPH says 256 headers, 2056 bytes; have 112)");
}
END_TEST

START_TEST(refuse_too_long)
{
	uint32_t d[16];
	image im;
	uint8_t *big = calloc(SFDP_MAX_LEN + 1, 1);
	sfdp_info info;
	tn_error err;

	ck_assert_ptr_nonnull(big);
	bfpt_uniform(d, 16 * MIB);
	build(&im, 6, d, 16, NULL, 0);
	memcpy(big, im.b, im.len);
	ck_assert_int_eq(sfdp_decode(big, SFDP_MAX_LEN, &info, &err), 0);
	ck_assert_int_eq(sfdp_decode(big, SFDP_MAX_LEN + 1, &info, &err), TN_EINVAL);
	ck_assert_str_eq(err.msg, "SFDP is 4097 bytes, more than the 4096 a device may send");
	free(big);
}
END_TEST

START_TEST(refuse_bfpt)
{
	uint32_t d[16];
	image im;

	bfpt_uniform(d, 16 * MIB);
	build(&im, 6, d, 16, NULL, 0);
	im.b[8] = 0x81;
	refused(&im, "first parameter header is 0xff81, not the BFPT (0xff00)");
	im.b[8] = 0x00;
	im.b[10] = 2;
	refused(&im, "unsupported BFPT revision 2.6");
	im.b[10] = 1;
	im.b[11] = 8;
	refused(&im, "BFPT is 8 DWORDs, shorter than the 9 of JESD216");
	im.b[11] = 17;                   /* runs 4 bytes past the end */
	refused(&im, "BFPT pointer/length past the end (0x30 + 17 DWORDs > 112 bytes)");
	im.b[11] = 16;
	im.b[12] = 0xf0;
	im.b[13] = 0x01;
	refused(&im, "BFPT pointer/length past the end (0x1f0 + 16 DWORDs > 112 bytes)");
	im.b[12] = im.b[13] = im.b[14] = 0xff;  /* a 24-bit pointer at its largest */
	refused(&im, "BFPT pointer/length past the end (0xffffff + 16 DWORDs");
}
END_TEST

START_TEST(refuse_density)
{
	static const struct { uint32_t dword2; const char *reason; } cases[] = {
		{ 0x00000000, "density 0 (1 bits)" },
		{ 0x00000006, "density 0 (7 bits)" },
		{ 0x80000000, "density 0 (1 bits)" },
		{ 0x80000002, "density 0 (4 bits)" },
		{ 0x00000008, "density of 9 bits is not a whole number of bytes" },
		{ 0x8000002c, "density 2^44 bits is absurd" },
		{ 0x8000003f, "density 2^63 bits is absurd" },
		{ 0xffffffff, "density 2^2147483647 bits is absurd" },
	};
	uint32_t d[16];
	image im;

	for (size_t i = 0; i < TN_ARRAY_LEN(cases); i++) {
		bfpt_uniform(d, 16 * MIB);
		d[1] = cases[i].dword2;
		build(&im, 6, d, 16, NULL, 0);
		refused(&im, cases[i].reason);
	}
}
END_TEST

START_TEST(refuse_erase_types)
{
	uint32_t d[16];
	image im;

	bfpt_uniform(d, 16 * MIB);
	d[8] = 0xdc20d810;                /* type 4: 2^32 */
	build(&im, 6, d, 16, NULL, 0);
	refused(&im, "erase type 4 size 2^32 is absurd");
	d[8] = 0xdcffd810;
	build(&im, 6, d, 16, NULL, 0);
	refused(&im, "erase type 4 size 2^255 is absurd");
	d[8] = 0xff00d819;                /* type 3: 32 MiB on a 16 MiB chip */
	build(&im, 6, d, 16, NULL, 0);
	refused(&im, "erase type 3 size 2^25 is absurd (the chip is 16777216 bytes)");
}
END_TEST

START_TEST(refuse_sector_map)
{
	uint32_t d[16];
	image im;

	bfpt_uniform(d, 16 * MIB);
	{
		const uint32_t m[] = { MAP(0, 2, 1), REGION(65536, 0x5), REGION(16 * MIB - 131072, 0x4) };
		build(&im, 6, d, 16, m, 3);
		refused(&im, "sector map configuration 0: regions add up to 16711680 bytes, "
			"the density is 16777216");
	}
	{
		const uint32_t m[] = { MAP(0, 1, 1), REGION(16 * MIB, 0x5) };
		build(&im, 6, d, 16, m, 2);
		im.b[8 + 8 + 3] = 3;              /* the header claims a DWORD more than there is */
		refused(&im, "sector map pointer/length past the end (0x70 + 3 DWORDs > 120 bytes)");
		im.b[8 + 8 + 3] = 0;
		refused(&im, "sector map is empty (0 DWORDs)");
	}
	{
		const uint32_t m[] = { MAP(7, 3, 1), REGION(16 * MIB, 0x5) };
		build(&im, 6, d, 16, m, 2);
		refused(&im, "sector map configuration 7: 3 regions run past the table's 2 DWORDs");
	}
	{
		const uint32_t m[] = { CMD(0x35, 0x04), 0xffffffff, CMD(0x65, 0x08) };
		build(&im, 6, d, 16, m, 3);
		refused(&im, "sector map detection command at DWORD 2 cut short");
		build(&im, 6, d, 16, m, 2);
		refused(&im, "sector map has no map descriptor");
	}
	{
		const uint32_t m[] = { CMD(0x35, 0x04) | 1, 0xffffffff, MAP(0, 1, 1), REGION(16 * MIB, 0x5) };
		build(&im, 6, d, 16, m, 4);
		refused(&im, "sector map ends at DWORD 0 before any map");
	}
	{
		const uint32_t m[] = { MAP(0, 1, 0), REGION(16 * MIB, 0x5), MAP(1, 1, 0), REGION(16 * MIB, 0x4) };
		build(&im, 6, d, 16, m, 4);
		refused(&im, "sector map ends without its last map flagged");
	}
	{
		const uint32_t m[] = { MAP(0, 1, 0), REGION(16 * MIB, 0x5), CMD(0x35, 0x04), 0xffffffff };
		build(&im, 6, d, 16, m, 4);
		refused(&im, "sector map DWORD 2: a detection command among the maps");
	}
}
END_TEST

START_TEST(refuse_too_many_regions)
{
	uint32_t d[16], m[36];
	image im;

	bfpt_uniform(d, 16 * MIB);
	/* One map of SFDP_MAX_REGIONS + 1 regions... */
	m[0] = MAP(0, SFDP_MAX_REGIONS + 1, 1);
	for (int i = 0; i <= SFDP_MAX_REGIONS; i++)
		m[1 + i] = REGION(i == 0 ? 16 * MIB - SFDP_MAX_REGIONS * 65536 : 65536, 0x4);
	build(&im, 6, d, 16, m, SFDP_MAX_REGIONS + 2);
	refused(&im, "sector map has more than 32 regions");
	/* ...or two maps of 17: the cap is on all configurations together. */
	for (int c = 0; c < 2; c++) {
		uint32_t *p = m + c * 18;
		p[0] = MAP(c, 17, c == 1);
		for (int i = 0; i < 17; i++)
			p[1 + i] = REGION(i == 0 ? 16 * MIB - 16 * 65536 : 65536, 0x4);
	}
	build(&im, 6, d, 16, m, 36);
	refused(&im, "more than 32 regions");
}
END_TEST

/* Every prefix of an image whose last table ends at its end is refused, and
 * none is read past (valgrind/ASan watch the exact-size copies). */
START_TEST(every_truncation_is_refused)
{
	static const char *const names[] = { "s25fl127s.b64", "w25q128fv-smpt.b64" };
	uint32_t d[16];
	const uint32_t m[] = { CMD(0x35, 0x04), 0xffffffff,
			       MAP(0, 2, 0), REGION(65536, 0x3), REGION(16 * MIB - 65536, 0x2),
			       MAP(1, 2, 1), REGION(16 * MIB - 65536, 0x2), REGION(65536, 0x3) };
	image im;
	sfdp_info info;
	tn_error err;

	bfpt_uniform(d, 16 * MIB);
	build(&im, 6, d, 16, m, (int)TN_ARRAY_LEN(m));
	for (size_t len = 0; len < im.len; len++)
		ck_assert_int_eq(decode_len(&im, len, &info, &err), TN_EINVAL);
	for (size_t i = 0; i < TN_ARRAY_LEN(names); i++) {
		fixture_image(names[i], &im);
		ck_assert_int_eq(decode_len(&im, im.len, &info, &err), 0);
		for (size_t len = 0; len < im.len; len++)
			ck_assert_int_eq(decode_len(&im, len, &info, &err), TN_EINVAL);
	}
	/* The W25Q128FV's BFPT ends at 0xa4; the FF after it is not needed. */
	fixture_image("w25q128fv.b64", &im);
	for (size_t len = 0; len < im.len; len++)
		ck_assert_int_eq(decode_len(&im, len, &info, &err), len < 0xa4 ? TN_EINVAL : 0);
}
END_TEST

/* --- base64 ------------------------------------------------------------------ */

START_TEST(base64_padding_optional)
{
	uint32_t d[16];
	image im;
	sfdp_info info;
	tn_error err;

	bfpt_uniform(d, 16 * MIB);
	/* 112, 113 and 114 bytes: one of each length mod 3, so "==", "=" and no
	 * padding, each also sent without its padding. */
	for (int extra = 0; extra < 3; extra++) {
		build(&im, 6, d, 16, NULL, 0);
		im.len += (size_t)extra;
		for (int padded = 0; padded < 2; padded++) {
			char *s = b64(im.b, im.len, padded);
			ck_assert_int_eq(strlen(s) % 4 == 0, padded || im.len % 3 == 0);
			ck_assert_msg(sfdp_decode_base64(s, &info, &err) == 0, "%s: %s", s, err.msg);
			ck_assert_uint_eq(info.density, 16 * MIB);
			free(s);
		}
	}
}
END_TEST

START_TEST(base64_refusals)
{
	static const struct { const char *text; const char *reason; } cases[] = {
		{ "", "short buffer: 0 bytes" },
		{ "U0ZEUA==", "short buffer: 4 bytes" },
		{ "U0ZEUA", "short buffer: 4 bytes" },
		{ "U0ZE UA==", "bad base64 character 0x20 at 4" },
		{ "U0ZEUA\n", "bad base64 character 0x0a at 6" },
		{ "U0ZE-A", "bad base64 character 0x2d at 4" },     /* base64url is not ours */
		{ "U0ZE_A", "bad base64 character 0x5f at 4" },
		{ "U0=EUA==", "bad base64 character 0x3d at 2" },
		{ "U0ZEUA===", "bad base64 character 0x3d at 6" },
		{ "U0ZEU===", "bad base64 character 0x3d at 5" },
		{ "U0ZEUA=", "padding does not end a group of 4" },
		{ "U0ZE=", "padding does not end a group of 4" },
		{ "U0ZEU", "base64 of 5 characters cannot be" },
		{ "U0ZEUB==", "stray bits after the last byte" },
		{ "U0ZEUAB", "stray bits after the last byte" },
		{ "U0ZE\xc3\xa9", "bad base64 character 0xc3 at 4" },
	};
	sfdp_info info;
	tn_error err;

	for (size_t i = 0; i < TN_ARRAY_LEN(cases); i++) {
		memset(&err, 0, sizeof err);
		ck_assert_int_eq(sfdp_decode_base64(cases[i].text, &info, &err), TN_EINVAL);
		ck_assert_msg(strstr(err.msg, cases[i].reason) != NULL, "\"%s\": \"%s\" lacks \"%s\"",
			      cases[i].text, err.msg, cases[i].reason);
	}
	ck_assert_int_eq(sfdp_decode_base64(NULL, &info, &err), TN_EINVAL);
	ck_assert_str_eq(err.msg, "no SFDP");
}
END_TEST

START_TEST(base64_size_cap)
{
	uint32_t d[16];
	image im;
	uint8_t *big = malloc(SFDP_MAX_LEN + 1);
	sfdp_info info;
	tn_error err;
	char *s;

	ck_assert_ptr_nonnull(big);
	bfpt_uniform(d, 16 * MIB);
	build(&im, 6, d, 16, NULL, 0);
	memset(big, 0xff, SFDP_MAX_LEN + 1);
	memcpy(big, im.b, im.len);
	s = b64(big, SFDP_MAX_LEN, 1);
	ck_assert_int_eq(sfdp_decode_base64(s, &info, &err), 0);
	free(s);
	s = b64(big, SFDP_MAX_LEN + 1, 0);
	ck_assert_int_eq(sfdp_decode_base64(s, &info, &err), TN_EINVAL);
	ck_assert_str_eq(err.msg, "SFDP is more than the 4096 bytes a device may send");
	free(s);
	free(big);
}
END_TEST

/* --- the real parts ------------------------------------------------------------ */

START_TEST(fixture_w25q128fv)
{
	sfdp_info info;

	fixture_decode("w25q128fv.b64", &info);
	ck_assert_uint_eq(info.major, 1);
	ck_assert_uint_eq(info.minor, 0);
	ck_assert_uint_eq(info.bfpt_major, 1);
	ck_assert_uint_eq(info.bfpt_minor, 0);
	ck_assert_uint_eq(info.density, 16 * MIB);
	ck_assert_int_eq(info.erase_4k_uniform, 1);
	ck_assert_uint_eq(info.erase_4k_opcode, 0x20);
	ck_assert_uint_eq(info.erase[0].size, 4096);
	ck_assert_uint_eq(info.erase[0].opcode, 0x20);
	ck_assert_uint_eq(info.erase[1].size, 32768);
	ck_assert_uint_eq(info.erase[1].opcode, 0x52);
	ck_assert_uint_eq(info.erase[2].size, 65536);
	ck_assert_uint_eq(info.erase[2].opcode, 0xd8);
	ck_assert_uint_eq(info.erase[3].size, 0);
	ck_assert_int_eq(info.has_sector_map, 0);
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 16 * MIB);
	ck_assert_uint_eq(sfdp_coverage(&info, 32768), 16 * MIB);
	ck_assert_uint_eq(sfdp_coverage(&info, 65536), 16 * MIB);
	ck_assert_uint_eq(sfdp_coverage(&info, 262144), 0);
}
END_TEST

START_TEST(fixture_w25q128fv_with_sector_map)
{
	sfdp_info info;

	fixture_decode("w25q128fv-smpt.b64", &info);
	ck_assert_uint_eq(info.minor, 6);
	ck_assert_uint_eq(info.bfpt_minor, 6);
	ck_assert_uint_eq(info.density, 16 * MIB);
	ck_assert_uint_eq(info.erase[0].size, 4096);
	ck_assert_uint_eq(info.erase[2].opcode, 0xd8);
	ck_assert_int_eq(info.has_sector_map, 1);
	ck_assert_int_eq(info.nconfigs, 1);
	ck_assert_int_eq(info.nregions, 1);
	ck_assert_uint_eq(info.regions[0].size, 16 * MIB);
	ck_assert_uint_eq(info.regions[0].erase_mask, 0x7);
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 16 * MIB);
	ck_assert_uint_eq(sfdp_coverage(&info, 32768), 16 * MIB);
	ck_assert_uint_eq(sfdp_coverage(&info, 65536), 16 * MIB);
}
END_TEST

START_TEST(fixture_s25fl127s)
{
	sfdp_info info;

	fixture_decode("s25fl127s.b64", &info);
	ck_assert_uint_eq(info.major, 1);
	ck_assert_uint_eq(info.minor, 6);
	ck_assert_uint_eq(info.bfpt_minor, 6);
	ck_assert_uint_eq(info.density, 16 * MIB);
	/* What the BFPT claims... */
	ck_assert_int_eq(info.erase_4k_uniform, 1);
	ck_assert_uint_eq(info.erase[0].size, 4096);
	ck_assert_uint_eq(info.erase[0].opcode, 0x20);
	ck_assert_uint_eq(info.erase[1].size, 65536);
	ck_assert_uint_eq(info.erase[1].opcode, 0xd8);
	ck_assert_uint_eq(info.erase[2].size, 0);
	ck_assert_uint_eq(info.erase[3].size, 0);
	/* ...and where the sector map says it holds. */
	ck_assert_int_eq(info.has_sector_map, 1);
	ck_assert_int_eq(info.nconfigs, 2);
	ck_assert_int_eq(info.nregions, 4);
	ck_assert_uint_eq(info.configs[0].id, 0);
	ck_assert_uint_eq(info.configs[1].id, 1);
	ck_assert_uint_eq(info.regions[0].size, 65536);
	ck_assert_uint_eq(info.regions[0].erase_mask, 0x3);
	ck_assert_uint_eq(info.regions[1].size, 16 * MIB - 65536);
	ck_assert_uint_eq(info.regions[1].erase_mask, 0x2);
	ck_assert_uint_eq(info.regions[2].erase_mask, 0x2);
	ck_assert_uint_eq(info.regions[3].size, 65536);
	ck_assert_uint_eq(info.regions[3].erase_mask, 0x3);
	/* The imp003 question: 4 KB erase is not uniform; 64 KB is. */
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 65536);
	ck_assert_uint_eq(sfdp_coverage(&info, 65536), 16 * MIB);
	ck_assert_uint_eq(sfdp_coverage(&info, 32768), 0);
}
END_TEST

/* The same part without its sector map -- which is what a BFPT-only image of
 * a hybrid part looks like -- reads as 4 KB throughout.  SFDP without a map
 * cannot see the hybrid layout; flash.c must take the worst of it and the
 * flash-parts table. */
START_TEST(fixture_s25fl127s_without_map_looks_uniform)
{
	image im;
	sfdp_info info;

	fixture_image("s25fl127s.b64", &im);
	im.b[6] = 0;                      /* one parameter header: the BFPT */
	im.len = 0x70;
	decode_ok(&im, &info);
	ck_assert_int_eq(info.has_sector_map, 0);
	ck_assert_uint_eq(sfdp_coverage(&info, 4096), 16 * MIB);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("sfdp");
	TCase *tc;
	struct { const char *name; const TTest *tests[12]; } groups[] = {
		{ "bfpt", { bfpt_1_0_fields, bfpt_revisions_and_types_3_4, density_forms, erase_4k_bits,
			    newer_bfpt_header_wins, unknown_tables_are_not_read } },
		{ "sector_map", { sector_map_one_configuration, sector_map_configurations_take_the_worst,
				  sector_map_regions_at_the_cap } },
		{ "refusals", { refuse_header, refuse_too_long, refuse_bfpt, refuse_density,
				refuse_erase_types, refuse_sector_map, refuse_too_many_regions,
				every_truncation_is_refused } },
		{ "base64", { base64_padding_optional, base64_refusals, base64_size_cap } },
		{ "fixtures", { fixture_w25q128fv, fixture_w25q128fv_with_sector_map, fixture_s25fl127s,
				fixture_s25fl127s_without_map_looks_uniform } },
	};

	for (size_t g = 0; g < TN_ARRAY_LEN(groups); g++) {
		tc = tcase_create(groups[g].name);
		for (size_t t = 0; t < TN_ARRAY_LEN(groups[g].tests) && groups[g].tests[t]; t++)
			tcase_add_test(tc, groups[g].tests[t]);
		suite_add_tcase(su, tc);
	}
	SRunner *sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

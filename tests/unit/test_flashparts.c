/* tests/unit/test_flashparts.c -- the flash-parts import format
 * (server/flashparts.c) against docs/flash-parts.md: every erase_layouts
 * form and refusal, coverage for the parts the mission is about (S25FL127S,
 * W25Q128FV), RFC 4180 quoting, line-numbered errors, all-or-nothing imports,
 * the JSON twin, the to/from JSON round trip, and the seed table
 * (schema/flash_parts.csv, found through TN_SRCDIR) parsing clean. */
#define _GNU_SOURCE /* asprintf, open_memstream */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashparts.h"

#define MiB (UINT64_C(1) << 20)

static const char *const HEADER =
	"vendor,part,jedec_mfr,jedec_dev,size_bytes,uniform_4k_erase,uniform_64k_erase,"
	"erase_layouts,shares_id_with,source,notes\n";

static const char *const S25FL127S_LAYOUTS = "4K*16+x64K*255 @0x20;64K*256 @0xD8;chip @0x60";
static const char *const W25Q128FV_LAYOUTS = "4K*4096 @0x20;32K*512 @0x52;64K*256 @0xD8;chip @0xC7";

/* A part of `size` bytes with `layouts` parsed; fails the test on error. */
static flash_part part_with(uint64_t size, const char *layouts)
{
	flash_part p;
	tn_error err;

	memset(&p, 0, sizeof p);
	p.size = size;
	ck_assert_msg(flashparts_layouts_parse(&p, layouts, &err) == 0, "%s: %s", layouts, err.msg);
	return p;
}

/* Expects layouts to be refused with a message containing `needle`. */
static void layouts_refused(uint64_t size, const char *layouts, const char *needle)
{
	flash_part p;
	tn_error err;

	memset(&p, 0, sizeof p);
	p.size = size;
	p.nlayouts = 7; /* sentinel: a refusal must leave p alone */
	ck_assert_msg(flashparts_layouts_parse(&p, layouts, &err) == TN_EINVAL, "accepted: %s", layouts);
	ck_assert_int_eq(err.code, TN_EINVAL);
	ck_assert_msg(strstr(err.msg, needle), "\"%s\": message \"%s\" lacks \"%s\"", layouts, err.msg,
		      needle);
	ck_assert_int_eq(p.nlayouts, 7);
}

static int csv(const char *text, flashparts_import *imp, tn_error *err)
{
	memset(err, 0, sizeof *err);
	return flashparts_parse_csv(text, strlen(text), imp, err);
}

static int json(const char *text, flashparts_import *imp, tn_error *err)
{
	memset(err, 0, sizeof *err);
	return flashparts_parse_json(text, strlen(text), imp, err);
}

/* HEADER followed by `rows` (owned: caller frees). */
static char *with_header(const char *rows)
{
	char *s;
	ck_assert_int_ge(asprintf(&s, "%s%s", HEADER, rows), 0);
	return s;
}

/* The i-th error of an import: line, column and message. */
static void error_is(const flashparts_import *imp, size_t i, int line, const char *column,
		     const char *needle)
{
	json_t *e = json_array_get(imp->errors, i);
	ck_assert_msg(e != NULL, "no error %zu", i);
	ck_assert_int_eq(json_integer_value(json_object_get(e, "line")), line);
	ck_assert_str_eq(json_string_value(json_object_get(e, "column")), column);
	const char *msg = json_string_value(json_object_get(e, "message"));
	ck_assert_msg(msg && strstr(msg, needle), "error %zu: \"%s\" lacks \"%s\"", i, msg, needle);
}

/* Parses HEADER + rows, expecting exactly one error at (line, column). */
static void csv_refused(const char *rows, int line, const char *column, const char *needle)
{
	flashparts_import imp;
	tn_error err;
	char *text = with_header(rows);

	ck_assert_int_eq(csv(text, &imp, &err), TN_EINVAL);
	ck_assert_ptr_null(imp.rows);
	ck_assert_uint_eq(imp.nrows, 0);
	ck_assert_msg(json_array_size(imp.errors) == 1, "%zu errors; first %s",
		      json_array_size(imp.errors), err.msg);
	error_is(&imp, 0, line, column, needle);
	flashparts_import_free(&imp);
	free(text);
}

/* --- the erase_layouts grammar ---------------------------------------------- */

START_TEST(layouts_contract_uniform)
{
	flash_part p = part_with(16 * MiB, "4K*4096 @0x20;64K*256 @0xD8;chip @0x60");

	ck_assert_int_eq(p.nlayouts, 3);
	ck_assert_uint_eq(p.layouts[0].opcode, 0x20);
	ck_assert_int_eq(p.layouts[0].chip, 0);
	ck_assert_int_eq(p.layouts[0].nregions, 1);
	ck_assert_uint_eq(p.layouts[0].regions[0].size, 4096);
	ck_assert_uint_eq(p.layouts[0].regions[0].count, 4096);
	ck_assert_uint_eq(p.layouts[0].regions[0].span, 16 * MiB);
	ck_assert_uint_eq(p.layouts[1].opcode, 0xD8);
	ck_assert_uint_eq(p.layouts[1].regions[0].size, 65536);
	ck_assert_uint_eq(p.layouts[2].opcode, 0x60);
	ck_assert_int_eq(p.layouts[2].chip, 1);
	ck_assert_int_eq(p.layouts[2].nregions, 0);
	ck_assert_str_eq(p.layouts_text, "4K*4096 @0x20;64K*256 @0xD8;chip @0x60");
}
END_TEST

START_TEST(layouts_not_erasable_region)
{
	flash_part p = part_with(16 * MiB, S25FL127S_LAYOUTS);

	ck_assert_int_eq(p.nlayouts, 3);
	ck_assert_int_eq(p.layouts[0].nregions, 2);
	ck_assert_uint_eq(p.layouts[0].regions[0].size, 4096);
	ck_assert_uint_eq(p.layouts[0].regions[0].count, 16);
	ck_assert_uint_eq(p.layouts[0].regions[0].span, 65536);
	/* x: the command cannot erase these 255 64 KB blocks, but they are address space */
	ck_assert_uint_eq(p.layouts[0].regions[1].size, 0);
	ck_assert_uint_eq(p.layouts[0].regions[1].count, 255);
	ck_assert_uint_eq(p.layouts[0].regions[1].span, 255 * 65536);
	/* either case of x, and a not-erasable region first (parameter sectors on top) */
	p = part_with(16 * MiB, "X64K*255+4K*16 @0x20");
	ck_assert_uint_eq(p.layouts[0].regions[0].size, 0);
	ck_assert_uint_eq(p.layouts[0].regions[1].size, 4096);
}
END_TEST

START_TEST(layouts_contract_region_list)
{
	/* CONTRACT's example is a valid region list, but it spans 16 MiB - 64 KiB */
	flash_part p = part_with(16 * 4096 + 254 * 65536, "4K*16+64K*254 @0x20");

	ck_assert_int_eq(p.layouts[0].nregions, 2);
	ck_assert_uint_eq(p.layouts[0].regions[1].size, 65536);
	ck_assert_uint_eq(p.layouts[0].regions[1].count, 254);
	/* ...so on a 16 MiB part it is refused, naming the difference */
	layouts_refused(16 * MiB, "4K*16+64K*254 @0x20", "65536 short of size_bytes 16777216");
	layouts_refused(16 * MiB, "64K*257 @0xD8", "65536 beyond size_bytes 16777216");
}
END_TEST

START_TEST(layouts_sizes_and_spacing)
{
	/* plain bytes (DataFlash pages), M, lower-case suffixes, spaces everywhere */
	flash_part p = part_with(4325376, "528*8192 @0x81;4224*1+63360*1+67584*63 @0x7C");
	ck_assert_uint_eq(p.layouts[0].regions[0].size, 528);
	ck_assert_int_eq(p.layouts[1].nregions, 3);
	p = part_with(16 * MiB, "  1M*16 @ 0xd8 ; 4k * 4096 @0X20 ;\tCHIP@0xc7 ");
	ck_assert_int_eq(p.nlayouts, 3);
	ck_assert_uint_eq(p.layouts[0].regions[0].size, 1048576);
	ck_assert_uint_eq(p.layouts[0].opcode, 0xD8);
	ck_assert_uint_eq(p.layouts[1].regions[0].size, 4096);
	ck_assert_int_eq(p.layouts[2].chip, 1);
	ck_assert_str_eq(p.layouts_text, "1M*16 @ 0xd8 ; 4k * 4096 @0X20 ;\tCHIP@0xc7");
	/* several chip-erase opcodes are fine */
	p = part_with(2 * MiB, "chip @0x60;chip @0xC7");
	ck_assert_int_eq(p.nlayouts, 2);
}
END_TEST

START_TEST(layouts_empty_means_unknown)
{
	flash_part p = part_with(16 * MiB, "");
	ck_assert_int_eq(p.nlayouts, 0);
	ck_assert_str_eq(p.layouts_text, "");
	p = part_with(16 * MiB, "   ");
	ck_assert_int_eq(p.nlayouts, 0);
	ck_assert_uint_eq(flashparts_coverage(&p, 4096), 0);
}
END_TEST

START_TEST(layouts_refusals)
{
	const uint64_t S = 16 * MiB;

	layouts_refused(S, "4K*4096", "has no @0xOP opcode");
	layouts_refused(S, "4K*4096 @0x2", "two hex digits");
	layouts_refused(S, "4K*4096 @0x200", "two hex digits");
	layouts_refused(S, "4K*4096 @20", "two hex digits");
	layouts_refused(S, "4K*4096 @0xG0", "two hex digits");
	layouts_refused(S, "4K*4096 @", "two hex digits");
	layouts_refused(S, "4K4096 @0x20", "a region is SIZE*COUNT");
	layouts_refused(S, "@0x20", "no regions before '@'");
	layouts_refused(S, "4K*4096+ @0x20", "nothing after '+'");
	layouts_refused(S, "4K*2048++4K*2048 @0x20", "SIZE*COUNT");
	layouts_refused(S, "4K*0 @0x20", "block count");
	layouts_refused(S, "4K*-1 @0x20", "block count");
	layouts_refused(S, "4K*4096.0 @0x20", "block count");
	layouts_refused(S, "0K*4096 @0x20", "block size");
	layouts_refused(S, "0*4096 @0x20", "block size");
	layouts_refused(S, "4Q*4096 @0x20", "block size");
	layouts_refused(S, "4G*1 @0x20", "block size");          /* G is for size_bytes only */
	layouts_refused(S, "*4096 @0x20", "block size");
	layouts_refused(S, "x*4096 @0x20", "block size");
	layouts_refused(S, "4096K*4294967295 @0x20", "more than 4 GiB");
	layouts_refused(S, "99999999999*1 @0x20", "block size");
	layouts_refused(S, "4K*99999999999 @0x20", "block count");
	layouts_refused(S, "chip+4K*4096 @0x60", "SIZE*COUNT");
	layouts_refused(S, "chips @0x60", "SIZE*COUNT");
	layouts_refused(S, "4K*4096 @0x20;;chip @0x60", "entry 2 is empty");
	layouts_refused(S, "4K*4096 @0x20;", "entry 2 is empty");
	layouts_refused(S, ";4K*4096 @0x20", "entry 1 is empty");
	layouts_refused(S, "4K*4096 @0x20;64K*256 @0x20", "entries 1 and 2 both use opcode 0x20");
	layouts_refused(S, "4K*4096 @0x20 @0x21", "two hex digits");
	layouts_refused(S, "4K*4096 @0x20;64K*255 @0xD8", "entry 2 (\"64K*255 @0xD8\") spans");
	layouts_refused(S,
			"chip @0x01;chip @0x02;chip @0x03;chip @0x04;chip @0x05;chip @0x06;"
			"chip @0x07;chip @0x08;chip @0x09", "more than 8 erase commands");
	layouts_refused(S, "2M*1+2M*1+2M*1+2M*1+2M*1+2M*1+2M*1+1M*1+1M*1 @0x20", "more than 8 regions");
	/* without a size nothing can be checked */
	layouts_refused(0, "chip @0x60", "needs size_bytes");
}
END_TEST

START_TEST(layouts_too_long)
{
	char text[400];
	memset(text, ' ', sizeof text);
	memcpy(text, "chip @0x60", 10);
	text[300] = 'x'; /* trailing blanks are trimmed, so put text at the end */
	text[301] = '\0';
	layouts_refused(16 * MiB, text, "at most 255");
}
END_TEST

/* --- coverage ------------------------------------------------------------------ */

START_TEST(coverage_s25fl127s)
{
	flash_part p = part_with(16 * MiB, S25FL127S_LAYOUTS);

	ck_assert_uint_eq(flashparts_coverage(&p, 4096), 65536);
	ck_assert_uint_eq(flashparts_coverage(&p, 65536), 16 * MiB);
	ck_assert_uint_eq(flashparts_coverage(&p, 32768), 0);
	ck_assert_uint_eq(flashparts_coverage(&p, 16 * MiB), 16 * MiB); /* chip erase: one block */
	ck_assert_uint_eq(flashparts_coverage(&p, 0), 0);               /* x regions never count */
}
END_TEST

START_TEST(coverage_w25q128fv)
{
	flash_part p = part_with(16 * MiB, W25Q128FV_LAYOUTS);

	ck_assert_uint_eq(flashparts_coverage(&p, 4096), 16 * MiB);
	ck_assert_uint_eq(flashparts_coverage(&p, 32768), 16 * MiB);
	ck_assert_uint_eq(flashparts_coverage(&p, 65536), 16 * MiB);
	ck_assert_uint_eq(flashparts_coverage(&p, 262144), 0);
}
END_TEST

START_TEST(coverage_largest_command_wins)
{
	/* two partial 4 KB maps: the best single command counts, not their sum */
	flash_part p = part_with(1 * MiB, "4K*16+x64K*15 @0x20;x64K*14+4K*32 @0x21");
	ck_assert_uint_eq(flashparts_coverage(&p, 4096), 131072);
}
END_TEST

/* --- CSV ----------------------------------------------------------------------- */

START_TEST(csv_good_rows)
{
	flashparts_import imp;
	tn_error err;
	char *text = with_header(
		"Spansion,S25FL127S,0x01,0x2018,16777216,no,yes,\"4K*16+x64K*255 @0x20;64K*256 @0xD8;"
		"chip @0x60\",S25FL128S,\"datasheet, rev 05\",\"parameter sectors\nat the bottom\"\n"
		"Winbond,W25Q128FV,0xef,0x4018,16M,yes,true,\"4K*4096 @0x20;64K*256 @0xD8\",,,\n");

	ck_assert_msg(csv(text, &imp, &err) == 0, "%s", err.msg);
	ck_assert_ptr_null(imp.errors);
	ck_assert_uint_eq(imp.nrows, 2);
	const flash_part *p = &imp.rows[0];
	ck_assert_str_eq(p->vendor, "Spansion");
	ck_assert_str_eq(p->part, "S25FL127S");
	ck_assert_uint_eq(p->jedec, 0x012018);
	ck_assert_uint_eq(p->size, 16 * MiB);
	ck_assert_int_eq(p->uniform_4k, 0);
	ck_assert_int_eq(p->uniform_64k, 1);
	ck_assert_int_eq(p->nlayouts, 3);
	ck_assert_str_eq(p->shares_id_with, "S25FL128S");
	ck_assert_str_eq(p->source, "datasheet, rev 05");
	ck_assert_str_eq(p->notes, "parameter sectors\nat the bottom");
	p = &imp.rows[1];
	ck_assert_uint_eq(p->jedec, 0xEF4018);
	ck_assert_uint_eq(p->size, 16 * MiB);
	ck_assert_int_eq(p->uniform_4k, 1);
	ck_assert_int_eq(p->uniform_64k, 1);
	ck_assert_str_eq(p->notes, "");
	flashparts_import_free(&imp);
	ck_assert_ptr_null(imp.rows);
	flashparts_import_free(&imp); /* twice is fine */
	flashparts_import_free(NULL);
	free(text);
}
END_TEST

START_TEST(csv_quoting_edge_cases)
{
	flashparts_import imp;
	tn_error err;
	/* CRLF, a BOM, columns in another order and other case, only the required
	 * ones plus notes, "" escapes, an empty quoted field, a quoted field with
	 * CRLF inside, a blank line, no final newline */
	const char *text =
		"\xEF\xBB\xBF" "Part,VENDOR,size_bytes,jedec_dev,jedec_mfr,notes\r\n"
		"\"W25Q\"\"X\"\"\",\"Win,bond\",4096,0x0001,0x02,\"\"\r\n"
		"\r\n"
		"\"P2\",V,8K,0x0002,0x02,\"a \"\"quoted\"\" word,\r\nand a second line\"";

	ck_assert_msg(csv(text, &imp, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(imp.nrows, 2);
	ck_assert_str_eq(imp.rows[0].part, "W25Q\"X\"");
	ck_assert_str_eq(imp.rows[0].vendor, "Win,bond");
	ck_assert_str_eq(imp.rows[0].notes, "");
	ck_assert_uint_eq(imp.rows[0].jedec, 0x020001);
	ck_assert_int_eq(imp.rows[0].uniform_4k, 0); /* unknown: the conservative answer */
	ck_assert_uint_eq(imp.rows[1].size, 8192);
	ck_assert_str_eq(imp.rows[1].notes, "a \"quoted\" word,\r\nand a second line");
	flashparts_import_free(&imp);

	/* a header alone is an empty, valid import */
	ck_assert_int_eq(csv(HEADER, &imp, &err), 0);
	ck_assert_uint_eq(imp.nrows, 0);
	ck_assert_ptr_null(imp.errors);
	flashparts_import_free(&imp);
}
END_TEST

START_TEST(csv_header_errors)
{
	flashparts_import imp;
	tn_error err;

	ck_assert_int_eq(csv("", &imp, &err), TN_EINVAL);
	error_is(&imp, 0, 1, "", "no header line");
	flashparts_import_free(&imp);
	ck_assert_int_eq(csv("\n\n", &imp, &err), TN_EINVAL);
	error_is(&imp, 0, 1, "", "no header line");
	flashparts_import_free(&imp);

	ck_assert_int_eq(csv("vendor,part,jedec_mfr,jedec_dev,size_bytes,colour,part\n", &imp, &err),
			 TN_EINVAL);
	ck_assert_uint_eq(json_array_size(imp.errors), 2);
	error_is(&imp, 0, 1, "colour", "unknown column \"colour\"");
	error_is(&imp, 1, 1, "part", "duplicate column");
	ck_assert_ptr_nonnull(strstr(err.msg, "2 errors; first: line 1, column colour"));
	flashparts_import_free(&imp);

	ck_assert_int_eq(csv("vendor,part,size_bytes\nA,B,4096\n", &imp, &err), TN_EINVAL);
	ck_assert_uint_eq(json_array_size(imp.errors), 2);
	error_is(&imp, 0, 1, "jedec_mfr", "missing required column");
	error_is(&imp, 1, 1, "jedec_dev", "missing required column");
	flashparts_import_free(&imp);

	ck_assert_int_eq(csv("vendor,part,jedec_mfr,jedec_dev,size_bytes,,\n", &imp, &err), TN_EINVAL);
	error_is(&imp, 0, 1, "", "unknown column \"\"");
	flashparts_import_free(&imp);

	char *many = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&many, &n);
	for (int i = 0; i < 40; i++)
		fprintf(f, "c%d,", i);
	fputs("x\n", f);
	fclose(f);
	ck_assert_int_eq(csv(many, &imp, &err), TN_EINVAL);
	error_is(&imp, 0, 1, "", "the header has 41 columns");
	flashparts_import_free(&imp);
	free(many);
}
END_TEST

START_TEST(csv_syntax_errors)
{
	/* line numbers: the header is line 1 */
	csv_refused("A,B,0x01,0x0001,4096,,,,,,\"never closed\n\n", 2, "", "never closed");
	csv_refused("A,B,0x01,0x0001,4096,,,,,,ok\nA,\"B\"x,0x01,0x0001,4096,,,,,,\n", 3, "",
		    "unexpected character after a closing quote");
	csv_refused("A,B\"C,0x01,0x0001,4096,,,,,,\n", 2, "", "a quote inside an unquoted field");
	csv_refused("A,B,0x01,0x0001,4096,,,,,,\rA\n", 2, "", "carriage return not followed");
	/* a record spanning lines: the next record's errors name its own first line */
	csv_refused("A,B,0x01,0x0001,4096,,,,,,\"one\ntwo\nthree\"\nA,C,0x1,0x0001,4096,,,,,,\n", 5,
		    "jedec_mfr", "one byte in hex");
}
END_TEST

START_TEST(csv_field_counts_and_lengths)
{
	char *big, *row;

	csv_refused("A,B,0x01,0x0001,4096\n", 2, "", "has 5 fields, the header has 11");
	csv_refused("A,B,0x01,0x0001,4096,,,,,,,\n", 2, "", "has 12 fields");
	big = malloc(2000);
	memset(big, 'n', 1999);
	big[1999] = '\0';
	ck_assert_int_ge(asprintf(&row, "A,B,0x01,0x0001,4096,,,,,,%s\n", big), 0);
	csv_refused(row, 2, "notes", "more than 1024 bytes");
	free(row);
	big[256] = '\0';
	ck_assert_int_ge(asprintf(&row, "A,B,0x01,0x0001,4096,,,,,,%s\n", big), 0);
	csv_refused(row, 2, "notes", "is 256 bytes, at most 255");
	free(row);
	big[48] = '\0';
	ck_assert_int_ge(asprintf(&row, "%s,B,0x01,0x0001,4096,,,,,,\n", big), 0);
	csv_refused(row, 2, "vendor", "is 48 bytes, at most 47");
	free(row);
	free(big);
}
END_TEST

START_TEST(csv_value_errors)
{
	csv_refused(",B,0x01,0x0001,4096,,,,,,\n", 2, "vendor", "is required");
	csv_refused("A,  ,0x01,0x0001,4096,,,,,,\n", 2, "part", "is required");
	csv_refused("A,B\tC,0x01,0x0001,4096,,,,,,\n", 2, "part", "control character (0x09)");
	csv_refused("A,B,0x01,0x0001,4096,,,,,,\"bell\x07\"\n", 2, "notes", "control character (0x07)");
	csv_refused("A,\"B\nC\",0x01,0x0001,4096,,,,,,\n", 2, "part", "control character (0x0A)");
	csv_refused("A,B\xff,0x01,0x0001,4096,,,,,,\n", 2, "part", "not valid UTF-8");
	csv_refused("A,B,EF,0x0001,4096,,,,,,\n", 2, "jedec_mfr", "not \"EF\"");
	csv_refused("A,B,0x1EF,0x0001,4096,,,,,,\n", 2, "jedec_mfr", "one byte in hex");
	csv_refused("A,B,0x01,0x18,4096,,,,,,\n", 2, "jedec_dev", "two bytes in hex");
	csv_refused("A,B,0x01,,4096,,,,,,\n", 2, "jedec_dev", "is required");
	csv_refused("A,B,0x01,0x0001,,,,,,,\n", 2, "size_bytes", "is required");
	csv_refused("A,B,0x01,0x0001,4095,,,,,,\n", 2, "size_bytes", "from 4096 to 4G");
	csv_refused("A,B,0x01,0x0001,5G,,,,,,\n", 2, "size_bytes", "from 4096 to 4G");
	csv_refused("A,B,0x01,0x0001,16MB,,,,,,\n", 2, "size_bytes", "not \"16MB\"");
	csv_refused("A,B,0x01,0x0001,-4096,,,,,,\n", 2, "size_bytes", "from 4096");
	csv_refused("A,B,0x01,0x0001,4096,maybe,,,,,\n", 2, "uniform_4k_erase", "not \"maybe\"");
	csv_refused("A,B,0x01,0x0001,16M,,2,,,,\n", 2, "uniform_64k_erase", "must be yes, no");
	csv_refused("A,B,0x01,0x0001,16M,,,4K*16 @0x20,,,\n", 2, "erase_layouts",
		    "16711680 short of size_bytes 16777216");
}
END_TEST

START_TEST(csv_flags_agree_with_layouts)
{
	flashparts_import imp;
	tn_error err;
	char *text;

	/* the imp003 case: a table claiming 4 KB everywhere for an S25FL127S map */
	csv_refused("Spansion,S25FL127S,0x01,0x2018,16M,yes,yes,\"4K*16+x64K*255 @0x20;64K*256 @0xD8\",,,\n",
		    2, "uniform_4k_erase", "says yes, but erase_layouts erase 65536 of 16777216 bytes in 4 KB");
	csv_refused("Winbond,W25Q128FV,0xEF,0x4018,16M,no,,4K*4096 @0x20,,,\n", 2, "uniform_4k_erase",
		    "says no");
	csv_refused("Micron,M25P16,0x20,0x2015,2M,,yes,chip @0xC7,,,\n", 2, "uniform_64k_erase",
		    "says yes, but erase_layouts erase 0 of 2097152");

	/* blank flags are derived from the map; with no map they stay no */
	text = with_header("Micron,M25P16,0x20,0x2015,2M,,,64K*32 @0xD8;chip @0xC7,,,\n"
			   "X,Unmapped,0x20,0x2016,2M,,,,,,\n"
			   "X,Claimed,0x20,0x2017,2M,yes,1,,,,\n");
	ck_assert_msg(csv(text, &imp, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(imp.rows[0].uniform_4k, 0);
	ck_assert_int_eq(imp.rows[0].uniform_64k, 1);
	ck_assert_int_eq(imp.rows[1].uniform_4k, 0);
	ck_assert_int_eq(imp.rows[1].uniform_64k, 0);
	ck_assert_int_eq(imp.rows[2].uniform_4k, 1); /* no map to contradict the claim */
	ck_assert_int_eq(imp.rows[2].uniform_64k, 1);
	flashparts_import_free(&imp);
	free(text);
}
END_TEST

START_TEST(csv_duplicates_and_shared_ids)
{
	flashparts_import imp;
	tn_error err;
	char *text;

	/* one id, different names: the shared-id case, allowed */
	text = with_header("Winbond,W25Q128FV,0xEF,0x4018,16M,,,,W25Q128JV,,\n"
			   "Winbond,W25Q128JV,0xEF,0x4018,16M,,,,W25Q128FV,,\n"
			   "Other,W25Q128FV,0xEF,0x4019,16M,,,,,,\n");
	ck_assert_msg(csv(text, &imp, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(imp.nrows, 3);
	flashparts_import_free(&imp);
	free(text);

	/* same id and same name (in any case): refused, naming both lines */
	csv_refused("Winbond,W25Q128FV,0xEF,0x4018,16M,,,,,,\n"
		    "Winbond,W25Q128JV,0xEF,0x4018,16M,,,,,,\n"
		    "Winbond,w25q128fv,0xEF,0x4018,16M,,,,,,\n",
		    4, "part", "duplicate of line 2 (same JEDEC id ef4018");
}
END_TEST

START_TEST(csv_all_or_nothing)
{
	flashparts_import imp;
	tn_error err;
	char *text = with_header("Winbond,W25Q128FV,0xEF,0x4018,16M,,,,,,\n"
				 "Winbond,W25Q64FV,0xEF,0x4017,8M,,,,,,\n"
				 "Winbond,BAD,0xEF,0x401,8M,,,,,,\n"
				 "Winbond,W25Q32FV,0xEF,0x4016,4M,,,,,,\n"
				 "Winbond,ALSO BAD,0xEF,0x4015,2M,perhaps,,,,,\n");

	ck_assert_int_eq(csv(text, &imp, &err), TN_EINVAL);
	ck_assert_ptr_null(imp.rows);
	ck_assert_uint_eq(imp.nrows, 0);
	ck_assert_uint_eq(json_array_size(imp.errors), 2);
	error_is(&imp, 0, 4, "jedec_dev", "two bytes");
	error_is(&imp, 1, 6, "uniform_4k_erase", "perhaps");
	ck_assert_int_eq(err.code, TN_EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "2 errors; first: line 4, column jedec_dev"));
	flashparts_import_free(&imp);
	free(text);

	/* one row with several problems reports each of them */
	csv_refused(",B,0x01,0x0001,4096,,,,,,\n", 2, "vendor", "required");
	text = with_header(",B,0x1,0x0001,1K,,,,,,\n");
	ck_assert_int_eq(csv(text, &imp, &err), TN_EINVAL);
	ck_assert_uint_eq(json_array_size(imp.errors), 3);
	flashparts_import_free(&imp);
	free(text);
}
END_TEST

START_TEST(csv_bounds)
{
	flashparts_import imp;
	tn_error err;
	char *text = NULL;
	size_t len = 0;
	FILE *f;

	/* errors stop at FLASHPARTS_MAX_ERRORS */
	f = open_memstream(&text, &len);
	fputs(HEADER, f);
	for (int i = 0; i < 80; i++)
		fprintf(f, "V,P%d,0x01,0x0001,1,,,,,,\n", i);
	fclose(f);
	ck_assert_int_eq(csv(text, &imp, &err), TN_EINVAL);
	ck_assert_uint_eq(json_array_size(imp.errors), FLASHPARTS_MAX_ERRORS);
	error_is(&imp, 49, 51, "size_bytes", "from 4096");
	flashparts_import_free(&imp);
	free(text);

	/* rows stop at FLASHPARTS_MAX_ROWS */
	text = NULL;
	f = open_memstream(&text, &len);
	fputs(HEADER, f);
	for (int i = 0; i <= FLASHPARTS_MAX_ROWS; i++)
		fprintf(f, "V,P%d,0x01,0x%04X,4096,,,,,,\n", i, i);
	fclose(f);
	ck_assert_int_eq(csv(text, &imp, &err), TN_EINVAL);
	ck_assert_uint_eq(json_array_size(imp.errors), 1);
	error_is(&imp, 0, FLASHPARTS_MAX_ROWS + 2, "", "more than 10000 rows");
	flashparts_import_free(&imp);
	/* ...and exactly FLASHPARTS_MAX_ROWS is fine */
	*strrchr(text, 'V') = '\0';
	ck_assert_msg(csv(text, &imp, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(imp.nrows, FLASHPARTS_MAX_ROWS);
	flashparts_import_free(&imp);
	free(text);
}
END_TEST

/* --- JSON ---------------------------------------------------------------------- */

START_TEST(json_import)
{
	flashparts_import imp;
	tn_error err;
	const char *text =
		"[{\"vendor\":\"Spansion\",\"part\":\"S25FL127S\",\"jedec_mfr\":\"0x01\","
		"\"jedec_dev\":\"0x2018\",\"size_bytes\":16777216,\"uniform_4k_erase\":false,"
		"\"uniform_64k_erase\":true,\"erase_layouts\":\"4K*16+x64K*255 @0x20;64K*256 @0xD8\","
		"\"shares_id_with\":null,\"source\":\"datasheet\",\"notes\":\"\"},"
		" {\"vendor\":\"Winbond\",\"part\":\"W25Q128FV\",\"jedec_mfr\":239,\"jedec_dev\":16408,"
		"\"size_bytes\":\"16M\",\"uniform_4k_erase\":\"yes\",\"uniform_64k_erase\":1},"
		" {\"vendor\":\"Winbond\",\"part\":\"W25Q128JV\",\"jedec\":\"ef4018\",\"size_bytes\":16777216}]";

	ck_assert_msg(json(text, &imp, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(imp.nrows, 3);
	ck_assert_uint_eq(imp.rows[0].jedec, 0x012018);
	ck_assert_int_eq(imp.rows[0].uniform_4k, 0);
	ck_assert_int_eq(imp.rows[0].uniform_64k, 1);
	ck_assert_uint_eq(flashparts_coverage(&imp.rows[0], 4096), 65536);
	ck_assert_uint_eq(imp.rows[1].jedec, 0xEF4018);
	ck_assert_uint_eq(imp.rows[1].size, 16 * MiB);
	ck_assert_int_eq(imp.rows[1].uniform_4k, 1);
	ck_assert_uint_eq(imp.rows[2].jedec, 0xEF4018);
	flashparts_import_free(&imp);

	ck_assert_int_eq(json("[]", &imp, &err), 0);
	ck_assert_uint_eq(imp.nrows, 0);
	flashparts_import_free(&imp);
}
END_TEST

START_TEST(json_errors)
{
	flashparts_import imp;
	tn_error err;
	json_t *e;

	ck_assert_int_eq(json("[{\"vendor\":\"A\",\"vendor\":\"B\"}]", &imp, &err), TN_EINVAL);
	error_is(&imp, 0, 1, "", "duplicate object key");
	flashparts_import_free(&imp);

	ck_assert_int_eq(json("[{\"vendor\":\n\"A\",]", &imp, &err), TN_EINVAL);
	error_is(&imp, 0, 2, "", "not valid JSON");
	flashparts_import_free(&imp);

	ck_assert_int_eq(json("{\"vendor\":\"A\"}", &imp, &err), TN_EINVAL);
	error_is(&imp, 0, 0, "", "must be a JSON array");
	flashparts_import_free(&imp);

	/* rows are named by index + 1, as "line" and "row" */
	ck_assert_int_eq(json("[{\"vendor\":\"A\",\"part\":\"B\",\"jedec\":\"012018\",\"size_bytes\":4096},"
			      " 7,"
			      " {\"vendor\":\"A\",\"part\":\"C\",\"jedec\":\"012018\",\"size_bytes\":4096,"
			      "\"colour\":\"red\"},"
			      " {\"vendor\":\"A\",\"part\":\"D\",\"jedec_mfr\":256,\"jedec_dev\":\"0x0001\","
			      "\"size_bytes\":4096},"
			      " {\"vendor\":1,\"part\":\"E\",\"jedec\":\"0120\",\"size_bytes\":4.5},"
			      " {\"vendor\":\"A\",\"part\":\"F\",\"jedec\":\"012018\",\"jedec_mfr\":\"0x02\","
			      "\"jedec_dev\":\"0x2018\",\"size_bytes\":4096,\"uniform_4k_erase\":\"x\"},"
			      " {\"vendor\":\"A\",\"part\":\"b\",\"jedec\":\"012018\",\"size_bytes\":4096}]",
			      &imp, &err), TN_EINVAL);
	error_is(&imp, 0, 2, "", "must be an object");
	error_is(&imp, 1, 3, "colour", "unknown key");
	error_is(&imp, 2, 4, "jedec_mfr", "the number 256 is not allowed");
	error_is(&imp, 3, 5, "vendor", "must be a string");
	error_is(&imp, 4, 5, "size_bytes", "or an integer");
	error_is(&imp, 5, 5, "jedec", "six hex digits");
	error_is(&imp, 6, 6, "uniform_4k_erase", "not \"x\"");
	error_is(&imp, 7, 7, "part", "duplicate of row 1");
	ck_assert_uint_eq(json_array_size(imp.errors), 8);
	e = json_array_get(imp.errors, 1);
	ck_assert_int_eq(json_integer_value(json_object_get(e, "row")), 3);
	ck_assert_ptr_nonnull(strstr(err.msg, "8 errors; first: row 2"));
	flashparts_import_free(&imp);

	/* "jedec" must agree with jedec_mfr/jedec_dev when both are given */
	ck_assert_int_eq(json("[{\"vendor\":\"A\",\"part\":\"F\",\"jedec\":\"012018\",\"jedec_mfr\":\"0x02\","
			      "\"jedec_dev\":\"0x2018\",\"size_bytes\":4096}]", &imp, &err), TN_EINVAL);
	error_is(&imp, 0, 1, "jedec", "disagrees");
	flashparts_import_free(&imp);
}
END_TEST

START_TEST(json_round_trip)
{
	flash_part p, back;
	tn_error err;
	json_t *j;

	memset(&p, 0, sizeof p);
	strcpy(p.vendor, "Spansion");
	strcpy(p.part, "S25FL127S");
	p.jedec = 0x012018;
	p.size = 16 * MiB;
	ck_assert_int_eq(flashparts_layouts_parse(&p, S25FL127S_LAYOUTS, &err), 0);
	p.uniform_4k = 0;
	p.uniform_64k = 1;
	strcpy(p.shares_id_with, "S25FL128S (64KB); S25FL128S (256KB)");
	strcpy(p.source, "S25FL127S_00 Rev. 05");
	strcpy(p.notes, "two\nlines");

	j = flashparts_to_json(&p);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(json_string_value(json_object_get(j, "jedec")), "012018");
	ck_assert_str_eq(json_string_value(json_object_get(j, "jedec_mfr")), "0x01");
	ck_assert_str_eq(json_string_value(json_object_get(j, "jedec_dev")), "0x2018");
	ck_assert_int_eq(json_integer_value(json_object_get(j, "size_bytes")), 16 * MiB);
	ck_assert(json_is_false(json_object_get(j, "uniform_4k_erase")));
	ck_assert(json_is_true(json_object_get(j, "uniform_64k_erase")));
	ck_assert_str_eq(json_string_value(json_object_get(j, "erase_layouts")), S25FL127S_LAYOUTS);

	memset(&back, 0xAA, sizeof back);
	ck_assert_msg(flashparts_from_json(j, &back, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(memcmp(&p, &back, sizeof p), 0);
	json_decref(j);

	/* the error names the bad key; out is untouched */
	j = json_pack("{s:s, s:s, s:s, s:s, s:s}", "vendor", "W", "part", "X", "jedec_mfr", "0xEF",
		      "jedec_dev", "0x4018", "size_bytes", "16M");
	ck_assert_int_eq(flashparts_from_json(j, &back, &err), 0);
	json_object_set_new(j, "erase_layouts", json_string("4K*4096 @0x20;64K*255 @0xD8"));
	memcpy(&p, &back, sizeof p);
	ck_assert_int_eq(flashparts_from_json(j, &back, &err), TN_EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "erase_layouts: erase_layouts entry 2"));
	ck_assert_int_eq(memcmp(&p, &back, sizeof p), 0);
	json_object_set_new(j, "erase_layouts", json_integer(1));
	ck_assert_int_eq(flashparts_from_json(j, &back, &err), TN_EINVAL);
	ck_assert_str_eq(err.msg, "erase_layouts: must be a string");
	json_decref(j);
	j = json_array();
	ck_assert_int_eq(flashparts_from_json(j, &back, &err), TN_EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "must be an object"));
	json_decref(j);
	ck_assert_int_eq(flashparts_from_json(NULL, &back, &err), TN_EINVAL);
}
END_TEST

START_TEST(json_round_trip_through_import)
{
	/* every row of a CSV import survives to_json -> parse_json unchanged */
	flashparts_import a, b;
	tn_error err;
	char *text = with_header(
		"Adesto,AT45DB321E,0x1F,0x2701,4325376,no,no,"
		"\"528*8192 @0x81;4224*1024 @0x50;4224*1+63360*1+67584*63 @0x7C;chip @0xC7\",,src,\"n\"\n"
		"Micron,M25P16,0x20,0x2015,2M,no,yes,64K*32 @0xD8;chip @0xC7,,,\n");
	json_t *arr = json_array();

	ck_assert_msg(csv(text, &a, &err) == 0, "%s", err.msg);
	for (size_t i = 0; i < a.nrows; i++)
		json_array_append_new(arr, flashparts_to_json(&a.rows[i]));
	char *dump = json_dumps(arr, 0);
	ck_assert_msg(json(dump, &b, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(b.nrows, a.nrows);
	ck_assert_int_eq(memcmp(a.rows, b.rows, a.nrows * sizeof *a.rows), 0);
	free(dump);
	json_decref(arr);
	flashparts_import_free(&a);
	flashparts_import_free(&b);
	free(text);
}
END_TEST

/* --- the seed table --------------------------------------------------------------- */

static char *read_seed(size_t *len)
{
	char path[600];
	const char *src = getenv("TN_SRCDIR");
	FILE *f;
	char *buf;
	long n;

	snprintf(path, sizeof path, "%s/schema/flash_parts.csv", src ? src : "..");
	f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "cannot open %s (set TN_SRCDIR)", path);
	ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	ck_assert_int_gt(n, 0);
	rewind(f);
	buf = malloc((size_t)n);
	ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static const flash_part *find(const flashparts_import *imp, const char *part)
{
	for (size_t i = 0; i < imp->nrows; i++)
		if (!strcmp(imp->rows[i].part, part))
			return &imp->rows[i];
	ck_abort_msg("%s is not in the seed table", part);
	return NULL;
}

START_TEST(seed_table_parses)
{
	flashparts_import imp;
	tn_error err;
	size_t len;
	char *text = read_seed(&len);
	const flash_part *p;

	ck_assert_msg(flashparts_parse_csv(text, len, &imp, &err) == 0, "%s", err.msg);
	ck_assert_ptr_null(imp.errors);
	ck_assert_uint_ge(imp.nrows, 35);

	p = find(&imp, "S25FL127S");
	ck_assert_uint_eq(p->jedec, 0x012018);
	ck_assert_int_eq(p->uniform_4k, 0);
	ck_assert_int_eq(p->uniform_64k, 1);
	ck_assert_uint_eq(flashparts_coverage(p, 4096), 65536);
	ck_assert_uint_eq(flashparts_coverage(p, 65536), 16 * MiB);

	p = find(&imp, "W25Q128FV");
	ck_assert_uint_eq(p->jedec, 0xEF4018);
	ck_assert_int_eq(p->uniform_4k, 1);
	ck_assert_int_eq(p->uniform_64k, 1);
	ck_assert_uint_eq(flashparts_coverage(p, 4096), 16 * MiB);
	ck_assert_uint_eq(flashparts_coverage(p, 65536), 16 * MiB);
	ck_assert_uint_eq(find(&imp, "W25Q128JV")->jedec, 0xEF4018);

	/* the parts without any 4 KB erase */
	ck_assert_int_eq(find(&imp, "M25P16")->uniform_4k, 0);
	ck_assert_int_eq(find(&imp, "M25P80")->uniform_4k, 0);
	ck_assert_int_eq(find(&imp, "S25FL128S (256KB)")->uniform_64k, 0);
	ck_assert_uint_eq(find(&imp, "MT25QL128ABA")->jedec, find(&imp, "N25Q128A")->jedec);

	/* every row names where it came from, and every id shared by rows says so */
	for (size_t i = 0; i < imp.nrows; i++) {
		ck_assert_msg(imp.rows[i].source[0], "%s has no source", imp.rows[i].part);
		for (size_t j = 0; j < imp.nrows; j++)
			if (i != j && imp.rows[i].jedec == imp.rows[j].jedec)
				ck_assert_msg(strstr(imp.rows[i].shares_id_with, imp.rows[j].part),
					      "%s shares %06x with %s but does not say so",
					      imp.rows[i].part, imp.rows[i].jedec, imp.rows[j].part);
	}
	flashparts_import_free(&imp);
	free(text);
}
END_TEST

static Suite *flashparts_suite(void)
{
	Suite *s = suite_create("flashparts");
	TCase *grammar = tcase_create("layouts");
	TCase *cov = tcase_create("coverage");
	TCase *c = tcase_create("csv");
	TCase *j = tcase_create("json");
	TCase *seed = tcase_create("seed");

	tcase_add_test(grammar, layouts_contract_uniform);
	tcase_add_test(grammar, layouts_not_erasable_region);
	tcase_add_test(grammar, layouts_contract_region_list);
	tcase_add_test(grammar, layouts_sizes_and_spacing);
	tcase_add_test(grammar, layouts_empty_means_unknown);
	tcase_add_test(grammar, layouts_refusals);
	tcase_add_test(grammar, layouts_too_long);
	tcase_add_test(cov, coverage_s25fl127s);
	tcase_add_test(cov, coverage_w25q128fv);
	tcase_add_test(cov, coverage_largest_command_wins);
	tcase_add_test(c, csv_good_rows);
	tcase_add_test(c, csv_quoting_edge_cases);
	tcase_add_test(c, csv_header_errors);
	tcase_add_test(c, csv_syntax_errors);
	tcase_add_test(c, csv_field_counts_and_lengths);
	tcase_add_test(c, csv_value_errors);
	tcase_add_test(c, csv_flags_agree_with_layouts);
	tcase_add_test(c, csv_duplicates_and_shared_ids);
	tcase_add_test(c, csv_all_or_nothing);
	tcase_add_test(c, csv_bounds);
	tcase_set_timeout(c, 30);
	tcase_add_test(j, json_import);
	tcase_add_test(j, json_errors);
	tcase_add_test(j, json_round_trip);
	tcase_add_test(j, json_round_trip_through_import);
	tcase_add_test(seed, seed_table_parses);
	suite_add_tcase(s, grammar);
	suite_add_tcase(s, cov);
	suite_add_tcase(s, c);
	suite_add_tcase(s, j);
	suite_add_tcase(s, seed);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(flashparts_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

/* tests/unit/test_flash.c -- flash_check(), the one decision that keeps a
 * device from being bricked, against every kind of source and requirement. */
#define _GNU_SOURCE
#include <check.h>
#include <string.h>

#include "flash.h"
#include "flashparts.h"

#define KB 1024u
#define MB (1024u * 1024u)

/* A part whose commands erase the whole chip at each of `sizes`. */
static flash_part uniform_part(const char *name, uint32_t jedec, uint64_t size, const uint32_t *sizes, int n)
{
	flash_part p;
	memset(&p, 0, sizeof p);
	snprintf(p.part, sizeof p.part, "%s", name);
	snprintf(p.vendor, sizeof p.vendor, "Test");
	p.jedec = jedec;
	p.size = size;
	for (int i = 0; i < n; i++) {
		p.layouts[i].opcode = (uint8_t)(0x20 + i);
		p.layouts[i].nregions = 1;
		p.layouts[i].regions[0] = (flash_region){ .size = sizes[i], .count = (uint32_t)(size / sizes[i]),
							   .span = size };
		p.uniform_4k |= sizes[i] == 4 * KB;
		p.uniform_64k |= sizes[i] == 64 * KB;
	}
	p.nlayouts = n;
	return p;
}

static flash_part w25q128fv(void)
{
	static const uint32_t sizes[] = { 4 * KB, 32 * KB, 64 * KB };
	return uniform_part("W25Q128FV", 0xef4018, 16 * MB, sizes, 3);
}

/* S25FL127S: 4 KB erase only in 16 parameter sectors (64 KB), 64 KB everywhere. */
static flash_part s25fl127s(void)
{
	static const uint32_t sizes[] = { 64 * KB };
	flash_part p = uniform_part("S25FL127S", 0x012018, 16 * MB, sizes, 1);
	flash_layout *l = &p.layouts[1];
	l->opcode = 0x20;
	l->nregions = 2;
	l->regions[0] = (flash_region){ .size = 4 * KB, .count = 16, .span = 64 * KB };
	l->regions[1] = (flash_region){ .size = 0, .count = 255, .span = 255 * 64 * KB };
	p.nlayouts = 2;
	return p;
}

static flash_part s25fl128s(void)
{
	static const uint32_t sizes[] = { 64 * KB };
	return uniform_part("S25FL128S", 0x012018, 16 * MB, sizes, 1);
}

static flash_requirements needs_4k_64k(void)
{
	flash_requirements r = { .nuniform = 2, .uniform_erase = { 4 * KB, 64 * KB } };
	return r;
}

START_TEST(seed_report_part_is_blocked_with_the_reason)
{
	flash_part p = s25fl127s();
	flash_facts f = { .has_jedec = 1, .jedec = 0x012018, .rows = &p, .nrows = 1 };
	flash_requirements req = needs_4k_64k();
	char reason[400];
	ck_assert_int_eq(flash_check(&f, &req, "36.10", reason, sizeof reason), FLASH_INCOMPATIBLE);
	ck_assert_str_eq(reason, "flash S25FL127S (JEDEC 01 20 18) has 4 KB erase in only 16 of 4096 4 KB "
				 "blocks; firmware 36.10 needs 4 KB and 64 KB erase across the whole chip");
}
END_TEST

START_TEST(uniform_part_is_compatible)
{
	flash_part p = w25q128fv();
	flash_facts f = { .has_jedec = 1, .jedec = 0xef4018, .rows = &p, .nrows = 1, .reported_size = 16 * MB };
	flash_requirements req = needs_4k_64k();
	req.min_size = 512 * KB;
	char reason[400];
	ck_assert_int_eq(flash_check(&f, &req, "36.10", reason, sizeof reason), FLASH_COMPATIBLE);
	ck_assert_str_eq(reason, "flash W25Q128FV (JEDEC EF 40 18) meets firmware 36.10's needs: 4 KB and "
				 "64 KB erase across the whole chip, at least 512 KB");
}
END_TEST

START_TEST(shared_id_takes_the_most_conservative)
{
	flash_part rows[2] = { s25fl127s(), w25q128fv() };
	rows[1].jedec = 0x012018;
	snprintf(rows[1].part, sizeof rows[1].part, "S25FL127S-alike");
	flash_facts f = { .has_jedec = 1, .jedec = 0x012018, .rows = rows, .nrows = 2 };
	flash_requirements req = needs_4k_64k();
	char reason[500];
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_INCOMPATIBLE);
	ck_assert_str_eq(reason, "flash S25FL127S (JEDEC 01 20 18) has 4 KB erase in only 16 of 4096 4 KB "
				 "blocks; firmware 2.0 needs 4 KB and 64 KB erase across the whole chip (JEDEC 01 20 "
				 "18 is shared by 2 parts in the table: S25FL127S or S25FL127S-alike; the verdict is "
				 "the most conservative of them)");
	/* Order does not matter. */
	flash_part swapped[2] = { rows[1], rows[0] };
	f.rows = swapped;
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_INCOMPATIBLE);
	ck_assert_ptr_nonnull(strstr(reason, "has 4 KB erase in only 16 of 4096 4 KB blocks"));
}
END_TEST

START_TEST(shared_id_all_good_is_compatible)
{
	flash_part rows[2] = { w25q128fv(), w25q128fv() };
	snprintf(rows[1].part, sizeof rows[1].part, "W25Q128JV");
	flash_facts f = { .has_jedec = 1, .jedec = 0xef4018, .rows = rows, .nrows = 2 };
	flash_requirements req = needs_4k_64k();
	char reason[400];
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_COMPATIBLE);
	ck_assert_ptr_nonnull(strstr(reason, "W25Q128FV or W25Q128JV"));
}
END_TEST

START_TEST(s25fl128s_without_4k_is_incompatible)
{
	flash_part p = s25fl128s();
	flash_facts f = { .has_jedec = 1, .jedec = 0x012018, .rows = &p, .nrows = 1 };
	flash_requirements req = needs_4k_64k();
	char reason[400];
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_INCOMPATIBLE);
	ck_assert_ptr_nonnull(strstr(reason, "has no 4 KB erase"));
}
END_TEST

START_TEST(unknown_part_is_unknown)
{
	flash_facts f = { .has_jedec = 1, .jedec = 0xc29999 };
	flash_requirements req = needs_4k_64k();
	char reason[400];
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_UNKNOWN);
	ck_assert_str_eq(reason, "flash JEDEC C2 99 99 is not in the flash-parts table and the device sent "
				 "no SFDP; firmware 2.0 needs 4 KB and 64 KB erase across the whole chip");
	f.sfdp_error = "bad signature";
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_UNKNOWN);
	ck_assert_ptr_nonnull(strstr(reason, "its SFDP was refused (bad signature)"));
}
END_TEST

START_TEST(no_flash_reported_is_unknown)
{
	flash_facts f = { 0 };
	flash_requirements req = { 0 };
	char reason[400];
	/* Even a firmware without flash requirements is not sent blind. */
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_UNKNOWN);
	ck_assert_ptr_nonnull(strstr(reason, "the device reported no flash part"));
}
END_TEST

static sfdp_info sfdp_uniform(uint64_t density, int four_k)
{
	sfdp_info s;
	memset(&s, 0, sizeof s);
	s.density = density;
	s.erase_4k_uniform = four_k;
	s.erase_4k_opcode = 0x20;
	s.erase[0] = (sfdp_erase_type){ four_k ? 4 * KB : 0, 0x20 };
	s.erase[1] = (sfdp_erase_type){ 64 * KB, 0xd8 };
	return s;
}

START_TEST(sfdp_decides_for_an_unlisted_part)
{
	sfdp_info s = sfdp_uniform(8 * MB, 1);
	flash_facts f = { .has_jedec = 1, .jedec = 0xaa1234, .sfdp = &s };
	flash_requirements req = needs_4k_64k();
	char reason[400];
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_COMPATIBLE);
	ck_assert_ptr_nonnull(strstr(reason, "(not in the flash-parts table)"));
	s = sfdp_uniform(8 * MB, 0);
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_INCOMPATIBLE);
	ck_assert_ptr_nonnull(strstr(reason, "by its own SFDP has no 4 KB erase"));
}
END_TEST

START_TEST(sfdp_contradicting_the_table_wins_when_more_cautious)
{
	flash_part p = w25q128fv();
	sfdp_info s = sfdp_uniform(16 * MB, 0);
	flash_facts f = { .has_jedec = 1, .jedec = 0xef4018, .rows = &p, .nrows = 1, .sfdp = &s };
	flash_requirements req = needs_4k_64k();
	char reason[400];
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_INCOMPATIBLE);
	ck_assert_ptr_nonnull(strstr(reason, "W25Q128FV (JEDEC EF 40 18) by its own SFDP has no 4 KB erase"));
	/* An SFDP that agrees changes nothing. */
	s = sfdp_uniform(16 * MB, 1);
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_COMPATIBLE);
}
END_TEST

START_TEST(reported_size_mismatch_is_unknown)
{
	flash_part p = w25q128fv();
	flash_facts f = { .has_jedec = 1, .jedec = 0xef4018, .rows = &p, .nrows = 1, .reported_size = 8 * MB };
	flash_requirements req = needs_4k_64k();
	char reason[400];
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_UNKNOWN);
	ck_assert_ptr_nonnull(strstr(reason, "is 8 MB by the device's own report but 16 MB by the flash-parts table"));
}
END_TEST

START_TEST(min_size)
{
	static const uint32_t sizes[] = { 4 * KB, 64 * KB };
	flash_part p = uniform_part("TINY", 0x1f8401, 256 * KB, sizes, 2);
	flash_facts f = { .has_jedec = 1, .jedec = 0x1f8401, .rows = &p, .nrows = 1 };
	flash_requirements req = { .min_size = 512 * KB };
	char reason[400];
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_INCOMPATIBLE);
	ck_assert_ptr_nonnull(strstr(reason, "holds only 256 KB; firmware 2.0 needs at least 512 KB"));
	req.min_size = 256 * KB;
	ck_assert_int_eq(flash_check(&f, &req, "2.0", reason, sizeof reason), FLASH_COMPATIBLE);
}
END_TEST

START_TEST(requirements_parse)
{
	flash_requirements r;
	tn_error err;
	json_t *j = json_loads("{\"flash\":{\"uniform_erase\":[4096,65536],\"min_size\":524288}}", 0, NULL);
	ck_assert_int_eq(flash_requirements_parse(j, &r, &err), 0);
	ck_assert_int_eq(r.nuniform, 2);
	ck_assert_uint_eq(r.uniform_erase[1], 65536);
	ck_assert_uint_eq(r.min_size, 524288);
	char text[200];
	flash_requirements_describe(&r, text, sizeof text);
	ck_assert_str_eq(text, "4 KB and 64 KB erase across the whole chip, at least 512 KB");
	json_decref(j);
	ck_assert_int_eq(flash_requirements_parse(NULL, &r, &err), 0);
	ck_assert_int_eq(r.nuniform, 0);
	static const char *const bad[] = {
		"[]", "{\"flash\":[]}", "{\"ram\":{}}", "{\"flash\":{\"uniform_erase\":[4000]}}",
		"{\"flash\":{\"uniform_erase\":[128]}}", "{\"flash\":{\"uniform_erase\":\"4K\"}}",
		"{\"flash\":{\"min_size\":-1}}", "{\"flash\":{\"colour\":1}}",
		"{\"flash\":{\"uniform_erase\":[4096,4096,4096,4096,4096,4096,4096,4096,4096]}}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		j = json_loads(bad[i], 0, NULL);
		ck_assert_ptr_nonnull(j);
		ck_assert_msg(flash_requirements_parse(j, &r, &err) == TN_EINVAL, "accepted %s", bad[i]);
		ck_assert(strlen(err.msg) > 0);
		json_decref(j);
	}
}
END_TEST

START_TEST(size_text_and_names)
{
	char buf[32];
	flash_size_text(16 * MB, buf, sizeof buf);
	ck_assert_str_eq(buf, "16 MB");
	flash_size_text(4 * KB, buf, sizeof buf);
	ck_assert_str_eq(buf, "4 KB");
	flash_size_text(1000, buf, sizeof buf);
	ck_assert_str_eq(buf, "1000 bytes");
	ck_assert_str_eq(flash_verdict_name(FLASH_COMPATIBLE), "compatible");
	ck_assert_str_eq(flash_verdict_name(FLASH_INCOMPATIBLE), "incompatible");
	ck_assert_str_eq(flash_verdict_name(FLASH_UNKNOWN), "unknown");
	ck_assert_int_gt(FLASH_INCOMPATIBLE, FLASH_UNKNOWN);
	ck_assert_int_gt(FLASH_UNKNOWN, FLASH_COMPATIBLE);
}
END_TEST

START_TEST(reason_is_truncated_safely)
{
	flash_part p = s25fl127s();
	flash_facts f = { .has_jedec = 1, .jedec = 0x012018, .rows = &p, .nrows = 1 };
	flash_requirements req = needs_4k_64k();
	char reason[16];
	ck_assert_int_eq(flash_check(&f, &req, "36.10", reason, sizeof reason), FLASH_INCOMPATIBLE);
	ck_assert_int_eq((int)strlen(reason), 15);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("flash");
	TCase *tc = tcase_create("check");
	tcase_add_test(tc, seed_report_part_is_blocked_with_the_reason);
	tcase_add_test(tc, uniform_part_is_compatible);
	tcase_add_test(tc, shared_id_takes_the_most_conservative);
	tcase_add_test(tc, shared_id_all_good_is_compatible);
	tcase_add_test(tc, s25fl128s_without_4k_is_incompatible);
	tcase_add_test(tc, unknown_part_is_unknown);
	tcase_add_test(tc, no_flash_reported_is_unknown);
	tcase_add_test(tc, sfdp_decides_for_an_unlisted_part);
	tcase_add_test(tc, sfdp_contradicting_the_table_wins_when_more_cautious);
	tcase_add_test(tc, reported_size_mismatch_is_unknown);
	tcase_add_test(tc, min_size);
	tcase_add_test(tc, requirements_parse);
	tcase_add_test(tc, size_text_and_names);
	tcase_add_test(tc, reason_is_truncated_safely);
	suite_add_tcase(su, tc);
	SRunner *sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

/* tests/unit/test_fuzz_corpus.c -- replays every fuzz corpus file through its
 * fuzz target, so inputs that once found a bug stay regression tests (and
 * run under the sanitizer build of `make check`). */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_dir(const char *target)
{
	char dir[600];
	const char *src = getenv("TN_SRCDIR");
	snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", src ? src : "..", target);
	DIR *d = opendir(dir);
	ck_assert_msg(d != NULL, "no corpus at %s", dir);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[900];
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		FILE *f = fopen(path, "rb");
		ck_assert_ptr_nonnull(f);
		ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
		long size = ftell(f);
		ck_assert_int_ge(size, 0);
		rewind(f);
		/* Exactly the file's bytes: reads past them show under ASan/valgrind. */
		uint8_t *buf = malloc(size ? (size_t)size : 1);
		ck_assert_ptr_nonnull(buf);
		ck_assert_uint_eq(fread(buf, 1, (size_t)size, f), (size_t)size);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, (size_t)size);
		free(buf);
		n++;
	}
	closedir(d);
	return n;
}

/* Each fuzz target gets its own replay program (each defines
 * LLVMFuzzerTestOneInput); the Makefile sets FUZZ_TARGET. */
#ifndef FUZZ_TARGET
#define FUZZ_TARGET "frame"
#endif

START_TEST(corpus)
{
	ck_assert_int_ge(replay_dir(FUZZ_TARGET), 5);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("fuzz_corpus_" FUZZ_TARGET);
	TCase *tc = tcase_create("replay");
	tcase_add_test(tc, corpus);
	suite_add_tcase(su, tc);
	SRunner *sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

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
		char *buf = NULL;
		size_t cap = 0;
		ssize_t len = getdelim(&buf, &cap, '\0', f); /* corpus files hold no NUL bytes... */
		fseek(f, 0, SEEK_END);
		long size = ftell(f); /* ...or if they do, the real size wins */
		fclose(f);
		if (len < 0)
			size = 0;
		if (size > 0 && (size_t)size > cap) {
			free(buf);
			buf = malloc((size_t)size);
			f = fopen(path, "rb");
			ck_assert_int_eq(fread(buf, 1, (size_t)size, f), (size_t)size);
			fclose(f);
		}
		LLVMFuzzerTestOneInput((const uint8_t *)buf, (size_t)size);
		free(buf);
		n++;
	}
	closedir(d);
	return n;
}

START_TEST(frame_corpus)
{
	ck_assert_int_ge(replay_dir("frame"), 5);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("fuzz_corpus");
	TCase *tc = tcase_create("replay");
	tcase_add_test(tc, frame_corpus);
	suite_add_tcase(su, tc);
	SRunner *sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

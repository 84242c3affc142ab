/* tests/unit/test_auth.c -- secrets and hashes (server/auth.c), the id hash
 * map (server/idmap.c) and the in-memory registry of device secrets
 * (server/registry.c, loaded from a real store in a temporary dir). */
#define _GNU_SOURCE
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "idmap.h"
#include "log.h"
#include "registry.h"
#include "tokens.h"

/* --- auth ------------------------------------------------------------------- */

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

START_TEST(random_secret_shape)
{
	char a[64], b[64];

	ck_assert_int_eq(auth_random_secret("tds_", a), 0);
	ck_assert_int_eq(auth_random_secret("tds_", b), 0);
	ck_assert_uint_eq(strlen(a), 4 + 43);
	ck_assert_int_eq(strncmp(a, "tds_", 4), 0);
	ck_assert_uint_eq(strspn(a + 4, alphabet), 43);
	ck_assert_str_ne(a, b);

	ck_assert_int_eq(auth_random_secret("tdt_", a), 0);
	ck_assert_int_eq(strncmp(a, "tdt_", 4), 0);
	ck_assert_int_eq(auth_random_secret("", a), 0);
	ck_assert_uint_eq(strlen(a), 43);
	ck_assert_int_eq(auth_random_secret("12345678", a), 0); /* the longest prefix */
	ck_assert_uint_eq(strlen(a), 8 + 43);
	ck_assert_int_eq(auth_random_secret("123456789", a), TN_EINVAL);
}
END_TEST

/* 300 secrets, 12900 characters: each of the 64 letters turns up (a
 * generator limited to hex or to a part of the alphabet would not). */
START_TEST(random_secret_alphabet)
{
	int count[256] = { 0 };
	char s[64];

	for (int i = 0; i < 300; i++) {
		ck_assert_int_eq(auth_random_secret("x", s), 0);
		for (const char *p = s + 1; *p; p++)
			count[(unsigned char)*p]++;
	}
	for (const char *p = alphabet; *p; p++)
		ck_assert_msg(count[(unsigned char)*p] > 0, "'%c' never drawn", *p);
}
END_TEST

START_TEST(hash_known_values)
{
	char h[AUTH_HASH_HEX];

	auth_hash_hex("abc", 3, h);
	ck_assert_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	auth_hash_hex("", 0, h);
	ck_assert_str_eq(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	/* the length counts, not a NUL */
	auth_hash_hex("abc\0def", 7, h);
	ck_assert_str_ne(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	ck_assert_uint_eq(strlen(h), 64);
}
END_TEST

START_TEST(hash_equal)
{
	char a[AUTH_HASH_HEX], b[AUTH_HASH_HEX];

	auth_hash_hex("abc", 3, a);
	auth_hash_hex("abc", 3, b);
	ck_assert_int_eq(auth_hash_equal(a, b), 1);
	b[63] = b[63] == '0' ? '1' : '0';
	ck_assert_int_eq(auth_hash_equal(a, b), 0);
	auth_hash_hex("abc", 3, b);
	b[0] = b[0] == '0' ? '1' : '0';
	ck_assert_int_eq(auth_hash_equal(a, b), 0);
	/* a prefix is not equal */
	ck_assert_int_eq(auth_hash_equal(a, "ba7816bf"), 0);
	ck_assert_int_eq(auth_hash_equal("ba7816bf", a), 0);
	ck_assert_int_eq(auth_hash_equal("", a), 0);
	ck_assert_int_eq(auth_hash_equal("", ""), 1);
}
END_TEST

/* --- idmap ------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15;

static uint64_t rng(void) /* xorshift64*: deterministic, so failures repeat */
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * UINT64_C(2685821657736338717);
}

static void count_one(void *arg, uint64_t key, void *val)
{
	++*(size_t *)arg;
}

/* Every key present maps to its value and every key gone is absent. */
static void check_map(const idmap *m, const uint64_t *keys, int *vals, const char *present, size_t n)
{
	size_t seen = 0, want = 0;

	for (size_t i = 0; i < n; i++) {
		void *v = idmap_get(m, keys[i]);
		if (present[i])
			ck_assert_msg(v == &vals[i], "key %zu (%llx) lost", i, (unsigned long long)keys[i]);
		else
			ck_assert_msg(v == NULL, "key %zu (%llx) still found", i, (unsigned long long)keys[i]);
		want += present[i] != 0;
	}
	ck_assert_uint_eq(m->count, want);
	idmap_foreach(m, count_one, &seen);
	ck_assert_uint_eq(seen, want);
}

/* Insert n keys, delete every other one, check, put them back, check. */
static void churn(const uint64_t *keys, size_t n)
{
	idmap m = { 0 };
	int *vals = calloc(n, sizeof *vals);
	char *present = calloc(n, 1);
	int oom = 0;

	ck_assert(vals && present);
	for (size_t i = 0; i < n; i++) {
		ck_assert_ptr_null(idmap_put(&m, keys[i], &vals[i], &oom));
		present[i] = 1;
	}
	ck_assert_int_eq(oom, 0);
	ck_assert_int_le(m.count * 2, m.cap); /* grown at 50% load */
	check_map(&m, keys, vals, present, n);
	for (size_t i = 0; i < n; i += 2) {
		ck_assert_ptr_eq(idmap_del(&m, keys[i]), &vals[i]);
		present[i] = 0;
	}
	check_map(&m, keys, vals, present, n);
	for (size_t i = 0; i < n; i += 2)
		ck_assert_ptr_null(idmap_del(&m, keys[i])); /* already gone */
	for (size_t i = 0; i < n; i += 2) {
		ck_assert_ptr_null(idmap_put(&m, keys[i], &vals[i], &oom));
		present[i] = 1;
	}
	check_map(&m, keys, vals, present, n);
	idmap_free(&m);
	free(vals);
	free(present);
}

START_TEST(idmap_basics)
{
	idmap m = { 0 };
	int a, b;

	ck_assert_ptr_null(idmap_get(&m, 1));
	ck_assert_ptr_null(idmap_del(&m, 1));
	ck_assert_ptr_null(idmap_put(&m, 0, &a, NULL)); /* 0 is a key like any other */
	ck_assert_ptr_null(idmap_put(&m, UINT64_MAX, &b, NULL));
	ck_assert_ptr_eq(idmap_get(&m, 0), &a);
	ck_assert_ptr_eq(idmap_put(&m, 0, &b, NULL), &a); /* replace returns the old value */
	ck_assert_uint_eq(m.count, 2);
	ck_assert_ptr_eq(idmap_get(&m, 0), &b);
	ck_assert_ptr_eq(idmap_del(&m, UINT64_MAX), &b);
	ck_assert_ptr_null(idmap_get(&m, UINT64_MAX));
	ck_assert_uint_eq(m.count, 1);
	idmap_free(&m);
	ck_assert_uint_eq(m.cap, 0);
	ck_assert_ptr_null(idmap_get(&m, 0));
	idmap_free(&m); /* twice is fine */
}
END_TEST

START_TEST(idmap_many_random)
{
	enum { N = 100000 };
	uint64_t *keys = malloc(N * sizeof *keys);

	for (size_t i = 0; i < N; i++)
		keys[i] = rng();
	churn(keys, N);
	free(keys);
}
END_TEST

START_TEST(idmap_many_consecutive)
{
	enum { N = 100000 };
	uint64_t *keys = malloc(N * sizeof *keys);

	for (size_t i = 0; i < N; i++)
		keys[i] = UINT64_C(0x30000c2a690c0000) + i; /* ids from one production run */
	churn(keys, N);
	free(keys);
}
END_TEST

/* Small tables have long runs that wrap around the end: delete in random
 * order, one key at a time, and check every other key after each deletion. */
START_TEST(idmap_backward_shift)
{
	enum { N = 31 }; /* just under half of the first table (64 slots) */
	uint64_t keys[N];
	int vals[N];
	char present[N];

	for (int trial = 0; trial < 2000; trial++) {
		idmap m = { 0 };
		for (int i = 0; i < N; i++) {
			keys[i] = trial % 2 ? rng() : (uint64_t)trial * 1000 + (uint64_t)i;
			present[i] = 1;
			ck_assert_ptr_null(idmap_put(&m, keys[i], &vals[i], NULL));
		}
		ck_assert_uint_eq(m.cap, 64);
		for (int left = N; left > 0; left--) {
			int k = (int)(rng() % (uint64_t)left), i = -1;
			while (k >= 0) /* the k-th key still present */
				k -= present[++i];
			ck_assert_ptr_eq(idmap_del(&m, keys[i]), &vals[i]);
			present[i] = 0;
			check_map(&m, keys, vals, present, N);
		}
		idmap_free(&m);
	}
}
END_TEST

/* --- registry --------------------------------------------------------------- */

static char root[64], dir[80]; /* root: made and removed by main, even when tests fail */
static store *st;

static void reg_setup(void)
{
	store_options opt = { 0 };
	tn_error err = { 0 };

	snprintf(dir, sizeof dir, "%s/XXXXXX", root);
	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_msg(store_open(&st, dir, &opt, &err) == 0, "%s", err.msg);
}

static void reg_teardown(void)
{
	store_close(st);
	st = NULL;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void register_device(uint64_t id, const char *secret)
{
	char h[AUTH_HASH_HEX];
	tn_error err = { 0 };

	auth_hash_hex(secret, strlen(secret), h);
	ck_assert_msg(store_device_create(st, id, h, NULL, NULL, &err) == 0, "%s", err.msg);
}

START_TEST(registry_loads_and_checks)
{
	registry *r = NULL;
	tn_error err = { 0 };
	char h[AUTH_HASH_HEX];

	register_device(0x30000c2a690c77c5, "tds_one");
	register_device(UINT64_MAX, "tds_two");
	ck_assert_int_eq(registry_open(&r, st, &err), 0);
	ck_assert_int_eq(registry_check(r, 0x30000c2a690c77c5, "tds_one"), 0);
	ck_assert_int_eq(registry_check(r, UINT64_MAX, "tds_two"), 0);
	ck_assert_int_eq(registry_check(r, 0x30000c2a690c77c5, "tds_two"), TN_EAUTH);
	ck_assert_int_eq(registry_check(r, 0x30000c2a690c77c5, ""), TN_EAUTH);
	ck_assert_int_eq(registry_check(r, 0x30000c2a690c77c4, "tds_one"), TN_ENOTFOUND);

	/* set adds and replaces, remove forgets */
	auth_hash_hex("tds_three", 9, h);
	ck_assert_int_eq(registry_set(r, 3, h), 0);
	ck_assert_int_eq(registry_check(r, 3, "tds_three"), 0);
	auth_hash_hex("tds_new", 7, h);
	ck_assert_int_eq(registry_set(r, UINT64_MAX, h), 0);
	ck_assert_int_eq(registry_check(r, UINT64_MAX, "tds_two"), TN_EAUTH);
	ck_assert_int_eq(registry_check(r, UINT64_MAX, "tds_new"), 0);
	registry_remove(r, 0x30000c2a690c77c5);
	ck_assert_int_eq(registry_check(r, 0x30000c2a690c77c5, "tds_one"), TN_ENOTFOUND);
	registry_remove(r, 0x30000c2a690c77c5); /* absent: no-op */
	ck_assert_int_eq(registry_check(r, 3, "tds_three"), 0);
	registry_free(r);
	registry_free(NULL);
}
END_TEST

START_TEST(registry_empty_store)
{
	registry *r = NULL;
	tn_error err = { 0 };

	ck_assert_int_eq(registry_open(&r, st, &err), 0);
	ck_assert_int_eq(registry_check(r, 1, "x"), TN_ENOTFOUND);
	registry_free(r);
}
END_TEST

/* --- scopes and the failed-attempt limiter -------------------------------------- */

START_TEST(roles_parse_and_order)
{
	ck_assert_int_eq(tokens_role_parse("admin"), ROLE_ADMIN);
	ck_assert_int_eq(tokens_role_parse("operator"), ROLE_OPERATOR);
	ck_assert_int_eq(tokens_role_parse("viewer"), ROLE_VIEWER);
	ck_assert_int_eq(tokens_role_parse("Admin"), ROLE_NONE);
	ck_assert_int_eq(tokens_role_parse("none"), ROLE_NONE);
	ck_assert_int_eq(tokens_role_parse(NULL), ROLE_NONE);
	ck_assert_str_eq(tokens_role_name(ROLE_OPERATOR), "operator");
	ck_assert(ROLE_VIEWER < ROLE_OPERATOR && ROLE_OPERATOR < ROLE_ADMIN);
}
END_TEST

START_TEST(required_roles)
{
	ck_assert_int_eq(tokens_required_role("GET", "/v1/devices"), ROLE_VIEWER);
	ck_assert_int_eq(tokens_required_role("HEAD", "/v1/rollouts/3"), ROLE_VIEWER);
	ck_assert_int_eq(tokens_required_role("POST", "/v1/logstreams"), ROLE_VIEWER);
	ck_assert_int_eq(tokens_required_role("DELETE", "/v1/logstreams/ls_x/devices/1"), ROLE_VIEWER);
	ck_assert_int_eq(tokens_required_role("POST", "/v1/devices"), ROLE_OPERATOR);
	ck_assert_int_eq(tokens_required_role("PUT", "/v1/groups/g/agent"), ROLE_OPERATOR);
	ck_assert_int_eq(tokens_required_role("POST", "/v1/rollouts"), ROLE_OPERATOR);
	ck_assert_int_eq(tokens_required_role("GET", "/v1/flash-parts"), ROLE_VIEWER);
	ck_assert_int_eq(tokens_required_role("POST", "/v1/flash-parts/import"), ROLE_ADMIN);
	ck_assert_int_eq(tokens_required_role("PUT", "/v1/flash-parts/ef4018"), ROLE_ADMIN);
	ck_assert_int_eq(tokens_required_role("GET", "/v1/tokens"), ROLE_ADMIN);
	ck_assert_int_eq(tokens_required_role("DELETE", "/v1/tokens/2"), ROLE_ADMIN);
	ck_assert_int_eq(tokens_required_role("GET", "/v1/audit"), ROLE_ADMIN);
	/* a prefix is a whole path segment, not a substring */
	ck_assert_int_eq(tokens_required_role("POST", "/v1/tokensx"), ROLE_OPERATOR);
	ck_assert_int_eq(tokens_required_role("POST", "/v1/logstreamsx"), ROLE_OPERATOR);
}
END_TEST

START_TEST(authlimit_throttles_within_a_window)
{
	authlimit *l = authlimit_new(3, 10);
	ck_assert_ptr_nonnull(l);
	int64_t t = 1000000;
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(authlimit_wait(l, "10.0.0.1", t), 0);
		authlimit_failed(l, "10.0.0.1", t);
	}
	ck_assert_int_eq(authlimit_wait(l, "10.0.0.1", t), 10);
	ck_assert_int_eq(authlimit_wait(l, "10.0.0.1", t + 4500), 6);
	ck_assert_int_eq(authlimit_wait(l, "10.0.0.2", t), 0);     /* others are not affected */
	ck_assert_int_eq(authlimit_wait(l, "10.0.0.1", t + 10000), 0); /* a new window */
	authlimit_failed(l, "10.0.0.1", t + 10000);
	ck_assert_int_eq(authlimit_wait(l, "10.0.0.1", t + 10001), 0);
	authlimit_free(l);

	l = authlimit_new(0, 10);   /* no limit */
	for (int i = 0; i < 100; i++)
		authlimit_failed(l, "10.0.0.1", t);
	ck_assert_int_eq(authlimit_wait(l, "10.0.0.1", t), 0);
	authlimit_free(l);
}
END_TEST

START_TEST(authlimit_many_addresses_stay_bounded)
{
	/* More addresses than slots: the table reuses the oldest windows and a
	 * fresh attacker is still throttled. */
	authlimit *l = authlimit_new(2, 60);
	char addr[48];
	int64_t t = 5000000;
	for (int i = 0; i < 20000; i++) {
		snprintf(addr, sizeof addr, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
		authlimit_failed(l, addr, t + i);
	}
	authlimit_failed(l, "192.0.2.7", t + 30000);
	authlimit_failed(l, "192.0.2.7", t + 30000);
	ck_assert_int_gt(authlimit_wait(l, "192.0.2.7", t + 30001), 0);
	authlimit_free(l);
}
END_TEST

static Suite *auth_suite(void)
{
	Suite *s = suite_create("auth");
	TCase *tc;

	tc = tcase_create("auth");
	tcase_add_test(tc, random_secret_shape);
	tcase_add_test(tc, random_secret_alphabet);
	tcase_add_test(tc, hash_known_values);
	tcase_add_test(tc, hash_equal);
	suite_add_tcase(s, tc);

	tc = tcase_create("idmap");
	tcase_set_timeout(tc, 300); /* valgrind makes the 100k-key runs slow */
	tcase_add_test(tc, idmap_basics);
	tcase_add_test(tc, idmap_many_random);
	tcase_add_test(tc, idmap_many_consecutive);
	tcase_add_test(tc, idmap_backward_shift);
	suite_add_tcase(s, tc);

	tc = tcase_create("tokens");
	tcase_add_test(tc, roles_parse_and_order);
	tcase_add_test(tc, required_roles);
	tcase_add_test(tc, authlimit_throttles_within_a_window);
	tcase_add_test(tc, authlimit_many_addresses_stay_bounded);
	suite_add_tcase(s, tc);

	tc = tcase_create("registry");
	tcase_add_checked_fixture(tc, reg_setup, reg_teardown);
	tcase_add_test(tc, registry_loads_and_checks);
	tcase_add_test(tc, registry_empty_store);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	log_level = LOG_ERR;
	snprintf(root, sizeof root, "/tmp/tender-test-auth-XXXXXX");
	if (!mkdtemp(root))
		return 2;
	SRunner *sr = srunner_create(auth_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return failed ? 1 : 0;
}

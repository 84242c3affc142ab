/* tests/unit/test_events.c -- log events (server/events.c) and their time and
 * text forms (server/logfmt.c): type names, the JSON form, ISO 8601 both
 * ways, and the operator's text line in several time zones. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "events.h"
#include "logfmt.h"

/* 2016-09-08T15:16:15Z, the seed report's "firmware update triggered". */
#define SEED_MS INT64_C(1473347775000)

static void set_tz(const char *tz)
{
	setenv("TZ", tz, 1);
	tzset();
}

/* --- events ----------------------------------------------------------------- */

START_TEST(type_round_trip)
{
	static const char *const names[EV__COUNT] = { "status", "device", "agent", "firmware" };

	for (int t = 0; t < EV__COUNT; t++) {
		ck_assert_str_eq(events_type_name((event_type)t), names[t]);
		ck_assert_int_eq(events_type_parse(names[t]), t);
		ck_assert_int_eq(events_type_parse(events_type_name((event_type)t)), t);
	}
	ck_assert_int_eq(events_type_parse("Status"), -1); /* names are lower-case */
	ck_assert_int_eq(events_type_parse(""), -1);
	ck_assert_int_eq(events_type_parse("unknown"), -1);
	ck_assert_str_eq(events_type_name(EV__COUNT), "unknown");
	ck_assert_int_eq(events_type_parse(events_type_name(EV__COUNT)), -1);
}
END_TEST

START_TEST(to_json)
{
	tn_event ev = { .id = 42, .device = UINT64_C(0x30000C2A690C77C5), .ts_ms = SEED_MS + 123,
			.type = EV_FIRMWARE, .msg = "firmware update triggered" };
	json_t *j = events_to_json(&ev);

	ck_assert_ptr_nonnull(j);
	ck_assert_uint_eq(json_object_size(j), 5);
	ck_assert(json_is_integer(json_object_get(j, "id")));
	ck_assert_int_eq(json_integer_value(json_object_get(j, "id")), 42);
	ck_assert_str_eq(json_string_value(json_object_get(j, "device_id")), "30000c2a690c77c5");
	ck_assert_str_eq(json_string_value(json_object_get(j, "ts")), "2016-09-08T15:16:15.123Z");
	ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "firmware");
	ck_assert_str_eq(json_string_value(json_object_get(j, "msg")), "firmware update triggered");
	json_decref(j);

	/* Large ids and ids with leading zeros keep all 16 digits. */
	ev.device = 1;
	ev.id = INT64_C(1) << 40;
	ev.type = EV_AGENT;
	j = events_to_json(&ev);
	ck_assert_str_eq(json_string_value(json_object_get(j, "device_id")), "0000000000000001");
	ck_assert_int_eq(json_integer_value(json_object_get(j, "id")), INT64_C(1) << 40);
	ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "agent");
	json_decref(j);
}
END_TEST

START_TEST(format_text)
{
	tn_event ev = { .id = 1, .device = 1, .ts_ms = SEED_MS, .type = EV_STATUS,
			.msg = "firmware update triggered" };
	char buf[128];

	set_tz("UTC-2");
	ck_assert_int_eq(events_format_text(&ev, buf, sizeof buf),
			 (int)strlen("2016-09-08 17:16:15 UTC+2 [Status] firmware update triggered"));
	ck_assert_str_eq(buf, "2016-09-08 17:16:15 UTC+2 [Status] firmware update triggered");
	ev.type = EV_DEVICE;
	ev.msg = "ERROR: sensor";
	events_format_text(&ev, buf, sizeof buf);
	ck_assert_str_eq(buf, "2016-09-08 17:16:15 UTC+2 [Device] ERROR: sensor");
}
END_TEST

/* --- logfmt ------------------------------------------------------------------- */

START_TEST(type_labels)
{
	ck_assert_str_eq(logfmt_type_label("status"), "Status");
	ck_assert_str_eq(logfmt_type_label("device"), "Device");
	ck_assert_str_eq(logfmt_type_label("agent"), "Agent");
	ck_assert_str_eq(logfmt_type_label("firmware"), "Firmware");
	ck_assert_ptr_null(logfmt_type_label("custom"));
}
END_TEST

START_TEST(iso8601_format)
{
	static const struct { int64_t ms; const char *s; } cases[] = {
		{ 0, "1970-01-01T00:00:00.000Z" },
		{ 999, "1970-01-01T00:00:00.999Z" },
		{ SEED_MS, "2016-09-08T15:16:15.000Z" },
		{ SEED_MS + 7, "2016-09-08T15:16:15.007Z" },
		/* before the epoch the milliseconds still count forwards */
		{ -1, "1969-12-31T23:59:59.999Z" },
		{ -999, "1969-12-31T23:59:59.001Z" },
		{ -1000, "1969-12-31T23:59:59.000Z" },
		{ -1001, "1969-12-31T23:59:58.999Z" },
		{ INT64_C(951782400000), "2000-02-29T00:00:00.000Z" },
		{ INT64_C(253402300799999), "9999-12-31T23:59:59.999Z" },
	};
	char buf[32];

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		ck_assert_int_eq(logfmt_iso8601(buf, sizeof buf, cases[i].ms), 24);
		ck_assert_str_eq(buf, cases[i].s);
	}
	/* 24 characters need 25 bytes. */
	ck_assert_int_eq(logfmt_iso8601(buf, 25, 0), 24);
	ck_assert_int_eq(logfmt_iso8601(buf, 24, 0), -1);
	ck_assert_int_eq(logfmt_iso8601(buf, 1, 0), -1);
}
END_TEST

START_TEST(iso8601_round_trip)
{
	static const int64_t ms[] = {
		0, 1, 999, 1000, -1, -999, -1000, -1001, SEED_MS, SEED_MS + 123,
		INT64_C(951782400000), INT64_C(1782345600000), INT64_C(-86400000) * 365 * 50 + 17,
		INT64_C(253402300799999),
	};
	char buf[32];
	int64_t back;

	for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
		ck_assert_int_gt(logfmt_iso8601(buf, sizeof buf, ms[i]), 0);
		back = -12345;
		ck_assert_int_eq(logfmt_parse_iso8601(buf, &back), 0);
		ck_assert_int_eq(back, ms[i]);
	}
}
END_TEST

START_TEST(iso8601_parse_forms)
{
	int64_t ms;

	ck_assert_int_eq(logfmt_parse_iso8601("2016-09-08T15:16:15Z", &ms), 0);
	ck_assert_int_eq(ms, SEED_MS);
	ck_assert_int_eq(logfmt_parse_iso8601("2016-09-08T15:16:15", &ms), 0); /* Z optional */
	ck_assert_int_eq(ms, SEED_MS);
	ck_assert_int_eq(logfmt_parse_iso8601("2016-09-08T15:16:15.5Z", &ms), 0);
	ck_assert_int_eq(ms, SEED_MS + 500);
	ck_assert_int_eq(logfmt_parse_iso8601("2016-09-08T15:16:15.05", &ms), 0);
	ck_assert_int_eq(ms, SEED_MS + 50);
	/* digits past milliseconds are dropped, not rounded */
	ck_assert_int_eq(logfmt_parse_iso8601("2016-09-08T15:16:15.123999Z", &ms), 0);
	ck_assert_int_eq(ms, SEED_MS + 123);
	ck_assert_int_eq(logfmt_parse_iso8601("1969-12-31T23:59:59.999Z", &ms), 0);
	ck_assert_int_eq(ms, -1);
}
END_TEST

START_TEST(iso8601_parse_invalid)
{
	static const char *const bad[] = {
		"", "now", "2016-09-08", "2016-09-08T15:16", "2016-09-08 15:16:15Z",
		"2016-09-08T15:16:15.Z", "2016-09-08T15:16:15ZZ", "2016-09-08T15:16:15+02:00",
		"2016-09-08T15:16:15.123x", "2016-00-08T15:16:15Z", "2016-13-08T15:16:15Z",
		"2016-09-00T15:16:15Z", "2016-09-32T15:16:15Z", "2016-09-08T24:00:00Z",
		"2016-09-08T15:60:00Z", "2016-09-08T15:16:61Z", "2016/09/08T15:16:15Z",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int64_t ms = 777;
		ck_assert_msg(logfmt_parse_iso8601(bad[i], &ms) == -1, "accepted '%s'", bad[i]);
		ck_assert_int_eq(ms, 777); /* untouched on failure */
	}
}
END_TEST

/* Signs, spaces and short fields are not the form: sscanf's "%2d" once let
 * "T-1:00:00" through as 23:00 of the day before (fixed in 83ed473). */
START_TEST(iso8601_parse_signs_and_spaces)
{
	static const char *const bad[] = {
		"2016-09-08T-1:00:00Z", "2016-09-08T15:-1:00Z", "2016-09-08T15:16:-1Z",
		"2016-09-08T 1:16:15Z", " 2016-09-08T15:16:15Z", "+016-09-08T15:16:15Z",
		"2016-9-08T15:16:15Z", "2016-09-08T15:16:15 ",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int64_t ms = 777;
		ck_assert_msg(logfmt_parse_iso8601(bad[i], &ms) == -1, "accepted '%s' as %lld",
			      bad[i], (long long)ms);
	}
}
END_TEST

/* A day past the month's end is refused, not moved on by timegm() to the
 * next month (the day was once checked only against 31; fixed in 83ed473). */
START_TEST(iso8601_parse_impossible_dates)
{
	static const char *const bad[] = {
		"2016-02-30T00:00:00Z", "2015-02-29T00:00:00Z", "2016-04-31T00:00:00Z",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int64_t ms = 777;
		ck_assert_msg(logfmt_parse_iso8601(bad[i], &ms) == -1, "accepted '%s' as %lld",
			      bad[i], (long long)ms);
	}
	int64_t ms;
	ck_assert_int_eq(logfmt_parse_iso8601("2016-02-29T00:00:00Z", &ms), 0); /* leap year */
}
END_TEST

START_TEST(text_zones)
{
	char buf[128];

	set_tz("UTC-2"); /* POSIX: two hours east of UTC */
	ck_assert_int_eq(logfmt_text(buf, sizeof buf, SEED_MS, "status", "firmware update triggered"),
			 (int)strlen("2016-09-08 17:16:15 UTC+2 [Status] firmware update triggered"));
	ck_assert_str_eq(buf, "2016-09-08 17:16:15 UTC+2 [Status] firmware update triggered");

	set_tz("UTC");
	logfmt_text(buf, sizeof buf, SEED_MS + 999, "device", "hi");
	ck_assert_str_eq(buf, "2016-09-08 15:16:15 UTC+0 [Device] hi");

	set_tz("UTC-5:30");
	logfmt_text(buf, sizeof buf, SEED_MS, "agent", "x");
	ck_assert_str_eq(buf, "2016-09-08 20:46:15 UTC+5:30 [Agent] x");

	set_tz("UTC+3:30"); /* west of UTC */
	logfmt_text(buf, sizeof buf, SEED_MS, "firmware", "y");
	ck_assert_str_eq(buf, "2016-09-08 11:46:15 UTC-3:30 [Firmware] y");

	set_tz("UTC+10"); /* crosses back to the previous day */
	logfmt_text(buf, sizeof buf, INT64_C(1473292800000), "status", "z");
	ck_assert_str_eq(buf, "2016-09-07 14:00:00 UTC-10 [Status] z");
}
END_TEST

START_TEST(text_unknown_type)
{
	char buf[128];

	set_tz("UTC");
	logfmt_text(buf, sizeof buf, 0, "custom", "m");
	ck_assert_str_eq(buf, "1970-01-01 00:00:00 UTC+0 [custom] m");
}
END_TEST

/* -1 ms is the last second before the epoch, as logfmt_iso8601 says (ts_ms
 * was once divided toward zero, printing 1970-01-01 00:00:00; fixed in 83ed473). */
START_TEST(text_before_epoch)
{
	char buf[128];

	set_tz("UTC");
	logfmt_text(buf, sizeof buf, -1, "status", "m");
	ck_assert_str_eq(buf, "1969-12-31 23:59:59 UTC+0 [Status] m");
}
END_TEST

START_TEST(text_truncation)
{
	const char *prefix = "2016-09-08 17:16:15 UTC+2 [Status] ";
	int p = (int)strlen(prefix);
	char buf[128];

	set_tz("UTC-2");
	/* Room for 4 message bytes and the NUL; nothing written past cap. */
	memset(buf, '#', sizeof buf);
	ck_assert_int_eq(logfmt_text(buf, (size_t)p + 5, SEED_MS, "status", "firmware update"), p + 4);
	ck_assert_str_eq(buf + p, "firm");
	ck_assert_int_eq(strncmp(buf, prefix, (size_t)p), 0);
	ck_assert_int_eq(buf[p + 5], '#');

	/* Just the prefix fits: an empty message. */
	ck_assert_int_eq(logfmt_text(buf, (size_t)p + 1, SEED_MS, "status", "firmware"), p);
	ck_assert_str_eq(buf, prefix);

	/* The prefix does not fit: -1. */
	ck_assert_int_eq(logfmt_text(buf, (size_t)p, SEED_MS, "status", "firmware"), -1);
	ck_assert_int_eq(logfmt_text(buf, 10, SEED_MS, "status", "firmware"), -1);

	/* An exact fit is not truncated. */
	ck_assert_int_eq(logfmt_text(buf, (size_t)p + 9, SEED_MS, "status", "firmware"), p + 8);
	ck_assert_str_eq(buf + p, "firmware");
}
END_TEST

static Suite *events_suite(void)
{
	Suite *s = suite_create("events");
	TCase *tc;

	tc = tcase_create("events");
	tcase_add_test(tc, type_round_trip);
	tcase_add_test(tc, to_json);
	tcase_add_test(tc, format_text);
	suite_add_tcase(s, tc);

	tc = tcase_create("iso8601");
	tcase_add_test(tc, iso8601_format);
	tcase_add_test(tc, iso8601_round_trip);
	tcase_add_test(tc, iso8601_parse_forms);
	tcase_add_test(tc, iso8601_parse_invalid);
	tcase_add_test(tc, iso8601_parse_signs_and_spaces);
	tcase_add_test(tc, iso8601_parse_impossible_dates);
	suite_add_tcase(s, tc);

	tc = tcase_create("text");
	tcase_add_test(tc, type_labels);
	tcase_add_test(tc, text_zones);
	tcase_add_test(tc, text_unknown_type);
	tcase_add_test(tc, text_before_epoch);
	tcase_add_test(tc, text_truncation);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(events_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

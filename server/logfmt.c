/* server/logfmt.c -- the text and time forms of log events (see logfmt.h). */
#define _GNU_SOURCE
#include "logfmt.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static const struct { const char *type, *label; } logfmt__labels[] = {
	{ "status", "Status" }, { "device", "Device" },
	{ "agent", "Agent" },   { "firmware", "Firmware" },
};

const char *logfmt_type_label(const char *type)
{
	for (size_t i = 0; i < sizeof logfmt__labels / sizeof logfmt__labels[0]; i++)
		if (strcmp(type, logfmt__labels[i].type) == 0)
			return logfmt__labels[i].label;
	return NULL;
}

int logfmt_iso8601(char *buf, size_t cap, int64_t ts_ms)
{
	time_t secs = (time_t)(ts_ms / 1000);
	int ms = (int)(ts_ms % 1000);
	struct tm tm;

	if (ms < 0) {
		ms += 1000;
		secs -= 1;
	}
	if (!gmtime_r(&secs, &tm))
		return -1;
	int n = snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
	return (n < 0 || (size_t)n >= cap) ? -1 : n;
}

/* n digits at s, or -1. */
static int logfmt__digits(const char *s, int n)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

static int logfmt__days_in_month(int year, int month)
{
	static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
	return days[month - 1] + (month == 2 && leap);
}

int logfmt_parse_iso8601(const char *s, int64_t *ts_ms)
{
	/* Fixed positions: YYYY-MM-DDTHH:MM:SS, then [.fff...][Z]. */
	struct tm tm = { 0 };
	int ms = 0;

	if (strlen(s) < 19 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
	    s[16] != ':')
		return -1;
	int year = logfmt__digits(s, 4), mon = logfmt__digits(s + 5, 2), day = logfmt__digits(s + 8, 2);
	int hour = logfmt__digits(s + 11, 2), min = logfmt__digits(s + 14, 2), sec = logfmt__digits(s + 17, 2);
	if (year < 0 || mon < 1 || mon > 12 || day < 1 || day > logfmt__days_in_month(year, mon) ||
	    hour < 0 || hour > 23 || min < 0 || min > 59 || sec < 0 || sec > 60)
		return -1;
	s += 19;
	if (*s == '.') {
		int digits = 0;
		for (s++; *s >= '0' && *s <= '9'; s++, digits++)
			if (digits < 3)
				ms = ms * 10 + (*s - '0');
		if (digits == 0)
			return -1;
		for (; digits < 3; digits++)
			ms *= 10;
	}
	if (*s == 'Z')
		s++;
	if (*s != '\0')
		return -1;
	tm.tm_year = year - 1900;
	tm.tm_mon = mon - 1;
	tm.tm_mday = day;
	tm.tm_hour = hour;
	tm.tm_min = min;
	tm.tm_sec = sec;
	*ts_ms = (int64_t)timegm(&tm) * 1000 + ms;
	return 0;
}

int logfmt_text(char *buf, size_t cap, int64_t ts_ms, const char *type, const char *msg)
{
	/* Floor division: -1 ms is 23:59:59 of the day before the epoch. */
	time_t secs = (time_t)(ts_ms / 1000 - (ts_ms % 1000 < 0));
	struct tm tm;
	char zone[32];

	if (!localtime_r(&secs, &tm))
		return -1;
	long off = tm.tm_gmtoff;
	long h = (off < 0 ? -off : off) / 3600, m = ((off < 0 ? -off : off) % 3600) / 60;
	if (m)
		snprintf(zone, sizeof zone, "UTC%c%ld:%02ld", off < 0 ? '-' : '+', h, m);
	else
		snprintf(zone, sizeof zone, "UTC%c%ld", off < 0 ? '-' : '+', h);

	const char *label = logfmt_type_label(type);
	int n = snprintf(buf, cap, "%04d-%02d-%02d %02d:%02d:%02d %s [%s] ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
			 tm.tm_min, tm.tm_sec, zone, label ? label : type);
	if (n < 0 || (size_t)n >= cap)
		return -1;
	size_t len = strlen(msg), room = cap - (size_t)n - 1;
	if (len > room)
		len = room;
	memcpy(buf + n, msg, len);
	buf[n + len] = '\0';
	return n + (int)len;
}

/* tools/tenderctl.c -- the operator's command-line client for tenderd's HTTP API.
 * Owns: the parsed command line, one libcurl easy handle (reused so paging keeps
 * its connection), the admin token and every response body.
 * Threads: single-threaded; only main() drives it.
 * Output: results on stdout; every error on stderr as "tenderctl: ...", with the
 * API's own error shown as "tenderctl: <status> <code>: <message>".
 * Exit status: 0 ok, 1 API or network error, 2 usage error. */
#define _GNU_SOURCE
#include "logfmt.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#define CTL_DEFAULT_URL        "http://127.0.0.1:8601"
#define CTL_DEFAULT_TOKEN_FILE "./tender-data/admin.token"
#define CTL_MAX_RESPONSE       ((size_t)64 << 20)
#define CTL_TIMEOUT_S          30L
#define CTL_MAX_TOKEN          4096
#define CTL_LOG_PAGE           500L
#define CTL_MAX_COUNT          100000000L
#define CTL_ID_LEN             16

/* Every step returns 0 or one of these; main() turns them into the exit status. */
enum { CTL_EAPI = -1, CTL_EUSAGE = -2 };

static const char ctl__usage[] =
	"Usage: tenderctl [--url URL] [--token TOKEN | --token-file FILE] COMMAND\n"
	"  devices [--online|--offline] [--hw HW] [--group G] [--limit N]   list devices (follows paging to the end unless --limit)\n"
	"  device ID                                   show one device (pretty JSON)\n"
	"  register ID [--group G] [--name NAME]        register a device; prints its id and secret\n"
	"  logs ID [-n N]                               print the device's log history in text form, newest last\n"
	"  delete ID                                    delete a device\n"
	"\n"
	"ID is 16 hex digits.  Options may come before or after the command.\n"
	"URL defaults to $TENDER_URL, else " CTL_DEFAULT_URL ".\n"
	"The token comes from --token, else $TENDER_TOKEN, else --token-file,\n"
	"else $TENDER_TOKEN_FILE, else " CTL_DEFAULT_TOKEN_FILE ".\n"
	"Exit status: 0 ok, 1 API or network error, 2 usage error.\n";

/* ---- command line ------------------------------------------------------- */

enum ctl_optid {
	CTL_OPT_URL, CTL_OPT_TOKEN, CTL_OPT_TOKEN_FILE, CTL_OPT_HELP,
	CTL_OPT_ONLINE, CTL_OPT_OFFLINE, CTL_OPT_HW, CTL_OPT_GROUP,
	CTL_OPT_LIMIT, CTL_OPT_NAME, CTL_OPT_COUNT,
};
#define CTL_BIT(id) (1u << (id))
/* Accepted with any command; the rest must belong to the command given. */
#define CTL_GLOBAL_OPTS (CTL_BIT(CTL_OPT_URL) | CTL_BIT(CTL_OPT_TOKEN) | \
			 CTL_BIT(CTL_OPT_TOKEN_FILE) | CTL_BIT(CTL_OPT_HELP))

static const struct ctl_optdef {
	const char *name;
	enum ctl_optid id;
	int has_arg;
} ctl__optdefs[] = {
	{ "--url", CTL_OPT_URL, 1 },       { "--token", CTL_OPT_TOKEN, 1 },
	{ "--token-file", CTL_OPT_TOKEN_FILE, 1 },
	{ "--help", CTL_OPT_HELP, 0 },     { "-h", CTL_OPT_HELP, 0 },
	{ "--online", CTL_OPT_ONLINE, 0 }, { "--offline", CTL_OPT_OFFLINE, 0 },
	{ "--hw", CTL_OPT_HW, 1 },         { "--group", CTL_OPT_GROUP, 1 },
	{ "--limit", CTL_OPT_LIMIT, 1 },   { "--name", CTL_OPT_NAME, 1 },
	{ "-n", CTL_OPT_COUNT, 1 },
};
#define CTL_NOPTDEFS (sizeof ctl__optdefs / sizeof ctl__optdefs[0])

typedef struct ctl_opts {
	const char *url, *token, *token_file;	/* borrowed from argv */
	const char *cmd, *id_arg;		/* the positional arguments */
	const char *hw, *group, *name;
	int online;				/* -1 either, 0 offline, 1 online */
	long limit;				/* devices to list; 0 for all */
	long count;				/* newest log lines; 0 for all */
	unsigned given;				/* CTL_BIT(optid) of each option seen */
	char id[CTL_ID_LEN + 1];		/* id_arg, checked and lower-cased */
} ctl_opts;

typedef struct ctl_client ctl_client;
typedef int (*ctl_cmd_fn)(ctl_client *c, const ctl_opts *o);

static void ctl__err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int ctl__usage_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void ctl__err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("tenderctl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static int ctl__usage_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("tenderctl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputs("\nTry 'tenderctl --help'.\n", stderr);
	va_end(ap);
	return CTL_EUSAGE;
}

static int ctl__oom(void)
{
	ctl__err("out of memory");
	return CTL_EAPI;
}

/* Strings from the server (device-reported hw/fw, log messages) reach the
 * operator's terminal, so control bytes are neutralised rather than emitted. */
static void ctl__fput_clean(FILE *f, const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		fputc(ch == '\t' ? ' ' : (ch < 0x20 || ch == 0x7f) ? '?' : ch, f);
	}
}

/* Columns are padded by characters, not bytes, so UTF-8 names stay aligned. */
static size_t ctl__text_width(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			n++;
	return n;
}

static int ctl__parse_long(const char *opt, const char *val, long *out)
{
	char *end;

	errno = 0;
	long v = strtol(val, &end, 10);
	if (errno || end == val || *end || v < 1 || v > CTL_MAX_COUNT)
		return ctl__usage_err("%s: '%s' is not a number from 1 to %ld",
				      opt, val, CTL_MAX_COUNT);
	*out = v;
	return 0;
}

static int ctl__set_opt(ctl_opts *o, const struct ctl_optdef *d, const char *val)
{
	o->given |= CTL_BIT(d->id);
	switch (d->id) {
	case CTL_OPT_URL:        o->url = val; break;
	case CTL_OPT_TOKEN:      o->token = val; break;
	case CTL_OPT_TOKEN_FILE: o->token_file = val; break;
	case CTL_OPT_HELP:       break;
	case CTL_OPT_ONLINE:     o->online = 1; break;
	case CTL_OPT_OFFLINE:    o->online = 0; break;
	case CTL_OPT_HW:         o->hw = val; break;
	case CTL_OPT_GROUP:      o->group = val; break;
	case CTL_OPT_NAME:       o->name = val; break;
	case CTL_OPT_LIMIT:      return ctl__parse_long(d->name, val, &o->limit);
	case CTL_OPT_COUNT:      return ctl__parse_long(d->name, val, &o->count);
	}
	return 0;
}

/* Matches "--opt", "--opt=value" and, for short options, "-nVALUE".
 * *inline_val is set when the value was part of the argument. */
static const struct ctl_optdef *ctl__find_opt(const char *arg, const char **inline_val)
{
	*inline_val = NULL;
	for (size_t i = 0; i < CTL_NOPTDEFS; i++) {
		const struct ctl_optdef *d = &ctl__optdefs[i];
		size_t len = strlen(d->name);

		if (strncmp(arg, d->name, len) != 0)
			continue;
		if (arg[len] == '\0')
			return d;
		if (d->has_arg && arg[1] == '-' && arg[len] == '=') {
			*inline_val = arg + len + 1;
			return d;
		}
		if (d->has_arg && arg[1] != '-') {
			*inline_val = arg + len;
			return d;
		}
	}
	return NULL;
}

static int ctl__add_positional(ctl_opts *o, const char *arg)
{
	if (!o->cmd)
		o->cmd = arg;
	else if (!o->id_arg)
		o->id_arg = arg;
	else
		return ctl__usage_err("unexpected argument '%s'", arg);
	return 0;
}

/* One pass over argv: options may sit anywhere, "--" ends them. */
static int ctl__parse_args(int argc, char **argv, ctl_opts *o)
{
	int only_positional = 0, rc = 0;

	for (int i = 1; i < argc && rc == 0; i++) {
		const char *arg = argv[i], *val;

		if (only_positional || arg[0] != '-' || arg[1] == '\0') {
			rc = ctl__add_positional(o, arg);
			continue;
		}
		if (strcmp(arg, "--") == 0) {
			only_positional = 1;
			continue;
		}
		const struct ctl_optdef *d = ctl__find_opt(arg, &val);
		if (!d)
			return ctl__usage_err("unknown option '%s'", arg);
		if (d->has_arg && !val) {
			if (i + 1 >= argc)
				return ctl__usage_err("option %s needs a value", d->name);
			val = argv[++i];
		}
		rc = ctl__set_opt(o, d, val);
	}
	return rc;
}

static const char *ctl__opt_name(unsigned bits)
{
	for (size_t i = 0; i < CTL_NOPTDEFS; i++)
		if (bits & CTL_BIT(ctl__optdefs[i].id))
			return ctl__optdefs[i].name;
	return "?";
}

/* Refuses a malformed id here so a typo never reaches the server as a path. */
static int ctl__check_id(ctl_opts *o)
{
	const char *s = o->id_arg;
	size_t len = strlen(s);

	if (len != CTL_ID_LEN || strspn(s, "0123456789abcdefABCDEF") != len)
		return ctl__usage_err("invalid device id '%s': expected %d hex digits",
				      s, CTL_ID_LEN);
	for (size_t i = 0; i <= len; i++)
		o->id[i] = (char)tolower((unsigned char)s[i]);
	return 0;
}

/* ---- HTTP client -------------------------------------------------------- */

struct ctl_client {
	CURL *curl;
	char *base;			/* owned: the URL without a trailing '/' */
	char *auth;			/* owned: "Authorization: Bearer ..." */
	char errbuf[CURL_ERROR_SIZE];
};

typedef struct ctl_buf {
	char *data;			/* owned: NUL-terminated response body */
	size_t len, cap;
	int overflow, oom;
} ctl_buf;

typedef struct ctl_kv {
	const char *key, *val;		/* a NULL val leaves the parameter out */
} ctl_kv;

/* Caps the body at CTL_MAX_RESPONSE so a broken or hostile server cannot
 * make us allocate without bound; returning short makes curl abort. */
static size_t ctl__write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	ctl_buf *b = userdata;
	size_t n = size * nmemb;

	if (n > CTL_MAX_RESPONSE - b->len) {
		b->overflow = 1;
		return 0;
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 16384;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->data, cap);
		if (!p) {
			b->oom = 1;
			return 0;
		}
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

static void ctl__free_secret(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

static void ctl__client_free(ctl_client *c)
{
	if (!c)
		return;
	if (c->curl)
		curl_easy_cleanup(c->curl);
	free(c->base);
	ctl__free_secret(c->auth);
	free(c);
}

/* The token goes into a header line, so anything but visible ASCII (a stray
 * CR/LF from the file above all) is refused instead of sent. */
static int ctl__take_token(const char *src, const char *origin, char **token)
{
	while (isspace((unsigned char)*src))
		src++;
	size_t len = strlen(src);
	while (len && isspace((unsigned char)src[len - 1]))
		len--;
	if (len == 0)
		return ctl__usage_err("the token from %s is empty", origin);
	for (size_t i = 0; i < len; i++)
		if (src[i] < 0x21 || src[i] > 0x7e)
			return ctl__usage_err("the token from %s contains invalid characters",
					      origin);
	if (!(*token = strndup(src, len)))
		return ctl__oom();
	return 0;
}

static int ctl__read_token_file(const char *path, char **token)
{
	char buf[CTL_MAX_TOKEN + 2];
	FILE *f = fopen(path, "r");

	if (!f)
		return ctl__usage_err("cannot read token file %s: %s "
				      "(give --token, --token-file or $TENDER_TOKEN)",
				      path, strerror(errno));
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	int bad = ferror(f), saved = errno;
	fclose(f);
	buf[n] = '\0';
	int rc = 0;
	if (bad)
		rc = ctl__usage_err("cannot read token file %s: %s", path, strerror(saved));
	else if (n > CTL_MAX_TOKEN || strlen(buf) != n)
		rc = ctl__usage_err("token file %s does not hold a token", path);
	else
		rc = ctl__take_token(buf, path, token);
	explicit_bzero(buf, sizeof buf);
	return rc;
}

/* *token is owned: caller frees with ctl__free_secret(). */
static int ctl__load_token(const ctl_opts *o, char **token)
{
	const char *env = getenv("TENDER_TOKEN"), *file = o->token_file;

	if (o->token)
		return ctl__take_token(o->token, "--token", token);
	if (env && *env)
		return ctl__take_token(env, "$TENDER_TOKEN", token);
	if (!file || !*file)
		file = getenv("TENDER_TOKEN_FILE");
	if (!file || !*file)
		file = CTL_DEFAULT_TOKEN_FILE;
	return ctl__read_token_file(file, token);
}

static int ctl__base_url(const ctl_opts *o, char **base)
{
	const char *url = o->url ? o->url : getenv("TENDER_URL");

	if (!url || !*url)
		url = CTL_DEFAULT_URL;
	if (!(*base = strdup(url)))
		return ctl__oom();
	size_t len = strlen(*base);
	while (len && (*base)[len - 1] == '/')
		(*base)[--len] = '\0';
	if (len == 0)
		return ctl__usage_err("invalid --url '%s'", url);
	return 0;
}

/* *out is owned: caller frees with ctl__client_free(). */
static int ctl__client_open(const ctl_opts *o, ctl_client **out)
{
	ctl_client *c = calloc(1, sizeof *c);
	char *token = NULL;
	int rc = c ? 0 : ctl__oom();

	if (rc == 0)
		rc = ctl__base_url(o, &c->base);
	if (rc == 0)
		rc = ctl__load_token(o, &token);
	if (rc == 0 && asprintf(&c->auth, "Authorization: Bearer %s", token) < 0) {
		c->auth = NULL;
		rc = ctl__oom();
	}
	if (rc == 0 && !(c->curl = curl_easy_init())) {
		ctl__err("cannot initialise libcurl");
		rc = CTL_EAPI;
	}
	ctl__free_secret(token);
	if (rc != 0)
		goto fail;
	*out = c;
	return 0;
fail:
	ctl__client_free(c);
	return rc;
}

/* Returns base + path + "?k=v&..." with the values escaped.
 * owned: caller frees with free(); NULL when out of memory. */
static char *ctl__url(ctl_client *c, const char *path, const ctl_kv *q, size_t nq)
{
	char *url = NULL, sep = '?';
	size_t len = 0;
	FILE *f = open_memstream(&url, &len);

	if (!f)
		return NULL;
	int ok = fputs(c->base, f) >= 0 && fputs(path, f) >= 0;
	for (size_t i = 0; ok && i < nq; i++) {
		if (!q[i].val)
			continue;
		char *esc = curl_easy_escape(c->curl, q[i].val, 0);
		ok = esc && fprintf(f, "%c%s=%s", sep, q[i].key, esc) > 0;
		curl_free(esc);
		sep = '&';
	}
	if (fclose(f) != 0 || !ok) {
		free(url);
		return NULL;
	}
	return url;
}

static int ctl__header_list(const ctl_client *c, int has_body, struct curl_slist **hdrs)
{
	const char *lines[] = {
		c->auth, "Accept: application/json",
		has_body ? "Content-Type: application/json" : NULL,
	};

	for (size_t i = 0; i < sizeof lines / sizeof lines[0] && lines[i]; i++) {
		struct curl_slist *l = curl_slist_append(*hdrs, lines[i]);
		if (!l)
			return ctl__oom();
		*hdrs = l;
	}
	return 0;
}

/* curl_easy_reset() keeps the connection cache, so pages reuse one socket. */
static int ctl__setup(ctl_client *c, const char *method, const char *url,
		      const char *payload, ctl_buf *resp, struct curl_slist **hdrs)
{
	CURL *h = c->curl;

	curl_easy_reset(h);
	c->errbuf[0] = '\0';
	if (ctl__header_list(c, payload != NULL, hdrs) < 0)
		return CTL_EAPI;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, *hdrs);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, CTL_TIMEOUT_S);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "tenderctl");
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, ctl__write_cb);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
	curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)CTL_MAX_RESPONSE);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	if (payload) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
	} else if (strcmp(method, "GET") != 0) {
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	}
	return 0;
}

static void ctl__report_transport(const ctl_client *c, CURLcode cc, const ctl_buf *resp)
{
	if (resp->overflow || cc == CURLE_FILESIZE_EXCEEDED)
		ctl__err("the response from %s is larger than %zu MiB", c->base,
			 CTL_MAX_RESPONSE >> 20);
	else if (resp->oom)
		ctl__oom();
	else
		ctl__err("cannot reach %s: %s", c->base,
			 c->errbuf[0] ? c->errbuf : curl_easy_strerror(cc));
}

/* Shows the API's {"error":{"code","message"}}; a body without one (a proxy's
 * HTML page, say) is summarised rather than dumped. */
static void ctl__report_status(const ctl_client *c, long status, const ctl_buf *resp)
{
	json_t *root = resp->len ? json_loadb(resp->data, resp->len, 0, NULL) : NULL;
	json_t *e = json_object_get(root, "error");
	const char *code = json_string_value(json_object_get(e, "code"));
	const char *msg = json_string_value(json_object_get(e, "message"));

	fprintf(stderr, "tenderctl: %ld ", status);
	if (code || msg) {
		ctl__fput_clean(stderr, code ? code : "error");
		fputs(": ", stderr);
		ctl__fput_clean(stderr, msg ? msg : "(no message)");
		fputc('\n', stderr);
	} else {
		fprintf(stderr, "unexpected response from %s\n", c->base);
	}
	json_decref(root);
}

static int ctl__parse_body(const ctl_buf *resp, int need_object, json_t **out)
{
	json_error_t jerr;

	if (resp->len == 0 && !need_object)
		return 0;
	*out = json_loadb(resp->len ? resp->data : "", resp->len, JSON_REJECT_DUPLICATES, &jerr);
	if (!*out) {
		fputs("tenderctl: invalid JSON from the server: ", stderr);
		ctl__fput_clean(stderr, jerr.text);
		fputc('\n', stderr);
		return CTL_EAPI;
	}
	if (need_object && !json_is_object(*out)) {
		ctl__err("unexpected response from the server: not a JSON object");
		json_decref(*out);
		*out = NULL;
		return CTL_EAPI;
	}
	return 0;
}

/* Sends one request; body is borrowed and may be NULL.  On a 2xx answer stores
 * the parsed body in *out (owned: caller json_decref; NULL for an empty body
 * unless need_object).  Anything else is reported on stderr as CTL_EAPI. */
static int ctl__call(ctl_client *c, const char *method, const char *url,
		     const json_t *body, int need_object, json_t **out)
{
	ctl_buf resp = { 0 };
	struct curl_slist *hdrs = NULL;
	char *payload = NULL;
	long status = 0;
	int rc = CTL_EAPI;

	*out = NULL;
	if (!url || (body && !(payload = json_dumps(body, JSON_COMPACT)))) {
		rc = ctl__oom();
		goto out;
	}
	if (ctl__setup(c, method, url, payload, &resp, &hdrs) < 0)
		goto out;
	CURLcode cc = curl_easy_perform(c->curl);
	if (cc != CURLE_OK) {
		ctl__report_transport(c, cc, &resp);
		goto out;
	}
	curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status > 299)
		ctl__report_status(c, status, &resp);
	else
		rc = ctl__parse_body(&resp, need_object, out);
out:
	curl_slist_free_all(hdrs);
	free(payload);
	free(resp.data);
	return rc;
}

/* ---- devices ------------------------------------------------------------ */

enum { CTL_COL_ID, CTL_COL_ONLINE, CTL_COL_HW, CTL_COL_FW, CTL_COL_GROUP,
       CTL_COL_SEEN, CTL_NCOLS };

static const char *const ctl__headers[CTL_NCOLS] = {
	"ID", "ONLINE", "HW", "FW", "GROUP", "LAST SEEN",
};

typedef struct ctl_row {
	const char *cell[CTL_NCOLS];	/* borrowed from the device JSON or static */
	char seen[32];
} ctl_row;

/* Local "YYYY-MM-DD HH:MM:SS"; returns -1 if the time cannot be shown. */
static int ctl__local_time(int64_t ts_ms, char *buf, size_t cap)
{
	time_t secs = (time_t)(ts_ms >= 0 ? ts_ms / 1000 : (ts_ms - 999) / 1000);
	struct tm tm;

	if (!localtime_r(&secs, &tm))
		return -1;
	return strftime(buf, cap, "%Y-%m-%d %H:%M:%S", &tm) ? 0 : -1;
}

static const char *ctl__str_or_dash(json_t *dev, const char *key)
{
	const char *s = json_string_value(json_object_get(dev, key));

	return s && *s ? s : "-";
}

static void ctl__fill_row(ctl_row *r, json_t *dev)
{
	json_t *online = json_object_get(dev, "online");
	const char *seen = json_string_value(json_object_get(dev, "last_seen"));
	int64_t ms;

	r->cell[CTL_COL_ID] = ctl__str_or_dash(dev, "id");
	r->cell[CTL_COL_ONLINE] = json_is_true(online) ? "yes" :
				  json_is_false(online) ? "no" : "-";
	r->cell[CTL_COL_HW] = ctl__str_or_dash(dev, "hw");
	r->cell[CTL_COL_FW] = ctl__str_or_dash(dev, "fw");
	r->cell[CTL_COL_GROUP] = ctl__str_or_dash(dev, "group");
	/* An unparsable time is shown as sent rather than hidden. */
	if (!seen)
		r->cell[CTL_COL_SEEN] = "-";
	else if (logfmt_parse_iso8601(seen, &ms) == 0 &&
		 ctl__local_time(ms, r->seen, sizeof r->seen) == 0)
		r->cell[CTL_COL_SEEN] = r->seen;
	else
		r->cell[CTL_COL_SEEN] = seen;
}

/* The last column is not padded, so lines carry no trailing blanks. */
static void ctl__print_cells(const char *const *cell, const size_t *width)
{
	for (int i = 0; i < CTL_NCOLS; i++) {
		ctl__fput_clean(stdout, cell[i]);
		if (i + 1 < CTL_NCOLS)
			printf("%*s", (int)(width[i] - ctl__text_width(cell[i]) + 2), "");
	}
	putchar('\n');
}

static int ctl__print_devices(json_t *devices, size_t n)
{
	ctl_row *rows = calloc(n ? n : 1, sizeof *rows);
	size_t width[CTL_NCOLS];

	if (!rows)
		return ctl__oom();
	for (int i = 0; i < CTL_NCOLS; i++)
		width[i] = ctl__text_width(ctl__headers[i]);
	for (size_t r = 0; r < n; r++) {
		ctl__fill_row(&rows[r], json_array_get(devices, r));
		for (int i = 0; i < CTL_NCOLS; i++) {
			size_t w = ctl__text_width(rows[r].cell[i]);
			if (w > width[i])
				width[i] = w;
		}
	}
	ctl__print_cells(ctl__headers, width);
	for (size_t r = 0; r < n; r++)
		ctl__print_cells(rows[r].cell, width);
	printf("%zu devices\n", n);
	free(rows);
	return 0;
}

/* Advances *cursor (owned, NULL before the first page) to the page's "next";
 * clears *more at the end.  A cursor that does not move would loop forever,
 * so it is treated as a server fault. */
static int ctl__next_cursor(json_t *next, size_t got, char **cursor, int *more)
{
	if (json_is_null(next) || !next || got == 0) {
		*more = 0;
		return 0;
	}
	if (!json_is_string(next)) {
		ctl__err("unexpected response from the server: 'next' is not a string");
		return CTL_EAPI;
	}
	if (*cursor && strcmp(*cursor, json_string_value(next)) == 0) {
		ctl__err("the server returned the same paging cursor twice");
		return CTL_EAPI;
	}
	free(*cursor);
	if (!(*cursor = strdup(json_string_value(next))))
		return ctl__oom();
	return 0;
}

/* Appends one page of devices to all (json_array, borrowed); want is how many
 * more are needed, 0 for no limit. */
static int ctl__devices_page(ctl_client *c, const ctl_opts *o, long want,
			     char **cursor, json_t *all, int *more)
{
	char limit[24];
	json_t *root;

	snprintf(limit, sizeof limit, "%ld", want);
	const ctl_kv q[] = {
		{ "online", o->online < 0 ? NULL : o->online ? "true" : "false" },
		{ "hw", o->hw }, { "group", o->group },
		{ "limit", want ? limit : NULL }, { "after", *cursor },
	};
	char *url = ctl__url(c, "/v1/devices", q, sizeof q / sizeof q[0]);
	int rc = ctl__call(c, "GET", url, NULL, 1, &root);
	free(url);
	if (rc < 0)
		return rc;
	json_t *devices = json_object_get(root, "devices");
	if (!json_is_array(devices)) {
		ctl__err("unexpected response from the server: no 'devices' array");
		rc = CTL_EAPI;
	} else if (json_array_extend(all, devices) < 0) {
		rc = ctl__oom();
	} else {
		rc = ctl__next_cursor(json_object_get(root, "next"),
				      json_array_size(devices), cursor, more);
	}
	json_decref(root);
	return rc;
}

/* Collects every page before printing so the columns can fit the widest value. */
static int ctl__cmd_devices(ctl_client *c, const ctl_opts *o)
{
	json_t *all = json_array();
	char *cursor = NULL;
	int more = 1, rc = all ? 0 : ctl__oom();

	while (rc == 0 && more) {
		size_t have = json_array_size(all);
		if (o->limit && have >= (size_t)o->limit)
			break;
		rc = ctl__devices_page(c, o, o->limit ? o->limit - (long)have : 0,
				       &cursor, all, &more);
	}
	if (rc == 0) {
		size_t n = json_array_size(all);
		rc = ctl__print_devices(all, o->limit && n > (size_t)o->limit ?
					(size_t)o->limit : n);
	}
	free(cursor);
	json_decref(all);
	return rc;
}

/* ---- one device --------------------------------------------------------- */

static int ctl__cmd_device(ctl_client *c, const ctl_opts *o)
{
	char path[64];
	json_t *root;

	snprintf(path, sizeof path, "/v1/devices/%s", o->id);
	char *url = ctl__url(c, path, NULL, 0);
	int rc = ctl__call(c, "GET", url, NULL, 1, &root);
	free(url);
	if (rc < 0)
		return rc;
	/* json_dumps escapes control characters, so this is safe to print. */
	char *text = json_dumps(root, JSON_INDENT(2));
	if (text)
		puts(text);
	else
		rc = ctl__oom();
	free(text);
	json_decref(root);
	return rc;
}

static int ctl__cmd_register(ctl_client *c, const ctl_opts *o)
{
	json_error_t jerr;
	json_t *root = NULL;
	json_t *body = json_pack_ex(&jerr, 0, "{s:s, s:s*, s:s*}", "id", o->id,
				    "group", o->group, "name", o->name);

	if (!body)
		return ctl__usage_err("cannot encode --group or --name: %s", jerr.text);
	char *url = ctl__url(c, "/v1/devices", NULL, 0);
	int rc = ctl__call(c, "POST", url, body, 1, &root);
	free(url);
	json_decref(body);
	if (rc < 0)
		return rc;
	const char *id = json_string_value(json_object_get(root, "id"));
	const char *secret = json_string_value(json_object_get(root, "secret"));
	if (id && secret) {
		fputs("id ", stdout);
		ctl__fput_clean(stdout, id);
		fputs("\nsecret ", stdout);
		ctl__fput_clean(stdout, secret);
		putchar('\n');
	} else {
		ctl__err("unexpected response from the server: no id and secret");
		rc = CTL_EAPI;
	}
	json_decref(root);
	return rc;
}

static int ctl__cmd_delete(ctl_client *c, const ctl_opts *o)
{
	char path[64];
	json_t *root;

	snprintf(path, sizeof path, "/v1/devices/%s", o->id);
	char *url = ctl__url(c, path, NULL, 0);
	int rc = ctl__call(c, "DELETE", url, NULL, 0, &root);
	free(url);
	json_decref(root);
	return rc;
}

/* ---- logs --------------------------------------------------------------- */

/* The walk goes from the newest page backwards; pages holds each page's
 * events array (newest page first, each page oldest event first). */
typedef struct ctl_logwalk {
	json_t *pages;			/* owned */
	size_t total;
	json_int_t before;		/* the next page's "before", if have_before */
	int have_before, more;
} ctl_logwalk;

/* next_before must fall strictly, or a faulty server would page forever. */
static int ctl__next_before(ctl_logwalk *w, json_t *next, size_t got)
{
	if (!next || json_is_null(next) || got == 0) {
		w->more = 0;
		return 0;
	}
	if (!json_is_integer(next) ||
	    (w->have_before && json_integer_value(next) >= w->before)) {
		ctl__err("unexpected response from the server: bad 'next_before'");
		return CTL_EAPI;
	}
	w->before = json_integer_value(next);
	w->have_before = 1;
	return 0;
}

static int ctl__logs_page(ctl_client *c, const ctl_opts *o, ctl_logwalk *w)
{
	char path[64], limit[24], before[24];
	long want = CTL_LOG_PAGE;
	json_t *root;

	if (o->count && o->count - (long)w->total < want)
		want = o->count - (long)w->total;
	snprintf(path, sizeof path, "/v1/devices/%s/logs", o->id);
	snprintf(limit, sizeof limit, "%ld", want);
	snprintf(before, sizeof before, "%" JSON_INTEGER_FORMAT, w->before);
	const ctl_kv q[] = {
		{ "limit", limit }, { "before", w->have_before ? before : NULL },
	};
	char *url = ctl__url(c, path, q, sizeof q / sizeof q[0]);
	int rc = ctl__call(c, "GET", url, NULL, 1, &root);
	free(url);
	if (rc < 0)
		return rc;
	json_t *events = json_object_get(root, "events");
	if (!json_is_array(events)) {
		ctl__err("unexpected response from the server: no 'events' array");
		rc = CTL_EAPI;
	} else if (json_array_append(w->pages, events) < 0) {
		rc = ctl__oom();
	} else {
		w->total += json_array_size(events);
		rc = ctl__next_before(w, json_object_get(root, "next_before"),
				      json_array_size(events));
	}
	json_decref(root);
	return rc;
}

/* The fallback form for an event logfmt cannot format: time as sent. */
static void ctl__print_event_raw(const char *ts, const char *type, const char *msg)
{
	const char *label = logfmt_type_label(type);

	ctl__fput_clean(stdout, ts ? ts : "-");
	fputs(" [", stdout);
	ctl__fput_clean(stdout, label ? label : type);
	fputs("] ", stdout);
	ctl__fput_clean(stdout, msg);
	putchar('\n');
}

/* One line per event: a message's own newlines are neutralised by
 * ctl__fput_clean, and an unparsable "ts" still shows the event. */
static int ctl__print_event(json_t *ev)
{
	const char *ts = json_string_value(json_object_get(ev, "ts"));
	const char *type = json_string_value(json_object_get(ev, "type"));
	const char *msg = json_string_value(json_object_get(ev, "msg"));
	int64_t ms;

	type = type ? type : "?";
	msg = msg ? msg : "";
	if (!ts || logfmt_parse_iso8601(ts, &ms) < 0) {
		ctl__print_event_raw(ts, type, msg);
		return 0;
	}
	/* Room for the whole message: logfmt_text truncates to fit cap. */
	size_t cap = strlen(type) + strlen(msg) + 64;
	char *line = malloc(cap);
	if (!line)
		return ctl__oom();
	if (logfmt_text(line, cap, ms, type, msg) >= 0) {
		ctl__fput_clean(stdout, line);
		putchar('\n');
	} else {
		ctl__print_event_raw(ts, type, msg);
	}
	free(line);
	return 0;
}

static int ctl__print_logs(const ctl_logwalk *w, long count)
{
	size_t skip = count && w->total > (size_t)count ? w->total - (size_t)count : 0;

	for (size_t p = json_array_size(w->pages); p-- > 0;) {
		json_t *events = json_array_get(w->pages, p), *ev;
		size_t i;

		json_array_foreach(events, i, ev) {
			if (skip) {
				skip--;
				continue;
			}
			if (ctl__print_event(ev) < 0)
				return CTL_EAPI;
		}
	}
	return 0;
}

static int ctl__cmd_logs(ctl_client *c, const ctl_opts *o)
{
	ctl_logwalk w = { .pages = json_array(), .more = 1 };
	int rc = w.pages ? 0 : ctl__oom();

	while (rc == 0 && w.more && !(o->count && w.total >= (size_t)o->count))
		rc = ctl__logs_page(c, o, &w);
	if (rc == 0)
		rc = ctl__print_logs(&w, o->count);
	json_decref(w.pages);
	return rc;
}

/* ---- main --------------------------------------------------------------- */

static const struct ctl_cmd {
	const char *name;
	int wants_id;
	unsigned opts;			/* CTL_BIT()s of the command's own options */
	ctl_cmd_fn run;
} ctl__cmds[] = {
	{ "devices", 0, CTL_BIT(CTL_OPT_ONLINE) | CTL_BIT(CTL_OPT_OFFLINE) |
			CTL_BIT(CTL_OPT_HW) | CTL_BIT(CTL_OPT_GROUP) |
			CTL_BIT(CTL_OPT_LIMIT), ctl__cmd_devices },
	{ "device", 1, 0, ctl__cmd_device },
	{ "register", 1, CTL_BIT(CTL_OPT_GROUP) | CTL_BIT(CTL_OPT_NAME), ctl__cmd_register },
	{ "logs", 1, CTL_BIT(CTL_OPT_COUNT), ctl__cmd_logs },
	{ "delete", 1, 0, ctl__cmd_delete },
};

static int ctl__check_command(ctl_opts *o, const struct ctl_cmd **out)
{
	const struct ctl_cmd *cmd = NULL;

	for (size_t i = 0; i < sizeof ctl__cmds / sizeof ctl__cmds[0]; i++)
		if (strcmp(o->cmd, ctl__cmds[i].name) == 0)
			cmd = &ctl__cmds[i];
	if (!cmd)
		return ctl__usage_err("unknown command '%s'", o->cmd);
	unsigned stray = o->given & ~(cmd->opts | CTL_GLOBAL_OPTS);
	if (stray)
		return ctl__usage_err("option %s does not apply to '%s'",
				      ctl__opt_name(stray), cmd->name);
	if ((o->given & CTL_BIT(CTL_OPT_ONLINE)) && (o->given & CTL_BIT(CTL_OPT_OFFLINE)))
		return ctl__usage_err("give only one of --online and --offline");
	if (cmd->wants_id && !o->id_arg)
		return ctl__usage_err("'%s' needs a device ID", cmd->name);
	if (!cmd->wants_id && o->id_arg)
		return ctl__usage_err("unexpected argument '%s'", o->id_arg);
	*out = cmd;
	return cmd->wants_id ? ctl__check_id(o) : 0;
}

static int ctl__run(const ctl_opts *o, const struct ctl_cmd *cmd)
{
	ctl_client *c = NULL;
	int rc;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		ctl__err("cannot initialise libcurl");
		return CTL_EAPI;
	}
	rc = ctl__client_open(o, &c);
	if (rc == 0)
		rc = cmd->run(c, o);
	ctl__client_free(c);
	curl_global_cleanup();
	return rc;
}

int main(int argc, char **argv)
{
	ctl_opts o = { .online = -1 };
	const struct ctl_cmd *cmd = NULL;
	int rc = ctl__parse_args(argc, argv, &o);

	if (rc == 0 && ((o.given & CTL_BIT(CTL_OPT_HELP)) ||
			(o.cmd && strcmp(o.cmd, "help") == 0))) {
		fputs(ctl__usage, stdout);
		return 0;
	}
	if (rc == 0 && !o.cmd) {
		fputs(ctl__usage, stderr);
		return 2;
	}
	if (rc == 0)
		rc = ctl__check_command(&o, &cmd);
	tzset();
	if (rc == 0)
		rc = ctl__run(&o, cmd);
	if (fflush(stdout) != 0 && rc == 0) {
		ctl__err("cannot write the output: %s", strerror(errno));
		rc = CTL_EAPI;
	}
	return rc == 0 ? 0 : rc == CTL_EUSAGE ? 2 : 1;
}

/* tools/tenderctl.c -- the operator's command-line client for tenderd's HTTP API.
 * Owns: the parsed command line, one libcurl easy handle (reused so paging keeps
 * its connection), the admin token and every response body; for "logs -f", a
 * curl multi handle with one easy handle (one SSE stream) per device.
 * Threads: single-threaded; only main() drives it (the signal handler of
 * "logs -f" only sets a flag).
 * Output: results on stdout; every error on stderr as "tenderctl: ...", with the
 * API's own error shown as "tenderctl: <status> <code>: <message>".
 * Exit status: 0 ok, 1 API or network error, 2 usage error. */
#define _GNU_SOURCE
#include "logfmt.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
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
#define CTL_MAX_AGENT          ((size_t)1 << 20)
#define CTL_MAX_GROUP          64
#define CTL_MAX_COLS           8
#define CTL_SSE_MAX_LINE       ((size_t)1 << 20)
#define CTL_BACKOFF_MIN_MS     500L
#define CTL_BACKOFF_MAX_MS     10000L
#define CTL_POLL_MS            250L
#define CTL_CONNECT_TIMEOUT_S  30L

/* Every step returns 0 or one of these; main() turns them into the exit status. */
enum { CTL_EAPI = -1, CTL_EUSAGE = -2 };

static const char ctl__usage[] =
	"Usage: tenderctl [--url URL] [--cacert FILE] [--token TOKEN | --token-file FILE] COMMAND\n"
	"  devices [--online|--offline] [--hw HW] [--group G] [--limit N]   list devices (follows paging to the end unless --limit)\n"
	"  device ID                                    show one device (pretty JSON)\n"
	"  register ID [--group G] [--name NAME]        register a device; prints its id and secret\n"
	"  logs ID [-n N]                               print the device's log history in text form, newest last\n"
	"  logs -f (ID [ID...] | --group G) [-n N]\n"
	"                                               follow the devices' logs live until interrupted (SIGINT,\n"
	"                                               SIGTERM); -n N first prints each device's last N lines;\n"
	"                                               with several devices or --group each line starts with\n"
	"                                               the device id; a dropped stream is resumed where it\n"
	"                                               stopped (backoff 0.5 s to 10 s), with notices on stderr\n"
	"  delete ID                                    delete a device\n"
	"  deploy GROUP FILE                            deploy agent code (Lua) to a group; FILE - is stdin, at most 1 MiB\n"
	"  agent ID                                     show the device's agent\n"
	"  agent-restart ID                             restart the device's agent\n"
	"  agent-migrate ID [--worker N]                move the device's agent to worker N (default: the next worker)\n"
	"  flash-parts [--jedec HEX6]                   list the flash-parts table, or the parts with one JEDEC id\n"
	"  firmware                                     list firmware images, newest first\n"
	"  upload FILE --version V --hw HW[,HW...] [--requires JSON]\n"
	"                                               upload a firmware image; JSON is its requirements\n"
	"  rollout-create --firmware FWID (--devices ID,ID,... | --group G | --hw HW)\n"
	"      [--stages 10,50,100] [--start] [--allow-unknown-flash]\n"
	"                                               create a rollout (paused unless --start)\n"
	"  rollout RID                                  show a rollout's state, stage and device counts\n"
	"  plan RID                                     the dry run: each device's decision and reason\n"
	"  pause RID | resume RID | abort RID           steer a rollout; prints its new state\n"
	"\n"
	"ID is 16 hex digits; RID and FWID are rollout and firmware numbers.\n"
	"Options may come before or after the command.\n"
	"URL defaults to $TENDER_URL, else " CTL_DEFAULT_URL "; an https URL's certificate is\n"
	"checked against the system's CAs, or only the CA certificate(s) in --cacert FILE (PEM).\n"
	"The token comes from --token, else $TENDER_TOKEN, else --token-file,\n"
	"else $TENDER_TOKEN_FILE, else " CTL_DEFAULT_TOKEN_FILE ".\n"
	"Exit status: 0 ok, 1 API or network error, 2 usage error.\n";

/* ---- command line ------------------------------------------------------- */

enum ctl_optid {
	CTL_OPT_URL, CTL_OPT_TOKEN, CTL_OPT_TOKEN_FILE, CTL_OPT_HELP,
	CTL_OPT_ONLINE, CTL_OPT_OFFLINE, CTL_OPT_HW, CTL_OPT_GROUP,
	CTL_OPT_LIMIT, CTL_OPT_NAME, CTL_OPT_COUNT, CTL_OPT_JEDEC,
	CTL_OPT_WORKER, CTL_OPT_VERSION, CTL_OPT_REQUIRES, CTL_OPT_FIRMWARE,
	CTL_OPT_DEVICES, CTL_OPT_STAGES, CTL_OPT_START, CTL_OPT_ALLOW_UNKNOWN,
	CTL_OPT_FOLLOW, CTL_OPT_CACERT,
};
#define CTL_BIT(id) (1u << (id))
/* Accepted with any command; the rest must belong to the command given. */
#define CTL_GLOBAL_OPTS (CTL_BIT(CTL_OPT_URL) | CTL_BIT(CTL_OPT_TOKEN) | \
			 CTL_BIT(CTL_OPT_TOKEN_FILE) | CTL_BIT(CTL_OPT_HELP) | CTL_BIT(CTL_OPT_CACERT))

static const struct ctl_optdef {
	const char *name;
	enum ctl_optid id;
	int has_arg;
} ctl__optdefs[] = {
	{ "--url", CTL_OPT_URL, 1 },       { "--token", CTL_OPT_TOKEN, 1 },
	{ "--token-file", CTL_OPT_TOKEN_FILE, 1 }, { "--cacert", CTL_OPT_CACERT, 1 },
	{ "--help", CTL_OPT_HELP, 0 },     { "-h", CTL_OPT_HELP, 0 },
	{ "--online", CTL_OPT_ONLINE, 0 }, { "--offline", CTL_OPT_OFFLINE, 0 },
	{ "--hw", CTL_OPT_HW, 1 },         { "--group", CTL_OPT_GROUP, 1 },
	{ "--limit", CTL_OPT_LIMIT, 1 },   { "--name", CTL_OPT_NAME, 1 },
	{ "-n", CTL_OPT_COUNT, 1 },         { "--jedec", CTL_OPT_JEDEC, 1 },
	{ "--worker", CTL_OPT_WORKER, 1 }, { "--version", CTL_OPT_VERSION, 1 },
	{ "--requires", CTL_OPT_REQUIRES, 1 }, { "--firmware", CTL_OPT_FIRMWARE, 1 },
	{ "--devices", CTL_OPT_DEVICES, 1 }, { "--stages", CTL_OPT_STAGES, 1 },
	{ "--start", CTL_OPT_START, 0 },
	{ "--allow-unknown-flash", CTL_OPT_ALLOW_UNKNOWN, 0 },
	{ "-f", CTL_OPT_FOLLOW, 0 },       { "--follow", CTL_OPT_FOLLOW, 0 },
};
#define CTL_NOPTDEFS (sizeof ctl__optdefs / sizeof ctl__optdefs[0])

typedef struct ctl_opts {
	const char *url, *token, *token_file;	/* borrowed from argv */
	const char *cmd;			/* the positional arguments */
	const char **args;			/* owned array (argc slots); the
						 * strings are borrowed from argv */
	int nargs;
	const char *hw, *group, *name;
	const char *version, *requires, *devices, *stages;
	int online;				/* -1 either, 0 offline, 1 online */
	long limit;				/* devices to list; 0 for all */
	long count;				/* newest log lines; 0 for all */
	long worker;				/* --worker; -1 lets the server pick */
	long long firmware;			/* --firmware */
	long long num;				/* a RID argument, checked */
	unsigned given;				/* CTL_BIT(optid) of each option seen */
	char id[CTL_ID_LEN + 1];		/* an ID argument, checked and lower-cased */
	char (*ids)[CTL_ID_LEN + 1];		/* owned: logs -f's IDs, checked, lower-cased
						 * and without repeats; NULL with --group */
	size_t nids;
	char jedec[7];				/* --jedec, checked and lower-cased */
	json_t *body;				/* owned: the request body built by the
						 * command's check, or NULL */
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

static int ctl__parse_range(const char *opt, const char *val, long min, long max, long *out)
{
	char *end;

	errno = 0;
	long v = strtol(val, &end, 10);
	if (errno || end == val || *end || v < min || v > max)
		return ctl__usage_err("%s: '%s' is not a number from %ld to %ld",
				      opt, val, min, max);
	*out = v;
	return 0;
}

static int ctl__parse_long(const char *opt, const char *val, long *out)
{
	return ctl__parse_range(opt, val, 1, CTL_MAX_COUNT, out);
}

/* Rollout and firmware ids: plain decimal digits only, so that nothing but a
 * number ever reaches the server's path or body. */
static int ctl__parse_num_id(const char *what, const char *val, long long *out)
{
	size_t len = strlen(val);
	long long v;

	if (len == 0 || len > 18 || strspn(val, "0123456789") != len ||
	    (v = strtoll(val, NULL, 10)) < 1)
		return ctl__usage_err("invalid %s '%s': expected a positive number", what, val);
	*out = v;
	return 0;
}

/* "ef4018", "EF4018" or "0xef4018" -> "ef4018" in out (7 bytes). */
static int ctl__parse_jedec(const char *val, char *out)
{
	const char *s = val;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		s += 2;
	if (strlen(s) != 6 || strspn(s, "0123456789abcdefABCDEF") != 6)
		return ctl__usage_err("--jedec: '%s' is not a JEDEC id: expected 6 hex digits, "
				      "like ef4018", val);
	for (size_t i = 0; i <= 6; i++)
		out[i] = (char)tolower((unsigned char)s[i]);
	return 0;
}

/* Refuses a malformed device id here so a typo never reaches the server as a
 * path; out (CTL_ID_LEN + 1 bytes) gets it lower-cased. */
static int ctl__device_id(const char *s, char *out)
{
	size_t len = strlen(s);

	if (len != CTL_ID_LEN || strspn(s, "0123456789abcdefABCDEF") != len)
		return ctl__usage_err("invalid device id '%s': expected %d hex digits",
				      s, CTL_ID_LEN);
	for (size_t i = 0; i <= len; i++)
		out[i] = (char)tolower((unsigned char)s[i]);
	return 0;
}

/* --cacert: set once while parsing, read by every transfer. */
static const char *ctl__cacert;

static int ctl__set_opt(ctl_opts *o, const struct ctl_optdef *d, const char *val)
{
	o->given |= CTL_BIT(d->id);
	switch (d->id) {
	case CTL_OPT_URL:        o->url = val; break;
	case CTL_OPT_TOKEN:      o->token = val; break;
	case CTL_OPT_TOKEN_FILE: o->token_file = val; break;
	case CTL_OPT_CACERT:     ctl__cacert = val; break;
	case CTL_OPT_HELP:       break;
	case CTL_OPT_ONLINE:     o->online = 1; break;
	case CTL_OPT_OFFLINE:    o->online = 0; break;
	case CTL_OPT_HW:         o->hw = val; break;
	case CTL_OPT_GROUP:      o->group = val; break;
	case CTL_OPT_NAME:       o->name = val; break;
	case CTL_OPT_LIMIT:      return ctl__parse_long(d->name, val, &o->limit);
	case CTL_OPT_COUNT:      return ctl__parse_long(d->name, val, &o->count);
	case CTL_OPT_JEDEC:      return ctl__parse_jedec(val, o->jedec);
	case CTL_OPT_WORKER:     return ctl__parse_range(d->name, val, 0, CTL_MAX_COUNT, &o->worker);
	case CTL_OPT_VERSION:    o->version = val; break;
	case CTL_OPT_REQUIRES:   o->requires = val; break;
	case CTL_OPT_FIRMWARE:   return ctl__parse_num_id("firmware id", val, &o->firmware);
	case CTL_OPT_DEVICES:    o->devices = val; break;
	case CTL_OPT_STAGES:     o->stages = val; break;
	case CTL_OPT_START:      break;
	case CTL_OPT_ALLOW_UNKNOWN: break;
	case CTL_OPT_FOLLOW:     break;
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

/* o->args has a slot for every argument, so it cannot overflow; the command
 * decides how many it takes. */
static void ctl__add_positional(ctl_opts *o, const char *arg)
{
	if (!o->cmd)
		o->cmd = arg;
	else
		o->args[o->nargs++] = arg;
}

/* One pass over argv: options may sit anywhere, "--" ends them. */
static int ctl__parse_args(int argc, char **argv, ctl_opts *o)
{
	int only_positional = 0, rc = 0;

	if (!(o->args = calloc((size_t)argc, sizeof *o->args)))
		return ctl__oom();
	for (int i = 1; i < argc && rc == 0; i++) {
		const char *arg = argv[i], *val;

		if (only_positional || arg[0] != '-' || arg[1] == '\0') {
			ctl__add_positional(o, arg);
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

/* Every name of bits, as "--a, --b or --c", into buf. */
static const char *ctl__opt_names(unsigned bits, char *buf, size_t cap)
{
	size_t len = 0, n = 0, total = 0;

	for (size_t i = 0; i < CTL_NOPTDEFS; i++)
		total += (bits & CTL_BIT(ctl__optdefs[i].id)) != 0;
	buf[0] = '\0';
	for (size_t i = 0; i < CTL_NOPTDEFS && len < cap; i++) {
		if (!(bits & CTL_BIT(ctl__optdefs[i].id)))
			continue;
		n++;
		len += (size_t)snprintf(buf + len, cap - len, "%s%s",
					n == 1 ? "" : n == total ? " or " : ", ",
					ctl__optdefs[i].name);
	}
	return buf;
}

/* A list option's items: "a,b,c", none of them empty. */
enum ctl_list { CTL_LIST_NAMES, CTL_LIST_DEVICES, CTL_LIST_PERCENTS };

static int ctl__list_item(const char *opt, const char *item, enum ctl_list kind, json_t *arr)
{
	char id[CTL_ID_LEN + 1];
	json_t *v = NULL;
	long pct;

	if (!*item)
		return ctl__usage_err("%s: the list has an empty item", opt);
	switch (kind) {
	case CTL_LIST_DEVICES:
		if (ctl__device_id(item, id) < 0)
			return CTL_EUSAGE;
		v = json_string(id);
		break;
	case CTL_LIST_PERCENTS:
		if (ctl__parse_range(opt, item, 1, 100, &pct) < 0)
			return CTL_EUSAGE;
		v = json_integer(pct);
		break;
	case CTL_LIST_NAMES:
		if (!(v = json_string(item)))
			return ctl__usage_err("%s: '%s' is not valid UTF-8", opt, item);
		break;
	}
	if (!v || json_array_append_new(arr, v) < 0)
		return ctl__oom();
	return 0;
}

/* *out is owned: caller json_decref()s it; NULL on error. */
static int ctl__split_list(const char *opt, const char *list, enum ctl_list kind, json_t **out)
{
	json_t *arr = json_array();
	int rc = arr ? 0 : ctl__oom();

	for (const char *p = list; rc == 0; p++) {
		size_t n = strcspn(p, ",");
		char *item = strndup(p, n);

		rc = item ? ctl__list_item(opt, item, kind, arr) : ctl__oom();
		free(item);
		p += n;
		if (!*p)
			break;
	}
	if (rc < 0) {
		json_decref(arr);
		arr = NULL;
	}
	*out = arr;
	return rc;
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

/* A request body: len bytes of data, or a multipart form. */
typedef struct ctl_body {
	const char *type_hdr;		/* "Content-Type: ..."; "Content-Type:" sends none */
	const char *data;		/* borrowed */
	size_t len;
	curl_mime *mime;		/* borrowed; curl sets the type and boundary */
} ctl_body;

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

static int ctl__header_list(const ctl_client *c, const char *type_hdr, struct curl_slist **hdrs)
{
	const char *lines[] = { c->auth, "Accept: application/json", type_hdr };

	for (size_t i = 0; i < sizeof lines / sizeof lines[0] && lines[i]; i++) {
		struct curl_slist *l = curl_slist_append(*hdrs, lines[i]);
		if (!l)
			return ctl__oom();
		*hdrs = l;
	}
	return 0;
}

/* Only http and https, whatever a redirect or a typo in --url says; https
 * verified against --cacert when given. */
static void ctl__limit_protocols(CURL *h)
{
	if (ctl__cacert)
		curl_easy_setopt(h, CURLOPT_CAINFO, ctl__cacert);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
}

/* curl_easy_reset() keeps the connection cache, so pages reuse one socket. */
static int ctl__setup(ctl_client *c, const char *method, const char *url,
		      const ctl_body *body, ctl_buf *resp, struct curl_slist **hdrs)
{
	CURL *h = c->curl;

	curl_easy_reset(h);
	c->errbuf[0] = '\0';
	if (ctl__header_list(c, body ? body->type_hdr : NULL, hdrs) < 0)
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
	ctl__limit_protocols(h);
	if (body && body->mime) {
		curl_easy_setopt(h, CURLOPT_MIMEPOST, body->mime);
	} else if (body) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body->data);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
	}
	/* A body makes curl POST; any other method is named. */
	if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
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
 * HTML page, say) is summarised rather than dumped.  dev, if not NULL, names
 * the device the answer is about ("tenderctl: <dev>: 404 ..."). */
static void ctl__report_status(const ctl_client *c, const char *dev, long status,
			       const ctl_buf *resp)
{
	json_t *root = resp->len ? json_loadb(resp->data, resp->len, 0, NULL) : NULL;
	json_t *e = json_object_get(root, "error");
	const char *code = json_string_value(json_object_get(e, "code"));
	const char *msg = json_string_value(json_object_get(e, "message"));

	fprintf(stderr, "tenderctl: %s%s%ld ", dev ? dev : "", dev ? ": " : "", status);
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

/* Sends one request; body is borrowed and may be NULL (a POST then sends an
 * empty one, with a Content-Length as proxies want).  On a 2xx answer stores
 * the parsed body in *out (owned: caller json_decref; NULL for an empty body
 * unless need_object).  Anything else is reported on stderr as CTL_EAPI. */
static int ctl__send(ctl_client *c, const char *method, const char *url,
		     const ctl_body *body, int need_object, json_t **out)
{
	static const ctl_body empty = { "Content-Type:", "", 0, NULL };
	ctl_buf resp = { 0 };
	struct curl_slist *hdrs = NULL;
	long status = 0;
	int rc = CTL_EAPI;

	*out = NULL;
	if (!url) {
		rc = ctl__oom();
		goto out;
	}
	if (!body && strcmp(method, "POST") == 0)
		body = &empty;
	if (ctl__setup(c, method, url, body, &resp, &hdrs) < 0)
		goto out;
	CURLcode cc = curl_easy_perform(c->curl);
	if (cc != CURLE_OK) {
		ctl__report_transport(c, cc, &resp);
		goto out;
	}
	curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status > 299)
		ctl__report_status(c, NULL, status, &resp);
	else
		rc = ctl__parse_body(&resp, need_object, out);
out:
	curl_slist_free_all(hdrs);
	free(resp.data);
	return rc;
}

/* ctl__send() with a JSON body (borrowed, may be NULL). */
static int ctl__call(ctl_client *c, const char *method, const char *url,
		     const json_t *body, int need_object, json_t **out)
{
	char *payload = NULL;

	*out = NULL;
	if (body && !(payload = json_dumps(body, JSON_COMPACT)))
		return ctl__oom();
	ctl_body b = { "Content-Type: application/json", payload, payload ? strlen(payload) : 0, NULL };
	int rc = ctl__send(c, method, url, payload ? &b : NULL, need_object, out);
	free(payload);
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

static const char *ctl__str_or_dash(json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));

	return s && *s ? s : "-";
}

static const char *ctl__yes_no(json_t *v)
{
	return json_is_true(v) ? "yes" : json_is_false(v) ? "no" : "-";
}

static void ctl__fill_row(ctl_row *r, json_t *dev)
{
	json_t *online = json_object_get(dev, "online");
	const char *seen = json_string_value(json_object_get(dev, "last_seen"));
	int64_t ms;

	r->cell[CTL_COL_ID] = ctl__str_or_dash(dev, "id");
	r->cell[CTL_COL_ONLINE] = ctl__yes_no(online);
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
static void ctl__print_cells(const char *const *cell, const size_t *width, size_t ncols)
{
	for (size_t i = 0; i < ncols; i++) {
		ctl__fput_clean(stdout, cell[i]);
		if (i + 1 < ncols)
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
	ctl__print_cells(ctl__headers, width, CTL_NCOLS);
	for (size_t r = 0; r < n; r++)
		ctl__print_cells(rows[r].cell, width, CTL_NCOLS);
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

/* count is how many of the newest events are wanted, 0 for all. */
static int ctl__logs_page(ctl_client *c, const char *id, long count, ctl_logwalk *w)
{
	char path[64], limit[24], before[24];
	long want = CTL_LOG_PAGE;
	json_t *root;

	if (count && count - (long)w->total < want)
		want = count - (long)w->total;
	snprintf(path, sizeof path, "/v1/devices/%s/logs", id);
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
static void ctl__print_event_raw(const char *prefix, const char *ts, const char *type,
				 const char *msg)
{
	const char *label = logfmt_type_label(type);

	fputs(prefix, stdout);
	ctl__fput_clean(stdout, ts ? ts : "-");
	fputs(" [", stdout);
	ctl__fput_clean(stdout, label ? label : type);
	fputs("] ", stdout);
	ctl__fput_clean(stdout, msg);
	putchar('\n');
}

/* One line per event, after prefix: a message's own newlines are neutralised
 * by ctl__fput_clean, and an unparsable "ts" still shows the event. */
static int ctl__print_event(json_t *ev, const char *prefix)
{
	const char *ts = json_string_value(json_object_get(ev, "ts"));
	const char *type = json_string_value(json_object_get(ev, "type"));
	const char *msg = json_string_value(json_object_get(ev, "msg"));
	int64_t ms;

	type = type ? type : "?";
	msg = msg ? msg : "";
	if (!ts || logfmt_parse_iso8601(ts, &ms) < 0) {
		ctl__print_event_raw(prefix, ts, type, msg);
		return 0;
	}
	/* Room for the whole message: logfmt_text truncates to fit cap. */
	size_t cap = strlen(type) + strlen(msg) + 64;
	char *line = malloc(cap);
	if (!line)
		return ctl__oom();
	if (logfmt_text(line, cap, ms, type, msg) >= 0) {
		fputs(prefix, stdout);
		ctl__fput_clean(stdout, line);
		putchar('\n');
	} else {
		ctl__print_event_raw(prefix, ts, type, msg);
	}
	free(line);
	return 0;
}

static int ctl__print_logs(const ctl_logwalk *w, long count, const char *prefix)
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
			if (ctl__print_event(ev, prefix) < 0)
				return CTL_EAPI;
		}
	}
	return 0;
}

/* Prints the device's newest count events (0: all), each line after prefix;
 * *newest gets the id of the newest one, or -1 when the log is empty. */
static int ctl__history(ctl_client *c, const char *id, long count, const char *prefix,
			long long *newest)
{
	ctl_logwalk w = { .pages = json_array(), .more = 1 };
	int rc = w.pages ? 0 : ctl__oom();

	*newest = -1;
	while (rc == 0 && w.more && !(count && w.total >= (size_t)count))
		rc = ctl__logs_page(c, id, count, &w);
	if (rc == 0)
		rc = ctl__print_logs(&w, count, prefix);
	/* The first page is the newest, oldest event first. */
	json_t *first = json_array_get(w.pages, 0);
	json_t *last = json_array_get(first, json_array_size(first) - 1);
	json_t *last_id = json_object_get(last, "id");
	if (rc == 0 && json_is_integer(last_id))
		*newest = (long long)json_integer_value(last_id);
	json_decref(w.pages);
	return rc;
}

static int ctl__follow(ctl_client *c, const ctl_opts *o);

static int ctl__cmd_logs(ctl_client *c, const ctl_opts *o)
{
	long long newest;

	if (o->given & CTL_BIT(CTL_OPT_FOLLOW))
		return ctl__follow(c, o);
	return ctl__history(c, o->id, o->count, "", &newest);
}

/* logs without -f takes one ID; with -f, IDs or --group. */
static int ctl__check_logs(ctl_opts *o)
{
	int follow = (o->given & CTL_BIT(CTL_OPT_FOLLOW)) != 0;
	int group = (o->given & CTL_BIT(CTL_OPT_GROUP)) != 0;

	if (!follow) {
		if (group)
			return ctl__usage_err("option --group applies to 'logs' only with -f");
		if (o->nargs < 1)
			return ctl__usage_err("'logs' needs a device ID");
		if (o->nargs > 1)
			return ctl__usage_err("unexpected argument '%s' (several IDs need -f)",
					      o->args[1]);
		return ctl__device_id(o->args[0], o->id);
	}
	if (group && o->nargs)
		return ctl__usage_err("'logs -f' takes device IDs or --group, not both");
	if (!group && !o->nargs)
		return ctl__usage_err("'logs -f' needs device IDs or --group");
	if (group)
		return 0;
	if (!(o->ids = calloc((size_t)o->nargs, sizeof *o->ids)))
		return ctl__oom();
	for (int i = 0; i < o->nargs; i++) {
		char id[CTL_ID_LEN + 1];
		size_t j;

		if (ctl__device_id(o->args[i], id) < 0)
			return CTL_EUSAGE;
		for (j = 0; j < o->nids && strcmp(o->ids[j], id) != 0; j++)
			;
		if (j == o->nids)
			memcpy(o->ids[o->nids++], id, sizeof id);
	}
	return 0;
}

/* ---- tables and values -------------------------------------------------- */

/* Rows of formatted cells, printed with each column fitted to its widest. */
typedef struct ctl_table {
	size_t ncols;			/* at most CTL_MAX_COLS */
	size_t ncells, cap;
	char **cell;			/* owned, as is each cell: row after row */
	int oom;
} ctl_table;

static void ctl__cell(ctl_table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Adds the next cell; running out of memory is reported by ctl__table_print(). */
static void ctl__cell(ctl_table *t, const char *fmt, ...)
{
	char *text;
	va_list ap;

	if (t->oom)
		return;
	if (t->ncells == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		char **p = realloc(t->cell, cap * sizeof *p);
		if (!p) {
			t->oom = 1;
			return;
		}
		t->cell = p;
		t->cap = cap;
	}
	va_start(ap, fmt);
	int n = vasprintf(&text, fmt, ap);
	va_end(ap);
	if (n < 0)
		t->oom = 1;
	else
		t->cell[t->ncells++] = text;
}

static void ctl__table_free(ctl_table *t)
{
	for (size_t i = 0; i < t->ncells; i++)
		free(t->cell[i]);
	free(t->cell);
}

/* The header line, then a line per row. */
static int ctl__table_print(const ctl_table *t, const char *const *headers)
{
	size_t width[CTL_MAX_COLS];

	if (t->oom)
		return ctl__oom();
	for (size_t i = 0; i < t->ncols; i++)
		width[i] = ctl__text_width(headers[i]);
	for (size_t i = 0; i < t->ncells; i++) {
		size_t w = ctl__text_width(t->cell[i]);
		if (w > width[i % t->ncols])
			width[i % t->ncols] = w;
	}
	ctl__print_cells(headers, width, t->ncols);
	for (size_t i = 0; i + t->ncols <= t->ncells; i += t->ncols)
		ctl__print_cells((const char *const *)t->cell + i, width, t->ncols);
	return 0;
}

/* An integer as text in buf, or "-" for anything else. */
static const char *ctl__int_text(json_t *v, char *buf, size_t cap)
{
	if (!json_is_integer(v))
		return "-";
	snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	return buf;
}

/* Binary units, as flash sizes are quoted: 16777216 -> "16 MB",
 * 301234 -> "294.2 KB"; "-" for anything but a byte count. */
static const char *ctl__human_size(json_t *v, char *buf, size_t cap)
{
	static const char *const units[] = { "B", "KB", "MB", "GB", "TB" };
	json_int_t bytes = json_integer_value(v);
	size_t u = 0;

	if (!json_is_integer(v) || bytes < 0)
		return "-";
	double size = (double)bytes;
	while (size >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
		size /= 1024;
		u++;
	}
	if (size == (double)(long long)size)
		snprintf(buf, cap, "%lld %s", (long long)size, units[u]);
	else
		snprintf(buf, cap, "%.1f %s", size, units[u]);
	return buf;
}

/* Any JSON value on one line: null, missing and "" as "-", booleans as yes/no. */
static void ctl__print_value(json_t *v)
{
	char num[32];

	if (json_is_string(v) && *json_string_value(v)) {
		ctl__fput_clean(stdout, json_string_value(v));
	} else if (json_is_boolean(v)) {
		fputs(ctl__yes_no(v), stdout);
	} else if (json_is_integer(v)) {
		fputs(ctl__int_text(v, num, sizeof num), stdout);
	} else if (json_is_real(v)) {
		printf("%g", json_real_value(v));
	} else if (json_is_object(v) || json_is_array(v)) {
		char *text = json_dumps(v, JSON_COMPACT);
		ctl__fput_clean(stdout, text ? text : "?");
		free(text);
	} else {
		fputs("-", stdout);
	}
}

static int ctl__unexpected(const char *what)
{
	ctl__err("unexpected response from the server: %s", what);
	return CTL_EAPI;
}

/* ---- following logs ----------------------------------------------------- */

/* Set by SIGINT and SIGTERM, and nothing else is done in the handler; the
 * loop looks at it at least every CTL_POLL_MS (a signal also cuts the wait). */
static volatile sig_atomic_t ctl__stop;

static void ctl__on_signal(int sig)
{
	(void)sig;
	ctl__stop = 1;
}

enum ctl_sstate { CTL_SS_WAIT, CTL_SS_OPEN, CTL_SS_DEAD };

/* One device's SSE stream, across its reconnections. */
typedef struct ctl_stream {
	char id[CTL_ID_LEN + 1];
	int prefix;			/* its lines start with "<id> " */
	enum ctl_sstate state;		/* WAIT: for retry_at; DEAD: given up */
	CURL *curl;			/* owned; in the multi handle while OPEN */
	struct curl_slist *hdrs;	/* owned: the current connection's headers */
	char errbuf[CURL_ERROR_SIZE];
	long long last_id;		/* the newest event id handled; -1 before any */
	int64_t retry_at;		/* monotonic ms of the next attempt */
	long backoff_ms;		/* the wait after the next failure */
	int attempts;			/* connections started */
	int failures;			/* failed attempts in a row: the cause is told once */
	int oom;
	/* The current connection. */
	int checked, is_sse;		/* its answer was looked at; it is a log stream */
	int closed_told;		/* the server said why it ends the stream */
	ctl_buf err;			/* owned: the body of an answer that is not a stream */
	char *line;			/* owned: the line being read, NUL-terminated */
	size_t len, cap;
	int cut, after_cr;		/* line longer than the cap; the last byte was CR */
	char *data;			/* owned: the event's data lines, each ending in '\n' */
	size_t dlen, dcap;
	int has_data;
	long long ev_id;		/* the event's id field; -1 if none */
	char event[32];			/* the event's type; "" is "message" */
} ctl_stream;

typedef struct ctl_follow {
	ctl_client *c;			/* borrowed: base URL, token, history calls */
	CURLM *multi;			/* owned */
	ctl_stream *s;			/* owned, n of them */
	size_t n;
} ctl_follow;

static int64_t ctl__now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void ctl__dev_err(const ctl_stream *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* "tenderctl: <device>: ..." on stderr, after the lines stdout holds so far. */
static void ctl__dev_err(const ctl_stream *s, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	va_start(ap, fmt);
	fprintf(stderr, "tenderctl: %s: ", s->id);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* Room for need bytes in *buf (owned, *cap bytes); -1 when out of memory. */
static int ctl__reserve(char **buf, size_t *cap, size_t need)
{
	size_t ncap = *cap ? *cap : 256;

	if (need <= *cap)
		return 0;
	while (ncap < need)
		ncap *= 2;
	char *p = realloc(*buf, ncap);
	if (!p)
		return -1;
	*buf = p;
	*cap = ncap;
	return 0;
}

/* Each '\n'-ended line of text (cut into pieces here) on f after lead. */
static void ctl__print_lines(FILE *f, const char *lead, char *text)
{
	for (char *line = text, *nl; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		*nl = '\0';
		fputs(lead, f);
		ctl__fput_clean(f, line);
		fputc('\n', f);
	}
}

/* The answer's status and type, on its first bytes: only a 2xx
 * text/event-stream is read as a stream. */
static void ctl__sse_check(ctl_stream *s)
{
	long status = 0;
	const char *type = NULL;

	curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(s->curl, CURLINFO_CONTENT_TYPE, &type);
	s->checked = 1;
	s->is_sse = status >= 200 && status <= 299 && type &&
		    strncasecmp(type, "text/event-stream", 17) == 0;
	if (s->is_sse)
		s->failures = 0;
}

/* Appends to the line; beyond CTL_SSE_MAX_LINE bytes the rest is dropped. */
static int ctl__sse_append(ctl_stream *s, const char *p, size_t n)
{
	size_t room = CTL_SSE_MAX_LINE - s->len;

	if (n > room) {
		n = room;
		s->cut = 1;
	}
	if (ctl__reserve(&s->line, &s->cap, s->len + n + 1) < 0)
		return -1;
	memcpy(s->line + s->len, p, n);
	s->len += n;
	s->line[s->len] = '\0';
	return 0;
}

/* A data field adds a line to the event's data, which is capped as a line is. */
static int ctl__sse_data(ctl_stream *s, const char *val)
{
	size_t n = strlen(val);
	size_t room = s->dlen < CTL_SSE_MAX_LINE ? CTL_SSE_MAX_LINE - s->dlen : 0;

	if (room == 0)
		return 0;
	if (n + 1 > room)
		n = room - 1;
	if (ctl__reserve(&s->data, &s->dcap, s->dlen + n + 2) < 0)
		return -1;
	memcpy(s->data + s->dlen, val, n);
	s->dlen += n;
	s->data[s->dlen++] = '\n';
	s->data[s->dlen] = '\0';
	s->has_data = 1;
	return 0;
}

/* An id field: tenderd's ids are decimal; anything else is no id. */
static long long ctl__sse_id(const char *val)
{
	size_t len = strlen(val);

	if (len == 0 || len > 18 || strspn(val, "0123456789") != len)
		return -1;
	return strtoll(val, NULL, 10);
}

/* A blank line ends an event.  A message is printed unless its id was
 * handled already (then the server is repeating itself); a state_change goes
 * to stderr; other events are ignored.  Only then is the id remembered, so
 * an event cut short by a broken connection is asked for again. */
static void ctl__sse_dispatch(ctl_stream *s)
{
	const char *type = s->event[0] ? s->event : "message";
	char lead[CTL_ID_LEN + 16];

	if (s->has_data && strcmp(type, "message") == 0) {
		if (s->ev_id < 0 || s->ev_id > s->last_id) {
			snprintf(lead, sizeof lead, "%s%s", s->prefix ? s->id : "",
				 s->prefix ? " " : "");
			ctl__print_lines(stdout, lead, s->data);
		}
	} else if (s->has_data && strcmp(type, "state_change") == 0) {
		if (strncmp(s->data, "closed", 6) == 0)
			s->closed_told = 1;
		fflush(stdout);
		snprintf(lead, sizeof lead, "tenderctl: %s: ", s->id);
		ctl__print_lines(stderr, lead, s->data);
	}
	if (s->ev_id > s->last_id)
		s->last_id = s->ev_id;
	s->ev_id = -1;
	s->event[0] = '\0';
	s->dlen = 0;
	s->has_data = 0;
}

/* One whole line: a field ("name: value", one space after the colon
 * dropped), a comment (":..."), or a blank line. */
static int ctl__sse_line(ctl_stream *s)
{
	const char *line = s->line, *colon, *val;
	size_t flen;
	int rc = 0;

	if (s->cut) {
		ctl__dev_err(s, "a line longer than %zu MiB was cut short", CTL_SSE_MAX_LINE >> 20);
		s->cut = 0;
	}
	if (s->len == 0) {
		ctl__sse_dispatch(s);
		return 0;
	}
	if (line[0] == ':')
		goto out;
	colon = strchr(line, ':');
	flen = colon ? (size_t)(colon - line) : strlen(line);
	val = colon ? colon + 1 : "";
	if (*val == ' ')
		val++;
	if (flen == 4 && memcmp(line, "data", 4) == 0)
		rc = ctl__sse_data(s, val);
	else if (flen == 5 && memcmp(line, "event", 5) == 0)
		snprintf(s->event, sizeof s->event, "%s", val);
	else if (flen == 2 && memcmp(line, "id", 2) == 0)
		s->ev_id = ctl__sse_id(val);
	/* "retry" and unknown fields are ignored: the backoff is ours. */
out:
	s->len = 0;
	return rc;
}

/* Lines end in LF, CRLF or CR and may be split anywhere between calls. */
static size_t ctl__sse_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	ctl_stream *s = userdata;
	size_t n = size * nmemb;
	const char *p = ptr, *end = ptr + n;

	if (!s->checked)
		ctl__sse_check(s);
	if (!s->is_sse)
		return ctl__write_cb(ptr, size, nmemb, &s->err);
	s->backoff_ms = CTL_BACKOFF_MIN_MS;	/* data arrived */
	while (p < end) {
		const char *eol = p;

		if (s->after_cr) {
			s->after_cr = 0;
			if (*p == '\n') {
				p++;
				continue;
			}
		}
		while (eol < end && *eol != '\n' && *eol != '\r')
			eol++;
		if (ctl__sse_append(s, p, (size_t)(eol - p)) < 0)
			goto oom;
		if (eol == end)
			break;
		s->after_cr = *eol == '\r';
		if (ctl__sse_line(s) < 0)
			goto oom;
		p = eol + 1;
	}
	return n;
oom:
	s->oom = 1;
	return 0;
}

/* The easy handle is set up once and reused for every reconnection.  A
 * stream is idle while its device is, so there is no overall timeout; TCP
 * keepalive notices a server that vanished without closing. */
static int ctl__stream_init(ctl_follow *f, ctl_stream *s, const char *id, int prefix,
			    long long last_id)
{
	const ctl_kv q[] = { { "follow", "1" }, { "format", "text" } };
	char path[64];

	snprintf(s->id, sizeof s->id, "%s", id);
	s->prefix = prefix;
	s->last_id = last_id;
	s->ev_id = -1;
	s->backoff_ms = CTL_BACKOFF_MIN_MS;
	s->state = CTL_SS_WAIT;
	snprintf(path, sizeof path, "/v1/devices/%s/logs", id);
	char *url = ctl__url(f->c, path, q, sizeof q / sizeof q[0]);
	if (!url)
		return ctl__oom();
	CURL *h = s->curl = curl_easy_init();
	if (!h) {
		free(url);
		ctl__err("cannot initialise libcurl");
		return CTL_EAPI;
	}
	curl_easy_setopt(h, CURLOPT_URL, url);
	free(url);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, s->errbuf);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, CTL_CONNECT_TIMEOUT_S);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 30L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 10L);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "tenderctl");
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, ctl__sse_write_cb);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
	ctl__limit_protocols(h);
	return 0;
}

/* Opens a connection, resuming after last_id when there is one. */
static int ctl__stream_start(ctl_follow *f, ctl_stream *s)
{
	char last[48] = "";
	struct curl_slist *hdrs = NULL;

	if (s->last_id > 0)
		snprintf(last, sizeof last, "Last-Event-ID: %lld", s->last_id);
	const char *lines[] = { f->c->auth, "Accept: text/event-stream", last };
	for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
		struct curl_slist *l = lines[i][0] ? curl_slist_append(hdrs, lines[i]) : hdrs;
		if (!l) {
			curl_slist_free_all(hdrs);
			return ctl__oom();
		}
		hdrs = l;
	}
	if (s->attempts++ > 0)
		ctl__dev_err(s, "reconnecting");
	curl_slist_free_all(s->hdrs);
	s->hdrs = hdrs;
	curl_easy_setopt(s->curl, CURLOPT_HTTPHEADER, hdrs);
	s->checked = s->is_sse = s->closed_told = 0;
	free(s->err.data);
	memset(&s->err, 0, sizeof s->err);
	s->len = s->dlen = 0;
	s->cut = s->after_cr = s->has_data = 0;
	s->ev_id = -1;
	s->event[0] = '\0';
	s->errbuf[0] = '\0';
	if (curl_multi_add_handle(f->multi, s->curl) != CURLM_OK) {
		ctl__err("cannot start a transfer");
		return CTL_EAPI;
	}
	s->state = CTL_SS_OPEN;
	return 0;
}

/* A connection ended: tells why (once while it keeps failing) and schedules
 * the next one, or gives the device up when the server refuses it for good
 * (no such device, a bad token, not a log stream). */
static int ctl__stream_done(ctl_follow *f, ctl_stream *s, CURLcode cc)
{
	const char *why = s->errbuf[0] ? s->errbuf : curl_easy_strerror(cc);
	long status = 0;

	curl_multi_remove_handle(f->multi, s->curl);
	s->state = CTL_SS_WAIT;
	if (s->oom)
		return ctl__oom();
	if (!s->checked)
		ctl__sse_check(s);
	curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
	if (s->is_sse && cc == CURLE_OK) {
		if (!s->closed_told)
			ctl__dev_err(s, "the server ended the stream");
	} else if (s->is_sse) {
		if (s->failures++ == 0)
			ctl__dev_err(s, "the stream broke: %s", why);
	} else if (status == 0) {
		if (s->failures++ == 0)
			ctl__dev_err(s, "cannot reach %s: %s", f->c->base, why);
	} else if (status >= 500 || status == 408 || status == 429) {
		if (s->failures++ == 0)
			ctl__report_status(f->c, s->id, status, &s->err);
	} else {
		if (status >= 200 && status <= 299)
			ctl__dev_err(s, "unexpected response from %s: not a log stream", f->c->base);
		else
			ctl__report_status(f->c, s->id, status, &s->err);
		s->state = CTL_SS_DEAD;
		return 0;
	}
	s->retry_at = ctl__now_ms() + s->backoff_ms;
	s->backoff_ms = s->backoff_ms * 2 < CTL_BACKOFF_MAX_MS ? s->backoff_ms * 2 : CTL_BACKOFF_MAX_MS;
	return 0;
}

static int ctl__follow_finished(ctl_follow *f)
{
	CURLMsg *m;
	int left, rc = 0;

	while (rc == 0 && (m = curl_multi_info_read(f->multi, &left))) {
		CURL *h = m->easy_handle;
		CURLcode cc = m->data.result;	/* m does not outlive the removal */

		if (m->msg != CURLMSG_DONE)
			continue;
		for (size_t i = 0; i < f->n; i++)
			if (f->s[i].curl == h && f->s[i].state == CTL_SS_OPEN)
				rc = ctl__stream_done(f, &f->s[i], cc);
	}
	return rc;
}

/* Runs until a signal (0) or until no device is left to follow. */
static int ctl__follow_loop(ctl_follow *f)
{
	int rc = 0, running;

	while (rc == 0 && !ctl__stop) {
		int64_t now = ctl__now_ms(), wait = CTL_POLL_MS;
		size_t live = 0;

		for (size_t i = 0; i < f->n && rc == 0; i++)
			if (f->s[i].state == CTL_SS_WAIT && f->s[i].retry_at <= now)
				rc = ctl__stream_start(f, &f->s[i]);
		if (rc == 0 && curl_multi_perform(f->multi, &running) != CURLM_OK) {
			ctl__err("the transfers failed");
			rc = CTL_EAPI;
		}
		if (rc == 0)
			rc = ctl__follow_finished(f);
		if (fflush(stdout) != 0 && rc == 0) {
			ctl__err("cannot write the output: %s", strerror(errno));
			rc = CTL_EAPI;
		}
		now = ctl__now_ms();
		for (size_t i = 0; i < f->n; i++) {
			live += f->s[i].state != CTL_SS_DEAD;
			if (f->s[i].state == CTL_SS_WAIT && f->s[i].retry_at - now < wait)
				wait = f->s[i].retry_at - now;
		}
		if (rc == 0 && live == 0) {
			ctl__err("no device left to follow");
			rc = CTL_EAPI;
		}
		if (rc == 0 && !ctl__stop &&
		    curl_multi_poll(f->multi, NULL, 0, wait > 0 ? (int)wait : 0, NULL) != CURLM_OK) {
			ctl__err("cannot wait for the streams");
			rc = CTL_EAPI;
		}
	}
	return rc;
}

static void ctl__follow_free(ctl_follow *f)
{
	for (size_t i = 0; i < f->n; i++) {
		ctl_stream *s = &f->s[i];

		if (s->state == CTL_SS_OPEN)
			curl_multi_remove_handle(f->multi, s->curl);
		if (s->curl)
			curl_easy_cleanup(s->curl);
		curl_slist_free_all(s->hdrs);
		free(s->err.data);
		free(s->line);
		free(s->data);
	}
	free(f->s);
	if (f->multi)
		curl_multi_cleanup(f->multi);
}

/* The group's devices, every page of them: *out is owned (json array). */
static int ctl__group_devices(ctl_client *c, const ctl_opts *o, json_t **out)
{
	char *cursor = NULL;
	int more = 1, rc = 0;

	if (!(*out = json_array()))
		return ctl__oom();
	while (rc == 0 && more)
		rc = ctl__devices_page(c, o, 0, &cursor, *out, &more);
	free(cursor);
	if (rc == 0 && json_array_size(*out) == 0) {
		fputs("tenderctl: group '", stderr);
		ctl__fput_clean(stderr, o->group);
		fputs("' has no devices\n", stderr);
		rc = CTL_EAPI;
	}
	return rc;
}

/* A listed device's id, checked as a path component, into out. */
static int ctl__listed_id(json_t *dev, char *out)
{
	const char *id = json_string_value(json_object_get(dev, "id"));

	if (!id || strlen(id) != CTL_ID_LEN ||
	    strspn(id, "0123456789abcdefABCDEF") != CTL_ID_LEN)
		return ctl__unexpected("a listed device has no valid id");
	for (size_t i = 0; i <= CTL_ID_LEN; i++)
		out[i] = (char)tolower((unsigned char)id[i]);
	return 0;
}

/* logs -f: history first with -n (each stream then resumes after the newest
 * line printed), then one SSE stream per device over a curl multi handle. */
static int ctl__follow(ctl_client *c, const ctl_opts *o)
{
	ctl_follow f = { .c = c };
	json_t *group = NULL;
	size_t n = o->nids;
	int rc = 0;

	if (o->group) {
		rc = ctl__group_devices(c, o, &group);
		n = json_array_size(group);
	}
	int prefix = n > 1 || o->group;
	if (rc == 0 && (!(f.s = calloc(n, sizeof *f.s)) || !(f.multi = curl_multi_init())))
		rc = ctl__oom();
	if (rc == 0)
		f.n = n;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		char id[CTL_ID_LEN + 1], lead[CTL_ID_LEN + 2];
		long long newest = -1;

		if (group)
			rc = ctl__listed_id(json_array_get(group, i), id);
		else
			memcpy(id, o->ids[i], sizeof id);
		snprintf(lead, sizeof lead, "%s%s", prefix ? id : "", prefix ? " " : "");
		if (rc == 0 && o->count)
			rc = ctl__history(c, id, o->count, lead, &newest);
		if (rc == 0)
			rc = ctl__stream_init(&f, &f.s[i], id, prefix, newest);
	}
	json_decref(group);
	if (rc == 0) {
		struct sigaction sa;

		memset(&sa, 0, sizeof sa);
		sa.sa_handler = ctl__on_signal;
		sigemptyset(&sa.sa_mask);
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
		rc = ctl__follow_loop(&f);
	}
	ctl__follow_free(&f);
	return rc;
}

/* ---- agents ------------------------------------------------------------- */

/* Reads path ("-" for stdin) whole into *data (owned: caller frees), refusing
 * more than cap bytes.  A file that cannot be used is the caller's mistake:
 * a usage error. */
static int ctl__read_file(const char *path, size_t cap, char **data, size_t *len)
{
	int from_stdin = strcmp(path, "-") == 0;
	const char *name = from_stdin ? "stdin" : path;
	FILE *f = from_stdin ? stdin : fopen(path, "rb");
	char *buf = NULL;
	int rc = 0;

	*data = NULL;
	*len = 0;
	if (!f) {
		ctl__err("cannot read %s: %s", name, strerror(errno));
		return CTL_EUSAGE;
	}
	if (!(buf = malloc(cap + 1))) {
		rc = ctl__oom();
		goto out;
	}
	size_t n = fread(buf, 1, cap + 1, f);
	int saved = errno;
	if (ferror(f)) {
		ctl__err("cannot read %s: %s", name, strerror(saved));
		rc = CTL_EUSAGE;
	} else if (n > cap) {
		ctl__err("%s is larger than %zu MiB", name, cap >> 20);
		rc = CTL_EUSAGE;
	} else {
		*data = buf;
		*len = n;
		buf = NULL;
	}
out:
	free(buf);
	if (!from_stdin)
		fclose(f);
	return rc;
}

/* The group goes into the path: a '/' would name another resource. */
static int ctl__check_deploy(ctl_opts *o)
{
	const char *g = o->args[0];
	size_t len = strlen(g);

	if (len == 0 || len > CTL_MAX_GROUP)
		return ctl__usage_err("invalid group '%s': expected 1 to %d bytes", g, CTL_MAX_GROUP);
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)g[i] < 0x20 || g[i] == 0x7f || g[i] == '/')
			return ctl__usage_err("invalid group: it cannot hold '/' or control characters");
	return 0;
}

static int ctl__cmd_deploy(ctl_client *c, const ctl_opts *o)
{
	const char *group = o->args[0];
	char *code, *path = NULL, *url = NULL;
	size_t len;
	json_t *root = NULL;
	int rc = ctl__read_file(o->args[1], CTL_MAX_AGENT, &code, &len);

	if (rc < 0)
		return rc;
	char *esc = curl_easy_escape(c->curl, group, 0);
	if (!esc || asprintf(&path, "/v1/groups/%s/agent", esc) < 0) {
		path = NULL;
		rc = ctl__oom();
	}
	curl_free(esc);
	if (rc == 0) {
		ctl_body b = { "Content-Type: text/plain", code, len, NULL };
		url = ctl__url(c, path, NULL, 0);
		rc = ctl__send(c, "PUT", url, &b, 0, &root);
	}
	if (rc == 0) {
		printf("deployed %zu bytes to group ", len);
		ctl__fput_clean(stdout, group);
		putchar('\n');
	}
	json_decref(root);
	free(url);
	free(path);
	free(code);
	return rc;
}

/* A request on /v1/devices/{ID}{suffix}; *out as ctl__call() with need_object. */
static int ctl__device_call(ctl_client *c, const ctl_opts *o, const char *method,
			    const char *suffix, const ctl_kv *q, size_t nq, json_t **out)
{
	char path[96];

	snprintf(path, sizeof path, "/v1/devices/%s%s", o->id, suffix);
	char *url = ctl__url(c, path, q, nq);
	int rc = ctl__call(c, method, url, NULL, 1, out);
	free(url);
	return rc;
}

static const char *const ctl__agent_keys[] = {
	"agent_id", "group", "state", "worker", "memory", "events", "restarts",
	"device_connected", "queued_messages", "last_error",
};
#define CTL_NAGENT_KEYS (sizeof ctl__agent_keys / sizeof ctl__agent_keys[0])

static int ctl__cmd_agent(ctl_client *c, const ctl_opts *o)
{
	size_t width = 0;
	json_t *root;
	int rc = ctl__device_call(c, o, "GET", "/agent", NULL, 0, &root);

	if (rc < 0)
		return rc;
	for (size_t i = 0; i < CTL_NAGENT_KEYS; i++)
		if (strlen(ctl__agent_keys[i]) > width)
			width = strlen(ctl__agent_keys[i]);
	for (size_t i = 0; i < CTL_NAGENT_KEYS; i++) {
		const char *key = ctl__agent_keys[i];
		json_t *v = json_object_get(root, key);

		printf("%s:%*s", key, (int)(width - strlen(key) + 1), "");
		if (strcmp(key, "memory") == 0 && json_is_number(v))
			printf("%.1f KB", json_number_value(v) / 1024);
		else
			ctl__print_value(v);
		putchar('\n');
	}
	json_decref(root);
	return 0;
}

/* A 202's {"status": ...}, or what was asked for if the server says nothing. */
static void ctl__print_status(json_t *root, const char *fallback)
{
	const char *status = json_string_value(json_object_get(root, "status"));

	ctl__fput_clean(stdout, status && *status ? status : fallback);
	putchar('\n');
}

static int ctl__cmd_agent_restart(ctl_client *c, const ctl_opts *o)
{
	json_t *root;
	int rc = ctl__device_call(c, o, "POST", "/agent/restart", NULL, 0, &root);

	if (rc == 0)
		ctl__print_status(root, "restarting");
	json_decref(root);
	return rc;
}

static int ctl__cmd_agent_migrate(ctl_client *c, const ctl_opts *o)
{
	char worker[24];
	json_t *root;

	snprintf(worker, sizeof worker, "%ld", o->worker);
	const ctl_kv q[] = { { "worker", o->worker >= 0 ? worker : NULL } };
	int rc = ctl__device_call(c, o, "POST", "/agent/migrate", q, 1, &root);
	json_t *from = json_object_get(root, "from"), *to = json_object_get(root, "to"),
	       *at = json_object_get(root, "worker");
	if (rc == 0 && json_is_integer(from) && json_is_integer(to))
		printf("migrating from worker %lld to worker %lld\n", (long long)json_integer_value(from),
		       (long long)json_integer_value(to));
	else if (rc == 0 && json_is_integer(at))
		printf("in place: the agent is on worker %lld already\n", (long long)json_integer_value(at));
	else if (rc == 0)
		ctl__print_status(root, "migrating");
	json_decref(root);
	return rc;
}

/* ---- flash parts and firmware ------------------------------------------- */

static int ctl__cmd_flash_parts(ctl_client *c, const ctl_opts *o)
{
	static const char *const headers[] = { "JEDEC", "VENDOR", "PART", "SIZE", "4K", "64K" };
	const ctl_kv q[] = { { "jedec", o->jedec[0] ? o->jedec : NULL } };
	ctl_table t = { .ncols = 6 };
	char size[32];
	json_t *root, *part;
	size_t i;

	char *url = ctl__url(c, "/v1/flash-parts", q, 1);
	int rc = ctl__call(c, "GET", url, NULL, 1, &root);
	free(url);
	if (rc < 0)
		return rc;
	json_t *parts = json_object_get(root, "parts");
	if (!json_is_array(parts)) {
		rc = ctl__unexpected("no 'parts' array");
		goto out;
	}
	json_array_foreach(parts, i, part) {
		ctl__cell(&t, "%s", ctl__str_or_dash(part, "jedec"));
		ctl__cell(&t, "%s", ctl__str_or_dash(part, "vendor"));
		ctl__cell(&t, "%s", ctl__str_or_dash(part, "part"));
		ctl__cell(&t, "%s", ctl__human_size(json_object_get(part, "size_bytes"),
						    size, sizeof size));
		ctl__cell(&t, "%s", ctl__yes_no(json_object_get(part, "uniform_4k_erase")));
		ctl__cell(&t, "%s", ctl__yes_no(json_object_get(part, "uniform_64k_erase")));
	}
	rc = ctl__table_print(&t, headers);
	if (rc == 0)
		printf("%zu parts\n", json_array_size(parts));
out:
	ctl__table_free(&t);
	json_decref(root);
	return rc;
}

/* The hardware list as "a,b"; "-" when there is none. */
static void ctl__hw_cell(ctl_table *t, json_t *hw)
{
	char *text = NULL;
	size_t len = 0, i;
	json_t *v;
	FILE *f = open_memstream(&text, &len);

	if (!f) {
		t->oom = 1;
		return;
	}
	json_array_foreach(hw, i, v)
		fprintf(f, "%s%s", i ? "," : "", json_is_string(v) ? json_string_value(v) : "?");
	if (fclose(f) != 0) {
		free(text);
		t->oom = 1;
		return;
	}
	ctl__cell(t, "%s", len ? text : "-");
	free(text);
}

static int ctl__cmd_firmware(ctl_client *c, const ctl_opts *o)
{
	static const char *const headers[] = { "ID", "VERSION", "HW", "SIZE", "SHA256" };
	ctl_table t = { .ncols = 5 };
	char id[32], size[32];
	json_t *root, *fw;
	size_t i;

	char *url = ctl__url(c, "/v1/firmware", NULL, 0);
	int rc = ctl__call(c, "GET", url, NULL, 1, &root);
	free(url);
	if (rc < 0)
		return rc;
	json_t *list = json_object_get(root, "firmware");
	if (!json_is_array(list)) {
		rc = ctl__unexpected("no 'firmware' array");
		goto out;
	}
	json_array_foreach(list, i, fw) {
		ctl__cell(&t, "%s", ctl__int_text(json_object_get(fw, "id"), id, sizeof id));
		ctl__cell(&t, "%s", ctl__str_or_dash(fw, "version"));
		ctl__hw_cell(&t, json_object_get(fw, "hw"));
		ctl__cell(&t, "%s", ctl__human_size(json_object_get(fw, "size"), size, sizeof size));
		ctl__cell(&t, "%.12s", ctl__str_or_dash(fw, "sha256"));
	}
	rc = ctl__table_print(&t, headers);
out:
	ctl__table_free(&t);
	json_decref(root);
	return rc;
}

/* Builds the metadata part: {"version", "hw": [...], "requirements"?}. */
static int ctl__check_upload(ctl_opts *o)
{
	json_error_t jerr;
	json_t *hw = NULL, *req = NULL;
	int rc = ctl__split_list("--hw", o->hw, CTL_LIST_NAMES, &hw);

	if (rc == 0 && o->requires &&
	    !(req = json_loads(o->requires, JSON_REJECT_DUPLICATES, &jerr)))
		rc = ctl__usage_err("--requires: invalid JSON at column %d: %s",
				    jerr.column, jerr.text);
	else if (rc == 0 && req && !json_is_object(req))
		rc = ctl__usage_err("--requires: expected a JSON object, like "
				    "'{\"flash\":{\"min_size\":524288}}'");
	if (rc == 0 && !(o->body = json_pack_ex(&jerr, 0, "{s:s, s:O, s:O*}", "version",
						o->version, "hw", hw, "requirements", req)))
		rc = ctl__usage_err("cannot encode --version: %s", jerr.text);
	json_decref(hw);
	json_decref(req);
	return rc;
}

static size_t ctl__file_read_cb(char *buf, size_t size, size_t nitems, void *arg)
{
	FILE *f = arg;
	size_t n = fread(buf, 1, size * nitems, f);

	return n == 0 && ferror(f) ? CURL_READFUNC_ABORT : n;
}

static int ctl__file_seek_cb(void *arg, curl_off_t offset, int origin)
{
	return fseeko(arg, (off_t)offset, origin) == 0 ? CURL_SEEKFUNC_OK : CURL_SEEKFUNC_CANTSEEK;
}

/* The form: "image" streamed from f (borrowed, size bytes) under the file's
 * own name, "metadata" from o->body.  *out is owned: caller curl_mime_free()s. */
static int ctl__upload_form(ctl_client *c, const ctl_opts *o, FILE *f, curl_off_t size,
			    curl_mime **out)
{
	const char *path = o->args[0], *base = strrchr(path, '/');
	char *meta = json_dumps(o->body, JSON_COMPACT);
	curl_mime *mime = meta ? curl_mime_init(c->curl) : NULL;
	curl_mimepart *image = mime ? curl_mime_addpart(mime) : NULL;
	curl_mimepart *md = image ? curl_mime_addpart(mime) : NULL;
	int ok = md && curl_mime_name(image, "image") == CURLE_OK &&
		 curl_mime_filename(image, base ? base + 1 : path) == CURLE_OK &&
		 curl_mime_type(image, "application/octet-stream") == CURLE_OK &&
		 curl_mime_data_cb(image, size, ctl__file_read_cb, ctl__file_seek_cb,
				   NULL, f) == CURLE_OK &&
		 curl_mime_name(md, "metadata") == CURLE_OK &&
		 curl_mime_type(md, "application/json") == CURLE_OK &&
		 curl_mime_data(md, meta, CURL_ZERO_TERMINATED) == CURLE_OK;

	free(meta);
	if (!ok) {
		curl_mime_free(mime);
		return ctl__oom();
	}
	*out = mime;
	return 0;
}

/* The image is streamed, not read into memory: the server takes up to
 * --max-firmware, and it refuses a larger one by its Content-Length. */
static int ctl__cmd_upload(ctl_client *c, const ctl_opts *o)
{
	const char *path = o->args[0];
	curl_mime *mime = NULL;
	json_t *root = NULL;
	struct stat st;
	FILE *f;

	if (strcmp(path, "-") == 0) {
		ctl__err("upload reads the image from a file, not stdin");
		return CTL_EUSAGE;
	}
	if (!(f = fopen(path, "rb")) || fstat(fileno(f), &st) < 0) {
		ctl__err("cannot read %s: %s", path, strerror(errno));
		if (f)
			fclose(f);
		return CTL_EUSAGE;
	}
	if (!S_ISREG(st.st_mode)) {
		ctl__err("cannot upload %s: not a regular file", path);
		fclose(f);
		return CTL_EUSAGE;
	}
	int rc = ctl__upload_form(c, o, f, (curl_off_t)st.st_size, &mime);
	if (rc == 0) {
		ctl_body b = { NULL, NULL, 0, mime };
		char *url = ctl__url(c, "/v1/firmware", NULL, 0);
		rc = ctl__send(c, "POST", url, &b, 1, &root);
		free(url);
	}
	json_t *id = json_object_get(root, "id");
	const char *version = json_string_value(json_object_get(root, "version"));
	const char *sha = json_string_value(json_object_get(root, "sha256"));
	if (rc == 0 && json_is_integer(id) && version && sha) {
		printf("firmware %" JSON_INTEGER_FORMAT " ", json_integer_value(id));
		ctl__fput_clean(stdout, version);
		putchar(' ');
		ctl__fput_clean(stdout, sha);
		putchar('\n');
	} else if (rc == 0) {
		rc = ctl__unexpected("no firmware id, version and sha256");
	}
	json_decref(root);
	curl_mime_free(mime);
	fclose(f);
	return rc;
}

/* ---- rollouts ----------------------------------------------------------- */

/* Builds the create body; the server checks the rest (stage order, ids known). */
static int ctl__check_rollout_create(ctl_opts *o)
{
	json_error_t jerr;
	json_t *devices = NULL, *stages = NULL;
	int rc = 0;

	if (o->devices)
		rc = ctl__split_list("--devices", o->devices, CTL_LIST_DEVICES, &devices);
	if (rc == 0 && o->stages)
		rc = ctl__split_list("--stages", o->stages, CTL_LIST_PERCENTS, &stages);
	if (rc == 0 && !(o->body = json_pack_ex(&jerr, 0,
			"{s:I, s:O*, s:s*, s:s*, s:O*, s:O*, s:O*}",
			"firmware", (json_int_t)o->firmware, "devices", devices,
			"group", o->group, "hw", o->hw, "stages", stages,
			"start", (o->given & CTL_BIT(CTL_OPT_START)) ? json_true() : NULL,
			"allow_unknown_flash",
			(o->given & CTL_BIT(CTL_OPT_ALLOW_UNKNOWN)) ? json_true() : NULL)))
		rc = ctl__usage_err("cannot encode --group or --hw: %s", jerr.text);
	json_decref(devices);
	json_decref(stages);
	return rc;
}

static int ctl__cmd_rollout_create(ctl_client *c, const ctl_opts *o)
{
	json_t *root;
	char *url = ctl__url(c, "/v1/rollouts", NULL, 0);
	int rc = ctl__call(c, "POST", url, o->body, 1, &root);

	free(url);
	if (rc < 0)
		return rc;
	json_t *id = json_object_get(root, "id");
	const char *state = json_string_value(json_object_get(root, "state"));
	if (json_is_integer(id) && state) {
		printf("rollout %" JSON_INTEGER_FORMAT " ", json_integer_value(id));
		ctl__fput_clean(stdout, state);
		putchar('\n');
	} else {
		rc = ctl__unexpected("no rollout id and state");
	}
	json_decref(root);
	return rc;
}

/* A request on /v1/rollouts/{RID}{suffix}; *out as ctl__call() with need_object. */
static int ctl__rollout_call(ctl_client *c, const ctl_opts *o, const char *method,
			     const char *suffix, json_t **out)
{
	char path[64];

	snprintf(path, sizeof path, "/v1/rollouts/%lld%s", o->num, suffix);
	char *url = ctl__url(c, path, NULL, 0);
	int rc = ctl__call(c, method, url, NULL, 1, out);
	free(url);
	return rc;
}

static int ctl__cmd_rollout(ctl_client *c, const ctl_opts *o)
{
	char stage[32], nstages[32], num[32];
	const char *key;
	json_t *root, *v;
	int rc = ctl__rollout_call(c, o, "GET", "", &root);

	if (rc < 0)
		return rc;
	printf("rollout %lld: ", o->num);
	ctl__fput_clean(stdout, ctl__str_or_dash(root, "state"));
	printf(" (stage %s of %s) firmware ",
	       ctl__int_text(json_object_get(root, "stage"), stage, sizeof stage),
	       ctl__int_text(json_object_get(root, "stages"), nstages, sizeof nstages));
	ctl__fput_clean(stdout, ctl__str_or_dash(json_object_get(root, "firmware"), "version"));
	fputs("\nreason: ", stdout);
	ctl__fput_clean(stdout, ctl__str_or_dash(root, "reason"));
	putchar('\n');
	json_object_foreach(json_object_get(root, "counts"), key, v) {
		if (!json_is_integer(v) || json_integer_value(v) == 0)
			continue;
		ctl__fput_clean(stdout, key);
		printf(": %s\n", ctl__int_text(v, num, sizeof num));
	}
	json_decref(root);
	return 0;
}

static int ctl__cmd_plan(ctl_client *c, const ctl_opts *o)
{
	static const char *const headers[] = { "ID", "DECISION", "REASON" };
	ctl_table t = { .ncols = 3 };
	char n1[32], n2[32], n3[32];
	json_t *root, *dev;
	size_t i;
	int rc = ctl__rollout_call(c, o, "GET", "/plan", &root);

	if (rc < 0)
		return rc;
	json_t *devices = json_object_get(root, "devices");
	if (!json_is_array(devices)) {
		rc = ctl__unexpected("no 'devices' array");
		goto out;
	}
	json_array_foreach(devices, i, dev) {
		ctl__cell(&t, "%s", ctl__str_or_dash(dev, "id"));
		ctl__cell(&t, "%s", ctl__str_or_dash(dev, "decision"));
		ctl__cell(&t, "%s", ctl__str_or_dash(dev, "reason"));
	}
	rc = ctl__table_print(&t, headers);
	json_t *counts = json_object_get(root, "counts");
	if (rc == 0)
		printf("eligible %s, blocked %s, up-to-date %s\n",
		       ctl__int_text(json_object_get(counts, "eligible"), n1, sizeof n1),
		       ctl__int_text(json_object_get(counts, "blocked"), n2, sizeof n2),
		       ctl__int_text(json_object_get(counts, "up-to-date"), n3, sizeof n3));
out:
	ctl__table_free(&t);
	json_decref(root);
	return rc;
}

/* pause, resume and abort: the command's name is the action's. */
static int ctl__cmd_steer(ctl_client *c, const ctl_opts *o)
{
	char suffix[16];
	json_t *root;

	snprintf(suffix, sizeof suffix, "/%s", o->cmd);
	int rc = ctl__rollout_call(c, o, "POST", suffix, &root);
	if (rc < 0)
		return rc;
	const char *state = json_string_value(json_object_get(root, "state"));
	if (state) {
		ctl__fput_clean(stdout, state);
		putchar('\n');
	} else {
		rc = ctl__unexpected("no rollout state");
	}
	json_decref(root);
	return rc;
}

/* ---- main --------------------------------------------------------------- */

/* The positional arguments after the command. */
enum ctl_args { CTL_ARGS_NONE, CTL_ARGS_ID, CTL_ARGS_RID, CTL_ARGS_FILE, CTL_ARGS_GROUP_FILE,
		CTL_ARGS_IDS };

static const struct ctl_argspec {
	int n;
	int more;			/* more than n may follow: the check counts them */
	const char *what;		/* for "'cmd' needs ..." */
} ctl__argspecs[] = {
	[CTL_ARGS_NONE] = { 0, 0, "nothing" },
	[CTL_ARGS_ID] = { 1, 0, "a device ID" },
	[CTL_ARGS_RID] = { 1, 0, "a rollout RID" },
	[CTL_ARGS_FILE] = { 1, 0, "a FILE" },
	[CTL_ARGS_GROUP_FILE] = { 2, 0, "a GROUP and a FILE" },
	[CTL_ARGS_IDS] = { 0, 1, "device IDs" },
};

typedef int (*ctl_check_fn)(ctl_opts *o);

#define CTL_ROLLOUT_TARGETS (CTL_BIT(CTL_OPT_DEVICES) | CTL_BIT(CTL_OPT_GROUP) | \
			     CTL_BIT(CTL_OPT_HW))

static const struct ctl_cmd {
	const char *name;
	enum ctl_args args;
	unsigned opts;			/* CTL_BIT()s of the command's own options, */
	unsigned need;			/* of those it cannot do without, */
	unsigned one_of;		/* of those of which exactly one is given */
	ctl_check_fn check;		/* more checks before any request; may be NULL */
	ctl_cmd_fn run;
} ctl__cmds[] = {
	{ "devices", CTL_ARGS_NONE, CTL_BIT(CTL_OPT_ONLINE) | CTL_BIT(CTL_OPT_OFFLINE) |
			CTL_BIT(CTL_OPT_HW) | CTL_BIT(CTL_OPT_GROUP) |
			CTL_BIT(CTL_OPT_LIMIT), 0, 0, NULL, ctl__cmd_devices },
	{ "device", CTL_ARGS_ID, 0, 0, 0, NULL, ctl__cmd_device },
	{ "register", CTL_ARGS_ID, CTL_BIT(CTL_OPT_GROUP) | CTL_BIT(CTL_OPT_NAME), 0, 0,
	  NULL, ctl__cmd_register },
	{ "logs", CTL_ARGS_IDS, CTL_BIT(CTL_OPT_COUNT) | CTL_BIT(CTL_OPT_FOLLOW) |
			CTL_BIT(CTL_OPT_GROUP), 0, 0, ctl__check_logs, ctl__cmd_logs },
	{ "delete", CTL_ARGS_ID, 0, 0, 0, NULL, ctl__cmd_delete },
	{ "deploy", CTL_ARGS_GROUP_FILE, 0, 0, 0, ctl__check_deploy, ctl__cmd_deploy },
	{ "agent", CTL_ARGS_ID, 0, 0, 0, NULL, ctl__cmd_agent },
	{ "agent-restart", CTL_ARGS_ID, 0, 0, 0, NULL, ctl__cmd_agent_restart },
	{ "agent-migrate", CTL_ARGS_ID, CTL_BIT(CTL_OPT_WORKER), 0, 0, NULL,
	  ctl__cmd_agent_migrate },
	{ "flash-parts", CTL_ARGS_NONE, CTL_BIT(CTL_OPT_JEDEC), 0, 0, NULL, ctl__cmd_flash_parts },
	{ "firmware", CTL_ARGS_NONE, 0, 0, 0, NULL, ctl__cmd_firmware },
	{ "upload", CTL_ARGS_FILE, CTL_BIT(CTL_OPT_VERSION) | CTL_BIT(CTL_OPT_HW) |
			CTL_BIT(CTL_OPT_REQUIRES), CTL_BIT(CTL_OPT_VERSION) | CTL_BIT(CTL_OPT_HW),
	  0, ctl__check_upload, ctl__cmd_upload },
	{ "rollout-create", CTL_ARGS_NONE, CTL_BIT(CTL_OPT_FIRMWARE) | CTL_ROLLOUT_TARGETS |
			CTL_BIT(CTL_OPT_STAGES) | CTL_BIT(CTL_OPT_START) |
			CTL_BIT(CTL_OPT_ALLOW_UNKNOWN), CTL_BIT(CTL_OPT_FIRMWARE),
	  CTL_ROLLOUT_TARGETS, ctl__check_rollout_create, ctl__cmd_rollout_create },
	{ "rollout", CTL_ARGS_RID, 0, 0, 0, NULL, ctl__cmd_rollout },
	{ "plan", CTL_ARGS_RID, 0, 0, 0, NULL, ctl__cmd_plan },
	{ "pause", CTL_ARGS_RID, 0, 0, 0, NULL, ctl__cmd_steer },
	{ "resume", CTL_ARGS_RID, 0, 0, 0, NULL, ctl__cmd_steer },
	{ "abort", CTL_ARGS_RID, 0, 0, 0, NULL, ctl__cmd_steer },
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
	unsigned missing = cmd->need & ~o->given, picked = cmd->one_of & o->given;
	if (missing)
		return ctl__usage_err("'%s' needs %s", cmd->name, ctl__opt_name(missing));
	if (cmd->one_of && (picked == 0 || (picked & (picked - 1)) != 0)) {
		char names[128];
		return ctl__usage_err("'%s' needs exactly one of %s", cmd->name,
				      ctl__opt_names(cmd->one_of, names, sizeof names));
	}
	const struct ctl_argspec *a = &ctl__argspecs[cmd->args];
	if (o->nargs < a->n)
		return ctl__usage_err("'%s' needs %s", cmd->name, a->what);
	if (o->nargs > a->n && !a->more)
		return ctl__usage_err("unexpected argument '%s'", o->args[a->n]);
	*out = cmd;
	int rc = 0;
	if (cmd->args == CTL_ARGS_ID)
		rc = ctl__device_id(o->args[0], o->id);
	else if (cmd->args == CTL_ARGS_RID)
		rc = ctl__parse_num_id("rollout id", o->args[0], &o->num);
	if (rc == 0 && cmd->check)
		rc = cmd->check(o);
	return rc;
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
	ctl_opts o = { .online = -1, .worker = -1 };
	const struct ctl_cmd *cmd = NULL;
	int rc = ctl__parse_args(argc, argv, &o);
	int help = rc == 0 && ((o.given & CTL_BIT(CTL_OPT_HELP)) ||
			       (o.cmd && strcmp(o.cmd, "help") == 0));

	if (help) {
		fputs(ctl__usage, stdout);
	} else if (rc == 0 && !o.cmd) {
		fputs(ctl__usage, stderr);
		rc = CTL_EUSAGE;
	}
	if (rc == 0 && !help)
		rc = ctl__check_command(&o, &cmd);
	tzset();
	if (rc == 0 && !help)
		rc = ctl__run(&o, cmd);
	if (fflush(stdout) != 0 && rc == 0) {
		ctl__err("cannot write the output: %s", strerror(errno));
		rc = CTL_EAPI;
	}
	json_decref(o.body);
	free(o.args);
	free(o.ids);
	return rc == 0 ? 0 : rc == CTL_EUSAGE ? 2 : 1;
}

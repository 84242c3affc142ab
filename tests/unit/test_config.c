/* tests/unit/test_config.c -- tenderd's settings (server/config.c): defaults,
 * every option on the command line in both forms, range and syntax errors
 * naming the option, the config file and its line numbers, ping-interval. */
#define _GNU_SOURCE
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

/* config_parse_args on "tenderd" followed by the NULL-terminated arguments. */
static int parse(tn_config *cfg, tn_error *err, ...)
{
	char *argv[64] = { "tenderd" };
	int argc = 1;
	va_list ap;

	va_start(ap, err);
	while (argc < 63 && (argv[argc] = va_arg(ap, char *)))
		argc++;
	va_end(ap);
	config_defaults(cfg);
	memset(err, 0, sizeof *err);
	return config_parse_args(cfg, argc, argv, err);
}

static char root[64]; /* made and removed by main, even when tests fail */

/* A temporary file holding text; its name is in path (caller unlinks). */
static void write_file(char path[96], const char *text)
{
	snprintf(path, 96, "%s/XXXXXX", root);
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

START_TEST(defaults)
{
	tn_config c;
	tn_error err;

	config_defaults(&c);
	ck_assert_str_eq(c.data_dir, "./tender-data");
	ck_assert_str_eq(c.bind, "127.0.0.1");
	ck_assert_ptr_null(c.admin_token_file);
	ck_assert_int_eq(c.device_port, 8600);
	ck_assert_int_eq(c.http_port, 8601);
	ck_assert_int_eq(c.ping_interval, 0); /* resolved by config_parse_args */
	ck_assert_int_eq(c.idle_timeout, 45);
	ck_assert_int_eq(c.hello_timeout, 10);
	ck_assert_int_eq(c.max_frame, 65536);
	ck_assert_int_eq(c.max_body, 1048576);
	ck_assert_int_eq(c.http_threads, 4);
	ck_assert_int_eq(c.http_max_conns, 1024);
	ck_assert_int_eq(c.http_timeout, 30);
	ck_assert_int_eq(c.max_conns_per_ip, 1000);
	ck_assert_ptr_null(c.tls_cert);
	ck_assert_ptr_null(c.tls_key);
	ck_assert_int_eq(c.batch_max, 1024);
	ck_assert_int_eq(c.store_queue, 64 << 20);
	ck_assert_int_eq(c.max_streams, 1000);
	ck_assert_int_eq(c.max_streams_per_token, 100);
	ck_assert_int_eq(c.stream_open_timeout, 60);
	ck_assert_int_eq(c.device_send_queue, 262144);
	ck_assert_int_eq(c.agent_offline_queue, 64);
	ck_assert_int_eq(c.sync_full, 0);
	ck_assert_int_eq(c.log_level, LOG_INFO);
	config_free(&c);

	/* no arguments: the defaults, with ping at min(20, 45 / 2) */
	ck_assert_int_eq(parse(&c, &err, NULL), 0);
	ck_assert_int_eq(c.ping_interval, 20);
	ck_assert_int_eq(c.device_port, 8600);
	config_free(&c);
	config_free(&c); /* freed configs are zeroed */
	config_free(NULL);
}
END_TEST

START_TEST(every_option)
{
	tn_config c;
	tn_error err;

	ck_assert_int_eq(parse(&c, &err, "--data-dir", "/var/lib/tender", "--bind", "0.0.0.0",
			       "--device-port", "0", "--http-port", "65535", "--admin-token-file", "/etc/t",
			       "--ping-interval", "5", "--idle-timeout", "60", "--hello-timeout", "3",
			       "--max-frame", "1024", "--max-body", "2048", "--http-threads", "2",
			       "--http-max-conns", "10", "--http-timeout", "7", "--batch-max", "50",
			       "--sync-full", "--log-level", "debug", "--max-conns-per-ip", "0", NULL), 0);
	ck_assert_str_eq(c.data_dir, "/var/lib/tender");
	ck_assert_str_eq(c.bind, "0.0.0.0");
	ck_assert_int_eq(c.device_port, 0);
	ck_assert_int_eq(c.http_port, 65535);
	ck_assert_str_eq(c.admin_token_file, "/etc/t");
	ck_assert_int_eq(c.ping_interval, 5);
	ck_assert_int_eq(c.idle_timeout, 60);
	ck_assert_int_eq(c.hello_timeout, 3);
	ck_assert_int_eq(c.max_frame, 1024);
	ck_assert_int_eq(c.max_body, 2048);
	ck_assert_int_eq(c.http_threads, 2);
	ck_assert_int_eq(c.http_max_conns, 10);
	ck_assert_int_eq(c.http_timeout, 7);
	ck_assert_int_eq(c.batch_max, 50);
	ck_assert_int_eq(c.sync_full, 1);
	ck_assert_int_eq(c.log_level, LOG_DEBUG);
	ck_assert_int_eq(c.max_conns_per_ip, 0);
	config_free(&c);
}
END_TEST

START_TEST(equals_form)
{
	tn_config c;
	tn_error err;

	ck_assert_int_eq(parse(&c, &err, "--data-dir=/d", "--bind=::1", "--device-port=9000",
			       "--http-port=9001", "--admin-token-file=/a=b", "--idle-timeout=10",
			       "--max-frame=256", "--sync-full=true", "--log-level=warn", NULL), 0);
	ck_assert_str_eq(c.data_dir, "/d");
	ck_assert_str_eq(c.bind, "::1");
	ck_assert_int_eq(c.device_port, 9000);
	ck_assert_int_eq(c.http_port, 9001);
	ck_assert_str_eq(c.admin_token_file, "/a=b"); /* only the first '=' splits */
	ck_assert_int_eq(c.idle_timeout, 10);
	ck_assert_int_eq(c.ping_interval, 5); /* min(20, 10 / 2) */
	ck_assert_int_eq(c.max_frame, 256);
	ck_assert_int_eq(c.sync_full, 1);
	ck_assert_int_eq(c.log_level, LOG_WARN);
	config_free(&c);

	/* booleans both ways; the last occurrence wins */
	static const char *const off[] = { "--sync-full=false", "--sync-full=0", "--sync-full=no" };
	for (size_t i = 0; i < 3; i++) {
		ck_assert_int_eq(parse(&c, &err, "--sync-full", (char *)off[i], NULL), 0);
		ck_assert_int_eq(c.sync_full, 0);
		config_free(&c);
	}
	ck_assert_int_eq(parse(&c, &err, "--http-port", "1", "--http-port=2", NULL), 0);
	ck_assert_int_eq(c.http_port, 2);
	config_free(&c);
}
END_TEST

static const struct { const char *arg, *val, *name; } bad_values[] = {
	{ "--device-port", "65536", "device-port" }, { "--device-port", "-1", "device-port" },
	{ "--http-port", "80x", "http-port" },       { "--http-port", "", "http-port" },
	{ "--idle-timeout", "1", "idle-timeout" },   { "--idle-timeout", "7201", "idle-timeout" },
	{ "--hello-timeout", "0", "hello-timeout" }, { "--ping-interval", "3601", "ping-interval" },
	{ "--max-frame", "255", "max-frame" },       { "--max-body", "1023", "max-body" },
	{ "--http-threads", "0", "http-threads" },   { "--http-max-conns", "100001", "http-max-conns" },
	{ "--http-timeout", "abc", "http-timeout" }, { "--batch-max", "99999999999999999999", "batch-max" },
	{ "--batch-max", "1.5", "batch-max" },       { "--log-level", "loud", "log-level" },
	{ "--sync-full=maybe", NULL, "sync-full" },  { "--data-dir=", NULL, "data-dir" },
	{ "--device-port=0x10", NULL, "device-port" },
	{ "--max-conns-per-ip", "-1", "max-conns-per-ip" },
	{ "--max-conns-per-ip", "1000001", "max-conns-per-ip" },
	{ "--tls-cert=", NULL, "tls-cert" },
};

START_TEST(bad_value)
{
	tn_config c;
	tn_error err;

	ck_assert_int_eq(parse(&c, &err, (char *)bad_values[_i].arg, (char *)bad_values[_i].val, NULL),
			 TN_EINVAL);
	ck_assert_int_eq(err.code, TN_EINVAL);
	ck_assert_msg(strstr(err.msg, bad_values[_i].name), "'%s' does not name %s", err.msg,
		      bad_values[_i].name);
	config_free(&c);
}
END_TEST

START_TEST(bad_arguments)
{
	tn_config c;
	tn_error err;

	ck_assert_int_eq(parse(&c, &err, "--bogus", "1", NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "--bogus"), "%s", err.msg);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--bogus=1", NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "--bogus"), "%s", err.msg);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "stray", NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "stray"), "%s", err.msg);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "-p", "1", NULL), TN_EINVAL);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--device-port", NULL), TN_EINVAL); /* value missing */
	ck_assert_msg(strstr(err.msg, "--device-port"), "%s", err.msg);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--config", NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "--config"), "%s", err.msg);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--config", "/nonexistent/tender.conf", NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "/nonexistent/tender.conf"), "%s", err.msg);
	config_free(&c);
}
END_TEST

/* The TLS files are read and checked while parsing; a good pair is tested
 * with real certificates in tests/integration/test_10_tls.c. */
START_TEST(tls_files)
{
	tn_config c;
	tn_error err;
	char junk[96], empty[96], missing[128];

	ck_assert_int_eq(parse(&c, &err, "--tls-cert", "/x/cert.pem", NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "--tls-cert and --tls-key go together"), "%s", err.msg);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--tls-key", "/x/key.pem", NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "--tls-key given without --tls-cert"), "%s", err.msg);
	config_free(&c);

	write_file(junk, "not a certificate\n");
	write_file(empty, "");
	snprintf(missing, sizeof missing, "%s/missing.pem", root);
	ck_assert_int_eq(parse(&c, &err, "--tls-cert", missing, "--tls-key", junk, NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "--tls-cert: cannot read") && strstr(err.msg, missing), "%s", err.msg);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--tls-cert", junk, "--tls-key", empty, NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "--tls-key") && strstr(err.msg, "empty"), "%s", err.msg);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--tls-cert", junk, "--tls-key", junk, NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "holds no PEM certificate") && strstr(err.msg, junk), "%s", err.msg);
	config_free(&c);
	unlink(junk);
	unlink(empty);
}
END_TEST

START_TEST(config_file)
{
	tn_config c;
	tn_error err;
	char path[96], opt[120];

	write_file(path, "# tenderd settings\n\n   \n"
			 "device-port = 9000\n"
			 "  bind=10.0.0.1  \r\n"
			 "\t# indented comment\n"
			 "sync-full\n"
			 "log-level = error\n"
			 "http-port = 9100"); /* no final newline */
	ck_assert_int_eq(parse(&c, &err, "--config", path, NULL), 0);
	ck_assert_int_eq(c.device_port, 9000);
	ck_assert_str_eq(c.bind, "10.0.0.1");
	ck_assert_int_eq(c.sync_full, 1);
	ck_assert_int_eq(c.log_level, LOG_ERR);
	ck_assert_int_eq(c.http_port, 9100);
	config_free(&c);

	/* The command line wins, wherever --config stands. */
	ck_assert_int_eq(parse(&c, &err, "--device-port", "9001", "--config", path, "--sync-full=no", NULL), 0);
	ck_assert_int_eq(c.device_port, 9001);
	ck_assert_int_eq(c.sync_full, 0);
	ck_assert_str_eq(c.bind, "10.0.0.1");
	config_free(&c);
	snprintf(opt, sizeof opt, "--config=%s", path);
	ck_assert_int_eq(parse(&c, &err, opt, "--bind", "127.0.0.2", NULL), 0);
	ck_assert_str_eq(c.bind, "127.0.0.2");
	ck_assert_int_eq(c.http_port, 9100);
	config_free(&c);
	unlink(path);

	/* An empty file is no settings. */
	write_file(path, "");
	ck_assert_int_eq(parse(&c, &err, "--config", path, NULL), 0);
	ck_assert_int_eq(c.device_port, 8600);
	config_free(&c);
	unlink(path);
}
END_TEST

START_TEST(config_file_errors)
{
	static const char *const texts[] = {
		"# c\n\nbogus = 1\n",             /* unknown setting */
		"# c\ndevice-port = 1\nhttp-port = x\n", /* bad value */
		"\n\ndevice-port\n",                /* no value */
		"# c\n\n--device-port = 1\n",       /* names have no dashes */
	};
	tn_config c;
	tn_error err;
	char path[96], where[120];

	for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
		write_file(path, texts[i]);
		ck_assert_int_eq(parse(&c, &err, "--config", path, NULL), TN_EINVAL);
		snprintf(where, sizeof where, "%s:3", path);
		ck_assert_msg(strstr(err.msg, where), "'%s' lacks '%s'", err.msg, where);
		config_free(&c);
		unlink(path);
	}
}
END_TEST

START_TEST(parse_text)
{
	tn_config c;
	tn_error err = { 0 };

	config_defaults(&c);
	ck_assert_int_eq(config_parse_text(&c, "batch-max = 7\n# x\nhttp-threads = 3", "test", &err), 0);
	ck_assert_int_eq(c.batch_max, 7);
	ck_assert_int_eq(c.http_threads, 3);
	ck_assert_int_eq(config_parse_text(&c, "\n\n\n\nmax-body = 12", "env", &err), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "env:5") && strstr(err.msg, "max-body"), "%s", err.msg);
	config_free(&c);
}
END_TEST

START_TEST(ping_interval)
{
	tn_config c;
	tn_error err;

	ck_assert_int_eq(parse(&c, &err, "--idle-timeout", "100", NULL), 0);
	ck_assert_int_eq(c.ping_interval, 20);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--idle-timeout", "3", NULL), 0);
	ck_assert_int_eq(c.ping_interval, 1);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--ping-interval", "0", "--idle-timeout", "30", NULL), 0);
	ck_assert_int_eq(c.ping_interval, 15);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--ping-interval", "44", NULL), 0);
	ck_assert_int_eq(c.ping_interval, 44);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--ping-interval", "45", NULL), TN_EINVAL);
	ck_assert_msg(strstr(err.msg, "--ping-interval") && strstr(err.msg, "--idle-timeout"), "%s", err.msg);
	config_free(&c);
	ck_assert_int_eq(parse(&c, &err, "--ping-interval", "30", "--idle-timeout", "20", NULL), TN_EINVAL);
	config_free(&c);
}
END_TEST

/* Runs parse with stdout sent to /dev/null; returns its result. */
static int parse_quietly(const char *arg)
{
	tn_config c;
	tn_error err;

	fflush(stdout);
	int saved = dup(STDOUT_FILENO);
	ck_assert_ptr_nonnull(freopen("/dev/null", "w", stdout));
	int rc = parse(&c, &err, (char *)arg, "--bogus", NULL);
	fflush(stdout);
	dup2(saved, STDOUT_FILENO); /* stdout still writes to fd 1 */
	close(saved);
	config_free(&c);
	return rc;
}

START_TEST(help_and_version)
{
	/* They stop parsing (the --bogus after them is not reached) and return 1. */
	ck_assert_int_eq(parse_quietly("--help"), 1);
	ck_assert_int_eq(parse_quietly("-h"), 1);
	ck_assert_int_eq(parse_quietly("--version"), 1);
}
END_TEST

START_TEST(usage_lists_every_option)
{
	static const char *const names[] = {
		"--config FILE", "--data-dir DIR", "--bind ADDR", "--device-port N", "--http-port N",
		"--admin-token-file FILE", "--ping-interval S", "--idle-timeout S", "--hello-timeout S",
		"--max-frame BYTES", "--max-body BYTES", "--http-threads N", "--http-max-conns N",
		"--http-timeout S", "--batch-max N", "--sync-full ", "--log-level LEVEL", "--help",
		"--tls-cert FILE", "--tls-key FILE", "--max-conns-per-ip N",
		"--store-queue BYTES", "--max-streams N", "--max-streams-per-token N", "--stream-open-timeout S",
		"--device-send-queue BYTES", "--agent-offline-queue N",
		"--version",
	};
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	config_usage(f);
	fclose(f);
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		ck_assert_msg(strstr(text, names[i]), "--help lacks '%s'", names[i]);
	free(text);
}
END_TEST

/* docs/operations.md's table of options names every option --help prints
 * (and README.md's configuration table only ones that exist). */
START_TEST(operations_md_lists_every_option)
{
	char *text = NULL, path[512];
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	config_usage(f);
	fclose(f);
	const char *src = getenv("TN_SRCDIR");
	snprintf(path, sizeof path, "%s/docs/operations.md", src ? src : "..");
	FILE *doc = fopen(path, "r");
	ck_assert_msg(doc != NULL, "cannot read %s", path);
	char *ops = NULL;
	size_t cap = 0;
	ck_assert_int_gt(getdelim(&ops, &cap, '\0', doc), 0);
	fclose(doc);
	int n = 0;
	for (char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		if (strncmp(line, "  --", 4) != 0)
			continue;
		char opt[80];
		size_t k = strcspn(line + 2, " \n");
		ck_assert_uint_lt(k + 2, sizeof opt);
		snprintf(opt, sizeof opt, "`%.*s", (int)k, line + 2);
		ck_assert_msg(strstr(ops, opt) != NULL, "docs/operations.md does not name %s", opt + 1);
		n++;
	}
	ck_assert_int_ge(n, 40);
	free(ops);
	free(text);
}
END_TEST

static Suite *config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc;

	tc = tcase_create("command line");
	tcase_add_test(tc, defaults);
	tcase_add_test(tc, every_option);
	tcase_add_test(tc, equals_form);
	tcase_add_loop_test(tc, bad_value, 0, (int)TN_ARRAY_LEN(bad_values));
	tcase_add_test(tc, bad_arguments);
	tcase_add_test(tc, ping_interval);
	tcase_add_test(tc, help_and_version);
	tcase_add_test(tc, usage_lists_every_option);
	tcase_add_test(tc, operations_md_lists_every_option);
	suite_add_tcase(s, tc);

	tc = tcase_create("file");
	tcase_add_test(tc, config_file);
	tcase_add_test(tc, config_file_errors);
	tcase_add_test(tc, parse_text);
	tcase_add_test(tc, tls_files);
	suite_add_tcase(s, tc);
	return s;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

int main(void)
{
	snprintf(root, sizeof root, "/tmp/tender-test-config-XXXXXX");
	if (!mkdtemp(root))
		return 2;
	SRunner *sr = srunner_create(config_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return failed ? 1 : 0;
}

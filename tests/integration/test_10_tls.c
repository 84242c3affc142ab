/* tests/integration/test_10_tls.c -- TLS on both ports and the per-address
 * connection limit (docs/security.md).  A throwaway self-signed certificate
 * is made with the openssl CLI in a temporary directory for each test; no
 * key is kept in the repository.  Real clients only: curl, openssl s_client,
 * tender-sim over wss, tenderctl, and raw sockets for the HTTP limit. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define DEV "30000c2a690c77c5"
#define REFUSED "too many connections from this address"

static char tmp[64];
static char cert[128], key[128], other_cert[128], other_key[128];
static th_server s;
static pid_t sim = -1;  /* a tender-sim left running, killed by teardown */

/* A self-signed EC certificate for localhost and 127.0.0.1. */
static void make_cert(const char *cert_path, const char *key_path, const char *cn)
{
	char subj[64];
	snprintf(subj, sizeof subj, "/CN=%s", cn);
	char *const argv[] = { "/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
			       "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", (char *)key_path,
			       "-out", (char *)cert_path, "-days", "2", "-subj", subj, "-addext",
			       "subjectAltName=DNS:localhost,IP:127.0.0.1", NULL };
	ck_assert_int_eq(th_run(argv, NULL, 30), 0);
}

static void setup(void)
{
	memset(&s, 0, sizeof s);
	sim = -1;
	snprintf(tmp, sizeof tmp, "/tmp/tender-tls-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmp));
	snprintf(cert, sizeof cert, "%s/cert.pem", tmp);
	snprintf(key, sizeof key, "%s/key.pem", tmp);
	snprintf(other_cert, sizeof other_cert, "%s/other-cert.pem", tmp);
	snprintf(other_key, sizeof other_key, "%s/other-key.pem", tmp);
	make_cert(cert, key, "localhost");
	make_cert(other_cert, other_key, "other");
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void teardown(void)
{
	if (sim > 0) {
		kill(sim, SIGKILL);
		waitpid(sim, NULL, 0);
	}
	if (s.dir[0])
		th_server_cleanup(&s);
	nftw(tmp, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Starts tenderd with TLS (and `more` options) and trusts its certificate. */
static void start_tls(void)
{
	char extra[512];
	snprintf(extra, sizeof extra, "--tls-cert '%s' --tls-key '%s'", cert, key);
	th_server_start(&s, extra);
	snprintf(s.cacert, sizeof s.cacert, "%s", cert);
	ck_assert_ptr_nonnull(strstr(s.http_url, "https://"));
	ck_assert_ptr_nonnull(strstr(s.ws_url, "wss://"));
}

/* Runs a shell command line (stderr into the output); returns its status. */
static int sh(const char *cmd, char **out)
{
	char *const argv[] = { "/bin/sh", "-c", (char *)cmd, NULL };
	return th_run(argv, out, 30);
}

START_TEST(https_api_and_plain_http_refused)
{
	char cmd[1024], *out = NULL;

	start_tls();
	char *log = th_read_file(s.log);
	ck_assert_ptr_nonnull(strstr(log, "TLS on both ports"));
	/* Made for 2 days: the start says it is about to expire. */
	ck_assert_ptr_nonnull(strstr(log, "days: replace it and restart"));
	free(log);

	/* curl, verifying against our CA: health, then an authenticated call. */
	snprintf(cmd, sizeof cmd, "curl -sS --cacert '%s' %s/healthz 2>&1", cert, s.http_url);
	ck_assert_int_eq(sh(cmd, &out), 0);
	ck_assert_ptr_nonnull(strstr(out, "\"ok\""));
	free(out);
	snprintf(cmd, sizeof cmd, "curl -sS -w ' %%{http_code}' --cacert '%s' -H 'Authorization: Bearer %s' "
		 "%s/v1/devices 2>&1", cert, s.token, s.http_url);
	ck_assert_int_eq(sh(cmd, &out), 0);
	ck_assert_msg(strstr(out, "\"devices\"") && strstr(out, " 200"), "%s", out);
	free(out);
	/* The same through libcurl in the harness, and a wrong token still 401. */
	free(th_register(&s, DEV, NULL));
	json_t *d = th_get_json(&s, "/v1/devices/" DEV, 200);
	json_decref(d);
	th_resp r;
	th_http(&s, "GET", "/v1/devices", NULL, NULL, "wrong", &r);
	ck_assert_int_eq(r.status, 401);
	th_resp_free(&r);

	/* Without our CA curl refuses the self-signed certificate. */
	snprintf(cmd, sizeof cmd, "curl -sS %s/healthz 2>&1", s.http_url);
	ck_assert_int_eq(sh(cmd, &out), 60);
	free(out);
	/* Plain http to the TLS port gets no answer. */
	snprintf(cmd, sizeof cmd, "curl -sS -o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/healthz 2>&1",
		 s.http_port);
	ck_assert_int_ne(sh(cmd, &out), 0);
	ck_assert_ptr_null(strstr(out, "200"));
	free(out);

	/* tenderctl speaks https with --cacert. */
	snprintf(cmd, sizeof cmd, "'%s' --url %s --cacert '%s' --token %s device %s 2>&1",
		 th_bin("tenderctl"), s.http_url, cert, s.token, DEV);
	ck_assert_int_eq(sh(cmd, &out), 0);
	ck_assert_ptr_nonnull(strstr(out, DEV));
	free(out);
}
END_TEST

/* An OpenSSL configuration that allows TLS 1.0 and weak ciphers, so that
 * refusing TLS 1.1 has to come from tenderd's own settings. */
static const char permissive_conf[] =
	"openssl_conf = conf\n[conf]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n"
	"[sys]\nMinProtocol = TLSv1\nCipherString = DEFAULT@SECLEVEL=0\n";

START_TEST(device_port_handshake_and_plain_ws_refused)
{
	char cmd[1024], conf[96], *out = NULL;

	snprintf(conf, sizeof conf, "%s/permissive.cnf", tmp);
	FILE *f = fopen(conf, "w");
	fputs(permissive_conf, f);
	fclose(f);
	setenv("OPENSSL_CONF", conf, 1); /* for tenderd and the clients alike */
	start_tls();
	char *secret = th_register(&s, DEV, NULL);
	/* openssl s_client: the handshake succeeds and shows our certificate. */
	snprintf(cmd, sizeof cmd, "openssl s_client -connect 127.0.0.1:%d -CAfile '%s' -verify_return_error "
		 "</dev/null 2>&1", s.device_port, cert);
	ck_assert_int_eq(sh(cmd, &out), 0);
	ck_assert_msg(strstr(out, "CN = localhost") && strstr(out, "Verify return code: 0 (ok)"), "%s", out);
	free(out);
	/* Only HTTP/1.1 is offered on the device port, even to a client asking for h2. */
	snprintf(cmd, sizeof cmd, "curl -sS --http2 --cacert '%s' -o /dev/null -w 'version %%{http_version}' "
		 "https://127.0.0.1:%d/v1/device 2>&1", cert, s.device_port);
	ck_assert_int_eq(sh(cmd, &out), 0);
	ck_assert_msg(strstr(out, "version 1.1") != NULL, "%s", out);
	free(out);
	/* TLS 1.1 is refused on both ports (the client is allowed it by SECLEVEL=0,
	 * and tenderd's OpenSSL by the configuration above). */
	int ports[2] = { s.device_port, s.http_port };
	for (int i = 0; i < 2; i++) {
		snprintf(cmd, sizeof cmd, "openssl s_client -connect 127.0.0.1:%d -tls1_1 -cipher "
			 "DEFAULT@SECLEVEL=0 </dev/null 2>&1", ports[i]);
		ck_assert_int_ne(sh(cmd, &out), 0);
		ck_assert_msg(strstr(out, "Cipher is (NONE)") != NULL, "port %d: %s", ports[i], out);
		free(out);
	}
	unsetenv("OPENSSL_CONF");

	/* A plain ws client on the wss port: no welcome. */
	char url[128];
	snprintf(url, sizeof url, "ws://127.0.0.1:%d/v1/device", s.device_port);
	char *const plain[] = { (char *)th_bin("tender-sim"), "--url", url, "--id", DEV, "--secret", secret,
				"--log-count", "1", "--exit-when-done", NULL };
	ck_assert_int_eq(th_run(plain, &out, 30), 1);
	ck_assert_ptr_null(strstr(out, "welcome " DEV));
	ck_assert_ptr_nonnull(strstr(out, "connect-error " DEV));
	free(out);
	/* Nor does a plain HTTP upgrade get a 101. */
	snprintf(cmd, sizeof cmd, "curl -sS -i --max-time 5 -H 'Connection: Upgrade' -H 'Upgrade: websocket' "
		 "-H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "
		 "http://127.0.0.1:%d/v1/device 2>&1", s.device_port);
	ck_assert_int_ne(sh(cmd, &out), 0);
	ck_assert_ptr_null(strstr(out, "101"));
	free(out);
	json_t *d = th_get_json(&s, "/v1/devices/" DEV, 200);
	ck_assert(json_is_false(json_object_get(d, "online")));
	json_decref(d);
	free(secret);
}
END_TEST

START_TEST(tender_sim_over_wss)
{
	char cmd[1024], *out = NULL;

	start_tls();
	char *secret = th_register(&s, DEV, NULL);

	/* Verification on, without our CA: the self-signed certificate is refused. */
	char *const unverified[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV,
				     "--secret", secret, "--log-count", "1", "--exit-when-done", NULL };
	ck_assert_int_eq(th_run(unverified, &out, 30), 1);
	ck_assert_ptr_null(strstr(out, "welcome " DEV));
	ck_assert_ptr_nonnull(strstr(out, "connect-error " DEV));
	free(out);
	ck_assert_int_eq(th_count_events(&s, DEV, "Device connected"), 0);

	/* With --ca: online, and its log line is a [Device] line. */
	char *const argv[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--ca", cert, "--id", DEV,
			      "--secret", secret, "--log-count", "1", "--log-text", "hello over tls",
			      "--duration", "60", NULL };
	sim = th_spawn(argv, th_tmp(&s, "sim.out"));
	ck_assert_int_eq(th_wait_file(th_tmp(&s, "sim.out"), "welcome " DEV, 10000), 0);
	ck_assert_int_eq(th_wait_online(&s, DEV, 1, 5000), 0);
	ck_assert_int_ge(th_wait_event(&s, DEV, "device", "hello over tls", 5000), 1);
	snprintf(cmd, sizeof cmd, "'%s' --url %s --cacert '%s' --token %s logs %s 2>&1",
		 th_bin("tenderctl"), s.http_url, cert, s.token, DEV);
	ck_assert_int_eq(sh(cmd, &out), 0);
	ck_assert_msg(strstr(out, "[Device] hello over tls") != NULL, "%s", out);
	free(out);
	kill(sim, SIGTERM);
	ck_assert_int_eq(th_wait_pid(sim, 10000), 0);
	sim = -1;
	ck_assert_int_eq(th_wait_online(&s, DEV, 0, 5000), 0);
	free(secret);
}
END_TEST

/* tenderd with these TLS options must not start: exit 2 and err in its stderr. */
static void assert_refused(const char *opts, const char *err1, const char *err2)
{
	char cmd[1024], dir[96], *out = NULL;
	snprintf(dir, sizeof dir, "%s/data", tmp);
	snprintf(cmd, sizeof cmd, "exec '%s' --data-dir '%s' --device-port 0 --http-port 0 %s 2>&1",
		 th_bin("tenderd"), dir, opts);
	int rc = sh(cmd, &out);
	ck_assert_msg(rc == 2, "exit %d: %s", rc, out);
	ck_assert_msg(strstr(out, err1) && (!err2 || strstr(out, err2)), "%s", out);
	ck_assert_ptr_null(strstr(out, "listening"));
	free(out);
}

START_TEST(bad_tls_settings_refuse_to_start)
{
	char opts[512], missing[160], msg[320];

	snprintf(opts, sizeof opts, "--tls-cert '%s' --tls-key '%s'", cert, other_key);
	snprintf(msg, sizeof msg, "the key in %s does not match the certificate in %s", other_key, cert);
	assert_refused(opts, msg, NULL);

	snprintf(missing, sizeof missing, "%s/nowhere.pem", tmp);
	snprintf(opts, sizeof opts, "--tls-cert '%s' --tls-key '%s'", missing, key);
	snprintf(msg, sizeof msg, "--tls-cert: cannot read %s: No such file or directory", missing);
	assert_refused(opts, msg, NULL);

	snprintf(opts, sizeof opts, "--tls-cert '%s' --tls-key '%s'", cert, missing);
	snprintf(msg, sizeof msg, "--tls-key: cannot read %s", missing);
	assert_refused(opts, msg, NULL);

	snprintf(opts, sizeof opts, "--tls-cert '%s'", cert);
	assert_refused(opts, "--tls-cert and --tls-key go together", NULL);

	/* A key where the certificate should be. */
	snprintf(opts, sizeof opts, "--tls-cert '%s' --tls-key '%s'", key, key);
	snprintf(msg, sizeof msg, "%s holds no PEM certificate", key);
	assert_refused(opts, msg, NULL);

	/* The config file names the same settings. */
	char conf[160];
	snprintf(conf, sizeof conf, "%s/tenderd.conf", tmp);
	FILE *f = fopen(conf, "w");
	fprintf(f, "tls-cert = %s\ntls-key = %s\n", other_cert, key);
	fclose(f);
	snprintf(opts, sizeof opts, "--config '%s'", conf);
	assert_refused(opts, "does not match the certificate", other_cert);
}
END_TEST

/* Registers n devices and writes them as a --creds file. */
static void write_creds(const char *path, int n, int first)
{
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	for (int i = 0; i < n; i++) {
		char id[17];
		snprintf(id, sizeof id, "00000000000010%02x", first + i);
		char *secret = th_register(&s, id, NULL);
		fprintf(f, "%s %s\n", id, secret);
		free(secret);
	}
	fclose(f);
}

/* A raw TCP connection to the HTTP port, or -1. */
static int tcp_connect(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { 5, 0 };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	return fd;
}

/* Sends a keep-alive GET /healthz on fd and reads the whole answer into buf
 * (1024 bytes); returns its length (0: closed unanswered). */
static size_t tcp_healthz(int fd, char *buf)
{
	const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
	size_t len = 0;
	if (write(fd, req, sizeof req - 1) < 0)
		return 0;
	buf[0] = '\0';
	while (len < 1023) {
		ssize_t n = read(fd, buf + len, 1023 - len);
		if (n <= 0)
			break;
		len += (size_t)n;
		buf[len] = '\0';
		if (strchr(buf, '}'))
			break; /* the end of the JSON body */
	}
	buf[len] = '\0';
	return len;
}

/* A connection to the HTTP API answered 200, so it counts.  A closed
 * connection's slot is free only once the server notices the close: the
 * harness's requests just before may still hold some (then the answer is a
 * 503), so wait (5 s at most) for one. */
static int http_slot(int port)
{
	char buf[1024];
	for (int i = 0; i < 100; i++) {
		int fd = tcp_connect(port);
		if (fd >= 0 && tcp_healthz(fd, buf) > 0 && strstr(buf, " 200 "))
			return fd;
		if (fd >= 0)
			close(fd);
		usleep(50 * 1000);
	}
	ck_abort_msg("no HTTP connection was answered within 5 s");
	return -1;
}

START_TEST(per_address_limit)
{
	char cmd[1024], creds[300], buf[1024], *out = NULL;

	/* Plain text: the limit is the same with or without TLS. */
	th_server_start(&s, "--max-conns-per-ip 5");
	snprintf(creds, sizeof creds, "%s", th_tmp(&s, "five.creds"));
	write_creds(creds, 5, 1);
	char *const five[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--creds", creds,
			       "--log-rate", "2", "--duration", "90", NULL };
	sim = th_spawn(five, th_tmp(&s, "five.out"));
	for (int i = 1; i <= 5; i++) {
		char line[64];
		snprintf(line, sizeof line, "welcome 00000000000010%02x", i);
		ck_assert_int_eq(th_wait_file(th_tmp(&s, "five.out"), line, 10000), 0);
	}
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"device_conns_per_ip\"}"), 0);

	/* The 6th, a registered device, is answered 503 before the upgrade. */
	char *secret = th_register(&s, DEV, NULL);
	char *const sixth[] = { (char *)th_bin("tender-sim"), "--url", s.ws_url, "--id", DEV, "--secret",
				secret, "--log-count", "1", "--exit-when-done", NULL };
	snprintf(cmd, sizeof cmd, "exec '%s' --url %s --id %s --secret %s --log-count 1 --exit-when-done 2>&1",
		 th_bin("tender-sim"), s.ws_url, DEV, secret);
	ck_assert_int_eq(sh(cmd, &out), 1);
	ck_assert_msg(strstr(out, "connect-error " DEV) && strstr(out, "503") && !strstr(out, "welcome " DEV),
		      "%s", out);
	free(out);
	/* The reason, as any client sees it. */
	snprintf(cmd, sizeof cmd, "curl -sS -i --max-time 10 -H 'Connection: Upgrade' -H 'Upgrade: websocket' "
		 "-H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "
		 "http://127.0.0.1:%d/v1/device 2>&1", s.device_port);
	sh(cmd, &out);
	ck_assert_msg(strstr(out, " 503 ") && strstr(out, REFUSED), "%s", out);
	free(out);
	ck_assert_int_eq(th_metric(&s, "tender_errors_total{kind=\"device_conns_per_ip\"}"), 2);

	/* The five are still served: online, and still logging. */
	for (int i = 1; i <= 5; i++) {
		char id[17], line[64];
		snprintf(id, sizeof id, "00000000000010%02x", i);
		ck_assert_int_eq(th_wait_online(&s, id, 1, 2000), 0);
		snprintf(line, sizeof line, "hello from sim %d", 6);
		ck_assert_int_ge(th_wait_event(&s, id, "device", line, 10000), 1);
	}
	char *five_out = th_read_file(th_tmp(&s, "five.out"));
	ck_assert_ptr_null(strstr(five_out, "closed"));
	free(five_out);

	/* Once they go, the address may connect again: the count follows closes. */
	kill(sim, SIGTERM);
	ck_assert_int_eq(th_wait_pid(sim, 10000), 0);
	sim = -1;
	for (int i = 1; i <= 5; i++) {
		char id[17];
		snprintf(id, sizeof id, "00000000000010%02x", i);
		ck_assert_int_eq(th_wait_online(&s, id, 0, 5000), 0);
	}
	ck_assert_int_eq(th_run(sixth, &out, 30), 0);
	ck_assert_ptr_nonnull(strstr(out, "welcome " DEV));
	free(out);

	/* Sockets that never finish a handshake count too (they hold a slot
	 * for up to 10 s): with five silent ones the device is refused 503, and
	 * past the limit and 16 more the address's sockets are closed at once,
	 * so one address cannot take every slot of the endpoint. */
	int silent[5 + 16];
	for (int i = 0; i < 5; i++)
		ck_assert_int_ge(silent[i] = tcp_connect(s.device_port), 0);
	/* (accepted in order: before the device's connection) */
	snprintf(cmd, sizeof cmd, "exec '%s' --url %s --id %s --secret %s --log-count 1 --exit-when-done 2>&1",
		 th_bin("tender-sim"), s.ws_url, DEV, secret);
	ck_assert_int_eq(sh(cmd, &out), 1);
	ck_assert_msg(strstr(out, "connect-error " DEV) && strstr(out, "503"), "%s", out);
	free(out);
	for (int i = 5; i < 5 + 16; i++)
		ck_assert_int_ge(silent[i] = tcp_connect(s.device_port), 0);
	int over = tcp_connect(s.device_port);
	ck_assert_int_ge(over, 0);
	ck_assert_int_eq(read(over, buf, sizeof buf), 0); /* closed at accept, nothing said */
	close(over);
	for (int i = 0; i < 5 + 16; i++)
		close(silent[i]);
	ck_assert_int_eq(th_run(sixth, &out, 30), 0);
	ck_assert_ptr_nonnull(strstr(out, "welcome " DEV));
	free(out);

	/* The HTTP API: with five keep-alive connections from this address, a
	 * sixth is answered 503 with the reason (and closed) while the five are
	 * still served; their slots free as they close. */
	int fds[5];
	for (int i = 0; i < 5; i++)
		fds[i] = http_slot(s.http_port);
	int extra = tcp_connect(s.http_port);
	ck_assert_int_ge(extra, 0);
	ck_assert_uint_gt(tcp_healthz(extra, buf), 0);
	ck_assert_msg(strstr(buf, " 503 ") && strstr(buf, "Retry-After: 1") &&
		      strstr(buf, "too many connections from this address: it holds 5 already (--max-conns-per-ip)"),
		      "%s", buf);
	ck_assert_int_eq(read(extra, buf, sizeof buf), 0); /* Connection: close */
	close(extra);
	ck_assert_uint_gt(tcp_healthz(fds[0], buf), 0);
	ck_assert_msg(strstr(buf, " 200 "), "%s", buf);
	for (int i = 0; i < 5; i++)
		close(fds[i]);
	close(http_slot(s.http_port));
	/* The harness's own requests (same address) get through again. */
	json_t *d = th_get_json(&s, "/v1/devices/" DEV, 200);
	json_decref(d);
	ck_assert_int_ge(th_metric(&s, "tender_errors_total{kind=\"http_conns_per_ip\"}"), 1);
	free(secret);
}
END_TEST

int main(void)
{
	const TTest *tests[] = {
		https_api_and_plain_http_refused,
		device_port_handshake_and_plain_ws_refused,
		tender_sim_over_wss,
		bad_tls_settings_refuse_to_start,
		per_address_limit,
	};
	return th_run_tests("10_tls", 120, tests, sizeof tests / sizeof tests[0], setup, teardown);
}

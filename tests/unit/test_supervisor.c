/* tests/unit/test_supervisor.c -- the agent supervisor (agents/supervisor.c)
 * with a real store in a temporary data dir and a stub for its one other
 * neighbour, the device loop (device_loop_send records the frames).
 *
 * The file includes supervisor.c itself, so that a test can do what only
 * another node could: hand a worker an envelope with no Lua state, or one
 * that does not decode.  Nothing of this is in the public API.
 *
 * Cases: a shutdown is final (no agent starts or arrives after it, each
 * ends with one stop line, every HTTP caller is answered) while events keep
 * coming. */
#include "supervisor.c"

#include <check.h>
#include <ftw.h>
#include <stdatomic.h>
#include <sys/stat.h>

/* --- the stub device loop ------------------------------------------------------ */

static pthread_mutex_t sent_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *sent; /* [{"device","frame"}], as device_loop_send got them */

int device_loop_send(device_loop *d, uint64_t id, uint64_t conn, const void *data, size_t len, int binary)
{
	char hex[17];
	tn_device_id_format(id, hex);
	pthread_mutex_lock(&sent_lock);
	json_array_append_new(sent, json_pack("{ss ss#}", "device", hex, "frame", (const char *)data, (int)len));
	pthread_mutex_unlock(&sent_lock);
	return 0;
}

static int dummy_loop;
#define STUB_LOOP ((device_loop *)&dummy_loop)

/* --- fixture ------------------------------------------------------------------- */

static char root[64], dir[80];
static store *st;
static supervisor *sup;

static void start_sup(int workers)
{
	sup_options opt = { .workers = workers, .offline_queue = 4 };
	tn_error err = { 0 };
	ck_assert_msg(sup_start(&sup, &opt, st, &err) == 0, "sup_start: %s", err.msg);
	sup_set_device_loop(sup, STUB_LOOP);
}

static void setup(void)
{
	store_options opt = { 0 };
	tn_error err = { 0 };
	snprintf(dir, sizeof dir, "%s/XXXXXX", root);
	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_msg(store_open(&st, dir, &opt, &err) == 0, "store_open: %s", err.msg);
	sent = json_array();
	sup = NULL;
}

static void teardown(void)
{
	sup_free(sup);
	sup = NULL;
	store_close(st);
	st = NULL;
	json_decref(sent);
	sent = NULL;
}

static uint64_t add_device(unsigned n, const char *group)
{
	tn_error err = { 0 };
	uint64_t id = 0x00000000000e0000ULL + n;
	ck_assert_msg(store_device_create(st, id, "x", NULL, group, &err) == 0, "%s", err.msg);
	return id;
}

static void deploy(const char *group, const char *code)
{
	tn_error err = { 0 };
	ck_assert_msg(sup_deploy(sup, group, code, strlen(code), &err) == 0, "deploy: %s", err.msg);
}

/* The device's log lines of this type (EV_STATUS, EV_AGENT), oldest first
 * (owned), once everything queued is committed. */
static json_t *lines_of(uint64_t device, event_type type)
{
	json_t *out = json_array();
	sqlite3_stmt *q;
	store_flush(st);
	sqlite3 *db = store_reader_get(st);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT msg FROM events WHERE device = ? AND type = ? ORDER BY id",
					    -1, &q, NULL), SQLITE_OK);
	sqlite3_bind_int64(q, 1, (int64_t)device);
	sqlite3_bind_int(q, 2, (int)type);
	while (sqlite3_step(q) == SQLITE_ROW)
		json_array_append_new(out, json_string((const char *)sqlite3_column_text(q, 0)));
	sqlite3_finalize(q);
	store_reader_put(st, db);
	return out;
}

static char *agent_id_of(uint64_t device)
{
	char hex[17], *id = NULL;
	int exists;
	tn_device_id_format(device, hex);
	free(sup__group_of(sup, hex, &exists, &id));
	ck_assert_ptr_nonnull(id);
	return id;
}

/* An HTTP caller: counts and keeps its answers. */
struct caller {
	_Atomic int answers;
	_Atomic int status;
	char body[256];
};

static void caller_done(void *arg, int status, const char *const *headers, const char *body, size_t len)
{
	struct caller *c = arg;
	snprintf(c->body, sizeof c->body, "%.*s", (int)len, body);
	atomic_store(&c->status, status);
	atomic_fetch_add(&c->answers, 1);
}

static int http(const char *agent_id, const char *path, struct caller *c)
{
	static const char *const no_headers[] = { NULL };
	agent_http_req req = { "GET", path, "", "", 0, no_headers };
	return sup_http(sup, agent_id, &req, caller_done, c);
}

/* --- a shutdown is final ---------------------------------------------------------- */

#define NSTOP 16

struct flood {
	uint64_t ids[NSTOP];
	char *agent_ids[NSTOP];
	_Atomic int stop;
	struct caller callers[NSTOP];
	_Atomic int asked;
};

static void *flood_main(void *arg)
{
	struct flood *f = arg;
	for (unsigned n = 0; !atomic_load(&f->stop); n++) {
		int i = (int)(n % NSTOP);
		switch (n % 5) {
		case 0:
			sup_device_online(sup, f->ids[i], n);
			break;
		case 1: {
			int from, to;
			tn_error err = { 0 };
			sup_migrate(sup, f->ids[i], -1, &from, &to, &err);
			break;
		}
		case 2:
			if (http(f->agent_ids[i], "/", &f->callers[i]) == 0)
				atomic_fetch_add(&f->asked, 1);
			break;
		default:
			sup_device_message(sup, f->ids[i], "ping", "1");
		}
		if (n % 64 == 0)
			usleep(100);
	}
	return NULL;
}

/* Events keep coming while the supervisor stops, and after: no agent starts
 * or arrives after its "Agent stopped: shutdown.", every agent that started
 * ends with exactly one stop line, and every HTTP caller gets an answer. */
START_TEST(a_shutdown_is_final)
{
	static struct flood f;
	memset(&f, 0, sizeof f);
	start_sup(2);
	deploy("lab", "device.on('ping', function(d) device.send('pong', d) end)\n"
		      "http.onrequest(function(req, res) res.send(200, 'hi') end)\n"
		      "timer.every(0.01, function() end)\n");
	for (int i = 0; i < NSTOP; i++) {
		f.ids[i] = add_device((unsigned)i, "lab");
		f.agent_ids[i] = agent_id_of(f.ids[i]);
	}
	pthread_t t;
	ck_assert_int_eq(pthread_create(&t, NULL, flood_main, &f), 0);
	usleep(300 * 1000);
	sup_stop(sup);
	usleep(100 * 1000); /* and events after the stop, too */
	atomic_store(&f.stop, 1);
	pthread_join(t, NULL);
	int answers = 0, started = 0;
	for (int i = 0; i < NSTOP; i++)
		answers += atomic_load(&f.callers[i].answers);
	ck_assert_int_gt(atomic_load(&f.asked), 0);
	ck_assert_int_eq(answers, atomic_load(&f.asked));
	for (int i = 0; i < NSTOP; i++) {
		json_t *lines = lines_of(f.ids[i], EV_STATUS), *v;
		size_t k;
		int running = 0;
		json_array_foreach(lines, k, v) {
			const char *msg = json_string_value(v);
			if (strcmp(msg, "Agent started.") == 0) {
				ck_assert_msg(!running, "%016llx: started twice: %s", (unsigned long long)f.ids[i],
					      json_dumps(lines, 0));
				running = 1;
				started++;
			} else if (strncmp(msg, "Agent stopped: ", 15) == 0) {
				ck_assert_msg(running, "%016llx: stopped while not running: %s",
					      (unsigned long long)f.ids[i], json_dumps(lines, 0));
				running = 0;
			}
		}
		ck_assert_msg(!running, "%016llx: never stopped: %s", (unsigned long long)f.ids[i], json_dumps(lines, 0));
		if (json_array_size(lines)) {
			const char *last = json_string_value(json_array_get(lines, json_array_size(lines) - 1));
			ck_assert_msg(strcmp(last, "Agent stopped: shutdown.") == 0, "%016llx: ends with %s",
				      (unsigned long long)f.ids[i], last);
		}
		json_decref(lines);
		free(f.agent_ids[i]);
	}
	ck_assert_int_ge(started, NSTOP);
	/* Routed after the stop: answered at once. */
	struct caller late = { 0 };
	char *aid = agent_id_of(f.ids[0]);
	ck_assert_int_eq(http(aid, "/", &late), 0);
	ck_assert_int_eq(atomic_load(&late.answers), 1);
	ck_assert_int_eq(atomic_load(&late.status), 503);
	free(aid);
}
END_TEST

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

int main(void)
{
	snprintf(root, sizeof root, "/tmp/tn-sup-XXXXXX");
	if (!mkdtemp(root))
		return 1;
	log_level = LOG_ERR;
	Suite *s = suite_create("supervisor");
	TCase *tc = tcase_create("supervisor");
	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, a_shutdown_is_final);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return failed ? 1 : 0;
}

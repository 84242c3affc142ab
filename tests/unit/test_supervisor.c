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
 * coming; a move from another node (no Lua state: the cross-node rebuild,
 * with the same code and with other code); a move whose envelope does not
 * decode, or that lost an event, answers every caller and says so; a
 * delete of an agent moving between workers; timers of many agents and a
 * log-drop report coming due. */
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

static int log_rate;         /* sup_options.log_rate of the next start_sup */
static agent_limits limits;  /* and its limits (0: the defaults) */

static void start_sup(int workers)
{
	sup_options opt = { .workers = workers, .offline_queue = 4, .log_rate = log_rate, .limits = limits };
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
	log_rate = 0;
	memset(&limits, 0, sizeof limits);
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

static int count_lines(uint64_t device, event_type type, const char *msg)
{
	json_t *l = lines_of(device, type), *v;
	size_t i;
	int n = 0;
	json_array_foreach(l, i, v)
		n += strcmp(json_string_value(v), msg) == 0;
	json_decref(l);
	return n;
}

static void wait_answers(struct caller *c, int n)
{
	for (int i = 0; i < 1000 && atomic_load(&c->answers) < n; i++)
		usleep(10 * 1000);
	ck_assert_int_eq(atomic_load(&c->answers), n);
}

/* What GET /v1/devices/{id}/agent says of it (owned). */
static json_t *info_of(uint64_t device)
{
	json_t *info = sup_agent_info(sup, device);
	ck_assert_ptr_nonnull(info);
	return info;
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

/* --- moves from another node ------------------------------------------------------ */

/* Frames sent to the device with this msg name, in order (owned). */
static json_t *frames_named(uint64_t device, const char *name)
{
	char hex[17];
	json_t *out = json_array(), *v;
	size_t i;
	tn_device_id_format(device, hex);
	pthread_mutex_lock(&sent_lock);
	json_array_foreach(sent, i, v) {
		json_t *frame = json_loads(json_string_value(json_object_get(v, "frame")), 0, NULL);
		if (strcmp(json_string_value(json_object_get(v, "device")), hex) == 0 &&
		    strcmp(json_string_value(json_object_get(frame, "name")), name) == 0)
			json_array_append(out, json_object_get(frame, "data"));
		json_decref(frame);
	}
	pthread_mutex_unlock(&sent_lock);
	return out;
}

static size_t wait_frames(uint64_t device, const char *name, size_t n)
{
	size_t have = 0;
	for (int i = 0; i < 500 && have < n; i++) {
		json_t *f = frames_named(device, name);
		have = json_array_size(f);
		json_decref(f);
		if (have < n)
			usleep(10 * 1000);
	}
	return have;
}

/* A reply handle for an HTTP caller, as the sending node registers it. */
static uint64_t http_handle(struct caller *c)
{
	struct ev tmp = { .kind = EV_HTTP, .done = caller_done, .done_arg = c };
	uint64_t h = sup__reply_put(sup, &tmp);
	ck_assert_uint_ne(h, 0);
	return h;
}

/* What a move from another node does on this one: the agent arrives on
 * worker 0 with an envelope (env encoded, or raw bytes) and no Lua state;
 * `handles` are the reply handles its events use. */
static void arrive(uint64_t device, const agent_env *env, const char *raw, size_t rawlen, const uint64_t *handles,
		   uint32_t nhandles)
{
	tn_error err = { 0 };
	struct ev *in = sup__ev(EV_MIGRATE_IN, device);
	ck_assert_ptr_nonnull(in);
	if (env) {
		ck_assert_msg(agent_env_encode(env, &in->env, &in->env_len, &err) == 0, "%s", err.msg);
	} else {
		in->env = malloc(rawlen);
		memcpy(in->env, raw, rawlen);
		in->env_len = rawlen;
	}
	in->handles = calloc(nhandles + 1, sizeof *in->handles);
	memcpy(in->handles, handles, nhandles * sizeof *handles);
	in->nhandles = nhandles;
	struct agent *a = calloc(1, sizeof *a);
	a->device = device;
	tn_device_id_format(device, a->hex);
	a->sup = sup;
	a->state = ST_MIGRATING;
	int oom = 0;
	pthread_mutex_lock(&sup->route_lock);
	ck_assert_ptr_null(idmap_get(&sup->route, device));
	idmap_put(&sup->route, device, a, &oom);
	sup->workers[0].nagents++;
	sup__push(&sup->workers[0], in);
	pthread_mutex_unlock(&sup->route_lock);
}

static const char *moving_code =
	"local n = 0\n"
	"timer.every(100, function() n = n + 1 device.send('tick', n) end)\n"   /* id 1 */
	"timer.after(100, function() device.send('late') end)\n"                 /* id 2 */
	"device.on('hello', function(d) device.send('hi', d) end)\n"
	"http.onrequest(function(req, res) res.send(200, {saved = server.load(), path = req.path}) end)\n";

static char *saved_of(uint64_t device)
{
	char hex[17];
	tn_device_id_format(device, hex);
	struct agent a = { .sup = sup };
	memcpy(a.hex, hex, sizeof hex);
	return sup__host_load(&a);
}

/* An envelope as another node running moving_code would send it. */
static void moving_env(agent_env *env, agent_env_event ev[2], agent_env_timer t[2], uint64_t device, uint64_t reply,
		       int same_code)
{
	memset(env, 0, sizeof *env);
	memset(ev, 0, 2 * sizeof *ev);
	env->device = device;
	env->agent_id = "ag_elsewhere";
	env->group = "lab";
	env->state = "running";
	env->last_error = "";
	env->saved = "{\"v\":2}";
	env->events = 10;
	env->restarts = 3;
	env->restart_in_ms = -1;
	env->connected = 1;
	env->conn = 7;
	if (same_code) {
		unsigned int hlen = 0;
		EVP_Digest(moving_code, strlen(moving_code), env->code_hash, &hlen, EVP_sha256(), NULL);
	}
	/* Timer 1 is due soon there; timer 9 is none of this code's. */
	t[0] = (agent_env_timer){ 1, 30, 100000 };
	t[1] = (agent_env_timer){ 9, 10, 0 };
	env->timers = t;
	env->ntimers = 2;
	env->next_timer_id = 3;
	ev[0] = (agent_env_event){ .kind = AGENT_ENV_MSG, .name = "hello", .data = "5" };
	ev[1] = (agent_env_event){ .kind = AGENT_ENV_HTTP, .reply = reply, .method = "GET", .path = "/x",
				   .query = "", .body = "" };
	env->ev = ev;
	env->nev = 2;
}

/* The cross-node rule (sup__rebuild): with no Lua state the agent starts
 * from its group's code, takes the envelope's saved state into this node's
 * store and its counters, re-arms the timers of the same code by id, and
 * runs the events that came along, answering through their handles. */
START_TEST(a_move_from_another_node_rebuilds_the_agent)
{
	start_sup(2);
	deploy("lab", moving_code);
	uint64_t dev = add_device(1, "lab");
	struct caller c = { 0 };
	uint64_t h = http_handle(&c);
	agent_env env;
	agent_env_event ev[2];
	agent_env_timer t[2];
	moving_env(&env, ev, t, dev, h, 1);
	arrive(dev, &env, NULL, 0, &h, 1);

	wait_answers(&c, 1);
	ck_assert_int_eq(atomic_load(&c.status), 200);
	ck_assert_msg(strstr(c.body, "\"saved\":{\"v\":2}") && strstr(c.body, "\"path\":\"/x\""), "%s", c.body);
	char *saved = saved_of(dev);
	ck_assert_str_eq(saved, "{\"v\":2}");
	free(saved);
	ck_assert_int_eq(count_lines(dev, EV_STATUS, "Agent started."), 1);
	/* The message ran, the device (connected there) got the answer. */
	ck_assert_uint_eq(wait_frames(dev, "hi", 1), 1);
	/* Timer 1 kept its due time (30 ms, not 100 s) and interval. */
	ck_assert_uint_eq(wait_frames(dev, "tick", 1), 1);
	json_t *info = info_of(dev);
	ck_assert_str_eq(json_string_value(json_object_get(info, "state")), "running");
	ck_assert_int_eq(json_integer_value(json_object_get(info, "restarts")), 3);
	ck_assert_int_ge(json_integer_value(json_object_get(info, "events")), 12);
	ck_assert(json_is_true(json_object_get(info, "device_connected")));
	json_decref(info);
}
END_TEST

/* With other code than the envelope's, the move is a reload: nothing is
 * re-armed (timer 1 stays 100 s away), the rest is as above. */
START_TEST(a_move_from_another_node_with_other_code_re_arms_nothing)
{
	start_sup(2);
	deploy("lab", moving_code);
	uint64_t dev = add_device(2, "lab");
	struct caller c = { 0 };
	uint64_t h = http_handle(&c);
	agent_env env;
	agent_env_event ev[2];
	agent_env_timer t[2];
	moving_env(&env, ev, t, dev, h, 0);
	arrive(dev, &env, NULL, 0, &h, 1);
	wait_answers(&c, 1);
	ck_assert_int_eq(atomic_load(&c.status), 200);
	ck_assert_uint_eq(wait_frames(dev, "hi", 1), 1);
	usleep(300 * 1000);
	json_t *ticks = frames_named(dev, "tick");
	ck_assert_uint_eq(json_array_size(ticks), 0);
	json_decref(ticks);
}
END_TEST

/* An envelope that does not decode: its HTTP caller and state query are
 * answered at once, the device's log says what happened, and the agent
 * starts again from its code on its next event. */
START_TEST(a_move_that_fails_answers_every_caller)
{
	start_sup(2);
	deploy("lab", moving_code);
	uint64_t dev = add_device(3, "lab");
	struct caller c = { 0 };
	struct sup_info_wait wait = { .done = 0 };
	pthread_mutex_init(&wait.lock, NULL);
	pthread_cond_init(&wait.cond, NULL);
	struct ev tmp = { .kind = EV_INFO, .wait = &wait };
	uint64_t handles[2] = { http_handle(&c), sup__reply_put(sup, &tmp) };
	static const char junk[] = "TNAE\x01\x00\x00\x00\xff\xff\xff\x7f";
	arrive(dev, NULL, junk, sizeof junk - 1, handles, 2);
	wait_answers(&c, 1);
	ck_assert_int_eq(atomic_load(&c.status), 503);
	ck_assert_msg(strstr(c.body, "\"code\":\"unavailable\"") && strstr(c.body, "try again"), "%s", c.body);
	pthread_mutex_lock(&wait.lock);
	while (!wait.done)
		pthread_cond_wait(&wait.cond, &wait.lock);
	pthread_mutex_unlock(&wait.lock);
	ck_assert_ptr_null(wait.info);
	json_t *lines = lines_of(dev, EV_STATUS);
	ck_assert_uint_eq(json_array_size(lines), 1);
	const char *line = json_string_value(json_array_get(lines, 0));
	ck_assert_msg(strncmp(line, "Agent move failed: its events in flight were dropped (migration envelope", 72) == 0,
		      "%s", line);
	json_decref(lines);
	/* It runs again on its next event. */
	struct caller again = { 0 };
	char *aid = agent_id_of(dev);
	ck_assert_int_eq(http(aid, "/y", &again), 0);
	wait_answers(&again, 1);
	ck_assert_int_eq(atomic_load(&again.status), 200);
	ck_assert_int_eq(count_lines(dev, EV_STATUS, "Agent started."), 1);
	free(aid);
	pthread_mutex_destroy(&wait.lock);
	pthread_cond_destroy(&wait.cond);
}
END_TEST

/* A handle the move made that no event in the envelope uses (an event lost
 * on the way) is answered too, and the loss logged. */
START_TEST(a_move_answers_a_caller_whose_event_was_lost)
{
	start_sup(2);
	deploy("lab", moving_code);
	uint64_t dev = add_device(4, "lab");
	struct caller c = { 0 }, orphan = { 0 };
	uint64_t handles[2] = { http_handle(&c), http_handle(&orphan) };
	agent_env env;
	agent_env_event ev[2];
	agent_env_timer t[2];
	moving_env(&env, ev, t, dev, handles[0], 1);
	arrive(dev, &env, NULL, 0, handles, 2);
	wait_answers(&c, 1);
	wait_answers(&orphan, 1);
	ck_assert_int_eq(atomic_load(&c.status), 200);
	ck_assert_int_eq(atomic_load(&orphan.status), 503);
	ck_assert_int_eq(count_lines(dev, EV_STATUS, "Agent move lost 1 of its events in flight"), 1);
}
END_TEST

/* --- what comes due ----------------------------------------------------------------- */

/* Many agents on one worker, each with its own timers: every one fires, as
 * due (the worker's heap of due times, not a walk over all its agents). */
START_TEST(timers_come_due_across_many_agents)
{
	enum { N = 300 };
	start_sup(1);
	deploy("lab", "local ticks = 0\n"
		      "timer.after(0.02 + math.random() * 0.3, function() device.send('fired', 1) end)\n"
		      "local t\n"
		      "t = timer.every(0.03 + math.random() * 0.05, function()\n"
		      "  ticks = ticks + 1\n"
		      "  if ticks == 3 then t:cancel() device.send('done', ticks) end\n"
		      "end)\n");
	uint64_t ids[N];
	for (int i = 0; i < N; i++) {
		ids[i] = add_device(1000 + (unsigned)i, "lab");
		sup_device_online(sup, ids[i], 1);
	}
	for (int i = 0; i < N; i++) {
		ck_assert_uint_eq(wait_frames(ids[i], "fired", 1), 1);
		ck_assert_uint_eq(wait_frames(ids[i], "done", 1), 1);
	}
	/* Once each: nothing fired twice, no timer after its cancel. */
	usleep(200 * 1000);
	for (int i = 0; i < N; i++) {
		json_t *f = frames_named(ids[i], "fired"), *d = frames_named(ids[i], "done");
		ck_assert_uint_eq(json_array_size(f), 1);
		ck_assert_uint_eq(json_array_size(d), 1);
		json_decref(f);
		json_decref(d);
	}
}
END_TEST

/* Log lines over --agent-log-rate are counted, and the count is reported a
 * second after the first drop even when no other event comes (it is due). */
START_TEST(a_log_drop_report_comes_due)
{
	log_rate = 5;
	start_sup(2);
	deploy("lab", "device.on('spam', function() for i = 1, 40 do server.log('line ' .. i) end end)\n");
	uint64_t dev = add_device(7, "lab");
	sup_device_message(sup, dev, "spam", NULL);
	json_t *lines = NULL;
	const char *report = NULL;
	for (int i = 0; i < 500 && !report; i++) {
		json_decref(lines);
		lines = lines_of(dev, EV_STATUS);
		json_t *v;
		size_t k;
		json_array_foreach(lines, k, v)
			if (strstr(json_string_value(v), "log lines dropped: over the limit of 5 per second"))
				report = json_string_value(v);
		if (!report)
			usleep(10 * 1000);
	}
	ck_assert_ptr_nonnull(report);
	json_t *agent = lines_of(dev, EV_AGENT);
	ck_assert_int_eq(atoi(report) + (int)json_array_size(agent), 40);
	json_decref(agent);
	json_decref(lines);
}
END_TEST

/* --- reading an agent without its worker ---------------------------------------------- */

/* Holds its worker in a handler until its saved state says go (let_go). */
static const char *holding_code =
	"device.on('hold', function()\n"
	"  server.log('holding')\n"
	"  while not (server.load() or {}).go do end\n"
	"  server.log('let go')\n"
	"end)\n"
	"device.on('ping', function() end)\n";

static void let_go(uint64_t device)
{
	struct sup__save sv = { NULL, "{\"go\":true}" };
	char hex[17];
	tn_error err = { 0 };
	tn_device_id_format(device, hex);
	sv.hex = hex;
	ck_assert_msg(store_sync(st, sup__save_tx, &sv, &err) == 0, "%s", err.msg);
}

struct reads {
	uint64_t busy, idle, seen, unknown;
	const char *busy_state, *idle_state, *seen_state, *unknown_state, *idle_state_later;
	json_t *idle_info;
	_Atomic int done;
};

/* What the API reads while the worker is held. */
static void *reads_main(void *arg)
{
	struct reads *r = arg;
	r->busy_state = sup_agent_state(sup, r->busy);
	r->idle_state = sup_agent_state(sup, r->idle);
	r->seen_state = sup_agent_state(sup, r->seen);
	r->unknown_state = sup_agent_state(sup, r->unknown);
	r->idle_info = sup_agent_info(sup, r->idle); /* nothing of its waits: at once */
	sup_device_message(sup, r->idle, "ping", NULL); /* waits behind the held one now */
	r->idle_state_later = sup_agent_state(sup, r->idle);
	atomic_store(&r->done, 1);
	return NULL;
}

static void *info_main(void *arg)
{
	struct reads *r = arg;
	return sup_agent_info(sup, r->idle);
}

/* With the only worker held by a handler, sup_agent_state answers for every
 * device, and sup_agent_info for an agent with nothing waiting, from what
 * the worker published; sup_agent_info for one whose event waits answers
 * after that event, counting it. */
START_TEST(an_agent_is_read_without_waiting_for_its_worker)
{
	limits = (agent_limits){ .instructions = 2000000000, .cpu_ms = 600000 };
	start_sup(1);
	deploy("lab", holding_code);
	struct reads r = { .busy = add_device(20, "lab"), .idle = add_device(21, "lab"),
			   .seen = add_device(22, "plain"), .unknown = add_device(23, "lab") };
	sup_device_online(sup, r.seen, 1);
	sup_device_online(sup, r.idle, 2);
	sup_device_online(sup, r.busy, 3);
	sup_device_message(sup, r.busy, "hold", NULL);
	int holding = 0;
	for (int i = 0; i < 1000 && !holding; i++) {
		holding = count_lines(r.busy, EV_AGENT, "holding");
		if (!holding)
			usleep(10 * 1000);
	}
	ck_assert_int_eq(holding, 1);

	pthread_t t;
	ck_assert_int_eq(pthread_create(&t, NULL, reads_main, &r), 0);
	for (int i = 0; i < 2000 && !atomic_load(&r.done); i++)
		usleep(10 * 1000);
	int done = atomic_load(&r.done);
	if (!done)
		let_go(r.busy); /* so that the thread ends, and the test with it */
	pthread_join(t, NULL);
	ck_assert_msg(done, "the reads waited for the held worker");
	ck_assert_int_eq(count_lines(r.busy, EV_AGENT, "let go"), 0);
	ck_assert_str_eq(r.busy_state, "running");
	ck_assert_str_eq(r.idle_state, "running");
	ck_assert_str_eq(r.seen_state, "no code");
	ck_assert_str_eq(r.unknown_state, "not started");
	ck_assert_str_eq(r.idle_state_later, "running");
	ck_assert_str_eq(json_string_value(json_object_get(r.idle_info, "state")), "running");
	ck_assert_int_eq(json_integer_value(json_object_get(r.idle_info, "events")), 1);
	ck_assert(json_is_true(json_object_get(r.idle_info, "device_connected")));
	ck_assert_str_eq(json_string_value(json_object_get(r.idle_info, "group")), "lab");
	json_decref(r.idle_info);

	/* Asked while its ping waits: the answer comes after the ping. */
	pthread_t ti;
	void *later = NULL;
	ck_assert_int_eq(pthread_create(&ti, NULL, info_main, &r), 0);
	let_go(r.busy);
	pthread_join(ti, &later);
	ck_assert_ptr_nonnull(later);
	ck_assert_int_eq(json_integer_value(json_object_get(later, "events")), 2);
	json_decref(later);
	ck_assert_int_eq(count_lines(r.busy, EV_AGENT, "let go"), 1);
	json_t *busy = info_of(r.busy);
	ck_assert_int_eq(json_integer_value(json_object_get(busy, "events")), 2);
	json_decref(busy);
}
END_TEST

/* --- deleting ------------------------------------------------------------------------ */

struct mover {
	uint64_t device;
	_Atomic int stop;
};

static void *mover_main(void *arg)
{
	struct mover *m = arg;
	while (!atomic_load(&m->stop)) {
		int from, to;
		tn_error err = { 0 };
		sup_migrate(sup, m->device, -1, &from, &to, &err);
		sup_device_message(sup, m->device, "ping", "1");
		sup_agent_state(sup, m->device); /* reads it on whichever worker, until it is gone */
		json_decref(sup_agent_info(sup, m->device)); /* waits: no backlog builds up */
	}
	return NULL;
}

/* A delete finds its agent even while it keeps moving between workers (a
 * move takes the delete along, in order with the other events), and
 * afterwards the agent is gone: no entry, nothing running, nothing saved. */
START_TEST(a_delete_follows_a_moving_agent)
{
	start_sup(3);
	deploy("lab", "device.on('ping', function() server.save({n = 1}) end)\n"
		      "timer.every(0.01, function() end)\n");
	for (unsigned n = 0; n < 20; n++) {
		uint64_t dev = add_device(100 + n, "lab");
		sup_device_online(sup, dev, 1);
		struct mover m = { .device = dev };
		pthread_t t;
		ck_assert_int_eq(pthread_create(&t, NULL, mover_main, &m), 0);
		usleep(20 * 1000);
		tn_error err = { 0 };
		ck_assert_int_eq(store_device_delete(st, dev, &err), 0);
		sup_device_deleted(sup, dev);
		atomic_store(&m.stop, 1);
		pthread_join(t, NULL);
		pthread_mutex_lock(&sup->route_lock);
		ck_assert_ptr_null(idmap_get(&sup->route, dev));
		pthread_mutex_unlock(&sup->route_lock);
		json_t *info = info_of(dev);
		ck_assert_str_eq(json_string_value(json_object_get(info, "state")), "not started");
		json_decref(info);
		char *saved = saved_of(dev);
		ck_assert_ptr_null(saved);
		json_t *lines = lines_of(dev, EV_STATUS);
		ck_assert_uint_eq(json_array_size(lines), 0);
		json_decref(lines);
	}
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
	tcase_add_test(tc, a_move_from_another_node_rebuilds_the_agent);
	tcase_add_test(tc, a_move_from_another_node_with_other_code_re_arms_nothing);
	tcase_add_test(tc, a_move_that_fails_answers_every_caller);
	tcase_add_test(tc, a_move_answers_a_caller_whose_event_was_lost);
	tcase_add_test(tc, a_delete_follows_a_moving_agent);
	tcase_add_test(tc, timers_come_due_across_many_agents);
	tcase_add_test(tc, a_log_drop_report_comes_due);
	tcase_add_test(tc, an_agent_is_read_without_waiting_for_its_worker);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return failed ? 1 : 0;
}

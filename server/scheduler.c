/* server/scheduler.c -- the update scheduler (see scheduler.h, docs/updates.md).
 *
 * A device's state within a rollout (rollout_devices.state):
 *
 *   pending --decide--> blocked(reason)            [final]
 *      |          \---> up_to_date                 [final]
 *      v
 *   triggered --fetch/status--> downloading --> downloaded --> installing
 *      |              |               |             |             |
 *      |              +---------------+-------------+-------------+--> completed [final]
 *      |                    (the device says hello with the new version)
 *      +--(device reports failed, a step passes its deadline, the device
 *          comes back with the old version after installing)--> failure:
 *              attempts <= retry_limit: retry_wait --(backoff)--> pending
 *              otherwise:               failed(reason)             [final]
 *   pending, retry_wait --(rollout aborted)--> aborted                 [final]
 *
 * Invariants:
 * - Every transition is committed, with its log line, before it is acted on:
 *   the offer is sent only after "triggered" is on disk.  A crash anywhere
 *   resumes from the committed state and never triggers a step twice; a
 *   device that reconnects mid-update is offered the same update id again
 *   (it resumes its download), which is not a new trigger.
 * - Transitions are conditional on the state they leave (UPDATE ... WHERE
 *   state = old), so an operator's abort and the scheduler never both win.
 * - An offer is made only to the connection whose hello was just checked by
 *   rollout_decide(); the device loop drops it if that connection is gone.
 *   Unknown or ambiguous flash is blocked unless allow_unknown_flash is set,
 *   and that override is logged in the device's log.
 * - A fetch is answered from memory (`downloads`, `images`) only with what
 *   the database said since the device's last transition: its entry is
 *   dropped by every transition of that device (sched__transition), by its
 *   hello and its disconnect, and all entries by an operator's sched_kick
 *   (rollout created, paused, resumed, aborted).  Rows in triggered or
 *   downloading change only through the scheduler's own transitions (an
 *   abort touches pending and retry_wait only; deleting a device closes its
 *   connection), so a fetch sees the same row as a query would.
 * ONLY the scheduler thread touches `live`, `downloads`, `images` and
 * `chunk`, and drives transitions. */
#define _GNU_SOURCE
#include "scheduler.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "device.h"
#include "fwstore.h"
#include "idmap.h"
#include "log.h"
#include "metrics.h"
#include "rollout.h"

enum msg_kind { MSG_ONLINE, MSG_OFFLINE, MSG_STATUS, MSG_FETCH };

struct sched_msg {
	struct sched_msg *next;
	enum msg_kind kind;
	uint64_t device, conn;
	char *hw, *fw, *sfdp, *error; /* owned */
	int has_jedec;
	uint32_t jedec;
	int64_t flash_size;
	char update_id[40];
	char state[16];
	int64_t offset, length;
};

/* What an online device's hello said (the facts decisions are made on).
 * One allocation with its strings (there is one per online device). */
struct live {
	uint64_t conn;
	char *hw, *fw, *sfdp;     /* NULL, or into text */
	int has_jedec;
	uint32_t jedec;
	int64_t flash_size;
	char text[];
};

struct scheduler {
	sched_options opt;
	store *st;
	device_loop *dev;
	pthread_t thread;
	int started;

	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct sched_msg *head, *tail;
	int stopping, kicked;
	int flush;                /* an operator's kick: forget every download */

	idmap live;               /* scheduler thread only */
	idmap downloads;          /* device id -> struct download; scheduler thread only */
	idmap images;             /* firmware id -> struct image; scheduler thread only */
	unsigned char chunk[8 + SCHED_MAX_CHUNK]; /* the frame being built; scheduler thread only */
	/* The query every hello runs, prepared once on a read connection the
	 * scheduler keeps (preparing it per hello was a quarter of tenderd's
	 * CPU per connect); scheduler thread only. */
	sqlite3 *rdb;
	sqlite3_stmt *q_active;
};

/* A device's row in its one unfinished rollout, with what it needs. */
struct row {
	int64_t rollout;
	char device[17];
	char state[16];
	char rollout_state[16];
	int attempts, failures;
	char from_fw[65];
	int64_t firmware;
	rollout_options opt;
};

/* One firmware image being downloaded: its info and an open descriptor,
 * shared by every download of that firmware (firmware rows and images are
 * never changed once stored) and closed when the last one ends. */
struct image {
	fwstore_info fw;
	fwstore_file *file;       /* NULL: not open (yet, or after a failed read) */
	int users;                /* downloads holding it */
};

/* A device's download in progress: its row as last read (state triggered or
 * downloading), kept until the device's next transition or connection change
 * so that a fetch costs no SQL and no open(). */
struct download {
	struct row r;
	struct image *img;        /* one of its users */
	device_fetch_grant *grant; /* the device loop answers its fetches, or NULL */
};

/* --- queue ------------------------------------------------------------------- */

static void sched__msg_free(struct sched_msg *m)
{
	free(m->hw);
	free(m->fw);
	free(m->sfdp);
	free(m->error);
	free(m);
}

static void sched__push(scheduler *s, struct sched_msg *m)
{
	pthread_mutex_lock(&s->lock);
	if (s->stopping) {
		pthread_mutex_unlock(&s->lock);
		sched__msg_free(m);
		return;
	}
	if (s->tail)
		s->tail->next = m;
	else
		s->head = m;
	s->tail = m;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
}

static char *sched__dup(const char *s)
{
	return s ? strdup(s) : NULL;
}

void sched_device_online(scheduler *s, uint64_t device, uint64_t conn, const sched_hello *h)
{
	struct sched_msg *m = calloc(1, sizeof *m);
	if (!m)
		return;
	m->kind = MSG_ONLINE;
	m->device = device;
	m->conn = conn;
	m->hw = sched__dup(h->hw);
	m->fw = sched__dup(h->fw);
	m->sfdp = sched__dup(h->sfdp);
	m->has_jedec = h->has_jedec;
	m->jedec = h->jedec;
	m->flash_size = h->flash_size;
	sched__push(s, m);
}

void sched_device_offline(scheduler *s, uint64_t device, uint64_t conn)
{
	struct sched_msg *m = calloc(1, sizeof *m);
	if (!m)
		return;
	m->kind = MSG_OFFLINE;
	m->device = device;
	m->conn = conn;
	sched__push(s, m);
}

void sched_update_status(scheduler *s, uint64_t device, uint64_t conn, const char *update_id,
			 const char *state, int64_t offset, const char *error)
{
	struct sched_msg *m = calloc(1, sizeof *m);
	if (!m)
		return;
	m->kind = MSG_STATUS;
	m->device = device;
	m->conn = conn;
	snprintf(m->update_id, sizeof m->update_id, "%s", update_id);
	snprintf(m->state, sizeof m->state, "%s", state);
	m->offset = offset;
	m->error = sched__dup(error);
	sched__push(s, m);
}

void sched_fetch(scheduler *s, uint64_t device, uint64_t conn, const char *update_id, int64_t offset,
		 int64_t length)
{
	struct sched_msg *m = calloc(1, sizeof *m);
	if (!m)
		return;
	m->kind = MSG_FETCH;
	m->device = device;
	m->conn = conn;
	snprintf(m->update_id, sizeof m->update_id, "%s", update_id);
	m->offset = offset;
	m->length = length;
	sched__push(s, m);
}

static void sched__kick(scheduler *s, int flush)
{
	pthread_mutex_lock(&s->lock);
	s->kicked = 1;
	s->flush |= flush;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
}

/* From outside (the API): rollouts may have changed under the scheduler, so
 * what it keeps of downloads is read again. */
void sched_kick(scheduler *s)
{
	sched__kick(s, 1);
}

/* --- downloads in memory ------------------------------------------------------- */

/* The image of firmware `id`, one more user of it: from memory, or its info
 * read from the store (the file is opened at its first read).  NULL with
 * *err when the store cannot say. */
static struct image *sched__image_hold(scheduler *s, int64_t id, tn_error *err)
{
	struct image *img = idmap_get(&s->images, (uint64_t)id);
	int oom = 0;

	if (!img) {
		if (!(img = calloc(1, sizeof *img))) {
			tn_err(err, TN_ENOMEM, "out of memory");
			return NULL;
		}
		if (fwstore_info_get(s->st, s->opt.firmware_dir, id, &img->fw, err))
			goto fail;
		idmap_put(&s->images, (uint64_t)id, img, &oom);
		if (oom) {
			tn_err(err, TN_ENOMEM, "out of memory");
			goto fail;
		}
	}
	img->users++;
	return img;
fail:
	fwstore_info_clear(&img->fw);
	free(img);
	return NULL;
}

static void sched__image_release(scheduler *s, struct image *img)
{
	if (!img || --img->users > 0)
		return;
	idmap_del(&s->images, (uint64_t)img->fw.id);
	fwstore_file_unref(img->file);
	fwstore_info_clear(&img->fw);
	free(img);
}

static void sched__download_free(scheduler *s, struct download *dl)
{
	if (!dl)
		return;
	device_fetch_revoke(dl->grant); /* at once: the next fetch comes here */
	sched__image_release(s, dl->img);
	free(dl);
}

/* Forgets what a fetch of this device would have used: the next one reads
 * the database again. */
static void sched__download_drop(scheduler *s, uint64_t device)
{
	sched__download_free(s, idmap_del(&s->downloads, device));
}

static void sched__download_free_cb(void *arg, uint64_t key, void *val)
{
	sched__download_free(arg, val);
}

static void sched__downloads_flush(scheduler *s)
{
	idmap_foreach(&s->downloads, sched__download_free_cb, s);
	idmap_free(&s->downloads);
	memset(&s->downloads, 0, sizeof s->downloads);
}

/* --- rows and transitions ---------------------------------------------------- */

/* Loads the device's row in an unfinished state (at most one: rollout_create
 * refuses a second unfinished rollout for a device).  1 found, 0 none. */
static int sched__active_row(scheduler *s, const char *device, struct row *r)
{
	int found = 0;

	if (!s->q_active) {
		if (!s->rdb && !(s->rdb = store_reader_get(s->st)))
			return 0;
		if (sqlite3_prepare_v3(s->rdb, "SELECT d.rollout, d.state, d.attempts, d.failures, d.from_fw, "
				       "r.firmware, r.options, r.state FROM rollout_devices d JOIN rollouts r ON "
				       "r.id = d.rollout WHERE d.device = ? AND d.state IN ('triggered', "
				       "'downloading', 'downloaded', 'installing') ORDER BY d.rollout DESC LIMIT 1",
				       -1, SQLITE_PREPARE_PERSISTENT, &s->q_active, NULL) != SQLITE_OK) {
			log_err("scheduler: %s", sqlite3_errmsg(s->rdb));
			return 0;
		}
	}
	sqlite3_stmt *q = s->q_active;
	{
		sqlite3_bind_text(q, 1, device, -1, SQLITE_STATIC);
		if (sqlite3_step(q) == SQLITE_ROW) {
			memset(r, 0, sizeof *r);
			r->rollout = sqlite3_column_int64(q, 0);
			snprintf(r->device, sizeof r->device, "%s", device);
			snprintf(r->state, sizeof r->state, "%s", sqlite3_column_text(q, 1));
			r->attempts = sqlite3_column_int(q, 2);
			r->failures = sqlite3_column_int(q, 3);
			snprintf(r->from_fw, sizeof r->from_fw, "%s",
				 sqlite3_column_text(q, 4) ? (const char *)sqlite3_column_text(q, 4) : "");
			r->firmware = sqlite3_column_int64(q, 5);
			json_t *o = json_loads((const char *)sqlite3_column_text(q, 6), 0, NULL);
			rollout_options_parse(o, &r->opt, NULL);
			json_decref(o);
			snprintf(r->rollout_state, sizeof r->rollout_state, "%s", sqlite3_column_text(q, 7));
			found = 1;
		}
	}
	/* Reset at once: an open read snapshot would keep the WAL from being
	 * checkpointed. */
	sqlite3_reset(q);
	sqlite3_clear_bindings(q);
	return found;
}

/* One transition, committed with its log line. */
struct sched__tx {
	store *st;
	int64_t rollout;
	const char *device;
	const char *from;            /* expected current state */
	const char *to;
	const char *reason;          /* NULL keeps none */
	int attempts, failures;      /* -1: unchanged */
	const char *from_fw;         /* NULL: unchanged */
	int64_t offset;              /* -1: unchanged */
	int64_t deadline, next_try;  /* 0: cleared */
	int need_running;            /* only while the rollout is running */
	const char *event;           /* status line, or NULL */
	const char *event2;          /* a second line before it (an override), or NULL */
	int changed;
};

static int sched__tx_apply(sqlite3 *db, void *arg, tn_error *err)
{
	struct sched__tx *t = arg;
	sqlite3_stmt *q;
	uint64_t dev = 0;

	if (sqlite3_prepare_v2(db,
		"UPDATE rollout_devices SET state = ?1, reason = coalesce(?2, reason), "
		"attempts = CASE WHEN ?3 >= 0 THEN ?3 ELSE attempts END, "
		"failures = CASE WHEN ?4 >= 0 THEN ?4 ELSE failures END, "
		"from_fw = coalesce(?5, from_fw), offset = CASE WHEN ?6 >= 0 THEN ?6 ELSE offset END, "
		"deadline = nullif(?7, 0), next_try = nullif(?8, 0), updated = ?9 "
		"WHERE rollout = ?10 AND device = ?11 AND state = ?12 AND "
		"(?13 = 0 OR (SELECT state FROM rollouts WHERE id = ?10) = 'running')", -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, t->to, -1, SQLITE_STATIC);
	if (t->reason)
		sqlite3_bind_text(q, 2, t->reason, -1, SQLITE_STATIC);
	sqlite3_bind_int(q, 3, t->attempts);
	sqlite3_bind_int(q, 4, t->failures);
	if (t->from_fw)
		sqlite3_bind_text(q, 5, t->from_fw, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 6, t->offset);
	sqlite3_bind_int64(q, 7, t->deadline);
	sqlite3_bind_int64(q, 8, t->next_try);
	sqlite3_bind_int64(q, 9, tn_now_ms());
	sqlite3_bind_int64(q, 10, t->rollout);
	sqlite3_bind_text(q, 11, t->device, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 12, t->from, -1, SQLITE_STATIC);
	sqlite3_bind_int(q, 13, t->need_running);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	t->changed = sqlite3_changes(db) == 1;
	if (t->changed && tn_device_id_parse(t->device, &dev) == 0) {
		if (t->event2 && store_event_insert_tx(t->st, db, dev, EV_STATUS, t->event2) < 0)
			return tn_err(err, TN_EIO, "cannot write the event");
		if (t->event && store_event_insert_tx(t->st, db, dev, EV_STATUS, t->event) < 0)
			return tn_err(err, TN_EIO, "cannot write the event");
	}
	return 0;
}

/* Returns 1 when the transition happened (and is committed).  Whatever the
 * outcome, the device's download in memory is dropped: t's strings must not
 * point into it. */
static int sched__transition(scheduler *s, struct sched__tx *t)
{
	tn_error err = { 0 };
	uint64_t dev = 0;
	int rc = 0;
	t->st = s->st;
	int have_dev = tn_device_id_parse(t->device, &dev) == 0;
	struct download *dl = have_dev ? idmap_get(&s->downloads, dev) : NULL;
	if (dl) {
		/* Before the commit: once anyone can see the new state, the device
		 * loop no longer answers fetches on the old one. */
		device_fetch_revoke(dl->grant);
		dl->grant = NULL;
	}
	if (store_sync_state(s->st, sched__tx_apply, t, &err))
		log_err("scheduler: rollout %lld device %s: %s -> %s not recorded: %s",
			(long long)t->rollout, t->device, t->from, t->to, err.msg);
	else
		rc = t->changed;
	if (have_dev)
		sched__download_drop(s, dev);
	return rc;
}

/* A transition with "unchanged" defaults that the arguments override (the
 * overriding is the point, hence the pragma for -Woverride-init). */
#pragma GCC diagnostic ignored "-Woverride-init"
#define SCHED_TX(...) ((struct sched__tx){ .attempts = -1, .failures = -1, .offset = -1, __VA_ARGS__ })

static void sched__update_id(const struct row *r, char *buf, size_t cap)
{
	snprintf(buf, cap, "%lld.%d", (long long)r->rollout, r->attempts);
}

/* --- talking to the device ---------------------------------------------------- */

static void sched__send_offer(scheduler *s, const struct row *r, const fwstore_info *fw, uint64_t dev,
			      uint64_t conn)
{
	char id[40];
	sched__update_id(r, id, sizeof id);
	json_t *offer = json_pack("{ss ss ss sI ss}", "type", "update", "id", id, "version", fw->version,
				  "size", (json_int_t)fw->size, "sha256", fw->sha256);
	char *text = offer ? json_dumps(offer, JSON_COMPACT) : NULL;
	json_decref(offer);
	if (text && s->dev)
		device_loop_send(s->dev, dev, conn, text, strlen(text), 0);
	free(text);
}

static void sched__send_error(scheduler *s, uint64_t dev, uint64_t conn, const char *message)
{
	json_t *e = json_pack("{ss ss ss}", "type", "error", "code", "bad_update", "message", message);
	char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
	json_decref(e);
	if (text && s->dev)
		device_loop_send(s->dev, dev, conn, text, strlen(text), 0);
	free(text);
}

/* --- failures ------------------------------------------------------------------ */

static void sched__fail(scheduler *s, const struct row *r, const char *why)
{
	char line[700];
	int64_t now = tn_now_ms();
	int allowed = 1 + r->opt.retry_limit;

	if (r->attempts < allowed) {
		int64_t backoff = (int64_t)r->opt.retry_backoff * 1000 << (r->attempts > 10 ? 10 : r->attempts - 1);
		snprintf(line, sizeof line, "firmware update failed: %s (attempt %d of %d; retrying in %lld s)",
			 why, r->attempts, allowed, (long long)(backoff / 1000));
		sched__transition(s, &SCHED_TX(.rollout = r->rollout, .device = r->device, .from = r->state,
					       .to = "retry_wait", .reason = why, .failures = r->failures + 1,
					       .next_try = now + backoff, .event = line));
	} else {
		snprintf(line, sizeof line, "firmware update failed: %s (attempt %d of %d; giving up)", why,
			 r->attempts, allowed);
		sched__transition(s, &SCHED_TX(.rollout = r->rollout, .device = r->device, .from = r->state,
					       .to = "failed", .reason = why, .failures = r->failures + 1,
					       .event = line));
	}
	sched__kick(s, 0);
}

/* --- messages from the device loop -------------------------------------------- */

static void sched__live_free(struct live *l)
{
	if (!l)
		return;
	free(l);
}

/* s copied to *at, which moves past it; NULL stays NULL. */
static char *sched__live_put(char **at, const char *s)
{
	if (!s)
		return NULL;
	char *out = *at;
	size_t n = strlen(s) + 1;
	memcpy(out, s, n);
	*at += n;
	return out;
}

static rollout_facts sched__facts(const struct live *l)
{
	return (rollout_facts){ .hw = l->hw, .fw = l->fw, .sfdp = l->sfdp, .has_jedec = l->has_jedec,
				.jedec = l->jedec, .flash_size = l->flash_size };
}

/* A device (re)connected during an update: completed, failed, or resumed. */
static void sched__on_online_active(scheduler *s, struct row *r, const struct live *l, uint64_t dev)
{
	fwstore_info fw;
	tn_error err = { 0 };
	char line[700];

	if (fwstore_info_get(s->st, s->opt.firmware_dir, r->firmware, &fw, &err)) {
		log_err("scheduler: rollout %lld: %s", (long long)r->rollout, err.msg);
		return;
	}
	if (l->fw && strcmp(l->fw, fw.version) == 0) {
		snprintf(line, sizeof line, "firmware update completed: %s -> %s",
			 r->from_fw[0] ? r->from_fw : "unknown", fw.version);
		sched__transition(s, &SCHED_TX(.rollout = r->rollout, .device = r->device, .from = r->state,
					       .to = "completed", .reason = line + 16, .event = line));
		sched__kick(s, 0);
	} else if (strcmp(r->state, "installing") == 0) {
		snprintf(line, sizeof line, "the device came back running %s after installing %s",
			 l->fw ? l->fw : "an unknown version", fw.version);
		sched__fail(s, r, line);
	} else {
		/* Resume, but only if this connection's part still passes. */
		char reason[600];
		int override;
		rollout_facts f = sched__facts(l);
		rollout_decision d = rollout_decide(s->st, &fw, r->opt.allow_unknown_flash, &f, reason,
						    sizeof reason, &override);
		if (d == DECIDE_ELIGIBLE) {
			sched__send_offer(s, r, &fw, dev, l->conn);
		} else {
			snprintf(line, sizeof line, "firmware update blocked: %s", reason);
			sched__transition(s, &SCHED_TX(.rollout = r->rollout, .device = r->device,
						       .from = r->state, .to = "blocked", .reason = reason,
						       .event = line));
		}
	}
	fwstore_info_clear(&fw);
}

static void sched__on_online(scheduler *s, struct sched_msg *m)
{
	size_t text = (m->hw ? strlen(m->hw) + 1 : 0) + (m->fw ? strlen(m->fw) + 1 : 0) +
		      (m->sfdp ? strlen(m->sfdp) + 1 : 0);
	struct live *l = malloc(sizeof *l + text);
	char hex[17], *at;
	struct row r;
	int oom = 0;

	if (!l)
		return;
	at = l->text;
	l->conn = m->conn;
	l->hw = sched__live_put(&at, m->hw);
	l->fw = sched__live_put(&at, m->fw);
	l->sfdp = sched__live_put(&at, m->sfdp);
	l->has_jedec = m->has_jedec;
	l->jedec = m->jedec;
	l->flash_size = m->flash_size;
	sched__download_drop(s, m->device);
	sched__live_free(idmap_put(&s->live, m->device, l, &oom));
	if (oom) {
		sched__live_free(l);
		return;
	}
	tn_device_id_format(m->device, hex);
	if (sched__active_row(s, hex, &r))
		sched__on_online_active(s, &r, l, m->device);
	s->kicked = 1; /* pending rows may now be decided */
}

static void sched__on_offline(scheduler *s, struct sched_msg *m)
{
	struct live *l = idmap_get(&s->live, m->device);
	sched__download_drop(s, m->device);
	if (l && l->conn == m->conn)
		sched__live_free(idmap_del(&s->live, m->device));
}

/* 1 when the device's active row matches the update id it names. */
static int sched__row_for(scheduler *s, struct sched_msg *m, struct row *r)
{
	char hex[17], id[40];
	tn_device_id_format(m->device, hex);
	if (!sched__active_row(s, hex, r)) {
		sched__send_error(s, m->device, m->conn, "no firmware update is in progress for this device");
		return 0;
	}
	sched__update_id(r, id, sizeof id);
	if (strcmp(id, m->update_id) != 0) {
		char msg[120];
		snprintf(msg, sizeof msg, "update %s is not the current one (%s)", m->update_id, id);
		sched__send_error(s, m->device, m->conn, msg);
		return 0;
	}
	return 1;
}

static void sched__on_status(scheduler *s, struct sched_msg *m)
{
	struct row r;
	int64_t now = tn_now_ms();

	if (!sched__row_for(s, m, &r))
		return;
	if (strcmp(m->state, "failed") == 0) {
		char why[300];
		snprintf(why, sizeof why, "the device reported: %s", m->error && *m->error ? m->error : "no reason given");
		sched__fail(s, &r, why);
		return;
	}
	int64_t deadline = now + 1000LL * (strcmp(m->state, "downloading") == 0 ? r.opt.deadline_download
										 : r.opt.deadline_install);
	const char *order[] = { "triggered", "downloading", "downloaded", "installing" };
	int from = -1, to = -1;
	for (int i = 0; i < 4; i++) {
		if (strcmp(r.state, order[i]) == 0)
			from = i;
		if (strcmp(m->state, order[i]) == 0)
			to = i;
	}
	if (to < from) /* a late or repeated report: nothing goes backwards */
		return;
	sched__transition(s, &SCHED_TX(.rollout = r.rollout, .device = r.device, .from = r.state,
				       .to = m->state, .offset = m->offset, .deadline = deadline));
}

/* The device's download: from memory, or its row and its firmware read from
 * the store and kept (only while the row is triggered or downloading).
 * Returns 1 with *out set and *r a copy of its row; 0 with *r the row when it
 * is not kept (another state, or *err says why the firmware is not there);
 * -1 when the device has no update in progress (the error is answered). */
static int sched__download_get(scheduler *s, struct sched_msg *m, struct row *r, struct download **out,
			       tn_error *err)
{
	struct download *dl = idmap_get(&s->downloads, m->device);
	char hex[17];
	int oom = 0;

	if (dl) {
		*r = dl->r;
		*out = dl;
		return 1;
	}
	tn_device_id_format(m->device, hex);
	if (!sched__active_row(s, hex, r)) {
		sched__send_error(s, m->device, m->conn, "no firmware update is in progress for this device");
		return -1;
	}
	if (!(dl = calloc(1, sizeof *dl))) {
		tn_err(err, TN_ENOMEM, "out of memory");
		return 0;
	}
	dl->r = *r;
	if (strcmp(r->state, "triggered") == 0 || strcmp(r->state, "downloading") == 0)
		dl->img = sched__image_hold(s, r->firmware, err);
	if (dl->img)
		idmap_put(&s->downloads, m->device, dl, &oom);
	if (!dl->img || oom) {
		if (oom)
			tn_err(err, TN_ENOMEM, "out of memory");
		sched__download_free(s, dl);
		return 0;
	}
	*out = dl;
	return 1;
}

/* Reads len bytes at offset of the image into s->chunk + 8 (opening the file
 * on first use, and closing it after a failed read so the next one reopens). */
static int sched__image_read(scheduler *s, struct image *img, int64_t offset, size_t len)
{
	if (!img->file && !(img->file = fwstore_file_open(&img->fw, NULL)))
		return -1;
	if (fwstore_file_read(img->file, (uint64_t)offset, s->chunk + 8, len) == 0)
		return 0;
	fwstore_file_unref(img->file); /* grants keep their own reference */
	img->file = NULL;
	return -1;
}

/* A fetch: the same checks, in the same order, as when each one read the
 * row and the firmware from the store; only the reading is from memory. */
static void sched__on_fetch(scheduler *s, struct sched_msg *m)
{
	struct row r;
	tn_error err = { 0 };
	char id[40], msg[200];
	struct download *dl = NULL;

	if (sched__download_get(s, m, &r, &dl, &err) < 0)
		return;
	sched__update_id(&r, id, sizeof id);
	if (strcmp(id, m->update_id) != 0) {
		snprintf(msg, sizeof msg, "update %s is not the current one (%s)", m->update_id, id);
		sched__send_error(s, m->device, m->conn, msg);
		return;
	}
	if (strcmp(r.state, "triggered") != 0 && strcmp(r.state, "downloading") != 0) {
		snprintf(msg, sizeof msg, "update %s is %s: nothing more to fetch", m->update_id, r.state);
		sched__send_error(s, m->device, m->conn, msg);
		return;
	}
	if (!dl) {
		sched__send_error(s, m->device, m->conn, err.msg[0] ? err.msg : "out of memory");
		return;
	}
	const fwstore_info *fw = &dl->img->fw;
	if (m->offset < 0 || (uint64_t)m->offset >= fw->size) {
		snprintf(msg, sizeof msg, "offset %lld is past the image's %llu bytes", (long long)m->offset,
			 (unsigned long long)fw->size);
		sched__send_error(s, m->device, m->conn, msg);
		return;
	}
	size_t len = (size_t)(m->length > SCHED_MAX_CHUNK ? SCHED_MAX_CHUNK : m->length);
	if ((uint64_t)m->offset + len > fw->size)
		len = (size_t)(fw->size - (uint64_t)m->offset);
	if (sched__image_read(s, dl->img, m->offset, len)) {
		sched__send_error(s, m->device, m->conn, "the server cannot read the firmware image");
		return;
	}
	/* A chunk: 8-byte big-endian offset, then the bytes. */
	for (int i = 0; i < 8; i++)
		s->chunk[i] = (unsigned char)((uint64_t)m->offset >> (56 - 8 * i));
	if (s->dev)
		device_loop_send(s->dev, m->device, m->conn, s->chunk, 8 + len, 1);
	metrics_inc(M_FIRMWARE_CHUNKS);
	/* Downloading: the row stays as it is until a status report, a deadline
	 * or a reconnect (each drops dl, which revokes), so the device loop can
	 * answer this connection's next fetches itself. */
	if (strcmp(r.state, "downloading") == 0 && !dl->grant && s->dev && dl->img->file)
		dl->grant = device_loop_grant_fetch(s->dev, m->device, m->conn, id, dl->img->file);
	if (strcmp(r.state, "triggered") == 0) /* drops dl: r is a copy */
		sched__transition(s, &SCHED_TX(.rollout = r.rollout, .device = r.device, .from = "triggered",
					       .to = "downloading", .offset = m->offset,
					       .deadline = tn_now_ms() + 1000LL * r.opt.deadline_download));
}

/* --- the cron: deadlines, retries, decisions, stages ---------------------------- */

static void sched__deadlines(scheduler *s, int64_t now)
{
	sqlite3 *db = store_reader_get(s->st);
	sqlite3_stmt *q = NULL;
	char devices[64][17];
	int n = 0;

	if (!db)
		return;
	if (sqlite3_prepare_v2(db, "SELECT device FROM rollout_devices WHERE state IN ('triggered', "
			       "'downloading', 'downloaded', 'installing') AND deadline IS NOT NULL AND "
			       "deadline < ? LIMIT 64", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(q, 1, now);
		while (sqlite3_step(q) == SQLITE_ROW && n < 64)
			snprintf(devices[n++], 17, "%s", sqlite3_column_text(q, 0));
	}
	sqlite3_finalize(q);
	store_reader_put(s->st, db);
	for (int i = 0; i < n; i++) {
		struct row r;
		char why[200];
		if (!sched__active_row(s, devices[i], &r))
			continue;
		int secs = strcmp(r.state, "triggered") == 0 ? r.opt.deadline_trigger
			   : strcmp(r.state, "downloading") == 0 ? r.opt.deadline_download : r.opt.deadline_install;
		snprintf(why, sizeof why, "no progress: still %s after %d s", r.state, secs);
		sched__fail(s, &r, why);
	}
}

struct sched__sql {
	const char *sql;
	int64_t a, b, c;
	const char *text;    /* ?4 */
	int changes;
};

static int sched__sql_apply(sqlite3 *db, void *arg, tn_error *err)
{
	struct sched__sql *x = arg;
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, x->sql, -1, &q, NULL))
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(q, 1, x->a);
	sqlite3_bind_int64(q, 2, x->b);
	sqlite3_bind_int64(q, 3, x->c);
	if (x->text)
		sqlite3_bind_text(q, 4, x->text, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	x->changes = sqlite3_changes(db);
	return rc == SQLITE_DONE ? 0 : tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
}

/* Runs one write statement (?1..?3 integers, ?4 text); returns the rows changed or -1. */
static int sched__write(scheduler *s, const char *sql, int64_t a, int64_t b, int64_t c, const char *text)
{
	struct sched__sql x = { sql, a, b, c, text, 0 };
	tn_error err = { 0 };
	if (store_sync_state(s->st, sched__sql_apply, &x, &err)) {
		log_err("scheduler: %s", err.msg);
		return -1;
	}
	return x.changes;
}

/* Decides pending devices of the current stage that are online; triggers
 * the eligible ones while under max_concurrent. */
static void sched__decide(scheduler *s, int64_t rollout, int stage, const rollout_options *o,
			  const fwstore_info *fw)
{
	sqlite3 *db = store_reader_get(s->st);
	sqlite3_stmt *q = NULL;
	int64_t active = 0;
	char (*devs)[17] = NULL;
	int n = 0, cap = 0;

	if (!db)
		return;
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM rollout_devices WHERE rollout = ? AND state IN "
			       "('triggered', 'downloading', 'downloaded', 'installing')", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(q, 1, rollout);
		if (sqlite3_step(q) == SQLITE_ROW)
			active = sqlite3_column_int64(q, 0);
	}
	sqlite3_finalize(q);
	q = NULL;
	if (sqlite3_prepare_v2(db, "SELECT device FROM rollout_devices WHERE rollout = ? AND stage <= ? AND "
			       "state = 'pending' ORDER BY device", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(q, 1, rollout);
		sqlite3_bind_int(q, 2, stage);
		while (sqlite3_step(q) == SQLITE_ROW) {
			uint64_t id;
			if (tn_device_id_parse((const char *)sqlite3_column_text(q, 0), &id) ||
			    !idmap_get(&s->live, id))
				continue; /* offline devices wait for their next hello */
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				char (*grown)[17] = realloc(devs, (size_t)cap * sizeof *devs);
				if (!grown)
					break;
				devs = grown;
			}
			snprintf(devs[n++], 17, "%s", sqlite3_column_text(q, 0));
		}
	}
	sqlite3_finalize(q);
	store_reader_put(s->st, db);

	for (int i = 0; i < n; i++) {
		uint64_t id;
		char reason[600], line[700], override_line[700];
		int override;
		tn_device_id_parse(devs[i], &id);
		struct live *l = idmap_get(&s->live, id);
		rollout_facts f = sched__facts(l);
		rollout_decision d = rollout_decide(s->st, fw, o->allow_unknown_flash, &f, reason, sizeof reason,
						    &override);
		if (d == DECIDE_BLOCKED) {
			snprintf(line, sizeof line, "firmware update blocked: %s", reason);
			sched__transition(s, &SCHED_TX(.rollout = rollout, .device = devs[i], .from = "pending",
						       .to = "blocked", .reason = reason, .event = line));
			continue;
		}
		if (d == DECIDE_UP_TO_DATE) {
			snprintf(line, sizeof line, "firmware update not needed: %s", reason);
			sched__transition(s, &SCHED_TX(.rollout = rollout, .device = devs[i], .from = "pending",
						       .to = "up_to_date", .reason = reason, .event = line));
			continue;
		}
		if (active >= o->max_concurrent)
			continue;
		struct row r = { .rollout = rollout };
		snprintf(r.device, sizeof r.device, "%s", devs[i]);
		/* attempts from the row: read it back by the transition's conditional update */
		sqlite3 *rdb = store_reader_get(s->st);
		sqlite3_stmt *aq = NULL;
		if (rdb && sqlite3_prepare_v2(rdb, "SELECT attempts FROM rollout_devices WHERE rollout = ? AND "
					      "device = ?", -1, &aq, NULL) == SQLITE_OK) {
			sqlite3_bind_int64(aq, 1, rollout);
			sqlite3_bind_text(aq, 2, devs[i], -1, SQLITE_STATIC);
			if (sqlite3_step(aq) == SQLITE_ROW)
				r.attempts = sqlite3_column_int(aq, 0);
		}
		sqlite3_finalize(aq);
		store_reader_put(s->st, rdb);
		r.attempts++;
		snprintf(override_line, sizeof override_line,
			 "firmware update allowed despite unknown flash (operator override): %s", reason);
		if (!sched__transition(s, &SCHED_TX(.rollout = rollout, .device = devs[i], .from = "pending",
						    .to = "triggered", .reason = reason, .attempts = r.attempts,
						    .from_fw = l->fw ? l->fw : "", .offset = 0,
						    .deadline = tn_now_ms() + 1000LL * o->deadline_trigger,
						    .need_running = 1, .event = "firmware update triggered",
						    .event2 = override ? override_line : NULL)))
			continue; /* paused or aborted meanwhile: nothing is sent */
		/* Committed: now, and only now, the offer goes out. */
		sched__send_offer(s, &r, fw, id, l->conn);
		active++;
	}
	free(devs);
}

/* Pauses on too many failures, moves to the next stage, or completes. */
static void sched__stages(scheduler *s, int64_t rollout, int stage, int nstages, const rollout_options *o)
{
	sqlite3 *db = store_reader_get(s->st);
	sqlite3_stmt *q = NULL;
	int64_t total = 0, failed = 0, unfinished = 0;
	char reason[200];

	if (!db)
		return;
	if (sqlite3_prepare_v2(db, "SELECT count(*), sum(state = 'failed'), sum(state NOT IN ('completed', "
			       "'blocked', 'up_to_date', 'failed', 'aborted')) FROM rollout_devices WHERE "
			       "rollout = ? AND stage = ?", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(q, 1, rollout);
		sqlite3_bind_int(q, 2, stage);
		if (sqlite3_step(q) == SQLITE_ROW) {
			total = sqlite3_column_int64(q, 0);
			failed = sqlite3_column_int64(q, 1);
			unfinished = sqlite3_column_int64(q, 2);
		}
	}
	sqlite3_finalize(q);
	store_reader_put(s->st, db);
	if (total > 0 && failed * 100 > (int64_t)o->failure_pct * total) {
		snprintf(reason, sizeof reason, "paused automatically: %lld of %lld devices in stage %d failed "
			 "(threshold %d%%)", (long long)failed, (long long)total, stage + 1, o->failure_pct);
		if (sched__write(s, "UPDATE rollouts SET state = 'paused', reason = ?4, updated = ?2 "
				 "WHERE id = ?1 AND state = 'running'", rollout, tn_now_ms(), 0, reason) > 0)
			log_warn("rollout %lld %s", (long long)rollout, reason);
		return;
	}
	if (unfinished > 0)
		return;
	if (stage + 1 < nstages) {
		if (sched__write(s, "UPDATE rollouts SET stage = ?2, updated = ?3 WHERE id = ?1 AND "
				 "state = 'running' AND stage = ?2 - 1", rollout, stage + 1, tn_now_ms(), NULL) > 0) {
			log_info("rollout %lld: stage %d of %d", (long long)rollout, stage + 2, nstages);
			sched__kick(s, 0);
		}
	} else if (sched__write(s, "UPDATE rollouts SET state = 'completed', reason = 'every targeted "
				"device is done', updated = ?2 WHERE id = ?1 AND state = 'running'", rollout,
				tn_now_ms(), 0, NULL) > 0) {
		log_info("rollout %lld completed", (long long)rollout);
	}
}

static void sched__tick(scheduler *s)
{
	int64_t now = tn_now_ms();
	sqlite3 *db;
	sqlite3_stmt *q = NULL;
	struct { int64_t id, firmware; int stage, nstages; rollout_options o; } running[32];
	int n = 0;

	sched__deadlines(s, now);
	sched__write(s, "UPDATE rollout_devices SET state = 'pending', next_try = NULL, updated = ?1 "
		     "WHERE state = 'retry_wait' AND next_try <= ?1 AND rollout IN "
		     "(SELECT id FROM rollouts WHERE state = 'running')", now, 0, 0, NULL);
	if (!(db = store_reader_get(s->st)))
		return;
	if (sqlite3_prepare_v2(db, "SELECT id, firmware, stage, nstages, options FROM rollouts WHERE "
			       "state = 'running' ORDER BY id LIMIT 32", -1, &q, NULL) == SQLITE_OK) {
		while (sqlite3_step(q) == SQLITE_ROW && n < 32) {
			running[n].id = sqlite3_column_int64(q, 0);
			running[n].firmware = sqlite3_column_int64(q, 1);
			running[n].stage = sqlite3_column_int(q, 2);
			running[n].nstages = sqlite3_column_int(q, 3);
			json_t *o = json_loads((const char *)sqlite3_column_text(q, 4), 0, NULL);
			rollout_options_parse(o, &running[n].o, NULL);
			json_decref(o);
			n++;
		}
	}
	sqlite3_finalize(q);
	store_reader_put(s->st, db);
	for (int i = 0; i < n; i++) {
		fwstore_info fw;
		tn_error err = { 0 };
		if (fwstore_info_get(s->st, s->opt.firmware_dir, running[i].firmware, &fw, &err)) {
			log_err("scheduler: rollout %lld: %s", (long long)running[i].id, err.msg);
			continue;
		}
		sched__decide(s, running[i].id, running[i].stage, &running[i].o, &fw);
		sched__stages(s, running[i].id, running[i].stage, running[i].nstages, &running[i].o);
		fwstore_info_clear(&fw);
	}
}

/* --- the thread ---------------------------------------------------------------- */

static void sched__handle(scheduler *s, struct sched_msg *m)
{
	switch (m->kind) {
	case MSG_ONLINE: sched__on_online(s, m); break;
	case MSG_OFFLINE: sched__on_offline(s, m); break;
	case MSG_STATUS: sched__on_status(s, m); break;
	case MSG_FETCH: sched__on_fetch(s, m); break;
	}
}

static void *sched__main(void *arg)
{
	pthread_setname_np(pthread_self(), "tn-scheduler"); /* for top -H, perf, gdb */
	scheduler *s = arg;
	int64_t next_tick = 0;

	pthread_mutex_lock(&s->lock);
	while (!s->stopping) {
		if (!s->head && !s->kicked) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			int64_t wait_ms = next_tick - tn_mono_ms();
			if (wait_ms > 0) {
				ts.tv_sec += wait_ms / 1000;
				ts.tv_nsec += (wait_ms % 1000) * 1000000;
				if (ts.tv_nsec >= 1000000000) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000;
				}
				pthread_cond_timedwait(&s->wake, &s->lock, &ts);
			}
		}
		struct sched_msg *list = s->head;
		s->head = s->tail = NULL;
		int kicked = s->kicked, flush = s->flush;
		s->kicked = s->flush = 0;
		pthread_mutex_unlock(&s->lock);
		if (flush)
			sched__downloads_flush(s);
		while (list) {
			struct sched_msg *next = list->next;
			sched__handle(s, list);
			sched__msg_free(list);
			list = next;
		}
		if (kicked || s->kicked || tn_mono_ms() >= next_tick) {
			s->kicked = 0;
			sched__tick(s);
			next_tick = tn_mono_ms() + s->opt.tick_ms;
		}
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	sqlite3_finalize(s->q_active);
	s->q_active = NULL;
	store_reader_put(s->st, s->rdb);
	s->rdb = NULL;
	return NULL;
}

int sched_start(scheduler **out, const sched_options *opt, store *st, tn_error *err)
{
	scheduler *s = calloc(1, sizeof *s);
	if (!s)
		return tn_err(err, TN_ENOMEM, "out of memory");
	s->opt = *opt;
	if (s->opt.tick_ms <= 0)
		s->opt.tick_ms = 500;
	s->st = st;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->wake, NULL);
	if (pthread_create(&s->thread, NULL, sched__main, s) != 0) {
		pthread_mutex_destroy(&s->lock);
		pthread_cond_destroy(&s->wake);
		free(s);
		return tn_err(err, TN_EIO, "cannot start the scheduler thread");
	}
	s->started = 1;
	*out = s;
	return 0;
}

void sched_set_device_loop(scheduler *s, device_loop *d)
{
	s->dev = d;
}

static void sched__free_live(void *arg, uint64_t key, void *val)
{
	sched__live_free(val);
}

void sched_stop(scheduler *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stopping = 1;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
	if (s->started)
		pthread_join(s->thread, NULL);
	s->started = 0;
}

void sched_free(scheduler *s)
{
	if (!s)
		return;
	sched_stop(s);
	while (s->head) {
		struct sched_msg *next = s->head->next;
		sched__msg_free(s->head);
		s->head = next;
	}
	idmap_foreach(&s->live, sched__free_live, NULL);
	idmap_free(&s->live);
	sched__downloads_flush(s); /* releases every image too */
	idmap_free(&s->images);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->wake);
	free(s);
}

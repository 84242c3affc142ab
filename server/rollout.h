/* server/rollout.h -- update campaigns: creating one (its targets fixed into
 * rollout_devices, stage by stage), showing it, its dry-run plan, pausing,
 * resuming and aborting it; and rollout_decide(), the one decision both the
 * plan and the scheduler use for a device: eligible, blocked (why) or up to
 * date.  Threads: any (reads on pooled connections, writes via store_sync). */
#ifndef TN_ROLLOUT_H
#define TN_ROLLOUT_H

#include <jansson.h>

#include "fwstore.h"
#include "store.h"

#define ROLLOUT_MAX_STAGES 10

/* A rollout's settings, as stored (rollouts.options) and as the API takes them. */
typedef struct rollout_options {
	int nstages;
	int stage_pct[ROLLOUT_MAX_STAGES]; /* cumulative percentages, the last is 100 */
	int max_concurrent;                /* devices between triggered and installed at once */
	int failure_pct;                   /* failures in a stage, in percent, that pause the rollout */
	int retry_limit;                   /* retries after a failure (0: none) */
	int retry_backoff;                 /* seconds before the first retry; doubles */
	int deadline_trigger;              /* seconds from the offer to the first fetch or status */
	int deadline_download;             /* seconds without download progress */
	int deadline_install;              /* seconds from downloaded/installing to the new version */
	int allow_unknown_flash;           /* operator override: unknown flash is not blocked */
} rollout_options;

/* Parses options from a rollout's stored JSON (every member present). */
int rollout_options_parse(json_t *obj, rollout_options *out, tn_error *err);

/* What a device last said about itself (from the devices table or its hello). */
typedef struct rollout_facts {
	const char *hw, *fw, *sfdp;    /* may be NULL */
	int has_jedec;
	uint32_t jedec;
	int64_t flash_size;
} rollout_facts;

typedef enum { DECIDE_ELIGIBLE, DECIDE_BLOCKED, DECIDE_UP_TO_DATE } rollout_decision;

/* Decides for one device.  `override` is set when the device is eligible only
 * because the rollout allows unknown flash (the caller logs that). */
rollout_decision rollout_decide(store *st, const fwstore_info *fw, int allow_unknown_flash,
				const rollout_facts *f, char *reason, size_t cap, int *override);

/* POST /v1/rollouts.  Returns 0 with *out the rollout (owned), or an error:
 * TN_EINVAL (bad body), TN_ENOTFOUND (no such firmware or device), TN_EEXIST
 * (a device is already in an unfinished rollout). */
int rollout_create(store *st, const char *fw_dir, json_t *body, json_t **out, tn_error *err);

/* The rollout with counts per state, or NULL. owned. */
json_t *rollout_get(store *st, int64_t id);

/* {"rollouts":[...]} newest first. owned. */
json_t *rollout_list(store *st, tn_error *err);

/* The dry run: every targeted device with its decision now and why. owned. */
json_t *rollout_plan(store *st, const char *fw_dir, int64_t id, tn_error *err);

/* "pause", "resume" or "abort".  TN_ENOTFOUND, or TN_ESTATE when the
 * rollout has ended.  Logs nothing in devices' logs. */
int rollout_control(store *st, int64_t id, const char *action, tn_error *err);

/* States a device goes through in a rollout (docs/updates.md). */
int rollout_state_is_final(const char *state);
int rollout_state_is_active(const char *state); /* triggered .. installing */

#endif

/* server/fwstore.h -- the firmware store: images on disk under
 * DATA_DIR/firmware/<sha256> (written to a temporary file, fsynced, renamed),
 * one row each in the store with version, target hardware, requirements,
 * size and SHA-256.  Versions are unique.
 * Threads: any. */
#ifndef TN_FWSTORE_H
#define TN_FWSTORE_H

#include <jansson.h>
#include <stdint.h>

#include "flash.h"
#include "store.h"

#define FWSTORE_MAX_VERSION 64

/* Stores an image.  metadata: {"version", "hw": [...], "requirements"?}.
 * Returns 0 with *out the firmware as the API shows it (owned), TN_EINVAL
 * (bad metadata), TN_EEXIST (version taken) or TN_EIO. */
int fwstore_add(store *st, const char *dir, json_t *metadata, const void *image, size_t len,
		json_t **out, tn_error *err);

/* One firmware as the API shows it, or NULL. owned. */
json_t *fwstore_get(store *st, int64_t id);

/* {"firmware":[...]} newest first.  owned. */
json_t *fwstore_list(store *st, tn_error *err);

/* What the scheduler needs of one firmware. */
typedef struct fwstore_info {
	int64_t id;
	char version[FWSTORE_MAX_VERSION + 1];
	char sha256[65];
	uint64_t size;
	json_t *hw;                 /* owned: array of strings */
	flash_requirements req;
	char path[512];
} fwstore_info;

int fwstore_info_get(store *st, const char *dir, int64_t id, fwstore_info *out, tn_error *err);
void fwstore_info_clear(fwstore_info *info);

/* 1 when hw is one of the firmware's targets. */
int fwstore_targets_hw(const fwstore_info *info, const char *hw);

/* An image open for reading, shared between threads (the scheduler, and the
 * device loop serving fetches of devices already downloading): reference
 * counted, closed with its last reference.  Images never change once stored,
 * so a reader needs no lock. */
typedef struct fwstore_file fwstore_file;

/* Opens info's image (NULL with *err when it cannot). */
fwstore_file *fwstore_file_open(const fwstore_info *info, tn_error *err);
fwstore_file *fwstore_file_ref(fwstore_file *f);
void fwstore_file_unref(fwstore_file *f);
uint64_t fwstore_file_size(const fwstore_file *f);
/* Reads exactly len bytes at offset into buf: 0, or -1 (short or failed;
 * logged with the file's path). */
int fwstore_file_read(fwstore_file *f, uint64_t offset, void *buf, size_t len);

/* Recomputes the file's SHA-256 and compares (0, or TN_EIO with a reason). */
int fwstore_verify(const fwstore_info *info, tn_error *err);

#endif

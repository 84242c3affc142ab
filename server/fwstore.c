/* server/fwstore.c -- the firmware store (see fwstore.h). */
#define _GNU_SOURCE
#include "fwstore.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "logfmt.h"

static void fwstore__sha256(const void *data, size_t len, char out[65])
{
	unsigned char md[32];
	unsigned int n = 0;
	EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static int fwstore__printable(const char *s)
{
	for (; *s; s++)
		if (*s < 0x21 || *s > 0x7e)
			return 0;
	return 1;
}

static int fwstore__check_metadata(json_t *md, tn_error *err)
{
	const char *key;
	json_t *v;
	flash_requirements req;

	if (!json_is_object(md))
		return tn_err(err, TN_EINVAL, "'metadata' must be a JSON object");
	json_object_foreach(md, key, v)
		if (strcmp(key, "version") && strcmp(key, "hw") && strcmp(key, "requirements"))
			return tn_err(err, TN_EINVAL, "metadata: unknown member '%s'", key);
	json_t *version = json_object_get(md, "version");
	if (!json_is_string(version) || json_string_length(version) == 0 ||
	    json_string_length(version) > FWSTORE_MAX_VERSION || !fwstore__printable(json_string_value(version)))
		return tn_err(err, TN_EINVAL, "metadata: 'version' must be 1 to %d printable characters "
			      "without spaces", FWSTORE_MAX_VERSION);
	json_t *hw = json_object_get(md, "hw"), *h;
	size_t i;
	if (!json_is_array(hw) || json_array_size(hw) == 0 || json_array_size(hw) > 64)
		return tn_err(err, TN_EINVAL, "metadata: 'hw' must be an array of 1 to 64 hardware models");
	json_array_foreach(hw, i, h)
		if (!json_is_string(h) || json_string_length(h) == 0 || json_string_length(h) > 64 ||
		    !fwstore__printable(json_string_value(h)))
			return tn_err(err, TN_EINVAL, "metadata: 'hw[%zu]' must be a hardware model name", i);
	return flash_requirements_parse(json_object_get(md, "requirements"), &req, err);
}

/* Writes the image to dir/<sha256> unless it is there already. */
static int fwstore__write_file(const char *dir, const char *sha, const void *image, size_t len,
			       tn_error *err)
{
	char path[600], tmp[640];
	struct stat sb;

	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return tn_err(err, TN_EIO, "cannot create %s: %s", dir, strerror(errno));
	snprintf(path, sizeof path, "%s/%s", dir, sha);
	if (stat(path, &sb) == 0 && (size_t)sb.st_size == len)
		return 0; /* same bytes, same name */
	snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return tn_err(err, TN_EIO, "cannot write %s: %s", tmp, strerror(errno));
	const char *p = image;
	size_t left = len;
	while (left > 0) {
		ssize_t w = write(fd, p, left);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = errno;
			close(fd);
			unlink(tmp);
			return tn_err(err, TN_EIO, "cannot write the image: %s", strerror(e));
		}
		p += w;
		left -= (size_t)w;
	}
	/* Durable before the row that points at it is committed. */
	if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
		int e = errno;
		unlink(tmp);
		return tn_err(err, TN_EIO, "cannot store the image: %s", strerror(e));
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
}

struct fwstore__add {
	const char *version, *sha;
	char *hw, *requirements;
	size_t size;
	int64_t id;
};

static int fwstore__insert(sqlite3 *db, void *arg, tn_error *err)
{
	struct fwstore__add *a = arg;
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "INSERT INTO firmware (version, hw, requirements, size, sha256, created) "
			       "VALUES (?, ?, ?, ?, ?, ?)", -1, &q, NULL) != SQLITE_OK)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	sqlite3_bind_text(q, 1, a->version, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, a->hw, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, a->requirements, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 4, (int64_t)a->size);
	sqlite3_bind_text(q, 5, a->sha, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 6, tn_now_ms());
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	if (rc == SQLITE_CONSTRAINT_UNIQUE)
		return tn_err(err, TN_EEXIST, "firmware version %s already exists", a->version);
	if (rc != SQLITE_DONE)
		return tn_err(err, TN_EIO, "sqlite: %s", sqlite3_errmsg(db));
	a->id = sqlite3_last_insert_rowid(db);
	return 0;
}

int fwstore_add(store *st, const char *dir, json_t *metadata, const void *image, size_t len,
		json_t **out, tn_error *err)
{
	char sha[65];
	int rc;

	*out = NULL;
	if ((rc = fwstore__check_metadata(metadata, err)))
		return rc;
	if (len == 0)
		return tn_err(err, TN_EINVAL, "the image is empty");
	fwstore__sha256(image, len, sha);
	if ((rc = fwstore__write_file(dir, sha, image, len, err)))
		return rc;
	json_t *req = json_object_get(metadata, "requirements");
	struct fwstore__add a = {
		.version = json_string_value(json_object_get(metadata, "version")), .sha = sha,
		.hw = json_dumps(json_object_get(metadata, "hw"), JSON_COMPACT),
		.requirements = req ? json_dumps(req, JSON_COMPACT) : strdup("{}"), .size = len,
	};
	if (!a.hw || !a.requirements)
		rc = tn_err(err, TN_ENOMEM, "out of memory");
	else
		rc = store_sync(st, fwstore__insert, &a, err);
	free(a.hw);
	free(a.requirements);
	/* A refused duplicate leaves the file: another version may have the same bytes. */
	if (rc)
		return rc;
	*out = fwstore_get(st, a.id);
	return *out ? 0 : tn_err(err, TN_EIO, "the firmware was stored but cannot be read back");
}

#define FWSTORE_COLS "id, version, hw, requirements, size, sha256, created"

static json_t *fwstore__row(sqlite3_stmt *q)
{
	char created[32];
	logfmt_iso8601(created, sizeof created, sqlite3_column_int64(q, 6));
	return json_pack("{s:I, s:s, s:o, s:o, s:I, s:s, s:s}",
			 "id", (json_int_t)sqlite3_column_int64(q, 0),
			 "version", (const char *)sqlite3_column_text(q, 1),
			 "hw", json_loads((const char *)sqlite3_column_text(q, 2), 0, NULL),
			 "requirements", json_loads((const char *)sqlite3_column_text(q, 3), 0, NULL),
			 "size", (json_int_t)sqlite3_column_int64(q, 4),
			 "sha256", (const char *)sqlite3_column_text(q, 5), "created", created);
}

json_t *fwstore_get(store *st, int64_t id)
{
	sqlite3 *db = store_reader_get(st);
	sqlite3_stmt *q = NULL;
	json_t *out = NULL;
	if (!db)
		return NULL;
	if (sqlite3_prepare_v2(db, "SELECT " FWSTORE_COLS " FROM firmware WHERE id = ?", -1, &q, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(q, 1, id);
		if (sqlite3_step(q) == SQLITE_ROW)
			out = fwstore__row(q);
	}
	sqlite3_finalize(q);
	store_reader_put(st, db);
	return out;
}

static json_t *fwstore__list_row(sqlite3 *db, sqlite3_stmt *q)
{
	return fwstore__row(q);
}

json_t *fwstore_list(store *st, tn_error *err)
{
	return store_list_json(st, "SELECT " FWSTORE_COLS " FROM firmware ORDER BY id DESC", "firmware",
			       fwstore__list_row, err);
}

int fwstore_info_get(store *st, const char *dir, int64_t id, fwstore_info *out, tn_error *err)
{
	memset(out, 0, sizeof *out);
	json_t *fw = fwstore_get(st, id);
	if (!fw)
		return tn_err(err, TN_ENOTFOUND, "no firmware %lld", (long long)id);
	out->id = id;
	snprintf(out->version, sizeof out->version, "%s", json_string_value(json_object_get(fw, "version")));
	snprintf(out->sha256, sizeof out->sha256, "%s", json_string_value(json_object_get(fw, "sha256")));
	out->size = (uint64_t)json_integer_value(json_object_get(fw, "size"));
	out->hw = json_incref(json_object_get(fw, "hw"));
	snprintf(out->path, sizeof out->path, "%s/%s", dir, out->sha256);
	int rc = flash_requirements_parse(json_object_get(fw, "requirements"), &out->req, err);
	json_decref(fw);
	return rc;
}

void fwstore_info_clear(fwstore_info *info)
{
	json_decref(info->hw);
	memset(info, 0, sizeof *info);
}

int fwstore_targets_hw(const fwstore_info *info, const char *hw)
{
	size_t i;
	json_t *h;
	if (!hw)
		return 0;
	json_array_foreach(info->hw, i, h)
		if (strcmp(json_string_value(h), hw) == 0)
			return 1;
	return 0;
}

int fwstore_verify(const fwstore_info *info, tn_error *err)
{
	unsigned char buf[65536], md[32];
	unsigned int n = 0;
	char hex[65];
	uint64_t total = 0;
	FILE *f = fopen(info->path, "rb");
	if (!f)
		return tn_err(err, TN_EIO, "firmware %s: cannot open %s: %s", info->version, info->path,
			      strerror(errno));
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	size_t r;
	while ((r = fread(buf, 1, sizeof buf, f)) > 0) {
		EVP_DigestUpdate(ctx, buf, r);
		total += r;
	}
	fclose(f);
	EVP_DigestFinal_ex(ctx, md, &n);
	EVP_MD_CTX_free(ctx);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	if (total != info->size || strcmp(hex, info->sha256) != 0)
		return tn_err(err, TN_EIO, "firmware %s: the file %s no longer matches its SHA-256",
			      info->version, info->path);
	return 0;
}

/* --- images open for reading ------------------------------------------------- */

struct fwstore_file {
	atomic_int refs;
	int fd;
	uint64_t size;
	char path[512];
};

fwstore_file *fwstore_file_open(const fwstore_info *info, tn_error *err)
{
	fwstore_file *f = calloc(1, sizeof *f);
	if (!f) {
		tn_err(err, TN_ENOMEM, "out of memory");
		return NULL;
	}
	if ((f->fd = open(info->path, O_RDONLY | O_CLOEXEC)) < 0) {
		tn_err(err, TN_EIO, "cannot open %s: %s", info->path, strerror(errno));
		log_err("firmware: cannot open %s: %s", info->path, strerror(errno));
		free(f);
		return NULL;
	}
	atomic_init(&f->refs, 1);
	f->size = info->size;
	snprintf(f->path, sizeof f->path, "%s", info->path);
	return f;
}

fwstore_file *fwstore_file_ref(fwstore_file *f)
{
	if (f)
		atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
	return f;
}

void fwstore_file_unref(fwstore_file *f)
{
	if (!f || atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) != 1)
		return;
	close(f->fd);
	free(f);
}

uint64_t fwstore_file_size(const fwstore_file *f)
{
	return f->size;
}

int fwstore_file_read(fwstore_file *f, uint64_t offset, void *buf, size_t len)
{
	ssize_t got = pread(f->fd, buf, len, (off_t)offset);
	if (got == (ssize_t)len)
		return 0;
	log_err("firmware: cannot read %s: %s", f->path, got < 0 ? strerror(errno) : "short read");
	return -1;
}

#include "undo.h"

#include "image.h"
#include "image_lock.h"

#include "../core/error.h"
#include "../core/paths.h"
#include "../core/zero.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* Journal layout (little-endian, as written by this host; a journal is
 * only ever replayed beside the file it was made for):
 *   header, 64 bytes: magic "SPSUNDO1", version, orig_size, st_dev,
 *                     st_ino, reserved, XXH64 of the bytes before it
 *   records:          32-byte head {magic, kind, off, len, checksum: XXH64
 *                     of the data seeded with the XXH64 of the head's
 *                     first 24 bytes} + len bytes of data for a DATA
 *                     record (none for ZERO)
 * Records are appended under a lock and each protect ends in fdatasync, so
 * a torn record can only be one whose destination write never happened:
 * replay stops at the first record that does not check out. */
#define HDR_SIZE 64
#define REC_HEAD 32
#define REC_MAX (1u << 20)
#define REC_MAGIC 0x53505552u /* "SPUR" */
enum { REC_DATA = 1, REC_ZERO = 2 };
static const char hdr_magic[8] = "SPSUNDO1";

struct undo {
	char *path, *shown, *jpath;
	int dfd, jfd;
	uint64_t orig_size, jend;
	pthread_mutex_t lock;
};

struct jheader {
	uint64_t orig_size, dev, ino;
};

char *undo_journal_path(const char *path)
{
	return path_sibling(path, "sparsync-undo");
}

static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* A record's checksum: its head's first 24 bytes, then its data (if any). */
static uint64_t record_sum(const unsigned char *head, const unsigned char *data, size_t len)
{
	uint64_t h = XXH64(head, 24, 0);
	return data ? XXH64(data, len, h) : h;
}

static void encode_header(unsigned char *h, const struct jheader *jh)
{
	memset(h, 0, HDR_SIZE);
	memcpy(h, hdr_magic, 8);
	put64(h + 8, 1); /* version */
	put64(h + 16, jh->orig_size);
	put64(h + 24, jh->dev);
	put64(h + 32, jh->ino);
	put64(h + 56, XXH64(h, 56, 0));
}

static bool decode_header(const unsigned char *h, struct jheader *jh)
{
	if (memcmp(h, hdr_magic, 8) != 0 || get64(h + 8) != 1 || get64(h + 56) != XXH64(h, 56, 0))
		return false;
	jh->orig_size = get64(h + 16);
	jh->dev = get64(h + 24);
	jh->ino = get64(h + 32);
	return true;
}

/* A journal file that appears under its name already locked and complete
 * with its header (O_TMPFILE + flock + link), so no recovery can ever see
 * or take one that a live run is still setting up. */
static int create_journal(struct undo *u, const unsigned char *hdr)
{
	char *dir = path_dir(u->jpath);
	if (!dir)
		return sp_err("%s: out of memory", u->shown);
	u->jfd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	free(dir);
	if (u->jfd < 0)
		return sp_err("%s: cannot create the undo journal beside it: %s", u->shown,
			      strerror(errno));
	if (flock(u->jfd, LOCK_EX | LOCK_NB) < 0 ||
	    full_pwrite(u->jfd, hdr, HDR_SIZE, 0, u->jpath) < 0 || fdatasync(u->jfd) < 0)
		return sp_err("%s: writing the undo journal: %s", u->shown, strerror(errno));
	char proc[64];
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", u->jfd);
	if (linkat(AT_FDCWD, proc, AT_FDCWD, u->jpath, AT_SYMLINK_FOLLOW) < 0) {
		if (errno == EEXIST)
			return sp_err("%s: another sparsync is updating it (journal %s exists)",
				      u->shown, u->jpath);
		return sp_err("%s: cannot create the undo journal %s: %s", u->shown, u->jpath,
			      strerror(errno));
	}
	path_sync_dir(u->jpath);
	u->jend = HDR_SIZE;
	return 0;
}

static void undo_free(struct undo *u)
{
	if (u->dfd >= 0)
		close(u->dfd);
	if (u->jfd >= 0)
		close(u->jfd);
	pthread_mutex_destroy(&u->lock);
	free(u->path);
	free(u->shown);
	free(u->jpath);
	free(u);
}

struct undo *undo_begin(const char *path, const char *shown)
{
	struct undo *u = calloc(1, sizeof *u);
	if (!u) {
		sp_err("%s: out of memory", shown);
		return NULL;
	}
	u->dfd = u->jfd = -1;
	pthread_mutex_init(&u->lock, NULL);
	u->path = strdup(path);
	u->shown = strdup(shown);
	u->jpath = undo_journal_path(path);
	struct stat st;
	if (!u->path || !u->shown || !u->jpath) {
		sp_err("%s: out of memory", shown);
		goto fail;
	}
	if ((u->dfd = open(path, O_RDWR | O_CLOEXEC)) < 0 || fstat(u->dfd, &st) < 0) {
		sp_err("%s: %s", shown, strerror(errno));
		goto fail;
	}
	u->orig_size = (uint64_t)st.st_size;
	unsigned char hdr[HDR_SIZE];
	struct jheader jh = { u->orig_size, (uint64_t)st.st_dev, (uint64_t)st.st_ino };
	encode_header(hdr, &jh);
	if (create_journal(u, hdr) < 0)
		goto fail;
	return u;
fail:
	undo_free(u);
	return NULL;
}

/* Read [off, off+len) of fd; past the end of file reads zeros. */
static int read_old(int fd, unsigned char *buf, size_t len, uint64_t off, const char *shown)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return sp_err("%s: reading old contents for the undo journal: %s", shown,
				      strerror(errno));
		if (n == 0)
			break;
		got += (size_t)n;
	}
	memset(buf + got, 0, len - got);
	return 0;
}

static int append_record(struct undo *u, int kind, uint64_t off, const unsigned char *data,
			 size_t len)
{
	unsigned char head[REC_HEAD];
	memset(head, 0, sizeof head);
	uint32_t magic = REC_MAGIC, k = (uint32_t)kind;
	memcpy(head, &magic, 4);
	memcpy(head + 4, &k, 4);
	put64(head + 8, off);
	put64(head + 16, len);
	put64(head + 24, record_sum(head, kind == REC_DATA ? data : NULL, len));
	pthread_mutex_lock(&u->lock);
	uint64_t at = u->jend;
	int rc = full_pwrite(u->jfd, head, REC_HEAD, at, u->jpath);
	if (rc == 0 && kind == REC_DATA)
		rc = full_pwrite(u->jfd, data, len, at + REC_HEAD, u->jpath);
	if (rc == 0)
		u->jend = at + REC_HEAD + (kind == REC_DATA ? len : 0);
	pthread_mutex_unlock(&u->lock);
	return rc;
}

int undo_protect(struct undo *u, uint64_t off, uint64_t len)
{
	if (!u || off >= u->orig_size || len == 0)
		return 0;
	uint64_t end = len < u->orig_size - off ? off + len : u->orig_size;
	size_t cap = end - off < REC_MAX ? (size_t)(end - off) : REC_MAX;
	unsigned char *buf = malloc(cap);
	if (!buf)
		return sp_err("%s: out of memory", u->shown);
	int rc = 0;
	while (rc == 0 && off < end) {
		size_t n = end - off < cap ? (size_t)(end - off) : cap;
		rc = read_old(u->dfd, buf, n, off, u->shown);
		if (rc == 0)
			rc = append_record(u, buf_is_zero(buf, n) ? REC_ZERO : REC_DATA, off, buf, n);
		off += n;
	}
	free(buf);
	/* Durable before the caller overwrites the destination. */
	if (rc == 0 && fdatasync(u->jfd) < 0)
		rc = sp_err("%s: flushing the undo journal: %s", u->shown, strerror(errno));
	return rc;
}

int undo_commit(struct undo *u)
{
	int rc = 0;
	if (fsync(u->dfd) < 0)
		rc = sp_err("%s: fsync: %s", u->shown, strerror(errno));
	/* Removing the journal is the commit: from here on, the new image. */
	if (rc == 0 && unlink(u->jpath) < 0)
		rc = sp_err("%s: removing the undo journal %s: %s", u->shown, u->jpath,
			    strerror(errno));
	if (rc == 0)
		path_sync_dir(u->jpath);
	undo_free(u);
	return rc;
}

/* Zero [off, off+len) of fd: a hole where the filesystem can. */
static int zero_range(int fd, uint64_t off, uint64_t len, const char *shown)
{
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
		return 0;
	static const unsigned char zeros[65536];
	while (len > 0) {
		size_t n = len < sizeof zeros ? (size_t)len : sizeof zeros;
		if (full_pwrite(fd, zeros, n, off, shown) < 0)
			return -1;
		off += n;
		len -= n;
	}
	return 0;
}

struct rec_pos {
	uint64_t at, off, len;
	int kind;
};

/* Write the journal's old contents back into dfd, newest first, and give
 * the file its old size. */
static int replay(int jfd, int dfd, const struct jheader *jh, const char *shown)
{
	struct stat js;
	if (fstat(jfd, &js) < 0)
		return sp_err("%s: undo journal: %s", shown, strerror(errno));
	uint64_t jsize = (uint64_t)js.st_size;
	struct rec_pos *recs = NULL;
	size_t n = 0, cap = 0;
	unsigned char *buf = malloc(REC_MAX);
	int rc = buf ? 0 : sp_err("%s: out of memory", shown);
	for (uint64_t at = HDR_SIZE; rc == 0 && at + REC_HEAD <= jsize;) {
		unsigned char head[REC_HEAD];
		if (full_pread(jfd, head, REC_HEAD, at, shown) < 0) {
			rc = -1;
			break;
		}
		uint32_t magic, kind;
		memcpy(&magic, head, 4);
		memcpy(&kind, head + 4, 4);
		uint64_t off = get64(head + 8), len = get64(head + 16);
		if (magic != REC_MAGIC || (kind != REC_DATA && kind != REC_ZERO) || len == 0 ||
		    len > REC_MAX || off >= jh->orig_size || len > jh->orig_size - off)
			break;
		uint64_t body = kind == REC_DATA ? len : 0;
		if (body > jsize - at - REC_HEAD)
			break; /* torn: its destination write never happened */
		if (body && full_pread(jfd, buf, (size_t)body, at + REC_HEAD, shown) < 0) {
			rc = -1;
			break;
		}
		if (record_sum(head, body ? buf : NULL, (size_t)body) != get64(head + 24))
			break;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 256;
			struct rec_pos *r = realloc(recs, nc * sizeof *r);
			if (!r) {
				rc = sp_err("%s: out of memory", shown);
				break;
			}
			recs = r;
			cap = nc;
		}
		recs[n++] = (struct rec_pos){ at, off, len, (int)kind };
		at += REC_HEAD + body;
	}
	for (size_t i = n; rc == 0 && i-- > 0;) {
		const struct rec_pos *r = &recs[i];
		if (r->kind == REC_ZERO)
			rc = zero_range(dfd, r->off, r->len, shown);
		else if ((rc = full_pread(jfd, buf, (size_t)r->len, r->at + REC_HEAD, shown)) == 0)
			rc = full_pwrite(dfd, buf, (size_t)r->len, r->off, shown);
	}
	if (rc == 0 && ftruncate(dfd, (off_t)jh->orig_size) < 0)
		rc = sp_err("%s: restoring the old size: %s", shown, strerror(errno));
	if (rc == 0 && fsync(dfd) < 0)
		rc = sp_err("%s: fsync: %s", shown, strerror(errno));
	free(recs);
	free(buf);
	return rc;
}

int undo_rollback(struct undo *u)
{
	char why[1024];
	snprintf(why, sizeof why, "%s", sp_errmsg());
	struct jheader jh = { .orig_size = u->orig_size };
	int rc = replay(u->jfd, u->dfd, &jh, u->shown);
	if (rc == 0 && unlink(u->jpath) == 0)
		path_sync_dir(u->jpath);
	if (rc < 0)
		sp_warn("%s: could not put the old image back (%s); it stays marked incomplete "
			"by %s: run 'sparsync recover %s'", u->shown, sp_errmsg(), u->jpath, u->shown);
	undo_free(u);
	sp_err("%s", why);
	return rc;
}

int undo_recover(const char *path, const char *shown, bool *recovered)
{
	*recovered = false;
	char *jpath = undo_journal_path(path);
	if (!jpath)
		return sp_err("%s: out of memory", shown);
	int rc = 0, jfd = open(jpath, O_RDWR | O_CLOEXEC | O_NOFOLLOW), dfd = -1;
	if (jfd < 0) {
		if (errno != ENOENT)
			rc = sp_err("%s: undo journal %s: %s", shown, jpath, strerror(errno));
		free(jpath);
		return rc;
	}
	unsigned char hdr[HDR_SIZE];
	struct jheader jh;
	struct stat ds;
	if (flock(jfd, LOCK_EX | LOCK_NB) < 0)
		rc = sp_err("%s: another sparsync is updating it (its journal %s is in use)", shown,
			    jpath);
	else if (full_pread(jfd, hdr, HDR_SIZE, 0, jpath) < 0 || !decode_header(hdr, &jh))
		rc = sp_err("%s: %s is not a sparsync undo journal; look at it and remove it", shown,
			    jpath);
	else if ((dfd = open(path, O_RDWR | O_CLOEXEC)) < 0 || fstat(dfd, &ds) < 0)
		rc = sp_err("%s: %s", shown, strerror(errno));
	else if (jh.dev != (uint64_t)ds.st_dev || jh.ino != (uint64_t)ds.st_ino)
		rc = sp_err("%s: the undo journal %s belongs to another file (this one was "
			    "replaced since); look at it and remove it", shown, jpath);
	else if (image_lock_write(dfd, shown) < 0)
		rc = -1; /* never roll back under a program that has it open */
	else if ((rc = replay(jfd, dfd, &jh, shown)) == 0) {
		if (unlink(jpath) < 0)
			rc = sp_err("%s: removing %s: %s", shown, jpath, strerror(errno));
		else
			path_sync_dir(jpath);
		*recovered = rc == 0;
	}
	if (dfd >= 0)
		close(dfd);
	close(jfd);
	free(jpath);
	return rc;
}

bool undo_pending(const char *path)
{
	char *real = realpath(path, NULL);
	char *jpath = undo_journal_path(real ? real : path);
	free(real);
	struct stat st;
	bool pending = jpath && lstat(jpath, &st) == 0;
	free(jpath);
	return pending;
}

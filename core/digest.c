#include "digest.h"

#include "../formats/image.h"
#include "confine.h"
#include "error.h"
#include "hash.h"
#include "paths.h"
#include "protocol.h"
#include "replace.h"
#include "sync_hash.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HEAD_SIZE 64
#define MEMBER_SIZE 48
#define RUN_HEAD 16
#define MAX_MEMBERS 16
static const char magic[8] = "SPSDIGST";

struct identity {
	uint64_t dev, ino, size, mtime_ns, ctime_ns;
};

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static uint64_t ns(struct timespec t)
{
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void identity_of(const struct stat *st, struct identity *id)
{
	id->dev = st->st_dev;
	id->ino = st->st_ino;
	id->size = (uint64_t)st->st_size;
	id->mtime_ns = ns(st->st_mtim);
	id->ctime_ns = ns(st->st_ctim);
}

char *digest_path_for(const char *real_path, const char *override)
{
	return override ? strdup(override) : path_sibling(real_path, "sparsync");
}

/* ---- load ---- */

static int read_all(const char *path, uint8_t **out, size_t *len, const char **why)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		*why = errno == ENOENT ? "there is none" : "it cannot be opened";
		return 0;
	}
	struct stat st;
	/* The largest list a sync may use, and its runs, with room to spare. */
	const uint64_t max = HEAD_SIZE + MAX_MEMBERS * MEMBER_SIZE +
			     PROTO_HASHES_TOTAL_MAX * (HASH_SIZE + RUN_HEAD) + HASH_SIZE;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max ||
	    st.st_size < HEAD_SIZE + HASH_SIZE) {
		close(fd);
		*why = "it is not a digest file";
		return 0;
	}
	uint8_t *b = malloc((size_t)st.st_size);
	if (!b) {
		close(fd);
		return sp_err("%s: out of memory", path);
	}
	size_t n = (size_t)st.st_size;
	int rc = full_pread(fd, b, n, 0, path);
	close(fd);
	if (rc < 0) {
		free(b);
		*why = "it cannot be read";
		return 0;
	}
	*out = b;
	*len = n;
	return 1;
}

/* Parse and check everything; the map is filled only from a file whose
 * checksum and structure are right. */
static int parse(const uint8_t *b, size_t len, const struct image *img, const struct identity *now,
		 struct unit_map *map, struct digest_info *info, const char **why)
{
	struct hash128 sum;
	hash128(b, len - HASH_SIZE, &sum);
	if (memcmp(b, magic, 8) != 0 || get32(b + 8) != 1) {
		*why = "it is not a digest file of this version";
		return 0;
	}
	if (memcmp(sum.b, b + len - HASH_SIZE, HASH_SIZE) != 0) {
		*why = "its checksum is wrong";
		return 0;
	}
	uint32_t unit = get32(b + 12), members = get32(b + 28);
	uint64_t size = get64(b + 16), count = get64(b + 32);
	if (unit < SYNC_UNIT_MIN || unit > SYNC_UNIT_MAX || (unit & (unit - 1)) || members == 0 ||
	    members > MAX_MEMBERS || count > PROTO_HASHES_TOTAL_MAX || get64(b + 56) != 0) {
		*why = "its header is malformed";
		return 0;
	}
	if (size != img->size || get32(b + 24) != (uint32_t)img->format) {
		*why = "it describes an image of another size or format";
		return 0;
	}
	const uint8_t *m = b + HEAD_SIZE;
	if ((size_t)(len - HASH_SIZE - HEAD_SIZE) < (size_t)members * MEMBER_SIZE) {
		*why = "it is truncated";
		return 0;
	}
	/* A digest that checks out but describes an older state of this very
	 * file (same device and inode: written behind our back, a failed run)
	 * still tells which --track bitmap belongs to it, though not what it
	 * holds. Not for another file (a copy of the backup directory): the
	 * bitmap is the original's, and must not be restarted for the copy. */
	if (members == 1 && get64(m) == now->dev && get64(m + 8) == now->ino)
		memcpy(info->track_id, b + 40, DIGEST_TRACK_ID_SIZE);
	/* One member today: the image itself (destinations have no backing
	 * file); a chain would list each. */
	if (members != 1 || get64(m) != now->dev || get64(m + 8) != now->ino ||
	    get64(m + 16) != now->size || get64(m + 24) != now->mtime_ns ||
	    get64(m + 32) != now->ctime_ns || get64(m + 40) != 0) {
		*why = "the image changed since it was written";
		return 0;
	}
	info->format = (int)get32(b + 24);
	memcpy(info->track_id, b + 40, DIGEST_TRACK_ID_SIZE);
	unit_map_init(map, size, unit);
	const uint8_t *p = m + (size_t)members * MEMBER_SIZE, *end = b + len - HASH_SIZE;
	uint64_t units = unit_map_units(map), next = 0, seen = 0;
	while (p < end) {
		if ((size_t)(end - p) < RUN_HEAD)
			goto malformed;
		uint64_t first = get64(p), n = get64(p + 8);
		p += RUN_HEAD;
		if (n == 0 || first < next || first > units || n > units - first ||
		    n > (uint64_t)(end - p) / HASH_SIZE)
			goto malformed;
		for (uint64_t i = 0; i < n; i++) {
			struct hash128 h;
			memcpy(h.b, p + i * HASH_SIZE, HASH_SIZE);
			if (unit_map_set(map, first + i, &h) < 0) {
				unit_map_free(map);
				return -1;
			}
		}
		p += n * HASH_SIZE;
		next = first + n;
		seen += n;
	}
	if (seen != count)
		goto malformed;
	return 1;
malformed:
	unit_map_free(map);
	*why = "its unit list is malformed";
	return 0;
}

int digest_load(const char *dpath, const struct image *img, struct unit_map *map,
		struct digest_info *info, const char **why)
{
	struct stat st;
	if (fstat(img->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		*why = "the image is not a regular file";
		return 0;
	}
	struct identity now;
	identity_of(&st, &now);
	uint8_t *b = NULL;
	size_t len = 0;
	int rc = read_all(dpath, &b, &len, why);
	if (rc == 1)
		rc = parse(b, len, img, &now, map, info, why);
	free(b);
	return rc;
}

/* ---- save ---- */

struct stamp_ctx {
	uint64_t newest; /* the image's mtime or ctime, whichever is later */
};

/* Publish the digest only once the clock has moved past the image's
 * mtime and ctime. Timestamps come from a coarse clock (the kernel stamps
 * files from CLOCK_REALTIME_COARSE): a write within the tick of our last
 * one would keep them, so a digest published in that tick could be taken
 * for current after such a write. Once the clock has moved on, any later
 * write gives the image a new mtime. (A writer racing our own run is not
 * covered: nothing else may write a destination while sparsync does.) */
static int stamp_later(int fd, void *arg)
{
	(void)fd;
	const struct stamp_ctx *c = arg;
	for (int tries = 0; tries < 2000; tries++) {
		struct timespec now;
		if (clock_gettime(CLOCK_REALTIME_COARSE, &now) < 0)
			return 1;
		if (ns(now) > c->newest)
			return 0;
		struct timespec pause = { 0, 1000000 };
		nanosleep(&pause, NULL);
	}
	return 1; /* the image's time is ahead of ours: no digest */
}

int digest_save(const char *dpath, const char *real_path, const struct unit_map *map,
		const struct digest_info *info)
{
	struct stat st;
	if (stat(real_path, &st) < 0)
		return sp_err("%s: %s", real_path, strerror(errno));
	struct identity id;
	identity_of(&st, &id);

	size_t runs = 0;
	uint64_t u = 0, f, prev = 0;
	for (bool any = false; unit_map_next(map, u, &f, NULL); u = f + 1) {
		if (!any || f != prev + 1)
			runs++;
		any = true;
		prev = f;
	}
	size_t len = HEAD_SIZE + MEMBER_SIZE + runs * RUN_HEAD + (size_t)map->count * HASH_SIZE +
		     HASH_SIZE;
	uint8_t *b = calloc(1, len);
	if (!b)
		return sp_err("%s: out of memory", dpath);
	memcpy(b, magic, 8);
	put32(b + 8, 1);
	put32(b + 12, map->unit);
	put64(b + 16, map->size);
	put32(b + 24, (uint32_t)info->format);
	put32(b + 28, 1);
	put64(b + 32, map->count);
	memcpy(b + 40, info->track_id, DIGEST_TRACK_ID_SIZE);
	uint8_t *m = b + HEAD_SIZE;
	put64(m, id.dev);
	put64(m + 8, id.ino);
	put64(m + 16, id.size);
	put64(m + 24, id.mtime_ns);
	put64(m + 32, id.ctime_ns);
	uint8_t *p = m + MEMBER_SIZE, *run = NULL;
	uint64_t runlen = 0;
	struct hash128 h;
	for (u = 0; unit_map_next(map, u, &f, &h); u = f + 1) {
		if (!run || f != prev + 1) {
			if (run)
				put64(run + 8, runlen);
			run = p;
			put64(run, f);
			runlen = 0;
			p += RUN_HEAD;
		}
		memcpy(p, h.b, HASH_SIZE);
		p += HASH_SIZE;
		runlen++;
		prev = f;
	}
	if (run)
		put64(run + 8, runlen);
	hash128(b, len - HASH_SIZE, &h);
	memcpy(b + len - HASH_SIZE, h.b, HASH_SIZE);
	struct stamp_ctx c = { id.mtime_ns > id.ctime_ns ? id.mtime_ns : id.ctime_ns };
	int rc = replace_file(dpath, b, len, stamp_later, &c);
	free(b);
	return rc;
}

void digest_remove(const char *dpath)
{
	if (confine_append_only())
		return; /* deletes nothing */
	if (unlink(dpath) == 0)
		path_sync_dir(dpath);
}

/* Writing sparsync's own persistent dirty bitmap into a qcow2 file
 * (--track): after a successful sync, a new empty bitmap replaces the one
 * used (rotation: a source restored from an older copy of itself carries
 * only bitmaps with older names, which no destination trusts). Only this:
 * the image's data and mapping are never touched.
 *
 * Allocates clusters at the end of the file for the new bitmap's table
 * (all entries 0: the bitmap reads as all clean) and a new directory (the
 * old entries but the one replaced, plus ours), and refcount blocks where
 * the refcount table has none yet. Order, each step flushed: new clusters
 * written; their refcounts (and refcount table entries) set; the header
 * rewritten with the new directory and the bitmaps autoclear bit; the old
 * directory's and the replaced bitmap's clusters released. A crash at any point leaves either the old image or
 * the new one, plus at worst leaked clusters (qemu-img check: "leaked",
 * not "corruption"). */
#include "qcow2.h"

#include "image.h"

#include "../core/error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ENTRY_HEAD 24
#define MAX_NEW_CLUSTERS 4096 /* table + directory + refcount blocks */

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }
static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static int sync_file(int fd, const char *path)
{
	return fsync(fd) == 0 ? 0 : sp_err("%s: fsync: %s", path, strerror(errno));
}

/* ---- refcounts ---- */

struct rc {
	int fd;
	const char *path;
	uint64_t cs;
	unsigned bits;          /* refcount width */
	uint64_t per_block;     /* refcounts per refcount block */
	uint64_t rt_off, rt_n;  /* refcount table: offset, entries */
	uint64_t *rt;
};

static int rc_load(struct rc *r, int fd, const char *path, const struct qcow2_header *h,
		   uint64_t file_size)
{
	memset(r, 0, sizeof *r);
	r->fd = fd;
	r->path = path;
	r->cs = 1ull << h->cluster_bits;
	r->bits = 1u << h->refcount_order;
	r->per_block = r->cs * 8 / r->bits;
	r->rt_off = h->refcount_table_offset;
	r->rt_n = (uint64_t)h->refcount_table_clusters * r->cs / 8;
	if (r->rt_off % r->cs || r->rt_off > file_size || r->rt_n * 8 > file_size - r->rt_off)
		return sp_err("%s: refcount table lies outside the file", path);
	uint8_t *b = malloc(r->rt_n ? r->rt_n * 8 : 1);
	r->rt = calloc(r->rt_n ? r->rt_n : 1, sizeof *r->rt);
	int rc = b && r->rt ? full_pread(fd, b, r->rt_n * 8, r->rt_off, path)
			    : sp_err("%s: out of memory", path);
	for (uint64_t i = 0; rc == 0 && i < r->rt_n; i++) {
		r->rt[i] = be64(b + i * 8) & ~511ull;
		if (r->rt[i] && (r->rt[i] % r->cs || r->rt[i] > file_size - r->cs))
			rc = sp_err("%s: refcount block %" PRIu64 " lies outside the file", path, i);
	}
	free(b);
	return rc;
}

static uint64_t rc_get(const struct rc *r, const uint8_t *blk, uint64_t j)
{
	if (r->bits < 8) {
		uint64_t bit = j * r->bits;
		return (blk[bit / 8] >> (bit % 8)) & ((1u << r->bits) - 1);
	}
	uint64_t v = 0;
	for (unsigned b = 0; b < r->bits / 8; b++)
		v = v << 8 | blk[j * (r->bits / 8) + b];
	return v;
}

static void rc_set(const struct rc *r, uint8_t *blk, uint64_t j, uint64_t v)
{
	if (r->bits < 8) {
		uint64_t bit = j * r->bits, mask = (1u << r->bits) - 1;
		blk[bit / 8] = (uint8_t)((blk[bit / 8] & ~(mask << (bit % 8))) | (v & mask) << (bit % 8));
		return;
	}
	for (unsigned b = r->bits / 8; b-- > 0; v >>= 8)
		blk[j * (r->bits / 8) + b] = (uint8_t)v;
}

/* Add delta to the refcounts of clusters [first, first+n) that existing
 * blocks cover (blocks we just made hold their counts already). */
static int rc_adjust(struct rc *r, uint64_t first, uint64_t n, int delta)
{
	uint8_t *blk = malloc(r->cs);
	if (!blk)
		return sp_err("%s: out of memory", r->path);
	int rc = 0;
	for (uint64_t c = first; rc == 0 && c < first + n;) {
		uint64_t bi = c / r->per_block, j = c % r->per_block;
		uint64_t stop = (bi + 1) * r->per_block < first + n ? (bi + 1) * r->per_block : first + n;
		if (bi >= r->rt_n || !r->rt[bi]) {
			rc = sp_err("%s: cluster %" PRIu64 " has no refcount block", r->path, c);
			break;
		}
		if ((rc = full_pread(r->fd, blk, r->cs, r->rt[bi], r->path)) < 0)
			break;
		for (; c < stop; c++, j++) {
			uint64_t v = rc_get(r, blk, j);
			if ((delta < 0 && v == 0) || (delta > 0 && v != 0)) {
				rc = sp_err("%s: cluster %" PRIu64 " has refcount %" PRIu64 " where %s was "
					    "expected", r->path, c, v, delta < 0 ? "one or more" : "0");
				break;
			}
			rc_set(r, blk, j, v + (uint64_t)(int64_t)delta);
		}
		if (rc == 0)
			rc = full_pwrite(r->fd, blk, r->cs, r->rt[bi], r->path);
	}
	free(blk);
	return rc;
}

/* ---- the header ---- */

/* Rewrite the first cluster: autoclear bit 0 set, the bitmaps extension
 * pointing at the new directory, every other extension and the backing
 * file name kept. */
static int rewrite_header(int fd, const char *path, const struct qcow2_header *h, uint32_t count,
			  uint64_t dir_size, uint64_t dir_off)
{
	uint64_t cs = 1ull << h->cluster_bits;
	uint8_t *old = malloc(cs), *neu = calloc(1, cs);
	int rc = old && neu ? full_pread(fd, old, cs, 0, path) : sp_err("%s: out of memory", path);
	uint64_t hl = h->header_length, pos = hl, at = hl, old_end = hl;
	if (rc == 0)
		memcpy(neu, old, hl);
	while (rc == 0) {
		if (pos + 8 > cs) {
			rc = sp_err("%s: header extensions run past the first cluster", path);
			break;
		}
		uint32_t type = be32(old + pos), len = be32(old + pos + 4);
		uint64_t padded = ((uint64_t)len + 7) & ~7ull;
		if (type == QCOW2_EXT_END) {
			old_end = pos + 8;
			break;
		}
		if (padded > cs - pos - 8) {
			rc = sp_err("%s: header extension runs past the first cluster", path);
			break;
		}
		if (type != QCOW2_EXT_BITMAPS_ID) {
			memcpy(neu + at, old + pos, 8 + padded);
			at += 8 + padded;
		}
		pos += 8 + padded;
	}
	if (rc == 0 && at + 8 + 24 + 8 + h->backing_file_size > cs)
		rc = sp_err("%s: no room for the bitmaps extension in the header cluster", path);
	if (rc == 0) {
		put32(neu + at, QCOW2_EXT_BITMAPS_ID);
		put32(neu + at + 4, 24);
		put32(neu + at + 8, count);
		put32(neu + at + 12, 0);
		put64(neu + at + 16, dir_size);
		put64(neu + at + 24, dir_off);
		at += 32;
		at += 8; /* end of extensions: zeros */
		put64(neu + 88, h->autoclear_features | QCOW2_AUTOCLEAR_BITMAPS);
		if (h->backing_file_offset) {
			if (h->backing_file_offset + h->backing_file_size > cs)
				rc = sp_err("%s: the backing file name is not in the header cluster", path);
			else {
				memcpy(neu + at, old + h->backing_file_offset, h->backing_file_size);
				put64(neu + 8, at);
				uint64_t bend = h->backing_file_offset + h->backing_file_size;
				old_end = bend > old_end ? bend : old_end;
				at += h->backing_file_size;
			}
		}
	}
	uint64_t len = at > old_end ? at : old_end;
	if (rc == 0)
		rc = full_pwrite(fd, neu, len, 0, path);
	free(old);
	free(neu);
	return rc;
}

/* ---- reset or create ---- */

static const char *trackable_why(const struct qcow2_header *h)
{
	if (h->version < 3)
		return "it is a version 2 (compat=0.10) image, which has no persistent bitmaps";
	if (h->incompatible_features & QCOW2_INCOMPAT_DIRTY)
		return "it is marked dirty (refcounts may be stale: qemu-img check -r all)";
	if (h->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
		return "it is marked corrupt";
	if (h->bitmaps.times_seen && !(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
		return "its bitmaps are stale (it was written by a program that does not keep them; "
		       "qemu-img bitmap --remove them)";
	return NULL;
}

int qcow2_bitmap_trackable(int fd, const char *path)
{
	struct qcow2_header h;
	if (qcow2_read_header(fd, path, &h) < 0)
		return -1;
	const char *why = trackable_why(&h);
	qcow2_header_free(&h);
	return why ? sp_err("%s: --track cannot keep a bitmap in it: %s", path, why) : 0;
}

/* Clusters of bitmap b (its table and the data clusters it points to):
 * their refcounts drop by one. */
static int release_bitmap(struct rc *r, const struct qcow2_bitmap *b)
{
	uint64_t tbytes = (uint64_t)b->table_size * 8;
	uint8_t *table = malloc(tbytes);
	int rc = table ? full_pread(r->fd, table, tbytes, b->table_offset, r->path)
		       : sp_err("%s: out of memory", r->path);
	for (uint32_t i = 0; rc == 0 && i < b->table_size; i++) {
		uint64_t host = be64(table + (uint64_t)i * 8) & 0x00fffffffffffe00ull;
		if (host)
			rc = rc_adjust(r, host / r->cs, 1, -1);
	}
	if (rc == 0)
		rc = rc_adjust(r, b->table_offset / r->cs, (tbytes + r->cs - 1) / r->cs, -1);
	free(table);
	return rc;
}

static int create(int fd, const char *path, const struct qcow2_header *h,
		  const struct qcow2_bitmap_dir *d, const struct qcow2_bitmap *drop, const char *name,
		  uint64_t file_size)
{
	const uint64_t cs = 1ull << h->cluster_bits;
	const unsigned gbits = 16;
	uint64_t bits = (h->size >> gbits) + ((h->size & ((1ull << gbits) - 1)) != 0);
	uint64_t bbytes = bits / 8 + (bits % 8 != 0);
	uint64_t tsize = bbytes / cs + (bbytes % cs != 0);
	if (tsize == 0)
		tsize = 1;
	size_t nlen = strlen(name);
	uint64_t elen = (ENTRY_HEAD + nlen + 7) & ~7ull;
	uint64_t old_dir = d->n ? h->bitmaps.dir_offset : 0, old_size = d->n ? h->bitmaps.dir_size : 0;
	/* The entry that goes: [drop_at, drop_end) of the old directory. */
	uint64_t drop_at = old_size, drop_end = old_size;
	if (drop) {
		drop_at = drop->entry_pos;
		drop_end = old_size;
		for (uint32_t i = 0; i < d->n; i++)
			if (d->b[i].entry_pos > drop_at && d->b[i].entry_pos < drop_end)
				drop_end = d->b[i].entry_pos;
	}
	uint64_t kept = old_size - (drop_end - drop_at);
	uint64_t dsize = kept + elen;
	uint64_t n_t = (tsize * 8 + cs - 1) / cs, n_d = (dsize + cs - 1) / cs;

	struct rc r;
	int rc = rc_load(&r, fd, path, h, file_size);
	/* New clusters from the end of the file: table, directory, then any
	 * refcount block the table lacks for them (which may need itself). */
	uint64_t base = (file_size + cs - 1) / cs, n = n_t + n_d;
	uint64_t newblk[8], nnew = 0;
	for (bool more = true; rc == 0 && more;) {
		more = false;
		for (uint64_t c = base; rc == 0 && c < base + n; c++) {
			uint64_t bi = c / r.per_block;
			bool have = bi < r.rt_n && r.rt[bi];
			for (uint64_t k = 0; k < nnew; k++)
				have |= newblk[k] == bi;
			if (have)
				continue;
			if (bi >= r.rt_n || nnew == 8 || n >= MAX_NEW_CLUSTERS)
				rc = sp_err("%s: --track: the refcount table has no room for the bitmap "
					    "(qemu-img bitmap --add once, then --track keeps it)", path);
			else {
				newblk[nnew++] = bi;
				n++;
				more = true;
			}
		}
	}
	uint8_t *dir = rc == 0 ? calloc(1, n_d * cs) : NULL, *blk = rc == 0 ? calloc(1, cs) : NULL;
	if (rc == 0 && (!dir || !blk))
		rc = sp_err("%s: out of memory", path);
	/* 1. The new clusters: zeros (the table), the directory, new blocks. */
	if (rc == 0 && ftruncate(fd, (off_t)((base + n) * cs)) < 0)
		rc = sp_err("%s: %s", path, strerror(errno));
	if (rc == 0 && old_size) {
		rc = full_pread(fd, dir, old_size, old_dir, path);
		memmove(dir + drop_at, dir + drop_end, old_size - drop_end);
		memset(dir + kept, 0, old_size - kept);
	}
	if (rc == 0) {
		uint8_t *e = dir + kept;
		put64(e, (base) * cs);
		put32(e + 8, (uint32_t)tsize);
		put32(e + 12, QCOW2_BITMAP_AUTO);
		e[16] = 1;
		e[17] = (uint8_t)gbits;
		put16(e + 18, (uint16_t)nlen);
		put32(e + 20, 0);
		memcpy(e + ENTRY_HEAD, name, nlen);
		rc = full_pwrite(fd, dir, n_d * cs, (base + n_t) * cs, path);
	}
	uint64_t first_blk = base + n_t + n_d;
	for (uint64_t k = 0; rc == 0 && k < nnew; k++) {
		memset(blk, 0, cs);
		for (uint64_t c = base; c < base + n; c++)
			if (c / r.per_block == newblk[k])
				rc_set(&r, blk, c % r.per_block, 1);
		rc = full_pwrite(fd, blk, cs, (first_blk + k) * cs, path);
	}
	if (rc == 0)
		rc = sync_file(fd, path);
	/* 2. Their refcounts: in the blocks that existed, and the table's
	 * pointers to the new blocks. */
	for (uint64_t c = base; rc == 0 && c < base + n; c++) {
		bool in_new = false;
		for (uint64_t k = 0; k < nnew; k++)
			in_new |= c / r.per_block == newblk[k];
		if (!in_new)
			rc = rc_adjust(&r, c, 1, +1);
	}
	for (uint64_t k = 0; rc == 0 && k < nnew; k++) {
		uint8_t p[8];
		put64(p, (first_blk + k) * cs);
		rc = full_pwrite(fd, p, 8, r.rt_off + newblk[k] * 8, path);
		r.rt[newblk[k]] = (first_blk + k) * cs;
	}
	if (rc == 0)
		rc = sync_file(fd, path);
	/* 3. The header: from here on the bitmap exists. */
	if (rc == 0)
		rc = rewrite_header(fd, path, h, d->n + 1 - (drop != NULL), dsize, (base + n_t) * cs);
	if (rc == 0)
		rc = sync_file(fd, path);
	/* 4. The old directory, and the bitmap that went, are free. */
	if (rc == 0 && old_size)
		rc = rc_adjust(&r, old_dir / cs, (old_size + cs - 1) / cs, -1);
	if (rc == 0 && drop)
		rc = release_bitmap(&r, drop);
	if (rc == 0)
		rc = sync_file(fd, path);
	free(dir);
	free(blk);
	free(r.rt);
	return rc;
}

int qcow2_bitmap_rotate(int fd, const char *path, const char *old_name, const char *new_name)
{
	struct qcow2_header h;
	if (qcow2_read_header(fd, path, &h) < 0)
		return -1;
	uint64_t file_size;
	struct qcow2_bitmap_dir d = { 0 };
	const char *why = trackable_why(&h);
	int rc = why ? sp_err("%s: --track cannot keep a bitmap in it: %s", path, why) : 0;
	if (rc == 0)
		rc = qcow2_file_size(fd, path, &file_size);
	if (rc == 0)
		rc = qcow2_bitmap_dir_read(fd, path, &h, file_size, &d);
	const struct qcow2_bitmap *drop = NULL;
	for (uint32_t i = 0; rc == 0 && i < d.n; i++) {
		if (old_name && strcmp(d.b[i].name, old_name) == 0)
			drop = &d.b[i];
		if (strcmp(d.b[i].name, new_name) == 0)
			rc = sp_err("%s: already has a bitmap called '%s'", path, new_name);
	}
	if (rc == 0)
		rc = create(fd, path, &h, &d, drop, new_name, file_size);
	qcow2_bitmap_dir_free(&d);
	qcow2_header_free(&h);
	return rc;
}

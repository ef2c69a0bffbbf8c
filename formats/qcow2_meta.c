/* qcow2 writer metadata: refcounts in memory, the flush that writes L2
 * tables, the L1 table, refcount blocks and table, then the header, and
 * opening an existing image for in-place update.
 *
 * `qemu-img check` counts every cluster the image uses (header, L1, each L2,
 * the refcount table, each refcount block, data; compressed pieces once per
 * cluster their sectors touch) and wants exactly that count stored, and
 * nothing for clusters no one uses. Here one in-memory counter per host
 * cluster is kept right as things are allocated and freed, and the refcount
 * structure is sized for it at flush. */
#include "qcow2_writer.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


static uint64_t rb_entries(const struct q2w *q)
{
	return (q->cs * 8) >> q->refcount_order;
}

/* ---- refcounts in memory ----------------------------------------------- */

int q2_rc_grow(struct q2w *q, uint64_t clusters)
{
	if (clusters <= q->rc_cap)
		return 0;
	uint64_t cap = q->rc_cap ? q->rc_cap : 1024;
	while (cap < clusters)
		cap *= 2;
	uint16_t *rc = realloc(q->rc, cap * sizeof *rc);
	if (!rc)
		return sp_err("%s: out of memory for refcounts", q->img->path);
	memset(rc + q->rc_cap, 0, (cap - q->rc_cap) * sizeof *rc);
	q->rc = rc;
	uint64_t E = rb_entries(q);
	uint64_t old_blocks = q->rc_cap ? q->rc_cap / E + 1 : 0, blocks = cap / E + 1;
	uint8_t *d = realloc(q->rb_dirty, blocks);
	if (!d)
		return sp_err("%s: out of memory for refcounts", q->img->path);
	memset(d + old_blocks, 0, blocks - old_blocks);
	q->rb_dirty = d;
	if (!q->fresh) {
		uint8_t *p = realloc(q->pending, cap / 8);
		if (!p)
			return sp_err("%s: out of memory for refcounts", q->img->path);
		memset(p + q->rc_cap / 8, 0, (cap - q->rc_cap) / 8);
		q->pending = p;
	}
	q->rc_cap = cap;
	return 0;
}

static void rc_set(struct q2w *q, uint64_t c, uint16_t v)
{
	q->rc[c] = v;
	q->rb_dirty[c / rb_entries(q)] = 1;
	q->dirty = true;
}

int q2_rc_inc(struct q2w *q, uint64_t c)
{
	if (q2_rc_grow(q, c + 1) < 0)
		return -1;
	if (q->rc[c] >= q->rc_max)
		return sp_err("%s: refcount of cluster %" PRIu64 " would overflow", q->img->path, c);
	rc_set(q, c, (uint16_t)(q->rc[c] + 1));
	if (c >= q->end)
		q->end = c + 1;
	return 0;
}

/* In place, a freed cluster stays counted until the flush that commits
 * tables no longer pointing at it (so it is not reused for other data
 * while the old tables on disk still map it); fresh images free at once. */
void q2_rc_dec(struct q2w *q, uint64_t c)
{
	if (c >= q->rc_cap || q->rc[c] == 0)
		return;
	if (!q->fresh) {
		q->pending[c / 8] |= (uint8_t)(1u << (c % 8));
		q->any_pending = true;
		q->dirty = true;
		return;
	}
	rc_set(q, c, (uint16_t)(q->rc[c] - 1));
	if (q->rc[c] == 0) {
		if (c < q->free_hint)
			q->free_hint = c;
		/* The cluster that packs compressed pieces is gone: start anew. */
		if (q->cend && c >= q->cpos >> q->cluster_bits && c < q->cend >> q->cluster_bits)
			q->cpos = q->cend = 0;
	}
}

int64_t q2_alloc(struct q2w *q, uint64_t n, bool at_end)
{
	if (n == 1 && !at_end) {
		for (uint64_t c = q->free_hint; c < q->end; c++) {
			if (q->rc[c] == 0) {
				q->free_hint = c + 1;
				rc_set(q, c, 1);
				return (int64_t)c;
			}
		}
		q->free_hint = q->end;
	}
	uint64_t start = q->end;
	if (q2_rc_grow(q, start + n) < 0)
		return -1;
	for (uint64_t i = 0; i < n; i++)
		rc_set(q, start + i, 1);
	q->end = start + n;
	return (int64_t)start;
}

/* ---- flush ------------------------------------------------------------- */

static bool block_has_refs(const struct q2w *q, uint64_t i)
{
	uint64_t E = rb_entries(q);
	uint64_t s = i * E, e = s + E < q->end ? s + E : q->end;
	for (uint64_t c = s; c < e; c++)
		if (q->rc[c])
			return true;
	return false;
}

/* Give every refcount block that counts something a cluster, and the
 * refcount table room for all of them. Allocating either may need more of
 * both, so repeat until nothing changes. */
static int plan_refcounts(struct q2w *q)
{
	uint64_t E = rb_entries(q);
	for (int round = 0; round < 64; round++) {
		uint64_t blocks = (q->end + E - 1) / E;
		uint64_t cap = q->rt_clusters * q->cs / 8;
		if (blocks > cap) {
			/* Room for the blocks now needed plus growth. */
			uint64_t want = blocks + blocks / 8 + 4;
			uint64_t clusters = (want * 8 + q->cs - 1) / q->cs;
			if (clusters * q->cs > QCOW2_MAX_REFTABLE_BYTES)
				return sp_err("%s: image too large for a refcount table", q->img->path);
			uint64_t *rt = calloc(clusters * q->cs / 8, sizeof *rt);
			if (!rt)
				return sp_err("%s: out of memory", q->img->path);
			int64_t c = q2_alloc(q, clusters, true);
			if (c < 0) {
				free(rt);
				return -1;
			}
			if (q->rt)
				memcpy(rt, q->rt, cap * sizeof *rt);
			for (uint64_t i = 0; i < q->rt_clusters; i++)
				q2_rc_dec(q, (q->rt_offset >> q->cluster_bits) + i);
			free(q->rt);
			q->rt = rt;
			q->rt_offset = (uint64_t)c << q->cluster_bits;
			q->rt_clusters = clusters;
			q->rt_dirty = q->header_dirty = true;
			continue;
		}
		bool changed = false;
		for (uint64_t i = 0; i < blocks; i++) {
			if (q->rt[i] || !block_has_refs(q, i))
				continue;
			int64_t c = q2_alloc(q, 1, false);
			if (c < 0)
				return -1;
			q->rt[i] = (uint64_t)c << q->cluster_bits;
			q->rb_dirty[i] = 1;
			q->rt_dirty = true;
			changed = true;
		}
		if (!changed)
			return 0;
	}
	return sp_err("%s: internal error: refcount layout does not settle", q->img->path);
}

static int write_table(struct q2w *q, const uint64_t *t, uint64_t n, uint64_t bytes, uint64_t off,
		       unsigned char *buf)
{
	memset(buf, 0, bytes);
	for (uint64_t i = 0; i < n; i++)
		q2_put_be64(buf + i * 8, t[i]);
	return image_write_meta(q->img, buf, bytes, off);
}

static void pack_refblock(const struct q2w *q, uint64_t i, unsigned char *buf)
{
	uint64_t E = rb_entries(q);
	unsigned bits = 1u << q->refcount_order;
	memset(buf, 0, q->cs);
	for (uint64_t j = 0; j < E; j++) {
		uint64_t c = i * E + j;
		uint64_t v = c < q->rc_cap ? q->rc[c] : 0;
		if (!v)
			continue;
		if (bits < 8) {
			uint64_t bit = j * bits;
			buf[bit / 8] |= (unsigned char)(v << (bit % 8));
		} else {
			unsigned char *p = buf + j * (bits / 8);
			for (unsigned b = 0; b < bits / 8; b++)
				p[bits / 8 - 1 - b] = (unsigned char)(b < 8 ? v >> (8 * b) : 0);
		}
	}
}

/* The header cluster of a new image: fields, backing format, feature name
 * table, end marker, then the backing file name. */
static int write_fresh_header(struct q2w *q, unsigned char *buf)
{
	static const struct {
		uint8_t type, bit;
		const char *name;
	} features[] = {
		{ 0, 0, "dirty bit" },          { 0, 1, "corrupt bit" },
		{ 0, 2, "external data file" }, { 0, 3, "compression type" },
		{ 0, 4, "extended L2 entries" }, { 1, 0, "lazy refcounts" },
		{ 2, 0, "bitmaps" },            { 2, 1, "raw external data" },
	};
	size_t nfeat = sizeof features / sizeof features[0];
	size_t blen = q->backing_name ? strlen(q->backing_name) : 0;
	const char *fmt = q->has_backing && q->backing_fmt != FMT_AUTO ? image_format_name(q->backing_fmt) : NULL;
	size_t flen = fmt ? strlen(fmt) : 0;
	size_t fixed = q->header_length + (fmt ? 8 + ((flen + 7) & ~7u) : 0) + 8 + blen;
	if (fixed + 8 + 48 * nfeat > q->cs)
		nfeat = 0; /* the table is optional; small clusters skip it */
	if (fixed + (nfeat ? 8 + 48 * nfeat : 0) > q->cs)
		return sp_err("%s: backing file name too long for %" PRIu64 "-byte clusters",
			      q->img->path, q->cs);
	memset(buf, 0, q->cs);
	q2_put_be32(buf, QCOW2_MAGIC);
	q2_put_be32(buf + 4, 3);
	q2_put_be32(buf + 20, q->cluster_bits);
	q2_put_be64(buf + 24, q->img->size);
	q2_put_be32(buf + 36, (uint32_t)q->l1_size);
	q2_put_be64(buf + 40, q->l1_offset);
	q2_put_be64(buf + 48, q->rt_offset);
	q2_put_be32(buf + 56, (uint32_t)q->rt_clusters);
	q2_put_be64(buf + 72, q->incompat);
	q2_put_be32(buf + 96, q->refcount_order);
	q2_put_be32(buf + 100, q->header_length);
	buf[104] = q->codec == CODEC_ZSTD ? QCOW2_COMPRESSION_ZSTD : QCOW2_COMPRESSION_ZLIB;
	size_t p = q->header_length;
	if (fmt) {
		q2_put_be32(buf + p, QCOW2_EXT_BACKING_FORMAT);
		q2_put_be32(buf + p + 4, (uint32_t)flen);
		memcpy(buf + p + 8, fmt, flen);
		p += 8 + ((flen + 7) & ~7u);
	}
	if (nfeat) {
		q2_put_be32(buf + p, QCOW2_EXT_FEATURE_TABLE);
		q2_put_be32(buf + p + 4, (uint32_t)(48 * nfeat));
		p += 8;
		for (size_t i = 0; i < nfeat; i++, p += 48) {
			buf[p] = features[i].type;
			buf[p + 1] = features[i].bit;
			memcpy(buf + p + 2, features[i].name, strlen(features[i].name));
		}
	}
	p += 8; /* end of extensions (zeros) */
	if (blen) {
		q2_put_be64(buf + 8, p);
		q2_put_be32(buf + 16, (uint32_t)blen);
		memcpy(buf + p, q->backing_name, blen);
	}
	return image_write_meta(q->img, buf, q->cs, 0);
}

/* An existing image: rewrite only the fields that may have changed, so
 * extensions and fields we do not know stay as they were. */
static int write_header_fields(struct q2w *q)
{
	unsigned char b[64];
	if (full_pread(q->img->fd, b, 64, 0, q->img->path) < 0)
		return -1;
	q2_put_be64(b + 24, q->img->size);
	q2_put_be32(b + 36, (uint32_t)q->l1_size);
	q2_put_be64(b + 40, q->l1_offset);
	q2_put_be64(b + 48, q->rt_offset);
	q2_put_be32(b + 56, (uint32_t)q->rt_clusters);
	if (image_write_meta(q->img, b + 24, 40, 24) < 0)
		return -1;
	if (q->version >= 3) {
		unsigned char f[8];
		q2_put_be64(f, q->incompat & ~QCOW2_INCOMPAT_DIRTY);
		if (image_write_meta(q->img, f, 8, 72) < 0)
			return -1;
	}
	return 0;
}

static int sync_fd(struct q2w *q)
{
	if (fdatasync(q->img->fd) < 0)
		return sp_err("%s: fsync: %s", q->img->path, strerror(errno));
	return 0;
}

int q2_flush_locked(struct q2w *q)
{
	if (!q->dirty && !q->header_dirty && !q->any_pending && !q->marked_dirty) {
		if (q->synced)
			return 0;
		q->synced = true;
		return sync_fd(q);
	}
	uint64_t n2 = q2_l2_entries(q);
	/* L2 tables: drop empty ones, place new ones. */
	for (uint64_t s = 0; s < q->l1_size; s++) {
		if (!q->l2[s] || !q->l2_dirty[s])
			continue;
		uint64_t host = q->l1[s] & QCOW2_L1E_OFFSET_MASK;
		bool empty = true;
		for (uint64_t i = 0; i < n2 && empty; i++)
			empty = q->l2[s][i] == 0;
		if (empty) {
			if (host)
				q2_rc_dec(q, host >> q->cluster_bits);
			q->l1[s] = 0;
			free(q->l2[s]);
			q->l2[s] = NULL;
			q->l2_dirty[s] = 0;
			q->l1_dirty = true;
		} else if (!host) {
			int64_t c = q2_alloc(q, 1, false);
			if (c < 0)
				return -1;
			q->l1[s] = (uint64_t)c << q->cluster_bits | QCOW2_OFLAG_COPIED;
			q->l1_dirty = true;
		}
	}
	/* L1: move when it outgrew its clusters, give back a tail it no
	 * longer needs. */
	uint64_t l1_need = (q->l1_size * 8 + q->cs - 1) >> q->cluster_bits;
	if (l1_need > q->l1_clusters) {
		int64_t c = q2_alloc(q, l1_need, l1_need > 1);
		if (c < 0)
			return -1;
		for (uint64_t i = 0; i < q->l1_clusters; i++)
			q2_rc_dec(q, (q->l1_offset >> q->cluster_bits) + i);
		q->l1_offset = (uint64_t)c << q->cluster_bits;
		q->l1_clusters = l1_need;
		q->l1_dirty = q->header_dirty = true;
	} else if (l1_need < q->l1_clusters) {
		for (uint64_t i = l1_need; i < q->l1_clusters; i++)
			q2_rc_dec(q, (q->l1_offset >> q->cluster_bits) + i);
		q->l1_clusters = l1_need;
		if (!l1_need)
			q->l1_offset = 0;
		q->header_dirty = true;
	}
	if (plan_refcounts(q) < 0)
		return -1;
	/* Frees become real now that nothing new will be placed on them. */
	uint64_t E = rb_entries(q);
	if (q->any_pending) {
		for (uint64_t c = 0; c < q->end; c++) {
			if (q->pending[c / 8] & (1u << (c % 8))) {
				rc_set(q, c, 0);
				if (c < q->free_hint)
					q->free_hint = c;
			}
		}
	}

	unsigned char *buf = malloc(q->cs);
	if (!buf)
		return sp_err("%s: out of memory", q->img->path);
	int rc = 0;
	for (uint64_t s = 0; rc == 0 && s < q->l1_size; s++) {
		if (q->l2[s] && q->l2_dirty[s]) {
			rc = write_table(q, q->l2[s], n2, q->cs, q->l1[s] & QCOW2_L1E_OFFSET_MASK, buf);
			if (rc == 0)
				q->l2_dirty[s] = 0;
		}
	}
	if (rc == 0 && q->l1_dirty && q->l1_clusters) {
		unsigned char *l1buf = malloc(q->l1_clusters * q->cs);
		if (!l1buf)
			rc = sp_err("%s: out of memory", q->img->path);
		else
			rc = write_table(q, q->l1, q->l1_size, q->l1_clusters * q->cs, q->l1_offset, l1buf);
		free(l1buf);
	}
	uint64_t rt_n = q->rt_clusters * q->cs / 8;
	for (uint64_t i = 0; rc == 0 && i < rt_n; i++) {
		if (!q->rt[i] || i > q->rc_cap / E || !q->rb_dirty[i])
			continue;
		pack_refblock(q, i, buf);
		rc = image_write_meta(q->img, buf, q->cs, q->rt[i]);
		if (rc == 0)
			q->rb_dirty[i] = 0;
	}
	if (rc == 0 && q->rt_dirty) {
		unsigned char *rtbuf = malloc(q->rt_clusters * q->cs);
		if (!rtbuf)
			rc = sp_err("%s: out of memory", q->img->path);
		else
			rc = write_table(q, q->rt, rt_n, q->rt_clusters * q->cs, q->rt_offset, rtbuf);
		free(rtbuf);
	}
	/* Tables durable before the header points at them (in place: the
	 * old header stays valid until then). */
	if (rc == 0 && !q->fresh)
		rc = sync_fd(q);
	if (rc == 0)
		rc = q->fresh ? write_fresh_header(q, buf) : write_header_fields(q);
	if (rc == 0)
		rc = sync_fd(q);
	free(buf);
	if (rc < 0)
		return -1;
	q->l1_dirty = q->rt_dirty = q->header_dirty = q->dirty = false;
	q->marked_dirty = false;
	q->synced = true;

	/* After the commit: give freed space back to the filesystem. */
	if (q->any_pending) {
		for (uint64_t c = 0; c < q->end; c++) {
			if (!(q->pending[c / 8] & (1u << (c % 8))))
				continue;
			q->pending[c / 8] &= (uint8_t)~(1u << (c % 8));
			if (q->rc[c] == 0 &&
			    image_protect(q->img, c << q->cluster_bits, q->cs) == 0)
				fallocate(q->img->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					  (off_t)(c << q->cluster_bits), (off_t)q->cs);
		}
		q->any_pending = false;
	}
	uint64_t last = q->end;
	while (last > 0 && q->rc[last - 1] == 0)
		last--;
	if (last < q->end) {
		struct stat st;
		q->end = last;
		if (q->free_hint > last)
			q->free_hint = last;
		if (fstat(q->img->fd, &st) == 0 && (uint64_t)st.st_size > last << q->cluster_bits &&
		    (image_protect(q->img, last << q->cluster_bits,
				   (uint64_t)st.st_size - (last << q->cluster_bits)) < 0 ||
		     ftruncate(q->img->fd, (off_t)(last << q->cluster_bits)) < 0))
			return sp_err("%s: truncate: %s", q->img->path, strerror(errno));
	}
	return 0;
}

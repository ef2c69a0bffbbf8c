/* Opening an existing qcow2 for in-place update (local sync onto an existing
 * .qcow2, the network receiver). Every table is loaded and checked up front;
 * the data path and flush are the writer's (qcow2_write.c, qcow2_meta.c).
 *
 * Refcounts are recomputed from what the tables reference. Clusters counted
 * but referenced by nothing (leaks) are dropped; a referenced cluster whose
 * stored count is not 1 means snapshots or corruption and is refused. An
 * image left with the dirty bit (an interrupted update) takes the recomputed
 * counts as they are, which is what `qemu-img check -r all` would do. */
#include "qcow2_writer.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u

/* What a rewrite (or an update by our writer) would not carry over:
 * internal snapshots, persistent bitmaps, an encryption header. NULL when
 * nothing. */
static const char *unkept_parts(int fd, const char *path, const struct qcow2_header *h)
{
	if (h->nb_snapshots)
		return "it has internal snapshots";
	if (h->version < 3)
		return NULL;
	/* Extensions that own clusters we would not keep track of. */
	uint32_t cs = 1u << h->cluster_bits;
	unsigned char *buf = malloc(cs);
	if (!buf || full_pread(fd, buf, cs, 0, path) < 0) {
		free(buf);
		return "its header cannot be read";
	}
	const char *why = NULL;
	for (uint64_t p = h->header_length; p + 8 <= cs;) {
		uint32_t type = q2_be32(buf + p), len = q2_be32(buf + p + 4);
		if (type == QCOW2_EXT_END)
			break;
		if (type == QCOW2_EXT_BITMAPS)
			why = "it has persistent dirty bitmaps";
		else if (type == QCOW2_EXT_CRYPTO)
			why = "it is encrypted";
		p += 8 + (((uint64_t)len + 7) & ~7ull);
	}
	free(buf);
	return why;
}

/* Why this image cannot be updated in place, or NULL. */
static const char *refuse_reason(int fd, const char *path, const struct qcow2_header *h)
{
	if (h->backing_file)
		return "it has a backing file";
	if (h->extended_l2)
		return "it uses extended L2 entries";
	if (h->crypt_method)
		return "it is encrypted";
	if (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
		return "it uses an external data file";
	if (h->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
		return "it is marked corrupt";
	return unkept_parts(fd, path, h);
}

/* Entries of refcount block `blk` (one cluster) into q->rc from index first. */
static int unpack_refblock(struct q2w *q, const unsigned char *blk, uint64_t first)
{
	uint64_t E = (q->cs * 8) >> q->refcount_order;
	unsigned bits = 1u << q->refcount_order;
	if (q2_rc_grow(q, first + E) < 0)
		return -1;
	for (uint64_t j = 0; j < E; j++) {
		uint64_t v = 0;
		if (bits < 8) {
			uint64_t bit = j * bits;
			v = (blk[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
		} else {
			for (unsigned b = 0; b < bits / 8; b++)
				v = v << 8 | blk[j * (bits / 8) + b];
		}
		if (v > 0xffff)
			return sp_err("%s: refcount %" PRIu64 " of cluster %" PRIu64
				      " is too large to update in place", q->img->path, v, first + j);
		q->rc[first + j] = (uint16_t)v;
	}
	return 0;
}

static int load_refcounts(struct q2w *q, const struct qcow2_header *h, uint64_t fsize)
{
	const char *path = q->img->path;
	uint64_t cs = q->cs;
	q->rt_offset = h->refcount_table_offset;
	q->rt_clusters = h->refcount_table_clusters;
	uint64_t n = q->rt_clusters * cs / 8;
	if (q->rt_offset % cs || q->rt_offset > fsize || q->rt_clusters * cs > fsize - q->rt_offset)
		return sp_err("%s: refcount table lies outside the file", path);
	q->rt = calloc(n ? n : 1, sizeof *q->rt);
	unsigned char *buf = malloc(q->rt_clusters * cs > cs ? q->rt_clusters * cs : cs);
	if (!q->rt || !buf) {
		free(buf);
		return sp_err("%s: out of memory", path);
	}
	int rc = n ? full_pread(q->img->fd, buf, n * 8, q->rt_offset, path) : 0;
	for (uint64_t i = 0; rc == 0 && i < n; i++)
		q->rt[i] = q2_be64(buf + i * 8) & ~511ull;
	uint64_t E = (cs * 8) >> q->refcount_order;
	for (uint64_t i = 0; rc == 0 && i < n; i++) {
		uint64_t off = q->rt[i];
		if (!off)
			continue;
		if (off % cs || off > fsize || fsize - off < cs)
			rc = sp_err("%s: refcount block at 0x%" PRIx64 " lies outside the file", path, off);
		else if ((rc = full_pread(q->img->fd, buf, cs, off, path)) == 0)
			rc = unpack_refblock(q, buf, i * E);
	}
	free(buf);
	return rc;
}

/* Count one reference to the clusters of [off, off+len). */
static int add_ref(struct q2w *q, uint16_t *ref, uint64_t nref, uint64_t off, uint64_t len)
{
	if (!len)
		return 0;
	for (uint64_t c = off >> q->cluster_bits; c <= (off + len - 1) >> q->cluster_bits; c++) {
		if (c >= nref)
			return sp_err("%s: metadata points past the end of the file", q->img->path);
		if (ref[c]++)
			return sp_err("%s: cluster at 0x%" PRIx64 " is used twice (corrupt image; "
				      "check it with qemu-img check)", q->img->path, c << q->cluster_bits);
	}
	return 0;
}

static int load_tables(struct q2w *q, const struct qcow2_header *h, uint64_t fsize)
{
	const char *path = q->img->path;
	uint64_t *l1 = NULL;
	if (qcow2_load_l1(q->img->fd, path, h, fsize, &l1) < 0)
		return -1;
	q->l1_size = h->l1_size;
	int rc = q2_l1_reserve(q, q->l1_size ? q->l1_size : 1);
	if (rc == 0 && q->l1_size)
		memcpy(q->l1, l1, q->l1_size * sizeof *l1);
	free(l1);
	q->l1_offset = h->l1_table_offset;
	q->l1_clusters = (q->l1_size * 8 + q->cs - 1) >> q->cluster_bits;
	uint64_t n2 = q2_l2_entries(q);
	uint64_t reserved = q->version >= 3 ? 0x3f000000000001feull : 0x3f000000000001ffull;
	for (uint64_t s = 0; rc == 0 && s < q->l1_size; s++) {
		uint64_t off = q->l1[s] & QCOW2_L1E_OFFSET_MASK;
		if (!off)
			continue;
		if (off % q->cs || off > fsize || fsize - off < q->cs) {
			rc = sp_err("%s: L2 table at 0x%" PRIx64 " lies outside the file", path, off);
			break;
		}
		if (!(q->l2[s] = malloc(q->cs)))
			rc = sp_err("%s: out of memory for L2 tables", path);
		else
			rc = qcow2_load_l2(q->img->fd, path, off, q->cluster_bits, fsize, q->l2[s]);
		for (uint64_t i = 0; rc == 0 && i < n2; i++) {
			uint64_t e = q->l2[s][i];
			uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
			if (e & QCOW2_OFLAG_COMPRESSED)
				rc = sp_err("%s: cannot update in place: it has compressed clusters "
					    "(use --whole to write a new file)", path);
			else if (e & reserved)
				rc = sp_err("%s: L2 entry %" PRIu64 " has reserved bits set", path,
					    s * n2 + i);
			else if (host % q->cs)
				rc = sp_err("%s: data cluster at 0x%" PRIx64 " is not cluster-aligned",
					    path, host);
			else if (host && host >= fsize)
				rc = sp_err("%s: data cluster at 0x%" PRIx64 " lies past the end of the "
					    "file (truncated image?)", path, host);
		}
	}
	return rc;
}

/* Recompute refcounts from the tables; see the comment at the top. */
static int reconcile(struct q2w *q, bool dirty_on_disk, uint64_t fsize)
{
	uint64_t nref = (fsize + q->cs - 1) >> q->cluster_bits;
	if (nref < 1)
		nref = 1;
	uint16_t *ref = calloc(nref, sizeof *ref);
	if (!ref)
		return sp_err("%s: out of memory", q->img->path);
	uint64_t n2 = q2_l2_entries(q);
	int rc = add_ref(q, ref, nref, 0, q->cs);
	if (rc == 0)
		rc = add_ref(q, ref, nref, q->l1_offset, q->l1_size * 8);
	for (uint64_t s = 0; rc == 0 && s < q->l1_size; s++) {
		if (!q->l2[s])
			continue;
		rc = add_ref(q, ref, nref, q->l1[s] & QCOW2_L1E_OFFSET_MASK, q->cs);
		for (uint64_t i = 0; rc == 0 && i < n2; i++)
			rc = add_ref(q, ref, nref, q->l2[s][i] & QCOW2_L2E_OFFSET_MASK,
				     (q->l2[s][i] & QCOW2_L2E_OFFSET_MASK) ? q->cs : 0);
	}
	if (rc == 0)
		rc = add_ref(q, ref, nref, q->rt_offset, q->rt_clusters * q->cs);
	for (uint64_t i = 0; rc == 0 && i < q->rt_clusters * q->cs / 8; i++)
		if (q->rt[i])
			rc = add_ref(q, ref, nref, q->rt[i], q->cs);
	if (rc == 0)
		rc = q2_rc_grow(q, nref);
	for (uint64_t c = 0; rc == 0 && c < q->rc_cap; c++) {
		uint16_t want = c < nref ? ref[c] : 0;
		if (q->rc[c] == want)
			continue;
		if (want && !dirty_on_disk)
			rc = sp_err("%s: cluster at 0x%" PRIx64 " has refcount %u, expected 1 "
				    "(repair it with qemu-img check -r all)", q->img->path,
				    c << q->cluster_bits, q->rc[c]);
		else
			q->rc[c] = want, q->rb_dirty[c / ((q->cs * 8) >> q->refcount_order)] = 1,
			q->dirty = true; /* a leak, or counts left stale by a crash */
	}
	free(ref);
	if (rc < 0)
		return -1;
	q->end = nref;
	while (q->end > 1 && q->rc[q->end - 1] == 0)
		q->end--;
	/* Every cluster now has refcount 1: the COPIED flags must say so. */
	for (uint64_t s = 0; s < q->l1_size; s++) {
		if (!q->l2[s])
			continue;
		if (!(q->l1[s] & QCOW2_OFLAG_COPIED)) {
			q->l1[s] |= QCOW2_OFLAG_COPIED;
			q->l1_dirty = q->dirty = true;
		}
		for (uint64_t i = 0; i < n2; i++) {
			uint64_t *e = &q->l2[s][i];
			if ((*e & QCOW2_L2E_OFFSET_MASK) && !(*e & QCOW2_OFLAG_COPIED)) {
				*e |= QCOW2_OFLAG_COPIED;
				q->l2_dirty[s] = 1;
				q->dirty = true;
			}
		}
	}
	return 0;
}

struct image *qcow2_open_rw(const char *path, int fd)
{
	struct qcow2_header h;
	memset(&h, 0, sizeof h);
	if (qcow2_read_header(fd, path, &h) < 0) {
		close(fd);
		return NULL;
	}
	const char *why = refuse_reason(fd, path, &h);
	uint64_t fsize = 0;
	if (why) {
		sp_err("%s: cannot update in place: %s (use --whole to write a new file)", path, why);
	} else if (qcow2_file_size(fd, path, &fsize) == 0) {
		struct image *img = image_alloc(&q2w_ops, path, fd, FMT_QCOW2);
		struct q2w *q = img ? calloc(1, sizeof *q) : NULL;
		if (img && !q)
			sp_err("%s: out of memory", path);
		if (q) {
			pthread_mutex_init(&q->lock, NULL);
			img->priv = q;
			img->size = h.size;
			img->granularity = 1u << h.cluster_bits;
			img->writable = true;
			image_write_behind(img);
			q->img = img;
			q->cluster_bits = h.cluster_bits;
			q->cs = 1ull << h.cluster_bits;
			q->l2_bits = h.cluster_bits - 3;
			q->version = h.version;
			q->refcount_order = h.refcount_order;
			q->rc_max = h.refcount_order >= 4 ? 0xffff : (1u << (1u << h.refcount_order)) - 1;
			q->header_length = h.header_length;
			q->incompat = h.incompatible_features;
			q->autoclear = h.autoclear_features;
			q->synced = true;
			bool dirty = h.incompatible_features & QCOW2_INCOMPAT_DIRTY;
			int rc = load_tables(q, &h, fsize);
			if (rc == 0)
				rc = load_refcounts(q, &h, fsize);
			if (rc == 0)
				rc = reconcile(q, dirty, fsize);
			if (rc == 0) {
				q->marked_dirty = dirty;
				qcow2_header_free(&h);
				return img;
			}
			q2_free(q);
		}
		image_free(img);
	}
	qcow2_header_free(&h);
	close(fd);
	return NULL;
}

int qcow2_layout_of(const char *path, struct qcow2_layout *out)
{
	memset(out, 0, sizeof *out);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return sp_err("%s: %s", path, strerror(errno));
	struct qcow2_header h;
	memset(&h, 0, sizeof h);
	uint64_t fsize = 0, *l1 = NULL, *l2 = NULL;
	int rc = qcow2_read_header(fd, path, &h);
	if (rc == 0)
		rc = qcow2_file_size(fd, path, &fsize);
	if (rc == 0)
		rc = qcow2_load_l1(fd, path, &h, fsize, &l1);
	/* h.cluster_bits is only validated when the header parsed. */
	uint64_t cs = rc == 0 ? 1ull << h.cluster_bits : 0;
	if (rc == 0 && !(l2 = malloc(cs)))
		rc = sp_err("%s: out of memory", path);
	uint64_t used = rc == 0 ? qcow2_l1_needed(h.size, h.cluster_bits, h.extended_l2) : 0;
	bool compressed = false;
	for (uint64_t s = 0; rc == 0 && !compressed && s < used && s < h.l1_size; s++) {
		uint64_t off = l1[s] & QCOW2_L1E_OFFSET_MASK;
		if (!off || (rc = qcow2_load_l2(fd, path, off, h.cluster_bits, fsize, l2)) < 0)
			continue;
		for (uint64_t i = 0; i < cs / 8 && !compressed; i += h.extended_l2 ? 2 : 1)
			compressed = l2[i] & QCOW2_OFLAG_COMPRESSED;
	}
	if (rc == 0) {
		out->cluster_size = (uint32_t)cs;
		out->compress = !compressed ? CODEC_NONE
			      : h.compression_type == QCOW2_COMPRESSION_ZSTD ? CODEC_ZSTD : CODEC_ZLIB;
		out->backing_format = h.backing_format;
		out->unkept = unkept_parts(fd, path, &h);
		if (!out->unkept && h.crypt_method)
			out->unkept = "it is encrypted";
		if (!out->unkept && (h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE))
			out->unkept = "it uses an external data file";
		if (h.backing_file && !(out->backing = strdup(h.backing_file)))
			rc = sp_err("%s: out of memory", path);
	}
	free(l1);
	free(l2);
	qcow2_header_free(&h);
	close(fd);
	return rc;
}

void qcow2_layout_free(struct qcow2_layout *l)
{
	free(l->backing);
	l->backing = NULL;
}

/* qcow2 writer: creating an image and the data path shared with in-place
 * update (pwrite, zero, resize, and a read view of the image's own
 * clusters). Tables, refcounts and the header are written by flush in
 * qcow2_meta.c. Layout facts from QEMU's docs/interop/qcow2.txt.
 *
 * Concurrency: lookups, allocation and table updates hold q->lock; the
 * pwrite of whole clusters runs outside it. Writes that need the old content
 * of a cluster (partial clusters over unallocated, zero, compressed or
 * backing-file clusters) do their read-modify-write under the lock. */
#include "qcow2_writer.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#define Q2_ZSTD_LEVEL 3
#define Q2_POOL_MAX 64
/* QEMU refuses L1 tables above 32 MiB. */
#define Q2_MAX_L1_ENTRIES ((32u << 20) / 8)

enum ckind { C_UNALLOC, C_ZERO, C_NORMAL, C_COMPRESSED };

/* ---- compression contexts ---------------------------------------------- */

struct q2_codec_pool {
	pthread_mutex_t lock;
	enum cluster_codec codec;
	void *ctx[Q2_POOL_MAX];
	int n;
};

static void codec_ctx_free(enum cluster_codec c, void *ctx)
{
	if (!ctx)
		return;
	if (c == CODEC_ZSTD) {
		ZSTD_freeCCtx(ctx);
	} else {
		deflateEnd(ctx);
		free(ctx);
	}
}

static void *codec_ctx_get(struct q2_codec_pool *p)
{
	void *ctx = NULL;
	pthread_mutex_lock(&p->lock);
	if (p->n > 0)
		ctx = p->ctx[--p->n];
	pthread_mutex_unlock(&p->lock);
	if (ctx)
		return ctx;
	if (p->codec == CODEC_ZSTD) {
		ZSTD_CCtx *z = ZSTD_createCCtx();
		if (z && ZSTD_isError(ZSTD_CCtx_setParameter(z, ZSTD_c_compressionLevel, Q2_ZSTD_LEVEL))) {
			ZSTD_freeCCtx(z);
			z = NULL;
		}
		return z;
	}
	z_stream *s = calloc(1, sizeof *s);
	/* Raw deflate (negative window bits), 4 KiB window: what QEMU reads. */
	if (s && deflateInit2(s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
		free(s);
		s = NULL;
	}
	return s;
}

static void codec_ctx_put(struct q2_codec_pool *p, void *ctx)
{
	pthread_mutex_lock(&p->lock);
	if (p->n < Q2_POOL_MAX) {
		p->ctx[p->n++] = ctx;
		ctx = NULL;
	}
	pthread_mutex_unlock(&p->lock);
	codec_ctx_free(p->codec, ctx);
}

int q2_codec_init(struct q2w *q)
{
	if (q->codec == CODEC_NONE)
		return 0;
	q->pool = calloc(1, sizeof *q->pool);
	if (!q->pool)
		return sp_err("%s: out of memory", q->img->path);
	pthread_mutex_init(&q->pool->lock, NULL);
	q->pool->codec = q->codec;
	return 0;
}

static void codec_pool_free(struct q2_codec_pool *p)
{
	if (!p)
		return;
	for (int i = 0; i < p->n; i++)
		codec_ctx_free(p->codec, p->ctx[i]);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* Compress one cluster into dst (cap bytes). Returns the length, 0 when the
 * result would not be smaller than cap, -1 on error. */
static long compress_cluster(struct q2w *q, const void *src, size_t n, void *dst, size_t cap)
{
	void *ctx = codec_ctx_get(q->pool);
	if (!ctx)
		return sp_err("%s: cannot set up %s compression", q->img->path,
			      q->codec == CODEC_ZSTD ? "zstd" : "zlib");
	long out;
	if (q->codec == CODEC_ZSTD) {
		size_t r = ZSTD_compress2(ctx, dst, cap, src, n);
		if (!ZSTD_isError(r))
			out = (long)r;
		else if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
			out = 0;
		else
			out = sp_err("%s: zstd: %s", q->img->path, ZSTD_getErrorName(r));
	} else {
		z_stream *s = ctx;
		deflateReset(s);
		s->next_in = (Bytef *)src;
		s->avail_in = (uInt)n;
		s->next_out = dst;
		s->avail_out = (uInt)cap;
		int r = deflate(s, Z_FINISH);
		if (r == Z_STREAM_END)
			out = (long)(cap - s->avail_out);
		else if (r == Z_OK || r == Z_BUF_ERROR)
			out = 0;
		else
			out = sp_err("%s: deflate failed (%d)", q->img->path, r);
	}
	codec_ctx_put(q->pool, ctx);
	return out;
}

/* ---- tables ------------------------------------------------------------ */

int q2_l1_reserve(struct q2w *q, uint64_t n)
{
	if (n <= q->l1_cap)
		return 0;
	uint64_t *l1 = realloc(q->l1, n * sizeof *l1);
	if (l1)
		q->l1 = l1;
	uint64_t **l2 = realloc(q->l2, n * sizeof *l2);
	if (l2)
		q->l2 = l2;
	uint8_t *d = realloc(q->l2_dirty, n);
	if (d)
		q->l2_dirty = d;
	if (!l1 || !l2 || !d)
		return sp_err("%s: out of memory for the L1 table", q->img->path);
	for (uint64_t i = q->l1_cap; i < n; i++) {
		q->l1[i] = 0;
		q->l2[i] = NULL;
		q->l2_dirty[i] = 0;
	}
	q->l1_cap = n;
	return 0;
}

int q2_l2_get(struct q2w *q, uint64_t slot, uint64_t **out)
{
	if (slot >= q->l1_size)
		return sp_err("%s: internal error: L1 index %llu out of range", q->img->path,
			      (unsigned long long)slot);
	if (!q->l2[slot]) {
		q->l2[slot] = calloc(q2_l2_entries(q), sizeof(uint64_t));
		if (!q->l2[slot])
			return sp_err("%s: out of memory for an L2 table", q->img->path);
	}
	*out = q->l2[slot];
	return 0;
}

static uint64_t get_entry(const struct q2w *q, uint64_t g)
{
	uint64_t slot = g >> q->l2_bits;
	if (slot >= q->l1_size || !q->l2[slot])
		return 0;
	return q->l2[slot][g & (q2_l2_entries(q) - 1)];
}

static int set_entry(struct q2w *q, uint64_t g, uint64_t e)
{
	uint64_t *t = NULL;
	uint64_t slot = g >> q->l2_bits;
	if (q2_l2_get(q, slot, &t) < 0)
		return -1;
	t[g & (q2_l2_entries(q) - 1)] = e;
	q->l2_dirty[slot] = 1;
	q->dirty = true;
	return 0;
}

static enum ckind classify(const struct q2w *q, uint64_t e, uint64_t *host)
{
	*host = e & QCOW2_L2E_OFFSET_MASK;
	if (e & QCOW2_OFLAG_COMPRESSED)
		return C_COMPRESSED;
	if (q->version >= 3 && (e & QCOW2_OFLAG_ZERO))
		return C_ZERO;
	return *host ? C_NORMAL : C_UNALLOC;
}

/* Host byte range [*start, *end) a compressed entry reads, sector-rounded. */
static void compressed_range(const struct q2w *q, uint64_t e, uint64_t *off, uint64_t *start,
			     uint64_t *end)
{
	uint64_t shift = q2_csize_shift(q);
	*off = e & ((1ull << shift) - 1);
	uint64_t nsec = ((e >> shift) & ((1ull << (q->cluster_bits - 8)) - 1)) + 1;
	*start = *off & ~511ull;
	*end = *start + nsec * 512;
}

void q2_release_entry(struct q2w *q, uint64_t e)
{
	uint64_t host;
	enum ckind k = classify(q, e, &host);
	if (k == C_COMPRESSED) {
		uint64_t off, s, end;
		compressed_range(q, e, &off, &s, &end);
		for (uint64_t c = s >> q->cluster_bits; c < (end + q->cs - 1) >> q->cluster_bits; c++)
			q2_rc_dec(q, c);
	} else if (host) {
		q2_rc_dec(q, host >> q->cluster_bits);
	}
}

/* ---- reading own clusters ---------------------------------------------- */

/* pread that reads zeros past the end of the file (the tail of a file still
 * being written, whose metadata is appended at flush). */
static int read_host(struct q2w *q, void *buf, size_t len, uint64_t off)
{
	unsigned char *p = buf;
	while (len > 0) {
		ssize_t n = pread(q->img->fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return sp_err("%s: read at offset %llu: %s", q->img->path,
				      (unsigned long long)off, strerror(errno));
		if (n == 0) {
			memset(p, 0, len);
			break;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static int backing_open(struct q2w *q)
{
	if (q->backing)
		return 0;
	q->backing = image_open(q->backing_path, q->backing_fmt, IMAGE_RDONLY);
	if (!q->backing)
		return sp_err_prefix(q->img->path);
	return 0;
}

/* Backing content of [off, off+len); zeros past the backing's end. */
static int read_backing(struct q2w *q, void *buf, size_t len, uint64_t off)
{
	if (backing_open(q) < 0)
		return -1;
	uint64_t bsize = q->backing->size;
	size_t n = off >= bsize ? 0 : (size_t)(bsize - off < len ? bsize - off : len);
	if (n && image_pread(q->backing, buf, n, off) < 0)
		return -1;
	memset((char *)buf + n, 0, len - n);
	return 0;
}

/* The current content of guest cluster g (entry e) into buf (cs bytes). */
static int cluster_content(struct q2w *q, uint64_t g, uint64_t e, unsigned char *buf)
{
	uint64_t host;
	switch (classify(q, e, &host)) {
	case C_NORMAL:
		return read_host(q, buf, q->cs, host);
	case C_ZERO:
		memset(buf, 0, q->cs);
		return 0;
	case C_UNALLOC:
		if (q->has_backing)
			return read_backing(q, buf, q->cs, g << q->cluster_bits);
		memset(buf, 0, q->cs);
		return 0;
	case C_COMPRESSED: {
		uint64_t off, s, end;
		compressed_range(q, e, &off, &s, &end);
		size_t n = (size_t)(end - off);
		unsigned char *tmp = malloc(n);
		if (!tmp)
			return sp_err("%s: out of memory", q->img->path);
		struct qcow2_decoder *d = qcow2_decoder_new(
			(q->incompat & QCOW2_INCOMPAT_COMPRESSION) ? QCOW2_COMPRESSION_ZSTD
								   : QCOW2_COMPRESSION_ZLIB);
		int rc = d ? read_host(q, tmp, n, off) : -1;
		if (rc == 0)
			rc = qcow2_decompress(d, tmp, n, buf, q->cs, q->img->path, g << q->cluster_bits);
		qcow2_decoder_free(d);
		free(tmp);
		return rc;
	}
	}
	return 0;
}

static int q2_extent(struct image *img, uint64_t off, struct extent *ext)
{
	struct q2w *q = img->priv;
	uint64_t n = q2_l2_entries(q);
	uint64_t g = off >> q->cluster_bits;
	uint64_t last = (img->size - 1) >> q->cluster_bits;
	enum extent_kind kind = EXTENT_HOLE;
	bool first = true;
	/* Look at most at 64 L2 tables' worth per call. */
	uint64_t limit = g + 64 * n;
	pthread_mutex_lock(&q->lock);
	while (g <= last && g < limit) {
		uint64_t slot = g >> q->l2_bits;
		enum extent_kind k;
		uint64_t step = 1;
		if (!q->l2[slot]) {
			k = q->has_backing ? EXTENT_DATA : EXTENT_HOLE;
			step = n - (g & (n - 1));
		} else {
			uint64_t host;
			switch (classify(q, q->l2[slot][g & (n - 1)], &host)) {
			case C_NORMAL:
			case C_COMPRESSED: k = EXTENT_DATA; break;
			case C_ZERO: k = EXTENT_ZERO; break;
			default: k = q->has_backing ? EXTENT_DATA : EXTENT_HOLE; break;
			}
		}
		if (first) {
			kind = k;
			first = false;
		} else if (k != kind) {
			break;
		}
		g += step;
	}
	pthread_mutex_unlock(&q->lock);
	uint64_t endb = g << q->cluster_bits;
	if (endb > img->size || endb < off)
		endb = img->size;
	ext->offset = off;
	ext->length = endb - off;
	ext->kind = kind;
	return 0;
}

static int q2_pread(struct image *img, void *buf, size_t len, uint64_t off)
{
	struct q2w *q = img->priv;
	if (off > img->size || len > img->size - off)
		return sp_err("%s: read past the end of the image", img->path);
	unsigned char *p = buf;
	unsigned char *tmp = NULL;
	/* One pread per run of contiguous host clusters. */
	uint64_t run_host = 0, run_len = 0;
	unsigned char *run_buf = NULL;
	int rc = 0;
	uint64_t nread = 0;
	while (rc == 0 && len > 0) {
		uint64_t g = off >> q->cluster_bits;
		uint64_t in = off & (q->cs - 1);
		size_t n = q->cs - in < len ? (size_t)(q->cs - in) : len;
		pthread_mutex_lock(&q->lock);
		uint64_t e = get_entry(q, g);
		pthread_mutex_unlock(&q->lock);
		uint64_t host;
		enum ckind k = classify(q, e, &host);
		if (k == C_NORMAL && run_len && run_host + run_len == host + in) {
			run_len += n;
		} else {
			if (run_len) {
				rc = full_pread(img->fd, run_buf, run_len, run_host, img->path);
				nread += run_len;
				run_len = 0;
			}
			if (rc == 0 && k == C_NORMAL) {
				run_host = host + in;
				run_buf = p;
				run_len = n;
			} else if (rc == 0 && (k == C_ZERO || (k == C_UNALLOC && !q->has_backing))) {
				memset(p, 0, n);
			} else if (rc == 0 && k == C_UNALLOC) {
				pthread_mutex_lock(&q->lock);
				rc = backing_open(q);
				pthread_mutex_unlock(&q->lock);
				if (rc == 0)
					rc = read_backing(q, p, n, off);
			} else if (rc == 0) {
				if (!tmp && !(tmp = malloc(q->cs)))
					rc = sp_err("%s: out of memory", img->path);
				if (rc == 0)
					rc = cluster_content(q, g, e, tmp);
				if (rc == 0)
					memcpy(p, tmp + in, n);
				nread += n;
			}
		}
		p += n;
		off += n;
		len -= n;
	}
	if (rc == 0 && run_len) {
		rc = full_pread(img->fd, run_buf, run_len, run_host, img->path);
		nread += run_len;
	}
	__atomic_add_fetch(&img->bytes_read, nread, __ATOMIC_RELAXED);
	free(tmp);
	return rc;
}

/* ---- writing ----------------------------------------------------------- */

/* In-place update: before the first change, set the dirty bit on disk so a
 * crash leaves an image whose refcounts any qcow2 tool knows to rebuild;
 * clear autoclear bits (we keep no such metadata up to date). */
static int begin_modify(struct q2w *q)
{
	if (q->fresh || q->marked_dirty)
		return 0;
	q->marked_dirty = true;
	q->synced = false;
	if (q->version < 3)
		return 0;
	unsigned char b[24];
	q2_put_be64(b, q->incompat | QCOW2_INCOMPAT_DIRTY);
	q2_put_be64(b + 8, 0);   /* compatible features: kept as they were */
	q2_put_be64(b + 16, 0);  /* autoclear */
	if (full_pread(q->img->fd, b + 8, 8, 80, q->img->path) < 0 ||
	    image_write_meta(q->img, b, sizeof b, 72) < 0)
		return -1;
	q->autoclear = 0;
	if (fdatasync(q->img->fd) < 0)
		return sp_err("%s: fsync: %s", q->img->path, strerror(errno));
	return 0;
}

/* Write a whole new cluster for g (lock held): content from buf, placed in a
 * new host cluster or the one a zero entry still owns. */
static int write_new_cluster(struct q2w *q, uint64_t g, uint64_t e, const unsigned char *buf)
{
	uint64_t host;
	enum ckind k = classify(q, e, &host);
	bool reuse = (k == C_ZERO || k == C_NORMAL) && host;
	if (!reuse) {
		int64_t c = q2_alloc(q, 1, false);
		if (c < 0)
			return -1;
		host = (uint64_t)c << q->cluster_bits;
	}
	if (image_write_meta(q->img, buf, q->cs, host) < 0) {
		if (!reuse)
			q2_rc_dec(q, host >> q->cluster_bits);
		return -1;
	}
	if (!reuse)
		q2_release_entry(q, e);
	return set_entry(q, g, host | QCOW2_OFLAG_COPIED);
}

/* Change part [in, in+n) of cluster g to buf (or zeros when buf is NULL)
 * when the cluster cannot simply be written in place (lock held). */
static int rmw_cluster(struct q2w *q, uint64_t g, uint64_t in, size_t n, const void *buf)
{
	uint64_t e = get_entry(q, g);
	unsigned char *tmp = malloc(q->cs);
	if (!tmp)
		return sp_err("%s: out of memory", q->img->path);
	int rc = cluster_content(q, g, e, tmp);
	if (rc == 0) {
		if (buf)
			memcpy(tmp + in, buf, n);
		else
			memset(tmp + in, 0, n);
		rc = write_new_cluster(q, g, e, tmp);
	}
	free(tmp);
	return rc;
}

/* Place n compressed bytes (lock held): back to back after the previous
 * piece while it fits in the clusters of the current run, or extending the
 * run when nothing else was allocated after it, else in new clusters at the
 * end. Returns the host byte offset; every cluster the piece's sectors
 * touch gets one more reference. */
static int64_t place_compressed(struct q2w *q, size_t n)
{
	uint64_t at;
	uint64_t end_bytes = q->end << q->cluster_bits;
	if (q->cend && q->cpos + n <= q->cend) {
		at = q->cpos;
	} else if (q->cend && q->cend == end_bytes) {
		at = q->cpos;
	} else {
		at = end_bytes;
	}
	uint64_t need_end = (at + n + q->cs - 1) >> q->cluster_bits;
	if (need_end > q->end) {
		if (q2_rc_grow(q, need_end) < 0)
			return -1;
		q->end = need_end;
		q->cend = need_end << q->cluster_bits;
	}
	uint64_t s = at & ~511ull;
	uint64_t e = (at + n + 511) & ~511ull;
	for (uint64_t c = s >> q->cluster_bits; c < (e + q->cs - 1) >> q->cluster_bits; c++)
		if (q2_rc_inc(q, c) < 0)
			return -1;
	q->cpos = at + n;
	return (int64_t)at;
}

/* Store one compressed cluster (data already compressed into cbuf). */
static int store_compressed(struct q2w *q, uint64_t g, const unsigned char *cbuf, size_t n)
{
	pthread_mutex_lock(&q->lock);
	int64_t at = place_compressed(q, n);
	int rc = at < 0 ? -1 : 0;
	if (rc == 0) {
		uint64_t nsec = ((((uint64_t)at + n - 1) >> 9) - ((uint64_t)at >> 9));
		uint64_t e = QCOW2_OFLAG_COMPRESSED | nsec << q2_csize_shift(q) | (uint64_t)at;
		q2_release_entry(q, get_entry(q, g));
		rc = set_entry(q, g, e);
	}
	pthread_mutex_unlock(&q->lock);
	if (rc == 0)
		rc = image_write_data(q->img, cbuf, n, (uint64_t)at);
	return rc;
}

struct seg {
	uint64_t host;
	const unsigned char *buf;
	size_t len;
};

static int q2_pwrite(struct image *img, const void *buf, size_t len, uint64_t off)
{
	struct q2w *q = img->priv;
	if (!img->writable)
		return sp_err("%s: image is open read-only", img->path);
	if (off > img->size || len > img->size - off)
		return sp_err("%s: write past the end of the image", img->path);
	if (len == 0)
		return 0;
	const unsigned char *p = buf;
	uint64_t nclusters = ((off + len - 1) >> q->cluster_bits) - (off >> q->cluster_bits) + 1;
	struct seg *segs = malloc(nclusters * sizeof *segs);
	unsigned char *cbuf = q->codec != CODEC_NONE ? malloc(q->cs) : NULL;
	unsigned char *pad = NULL;
	if (!segs || (q->codec != CODEC_NONE && !cbuf)) {
		free(segs);
		free(cbuf);
		return sp_err("%s: out of memory", img->path);
	}
	size_t nseg = 0;
	int rc = 0;
	pthread_mutex_lock(&q->lock);
	rc = begin_modify(q);
	q->synced = false;
	while (rc == 0 && len > 0) {
		uint64_t g = off >> q->cluster_bits;
		uint64_t gstart = g << q->cluster_bits;
		uint64_t in = off - gstart;
		size_t n = q->cs - in < len ? (size_t)(q->cs - in) : len;
		uint64_t in_end = gstart + q->cs < img->size ? gstart + q->cs : img->size;
		bool full = in == 0 && off + n == in_end;
		uint64_t e = get_entry(q, g), host;
		enum ckind k = classify(q, e, &host);

		if (full && q->codec != CODEC_NONE) {
			/* Compress outside the lock; the tail cluster is padded. */
			pthread_mutex_unlock(&q->lock);
			const unsigned char *src = p;
			if (n < q->cs) {
				if (!pad && !(pad = calloc(1, q->cs)))
					rc = sp_err("%s: out of memory", img->path);
				if (pad) {
					memcpy(pad, p, n);
					memset(pad + n, 0, q->cs - n);
				}
				src = pad;
			}
			long clen = rc == 0 ? compress_cluster(q, src, q->cs, cbuf, q->cs - 1) : -1;
			if (clen > 0)
				rc = store_compressed(q, g, cbuf, (size_t)clen);
			else if (clen < 0)
				rc = -1;
			pthread_mutex_lock(&q->lock);
			if (clen != 0) {
				p += n, off += n, len -= n;
				continue;
			}
			e = get_entry(q, g);
			k = classify(q, e, &host);
		}

		if (k == C_NORMAL) {
			/* Allocated: overwrite in place. */
		} else if (full && k == C_ZERO && host) {
			rc = set_entry(q, g, host | QCOW2_OFLAG_COPIED);
		} else if (full) {
			int64_t c = q2_alloc(q, 1, false);
			if (c < 0) {
				rc = -1;
				break;
			}
			q2_release_entry(q, e);
			host = (uint64_t)c << q->cluster_bits;
			rc = set_entry(q, g, host | QCOW2_OFLAG_COPIED);
		} else {
			rc = rmw_cluster(q, g, in, n, p);
			p += n, off += n, len -= n;
			continue;
		}
		if (rc == 0) {
			if (nseg && segs[nseg - 1].host + segs[nseg - 1].len == host + in &&
			    segs[nseg - 1].buf + segs[nseg - 1].len == p)
				segs[nseg - 1].len += n;
			else
				segs[nseg++] = (struct seg){ host + in, p, n };
		}
		p += n, off += n, len -= n;
	}
	pthread_mutex_unlock(&q->lock);
	for (size_t i = 0; rc == 0 && i < nseg; i++)
		rc = image_write_data(img, segs[i].buf, segs[i].len, segs[i].host);
	free(segs);
	free(cbuf);
	free(pad);
	return rc;
}

static int zero_locked(struct q2w *q, uint64_t off, uint64_t len)
{
	struct image *img = q->img;
	static const unsigned char zeros[4096];
	uint64_t n2 = q2_l2_entries(q);
	int rc = 0;
	while (rc == 0 && len > 0) {
		uint64_t g = off >> q->cluster_bits;
		uint64_t slot = g >> q->l2_bits;
		uint64_t gstart = g << q->cluster_bits;
		uint64_t in = off - gstart;
		uint64_t n = q->cs - in < len ? q->cs - in : len;
		uint64_t in_end = gstart + q->cs < img->size ? gstart + q->cs : img->size;
		bool full = in == 0 && off + n == in_end;
		if (!q->has_backing && (slot >= q->l1_size || !q->l2[slot])) {
			/* No table: the whole slot already reads as zeros. */
			uint64_t next = (slot + 1) * n2 << q->cluster_bits;
			uint64_t skip = next - off < len ? next - off : len;
			off += skip;
			len -= skip;
			continue;
		}
		uint64_t e = get_entry(q, g), host;
		enum ckind k = classify(q, e, &host);
		if (k == C_ZERO || (k == C_UNALLOC && !q->has_backing)) {
			/* already zeros */
		} else if (full) {
			q2_release_entry(q, e);
			rc = set_entry(q, g, q->has_backing ? QCOW2_OFLAG_ZERO : 0);
		} else if (k == C_NORMAL) {
			for (uint64_t done = 0; rc == 0 && done < n; done += sizeof zeros) {
				size_t m = n - done < sizeof zeros ? (size_t)(n - done) : sizeof zeros;
				rc = image_write_meta(img, zeros, m, host + in + done);
			}
		} else {
			rc = rmw_cluster(q, g, in, (size_t)n, NULL);
		}
		off += n;
		len -= n;
	}
	return rc;
}

static int q2_zero(struct image *img, uint64_t off, uint64_t len)
{
	struct q2w *q = img->priv;
	if (!img->writable)
		return sp_err("%s: image is open read-only", img->path);
	if (off > img->size || len > img->size - off)
		return sp_err("%s: zero range past the end of the image", img->path);
	if (len == 0)
		return 0;
	pthread_mutex_lock(&q->lock);
	int rc = begin_modify(q);
	q->synced = false;
	if (rc == 0)
		rc = zero_locked(q, off, len);
	pthread_mutex_unlock(&q->lock);
	return rc;
}

static int q2_resize(struct image *img, uint64_t size)
{
	struct q2w *q = img->priv;
	if (!img->writable)
		return sp_err("%s: image is open read-only", img->path);
	/* QEMU counts qcow2 sizes in 512-byte sectors: round up, as qemu-img
	 * does for raw sources, so that no byte is cut off. */
	size = (size + 511) & ~511ull;
	if (size == img->size)
		return 0;
	uint64_t l1 = qcow2_l1_needed(size, q->cluster_bits, false);
	if (l1 > Q2_MAX_L1_ENTRIES)
		return sp_err("%s: %llu bytes is too large for %llu-byte clusters", img->path,
			      (unsigned long long)size, (unsigned long long)q->cs);
	pthread_mutex_lock(&q->lock);
	int rc = begin_modify(q);
	uint64_t old = img->size;
	q->synced = false;
	if (rc == 0 && size > old) {
		rc = q2_l1_reserve(q, l1);
		if (rc == 0) {
			if (l1 > q->l1_size)
				q->l1_size = l1;
			img->size = size;
			/* Bytes past the old end in its last cluster may hold old
			 * data; the grown image must read zeros there. */
			uint64_t tail_end = (old + q->cs - 1) & ~(q->cs - 1);
			if (tail_end > size)
				tail_end = size;
			if (old & (q->cs - 1))
				rc = zero_locked(q, old, tail_end - old);
			if (rc == 0 && q->has_backing && size > tail_end)
				rc = zero_locked(q, tail_end, size - tail_end);
		}
	} else if (rc == 0 && size < old) {
		uint64_t first = (size + q->cs - 1) >> q->cluster_bits;
		uint64_t last = (old + q->cs - 1) >> q->cluster_bits;
		for (uint64_t g = first; g < last; g++) {
			uint64_t slot = g >> q->l2_bits;
			if (!q->l2[slot]) {
				g = ((slot + 1) << q->l2_bits) - 1;
				continue;
			}
			uint64_t e = get_entry(q, g);
			if (e) {
				q2_release_entry(q, e);
				set_entry(q, g, 0);
			}
		}
		for (uint64_t s = l1; s < q->l1_size; s++) {
			if (q->l1[s] & QCOW2_L1E_OFFSET_MASK)
				q2_rc_dec(q, (q->l1[s] & QCOW2_L1E_OFFSET_MASK) >> q->cluster_bits);
			q->l1[s] = 0;
			free(q->l2[s]);
			q->l2[s] = NULL;
			q->l2_dirty[s] = 0;
		}
		q->l1_size = l1;
		q->l1_dirty = true;
		img->size = size;
	}
	if (rc == 0 && size != old) {
		q->header_dirty = true;
		q->dirty = true;
	}
	pthread_mutex_unlock(&q->lock);
	return rc;
}

static int q2_flush(struct image *img)
{
	struct q2w *q = img->priv;
	if (!img->writable)
		return 0;
	pthread_mutex_lock(&q->lock);
	int rc = q2_flush_locked(q);
	pthread_mutex_unlock(&q->lock);
	return rc;
}

static int q2_close(struct image *img)
{
	struct q2w *q = img->priv;
	int rc = 0;
	if (img->writable && q2_flush(img) < 0)
		rc = -1;
	if (close(img->fd) < 0 && img->writable && rc == 0)
		rc = sp_err("%s: close: %s", img->path, strerror(errno));
	q2_free(q);
	image_free(img);
	return rc;
}

void q2_free(struct q2w *q)
{
	if (!q)
		return;
	for (uint64_t i = 0; i < q->l1_cap; i++)
		free(q->l2[i]);
	free(q->l2);
	free(q->l1);
	free(q->l2_dirty);
	free(q->rc);
	free(q->pending);
	free(q->rt);
	free(q->rb_dirty);
	free(q->backing_path);
	free(q->backing_name);
	codec_pool_free(q->pool);
	if (q->backing) {
		char saved[1024];
		snprintf(saved, sizeof saved, "%s", sp_errmsg());
		image_close(q->backing);
		sp_err("%s", saved);
	}
	pthread_mutex_destroy(&q->lock);
	free(q);
}

const struct image_ops q2w_ops = {
	.name = "qcow2",
	.extent = q2_extent,
	.pread = q2_pread,
	.pwrite = q2_pwrite,
	.zero = q2_zero,
	.resize = q2_resize,
	.flush = q2_flush,
	.close = q2_close,
};

/* ---- create ------------------------------------------------------------ */

struct image *qcow2_create(const char *path, uint64_t size, const struct image_create_opts *opts)
{
	uint64_t cs = opts->cluster_size ? opts->cluster_size : 65536;
	/* Whole 512-byte sectors, as QEMU sees every qcow2 (see q2_resize). */
	if (size > UINT64_MAX - 511) {
		sp_err("%s: virtual size too large", path);
		return NULL;
	}
	size = (size + 511) & ~511ull;
	if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1))) {
		sp_err("%s: cluster size %llu must be a power of two from 512 to 2M", path,
		       (unsigned long long)cs);
		return NULL;
	}
	uint32_t cb = (uint32_t)__builtin_ctzll(cs);
	uint64_t l1 = qcow2_l1_needed(size, cb, false);
	if (l1 > Q2_MAX_L1_ENTRIES) {
		sp_err("%s: %llu bytes is too large for %llu-byte clusters (use a larger --cluster-size)",
		       path, (unsigned long long)size, (unsigned long long)cs);
		return NULL;
	}
	if (opts->backing && (!opts->backing[0] || strlen(opts->backing) > 1023)) {
		sp_err("%s: backing file name must be 1 to 1023 bytes", path);
		return NULL;
	}
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		sp_err("%s: %s", path, strerror(errno));
		return NULL;
	}
	struct image *img = image_alloc(&q2w_ops, path, fd, FMT_QCOW2);
	struct q2w *q = calloc(1, sizeof *q);
	if (!img || !q) {
		if (img)
			sp_err("%s: out of memory", path);
		free(q);
		image_free(img);
		close(fd);
		return NULL;
	}
	pthread_mutex_init(&q->lock, NULL);
	img->priv = q;
	img->size = size;
	img->granularity = (uint32_t)cs;
	img->writable = true;
	image_write_behind(img);
	q->img = img;
	q->cluster_bits = cb;
	q->cs = cs;
	q->l2_bits = cb - 3;
	q->version = 3;
	q->refcount_order = 4;
	q->rc_max = 0xffff;
	q->header_length = 112;
	q->fresh = true;
	q->codec = opts->compress;
	if (q->codec == CODEC_ZSTD)
		q->incompat |= QCOW2_INCOMPAT_COMPRESSION;
	q->dirty = q->header_dirty = true;
	int rc = q2_l1_reserve(q, l1 ? l1 : 1);
	q->l1_size = l1;
	q->l1_dirty = true;
	if (rc == 0)
		rc = q2_codec_init(q);
	if (rc == 0 && q2_alloc(q, 1, true) < 0) /* the header cluster */
		rc = -1;
	if (rc == 0 && opts->backing) {
		q->has_backing = true;
		q->backing_fmt = opts->backing_format;
		q->backing_name = strdup(opts->backing);
		q->backing_path = backing_resolve(path, opts->backing);
		if (!q->backing_name || !q->backing_path)
			rc = sp_err("%s: out of memory", path);
	}
	if (rc < 0) {
		close(fd);
		q2_free(q);
		image_free(img);
		return NULL;
	}
	return img;
}

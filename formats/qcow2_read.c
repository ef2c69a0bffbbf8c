/* qcow2 images, read side: the extent map and pread walk the L1/L2 tables.
 * Unallocated clusters fall through to the backing image, zero clusters read
 * as zeros, normal clusters are read in host-contiguous runs, compressed
 * clusters are inflated one at a time. Every L2 entry is checked before it
 * is used; a table or cluster outside the file is an error, never zeros.
 *
 * Threads: pread/extent may run concurrently. Shared state (the L2 table
 * cache, the decoder pool, the last inflated cluster) sits behind one
 * mutex; a cached table is pinned while a caller walks it, so the walk
 * itself and all data reads run without the lock. */
#include "qcow2.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define L2_SLOTS 16
#define DECODER_POOL 8

struct l2_slot {
	uint64_t off; /* file offset of the cached table; 0 = empty */
	uint64_t *table;
	unsigned pins;
	uint64_t used; /* LRU tick */
};

struct qcow2 {
	struct qcow2_header h;
	uint64_t file_size;
	uint32_t cb;         /* cluster_bits */
	uint64_t cs;         /* cluster size */
	unsigned ew;         /* 64-bit words per L2 entry: 1, or 2 with extended L2 */
	uint64_t l2_entries; /* entries per L2 table */
	uint64_t l2_cov;     /* guest bytes one L2 table maps */
	uint32_t sc_bits;    /* subcluster bits (extended L2), else cb */
	uint64_t *l1;
	struct image *backing;
	uint64_t *stat; /* bytes_read of the image the user opened */

	pthread_mutex_t lock;
	struct l2_slot slots[L2_SLOTS];
	uint64_t tick;
	struct qcow2_decoder *decoders[DECODER_POOL];
	unsigned ndecoders;
	uint64_t cc_l2e;        /* descriptor of the cluster in cc_buf */
	unsigned char *cc_buf;  /* last inflated cluster, NULL if none */
};

static const struct image_ops qcow2_ops;

static uint64_t min64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static void count_read(struct qcow2 *q, uint64_t n)
{
	__atomic_add_fetch(q->stat, n, __ATOMIC_RELAXED);
}

/* ---- L2 table cache ---- */

struct l2_ref {
	const uint64_t *t; /* NULL: the whole L2 range is unallocated */
	struct l2_slot *slot;
	uint64_t *own; /* uncached table when every slot is pinned */
};

static int l2_get(struct image *img, struct qcow2 *q, uint64_t l1i, struct l2_ref *r)
{
	r->t = NULL;
	r->slot = NULL;
	r->own = NULL;
	uint64_t off = q->l1[l1i] & QCOW2_L1E_OFFSET_MASK;
	if (!off)
		return 0;
	pthread_mutex_lock(&q->lock);
	struct l2_slot *victim = NULL;
	for (unsigned i = 0; i < L2_SLOTS; i++) {
		struct l2_slot *s = &q->slots[i];
		if (s->off == off) {
			s->pins++;
			s->used = ++q->tick;
			r->t = s->table;
			r->slot = s;
			pthread_mutex_unlock(&q->lock);
			return 0;
		}
		if (!s->pins && (!victim || s->used < victim->used))
			victim = s;
	}
	if (victim) {
		/* Loading under the lock: a miss costs one cluster read per
		 * cluster_size/8 guest clusters, rare enough not to matter. */
		victim->off = 0;
		if (!victim->table && !(victim->table = malloc(q->cs))) {
			pthread_mutex_unlock(&q->lock);
			return sp_err("%s: out of memory for an L2 table", img->path);
		}
		if (qcow2_load_l2(img->fd, img->path, off, q->cb, q->file_size, victim->table) < 0) {
			pthread_mutex_unlock(&q->lock);
			return -1;
		}
		count_read(q, q->cs);
		victim->off = off;
		victim->pins = 1;
		victim->used = ++q->tick;
		r->t = victim->table;
		r->slot = victim;
		pthread_mutex_unlock(&q->lock);
		return 0;
	}
	pthread_mutex_unlock(&q->lock);
	if (!(r->own = malloc(q->cs)))
		return sp_err("%s: out of memory for an L2 table", img->path);
	if (qcow2_load_l2(img->fd, img->path, off, q->cb, q->file_size, r->own) < 0) {
		free(r->own);
		r->own = NULL;
		return -1;
	}
	count_read(q, q->cs);
	r->t = r->own;
	return 0;
}

static void l2_put(struct qcow2 *q, struct l2_ref *r)
{
	if (r->slot) {
		pthread_mutex_lock(&q->lock);
		r->slot->pins--;
		pthread_mutex_unlock(&q->lock);
	}
	free(r->own);
	r->t = NULL;
	r->slot = NULL;
	r->own = NULL;
}

/* ---- L2 entries ---- */

enum seg_kind { SEG_UNALLOC, SEG_ZERO, SEG_NORMAL, SEG_COMPRESSED };

struct seg {
	enum seg_kind kind;
	uint64_t len;  /* bytes from pos to the end of the run inside this cluster */
	uint64_t host; /* SEG_NORMAL: file offset of pos */
	uint64_t l2e;  /* SEG_COMPRESSED: the descriptor */
};

static int data_past_eof(struct image *img, struct qcow2 *q, uint64_t host, uint64_t guest)
{
	return sp_err("%s: data cluster at offset 0x%" PRIx64 " (guest offset %" PRIu64
		      ") lies past end of file (%" PRIu64 " bytes)", img->path, host, guest,
		      q->file_size);
}

static int check_compressed(struct image *img, struct qcow2 *q, uint64_t l2e, uint64_t guest)
{
	uint64_t host, len;
	qcow2_compressed_span(l2e, q->cb, &host, &len);
	if (host >> 56)
		return sp_err("%s: compressed cluster descriptor at guest offset %" PRIu64
			      " has reserved bits set", img->path, guest);
	if (host < q->cs)
		return sp_err("%s: compressed cluster at guest offset %" PRIu64
			      " overlaps the header", img->path, guest);
	if (host >= q->file_size)
		return sp_err("%s: compressed cluster at offset 0x%" PRIx64 " (guest offset %" PRIu64
			      ") lies past end of file (%" PRIu64 " bytes)", img->path, host, guest,
			      q->file_size);
	return 0;
}

static int check_host(struct image *img, struct qcow2 *q, uint64_t host, uint64_t guest)
{
	if (host & (q->cs - 1))
		return sp_err("%s: cluster offset 0x%" PRIx64 " (guest offset %" PRIu64
			      ") is not cluster-aligned", img->path, host, guest);
	return 0;
}

/* Subcluster state from an extended L2 bitmap. */
static enum seg_kind sub_kind(uint64_t bitmap, unsigned i)
{
	if (bitmap & (1ull << i))
		return SEG_NORMAL;
	if (bitmap & (1ull << (i + 32)))
		return SEG_ZERO;
	return SEG_UNALLOC;
}

/* The run of one kind containing guest offset pos, within pos's cluster.
 * t is the L2 table covering pos, NULL when unallocated. */
static int seg_at(struct image *img, struct qcow2 *q, const uint64_t *t, uint64_t pos,
		  struct seg *s)
{
	uint64_t cl = pos & ~(q->cs - 1);
	uint64_t cl_end = min64(cl + q->cs, img->size);
	s->len = cl_end - pos;
	s->kind = SEG_UNALLOC;
	if (!t)
		return 0;
	uint64_t idx = (pos >> q->cb) & (q->l2_entries - 1);
	uint64_t e = t[idx * q->ew];
	uint64_t bitmap = q->ew == 2 ? t[idx * 2 + 1] : 0;

	if (e & QCOW2_OFLAG_COMPRESSED) {
		if (bitmap)
			return sp_err("%s: compressed cluster at guest offset %" PRIu64
				      " has subcluster bits set", img->path, cl);
		s->l2e = e & ~(QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED);
		s->kind = SEG_COMPRESSED;
		return check_compressed(img, q, s->l2e, cl);
	}
	uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
	if (host && check_host(img, q, host, cl) < 0)
		return -1;
	uint64_t run_end = cl_end;
	if (q->ew == 1) {
		if (e & QCOW2_OFLAG_ZERO)
			s->kind = SEG_ZERO;
		else if (host)
			s->kind = SEG_NORMAL;
	} else {
		uint32_t alloc = (uint32_t)bitmap, zero = (uint32_t)(bitmap >> 32);
		if (alloc & zero)
			return sp_err("%s: L2 entry at guest offset %" PRIu64
				      " marks subclusters both allocated and zero", img->path, cl);
		if (alloc && !host)
			return sp_err("%s: L2 entry at guest offset %" PRIu64
				      " has allocated subclusters but no cluster", img->path, cl);
		unsigned i = (unsigned)((pos - cl) >> q->sc_bits), j = i + 1;
		s->kind = sub_kind(bitmap, i);
		while (j < QCOW2_SUBCLUSTERS && sub_kind(bitmap, j) == s->kind)
			j++;
		run_end = min64(cl + ((uint64_t)j << q->sc_bits), cl_end);
		s->len = run_end - pos;
	}
	if (s->kind == SEG_NORMAL) {
		/* The file may end inside the last cluster, but not before the
		 * bytes this run reads. */
		if (host > q->file_size || q->file_size - host < run_end - cl)
			return data_past_eof(img, q, host, cl);
		s->host = host + (pos - cl);
	}
	return 0;
}

/* ---- extents ---- */

enum run_kind { RUN_UNALLOC, RUN_ZERO, RUN_DATA };

static enum run_kind run_of(enum seg_kind k)
{
	return k == SEG_UNALLOC ? RUN_UNALLOC : k == SEG_ZERO ? RUN_ZERO : RUN_DATA;
}

/* Walks the kinds from pos inside one L2 range [.., tend) while they equal
 * *k (set from the first segment when *first); returns the end reached. */
static int walk_range(struct image *img, struct qcow2 *q, const uint64_t *t, uint64_t pos,
		      uint64_t tend, bool first, enum run_kind *k, uint64_t *reached)
{
	struct seg s;
	while (pos < tend) {
		if (seg_at(img, q, t, pos, &s) < 0)
			return -1;
		if (first)
			*k = run_of(s.kind), first = false;
		else if (run_of(s.kind) != *k)
			break;
		pos += t ? s.len : tend - pos;
	}
	*reached = pos;
	return 0;
}

/* One extent call looks at no more than this many L2 ranges (with 512-byte
 * clusters a range is only 32 KiB, so stopping at each would be slow). */
#define EXTENT_MAX_TABLES 256

static int q_extent(struct image *img, uint64_t off, struct extent *ext)
{
	struct qcow2 *q = img->priv;
	if (off >= img->size)
		return sp_err("%s: extent asked at offset %" PRIu64 " past the virtual size", img->path,
			      off);
	enum run_kind k = RUN_UNALLOC;
	uint64_t pos = off;
	/* Unallocated L1 entries cost nothing to skip and do not count. */
	for (unsigned tables = 0; pos < img->size && tables < EXTENT_MAX_TABLES;) {
		uint64_t l1i = pos / q->l2_cov;
		uint64_t tend = min64((l1i + 1) * q->l2_cov, img->size);
		struct l2_ref r;
		if (l2_get(img, q, l1i, &r) < 0)
			return -1;
		tables += r.t != NULL;
		int rc = walk_range(img, q, r.t, pos, tend, pos == off, &k, &pos);
		l2_put(q, &r);
		if (rc < 0)
			return -1;
		if (pos < tend)
			break; /* the kind changed */
	}
	ext->offset = off;
	ext->length = pos - off;
	ext->kind = k == RUN_DATA ? EXTENT_DATA : k == RUN_ZERO ? EXTENT_ZERO : EXTENT_HOLE;
	if (k != RUN_UNALLOC || !q->backing || off >= q->backing->size)
		return 0;
	/* Unallocated here: what the backing image holds shows through. */
	struct extent be;
	if (image_extent(q->backing, off, &be) < 0)
		return -1;
	ext->length = min64(ext->length, min64(be.length, q->backing->size - off));
	ext->kind = be.kind == EXTENT_DATA ? EXTENT_DATA : EXTENT_HOLE;
	return 0;
}

/* ---- reading ---- */

/* Per-call buffers for compressed clusters, made on first use. */
struct scratch {
	unsigned char *in, *out;
	struct qcow2_decoder *dec;
};

static int q_read(struct image *img, void *buf, size_t len, uint64_t off);

static int read_backing(struct qcow2 *q, unsigned char *p, uint64_t n, uint64_t off)
{
	struct image *b = q->backing;
	uint64_t have = (b && off < b->size) ? min64(n, b->size - off) : 0;
	if (have) {
		if (b->ops == &qcow2_ops) { /* counts into q->stat itself */
			if (q_read(b, p, (size_t)have, off) < 0)
				return -1;
		} else {
			if (image_pread(b, p, (size_t)have, off) < 0)
				return -1;
			count_read(q, have);
		}
	}
	memset(p + have, 0, (size_t)(n - have));
	return 0;
}

static void scratch_free(struct qcow2 *q, struct scratch *sc)
{
	free(sc->in);
	free(sc->out);
	if (sc->dec) {
		pthread_mutex_lock(&q->lock);
		if (q->ndecoders < DECODER_POOL) {
			q->decoders[q->ndecoders++] = sc->dec;
			sc->dec = NULL;
		}
		pthread_mutex_unlock(&q->lock);
		qcow2_decoder_free(sc->dec);
	}
}

/* n bytes at offset `in` inside the compressed cluster at guest offset cl. */
static int read_compressed(struct image *img, struct qcow2 *q, struct scratch *sc, uint64_t l2e,
			   uint64_t cl, uint64_t in, unsigned char *p, uint64_t n)
{
	pthread_mutex_lock(&q->lock);
	if (q->cc_buf && q->cc_l2e == l2e) {
		memcpy(p, q->cc_buf + in, (size_t)n);
		pthread_mutex_unlock(&q->lock);
		return 0;
	}
	if (!sc->dec && q->ndecoders)
		sc->dec = q->decoders[--q->ndecoders];
	pthread_mutex_unlock(&q->lock);

	if (!sc->dec && !(sc->dec = qcow2_decoder_new(q->h.compression_type)))
		return sp_err_prefix(img->path);
	if (!sc->in && !(sc->in = malloc(2 * q->cs)))
		return sp_err("%s: out of memory", img->path);
	if (!sc->out && !(sc->out = malloc(q->cs)))
		return sp_err("%s: out of memory", img->path);
	uint64_t host, clen;
	qcow2_compressed_span(l2e, q->cb, &host, &clen);
	/* The last sector may run past the end of the file. */
	clen = min64(clen, q->file_size - host);
	if (full_pread(img->fd, sc->in, (size_t)clen, host, img->path) < 0)
		return -1;
	count_read(q, clen);
	if (qcow2_decompress(sc->dec, sc->in, (size_t)clen, sc->out, (size_t)q->cs, img->path, cl) < 0)
		return -1;
	memcpy(p, sc->out + in, (size_t)n);

	/* Keep it for the next block of the same cluster: swap buffers. */
	pthread_mutex_lock(&q->lock);
	unsigned char *old = q->cc_buf;
	q->cc_buf = sc->out;
	q->cc_l2e = l2e;
	sc->out = old;
	pthread_mutex_unlock(&q->lock);
	return 0;
}

/* Reads [off, tend) inside one L2 range whose table is t. */
static int read_range(struct image *img, struct qcow2 *q, const uint64_t *t, struct scratch *sc,
		      unsigned char *p, uint64_t off, uint64_t tend)
{
	if (!t)
		return read_backing(q, p, tend - off, off);
	while (off < tend) {
		struct seg s, nx;
		if (seg_at(img, q, t, off, &s) < 0)
			return -1;
		uint64_t n = min64(s.len, tend - off);
		if (s.kind == SEG_COMPRESSED) {
			uint64_t cl = off & ~(q->cs - 1);
			if (read_compressed(img, q, sc, s.l2e, cl, off - cl, p, n) < 0)
				return -1;
			p += n;
			off += n;
			continue;
		}
		/* Extend over following runs of the same kind (and, for data,
		 * the next bytes of the file) so each run costs one call. */
		while (off + n < tend) {
			if (seg_at(img, q, t, off + n, &nx) < 0)
				return -1;
			if (nx.kind != s.kind || (s.kind == SEG_NORMAL && nx.host != s.host + n))
				break;
			n += min64(nx.len, tend - off - n);
		}
		switch (s.kind) {
		case SEG_NORMAL:
			if (full_pread(img->fd, p, (size_t)n, s.host, img->path) < 0)
				return -1;
			count_read(q, n);
			break;
		case SEG_ZERO:
			memset(p, 0, (size_t)n);
			break;
		default:
			if (read_backing(q, p, n, off) < 0)
				return -1;
			break;
		}
		p += n;
		off += n;
	}
	return 0;
}

static int q_read(struct image *img, void *buf, size_t len, uint64_t off)
{
	struct qcow2 *q = img->priv;
	if (off > img->size || len > img->size - off)
		return sp_err("%s: read of %zu bytes at offset %" PRIu64 " past the virtual size",
			      img->path, len, off);
	unsigned char *p = buf;
	uint64_t end = off + len;
	struct scratch sc = { NULL, NULL, NULL };
	int rc = 0;
	while (rc == 0 && off < end) {
		uint64_t l1i = off / q->l2_cov;
		uint64_t tend = min64((l1i + 1) * q->l2_cov, end);
		struct l2_ref r;
		if ((rc = l2_get(img, q, l1i, &r)) < 0)
			break;
		rc = read_range(img, q, r.t, &sc, p, off, tend);
		l2_put(q, &r);
		p += tend - off;
		off = tend;
	}
	scratch_free(q, &sc);
	return rc;
}

static int q_pread(struct image *img, void *buf, size_t len, uint64_t off)
{
	return q_read(img, buf, len, off);
}

/* ---- the rest of the interface ---- */

static int q_readonly(struct image *img)
{
	return sp_err("%s: image is open read-only", img->path);
}
static int q_pwrite(struct image *img, const void *buf, size_t len, uint64_t off)
{
	(void)buf, (void)len, (void)off;
	return q_readonly(img);
}
static int q_zero(struct image *img, uint64_t off, uint64_t len)
{
	(void)off, (void)len;
	return q_readonly(img);
}
static int q_resize(struct image *img, uint64_t size)
{
	(void)size;
	return q_readonly(img);
}
static int q_flush(struct image *img)
{
	(void)img;
	return 0;
}

static void q_free(struct qcow2 *q)
{
	if (!q)
		return;
	image_close(q->backing);
	for (unsigned i = 0; i < L2_SLOTS; i++)
		free(q->slots[i].table);
	for (unsigned i = 0; i < q->ndecoders; i++)
		qcow2_decoder_free(q->decoders[i]);
	free(q->cc_buf);
	free(q->l1);
	qcow2_header_free(&q->h);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

static int q_close(struct image *img)
{
	q_free(img->priv);
	close(img->fd);
	image_free(img);
	return 0;
}

static int q_dirty_bitmap(struct image *img, const char *name, struct change_map *out)
{
	struct qcow2 *q = img->priv;
	return qcow2_bitmap_load(img->fd, img->path, &q->h, q->file_size, name, out);
}

static int q_bitmap_trackable(struct image *img)
{
	return qcow2_bitmap_trackable(img->fd, img->path);
}

/* Through a second descriptor, read-write: ours, read-only, holds the
 * image's locks, so no VM can have opened it meanwhile. */
static int q_bitmap_rotate(struct image *img, const char *old_name, const char *new_name)
{
	int fd = open(img->path, O_RDWR | O_CLOEXEC);
	struct stat a, b;
	if (fd < 0)
		return sp_err("%s: cannot open it to update its bitmap: %s", img->path, strerror(errno));
	int rc = 0;
	if (fstat(fd, &a) < 0 || fstat(img->fd, &b) < 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
		rc = sp_err("%s: was replaced during the copy; its bitmap is left alone", img->path);
	if (rc == 0)
		rc = qcow2_bitmap_rotate(fd, img->path, old_name, new_name);
	close(fd);
	return rc;
}

static const struct image_ops qcow2_ops = {
	.name = "qcow2",
	.extent = q_extent,
	.pread = q_pread,
	.pwrite = q_pwrite,
	.zero = q_zero,
	.resize = q_resize,
	.flush = q_flush,
	.close = q_close,
	.dirty_bitmap = q_dirty_bitmap,
	.bitmap_trackable = q_bitmap_trackable,
	.bitmap_rotate = q_bitmap_rotate,
};

/* Backing images count what they read into the top image's bytes_read. */
static void point_stats(struct image *img, uint64_t *stat)
{
	while (img && img->ops == &qcow2_ops) {
		struct qcow2 *q = img->priv;
		q->stat = stat;
		img = q->backing;
	}
}

struct image *qcow2_open_in_chain(const char *path, int fd, const struct qcow2_chain *above,
				   bool force_share)
{
	struct image *img = NULL;
	struct qcow2 *q = calloc(1, sizeof *q);
	struct stat st;
	if (!q) {
		sp_err("%s: out of memory", path);
		goto fail;
	}
	pthread_mutex_init(&q->lock, NULL);
	if (fstat(fd, &st) < 0) {
		sp_err_errno(path);
		goto fail;
	}
	if (qcow2_read_header(fd, path, &q->h) < 0 || qcow2_file_size(fd, path, &q->file_size) < 0)
		goto fail;
	if (qcow2_load_l1(fd, path, &q->h, q->file_size, &q->l1) < 0)
		goto fail;
	q->cb = q->h.cluster_bits;
	q->cs = 1ull << q->cb;
	q->ew = q->h.extended_l2 ? 2 : 1;
	q->l2_entries = q->cs / (8 * q->ew);
	q->l2_cov = qcow2_l2_coverage(q->cb, q->h.extended_l2);
	q->sc_bits = q->h.extended_l2 ? q->cb - 5 : q->cb;

	if (!(img = image_alloc(&qcow2_ops, path, fd, FMT_QCOW2)))
		goto fail;
	img->priv = q;
	img->size = q->h.size;
	img->granularity = (uint32_t)q->cs;
	img->writable = false;
	q->stat = &img->bytes_read;

	if (q->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT)
		sp_warn("%s: image is marked corrupt; reading it anyway", path);
	else if (q->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)
		sp_warn("%s: image is marked dirty (not closed cleanly); reading it anyway", path);

	if (q->h.backing_file) {
		struct qcow2_chain self = {
			.above = above,
			.depth = above ? above->depth + 1 : 0,
			.dev = (uint64_t)st.st_dev,
			.ino = (uint64_t)st.st_ino,
			.path = path,
			.force_share = force_share,
		};
		if (!(q->backing = qcow2_open_backing(&q->h, &self)))
			goto fail;
		point_stats(q->backing, &img->bytes_read);
	}
	return img;
fail:
	q_free(q);
	if (img)
		image_free(img);
	close(fd);
	return NULL;
}

struct image *qcow2_open(const char *path, int fd, bool writable, bool force_share)
{
	if (writable)
		return qcow2_open_rw(path, fd);
	return qcow2_open_in_chain(path, fd, NULL, force_share);
}

/* Private state of the qcow2 writer, shared by qcow2_write.c (create, data
 * path, compression) and qcow2_meta.c (refcounts, flush, opening an
 * existing image for in-place update). Nothing outside formats/ sees this.
 *
 * The model: every table lives in memory while the image is open (L1, the
 * L2 tables of the L1 slots that were touched, one refcount per host
 * cluster). Data goes to the file as it arrives; tables and the header are
 * written by flush, data first, tables next, header last, then fsync. */
#ifndef SPARSYNC_QCOW2_WRITER_H
#define SPARSYNC_QCOW2_WRITER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "qcow2.h"

struct q2_codec_pool; /* compression contexts, one per concurrent user */

struct q2w {
	pthread_mutex_t lock;         /* tables, refcounts, allocation */
	struct image *img;            /* path, fd, size (virtual) */
	uint32_t cluster_bits;
	uint64_t cs;                  /* cluster size */
	uint32_t l2_bits;             /* log2(entries per L2 table) */
	uint32_t version;             /* 2 or 3 */
	uint32_t refcount_order;
	uint32_t header_length;
	bool fresh;                   /* created by us under a temporary name */
	bool has_backing;
	char *backing_name;           /* as stored in the header */
	char *backing_path;           /* resolved for opening (COW reads) */
	enum image_format backing_fmt;
	struct image *backing;        /* opened on first need */
	enum cluster_codec codec;     /* compressed clusters (fresh images) */
	struct q2_codec_pool *pool;

	/* Guest -> host mapping. Entries host-endian, flags included. */
	uint64_t l1_size;             /* entries in use (covers img->size) */
	uint64_t l1_offset;           /* 0: not written yet */
	uint64_t l1_clusters;         /* clusters owned at l1_offset */
	uint64_t l1_cap;              /* entries allocated in l1/l2/l2_dirty */
	uint64_t *l1;
	uint64_t **l2;                /* per L1 slot; NULL: no table */
	uint8_t *l2_dirty;
	bool l1_dirty;

	/* Host clusters. */
	uint16_t *rc;                 /* refcount per host cluster */
	uint64_t rc_cap;
	uint64_t end;                 /* clusters: past the last one in use */
	uint64_t free_hint;           /* no free cluster below this */
	uint8_t *pending;             /* in-place: freed since the last flush (bitmap) */
	bool any_pending;
	uint64_t rc_max;              /* largest refcount the format can hold */
	uint64_t rt_offset;           /* refcount table */
	uint64_t rt_clusters;
	uint64_t *rt;                 /* rt_clusters * cs / 8 entries */
	uint8_t *rb_dirty;            /* per refcount block (rt index) */
	bool rt_dirty;

	/* Compressed data is packed back to back in clusters [.., cend). */
	uint64_t cpos, cend;          /* bytes; cend == 0: no open run */

	bool dirty;                   /* something to write at flush */
	bool header_dirty;
	bool marked_dirty;            /* in-place: the on-disk dirty bit is set */
	bool synced;                  /* nothing written since the last fsync */
	uint64_t incompat, autoclear; /* in-place: the header's feature bits */
};

/* Entry helpers. */
static inline uint64_t q2_l2_entries(const struct q2w *q) { return 1ull << q->l2_bits; }
static inline uint64_t q2_csize_shift(const struct q2w *q) { return 62 - (q->cluster_bits - 8); }

/* Refcount bookkeeping (lock held). */
int q2_rc_grow(struct q2w *q, uint64_t clusters);
int q2_rc_inc(struct q2w *q, uint64_t cluster);
void q2_rc_dec(struct q2w *q, uint64_t cluster);
/* n contiguous free clusters; returns the first cluster index or -1. */
int64_t q2_alloc(struct q2w *q, uint64_t n, bool at_end);
/* Drop one reference a mapping held (plain or compressed entry). */
void q2_release_entry(struct q2w *q, uint64_t entry);

/* Write everything out (qcow2_meta.c). Lock held by caller. */
int q2_flush_locked(struct q2w *q);
void q2_free(struct q2w *q);

/* Make an L2 table exist in memory for slot i (lock held). */
int q2_l2_get(struct q2w *q, uint64_t slot, uint64_t **out);
/* Grow the in-memory L1 arrays to hold n slots. */
int q2_l1_reserve(struct q2w *q, uint64_t n);

/* Shared ops table (qcow2_write.c); qcow2_meta.c builds images with it. */
extern const struct image_ops q2w_ops;

/* Compression helpers (qcow2_write.c). */
int q2_codec_init(struct q2w *q);

/* Big-endian helpers. */
static inline void q2_put_be16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = (unsigned char)v; }
static inline void q2_put_be32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24; p[1] = (unsigned char)(v >> 16); p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}
static inline void q2_put_be64(unsigned char *p, uint64_t v)
{
	q2_put_be32(p, (uint32_t)(v >> 32));
	q2_put_be32(p + 4, (uint32_t)v);
}
static inline uint32_t q2_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t q2_be64(const unsigned char *p)
{
	return (uint64_t)q2_be32(p) << 32 | q2_be32(p + 4);
}

#endif

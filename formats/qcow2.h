/* qcow2 internals shared by the reader (qcow2_read.c) and the writer
 * (qcow2_write.c). Layout facts from QEMU's docs/interop/qcow2.txt.
 * Not a public interface: the rest of sparsync uses formats/image.h. */
#ifndef SPARSYNC_QCOW2_H
#define SPARSYNC_QCOW2_H

#include <stdbool.h>
#include <stdint.h>

#include "image.h"

#define QCOW2_MAGIC 0x514649fbu
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)

/* Header extension types. */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_DATA_FILE 0x44415441u
#define QCOW2_EXT_BITMAPS_ID 0x23852875u
#define QCOW2_AUTOCLEAR_BITMAPS 1ull

/* L1/L2 entry bits. */
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO 1ull
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

#define QCOW2_MAX_BACKING_DEPTH 16

/* The parsed, validated header (all fields host-endian). */
struct qcow2_header {
	uint32_t version;
	uint64_t backing_file_offset;
	uint32_t backing_file_size;
	uint32_t cluster_bits;
	uint64_t size;
	uint32_t crypt_method;
	uint32_t l1_size;
	uint64_t l1_table_offset;
	uint64_t refcount_table_offset;
	uint32_t refcount_table_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t incompatible_features;
	uint64_t compatible_features;
	uint64_t autoclear_features;
	uint32_t refcount_order;
	uint32_t header_length;
	uint8_t compression_type;
	bool extended_l2;
	char *backing_file;               /* NULL when none */
	enum image_format backing_format; /* FMT_AUTO when no extension */
	/* The bitmaps extension as found (checked when a bitmap is asked
	 * for: formats/qcow2_bitmap.c); times_seen 0 when absent. */
	struct {
		uint32_t ext_len, count, reserved, times_seen;
		uint64_t dir_size, dir_offset;
	} bitmaps;
};

/* Persistent dirty bitmaps (formats/qcow2_bitmap.c): the directory, read
 * and checked as strictly as the rest (placement, sizes, overlaps, names),
 * and one bitmap's bits. */
struct qcow2_bitmap {
	char *name;                  /* NUL-terminated copy */
	uint64_t table_offset;
	uint32_t table_size;         /* entries */
	uint32_t flags;              /* QCOW2_BITMAP_* */
	uint8_t type, granularity_bits;
	uint32_t extra_size;
	uint64_t entry_pos;          /* of its directory entry, from the directory's start */
};
#define QCOW2_BITMAP_IN_USE 1u
#define QCOW2_BITMAP_AUTO 2u
#define QCOW2_BITMAP_EXTRA_COMPAT 4u
struct qcow2_bitmap_dir {
	struct qcow2_bitmap *b;
	uint32_t n;
	bool consistent;             /* autoclear bit 0: the bitmaps are current */
};
int qcow2_bitmap_dir_read(int fd, const char *path, const struct qcow2_header *h,
			  uint64_t file_size, struct qcow2_bitmap_dir *out);
void qcow2_bitmap_dir_free(struct qcow2_bitmap_dir *d);
struct change_map;
/* The dirty bits of the bitmap called name, refused (one line saying why)
 * when it is missing (-2), not saved cleanly (in use), not a dirty tracking
 * bitmap, or the image's bitmaps are stale (-1). */
int qcow2_bitmap_load(int fd, const char *path, const struct qcow2_header *h, uint64_t file_size,
		      const char *name, struct change_map *out);

/* --track's own bitmaps (formats/qcow2_bitmap_write.c), on an fd open
 * read-write while the caller holds the image's locks through another.
 * qcow2_bitmap_trackable: whether the image can keep one (version 3, not
 * dirty or corrupt, its bitmaps current); 0 or -1 with the reason.
 * qcow2_bitmap_rotate: a new, empty, enabled (auto) bitmap new_name,
 * and bitmap old_name (if given and there) removed, in one switch of the
 * header (table and directory in new clusters at the end of the file,
 * refcounts, the header, then the old clusters freed: a crash leaves the
 * old state or the new, at most with leaked clusters). */
int qcow2_bitmap_trackable(int fd, const char *path);
int qcow2_bitmap_rotate(int fd, const char *path, const char *old_name, const char *new_name);

/* Read and validate the header and its extensions from fd. Every problem
 * -> -1 with "PATH: what is wrong". On success free with qcow2_header_free. */
int qcow2_read_header(int fd, const char *path, struct qcow2_header *h);
void qcow2_header_free(struct qcow2_header *h);

/* Opening an existing qcow2 read-write (in-place sync) lives in the writer;
 * qcow2_open() calls it when asked for a writable image. Owns fd. */
struct image *qcow2_open_rw(const char *path, int fd);

/* ---- Helpers shared by reader and writer (formats/qcow2_header.c,
 * formats/qcow2_tables.c, formats/qcow2_inflate.c). ---- */

/* QEMU's implementation limits, which sparsync also enforces on open. */
#define QCOW2_MAX_L1_BYTES (32ull << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8ull << 20)
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_SUBCLUSTERS 32 /* per cluster with extended L2 entries */

/* Guest bytes one L2 table maps: cluster_size * (entries per table). */
static inline uint64_t qcow2_l2_coverage(uint32_t cluster_bits, bool extended_l2)
{
	return 1ull << (2 * cluster_bits - (extended_l2 ? 4 : 3));
}

/* L1 entries needed to map a virtual disk of `size` bytes. */
static inline uint64_t qcow2_l1_needed(uint64_t size, uint32_t cluster_bits, bool extended_l2)
{
	uint64_t cov = qcow2_l2_coverage(cluster_bits, extended_l2);
	return size / cov + (size % cov != 0);
}

/* A compressed cluster descriptor (L2 entry with QCOW2_OFLAG_COMPRESSED):
 * host byte offset of the compressed data and the number of bytes from there
 * to the end of its last 512-byte sector. */
static inline void qcow2_compressed_span(uint64_t l2e, uint32_t cluster_bits, uint64_t *host,
					 uint64_t *len)
{
	unsigned x = 62 - (cluster_bits - 8);
	uint64_t sectors = ((l2e >> x) & ((1ull << (cluster_bits - 8)) - 1)) + 1;
	*host = l2e & ((1ull << x) - 1);
	*len = sectors * 512 - (*host & 511);
}

/* Size of the image file (fstat), 0 with an error set on failure. */
int qcow2_file_size(int fd, const char *path, uint64_t *size);

/* Read the active L1 table: h->l1_size entries converted to host order,
 * every used entry checked (cluster-aligned, L2 table inside the file).
 * Entries past qcow2_l1_needed() are returned but not checked. Free with
 * free(). */
int qcow2_load_l1(int fd, const char *path, const struct qcow2_header *h, uint64_t file_size,
		  uint64_t **l1_out);

/* Read one L2 table (one cluster at `offset`) into `table` (cluster_size
 * bytes), converted to host order; checks alignment and end of file. */
int qcow2_load_l2(int fd, const char *path, uint64_t offset, uint32_t cluster_bits,
		  uint64_t file_size, uint64_t *table);

/* Decompressing one compressed cluster. A decoder holds reusable state
 * (one per thread at a time); compression_type is QCOW2_COMPRESSION_*. */
struct qcow2_decoder;
struct qcow2_decoder *qcow2_decoder_new(uint8_t compression_type);
void qcow2_decoder_free(struct qcow2_decoder *d);
/* Inflate `in` until exactly out_len bytes are produced (trailing padding in
 * `in` is ignored); a short or broken stream is an error naming path and the
 * guest offset of the cluster. */
int qcow2_decompress(struct qcow2_decoder *d, const void *in, size_t in_len, void *out,
		     size_t out_len, const char *path, uint64_t guest_off);

/* Reading a backing chain (formats/qcow2_backing.c). Each image being
 * opened links a node to the one above it, on the stack, so a loop (the
 * same device and inode twice) or a chain deeper than
 * QCOW2_MAX_BACKING_DEPTH is refused at open. */
struct qcow2_chain {
	const struct qcow2_chain *above; /* the overlay, NULL for the named image */
	unsigned depth;                  /* 0 for the image the user named */
	uint64_t dev, ino;
	const char *path;
	bool force_share;                /* -U: take no image locks (image_lock.h) */
};
/* Read-only qcow2 open as part of a chain (above = NULL at the top). Owns fd. */
struct image *qcow2_open_in_chain(const char *path, int fd, const struct qcow2_chain *above,
				  bool force_share);
/* Open the backing image that h names, relative to the overlay's directory,
 * in the format the header extension gives (detected when absent). */
struct image *qcow2_open_backing(const struct qcow2_header *h, const struct qcow2_chain *self);

/* ---- Writer (formats/qcow2_write.c, qcow2_meta.c, qcow2_update.c) ---- */

/* How an existing image is laid out, so that a rewrite (shrink) can keep
 * it: cluster size, compression (CODEC_NONE unless some cluster is stored
 * compressed), backing file as stored in the header (NULL when none). */
struct qcow2_layout {
	uint32_t cluster_size;
	enum cluster_codec compress;
	char *backing;
	enum image_format backing_format;
	/* What a rewrite would lose (static text: "it has internal
	 * snapshots", ...), or NULL. */
	const char *unkept;
};
int qcow2_layout_of(const char *path, struct qcow2_layout *out);
void qcow2_layout_free(struct qcow2_layout *l);

#endif

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
};

/* Read and validate the header and its extensions from fd. Every problem
 * -> -1 with "PATH: what is wrong". On success free with qcow2_header_free. */
int qcow2_read_header(int fd, const char *path, struct qcow2_header *h);
void qcow2_header_free(struct qcow2_header *h);

/* Opening an existing qcow2 read-write (in-place sync) lives in the writer;
 * qcow2_open() calls it when asked for a writable image. Owns fd. */
struct image *qcow2_open_rw(const char *path, int fd);

#endif

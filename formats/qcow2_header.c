/* qcow2 header: parse and validate the header, its extensions and the
 * placement of the L1 and refcount tables. Every problem is one line
 * "PATH: what is wrong". Layout from QEMU's docs/interop/qcow2.txt. */
#include "qcow2.h"

#include "../core/error.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define V2_HEADER_LEN 72u
#define V3_HEADER_LEN 104u
#define FEATURE_ENTRY_LEN 48u
#define FEATURE_NAME_LEN 46u
#define MAX_BACKING_FMT_LEN 15u

#define KNOWN_INCOMPAT                                                                  \
	(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DATA_FILE |     \
	 QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2)

static uint32_t be32_at(const unsigned char *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof v);
	return be32toh(v);
}

static uint64_t be64_at(const unsigned char *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof v);
	return be64toh(v);
}

int qcow2_file_size(int fd, const char *path, uint64_t *size)
{
	struct stat st;
	*size = 0;
	if (fstat(fd, &st) < 0)
		return sp_err("%s: %s", path, strerror(errno));
	*size = st.st_size > 0 ? (uint64_t)st.st_size : 0;
	if (S_ISBLK(st.st_mode)) { /* qcow2 on a device (an LV): its size */
		off_t end = lseek(fd, 0, SEEK_END);
		*size = end > 0 ? (uint64_t)end : 0;
	}
	return 0;
}

/* Does [off, off + len) lie inside a file of file_size bytes? No overflow. */
static bool inside(uint64_t off, uint64_t len, uint64_t file_size)
{
	return off <= file_size && len <= file_size - off;
}

/* Names of unknown incompatible bits, from the feature name table when the
 * image has one ("bit 5 (foo), bit 9"). */
static void name_bits(uint64_t bits, const unsigned char *table, uint32_t table_len, char *out,
		      size_t out_len)
{
	size_t used = 0;
	out[0] = '\0';
	for (unsigned b = 0; b < 64; b++) {
		if (!(bits & (1ull << b)))
			continue;
		char name[FEATURE_NAME_LEN + 1] = "";
		for (uint32_t i = 0; table && i + FEATURE_ENTRY_LEN <= table_len; i += FEATURE_ENTRY_LEN) {
			if (table[i] == 0 && table[i + 1] == b) {
				memcpy(name, table + i + 2, FEATURE_NAME_LEN);
				name[FEATURE_NAME_LEN] = '\0';
				for (char *c = name; *c; c++)
					if (*c < 0x20 || *c > 0x7e)
						*c = '?';
			}
		}
		int n = snprintf(out + used, out_len - used, "%sbit %u%s%s%s", used ? ", " : "", b,
				 name[0] ? " (" : "", name, name[0] ? ")" : "");
		if (n < 0 || (size_t)n >= out_len - used)
			return;
		used += (size_t)n;
	}
}

/* The fixed fields, checked one by one against the file. */
static int parse_fixed(const unsigned char *b, size_t have, const char *path,
		       struct qcow2_header *h)
{
	if (have < V2_HEADER_LEN)
		return sp_err("%s: file too short for a qcow2 header (%zu bytes)", path, have);
	if (be32_at(b) != QCOW2_MAGIC)
		return sp_err("%s: not a qcow2 image (bad magic)", path);
	h->version = be32_at(b + 4);
	if (h->version != 2 && h->version != 3)
		return sp_err("%s: unsupported qcow2 version %" PRIu32 " (only 2 and 3)", path,
			      h->version);
	h->backing_file_offset = be64_at(b + 8);
	h->backing_file_size = be32_at(b + 16);
	h->cluster_bits = be32_at(b + 20);
	h->size = be64_at(b + 24);
	h->crypt_method = be32_at(b + 32);
	h->l1_size = be32_at(b + 36);
	h->l1_table_offset = be64_at(b + 40);
	h->refcount_table_offset = be64_at(b + 48);
	h->refcount_table_clusters = be32_at(b + 56);
	h->nb_snapshots = be32_at(b + 60);
	h->snapshots_offset = be64_at(b + 64);
	h->refcount_order = 4;
	h->header_length = V2_HEADER_LEN;
	if (h->version == 3) {
		if (have < V3_HEADER_LEN)
			return sp_err("%s: file too short for a qcow2 version 3 header", path);
		h->incompatible_features = be64_at(b + 72);
		h->compatible_features = be64_at(b + 80);
		h->autoclear_features = be64_at(b + 88);
		h->refcount_order = be32_at(b + 96);
		h->header_length = be32_at(b + 100);
	}
	if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
		return sp_err("%s: cluster_bits %" PRIu32 " out of range (%d..%d)", path,
			      h->cluster_bits, QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
	uint64_t cs = 1ull << h->cluster_bits;
	if (h->version == 3) {
		if (h->header_length < V3_HEADER_LEN || h->header_length % 8 != 0 ||
		    h->header_length > cs)
			return sp_err("%s: invalid header_length %" PRIu32, path, h->header_length);
		if (h->refcount_order > 6)
			return sp_err("%s: refcount_order %" PRIu32 " out of range (0..6)", path,
				      h->refcount_order);
	}
	return 0;
}

/* Header extensions from the end of the header to `end`, until type 0. */
static int parse_extensions(const unsigned char *b, uint64_t start, uint64_t end,
			    const char *path, struct qcow2_header *h, const unsigned char **ftable,
			    uint32_t *ftable_len)
{
	uint64_t pos = start;
	bool seen_fmt = false;
	while (pos + 8 <= end) {
		uint32_t type = be32_at(b + pos);
		uint32_t len = be32_at(b + pos + 4);
		pos += 8;
		if (type == QCOW2_EXT_END)
			return 0;
		if (len > end - pos)
			return sp_err("%s: header extension 0x%08" PRIx32 " (%" PRIu32
				      " bytes) runs past the header area", path, type, len);
		const unsigned char *data = b + pos;
		switch (type) {
		case QCOW2_EXT_BACKING_FORMAT: {
			if (seen_fmt)
				return sp_err("%s: backing format extension appears twice", path);
			seen_fmt = true;
			char fmt[MAX_BACKING_FMT_LEN + 1];
			if (len == 0 || len > MAX_BACKING_FMT_LEN)
				return sp_err("%s: backing format name of %" PRIu32 " bytes is invalid",
					      path, len);
			memcpy(fmt, data, len);
			fmt[len] = '\0';
			if (strlen(fmt) != len)
				return sp_err("%s: backing format name contains a NUL byte", path);
			h->backing_format = image_format_parse(fmt);
			if (h->backing_format == FMT_AUTO) {
				for (char *c = fmt; *c; c++)
					if (*c < 0x20 || *c > 0x7e)
						*c = '?';
				return sp_err("%s: backing file format '%s' is not supported (raw or qcow2)",
					      path, fmt);
			}
			break;
		}
		case QCOW2_EXT_FEATURE_TABLE:
			*ftable = data;
			*ftable_len = len;
			break;
		case QCOW2_EXT_BITMAPS_ID:
			/* Recorded; only a bitmap user needs it well-formed. */
			h->bitmaps.times_seen++;
			h->bitmaps.ext_len = len;
			if (len >= 24) {
				h->bitmaps.count = be32_at(data);
				h->bitmaps.reserved = be32_at(data + 4);
				h->bitmaps.dir_size = be64_at(data + 8);
				h->bitmaps.dir_offset = be64_at(data + 16);
			}
			break;
		default: /* bitmaps, encryption pointer, data file name, unknown: ignored */
			break;
		}
		uint64_t padded = ((uint64_t)len + 7) & ~7ull;
		pos += padded < end - pos ? padded : end - pos;
	}
	return 0;
}

static int check_features(const char *path, struct qcow2_header *h, const unsigned char *ftable,
			  uint32_t ftable_len)
{
	uint64_t unknown = h->incompatible_features & ~KNOWN_INCOMPAT;
	if (unknown) {
		char names[512];
		name_bits(unknown, ftable, ftable_len, names, sizeof names);
		return sp_err("%s: unsupported incompatible feature %s", path, names);
	}
	if (h->crypt_method != 0)
		return sp_err("%s: encrypted images are not supported yet (crypt_method %" PRIu32 ")",
			      path, h->crypt_method);
	if (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
		return sp_err("%s: external data files are not supported", path);
	h->extended_l2 = (h->incompatible_features & QCOW2_INCOMPAT_EXTL2) != 0;
	if (h->extended_l2 && h->cluster_bits < 14)
		return sp_err("%s: extended L2 entries need clusters of at least 16 KiB (cluster_bits %"
			      PRIu32 ")", path, h->cluster_bits);
	bool bit = (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) != 0;
	if (bit && h->compression_type == QCOW2_COMPRESSION_ZLIB)
		return sp_err("%s: compression type bit set but compression_type is zlib or absent",
			      path);
	if (!bit && h->compression_type != QCOW2_COMPRESSION_ZLIB)
		return sp_err("%s: compression_type %u without the compression type feature bit",
			      path, h->compression_type);
	if (h->compression_type > QCOW2_COMPRESSION_ZSTD)
		return sp_err("%s: unknown compression_type %u", path, h->compression_type);
	return 0;
}

/* Where the tables lie, against cluster alignment, limits and the file size. */
static int check_layout(const char *path, const struct qcow2_header *h, uint64_t file_size)
{
	uint64_t cs = 1ull << h->cluster_bits;
	if (h->size > (uint64_t)INT64_MAX)
		return sp_err("%s: virtual size %" PRIu64 " is too large", path, h->size);
	uint64_t need = qcow2_l1_needed(h->size, h->cluster_bits, h->extended_l2);
	if ((uint64_t)h->l1_size * 8 > QCOW2_MAX_L1_BYTES)
		return sp_err("%s: L1 table of %" PRIu32 " entries is too large (limit %llu)", path,
			      h->l1_size, QCOW2_MAX_L1_BYTES / 8);
	if (h->l1_size < need)
		return sp_err("%s: L1 table of %" PRIu32 " entries is too small for the virtual size "
			      "(%" PRIu64 " bytes need %" PRIu64 ")", path, h->l1_size, h->size, need);
	if (h->l1_size > 0) {
		if (h->l1_table_offset % cs)
			return sp_err("%s: L1 table offset 0x%" PRIx64 " is not cluster-aligned", path,
				      h->l1_table_offset);
		if (h->l1_table_offset == 0)
			return sp_err("%s: L1 table overlaps the header", path);
		if (!inside(h->l1_table_offset, (uint64_t)h->l1_size * 8, file_size))
			return sp_err("%s: L1 table (offset 0x%" PRIx64 ", %" PRIu32
				      " entries) lies past end of file (%" PRIu64 " bytes)", path,
				      h->l1_table_offset, h->l1_size, file_size);
	}
	if (h->refcount_table_offset % cs)
		return sp_err("%s: refcount table offset 0x%" PRIx64 " is not cluster-aligned", path,
			      h->refcount_table_offset);
	if (h->refcount_table_clusters == 0 || h->refcount_table_offset == 0)
		return sp_err("%s: image has no refcount table", path);
	uint64_t rt_bytes = (uint64_t)h->refcount_table_clusters << h->cluster_bits;
	if (rt_bytes > QCOW2_MAX_REFTABLE_BYTES)
		return sp_err("%s: refcount table of %" PRIu32 " clusters is too large", path,
			      h->refcount_table_clusters);
	if (!inside(h->refcount_table_offset, rt_bytes, file_size))
		return sp_err("%s: refcount table (offset 0x%" PRIx64 ", %" PRIu64
			      " bytes) lies past end of file (%" PRIu64 " bytes)", path,
			      h->refcount_table_offset, rt_bytes, file_size);
	if (h->nb_snapshots && h->snapshots_offset % cs)
		return sp_err("%s: snapshot table offset 0x%" PRIx64 " is not cluster-aligned", path,
			      h->snapshots_offset);
	return 0;
}

static int read_backing_name(const unsigned char *b, uint64_t have, const char *path,
			     struct qcow2_header *h)
{
	if (h->backing_file_offset == 0)
		return 0;
	if (h->backing_file_size == 0 || h->backing_file_size > QCOW2_MAX_BACKING_NAME)
		return sp_err("%s: backing file name of %" PRIu32 " bytes is invalid (1..%d)", path,
			      h->backing_file_size, QCOW2_MAX_BACKING_NAME);
	if (!inside(h->backing_file_offset, h->backing_file_size, have))
		return sp_err("%s: backing file name (offset %" PRIu64 ", %" PRIu32
			      " bytes) lies outside the header cluster", path,
			      h->backing_file_offset, h->backing_file_size);
	if (h->backing_file_offset < h->header_length)
		return sp_err("%s: backing file name overlaps the header", path);
	h->backing_file = malloc(h->backing_file_size + 1);
	if (!h->backing_file)
		return sp_err("%s: out of memory", path);
	memcpy(h->backing_file, b + h->backing_file_offset, h->backing_file_size);
	h->backing_file[h->backing_file_size] = '\0';
	if (strlen(h->backing_file) != h->backing_file_size)
		return sp_err("%s: backing file name contains a NUL byte", path);
	return 0;
}

int qcow2_read_header(int fd, const char *path, struct qcow2_header *h)
{
	memset(h, 0, sizeof *h);
	h->backing_format = FMT_AUTO;
	uint64_t file_size;
	if (qcow2_file_size(fd, path, &file_size) < 0)
		return -1;

	unsigned char fixed[V3_HEADER_LEN];
	size_t have = file_size < sizeof fixed ? (size_t)file_size : sizeof fixed;
	if (full_pread(fd, fixed, have, 0, path) < 0)
		return -1;
	if (parse_fixed(fixed, have, path, h) < 0)
		return -1;

	/* The whole first cluster: extensions and the backing file name. */
	uint64_t cs = 1ull << h->cluster_bits;
	uint64_t first = file_size < cs ? file_size : cs;
	unsigned char *b = malloc(first);
	if (!b)
		return sp_err("%s: out of memory", path);
	const unsigned char *ftable = NULL;
	uint32_t ftable_len = 0;
	int rc = full_pread(fd, b, first, 0, path);
	if (rc == 0 && h->version == 3 && h->header_length > V3_HEADER_LEN) {
		if (h->header_length > first)
			rc = sp_err("%s: header runs past end of file", path);
		else
			h->compression_type = b[V3_HEADER_LEN];
	}
	if (rc == 0 && h->backing_file_offset > cs)
		rc = sp_err("%s: backing file name offset %" PRIu64 " lies outside the header cluster",
			    path, h->backing_file_offset);
	if (rc == 0) {
		uint64_t end = h->backing_file_offset ? h->backing_file_offset : first;
		if (end > first)
			end = first;
		if (end >= h->header_length)
			rc = parse_extensions(b, h->header_length, end, path, h, &ftable, &ftable_len);
	}
	if (rc == 0)
		rc = check_features(path, h, ftable, ftable_len);
	if (rc == 0)
		rc = read_backing_name(b, first, path, h);
	if (rc == 0)
		rc = check_layout(path, h, file_size);
	free(b);
	if (rc < 0)
		qcow2_header_free(h);
	return rc;
}

void qcow2_header_free(struct qcow2_header *h)
{
	free(h->backing_file);
	h->backing_file = NULL;
}

/* qcow2 persistent dirty bitmaps: the directory (header extension
 * 0x23852875) and a bitmap's table and data, read as strictly as the rest
 * of the qcow2 reader. Everything is checked before any of it is believed:
 * a wrong dirty bitmap is an incremental backup that silently misses data.
 *
 * Directory entry (big-endian): u64 table offset, u32 table size, u32
 * flags (in_use, auto, extra_data_compatible), u8 type (1: dirty
 * tracking), u8 granularity bits, u16 name size, u32 extra data size, the
 * extra data, the name, zero padding to 8 bytes. Table entry: host offset
 * in bits 9-55 (cluster aligned) or 0, then bit 0 says the cluster reads
 * as all zeros or all ones. */
#include "qcow2.h"

#include "change_map.h"
#include "image.h"

#include "../core/error.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define ENTRY_HEAD 24
#define MAX_BITMAPS 65535
#define MAX_NAME 1023
#define MAX_DIR_BYTES (64u << 20)
#define MAX_EXTRA (64u << 10)
#define MAX_TABLE_ENTRIES 0x8000000u /* QEMU's limit: 1 GiB of table */
#define TABLE_OFFSET_MASK 0x00fffffffffffe00ull
#define TABLE_RESERVED 0xff000000000001feull

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }
static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

void qcow2_bitmap_dir_free(struct qcow2_bitmap_dir *d)
{
	for (uint32_t i = 0; i < d->n; i++)
		free(d->b[i].name);
	free(d->b);
	memset(d, 0, sizeof *d);
}

/* Entries the bitmap table of a bitmap of this granularity must have. */
static uint64_t table_entries(const struct qcow2_header *h, unsigned gbits)
{
	uint64_t bits = (h->size >> gbits) + ((h->size & ((1ull << gbits) - 1)) != 0);
	uint64_t bytes = bits / 8 + (bits % 8 != 0);
	uint64_t cs = 1ull << h->cluster_bits;
	return bytes / cs + (bytes % cs != 0);
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

static int parse_entry(const uint8_t *p, uint64_t left, const char *path,
		       const struct qcow2_header *h, uint64_t file_size, struct qcow2_bitmap *b,
		       uint64_t *used)
{
	if (left < ENTRY_HEAD)
		return sp_err("%s: bitmap directory is truncated", path);
	b->table_offset = be64(p);
	b->table_size = be32(p + 8);
	b->flags = be32(p + 12);
	b->type = p[16];
	b->granularity_bits = p[17];
	uint16_t name_size = be16(p + 18);
	b->extra_size = be32(p + 20);
	if (name_size == 0 || name_size > MAX_NAME)
		return sp_err("%s: bitmap name of %u bytes (1 to %u allowed)", path, name_size, MAX_NAME);
	if (b->extra_size > MAX_EXTRA)
		return sp_err("%s: bitmap extra data of %" PRIu32 " bytes", path, b->extra_size);
	uint64_t len = ENTRY_HEAD + (uint64_t)b->extra_size + name_size;
	uint64_t padded = (len + 7) & ~7ull;
	if (padded > left)
		return sp_err("%s: bitmap directory entry runs past the directory", path);
	for (uint64_t i = len; i < padded; i++)
		if (p[i])
			return sp_err("%s: bitmap directory entry padding is not zero", path);
	const uint8_t *name = p + ENTRY_HEAD + b->extra_size;
	if (memchr(name, 0, name_size))
		return sp_err("%s: bitmap name contains a NUL byte", path);
	if (!(b->name = malloc(name_size + 1u)))
		return sp_err("%s: out of memory", path);
	memcpy(b->name, name, name_size);
	b->name[name_size] = '\0';
	if (b->flags & ~7u)
		return sp_err("%s: bitmap '%s' has unknown flags 0x%" PRIx32, path, b->name, b->flags);
	if (b->granularity_bits < 9 || b->granularity_bits > 31)
		return sp_err("%s: bitmap '%s' has granularity 2^%u (2^9 to 2^31 allowed)", path,
			      b->name, b->granularity_bits);
	uint64_t cs = 1ull << h->cluster_bits;
	if (b->table_size == 0 || b->table_size > MAX_TABLE_ENTRIES ||
	    b->table_size != table_entries(h, b->granularity_bits))
		return sp_err("%s: bitmap '%s' has a table of %" PRIu32 " entries, its size and "
			      "granularity need %" PRIu64, path, b->name, b->table_size,
			      table_entries(h, b->granularity_bits));
	uint64_t tbytes = (uint64_t)b->table_size * 8;
	if (b->table_offset % cs || b->table_offset < cs || b->table_offset > file_size ||
	    tbytes > file_size - b->table_offset)
		return sp_err("%s: bitmap '%s' has its table outside the file", path, b->name);
	*used = padded;
	return 0;
}

int qcow2_bitmap_dir_read(int fd, const char *path, const struct qcow2_header *h,
			  uint64_t file_size, struct qcow2_bitmap_dir *out)
{
	memset(out, 0, sizeof *out);
	if (!h->bitmaps.times_seen)
		return 0;
	uint64_t cs = 1ull << h->cluster_bits;
	const uint64_t off = h->bitmaps.dir_offset, size = h->bitmaps.dir_size;
	if (h->bitmaps.times_seen > 1)
		return sp_err("%s: the bitmaps extension appears twice", path);
	if (h->bitmaps.ext_len != 24 || h->bitmaps.reserved != 0)
		return sp_err("%s: malformed bitmaps extension", path);
	if (h->bitmaps.count == 0 || h->bitmaps.count > MAX_BITMAPS)
		return sp_err("%s: bitmaps extension claims %" PRIu32 " bitmaps", path,
			      h->bitmaps.count);
	if (size < ENTRY_HEAD || size > MAX_DIR_BYTES ||
	    size < (uint64_t)h->bitmaps.count * ENTRY_HEAD)
		return sp_err("%s: bitmap directory of %" PRIu64 " bytes for %" PRIu32 " bitmaps", path,
			      size, h->bitmaps.count);
	if (off % cs || off < cs || off > file_size || size > file_size - off)
		return sp_err("%s: bitmap directory lies outside the file", path);
	uint8_t *buf = malloc(size);
	out->b = calloc(h->bitmaps.count, sizeof *out->b);
	if (!buf || !out->b) {
		free(buf);
		return sp_err("%s: out of memory", path);
	}
	out->consistent = h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS;
	int rc = full_pread(fd, buf, size, off, path);
	uint64_t pos = 0;
	for (uint32_t i = 0; rc == 0 && i < h->bitmaps.count; i++) {
		uint64_t used = 0;
		out->b[i].entry_pos = pos;
		rc = parse_entry(buf + pos, size - pos, path, h, file_size, &out->b[i], &used);
		out->n = i + 1;
		pos += used;
	}
	if (rc == 0 && pos != size)
		rc = sp_err("%s: bitmap directory holds %" PRIu64 " bytes more than its %" PRIu32
			    " entries", path, size - pos, h->bitmaps.count);
	/* Names unique; tables apart from each other and from the directory. */
	for (uint32_t i = 0; rc == 0 && i < out->n; i++) {
		const struct qcow2_bitmap *a = &out->b[i];
		uint64_t alen = (uint64_t)a->table_size * 8;
		if (overlaps(a->table_offset, alen, off, size))
			rc = sp_err("%s: bitmap '%s' has its table inside the bitmap directory", path,
				    a->name);
		for (uint32_t j = i + 1; rc == 0 && j < out->n; j++) {
			const struct qcow2_bitmap *b = &out->b[j];
			if (strcmp(a->name, b->name) == 0)
				rc = sp_err("%s: two bitmaps are called '%s'", path, a->name);
			else if (overlaps(a->table_offset, alen, b->table_offset,
					  (uint64_t)b->table_size * 8))
				rc = sp_err("%s: the tables of bitmaps '%s' and '%s' overlap", path,
					    a->name, b->name);
		}
	}
	free(buf);
	if (rc < 0)
		qcow2_bitmap_dir_free(out);
	return rc;
}

/* Fill m's bits from b's table. */
static int load_bits(int fd, const char *path, const struct qcow2_header *h, uint64_t file_size,
		     const struct qcow2_bitmap *b, uint64_t dir_off, uint64_t dir_size,
		     struct change_map *m)
{
	uint64_t cs = 1ull << h->cluster_bits;
	uint64_t bytes = m->nbits / 8 + (m->nbits % 8 != 0);
	uint64_t *table = malloc((size_t)b->table_size * 8);
	uint8_t *cluster = malloc(cs);
	m->bits = calloc(1, bytes ? bytes : 1);
	int rc = table && cluster && m->bits ? 0 : sp_err("%s: out of memory", path);
	if (rc == 0)
		rc = full_pread(fd, table, (size_t)b->table_size * 8, b->table_offset, path);
	uint64_t tlen = (uint64_t)b->table_size * 8;
	for (uint32_t i = 0; rc == 0 && i < b->table_size; i++) {
		uint64_t e = be64((const uint8_t *)&table[i]);
		uint64_t host = e & TABLE_OFFSET_MASK, at = (uint64_t)i * cs;
		uint64_t n = bytes - at < cs ? bytes - at : cs;
		if (e & TABLE_RESERVED || (host && (e & 1)))
			rc = sp_err("%s: bitmap '%s' has a malformed table entry %" PRIu32, path, b->name, i);
		else if (host && (host > file_size || cs > file_size - host))
			rc = sp_err("%s: bitmap '%s' has data outside the file", path, b->name);
		else if (host && (overlaps(host, cs, b->table_offset, tlen) ||
				  overlaps(host, cs, dir_off, dir_size) || host < cs))
			rc = sp_err("%s: bitmap '%s' has data over its own metadata", path, b->name);
		else if (host)
			rc = full_pread(fd, m->bits + at, (size_t)n, host, path);
		else if (e & 1)
			memset(m->bits + at, 0xff, (size_t)n);
	}
	/* Bits past the image's end mean nothing. */
	if (rc == 0 && m->nbits % 8)
		m->bits[bytes - 1] &= (uint8_t)((1u << (m->nbits % 8)) - 1);
	free(table);
	free(cluster);
	if (rc < 0)
		change_map_free(m);
	return rc;
}

int qcow2_bitmap_load(int fd, const char *path, const struct qcow2_header *h, uint64_t file_size,
		      const char *name, struct change_map *out)
{
	memset(out, 0, sizeof *out);
	struct qcow2_bitmap_dir d;
	if (qcow2_bitmap_dir_read(fd, path, h, file_size, &d) < 0)
		return -1;
	const struct qcow2_bitmap *b = NULL;
	for (uint32_t i = 0; i < d.n; i++)
		if (strcmp(d.b[i].name, name) == 0)
			b = &d.b[i];
	int rc = 0;
	if (!b)
		rc = sp_err("%s: has no persistent bitmap called '%s'", path, name) - 1;
	else if (!d.consistent)
		rc = sp_err("%s: its bitmaps are stale (it was written by a program that does not "
			    "keep them); bitmap '%s' cannot be trusted", path, name);
	else if (b->flags & QCOW2_BITMAP_IN_USE)
		rc = sp_err("%s: bitmap '%s' was not saved cleanly (flagged in use: a QEMU that had "
			    "the image open died?); it cannot be trusted", path, name);
	else if (b->type != 1)
		rc = sp_err("%s: bitmap '%s' is not a dirty tracking bitmap (type %u)", path, name,
			    b->type);
	else if (b->extra_size && !(b->flags & QCOW2_BITMAP_EXTRA_COMPAT))
		rc = sp_err("%s: bitmap '%s' carries extra data this version does not know", path,
			    name);
	if (rc == 0) {
		out->size = h->size;
		out->enabled = b->flags & QCOW2_BITMAP_AUTO;
		out->granularity = 1ull << b->granularity_bits;
		out->nbits = (h->size >> b->granularity_bits) +
			     ((h->size & (out->granularity - 1)) != 0);
		rc = load_bits(fd, path, h, file_size, b, h->bitmaps.dir_offset, h->bitmaps.dir_size,
			       out);
		if (rc == 0)
			change_map_count(out);
	}
	qcow2_bitmap_dir_free(&d);
	return rc;
}

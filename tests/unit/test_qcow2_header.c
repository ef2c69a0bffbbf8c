/* qcow2 reader without qemu: a small image is built here byte by byte
 * (512-byte clusters, 32 L2 tables: more than the reader caches), with
 * normal, zero, unallocated and deflate-compressed clusters. Checks
 * qcow2_read_header on it and on patched copies, then reads it with
 * pread/extent from several threads at once against the expected bytes. */
#include "unit.h"

#include "../../core/error.h"
#include "../../formats/qcow2.h"

#include <endian.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define CB 9
#define CS (1u << CB)
#define VSIZE (1u << 20)
#define NCL (VSIZE / CS)      /* 2048 guest clusters */
#define L2N (CS / 8)          /* 64 entries per L2 table */
#define L1N (NCL / L2N)       /* 32 L2 tables */
#define THREADS 8

enum kind { K_NORMAL, K_ZERO, K_UNALLOC, K_COMP };

static unsigned char expect[VSIZE];
static enum kind kinds[NCL];
static char img_path[512];

static void put32(unsigned char *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}
static void put64(unsigned char *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}

static enum kind kind_of(unsigned i)
{
	static const enum kind pat[8] = { K_NORMAL, K_NORMAL, K_NORMAL, K_ZERO,
					  K_UNALLOC, K_COMP, K_COMP, K_NORMAL };
	if (i / L2N == 7)
		return K_UNALLOC; /* one whole L2 range unallocated (L1 entry 0) */
	return pat[(i * 5 + i / 64) % 8];
}

/* Content of guest cluster i: its offset, then a compressible fill. */
static void fill(unsigned i, unsigned char *c)
{
	memset(c, (int)(i * 13 + 1), CS);
	put64(c, (uint64_t)i * CS);
	c[CS - 1] = (unsigned char)i;
}

static size_t deflate_raw(const unsigned char *in, unsigned char *out, size_t cap)
{
	z_stream z;
	memset(&z, 0, sizeof z);
	if (deflateInit2(&z, 6, Z_DEFLATED, -12, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return 0;
	z.next_in = (Bytef *)(uintptr_t)in;
	z.avail_in = CS;
	z.next_out = out;
	z.avail_out = (uInt)cap;
	int r = deflate(&z, Z_FINISH);
	size_t n = cap - z.avail_out;
	deflateEnd(&z);
	return r == Z_STREAM_END ? n : 0;
}

/* Builds the file; returns its size. Layout: header, refcount table, L1,
 * 32 L2 tables, then data (normal clusters aligned, compressed packed). */
static size_t build(unsigned char *f, size_t cap)
{
	memset(f, 0, cap);
	const uint64_t rt = 1 * CS, l1 = 2 * CS, l2 = 3 * CS;
	uint64_t data = (3 + L1N) * CS;
	memcpy(f, "QFI\xfb", 4);
	put32(f + 4, 3);
	put32(f + 20, CB);
	put64(f + 24, VSIZE);
	put32(f + 36, L1N);
	put64(f + 40, l1);
	put64(f + 48, rt);
	put32(f + 56, 1);
	put32(f + 96, 4);
	put32(f + 100, 104);
	for (unsigned t = 0; t < L1N; t++)
		if (t != 7)
			put64(f + l1 + 8 * t, (l2 + t * CS) | QCOW2_OFLAG_COPIED);
	unsigned char c[CS], z[2 * CS];
	uint64_t packed = 0; /* cursor for compressed data; 0 = none open */
	for (unsigned i = 0; i < NCL; i++) {
		enum kind k = kinds[i] = kind_of(i);
		unsigned char *e = f + l2 + (i / L2N) * CS + 8 * (i % L2N);
		fill(i, c);
		size_t zn = k == K_COMP ? deflate_raw(c, z, sizeof z) : 0;
		if (k == K_COMP && (zn == 0 || zn > CS))
			k = kinds[i] = K_NORMAL;
		if (k == K_NORMAL || k == K_COMP)
			memcpy(expect + (uint64_t)i * CS, c, CS);
		else
			memset(expect + (uint64_t)i * CS, 0, CS);
		switch (k) {
		case K_NORMAL:
			if (packed)
				data = (packed + CS - 1) & ~(uint64_t)(CS - 1), packed = 0;
			memcpy(f + data, c, CS);
			put64(e, data | QCOW2_OFLAG_COPIED);
			data += CS;
			break;
		case K_ZERO:
			put64(e, QCOW2_OFLAG_ZERO);
			break;
		case K_COMP: {
			if (!packed)
				packed = data;
			uint64_t extra = ((packed + zn - 1) >> 9) - (packed >> 9);
			memcpy(f + packed, z, zn);
			put64(e, QCOW2_OFLAG_COMPRESSED | (extra << 61) | packed);
			packed += zn;
			break;
		}
		default:
			break;
		}
	}
	return packed ? packed : data;
}

static int write_file(const char *path, const unsigned char *b, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return -1;
	int rc = full_pwrite(fd, b, n, 0, path);
	close(fd);
	return rc;
}

/* qcow2_read_header on a patched copy of the image: 0 if accepted. */
static int header_of_patched(const unsigned char *f, size_t n, size_t at, const void *bytes,
			     size_t len, const char *want)
{
	static unsigned char copy[VSIZE * 2];
	char path[600];
	snprintf(path, sizeof path, "%s.patched", img_path);
	memcpy(copy, f, n);
	memcpy(copy + at, bytes, len);
	if (write_file(path, copy, n) < 0)
		return -2;
	int fd = open(path, O_RDONLY);
	struct qcow2_header h;
	int rc = qcow2_read_header(fd, path, &h);
	if (rc == 0)
		qcow2_header_free(&h);
	else if (want && !strstr(sp_errmsg(), want))
		rc = -3;
	close(fd);
	unlink(path);
	return rc;
}

struct worker {
	struct image *img;
	unsigned seed;
	int bad;
};

static void *hammer(void *arg)
{
	struct worker *w = arg;
	static _Thread_local unsigned char buf[16384];
	for (int n = 0; n < 3000; n++) {
		w->seed = w->seed * 1103515245u + 12345u;
		uint64_t off = (w->seed >> 3) % VSIZE;
		w->seed = w->seed * 1103515245u + 12345u;
		size_t len = 1 + (w->seed >> 4) % sizeof buf;
		if (len > VSIZE - off)
			len = VSIZE - off;
		if (image_pread(w->img, buf, len, off) < 0 || memcmp(buf, expect + off, len) != 0)
			w->bad++;
		struct extent e;
		if (image_extent(w->img, off, &e) < 0 || e.offset != off || e.length == 0) {
			w->bad++;
			continue;
		}
		/* Every cluster the extent covers has its kind. */
		for (uint64_t p = off; p < off + e.length; p += CS - p % CS) {
			enum kind k = kinds[p / CS];
			enum extent_kind want = k == K_ZERO ? EXTENT_ZERO
					       : k == K_UNALLOC ? EXTENT_HOLE : EXTENT_DATA;
			if (e.kind != want) {
				w->bad++;
				break;
			}
		}
	}
	return NULL;
}

int main(void)
{
	static unsigned char f[VSIZE * 2];
	snprintf(img_path, sizeof img_path, "%s/unit-qcow2-%d.qcow2", unit_tmpdir(), (int)getpid());
	size_t n = build(f, sizeof f);
	CHECK("crafted image written", write_file(img_path, f, n) == 0);

	int fd = open(img_path, O_RDONLY);
	struct qcow2_header h;
	int rc = qcow2_read_header(fd, img_path, &h);
	CHECK("header of the crafted image parses", rc == 0);
	CHECK("header fields", rc == 0 && h.version == 3 && h.cluster_bits == CB && h.size == VSIZE &&
				       h.l1_size == L1N && !h.backing_file && !h.extended_l2);
	if (rc == 0)
		qcow2_header_free(&h);
	close(fd);

	unsigned char be[8];
	put32(be, 4);
	CHECK("version 4 refused", header_of_patched(f, n, 4, be, 4, "version 4") == -1);
	put64(be, 1ull << 7);
	CHECK("unknown incompatible bit refused by name",
	      header_of_patched(f, n, 72, be, 8, "incompatible feature bit 7") == -1);
	put32(be, L1N - 1);
	CHECK("L1 table smaller than the disk refused", header_of_patched(f, n, 36, be, 4, "too small") == -1);
	put64(be, 2 * CS + 8);
	CHECK("unaligned L1 table refused", header_of_patched(f, n, 40, be, 8, "not cluster-aligned") == -1);
	put32(be, 112);
	CHECK("v3 header_length 112 (compression_type zlib) accepted",
	      header_of_patched(f, n, 100, be, 4, NULL) == 0);
	put32(be, 1);
	CHECK("crypt_method 1 refused", header_of_patched(f, n, 32, be, 4, "encrypted") == -1);

	struct image *img = image_open(img_path, FMT_AUTO, IMAGE_RDONLY);
	CHECK("image opens", img != NULL);
	if (!img) {
		fprintf(stderr, "%s\n", sp_errmsg());
		UNIT_DONE();
	}
	CHECK("granularity is the cluster size", img->granularity == CS);
	static unsigned char all[VSIZE];
	CHECK("whole-disk pread", image_pread(img, all, VSIZE, 0) == 0 && memcmp(all, expect, VSIZE) == 0);
	CHECK("read past the end refused", image_pread(img, all, 2, VSIZE - 1) < 0);

	uint64_t pos = 0, zero = 0, hole = 0, dat = 0;
	int walk_ok = 1;
	while (pos < VSIZE && walk_ok) {
		struct extent e;
		walk_ok = image_extent(img, pos, &e) == 0 && e.offset == pos && e.length > 0;
		if (!walk_ok)
			break;
		*(e.kind == EXTENT_DATA ? &dat : e.kind == EXTENT_ZERO ? &zero : &hole) += e.length;
		pos += e.length;
	}
	uint64_t want_data = 0, want_zero = 0;
	for (unsigned i = 0; i < NCL; i++) {
		want_data += (kinds[i] == K_NORMAL || kinds[i] == K_COMP) ? CS : 0;
		want_zero += kinds[i] == K_ZERO ? CS : 0;
	}
	CHECK("extent walk covers the disk by kind",
	      walk_ok && pos == VSIZE && dat == want_data && zero == want_zero &&
		      hole == VSIZE - want_data - want_zero);

	uint64_t before = img->bytes_read;
	struct worker w[THREADS];
	pthread_t th[THREADS];
	for (unsigned t = 0; t < THREADS; t++) {
		w[t] = (struct worker){ img, 7919u * (t + 1), 0 };
		pthread_create(&th[t], NULL, hammer, &w[t]);
	}
	int bad = 0;
	for (unsigned t = 0; t < THREADS; t++) {
		pthread_join(th[t], NULL);
		bad += w[t].bad;
	}
	CHECK("8 threads reading and mapping at once see the right bytes and kinds", bad == 0);
	CHECK("bytes_read counted", img->bytes_read > before);
	image_close(img);
	unlink(img_path);
	UNIT_DONE();
}

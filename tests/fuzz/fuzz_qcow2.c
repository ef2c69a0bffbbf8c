/* libFuzzer target: the qcow2 reader (header, extensions, L1/L2 tables,
 * compressed and extended-L2 clusters, backing chain).
 *
 * Each input is written to f.qcow2 in a private, otherwise empty temporary
 * directory and opened with image_open(..., FMT_QCOW2, IMAGE_RDONLY); then
 * the extent map is walked and a bounded amount read. The directory also
 * holds two small backing images (b.raw, b.qcow2) so that backing chains are
 * exercised. A backing name is resolved against the overlay's directory,
 * not the working directory (libFuzzer's corpus paths may be relative, so
 * we do not chdir); an input whose backing name holds a '/' is skipped
 * before the parser sees it, so no input can make the reader open an
 * arbitrary host path. A name without '/' resolves inside the directory:
 * f.qcow2 itself is a backing loop, which must be refused.
 *
 * Its persistent dirty bitmaps "b0" and "b1" are loaded (directory,
 * tables, data: formats/qcow2_bitmap.c), and every dirty range must lie
 * inside the image.
 *
 * Each input also goes to the writer: opened for an in-place update,
 * written at two offsets, a range zeroed, flushed and closed.
 *
 * Invariants checked beyond "no sanitizer report": an extent lies inside
 * the virtual size and makes progress; what the writer accepted and
 * flushed reads back. */
#include "../../core/error.h"
#include "../../formats/change_map.h"
#include "../../formats/image.h"
#include "../../formats/qcow2.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_EXTENTS 512
#define READ_BUDGET (2u << 20) /* bytes pread per input */
#define READ_CHUNK (64u << 10)

static char dir[256], path[300];
static unsigned char *rbuf;

static void cleanup_dir(void)
{
	char p[320];
	const char *names[] = { "f.qcow2", "b.raw", "b.qcow2" };
	for (unsigned i = 0; i < 3; i++) {
		snprintf(p, sizeof p, "%s/%s", dir, names[i]);
		unlink(p);
	}
	rmdir(dir);
}

static void make_backing(void)
{
	char p[320];
	unsigned char buf[4096];
	for (unsigned i = 0; i < sizeof buf; i++)
		buf[i] = (unsigned char)(i * 7 + 1);
	snprintf(p, sizeof p, "%s/b.raw", dir);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		if (ftruncate(fd, 1 << 20) != 0 || pwrite(fd, buf, sizeof buf, 65536) < 0)
			perror("b.raw");
		close(fd);
	}
	snprintf(p, sizeof p, "%s/b.qcow2", dir);
	struct image_create_opts o = { .cluster_size = 512 };
	struct image *img = image_create(p, FMT_QCOW2, 1 << 20, &o);
	if (img) {
		image_pwrite(img, buf, sizeof buf, 8192);
		image_pwrite(img, buf, 512, 700 * 512);
		image_close(img);
	}
}

static void setup(void)
{
	if (rbuf)
		return;
	const char *base = getenv("FUZZ_TMPDIR");
	if (!base)
		base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(dir, sizeof dir, "%s/sparsync-fuzz-qcow2.XXXXXX", base);
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		abort();
	}
	snprintf(path, sizeof path, "%s/f.qcow2", dir);
	make_backing();
	atexit(cleanup_dir);
	rbuf = malloc(READ_CHUNK);
	if (!rbuf)
		abort();
}

static uint64_t be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}
static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A backing file name the reader would resolve outside our directory. */
static int unsafe_backing(const uint8_t *d, size_t n)
{
	if (n < 20)
		return 0;
	uint64_t off = be64(d + 8);
	uint32_t len = be32(d + 16);
	if (off == 0 || len == 0)
		return 0;
	if (off >= n || len > n - off)
		return 0; /* not inside the file: the parser refuses it */
	return memchr(d + off, '/', len) != NULL;
}

static void read_some(struct image *img, uint64_t off, uint64_t len, size_t *budget)
{
	if (!*budget || !len)
		return;
	size_t n = len < READ_CHUNK ? (size_t)len : READ_CHUNK;
	if (n > *budget)
		n = *budget;
	*budget -= n;
	image_pread(img, rbuf, n, off);
}

static void check_bitmaps(struct image *img)
{
	static const char *names[] = { "b0", "b1" };
	for (unsigned i = 0; i < 2; i++) {
		struct change_map m;
		if (image_dirty_bitmap(img, names[i], &m) < 0)
			continue;
		uint64_t at = 0, s, e, sum = 0;
		while (change_map_next(&m, at, &s, &e)) {
			if (s < at || e <= s || e > img->size) {
				fprintf(stderr, "bad dirty range [%llu, %llu) (size %llu)\n",
					(unsigned long long)s, (unsigned long long)e,
					(unsigned long long)img->size);
				abort();
			}
			sum += e - s;
			at = e;
		}
		if (sum != m.dirty_bytes)
			abort();
		change_map_free(&m);
	}
}

static void write_back(void)
{
	static unsigned char pat[6000], got[6000];
	for (unsigned i = 0; i < sizeof pat; i++)
		pat[i] = (unsigned char)(i * 11 + 3);
	struct image *img = image_open(path, FMT_QCOW2, IMAGE_RDWR);
	if (!img)
		return;
	uint64_t sz = img->size, off[2] = { 0, sz / 2 + 77 };
	bool wrote[2] = { false, false };
	for (int i = 0; i < 2; i++) {
		if (sz < sizeof pat || off[i] > sz - sizeof pat)
			continue;
		wrote[i] = image_pwrite(img, pat, sizeof pat, off[i]) == 0;
	}
	/* The zeroed range may overlap what was just written (small images):
	 * the check below expects zeros there. */
	uint64_t zoff = sz >= 8192 ? sz - 8192 : UINT64_MAX;
	if (zoff != UINT64_MAX)
		image_zero(img, zoff, 4096);
	int rc = image_flush(img);
	if (image_close(img) < 0)
		rc = -1;
	if (rc < 0)
		return;
	img = image_open(path, FMT_QCOW2, IMAGE_RDONLY);
	if (!img)
		return; /* e.g. a backing file it names is refused */
	for (int i = 0; i < 2; i++) {
		if (!wrote[i] || image_pread(img, got, sizeof got, off[i]) < 0)
			continue;
		for (unsigned j = 0; j < sizeof pat; j++) {
			uint64_t at = off[i] + j;
			unsigned char want = zoff != UINT64_MAX && at >= zoff && at < zoff + 4096 ? 0 : pat[j];
			if (got[j] != want) {
				fprintf(stderr, "written data at %llu does not read back (byte %llu)\n",
					(unsigned long long)off[i], (unsigned long long)at);
				abort();
			}
		}
	}
	image_close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	setup();
	if (unsafe_backing(data, size))
		return -1; /* not added to the corpus */
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		abort();
	size_t done = 0;
	while (done < size) {
		ssize_t w = write(fd, data + done, size - done);
		if (w <= 0)
			abort();
		done += (size_t)w;
	}
	close(fd);

	struct image *img = image_open(path, FMT_QCOW2, IMAGE_RDONLY);
	if (img) {
		check_bitmaps(img);
		size_t budget = READ_BUDGET;
		uint64_t off = 0;
		for (unsigned i = 0; i < MAX_EXTENTS && off < img->size; i++) {
			struct extent e;
			if (image_extent(img, off, &e) < 0)
				break;
			if (e.offset != off || e.length == 0 || e.length > img->size - off) {
				fprintf(stderr, "bad extent at %llu: offset %llu length %llu (size %llu)\n",
					(unsigned long long)off, (unsigned long long)e.offset,
					(unsigned long long)e.length, (unsigned long long)img->size);
				abort();
			}
			/* Read the start and the end of each extent, whatever its kind:
			 * holes and zero ranges must read too (backing, zero flag). */
			read_some(img, off, e.length, &budget);
			if (e.length > READ_CHUNK)
				read_some(img, off + e.length - READ_CHUNK, READ_CHUNK, &budget);
			off += e.length;
		}
		/* A read that straddles clusters at an odd offset. */
		if (img->size > 3)
			read_some(img, img->size / 3, img->size - img->size / 3, &budget);
		image_close(img);
	}
	/* The writer on the same bytes: an existing destination opened for an
	 * in-place update may be damaged too. What it accepts and writes must
	 * read back. */
	write_back();
	/* The writer's reading of an existing image (used by shrink). */
	struct qcow2_layout lay;
	if (qcow2_layout_of(path, &lay) == 0)
		qcow2_layout_free(&lay);
	sp_err_clear();
	return 0;
}

/* Block devices (LVM volumes, zvols, loop devices, whole disks): the device
 * is the disk, written in place.
 *
 * - Size from BLKGETSIZE64; a device is never resized (resize is refused,
 *   so the engine cannot truncate one).
 * - No allocation map: every byte is data. The copy engine's zero detection
 *   turns all-zero blocks into holes at the destination; `map` reads the
 *   device to show what reads as zeros (image->alloc_unknown).
 * - A device cannot be assumed to read as zeros, so zeroing a range uses the
 *   cheapest call that guarantees zeros afterwards: fallocate PUNCH_HOLE
 *   (write-zeroes with unmap, no fallback: thin LVs and loop devices free the
 *   space), then ZERO_RANGE (the kernel may write zeros), then writing zeros
 *   ourselves. Never plain discard, which promises nothing about what reads
 *   back.
 * - Reading a multi-TB device must not evict everything else the host has
 *   cached: what was read is dropped from the page cache right behind the
 *   reader (POSIX_FADV_DONTNEED). Chosen over O_DIRECT because it needs no
 *   aligned buffers and keeps the kernel's read-ahead; reading a 2 GiB loop
 *   device with 1 MiB reads, the two were within noise here (bench/README).
 */
#include "image.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* The kernel's ways to zero a device range, cheapest first. */
static const int zero_modes[] = {
	FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, /* write-zeroes with unmap, no fallback */
	FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, /* write-zeroes, the kernel may write zeros */
};
#define N_ZERO_MODES (sizeof zero_modes / sizeof zero_modes[0])

struct blockdev {
	uint32_t sector;      /* logical block size: fallocate needs this alignment */
	unsigned first_mode;  /* zero_modes before this one were refused by the device */
};

static int bd_extent(struct image *img, uint64_t off, struct extent *e)
{
	e->offset = off;
	e->length = img->size - off;
	e->kind = EXTENT_DATA;
	return 0;
}

static int bd_pread(struct image *img, void *buf, size_t len, uint64_t off)
{
	if (image_fd_pread(img, buf, len, off) < 0)
		return -1;
	/* Read once, never again by us: keep the host's cache for its VMs. */
	posix_fadvise(img->fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
	return 0;
}

static void bd_prefetch(struct image *img, uint64_t off, uint64_t len)
{
	posix_fadvise(img->fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
}

static int bd_pwrite(struct image *img, const void *buf, size_t len, uint64_t off)
{
	return image_write_data(img, buf, len, off);
}

/* Zero a sector-aligned range with the kernel's help; 1 when the caller
 * must write zeros itself. */
static int zero_aligned(struct image *img, struct blockdev *b, uint64_t off, uint64_t len)
{
	for (; b->first_mode < N_ZERO_MODES; b->first_mode++) {
		if (fallocate(img->fd, zero_modes[b->first_mode], (off_t)off, (off_t)len) == 0)
			return 0;
		if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
			return sp_err("%s: zeroing %llu bytes at offset %llu: %s", img->path,
				      (unsigned long long)len, (unsigned long long)off,
				      strerror(errno));
	}
	return 1;
}

static int bd_zero(struct image *img, uint64_t off, uint64_t len)
{
	struct blockdev *b = img->priv;
	if (len == 0)
		return 0;
	/* fallocate on a device wants whole logical blocks: the unaligned
	 * head and tail (only ever at the source's odd-sized end) are written. */
	uint64_t s = b->sector;
	uint64_t a = (off + s - 1) / s * s, z = (off + len) / s * s;
	if (a >= z)
		return image_write_zeros(img, off, len);
	if (a > off && image_write_zeros(img, off, a - off) < 0)
		return -1;
	int rc = zero_aligned(img, b, a, z - a);
	if (rc < 0)
		return -1;
	if (rc == 1 && image_write_zeros(img, a, z - a) < 0)
		return -1;
	if (off + len > z && image_write_zeros(img, z, off + len - z) < 0)
		return -1;
	return 0;
}

static const struct image_ops blockdev_ops = {
	.name = "block device",
	.extent = bd_extent,
	.pread = bd_pread,
	.pwrite = bd_pwrite,
	.zero = bd_zero,
	.resize = NULL, /* a device keeps its size: image_resize refuses */
	.flush = image_fd_flush,
	.close = image_fd_close,
	.prefetch = bd_prefetch,
};

struct image *blockdev_open(const char *path, int fd, bool writable)
{
	uint64_t size = 0;
	int sector = 0;
	if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
		sp_err("%s: cannot read the device size: %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	if (ioctl(fd, BLKSSZGET, &sector) < 0 || sector < 512 || (sector & (sector - 1)))
		sector = 512;
	struct image *img = image_alloc(&blockdev_ops, path, fd, FMT_RAW);
	struct blockdev *b = calloc(1, sizeof *b);
	if (!img || !b) {
		if (img)
			sp_err("%s: out of memory", path);
		free(b);
		image_free(img);
		close(fd);
		return NULL;
	}
	b->sector = (uint32_t)sector;
	img->priv = b;
	img->size = size;
	img->writable = writable;
	img->alloc_unknown = true;
	if (writable)
		image_write_behind(img);
	return img;
}

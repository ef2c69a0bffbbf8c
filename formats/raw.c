/* Raw images: the file is the disk. Allocation comes from SEEK_DATA/SEEK_HOLE
 * and holes are made with FALLOC_FL_PUNCH_HOLE; on filesystems without them
 * the whole file is data and zeroing writes zeros. */
#include "image.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct raw {
	bool no_seek_data; /* filesystem lacks SEEK_DATA: report all data */
	bool no_punch;     /* filesystem lacks PUNCH_HOLE: write zeros */
};

static int raw_extent(struct image *img, uint64_t off, struct extent *e)
{
	struct raw *r = img->priv;
	e->offset = off;
	e->kind = EXTENT_DATA;
	e->length = img->size - off;
	if (r->no_seek_data)
		return 0;

	off_t data = lseek(img->fd, (off_t)off, SEEK_DATA);
	if (data < 0) {
		if (errno == ENXIO) { /* only a hole remains up to EOF */
			e->kind = EXTENT_HOLE;
			return 0;
		}
		if (errno == EINVAL || errno == EOPNOTSUPP) {
			r->no_seek_data = true;
			return 0;
		}
		return sp_err("%s: SEEK_DATA: %s", img->path, strerror(errno));
	}
	if ((uint64_t)data > off) {
		e->kind = EXTENT_HOLE;
		e->length = ((uint64_t)data < img->size ? (uint64_t)data : img->size) - off;
		return 0;
	}
	off_t hole = lseek(img->fd, (off_t)off, SEEK_HOLE);
	if (hole < 0)
		return sp_err("%s: SEEK_HOLE: %s", img->path, strerror(errno));
	if ((uint64_t)hole < img->size)
		e->length = (uint64_t)hole - off;
	return 0;
}

/* The copy's workers read blocks synchronously; asking for blocks early
 * keeps the disk busy while they compress, and starts the jump to the
 * next extent that the kernel's read-ahead cannot guess (copy_opts). */
static void raw_prefetch(struct image *img, uint64_t off, uint64_t len)
{
	posix_fadvise(img->fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
}

static int raw_pwrite(struct image *img, const void *buf, size_t len, uint64_t off)
{
	return image_write_data(img, buf, len, off);
}

static int raw_zero(struct image *img, uint64_t off, uint64_t len)
{
	struct raw *r = img->priv;
	if (len == 0)
		return 0;
	if (image_protect(img, off, len) < 0)
		return -1;
	if (!r->no_punch) {
		if (fallocate(img->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)off, (off_t)len) == 0)
			return 0;
		if (errno != EOPNOTSUPP && errno != ENOSYS)
			return sp_err("%s: punching hole at offset %llu: %s", img->path,
				      (unsigned long long)off, strerror(errno));
		r->no_punch = true;
	}
	return image_write_zeros(img, off, len);
}

static int raw_resize(struct image *img, uint64_t size)
{
	if (size < img->size && image_protect(img, size, img->size - size) < 0)
		return -1;
	if (ftruncate(img->fd, (off_t)size) < 0)
		return sp_err("%s: resize to %llu bytes: %s", img->path,
			      (unsigned long long)size, strerror(errno));
	img->size = size;
	return 0;
}

static const struct image_ops raw_ops = {
	.name = "raw",
	.extent = raw_extent,
	.pread = image_fd_pread,
	.pwrite = raw_pwrite,
	.zero = raw_zero,
	.resize = raw_resize,
	.flush = image_fd_flush,
	.close = image_fd_close,
	.prefetch = raw_prefetch,
};

struct image *raw_open(const char *path, int fd, bool writable)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		sp_err("%s: %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	struct image *img = image_alloc(&raw_ops, path, fd, FMT_RAW);
	struct raw *r = calloc(1, sizeof *r);
	if (!img || !r) {
		if (img)
			sp_err("%s: out of memory", path);
		free(r);
		image_free(img);
		close(fd);
		return NULL;
	}
	img->priv = r;
	img->writable = writable;
	if (writable)
		image_write_behind(img);
	img->size = (uint64_t)st.st_size;
	return img;
}

struct image *raw_create(const char *path, uint64_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		sp_err("%s: %s", path, strerror(errno));
		return NULL;
	}
	if (ftruncate(fd, (off_t)size) < 0) {
		sp_err("%s: setting size: %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	return raw_open(path, fd, true);
}

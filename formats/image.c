#include "image.h"
#include "image_lock.h"
#include "nbd.h"
#include "rbd.h"
#include "undo.h"
#include "writeback.h"

#include "../core/confine.h"
#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

const char *image_format_name(enum image_format f)
{
	switch (f) {
	case FMT_RAW: return "raw";
	case FMT_QCOW2: return "qcow2";
	default: return "auto";
	}
}

enum image_format image_format_parse(const char *s)
{
	if (strcmp(s, "raw") == 0)
		return FMT_RAW;
	if (strcmp(s, "qcow2") == 0)
		return FMT_QCOW2;
	return FMT_AUTO;
}

enum image_format image_detect_fd(int fd)
{
	unsigned char magic[4];
	ssize_t n = pread(fd, magic, sizeof magic, 0);
	if (n == 4 && memcmp(magic, "QFI\xfb", 4) == 0)
		return FMT_QCOW2;
	return FMT_RAW;
}

enum image_format image_detect_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return FMT_AUTO;
	enum image_format f = image_detect_fd(fd);
	close(fd);
	return f;
}

void image_set_name(struct image *img, const char *name)
{
	char *copy = strdup(name);
	if (copy) {
		free(img->path);
		img->path = copy;
	}
}

/* Why a file that is neither a regular file nor a block device cannot be
 * an image: NULL when it can. */
const char *image_unusable_kind(mode_t mode)
{
	if (S_ISDIR(mode))
		return "is a directory";
	if (S_ISCHR(mode))
		return "is a character device, which has no size to copy";
	if (S_ISFIFO(mode))
		return "is a pipe (FIFO), which has no size to copy; decompress it to a file first";
	if (S_ISSOCK(mode))
		return "is a socket, not an image";
	if (!S_ISREG(mode) && !S_ISBLK(mode))
		return "is not a regular file or block device";
	return NULL;
}

static struct image *open_path(const char *path, const char *fpath, enum image_format fmt,
				int flags)
{
	bool rw = flags & IMAGE_RDWR;
	struct stat st;
	if (stat(fpath, &st) < 0) {
		sp_err("%s: %s", path, strerror(errno));
		return NULL;
	}
	const char *why = image_unusable_kind(st.st_mode);
	if (why) {
		sp_err("%s: %s", path, why);
		return NULL;
	}
	if (S_ISREG(st.st_mode) && undo_pending(fpath)) {
		sp_err("%s: an update of this image was interrupted and it may be a mix of old and "
		       "new; run 'sparsync recover %s' to put the previous image back", path, path);
		return NULL;
	}
	/* O_EXCL on a block device (Linux): refused while it is mounted or
	 * otherwise claimed, so we never write under a live filesystem. */
	int extra = rw && S_ISBLK(st.st_mode) ? O_EXCL : 0;
	int fd = open(fpath, (rw ? O_RDWR : O_RDONLY) | extra | O_CLOEXEC);
	if (fd < 0) {
		if (errno == EBUSY && extra)
			sp_err("%s: device is in use (mounted, or held by another program); "
			       "refusing to write to it", path);
		else
			sp_err("%s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0 || (why = image_unusable_kind(st.st_mode))) {
		sp_err("%s: %s", path, why ? why : strerror(errno));
		close(fd);
		return NULL;
	}
	if ((rw ? image_lock_write(fd, path)
		: image_lock_read(fd, path, flags & IMAGE_FORCE_SHARE)) < 0) {
		close(fd);
		return NULL;
	}
	if (fmt == FMT_AUTO && image_is_stream(fd)) {
		sp_err("%s: is a sparsync stream, not an image: 'sparsync copy %s OUT' restores it",
		       path, path);
		close(fd);
		return NULL;
	}
	const char *foreign = fmt == FMT_AUTO ? image_foreign_format(fd) : NULL;
	if (foreign) {
		sp_err("%s: is a %s image, which sparsync does not read; convert it (qemu-img "
		       "convert -O qcow2), or give -f raw to copy the file's bytes as they are", path,
		       foreign);
		close(fd);
		return NULL;
	}
	if (fmt == FMT_AUTO)
		fmt = image_detect_fd(fd);
	/* Constructors own fd from here on, closing it on failure. A device
	 * holding a qcow2 image (qcow2 on an LV) is read as qcow2; one being
	 * written is the disk itself. */
	if (S_ISBLK(st.st_mode) && (rw || fmt != FMT_QCOW2))
		return blockdev_open(path, fd, rw);
	switch (fmt) {
	case FMT_QCOW2: return qcow2_open(path, fd, rw, flags & IMAGE_FORCE_SHARE);
	default: return raw_open(path, fd, rw);
	}
}

/* Under a restricted serve (core/confine.h), only what lies beneath its
 * directory, opened by the path the kernel resolved; messages keep the
 * name the caller gave. */
struct image *image_open(const char *path, enum image_format fmt, int flags)
{
	if (nbd_uri_is(path)) {
		if (confine_active()) {
			sp_err("%s: NBD exports are refused by serve --restrict-to", path);
			return NULL;
		}
		if (fmt == FMT_QCOW2) {
			sp_err("%s: an NBD export is read as the disk it exports (raw); serve the "
			       "qcow2 image with qemu-nbd, which translates it", path);
			return NULL;
		}
		return nbd_image_open(path, flags & IMAGE_RDWR);
	}
	if (rbd_spec_is(path)) {
		if (confine_active()) {
			sp_err("%s: RBD images are refused by serve --restrict-to", path);
			return NULL;
		}
		if (fmt == FMT_QCOW2) {
			sp_err("%s: an RBD image is read as the disk it holds (raw)", path);
			return NULL;
		}
		return rbd_image_open(path, flags & IMAGE_RDWR);
	}
	if (!confine_active())
		return open_path(path, path, fmt, flags);
	char *fpath = confine_host_path(path);
	if (!fpath)
		return NULL;
	struct image *img = open_path(path, fpath, fmt, flags);
	free(fpath);
	return img;
}

struct image *image_create(const char *path, enum image_format fmt, uint64_t size,
			   const struct image_create_opts *opts)
{
	static const struct image_create_opts defaults;
	if (!opts)
		opts = &defaults;
	struct image *img = fmt == FMT_QCOW2 ? qcow2_create(path, size, opts) : raw_create(path, size);
	/* Nobody else can have it open yet; the locks keep it so (a VM
	 * cannot be started on it) until we are done. */
	if (img && image_lock_write(img->fd, path) < 0) {
		image_close(img);
		return NULL;
	}
	return img;
}

unsigned image_workers(const struct image *img, unsigned asked, unsigned max)
{
	unsigned n = asked;
	if (!n) {
		long cores = sysconf(_SC_NPROCESSORS_ONLN);
		n = cores < 1 ? 1 : (unsigned long)cores > max ? max : (unsigned)cores;
		if (img && img->io_depth > n)
			n = img->io_depth;
	}
	return n < 1 ? 1 : n > max ? max : n;
}

struct image *image_alloc(const struct image_ops *ops, const char *path, int fd,
			  enum image_format fmt)
{
	struct image *img = calloc(1, sizeof *img);
	if (!img || !(img->path = strdup(path))) {
		free(img);
		sp_err("%s: out of memory", path);
		return NULL;
	}
	img->ops = ops;
	img->fd = fd;
	img->format = fmt;
	img->granularity = 4096;
	return img;
}

void image_free(struct image *img)
{
	if (!img)
		return;
	writeback_free(img->wb);
	free(img->path);
	free(img);
}

char *backing_resolve(const char *overlay_path, const char *backing)
{
	const char *slash = strrchr(overlay_path, '/');
	size_t dlen = (backing[0] == '/' || !slash) ? 0 : (size_t)(slash - overlay_path) + 1;
	size_t nlen = strlen(backing);
	char *p = malloc(dlen + nlen + 1);
	if (!p)
		return NULL;
	memcpy(p, overlay_path, dlen);
	memcpy(p + dlen, backing, nlen + 1);
	return p;
}

int image_extent(struct image *i, uint64_t off, struct extent *e)
{
	if (i->ops->extent(i, off, e) < 0)
		return -1;
	if (e->length == 0 || e->offset != off)
		return sp_err("%s: extent map made no progress at offset %llu", i->path,
			      (unsigned long long)off);
	return 0;
}

int image_data_bytes(struct image *img, uint64_t *out)
{
	uint64_t pos = 0, sum = 0;
	while (!img->alloc_unknown && pos < img->size) {
		struct extent e;
		if (image_extent(img, pos, &e) < 0)
			return -1;
		uint64_t n = e.length < img->size - pos ? e.length : img->size - pos;
		if (e.kind == EXTENT_DATA)
			sum += n;
		pos += n;
	}
	*out = img->alloc_unknown ? img->size : sum;
	return 0;
}

int image_resize(struct image *i, uint64_t new_size)
{
	if (!i->ops->resize)
		return sp_err("%s: %s images cannot be resized", i->path, i->ops->name);
	return i->ops->resize(i, new_size);
}

int image_close(struct image *i)
{
	if (!i)
		return 0;
	return i->ops->close(i);
}

int full_pread(int fd, void *buf, size_t len, uint64_t off, const char *path)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return sp_err("%s: read at offset %llu: %s", path,
				      (unsigned long long)off, strerror(errno));
		}
		if (n == 0)
			return sp_err("%s: unexpected end of file at offset %llu (file truncated?)",
				      path, (unsigned long long)off);
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int full_pwrite(int fd, const void *buf, size_t len, uint64_t off, const char *path)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return sp_err("%s: write at offset %llu: %s", path,
				      (unsigned long long)off, strerror(errno));
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

enum image_format image_output_format(enum image_format forced, const char *dst_path,
				      enum image_format existing, enum image_format src)
{
	if (forced != FMT_AUTO)
		return forced;
	if (dst_path && ends_with(dst_path, ".qcow2"))
		return FMT_QCOW2;
	if (dst_path && (ends_with(dst_path, ".raw") || ends_with(dst_path, ".img")))
		return FMT_RAW;
	if (existing != FMT_AUTO)
		return existing;
	return src != FMT_AUTO ? src : FMT_RAW;
}

void image_write_behind(struct image *img)
{
	if (!img->wb)
		img->wb = writeback_new();
}

#ifdef SPARSYNC_FAULT_INJECTION
/* Test builds only (sparsync-faults): SPARSYNC_FAULT_KILL_AT=N sends the
 * process SIGKILL (or SPARSYNC_FAULT_SIGNAL, a number) just before its Nth
 * write to a destination file, so tests can stop an update
 * deterministically at every write. */
#include <signal.h>
static void fault_point(void)
{
	static unsigned long count;
	const char *at = getenv("SPARSYNC_FAULT_KILL_AT");
	const char *sig = getenv("SPARSYNC_FAULT_SIGNAL");
	if (at && __atomic_add_fetch(&count, 1, __ATOMIC_SEQ_CST) == strtoul(at, NULL, 10))
		raise(sig ? atoi(sig) : SIGKILL);
}
#else
static void fault_point(void) {}
#endif

int image_protect(struct image *img, uint64_t off, uint64_t len)
{
	if (img->undo && undo_protect(img->undo, off, len) < 0)
		return -1;
	fault_point();
	return 0;
}

int image_write_meta(struct image *img, const void *buf, size_t len, uint64_t off)
{
	if (image_protect(img, off, len) < 0)
		return -1;
	return full_pwrite(img->fd, buf, len, off, img->path);
}

int image_write_data(struct image *img, const void *buf, size_t len, uint64_t off)
{
	if (image_protect(img, off, len) < 0 || full_pwrite(img->fd, buf, len, off, img->path) < 0)
		return -1;
	writeback_note(img->wb, img->fd, off, len);
	return 0;
}

int image_fd_pread(struct image *img, void *buf, size_t len, uint64_t off)
{
	if (full_pread(img->fd, buf, len, off, img->path) < 0)
		return -1;
	__atomic_add_fetch(&img->bytes_read, len, __ATOMIC_RELAXED);
	return 0;
}

int image_fd_flush(struct image *img)
{
	if (img->writable && fsync(img->fd) < 0)
		return sp_err("%s: fsync: %s", img->path, strerror(errno));
	return 0;
}

int image_fd_close(struct image *img)
{
	int rc = 0;
	if (close(img->fd) < 0 && img->writable)
		rc = sp_err("%s: close: %s", img->path, strerror(errno));
	free(img->priv);
	image_free(img);
	return rc;
}

int image_write_zeros(struct image *img, uint64_t off, uint64_t len)
{
	static const char zeros[65536];
	while (len > 0) {
		size_t n = len < sizeof zeros ? (size_t)len : sizeof zeros;
		if (full_pwrite(img->fd, zeros, n, off, img->path) < 0)
			return -1;
		off += n;
		len -= n;
	}
	return 0;
}

int image_dirty_bitmap(struct image *img, const char *name, struct change_map *out)
{
	if (!img->ops->dirty_bitmap)
		return sp_err("%s: a %s image has no persistent dirty bitmaps (qcow2 has)", img->path,
			      img->ops->name);
	return img->ops->dirty_bitmap(img, name, out);
}

int image_bitmap_trackable(struct image *img)
{
	if (!img->ops->bitmap_trackable)
		return sp_err("%s: --track keeps a persistent bitmap (qcow2) or snapshot (RBD) in the "
			      "source, which a %s image cannot hold", img->path, img->ops->name);
	return img->ops->bitmap_trackable(img);
}

int image_track_start(struct image *img, const char *new_name)
{
	return img->ops->track_start ? img->ops->track_start(img, new_name) : 0;
}

void image_track_cancel(struct image *img, const char *new_name)
{
	if (img->ops->track_cancel)
		img->ops->track_cancel(img, new_name);
}

int image_bitmap_rotate(struct image *img, const char *old_name, const char *new_name)
{
	if (!img->ops->bitmap_rotate)
		return image_bitmap_trackable(img);
	return img->ops->bitmap_rotate(img, old_name, new_name);
}

/* One interface for every disk image kind (nbdcopy's `struct rw` idea):
 * the copy engine asks for extents one region at a time and reads/writes
 * blocks without ever asking which kind of image it holds.
 *
 * Every call returns 0 on success or -1 with sp_errmsg() set to a line that
 * already names the file. pread/pwrite on one image may be called from
 * several threads at once at different offsets. */
#ifndef SPARSYNC_IMAGE_H
#define SPARSYNC_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum image_format { FMT_AUTO = 0, FMT_RAW, FMT_QCOW2 };

enum extent_kind {
	EXTENT_DATA, /* allocated: must be read */
	EXTENT_ZERO, /* reads as zeros, allocation state says so (qcow2 zero flag) */
	EXTENT_HOLE, /* unallocated, reads as zeros */
};

struct extent {
	uint64_t offset;
	uint64_t length;
	enum extent_kind kind;
};

enum cluster_codec { CODEC_NONE = 0, CODEC_ZLIB, CODEC_ZSTD };

struct image_create_opts {
	uint32_t cluster_size;          /* qcow2; 0 = 64 KiB */
	enum cluster_codec compress;    /* qcow2 compressed clusters */
	const char *backing;            /* qcow2 overlay: backing file as stored in the header */
	enum image_format backing_format;
};

struct image;
struct change_map;

struct image_ops {
	const char *name;
	/* The longest run of one kind starting at off (off < size). May stop
	 * early (e.g. at an L2 table boundary); callers just ask again. */
	int (*extent)(struct image *, uint64_t off, struct extent *out);
	/* Exactly len bytes at off; off + len <= size. */
	int (*pread)(struct image *, void *buf, size_t len, uint64_t off);
	int (*pwrite)(struct image *, const void *buf, size_t len, uint64_t off);
	/* Afterwards the range reads as zeros, deallocated where the format can. */
	int (*zero)(struct image *, uint64_t off, uint64_t len);
	int (*resize)(struct image *, uint64_t new_size);
	int (*flush)(struct image *);
	/* Frees everything; -1 if writing out final metadata failed. */
	int (*close)(struct image *);
	/* Optional hint: [off, off+len) will be read soon; start reading it
	 * from disk now. No errors: it changes nothing but timing. */
	void (*prefetch)(struct image *, uint64_t off, uint64_t len);
	/* Optional: the persistent dirty bitmap called name (change_map.h);
	 * refused with one line saying why when it cannot be trusted. */
	int (*dirty_bitmap)(struct image *, const char *name, struct change_map *out);
	/* Optional, for --track: whether the image can keep a bitmap of ours,
	 * and replacing bitmap old_name (NULL or absent: none) with a new,
	 * empty, enabled one. Called on an image opened read-only, whose
	 * locks keep others out. */
	int (*bitmap_trackable)(struct image *);
	int (*bitmap_rotate)(struct image *, const char *old_name, const char *new_name);
	/* Optional, for --track on sources whose marker is a point in time
	 * taken when the run starts (an RBD snapshot): take new_name now and
	 * read from it from here on (dirty_bitmap then says what changed
	 * between the old marker and it; bitmap_rotate only drops the old);
	 * track_cancel drops it again when the run fails. */
	int (*track_start)(struct image *, const char *new_name);
	void (*track_cancel)(struct image *, const char *new_name);
};

struct image {
	const struct image_ops *ops;
	char *path;
	enum image_format format;
	uint64_t size;          /* virtual size in bytes */
	uint32_t granularity;   /* allocation unit: qcow2 cluster, raw 4096 */
	bool writable;
	/* No allocation map: extents say "data" everywhere, and only reading
	 * tells what is zero (block devices). */
	bool alloc_unknown;
	/* Requests worth having in flight at once when reading it (network
	 * storage, where latency rather than our CPU bounds a request); 0 =
	 * one per core. See image_workers. */
	unsigned io_depth;
	int fd;
	uint64_t bytes_read;    /* bytes actually read from the underlying file(s) */
	struct writeback *wb;   /* write-behind of data writes (writeback.h); NULL = none */
	/* In-place update under an undo journal (undo.h): every write, punch or
	 * truncation of bytes the file held saves them first. Not owned. */
	struct undo *undo;
	void *priv;
};

enum image_open_flags {
	IMAGE_RDONLY = 0,
	IMAGE_RDWR = 1,
	/* Read even what another program holds open for writing (qemu-img
	 * -U): no image locks are taken or looked at (image_lock.h). */
	IMAGE_FORCE_SHARE = 2,
};

const char *image_format_name(enum image_format f);
/* "raw" / "qcow2" -> format; FMT_AUTO when unknown. */
enum image_format image_format_parse(const char *s);
/* Sniff the magic of an open fd: FMT_QCOW2 or FMT_RAW. */
enum image_format image_detect_fd(int fd);
/* A format sparsync does not read, recognised by its magic or footer
 * (vmdk, vhdx, vdi, qed, vpc, luks, ...: formats/probe.c), or NULL. Only
 * for regular files: a device is the disk itself. */
const char *image_foreign_format(int fd);
/* A sparsync stream (.sps: `sparsync copy IMG - > F`) rather than an image:
 * a regular file that starts with the protocol's magic. */
bool image_is_stream(int fd);
/* The extension of a format sparsync does not write ("vmdk", ...), or NULL. */
const char *image_foreign_extension(const char *path);
/* The same for a path; FMT_AUTO when it cannot be opened. */
enum image_format image_detect_path(const char *path);
/* Messages about img name `name` (the path the user gave) from now on. */
void image_set_name(struct image *img, const char *name);

/* Opens image files and block devices (a device opened to write is opened
 * O_EXCL: a mounted filesystem or a device in use is refused), taking
 * QEMU's image locks (image_lock.h): an image another program writes is
 * not read (unless IMAGE_FORCE_SHARE), one it has open is not written. Anything
 * whose size cannot be known (character device, FIFO, socket) is refused
 * before it is opened, so a FIFO cannot block us. */
struct image *image_open(const char *path, enum image_format fmt, int flags);
/* Why a file of this st_mode cannot be an image ("is a directory", ...),
 * or NULL for a regular file or block device. */
const char *image_unusable_kind(mode_t mode);
struct image *image_create(const char *path, enum image_format fmt, uint64_t size,
			   const struct image_create_opts *opts);

/* Per-format constructors; image_open/image_create dispatch to them. */
struct image *raw_open(const char *path, int fd, bool writable);
struct image *raw_create(const char *path, uint64_t size);
struct image *blockdev_open(const char *path, int fd, bool writable);
struct image *qcow2_open(const char *path, int fd, bool writable, bool force_share);
struct image *qcow2_create(const char *path, uint64_t size, const struct image_create_opts *opts);

/* A backing file name as stored in an overlay: absolute, or relative to
 * the overlay's directory (like qemu-img). Malloc'd; NULL when out of memory. */
char *backing_resolve(const char *overlay_path, const char *backing);

/* Helpers for implementations. */
/* How many threads read img at once: `asked` (-j) when set, else one per
 * core or img's io_depth, whichever is more, at most max. */
unsigned image_workers(const struct image *img, unsigned asked, unsigned max);
struct image *image_alloc(const struct image_ops *ops, const char *path, int fd,
			  enum image_format fmt);
void image_free(struct image *img);
/* pread/pwrite loops that retry short transfers and name the file on error. */
int full_pread(int fd, void *buf, size_t len, uint64_t off, const char *path);
int full_pwrite(int fd, const void *buf, size_t len, uint64_t off, const char *path);
/* For images opened to write: start write-behind (a hint; silently none
 * when out of memory). image_free ends it. */
void image_write_behind(struct image *img);
/* full_pwrite of guest data to img's file at host offset off (after the
 * undo journal, if any, saved what it overwrites), then the write-behind
 * note. Metadata goes through image_write_meta. */
int image_write_data(struct image *img, const void *buf, size_t len, uint64_t off);
/* full_pwrite of metadata (qcow2 tables, header) to img's file, after the
 * undo journal (if any) saved what it overwrites. */
int image_write_meta(struct image *img, const void *buf, size_t len, uint64_t off);
/* For images that are one plain file descriptor (raw files, devices):
 * read exactly len bytes, counted in bytes_read; fsync when writable; close the fd and free priv and img; write zeros
 * over a range (after image_protect by the caller). */
int image_fd_pread(struct image *img, void *buf, size_t len, uint64_t off);
int image_fd_flush(struct image *img);
int image_fd_close(struct image *img);
int image_write_zeros(struct image *img, uint64_t off, uint64_t len);
/* [off, off+len) of img's file is about to be overwritten, punched or cut
 * off: let the undo journal save it first (nothing without one). */
int image_protect(struct image *img, uint64_t off, uint64_t len);

/* Bytes of img that hold data (extents of kind DATA), from the allocation
 * map alone: no data is read. The whole size where there is no map. */
int image_data_bytes(struct image *img, uint64_t *out);
/* img's persistent dirty bitmap `name`: what changed since it was
 * started or cleared. -1, or -2 when there is no bitmap of that name
 * (message set either way). */
int image_dirty_bitmap(struct image *img, const char *name, struct change_map *out);
int image_bitmap_trackable(struct image *img);
int image_bitmap_rotate(struct image *img, const char *old_name, const char *new_name);
/* The track_start/track_cancel ops; nothing for images without them. */
int image_track_start(struct image *img, const char *new_name);
void image_track_cancel(struct image *img, const char *new_name);
/* The extent at off (off < size), checked to start at off and to be
 * non-empty, so no caller's walk can loop on a broken extent map. */
int image_extent(struct image *i, uint64_t off, struct extent *e);
static inline int image_pread(struct image *i, void *buf, size_t len, uint64_t off)
{
	return i->ops->pread(i, buf, len, off);
}
static inline int image_pwrite(struct image *i, const void *buf, size_t len, uint64_t off)
{
	return i->ops->pwrite(i, buf, len, off);
}
static inline int image_zero(struct image *i, uint64_t off, uint64_t len)
{
	return i->ops->zero(i, off, len);
}
static inline int image_flush(struct image *i)
{
	return i->ops->flush(i);
}
static inline void image_prefetch(struct image *i, uint64_t off, uint64_t len)
{
	if (i->ops->prefetch)
		i->ops->prefetch(i, off, len);
}
int image_resize(struct image *i, uint64_t new_size);
/* Closes and frees; NULL is fine. */
int image_close(struct image *i);



/* DESIGN.md's rule: -O wins; else the destination's extension (.qcow2 ->
 * qcow2; .raw/.img -> raw); else an existing destination's own format (or
 * FMT_AUTO if none); else the source's format. */
enum image_format image_output_format(enum image_format forced, const char *dst_path,
				      enum image_format existing, enum image_format src);

#endif

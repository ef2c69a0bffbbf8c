#include "dest.h"

#include "confine.h"
#include "error.h"
#include "paths.h"
#include "protocol.h"
#include "sync_hash.h"
#include "../formats/image_lock.h"
#include "../formats/nbd.h"
#include "../formats/rbd.h"
#include "../formats/qcow2.h"
#include "../formats/undo.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Where DST stands: sets d->real_path and *sb (zeroed mode when absent). */
static int classify(struct dest *d, struct stat *sb)
{
	memset(sb, 0, sizeof *sb);
	struct stat lsb;
	if (lstat(d->path, &lsb) < 0) {
		if (errno != ENOENT)
			return sp_err("%s: %s", d->path, strerror(errno));
		d->real_path = strdup(d->path);
		return d->real_path ? 0 : sp_err("%s: out of memory", d->path);
	}
	if (S_ISLNK(lsb.st_mode)) {
		/* Write through the link: the link is how the user names the
		 * image (/dev/vg/lv, current.qcow2 -> 2026-11-29.qcow2). */
		d->real_path = realpath(d->path, NULL);
		if (!d->real_path) {
			if (errno == ENOENT)
				return sp_err("%s: symbolic link to a file that does not exist; "
					      "sparsync writes through links, not over them", d->path);
			return sp_err("%s: %s", d->path, strerror(errno));
		}
		if (stat(d->real_path, sb) < 0)
			return sp_err("%s: %s", d->path, strerror(errno));
	} else {
		*sb = lsb;
		d->real_path = strdup(d->path);
		if (!d->real_path)
			return sp_err("%s: out of memory", d->path);
	}
	if (S_ISREG(sb->st_mode) || S_ISBLK(sb->st_mode))
		return 0;
	if (S_ISDIR(sb->st_mode))
		return sp_err("%s: is a directory (give the destination file name)", d->path);
	if (S_ISCHR(sb->st_mode))
		return sp_err("%s: is a character device; sparsync writes image files and block "
			      "devices, and never replaces a device node", d->path);
	return sp_err("%s: is not a regular file or block device; refusing to replace it",
		      d->path);
}

/* The backing file of a new overlay, resolved relative to DST's directory
 * as qemu-img does. */
static int open_backing(struct dest *d)
{
	const struct image_create_opts *c = d->o.create;
	if (d->o.out_fmt == FMT_RAW)
		return sp_err("%s: --backing writes a qcow2 overlay; it cannot be -O raw", d->path);
	if (d->o.out_fmt == FMT_AUTO &&
	    image_output_format(FMT_AUTO, d->path, FMT_AUTO, FMT_QCOW2) == FMT_RAW)
		return sp_err("%s: --backing writes a qcow2 overlay, but the name says raw; give -O "
			      "qcow2 to write one under this name anyway", d->path);
	char *bpath = backing_resolve(d->real_path, c->backing);
	if (!bpath)
		return sp_err("%s: out of memory", d->path);
	d->backing = image_open(bpath, FMT_AUTO, IMAGE_RDONLY);
	if (!d->backing) {
		/* "backing file NAME: why (looked for RESOLVED)" */
		char why[1024];
		sp_err_rename(bpath, c->backing);
		snprintf(why, sizeof why, "%s", sp_errmsg()); /* sp_err writes over it */
		sp_err("backing file %s (looked for %s)", why, bpath);
		free(bpath);
		return -1;
	}
	free(bpath);
	struct stat bs, ds;
	if (stat(d->real_path, &ds) == 0 && fstat(d->backing->fd, &bs) == 0 &&
	    bs.st_dev == ds.st_dev && bs.st_ino == ds.st_ino)
		return sp_err("%s: the destination is its own backing file", d->path);
	d->mode = DEST_OVERLAY;
	return 0;
}

/* Options that ask for a layout an in-place update cannot give. */
static bool wants_new_layout(const struct image_create_opts *c, const struct image *dst)
{
	if (!c || dst->format != FMT_QCOW2)
		return false;
	if (c->compress != CODEC_NONE)
		return true;
	return c->cluster_size && c->cluster_size != dst->granularity;
}

/* An existing qcow2 the writer cannot update in place. When a rewrite
 * would lose something (snapshots, bitmaps, encryption) or change what the
 * user chose (compressed clusters), refuse with the reason: --whole asks for
 * the rewrite. A layout the writer just does not update (an overlay's
 * backing file, extended L2) is rewritten whole, as with --whole. */
static int not_updatable(struct dest *d)
{
	char why[1024];
	snprintf(why, sizeof why, "%s", sp_errmsg());
	struct qcow2_layout lay;
	if (qcow2_layout_of(d->real_path, &lay) < 0)
		return sp_err("%s", why);
	bool keep = lay.unkept || lay.compress != CODEC_NONE;
	qcow2_layout_free(&lay);
	if (keep)
		return sp_err("%s", why);
	sp_err_clear();
	d->mode = DEST_NEW;
	return 0;
}

/* A disk (block device, NBD export, RBD image) is written raw. */
static int raw_disk_only(struct dest *d)
{
	const char *what = d->nbd ? "an NBD export" : d->rbd ? "an RBD image" : "a block device";
	if (d->o.create && d->o.create->backing)
		return sp_err("%s: is %s; --backing writes a qcow2 overlay file", d->path, what);
	if (d->o.out_fmt == FMT_QCOW2)
		return sp_err("%s: is %s, which sparsync writes raw (it is the disk); -O qcow2 "
			      "cannot apply", d->path, what);
	return 0;
}

/* A block device or an NBD export: the disk itself, written in place. */
static int open_device(struct dest *d)
{
	if (raw_disk_only(d) < 0)
		return -1;
	d->img = image_open(d->real_path, FMT_RAW, IMAGE_RDWR);
	if (!d->img)
		return -1;
	image_set_name(d->img, d->path);
	d->mode = DEST_DEVICE;
	d->existing = FMT_RAW;
	return 0;
}

static void unguard(struct dest *d)
{
	if (d->guard_fd >= 0)
		close(d->guard_fd);
	d->guard_fd = -1;
}

/* An existing file that will be replaced: nobody may have it open as
 * QEMU does (a VM writing it would go on writing the unlinked old file),
 * and while we hold this, nobody can start to. */
static int guard(struct dest *d)
{
	d->guard_fd = open(d->real_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (d->guard_fd < 0)
		return sp_err("%s: %s", d->path, strerror(errno));
	if (image_lock_write(d->guard_fd, d->path) < 0) {
		unguard(d);
		return -1;
	}
	return 0;
}

/* DST as a directory (existing, or named with a trailing '/'): the file
 * of the source's name in it. NULL when DST is not one. */
static char *into_directory(const char *path, const char *src_name, int *err)
{
	size_t n = strlen(path);
	struct stat sb;
	bool slash = n && path[n - 1] == '/';
	*err = 0;
	if (!src_name || (!slash && (stat(path, &sb) < 0 || !S_ISDIR(sb.st_mode))))
		return NULL;
	if (strchr(src_name, '/')) {
		*err = sp_err("%s: the source's name '%s' is not a file name", path, src_name);
		return NULL;
	}
	if (slash && (stat(path, &sb) < 0 || !S_ISDIR(sb.st_mode))) {
		*err = sp_err("%s: directory does not exist", path);
		return NULL;
	}
	if (!*src_name || !strcmp(src_name, ".") || !strcmp(src_name, "..") || !strcmp(src_name, "/")) {
		*err = sp_err("%s: is a directory, and the source has no file name to give the copy "
			      "in it", path);
		return NULL;
	}
	char *p = path_join(path, src_name);
	if (!p)
		*err = sp_err("%s: out of memory", path);
	return p;
}

static int open_kind(struct dest *d, const char *path, const struct dest_opts *o)
{
	d->guard_fd = -1;
	d->o = *o;
	d->existing = FMT_AUTO;
	int err;
	d->path = into_directory(path, o->src_name, &err);
	if (err < 0)
		return -1;
	if (!d->path)
		d->path = strdup(path);
	if (!d->path)
		return sp_err("%s: out of memory", path);
	if (nbd_uri_is(d->path) || rbd_spec_is(d->path)) {
		d->nbd = nbd_uri_is(d->path);
		d->rbd = !d->nbd;
		if (!(d->real_path = strdup(d->path)))
			return sp_err("%s: out of memory", path);
		int exists = d->rbd ? rbd_image_exists(d->path) : 1;
		if (exists < 0)
			return -1;
		if (exists)
			return open_device(d);
		/* A new RBD image: made under a temporary name, renamed when
		 * complete (dest_begin, dest_commit). */
		if (raw_disk_only(d) < 0)
			return -1;
		d->mode = DEST_NEW;
		d->existing = FMT_AUTO;
		return 0;
	}
	struct stat sb;
	if (classify(d, &sb) < 0)
		return -1;
	if (sb.st_mode && confine_append_only())
		return sp_err("%s: exists, and this key may only add new files (refused by serve "
			      "--append-only); push a new overlay on top of it instead: sparsync copy "
			      "SRC HOST:NEW.qcow2 --backing NAME", d->path);
	if (S_ISBLK(sb.st_mode))
		return open_device(d);
	if (o->dry_run && S_ISREG(sb.st_mode) && undo_pending(d->real_path))
		return sp_err("%s: an update of it was interrupted; 'sparsync recover %s' puts the "
			      "previous image back (a dry run changes nothing)", d->path, d->path);
	if (!o->dry_run)
		replace_sweep(d->real_path);
	if (S_ISREG(sb.st_mode) && !o->dry_run) {
		/* An interrupted update left a journal: put yesterday's image back
		 * before anything else looks at it. */
		bool recovered;
		if (undo_recover(d->real_path, d->path, &recovered) < 0)
			return -1;
		if (recovered)
			sp_warn("%s: an interrupted update was rolled back to the previous image",
				d->path);
		d->existing = image_detect_path(d->real_path);
	}
	if (S_ISREG(sb.st_mode) && o->dry_run)
		d->existing = image_detect_path(d->real_path);
	if (S_ISREG(sb.st_mode) && guard(d) < 0)
		return -1;
	/* Never raw bytes into a .vmdk, nor over a vmdk container, unless -O
	 * says that is what the user wants. */
	const char *ext = image_foreign_extension(d->path);
	const char *held = d->guard_fd >= 0 ? image_foreign_format(d->guard_fd) : NULL;
	if (o->out_fmt == FMT_AUTO && (ext || held))
		return sp_err("%s: %s a %s image, which sparsync does not write; give -O raw or -O "
			      "qcow2 to write one under this name anyway", d->path,
			      held ? "is" : "is named as", held ? held : ext);
	if (o->create && o->create->backing)
		return open_backing(d);
	d->mode = DEST_NEW;
	enum image_format fmt = image_output_format(o->out_fmt, d->path, d->existing, FMT_AUTO);
	if (!o->update || d->existing == FMT_AUTO || d->existing != fmt)
		return 0;
	/* The image's own locks replace the guard's (two open files of ours
	 * would see each other's). */
	unguard(d);
	struct image *img = image_open(d->real_path, fmt, IMAGE_RDWR);
	if (!img) {
		if (fmt != FMT_QCOW2)
			return -1;
		return not_updatable(d) < 0 ? -1 : guard(d);
	}
	if (wants_new_layout(o->create, img)) {
		image_close(img);
		return guard(d);
	}
	image_set_name(img, d->path);
	d->img = img;
	d->mode = DEST_UPDATE;
	if (!o->inplace && !o->dry_run) {
		if (!(d->undo = undo_begin(d->real_path, d->path)))
			return -1;
		img->undo = d->undo;
	}
	return 0;
}

/* The digest file: its path when one is kept for this kind of DST, and
 * for an update, DST's hashes from it when it is valid. */
static int open_digest(struct dest *d)
{
	if (!d->o.digest || (d->mode != DEST_NEW && d->mode != DEST_UPDATE) || d->rbd)
		return 0;
	if (!(d->digest_path = digest_path_for(d->real_path, d->o.digest_file)))
		return sp_err("%s: out of memory", d->path);
	if (d->mode != DEST_UPDATE)
		return 0;
	const char *why = NULL;
	int rc = digest_load(d->digest_path, d->img, &d->map, &d->digest_info, &why);
	if (rc < 0)
		return -1;
	if (rc == 1)
		d->map_ready = d->map_knows_dest = d->digest_loaded = true;
	d->digest_why = rc == 1 ? "used" : why;
	return 0;
}

int dest_open(struct dest *d, const char *path, const struct dest_opts *o)
{
	memset(d, 0, sizeof *d);
	if (open_kind(d, path, o) < 0)
		return -1;
	return open_digest(d);
}

uint32_t dest_min_unit(const struct dest *d)
{
	if (d->mode == DEST_OVERLAY || (d->mode == DEST_NEW && d->o.create && d->o.create->cluster_size))
		return d->o.create && d->o.create->cluster_size ? d->o.create->cluster_size : 65536;
	const struct image *img = dest_known_image(d);
	if (img && img->format == FMT_QCOW2)
		return img->granularity;
	return SYNC_UNIT_RAW;
}

const struct unit_map *dest_digest_map(const struct dest *d)
{
	return d->digest_loaded ? &d->map : NULL;
}

struct unit_map *dest_map_to_fill(struct dest *d, uint32_t unit)
{
	if (!d->digest_path || d->map_ready)
		return NULL;
	struct image *img = dest_known_image(d);
	unit_map_init(&d->map, img ? img->size : 0, unit);
	d->map_ready = d->map_knows_dest = true;
	return &d->map;
}

struct image *dest_known_image(const struct dest *d)
{
	switch (d->mode) {
	case DEST_UPDATE: return d->img;
	case DEST_OVERLAY: return d->backing;
	case DEST_DEVICE: return d->o.target_is_zero ? NULL : d->img;
	default: return NULL;
	}
}

static int human_size_err(const struct dest *d, uint64_t have, uint64_t need)
{
	char a[32], b[32];
	return sp_err("%s: %s is too small: it holds %s (%llu bytes), the source %s (%llu "
		      "bytes); nothing was written", d->path,
		      d->nbd ? "the NBD export" : d->rbd ? "the RBD image" : "device", human_bytes(have, a, sizeof a),
		      (unsigned long long)have, human_bytes(need, b, sizeof b),
		      (unsigned long long)need);
}

bool dest_wants_data_size(const struct dest *d)
{
	return d->o.space_check && d->mode != DEST_DEVICE && !d->rbd;
}

/* Refuse early, before a byte is written, when the filesystem holding DST
 * cannot take what the copy will write: the source's data (plus qcow2
 * tables: at most 8 bytes of L2 and 2 of refcount per 512-byte cluster,
 * 1/51 of it, and a MiB of headers). An update needs room for data beyond
 * what DST already allocates, plus its undo journal. The journal holds the
 * old contents of what the update overwrites, which is not known before
 * comparing; it can never exceed what DST allocates (ranges that read as
 * zeros are journaled as a 32-byte record), so that is what is counted:
 * the same room a rewrite-and-rename (rsync's default) needs, and the
 * check can only refuse a run that could really run out. */
static int check_space(const struct dest *d, uint64_t data)
{
	if (!dest_wants_data_size(d) || data == DEST_DATA_UNKNOWN)
		return 0;
	uint64_t need = data + data / 51 + (1u << 20), journal = 0;
	if (d->mode == DEST_UPDATE) {
		struct stat st;
		uint64_t have = fstat(d->img->fd, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
		need = data > have ? data - have : 0;
		if (d->undo)
			journal = have + have / 16384 + 4096; /* a 32-byte head per 512 KiB and more */
	}
	char *dir = path_dir(d->real_path);
	struct statvfs vfs;
	int ok = dir && statvfs(dir, &vfs) == 0;
	free(dir);
	if (!ok || need + journal == 0)
		return 0; /* no answer: let the write tell */
	/* root may use the blocks the filesystem reserves for it */
	uint64_t avail = (uint64_t)(geteuid() == 0 ? vfs.f_bfree : vfs.f_bavail) * vfs.f_frsize;
	if (avail >= need + journal)
		return 0;
	char a[32], b[32], c[32], e[32];
	if (journal)
		return sp_err("%s: not enough free space: the update needs up to %s (%s of new data, "
			      "up to %s for the undo journal that keeps the old image until the end), "
			      "the filesystem holding it has %s free (--inplace keeps no journal; "
			      "--no-space-check tries anyway)", d->path,
			      human_bytes(need + journal, a, sizeof a), human_bytes(need, c, sizeof c),
			      human_bytes(journal, e, sizeof e), human_bytes(avail, b, sizeof b));
	return sp_err("%s: not enough free space: the copy needs about %s, the filesystem holding "
		      "it has %s free (--no-space-check to try anyway)", d->path,
		      human_bytes(need, a, sizeof a), human_bytes(avail, b, sizeof b));
}

/* The unit map the digest sink keeps current: the one loaded or gathered
 * (resized with DST), else a new one: empty for a new DST; for an update
 * read by the local copy, empty and built as every range goes by. */
static int begin_map(struct dest *d, uint64_t src_size)
{
	d->src_size = src_size;
	if (!d->digest_path)
		return 0;
	/* The map covers DST as it is now (qcow2 rounds its size up). */
	uint64_t size = d->img->size;
	if (d->map_ready) {
		unit_map_resize(&d->map, size);
		return 0;
	}
	uint32_t unit = dest_min_unit(d);
	if (d->mode == DEST_UPDATE && sync_unit_for(d->img, unit, &unit) < 0)
		return -1;
	unit_map_init(&d->map, size, unit);
	d->map_ready = true;
	d->map_knows_dest = d->mode == DEST_NEW;
	return 0;
}

int dest_begin(struct dest *d, enum image_format src_fmt, uint64_t size, uint64_t data)
{
	if (check_space(d, data) < 0)
		return -1;
	if (d->o.dry_run) {
		/* Nothing is created, resized or truncated; the sink counts. */
		d->src_size = size;
		if (d->mode == DEST_DEVICE && d->img->size < size)
			return human_size_err(d, d->img->size, size);
		return 0;
	}
	switch (d->mode) {
	case DEST_DEVICE:
		/* Never truncated: a larger device keeps its tail as it is. */
		return d->img->size < size ? human_size_err(d, d->img->size, size) : 0;
	case DEST_UPDATE:
		if (d->img->size != size && image_resize(d->img, size) < 0)
			return -1;
		return begin_map(d, size);
	case DEST_OVERLAY: {
		struct image_create_opts co = *d->o.create;
		co.backing_format = d->backing->format;
		if (replace_begin(&d->repl, d->real_path, d->path, FMT_QCOW2, size, &co) < 0)
			return -1;
		break;
	}
	case DEST_NEW: {
		if (d->rbd) {
			if (!(d->img = rbd_image_create_temp(d->path, size, &d->rbd_tmp)))
				return -1;
			return begin_map(d, size);
		}
		enum image_format fmt = image_output_format(d->o.out_fmt, d->path, d->existing,
							    src_fmt);
		if (replace_begin(&d->repl, d->real_path, d->path, fmt, size, d->o.create) < 0)
			return -1;
		break;
	}
	}
	d->replacing = true;
	d->img = d->repl.img;
	return begin_map(d, size);
}

static struct sink *plain_sink(struct dest *d, struct sp_stats *st, bool compare)
{
	switch (d->mode) {
	case DEST_OVERLAY:
		backing_sink_init(&d->sink.backing, d->img, d->backing,
				  d->o.create && d->o.create->cluster_size ? d->o.create->cluster_size
									   : 65536, st);
		return &d->sink.backing.base;
	default: {
		/* A new file, or a device the user vouches for, reads as zeros:
		 * nothing to compare, zero ranges need no work. */
		bool fresh = d->mode == DEST_NEW || (d->mode == DEST_DEVICE && d->o.target_is_zero);
		image_sink_init(&d->sink.image, d->img, st, fresh, !fresh && compare);
		d->sink.image.dry = d->o.dry_run;
		return &d->sink.image.base;
	}
	}
}

/* The digest sink in front of inner, when a digest is kept. */
static struct sink *with_digest(struct dest *d, struct sink *inner, struct sp_stats *st)
{
	if (!d->digest_path || !d->map_ready || d->o.dry_run)
		return inner;
	digest_sink_init(&d->dsink, inner, d->img, &d->map, d->src_size, st, d->map_knows_dest);
	d->dsink_on = true;
	return &d->dsink.base;
}

struct sink *dest_sink(struct dest *d, struct sp_stats *st, bool covered)
{
	d->st = st;
	struct sink *inner = plain_sink(d, st, false);
	/* A sender that does not say where its zeros are leaves units we
	 * could only read back: keep no digest then. */
	if (!covered || !d->map_knows_dest)
		return inner;
	return with_digest(d, inner, st);
}

const uint8_t *dest_track_id(const struct dest *d, bool *in_step)
{
	static const uint8_t none[DIGEST_TRACK_ID_SIZE];
	*in_step = d->digest_loaded;
	if (!memcmp(d->digest_info.track_id, none, sizeof none))
		return NULL;
	return d->digest_info.track_id;
}

void dest_set_track_id(struct dest *d, const uint8_t id[DIGEST_TRACK_ID_SIZE])
{
	memcpy(d->track_next, id, DIGEST_TRACK_ID_SIZE);
}

uint32_t dest_granularity(const struct dest *d, enum image_format src_fmt)
{
	if (d->img)
		return d->img->granularity;
	enum image_format f = image_output_format(d->o.out_fmt, d->path, d->existing, src_fmt);
	if (f != FMT_QCOW2)
		return 4096;
	return d->o.create && d->o.create->cluster_size ? d->o.create->cluster_size : 65536;
}

uint32_t dest_unit(const struct dest *d)
{
	if (d->map_ready)
		return d->map.unit;
	return d->img && d->img->granularity > 4096 ? d->img->granularity : 4096;
}

struct sink *dest_local_sink(struct dest *d, struct image *src, struct sp_stats *st,
			     const struct change_map *changed)
{
	d->st = st;
	if (!d->digest_loaded) {
		struct sink *s = plain_sink(d, st, true);
		/* A map built as ranges go by needs all of them. */
		return changed && !d->map_knows_dest ? s : with_digest(d, s, st);
	}
	/* DST is known from its digest: compare hashes, never read DST. */
	sync_table_init(&d->table);
	if (sync_table_from_map(&d->table, &d->map) < 0)
		return NULL;
	struct sink *s = with_digest(d, plain_sink(d, st, false), st);
	sync_filter_init(&d->filter, s, &d->table, src, true, st);
	d->filter_on = true;
	return &d->filter.base;
}

/* After a successful commit: the new digest, or no stale one. */
static void save_digest(struct dest *d)
{
	if (!d->digest_path)
		return;
	bool ok = d->dsink_on && d->dsink.valid && d->map.count <= PROTO_HASHES_TOTAL_MAX;
	struct digest_info info = d->digest_info;
	memcpy(info.track_id, d->track_next, sizeof info.track_id);
	int rc = ok ? digest_save(d->digest_path, d->real_path, &d->map, &info) : 1;
	if (rc < 0)
		sp_warn("%s: the copy is complete, but its digest file could not be saved (%s); "
			"the next run reads the destination", d->path, sp_errmsg());
	if (rc != 0)
		digest_remove(d->digest_path);
}

int dest_commit(struct dest *d)
{
	struct image *img = d->img;
	d->img = NULL;
	if (img && d->st)
		stats_add(d->st->dest_bytes_read, img->bytes_read);
	if (d->o.dry_run)
		return img ? image_close(img) : 0;
	d->digest_info.format = img->format;
	int rc;
	if (d->replacing) {
		d->replacing = false;
		rc = replace_commit(&d->repl);
	} else {
		rc = image_flush(img);
		if (image_close(img) < 0)
			rc = -1;
		if (d->undo) {
			struct undo *u = d->undo;
			d->undo = NULL;
			rc = rc == 0 ? undo_commit(u) : undo_rollback(u);
		}
		if (d->rbd_tmp) {
			if (rc == 0)
				rc = rbd_image_rename(d->rbd_tmp, d->path);
			if (rc < 0)
				rbd_image_remove(d->rbd_tmp);
			free(d->rbd_tmp);
			d->rbd_tmp = NULL;
		}
	}
	if (rc == 0)
		save_digest(d);
	return rc;
}

void dest_abort(struct dest *d)
{
	char saved[1024];
	snprintf(saved, sizeof saved, "%s", sp_errmsg());
	if (d->replacing) {
		d->replacing = false;
		d->img = NULL;
		replace_abort(&d->repl);
	}
	/* Updated in place: the journal puts the old image back; with
	 * --inplace what arrived stays, in a consistent image. */
	image_close(d->img);
	d->img = NULL;
	if (d->undo) {
		undo_rollback(d->undo);
		d->undo = NULL;
	}
	/* A new RBD image never appears under its name half-written. */
	if (d->rbd_tmp) {
		rbd_image_remove(d->rbd_tmp);
		free(d->rbd_tmp);
		d->rbd_tmp = NULL;
	}
	sp_err("%s", saved);
}

void dest_close(struct dest *d)
{
	if (d->replacing || d->img || d->undo || d->rbd_tmp)
		dest_abort(d);
	image_close(d->backing);
	d->backing = NULL;
	unguard(d);
	if (d->filter_on)
		sync_filter_free(&d->filter);
	sync_table_free(&d->table);
	if (d->dsink_on)
		digest_sink_free(&d->dsink);
	if (d->map_ready)
		unit_map_free(&d->map);
	free(d->digest_path);
	d->digest_path = NULL;
	free(d->path);
	free(d->real_path);
	d->path = d->real_path = NULL;
}

const char *dest_how(const struct dest *d)
{
	switch (d->mode) {
	case DEST_UPDATE: return d->o.inplace ? "inplace" : "journal";
	case DEST_OVERLAY: return "overlay";
	case DEST_DEVICE: return d->nbd ? "nbd" : d->rbd ? "rbd" : "device";
	default: return "new";
	}
}

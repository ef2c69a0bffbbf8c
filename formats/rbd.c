/* Ceph RBD images through librbd (formats/rbd.h).
 *
 * Allocation: rbd_diff_iterate2 from no snapshot, without whole_object,
 * lists the extents that exist (with object-map and fast-diff it reads no
 * data to do so); what it does not list, or lists as not existing
 * (discarded), reads as zeros. Reads and writes go through librbd's aio:
 * a request is cut at object boundaries and every piece is in flight at
 * once (the objects live on different OSDs), and the engine runs
 * RBD_IO_DEPTH workers so that many requests are outstanding even on a
 * host with few cores: a cluster's latency, not our CPU, bounds one
 * request. */
#include "rbd.h"

#include "change_map.h"
#include "extent_list.h"

#include "../core/error.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* librados and librbd are loaded when an RBD image is first named, not
 * at start: they are large (a start under valgrind took four times as
 * long with them linked), and a host without Ceph runs everything else. */
#define RADOS_FUNCS(X) X(rados_conf_parse_env) X(rados_conf_read_file) X(rados_conf_set) \
	X(rados_connect) X(rados_create) X(rados_ioctx_create) X(rados_ioctx_destroy) \
	X(rados_shutdown)
#define RBD_FUNCS(X) X(rbd_aio_create_completion) X(rbd_aio_get_return_value) X(rbd_aio_read2) \
	X(rbd_aio_release) X(rbd_aio_wait_for_complete) X(rbd_aio_write2) X(rbd_close) X(rbd_create4) X(rbd_diff_iterate2) X(rbd_flush) \
	X(rbd_get_size) X(rbd_image_options_create) X(rbd_image_spec_list_cleanup) X(rbd_list2) X(rbd_image_options_destroy) \
	X(rbd_image_options_set_uint64) X(rbd_open) X(rbd_open_read_only) \
	X(rbd_remove) X(rbd_rename) X(rbd_snap_create) X(rbd_snap_remove) X(rbd_stat) \
	X(rbd_watchers_list) X(rbd_watchers_list_cleanup) X(rbd_write_zeroes)
#define DECLARE(f) __typeof__(f) *f;
static struct {
	RADOS_FUNCS(DECLARE)
	RBD_FUNCS(DECLARE)
} L;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[512];

static void load(void)
{
	void *rados = dlopen("librados.so.2", RTLD_NOW | RTLD_LOCAL);
	void *rbd = rados ? dlopen("librbd.so.1", RTLD_NOW | RTLD_LOCAL) : NULL;
	if (!rbd) {
		snprintf(load_error, sizeof load_error, "%s", dlerror());
		return;
	}
#define LOOKUP(f)                                                                       \
	if (!*load_error && !(*(void **)&L.f = dlsym(strncmp(#f, "rbd_", 4) ? rados : rbd, #f))) \
		snprintf(load_error, sizeof load_error, "%s", dlerror());
	RADOS_FUNCS(LOOKUP)
	RBD_FUNCS(LOOKUP)
#undef LOOKUP
}

/* 0 when librbd is there to use; -1 with a line saying what is missing. */
static int need_librbd(const char *spec)
{
	pthread_once(&load_once, load);
	if (*load_error)
		return sp_err("%s: RBD images need librbd and librados (Debian: librbd1): %s", spec,
			      load_error);
	return 0;
}

#define RBD_MAP_CHUNK (1ull << 32)   /* allocation asked for at once */
#define RBD_IO_PIECES 16             /* aio requests one call keeps in flight */
#define RBD_IO_DEPTH 8               /* engine workers asked for (qemu-img's -m 8) */
#define RBD_CONNECT_TIMEOUT "30"     /* seconds, unless the options say */
#define RBD_OP_TIMEOUT "120"

struct rbd_spec {
	char *buf;                   /* the spec's text, cut into the fields */
	const char *pool, *image, *snap, *conf, *id;
	const char *keys[32], *vals[32];
	unsigned nopts;
};

struct rbd_priv {
	rados_t cluster;
	rados_ioctx_t io;
	rbd_image_t img;
	bool connected, have_img;    /* cluster and pool; image */
	char *name;                  /* the image's name in its pool */
	bool at_snap;                /* opened at a snapshot: never tracked */
	uint64_t obj_size;           /* the image's object size: pieces end there */
	pthread_mutex_t ext_lock;
	struct extent_list ext;      /* the allocation of one stretch, by kind */
};

bool rbd_spec_is(const char *s)
{
	return strncmp(s, "rbd:", 4) == 0;
}

/* Cut the text at unescaped sep, removing the backslashes (QEMU's "\:"). */
static char *cut(char *s, char sep)
{
	char *w = s;
	for (char *r = s; *r; r++) {
		if (*r == '\\' && r[1]) {
			*w++ = *++r;
			continue;
		}
		if (*r == sep) {
			*w = 0;
			return r + 1;
		}
		*w++ = *r;
	}
	*w = 0;
	return NULL;
}

static int parse_spec(const char *text, struct rbd_spec *sp)
{
	memset(sp, 0, sizeof *sp);
	if (!(sp->buf = strdup(text + 4)))
		return sp_err("%s: out of memory", text);
	char *opts = cut(sp->buf, ':');
	char *name = strchr(sp->buf, '/');
	if (!name || name == sp->buf || !name[1])
		return sp_err("%s: expected rbd:POOL/IMAGE[@SNAP][:conf=FILE][:id=NAME]", text);
	*name++ = 0;
	sp->pool = sp->buf;
	sp->image = name;
	char *at = strchr(name, '@');
	if (at) {
		*at = 0;
		sp->snap = at + 1;
		if (!*sp->snap)
			return sp_err("%s: empty snapshot name", text);
	}
	while (opts && *opts) {
		char *next = cut(opts, ':');
		char *eq = strchr(opts, '=');
		if (!eq)
			return sp_err("%s: option '%s' has no value (KEY=VALUE)", text, opts);
		*eq = 0;
		if (!strcmp(opts, "conf"))
			sp->conf = eq + 1;
		else if (!strcmp(opts, "id"))
			sp->id = eq + 1;
		else if (sp->nopts < sizeof sp->keys / sizeof *sp->keys) {
			sp->keys[sp->nopts] = opts;
			sp->vals[sp->nopts++] = eq + 1;
		} else {
			return sp_err("%s: too many options", text);
		}
		opts = next;
	}
	return 0;
}

/* librados' errno as a reason; a refusal by cephx says where to look. */
static const char *why(int r)
{
	r = r < 0 ? -r : r;
	if (r == EPERM || r == EACCES)
		return "permission denied by the cluster (the Ceph user's caps do not allow it: "
		       "ceph auth get client.NAME)";
	return strerror(r);
}

static int rbd_errno(const char *what, int r)
{
	return sp_err("%s: %s", what, why(r));
}

/* One stretch of the allocation, as extents by kind, gaps as holes. */
struct walk {
	struct extent_list *l;
	uint64_t at;
	bool oom;
};

static int got_extent(uint64_t off, size_t len, int exists, void *arg)
{
	struct walk *w = arg;
	if (off > w->at && extent_list_add(w->l, w->at, off - w->at, EXTENT_HOLE) < 0)
		w->oom = true;
	if (off + len > w->at) {
		uint64_t s = off > w->at ? off : w->at;
		if (extent_list_add(w->l, s, off + len - s, exists ? EXTENT_DATA : EXTENT_HOLE) < 0)
			w->oom = true;
		w->at = off + len;
	}
	return 0;
}

static int refill(struct image *img, uint64_t off)
{
	struct rbd_priv *p = img->priv;
	uint64_t len = img->size - off < RBD_MAP_CHUNK ? img->size - off : RBD_MAP_CHUNK;
	struct walk w = { &p->ext, off, false };
	extent_list_reset(&p->ext);
	int r = L.rbd_diff_iterate2(p->img, NULL, off, len, 1, 0, got_extent, &w);
	if (r < 0)
		return rbd_errno(img->path, r);
	if (w.at < off + len && extent_list_add(&p->ext, w.at, off + len - w.at, EXTENT_HOLE) < 0)
		w.oom = true;
	if (w.oom) {
		extent_list_reset(&p->ext);
		return sp_err("%s: out of memory", img->path);
	}
	return 0;
}

static int rbd_extent(struct image *img, uint64_t off, struct extent *out)
{
	struct rbd_priv *p = img->priv;
	pthread_mutex_lock(&p->ext_lock);
	const struct extent *hit = extent_list_find(&p->ext, off);
	int rc = hit ? 0 : refill(img, off);
	if (rc == 0 && !hit && !(hit = extent_list_find(&p->ext, off)))
		rc = sp_err("%s: no allocation known at %llu", img->path, (unsigned long long)off);
	if (rc == 0)
		*out = (struct extent){ off, hit->offset + hit->length - off, hit->kind };
	pthread_mutex_unlock(&p->ext_lock);
	return rc;
}

/* One read or write as aio requests cut at object boundaries, up to
 * RBD_IO_PIECES in flight; waits for all of them. 0 or -1 with the line. */
static int rbd_io(struct image *img, bool write, char *buf, size_t len, uint64_t off)
{
	struct rbd_priv *p = img->priv;
	rbd_completion_t c[RBD_IO_PIECES];
	size_t want[RBD_IO_PIECES];
	uint64_t at[RBD_IO_PIECES];
	int err = 0;
	uint64_t bad_at = off;
	for (size_t done = 0; done < len && !err;) {
		unsigned n = 0;
		for (; n < RBD_IO_PIECES && done < len; n++) {
			uint64_t o = off + done;
			uint64_t room = p->obj_size - o % p->obj_size;
			size_t piece = len - done < room ? len - done : (size_t)room;
			int r = L.rbd_aio_create_completion(NULL, NULL, &c[n]);
			if (r == 0) {
				r = write ? L.rbd_aio_write2(p->img, o, piece, buf + done, c[n], 0)
					  : L.rbd_aio_read2(p->img, o, piece, buf + done, c[n], 0);
				if (r < 0)
					L.rbd_aio_release(c[n]);
			}
			if (r < 0) {
				err = r;
				bad_at = o;
				break;
			}
			want[n] = piece;
			at[n] = o;
			done += piece;
		}
		for (unsigned i = 0; i < n; i++) {
			L.rbd_aio_wait_for_complete(c[i]);
			ssize_t r = L.rbd_aio_get_return_value(c[i]);
			L.rbd_aio_release(c[i]);
			/* A write completes with 0, a read with its length. */
			if (!err && (r < 0 || (!write && (size_t)r != want[i]))) {
				err = r < 0 ? (int)r : -EIO;
				bad_at = at[i];
			}
		}
	}
	if (err)
		return sp_err("%s: %s at %llu: %s", img->path, write ? "write" : "read",
			      (unsigned long long)bad_at, why(err));
	if (!write)
		__atomic_add_fetch(&img->bytes_read, len, __ATOMIC_RELAXED);
	return 0;
}

static int rbd_img_pread(struct image *img, void *buf, size_t len, uint64_t off)
{
	return rbd_io(img, false, buf, len, off);
}

static int rbd_img_pwrite(struct image *img, const void *buf, size_t len, uint64_t off)
{
	return rbd_io(img, true, (char *)buf, len, off);
}

/* Write-zeroes: RBD deallocates whole objects and zeroes the rest. */
static int rbd_img_zero(struct image *img, uint64_t off, uint64_t len)
{
	struct rbd_priv *p = img->priv;
	for (uint64_t done = 0; done < len;) {
		size_t n = len - done < (1u << 30) ? (size_t)(len - done) : (1u << 30);
		ssize_t r = L.rbd_write_zeroes(p->img, off + done, n, 0, 0);
		if (r < 0)
			return sp_err("%s: write-zeroes at %llu: %s", img->path,
				      (unsigned long long)(off + done), why((int)r));
		done += n;
	}
	return 0;
}

static int rbd_img_flush(struct image *img)
{
	struct rbd_priv *p = img->priv;
	int r = img->writable ? L.rbd_flush(p->img) : 0;
	return r < 0 ? sp_err("%s: flush: %s", img->path, why(r)) : 0;
}

static int rbd_img_resize(struct image *img, uint64_t size)
{
	if (size == img->size)
		return 0;
	return sp_err("%s: an RBD image written in place keeps its size (%llu bytes)", img->path,
		      (unsigned long long)img->size);
}

static int rbd_img_close(struct image *img)
{
	struct rbd_priv *p = img->priv;
	int rc = 0;
	if (p->have_img && L.rbd_close(p->img) < 0)
		rc = sp_err("%s: close failed", img->path);
	if (p->connected) {
		L.rados_ioctx_destroy(p->io);
		L.rados_shutdown(p->cluster);
	}
	pthread_mutex_destroy(&p->ext_lock);
	extent_list_free(&p->ext);
	free(p->name);
	free(p);
	image_free(img);
	return rc;
}

/* What changed since snapshot name: every extent L.rbd_diff_iterate2 lists
 * from it (an upper bound: an object new since then is listed whole, so
 * the sync compares hashes before anything is sent). */
struct since {
	struct change_map *m;
};

static int mark_changed(uint64_t off, size_t len, int exists, void *arg)
{
	(void)exists;
	struct change_map *m = ((struct since *)arg)->m;
	uint64_t end = off + len < m->size ? off + len : m->size;
	for (uint64_t b = off / m->granularity; off < end && b < (end + m->granularity - 1) / m->granularity; b++)
		m->bits[b / 8] |= (uint8_t)(1u << (b % 8));
	return 0;
}

static int rbd_changed_since(struct image *img, const char *snap, struct change_map *out)
{
	struct rbd_priv *p = img->priv;
	memset(out, 0, sizeof *out);
	out->size = img->size;
	out->granularity = 4096;
	out->nbits = (img->size + 4095) / 4096;
	out->enabled = true;
	if (!(out->bits = calloc(out->nbits / 8 + 1, 1)))
		return sp_err("%s: out of memory", img->path);
	struct since s = { out };
	int r = L.rbd_diff_iterate2(p->img, snap, 0, img->size, 1, 0, mark_changed, &s);
	if (r < 0) {
		change_map_free(out);
		if (r == -ENOENT) {
			sp_err("%s: no snapshot '%s' to compare with", img->path, snap);
			return -2;
		}
		return sp_err("%s: changes since %s: %s", img->path, snap, why(r));
	}
	change_map_count(out);
	return 0;
}

/* --track: a snapshot per run (formats/image.h's track_start). Snapshots
 * are made and removed on a handle of their own, opened to write (librbd
 * asks a running VM's client for the exclusive lock for that instant, as
 * `rbd snap create` does); reads stay on the read-only handle. */
static int with_rw_handle(struct image *img, int (*fn)(rbd_image_t, const char *),
			  const char *snap, const char *what)
{
	struct rbd_priv *p = img->priv;
	rbd_image_t h;
	int r = L.rbd_open(p->io, p->name, &h, NULL);
	if (r == 0) {
		r = fn(h, snap);
		L.rbd_close(h);
	}
	return r < 0 ? sp_err("%s: %s snapshot %s: %s", img->path, what, snap, why(r)) : 0;
}

static int rbd_trackable(struct image *img)
{
	struct rbd_priv *p = img->priv;
	if (p->at_snap)
		return sp_err("%s: --track takes snapshots of the image itself; name the image, "
			      "not one of its snapshots", img->path);
	return 0;
}

static int rbd_track_start(struct image *img, const char *new_name)
{
	struct rbd_priv *p = img->priv;
	if (with_rw_handle(img, L.rbd_snap_create, new_name, "creating") < 0)
		return -1;
	/* A read-only handle does not learn of new snapshots: open again, at
	 * the snapshot (nothing is in flight before the copy starts). */
	rbd_image_t at;
	int r = L.rbd_open_read_only(p->io, p->name, &at, new_name);
	if (r < 0) {
		with_rw_handle(img, L.rbd_snap_remove, new_name, "removing");
		return sp_err("%s: reading snapshot %s: %s", img->path, new_name, why(r));
	}
	L.rbd_close(p->img);
	p->img = at;
	uint64_t size;
	if (L.rbd_get_size(p->img, &size) == 0)
		img->size = size;
	pthread_mutex_lock(&p->ext_lock);
	extent_list_reset(&p->ext); /* the allocation is the snapshot's now */
	pthread_mutex_unlock(&p->ext_lock);
	return 0;
}

static void rbd_track_cancel(struct image *img, const char *new_name)
{
	if (with_rw_handle(img, L.rbd_snap_remove, new_name, "removing") < 0)
		sp_warn("%s", sp_errmsg());
}

/* After a complete run: the older snapshot goes (this run's stays). */
static int rbd_rotate(struct image *img, const char *old_name, const char *new_name)
{
	(void)new_name;
	struct rbd_priv *p = img->priv;
	if (!old_name)
		return 0;
	rbd_image_t h;
	int r = L.rbd_open(p->io, p->name, &h, NULL);
	if (r == 0) {
		r = L.rbd_snap_remove(h, old_name);
		L.rbd_close(h);
	}
	if (r < 0 && r != -ENOENT)
		return sp_err("%s: removing snapshot %s: %s", img->path, old_name, why(r));
	return 0;
}

static const struct image_ops rbd_ops = {
	.name = "rbd",
	.extent = rbd_extent,
	.pread = rbd_img_pread,
	.pwrite = rbd_img_pwrite,
	.zero = rbd_img_zero,
	.resize = rbd_img_resize,
	.flush = rbd_img_flush,
	.close = rbd_img_close,
	.dirty_bitmap = rbd_changed_since,
	.bitmap_trackable = rbd_trackable,
	.bitmap_rotate = rbd_rotate,
	.track_start = rbd_track_start,
	.track_cancel = rbd_track_cancel,
};

/* A connection to sp's cluster and pool; on failure nothing is left open.
 * shown: the name messages give. */
static int connect_pool(const char *shown, const struct rbd_spec *sp, rados_t *cluster,
			rados_ioctx_t *io)
{
	int r = L.rados_create(cluster, sp->id);
	if (r < 0)
		return rbd_errno(shown, r);
	r = L.rados_conf_read_file(*cluster, sp->conf);
	if (r < 0 && sp->conf) {
		L.rados_shutdown(*cluster);
		return sp_err("%s: cannot read the Ceph configuration %s: %s", shown, sp->conf,
			      strerror(-r));
	}
	L.rados_conf_parse_env(*cluster, NULL);
	/* No cluster answering is an error after a while, not a hang. */
	L.rados_conf_set(*cluster, "client_mount_timeout", RBD_CONNECT_TIMEOUT);
	L.rados_conf_set(*cluster, "rados_mon_op_timeout", RBD_CONNECT_TIMEOUT);
	/* An OSD that died mid-copy: fail, do not wait forever. */
	L.rados_conf_set(*cluster, "rados_osd_op_timeout", RBD_OP_TIMEOUT);
	int rc = 0;
	for (unsigned i = 0; rc == 0 && i < sp->nopts; i++)
		if ((r = L.rados_conf_set(*cluster, sp->keys[i], sp->vals[i])) < 0)
			rc = sp_err("%s: Ceph option %s: %s", shown, sp->keys[i], strerror(-r));
	if (rc == 0 && (r = L.rados_connect(*cluster)) < 0)
		rc = sp_err("%s: cannot connect to the Ceph cluster: %s", shown, why(r));
	if (rc == 0 && (r = L.rados_ioctx_create(*cluster, sp->pool, io)) < 0)
		rc = sp_err("%s: pool %s: %s", shown, sp->pool,
			    r == -ENOENT ? "no such pool" : why(r));
	if (rc < 0)
		L.rados_shutdown(*cluster);
	return rc;
}

static void sweep_stale(rados_ioctx_t io, const char *pool, const char *image);

/* Another client has the image open (a running VM): its watch is on the
 * image's header, beside ours. */
static int refuse_if_in_use(struct image *img)
{
	struct rbd_priv *p = img->priv;
	rbd_image_watcher_t w[16];
	size_t n = sizeof w / sizeof *w;
	int r = L.rbd_watchers_list(p->img, w, &n);
	if (r < 0 && r != -ERANGE)
		return rbd_errno(img->path, r);
	if (r == 0)
		L.rbd_watchers_list_cleanup(w, n);
	if (r == -ERANGE || n > 1)
		return sp_err("%s: the RBD image is open in another client (a running VM?); refusing "
			      "to write to it", img->path);
	return 0;
}

struct image *rbd_image_open(const char *spec, bool writable)
{
	if (need_librbd(spec) < 0)
		return NULL;
	struct rbd_spec sp;
	struct rbd_priv *p = calloc(1, sizeof *p);
	struct image *img = p ? image_alloc(&rbd_ops, spec, -1, FMT_RAW) : NULL;
	if (!img) {
		free(p);
		sp_err("%s: out of memory", spec);
		return NULL;
	}
	img->priv = p;
	pthread_mutex_init(&p->ext_lock, NULL);
	int r;
	if (parse_spec(spec, &sp) < 0 || connect_pool(spec, &sp, &p->cluster, &p->io) < 0)
		goto fail;
	p->connected = true;
	if (writable && sp.snap) {
		sp_err("%s: a snapshot cannot be written", spec);
		goto fail;
	}
	r = writable ? L.rbd_open(p->io, sp.image, &p->img, NULL)
		     : L.rbd_open_read_only(p->io, sp.image, &p->img, sp.snap);
	if (r < 0) {
		if (r == -ENOENT)
			sp_err("%s: %s", spec, sp.snap ? "no such image or snapshot" : "no such image");
		else
			rbd_errno(spec, r);
		goto fail;
	}
	p->have_img = true;
	p->at_snap = sp.snap != NULL;
	if (!(p->name = strdup(sp.image))) {
		sp_err("%s: out of memory", spec);
		goto fail;
	}
	uint64_t size;
	if ((r = L.rbd_get_size(p->img, &size)) < 0) {
		rbd_errno(spec, r);
		goto fail;
	}
	rbd_image_info_t info;
	if ((r = L.rbd_stat(p->img, &info, sizeof info)) < 0) {
		rbd_errno(spec, r);
		goto fail;
	}
	p->obj_size = info.obj_size ? info.obj_size : 4u << 20;
	img->size = size;
	img->io_depth = RBD_IO_DEPTH;
	img->writable = writable;
	if (writable && refuse_if_in_use(img) < 0)
		goto fail;
	if (writable)
		sweep_stale(p->io, sp.pool, sp.image);
	free(sp.buf);
	return img;
fail:
	free(sp.buf);
	rbd_img_close(img);
	return NULL;
}

/* A connection to spec's pool, for operations on images by name. */
struct pool {
	struct rbd_spec sp;
	rados_t cluster;
	rados_ioctx_t io;
	bool open;
};

static void pool_close(struct pool *p)
{
	if (p->open) {
		L.rados_ioctx_destroy(p->io);
		L.rados_shutdown(p->cluster);
	}
	free(p->sp.buf);
	memset(p, 0, sizeof *p);
}

static int pool_open(struct pool *pl, const char *spec)
{
	memset(pl, 0, sizeof *pl);
	if (need_librbd(spec) < 0)
		return -1;
	if (parse_spec(spec, &pl->sp) < 0 || connect_pool(spec, &pl->sp, &pl->cluster, &pl->io) < 0) {
		pool_close(pl);
		return -1;
	}
	pl->open = true;
	return 0;
}

int rbd_image_exists(const char *spec)
{
	struct pool pl;
	if (pool_open(&pl, spec) < 0)
		return -1;
	rbd_image_t img;
	int r = L.rbd_open_read_only(pl.io, pl.sp.image, &img, NULL);
	if (r == 0)
		L.rbd_close(img);
	int rc = r == 0 ? 1 : r == -ENOENT ? 0 : rbd_errno(spec, r);
	pool_close(&pl);
	return rc;
}

/* "rbd:POOL/NAME" plus spec's options, malloc'd. */
static char *spec_named(const char *spec, const char *pool, const char *name)
{
	const char *opts = strchr(spec + 4, ':');
	size_t len = strlen(pool) + strlen(name) + (opts ? strlen(opts) : 0) + 8;
	char *s = malloc(len);
	if (s)
		snprintf(s, len, "rbd:%s/%s%s", pool, name, opts ? opts : "");
	return s;
}

/* Does no client have image `name` open? (Asked before rbd_remove: on an
 * image whose exclusive lock a dead client still holds, removal waits for
 * that client to release it.) A read-only open sets no watch of its own. */
static bool unwatched(rados_ioctx_t io, const char *name)
{
	rbd_image_t img;
	if (L.rbd_open_read_only(io, name, &img, NULL) < 0)
		return false;
	rbd_image_watcher_t w[4];
	size_t n = sizeof w / sizeof *w;
	int r = L.rbd_watchers_list(img, w, &n);
	if (r == 0)
		L.rbd_watchers_list_cleanup(w, n);
	L.rbd_close(img);
	return r == 0 && n == 0;
}

/* Temporaries of image `base` (.BASE.sparsync-XXXXXX) that no client has
 * open: a run killed while writing one. an image that is being watched (a live
 * run's temporary) is never touched; a dead client's watch lapses after osd_client_watch_timeout (30 s), after
 * which the next run on the same destination removes its temporary. */
static void sweep_stale(rados_ioctx_t io, const char *pool, const char *image)
{
	char prefix[512];
	int n = snprintf(prefix, sizeof prefix, ".%s.sparsync-", image);
	if (n < 0 || (size_t)n >= sizeof prefix)
		return;
	size_t max = 64;
	rbd_image_spec_t *list = NULL;
	int r = -ERANGE;
	while (r == -ERANGE && max <= (1u << 20)) {
		free(list);
		if (!(list = calloc(max, sizeof *list)))
			return;
		size_t got = max;
		r = L.rbd_list2(io, list, &got);
		if (r == -ERANGE)
			max = got > max ? got : max * 2;
		else
			max = got;
	}
	if (r >= 0) {
		for (size_t i = 0; i < max; i++) {
			const char *name = list[i].name;
			if (name && strncmp(name, prefix, (size_t)n) == 0 && strlen(name) == (size_t)n + 6 &&
			    unwatched(io, name) && L.rbd_remove(io, name) == 0)
				sp_warn("rbd:%s/%s: removed a temporary image left by an interrupted run",
					pool, name);
		}
		L.rbd_image_spec_list_cleanup(list, max);
	}
	free(list);
}

struct image *rbd_image_create_temp(const char *spec, uint64_t size, char **tmp_spec)
{
	struct pool pl;
	*tmp_spec = NULL;
	if (pool_open(&pl, spec) < 0)
		return NULL;
	sweep_stale(pl.io, pl.sp.pool, pl.sp.image);
	char name[512];
	rbd_image_options_t opts;
	L.rbd_image_options_create(&opts);
	/* The features fast diffs need, unless the spec says otherwise
	 * (:rbd_default_features=...), which librbd then applies itself. */
	bool told = false;
	for (unsigned i = 0; i < pl.sp.nopts; i++)
		told |= !strcmp(pl.sp.keys[i], "rbd_default_features");
	if (!told)
		L.rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES,
					     RBD_FEATURE_LAYERING | RBD_FEATURE_EXCLUSIVE_LOCK |
					     RBD_FEATURE_OBJECT_MAP | RBD_FEATURE_FAST_DIFF);
	int r = -EEXIST;
	for (int tries = 0; r == -EEXIST && tries < 20; tries++) {
		unsigned rnd = 0;
		if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
			rnd = (unsigned)tries;
		snprintf(name, sizeof name, ".%s.sparsync-%06x", pl.sp.image, rnd & 0xffffff);
		r = L.rbd_create4(pl.io, name, size, opts);
	}
	L.rbd_image_options_destroy(opts);
	if (r < 0) {
		sp_err("%s: cannot create the image: %s", spec, why(r));
		pool_close(&pl);
		return NULL;
	}
	char *t = spec_named(spec, pl.sp.pool, name);
	pool_close(&pl);
	struct image *img = t ? rbd_image_open(t, true) : NULL;
	if (!img) {
		if (t)
			rbd_image_remove(t);
		free(t);
		return NULL;
	}
	image_set_name(img, spec);
	*tmp_spec = t;
	return img;
}

int rbd_image_rename(const char *tmp_spec, const char *spec)
{
	struct pool a, b;
	if (pool_open(&a, tmp_spec) < 0)
		return -1;
	if (parse_spec(spec, &b.sp) < 0) {
		pool_close(&a);
		return -1;
	}
	int r = L.rbd_rename(a.io, a.sp.image, b.sp.image);
	free(b.sp.buf);
	pool_close(&a);
	if (r == -EEXIST)
		return sp_err("%s: an image of that name appeared while it was being written; the "
			      "copy was not put in its place", spec);
	return r < 0 ? sp_err("%s: rename from the temporary image: %s", spec, why(r)) : 0;
}

void rbd_image_remove(const char *tmp_spec)
{
	struct pool pl;
	if (pool_open(&pl, tmp_spec) < 0)
		return;
	L.rbd_remove(pl.io, pl.sp.image);
	pool_close(&pl);
}

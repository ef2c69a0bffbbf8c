/* NBD exports through libnbd (formats/nbd.h).
 *
 * Requests in flight: libnbd's synchronous calls take the handle's lock
 * for the whole round trip, so two worker threads would wait on each
 * other. Instead every request is issued with the asynchronous API from
 * the worker that needs it, and one I/O thread per connection drives the
 * socket (poll + nbd_aio_notify_*), woken by an eventfd when a request is
 * queued: as many requests are in flight as workers ask for. When the
 * server advertises multi-conn (its connections see each other's writes
 * and flushes), requests are spread over several connections, as nbdcopy
 * does.
 *
 * A request is complete when libnbd calls its completion's free function:
 * that happens exactly once, also when the request could not even be
 * queued, so the worker's stack frame is never used after it returns. */
#include "nbd.h"

#include "change_map.h"
#include "extent_list.h"

#include "../core/error.h"

#include <errno.h>
#include <libnbd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NBD_MAX_CONNS 4
#define NBD_REQUEST_MAX (32u << 20)      /* the largest read or write we send */
#define NBD_ZERO_CHUNK (1u << 30)        /* write-zeroes: below 4 GiB, which not all servers take */
#define NBD_STATUS_CHUNK (1ull << 30)    /* block status asked for at once */
#define DIRTY_CONTEXT "qemu:dirty-bitmap:"

struct conn {
	struct nbd_handle *h;
	pthread_t io;
	bool io_started;
	int wake;               /* eventfd: a request was queued, or stop */
	atomic_bool stop;
	atomic_bool stalled;    /* --timeout passed with requests unanswered */
};

static unsigned stall_timeout_s;

void nbd_set_timeout(unsigned seconds)
{
	stall_timeout_s = seconds;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct nbd_priv {
	struct conn conn[NBD_MAX_CONNS];
	unsigned nconn;
	atomic_uint next;       /* round robin over the connections */
	uint64_t max_req;       /* largest read/write, a multiple of min_block */
	uint32_t min_block;
	bool can_zero, can_flush;
	/* The extents of the last block status reply, merged by kind. */
	pthread_mutex_t ext_lock;
	struct extent_list ext;
};

enum op { OP_READ, OP_WRITE, OP_ZERO, OP_FLUSH, OP_STATUS };

struct req {
	pthread_mutex_t m;
	pthread_cond_t c;
	bool freed;
	int err;
};

/* Extents collected for one context, with the server's flags. */
struct nbd_ext {
	uint64_t offset, length;
	uint32_t flags;
};

struct status {
	const char *ctx;
	struct nbd_ext *ext;
	size_t n, cap;
	bool oom;
	uint64_t covered;       /* where the reply ends */
};

bool nbd_uri_is(const char *s)
{
	static const char *const schemes[] = { "nbd://", "nbds://", "nbd+unix://", "nbds+unix://",
					       "nbd+vsock://", "nbds+vsock://" };
	for (size_t i = 0; i < sizeof schemes / sizeof *schemes; i++)
		if (!strncmp(s, schemes[i], strlen(schemes[i])))
			return true;
	return false;
}

static void *io_loop(void *arg)
{
	struct conn *c = arg;
	int64_t heard = now_ms(); /* the server's last sign of life, or idle */
	for (;;) {
		int inflight = nbd_aio_in_flight(c->h);
		if (atomic_load(&c->stop) && inflight <= 0)
			break;
		unsigned dir = nbd_aio_get_direction(c->h);
		int fd = dir ? nbd_aio_get_fd(c->h) : -1;
		struct pollfd pf[2] = { { fd, 0, 0 }, { c->wake, POLLIN, 0 } };
		if (dir & LIBNBD_AIO_DIRECTION_READ)
			pf[0].events |= POLLIN;
		if (dir & LIBNBD_AIO_DIRECTION_WRITE)
			pf[0].events |= POLLOUT;
		int n = poll(pf, 2, stall_timeout_s ? 1000 : -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[1].revents & POLLIN) {
			uint64_t v;
			if (read(c->wake, &v, sizeof v) < 0) {
				/* nothing to do: it only woke us */
			}
		}
		short ev = pf[0].revents;
		if (ev || inflight <= 0)
			heard = now_ms();
		if ((dir & LIBNBD_AIO_DIRECTION_READ) && (ev & (POLLIN | POLLHUP | POLLERR)))
			nbd_aio_notify_read(c->h);
		else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (ev & (POLLOUT | POLLHUP | POLLERR)))
			nbd_aio_notify_write(c->h);
		/* A silent server: cut the connection under libnbd, which then
		 * fails every request in flight (their callbacks see the error). */
		if (stall_timeout_s && inflight > 0 && fd >= 0 && !atomic_load(&c->stalled) &&
		    now_ms() - heard >= (int64_t)stall_timeout_s * 1000) {
			atomic_store(&c->stalled, true);
			shutdown(fd, SHUT_RDWR);
		}
	}
	return NULL;
}

static void wake(struct conn *c)
{
	uint64_t one = 1;
	if (write(c->wake, &one, sizeof one) < 0) {
		/* the counter is full: the thread is awake anyway */
	}
}

static int req_done(void *ud, int *error)
{
	struct req *r = ud;
	if (*error)
		r->err = *error;
	return 1; /* retire the command */
}

static void req_free(void *ud)
{
	struct req *r = ud;
	pthread_mutex_lock(&r->m);
	r->freed = true;
	pthread_cond_signal(&r->c);
	pthread_mutex_unlock(&r->m);
}

static int got_extents(void *ud, const char *ctx, uint64_t off, uint32_t *e, size_t n, int *error)
{
	struct status *s = ud;
	if (strcmp(ctx, s->ctx) != 0 || *error)
		return 0;
	for (size_t i = 0; i + 1 < n; i += 2) {
		if (e[i] == 0)
			continue;
		if (s->n == s->cap) {
			size_t cap = s->cap ? s->cap * 2 : 64;
			struct nbd_ext *ne = realloc(s->ext, cap * sizeof *ne);
			if (!ne) {
				s->oom = true;
				return 0;
			}
			s->ext = ne;
			s->cap = cap;
		}
		s->ext[s->n++] = (struct nbd_ext){ off, e[i], e[i + 1] };
		off += e[i];
	}
	s->covered = off;
	return 0;
}

/* One request on one of the connections; returns when it is complete. */
static int run(struct image *img, enum op op, void *buf, uint64_t len, uint64_t off,
	       struct status *st)
{
	static const char *const what[] = { "read", "write", "write-zeroes", "flush",
					    "block status" };
	struct nbd_priv *p = img->priv;
	struct conn *c = &p->conn[atomic_fetch_add(&p->next, 1) % p->nconn];
	struct req r = { .freed = false, .err = 0 };
	pthread_mutex_init(&r.m, NULL);
	pthread_cond_init(&r.c, NULL);
	nbd_completion_callback cb = { .callback = req_done, .user_data = &r, .free = req_free };
	int64_t cookie = -1;
	switch (op) {
	case OP_READ: cookie = nbd_aio_pread(c->h, buf, len, off, cb, 0); break;
	case OP_WRITE: cookie = nbd_aio_pwrite(c->h, buf, len, off, cb, 0); break;
	/* No NO_HOLE flag: the server may deallocate, as long as the range
	 * reads as zeros (write-zeroes guarantees that; trim does not). */
	case OP_ZERO: cookie = nbd_aio_zero(c->h, len, off, cb, 0); break;
	case OP_FLUSH: cookie = nbd_aio_flush(c->h, cb, 0); break;
	case OP_STATUS: {
		nbd_extent_callback ecb = { .callback = got_extents, .user_data = st };
		cookie = nbd_aio_block_status(c->h, len, off, ecb, cb, 0);
		break;
	}
	}
	int rc = 0;
	if (cookie < 0) {
		/* libnbd has called free already: nothing to wait for. A
		 * handle the server's end already closed says only "invalid
		 * state": say what happened. */
		if (nbd_aio_is_closed(c->h) > 0 || nbd_aio_is_dead(c->h) > 0)
			rc = sp_err("%s: NBD %s failed: the server closed the connection", img->path,
				    what[op]);
		else
			rc = sp_err("%s: NBD %s: %s", img->path, what[op], nbd_get_error());
	} else {
		wake(c);
		pthread_mutex_lock(&r.m);
		while (!r.freed)
			pthread_cond_wait(&r.c, &r.m);
		pthread_mutex_unlock(&r.m);
		if (r.err && atomic_load(&c->stalled))
			rc = sp_err("%s: the NBD server answered nothing for %u s (--timeout)",
				    img->path, stall_timeout_s);
		else if (r.err)
			rc = sp_err("%s: NBD %s of %llu bytes at offset %llu failed: %s", img->path,
				    what[op], (unsigned long long)len, (unsigned long long)off,
				    strerror(r.err));
	}
	pthread_cond_destroy(&r.c);
	pthread_mutex_destroy(&r.m);
	return rc;
}

static enum extent_kind kind_of(uint32_t flags)
{
	if ((flags & LIBNBD_STATE_HOLE) && (flags & LIBNBD_STATE_ZERO))
		return EXTENT_HOLE;
	if (flags & LIBNBD_STATE_ZERO)
		return EXTENT_ZERO;
	/* Data, or a hole that does not promise zeros: must be read. */
	return EXTENT_DATA;
}

/* The extents from off on, from the server, merged by kind. */
static int refill(struct image *img, uint64_t off)
{
	struct nbd_priv *p = img->priv;
	uint64_t len = img->size - off < NBD_STATUS_CHUNK ? img->size - off : NBD_STATUS_CHUNK;
	struct status st = { .ctx = LIBNBD_CONTEXT_BASE_ALLOCATION };
	int rc = run(img, OP_STATUS, NULL, len, off, &st);
	if (rc == 0 && st.oom)
		rc = sp_err("%s: out of memory", img->path);
	if (rc == 0 && (st.n == 0 || st.ext[0].offset != off))
		rc = sp_err("%s: the NBD server answered block status at %llu with no extent there",
			    img->path, (unsigned long long)off);
	extent_list_reset(&p->ext);
	for (size_t i = 0; rc == 0 && i < st.n && st.ext[i].offset < img->size; i++) {
		uint64_t n = st.ext[i].length;
		if (n > img->size - st.ext[i].offset)
			n = img->size - st.ext[i].offset;
		if (extent_list_add(&p->ext, st.ext[i].offset, n, kind_of(st.ext[i].flags)) < 0)
			rc = sp_err("%s: out of memory", img->path);
	}
	if (rc < 0)
		extent_list_reset(&p->ext);
	free(st.ext);
	return rc;
}

static int nbd_extent(struct image *img, uint64_t off, struct extent *out)
{
	struct nbd_priv *p = img->priv;
	if (img->alloc_unknown) {
		*out = (struct extent){ off, img->size - off, EXTENT_DATA };
		return 0;
	}
	pthread_mutex_lock(&p->ext_lock);
	const struct extent *hit = extent_list_find(&p->ext, off);
	int rc = hit ? 0 : refill(img, off);
	if (rc == 0 && !hit && !(hit = extent_list_find(&p->ext, off)))
		rc = sp_err("%s: the NBD server's block status does not cover offset %llu", img->path,
			    (unsigned long long)off);
	if (rc == 0)
		*out = (struct extent){ off, hit->offset + hit->length - off, hit->kind };
	pthread_mutex_unlock(&p->ext_lock);
	return rc;
}

/* Reads and writes in pieces the server takes. */
static int chunked(struct image *img, enum op op, void *buf, size_t len, uint64_t off)
{
	struct nbd_priv *p = img->priv;
	for (size_t done = 0; done < len;) {
		size_t n = len - done < p->max_req ? len - done : p->max_req;
		if (run(img, op, (char *)buf + done, n, off + done, NULL) < 0)
			return -1;
		done += n;
	}
	return 0;
}

static int nbd_img_pread(struct image *img, void *buf, size_t len, uint64_t off)
{
	if (chunked(img, OP_READ, buf, len, off) < 0)
		return -1;
	__atomic_add_fetch(&img->bytes_read, len, __ATOMIC_RELAXED);
	return 0;
}

static int nbd_img_pwrite(struct image *img, const void *buf, size_t len, uint64_t off)
{
	return chunked(img, OP_WRITE, (void *)buf, len, off);
}

static int nbd_img_zero(struct image *img, uint64_t off, uint64_t len)
{
	struct nbd_priv *p = img->priv;
	if (!p->can_zero) {
		/* A server without write-zeroes gets zeros written. */
		static const char zeros[1 << 20];
		for (uint64_t done = 0; done < len;) {
			size_t n = len - done < sizeof zeros ? (size_t)(len - done) : sizeof zeros;
			if (chunked(img, OP_WRITE, (void *)zeros, n, off + done) < 0)
				return -1;
			done += n;
		}
		return 0;
	}
	uint64_t chunk = NBD_ZERO_CHUNK - NBD_ZERO_CHUNK % p->min_block;
	for (uint64_t done = 0; done < len;) {
		uint64_t n = len - done < chunk ? len - done : chunk;
		if (run(img, OP_ZERO, NULL, n, off + done, NULL) < 0)
			return -1;
		done += n;
	}
	return 0;
}

static int nbd_img_resize(struct image *img, uint64_t new_size)
{
	if (new_size == img->size)
		return 0;
	return sp_err("%s: an NBD export has the size its server gives it (%llu bytes); it "
		      "cannot become %llu", img->path, (unsigned long long)img->size,
		      (unsigned long long)new_size);
}

static int nbd_img_flush(struct image *img)
{
	struct nbd_priv *p = img->priv;
	if (!img->writable || !p->can_flush)
		return 0;
	/* Multi-conn servers make a flush on one connection cover the
	 * writes of all; otherwise there is one connection. */
	return run(img, OP_FLUSH, NULL, 0, 0, NULL);
}

static void conn_close(struct conn *c)
{
	if (c->io_started) {
		atomic_store(&c->stop, true);
		wake(c);
		pthread_join(c->io, NULL);
	}
	if (c->wake >= 0)
		close(c->wake);
	if (c->h) {
		if (!nbd_aio_is_dead(c->h) && !nbd_aio_is_closed(c->h))
			nbd_shutdown(c->h, 0);
		nbd_close(c->h);
	}
	c->h = NULL;
	c->wake = -1;
	c->io_started = false;
}

static void close_conns(struct image *img)
{
	struct nbd_priv *p = img->priv;
	for (unsigned i = 0; i < p->nconn; i++)
		conn_close(&p->conn[i]);
	p->nconn = 0;
}

static int nbd_img_close(struct image *img)
{
	struct nbd_priv *p = img->priv;
	close_conns(img);
	pthread_mutex_destroy(&p->ext_lock);
	extent_list_free(&p->ext);
	free(p);
	image_free(img);
	return 0;
}

static struct nbd_handle *connect_one(const char *uri, const char *extra_ctx)
{
	struct nbd_handle *h = nbd_create();
	if (!h) {
		sp_err("%s: %s", uri, nbd_get_error());
		return NULL;
	}
	/* The URI is the user's own argument, like a path: files it names
	 * (tls-psk-file, tls-certificates) may be read. */
	if (nbd_set_uri_allow_local_file(h, true) < 0 ||
	    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
	    (extra_ctx && nbd_add_meta_context(h, extra_ctx) < 0) || nbd_connect_uri(h, uri) < 0) {
		sp_err("%s: cannot connect to the NBD export: %s", uri, nbd_get_error());
		nbd_close(h);
		return NULL;
	}
	return h;
}

static int open_conns(struct image *img, const char *extra_ctx);
static void close_conns(struct image *img);

/* What qemu:dirty-bitmap:NAME marks dirty. A server may take one client
 * at a time (qemu-nbd's default --shared=1), so the context is not asked
 * for on a connection of its own: ours are made again with it. */
static int nbd_dirty_bitmap(struct image *img, const char *name, struct change_map *out)
{
	char ctx[512];
	if (snprintf(ctx, sizeof ctx, "%s%s", DIRTY_CONTEXT, name) >= (int)sizeof ctx)
		return sp_err("%s: bitmap name too long", img->path);
	struct nbd_priv *p = img->priv;
	close_conns(img);
	if (open_conns(img, ctx) < 0)
		return -1;
	int rc = 0;
	if (nbd_can_meta_context(p->conn[0].h, ctx) != 1)
		rc = sp_err("%s: the NBD server offers no dirty bitmap '%s' (meta context %s; "
			    "qemu-nbd exports one with -B %s)", img->path, name, ctx, name);
	struct status st = { .ctx = ctx };
	for (uint64_t off = 0; rc == 0 && off < img->size;) {
		uint64_t len = img->size - off < NBD_STATUS_CHUNK ? img->size - off : NBD_STATUS_CHUNK;
		st.covered = off;
		rc = run(img, OP_STATUS, NULL, len, off, &st);
		if (rc == 0 && st.oom)
			rc = sp_err("%s: out of memory", img->path);
		else if (rc == 0 && st.covered <= off)
			rc = sp_err("%s: the NBD server's %s reply does not advance", img->path, ctx);
		off = st.covered;
	}
	/* The bitmap's unit: the largest power of two (64 KiB at most) that
	 * every dirty extent starts and ends on, so that nothing more than
	 * the server marked is read. */
	uint64_t g = 65536;
	for (size_t i = 0; rc == 0 && i < st.n; i++) {
		const struct nbd_ext *e = &st.ext[i];
		uint64_t end = e->offset + e->length;
		if (!(e->flags & 1))
			continue;
		while (g > 512 && (e->offset % g || (end % g && end < img->size)))
			g /= 2;
	}
	memset(out, 0, sizeof *out);
	if (rc == 0) {
		out->size = img->size;
		out->granularity = g;
		out->nbits = (img->size + g - 1) / g;
		out->enabled = true;
		if (!(out->bits = calloc(out->nbits / 8 + 1, 1)))
			rc = sp_err("%s: out of memory", img->path);
	}
	for (size_t i = 0; rc == 0 && i < st.n; i++) {
		const struct nbd_ext *e = &st.ext[i];
		if (!(e->flags & 1) || e->offset >= img->size)
			continue;
		uint64_t end = e->offset + e->length < img->size ? e->offset + e->length : img->size;
		for (uint64_t b = e->offset / g; b < (end + g - 1) / g; b++)
			out->bits[b / 8] |= (uint8_t)(1u << (b % 8));
	}
	free(st.ext);
	if (rc < 0) {
		change_map_free(out);
		return -1;
	}
	change_map_count(out);
	return 0;
}

static const struct image_ops nbd_ops = {
	.name = "nbd",
	.extent = nbd_extent,
	.pread = nbd_img_pread,
	.pwrite = nbd_img_pwrite,
	.zero = nbd_img_zero,
	.resize = nbd_img_resize,
	.flush = nbd_img_flush,
	.close = nbd_img_close,
	.dirty_bitmap = nbd_dirty_bitmap,
};

static int start_conn(struct conn *c)
{
	atomic_store(&c->stop, false);
	if ((c->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
		return -1;
	if (pthread_create(&c->io, NULL, io_loop, c) != 0)
		return -1;
	c->io_started = true;
	return 0;
}

/* The connections, each with its I/O thread: one, or when the server
 * advertises multi-conn one per core up to NBD_MAX_CONNS. */
static int open_conns(struct image *img, const char *extra_ctx)
{
	struct nbd_priv *p = img->priv;
	struct nbd_handle *h = connect_one(img->path, extra_ctx);
	if (!h)
		return -1;
	p->conn[0].h = h;
	p->nconn = 1;
	int64_t size = nbd_get_size(h);
	if (size < 0)
		return sp_err("%s: NBD export size: %s", img->path, nbd_get_error());
	if (img->size && (uint64_t)size != img->size)
		return sp_err("%s: the NBD export changed size while open", img->path);
	img->size = (uint64_t)size;
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned want = 1;
	if (nbd_can_multi_conn(h) == 1)
		want = cores > NBD_MAX_CONNS ? NBD_MAX_CONNS : cores > 1 ? (unsigned)cores : 1;
	/* More connections are a speed-up, not a need: stop at the first
	 * the server refuses. */
	while (p->nconn < want) {
		struct nbd_handle *more = connect_one(img->path, extra_ctx);
		if (!more) {
			sp_err_clear();
			break;
		}
		p->conn[p->nconn++].h = more;
	}
	for (unsigned i = 0; i < p->nconn; i++)
		if (start_conn(&p->conn[i]) < 0)
			return sp_err("%s: cannot start the NBD I/O thread: %s", img->path,
				      strerror(errno));
	return 0;
}

struct image *nbd_image_open(const char *uri, bool writable)
{
	struct nbd_priv *p = calloc(1, sizeof *p);
	struct image *img = p ? image_alloc(&nbd_ops, uri, -1, FMT_RAW) : NULL;
	if (!img) {
		free(p);
		sp_err("%s: out of memory", uri);
		return NULL;
	}
	img->priv = p;
	pthread_mutex_init(&p->ext_lock, NULL);
	for (unsigned i = 0; i < NBD_MAX_CONNS; i++)
		p->conn[i].wake = -1;
	if (open_conns(img, NULL) < 0)
		goto fail;
	struct nbd_handle *h = p->conn[0].h;
	if (writable && nbd_is_read_only(h) == 1) {
		sp_err("%s: the NBD export is read-only; it cannot be written", uri);
		goto fail;
	}
	img->writable = writable;
	/* No base:allocation: every byte is read, and zeros found by reading
	 * (like a block device). */
	img->alloc_unknown = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1;
	int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
	int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
	p->min_block = min > 0 && min <= 65536 ? (uint32_t)min : 1;
	p->max_req = max > 0 && (uint64_t)max < NBD_REQUEST_MAX ? (uint64_t)max : NBD_REQUEST_MAX;
	p->max_req -= p->max_req % p->min_block;
	if (p->max_req == 0)
		p->max_req = p->min_block;
	if (p->min_block > img->granularity)
		img->granularity = p->min_block;
	p->can_zero = nbd_can_zero(h) == 1;
	p->can_flush = nbd_can_flush(h) == 1;
	return img;
fail:
	nbd_img_close(img);
	return NULL;
}

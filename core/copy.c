/* The copy pipeline: one thread walks the source's extents in order and
 * queues data ranges (never reading a hole); a pool of workers reads each
 * block, splits it into zero and non-zero runs and hands them to the sink
 * (which may hash, compress and write, all in parallel). The queue is
 * bounded and each worker owns one block buffer, so memory stays at
 * workers x block size whatever the image size. Blocks are independent:
 * the sink may receive them in any order. */
#include "copy.h"

#include "../formats/change_map.h"
#include "../formats/image.h"
#include "error.h"
#include "zero.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_WORKERS 64

struct task {
	uint64_t off;
	size_t len;
};

struct pipeline {
	struct image *src;
	struct sink *sink;
	struct sp_stats *st;
	size_t bs, grain;
	bool read_ahead;
	const struct change_map *changed;
	uint64_t changed_round;
	/* Progress counts the bytes to read, not the virtual size: holes pass
	 * at what they cost, nothing. A first walk (counting, allocation map
	 * only) finds the total. */
	bool counting;
	uint64_t work;             /* bytes queued (or, counting, to queue) */

	pthread_mutex_t lock;
	pthread_cond_t not_empty, not_full;
	struct task *ring;
	size_t cap, head, count;
	bool closed;   /* reader is done queueing */
	bool failed;   /* stop everyone */
	char errmsg[1024];
};

/* Deliver one block read from the source: zero grains become zero ranges,
 * the rest is data. */
static int deliver_block(struct sink *sink, uint64_t off, const unsigned char *buf, size_t len,
			 size_t grain, struct sp_stats *st)
{
	if (sink->ops->block)
		sink->ops->block(sink, off, buf, len);
	size_t pos = 0;
	while (pos < len) {
		size_t z = zero_run(buf + pos, len - pos, grain, true);
		if (z) {
			if (sink->ops->zero(sink, off + pos, z) < 0)
				return -1;
			stats_add(st->bytes_zero, z);
			pos += z;
			continue;
		}
		size_t d = zero_run(buf + pos, len - pos, grain, false);
		if (sink->ops->data(sink, off + pos, buf + pos, d) < 0)
			return -1;
		stats_add(st->bytes_data, d);
		pos += d;
	}
	return 0;
}

static void pipeline_fail(struct pipeline *p)
{
	pthread_mutex_lock(&p->lock);
	if (!p->failed) {
		p->failed = true;
		snprintf(p->errmsg, sizeof p->errmsg, "%s", sp_errmsg());
	}
	pthread_cond_broadcast(&p->not_empty);
	pthread_cond_broadcast(&p->not_full);
	pthread_mutex_unlock(&p->lock);
}

static void *worker(void *arg)
{
	struct pipeline *p = arg;
	unsigned char *buf = malloc(p->bs);
	if (!buf) {
		sp_err("out of memory for a block buffer");
		pipeline_fail(p);
		return NULL;
	}
	for (;;) {
		pthread_mutex_lock(&p->lock);
		while (p->count == 0 && !p->closed && !p->failed)
			pthread_cond_wait(&p->not_empty, &p->lock);
		if (p->failed || p->count == 0) {
			pthread_mutex_unlock(&p->lock);
			break;
		}
		struct task t = p->ring[p->head];
		p->head = (p->head + 1) % p->cap;
		p->count--;
		pthread_cond_signal(&p->not_full);
		pthread_mutex_unlock(&p->lock);

		if (image_pread(p->src, buf, t.len, t.off) < 0 ||
		    deliver_block(p->sink, t.off, buf, t.len, p->grain, p->st) < 0) {
			pipeline_fail(p);
			break;
		}
	}
	free(buf);
	return NULL;
}

/* Returns false when the pipeline failed and the reader must stop. */
static bool enqueue(struct pipeline *p, uint64_t off, size_t len)
{
	pthread_mutex_lock(&p->lock);
	while (p->count == p->cap && !p->failed)
		pthread_cond_wait(&p->not_full, &p->lock);
	bool ok = !p->failed;
	if (ok) {
		p->ring[(p->head + p->count) % p->cap] = (struct task){ off, len };
		p->count++;
		pthread_cond_signal(&p->not_empty);
	}
	pthread_mutex_unlock(&p->lock);
	return ok;
}

/* The reader: walk extents over [pos, to), queue data blocks, send zero
 * ranges directly. Ranges are rounded out to the zero grain (the
 * destination's cluster) so that a data extent starting mid-cluster does
 * not make the writer read-modify-write: the sliver of hole read with it
 * is at most a grain. Blocks end on multiples of bs so that the same bytes
 * land in the same blocks on every run (stable hashes for sync). pos and
 * to are multiples of the grain, or the image's end. False when the
 * pipeline failed. */
static bool read_range(struct pipeline *p, struct progress *prog, uint64_t pos, uint64_t to)
{
	struct image *src = p->src;
	const uint64_t g = p->grain;
	while (pos < to) {
		struct extent e;
		if (image_extent(src, pos, &e) < 0) {
			pipeline_fail(p);
			return false;
		}
		uint64_t end = e.length < to - pos ? pos + e.length : to;
		uint64_t down = end == to ? to : end / g * g;
		uint64_t up = end == to ? to : (end + g - 1) / g * g;
		if (up > to)
			up = to;
		if (e.kind != EXTENT_DATA && down > pos) {
			if (!p->counting) {
				if (p->sink->ops->zero(p->sink, pos, down - pos) < 0) {
					pipeline_fail(p);
					return false;
				}
				stats_add(p->st->bytes_zero, down - pos);
			}
			pos = down;
			continue;
		}
		/* Data, or a hole shorter than a grain: read [pos, up). The
		 * kernel's read-ahead follows a long extent once it is being
		 * read, but cannot guess the jump to the next one: hint the
		 * first block of every extent (all of them with read_ahead). */
		for (bool first = true; pos < up; first = false) {
			uint64_t next = (pos / p->bs + 1) * p->bs;
			size_t n = (size_t)((next < up ? next : up) - pos);
			pos += n;
			p->work += n;
			if (p->counting)
				continue;
			if (p->read_ahead || first)
				image_prefetch(src, pos - n, n);
			if (!enqueue(p, pos - n, n))
				return false;
			progress_update(prog, p->work, p->st);
		}
	}
	return true;
}

/* The whole image, or only what the change map says is dirty (rounded
 * out to whole units: the rest is known to be the same at both ends and
 * is neither read nor delivered). */
static void read_extents(struct pipeline *p, struct progress *prog)
{
	const uint64_t size = p->src->size;
	if (!p->changed) {
		read_range(p, prog, 0, size);
		return;
	}
	const uint64_t r = p->changed_round;
	uint64_t at = 0, s, e;
	while (at < size && change_map_next(p->changed, at, &s, &e)) {
		s = s / r * r;
		uint64_t up = (e + r - 1) / r * r;
		e = up > size ? size : up;
		if (s < at)
			s = at;
		if (s < e && !read_range(p, prog, s, e))
			return;
		at = e;
	}
}

/* A raw source that grows or shrinks while we copy (a running VM, a
 * concurrent writer) gives a copy of no consistent moment: say so. */
static int source_changed_size(const struct image *src)
{
	struct stat st;
	if (src->format != FMT_RAW || fstat(src->fd, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	if ((uint64_t)st.st_size != src->size)
		return sp_err("%s: source changed size during the copy (%llu -> %llu bytes)", src->path,
			      (unsigned long long)src->size, (unsigned long long)st.st_size);
	return 0;
}

int copy_run(struct image *src, struct sink *sink, const struct copy_opts *o, struct sp_stats *st)
{
	struct pipeline p;
	memset(&p, 0, sizeof p);
	p.src = src;
	p.sink = sink;
	p.st = st;
	p.bs = o->block_size ? o->block_size : BLOCK_SIZE_DEFAULT;
	p.grain = o->zero_grain ? o->zero_grain : 4096;
	p.read_ahead = o->read_ahead;
	p.changed = o->changed;
	p.changed_round = o->changed_round > p.grain ? o->changed_round : p.grain;
	unsigned nw = image_workers(src, o->workers, MAX_WORKERS);
	p.cap = 2 * (size_t)nw;
	p.ring = calloc(p.cap, sizeof *p.ring);
	if (!p.ring)
		return sp_err("out of memory");
	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.not_empty, NULL);
	pthread_cond_init(&p.not_full, NULL);

	struct progress prog;
	progress_init(&prog, o->progress, 0);
	if (prog.on) {
		p.counting = true;
		read_extents(&p, &prog);
		p.counting = false;
		progress_set_total(&prog, p.work);
		p.work = 0;
		if (p.failed) {
			/* The walk found a broken map: the real run says so. */
			p.failed = false;
			sp_err_clear();
		}
	}
	double t0 = now_seconds();
	st->bytes_virtual = src->size;
	uint64_t read0 = src->bytes_read;

	pthread_t tid[MAX_WORKERS];
	unsigned started = 0;
	for (; started < nw; started++) {
		if (pthread_create(&tid[started], NULL, worker, &p) != 0) {
			sp_err("cannot start worker threads");
			pipeline_fail(&p);
			break;
		}
	}
	if (started > 0)
		read_extents(&p, &prog);

	pthread_mutex_lock(&p.lock);
	p.closed = true;
	pthread_cond_broadcast(&p.not_empty);
	pthread_mutex_unlock(&p.lock);
	for (unsigned i = 0; i < started; i++)
		pthread_join(tid[i], NULL);

	int rc = 0;
	if (p.failed)
		rc = sp_err("%s", p.errmsg);
	else if (source_changed_size(src) < 0)
		rc = -1;
	else if (sink->ops->finish(sink) < 0)
		rc = -1;
	progress_end(&prog);
	st->bytes_read += src->bytes_read - read0;
	st->seconds = now_seconds() - t0;

	pthread_cond_destroy(&p.not_full);
	pthread_cond_destroy(&p.not_empty);
	pthread_mutex_destroy(&p.lock);
	free(p.ring);
	return rc;
}

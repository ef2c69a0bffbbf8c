#include "sync_hash.h"

#include "../formats/image.h"
#include "error.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_WORKERS 16
/* One round hashes at most this many units / bytes, then emits them. */
#define ROUND_UNITS 4096u
#define ROUND_BYTES (256u << 20)

static uint32_t pow2_at_least(uint32_t v)
{
	uint32_t p = SYNC_UNIT_MIN;
	while (p < v && p < SYNC_UNIT_MAX)
		p <<= 1;
	return p;
}

/* Walks the extent map; calls fn for each data extent [off, end). */
typedef int (*extent_fn)(void *ctx, uint64_t off, uint64_t end);

static int walk_data(struct image *img, extent_fn fn, void *ctx)
{
	uint64_t pos = 0;
	while (pos < img->size) {
		struct extent e;
		if (image_extent(img, pos, &e) < 0)
			return -1;
		uint64_t end = e.length > img->size - pos ? img->size : pos + e.length;
		if (e.kind == EXTENT_DATA) {
			int rc = fn(ctx, pos, end);
			if (rc)
				return rc;
		}
		pos = end;
	}
	return 0;
}

/* ---- choosing the unit ---- */

#define CANDIDATES 16

struct unit_count {
	unsigned bits0, n;             /* candidates: 1 << (bits0 + k), k < n */
	uint64_t count[CANDIDATES];
	uint64_t last[CANDIDATES];     /* last unit counted + 1; 0 = none */
};

static int count_units(void *ctx, uint64_t off, uint64_t end)
{
	struct unit_count *c = ctx;
	for (unsigned k = 0; k < c->n; k++) {
		unsigned b = c->bits0 + k;
		uint64_t first = off >> b, last = (end - 1) >> b;
		uint64_t n = last - first + 1;
		if (c->last[k] == first + 1)
			n--;
		c->count[k] += n;
		c->last[k] = last + 1;
	}
	return 0;
}

int sync_unit_for(struct image *img, uint32_t min_unit, uint32_t *unit)
{
	return sync_unit_for_target(img, min_unit, SYNC_UNITS_TARGET, unit);
}

int sync_unit_for_target(struct image *img, uint32_t min_unit, uint64_t target, uint32_t *unit)
{
	uint32_t u = pow2_at_least(min_unit);
	struct unit_count c;
	memset(&c, 0, sizeof c);
	c.bits0 = (unsigned)__builtin_ctz(u);
	for (uint32_t v = u; v <= SYNC_UNIT_MAX && c.n < CANDIDATES; v <<= 1)
		c.n++;
	if (walk_data(img, count_units, &c) < 0)
		return -1;
	unsigned k = 0;
	while (k + 1 < c.n && c.count[k] > target)
		k++;
	*unit = 1u << (c.bits0 + k);
	return 0;
}

/* ---- hashing ---- */

int sync_hash_unit(struct image *img, uint64_t off, uint32_t unit, uint8_t *buf,
		   struct hash128 *out)
{
	size_t n = off >= img->size ? 0 : img->size - off < unit ? (size_t)(img->size - off) : unit;
	if (n && image_pread(img, buf, n, off) < 0)
		return -1;
	memset(buf + n, 0, unit - n);
	hash128(buf, unit, out);
	return 0;
}

void sync_zero_hash(uint32_t unit, struct hash128 *out)
{
	static const uint8_t zeros[64 << 10];
	struct hash_stream *h = hash_stream_new();
	if (!h) {
		/* Out of memory for 600 bytes: hash in one go instead. */
		uint8_t *z = calloc(1, unit);
		if (z)
			hash128(z, unit, out);
		else
			memset(out, 0, sizeof *out);
		free(z);
		return;
	}
	for (uint32_t done = 0; done < unit;) {
		uint32_t n = unit - done < sizeof zeros ? unit - done : (uint32_t)sizeof zeros;
		hash_stream_update(h, zeros, n);
		done += n;
	}
	hash_stream_final(h, out);
	hash_stream_free(h);
}

struct round {
	struct image *img;
	uint32_t unit;
	uint64_t *units;         /* unit indices, increasing */
	struct hash128 *out;
	size_t n;
	size_t next;             /* atomic: next unit to take */
	pthread_mutex_t lock;
	bool failed;
	char errmsg[1024];
};

static void *hash_worker(void *arg)
{
	struct round *r = arg;
	uint8_t *buf = malloc(r->unit);
	for (;;) {
		size_t i = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
		if (i >= r->n || __atomic_load_n(&r->failed, __ATOMIC_RELAXED))
			break;
		int rc = buf ? sync_hash_unit(r->img, r->units[i] * r->unit, r->unit, buf, &r->out[i])
			     : sp_err("%s: out of memory for a hash buffer", r->img->path);
		if (rc < 0) {
			pthread_mutex_lock(&r->lock);
			if (!r->failed) {
				snprintf(r->errmsg, sizeof r->errmsg, "%s", sp_errmsg());
				__atomic_store_n(&r->failed, true, __ATOMIC_RELAXED);
			}
			pthread_mutex_unlock(&r->lock);
			break;
		}
	}
	free(buf);
	return NULL;
}

struct hasher {
	struct round r;
	size_t cap;
	unsigned workers;
	sync_emit_fn emit;
	void *ctx;
	uint64_t last;           /* last unit queued + 1; 0 = none */
	int stop;                /* emit said 1 */
};

/* Hash the queued units with the pool, then emit them in order as runs. */
static int run_round(struct hasher *h)
{
	struct round *r = &h->r;
	if (r->n == 0)
		return 0;
	r->next = 0;
	r->failed = false;
	unsigned nw = h->workers < r->n ? h->workers : (unsigned)r->n;
	pthread_t tid[MAX_WORKERS];
	unsigned started = 0;
	for (; started + 1 < nw; started++)
		if (pthread_create(&tid[started], NULL, hash_worker, r) != 0)
			break;
	hash_worker(r); /* this thread works too */
	for (unsigned i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	if (r->failed)
		return sp_err("%s", r->errmsg);
	size_t i = 0;
	while (i < r->n) {
		size_t j = i + 1;
		while (j < r->n && r->units[j] == r->units[j - 1] + 1)
			j++;
		int rc = h->emit(h->ctx, r->units[i] * r->unit, &r->out[i], (uint32_t)(j - i));
		if (rc < 0)
			return -1;
		if (rc > 0) {
			h->stop = 1;
			break;
		}
		i = j;
	}
	r->n = 0;
	return 0;
}

static int queue_extent(void *ctx, uint64_t off, uint64_t end)
{
	struct hasher *h = ctx;
	unsigned b = (unsigned)__builtin_ctz(h->r.unit);
	for (uint64_t u = off >> b, last = (end - 1) >> b; u <= last; u++) {
		if (h->last == u + 1)
			continue;
		h->last = u + 1;
		h->r.units[h->r.n++] = u;
		if (h->r.n == h->cap) {
			if (run_round(h) < 0)
				return -1;
			if (h->stop)
				return 1;
		}
	}
	return 0;
}

int sync_hash_image(struct image *img, uint32_t unit, unsigned workers, sync_emit_fn emit,
		    void *ctx)
{
	if (unit < SYNC_UNIT_MIN || unit > SYNC_UNIT_MAX || (unit & (unit - 1)))
		return sp_err("internal error: hash unit %u", unit);
	workers = image_workers(img, workers, MAX_WORKERS);
	while (workers > 1 && (uint64_t)workers * unit > ROUND_BYTES)
		workers--;
	struct hasher h;
	memset(&h, 0, sizeof h);
	h.workers = workers;
	h.emit = emit;
	h.ctx = ctx;
	h.cap = ROUND_BYTES / unit;
	if (h.cap > ROUND_UNITS)
		h.cap = ROUND_UNITS;
	if (h.cap < workers)
		h.cap = workers;
	h.r.img = img;
	h.r.unit = unit;
	h.r.units = malloc(h.cap * sizeof *h.r.units);
	h.r.out = malloc(h.cap * sizeof *h.r.out);
	pthread_mutex_init(&h.r.lock, NULL);
	int rc;
	if (!h.r.units || !h.r.out) {
		rc = sp_err("%s: out of memory for hashing", img->path);
	} else {
		rc = walk_data(img, queue_extent, &h);
		if (rc == 0 && !h.stop)
			rc = run_round(&h);
	}
	pthread_mutex_destroy(&h.r.lock);
	free(h.r.units);
	free(h.r.out);
	return rc < 0 ? -1 : 0;
}

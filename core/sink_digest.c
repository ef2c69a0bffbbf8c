#include "sink_digest.h"

#include "../formats/image.h"
#include "error.h"
#include "sync_hash.h"

#include <stdlib.h>
#include <string.h>

#define PENDING_MAX 4096

struct pending_unit {
	struct pending_unit *next;
	uint64_t u;
	uint64_t covered;  /* bytes of the unit delivered so far */
	uint8_t *buf;      /* the unit, zeros where nothing (or zeros) arrived */
};

/* Bytes of unit u that the source delivers (the last one may be short;
 * what DST holds past the source's end, qcow2's rounding to 512 bytes,
 * reads as zeros like the padding of the hash). */
static uint64_t unit_bytes(const struct digest_sink *s, uint64_t u)
{
	uint64_t start = u << s->map->unit_bits;
	return s->end - start < s->map->unit ? s->end - start : s->map->unit;
}

/* With the lock held: record unit u's new hash. A unit of zeros reads as
 * zeros whether it is listed or not: leave it out. */
static void settle(struct digest_sink *s, uint64_t u, const struct hash128 *h)
{
	if (hash128_equal(h, &s->zero))
		unit_map_clear(s->map, u);
	else if (unit_map_set(s->map, u, h) < 0)
		s->valid = false; /* out of memory: no digest this time */
}

/* With the lock held: the pending entry for u, created when missing. */
static struct pending_unit *pending_get(struct digest_sink *s, uint64_t u)
{
	for (struct pending_unit *p = s->pending; p; p = p->next)
		if (p->u == u)
			return p;
	/* Pieces of a unit arrive close together; thousands waiting means a
	 * sender that leaves gaps: give up on this digest, not on the copy. */
	struct pending_unit *p = s->npending < PENDING_MAX ? calloc(1, sizeof *p) : NULL;
	if (!p || !(p->buf = calloc(1, s->map->unit))) {
		free(p);
		s->valid = false;
		return NULL;
	}
	p->u = u;
	p->next = s->pending;
	s->pending = p;
	s->npending++;
	return p;
}

static void pending_drop(struct digest_sink *s, struct pending_unit *p)
{
	for (struct pending_unit **pp = &s->pending; *pp; pp = &(*pp)->next) {
		if (*pp == p) {
			*pp = p->next;
			s->npending--;
			free(p->buf);
			free(p);
			return;
		}
	}
}

/* With the lock held: part [a, a+n) of unit u arrived (data, or zeros when
 * data is NULL). */
static void add_piece(struct digest_sink *s, uint64_t u, uint64_t a, const uint8_t *data, uint64_t n)
{
	struct pending_unit *p = pending_get(s, u);
	if (!p)
		return;
	uint64_t at = a - (u << s->map->unit_bits);
	if (data)
		memcpy(p->buf + at, data, (size_t)n);
	else
		memset(p->buf + at, 0, (size_t)n);
	p->covered += n;
	if (p->covered < unit_bytes(s, u))
		return;
	struct hash128 h;
	hash128(p->buf, s->map->unit, &h);
	pending_drop(s, p);
	settle(s, u, &h);
}

static int digest_data(struct sink *base, uint64_t off, const void *data, size_t len)
{
	struct digest_sink *s = (struct digest_sink *)base;
	const uint8_t *buf = data;
	const unsigned bits = s->map->unit_bits;
	uint8_t *tail = NULL;
	for (uint64_t a = off, end = off + len; s->valid && a < end;) {
		uint64_t u = a >> bits, ustart = u << bits, ulen = unit_bytes(s, u);
		uint64_t b = ustart + ulen < end ? ustart + ulen : end;
		const uint8_t *piece = buf + (a - off);
		if (a == ustart && b == ustart + ulen) {
			struct hash128 h;
			if (ulen == s->map->unit) {
				hash128(piece, s->map->unit, &h);
			} else {
				/* The image's last unit: hashed zero-padded. */
				if (!tail && !(tail = calloc(1, s->map->unit))) {
					s->valid = false;
					break;
				}
				memcpy(tail, piece, (size_t)ulen);
				hash128(tail, s->map->unit, &h);
			}
			pthread_mutex_lock(&s->lock);
			settle(s, u, &h);
			pthread_mutex_unlock(&s->lock);
		} else {
			pthread_mutex_lock(&s->lock);
			add_piece(s, u, a, piece, b - a);
			pthread_mutex_unlock(&s->lock);
		}
		a = b;
	}
	free(tail);
	return s->inner->ops->data(s->inner, off, data, len);
}

struct ranges {
	uint64_t (*r)[2];
	size_t n, cap;
};

static int ranges_add(struct ranges *rs, uint64_t a, uint64_t b)
{
	if (rs->n && rs->r[rs->n - 1][1] == a) {
		rs->r[rs->n - 1][1] = b;
		return 0;
	}
	if (rs->n == rs->cap) {
		size_t nc = rs->cap ? rs->cap * 2 : 16;
		void *p = realloc(rs->r, nc * sizeof *rs->r);
		if (!p)
			return sp_err("out of memory");
		rs->r = p;
		rs->cap = nc;
	}
	rs->r[rs->n][0] = a;
	rs->r[rs->n][1] = b;
	rs->n++;
	return 0;
}

/* With the lock held: zeros over [off, end). Units wholly inside leave the
 * map; the partial ones at the ends get their piece. The ranges the
 * destination must zero (over units it holds) go to rs. */
static int zero_locked(struct digest_sink *s, uint64_t off, uint64_t end, struct ranges *rs)
{
	const unsigned bits = s->map->unit_bits;
	uint64_t first = off >> bits, last = (end - 1) >> bits, u = first, f;
	if (!s->knows_dest || !s->valid) {
		if (ranges_add(rs, off, end) < 0)
			return -1;
		if (!s->valid)
			return 0;
	}
	while (s->knows_dest && unit_map_next(s->map, u, &f, NULL) && f <= last) {
		uint64_t us = f << bits, ue = us + unit_bytes(s, f);
		if (ranges_add(rs, off > us ? off : us, end < ue ? end : ue) < 0)
			return -1;
		u = f + 1;
	}
	/* Units wholly inside: [full0, full1). */
	uint64_t full0 = off == first << bits ? first : first + 1;
	uint64_t full1 = end == (last << bits) + unit_bytes(s, last) ? last + 1 : last;
	if (full0 < full1) {
		unit_map_clear_range(s->map, full0, full1);
		for (struct pending_unit *p = s->pending, *nx; p; p = nx) {
			nx = p->next;
			if (p->u >= full0 && p->u < full1)
				pending_drop(s, p);
		}
	}
	if (first < full0) {
		uint64_t ue = (first << bits) + unit_bytes(s, first);
		add_piece(s, first, off, NULL, (end < ue ? end : ue) - off);
	}
	if (last >= full1 && !(last == first && first < full0)) {
		uint64_t us = last << bits;
		add_piece(s, last, us, NULL, end - us);
	}
	return 0;
}

static int digest_zero(struct sink *base, uint64_t off, uint64_t len)
{
	struct digest_sink *s = (struct digest_sink *)base;
	if (len == 0)
		return 0;
	struct ranges rs = { 0 };
	pthread_mutex_lock(&s->lock);
	int rc = zero_locked(s, off, off + len, &rs);
	pthread_mutex_unlock(&s->lock);
	for (size_t i = 0; rc == 0 && i < rs.n; i++)
		rc = s->inner->ops->zero(s->inner, rs.r[i][0], rs.r[i][1] - rs.r[i][0]);
	free(rs.r);
	return rc;
}

/* Units that did not arrive whole (a sender that does not say where its
 * zeros are): read them back from the destination. */
static int digest_finish(struct sink *base)
{
	struct digest_sink *s = (struct digest_sink *)base;
	uint8_t *buf = s->npending ? malloc(s->map->unit) : NULL;
	while (s->valid && s->pending) {
		struct pending_unit *p = s->pending;
		struct hash128 h;
		if (!buf || sync_hash_unit(s->img, p->u << s->map->unit_bits, s->map->unit, buf, &h) < 0) {
			s->valid = false;
			sp_err_clear();
			break;
		}
		settle(s, p->u, &h);
		pending_drop(s, p);
	}
	free(buf);
	return s->inner->ops->finish(s->inner);
}

static const struct sink_ops digest_ops = {
	.data = digest_data,
	.zero = digest_zero,
	.finish = digest_finish,
};

void digest_sink_init(struct digest_sink *s, struct sink *inner, struct image *img,
		      struct unit_map *map, uint64_t src_size, struct sp_stats *st, bool knows_dest)
{
	memset(s, 0, sizeof *s);
	s->base.ops = &digest_ops;
	s->base.stats = st;
	s->inner = inner;
	s->img = img;
	s->map = map;
	s->end = src_size < map->size ? src_size : map->size;
	s->valid = true;
	s->knows_dest = knows_dest;
	sync_zero_hash(map->unit, &s->zero);
	pthread_mutex_init(&s->lock, NULL);
}

void digest_sink_free(struct digest_sink *s)
{
	while (s->pending)
		pending_drop(s, s->pending);
	pthread_mutex_destroy(&s->lock);
}

#include "sync_filter.h"

#include "../formats/image.h"
#include "error.h"
#include "sync_hash.h"

#include <stdlib.h>
#include <string.h>

static void count_changed(struct sync_filter *f)
{
	__atomic_add_fetch(&f->units_changed, 1, __ATOMIC_RELAXED);
}

/* Data at a unit the destination does not hold: count the unit once. */
static void touch_unit(struct sync_filter *f, uint64_t u)
{
	if (!f->touched || u >= f->touched_units) {
		count_changed(f);
		return;
	}
	uint64_t bit = 1ull << (u & 63);
	if (!(__atomic_fetch_or(&f->touched[u >> 6], bit, __ATOMIC_RELAXED) & bit))
		count_changed(f);
}

/* Is unit u (table entry idx) the same at both ends? whole: the unit's
 * bytes when the caller holds all of them (else NULL: read the source);
 * all_zero: the source's unit is known to read as zeros. */
static int unit_verdict(struct sync_filter *f, uint8_t **ubuf, size_t idx, uint64_t u,
			const uint8_t *whole, bool all_zero, uint8_t *v)
{
	struct sync_table *t = f->table;
	*v = sync_verdict_get(t, idx);
	if (*v != SYNC_UNKNOWN)
		return 0;
	struct hash128 h;
	if (all_zero) {
		h = t->zero;
	} else if (whole) {
		hash128(whole, t->unit, &h);
	} else {
		if (!*ubuf && !(*ubuf = malloc(t->unit)))
			return sp_err("out of memory for a %u-byte hash unit", t->unit);
		if (sync_hash_unit(f->src, u << t->unit_bits, t->unit, *ubuf, &h) < 0)
			return -1;
	}
	*v = hash128_equal(&h, &t->hash[idx]) ? SYNC_SAME : SYNC_DIFFERS;
	if (sync_verdict_set(t, idx, *v) && *v == SYNC_DIFFERS)
		count_changed(f);
	return 0;
}

/* Pass on the parts of [off, off+len) whose units differ, as few pieces
 * as the runs allow. */
static int filter_data(struct sink *base, uint64_t off, const void *data, size_t len)
{
	struct sync_filter *f = (struct sync_filter *)base;
	const struct sync_table *t = f->table;
	const uint8_t *buf = data;
	uint8_t *ubuf = NULL;
	size_t pos = 0, pend = 0, plen = 0; /* pending piece: [pend, pend+plen) */
	int rc = 0;
	while (rc == 0 && pos < len) {
		uint64_t a = off + pos;
		uint64_t u = a >> t->unit_bits, ustart = u << t->unit_bits;
		uint64_t uend = f->size - ustart < t->unit ? f->size : ustart + t->unit;
		size_t n = uend - a < len - pos ? (size_t)(uend - a) : len - pos;
		long idx = sync_table_find(t, u);
		bool need = true;
		if (idx < 0) {
			touch_unit(f, u);
		} else {
			bool whole = a == ustart && n == t->unit;
			uint8_t v;
			rc = unit_verdict(f, &ubuf, (size_t)idx, u, whole ? buf + pos : NULL, false, &v);
			need = v == SYNC_DIFFERS;
		}
		if (rc < 0)
			break;
		if (need) {
			if (plen == 0)
				pend = pos;
			plen += n;
		} else {
			stats_add(base->stats->bytes_unchanged, n);
			stats_add(f->bytes_unchanged, n);
			if (plen)
				rc = f->inner->ops->data(f->inner, off + pend, buf + pend, plen);
			plen = 0;
		}
		pos += n;
	}
	if (rc == 0 && plen)
		rc = f->inner->ops->data(f->inner, off + pend, buf + pend, plen);
	free(ubuf);
	return rc;
}

/* The source reads as zeros over [off, off+len): pass on the parts over
 * units the list holds and that differ (and, covering, the gaps between
 * them). A terabyte of holes at both ends costs one table lookup. */
static int filter_zero(struct sink *base, uint64_t off, uint64_t len)
{
	struct sync_filter *f = (struct sync_filter *)base;
	const struct sync_table *t = f->table;
	uint64_t end = off + len, u = off >> t->unit_bits, uu, at = off;
	size_t idx;
	uint8_t *ubuf = NULL;
	int rc = 0;
	while (rc == 0 && sync_table_next(t, u, &idx, &uu)) {
		uint64_t ustart = uu << t->unit_bits;
		if (ustart >= end)
			break;
		uint64_t uend = f->size - ustart < t->unit ? f->size : ustart + t->unit;
		uint64_t a = off > ustart ? off : ustart, b = end < uend ? end : uend;
		uint8_t v;
		rc = unit_verdict(f, &ubuf, idx, uu, NULL, a == ustart && b == uend, &v);
		if (rc < 0)
			break;
		if (v == SYNC_DIFFERS) {
			if (!f->cover)
				at = a;
			rc = f->inner->ops->zero(f->inner, at, b - at);
		} else if (f->cover && a > at) {
			rc = f->inner->ops->zero(f->inner, at, a - at);
		}
		at = b;
		u = uu + 1;
	}
	if (rc == 0 && f->cover && at < end)
		rc = f->inner->ops->zero(f->inner, at, end - at);
	free(ubuf);
	return rc;
}

static int filter_finish(struct sink *base)
{
	struct sync_filter *f = (struct sync_filter *)base;
	base->stats->blocks_changed += f->units_changed;
	return f->inner->ops->finish(f->inner);
}

/* A block as the engine read it: the verdict of every unit wholly inside,
 * from these bytes, so that its pieces never make us read it again. */
static void filter_block(struct sink *base, uint64_t off, const void *buf, size_t len)
{
	struct sync_filter *f = (struct sync_filter *)base;
	struct sync_table *t = f->table;
	uint64_t u = (off + t->unit - 1) >> t->unit_bits;
	for (;; u++) {
		uint64_t ustart = u << t->unit_bits;
		if (ustart + t->unit > off + len || ustart + t->unit > f->size)
			break;
		long idx = sync_table_find(t, u);
		if (idx < 0 || sync_verdict_get(t, (size_t)idx) != SYNC_UNKNOWN)
			continue;
		struct hash128 h;
		hash128((const uint8_t *)buf + (ustart - off), t->unit, &h);
		uint8_t v = hash128_equal(&h, &t->hash[idx]) ? SYNC_SAME : SYNC_DIFFERS;
		if (sync_verdict_set(t, (size_t)idx, v) && v == SYNC_DIFFERS)
			count_changed(f);
	}
}

static const struct sink_ops filter_ops = {
	.data = filter_data,
	.zero = filter_zero,
	.finish = filter_finish,
	.block = filter_block,
};

void sync_filter_init(struct sync_filter *f, struct sink *inner, struct sync_table *table,
		      struct image *src, bool cover, struct sp_stats *stats)
{
	memset(f, 0, sizeof *f);
	f->base.ops = &filter_ops;
	f->base.stats = stats;
	f->inner = inner;
	f->table = table;
	f->src = src;
	f->size = src->size;
	f->cover = cover;
	/* Units not in the table that got data: counted once each. */
	uint64_t units = src->size / table->unit + (src->size % table->unit != 0);
	if (units <= (1ull << 28) && (f->touched = calloc(units / 64 + 1, sizeof *f->touched)))
		f->touched_units = units;
}

void sync_filter_free(struct sync_filter *f)
{
	free(f->touched);
	f->touched = NULL;
}

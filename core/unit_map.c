#include "unit_map.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>

void unit_map_init(struct unit_map *m, uint64_t size, uint32_t unit)
{
	memset(m, 0, sizeof *m);
	m->unit = unit;
	m->unit_bits = (unsigned)__builtin_ctz(unit);
	m->size = size;
}

void unit_map_free(struct unit_map *m)
{
	for (size_t i = 0; i < m->nchunks; i++)
		free(m->chunks[i]);
	free(m->chunks);
	m->chunks = NULL;
	m->nchunks = m->cap = 0;
	m->count = 0;
}

uint64_t unit_map_units(const struct unit_map *m)
{
	return (m->size >> m->unit_bits) + ((m->size & (m->unit - 1)) != 0);
}

void unit_map_resize(struct unit_map *m, uint64_t size)
{
	uint64_t old = unit_map_units(m);
	m->size = size;
	uint64_t now = unit_map_units(m);
	if (now < old)
		unit_map_clear_range(m, now, old);
}

/* Position of the first chunk with index >= ci. */
static size_t lower_bound(const struct unit_map *m, uint64_t ci)
{
	size_t lo = 0, hi = m->nchunks;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->chunks[mid]->index < ci)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct unit_chunk *find(const struct unit_map *m, uint64_t ci)
{
	size_t i = lower_bound(m, ci);
	return i < m->nchunks && m->chunks[i]->index == ci ? m->chunks[i] : NULL;
}

static void drop_chunk(struct unit_map *m, size_t i)
{
	free(m->chunks[i]);
	memmove(&m->chunks[i], &m->chunks[i + 1], (m->nchunks - i - 1) * sizeof *m->chunks);
	m->nchunks--;
}

int unit_map_set(struct unit_map *m, uint64_t u, const struct hash128 *h)
{
	if (u >= unit_map_units(m))
		return sp_err("internal error: unit %llu is past the image",
			      (unsigned long long)u);
	uint64_t ci = u >> UNIT_CHUNK_BITS;
	size_t i = lower_bound(m, ci);
	struct unit_chunk *c = i < m->nchunks && m->chunks[i]->index == ci ? m->chunks[i] : NULL;
	if (!c) {
		if (m->nchunks == m->cap) {
			size_t nc = m->cap ? m->cap * 2 : 16;
			struct unit_chunk **p = realloc(m->chunks, nc * sizeof *p);
			if (!p)
				return sp_err("out of memory for the unit hashes");
			m->chunks = p;
			m->cap = nc;
		}
		if (!(c = calloc(1, sizeof *c)))
			return sp_err("out of memory for the unit hashes");
		c->index = ci;
		memmove(&m->chunks[i + 1], &m->chunks[i], (m->nchunks - i) * sizeof *m->chunks);
		m->chunks[i] = c;
		m->nchunks++;
	}
	unsigned k = (unsigned)(u & (UNIT_CHUNK - 1));
	uint64_t bit = 1ull << (k & 63);
	if (!(c->present[k >> 6] & bit)) {
		c->present[k >> 6] |= bit;
		c->present_count++;
		m->count++;
	}
	c->hash[k] = *h;
	return 0;
}

void unit_map_clear_range(struct unit_map *m, uint64_t first, uint64_t end)
{
	if (first >= end)
		return;
	size_t i = lower_bound(m, first >> UNIT_CHUNK_BITS);
	while (i < m->nchunks) {
		struct unit_chunk *c = m->chunks[i];
		uint64_t base = c->index << UNIT_CHUNK_BITS;
		if (base >= end)
			break;
		uint64_t a = first > base ? first - base : 0;
		uint64_t b = end - base < UNIT_CHUNK ? end - base : UNIT_CHUNK;
		for (uint64_t k = a; k < b; k++) {
			uint64_t bit = 1ull << (k & 63);
			if (c->present[k >> 6] & bit) {
				c->present[k >> 6] &= ~bit;
				c->present_count--;
				m->count--;
			}
		}
		if (c->present_count == 0)
			drop_chunk(m, i);
		else
			i++;
	}
}

void unit_map_clear(struct unit_map *m, uint64_t u)
{
	unit_map_clear_range(m, u, u + 1);
}

bool unit_map_get(const struct unit_map *m, uint64_t u, struct hash128 *h)
{
	const struct unit_chunk *c = find(m, u >> UNIT_CHUNK_BITS);
	unsigned k = (unsigned)(u & (UNIT_CHUNK - 1));
	if (!c || !(c->present[k >> 6] & (1ull << (k & 63))))
		return false;
	if (h)
		*h = c->hash[k];
	return true;
}

bool unit_map_next(const struct unit_map *m, uint64_t u, uint64_t *found, struct hash128 *h)
{
	for (size_t i = lower_bound(m, u >> UNIT_CHUNK_BITS); i < m->nchunks; i++) {
		const struct unit_chunk *c = m->chunks[i];
		uint64_t base = c->index << UNIT_CHUNK_BITS;
		unsigned k = u > base ? (unsigned)(u - base) : 0;
		while (k < UNIT_CHUNK) {
			uint64_t w = c->present[k >> 6] >> (k & 63);
			if (!w) {
				k = (k | 63) + 1;
				continue;
			}
			k += (unsigned)__builtin_ctzll(w);
			*found = base + k;
			if (h)
				*h = c->hash[k];
			return true;
		}
	}
	return false;
}

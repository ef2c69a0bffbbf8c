#include "change_map.h"

#include <stdlib.h>

void change_map_free(struct change_map *m)
{
	free(m->bits);
	m->bits = NULL;
	m->nbits = 0;
}

static bool bit(const struct change_map *m, uint64_t n)
{
	return (m->bits[n >> 3] >> (n & 7)) & 1;
}

bool change_map_next(const struct change_map *m, uint64_t off, uint64_t *start, uint64_t *end)
{
	uint64_t n = off / m->granularity;
	while (n < m->nbits) {
		/* Whole clean bytes at once. */
		if ((n & 7) == 0 && m->bits[n >> 3] == 0) {
			n += 8;
			continue;
		}
		if (!bit(m, n)) {
			n++;
			continue;
		}
		uint64_t e = n + 1;
		while (e < m->nbits && bit(m, e))
			e++;
		uint64_t s = n * m->granularity;
		*start = s > off ? s : off;
		*end = e * m->granularity < m->size ? e * m->granularity : m->size;
		return *start < *end;
	}
	return false;
}

void change_map_count(struct change_map *m)
{
	m->dirty_bytes = 0;
	uint64_t s, e, at = 0;
	while (change_map_next(m, at, &s, &e)) {
		m->dirty_bytes += e - s;
		at = e;
	}
}

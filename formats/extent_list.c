#include "extent_list.h"

#include <stdlib.h>
#include <string.h>

void extent_list_reset(struct extent_list *l)
{
	l->n = 0;
}

int extent_list_add(struct extent_list *l, uint64_t off, uint64_t len, enum extent_kind kind)
{
	if (!len)
		return 0;
	struct extent *last = l->n ? &l->e[l->n - 1] : NULL;
	if (last && last->kind == kind && last->offset + last->length == off) {
		last->length += len;
		return 0;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct extent *ne = realloc(l->e, cap * sizeof *ne);
		if (!ne)
			return -1;
		l->e = ne;
		l->cap = cap;
	}
	l->e[l->n++] = (struct extent){ off, len, kind };
	return 0;
}

const struct extent *extent_list_find(const struct extent_list *l, uint64_t off)
{
	size_t lo = 0, hi = l->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct extent *e = &l->e[mid];
		if (off < e->offset)
			hi = mid;
		else if (off >= e->offset + e->length)
			lo = mid + 1;
		else
			return e;
	}
	return NULL;
}

void extent_list_free(struct extent_list *l)
{
	free(l->e);
	memset(l, 0, sizeof *l);
}

/* Which units of an image hold data, and the hash of each: the content of
 * a destination as its digest file (core/digest.h) records it, kept up to
 * date while a copy writes it. Units not present read as zeros.
 *
 * Sparse in both directions: units are grouped in chunks of 4096, and only
 * chunks holding a present unit are allocated (64.5 KiB each), found by
 * binary search. A 1 TiB image with 500 GiB of data in 64 KiB units takes
 * 8 Mi units, 2048 chunks, 129 MiB; images that large use bigger units
 * (core/sync_hash.h), so the map stays within the same bound as the
 * sender's table. Not thread-safe: callers lock. */
#ifndef SPARSYNC_UNIT_MAP_H
#define SPARSYNC_UNIT_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hash.h"

#define UNIT_CHUNK_BITS 12
#define UNIT_CHUNK (1u << UNIT_CHUNK_BITS)

struct unit_chunk {
	uint64_t index;                      /* first unit = index << UNIT_CHUNK_BITS */
	uint32_t present_count;
	uint64_t present[UNIT_CHUNK / 64];
	struct hash128 hash[UNIT_CHUNK];
};

struct unit_map {
	uint32_t unit;
	unsigned unit_bits;
	uint64_t size;            /* image size in bytes: units past it are refused */
	struct unit_chunk **chunks; /* sorted by index */
	size_t nchunks, cap;
	uint64_t count;           /* present units */
};

/* unit: a power of two. */
void unit_map_init(struct unit_map *m, uint64_t size, uint32_t unit);
void unit_map_free(struct unit_map *m);
/* The image now has `size` bytes: units wholly past it go. A unit the
 * new end cuts keeps its hash: the sender compares it as it was hashed, and
 * any difference rewrites all of it. */
void unit_map_resize(struct unit_map *m, uint64_t size);
/* Units of the image: the last one may extend past its end. */
uint64_t unit_map_units(const struct unit_map *m);
/* -1 (message set) when out of memory or u is past the image. */
int unit_map_set(struct unit_map *m, uint64_t u, const struct hash128 *h);
void unit_map_clear(struct unit_map *m, uint64_t u);
/* Clear units [first, end). */
void unit_map_clear_range(struct unit_map *m, uint64_t first, uint64_t end);
bool unit_map_get(const struct unit_map *m, uint64_t u, struct hash128 *h);
/* The first present unit >= u: *found and its hash; false when none. */
bool unit_map_next(const struct unit_map *m, uint64_t u, uint64_t *found, struct hash128 *h);

#endif

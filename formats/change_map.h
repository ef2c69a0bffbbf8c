/* Which parts of an image changed since some point: a dirty bitmap, one
 * bit per `granularity` bytes (a qcow2 persistent bitmap, formats/
 * qcow2_bitmap.c; an NBD export's qemu:dirty-bitmap later). The copy
 * engine reads only the dirty ranges. */
#ifndef SPARSYNC_CHANGE_MAP_H
#define SPARSYNC_CHANGE_MAP_H

#include <stdbool.h>
#include <stdint.h>

struct change_map {
	uint64_t size;         /* the image's virtual size */
	uint64_t granularity;  /* bytes per bit, a power of two */
	uint64_t nbits;        /* ceil(size / granularity) */
	uint8_t *bits;         /* bit n of byte n / 8 (least significant first) */
	uint64_t dirty_bytes;  /* what the set bits cover, within size */
	bool enabled;          /* it is being kept up to date (qcow2: the auto flag) */
};

void change_map_free(struct change_map *m);
/* The first dirty range at or after off: [*start, *end), clipped to the
 * image; false when nothing after off is dirty. */
bool change_map_next(const struct change_map *m, uint64_t off, uint64_t *start, uint64_t *end);
/* Count dirty_bytes (after the bits are filled in). */
void change_map_count(struct change_map *m);

#endif

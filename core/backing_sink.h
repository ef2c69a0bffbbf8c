/* A sink that writes a qcow2 overlay holding only what differs from its
 * backing image (copy --backing, shrink of an overlay). */
#ifndef SPARSYNC_BACKING_SINK_H
#define SPARSYNC_BACKING_SINK_H

#include "sink.h"

struct image;

struct backing_sink {
	struct sink base;
	struct image *dst;     /* the new overlay (fresh: unallocated reads the backing);
				* NULL in a dry run: what would be written is counted */
	struct image *backing; /* the backing image as read through its chain */
	uint64_t grain;        /* compare unit: the overlay's cluster size */
};

/* Data equal to the backing's same range stays unallocated; zero ranges
 * become zero clusters only where the backing holds data. */
void backing_sink_init(struct backing_sink *s, struct image *dst, struct image *backing,
		       uint32_t grain, struct sp_stats *st);


#endif

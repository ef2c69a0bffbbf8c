/* The copy engine: walk the source's extents one region at a time, read
 * only data extents in blocks, split each block into non-zero data and zero
 * runs, and hand them to a sink. Holes are never read. */
#ifndef SPARSYNC_COPY_H
#define SPARSYNC_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include "progress.h"
#include "sink.h"

struct image;

#define BLOCK_SIZE_DEFAULT (1u << 20)
#define BLOCK_SIZE_MAX (32u << 20)

struct copy_opts {
	uint32_t block_size;  /* read unit; 0 = 1 MiB */
	uint32_t zero_grain;  /* zero detection unit; 0 = 4 KiB */
	unsigned workers;     /* reader threads hashing/compressing blocks; 0 = cores */
	enum progress_mode progress;
	/* Hint every queued block to the disk (image_prefetch) before a worker
	 * reads it, not only the first block of each extent. Pays off when
	 * workers are busy compressing and the disk would otherwise idle (a
	 * push: 2.57 vs 2.74 s); when workers only copy, the kernel's own
	 * read-ahead follows a long extent better and the extra hints cost
	 * (local raw->raw of the fs image: 0.96 vs 1.12 s). */
	bool read_ahead;
	/* Only what changed (a dirty bitmap: --bitmap, --track): ranges it
	 * says are clean are neither read nor delivered, as if unchanged.
	 * Dirty ranges are rounded out to changed_round (the hash unit, a
	 * power of two; at least the zero grain). */
	const struct change_map *changed;
	uint64_t changed_round;
};

int copy_run(struct image *src, struct sink *sink, const struct copy_opts *o, struct sp_stats *st);

#endif

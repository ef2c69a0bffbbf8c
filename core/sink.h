/* Where the copy engine delivers what it found at the source: a local image
 * (sink_image.c) or a protocol stream to a receiver (core/send.c). The engine
 * has already split blocks into non-zero data and zero ranges. */
#ifndef SPARSYNC_SINK_H
#define SPARSYNC_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stats.h"

struct sink;

struct sink_ops {
	/* Non-zero data at off. May be called from several threads at once,
	 * for different ranges, in any order. */
	int (*data)(struct sink *, uint64_t off, const void *buf, size_t len);
	/* The source reads as zeros over this range. */
	int (*zero)(struct sink *, uint64_t off, uint64_t len);
	/* Every range has been delivered: make it durable. */
	int (*finish)(struct sink *);
	/* Optional hint: the bytes of a block as read from the source, before
	 * the engine splits it into data and zero pieces. A sink that decides
	 * per unit (sync_filter.c) judges the units wholly inside it from
	 * these bytes, instead of reading a unit again when it arrives as
	 * several pieces (data, then zeros). */
	void (*block)(struct sink *, uint64_t off, const void *buf, size_t len);
};

struct sink {
	const struct sink_ops *ops;
	struct sp_stats *stats;
};

struct image;

/* A sink that writes into an image.
 * fresh: the image was just created and reads as zeros everywhere, so zero
 *        ranges need no work.
 * compare: the image holds an older copy; read each block first and write
 *        only what differs (incremental local sync). */
struct image_sink {
	struct sink base;
	struct image *img;
	int fresh;
	int compare;
	size_t grain; /* compare granularity, bytes */
	bool dry;     /* --dry-run: count what would be written, write nothing */
};

void image_sink_init(struct image_sink *s, struct image *img, struct sp_stats *st,
		     int fresh, int compare);

#endif

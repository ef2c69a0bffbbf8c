/* A sink in front of the destination's that keeps its unit map (and so
 * its next digest file, core/digest.h) up to date as ranges are written:
 * a whole unit of data gets its hash at once, zeros remove units, and a
 * unit delivered in pieces (data and zeros around a zero run, a data
 * extent ending mid-unit) is assembled until every byte of it arrived.
 * It relies on being told about every byte that is not unchanged, zeros
 * included (the local copy engine does; a sender does when CAP_DIGEST is
 * agreed). A unit still incomplete at the end is read back from the
 * destination.
 *
 * It also spares the destination work: zeros over units the map does not
 * hold (already zeros there) are not passed on. */
#ifndef SPARSYNC_SINK_DIGEST_H
#define SPARSYNC_SINK_DIGEST_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "hash.h"
#include "sink.h"
#include "unit_map.h"

struct image;
struct pending_unit;

struct digest_sink {
	struct sink base;
	struct sink *inner;
	struct image *img;          /* the destination, to read back what is missing */
	struct unit_map *map;       /* not owned */
	uint64_t end;               /* the source's size: ranges arrive up to it */
	struct hash128 zero;        /* hash of one unit of zeros */
	pthread_mutex_t lock;
	struct pending_unit *pending; /* list, few at a time */
	size_t npending;
	bool valid;                 /* false: the map cannot be trusted (an error) */
	/* The map says what DST holds now: zeros over units it does not
	 * hold need no work. Otherwise every zero range is passed on. */
	bool knows_dest;
};

void digest_sink_init(struct digest_sink *s, struct sink *inner, struct image *img,
		      struct unit_map *map, uint64_t src_size, struct sp_stats *st, bool knows_dest);
void digest_sink_free(struct digest_sink *s);

#endif

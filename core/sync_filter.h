/* The sync decision, as a sink in front of another: given what the
 * destination holds (a hash list: the receiver's, or a digest file's),
 * pass on only what differs. Each unit gets one verdict (its hash at the
 * source against the list), so all of a changed unit is passed on, its
 * data and its zeros; unchanged units cost a hash and nothing else.
 * Used by the sender (inner = the wire) and by the local copy with a digest
 * file (inner = the destination image). */
#ifndef SPARSYNC_SYNC_FILTER_H
#define SPARSYNC_SYNC_FILTER_H

#include <stdbool.h>
#include <stdint.h>

#include "sink.h"
#include "sync_table.h"

struct image;

struct sync_filter {
	struct sink base;
	struct sink *inner;
	struct sync_table *table;
	struct image *src;
	uint64_t size;                 /* the source's virtual size */
	/* Also pass zero ranges where the list holds nothing: the destination
	 * already reads as zeros there, but a digest kept beside it wants to
	 * see every byte that is not unchanged (core/sink_digest.h). */
	bool cover;
	uint64_t *touched;             /* bitmap: units not in the table already counted */
	uint64_t touched_units;
	uint64_t units_changed, bytes_unchanged; /* atomics */
};

/* stats: where bytes_unchanged is counted as it goes. */
void sync_filter_init(struct sync_filter *f, struct sink *inner, struct sync_table *table,
		      struct image *src, bool cover, struct sp_stats *stats);
void sync_filter_free(struct sync_filter *f);

#endif

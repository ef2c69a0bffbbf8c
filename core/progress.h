/* One line on stderr, rewritten in place, like rsync --info=progress2:
 * percent of the bytes to move, rate, ETA and bytes on the wire. Only on a
 * TTY unless forced; nothing at all when quiet. */
#ifndef SPARSYNC_PROGRESS_H
#define SPARSYNC_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

#include "stats.h"

enum progress_mode { PROGRESS_AUTO = 0, PROGRESS_FORCE, PROGRESS_OFF };

struct progress {
	bool on;
	bool drawn;
	uint64_t total;
	double start, last;
};

void progress_init(struct progress *p, enum progress_mode mode, uint64_t total);
/* The total, once known (after progress_init, before the first update). */
void progress_set_total(struct progress *p, uint64_t total);
/* done: bytes of the total handled so far. Cheap when called often. */
void progress_update(struct progress *p, uint64_t done, const struct sp_stats *st);
/* Erase the line so that following output starts clean. */
void progress_end(struct progress *p);

#endif

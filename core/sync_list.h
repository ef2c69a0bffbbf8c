/* Writing a hash list (HASHES records, see core/protocol.h) on a
 * transport: the receiver's answer to IMAGE when syncing, and what
 * `serve --hashes` sends to `sparsync verify`. */
#ifndef SPARSYNC_SYNC_LIST_H
#define SPARSYNC_SYNC_LIST_H

#include <stdint.h>

struct image;
struct transport;

struct unit_map;

/* Hash img's data units (core/sync_hash.h) with `workers` threads and write
 * them, the last record flagged HASHES_LAST. fill (may be NULL): an empty
 * map of the same unit that gets every non-zero unit's hash as well (the
 * destination's next digest file starts from it). */
int sync_list_write(struct transport *t, struct image *img, uint32_t unit, unsigned workers,
		    struct unit_map *fill);
/* The list of what a digest file says DST holds: nothing is read. */
int sync_list_write_map(struct transport *t, const struct unit_map *m);
/* The list of a new destination: empty, HASHES_FRESH | HASHES_LAST. */
int sync_list_write_fresh(struct transport *t, uint64_t size);

#endif

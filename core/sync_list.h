/* Writing a hash list (HASHES records, see core/protocol.h) on a
 * transport: the receiver's answer to IMAGE when syncing, and what
 * `serve --hashes` sends to `sparsync verify`. */
#ifndef SPARSYNC_SYNC_LIST_H
#define SPARSYNC_SYNC_LIST_H

#include <stdint.h>

struct image;
struct transport;

/* Hash img's data units (core/sync_hash.h) with `workers` threads and write
 * them, the last record flagged HASHES_LAST. */
int sync_list_write(struct transport *t, struct image *img, uint32_t unit, unsigned workers);
/* The list of a new destination: empty, HASHES_FRESH | HASHES_LAST. */
int sync_list_write_fresh(struct transport *t, uint64_t size);

#endif

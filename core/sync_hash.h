/* Block hashes for incremental sync and verify: the receiver's side of the
 * hash list. An image is cut into units (power of two, aligned); each unit
 * that holds allocated data gets XXH3-128 over exactly `unit` bytes, bytes
 * past the image's end counting as zeros. Units that are holes or zero
 * extents are not listed: they read as zeros.
 *
 * Unit size: the destination's allocation unit (qcow2 cluster, 64 KiB for
 * raw), doubled while the image would need more than SYNC_UNITS_TARGET
 * (4 Mi) hashes. The sender's table costs 16 bytes of hash + 1 byte of
 * verdict per unit plus 16 bytes per run of consecutive units, so it stays
 * at 68 MiB for 4 Mi units in long runs (132 MiB if every other unit were
 * a hole) whatever the image: 64 KiB units up to 256 GiB of allocated data,
 * 128 KiB up to 512 GiB, 256 KiB for 1 TiB, and so on. A 16 GiB image with
 * all its data allocated needs 256 Ki units: 4.3 MiB. The receiver itself
 * streams its list and keeps none of it. */
#ifndef SPARSYNC_SYNC_HASH_H
#define SPARSYNC_SYNC_HASH_H

#include <stdint.h>

#include "hash.h"

struct image;

#define SYNC_UNIT_RAW (64u << 10)
#define SYNC_UNIT_MIN (4u << 10)
#define SYNC_UNIT_MAX (32u << 20)
#define SYNC_UNITS_TARGET (1u << 22)

/* The hash unit for img: min_unit rounded up to a power of two in
 * SYNC_UNIT_MIN..SYNC_UNIT_MAX, doubled while img's allocated data would
 * span more than SYNC_UNITS_TARGET units. Walks the extent map once. */
int sync_unit_for(struct image *img, uint32_t min_unit, uint32_t *unit);
/* The same with another target (tests). */
int sync_unit_for_target(struct image *img, uint32_t min_unit, uint64_t target, uint32_t *unit);

/* Receives hashes of consecutive units in offset order: h[i] is the unit at
 * off + i * unit. Returns 0 to go on, 1 to stop early (not an error), -1
 * on error (message set). */
typedef int (*sync_emit_fn)(void *ctx, uint64_t off, const struct hash128 *h, uint32_t count);

/* Hash every unit of img that overlaps a data extent, `workers` threads at
 * a time (0 = number of cores), and hand the results to emit in order.
 * Returns 0 (also when emit stopped early) or -1. */
int sync_hash_image(struct image *img, uint32_t unit, unsigned workers, sync_emit_fn emit,
		    void *ctx);

/* One unit at off (a multiple of unit), zero-padded past the end, hashed.
 * buf has room for unit bytes. */
int sync_hash_unit(struct image *img, uint64_t off, uint32_t unit, uint8_t *buf,
		   struct hash128 *out);

/* The hash of `unit` zero bytes: what a hole's unit would hash to. */
void sync_zero_hash(uint32_t unit, struct hash128 *out);

#endif

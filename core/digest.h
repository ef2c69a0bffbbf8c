/* The digest file: what a destination holds, saved beside it when sparsync
 * has written or synced it, so the next sync answers from it instead of
 * reading the whole destination (blocksync-fast's idea).
 *
 * It records the unit hashes (core/unit_map.h) and the destination's
 * identity: device, inode, size, mtime and ctime in nanoseconds. It is
 * trusted only when that identity matches exactly and its own checksum is
 * right; anything else (a write to the image, a rename, a restore, a
 * truncated or hostile file) makes the next run read the image as before.
 * A stale digest can cost time, never correctness: the file's own mtime is
 * made later than the image's mtime and ctime before it is published, so
 * a write to the image after the digest was taken always changes them,
 * even within one tick of the filesystem's clock.
 *
 * Layout (little-endian): a 64-byte header {magic "SPSDIGST", u32 version,
 * u32 unit, u64 image size, u32 format, u32 members, u64 units present,
 * u8[16] tracking id, u64 zero}, `members` identities of 48 bytes {dev,
 * ino, size, mtime ns, ctime ns, zero}, runs {u64 first unit, u64 count,
 * count 16-byte hashes} in increasing order, and XXH3-128 of all of it. */
#ifndef SPARSYNC_DIGEST_H
#define SPARSYNC_DIGEST_H

#include <stdbool.h>
#include <stdint.h>

#include "unit_map.h"

struct image;

#define DIGEST_TRACK_ID_SIZE 16

struct digest_info {
	int format;                               /* enum image_format */
	uint8_t track_id[DIGEST_TRACK_ID_SIZE];   /* zero: none (see --track) */
};

/* Where the digest of the image at real_path lives: `override` when given,
 * else ".NAME.sparsync" beside it. Malloc'd; NULL when out of memory. */
char *digest_path_for(const char *real_path, const char *override);

/* Load the digest at dpath for img (open) into map (which
 * gets the digest's unit). Returns 1 when it is usable, 0 when it is not
 * (absent, stale, damaged: *why says which, for --json), -1 when out of
 * memory. A digest that is intact but stale, of this same file (device and
 * inode), still fills info->track_id: the bitmap it names is this
 * destination's, though no longer in step. */
int digest_load(const char *dpath, const struct image *img, struct unit_map *map,
		struct digest_info *info, const char **why);

/* Save map as the digest of the image at real_path (flushed, closed).
 * Returns 0, or 1 when it was not saved because the image keeps changing
 * under us (no digest is better than a wrong one), -1 on error. */
int digest_save(const char *dpath, const char *real_path, const struct unit_map *map,
		const struct digest_info *info);

/* Remove a digest that no longer describes its image. Best effort. */
void digest_remove(const char *dpath);

#endif

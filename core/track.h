/* --track: changed-block tracking with sparsync's own persistent dirty
 * bitmaps in a qcow2 source, as virtnbdbackup and libvirt checkpoints do,
 * but never fooled by a bitmap that does not belong to this destination's
 * current state.
 *
 * Each successful tracked sync ends with a new bitmap in the source,
 * "sparsync-<16 random bytes in hex>", empty and enabled (QEMU records
 * every later guest write in it), replacing the one used; the
 * destination's digest file records the new name. The next run uses the
 * bitmap only when the destination's digest file is valid and names it,
 * and the bitmap is intact (current, enabled, not flagged in use by a QEMU
 * that died): then only its dirty ranges are read and compared. Otherwise
 * the whole image is compared, as without --track. A source restored from
 * an older copy of itself holds only bitmaps with older names; a copied
 * destination has another inode, so its digest names nothing; another
 * destination has its own bitmap. The source is touched only after the
 * destination is complete (the receiver's ACK): an interrupted run leaves
 * every bitmap as it was.
 *
 * An RBD source keeps snapshots instead (formats/image.h's track_start):
 * each run takes "sparsync-<id>" when it starts and copies that point in
 * time; what changed since the destination's snapshot comes from
 * rbd_diff_iterate2; after success the older snapshot goes, after a
 * failure this run's. */
#ifndef SPARSYNC_TRACK_H
#define SPARSYNC_TRACK_H

#include <stdbool.h>
#include <stdint.h>

#include "../formats/change_map.h"

struct image;

#define TRACK_ID_SIZE 16

struct track {
	uint8_t id[TRACK_ID_SIZE];
	char name[16 + 2 * TRACK_ID_SIZE];  /* "sparsync-" + hex: this run's new bitmap */
	char old_name[16 + 2 * TRACK_ID_SIZE]; /* the destination's, replaced at the end */
	bool has_old;
	bool started;            /* the source took this run's marker (track_start) */
	bool finished;           /* track_finish ran */
	bool use;                /* the bitmap is trusted: copy only what it marks */
	struct change_map map;
	const char *how;         /* for --json: "bitmap", or why the whole image */
};

/* Before the copy: src must be able to keep a bitmap; dest_id is the id
 * the destination's digest file records (NULL: none), in_step whether that
 * digest is valid (else the bitmap is started afresh after a full
 * comparison, not left behind). */
int track_begin(struct track *t, struct image *src, const uint8_t *dest_id, bool in_step);
/* -v: what track_begin decided. */
void track_log(const struct track *t);
/* After the destination is complete: the new bitmap replaces the old.
 * Should that fail, a warning: the copy stands, and the next run compares
 * everything once. */
void track_finish(struct track *t, struct image *src);
/* After track_finish, or instead of it when the run failed: a marker this
 * run took in the source (an RBD snapshot) is dropped again. */
void track_free(struct track *t, struct image *src);

#endif

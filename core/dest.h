/* What a destination is and how it is written: the one place that decides,
 * for the local copy and the receiver alike (DESIGN.md, "Choices already
 * made"). sparsync never destroys what it was not asked to replace:
 *
 *   absent            -> a new image, temporary file + rename      DEST_NEW
 *   regular file      -> synced in place when it is an image of the
 *                        output format and --whole was not given   DEST_UPDATE
 *                        otherwise rewritten: temporary + rename   DEST_NEW
 *   --backing FILE    -> a new qcow2 overlay, temporary + rename   DEST_OVERLAY
 *   symlink           -> its target (renames happen in the target's
 *                        directory; the link stays); a dangling link is
 *                        refused
 *   block device      -> written in place: opened O_EXCL, never
 *                        truncated or renamed, refused when smaller
 *                        than the source, always raw               DEST_DEVICE
 *   NBD URI           -> the export, written in place like a block
 *                        device (formats/nbd.h)                    DEST_DEVICE
 *   rbd:POOL/IMAGE    -> an existing RBD image, the same; refused
 *                        while another client has it open          DEST_DEVICE
 *                        absent: created with the source's size
 *                        under a temporary name, renamed when
 *                        complete, removed on failure              DEST_NEW
 *   directory, character device, FIFO, socket -> refused
 *
 * Order of use: dest_open (before the source's size is known: the receiver
 * sends the hash list of what DST holds first), dest_begin (with the size),
 * dest_sink, then dest_commit or dest_abort; dest_close always. */
#ifndef SPARSYNC_DEST_H
#define SPARSYNC_DEST_H

#include <stdbool.h>

#include "../formats/image.h"
#include "backing_sink.h"
#include "digest.h"
#include "replace.h"
#include "sink.h"
#include "sink_digest.h"
#include "sync_filter.h"
#include "unit_map.h"

struct change_map;

enum dest_mode {
	DEST_NEW,     /* a new image under a temporary name, renamed over DST when complete */
	DEST_UPDATE,  /* the existing image file, updated where it differs */
	DEST_OVERLAY, /* a new qcow2 overlay of a backing image, temporary + rename */
	DEST_DEVICE,  /* a block device or an NBD export, written in place */
};

struct dest_opts {
	enum image_format out_fmt;              /* -O; FMT_AUTO = DESIGN.md's rule */
	const struct image_create_opts *create; /* NULL = defaults; backing set = overlay */
	/* An existing image file of the output format may be updated in place
	 * (false for --whole: it is rewritten). */
	bool update;
	/* --target-is-zero: a device already reads as zeros, so the source's
	 * zero ranges need no work there (like qemu-img convert's option). */
	bool target_is_zero;
	/* --inplace: update an existing file without the undo journal (faster,
	 * and an interruption leaves a mix of old and new). */
	bool inplace;
	/* --no-space-check clears it: refuse early when DST's filesystem
	 * cannot hold what the copy will write. */
	bool space_check;
	/* Keep a digest file (core/digest.h) for DST: digest_file, or
	 * .NAME.sparsync beside it when NULL. Not for devices (their mtime
	 * does not change when they are written) nor new overlays. */
	bool digest;
	const char *digest_file;
	/* The source's file name: a DST that is an existing directory, or
	 * ends in '/', means DST/src_name (rsync's and scp's habit). NULL: a
	 * directory is refused (a stream has no name). */
	const char *src_name;
	/* --dry-run: decide and compare as a real run would, write nothing
	 * (no temporary, no journal, no digest, no recovery of an interrupted
	 * update); the sink counts what it would write. */
	bool dry_run;
};

/* dest_begin's data argument when the source's data size is not known. */
#define DEST_DATA_UNKNOWN UINT64_MAX

struct dest {
	char *path;                   /* as the user named it: every message */
	char *real_path;              /* symlinks followed: what is written or replaced */
	enum dest_mode mode;
	bool nbd, rbd;                /* DEVICE: an NBD export, an RBD image (or NEW) */
	char *rbd_tmp;                /* NEW RBD image: its temporary name until commit */
	enum image_format existing;   /* DST's own format when it exists, else FMT_AUTO */
	struct dest_opts o;
	struct image *img;            /* the image written (UPDATE/DEVICE: from dest_open) */
	struct image *backing;        /* OVERLAY: the image the overlay is based on */
	struct replacement repl;      /* NEW/OVERLAY */
	struct undo *undo;            /* UPDATE without --inplace: the undo journal */
	bool replacing;
	/* An existing file to be replaced: held open under QEMU's image
	 * locks until then (core/dest.c's guard). */
	int guard_fd;
	union {
		struct image_sink image;
		struct backing_sink backing;
	} sink;
	/* The digest file: where it goes (NULL: none is kept), DST's unit
	 * hashes (loaded from it, or gathered while hashing DST for a sender,
	 * or built as DST is written), kept current by dsink. */
	char *digest_path;
	struct unit_map map;
	bool map_ready;               /* map is initialised */
	bool map_knows_dest;          /* map says what DST holds right now */
	bool digest_loaded;           /* ... because its digest file was valid */
	const char *digest_why;       /* "used", or why not (static text), for --json */
	struct digest_info digest_info;
	uint8_t track_next[DIGEST_TRACK_ID_SIZE]; /* for the new digest: zero = none */
	struct digest_sink dsink;
	bool dsink_on;
	struct sync_table table;      /* local copy with a digest: the filter's list */
	struct sync_filter filter;
	bool filter_on;
	struct sp_stats *st;
	uint64_t src_size;            /* from dest_begin */
};

/* Classify path and open what must be open before the source is known. */
int dest_open(struct dest *d, const char *path, const struct dest_opts *o);
/* The image whose content the sender may compare against (the existing
 * image or device, or the backing image of a new overlay); NULL when DST
 * starts out reading as zeros everywhere. */
struct image *dest_known_image(const struct dest *d);
/* Whether dest_begin wants the source's data size (a free-space check
 * will be made): the caller may skip walking the source's extents. */
bool dest_wants_data_size(const struct dest *d);
/* The source is size bytes of format src_fmt (FMT_AUTO = unknown) holding
 * data bytes of data (DEST_DATA_UNKNOWN: not known, no space check):
 * check that DST's filesystem has room for what will be written, then
 * create the new file, resize the updated one, or check that the device is
 * large enough. Nothing has been written to DST before this returns 0. */
int dest_begin(struct dest *d, enum image_format src_fmt, uint64_t size, uint64_t data);
/* The sink that writes DST for a receiver, whose sender already compared
 * hashes: every range delivered is written. covered: the sender tells
 * about every range that is not unchanged, zeros included (CAP_DIGEST),
 * so a digest file can be kept. */
struct sink *dest_sink(struct dest *d, struct sp_stats *st, bool covered);
/* The sink that writes DST for the local copy from src: with a valid
 * digest file, units are compared by hash and DST is not read; otherwise
 * an existing DST is read and only what differs is written. changed: only
 * what it marks will be delivered (--bitmap): without a valid digest to
 * start from, no new digest can be made then. */
struct sink *dest_local_sink(struct dest *d, struct image *src, struct sp_stats *st,
			     const struct change_map *changed);
/* The --track id DST's digest file records (16 bytes), or NULL; *in_step:
 * the digest is valid (DST is as the bitmap's start). */
const uint8_t *dest_track_id(const struct dest *d, bool *in_step);
/* Record this id in the digest file saved at commit (without it, the new
 * digest records none: a copy from elsewhere may not inherit one). */
void dest_set_track_id(struct dest *d, const uint8_t id[DIGEST_TRACK_ID_SIZE]);
/* The allocation unit of the image that is (or, in a dry run, would be)
 * written: a qcow2 cluster, else 4096. */
uint32_t dest_granularity(const struct dest *d, enum image_format src_fmt);
/* The unit DST's ranges are best delivered in (its digest's hash unit, or
 * its allocation unit). */
uint32_t dest_unit(const struct dest *d);
/* The smallest hash unit for DST's list: its cluster, or 64 KiB. */
uint32_t dest_min_unit(const struct dest *d);
/* DST's unit hashes from its digest file (nothing to read), or NULL. */
const struct unit_map *dest_digest_map(const struct dest *d);
/* An empty map of this unit for the hash list being made of DST, so that
 * the digest can start from it; NULL when no digest is kept. */
struct unit_map *dest_map_to_fill(struct dest *d, uint32_t unit);
/* Make the written image final: flush, then rename a new file into place;
 * then save its digest file (or remove one that no longer describes it). */
int dest_commit(struct dest *d);
/* Give up, keeping sp_errmsg(): remove a temporary file, or roll an
 * in-place update back through its undo journal (with --inplace, and on a
 * device, what was written so far stays: a re-run completes it). */
void dest_abort(struct dest *d);
/* Free everything (after commit or abort, or after a failed dest_open). */
void dest_close(struct dest *d);
/* How DST was written, for --json: "new", "journal" (in place, undo
 * journal), "inplace", "overlay" or "device". */
const char *dest_how(const struct dest *d);

#endif

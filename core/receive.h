/* The receiving half: read a protocol stream (from ssh/-e, stdin or a
 * file) and build the destination image from it. */
#ifndef SPARSYNC_RECEIVE_H
#define SPARSYNC_RECEIVE_H

#include <stdbool.h>

#include "../formats/image.h"
#include "progress.h"
#include "stats.h"

struct transport;

struct receive_opts {
	const char *dst_path;
	enum image_format out_fmt;                /* -O; FMT_AUTO = DESIGN.md's rule */
	/* NULL = defaults. With a backing file set, DST becomes a new qcow2
	 * overlay of it (resolved relative to DST's directory, like qemu-img)
	 * holding only what differs. */
	const struct image_create_opts *create;
	bool stream;                              /* reading an archive: never write back */
	bool whole;                               /* never update DST in place */
	bool target_is_zero;                      /* a device DST already reads as zeros */
	bool inplace;                             /* update DST without the undo journal */
	bool no_space_check;                      /* no free-space check before writing */
	bool no_digest;                           /* keep no digest file for DST */
	const char *digest_file;                  /* NULL = .NAME.sparsync beside DST */
	const char *src_name;                     /* DST a directory: DST/src_name (dest.h) */
	bool dry_run;                             /* write nothing (dest.h) */
	/* The sender is interactive and takes a hash list (pull, serve --sync):
	 * send it right after our hello, before reading anything. */
	bool sync;
	unsigned workers;                         /* hashing threads, 0 = cores */
	enum progress_mode progress;
	/* A restricted serve's rule refused the request: fail with this where
	 * a DST that cannot be opened would (the client shows it). */
	const char *refusal;
	/* Several connections (core/links.h). Serve: a rendezvous made by
	 * links_host_open, offered in a LINKS record after our hello. The
	 * client of a pull: taken when the sender offers one, with L->open
	 * and L->want set (links_want); the links are opened once the IMAGE
	 * record has said how much data comes. The owner frees L after
	 * receive_run. */
	struct links *links_host, *links_client;
	unsigned connections;                     /* --connections, 0 = from the cores */
};

/* Write our hello. When syncing (o->sync), at once the hash list: of DST
 * when it is an existing image that can be updated in place (same format,
 * same qcow2 layout, not --whole), of the backing image for --backing, or
 * an empty "fresh" list. Then read the sender's hello and IMAGE, resize an
 * in-place DST to the source's size and apply DATA/ZERO to it, flushed
 * before the ACK. Otherwise write a new DST under a temporary name and
 * rename it only after END checked out and the data is flushed; then (not
 * a stream) answer ACK.
 * On failure a temporary file is gone (an image updated in place is rolled
 * back by its undo journal; with --inplace or on a device it stays, a
 * consistent mix of old and new that a re-run completes), the sender got
 * an ERROR record when it can read one, and the return is -1,
 * PROTO_PEER_FAILED when the sender reported the error, or
 * PROTO_ERROR_SENT when our ERROR record told it. */
int receive_run(struct transport *t, const struct receive_opts *o, struct sp_stats *st);

/* `serve --hashes`: write a receiver's hello and, at once, the hash list
 * of the image at path in `unit`-byte units (for verify); or, given a
 * refusal, an ERROR record with it. */
int hashes_serve(struct transport *t, const char *path, enum image_format fmt, uint32_t unit,
		 unsigned workers, bool force_share, const char *refusal);

#endif

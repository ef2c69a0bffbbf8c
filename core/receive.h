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
	const struct image_create_opts *create;   /* NULL = defaults */
	bool stream;                              /* reading an archive: never write back */
	enum progress_mode progress;
};

/* Exchange hellos, receive IMAGE, DATA/ZERO..., END; write DST under a
 * temporary name and rename it only after END checked out and the data is
 * flushed; then (not a stream) answer ACK. On failure the temporary file
 * is gone, the sender got an ERROR record when it can read one, and the
 * return is -1, or PROTO_PEER_FAILED when the sender reported the error. */
int receive_run(struct transport *t, const struct receive_opts *o, struct sp_stats *st);

#endif

/* The one way sparsync replaces a regular file: the new image is built
 * under a temporary name in the same directory and renamed over the final
 * name only once complete and flushed, so no reader ever sees half an image
 * under the real name and an interrupted run leaves the old file. Only
 * core/dest.c (which decides that the path is a regular file or absent)
 * and shrink (which replaces an image it has just read) call this. */
#ifndef SPARSYNC_REPLACE_H
#define SPARSYNC_REPLACE_H

#include "../formats/image.h"

struct replacement {
	char *final_path;   /* the file renamed over: symlinks already followed */
	char *shown_path;   /* the name the user gave, for messages */
	char *tmp_path;
	struct image *img;
	int cleanup_slot;
	int lock_fd;        /* flock on the temporary: it belongs to a live run */
};

/* Remove the temporaries of final_path that no live run holds (left by a
 * killed one). replace_begin does it too. */
void replace_sweep(const char *final_path);
/* shown may equal final_path (NULL = the same). */
int replace_begin(struct replacement *r, const char *final_path, const char *shown,
		  enum image_format fmt, uint64_t size, const struct image_create_opts *opts);
/* Flush, close, rename into place, fsync the directory. Frees r. */
int replace_commit(struct replacement *r);
/* Close and remove the temporary file. Frees r. Safe after a failed begin. */
void replace_abort(struct replacement *r);

/* Replace final_path with a small file of len bytes (a digest file) the
 * same way: locked temporary beside it, written, fsync'ed, then
 * before_rename(fd, ctx) if given (a non-zero return abandons the
 * replacement, leaving final_path as it was), rename, directory fsync.
 * Mode 0600: it describes an image, whose mode we do not know. */
int replace_file(const char *final_path, const void *buf, size_t len,
		 int (*before_rename)(int fd, void *ctx), void *ctx);

#endif

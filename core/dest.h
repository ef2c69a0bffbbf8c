/* A new destination is built under a temporary name in the same directory
 * and renamed over the final name only once complete and flushed, so no
 * reader ever sees half an image under the real name. */
#ifndef SPARSYNC_DEST_H
#define SPARSYNC_DEST_H

#include "../formats/image.h"

struct dest {
	char *final_path;
	char *tmp_path;
	struct image *img;
	int cleanup_slot;
};

int dest_create(struct dest *d, const char *final_path, enum image_format fmt, uint64_t size,
		const struct image_create_opts *opts);
/* Flush, close, rename into place, fsync the directory. Frees d. */
int dest_commit(struct dest *d);
/* Close and remove the temporary file. Frees d. Safe after a failed create. */
void dest_abort(struct dest *d);

#endif

/* Extents by kind for a stretch of an image, as a server reported them
 * (NBD block status, RBD diff): merged by kind as they are added, looked
 * up by offset. nbd.c and rbd.c keep the last reply in one. */
#ifndef SPARSYNC_EXTENT_LIST_H
#define SPARSYNC_EXTENT_LIST_H

#include "image.h"

struct extent_list {
	struct extent *e;
	size_t n, cap;
};

/* Empty, describing nothing. */
void extent_list_reset(struct extent_list *l);
/* Append [off, off+len) of kind (after what is there), merged with the
 * last extent when of the same kind and adjacent. -1: out of memory. */
int extent_list_add(struct extent_list *l, uint64_t off, uint64_t len, enum extent_kind kind);
/* The extent holding off, or NULL. */
const struct extent *extent_list_find(const struct extent_list *l, uint64_t off);
void extent_list_free(struct extent_list *l);

#endif

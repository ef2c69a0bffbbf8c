/* Ceph RBD images as images (librbd), named as QEMU names them:
 * rbd:POOL/IMAGE[@SNAP][:conf=FILE][:id=NAME][:KEY=VALUE...] (KEY a Ceph
 * option; CEPH_CONF and the usual client configuration otherwise). An
 * RBD image is raw bytes; its allocation comes from rbd_diff_iterate2, so
 * holes are never read. As a destination an existing image is written in
 * place like a block device; one that another client has open (a running
 * VM) is refused. */
#ifndef SPARSYNC_RBD_H
#define SPARSYNC_RBD_H

#include <stdbool.h>

#include "image.h"

/* Whether s names an RBD image ("rbd:" prefix). */
bool rbd_spec_is(const char *s);
struct image *rbd_image_open(const char *spec, bool writable);
/* 1: the image exists; 0: it does not (its pool does); -1: error. */
int rbd_image_exists(const char *spec);
/* A new image of size bytes under a temporary name beside spec's
 * (.IMAGE.sparsync-XXXXXX, features layering, exclusive-lock, object-map,
 * fast-diff), opened to write; *tmp_spec: its spec, malloc'd. */
struct image *rbd_image_create_temp(const char *spec, uint64_t size, char **tmp_spec);
/* Give the temporary image spec's name (refused if one appeared there
 * meanwhile), or remove it. */
int rbd_image_rename(const char *tmp_spec, const char *spec);
void rbd_image_remove(const char *tmp_spec);

#endif

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

#endif

/* NBD exports as images (libnbd): `nbd://HOST[:PORT]/EXPORT`,
 * `nbd+unix:///EXPORT?socket=PATH`, `nbds://...` (TLS) and the other
 * URIs of the NBD URI standard, as qemu-img and nbdcopy take them. An
 * export is raw bytes (qemu-nbd has already translated its format), read
 * through base:allocation extents and written in place like a block
 * device: never created, renamed or resized. */
#ifndef SPARSYNC_NBD_H
#define SPARSYNC_NBD_H

#include <stdbool.h>

#include "image.h"

/* Whether s names an NBD export (by its URI scheme). */
bool nbd_uri_is(const char *s);
/* Connect; writable: the export must accept writes (refused up front when
 * it is read-only). */
struct image *nbd_image_open(const char *uri, bool writable);
/* --timeout: a server that answers none of the requests in flight for this
 * many seconds (a stopped process, a hung disk behind it) fails them, as
 * the ssh transport fails a silent peer. 0 (the default): wait. */
void nbd_set_timeout(unsigned seconds);

#endif

/* `sparsync verify`: do two images read the same? Like `qemu-img compare`:
 * an image's part past the other's end must read as zeros. Two local
 * images are compared byte by byte where either holds data (holes at both
 * ends are never read); a remote image is compared by its hash list
 * (`serve --hashes`, core/sync_list.h) against the local one's hashes. */
#ifndef SPARSYNC_SYNC_VERIFY_H
#define SPARSYNC_SYNC_VERIFY_H

#include <stdbool.h>
#include <stdint.h>

struct image;
struct transport;

struct verify_result {
	bool differ;
	uint64_t offset;         /* first difference: exact for two local images;
				    the start of the first differing hash unit
				    (or its first non-zero local byte) otherwise */
	uint64_t size_local, size_other;
	uint32_t unit;           /* hash unit used, 0 for a local compare */
	uint64_t bytes_read;     /* local bytes read */
	uint64_t bytes_received; /* hash list bytes from the remote */
};

int verify_local(struct image *a, struct image *b, struct verify_result *res);

/* t runs `serve --hashes PATH --hash-unit unit`: exchange hellos, read its
 * list, hash the local image with `workers` threads and compare. Returns
 * PROTO_PEER_FAILED when the remote reported the error itself. */
int verify_remote(struct transport *t, struct image *local, uint32_t unit, unsigned workers,
		  struct verify_result *res);

#endif

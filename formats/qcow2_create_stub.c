/* TEMPORARY: replaced by qcow2_write.c (delete this file then). */
#include "qcow2.h"
#include "../core/error.h"
#include <unistd.h>
struct image *qcow2_create(const char *path, uint64_t size, const struct image_create_opts *opts)
{
	(void)size, (void)opts;
	sp_err("%s: writing qcow2 is not supported yet", path);
	return NULL;
}
struct image *qcow2_open_rw(const char *path, int fd)
{
	close(fd);
	sp_err("%s: updating qcow2 in place is not supported yet", path);
	return NULL;
}

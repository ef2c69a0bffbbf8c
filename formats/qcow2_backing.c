/* qcow2 backing files: resolve the name against the overlay's directory,
 * open it read-only in the right format, and refuse loops (the same file
 * twice in the chain) and chains deeper than QCOW2_MAX_BACKING_DEPTH. */
#include "qcow2.h"
#include "image_lock.h"

#include "../core/confine.h"
#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct image *qcow2_open_backing(const struct qcow2_header *h, const struct qcow2_chain *self)
{
	const char *name = h->backing_file;
	if (strncmp(name, "json:", 5) == 0) {
		sp_err("%s: backing file given as 'json:' options is not supported", self->path);
		return NULL;
	}
	if (self->depth + 1 > QCOW2_MAX_BACKING_DEPTH) {
		const struct qcow2_chain *top = self;
		while (top->above)
			top = top->above;
		sp_err("%s: backing chain is deeper than %d images (%s has yet another backing file)",
		       top->path, QCOW2_MAX_BACKING_DEPTH, self->path);
		return NULL;
	}
	char *path = backing_resolve(self->path, name);
	if (!path) {
		sp_err("%s: out of memory", self->path);
		return NULL;
	}
	/* A restricted serve opens only what lies beneath its directory
	 * (core/confine.h): a header cannot name another client's image. */
	if (confine_active()) {
		char *real = confine_host_path(path);
		if (!real) {
			char why[1024];
			snprintf(why, sizeof why, "%s", sp_errmsg());
			sp_err("%s: backing file %s", self->path, why);
			free(path);
			return NULL;
		}
		free(path);
		path = real;
	}
	struct image *img = NULL;
	struct stat st;
	const char *why = stat(path, &st) == 0 ? image_unusable_kind(st.st_mode) : NULL;
	if (why) { /* before open(2): a FIFO would block it */
		sp_err("%s: backing file %s %s", self->path, path, why);
		goto out;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		sp_err("%s: backing file %s: %s", self->path, path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		sp_err("%s: backing file %s: %s", self->path, path, strerror(errno));
		close(fd);
		goto out;
	}
	if ((why = image_unusable_kind(st.st_mode))) {
		sp_err("%s: backing file %s %s", self->path, path, why);
		close(fd);
		goto out;
	}
	/* QEMU locks every member of a chain it reads: so do we. */
	if (image_lock_read(fd, path, self->force_share) < 0) {
		close(fd);
		goto out;
	}
	for (const struct qcow2_chain *c = self; c; c = c->above) {
		if (c->dev == (uint64_t)st.st_dev && c->ino == (uint64_t)st.st_ino) {
			sp_err("%s: backing file %s loops back to %s (backing chain loop)", self->path,
			       path, c->path);
			close(fd);
			goto out;
		}
	}
	enum image_format fmt = h->backing_format;
	const char *foreign = fmt == FMT_AUTO ? image_foreign_format(fd) : NULL;
	if (foreign) {
		sp_err("%s: backing file %s is a %s image, which sparsync does not read", self->path,
		       path, foreign);
		close(fd);
		goto out;
	}
	if (fmt == FMT_AUTO)
		fmt = image_detect_fd(fd);
	if (fmt == FMT_QCOW2)
		img = qcow2_open_in_chain(path, fd, self, self->force_share);
	else if (S_ISBLK(st.st_mode))
		img = blockdev_open(path, fd, false);
	else
		img = raw_open(path, fd, false);
out:
	free(path);
	return img;
}

/* Plain file descriptors: stdin/stdout for `copy - DST` / `copy SRC -`,
 * `serve`, or files. Descriptors 0-2 are borrowed, never closed. */
#include "transport.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fd_transport {
	struct transport base;
	int rfd, wfd;
};

static ssize_t fd_read(struct transport *base, void *buf, size_t len)
{
	struct fd_transport *t = (struct fd_transport *)base;
	if (t->rfd < 0)
		return sp_err("%s: not open for reading", base->name);
	return transport_fd_read(base, t->rfd, buf, len, "the stream");
}

static int fd_write(struct transport *base, const void *buf, size_t len)
{
	struct fd_transport *t = (struct fd_transport *)base;
	if (t->wfd < 0)
		return sp_err("%s: not open for writing", base->name);
	return transport_fd_write(base, t->wfd, buf, len, "the reader of the stream");
}

static void drop(int *fd)
{
	if (*fd > 2)
		close(*fd);
	*fd = -1;
}

static int fd_close_write(struct transport *base)
{
	struct fd_transport *t = (struct fd_transport *)base;
	transport_fd_restore(base);
	drop(&t->wfd);
	return 0;
}

static int fd_close(struct transport *base, int *status)
{
	struct fd_transport *t = (struct fd_transport *)base;
	int rc = 0;
	transport_fd_restore(base);
	if (t->wfd > 2 && close(t->wfd) < 0)
		rc = sp_err("%s: close: %s", base->name, strerror(errno));
	t->wfd = -1;
	drop(&t->rfd);
	*status = 0;
	free(base->name);
	free(t);
	return rc;
}

static const struct transport_ops fd_ops = {
	.read = fd_read,
	.write = fd_write,
	.close_write = fd_close_write,
	.close = fd_close,
};

/* A pipe holds 64 KiB by default: a relay such as sshd then hands over a
 * megabyte record in 16 wake-ups of both sides. Ask for 1 MiB (the limit
 * an unprivileged process may set); fails harmlessly on files/sockets. */
static void widen_pipe(int fd)
{
	if (fd >= 0)
		fcntl(fd, F_SETPIPE_SZ, 1 << 20);
}

struct transport *transport_fd_open(int rfd, int wfd, const char *name)
{
	struct fd_transport *t = calloc(1, sizeof *t);
	if (!t || !(t->base.name = strdup(name))) {
		free(t);
		sp_err("%s: out of memory", name);
		return NULL;
	}
	t->base.ops = &fd_ops;
	t->base.rw_threads = true;
	t->rfd = rfd;
	t->wfd = wfd;
	widen_pipe(rfd);
	widen_pipe(wfd);
	return &t->base;
}

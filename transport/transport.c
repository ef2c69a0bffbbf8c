/* What every transport shares: counting, --bwlimit pacing, exact reads.
 * Counting rule: transport_write counts bytes_out here; each
 * implementation's read counts bytes_in. */
#include "transport.h"

#include "../core/error.h"
#include "../core/stats.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void sleep_seconds(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int transport_write(struct transport *t, const void *buf, size_t len)
{
	if (!t->bwlimit) {
		if (t->ops->write(t, buf, len) < 0)
			return -1;
		t->bytes_out += len;
		return 0;
	}
	/* Write in slices of about 1/20 s so the rate stays even, and sleep
	 * whenever we are ahead of bwlimit since the first paced write. */
	if (t->pace_start == 0) {
		t->pace_start = now_seconds();
		t->pace_base = t->bytes_out;
	}
	size_t slice = (size_t)(t->bwlimit / 20);
	if (slice < 4096)
		slice = 4096;
	const char *p = buf;
	while (len > 0) {
		size_t n = len < slice ? len : slice;
		if (t->ops->write(t, p, n) < 0)
			return -1;
		t->bytes_out += n;
		p += n;
		len -= n;
		double due = (double)(t->bytes_out - t->pace_base) / (double)t->bwlimit;
		double el = now_seconds() - t->pace_start;
		if (due > el)
			sleep_seconds(due - el);
	}
	return 0;
}

int transport_read_full(struct transport *t, void *buf, size_t len)
{
	char *p = buf;
	size_t got = 0;
	while (got < len) {
		ssize_t n = transport_read(t, p + got, len - got);
		if (n < 0)
			return -1;
		if (n == 0)
			return sp_err("%s: unexpected end of stream (%zu of %zu bytes)", t->name, got, len);
		got += (size_t)n;
	}
	return 0;
}

int transport_close(struct transport *t, int *status)
{
	int dummy;
	if (!status)
		status = &dummy;
	*status = -1;
	if (!t)
		return 0;
	if (t->cuttable)
		close(t->cut_efd);
	return t->ops->close(t, status);
}

int transport_make_cuttable(struct transport *t)
{
	if (t->cuttable)
		return 0;
	t->cut_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (t->cut_efd < 0)
		return sp_err("%s: eventfd: %s", t->name, strerror(errno));
	t->cuttable = true;
	return 0;
}

void transport_cut(struct transport *t)
{
	if (!t)
		return;
	__atomic_store_n(&t->cut, 1, __ATOMIC_RELEASE);
	if (t->cuttable) {
		uint64_t one = 1;
		ssize_t n = write(t->cut_efd, &one, sizeof one);
		(void)n; /* the counter cannot overflow with one write per cut */
	}
	if (t->ops->cut)
		t->ops->cut(t);
}

void transport_set_timeout(struct transport *t, unsigned seconds)
{
	t->timeout_s = seconds;
}

/* Wait until fd is ready for ev; with --timeout, fail once nothing has
 * come for t->timeout_s since the call began (without, wait for ever: a
 * descriptor we were handed non-blocking says EAGAIN too). */
static int wait_fd(struct transport *t, int fd, short ev, const char *peer)
{
	double deadline = now_seconds() + t->timeout_s;
	for (;;) {
		double left = deadline - now_seconds();
		struct pollfd p[2] = { { .fd = fd, .events = ev },
				       { .fd = t->cuttable ? t->cut_efd : -1, .events = POLLIN } };
		nfds_t np = t->cuttable ? 2 : 1;
		int r = !t->timeout_s ? poll(p, np, -1)
			: left > 0   ? poll(p, np, (int)(left * 1000) + 1)
				     : 0;
		if (__atomic_load_n(&t->cut, __ATOMIC_ACQUIRE))
			return sp_err("%s: stopped: another connection of this session failed", t->name);
		if (r > 0)
			return 0;
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return sp_err("%s: poll: %s", t->name, strerror(errno));
		if (now_seconds() >= deadline) {
			t->timed_out = true;
			if (ev == POLLIN)
				return sp_err("%s: no data from %s for %u s (--timeout)", t->name, peer,
					      t->timeout_s);
			return sp_err("%s: %s took no data for %u s (--timeout)", t->name, peer,
				      t->timeout_s);
		}
	}
}

ssize_t transport_fd_read(struct transport *t, int fd, void *buf, size_t len, const char *peer)
{
	for (;;) {
		/* After POLLIN a read returns at once, even on a blocking fd. */
		if ((t->timeout_s || t->cuttable) && wait_fd(t, fd, POLLIN, peer) < 0)
			return -1;
		ssize_t n = read(fd, buf, len);
		if (n >= 0) {
			t->bytes_in += (uint64_t)n;
			return n;
		}
		if (errno == EAGAIN) {
			if (wait_fd(t, fd, POLLIN, peer) < 0)
				return -1;
		} else if (errno != EINTR) {
			return sp_err("%s: read from %s: %s", t->name, peer, strerror(errno));
		}
	}
}

/* A blocking write may sleep half-done with POLLOUT long gone: with
 * --timeout, write non-blocking (restored by transport_fd_restore). */
static void make_nonblocking(struct transport *t, int fd)
{
	if (t->nb_set)
		return;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || (fl & O_NONBLOCK))
		return;
	if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0) {
		t->nb_set = true;
		t->nb_fd = fd;
		t->nb_flags = fl;
	}
}

void transport_fd_restore(struct transport *t)
{
	if (t->nb_set)
		fcntl(t->nb_fd, F_SETFL, t->nb_flags);
	t->nb_set = false;
}

int transport_fd_write(struct transport *t, int fd, const void *buf, size_t len, const char *peer)
{
	const char *p = buf;
	if (t->timeout_s || t->cuttable)
		make_nonblocking(t, fd);
	if (t->cuttable && __atomic_load_n(&t->cut, __ATOMIC_ACQUIRE))
		return sp_err("%s: stopped: another connection of this session failed", t->name);
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				if (wait_fd(t, fd, POLLOUT, peer) < 0)
					return -1;
				continue;
			}
			if (errno == EPIPE)
				return sp_err("%s: %s closed the connection (broken pipe)", t->name, peer);
			return sp_err("%s: write to %s: %s", t->name, peer, strerror(errno));
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

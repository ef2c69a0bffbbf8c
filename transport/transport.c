/* What every transport shares: counting, --bwlimit pacing, exact reads.
 * Counting rule: transport_write counts bytes_out here; each
 * implementation's read counts bytes_in. */
#include "transport.h"

#include "../core/error.h"
#include "../core/stats.h"

#include <errno.h>
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
	return t->ops->close(t, status);
}

ssize_t transport_fd_read(struct transport *t, int fd, void *buf, size_t len, const char *peer)
{
	for (;;) {
		ssize_t n = read(fd, buf, len);
		if (n >= 0) {
			t->bytes_in += (uint64_t)n;
			return n;
		}
		if (errno != EINTR)
			return sp_err("%s: read from %s: %s", t->name, peer, strerror(errno));
	}
}

int transport_fd_write(struct transport *t, int fd, const void *buf, size_t len, const char *peer)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EPIPE)
				return sp_err("%s: %s closed the connection (broken pipe)", t->name, peer);
			return sp_err("%s: write to %s: %s", t->name, peer, strerror(errno));
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

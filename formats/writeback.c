#include "writeback.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>

struct writeback *writeback_new(void)
{
	struct writeback *wb = calloc(1, sizeof *wb);
	if (wb)
		pthread_mutex_init(&wb->lock, NULL);
	return wb;
}

void writeback_free(struct writeback *wb)
{
	if (!wb)
		return;
	pthread_mutex_destroy(&wb->lock);
	free(wb);
}

void writeback_note(struct writeback *wb, int fd, uint64_t off, uint64_t len)
{
	if (!wb || len == 0)
		return;
	pthread_mutex_lock(&wb->lock);
	if (wb->disabled) {
		pthread_mutex_unlock(&wb->lock);
		return;
	}
	if (wb->pending == 0 || off < wb->lo)
		wb->lo = off;
	if (wb->pending == 0 || off + len > wb->hi)
		wb->hi = off + len;
	wb->pending += len;
	if (wb->pending < WRITEBACK_WINDOW) {
		pthread_mutex_unlock(&wb->lock);
		return;
	}
	uint64_t lo = wb->lo, hi = wb->hi, plo = wb->prev_lo, phi = wb->prev_hi;
	wb->prev_lo = lo;
	wb->prev_hi = hi;
	wb->pending = 0;
	pthread_mutex_unlock(&wb->lock);

	/* Outside the lock: other writers go on while this one waits. */
	if (sync_file_range(fd, (off_t)lo, (off_t)(hi - lo), SYNC_FILE_RANGE_WRITE) < 0) {
		if (errno == EINVAL || errno == ESPIPE || errno == ENOSYS || errno == EOPNOTSUPP) {
			pthread_mutex_lock(&wb->lock);
			wb->disabled = true;
			pthread_mutex_unlock(&wb->lock);
		}
		/* A write error shows again, and is reported, at the final fsync. */
		return;
	}
	if (phi > plo) {
		sync_file_range(fd, (off_t)plo, (off_t)(phi - plo),
				SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
					SYNC_FILE_RANGE_WAIT_AFTER);
		posix_fadvise(fd, (off_t)plo, (off_t)(phi - plo), POSIX_FADV_DONTNEED);
	}
}

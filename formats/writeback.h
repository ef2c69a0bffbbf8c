/* Write-behind for the images sparsync writes.
 *
 * Left alone, the kernel keeps everything a copy writes as dirty page
 * cache until its own thresholds or the final fsync: copying a terabyte
 * fills memory with dirty pages, evicts what the host's VMs had cached,
 * and ends in one long fsync. Like `dd oflag=nocache`, we instead start
 * writeback of every WRITEBACK_WINDOW bytes as soon as they are written,
 * wait for the window before it, and drop that one from the page cache.
 * The disk then works while the copy runs, dirty memory stays at about two
 * windows, and the final fsync has little left to do.
 *
 * Only a hint to the kernel: data stays correct whatever it does with it
 * (it never drops dirty or busy pages), and filesystems that do not
 * support it (tmpfs, some network filesystems) just ignore it. */
#ifndef SPARSYNC_WRITEBACK_H
#define SPARSYNC_WRITEBACK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define WRITEBACK_WINDOW (32u << 20)

struct writeback {
	pthread_mutex_t lock;
	uint64_t pending;       /* bytes written since writeback was last started */
	uint64_t lo, hi;        /* the file range they lie in */
	uint64_t prev_lo, prev_hi; /* range started last time: wait for it, then drop it */
	bool disabled;          /* the file does not support it */
};

struct writeback *writeback_new(void);
void writeback_free(struct writeback *wb);
/* [off, off+len) of fd was just written. Thread-safe; may block while the
 * disk catches up with the window before the current one. */
void writeback_note(struct writeback *wb, int fd, uint64_t off, uint64_t len);

#endif

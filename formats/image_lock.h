/* QEMU's image locks, honoured and taken (block/file-posix.c): QEMU,
 * qemu-img, qemu-nbd and qemu-io hold OFD locks on fixed bytes of every
 * image file they open. A shared lock on byte 100+i says "I use permission
 * i", one on byte 200+i says "I do not let others have permission i", with
 * i: 0 consistent read, 1 write, 2 write-unchanged, 3 resize. Each side
 * takes its bytes, then tests for the other's (so two racing openers see
 * each other), and refuses on a conflict: "Failed to get shared 'write'
 * lock".
 *
 * sparsync reads an image as qemu-img convert does (consistent read, and
 * nobody may write or resize it meanwhile: a copy of an image a running VM
 * writes would be of no moment at all), and writes one as its only writer
 * (nobody else may write, resize or be reading it consistently). So a VM
 * cannot be started on an image sparsync is writing, and sparsync neither
 * copies nor writes an image a VM has open for writing. -U (force share)
 * reads without looking, like qemu-img -U; never for writing.
 *
 * Filesystems without OFD locks (or without locks: some NFS setups) are
 * let through, as QEMU does. Locks go with the file descriptor: closing it
 * releases them, also when the process is killed. */
#ifndef SPARSYNC_IMAGE_LOCK_H
#define SPARSYNC_IMAGE_LOCK_H

#include <stdbool.h>

/* fd of the image named path (for messages), open for reading (and
 * writing for image_lock_write). 0, or -1 with the message set. */
int image_lock_read(int fd, const char *path, bool force_share);
int image_lock_write(int fd, const char *path);

#endif

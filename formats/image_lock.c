#include "image_lock.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

enum {
	PERM_BASE = 100,   /* RAW_LOCK_PERM_BASE */
	SHARED_BASE = 200, /* RAW_LOCK_SHARED_BASE */
	CONSISTENT_READ = 0, WRITE = 1, RESIZE = 3,
};

static const char *perm_name(int i)
{
	switch (i) {
	case CONSISTENT_READ: return "consistent read";
	case WRITE: return "write";
	default: return "resize";
	}
}

/* Take a shared lock on one byte; false only when another process holds
 * a conflicting (exclusive) lock there, which QEMU never does. */
static bool take(int fd, int byte)
{
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
	return fcntl(fd, F_OFD_SETLK, &fl) == 0 || (errno != EAGAIN && errno != EACCES);
}

/* Does another open file hold a lock on this byte? Asking for an
 * exclusive lock conflicts with anyone's shared one. Where locks are not
 * supported, nobody holds any. */
static bool held(int fd, int byte)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return false;
	return fl.l_type != F_UNLCK;
}

static void release(int fd)
{
	struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = PERM_BASE,
			    .l_len = SHARED_BASE + 8 - PERM_BASE };
	fcntl(fd, F_OFD_SETLK, &fl);
}

/* Take the bytes for permissions `perm` (bit i = permission i) and for
 * not sharing `unshared`, then look for a holder that conflicts. */
static int lock(int fd, const char *path, unsigned perm, unsigned unshared, bool writing)
{
	for (int i = 0; i < 4; i++) {
		if (((perm >> i) & 1) && !take(fd, PERM_BASE + i))
			goto busy;
		if (((unshared >> i) & 1) && !take(fd, SHARED_BASE + i))
			goto busy;
	}
	for (int i = 0; i < 4; i++) {
		/* Someone uses a permission we do not share. */
		if (((unshared >> i) & 1) && held(fd, PERM_BASE + i)) {
			release(fd);
			if (i == WRITE && !writing)
				return sp_err("%s: another program has it open for writing (QEMU's image "
					      "lock: a running VM?), so what is read would be of no single "
					      "moment; stop it, or give -U (--force-share) to read it anyway",
					      path);
			return sp_err("%s: another program has it open with %s permission (QEMU's "
				      "image lock: a running VM, qemu-nbd?); sparsync never writes an "
				      "image another program has open", path, perm_name(i));
		}
		/* Someone does not share a permission we use. */
		if (((perm >> i) & 1) && held(fd, SHARED_BASE + i)) {
			release(fd);
			if (writing)
				return sp_err("%s: another program is using it (QEMU's image lock: it "
					      "does not share %s); sparsync never writes an image "
					      "another program has open", path, perm_name(i));
			return sp_err("%s: another program holds it and does not share %s (QEMU's "
				      "image lock); give -U (--force-share) to read it anyway", path,
				      perm_name(i));
		}
	}
	return 0;
busy:
	release(fd);
	return sp_err("%s: locked by another program", path);
}

int image_lock_read(int fd, const char *path, bool force_share)
{
	if (force_share)
		return 0;
	return lock(fd, path, 1u << CONSISTENT_READ, 1u << WRITE | 1u << RESIZE, false);
}

int image_lock_write(int fd, const char *path)
{
	return lock(fd, path, 1u << CONSISTENT_READ | 1u << WRITE | 1u << RESIZE,
		    1u << WRITE | 1u << RESIZE, true);
}

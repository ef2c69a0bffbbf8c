/* A restricted serve (`serve --restrict-to DIR`, the forced command of a
 * backup host's authorized_keys line): the process-wide rule that every
 * file sparsync opens lies beneath DIR and, with --append-only, that no
 * file that exists is modified, renamed over or deleted.
 *
 * Process-wide on purpose: the restriction is a property of the process
 * the key runs, and the lowest layers ask it (image_open and the backing
 * chain, replace's rename and sweep, the digest file), so no code path can
 * forget it. Paths are resolved by the kernel, openat2(RESOLVE_BENEATH)
 * from a descriptor of DIR: `..` and symbolic links may move around inside
 * DIR but never out of it; nothing is decided by looking at strings.
 *
 * The threat is the client, which reaches the host only through serve: it
 * can create regular files, never links or directories, so a path resolved
 * here stays what it was resolved to while this process uses it. */
#ifndef SPARSYNC_CONFINE_H
#define SPARSYNC_CONFINE_H

#include <stdbool.h>
#include <stddef.h>

/* Start confining to dir (which must be a directory). Once only. */
int confine_init(const char *dir, bool append_only);
bool confine_active(void);
bool confine_append_only(void);

/* A path as the client names it (absolute paths and ~ start at DIR,
 * relative ones too) as the host path beneath DIR with every link
 * resolved. The last component may be absent (a new file); the directory
 * holding it must exist. Malloc'd; NULL with the reason (leads outside
 * DIR, a device node, a link to nothing) in sp_errmsg(). */
char *confine_client_path(const char *path);

/* A host path sparsync is about to open (an image, a backing file): the
 * same, for a file that exists; a copy of path when not confining. */
char *confine_host_path(const char *path);

/* msg as the client should read it: host paths beneath DIR as the client
 * names them (DIR/x as /x). buf holds the result when it differs. */
const char *confine_shown(const char *msg, char *buf, size_t size);

/* rename(2) that, under --append-only, never replaces an existing file
 * (renameat2 RENAME_NOREPLACE: EEXIST). */
int confine_rename(const char *from, const char *to);

#endif

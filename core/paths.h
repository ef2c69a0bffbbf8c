/* Paths beside a file: the directory that holds it, the hidden siblings
 * sparsync keeps next to a destination (.NAME.sparsync-XXXXXX temporaries,
 * .NAME.sparsync-undo journals), and making a change to that directory
 * durable. */
#ifndef SPARSYNC_PATHS_H
#define SPARSYNC_PATHS_H

/* The directory of path ("." for a bare name). Malloc'd; NULL: no memory. */
char *path_dir(const char *path);
/* "DIR/.BASE.suffix" for path "DIR/BASE". Malloc'd; NULL: no memory. */
char *path_sibling(const char *path, const char *suffix);
/* The last component of path as basename(1) gives it ("x.qcow2" for
 * "/srv/x.qcow2", "b" for "a/b/"). Malloc'd; NULL: no memory. */
char *path_base(const char *path);
/* "DIR/NAME" (one slash between). Malloc'd; NULL: no memory. */
char *path_join(const char *dir, const char *name);
/* fsync the directory holding path: a rename, link or unlink there is
 * durable only then. Best effort. */
void path_sync_dir(const char *path);

#endif

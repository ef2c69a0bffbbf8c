#include "replace.h"

#include "cleanup.h"
#include "confine.h"
#include "error.h"
#include "paths.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* Temporaries are named .BASE.sparsync-XXXXXX and held under an exclusive
 * flock for as long as their run lives; the kernel drops the lock when the
 * run dies, even by kill -9. So a temporary whose lock can be taken belongs
 * to nobody: remove it (the next run on the same destination cleans up
 * after a killed one). */
static void sweep_stale(const char *dir, const char *base)
{
	char prefix[512];
	int n = snprintf(prefix, sizeof prefix, ".%s.sparsync-", base);
	if (n < 0 || (size_t)n >= sizeof prefix)
		return;
	DIR *dp = opendir(dir);
	if (!dp)
		return;
	struct dirent *e;
	while ((e = readdir(dp))) {
		if (strncmp(e->d_name, prefix, (size_t)n) != 0 || strlen(e->d_name) != (size_t)n + 6)
			continue;
		int fd = openat(dirfd(dp), e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			continue;
		struct stat a, b;
		if (fstat(fd, &a) == 0 && S_ISREG(a.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0 &&
		    fstatat(dirfd(dp), e->d_name, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
		    a.st_dev == b.st_dev && a.st_ino == b.st_ino &&
		    unlinkat(dirfd(dp), e->d_name, 0) == 0)
			sp_warn("%s/%s: removed a temporary file left by an interrupted run", dir,
				e->d_name);
		close(fd);
	}
	closedir(dp);
}

void replace_sweep(const char *final_path)
{
	/* Append-only deletes nothing, not even what a killed run left. */
	if (confine_append_only())
		return;
	char *copy = strdup(final_path), *dir = path_dir(final_path);
	if (copy && dir)
		sweep_stale(dir, basename(copy));
	free(copy);
	free(dir);
}

/* A new temporary under its name, already locked: made unnamed
 * (O_TMPFILE), locked, then linked in, so no sweep ever sees it unlocked.
 * Where O_TMPFILE is missing, mkstemp then flock (a sweep in that instant
 * could take it; only on such filesystems). */
static int create_locked(char *tmpl, mode_t mode)
{
	char *dir = path_dir(tmpl);
	int fd = dir ? open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, mode) : -1;
	free(dir);
	if (fd < 0) {
		fd = mkostemp(tmpl, O_CLOEXEC);
		if (fd >= 0)
			flock(fd, LOCK_EX | LOCK_NB);
		return fd;
	}
	flock(fd, LOCK_EX | LOCK_NB);
	char proc[64];
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
	size_t len = strlen(tmpl);
	for (int tries = 0; tries < 100; tries++) {
		static const char set[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
		unsigned char rnd[6];
		if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd)
			break;
		for (int i = 0; i < 6; i++)
			tmpl[len - 6 + i] = set[rnd[i] % (sizeof set - 1)];
		if (linkat(AT_FDCWD, proc, AT_FDCWD, tmpl, AT_SYMLINK_FOLLOW) == 0)
			return fd;
		if (errno != EEXIST)
			break;
	}
	int e = errno;
	close(fd);
	errno = e;
	return -1;
}

int replace_begin(struct replacement *d, const char *final_path, const char *shown,
		  enum image_format fmt, uint64_t size, const struct image_create_opts *opts)
{
	memset(d, 0, sizeof *d);
	d->cleanup_slot = -1;
	d->lock_fd = -1;
	if (!shown)
		shown = final_path;
	d->final_path = strdup(final_path);
	d->shown_path = strdup(shown);
	d->tmp_path = path_sibling(final_path, "sparsync-XXXXXX");
	if (!d->final_path || !d->shown_path || !d->tmp_path) {
		replace_abort(d);
		return sp_err("%s: out of memory", shown);
	}
	replace_sweep(final_path);

	mode_t mask = umask(0);
	umask(mask);
	int fd = create_locked(d->tmp_path, 0600);
	if (fd < 0) {
		int e = errno;
		free(d->tmp_path);
		d->tmp_path = NULL;
		replace_abort(d);
		errno = e;
		if (e == ENOENT)
			return sp_err("%s: directory does not exist", shown);
		return sp_err("%s: cannot create: %s", shown, strerror(e));
	}
	/* mkstemp makes 0600; give the image the mode a plain create would
	 * (or keep the mode of the file it replaces). */
	struct stat old;
	fchmod(fd, stat(final_path, &old) == 0 ? (old.st_mode & 07777) : (0666 & ~mask));
	d->lock_fd = fd; /* held until commit or abort: the temporary is ours */
	d->cleanup_slot = cleanup_register(d->tmp_path);
	d->img = image_create(d->tmp_path, fmt, size, opts);
	/* Messages name the file the user asked for, not our temporary one. */
	if (!d->img) {
		sp_err_rename(d->tmp_path, shown);
		replace_abort(d);
		return -1;
	}
	image_set_name(d->img, shown);
	return 0;
}

static void replace_free(struct replacement *d)
{
	if (d->lock_fd >= 0)
		close(d->lock_fd);
	d->lock_fd = -1;
	cleanup_forget(d->cleanup_slot);
	d->cleanup_slot = -1;
	free(d->tmp_path);
	free(d->final_path);
	free(d->shown_path);
	d->tmp_path = d->final_path = d->shown_path = NULL;
	d->img = NULL;
}

static int rename_error(const char *shown)
{
	if (errno == EEXIST)
		return sp_err("%s: appeared while it was being written, and this key may not "
			      "replace files (refused by serve --append-only)", shown);
	return sp_err("%s: rename from temporary file: %s", shown, strerror(errno));
}

int replace_commit(struct replacement *d)
{
	int rc = image_flush(d->img);
	if (image_close(d->img) < 0)
		rc = -1;
	d->img = NULL;
	if (rc == 0 && confine_rename(d->tmp_path, d->final_path) < 0)
		rc = rename_error(d->shown_path);
	if (rc < 0) {
		replace_abort(d);
		return -1;
	}
	path_sync_dir(d->final_path); /* the rename is durable only then */
	replace_free(d);
	return 0;
}

void replace_abort(struct replacement *d)
{
	/* Keep the error that made us abort, not one from tearing down. */
	char saved[1024];
	snprintf(saved, sizeof saved, "%s", sp_errmsg());
	if (d->img) {
		image_close(d->img);
		d->img = NULL;
	}
	sp_err("%s", saved);
	if (d->tmp_path)
		unlink(d->tmp_path);
	replace_free(d);
}

int replace_file(const char *final_path, const void *buf, size_t len,
		 int (*before_rename)(int fd, void *ctx), void *ctx)
{
	char *tmp = path_sibling(final_path, "sparsync-XXXXXX");
	if (!tmp)
		return sp_err("%s: out of memory", final_path);
	replace_sweep(final_path);
	int fd = create_locked(tmp, 0600);
	if (fd < 0) {
		int e = errno;
		free(tmp);
		return sp_err("%s: cannot create: %s", final_path, strerror(e));
	}
	int slot = cleanup_register(tmp);
	int rc = 0;
	for (size_t done = 0; rc == 0 && done < len;) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			rc = sp_err("%s: write: %s", final_path, n < 0 ? strerror(errno) : "no progress");
		else
			done += (size_t)n;
	}
	if (rc == 0 && fsync(fd) < 0)
		rc = sp_err("%s: fsync: %s", final_path, strerror(errno));
	if (rc == 0 && before_rename && before_rename(fd, ctx) != 0)
		rc = 1;
	if (rc == 0 && confine_rename(tmp, final_path) < 0)
		rc = rename_error(final_path);
	if (rc != 0)
		unlink(tmp);
	else
		path_sync_dir(final_path);
	cleanup_forget(slot);
	close(fd);
	free(tmp);
	return rc < 0 ? -1 : rc;
}

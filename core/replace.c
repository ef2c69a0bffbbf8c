#include "replace.h"

#include "cleanup.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir_of(const char *path)
{
	char *copy = strdup(path);
	if (!copy)
		return NULL;
	char *d = strdup(dirname(copy));
	free(copy);
	return d;
}

int replace_begin(struct replacement *d, const char *final_path, const char *shown,
		  enum image_format fmt, uint64_t size, const struct image_create_opts *opts)
{
	memset(d, 0, sizeof *d);
	d->cleanup_slot = -1;
	if (!shown)
		shown = final_path;
	char *copy = strdup(final_path);
	char *dir = dir_of(final_path);
	d->final_path = strdup(final_path);
	d->shown_path = strdup(shown);
	if (!copy || !dir || !d->final_path || !d->shown_path) {
		free(copy);
		free(dir);
		replace_abort(d);
		return sp_err("%s: out of memory", shown);
	}
	const char *base = basename(copy);
	size_t len = strlen(dir) + strlen(base) + 32;
	d->tmp_path = malloc(len);
	if (!d->tmp_path) {
		free(copy);
		free(dir);
		replace_abort(d);
		return sp_err("%s: out of memory", shown);
	}
	snprintf(d->tmp_path, len, "%s/.%s.sparsync-XXXXXX", dir, base);
	free(copy);
	free(dir);

	int fd = mkstemp(d->tmp_path);
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
	mode_t mask = umask(0);
	umask(mask);
	fchmod(fd, stat(final_path, &old) == 0 ? (old.st_mode & 07777) : (0666 & ~mask));
	close(fd);
	d->cleanup_slot = cleanup_register(d->tmp_path);
	d->img = image_create(d->tmp_path, fmt, size, opts);
	if (!d->img) {
		/* Say which file the user named, not our temporary one. */
		char msg[1024];
		const char *m = sp_errmsg();
		size_t tl = strlen(d->tmp_path);
		if (strncmp(m, d->tmp_path, tl) == 0)
			m += tl + (m[tl] == ':' ? 2 : 0);
		snprintf(msg, sizeof msg, "%s", m);
		sp_err("%s: %s", shown, msg);
		replace_abort(d);
		return -1;
	}
	/* Messages name the file the user asked for, not our temporary one. */
	char *name = strdup(shown);
	if (name) {
		free(d->img->path);
		d->img->path = name;
	}
	return 0;
}

static void replace_free(struct replacement *d)
{
	cleanup_forget(d->cleanup_slot);
	d->cleanup_slot = -1;
	free(d->tmp_path);
	free(d->final_path);
	free(d->shown_path);
	d->tmp_path = d->final_path = d->shown_path = NULL;
	d->img = NULL;
}

int replace_commit(struct replacement *d)
{
	int rc = image_flush(d->img);
	if (image_close(d->img) < 0)
		rc = -1;
	d->img = NULL;
	if (rc == 0 && rename(d->tmp_path, d->final_path) < 0)
		rc = sp_err("%s: rename from temporary file: %s", d->shown_path, strerror(errno));
	if (rc < 0) {
		replace_abort(d);
		return -1;
	}
	/* The rename is only durable once the directory is. */
	char *dir = dir_of(d->final_path);
	if (dir) {
		int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0) {
			fsync(fd);
			close(fd);
		}
		free(dir);
	}
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

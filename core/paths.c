#include "paths.h"

#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *path_dir(const char *path)
{
	char *copy = strdup(path);
	if (!copy)
		return NULL;
	char *d = strdup(dirname(copy));
	free(copy);
	return d;
}

char *path_sibling(const char *path, const char *suffix)
{
	char *dir = path_dir(path), *copy = strdup(path), *out = NULL;
	if (dir && copy) {
		const char *base = basename(copy);
		size_t n = strlen(dir) + strlen(base) + strlen(suffix) + 4;
		if ((out = malloc(n)))
			snprintf(out, n, "%s/.%s.%s", dir, base, suffix);
	}
	free(dir);
	free(copy);
	return out;
}

char *path_base(const char *path)
{
	char *copy = strdup(path);
	char *b = copy ? strdup(basename(copy)) : NULL;
	free(copy);
	return b;
}

char *path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		n--;
	size_t len = n + strlen(name) + 2;
	char *out = malloc(len);
	if (out)
		snprintf(out, len, "%.*s%s%s", (int)n, dir, n && dir[n - 1] == '/' ? "" : "/", name);
	return out;
}

void path_sync_dir(const char *path)
{
	char *dir = path_dir(path);
	int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	free(dir);
}

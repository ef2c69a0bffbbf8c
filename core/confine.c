#include "confine.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct {
	bool on, append_only;
	int fd;      /* DIR, O_PATH: every resolution starts here */
	char *root;  /* DIR with its links resolved, as the kernel names it */
} cf = { .fd = -1 };

/* The path the kernel gives an open descriptor. */
static char *fd_path(int fd)
{
	char proc[64], buf[PATH_MAX];
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(proc, buf, sizeof buf - 1);
	if (n <= 0) {
		sp_err("%s: %s (is /proc mounted?)", proc, n < 0 ? strerror(errno) : "empty link");
		return NULL;
	}
	buf[n] = 0;
	char *p = strdup(buf);
	if (!p)
		sp_err("out of memory");
	return p;
}

int confine_init(const char *dir, bool append_only)
{
	int fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return sp_err("--restrict-to %s: %s", dir,
			      errno == ENOTDIR ? "not a directory" : strerror(errno));
	char *root = fd_path(fd);
	if (!root) {
		close(fd);
		return -1;
	}
	cf.fd = fd;
	cf.root = root;
	cf.append_only = append_only;
	cf.on = true;
	return 0;
}

bool confine_active(void)
{
	return cf.on;
}

bool confine_append_only(void)
{
	return cf.on && cf.append_only;
}

#define WALK_DEPTH 256
#define WALK_LINKS 40

/* openat2's RESOLVE_BENEATH by hand, where the kernel lacks it (before
 * Linux 5.6, or under valgrind): one component at a time from DIR, each
 * opened O_NOFOLLOW; a symbolic link's target is walked in its place (an
 * absolute one, or a .. above DIR, is EXDEV), at most WALK_LINKS links. */
static int walk_beneath(const char *rel)
{
	int dirs[WALK_DEPTH];
	int depth = 0, links = 0, result = -1, err = 0;
	size_t cap = strlen(rel) + 1;
	char *todo = malloc(cap);  /* what is left to walk */
	if (!todo) {
		errno = ENOMEM;
		return -1;
	}
	memcpy(todo, rel, cap);
	if ((dirs[0] = fcntl(cf.fd, F_DUPFD_CLOEXEC, 0)) < 0) {
		free(todo);
		return -1;
	}
	char *p = todo;
	for (;;) {
		while (*p == '/')
			p++;
		if (!*p) {
			result = dirs[depth--]; /* the last directory reached */
			break;
		}
		char *end = strchr(p, '/');
		char name[NAME_MAX + 1];
		size_t n = end ? (size_t)(end - p) : strlen(p);
		if (n > NAME_MAX) {
			err = ENAMETOOLONG;
			break;
		}
		memcpy(name, p, n);
		name[n] = 0;
		p += n;
		if (!strcmp(name, "."))
			continue;
		if (!strcmp(name, "..")) {
			if (depth == 0) {
				err = EXDEV;
				break;
			}
			close(dirs[depth--]);
			continue;
		}
		int fd = openat(dirs[depth], name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		struct stat sb;
		if (fd < 0 || fstat(fd, &sb) < 0) {
			err = errno;
			if (fd >= 0)
				close(fd);
			break;
		}
		if (S_ISLNK(sb.st_mode)) {
			char target[PATH_MAX];
			ssize_t tn = readlinkat(fd, "", target, sizeof target - 1);
			close(fd);
			if (tn <= 0 || ++links > WALK_LINKS) {
				err = tn < 0 ? errno : ELOOP;
				break;
			}
			if (target[0] == '/') {
				err = EXDEV;
				break;
			}
			/* Walk the target, then what followed the link. */
			size_t rest = strlen(p);
			char *nt = malloc((size_t)tn + rest + 2);
			if (!nt) {
				err = ENOMEM;
				break;
			}
			memcpy(nt, target, (size_t)tn);
			nt[tn] = '/';
			memcpy(nt + tn + 1, p, rest + 1);
			free(todo);
			todo = p = nt;
			continue;
		}
		if (!S_ISDIR(sb.st_mode)) {
			while (*p == '/')
				p++;
			if (*p) {
				close(fd);
				err = ENOTDIR;
				break;
			}
			result = fd;
			break;
		}
		if (depth + 1 >= WALK_DEPTH) {
			close(fd);
			err = ENAMETOOLONG;
			break;
		}
		dirs[++depth] = fd;
	}
	while (depth >= 0)
		close(dirs[depth--]);
	free(todo);
	if (result < 0)
		errno = err ? err : ENOENT;
	return result;
}

/* rel opened O_PATH from DIR, never leaving it. */
static int open_beneath(const char *rel, bool dir_only)
{
	static bool no_openat2;
	int fd = -1;
	if (!no_openat2) {
		struct open_how how = {
			.flags = (unsigned long long)(O_PATH | O_CLOEXEC),
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
		};
		fd = (int)syscall(SYS_openat2, cf.fd, *rel ? rel : ".", &how, sizeof how);
		if (fd < 0 && errno == ENOSYS)
			no_openat2 = true;
	}
	if (no_openat2)
		fd = walk_beneath(rel);
	struct stat sb;
	if (fd >= 0 && dir_only && (fstat(fd, &sb) < 0 || !S_ISDIR(sb.st_mode))) {
		close(fd);
		errno = ENOTDIR;
		return -1;
	}
	return fd;
}

static int resolve_error(const char *shown, int e)
{
	switch (e) {
	case EXDEV:
		return sp_err("%s: leads outside the directory this key is restricted to "
			      "(refused by serve --restrict-to)", shown);
	case ENOENT:
		return sp_err("%s: No such file or directory", shown);
	default:
		return sp_err("%s: %s", shown, strerror(e));
	}
}

/* An open descriptor's path, which must be DIR or beneath it (the kernel
 * promised it; checked again because a wrong answer here is a breach). */
static char *beneath_path(int fd, const char *shown)
{
	char *p = fd_path(fd);
	size_t n = strlen(cf.root);
	if (p && strcmp(cf.root, "/") != 0 && (strncmp(p, cf.root, n) != 0 || (p[n] && p[n] != '/'))) {
		free(p);
		resolve_error(shown, EXDEV);
		return NULL;
	}
	return p;
}

/* The last component of rel absent: its directory resolved, the name
 * appended. The name itself may be nothing at all: a link to nowhere is
 * refused (writing through it would create a file wherever it points). */
static char *resolve_absent(const char *rel, const char *shown)
{
	const char *slash = strrchr(rel, '/');
	const char *name = slash ? slash + 1 : rel;
	if (!*name || !strcmp(name, ".") || !strcmp(name, "..")) {
		resolve_error(shown, ENOENT);
		return NULL;
	}
	char *dir = strndup(rel, slash ? (size_t)(slash - rel) : 0);
	if (!dir) {
		sp_err("out of memory");
		return NULL;
	}
	int dfd = open_beneath(dir, true);
	free(dir);
	if (dfd < 0) {
		if (errno == ENOENT)
			sp_err("%s: directory does not exist", shown);
		else
			resolve_error(shown, errno);
		return NULL;
	}
	struct stat sb;
	if (fstatat(dfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
		close(dfd);
		sp_err("%s: symbolic link to a file that does not exist, or outside the directory "
		       "this key is restricted to (refused by serve --restrict-to)", shown);
		return NULL;
	}
	char *dpath = beneath_path(dfd, shown);
	close(dfd);
	if (!dpath)
		return NULL;
	size_t len = strlen(dpath) + strlen(name) + 2;
	char *p = malloc(len);
	if (p)
		snprintf(p, len, "%s%s%s", dpath, strcmp(dpath, "/") ? "/" : "", name);
	else
		sp_err("out of memory");
	free(dpath);
	return p;
}

/* rel (relative to DIR) resolved beneath DIR: a regular file or a
 * directory, or (may_be_absent) a name that does not exist yet. */
static char *resolve(const char *rel, const char *shown, bool may_be_absent)
{
	while (*rel == '/')
		rel++;
	int fd = open_beneath(rel, false);
	if (fd < 0) {
		int e = errno;
		size_t n = strlen(rel);
		if (e == ENOENT && may_be_absent && (n == 0 || rel[n - 1] != '/'))
			return resolve_absent(rel, shown);
		resolve_error(shown, e);
		return NULL;
	}
	struct stat sb;
	if (fstat(fd, &sb) < 0) {
		resolve_error(shown, errno);
		close(fd);
		return NULL;
	}
	if (!S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode)) {
		close(fd);
		sp_err("%s: is %s; a restricted serve reads and writes only image files "
		       "(refused by serve --restrict-to)", shown,
		       S_ISBLK(sb.st_mode) || S_ISCHR(sb.st_mode) ? "a device node" : "not a regular file");
		return NULL;
	}
	char *p = beneath_path(fd, shown);
	close(fd);
	return p;
}

char *confine_client_path(const char *path)
{
	const char *rel = path;
	if (rel[0] == '~') {
		/* ~ is the client's idea of home: here, DIR. */
		if (rel[1] && rel[1] != '/') {
			sp_err("%s: another user's home is refused (serve --restrict-to)", path);
			return NULL;
		}
		rel++;
	}
	return resolve(rel, path, true);
}

char *confine_host_path(const char *path)
{
	if (!cf.on) {
		char *p = strdup(path);
		if (!p)
			sp_err("out of memory");
		return p;
	}
	char *abs = NULL;
	if (path[0] != '/') {
		char cwd[PATH_MAX];
		if (!getcwd(cwd, sizeof cwd)) {
			sp_err("%s: %s", path, strerror(errno));
			return NULL;
		}
		size_t len = strlen(cwd) + strlen(path) + 2;
		if (!(abs = malloc(len))) {
			sp_err("out of memory");
			return NULL;
		}
		snprintf(abs, len, "%s/%s", cwd, path);
	}
	const char *a = abs ? abs : path;
	size_t n = strlen(cf.root);
	char *p = NULL;
	if (!strcmp(cf.root, "/"))
		p = resolve(a + 1, path, false);
	else if (!strncmp(a, cf.root, n) && (a[n] == '/' || !a[n]))
		p = resolve(a + n + (a[n] == '/'), path, false);
	else
		resolve_error(path, EXDEV);
	free(abs);
	return p;
}

int confine_rename(const char *from, const char *to)
{
	if (!confine_append_only())
		return rename(from, to);
	return renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE);
}

const char *confine_shown(const char *msg, char *buf, size_t size)
{
	if (!cf.on || !strcmp(cf.root, "/") || !strstr(msg, cf.root) || size == 0)
		return msg;
	size_t rn = strlen(cf.root), o = 0;
	for (const char *p = msg; *p && o + 1 < size;) {
		if (!strncmp(p, cf.root, rn) && (p[rn] == '/' || !p[rn] || p[rn] == ':' || p[rn] == ' ')) {
			p += rn;
			if (*p != '/')
				buf[o++] = '/';
			continue;
		}
		buf[o++] = *p++;
	}
	buf[o] = 0;
	return buf;
}

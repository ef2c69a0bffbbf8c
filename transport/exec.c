/* An external command as the transport, the way rsync's -e works: the
 * command string is split into words, then `-l USER`, `-p PORT`, `-i FILE`
 * (each when given; -e is meant for ssh-like commands), HOST and the remote
 * command are appended, and the result runs with its stdin and
 * stdout on pipes to us. Its stderr is ours, so ssh's own messages and the
 * remote's reach the user unchanged. */
#include "transport.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct exec_transport {
	struct transport base;
	pid_t pid;
	int rfd, wfd; /* our ends: read the child's stdout, write its stdin */
};

/* Split like a shell does for simple words: blanks separate, '...' is
 * literal, "..." allows \" and \\, a backslash outside quotes escapes the
 * next character. No expansion of any kind. */
static int split_words(const char *s, char ***out, size_t *count)
{
	size_t cap = 8, n = 0;
	char **v = malloc(cap * sizeof *v);
	char *word = malloc(strlen(s) + 1);
	if (!v || !word)
		goto oom;
	while (*s) {
		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		if (!*s)
			break;
		size_t k = 0;
		while (*s && *s != ' ' && *s != '\t' && *s != '\n') {
			if (*s == '\'') {
				const char *e = strchr(s + 1, '\'');
				if (!e)
					goto unterminated;
				memcpy(word + k, s + 1, (size_t)(e - s - 1));
				k += (size_t)(e - s - 1);
				s = e + 1;
			} else if (*s == '"') {
				s++;
				while (*s && *s != '"') {
					if (*s == '\\' && (s[1] == '"' || s[1] == '\\'))
						s++;
					word[k++] = *s++;
				}
				if (*s != '"')
					goto unterminated;
				s++;
			} else if (*s == '\\' && s[1]) {
				word[k++] = s[1];
				s += 2;
			} else {
				word[k++] = *s++;
			}
		}
		if (n + 1 >= cap) {
			cap *= 2;
			char **nv = realloc(v, cap * sizeof *v);
			if (!nv)
				goto oom;
			v = nv;
		}
		if (!(v[n] = strndup(word, k)))
			goto oom;
		n++;
	}
	free(word);
	v[n] = NULL;
	*out = v;
	*count = n;
	return 0;
unterminated:
	sp_err("-e: unterminated quote in the command");
	goto fail;
oom:
	sp_err("out of memory");
fail:
	for (size_t i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
	free(word);
	return -1;
}

static ssize_t exec_read(struct transport *base, void *buf, size_t len)
{
	struct exec_transport *t = (struct exec_transport *)base;
	if (t->rfd < 0)
		return 0;
	return transport_fd_read(base, t->rfd, buf, len, "the remote command");
}

static int exec_write(struct transport *base, const void *buf, size_t len)
{
	struct exec_transport *t = (struct exec_transport *)base;
	if (t->wfd < 0)
		return sp_err("%s: stream already closed for writing", base->name);
	return transport_fd_write(base, t->wfd, buf, len, "the remote command");
}

static int exec_close_write(struct transport *base)
{
	struct exec_transport *t = (struct exec_transport *)base;
	if (t->wfd >= 0)
		close(t->wfd);
	t->wfd = -1;
	return 0;
}

static void nap(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Wait for the child; if it lingers after its pipes are gone, ask it to
 * go (TERM), then insist (KILL), so a wedged command cannot hang us. After
 * --timeout fired it is known to be wedged: ask at once. */
static int reap(pid_t pid, bool wedged)
{
	int st = 0;
	long waited = wedged ? 30000 : 0;
	int sig = 0;
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return -1;
		if (waited >= 30000 && sig == 0) {
			kill(pid, SIGTERM);
			sig = SIGTERM;
			waited = 25000;
		} else if (waited >= 30000 && sig == SIGTERM) {
			kill(pid, SIGKILL);
			sig = SIGKILL;
		}
		long step = waited < 100 ? 5 : 50;
		nap(step);
		waited += step;
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return -1;
}

static int exec_close(struct transport *base, int *status)
{
	struct exec_transport *t = (struct exec_transport *)base;
	exec_close_write(base);
	if (t->rfd >= 0)
		close(t->rfd);
	t->rfd = -1;
	*status = t->pid > 0 ? reap(t->pid, base->timed_out) : -1;
	free(base->name);
	free(t);
	return 0;
}

/* The pipes are cuttable (transport.c); the command is stopped too, so
 * that its connection ends at once. */
static void exec_cut(struct transport *base)
{
	struct exec_transport *t = (struct exec_transport *)base;
	if (t->pid > 0)
		kill(t->pid, SIGTERM);
}

static const struct transport_ops exec_ops = {
	.read = exec_read,
	.write = exec_write,
	.close_write = exec_close_write,
	.close = exec_close,
	.cut = exec_cut,
};

/* Move fd to `to` in the child, clearing close-on-exec. */
static int place_fd(int fd, int to)
{
	if (fd == to)
		return fcntl(fd, F_SETFD, 0);
	return dup2(fd, to) < 0 ? -1 : 0;
}

struct transport *transport_exec_open(const struct remote_opts *o, const char *command)
{
	if (!o->rsh || !*o->rsh) {
		sp_err("-e: empty command");
		return NULL;
	}
	if (o->host[0] == '-' || (o->user && o->user[0] == '-')) {
		sp_err("%s: host and user names may not start with '-'", o->host);
		return NULL;
	}
	char **words;
	size_t nw;
	if (split_words(o->rsh, &words, &nw) < 0)
		return NULL;
	if (nw == 0) {
		free(words);
		sp_err("-e: empty command");
		return NULL;
	}
	char portbuf[16];
	snprintf(portbuf, sizeof portbuf, "%d", o->port);
	const char **argv = calloc(nw + 9, sizeof *argv);
	struct exec_transport *t = calloc(1, sizeof *t);
	char *name = strdup(o->host);
	int in[2] = { -1, -1 }, out[2] = { -1, -1 };
	if (!argv || !t || !name) {
		sp_err("out of memory");
		goto fail;
	}
	size_t k = 0;
	for (size_t i = 0; i < nw; i++)
		argv[k++] = words[i];
	if (o->user) {
		argv[k++] = "-l";
		argv[k++] = o->user;
	}
	if (o->port) {
		argv[k++] = "-p";
		argv[k++] = portbuf;
	}
	if (o->identity) {
		argv[k++] = "-i";
		argv[k++] = o->identity;
	}
	argv[k++] = o->host;
	argv[k++] = command;
	argv[k] = NULL;

	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) {
		sp_err("%s: pipe: %s", o->host, strerror(errno));
		goto fail;
	}
	/* Report a failed exec through a close-on-exec pipe: empty means the
	 * exec worked. */
	int errp[2];
	if (pipe2(errp, O_CLOEXEC) < 0) {
		sp_err("%s: pipe: %s", o->host, strerror(errno));
		goto fail;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		sp_err("%s: fork: %s", o->host, strerror(errno));
		close(errp[0]);
		close(errp[1]);
		goto fail;
	}
	if (pid == 0) {
		/* Lift the pipe ends above 2 first so placing one cannot clobber
		 * the other. */
		int a = fcntl(in[0], F_DUPFD_CLOEXEC, 3);
		int b = fcntl(out[1], F_DUPFD_CLOEXEC, 3);
		if (a < 0 || b < 0 || place_fd(a, 0) < 0 || place_fd(b, 1) < 0)
			_exit(127);
		signal(SIGPIPE, SIG_DFL);
		execvp(argv[0], (char *const *)argv);
		int e = errno;
		if (write(errp[1], &e, sizeof e) < 0)
			_exit(127);
		_exit(127);
	}
	close(errp[1]);
	int child_errno = 0;
	ssize_t got;
	while ((got = read(errp[0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR)
		;
	close(errp[0]);
	close(in[0]);
	close(out[1]);
	t->pid = pid;
	t->wfd = in[1];
	t->rfd = out[0];
	if (got == (ssize_t)sizeof child_errno) {
		waitpid(pid, NULL, 0);
		close(t->wfd);
		close(t->rfd);
		sp_err("%s: cannot run '%s': %s", o->host, argv[0], strerror(child_errno));
		in[0] = in[1] = out[0] = out[1] = -1;
		goto fail_closed;
	}
	t->base.ops = &exec_ops;
	t->base.rw_threads = true;
	t->base.name = name;
	for (size_t i = 0; i < nw; i++)
		free(words[i]);
	free(words);
	free(argv);
	return &t->base;

fail:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (out[i] >= 0)
			close(out[i]);
	}
fail_closed:
	for (size_t i = 0; i < nw; i++)
		free(words[i]);
	free(words);
	free(argv);
	free(t);
	free(name);
	return NULL;
}

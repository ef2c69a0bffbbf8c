/* Where to connect and as whom, the way OpenSSH would decide it.
 * libssh2 reads no configuration, so when OpenSSH's client is installed we
 * ask it: `ssh -G HOST` prints the effective configuration without
 * connecting. From it we take HostName, Port, User, IdentityFile and the
 * first UserKnownHostsFile; the command line wins over it, and the
 * defaults fill in when ssh is missing or fails. A host reached through
 * ProxyJump or ProxyCommand is refused with a pointer to `-e ssh`, which
 * is also the way to everything else (certificates, ...). */
#include "ssh_internal.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SSH_G_TIMEOUT_MS 5000
#define SSH_G_MAX_OUTPUT (256 * 1024)

/* The passwd entry's home, as OpenSSH uses for "~" (not $HOME). */
static const char *home_dir(void)
{
	struct passwd *pw = getpwuid(getuid());
	if (pw && pw->pw_dir && *pw->pw_dir)
		return pw->pw_dir;
	const char *h = getenv("HOME");
	return h && *h ? h : "/";
}

char *ssh_expand_home(const char *path)
{
	if (path[0] != '~' || (path[1] != '/' && path[1] != '\0'))
		return strdup(path);
	const char *h = home_dir();
	size_t n = strlen(h) + strlen(path);
	char *r = malloc(n + 1);
	if (r)
		snprintf(r, n + 1, "%s%s", h, path + 1);
	return r;
}

static long elapsed_ms(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long)(t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Run `ssh -G [-p PORT] [-l USER] -- HOST` and return its output
 * (malloc'd, NUL-terminated), or NULL on any failure. Never waits longer
 * than SSH_G_TIMEOUT_MS: a wedged ssh is killed. */
static char *run_ssh_G(const struct remote_opts *o)
{
	char portbuf[16];
	const char *argv[10];
	size_t k = 0;
	argv[k++] = "ssh";
	argv[k++] = "-G";
	if (o->port) {
		snprintf(portbuf, sizeof portbuf, "%d", o->port);
		argv[k++] = "-p";
		argv[k++] = portbuf;
	}
	if (o->user) {
		argv[k++] = "-l";
		argv[k++] = o->user;
	}
	argv[k++] = "--";
	argv[k++] = o->host;
	argv[k] = NULL;

	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return NULL;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		close(p[0]);
		close(p[1]);
		return NULL;
	}
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDWR);
		if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(p[1], 1) < 0 || dup2(devnull, 2) < 0)
			_exit(127);
		signal(SIGPIPE, SIG_DFL);
		execvp("ssh", (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	fcntl(p[0], F_SETFL, O_NONBLOCK);
	size_t cap = 8192, len = 0;
	char *out = malloc(cap);
	bool ok = out != NULL;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (ok) {
		long left = SSH_G_TIMEOUT_MS - elapsed_ms(&t0);
		if (left <= 0) {
			ok = false;
			break;
		}
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		int r = poll(&pfd, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			ok = false;
			break;
		}
		if (len + 4096 + 1 > cap) {
			if (cap >= SSH_G_MAX_OUTPUT) {
				ok = false;
				break;
			}
			char *n = realloc(out, cap * 2);
			if (!n) {
				ok = false;
				break;
			}
			out = n;
			cap *= 2;
		}
		ssize_t n = read(p[0], out + len, cap - len - 1);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			ok = n == 0;
			break;
		}
		len += (size_t)n;
	}
	close(p[0]);
	int st = 0;
	if (!ok)
		kill(pid, SIGKILL);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!ok || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		free(out);
		return NULL;
	}
	out[len] = '\0';
	return out;
}

static int add_identity(struct ssh_target *tg, const char *path)
{
	char **n = realloc(tg->identities, (tg->n_identities + 1) * sizeof *n);
	if (!n)
		return -1;
	tg->identities = n;
	if (!(n[tg->n_identities] = ssh_expand_home(path)))
		return -1;
	tg->n_identities++;
	return 0;
}

/* The defaults ssh -G lists when no IdentityFile is configured. */
static bool is_default_identity(const char *v)
{
	static const char *const defaults[] = {
		"~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
		"~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa",
	};
	for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++)
		if (strcmp(v, defaults[i]) == 0)
			return true;
	return false;
}

struct ssh_G {
	char *hostname, *user, *known_hosts;
	char *proxy;  /* "ProxyJump x" / "ProxyCommand y": we cannot follow */
	int port;
	unsigned connect_timeout; /* ConnectTimeout; 0: none */
	char **ids;
	size_t n_ids;
	bool ids_configured;
};

static void parse_ssh_G(char *out, struct ssh_G *g)
{
	char *save = NULL;
	for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *sp = strchr(line, ' ');
		if (!sp)
			continue;
		*sp = '\0';
		char *v = sp + 1;
		size_t vl = strlen(v);
		while (vl && (v[vl - 1] == '\r' || v[vl - 1] == ' '))
			v[--vl] = '\0';
		if (!*v)
			continue;
		if (strcmp(line, "hostname") == 0 && !g->hostname) {
			g->hostname = strdup(v);
		} else if (strcmp(line, "user") == 0 && !g->user) {
			g->user = strdup(v);
		} else if (strcmp(line, "port") == 0) {
			long p = strtol(v, NULL, 10);
			if (p > 0 && p < 65536)
				g->port = (int)p;
		} else if (strcmp(line, "connecttimeout") == 0) {
			long s = strtol(v, NULL, 10); /* "none" reads as 0 */
			if (s > 0 && s < 86400)
				g->connect_timeout = (unsigned)s;
		} else if (strcmp(line, "userknownhostsfile") == 0 && !g->known_hosts) {
			char *end = strchr(v, ' ');
			if (end)
				*end = '\0';
			g->known_hosts = strdup(v);
		} else if ((strcmp(line, "proxyjump") == 0 || strcmp(line, "proxycommand") == 0) &&
			   strcmp(v, "none") != 0 && !g->proxy) {
			size_t n = strlen(line) + strlen(v) + 2;
			if ((g->proxy = malloc(n)))
				snprintf(g->proxy, n, "%s %s", strcmp(line, "proxyjump") == 0 ? "ProxyJump" : "ProxyCommand", v);
		} else if (strcmp(line, "identityfile") == 0) {
			char **n = realloc(g->ids, (g->n_ids + 1) * sizeof *n);
			if (n && (n[g->n_ids] = strdup(v))) {
				g->ids = n;
				if (!is_default_identity(v))
					g->ids_configured = true;
				g->n_ids++;
			} else if (n) {
				g->ids = n;
			}
		}
	}
}

static void free_ssh_G(struct ssh_G *g)
{
	free(g->hostname);
	free(g->user);
	free(g->known_hosts);
	free(g->proxy);
	for (size_t i = 0; i < g->n_ids; i++)
		free(g->ids[i]);
	free(g->ids);
}

void ssh_target_free(struct ssh_target *tg)
{
	free(tg->alias);
	free(tg->host);
	free(tg->user);
	free(tg->known_hosts);
	for (size_t i = 0; i < tg->n_identities; i++)
		free(tg->identities[i]);
	free(tg->identities);
	memset(tg, 0, sizeof *tg);
}

int ssh_target_resolve(const struct remote_opts *o, struct ssh_target *tg)
{
	memset(tg, 0, sizeof *tg);
	if (!o->host || !*o->host)
		return sp_err("ssh: empty host name");
	if (o->host[0] == '-' || (o->user && o->user[0] == '-'))
		return sp_err("%s: host and user names may not start with '-'", o->host);

	struct ssh_G g = { 0 };
	char *out = run_ssh_G(o);
	if (out) {
		parse_ssh_G(out, &g);
		free(out);
	}

	if (g.proxy) {
		sp_err("%s: your ssh configuration reaches this host through %s, which the built-in "
		       "client cannot do; use -e ssh", o->host, g.proxy);
		free_ssh_G(&g);
		return SSH_NEEDS_OPENSSH;
	}
	tg->alias = strdup(o->host);
	tg->host = strdup(g.hostname ? g.hostname : o->host);
	tg->port = o->port ? o->port : g.port ? g.port : 22;
	tg->connect_timeout = o->connect_timeout ? o->connect_timeout
			      : g.connect_timeout ? g.connect_timeout : 30;
	if (o->user) {
		tg->user = strdup(o->user);
	} else if (g.user) {
		tg->user = strdup(g.user);
	} else {
		struct passwd *pw = getpwuid(getuid());
		if (!pw) {
			free_ssh_G(&g);
			ssh_target_free(tg);
			return sp_err("%s: cannot tell the user name (uid %u has no passwd entry); use USER@HOST",
				      o->host, (unsigned)getuid());
		}
		tg->user = strdup(pw->pw_name);
	}
	tg->known_hosts = ssh_expand_home(o->known_hosts ? o->known_hosts
					  : g.known_hosts ? g.known_hosts : "~/.ssh/known_hosts");

	bool oom = !tg->alias || !tg->host || !tg->user || !tg->known_hosts;
	if (o->identity) {
		tg->identity_explicit = true;
		oom |= add_identity(tg, o->identity) < 0;
	} else if (g.ids_configured) {
		for (size_t i = 0; i < g.n_ids; i++)
			oom |= add_identity(tg, g.ids[i]) < 0;
	} else {
		/* Keys that work with libssh2 1.10 against a current sshd first:
		 * RSA (SHA-1 signatures) is refused by OpenSSH >= 8.8. */
		static const char *const defaults[] = { "~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa" };
		for (size_t i = 0; i < 3; i++)
			oom |= add_identity(tg, defaults[i]) < 0;
	}
	free_ssh_G(&g);
	if (oom) {
		ssh_target_free(tg);
		return sp_err("%s: out of memory", o->host);
	}
	return 0;
}

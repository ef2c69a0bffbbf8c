/* Copy where one side is a remote host or a stream:
 *   push    SRC [USER@]HOST:PATH   we send, `serve --receive` writes there
 *   pull    HOST:PATH DST          `serve --send` reads there, we write
 *   stream  SRC -                  the protocol stream on stdout (an archive)
 *           - DST                  restore one from stdin
 * The remote runs over the built-in ssh client or an -e command. */
#include "copy_cli.h"

#include "../core/copy.h"
#include "../core/error.h"
#include "../core/links.h"
#include "../core/paths.h"
#include "../core/receive.h"
#include "../core/send.h"
#include "../core/stats.h"
#include "../core/track.h"
#include "../formats/change_map.h"
#include "../transport/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A growing command line for the remote shell. */
struct cmdline {
	char *s;
	size_t len, cap;
	bool oom;
};

static void cl_add(struct cmdline *c, const char *text)
{
	size_t n = strlen(text);
	if (c->oom)
		return;
	if (c->len + n + 1 > c->cap) {
		size_t cap = (c->len + n + 1) * 2;
		char *ns = realloc(c->s, cap);
		if (!ns) {
			c->oom = true;
			return;
		}
		c->s = ns;
		c->cap = cap;
	}
	memcpy(c->s + c->len, text, n + 1);
	c->len += n;
}

/* One argument, quoted for a POSIX shell: 'it'\''s'. */
static void cl_arg(struct cmdline *c, const char *arg)
{
	cl_add(c, " '");
	for (const char *p = arg; *p; p++) {
		char ch[2] = { *p, 0 };
		cl_add(c, *p == '\'' ? "'\\''" : ch);
	}
	cl_add(c, "'");
}

/* A remote path: quoted, but a leading ~ or ~user left for the remote
 * shell to expand, as scp and rsync users expect (the name is checked to
 * be a plain user name, so nothing else reaches the shell unquoted). */
static void cl_path(struct cmdline *c, const char *opt, const char *path)
{
	cl_add(c, " ");
	cl_add(c, opt);
	size_t n = path[0] == '~' ? strcspn(path, "/") : 0;
	bool plain = n > 0;
	for (size_t i = 1; i < n; i++)
		plain &= (path[i] >= 'a' && path[i] <= 'z') || (path[i] >= 'A' && path[i] <= 'Z') ||
			 (path[i] >= '0' && path[i] <= '9') || strchr("._-", path[i]);
	if (!plain) {
		cl_arg(c, path);
		return;
	}
	char word[300];
	snprintf(word, sizeof word, " %.*s", (int)(n < 256 ? n : 256), path);
	cl_add(c, word);
	if (path[n]) {
		cl_add(c, "/");
		if (path[n + 1]) {
			/* the rest, quoted, right after the slash */
			struct cmdline rest = { 0 };
			cl_arg(&rest, path + n + 1);
			cl_add(c, rest.oom || !rest.s ? "''" : rest.s + 1);
			c->oom |= rest.oom;
			free(rest.s);
		}
	}
}

static void cl_opt(struct cmdline *c, const char *opt, const char *val)
{
	cl_add(c, " ");
	cl_add(c, opt);
	if (val)
		cl_arg(c, val);
}

static char *cl_done(struct cmdline *c)
{
	if (c->oom) {
		free(c->s);
		sp_err("out of memory");
		return NULL;
	}
	return c->s;
}

/* `REMOTE_PATH serve [-j N] [--timeout S]`; the remote path is not quoted, like rsync's
 * --rsync-path, so "sudo sparsync" works. */
static void serve_prefix(struct cmdline *c, const struct copy_cli *cli)
{
	cl_add(c, cli->remote_path ? cli->remote_path : "sparsync");
	cl_add(c, " serve");
	if (cli->workers) {
		char num[32];
		snprintf(num, sizeof num, "%u", cli->workers);
		cl_opt(c, "-j", num);
	}
	if (sp_verbose())
		cl_opt(c, "-v", NULL);
	/* Like rsync: the remote gives up on a stalled client too. */
	if (cli->timeout_s) {
		char num[32];
		snprintf(num, sizeof num, "%u", cli->timeout_s);
		cl_opt(c, "--timeout", num);
	}
}

/* Several connections (core/links.h): asked for (or the cores allow
 * them), and not where one is enough by definition. */
static bool wants_links(const struct copy_cli *cli)
{
	return links_worth_asking(cli->connections) && !cli->dry_run && !cli->bwlimit;
}

/* The serve command for a push (receive into path) or a pull (send path). */
static char *serve_command(const struct copy_cli *cli, bool push, const char *path)
{
	struct cmdline c = { 0 };
	char num[32];
	serve_prefix(&c, cli);
	if (wants_links(cli))
		cl_opt(&c, "--links", NULL);
	if (push) {
		cl_path(&c, "--receive", path);
		/* A remote directory means DIR/BASENAME(SRC), as with scp. */
		char *base = path_base(cli->src.path);
		if (base && *base && cli->src.kind == EP_LOCAL)
			cl_opt(&c, "--source-name", base);
		free(base);
		cl_opt(&c, "--sync", NULL);
		if (cli->whole)
			cl_opt(&c, "--whole", NULL);
		if (cli->target_is_zero)
			cl_opt(&c, "--target-is-zero", NULL);
		if (cli->inplace)
			cl_opt(&c, "--inplace", NULL);
		if (cli->no_space_check)
			cl_opt(&c, "--no-space-check", NULL);
		if (cli->no_digest)
			cl_opt(&c, "--no-digest", NULL);
		if (cli->dry_run)
			cl_opt(&c, "--dry-run", NULL);
		if (cli->digest_file)
			cl_opt(&c, "--digest-file", cli->digest_file);
		if (cli->create.backing)
			cl_opt(&c, "--backing", cli->create.backing);
		if (cli->out_fmt != FMT_AUTO)
			cl_opt(&c, "-O", image_format_name(cli->out_fmt));
		if (cli->create.cluster_size) {
			snprintf(num, sizeof num, "%u", cli->create.cluster_size);
			cl_opt(&c, "--cluster-size", num);
		}
		if (cli->create.compress == CODEC_ZSTD)
			cl_opt(&c, "-c", "zstd");
		else if (cli->create.compress == CODEC_ZLIB)
			cl_opt(&c, "-c", "zlib");
	} else {
		cl_path(&c, "--send", path);
		if (cli->force_share)
			cl_opt(&c, "-U", NULL);
		if (cli->bitmap)
			cl_opt(&c, "--bitmap", cli->bitmap);
		if (cli->track)
			cl_opt(&c, "--track", NULL);
		if (cli->dry_run)
			cl_opt(&c, "--dry-run", NULL);
		if (cli->in_fmt != FMT_AUTO)
			cl_opt(&c, "-f", image_format_name(cli->in_fmt));
		if (cli->wire_compress)
			cl_opt(&c, "--compress", cli->wire_compress);
		if (cli->bwlimit) {
			snprintf(num, sizeof num, "%llu", (unsigned long long)cli->bwlimit);
			cl_opt(&c, "--bwlimit", num);
		}
	}
	return cl_done(&c);
}

static struct transport *connect_remote(const struct copy_cli *cli, const struct endpoint *ep,
					const char *command)
{
	bool openssh_could = false;
	struct remote_opts ro = {
		.host = ep->host,
		.user = ep->user,
		.port = ep->port ? ep->port : cli->port,
		.identity = cli->identity,
		.known_hosts = cli->known_hosts,
		.accept_new_host_key = cli->accept_new_host_key,
		.rsh = cli->rsh,
		.connect_timeout = cli->connect_timeout,
		.openssh_could = &openssh_could,
	};
	struct transport *t = NULL;
	if (cli->rsh) {
		sp_info("%s: through '%s' (-e)", ep->host, cli->rsh);
		t = transport_exec_open(&ro, command);
	} else if (cli->ssh_client != SSH_OPENSSH) {
		sp_info("%s: built-in ssh client (libssh2)", ep->host);
		t = transport_ssh_open(&ro, command);
	}
	/* Where the built-in client cannot go (ProxyJump, a key or algorithm
	 * libssh2 lacks), OpenSSH's client can: the same transfer through it,
	 * as -e ssh does, with the same known_hosts and connect timeout. */
	if (!t && !cli->rsh && cli->ssh_client != SSH_BUILTIN &&
	    (openssh_could || cli->ssh_client == SSH_OPENSSH)) {
		if (openssh_could)
			sp_info("%s; using OpenSSH's ssh instead", sp_errmsg());
		char rsh[2048];
		int n = snprintf(rsh, sizeof rsh, "ssh -o ConnectTimeout=%u",
				 cli->connect_timeout ? cli->connect_timeout : 30);
		if (cli->known_hosts && !strchr(cli->known_hosts, '\''))
			n += snprintf(rsh + n, sizeof rsh - (size_t)n, " -o 'UserKnownHostsFile=%s'",
				      cli->known_hosts);
		if (cli->accept_new_host_key && (size_t)n < sizeof rsh)
			n += snprintf(rsh + n, sizeof rsh - (size_t)n, " -o StrictHostKeyChecking=accept-new");
		if ((size_t)n >= sizeof rsh) {
			sp_err("%s: ssh options too long", ep->host);
			return NULL;
		}
		ro.rsh = rsh;
		t = transport_exec_open(&ro, command);
	}
	if (t) {
		t->bwlimit = cli->bwlimit;
		transport_set_timeout(t, cli->timeout_s);
	}
	return t;
}

struct transport *remote_open_hashes(const struct copy_cli *cli, const struct endpoint *ep,
				     uint32_t unit)
{
	struct cmdline c = { 0 };
	char num[32];
	serve_prefix(&c, cli);
	cl_path(&c, "--hashes", ep->path);
	if (cli->force_share)
		cl_opt(&c, "-U", NULL);
	snprintf(num, sizeof num, "%u", unit);
	cl_opt(&c, "--hash-unit", num);
	if (cli->in_fmt != FMT_AUTO)
		cl_opt(&c, "-f", image_format_name(cli->in_fmt));
	char *cmd = cl_done(&c);
	struct transport *t = cmd ? connect_remote(cli, ep, cmd) : NULL;
	free(cmd);
	return t;
}

/* Close the connection and fold the remote's exit status into the result.
 * Status 1 is sparsync's own failure, already explained by an ERROR record
 * or its stderr line; other statuses (127 no such command, 255 ssh failed,
 * 128+N killed) say something the user needs, except after --timeout,
 * when we stopped the wedged remote ourselves. */
int remote_finish(struct transport *t, int rc)
{
	char saved[1024];
	snprintf(saved, sizeof saved, "%s", sp_errmsg());
	char *name = strdup(t->name);
	bool we_stopped_it = t->timed_out;
	int status;
	int crc = transport_close(t, &status);
	if (rc < 0) {
		if (status > 1 && !we_stopped_it)
			sp_err("%s (remote command exit status %d)", saved, status);
		else
			sp_err("%s", saved);
	} else if (crc < 0) {
		rc = -1;
	} else if (status != 0) {
		rc = sp_err("%s: remote command exited with status %d", name ? name : "remote", status);
	}
	free(name);
	return rc < 0 ? -1 : 0;
}

/* Further connections of a session: `serve --join NAME` on the same host,
 * through the same client as the first. */
struct link_target {
	const struct copy_cli *cli;
	const struct endpoint *ep;
	const struct links *L;
};

static struct transport *open_link(void *ctx, unsigned index)
{
	const struct link_target *lt = ctx;
	(void)index;
	struct cmdline c = { 0 };
	serve_prefix(&c, lt->cli);
	cl_opt(&c, "--join", lt->L->offer.name);
	char *cmd = cl_done(&c);
	struct transport *t = cmd ? connect_remote(lt->cli, lt->ep, cmd) : NULL;
	free(cmd);
	return t;
}

/* Close the further connections: politely after a good copy (the
 * session's END covered their data; their remote processes end with it),
 * at once after a failure, when nobody may be there to answer. */
static void links_close(struct links *L, struct sp_stats *st, bool failed)
{
	st->connections = 1 + L->n;
	if (failed)
		links_cut(L);
	links_free(L);
}

static void sender_setup(const struct copy_cli *cli, const struct image *src, bool stream,
			 struct send_opts *so, struct copy_opts *co)
{
	memset(so, 0, sizeof *so);
	memset(co, 0, sizeof *co);
	so->codec = (struct codec_choice){ .codec = WIRE_ZSTD, .level = 1, .adapt = true };
	if (cli->wire_compress)
		codec_parse(cli->wire_compress, &so->codec); /* checked when parsed */
	so->block_size = BLOCK_SIZE_DEFAULT;
	if (src->granularity > so->block_size && src->granularity <= PROTO_BLOCK_MAX)
		so->block_size = src->granularity;
	so->stream = stream;
	so->read_peer_error = !stream;
	so->sync = !stream;
	so->dry_run = cli->dry_run;
	so->links = !stream && wants_links(cli);
	co->block_size = so->block_size;
	co->workers = cli->workers;
	co->progress = cli->progress;
	co->read_ahead = true;
}

/* Serve offered several connections: open the ones worth it beside the
 * copy, which starts on the first at once. */
static int start_links(const struct copy_cli *cli, const struct endpoint *ep, struct sender *snd,
		       struct image *src, struct links *L, struct link_target *lt)
{
	uint64_t data;
	if (image_data_bytes(src, &data) < 0)
		return -1;
	L->offer = snd->offer;
	L->mine = snd->mine;
	L->me = ROLE_SENDER;
	L->peer = snd->t->name;
	L->timeout_s = cli->timeout_s;
	*lt = (struct link_target){ .cli = cli, .ep = ep, .L = L };
	L->open = open_link;
	L->open_ctx = lt;
	L->want = links_want(cli->connections, snd->offer.cores, data);
	sp_info("%s: %u connection%s (%s)", snd->t->name, L->want + 1, L->want ? "s" : "",
		cli->connections ? "--connections" : "from the cores and the data");
	sender_links(snd, L);
	if (links_client_start(L) < 0)
		return -1;
	if (cli->connections)
		links_wait(L); /* asked for N: all N carry data from the start */
	return 0;
}

/* Send src over t: hellos, IMAGE, the engine's records, END (+ ACK). */
static int send_image(const struct copy_cli *cli, struct image *src, struct transport *t,
		      bool stream, struct sp_stats *st)
{
	struct send_opts so;
	struct copy_opts co;
	sender_setup(cli, src, stream, &so, &co);
	struct sender snd;
	struct change_map changed = { 0 };
	struct track tr = { 0 };
	struct links L = { 0 };
	struct link_target lt;
	int rc = sender_open(&snd, t, &so, st);
	if (rc == 0 && snd.offered)
		rc = start_links(cli, &cli->dst, &snd, src, &L, &lt);
	if (rc == 0 && cli->bitmap)
		rc = sender_use_bitmap(&snd, src, cli->bitmap, &changed, &co);
	if (rc == 0 && cli->track)
		rc = sender_track(&snd, src, &tr, &co);
	if (rc == 0)
		rc = sender_begin(&snd, src);
	if (rc == 0)
		rc = copy_run(src, sender_sink(&snd), &co, st);
	if (rc < 0)
		sender_abort(&snd);
	else if (cli->track && !cli->dry_run)
		track_finish(&tr, src); /* the receiver has acknowledged: DST is complete */
	change_map_free(&changed);
	track_free(&tr, src);
	/* A dry run: what a real one would have sent. */
	st->bytes_sent = sender_bytes_out(&snd) + snd.dry_wire;
	if (rc == 0)
		st->bytes_received = snd.rd.bytes;
	sender_free(&snd);
	if (!stream)
		links_close(&L, st, rc < 0);
	return rc < 0 ? -1 : 0;
}

static int push(const struct copy_cli *cli, struct sp_stats *st)
{
	struct image *src = image_open(cli->src.path, cli->in_fmt, IMAGE_RDONLY | (cli->force_share ? IMAGE_FORCE_SHARE : 0));
	if (!src)
		return -1;
	char *cmd = serve_command(cli, true, cli->dst.path);
	struct transport *t = cmd ? connect_remote(cli, &cli->dst, cmd) : NULL;
	free(cmd);
	if (!t) {
		image_close(src);
		return -1;
	}
	int rc = send_image(cli, src, t, false, st);
	rc = remote_finish(t, rc);
	image_close(src);
	return rc;
}

static int pull(const struct copy_cli *cli, struct sp_stats *st)
{
	char *cmd = serve_command(cli, false, cli->src.path);
	struct transport *t = cmd ? connect_remote(cli, &cli->src, cmd) : NULL;
	free(cmd);
	if (!t)
		return -1;
	/* The remote paces its own sending; our writes are tiny. */
	t->bwlimit = 0;
	char *pulled_name = path_base(cli->src.path); /* a local directory: DIR/NAME */
	struct links L = { 0 };
	struct link_target lt = { .cli = cli, .ep = &cli->src, .L = &L };
	L.open = open_link;
	L.open_ctx = &lt;
	struct receive_opts ro = {
		.dst_path = cli->dst.path, .out_fmt = cli->out_fmt, .create = &cli->create,
		.whole = cli->whole, .target_is_zero = cli->target_is_zero,
		.inplace = cli->inplace, .no_space_check = cli->no_space_check, .sync = true,
		.no_digest = cli->no_digest, .digest_file = cli->digest_file,
		.src_name = pulled_name, .dry_run = cli->dry_run,
		.workers = cli->workers, .progress = cli->progress,
		.links_client = wants_links(cli) ? &L : NULL, .connections = cli->connections,
	};
	int rc = receive_run(t, &ro, st);
	free(pulled_name);
	if (ro.links_client)
		links_close(&L, st, rc < 0);
	return remote_finish(t, rc);
}

static int stream_out(const struct copy_cli *cli, struct sp_stats *st)
{
	if (isatty(STDOUT_FILENO))
		return sp_err("stdout is a terminal; redirect the stream to a file or a pipe");
	struct image *src = image_open(cli->src.path, cli->in_fmt, IMAGE_RDONLY | (cli->force_share ? IMAGE_FORCE_SHARE : 0));
	if (!src)
		return -1;
	struct transport *t = transport_fd_open(-1, STDOUT_FILENO, "stdout");
	if (!t) {
		image_close(src);
		return -1;
	}
	t->bwlimit = cli->bwlimit;
	transport_set_timeout(t, cli->timeout_s);
	int rc = send_image(cli, src, t, true, st);
	if (transport_close(t, NULL) < 0)
		rc = -1;
	image_close(src);
	return rc;
}

static int stream_in(const struct copy_cli *cli, struct sp_stats *st)
{
	/* SRC is '-', or a file that holds a stream (cmd_copy.c). */
	int fd = STDIN_FILENO;
	if (cli->src.path && (fd = open(cli->src.path, O_RDONLY | O_CLOEXEC)) < 0)
		return sp_err("%s: %s", cli->src.path, strerror(errno));
	if (!cli->src.path && isatty(STDIN_FILENO))
		return sp_err("stdin is a terminal; feed a sparsync stream on stdin");
	struct transport *t = transport_fd_open(fd, -1, cli->src.path ? cli->src.path : "stdin");
	if (!t) {
		if (fd != STDIN_FILENO)
			close(fd);
		return -1;
	}
	transport_set_timeout(t, cli->timeout_s);
	struct receive_opts ro = {
		.dst_path = cli->dst.path, .out_fmt = cli->out_fmt, .create = &cli->create,
		.stream = true, .target_is_zero = cli->target_is_zero,
		.no_space_check = cli->no_space_check, .progress = cli->progress,
	};
	int rc = receive_run(t, &ro, st);
	transport_close(t, NULL);
	return rc < 0 ? -1 : 0;
}

int copy_remote(const struct copy_cli *cli, struct sp_stats *st)
{
	double t0 = now_seconds();
	int rc;
	if (cli->dst.kind == EP_STREAM)
		rc = stream_out(cli, st);
	else if (cli->src.kind == EP_STREAM)
		rc = stream_in(cli, st);
	else if (cli->dst.kind == EP_REMOTE)
		rc = push(cli, st);
	else
		rc = pull(cli, st);
	st->seconds = now_seconds() - t0;
	return rc;
}

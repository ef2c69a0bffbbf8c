/* Everything `sparsync copy` was asked to do, parsed once and passed down
 * (no globals). */
#ifndef SPARSYNC_COPY_CLI_H
#define SPARSYNC_COPY_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/progress.h"
#include "../formats/image.h"
#include "endpoint.h"

struct copy_cli {
	struct endpoint src, dst;
	enum image_format in_fmt;   /* -f */
	enum image_format out_fmt;  /* -O */
	struct image_create_opts create; /* --cluster-size, -c, --backing */
	bool json, whole;
	bool stats;                 /* --stats: a labelled summary, like rsync's */
	bool dry_run;               /* -n: compare, count, write nothing */
	bool target_is_zero;        /* --target-is-zero: a device DST reads as zeros */
	bool inplace;               /* --inplace: update DST without the undo journal */
	bool no_space_check;        /* --no-space-check */
	bool no_digest;             /* --no-digest */
	bool force_share;           /* -U: read images other programs write (image_lock.h) */
	const char *digest_file;    /* --digest-file PATH */
	const char *bitmap;         /* --bitmap NAME: copy what SRC's dirty bitmap says changed */
	bool track;                 /* --track: keep our own bitmap in SRC (core/track.h) */
	enum progress_mode progress;
	bool quiet;
	unsigned workers;           /* -j */
	/* remote */
	int port;                   /* -p, 0 = default */
	const char *identity;       /* -i */
	const char *known_hosts;    /* --known-hosts */
	bool accept_new_host_key;
	const char *remote_path;    /* --remote-path, default "sparsync" */
	const char *rsh;            /* -e / --rsh */
	const char *wire_compress;  /* --compress zstd[:LEVEL]|lz4|none; NULL = default */
	uint64_t bwlimit;           /* bytes per second, 0 = none */
	unsigned connections;       /* --connections N, 0 = from the cores (core/links.h) */
	unsigned timeout_s;         /* --timeout, 0 = none */
	unsigned connect_timeout;   /* --connect-timeout, 0 = ssh config or 30 s */
	enum { SSH_AUTO, SSH_BUILTIN, SSH_OPENSSH } ssh_client; /* --ssh */
};

/* getopt_long codes of the options copy and verify share; each command
 * numbers its own from OPT_CLI_NEXT. */
enum {
	OPT_KNOWN_HOSTS = 256, OPT_ACCEPT_NEW, OPT_REMOTE_PATH, OPT_TIMEOUT, OPT_SSH,
	OPT_CONNECT_TIMEOUT, OPT_CLI_NEXT,
};
#define CLI_REMOTE_LONGOPTS \
	{ "known-hosts", required_argument, NULL, OPT_KNOWN_HOSTS }, \
	{ "accept-new-host-key", no_argument, NULL, OPT_ACCEPT_NEW }, \
	{ "remote-path", required_argument, NULL, OPT_REMOTE_PATH }, \
	{ "timeout", required_argument, NULL, OPT_TIMEOUT }, \
	{ "rsh", required_argument, NULL, 'e' }, \
	{ "force-share", no_argument, NULL, 'U' }, \
	{ "ssh", required_argument, NULL, OPT_SSH }, \
	{ "connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT }, \
	{ "verbose", no_argument, NULL, 'v' }

/* The shared options -j -p -i -e --known-hosts --accept-new-host-key
 * --remote-path --timeout (cli_util.c): stores option c with argument arg in cli and
 * returns 0; -1 when c is not one of them; EXIT_USAGE (message printed
 * for cmd) when its value is bad. */
int cli_shared_option(struct copy_cli *cli, const char *cmd, int c, const char *arg);

/* Local copy or sync (cmd_copy_local.c). Fills st. Returns 0 or -1. */
struct sp_stats;
int copy_local(const struct copy_cli *cli, struct sp_stats *st);
/* Copy where one side is a remote host or a stream (cmd_copy_remote.c). */
int copy_remote(const struct copy_cli *cli, struct sp_stats *st);
/* For verify (cmd_copy_remote.c): run `serve --hashes` for ep's path on
 * ep's host with cli's remote options; and close a remote connection,
 * folding its exit status into rc (0 or -1). */
struct transport;
struct transport *remote_open_hashes(const struct copy_cli *cli, const struct endpoint *ep,
				     uint32_t unit);
int remote_finish(struct transport *t, int rc);

#endif

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
};

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

/* `sparsync serve`, the remote half: its request (parsed from the command
 * line, or for a restricted serve from SSH_ORIGINAL_COMMAND) and running
 * it. */
#ifndef SPARSYNC_SERVE_H
#define SPARSYNC_SERVE_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/codec.h"
#include "../formats/image.h"

struct serve_args {
	const char *receive, *send, *hashes;
	const char *join;       /* --join NAME: a further connection of a session (core/links.h) */
	bool links;             /* --links: offer several connections */
	enum image_format in_fmt, out_fmt;
	struct image_create_opts create;
	struct codec_choice codec;
	uint64_t bwlimit;
	bool whole, sync, target_is_zero, inplace, no_space_check, no_digest, force_share, track,
		dry_run;
	const char *digest_file, *bitmap, *source_name;
	uint32_t hash_unit;
	unsigned workers;
	unsigned timeout_s;
};

/* Parse a serve request (argv[0] is "serve"). 0, or the exit status of a
 * usage error already printed. */
int serve_parse(int argc, char **argv, struct serve_args *a);
/* Run it over stdin/stdout. refusal: the request may not run (a restricted
 * serve's rule); it fails with this message the way a failure to open its
 * file would, so the client shows it. Returns the exit status. */
int serve_run(const struct serve_args *a, const char *refusal);

/* `serve --restrict-to DIR [--read-only|--write-only] [--append-only]`,
 * the forced command of an authorized_keys line (cmd/serve_restrict.c).
 * serve_restricted_asked: argv holds one of those options. */
bool serve_restricted_asked(int argc, char **argv);
int serve_restricted(int argc, char **argv);

#endif

/* `sparsync serve`: the remote half, started by `copy` over ssh (like
 * `rsync --server`). It speaks the protocol on stdin/stdout; stdout carries
 * nothing else. Errors go to the peer as an ERROR record and to stderr as
 * one line (which ssh hands to the user); exit 1. */
#include "cmd.h"
#include "serve.h"

#include "../core/confine.h"
#include "../formats/nbd.h"
#include "../core/copy.h"
#include "../core/error.h"
#include "../core/links.h"
#include "../core/receive.h"
#include "../core/send.h"
#include "../core/sync_hash.h"
#include "../core/track.h"
#include "../core/units.h"
#include "../formats/change_map.h"
#include "../formats/image.h"
#include "../transport/transport.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char serve_usage[] =
	"usage: sparsync serve --receive PATH [-O raw|qcow2] [--cluster-size SIZE] [-c zstd|zlib]\n"
	"                      [--sync] [--backing FILE] [--whole] [--target-is-zero]\n"
	"                      [--inplace] [--no-space-check] [--no-digest]\n"
	"                      [--digest-file PATH] [--source-name NAME] [--dry-run]\n"
	"       sparsync serve --send PATH [-f raw|qcow2] [-U] [--bitmap NAME | --track]\n"
	"                      [--compress C]\n"
	"                      [--bwlimit RATE]\n"
	"       sparsync serve --hashes PATH [-f raw|qcow2] [-U] [--hash-unit SIZE]\n"
	"       sparsync serve --join NAME\n"
	"       sparsync serve --restrict-to DIR [--read-only | --write-only] [--append-only]\n"
	"Each of the first three also takes -j N, --timeout SECONDS and -v; --receive\n"
	"and --send take --links (offer further connections, which --join NAME hands\n"
	"to the session: copy --connections).\n"
	"The remote half of 'sparsync copy' and 'sparsync verify', started by them\n"
	"over ssh: speaks the sparsync protocol on stdin/stdout. Not meant to be run\n"
	"by hand. With --restrict-to it is the forced command of an authorized_keys\n"
	"line: it runs the serve request in SSH_ORIGINAL_COMMAND, with every path\n"
	"inside DIR (see 'Setting up a backup host' in sparsync(1)).\n";

enum {
	OPT_RECEIVE = 256, OPT_SEND, OPT_HASHES, OPT_CLUSTER, OPT_COMPRESS, OPT_BWLIMIT,
	OPT_BACKING, OPT_WHOLE, OPT_HASH_UNIT, OPT_SYNC, OPT_TIMEOUT, OPT_TARGET_ZERO, OPT_INPLACE,
	OPT_NO_SPACE, OPT_NO_DIGEST, OPT_DIGEST_FILE, OPT_BITMAP, OPT_TRACK, OPT_SOURCE_NAME,
	OPT_DRY_RUN, OPT_JOIN, OPT_LINKS,
};


int serve_parse(int argc, char **argv, struct serve_args *a)
{
	static const struct option opts[] = {
		{ "receive", required_argument, NULL, OPT_RECEIVE },
		{ "send", required_argument, NULL, OPT_SEND },
		{ "cluster-size", required_argument, NULL, OPT_CLUSTER },
		{ "compress", required_argument, NULL, OPT_COMPRESS },
		{ "bwlimit", required_argument, NULL, OPT_BWLIMIT },
		{ "hashes", required_argument, NULL, OPT_HASHES },
		{ "backing", required_argument, NULL, OPT_BACKING },
		{ "whole", no_argument, NULL, OPT_WHOLE },
		{ "target-is-zero", no_argument, NULL, OPT_TARGET_ZERO },
		{ "inplace", no_argument, NULL, OPT_INPLACE },
		{ "no-space-check", no_argument, NULL, OPT_NO_SPACE },
		{ "no-digest", no_argument, NULL, OPT_NO_DIGEST },
		{ "digest-file", required_argument, NULL, OPT_DIGEST_FILE },
		{ "bitmap", required_argument, NULL, OPT_BITMAP },
		{ "track", no_argument, NULL, OPT_TRACK },
		{ "source-name", required_argument, NULL, OPT_SOURCE_NAME },
		{ "dry-run", no_argument, NULL, OPT_DRY_RUN },
		{ "join", required_argument, NULL, OPT_JOIN },
		{ "links", no_argument, NULL, OPT_LINKS },
		{ "sync", no_argument, NULL, OPT_SYNC },
		{ "hash-unit", required_argument, NULL, OPT_HASH_UNIT },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	int c;
	uint64_t v;
	a->codec = (struct codec_choice){ .codec = WIRE_ZSTD, .level = 1, .adapt = true };
	a->hash_unit = SYNC_UNIT_RAW;
	while ((c = getopt_long(argc, argv, "f:O:c:j:Uhv", opts, NULL)) != -1) {
		switch (c) {
		case OPT_RECEIVE: a->receive = optarg; break;
		case OPT_SEND: a->send = optarg; break;
		case OPT_HASHES: a->hashes = optarg; break;
		case OPT_BACKING: a->create.backing = optarg; break;
		case OPT_WHOLE: a->whole = true; break;
		case OPT_TARGET_ZERO: a->target_is_zero = true; break;
		case OPT_INPLACE: a->inplace = true; break;
		case OPT_NO_SPACE: a->no_space_check = true; break;
		case OPT_NO_DIGEST: a->no_digest = true; break;
		case 'U': a->force_share = true; break;
		case 'v':
			/* The client's -v: what this side decides (the levels a
			 * pull's compression picks) reaches the user too. */
			sp_set_verbose(sp_verbose() + 1);
			sp_set_info_name("sparsync serve");
			break;
		case OPT_DIGEST_FILE: a->digest_file = optarg; break;
		case OPT_BITMAP: a->bitmap = optarg; break;
		case OPT_TRACK: a->track = true; break;
		case OPT_SOURCE_NAME: a->source_name = optarg; break;
		case OPT_DRY_RUN: a->dry_run = true; break;
		case OPT_JOIN: a->join = optarg; break;
		case OPT_LINKS: a->links = true; break;
		case OPT_SYNC: a->sync = true; break;
		case OPT_HASH_UNIT:
			if (parse_size(optarg, &v) < 0 || v < SYNC_UNIT_MIN || v > SYNC_UNIT_MAX ||
			    (v & (v - 1)))
				return usage_error("serve", "bad hash unit '%s'", optarg);
			a->hash_unit = (uint32_t)v;
			break;
		case 'j':
			if (parse_size(optarg, &v) < 0 || v < 1 || v > 256)
				return usage_error("serve", "-j takes a number of threads from 1 to 256");
			a->workers = (unsigned)v;
			break;
		case OPT_TIMEOUT:
			if (parse_size(optarg, &v) < 0 || v < 1 || v > 86400)
				return usage_error("serve", "bad --timeout '%s'", optarg);
			a->timeout_s = (unsigned)v;
			nbd_set_timeout(a->timeout_s);
			break;
		case 'f':
		case 'O': {
			enum image_format f = image_format_parse(optarg);
			if (f == FMT_AUTO)
				return usage_error("serve", "unknown format '%s'", optarg);
			*(c == 'f' ? &a->in_fmt : &a->out_fmt) = f;
			break;
		}
		case OPT_CLUSTER:
			if (parse_size(optarg, &v) < 0 || v < 512 || v > (2u << 20) || (v & (v - 1)))
				return usage_error("serve", "bad cluster size '%s'", optarg);
			a->create.cluster_size = (uint32_t)v;
			break;
		case 'c':
			if (strcmp(optarg, "zstd") == 0)
				a->create.compress = CODEC_ZSTD;
			else if (strcmp(optarg, "zlib") == 0)
				a->create.compress = CODEC_ZLIB;
			else
				return usage_error("serve", "-c takes zstd or zlib");
			break;
		case OPT_COMPRESS:
			if (codec_parse(optarg, &a->codec) < 0)
				return usage_error("serve", "%s", sp_errmsg());
			break;
		case OPT_BWLIMIT:
			if (parse_size(optarg, &v) < 0 || v == 0)
				return usage_error("serve", "bad --bwlimit rate '%s'", optarg);
			a->bwlimit = v;
			break;
		case 'h': fputs(serve_usage, stdout); exit(0);
		default: return EXIT_USAGE;
		}
	}
	if (optind != argc)
		return usage_error("serve", "unexpected argument '%s'", argv[optind]);
	if ((a->receive != NULL) + (a->send != NULL) + (a->hashes != NULL) + (a->join != NULL) != 1)
		return usage_error("serve", "give exactly one of --receive PATH, --send PATH, "
				   "--hashes PATH and --join NAME");
	if (a->join && !proto_link_name_ok(a->join))
		return usage_error("serve", "--join %s: not a sparsync rendezvous name", a->join);
	return 0;
}

static int serve_send(struct transport *t, const struct serve_args *a, const char *refusal)
{
	struct sp_stats st;
	memset(&st, 0, sizeof st);
	/* Open first to learn the block size, but report a failure only after
	 * the hellos, so that even "no such file" travels as an ERROR record. */
	char open_err[1024] = "";
	struct image *src = NULL;
	if (refusal)
		snprintf(open_err, sizeof open_err, "%s", refusal);
	else if (!(src = image_open(a->send, a->in_fmt,
				    IMAGE_RDONLY | (a->force_share ? IMAGE_FORCE_SHARE : 0))))
		snprintf(open_err, sizeof open_err, "%s", sp_errmsg());
	struct send_opts so = { .codec = a->codec, .block_size = BLOCK_SIZE_DEFAULT, .sync = true };
	struct links L = { 0 };
	/* Several connections; when the rendezvous cannot be made, the
	 * client gets one. */
	if (a->links && !a->dry_run && links_host_open(&L) == 0)
		so.offer = &L;
	else if (a->links)
		sp_err_clear();
	if (src && src->granularity > so.block_size && src->granularity <= PROTO_BLOCK_MAX)
		so.block_size = src->granularity;
	struct sender snd;
	int rc = sender_open(&snd, t, &so, &st);
	if (rc == 0 && !src)
		rc = sp_err("%s", open_err);

	struct copy_opts co = { .block_size = so.block_size, .workers = a->workers,
				.progress = PROGRESS_OFF, .read_ahead = true };
	struct change_map changed = { 0 };
	struct track tr = { 0 };
	if (rc == 0 && a->bitmap)
		rc = sender_use_bitmap(&snd, src, a->bitmap, &changed, &co);
	if (rc == 0 && a->track)
		rc = sender_track(&snd, src, &tr, &co);
	if (rc == 0)
		rc = sender_begin(&snd, src);
	if (rc == 0)
		rc = copy_run(src, sender_sink(&snd), &co, &st);
	/* The client has acknowledged: DST is complete (a dry run's is not). */
	if (rc == 0 && a->track && !a->dry_run)
		track_finish(&tr, src);
	change_map_free(&changed);
	track_free(&tr, src);
	if (rc < 0)
		rc = sender_abort(&snd);
	/* The client went away (it failed, or its connection did): it knows
	 * why better than we do, and nobody reads our stderr now. */
	if (rc < 0 && snd.dead)
		rc = PROTO_PEER_FAILED;
	sender_free(&snd);
	links_free(&L);
	image_close(src);
	return rc;
}

int serve_run(const struct serve_args *a, const char *refusal)
{
	int rc;
	if (a->join) {
		if (links_join_run(a->join) == 0)
			return 0;
		fprintf(stderr, "sparsync serve: %s\n", sp_errmsg());
		return EXIT_FAIL;
	}
	struct transport *t = transport_fd_open(STDIN_FILENO, STDOUT_FILENO, "client");
	if (!t)
		return fail();
	t->bwlimit = a->bwlimit;
	transport_set_timeout(t, a->timeout_s);
	if (a->receive) {
		struct sp_stats st;
		memset(&st, 0, sizeof st);
		struct receive_opts ro = {
			.dst_path = a->receive, .out_fmt = a->out_fmt, .create = &a->create,
			.whole = a->whole, .target_is_zero = a->target_is_zero, .inplace = a->inplace,
			.no_space_check = a->no_space_check, .sync = a->sync,
			.no_digest = a->no_digest, .digest_file = a->digest_file,
			.src_name = a->source_name, .dry_run = a->dry_run,
			.workers = a->workers,
			.progress = PROGRESS_OFF, .refusal = refusal,
		};
		struct links L = { 0 };
		if (a->links && !a->dry_run && !refusal) {
			if (links_host_open(&L) == 0)
				ro.links_host = &L;
			else
				sp_err_clear(); /* one connection, then */
		}
		rc = receive_run(t, &ro, &st);
		links_free(&L);
	} else if (a->hashes) {
		rc = hashes_serve(t, a->hashes, a->in_fmt, a->hash_unit, a->workers, a->force_share,
				  refusal);
	} else {
		rc = serve_send(t, a, refusal);
	}
	transport_close(t, NULL);
	if (rc == 0)
		return 0;
	/* When the peer told us why, it knows already; when we told it, it
	 * shows the message: one line, from the client. */
	if (rc != PROTO_PEER_FAILED && rc != PROTO_ERROR_SENT) {
		char shown[1024];
		fprintf(stderr, "sparsync serve: %s\n", confine_shown(sp_errmsg(), shown, sizeof shown));
	}
	return EXIT_FAIL;
}

int cmd_serve(int argc, char **argv)
{
	if (serve_restricted_asked(argc, argv))
		return serve_restricted(argc, argv);
	struct serve_args a;
	memset(&a, 0, sizeof a);
	int rc = serve_parse(argc, argv, &a);
	return rc != 0 ? rc : serve_run(&a, NULL);
}

#include "cmd.h"

#include "../core/codec.h"
#include "../core/error.h"
#include "../core/stats.h"
#include "../core/units.h"
#include "../formats/image.h"
#include "copy_cli.h"

#include "../core/protocol.h"

#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char copy_usage[] =
	"usage: sparsync copy [OPTIONS] SRC DST\n"
	"Copy a sparse raw or qcow2 image, or sync DST when it exists. SRC or DST\n"
	"(not both) may be [USER@]HOST:PATH; '-' is a stream on stdin/stdout.\n"
	"\n"
	"Image options:\n"
	"  -f raw|qcow2            source format (default: detected)\n"
	"  -O raw|qcow2            destination format (default: DST extension, then\n"
	"                          an existing DST's format, then the source's)\n"
	"  --cluster-size SIZE     qcow2 cluster size, 512 .. 2M (default 64K)\n"
	"  -c zstd|zlib            store qcow2 clusters compressed\n"
	"  --backing FILE          write DST as a qcow2 overlay of FILE holding only\n"
	"                          the clusters that differ\n"
	"  --whole                 rewrite DST completely instead of syncing it\n"
	"  --inplace               sync an existing DST without the undo journal: faster,\n"
	"                          but an interrupted sync leaves a mix of old and new\n"
	"  --no-space-check        do not refuse a copy that DST's filesystem seems too\n"
	"                          full for\n"
	"  --target-is-zero        DST is a block device that already reads as zeros:\n"
	"                          skip zeroing the source's holes there\n"
	"  --digest-file PATH      keep DST's digest file (its block hashes, so the next\n"
	"                          sync need not read DST) at PATH, not .DST.sparsync\n"
	"  --no-digest             keep no digest file; the next sync reads DST\n"
	"  --bitmap NAME           copy only what SRC's persistent dirty bitmap NAME\n"
	"                          (qcow2; an NBD export's qemu:dirty-bitmap:NAME) marks\n"
	"                          as changed; DST must hold SRC as it was when the\n"
	"                          bitmap was started or last cleared\n"
	"  --since SNAP            the same for an RBD SRC: what changed after SNAP\n"
	"  --track                 keep a persistent dirty bitmap of our own in SRC\n"
	"                          (qcow2), so that the next sync to DST reads only what\n"
	"                          changed since this one\n"
	"  -U, --force-share       read SRC even while another program (a running VM)\n"
	"                          has it open for writing, like qemu-img -U\n"
	"  -j N                    worker threads (default: number of cores)\n"
	"Remote options:\n"
	"  -p PORT                 ssh port (default 22)\n"
	"  -i FILE                 identity (private key) file\n"
	"  --known-hosts FILE      default ~/.ssh/known_hosts\n"
	"  --accept-new-host-key   trust and record an unknown host key\n"
	"  --remote-path PATH      sparsync on the remote (default: sparsync)\n"
	"  -e, --rsh CMD           run CMD (e.g. 'ssh -p 2222') instead of the built-in client\n"
	"  --ssh auto|builtin|openssh  the built-in client, falling back to OpenSSH's ssh\n"
	"                          where it cannot go (ProxyJump, keys, algorithms);\n"
	"                          or one of them only (default auto)\n"
	"  --connect-timeout SECONDS  to connect and log in (default: ssh config, or 30)\n"
	"  --compress C            auto | zstd[:LEVEL] | lz4 | none (default auto over the\n"
	"                          network: lz4 or a zstd level chosen by the link's speed)\n"
	"  --bwlimit RATE          bytes per second, e.g. 8M\n"
	"  --connections N         N SSH connections, each with its own cipher and remote\n"
	"                          process, for links one connection cannot fill (default:\n"
	"                          from both ends' cores, 1 below 4 cores; 1 with --bwlimit)\n"
	"  --timeout SECONDS       fail when no data moves for that long (default: wait;\n"
	"                          also for a stream on stdin/stdout)\n"
	"Output:\n"
	"  --json                  print a JSON summary on stdout at the end\n"
	"  --stats                 print a labelled summary at the end, like rsync --stats\n"
	"  -n, --dry-run           connect, open and compare as a real run would, and say\n"
	"                          what it would send and write; write nothing anywhere\n"
	"  -P, --progress          show progress even when stderr is not a terminal\n"
	"  -q, --quiet             no progress, no summary\n"
	"  -v, --verbose           say what was decided and why (sync or new copy, ssh\n"
	"                          client, codec, digest file, bitmap)\n";

enum {
	OPT_CLUSTER = OPT_CLI_NEXT, OPT_BACKING, OPT_WHOLE, OPT_TARGET_ZERO, OPT_INPLACE, OPT_NO_SPACE, OPT_JSON,
	OPT_DIGEST_FILE, OPT_NO_DIGEST, OPT_BITMAP, OPT_TRACK, OPT_STATS,
	OPT_COMPRESS, OPT_BWLIMIT, OPT_CONNECTIONS,
};

static int parse_args(int argc, char **argv, struct copy_cli *cli)
{
	static const struct option opts[] = {
		{ "cluster-size", required_argument, NULL, OPT_CLUSTER },
		{ "backing", required_argument, NULL, OPT_BACKING },
		{ "whole", no_argument, NULL, OPT_WHOLE },
		{ "target-is-zero", no_argument, NULL, OPT_TARGET_ZERO },
		{ "inplace", no_argument, NULL, OPT_INPLACE },
		{ "no-space-check", no_argument, NULL, OPT_NO_SPACE },
		{ "digest-file", required_argument, NULL, OPT_DIGEST_FILE },
		{ "no-digest", no_argument, NULL, OPT_NO_DIGEST },
		{ "bitmap", required_argument, NULL, OPT_BITMAP },
		{ "since", required_argument, NULL, OPT_BITMAP },
		{ "track", no_argument, NULL, OPT_TRACK },
		{ "stats", no_argument, NULL, OPT_STATS },
		{ "dry-run", no_argument, NULL, 'n' },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "progress", no_argument, NULL, 'P' },
		{ "quiet", no_argument, NULL, 'q' },
		CLI_REMOTE_LONGOPTS,
		{ "compress", required_argument, NULL, OPT_COMPRESS },
		{ "bwlimit", required_argument, NULL, OPT_BWLIMIT },
		{ "connections", required_argument, NULL, OPT_CONNECTIONS },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	int c;
	uint64_t v;
	while ((c = getopt_long(argc, argv, "f:O:c:j:p:i:e:UvnPqh", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
		case 'O': {
			enum image_format f = image_format_parse(optarg);
			if (f == FMT_AUTO)
				return usage_error("copy", "unknown format '%s' (raw or qcow2)", optarg);
			*(c == 'f' ? &cli->in_fmt : &cli->out_fmt) = f;
			break;
		}
		case OPT_CLUSTER:
			if (parse_size(optarg, &v) < 0 || v < 512 || v > (2u << 20) || (v & (v - 1)))
				return usage_error("copy", "cluster size '%s' must be a power of two from 512 to 2M", optarg);
			cli->create.cluster_size = (uint32_t)v;
			break;
		case 'c':
			if (strcmp(optarg, "zstd") == 0)
				cli->create.compress = CODEC_ZSTD;
			else if (strcmp(optarg, "zlib") == 0)
				cli->create.compress = CODEC_ZLIB;
			else
				return usage_error("copy", "-c takes zstd or zlib, not '%s'", optarg);
			break;
		case OPT_BACKING: cli->create.backing = optarg; break;
		case OPT_WHOLE: cli->whole = true; break;
		case OPT_TARGET_ZERO: cli->target_is_zero = true; break;
		case OPT_INPLACE: cli->inplace = true; break;
		case OPT_NO_SPACE: cli->no_space_check = true; break;
		case OPT_DIGEST_FILE: cli->digest_file = optarg; break;
		case OPT_NO_DIGEST: cli->no_digest = true; break;
		case OPT_BITMAP: cli->bitmap = optarg; break;
		case OPT_TRACK: cli->track = true; break;
		case OPT_STATS: cli->stats = true; break;
		case 'n': cli->dry_run = true; break;
		case OPT_JSON: cli->json = true; break;
		case 'P': cli->progress = PROGRESS_FORCE; break;
		case 'q': cli->quiet = true; cli->progress = PROGRESS_OFF; break;
		case OPT_COMPRESS: {
			struct codec_choice cc;
			if (codec_parse(optarg, &cc) < 0)
				return usage_error("copy", "%s", sp_errmsg());
			cli->wire_compress = optarg;
			break;
		}
		case OPT_BWLIMIT:
			if (parse_size(optarg, &v) < 0 || v == 0)
				return usage_error("copy", "bad --bwlimit rate '%s'", optarg);
			cli->bwlimit = v;
			break;
		case OPT_CONNECTIONS:
			if (parse_size(optarg, &v) < 0 || v < 1 || v > PROTO_LINKS_MAX)
				return usage_error("copy", "--connections takes a number from 1 to %u, not "
						   "'%s'", PROTO_LINKS_MAX, optarg);
			cli->connections = (unsigned)v;
			break;
		case 'h': fputs(copy_usage, stdout); exit(0);
		default: {
			int rc = cli_shared_option(cli, "copy", c, optarg);
			if (rc != 0)
				return rc < 0 ? EXIT_USAGE : rc;
			break;
		}
		}
	}
	if (argc - optind != 2)
		return usage_error("copy", "expected SRC and DST");
	if (endpoint_parse(argv[optind], &cli->src) < 0 ||
	    endpoint_parse(argv[optind + 1], &cli->dst) < 0)
		return usage_error("copy", "%s", sp_errmsg());
	/* A stream kept in a file (copy IMG - > disk.sps) as SRC is read as
	 * the stream it is, as from stdin: never as a raw image of its bytes. */
	if (cli->src.kind == EP_LOCAL && cli->dst.kind == EP_LOCAL && cli->in_fmt == FMT_AUTO) {
		int fd = open(cli->src.path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0 && image_is_stream(fd))
			cli->src.kind = EP_STREAM; /* its path stays: stream_in reads it */
		if (fd >= 0)
			close(fd);
	}
	bool src_far = cli->src.kind != EP_LOCAL, dst_far = cli->dst.kind != EP_LOCAL;
	for (const struct endpoint *ep = &cli->src; ep; ep = ep == &cli->src ? &cli->dst : NULL)
		if (ep->port && cli->port && ep->port != cli->port)
			return usage_error("copy", "-p %d and the URL's port %d disagree", cli->port,
					   ep->port);
	if (src_far && dst_far)
		return usage_error("copy", "SRC and DST cannot both be remote or streams");
	if (cli->track && cli->bitmap)
		return usage_error("copy", "--track keeps its own bitmap; --bitmap names another: "
				   "give one of them");
	if (cli->track && cli->no_digest)
		return usage_error("copy", "--track needs DST's digest file to record its bitmap; "
				   "it cannot be used with --no-digest");
	if ((cli->track || cli->bitmap) && (cli->src.kind == EP_STREAM || cli->dst.kind == EP_STREAM))
		return usage_error("copy", "--track and --bitmap copy only what changed: a stream "
				   "has nothing to change");
	if (cli->track && cli->force_share)
		return usage_error("copy", "--track writes its bitmap into SRC, which -U (read what "
				   "another program writes) never allows");
	if (cli->dry_run && (cli->src.kind == EP_STREAM || cli->dst.kind == EP_STREAM))
		return usage_error("copy", "--dry-run compares with a destination: a stream has none");
	if (cli->connections > 1 && !(src_far || dst_far))
		return usage_error("copy", "--connections is for a copy to or from a remote host");
	if (cli->connections > 1 && (cli->src.kind == EP_STREAM || cli->dst.kind == EP_STREAM))
		return usage_error("copy", "--connections: a stream is one pipe");
	if (cli->connections > 1 && cli->bwlimit)
		return usage_error("copy", "--connections and --bwlimit: a limited rate needs no "
				   "further connections; give one of them");
	if (cli->bitmap && cli->whole)
		return usage_error("copy", "--bitmap copies only what changed: --whole rewrites "
				   "everything");
	return 0;
}

int cmd_copy(int argc, char **argv)
{
	struct copy_cli cli;
	memset(&cli, 0, sizeof cli);
	cli.remote_path = "sparsync";
	int rc = parse_args(argc, argv, &cli);
	if (rc != 0) {
		endpoint_free(&cli.src);
		endpoint_free(&cli.dst);
		return rc;
	}
	struct sp_stats st;
	memset(&st, 0, sizeof st);
	st.dry_run = cli.dry_run;
	bool local = cli.src.kind == EP_LOCAL && cli.dst.kind == EP_LOCAL;
	rc = local ? copy_local(&cli, &st) : copy_remote(&cli, &st);
	/* When stdout carries the stream, the summary must not corrupt it. */
	FILE *out = cli.dst.kind == EP_STREAM ? stderr : stdout;
	if (rc == 0) {
		if (cli.json)
			stats_print_json(out, "copy", &st);
		else if (cli.stats)
			stats_print_table(out, &st);
		else if (!cli.quiet && isatty(fileno(out)))
			stats_print_human(out, "copy", &st);
	}
	endpoint_free(&cli.src);
	endpoint_free(&cli.dst);
	return rc < 0 ? fail() : 0;
}

/* `sparsync verify SRC DST`: do two images hold the same content? Like
 * `qemu-img compare`; either side may be [USER@]HOST:PATH, whose content is
 * compared by its hash list (`serve --hashes`) without copying it.
 * Exit 0 identical, 1 different, 2 error. */
#include "cmd.h"

#include "../core/error.h"
#include "../core/sync_hash.h"
#include "../core/sync_verify.h"
#include "../formats/image.h"
#include "../transport/transport.h"
#include "copy_cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char verify_usage[] =
	"usage: sparsync verify [OPTIONS] SRC DST\n"
	"Compare the content of two raw or qcow2 images, like qemu-img compare.\n"
	"SRC or DST (not both) may be [USER@]HOST:PATH: its image is compared by\n"
	"block hashes computed on that host, without copying it. An image larger\n"
	"than the other matches only if its extra part reads as zeros.\n"
	"Exit status: 0 identical, 1 different (the first differing offset is\n"
	"printed), 2 error.\n"
	"\n"
	"  -f raw|qcow2            SRC format (default: detected)\n"
	"  -F raw|qcow2            DST format (default: detected)\n"
	"  -U, --force-share       read images that another program has open for\n"
	"                          writing, like qemu-img compare -U\n"
	"  -j N                    hashing threads (default: number of cores)\n"
	"  -q, --quiet             print nothing, only the exit status tells\n"
	"Remote options (as for copy):\n"
	"  -p PORT, -i FILE, --known-hosts FILE, --accept-new-host-key,\n"
	"  --remote-path PATH, -e/--rsh CMD, --timeout SECONDS\n"
	"\n"
	"With a remote side, the offset printed is the start of the first differing\n"
	"hash unit (64 KiB, more for very large images), or the first non-zero byte\n"
	"of it where the remote side reads zeros.\n";

#define EXIT_DIFFER 1
#define EXIT_ERROR 2

struct verify_args {
	struct copy_cli cli; /* endpoints and remote options, as copy has them */
	enum image_format fmt[2];
	bool quiet;
};

static int parse(int argc, char **argv, struct verify_args *a)
{
	static const struct option opts[] = {
		{ "quiet", no_argument, NULL, 'q' },
		CLI_REMOTE_LONGOPTS,
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct copy_cli *cli = &a->cli;
	int c;
	while ((c = getopt_long(argc, argv, "f:F:j:p:i:e:Uvqh", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
		case 'F': {
			enum image_format f = image_format_parse(optarg);
			if (f == FMT_AUTO)
				return usage_error("verify", "unknown format '%s' (raw or qcow2)", optarg);
			a->fmt[c == 'F'] = f;
			break;
		}
		case 'q': a->quiet = true; break;
		case 'h': fputs(verify_usage, stdout); exit(0);
		default: {
			int rc = cli_shared_option(cli, "verify", c, optarg);
			if (rc != 0)
				return rc < 0 ? EXIT_USAGE : rc;
			break;
		}
		}
	}
	if (argc - optind != 2)
		return usage_error("verify", "expected SRC and DST");
	if (endpoint_parse(argv[optind], &cli->src) < 0 ||
	    endpoint_parse(argv[optind + 1], &cli->dst) < 0)
		return usage_error("verify", "%s", sp_errmsg());
	if (cli->src.kind == EP_STREAM || cli->dst.kind == EP_STREAM)
		return usage_error("verify", "'-' is not an image to compare");
	if (cli->src.kind == EP_REMOTE && cli->dst.kind == EP_REMOTE)
		return usage_error("verify", "SRC and DST cannot both be remote");
	return 0;
}

static int compare(struct verify_args *a, struct verify_result *res)
{
	struct copy_cli *cli = &a->cli;
	bool src_far = cli->src.kind == EP_REMOTE, dst_far = cli->dst.kind == EP_REMOTE;
	const struct endpoint *near = src_far ? &cli->dst : &cli->src;
	enum image_format near_fmt = a->fmt[src_far];
	int ro = IMAGE_RDONLY | (cli->force_share ? IMAGE_FORCE_SHARE : 0);
	struct image *img = image_open(near->path, near_fmt, ro);
	if (!img)
		return -1;
	int rc;
	if (!src_far && !dst_far) {
		struct image *other = image_open(cli->dst.path, a->fmt[1], ro);
		rc = other ? verify_local(img, other, res) : -1;
		image_close(other);
		image_close(img);
		return rc;
	}
	/* One side remote: hash in units sized for the local image. */
	const struct endpoint *far = src_far ? &cli->src : &cli->dst;
	uint32_t unit;
	rc = sync_unit_for(img, SYNC_UNIT_RAW, &unit);
	cli->in_fmt = a->fmt[dst_far]; /* the remote side's -f */
	struct transport *t = rc == 0 ? remote_open_hashes(cli, far, unit) : NULL;
	if (t) {
		rc = verify_remote(t, img, unit, cli->workers, res);
		rc = remote_finish(t, rc);
	} else {
		rc = -1;
	}
	/* Sizes in SRC, DST order. */
	if (src_far) {
		uint64_t x = res->size_local;
		res->size_local = res->size_other;
		res->size_other = x;
	}
	image_close(img);
	return rc;
}

int cmd_verify(int argc, char **argv)
{
	struct verify_args a;
	memset(&a, 0, sizeof a);
	a.cli.remote_path = "sparsync";
	int rc = parse(argc, argv, &a);
	if (rc == 0) {
		struct verify_result res;
		memset(&res, 0, sizeof res);
		if (compare(&a, &res) < 0) {
			fprintf(stderr, "sparsync: %s\n", sp_errmsg());
			rc = EXIT_ERROR;
		} else {
			if (!a.quiet && res.size_local != res.size_other)
				printf("Warning: Image size mismatch!\n");
			if (res.differ) {
				if (!a.quiet)
					printf("Content mismatch at offset %llu!\n",
					       (unsigned long long)res.offset);
				rc = EXIT_DIFFER;
			} else if (!a.quiet) {
				printf("Images are identical.\n");
			}
		}
	}
	endpoint_free(&a.cli.src);
	endpoint_free(&a.cli.dst);
	return rc;
}

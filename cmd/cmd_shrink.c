/* shrink: make an image occupy only its data. Raw images get holes punched
 * over zero-filled blocks in place (like fallocate -d: the content never
 * changes, so an interruption loses nothing); qcow2 images are rewritten
 * compactly to a temporary file renamed over the original (through a
 * symlink: the file it points to, in that file's directory). A qcow2 whose
 * snapshots or bitmaps a rewrite would drop is refused, and no block
 * device is ever written. */
#include "cmd.h"

#include "../core/copy.h"
#include "../core/replace.h"
#include "../core/error.h"
#include "../core/sink.h"
#include "../formats/image.h"
#include "../formats/qcow2.h"
#include "../core/backing_sink.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char shrink_usage[] =
	"usage: sparsync shrink [--json] [-q] IMAGE\n"
	"Free the space of zero-filled blocks; the content does not change.\n";

/* The data is already in place: only zero ranges need work. */
static int shrink_data(struct sink *s, uint64_t off, const void *buf, size_t len)
{
	(void)s, (void)off, (void)buf, (void)len;
	return 0;
}

static int shrink_zero(struct sink *s, uint64_t off, uint64_t len)
{
	return image_zero(((struct image_sink *)s)->img, off, len);
}

static int shrink_finish(struct sink *s)
{
	return image_flush(((struct image_sink *)s)->img);
}

static const struct sink_ops shrink_ops = {
	.data = shrink_data, .zero = shrink_zero, .finish = shrink_finish,
};

static int shrink_raw(struct image *img, struct copy_opts *o, struct sp_stats *st)
{
	struct image_sink s;
	image_sink_init(&s, img, st, 0, 0);
	s.base.ops = &shrink_ops;
	return copy_run(img, &s.base, o, st);
}

/* qcow2: rewrite into a temporary file in the same directory, keeping the
 * cluster size, compression and backing file, then rename over the
 * original. Zero clusters and leaked clusters are not copied; an overlay
 * keeps only what differs from its backing. */
static int shrink_qcow2(struct image *img, const char *real, struct copy_opts *o,
			struct sp_stats *st)
{
	struct qcow2_layout lay;
	if (qcow2_layout_of(real, &lay) < 0)
		return -1;
	if (lay.unkept) {
		qcow2_layout_free(&lay);
		return sp_err("%s: not shrunk: %s, which a rewrite would not keep", img->path,
			      lay.unkept);
	}
	struct image_create_opts co;
	memset(&co, 0, sizeof co);
	co.cluster_size = lay.cluster_size;
	co.compress = lay.compress;
	struct image *b = NULL;
	int rc = 0;
	if (lay.backing) {
		char *bp = backing_resolve(real, lay.backing);
		b = bp ? image_open(bp, lay.backing_format, IMAGE_RDONLY) : NULL;
		if (!bp)
			sp_err("%s: out of memory", img->path);
		free(bp);
		if (!b)
			rc = -1;
		else {
			co.backing = lay.backing;
			co.backing_format = b->format;
		}
	}
	struct replacement d;
	if (rc == 0)
		rc = replace_begin(&d, real, img->path, FMT_QCOW2, img->size, &co);
	if (rc == 0) {
		o->block_size = d.img->granularity > (1u << 20) ? d.img->granularity : (1u << 20);
		o->zero_grain = d.img->granularity;
		struct image_sink s;
		struct backing_sink bs;
		image_sink_init(&s, d.img, st, 1, 0);
		if (b)
			backing_sink_init(&bs, d.img, b, 0, st);
		rc = copy_run(img, b ? &bs.base : &s.base, o, st);
		/* The rewritten image keeps the original's permissions. */
		struct stat sb;
		if (rc == 0 && fstat(img->fd, &sb) == 0)
			(void)chmod(d.tmp_path, sb.st_mode & 07777);
		if (rc == 0)
			rc = replace_commit(&d);
		else
			replace_abort(&d);
	}
	image_close(b);
	qcow2_layout_free(&lay);
	return rc;
}

int cmd_shrink(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'J' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "progress", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	bool json = false;
	struct copy_opts o;
	memset(&o, 0, sizeof o);
	int c;
	while ((c = getopt_long(argc, argv, "qPh", opts, NULL)) != -1) {
		switch (c) {
		case 'J': json = true; break;
		case 'q': o.progress = PROGRESS_OFF; break;
		case 'P': o.progress = PROGRESS_FORCE; break;
		case 'h': fputs(shrink_usage, stdout); return 0;
		default: return EXIT_USAGE;
		}
	}
	if (argc - optind != 1)
		return usage_error("shrink", "expected one IMAGE");
	/* Through a symlink, the file it points to is shrunk: the link is
	 * how the user names the image. */
	const char *path = argv[optind];
	char *real = realpath(path, NULL);
	struct stat sb;
	if (!real || stat(real, &sb) < 0) {
		free(real);
		sp_err("%s: %s", path, strerror(errno));
		return fail();
	}
	if (!S_ISREG(sb.st_mode)) {
		free(real);
		sp_err("%s: %s", path, S_ISBLK(sb.st_mode) ? "is a block device; shrink never "
		       "writes to a device" : "not a regular file");
		return fail();
	}
	/* qcow2 is read (and rewritten elsewhere); raw is changed in place. */
	enum image_format fmt = image_detect_path(real);
	struct image *img = image_open(real, fmt, fmt == FMT_QCOW2 ? IMAGE_RDONLY : IMAGE_RDWR);
	if (!img) {
		free(real);
		return fail();
	}
	image_set_name(img, path);
	struct sp_stats st;
	memset(&st, 0, sizeof st);
	int rc = img->format == FMT_QCOW2 ? shrink_qcow2(img, real, &o, &st)
					  : shrink_raw(img, &o, &st);
	free(real);
	if (image_close(img) < 0)
		rc = -1;
	if (rc < 0)
		return fail();
	if (json)
		stats_print_json(stdout, "shrink", &st);
	return 0;
}

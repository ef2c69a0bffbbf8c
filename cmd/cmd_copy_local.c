/* Local copy: new destination -> temporary file + rename; existing
 * destination of the same format -> in-place sync writing only what differs;
 * --backing FILE -> a new qcow2 overlay holding only what differs from FILE. */
#include "copy_cli.h"

#include "../core/copy.h"
#include "../core/dest.h"
#include "../core/error.h"
#include "../core/backing_sink.h"
#include "../core/sink.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static enum image_format existing_format(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return FMT_AUTO;
	enum image_format f = image_detect_fd(fd);
	close(fd);
	return f;
}

static void engine_opts(const struct copy_cli *cli, const struct image *dst, struct copy_opts *o)
{
	memset(o, 0, sizeof *o);
	o->block_size = BLOCK_SIZE_DEFAULT;
	if (dst->granularity > o->block_size)
		o->block_size = dst->granularity;
	o->zero_grain = dst->granularity > 4096 ? dst->granularity : 4096;
	o->workers = cli->workers;
	o->progress = cli->progress;
	o->read_ahead = cli->create.compress != CODEC_NONE;
}

static int copy_with_backing(const struct copy_cli *cli, struct image *src, struct sp_stats *st)
{
	const char *dpath = cli->dst.path;
	if (cli->out_fmt == FMT_RAW)
		return sp_err("%s: --backing writes a qcow2 overlay; it cannot be -O raw", dpath);
	char *bpath = backing_resolve(dpath, cli->create.backing);
	if (!bpath)
		return sp_err("%s: out of memory", dpath);
	struct image *b = image_open(bpath, FMT_AUTO, IMAGE_RDONLY);
	if (!b) {
		/* Name the backing file as the user gave it. */
		char msg[1024];
		const char *m = sp_errmsg();
		size_t bl = strlen(bpath);
		if (strncmp(m, bpath, bl) == 0 && m[bl] == ':')
			m += bl + 2;
		snprintf(msg, sizeof msg, "%s", m);
		free(bpath);
		return sp_err("backing file %s: %s", cli->create.backing, msg);
	}
	free(bpath);
	struct stat bs, ds;
	if (stat(dpath, &ds) == 0 && fstat(b->fd, &bs) == 0 && bs.st_dev == ds.st_dev &&
	    bs.st_ino == ds.st_ino) {
		image_close(b);
		return sp_err("%s: the destination is its own backing file", dpath);
	}
	struct image_create_opts co = cli->create;
	co.backing_format = b->format;
	struct dest d;
	int rc = dest_create(&d, dpath, FMT_QCOW2, src->size, &co);
	if (rc == 0) {
		struct copy_opts o;
		struct backing_sink sink;
		engine_opts(cli, d.img, &o);
		backing_sink_init(&sink, d.img, b, st);
		rc = copy_run(src, &sink.base, &o, st);
		if (rc == 0)
			rc = dest_commit(&d);
		else
			dest_abort(&d);
	}
	image_close(b);
	return rc;
}

/* ---- copy / sync ------------------------------------------------------- */

/* Options that ask for a layout an in-place update cannot give. */
static bool wants_new_layout(const struct copy_cli *cli, enum image_format fmt,
			     const struct image *dst)
{
	if (fmt != FMT_QCOW2)
		return false;
	if (cli->create.compress != CODEC_NONE)
		return true;
	return cli->create.cluster_size && cli->create.cluster_size != dst->granularity;
}

int copy_local(const struct copy_cli *cli, struct sp_stats *st)
{
	const char *dpath = cli->dst.path;
	struct image *src = image_open(cli->src.path, cli->in_fmt, IMAGE_RDONLY);
	if (!src)
		return -1;

	struct stat ss, ds;
	bool exists = stat(dpath, &ds) == 0;
	if (exists && fstat(src->fd, &ss) == 0 && ss.st_dev == ds.st_dev && ss.st_ino == ds.st_ino) {
		image_close(src);
		return sp_err("%s: source and destination are the same file", dpath);
	}
	if (exists && S_ISDIR(ds.st_mode)) {
		image_close(src);
		return sp_err("%s: is a directory (give the destination file name)", dpath);
	}
	if (cli->create.backing) {
		int rc = copy_with_backing(cli, src, st);
		image_close(src);
		return rc;
	}
	enum image_format have = exists ? existing_format(dpath) : FMT_AUTO;
	enum image_format fmt = image_output_format(cli->out_fmt, dpath, have, src->format);

	struct copy_opts o;
	struct image_sink sink;
	int rc;
	struct image *dst = NULL;
	if (exists && !cli->whole && have == fmt && S_ISREG(ds.st_mode)) {
		dst = image_open(dpath, fmt, IMAGE_RDWR);
		if (!dst) {
			image_close(src);
			return -1;
		}
		if (wants_new_layout(cli, fmt, dst)) {
			image_close(dst);
			dst = NULL;
		}
	}
	if (dst) {
		rc = dst->size != src->size ? image_resize(dst, src->size) : 0;
		engine_opts(cli, dst, &o);
		image_sink_init(&sink, dst, st, 0, 1);
		if (rc == 0)
			rc = copy_run(src, &sink.base, &o, st);
		if (image_close(dst) < 0)
			rc = -1;
	} else {
		struct dest d;
		rc = dest_create(&d, dpath, fmt, src->size, &cli->create);
		if (rc == 0) {
			engine_opts(cli, d.img, &o);
			image_sink_init(&sink, d.img, st, 1, 0);
			rc = copy_run(src, &sink.base, &o, st);
			if (rc == 0)
				rc = dest_commit(&d);
			else
				dest_abort(&d);
		}
	}
	image_close(src);
	return rc;
}

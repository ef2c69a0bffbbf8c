/* Local copy: new destination -> temporary file + rename; existing
 * destination of the same format -> in-place sync writing only what differs. */
#include "copy_cli.h"

#include "../core/copy.h"
#include "../core/dest.h"
#include "../core/error.h"
#include "../core/sink.h"

#include <errno.h>
#include <fcntl.h>
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
	enum image_format have = exists ? existing_format(dpath) : FMT_AUTO;
	enum image_format fmt = image_output_format(cli->out_fmt, dpath, have, src->format);

	struct copy_opts o;
	struct image_sink sink;
	int rc;
	if (exists && !cli->whole && have == fmt && !cli->create.backing && S_ISREG(ds.st_mode)) {
		struct image *dst = image_open(dpath, fmt, IMAGE_RDWR);
		if (!dst) {
			image_close(src);
			return -1;
		}
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

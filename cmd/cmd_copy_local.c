/* Local copy: new destination -> temporary file + rename; existing
 * destination of the same format -> in-place sync writing only what differs;
 * --backing FILE -> a new qcow2 overlay holding only what differs from FILE. */
#include "copy_cli.h"

#include "../core/copy.h"
#include "../core/dest.h"
#include "../core/error.h"
#include "../core/sink.h"
#include "backing_sink.h"

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
}

/* ---- the --backing sink ------------------------------------------------ */

/* The backing's content of [off, off+len); zeros past its end. */
static int backing_read(struct image *b, unsigned char *buf, size_t len, uint64_t off)
{
	size_t n = off >= b->size ? 0 : (size_t)(b->size - off < len ? b->size - off : len);
	if (n && image_pread(b, buf, n, off) < 0)
		return -1;
	memset(buf + n, 0, len - n);
	return 0;
}

/* Length of the piece at off (inside [off, off+left)) up to the next grain
 * boundary: pieces line up with the overlay's clusters. */
static size_t piece(const struct backing_sink *s, uint64_t off, size_t left)
{
	uint64_t next = (off / s->grain + 1) * s->grain;
	return next - off < left ? (size_t)(next - off) : left;
}

static int bsink_data(struct sink *base, uint64_t off, const void *buf, size_t len)
{
	struct backing_sink *s = (struct backing_sink *)base;
	const unsigned char *p = buf;
	unsigned char *old = malloc(len);
	if (!old)
		return sp_err("%s: out of memory", s->dst->path);
	int rc = backing_read(s->backing, old, len, off);
	bool changed = false;
	size_t pos = 0;
	while (rc == 0 && pos < len) {
		size_t n = piece(s, off + pos, len - pos);
		if (memcmp(old + pos, p + pos, n) == 0) {
			stats_add(base->stats->bytes_unchanged, n);
			pos += n;
			continue;
		}
		size_t end = pos + n;
		while (end < len) {
			size_t m = piece(s, off + end, len - end);
			if (memcmp(old + end, p + end, m) == 0)
				break;
			end += m;
		}
		rc = image_pwrite(s->dst, p + pos, end - pos, off + pos);
		stats_add(base->stats->bytes_written, end - pos);
		changed = true;
		pos = end;
	}
	if (changed)
		stats_add(base->stats->blocks_changed, 1);
	free(old);
	return rc;
}

/* Zeros at the source: only where the backing shows data must the overlay
 * hide it (zero clusters); elsewhere unallocated already reads zeros. */
static int bsink_zero(struct sink *base, uint64_t off, uint64_t len)
{
	struct backing_sink *s = (struct backing_sink *)base;
	uint64_t end = off + len < s->backing->size ? off + len : s->backing->size;
	while (off < end) {
		struct extent e;
		if (image_extent(s->backing, off, &e) < 0)
			return -1;
		if (e.offset != off || e.length == 0)
			return sp_err("%s: extent map made no progress at offset %llu",
				      s->backing->path, (unsigned long long)off);
		uint64_t n = e.length < end - off ? e.length : end - off;
		if (e.kind == EXTENT_DATA && image_zero(s->dst, off, n) < 0)
			return -1;
		off += n;
	}
	return 0;
}

static int bsink_finish(struct sink *base)
{
	return image_flush(((struct backing_sink *)base)->dst);
}

static const struct sink_ops backing_sink_ops = { bsink_data, bsink_zero, bsink_finish };

void backing_sink_init(struct backing_sink *s, struct image *dst, struct image *backing,
		       struct sp_stats *st)
{
	memset(s, 0, sizeof *s);
	s->base.ops = &backing_sink_ops;
	s->base.stats = st;
	s->dst = dst;
	s->backing = backing;
	s->grain = dst->granularity ? dst->granularity : 65536;
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

/* Local copy: core/dest.c decides what DST is and how it is written (a new
 * file, an in-place sync of an existing image, a --backing overlay, a block
 * device); here the source is opened and the engine run into DST's sink. */
#include "copy_cli.h"

#include "../core/copy.h"
#include "../core/dest.h"
#include "../core/error.h"
#include "../core/paths.h"
#include "../core/track.h"
#include "../formats/change_map.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void engine_opts(const struct copy_cli *cli, uint32_t granularity, struct copy_opts *o)
{
	memset(o, 0, sizeof *o);
	o->block_size = BLOCK_SIZE_DEFAULT;
	if (granularity > o->block_size)
		o->block_size = granularity;
	o->zero_grain = granularity > 4096 ? granularity : 4096;
	o->workers = cli->workers;
	o->progress = cli->progress;
	o->read_ahead = cli->create.compress != CODEC_NONE;
}

int copy_local(const struct copy_cli *cli, struct sp_stats *st)
{
	const char *dpath = cli->dst.path;
	struct image *src = image_open(cli->src.path, cli->in_fmt,
				       IMAGE_RDONLY | (cli->force_share ? IMAGE_FORCE_SHARE : 0));
	if (!src)
		return -1;
	struct stat ss, ds;
	if (stat(dpath, &ds) == 0 && fstat(src->fd, &ss) == 0 &&
	    ((ss.st_dev == ds.st_dev && ss.st_ino == ds.st_ino) ||
	     (S_ISBLK(ss.st_mode) && S_ISBLK(ds.st_mode) && ss.st_rdev == ds.st_rdev))) {
		image_close(src);
		return sp_err("%s: source and destination are the same file", dpath);
	}
	char *src_name = path_base(cli->src.path);
	struct dest_opts dop = {
		.out_fmt = cli->out_fmt, .create = &cli->create, .update = !cli->whole,
		.target_is_zero = cli->target_is_zero, .inplace = cli->inplace,
		.space_check = !cli->no_space_check,
		.digest = !cli->no_digest, .digest_file = cli->digest_file,
		.src_name = src_name,
		.dry_run = cli->dry_run,
	};
	struct dest d;
	int rc = dest_open(&d, dpath, &dop);
	struct change_map changed = { 0 };
	struct track tr = { 0 };
	if (rc == 0 && cli->track) {
		bool in_step = false;
		const uint8_t *dest_id = dest_track_id(&d, &in_step);
		if (d.mode != DEST_NEW && d.mode != DEST_UPDATE)
			rc = sp_err("--track: %s is written as %s, which keeps no digest file to record "
				    "the bitmap in", dpath, dest_how(&d));
		else if ((rc = track_begin(&tr, src, dest_id, in_step)) == 0) {
			dest_set_track_id(&d, tr.id);
			st->track = tr.how;
			track_log(&tr);
		}
	}
	if (rc == 0 && cli->bitmap) {
		if (d.mode != DEST_UPDATE && d.mode != DEST_DEVICE)
			rc = sp_err("--bitmap %s: %s is %s: it must already hold %s as it was when the "
				    "bitmap was started", cli->bitmap, dpath,
				    d.mode == DEST_NEW && d.existing == FMT_AUTO ? "new" : "rewritten",
				    cli->src.path);
		else
			rc = image_dirty_bitmap(src, cli->bitmap, &changed);
	}
	uint64_t data = DEST_DATA_UNKNOWN;
	if (rc == 0 && dest_wants_data_size(&d))
		rc = image_data_bytes(src, &data);
	if (rc == 0) {
		st->destination = dest_how(&d);
		st->digest = d.digest_why;
		sp_info("%s: written as %s; digest file: %s", d.path, dest_how(&d),
			d.digest_path ? (d.digest_why ? d.digest_why : "none yet") : "not kept");
		rc = dest_begin(&d, src->format, src->size, data);
	}
	if (rc == 0) {
		struct copy_opts o;
		engine_opts(cli, dest_granularity(&d, src->format), &o);
		const struct change_map *only = cli->bitmap ? &changed : tr.use ? &tr.map : NULL;
		if (only) {
			o.changed = only;
			o.changed_round = dest_unit(&d);
		}
		struct sink *sink = dest_local_sink(&d, src, st, only);
		rc = sink ? copy_run(src, sink, &o, st) : -1;
		if (rc == 0)
			rc = dest_commit(&d);
		else
			dest_abort(&d);
		/* DST is complete: start the bitmap afresh. Should that fail,
		 * the next run compares everything once; the copy stands. */
		if (rc == 0 && cli->track && !cli->dry_run)
			track_finish(&tr, src);
	}
	change_map_free(&changed);
	track_free(&tr, src);
	dest_close(&d);
	free(src_name);
	image_close(src);
	return rc;
}

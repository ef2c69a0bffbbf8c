#include "copy.h"

#include "../formats/image.h"
#include "error.h"
#include "zero.h"

#include <stdlib.h>

/* Deliver one block read from the source: zero grains become zero ranges,
 * the rest is data. Aligned grains keep holes where the filesystem can
 * make them. */
static int deliver_block(struct sink *sink, uint64_t off, const unsigned char *buf, size_t len,
			 size_t grain, struct sp_stats *st)
{
	size_t pos = 0;
	while (pos < len) {
		size_t z = zero_run(buf + pos, len - pos, grain, true);
		if (z) {
			if (sink->ops->zero(sink, off + pos, z) < 0)
				return -1;
			stats_add(st->bytes_zero, z);
			pos += z;
			continue;
		}
		size_t d = zero_run(buf + pos, len - pos, grain, false);
		if (sink->ops->data(sink, off + pos, buf + pos, d) < 0)
			return -1;
		stats_add(st->bytes_data, d);
		pos += d;
	}
	return 0;
}

int copy_run(struct image *src, struct sink *sink, const struct copy_opts *o, struct sp_stats *st)
{
	uint64_t bs = o->block_size ? o->block_size : BLOCK_SIZE_DEFAULT;
	size_t grain = o->zero_grain ? o->zero_grain : 4096;
	unsigned char *buf = malloc(bs);
	if (!buf)
		return sp_err("out of memory for a %llu-byte block", (unsigned long long)bs);

	struct progress prog;
	progress_init(&prog, o->progress, src->size);
	double t0 = now_seconds();
	st->bytes_virtual = src->size;
	uint64_t read0 = src->bytes_read;

	int rc = 0;
	uint64_t pos = 0;
	while (rc == 0 && pos < src->size) {
		struct extent e;
		if ((rc = image_extent(src, pos, &e)) < 0)
			break;
		if (e.length == 0 || e.offset != pos) {
			rc = sp_err("%s: extent map made no progress at offset %llu", src->path,
				    (unsigned long long)pos);
			break;
		}
		uint64_t end = e.offset + e.length;
		if (end > src->size)
			end = src->size;
		if (e.kind != EXTENT_DATA) {
			rc = sink->ops->zero(sink, pos, end - pos);
			stats_add(st->bytes_zero, end - pos);
			pos = end;
		} else {
			/* Blocks end on multiples of bs so that the same bytes land in
			 * the same blocks on every run (stable hashes for sync). */
			while (rc == 0 && pos < end) {
				uint64_t next = (pos / bs + 1) * bs;
				size_t n = (size_t)((next < end ? next : end) - pos);
				rc = image_pread(src, buf, n, pos);
				if (rc == 0)
					rc = deliver_block(sink, pos, buf, n, grain, st);
				pos += n;
				progress_update(&prog, pos, st);
			}
		}
		progress_update(&prog, pos, st);
	}
	if (rc == 0)
		rc = sink->ops->finish(sink);
	progress_end(&prog);
	st->bytes_read += src->bytes_read - read0;
	st->seconds = now_seconds() - t0;
	free(buf);
	return rc;
}

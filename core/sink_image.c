#include "sink.h"

#include "../formats/image.h"
#include "error.h"
#include "zero.h"

#include <stdlib.h>
#include <string.h>

/* In compare mode, write only the grains that differ from what the image
 * already holds: a nightly re-copy touches a few blocks, not the disk. */
static int write_changed(struct image_sink *s, uint64_t off, const unsigned char *buf, size_t len)
{
	/* A dry run does not resize: past the image's end all of it is new. */
	if (s->dry && off + len > s->img->size) {
		size_t in = off < s->img->size ? (size_t)(s->img->size - off) : 0;
		stats_add(s->base.stats->bytes_written, len - in);
		if (!in)
			return 0;
		len = in;
	}
	unsigned char *old = malloc(len);
	if (!old)
		return sp_err("%s: out of memory", s->img->path);
	int rc = image_pread(s->img, old, len, off);
	size_t pos = 0;
	bool changed = false;
	while (rc == 0 && pos < len) {
		size_t n = len - pos < s->grain ? len - pos : s->grain;
		if (memcmp(old + pos, buf + pos, n) == 0) {
			stats_add(s->base.stats->bytes_unchanged, n);
			pos += n;
			continue;
		}
		/* Extend over the following differing grains: one write per run. */
		size_t end = pos + n;
		while (end < len) {
			size_t m = len - end < s->grain ? len - end : s->grain;
			if (memcmp(old + end, buf + end, m) == 0)
				break;
			end += m;
		}
		rc = s->dry ? 0 : image_pwrite(s->img, buf + pos, end - pos, off + pos);
		stats_add(s->base.stats->bytes_written, end - pos);
		changed = true;
		pos = end;
	}
	if (changed)
		stats_add(s->base.stats->blocks_changed, 1);
	free(old);
	return rc;
}

static int sink_image_data(struct sink *base, uint64_t off, const void *buf, size_t len)
{
	struct image_sink *s = (struct image_sink *)base;
	if (s->compare)
		return write_changed(s, off, buf, len);
	stats_add(base->stats->bytes_written, len);
	return s->dry ? 0 : image_pwrite(s->img, buf, len, off);
}

/* In compare mode, zero only what does not read as zeros already: holes
 * cost nothing, and a device (all "data") is read, not rewritten, where it
 * already holds zeros (an SSD or a thin LV is spared the writes). */
static int zero_changed(struct image_sink *s, uint64_t off, uint64_t len)
{
	enum { CHUNK = 1u << 20 };
	uint64_t end = off + len;
	if (s->dry && end > s->img->size) /* a dry run does not resize: zeros there */
		end = s->img->size > off ? s->img->size : off;
	unsigned char *buf = NULL;
	int rc = 0;
	while (rc == 0 && off < end) {
		struct extent e;
		if ((rc = image_extent(s->img, off, &e)) < 0)
			break;
		uint64_t stop = e.length < end - off ? off + e.length : end;
		if (e.kind != EXTENT_DATA) {
			off = stop;
			continue;
		}
		if (!buf && !(buf = malloc(CHUNK))) {
			rc = sp_err("%s: out of memory", s->img->path);
			break;
		}
		while (rc == 0 && off < stop) {
			size_t n = stop - off < CHUNK ? (size_t)(stop - off) : CHUNK;
			if ((rc = image_pread(s->img, buf, n, off)) < 0)
				break;
			for (size_t pos = 0; rc == 0 && pos < n;) {
				size_t z = zero_run(buf + pos, n - pos, s->grain, true);
				if (z) {
					pos += z;
					continue;
				}
				size_t d = zero_run(buf + pos, n - pos, s->grain, false);
				rc = s->dry ? 0 : image_zero(s->img, off + pos, d);
				stats_add(s->base.stats->bytes_zeroed, d);
				pos += d;
			}
			off += n;
		}
	}
	free(buf);
	return rc;
}

static int sink_image_zero(struct sink *base, uint64_t off, uint64_t len)
{
	struct image_sink *s = (struct image_sink *)base;
	if (s->fresh)
		return 0;
	if (s->compare)
		return zero_changed(s, off, len);
	stats_add(base->stats->bytes_zeroed, len);
	return s->dry ? 0 : image_zero(s->img, off, len);
}

static int sink_image_finish(struct sink *base)
{
	struct image_sink *s = (struct image_sink *)base;
	return s->dry || !s->img ? 0 : image_flush(s->img);
}

static const struct sink_ops image_sink_ops = {
	.data = sink_image_data,
	.zero = sink_image_zero,
	.finish = sink_image_finish,
};

void image_sink_init(struct image_sink *s, struct image *img, struct sp_stats *st,
		     int fresh, int compare)
{
	memset(s, 0, sizeof *s);
	s->base.ops = &image_sink_ops;
	s->base.stats = st;
	s->img = img;
	s->fresh = fresh;
	s->compare = compare;
	s->grain = img && img->granularity > 4096 ? img->granularity : 4096;
}

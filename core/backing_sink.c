/* The --backing sink: writes a qcow2 overlay holding only the clusters
 * that differ from its backing image. */
#include "backing_sink.h"

#include "../formats/image.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

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
		return sp_err("%s: out of memory", s->backing->path);
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
		rc = s->dst ? image_pwrite(s->dst, p + pos, end - pos, off + pos) : 0;
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
		uint64_t n = e.length < end - off ? e.length : end - off;
		if (e.kind == EXTENT_DATA && s->dst && image_zero(s->dst, off, n) < 0)
			return -1;
		off += n;
	}
	return 0;
}

static int bsink_finish(struct sink *base)
{
	struct image *dst = ((struct backing_sink *)base)->dst;
	return dst ? image_flush(dst) : 0;
}

static const struct sink_ops backing_sink_ops = {
	.data = bsink_data, .zero = bsink_zero, .finish = bsink_finish,
};

void backing_sink_init(struct backing_sink *s, struct image *dst, struct image *backing,
		       uint32_t grain, struct sp_stats *st)
{
	memset(s, 0, sizeof *s);
	s->base.ops = &backing_sink_ops;
	s->base.stats = st;
	s->dst = dst;
	s->backing = backing;
	s->grain = dst && dst->granularity ? dst->granularity : grain ? grain : 65536;
}

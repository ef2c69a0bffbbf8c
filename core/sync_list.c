#include "sync_list.h"

#include "../formats/image.h"
#include "../transport/transport.h"
#include "error.h"
#include "protocol.h"
#include "sync_hash.h"
#include "unit_map.h"

#include <stdlib.h>
#include <string.h>

struct list_writer {
	struct transport *t;
	struct unit_map *fill;
	struct hash128 zero;
	uint8_t *rec;            /* PROTO_HASHES_AT + PROTO_HASHES_MAX hashes */
	struct proto_hashes h;   /* the record being filled */
};

static int flush_rec(struct list_writer *w, uint8_t flags)
{
	w->h.flags = flags;
	size_t n = proto_seal_hashes(w->rec, &w->h);
	int rc = transport_write(w->t, w->rec, n);
	w->h.count = 0;
	return rc;
}

static int emit(void *ctx, uint64_t off, const struct hash128 *h, uint32_t count)
{
	struct list_writer *w = ctx;
	for (uint32_t i = 0; i < count; i++) {
		uint64_t o = off + (uint64_t)i * w->h.unit;
		if (w->h.count && (w->h.count == PROTO_HASHES_MAX ||
				   o != w->h.offset + (uint64_t)w->h.count * w->h.unit)) {
			if (flush_rec(w, 0) < 0)
				return -1;
		}
		if (w->h.count == 0)
			w->h.offset = o;
		memcpy(w->rec + PROTO_HASHES_AT + (size_t)w->h.count * HASH_SIZE, h[i].b, HASH_SIZE);
		w->h.count++;
		if (w->fill && !hash128_equal(&h[i], &w->zero) &&
		    unit_map_set(w->fill, o >> w->fill->unit_bits, &h[i]) < 0)
			return -1;
	}
	return 0;
}

static int writer_open(struct list_writer *w, uint64_t size, uint32_t unit, const char *name)
{
	w->h.size = size;
	w->h.unit = unit;
	w->rec = malloc(PROTO_HASHES_AT + (size_t)PROTO_HASHES_MAX * HASH_SIZE);
	return w->rec ? 0 : sp_err("%s: out of memory for the hash list", name);
}

/* The last record (flagged HASHES_LAST, maybe empty), if all went well. */
static int writer_close(struct list_writer *w, int rc)
{
	if (rc == 0) {
		if (w->h.count == 0)
			w->h.offset = 0;
		rc = flush_rec(w, HASHES_LAST);
	}
	free(w->rec);
	return rc;
}

int sync_list_write(struct transport *t, struct image *img, uint32_t unit, unsigned workers,
		    struct unit_map *fill)
{
	struct list_writer w = { .t = t, .fill = fill };
	sync_zero_hash(unit, &w.zero);
	if (writer_open(&w, img->size, unit, img->path) < 0)
		return -1;
	return writer_close(&w, sync_hash_image(img, unit, workers, emit, &w));
}

int sync_list_write_fresh(struct transport *t, uint64_t size)
{
	uint8_t rec[PROTO_HASHES_AT];
	struct proto_hashes h = {
		.size = size, .offset = 0, .unit = SYNC_UNIT_RAW, .count = 0,
		.flags = HASHES_LAST | HASHES_FRESH,
	};
	size_t n = proto_seal_hashes(rec, &h);
	return transport_write(t, rec, n);
}

int sync_list_write_map(struct transport *t, const struct unit_map *m)
{
	struct list_writer w = { .t = t };
	if (writer_open(&w, m->size, m->unit, "digest") < 0)
		return -1;
	uint64_t u = 0, f;
	struct hash128 h;
	int rc = 0;
	while (rc == 0 && unit_map_next(m, u, &f, &h)) {
		rc = emit(&w, f << m->unit_bits, &h, 1);
		u = f + 1;
	}
	return writer_close(&w, rc);
}

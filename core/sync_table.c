#include "sync_table.h"

#include "error.h"
#include "sync_hash.h"
#include "unit_map.h"

#include <stdlib.h>
#include <string.h>

void sync_table_init(struct sync_table *t)
{
	memset(t, 0, sizeof *t);
}

void sync_table_free(struct sync_table *t)
{
	free(t->runs);
	free(t->hash);
	free(t->verdict);
	memset(t, 0, sizeof *t);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t c = *cap ? *cap : 1024;
	while (c < need)
		c *= 2;
	void *np = realloc(*p, c * elem);
	if (!np)
		return -1;
	*p = np;
	*cap = c;
	return 0;
}

int sync_table_add(struct sync_table *t, const struct proto_hashes *h)
{
	if (t->unit == 0) {
		t->unit = h->unit;
		t->unit_bits = (unsigned)__builtin_ctz(h->unit);
		t->size = h->size;
		sync_zero_hash(t->unit, &t->zero);
	}
	if (h->flags & HASHES_FRESH)
		t->fresh = true;
	if (h->flags & HASHES_LAST)
		t->complete = true;
	if (h->count == 0)
		return 0;
	size_t need = t->n + h->count;
	size_t vcap = t->cap;
	if (grow((void **)&t->hash, &t->cap, need, sizeof *t->hash) < 0 ||
	    grow((void **)&t->verdict, &vcap, need, 1) < 0 || vcap != t->cap)
		return sp_err("out of memory for a hash list of %zu entries", need);
	memcpy(t->hash + t->n, h->hashes, (size_t)h->count * HASH_SIZE);
	memset(t->verdict + t->n, SYNC_UNKNOWN, h->count);
	uint64_t first = h->offset >> t->unit_bits;
	struct sync_run *last = t->nruns ? &t->runs[t->nruns - 1] : NULL;
	if (last && last->first + last->count == first && last->count + (uint64_t)h->count <= UINT32_MAX) {
		last->count += h->count;
	} else {
		if (grow((void **)&t->runs, &t->runs_cap, t->nruns + 1, sizeof *t->runs) < 0)
			return sp_err("out of memory for a hash list of %zu entries", need);
		t->runs[t->nruns++] = (struct sync_run){ first, h->count, (uint32_t)t->n };
	}
	t->n = need;
	t->bytes += (uint64_t)h->count * t->unit;
	return 0;
}

int sync_table_read(struct sync_table *t, struct proto_reader *r)
{
	while (!t->complete) {
		struct proto_rec rec;
		if (proto_read(r, &rec) < 0)
			return -1;
		if (rec.type == REC_ERROR) {
			proto_peer_error(r->s, &rec);
			return PROTO_PEER_FAILED;
		}
		if (rec.type == REC_TRACK && t->n == 0 && t->unit == 0) {
			t->track = rec.u.track;
			t->has_track_id = true;
			continue;
		}
		if (rec.type != REC_HASHES)
			return sp_err("%s: unexpected record type %u inside the hash list", r->s->peer,
				      rec.type);
		if (sync_table_add(t, &rec.u.hashes) < 0)
			return -1;
	}
	return 0;
}

/* The last run whose first unit is <= u, or -1. */
static long run_at_or_before(const struct sync_table *t, uint64_t u)
{
	size_t lo = 0, hi = t->nruns;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (t->runs[mid].first <= u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (long)lo - 1;
}

long sync_table_find(const struct sync_table *t, uint64_t u)
{
	long r = run_at_or_before(t, u);
	if (r < 0)
		return -1;
	const struct sync_run *run = &t->runs[r];
	if (u - run->first >= run->count)
		return -1;
	return (long)(run->at + (u - run->first));
}

bool sync_table_next(const struct sync_table *t, uint64_t u, size_t *idx, uint64_t *unit_out)
{
	long r = run_at_or_before(t, u);
	if (r >= 0 && u - t->runs[r].first < t->runs[r].count) {
		*idx = t->runs[r].at + (size_t)(u - t->runs[r].first);
		*unit_out = u;
		return true;
	}
	size_t nr = (size_t)(r + 1);
	if (nr >= t->nruns)
		return false;
	*idx = t->runs[nr].at;
	*unit_out = t->runs[nr].first;
	return true;
}

int sync_table_from_map(struct sync_table *t, const struct unit_map *m)
{
	uint8_t *buf = malloc((size_t)PROTO_HASHES_MAX * HASH_SIZE);
	if (!buf)
		return sp_err("out of memory for a hash list");
	struct proto_hashes h = { .size = m->size, .unit = m->unit };
	uint64_t u = 0, f;
	struct hash128 hash;
	int rc = 0;
	while (rc == 0 && unit_map_next(m, u, &f, &hash)) {
		if (h.count && (h.count == PROTO_HASHES_MAX || f != (h.offset >> m->unit_bits) + h.count)) {
			h.hashes = buf;
			rc = sync_table_add(t, &h);
			h.count = 0;
		}
		if (h.count == 0)
			h.offset = f << m->unit_bits;
		memcpy(buf + (size_t)h.count * HASH_SIZE, hash.b, HASH_SIZE);
		h.count++;
		u = f + 1;
	}
	h.flags = HASHES_LAST;
	h.hashes = buf;
	if (rc == 0)
		rc = sync_table_add(t, &h);
	free(buf);
	return rc;
}

#include "sync_verify.h"

#include "../formats/image.h"
#include "../transport/transport.h"
#include "error.h"
#include "protocol.h"
#include "sync_hash.h"
#include "sync_table.h"

#include <stdlib.h>
#include <string.h>

#define CHUNK (1u << 20)

/* ---- two local images ---- */

/* The extent at pos, cached until pos leaves it. Past the end: no data. */
struct cursor {
	struct image *img;
	struct extent e;
	bool valid;
};

static int kind_at(struct cursor *c, uint64_t pos, bool *data, uint64_t *end)
{
	struct image *img = c->img;
	if (pos >= img->size) {
		*data = false;
		*end = UINT64_MAX;
		return 0;
	}
	if (!c->valid || pos < c->e.offset || pos - c->e.offset >= c->e.length) {
		if (image_extent(img, pos, &c->e) < 0)
			return -1;
		c->valid = true;
	}
	*data = c->e.kind == EXTENT_DATA;
	uint64_t e = c->e.offset + c->e.length;
	*end = e < img->size ? e : img->size;
	return 0;
}

static int read_or_zero(struct image *img, bool data, uint8_t *buf, size_t n, uint64_t off,
			uint64_t *bytes)
{
	if (!data) {
		memset(buf, 0, n);
		return 0;
	}
	*bytes += n;
	return image_pread(img, buf, n, off);
}

static size_t first_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
	size_t i = 0;
	while (i + 64 <= n && memcmp(a + i, b + i, 64) == 0)
		i += 64;
	while (i < n && a[i] == b[i])
		i++;
	return i;
}

int verify_local(struct image *a, struct image *b, struct verify_result *res)
{
	memset(res, 0, sizeof *res);
	res->size_local = a->size;
	res->size_other = b->size;
	uint8_t *ba = malloc(CHUNK), *bb = malloc(CHUNK);
	int rc = 0;
	if (!ba || !bb)
		rc = sp_err("out of memory");
	struct cursor ca = { .img = a }, cb = { .img = b };
	uint64_t total = a->size > b->size ? a->size : b->size;
	uint64_t pos = 0;
	while (rc == 0 && pos < total) {
		bool da, db;
		uint64_t ea, eb;
		if (kind_at(&ca, pos, &da, &ea) < 0 || kind_at(&cb, pos, &db, &eb) < 0) {
			rc = -1;
			break;
		}
		uint64_t end = ea < eb ? ea : eb;
		if (end > total)
			end = total;
		if (!da && !db) {
			pos = end;
			continue;
		}
		size_t n = end - pos < CHUNK ? (size_t)(end - pos) : CHUNK;
		if (read_or_zero(a, da, ba, n, pos, &res->bytes_read) < 0 ||
		    read_or_zero(b, db, bb, n, pos, &res->bytes_read) < 0) {
			rc = -1;
			break;
		}
		size_t i = first_diff(ba, bb, n);
		if (i < n) {
			res->differ = true;
			res->offset = pos + i;
			break;
		}
		pos += n;
	}
	free(ba);
	free(bb);
	return rc;
}

/* ---- a local image against a remote hash list ---- */

struct merge {
	struct sync_table *t;
	size_t i, run;            /* next remote entry, and its run */
	bool found;
	uint64_t unit;            /* first differing unit */
	bool remote_has;          /* ... and whether the remote holds it */
};

static bool remote_next(struct merge *m, uint64_t *u)
{
	if (m->i >= m->t->n)
		return false;
	const struct sync_run *r = &m->t->runs[m->run];
	*u = r->first + (m->i - r->at);
	return true;
}

static void remote_advance(struct merge *m)
{
	m->i++;
	const struct sync_run *r = &m->t->runs[m->run];
	if (m->i - r->at == r->count)
		m->run++;
}

/* Remote entries before unit `upto` face local zeros. */
static bool remote_until(struct merge *m, uint64_t upto)
{
	uint64_t u;
	while (remote_next(m, &u) && u < upto) {
		if (!hash128_equal(&m->t->hash[m->i], &m->t->zero)) {
			m->found = true;
			m->unit = u;
			m->remote_has = true;
			return false;
		}
		remote_advance(m);
	}
	return true;
}

static int emit_cmp(void *ctx, uint64_t off, const struct hash128 *h, uint32_t count)
{
	struct merge *m = ctx;
	uint64_t u0 = off >> m->t->unit_bits;
	for (uint32_t k = 0; k < count; k++) {
		uint64_t lu = u0 + k, ru;
		if (!remote_until(m, lu))
			return 1;
		const struct hash128 *other = &m->t->zero;
		bool has = remote_next(m, &ru) && ru == lu;
		if (has) {
			other = &m->t->hash[m->i];
			remote_advance(m);
		}
		if (!hash128_equal(&h[k], other)) {
			m->found = true;
			m->unit = lu;
			m->remote_has = has;
			return 1;
		}
	}
	return 0;
}

/* The first non-zero byte of the local unit (the remote reads zeros there). */
static int refine(struct image *img, uint64_t off, uint32_t unit, uint64_t *out)
{
	*out = off;
	if (off >= img->size)
		return 0;
	size_t n = img->size - off < unit ? (size_t)(img->size - off) : unit;
	uint8_t *buf = malloc(n);
	if (!buf)
		return sp_err("out of memory");
	int rc = image_pread(img, buf, n, off);
	if (rc == 0) {
		size_t i = 0;
		while (i < n && !buf[i])
			i++;
		if (i < n)
			*out = off + i;
	}
	free(buf);
	return rc;
}

int verify_remote(struct transport *t, struct image *local, uint32_t unit, unsigned workers,
		  struct verify_result *res)
{
	memset(res, 0, sizeof *res);
	res->size_local = local->size;
	res->unit = unit;
	struct proto_session s;
	memset(&s, 0, sizeof s);
	s.peer = t->name;
	s.me = ROLE_SENDER;
	struct proto_reader rd;
	proto_reader_init(&rd, t, &s);
	struct sync_table table;
	sync_table_init(&table);
	struct proto_hello mine, peer;
	proto_hello_init(&mine, ROLE_SENDER, 0, 1u << 20,
			 CAP_HASH_XXH3_128 | CAP_CODEC(WIRE_NONE) | CAP_SYNC);
	uint64_t read0 = local->bytes_read;
	int rc = proto_write_hello(t, &mine);
	if (rc == 0)
		rc = proto_read_hello(&rd, ROLE_RECEIVER, &peer);
	if (rc == 0)
		rc = proto_negotiate(&s, t->name, ROLE_SENDER, &mine, &peer);
	if (rc == 0 && !(s.caps & CAP_SYNC))
		rc = sp_err("%s: the remote sparsync cannot send hash lists; upgrade it", t->name);
	if (rc == 0)
		rc = sync_table_read(&table, &rd);
	if (rc == 0 && table.unit != unit)
		rc = sp_err("%s: hash list in %u-byte units, asked for %u", t->name, table.unit, unit);
	if (rc == 0) {
		res->size_other = table.size;
		struct merge m = { .t = &table };
		rc = sync_hash_image(local, unit, workers, emit_cmp, &m);
		if (rc == 0 && !m.found)
			remote_until(&m, UINT64_MAX);
		if (rc == 0 && m.found) {
			res->differ = true;
			uint64_t off = m.unit << table.unit_bits;
			res->offset = off;
			if (!m.remote_has)
				rc = refine(local, off, unit, &res->offset);
		}
	}
	res->bytes_read = local->bytes_read - read0;
	res->bytes_received = rd.bytes;
	sync_table_free(&table);
	proto_reader_free(&rd);
	return rc;
}

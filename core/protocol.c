#include "protocol.h"

#include "../transport/transport.h"
#include "confine.h"
#include "error.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- little-endian fields ---- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}
static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static const char *rec_name(unsigned type)
{
	switch (type) {
	case REC_IMAGE: return "IMAGE";
	case REC_DATA: return "DATA";
	case REC_ZERO: return "ZERO";
	case REC_END: return "END";
	case REC_ERROR: return "ERROR";
	case REC_ACK: return "ACK";
	case REC_HASHES: return "HASHES";
	case REC_TRACK: return "TRACK";
	case REC_LINKS: return "LINKS";
	case REC_JOIN: return "JOIN";
	default: return "unknown";
	}
}

/* ---- hello ---- */

void proto_hello_init(struct proto_hello *h, enum proto_role role, uint8_t flags,
		      uint32_t max_block, uint64_t caps)
{
	memset(h, 0, sizeof *h);
	h->version = PROTO_VERSION;
	h->role = (uint8_t)role;
	h->flags = flags;
	h->max_block = max_block;
	h->caps = caps;
}

void proto_hello_encode(const struct proto_hello *h, uint8_t out[PROTO_HELLO_SIZE])
{
	memset(out, 0, PROTO_HELLO_SIZE);
	memcpy(out, PROTO_MAGIC, PROTO_MAGIC_LEN);
	put16(out + 8, h->version);
	put16(out + 10, PROTO_HELLO_BODY);
	out[12] = h->role;
	out[13] = h->flags;
	put32(out + 16, h->max_block);
	put64(out + 20, h->caps);
}

/* The first bytes as text, when they are text: a remote shell that prints a
 * banner on stdout shows up here. */
static void preview(const uint8_t *p, size_t n, char *out, size_t cap)
{
	size_t k = 0;
	for (size_t i = 0; i < n && k + 1 < cap; i++) {
		if (!isprint(p[i]) && p[i] != '\n' && p[i] != '\t') {
			out[0] = '\0';
			return;
		}
		out[k++] = p[i] == '\n' || p[i] == '\t' ? ' ' : (char)p[i];
	}
	out[k] = '\0';
}

static int bad_magic(const char *peer, const uint8_t *head, size_t n)
{
	char text[PROTO_HELLO_HEAD + 1];
	preview(head, n, text, sizeof text);
	if (text[0])
		return sp_err("%s: not a sparsync stream (it starts with \"%s\"; does the "
			      "remote shell print to stdout?)", peer, text);
	return sp_err("%s: not a sparsync stream (bad magic)", peer);
}

int proto_hello_check_head(const char *peer, const uint8_t head[PROTO_HELLO_HEAD],
			   uint16_t *body_len)
{
	if (memcmp(head, PROTO_MAGIC, PROTO_MAGIC_LEN) != 0)
		return bad_magic(peer, head, PROTO_HELLO_HEAD);
	uint16_t v = get16(head + 8);
	if (v != PROTO_VERSION)
		return sp_err("%s: remote speaks protocol %u, we speak %u; upgrade sparsync %s",
			      peer, v, PROTO_VERSION,
			      v > PROTO_VERSION ? "on this host" : "on the remote side (or the "
			      "writer of this stream)");
	*body_len = get16(head + 10);
	if (*body_len != PROTO_HELLO_BODY)
		return sp_err("%s: malformed hello (body of %u bytes, expected %u)", peer,
			      *body_len, PROTO_HELLO_BODY);
	return 0;
}

int proto_hello_decode_body(const char *peer, const uint8_t *body, size_t len,
			    enum proto_role want_role, struct proto_hello *h)
{
	if (len != PROTO_HELLO_BODY)
		return sp_err("%s: malformed hello (body of %zu bytes)", peer, len);
	memset(h, 0, sizeof *h);
	h->version = PROTO_VERSION;
	h->role = body[0];
	h->flags = body[1];
	h->max_block = get32(body + 4);
	h->caps = get64(body + 8);
	if (h->role != ROLE_SENDER && h->role != ROLE_RECEIVER)
		return sp_err("%s: malformed hello (role %u)", peer, h->role);
	if (h->role != want_role)
		return sp_err("%s: the peer is a %s too (both sides %s)", peer,
			      h->role == ROLE_SENDER ? "sender" : "receiver",
			      h->role == ROLE_SENDER ? "want to send" : "want to receive");
	if (h->flags & ~HELLO_STREAM)
		return sp_err("%s: malformed hello (unknown flags 0x%x)", peer, h->flags);
	return 0;
}

int proto_negotiate(struct proto_session *s, const char *peer, enum proto_role me,
		    const struct proto_hello *sender, const struct proto_hello *receiver)
{
	memset(s, 0, sizeof *s);
	s->peer = peer;
	s->me = (uint8_t)me;
	s->caps = sender->caps & receiver->caps;
	s->peer_stream = sender->flags & HELLO_STREAM;
	if (!(s->caps & CAP_HASH_XXH3_128))
		return sp_err("%s: no common block hash (this sparsync needs xxh3-128)", peer);
	if (!(s->caps & CAP_CODEC(WIRE_NONE)))
		return sp_err("%s: no common codec (not even uncompressed)", peer);
	if (sender->max_block < PROTO_BLOCK_MIN || sender->max_block > PROTO_BLOCK_MAX)
		return sp_err("%s: sender block size %u is outside %u..%u", peer,
			      sender->max_block, PROTO_BLOCK_MIN, PROTO_BLOCK_MAX);
	if (sender->max_block > receiver->max_block)
		return sp_err("%s: sender uses %u-byte blocks, receiver accepts at most %u", peer,
			      sender->max_block, receiver->max_block);
	s->max_block = sender->max_block;
	return 0;
}

bool proto_codec_allowed(const struct proto_session *s, unsigned codec)
{
	return codec < WIRE_CODEC_COUNT && (s->caps & CAP_CODEC(codec));
}

/* ---- records: encode ---- */

static uint64_t frame_check(uint8_t type, uint32_t body_len, const uint8_t *body)
{
	return hash64_seeded(body, body_len, (uint64_t)type | (uint64_t)body_len << 8);
}

/* Frame for the body that already sits right after it. */
static size_t seal(uint8_t *out, uint8_t type, uint32_t body_len)
{
	out[0] = type;
	out[1] = out[2] = out[3] = 0;
	put32(out + 4, body_len);
	put64(out + 8, frame_check(type, body_len, out + PROTO_FRAME_SIZE));
	return PROTO_FRAME_SIZE + body_len;
}

size_t proto_encode_image(uint8_t out[PROTO_FRAME_SIZE + PROTO_IMAGE_SIZE_DATA],
			  const struct proto_image *im)
{
	uint8_t *b = out + PROTO_FRAME_SIZE;
	uint32_t n = im->has_data ? PROTO_IMAGE_SIZE_DATA : PROTO_IMAGE_SIZE;
	memset(b, 0, n);
	put64(b, im->size);
	put32(b + 8, im->block_size);
	b[12] = im->format;
	if (im->has_data)
		put64(b + 16, im->data);
	return seal(out, REC_IMAGE, n);
}

size_t proto_seal_data(uint8_t *rec, const struct proto_data *d)
{
	uint8_t *b = rec + PROTO_FRAME_SIZE;
	memset(b, 0, PROTO_DATA_HEAD);
	put64(b, d->offset);
	put32(b + 8, d->length);
	b[12] = d->codec;
	memcpy(b + 16, d->hash.b, HASH_SIZE);
	put32(b + 32, d->clen);
	return seal(rec, REC_DATA, PROTO_DATA_HEAD + d->clen);
}

size_t proto_encode_zero(uint8_t out[PROTO_FRAME_SIZE + PROTO_ZERO_SIZE], uint64_t off, uint64_t len)
{
	put64(out + PROTO_FRAME_SIZE, off);
	put64(out + PROTO_FRAME_SIZE + 8, len);
	return seal(out, REC_ZERO, PROTO_ZERO_SIZE);
}

size_t proto_encode_end(uint8_t out[PROTO_FRAME_SIZE + PROTO_END_SIZE], const struct proto_end *e)
{
	uint8_t *b = out + PROTO_FRAME_SIZE;
	put64(b, e->data_bytes);
	put64(b + 8, e->data_records);
	put64(b + 16, e->zero_bytes);
	put64(b + 24, e->source_bytes_read);
	memcpy(b + 32, e->digest.b, HASH_SIZE);
	put64(b + 48, e->units_changed);
	put64(b + 56, e->bytes_unchanged);
	return seal(out, REC_END, PROTO_END_SIZE);
}

size_t proto_encode_track(uint8_t out[PROTO_FRAME_SIZE + PROTO_TRACK_SIZE],
			  const struct proto_track *t)
{
	uint8_t *b = out + PROTO_FRAME_SIZE;
	memset(b, 0, PROTO_TRACK_SIZE);
	memcpy(b, t->id, PROTO_TRACK_ID_SIZE);
	b[16] = t->flags;
	return seal(out, REC_TRACK, PROTO_TRACK_SIZE);
}

size_t proto_encode_links(uint8_t out[PROTO_FRAME_SIZE + PROTO_LINKS_SIZE],
			  const struct proto_links *l)
{
	uint8_t *b = out + PROTO_FRAME_SIZE;
	memset(b, 0, PROTO_LINKS_SIZE);
	memcpy(b, l->token, PROTO_LINK_TOKEN_SIZE);
	put32(b + 16, l->cores);
	memcpy(b + 24, l->name, strnlen(l->name, PROTO_LINK_NAME_MAX));
	return seal(out, REC_LINKS, PROTO_LINKS_SIZE);
}

size_t proto_encode_join(uint8_t out[PROTO_FRAME_SIZE + PROTO_JOIN_SIZE],
			 const struct proto_join *j)
{
	uint8_t *b = out + PROTO_FRAME_SIZE;
	memset(b, 0, PROTO_JOIN_SIZE);
	memcpy(b, j->token, PROTO_LINK_TOKEN_SIZE);
	put32(b + 16, j->index);
	return seal(out, REC_JOIN, PROTO_JOIN_SIZE);
}

#define LINK_NAME_PREFIX "sparsync-links-"

bool proto_link_name_ok(const char *name)
{
	size_t p = strlen(LINK_NAME_PREFIX);
	if (strncmp(name, LINK_NAME_PREFIX, p) != 0 || strlen(name) != p + 32)
		return false;
	for (const char *c = name + p; *c; c++)
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
			return false;
	return true;
}

size_t proto_encode_ack(uint8_t out[PROTO_FRAME_SIZE + PROTO_ACK_SIZE_DIGEST],
			const struct proto_ack *a)
{
	uint8_t *b = out + PROTO_FRAME_SIZE;
	put64(b, a->bytes_written);
	put64(b + 8, a->bytes_received);
	put64(b + 16, a->blocks_changed);
	put64(b + 24, a->bytes_unchanged);
	if (!a->has_dest_read)
		return seal(out, REC_ACK, PROTO_ACK_SIZE);
	put64(b + 32, a->dest_bytes_read);
	return seal(out, REC_ACK, PROTO_ACK_SIZE_DIGEST);
}

size_t proto_seal_hashes(uint8_t *rec, const struct proto_hashes *h)
{
	uint8_t *b = rec + PROTO_FRAME_SIZE;
	memset(b, 0, PROTO_HASHES_HEAD);
	put64(b, h->size);
	put64(b + 8, h->offset);
	put32(b + 16, h->unit);
	put32(b + 20, h->count);
	b[24] = h->flags;
	return seal(rec, REC_HASHES, PROTO_HASHES_HEAD + h->count * HASH_SIZE);
}

size_t proto_encode_error(uint8_t out[PROTO_FRAME_SIZE + PROTO_ERROR_MAX], const char *msg)
{
	size_t n = strlen(msg);
	if (n > PROTO_ERROR_MAX)
		n = PROTO_ERROR_MAX;
	if (n == 0) {
		msg = "error";
		n = 5;
	}
	memcpy(out + PROTO_FRAME_SIZE, msg, n);
	return seal(out, REC_ERROR, (uint32_t)n);
}

/* ---- records: decode ---- */

static size_t data_body_max(const struct proto_session *s)
{
	size_t bound = 0;
	for (unsigned c = 0; c < WIRE_CODEC_COUNT; c++) {
		if (!proto_codec_allowed(s, c))
			continue;
		size_t b = codec_bound((enum wire_codec)c, s->image.block_size);
		if (b > bound)
			bound = b;
	}
	return PROTO_DATA_HEAD + bound;
}

size_t proto_body_max(const struct proto_session *s)
{
	size_t m = PROTO_ERROR_MAX;
	if (s->me == ROLE_SENDER && (s->caps & CAP_SYNC) && !s->hl.done)
		m = PROTO_HASHES_HEAD + (size_t)PROTO_HASHES_MAX * HASH_SIZE;
	if (s->have_image && s->me == ROLE_RECEIVER) {
		size_t d = data_body_max(s);
		if (d > m)
			m = d;
	}
	return m;
}

int proto_frame_decode(const struct proto_session *s, const uint8_t hdr[PROTO_FRAME_SIZE],
		       uint8_t *type, uint32_t *body_len)
{
	const char *peer = s->peer;
	uint8_t t = hdr[0];
	uint32_t n = get32(hdr + 4);
	*type = t;
	*body_len = n;
	if (hdr[1] || hdr[2] || hdr[3])
		return sp_err("%s: malformed record header (type %u)", peer, t);
	bool for_receiver = t == REC_IMAGE || t == REC_DATA || t == REC_ZERO || t == REC_END;
	bool for_sender = t == REC_ACK || t == REC_HASHES;
	bool link = t == REC_LINKS || t == REC_JOIN;
	if (!for_receiver && !for_sender && !link && t != REC_ERROR && t != REC_TRACK)
		return sp_err("%s: unknown record type %u", peer, t);
	if (link && !(s->caps & CAP_LINKS))
		return sp_err("%s: %s record, but several connections were not negotiated", peer,
			      rec_name(t));
	if (t == REC_TRACK) {
		/* The receiver's before its hash list ends; the sender's after
		 * IMAGE. */
		if (!(s->caps & CAP_TRACK))
			return sp_err("%s: TRACK record, but tracking was not negotiated", peer);
		if (s->me == ROLE_SENDER ? s->hl.done : !s->have_image)
			return sp_err("%s: TRACK record out of place", peer);
	}
	if (t == REC_HASHES && !(s->caps & CAP_SYNC))
		return sp_err("%s: HASHES record, but incremental sync was not negotiated", peer);
	if (t == REC_HASHES && s->hl.done)
		return sp_err("%s: HASHES record after the end of the hash list", peer);
	if ((for_receiver && s->me != ROLE_RECEIVER) || (for_sender && s->me != ROLE_SENDER))
		return sp_err("%s: unexpected %s record from the %s", peer, rec_name(t),
			      s->me == ROLE_RECEIVER ? "sender" : "receiver");
	if ((t == REC_DATA || t == REC_ZERO || t == REC_END) && !s->have_image)
		return sp_err("%s: %s record before the IMAGE record", peer, rec_name(t));
	if (t == REC_IMAGE && s->have_image)
		return sp_err("%s: second IMAGE record", peer);

	size_t want = 0;
	switch (t) {
	case REC_IMAGE:
		want = s->caps & CAP_DATA_SIZE ? PROTO_IMAGE_SIZE_DATA : PROTO_IMAGE_SIZE;
		break;
	case REC_ZERO: want = PROTO_ZERO_SIZE; break;
	case REC_END: want = PROTO_END_SIZE; break;
	case REC_ACK: want = s->caps & CAP_DIGEST ? PROTO_ACK_SIZE_DIGEST : PROTO_ACK_SIZE; break;
	case REC_TRACK: want = PROTO_TRACK_SIZE; break;
	case REC_LINKS: want = PROTO_LINKS_SIZE; break;
	case REC_JOIN: want = PROTO_JOIN_SIZE; break;
	case REC_ERROR:
		if (n == 0 || n > PROTO_ERROR_MAX)
			return sp_err("%s: ERROR record of %u bytes (limit %u)", peer, n, PROTO_ERROR_MAX);
		return 0;
	case REC_HASHES:
		if (n < PROTO_HASHES_HEAD || (n - PROTO_HASHES_HEAD) % HASH_SIZE ||
		    (n - PROTO_HASHES_HEAD) / HASH_SIZE > PROTO_HASHES_MAX)
			return sp_err("%s: HASHES record of %u bytes (at most %u hashes of %u bytes "
				      "after a %u-byte head)", peer, n, PROTO_HASHES_MAX, HASH_SIZE,
				      PROTO_HASHES_HEAD);
		return 0;
	case REC_DATA:
		if (n < PROTO_DATA_HEAD || n > data_body_max(s))
			return sp_err("%s: DATA record of %u bytes exceeds the limit of %zu for "
				      "%u-byte blocks", peer, n, data_body_max(s), s->image.block_size);
		return 0;
	default:
		return sp_err("%s: %s records are not supported by this version", peer, rec_name(t));
	}
	if (n != want)
		return sp_err("%s: %s record of %u bytes, expected %zu", peer, rec_name(t), n, want);
	return 0;
}

int proto_frame_verify(const struct proto_session *s, const uint8_t hdr[PROTO_FRAME_SIZE],
		       const uint8_t *body, size_t len)
{
	if (frame_check(hdr[0], (uint32_t)len, body) == get64(hdr + 8))
		return 0;
	if (hdr[0] == REC_DATA && len >= 8)
		return sp_err("%s: checksum mismatch at offset %llu (the DATA record is corrupt)",
			      s->peer, (unsigned long long)get64(body));
	return sp_err("%s: checksum mismatch in a%s %s record (the stream is corrupt)", s->peer,
		      hdr[0] == REC_IMAGE || hdr[0] == REC_END || hdr[0] == REC_ERROR || hdr[0] == REC_ACK
			      ? "n" : "", rec_name(hdr[0]));
}

/* off + len within size, without overflow. */
static bool in_range(uint64_t off, uint64_t len, uint64_t size)
{
	return len <= size && off <= size - len;
}

/* One piece of the receiver's hash list, checked against the ones before. */
static int hashes_decode(struct proto_session *s, const uint8_t *b, size_t len,
			 struct proto_hashes *h)
{
	const char *peer = s->peer;
	if (len < PROTO_HASHES_HEAD || (len - PROTO_HASHES_HEAD) % HASH_SIZE)
		return sp_err("%s: malformed HASHES record", peer);
	h->size = get64(b);
	h->offset = get64(b + 8);
	h->unit = get32(b + 16);
	h->count = get32(b + 20);
	h->flags = b[24];
	h->hashes = b + PROTO_HASHES_HEAD;
	unsigned long long off = (unsigned long long)h->offset;
	if (!all_zero(b + 25, 7))
		return sp_err("%s: malformed HASHES record at offset %llu (reserved bytes set)", peer, off);
	if ((size_t)h->count != (len - PROTO_HASHES_HEAD) / HASH_SIZE || h->count > PROTO_HASHES_MAX)
		return sp_err("%s: HASHES record at offset %llu declares %u hashes but carries %zu",
			      peer, off, h->count, (len - PROTO_HASHES_HEAD) / HASH_SIZE);
	if (h->flags & ~(HASHES_LAST | HASHES_FRESH))
		return sp_err("%s: HASHES record with unknown flags 0x%x", peer, h->flags);
	if (h->count == 0 && !(h->flags & HASHES_LAST))
		return sp_err("%s: empty HASHES record before the last one", peer);
	if ((h->flags & HASHES_FRESH) && (h->count || !(h->flags & HASHES_LAST) || s->hl.total))
		return sp_err("%s: a fresh destination's hash list must be empty", peer);
	if (h->unit < PROTO_HASHES_UNIT_MIN || h->unit > PROTO_HASHES_UNIT_MAX ||
	    (h->unit & (h->unit - 1)))
		return sp_err("%s: hash unit %u is not a power of two from %u to %u", peer, h->unit,
			      PROTO_HASHES_UNIT_MIN, PROTO_HASHES_UNIT_MAX);
	if (h->size > PROTO_SIZE_MAX)
		return sp_err("%s: hashed size %llu is beyond the limit of %llu bytes", peer,
			      (unsigned long long)h->size, (unsigned long long)PROTO_SIZE_MAX);
	if (s->hl.started && (h->unit != s->hl.unit || h->size != s->hl.size))
		return sp_err("%s: HASHES record at offset %llu changes the unit or size of the list",
			      peer, off);
	if (h->offset % h->unit)
		return sp_err("%s: HASHES record at offset %llu is not aligned to its %u-byte unit",
			      peer, off, h->unit);
	if (h->count && h->offset < s->hl.next)
		return sp_err("%s: HASHES record at offset %llu overlaps or precedes the one before",
			      peer, off);
	/* Units start inside the image: offset + count * unit <= size rounded up. */
	uint64_t units = h->size / h->unit + (h->size % h->unit != 0);
	uint64_t first = h->offset / h->unit;
	if (first > units || h->count > units - first)
		return sp_err("%s: HASHES record at offset %llu with %u hashes runs past the hashed "
			      "size %llu", peer, off, h->count, (unsigned long long)h->size);
	if (h->count > PROTO_HASHES_TOTAL_MAX - s->hl.total)
		return sp_err("%s: hash list longer than %llu entries", peer,
			      (unsigned long long)PROTO_HASHES_TOTAL_MAX);
	s->hl.started = true;
	s->hl.unit = h->unit;
	s->hl.size = h->size;
	if (h->count)
		s->hl.next = (first + h->count) * (uint64_t)h->unit;
	s->hl.total += h->count;
	s->hl.flags = h->flags;
	if (h->flags & HASHES_LAST)
		s->hl.done = true;
	return 0;
}

int proto_body_decode(struct proto_session *s, uint8_t type, uint8_t *b, size_t len,
		      struct proto_rec *r)
{
	const char *peer = s->peer;
	memset(r, 0, sizeof *r);
	r->type = type;
	switch (type) {
	case REC_IMAGE: {
		struct proto_image *im = &r->u.image;
		bool with_data = s->caps & CAP_DATA_SIZE;
		if (len != (with_data ? PROTO_IMAGE_SIZE_DATA : PROTO_IMAGE_SIZE))
			return sp_err("%s: malformed IMAGE record", peer);
		im->size = get64(b);
		im->has_data = with_data;
		im->data = with_data ? get64(b + 16) : 0;
		if (with_data && im->data > im->size)
			return sp_err("%s: IMAGE record claims %llu data bytes in a %llu-byte image",
				      peer, (unsigned long long)im->data, (unsigned long long)im->size);
		im->block_size = get32(b + 8);
		im->format = b[12];
		if (!all_zero(b + 13, 3))
			return sp_err("%s: malformed IMAGE record (reserved bytes set)", peer);
		if (im->size > PROTO_SIZE_MAX)
			return sp_err("%s: virtual size %llu is beyond the limit of %llu bytes", peer,
				      (unsigned long long)im->size, (unsigned long long)PROTO_SIZE_MAX);
		uint32_t lim = s->max_block < PROTO_BLOCK_MAX ? s->max_block : PROTO_BLOCK_MAX;
		if (im->block_size < PROTO_BLOCK_MIN || im->block_size > lim)
			return sp_err("%s: block size %u is outside the negotiated %u..%u", peer,
				      im->block_size, PROTO_BLOCK_MIN, lim);
		if (im->format > 2)
			return sp_err("%s: unknown source format %u", peer, im->format);
		s->image = *im;
		s->have_image = true;
		return 0;
	}
	case REC_DATA: {
		struct proto_data *d = &r->u.data;
		if (len < PROTO_DATA_HEAD)
			return sp_err("%s: malformed DATA record", peer);
		d->offset = get64(b);
		d->length = get32(b + 8);
		d->codec = b[12];
		memcpy(d->hash.b, b + 16, HASH_SIZE);
		d->clen = get32(b + 32);
		d->payload = b + PROTO_DATA_HEAD;
		unsigned long long off = (unsigned long long)d->offset;
		if (!all_zero(b + 13, 3) || !all_zero(b + 36, 4))
			return sp_err("%s: malformed DATA record at offset %llu (reserved bytes set)", peer, off);
		if (d->length == 0)
			return sp_err("%s: empty DATA record at offset %llu", peer, off);
		if (d->length > s->image.block_size)
			return sp_err("%s: DATA record at offset %llu is %u bytes, larger than the "
				      "%u-byte block size", peer, off, d->length, s->image.block_size);
		if (!in_range(d->offset, d->length, s->image.size))
			return sp_err("%s: DATA record at offset %llu length %u is outside the "
				      "virtual size %llu", peer, off, d->length,
				      (unsigned long long)s->image.size);
		if (!proto_codec_allowed(s, d->codec))
			return sp_err("%s: DATA record at offset %llu uses codec %u, which was not "
				      "negotiated", peer, off, d->codec);
		if ((size_t)d->clen != len - PROTO_DATA_HEAD)
			return sp_err("%s: DATA record at offset %llu declares %u payload bytes but "
				      "carries %zu", peer, off, d->clen, len - PROTO_DATA_HEAD);
		if (d->codec == WIRE_NONE ? d->clen != d->length
					  : d->clen == 0 || d->clen > codec_bound(d->codec, d->length))
			return sp_err("%s: DATA record at offset %llu: %u stored bytes is impossible "
				      "for %u bytes with %s", peer, off, d->clen, d->length,
				      codec_name(d->codec));
		return 0;
	}
	case REC_ZERO:
		if (len != PROTO_ZERO_SIZE)
			return sp_err("%s: malformed ZERO record", peer);
		r->u.zero.offset = get64(b);
		r->u.zero.length = get64(b + 8);
		if (r->u.zero.length == 0 ||
		    !in_range(r->u.zero.offset, r->u.zero.length, s->image.size))
			return sp_err("%s: ZERO record at offset %llu length %llu is outside the "
				      "virtual size %llu", peer, (unsigned long long)r->u.zero.offset,
				      (unsigned long long)r->u.zero.length,
				      (unsigned long long)s->image.size);
		return 0;
	case REC_END:
		if (len != PROTO_END_SIZE)
			return sp_err("%s: malformed END record", peer);
		r->u.end.data_bytes = get64(b);
		r->u.end.data_records = get64(b + 8);
		r->u.end.zero_bytes = get64(b + 16);
		r->u.end.source_bytes_read = get64(b + 24);
		memcpy(r->u.end.digest.b, b + 32, HASH_SIZE);
		r->u.end.units_changed = get64(b + 48);
		r->u.end.bytes_unchanged = get64(b + 56);
		return 0;
	case REC_ACK:
		if (len != (s->caps & CAP_DIGEST ? PROTO_ACK_SIZE_DIGEST : PROTO_ACK_SIZE))
			return sp_err("%s: malformed ACK record", peer);
		r->u.ack.bytes_written = get64(b);
		r->u.ack.bytes_received = get64(b + 8);
		r->u.ack.blocks_changed = get64(b + 16);
		r->u.ack.bytes_unchanged = get64(b + 24);
		r->u.ack.has_dest_read = s->caps & CAP_DIGEST;
		r->u.ack.dest_bytes_read = r->u.ack.has_dest_read ? get64(b + 32) : 0;
		return 0;
	case REC_HASHES:
		return hashes_decode(s, b, len, &r->u.hashes);
	case REC_TRACK:
		if (len != PROTO_TRACK_SIZE)
			return sp_err("%s: malformed TRACK record", peer);
		memcpy(r->u.track.id, b, PROTO_TRACK_ID_SIZE);
		r->u.track.flags = b[16];
		if ((b[16] & ~TRACK_IN_STEP) || !all_zero(b + 17, 7))
			return sp_err("%s: malformed TRACK record", peer);
		return 0;
	case REC_LINKS:
		if (len != PROTO_LINKS_SIZE || get32(b + 20) != 0)
			return sp_err("%s: malformed LINKS record", peer);
		memcpy(r->u.links.token, b, PROTO_LINK_TOKEN_SIZE);
		r->u.links.cores = get32(b + 16);
		memcpy(r->u.links.name, b + 24, PROTO_LINK_NAME_MAX);
		r->u.links.name[PROTO_LINK_NAME_MAX] = '\0';
		if (!proto_link_name_ok(r->u.links.name) ||
		    !all_zero(b + 24 + strlen(r->u.links.name), PROTO_LINK_NAME_MAX - strlen(r->u.links.name)))
			return sp_err("%s: malformed LINKS record (bad rendezvous name)", peer);
		return 0;
	case REC_JOIN:
		if (len != PROTO_JOIN_SIZE || get32(b + 20) != 0)
			return sp_err("%s: malformed JOIN record", peer);
		memcpy(r->u.join.token, b, PROTO_LINK_TOKEN_SIZE);
		r->u.join.index = get32(b + 16);
		if (r->u.join.index < 1 || r->u.join.index >= PROTO_LINKS_MAX)
			return sp_err("%s: JOIN record with link index %u (1..%u)", peer,
				      r->u.join.index, PROTO_LINKS_MAX - 1);
		return 0;
	case REC_ERROR:
		if (len == 0 || len > PROTO_ERROR_MAX)
			return sp_err("%s: malformed ERROR record", peer);
		for (size_t i = 0; i < len; i++)
			if (b[i] < 0x20 || b[i] == 0x7f)
				b[i] = '?';
		b[len] = '\0';
		r->u.error.text = (const char *)b;
		return 0;
	default:
		return sp_err("%s: unknown record type %u", peer, type);
	}
}

int proto_data_unpack(const struct proto_session *s, const struct proto_data *d,
		      struct codec_ctx *cc, uint8_t *out, const uint8_t **plain)
{
	unsigned long long off = (unsigned long long)d->offset;
	if (d->codec == WIRE_NONE) {
		if (d->clen != d->length)
			return sp_err("%s: declared size %u differs from the %u stored bytes at "
				      "offset %llu", s->peer, d->length, d->clen, off);
		*plain = d->payload;
	} else {
		if (codec_decompress(cc, d->codec, d->payload, d->clen, out, d->length) < 0) {
			char msg[512];
			snprintf(msg, sizeof msg, "%s", sp_errmsg());
			return sp_err("%s: DATA at offset %llu: %s", s->peer, off, msg);
		}
		*plain = out;
	}
	struct hash128 h;
	hash128(*plain, d->length, &h);
	if (!hash128_equal(&h, &d->hash))
		return sp_err("%s: checksum mismatch at offset %llu", s->peer, off);
	return 0;
}

/* ---- digest ---- */

int proto_digest_init(struct proto_digest *g)
{
	g->h = hash_stream_new();
	return g->h ? 0 : -1;
}

void proto_digest_image(struct proto_digest *g, const struct proto_image *im)
{
	uint8_t b[1 + 8 + 4 + 1];
	b[0] = 'I';
	put64(b + 1, im->size);
	put32(b + 9, im->block_size);
	b[13] = im->format;
	hash_stream_update(g->h, b, sizeof b);
}

void proto_digest_data(struct proto_digest *g, uint64_t off, uint32_t len, const struct hash128 *h)
{
	uint8_t b[1 + 8 + 4 + HASH_SIZE];
	b[0] = 'D';
	put64(b + 1, off);
	put32(b + 9, len);
	memcpy(b + 13, h->b, HASH_SIZE);
	hash_stream_update(g->h, b, sizeof b);
}

void proto_digest_zero(struct proto_digest *g, uint64_t off, uint64_t len)
{
	uint8_t b[1 + 8 + 8];
	b[0] = 'Z';
	put64(b + 1, off);
	put64(b + 9, len);
	hash_stream_update(g->h, b, sizeof b);
}

void proto_digest_link_start(struct proto_digest *g, uint32_t index)
{
	uint8_t b[1 + 4];
	b[0] = 'J';
	put32(b + 1, index);
	hash_stream_update(g->h, b, sizeof b);
}

void proto_digest_link(struct proto_digest *g, uint32_t index, const struct hash128 *link)
{
	uint8_t b[1 + 4 + HASH_SIZE];
	b[0] = 'L';
	put32(b + 1, index);
	memcpy(b + 5, link->b, HASH_SIZE);
	hash_stream_update(g->h, b, sizeof b);
}

void proto_digest_final(struct proto_digest *g, struct hash128 *out)
{
	hash_stream_final(g->h, out);
}

void proto_digest_free(struct proto_digest *g)
{
	hash_stream_free(g->h);
	g->h = NULL;
}

/* ---- I/O ---- */

void proto_reader_init(struct proto_reader *r, struct transport *t, struct proto_session *s)
{
	memset(r, 0, sizeof *r);
	r->t = t;
	r->s = s;
}

void proto_reader_free(struct proto_reader *r)
{
	free(r->buf);
	r->buf = NULL;
	r->cap = 0;
}

/* Exactly len bytes. Returns 0, -1 on a transport error (message set), or 1
 * at end of stream with *got bytes read. */
static int read_exact(struct proto_reader *r, void *buf, size_t len, size_t *got)
{
	uint8_t *p = buf;
	*got = 0;
	while (*got < len) {
		ssize_t n = transport_read(r->t, p + *got, len - *got);
		if (n < 0)
			return -1;
		if (n == 0)
			return 1;
		*got += (size_t)n;
		r->bytes += (uint64_t)n;
	}
	return 0;
}

static int ensure_cap(struct proto_reader *r, size_t need)
{
	if (r->cap >= need)
		return 0;
	uint8_t *nb = realloc(r->buf, need);
	if (!nb)
		return sp_err("%s: out of memory for a %zu-byte record", r->s->peer, need);
	r->buf = nb;
	r->cap = need;
	return 0;
}

int proto_read_hello(struct proto_reader *r, enum proto_role want_role, struct proto_hello *h)
{
	const char *peer = r->s->peer;
	uint8_t head[PROTO_HELLO_HEAD];
	uint8_t body[PROTO_HELLO_BODY_MAX];
	size_t got;
	int rc = read_exact(r, head, sizeof head, &got);
	if (rc < 0)
		return -1;
	if (rc > 0) {
		size_t m = got < PROTO_MAGIC_LEN ? got : PROTO_MAGIC_LEN;
		if (memcmp(head, PROTO_MAGIC, m) != 0)
			return bad_magic(peer, head, got);
		if (got == 0)
			return sp_err("%s: the stream ended before the sparsync hello", peer);
		return sp_err("%s: truncated stream (inside the hello)", peer);
	}
	uint16_t blen;
	if (proto_hello_check_head(peer, head, &blen) < 0)
		return -1;
	rc = read_exact(r, body, blen, &got);
	if (rc < 0)
		return -1;
	if (rc > 0)
		return sp_err("%s: truncated stream (inside the hello)", peer);
	return proto_hello_decode_body(peer, body, blen, want_role, h);
}

int proto_read(struct proto_reader *r, struct proto_rec *rec)
{
	const char *peer = r->s->peer;
	uint8_t hdr[PROTO_FRAME_SIZE];
	size_t got;
	int rc = read_exact(r, hdr, sizeof hdr, &got);
	if (rc < 0)
		return -1;
	if (rc > 0) {
		if (r->s->me == ROLE_RECEIVER)
			return sp_err("%s: truncated stream (it ended before the END record)", peer);
		return sp_err("%s: connection closed before the receiver answered", peer);
	}
	uint8_t type;
	uint32_t blen;
	if (proto_frame_decode(r->s, hdr, &type, &blen) < 0)
		return -1;
	if (ensure_cap(r, (size_t)blen + 1) < 0)
		return -1;
	rc = read_exact(r, r->buf, blen, &got);
	if (rc < 0)
		return -1;
	if (rc > 0)
		return sp_err("%s: truncated stream (it ended inside a%s %s record)", peer,
			      type == REC_IMAGE || type == REC_END || type == REC_ERROR || type == REC_ACK
				      ? "n" : "", rec_name(type));
	if (proto_frame_verify(r->s, hdr, r->buf, blen) < 0)
		return -1;
	return proto_body_decode(r->s, type, r->buf, blen, rec);
}

int proto_peer_error(const struct proto_session *s, const struct proto_rec *rec)
{
	return sp_err("%s: %s", s->peer, rec->u.error.text);
}

int proto_write_hello(struct transport *t, const struct proto_hello *h)
{
	uint8_t b[PROTO_HELLO_SIZE];
	proto_hello_encode(h, b);
	return transport_write(t, b, sizeof b);
}

int proto_send_error(struct transport *t, const char *msg)
{
	char saved[1024];
	snprintf(saved, sizeof saved, "%s", sp_errmsg());
	uint8_t b[PROTO_FRAME_SIZE + PROTO_ERROR_MAX];
	char shown[PROTO_ERROR_MAX + 1];
	size_t n = proto_encode_error(b, confine_shown(msg, shown, sizeof shown));
	int rc = transport_write(t, b, n);
	sp_err("%s", saved);
	return rc < 0 ? -1 : 0;
}

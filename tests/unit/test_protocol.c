/* Unit tests for the wire protocol: hello, record round trips, every limit
 * the decoder enforces, the reader on truncated and random input, codecs,
 * and a whole image sent and received through memory. */
#include "unit.h"

#include "../../core/codec.h"
#include "../../core/copy.h"
#include "../../core/error.h"
#include "../../core/hash.h"
#include "../../core/protocol.h"
#include "../../core/receive.h"
#include "../../core/send.h"
#include "../../formats/image.h"
#include "../../transport/transport.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- a transport over a memory buffer ---- */

struct memt {
	struct transport base;
	uint8_t *buf;
	size_t len, cap, pos;
};

static ssize_t mem_read(struct transport *b, void *p, size_t n)
{
	struct memt *m = (struct memt *)b;
	size_t left = m->len - m->pos;
	if (n > left)
		n = left;
	if (n > 7777) /* short reads, like a pipe */
		n = 7777;
	if (n)
		memcpy(p, m->buf + m->pos, n);
	m->pos += n;
	b->bytes_in += n;
	return (ssize_t)n;
}

static int mem_write(struct transport *b, const void *p, size_t n)
{
	struct memt *m = (struct memt *)b;
	if (m->len + n > m->cap) {
		size_t cap = (m->len + n) * 2;
		uint8_t *nb = realloc(m->buf, cap);
		if (!nb)
			return sp_err("oom");
		m->buf = nb;
		m->cap = cap;
	}
	memcpy(m->buf + m->len, p, n);
	m->len += n;
	return 0;
}

static int mem_close_write(struct transport *b)
{
	(void)b;
	return 0;
}

static int mem_close(struct transport *b, int *status)
{
	(void)b;
	*status = 0;
	return 0;
}

static const struct transport_ops mem_ops = { mem_read, mem_write, mem_close_write, mem_close, NULL };

static void memt_init(struct memt *m, const void *data, size_t len)
{
	memset(m, 0, sizeof *m);
	m->base.ops = &mem_ops;
	m->base.name = "mem";
	if (len) {
		m->buf = malloc(len);
		memcpy(m->buf, data, len);
		m->len = m->cap = len;
	}
}

static void memt_free(struct memt *m)
{
	free(m->buf);
	m->buf = NULL;
}

static bool msg_has(const char *needle)
{
	bool ok = strstr(sp_errmsg(), needle) != NULL;
	if (!ok)
		printf("    message was: %s\n", sp_errmsg());
	return ok;
}

/* ---- hello ---- */

static void test_hello(void)
{
	struct proto_hello h, d;
	uint8_t b[PROTO_HELLO_SIZE];
	proto_hello_init(&h, ROLE_SENDER, HELLO_STREAM, 1 << 20, CAP_SUPPORTED);
	proto_hello_encode(&h, b);
	uint16_t blen = 0;
	CHECK("hello head accepted", proto_hello_check_head("peer", b, &blen) == 0 &&
					     blen == PROTO_HELLO_BODY);
	CHECK("hello body decodes", proto_hello_decode_body("peer", b + PROTO_HELLO_HEAD, blen,
							      ROLE_SENDER, &d) == 0);
	CHECK("hello round trip", d.role == ROLE_SENDER && d.flags == HELLO_STREAM &&
					  d.max_block == (1u << 20) && d.caps == CAP_SUPPORTED);
	CHECK("wrong role refused", proto_hello_decode_body("peer", b + PROTO_HELLO_HEAD, blen,
							    ROLE_RECEIVER, &d) < 0 &&
					    msg_has("sender too"));

	uint8_t bad[PROTO_HELLO_SIZE];
	memcpy(bad, b, sizeof bad);
	bad[0] = 'X';
	CHECK("bad magic refused", proto_hello_check_head("peer", bad, &blen) < 0 &&
					   msg_has("not a sparsync stream"));
	memcpy(bad, "Welcome to host", 12);
	CHECK("text banner named", proto_hello_check_head("peer", bad, &blen) < 0 &&
					   msg_has("Welcome"));
	memcpy(bad, b, sizeof bad);
	bad[8] = 2; /* version 2 */
	CHECK("newer version refused", proto_hello_check_head("peer", bad, &blen) < 0 &&
					       msg_has("remote speaks protocol 2, we speak 1") &&
					       msg_has("upgrade"));
	bad[8] = 0;
	CHECK("older version refused", proto_hello_check_head("peer", bad, &blen) < 0 &&
					       msg_has("protocol 0"));
	memcpy(bad, b, sizeof bad);
	bad[10] = 200;
	CHECK("hello body length checked", proto_hello_check_head("peer", bad, &blen) < 0);
	memcpy(bad, b, sizeof bad);
	bad[13] = 0x80;
	CHECK("unknown hello flags refused",
	      proto_hello_decode_body("peer", bad + PROTO_HELLO_HEAD, PROTO_HELLO_BODY, ROLE_SENDER, &d) < 0);
	bad[13] = 0;
	bad[12] = 7;
	CHECK("unknown role refused",
	      proto_hello_decode_body("peer", bad + PROTO_HELLO_HEAD, PROTO_HELLO_BODY, ROLE_SENDER, &d) < 0);
}

static void test_negotiate(void)
{
	struct proto_session s;
	struct proto_hello snd, rcv;
	proto_hello_init(&snd, ROLE_SENDER, 0, 1 << 20,
			 CAP_HASH_XXH3_128 | CAP_CODEC(WIRE_NONE) | CAP_CODEC(WIRE_ZSTD));
	proto_hello_init(&rcv, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	CHECK("negotiate ok", proto_negotiate(&s, "p", ROLE_RECEIVER, &snd, &rcv) == 0);
	CHECK("zstd negotiated", proto_codec_allowed(&s, WIRE_ZSTD));
	CHECK("lz4 not negotiated (sender did not offer it)", !proto_codec_allowed(&s, WIRE_LZ4));
	CHECK("unknown codec not allowed", !proto_codec_allowed(&s, 3) && !proto_codec_allowed(&s, 255));
	CHECK("max block from sender", s.max_block == (1u << 20));

	struct proto_hello r2 = rcv;
	r2.caps &= ~CAP_HASH_XXH3_128;
	CHECK("no common hash refused", proto_negotiate(&s, "p", ROLE_RECEIVER, &snd, &r2) < 0 &&
						msg_has("hash"));
	r2 = rcv;
	r2.max_block = 1 << 16;
	CHECK("block larger than receiver accepts refused",
	      proto_negotiate(&s, "p", ROLE_RECEIVER, &snd, &r2) < 0 && msg_has("at most"));
	struct proto_hello s2 = snd;
	s2.max_block = 64u << 20;
	CHECK("block over hard cap refused", proto_negotiate(&s, "p", ROLE_RECEIVER, &s2, &rcv) < 0);
	s2.max_block = 100;
	CHECK("tiny block refused", proto_negotiate(&s, "p", ROLE_RECEIVER, &s2, &rcv) < 0);
}

/* A receiver session that has seen an IMAGE of `size` with 64 KiB blocks,
 * codecs none+zstd. */
static void rx_session(struct proto_session *s, uint64_t size)
{
	struct proto_hello snd, rcv;
	proto_hello_init(&snd, ROLE_SENDER, 0, 65536,
			 CAP_HASH_XXH3_128 | CAP_CODEC(WIRE_NONE) | CAP_CODEC(WIRE_ZSTD));
	proto_hello_init(&rcv, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	proto_negotiate(s, "peer", ROLE_RECEIVER, &snd, &rcv);
	uint8_t b[PROTO_FRAME_SIZE + PROTO_IMAGE_SIZE_DATA + 1];
	struct proto_image im = { .size = size, .block_size = 65536, .format = 1 };
	proto_encode_image(b, &im);
	uint8_t type;
	uint32_t blen;
	struct proto_rec r;
	if (proto_frame_decode(s, b, &type, &blen) < 0 ||
	    proto_body_decode(s, type, b + PROTO_FRAME_SIZE, blen, &r) < 0)
		printf("rx_session setup failed: %s\n", sp_errmsg());
}

/* Decode a whole encoded record (frame + body) in session s. */
static int decode(struct proto_session *s, uint8_t *rec, size_t len, struct proto_rec *r)
{
	uint8_t type;
	uint32_t blen;
	if (len < PROTO_FRAME_SIZE)
		return sp_err("short");
	if (proto_frame_decode(s, rec, &type, &blen) < 0)
		return -1;
	if ((size_t)blen != len - PROTO_FRAME_SIZE)
		return sp_err("frame length %u vs %zu", blen, len - PROTO_FRAME_SIZE);
	if (proto_frame_verify(s, rec, rec + PROTO_FRAME_SIZE, blen) < 0)
		return -1;
	return proto_body_decode(s, type, rec + PROTO_FRAME_SIZE, blen, r);
}

/* Build a DATA record for buf; codec as asked (falls back to none when
 * it does not shrink). Returns the total length in out. */
static size_t make_data(uint8_t *out, uint64_t off, const uint8_t *buf, uint32_t len,
			enum wire_codec codec)
{
	struct codec_ctx *cc = codec_ctx_new();
	struct codec_choice ch = { .codec = codec, .level = 1 };
	uint8_t *cbuf = malloc(PROTO_DATA_PAYLOAD_AT + len);
	struct block_job j = { .off = off, .buf = buf, .len = len, .codec = &ch, .cc = cc, .cbuf = cbuf };
	send_block_prepare(&j);
	memcpy(out, cbuf, j.wire_len);
	codec_ctx_free(cc);
	free(cbuf);
	return j.wire_len;
}

/* Fields changed by a test: seal again so the frame checksum holds and
 * the decoder's own checks are what is tested. */
static void reseal(uint8_t *rec)
{
	uint32_t blen = (uint32_t)rec[4] | (uint32_t)rec[5] << 8 | (uint32_t)rec[6] << 16 |
			(uint32_t)rec[7] << 24;
	uint8_t type = rec[0];
	uint64_t c = hash64_seeded(rec + PROTO_FRAME_SIZE, blen, (uint64_t)type | (uint64_t)blen << 8);
	for (int i = 0; i < 8; i++)
		rec[8 + i] = (uint8_t)(c >> (8 * i));
}

static void test_records(void)
{
	struct proto_session s;
	struct proto_rec r;
	uint8_t *rec = malloc(PROTO_FRAME_SIZE + PROTO_DATA_HEAD + 200000);
	uint8_t *plainbuf = malloc(65536);
	uint8_t text[65536];
	for (size_t i = 0; i < sizeof text; i++)
		text[i] = (uint8_t)("sparse images "[i % 14]);
	struct codec_ctx *cc = codec_ctx_new();
	const uint8_t *plain;

	rx_session(&s, 1 << 20);
	CHECK("IMAGE decoded into the session", s.have_image && s.image.size == (1u << 20) &&
							s.image.block_size == 65536);

	/* DATA, uncompressed and zstd */
	size_t n = make_data(rec, 4096, text, 5000, WIRE_NONE);
	CHECK("DATA none decodes", decode(&s, rec, n, &r) == 0 && r.type == REC_DATA &&
					   r.u.data.offset == 4096 && r.u.data.length == 5000 &&
					   r.u.data.codec == WIRE_NONE);
	CHECK("DATA none unpacks", proto_data_unpack(&s, &r.u.data, cc, plainbuf, &plain) == 0 &&
					   memcmp(plain, text, 5000) == 0);
	n = make_data(rec, 65536, text, 65536, WIRE_ZSTD);
	CHECK("DATA zstd decodes", decode(&s, rec, n, &r) == 0 && r.u.data.codec == WIRE_ZSTD &&
					   r.u.data.clen < 65536);
	CHECK("DATA zstd unpacks", proto_data_unpack(&s, &r.u.data, cc, plainbuf, &plain) == 0 &&
					   memcmp(plain, text, 65536) == 0);
	uint8_t rnd[4096];
	for (size_t i = 0; i < sizeof rnd; i++)
		rnd[i] = (uint8_t)(i * 2654435761u >> 13);
	uint8_t rnd2[4096];
	srand(7);
	for (size_t i = 0; i < sizeof rnd2; i++)
		rnd2[i] = (uint8_t)rand();
	n = make_data(rec, 0, rnd2, sizeof rnd2, WIRE_ZSTD);
	CHECK("incompressible block sent raw", decode(&s, rec, n, &r) == 0 && r.u.data.codec == WIRE_NONE);

	/* lz4 round trip in a session that negotiated it */
	{
		struct proto_session s4;
		struct proto_hello snd, rcv;
		proto_hello_init(&snd, ROLE_SENDER, 0, 65536,
				 CAP_HASH_XXH3_128 | CAP_CODEC(WIRE_NONE) | CAP_CODEC(WIRE_LZ4));
		proto_hello_init(&rcv, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
		proto_negotiate(&s4, "peer", ROLE_RECEIVER, &snd, &rcv);
		uint8_t ib[PROTO_FRAME_SIZE + PROTO_IMAGE_SIZE_DATA];
		struct proto_image im = { .size = 1 << 20, .block_size = 65536, .format = 1 };
		size_t in = proto_encode_image(ib, &im);
		decode(&s4, ib, in, &r);
		n = make_data(rec, 0, text, 65536, WIRE_LZ4);
		CHECK("DATA lz4 round trip", decode(&s4, rec, n, &r) == 0 && r.u.data.codec == WIRE_LZ4 &&
						     proto_data_unpack(&s4, &r.u.data, cc, plainbuf, &plain) == 0 &&
						     memcmp(plain, text, 65536) == 0);
		n = make_data(rec, 0, text, 65536, WIRE_ZSTD);
		CHECK("codec not negotiated refused", decode(&s4, rec, n, &r) < 0 && msg_has("not negotiated"));
	}

	/* offsets and lengths */
	n = make_data(rec, (1 << 20) - 100, text, 5000, WIRE_NONE);
	CHECK("DATA past the virtual size refused", decode(&s, rec, n, &r) < 0 && msg_has("outside"));
	n = make_data(rec, UINT64_MAX - 100, text, 5000, WIRE_NONE);
	CHECK("DATA offset overflow refused", decode(&s, rec, n, &r) < 0 && msg_has("outside"));
	n = make_data(rec, 1 << 20, text, 1, WIRE_NONE);
	CHECK("DATA starting at the end refused", decode(&s, rec, n, &r) < 0);
	{
		uint8_t *big = calloc(1, 65537);
		memset(big, 'a', 65537);
		n = make_data(rec, 0, big, 65537, WIRE_NONE);
		CHECK("DATA longer than the block size refused", decode(&s, rec, n, &r) < 0 &&
									 msg_has("block size"));
		free(big);
	}
	n = make_data(rec, 0, text, 1000, WIRE_NONE);
	rec[PROTO_FRAME_SIZE + 8] = 0; /* length 0 */
	rec[PROTO_FRAME_SIZE + 9] = 0;
	reseal(rec);
	CHECK("empty DATA refused", decode(&s, rec, n, &r) < 0);

	/* codec and sizes */
	n = make_data(rec, 0, text, 1000, WIRE_NONE);
	rec[PROTO_FRAME_SIZE + 12] = 9;
	reseal(rec);
	CHECK("unknown codec refused", decode(&s, rec, n, &r) < 0 && msg_has("codec 9"));
	n = make_data(rec, 0, text, 1000, WIRE_NONE);
	rec[PROTO_FRAME_SIZE + 13] = 1;
	reseal(rec);
	CHECK("reserved DATA bytes refused", decode(&s, rec, n, &r) < 0);
	n = make_data(rec, 0, text, 1000, WIRE_NONE);
	rec[PROTO_FRAME_SIZE + 32] ^= 1; /* clen 999 vs 1000 in body */
	reseal(rec);
	CHECK("clen disagreeing with the frame refused", decode(&s, rec, n, &r) < 0 &&
								 msg_has("declares"));
	/* raw payload whose declared length differs: shrink the length field */
	n = make_data(rec, 0, text, 1000, WIRE_NONE);
	rec[PROTO_FRAME_SIZE + 8] = (uint8_t)(999 & 0xff);
	rec[PROTO_FRAME_SIZE + 9] = (uint8_t)(999 >> 8);
	reseal(rec);
	CHECK("raw payload of the wrong size refused", decode(&s, rec, n, &r) < 0 &&
							       msg_has("impossible"));
	/* zstd payload declaring a different decompressed size */
	n = make_data(rec, 0, text, 20000, WIRE_ZSTD);
	rec[PROTO_FRAME_SIZE + 8] = (uint8_t)(19999 & 0xff);
	rec[PROTO_FRAME_SIZE + 9] = (uint8_t)(19999 >> 8);
	reseal(rec);
	CHECK("shorter declared size decodes (header ok)", decode(&s, rec, n, &r) == 0);
	CHECK("...but decompressing refuses it", proto_data_unpack(&s, &r.u.data, cc, plainbuf, &plain) < 0 &&
							  msg_has("declared"));
	n = make_data(rec, 0, text, 20000, WIRE_ZSTD);
	rec[PROTO_FRAME_SIZE + 8] = (uint8_t)(20001 & 0xff);
	rec[PROTO_FRAME_SIZE + 9] = (uint8_t)(20001 >> 8);
	reseal(rec);
	CHECK("longer declared size refused", decode(&s, rec, n, &r) == 0 &&
						      proto_data_unpack(&s, &r.u.data, cc, plainbuf, &plain) < 0 &&
						      msg_has("declared"));
	/* compressed length over the codec's bound */
	{
		uint8_t *h = malloc(PROTO_DATA_PAYLOAD_AT + 70000);
		struct proto_data d = { .offset = 0, .length = 100, .codec = WIRE_ZSTD, .clen = 60000 };
		memset(h + PROTO_DATA_PAYLOAD_AT, 0x55, 60000);
		size_t hn = proto_seal_data(h, &d);
		CHECK("compressed length over the bound refused", decode(&s, h, hn, &r) < 0 &&
									  msg_has("impossible"));
		/* frame longer than any DATA may be */
		d.length = 65536;
		d.clen = 69000;
		proto_seal_data(h, &d);
		CHECK("oversized DATA frame refused before reading it",
		      proto_frame_decode(&s, h, &(uint8_t){ 0 }, &(uint32_t){ 0 }) < 0 && msg_has("exceeds"));
		free(h);
	}

	/* hashes */
	n = make_data(rec, 0, text, 1000, WIRE_NONE);
	rec[n - 10] ^= 0x40;
	CHECK("flipped payload byte: record checksum mismatch",
	      decode(&s, rec, n, &r) < 0 && msg_has("checksum mismatch at offset 0"));
	n = make_data(rec, 4096, text, 1000, WIRE_NONE);
	rec[PROTO_FRAME_SIZE + 1] ^= 0x40; /* the offset */
	CHECK("flipped offset byte: record checksum mismatch", decode(&s, rec, n, &r) < 0 &&
								       msg_has("checksum mismatch"));
	n = make_data(rec, 0, text, 1000, WIRE_NONE);
	rec[n - 10] ^= 0x40;
	reseal(rec);
	CHECK("flipped raw byte behind a good record checksum: block hash mismatch",
	      decode(&s, rec, n, &r) == 0 && proto_data_unpack(&s, &r.u.data, cc, plainbuf, &plain) < 0 &&
		      msg_has("checksum mismatch at offset 0"));
	n = make_data(rec, 8192, text, 30000, WIRE_ZSTD);
	rec[PROTO_FRAME_SIZE + 16] ^= 1; /* the hash itself */
	reseal(rec);
	CHECK("wrong hash on a zstd block: checksum mismatch",
	      decode(&s, rec, n, &r) == 0 && proto_data_unpack(&s, &r.u.data, cc, plainbuf, &plain) < 0 &&
		      msg_has("checksum mismatch at offset 8192"));
	n = make_data(rec, 0, text, 30000, WIRE_ZSTD);
	rec[n - 3] ^= 0xff;
	reseal(rec);
	CHECK("corrupt zstd payload refused",
	      decode(&s, rec, n, &r) == 0 && proto_data_unpack(&s, &r.u.data, cc, plainbuf, &plain) < 0);

	/* ZERO */
	uint8_t z[PROTO_FRAME_SIZE + PROTO_ZERO_SIZE];
	proto_encode_zero(z, 4096, 8192);
	CHECK("ZERO round trip", decode(&s, z, sizeof z, &r) == 0 && r.type == REC_ZERO &&
					 r.u.zero.offset == 4096 && r.u.zero.length == 8192);
	proto_encode_zero(z, 0, (1 << 20) + 1);
	CHECK("ZERO past the size refused", decode(&s, z, sizeof z, &r) < 0);
	proto_encode_zero(z, 4096, UINT64_MAX - 100);
	CHECK("ZERO overflow refused", decode(&s, z, sizeof z, &r) < 0);
	proto_encode_zero(z, 0, 0);
	CHECK("empty ZERO refused", decode(&s, z, sizeof z, &r) < 0);

	/* END, ERROR, ACK */
	uint8_t e[PROTO_FRAME_SIZE + PROTO_END_SIZE];
	struct proto_end end = { 1, 2, 3, 4, { { 9 } }, 5, 6 };
	proto_encode_end(e, &end);
	CHECK("END round trip", decode(&s, e, sizeof e, &r) == 0 && r.u.end.data_bytes == 1 &&
					r.u.end.data_records == 2 && r.u.end.zero_bytes == 3 &&
					r.u.end.source_bytes_read == 4 && r.u.end.digest.b[0] == 9 &&
					r.u.end.units_changed == 5 && r.u.end.bytes_unchanged == 6);
	uint8_t eb[PROTO_FRAME_SIZE + PROTO_ERROR_MAX + 1];
	size_t en = proto_encode_error(eb, "disk: No space\nleft");
	CHECK("ERROR round trip, control characters replaced",
	      decode(&s, eb, en, &r) == 0 && r.type == REC_ERROR &&
		      strcmp(r.u.error.text, "disk: No space?left") == 0);
	uint8_t hdr[PROTO_FRAME_SIZE] = { REC_ERROR, 0, 0, 0, 0xff, 0xff, 0, 0 };
	eb[PROTO_FRAME_SIZE] ^= 1;
	CHECK("corrupt ERROR record refused", decode(&s, eb, en, &r) < 0 && msg_has("checksum mismatch"));
	CHECK("oversized ERROR refused", proto_frame_decode(&s, hdr, &(uint8_t){ 0 }, &(uint32_t){ 0 }) < 0);
	uint8_t ab[PROTO_FRAME_SIZE + PROTO_ACK_SIZE_DIGEST];
	struct proto_ack ack = { 11, 22, 33, 44, true, 55 };
	proto_encode_ack(ab, &ack);
	CHECK("ACK refused by a receiver", decode(&s, ab, sizeof ab, &r) < 0 && msg_has("unexpected"));
	{
		struct proto_session ss;
		struct proto_hello snd, rcv;
		proto_hello_init(&snd, ROLE_SENDER, 0, 65536, CAP_SUPPORTED);
		proto_hello_init(&rcv, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
		proto_negotiate(&ss, "peer", ROLE_SENDER, &snd, &rcv);
		CHECK("ACK round trip at the sender", decode(&ss, ab, sizeof ab, &r) == 0 &&
							      r.u.ack.bytes_written == 11 &&
							      r.u.ack.bytes_unchanged == 44 &&
							      r.u.ack.dest_bytes_read == 55);
		/* Without CAP_DIGEST the ACK is the 32-byte one, and a 40-byte
		 * one is refused. */
		struct proto_session old;
		proto_hello_init(&rcv, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED & ~CAP_DIGEST);
		proto_negotiate(&old, "peer", ROLE_SENDER, &snd, &rcv);
		CHECK("40-byte ACK refused without CAP_DIGEST", decode(&old, ab, sizeof ab, &r) < 0);
		uint8_t ab32[PROTO_FRAME_SIZE + PROTO_ACK_SIZE_DIGEST];
		struct proto_ack ack32 = { 1, 2, 3, 4, false, 0 };
		size_t n32 = proto_encode_ack(ab32, &ack32);
		CHECK("32-byte ACK without CAP_DIGEST", n32 == PROTO_FRAME_SIZE + PROTO_ACK_SIZE &&
							   decode(&old, ab32, n32, &r) == 0 &&
							   r.u.ack.bytes_unchanged == 4 &&
							   r.u.ack.dest_bytes_read == 0);
		n = make_data(rec, 0, text, 100, WIRE_NONE);
		CHECK("DATA refused by a sender", decode(&ss, rec, n, &r) < 0);
	}

	/* framing */
	uint8_t unk[PROTO_FRAME_SIZE] = { 99, 0, 0, 0, 0, 0, 0, 0 };
	CHECK("unknown record type refused",
	      proto_frame_decode(&s, unk, &(uint8_t){ 0 }, &(uint32_t){ 0 }) < 0 && msg_has("unknown record type 99"));
	uint8_t hs[PROTO_FRAME_SIZE] = { REC_HASHES, 0, 0, 0, 16, 0, 0, 0 };
	CHECK("HASHES refused without CAP_SYNC",
	      proto_frame_decode(&s, hs, &(uint8_t){ 0 }, &(uint32_t){ 0 }) < 0 && msg_has("not negotiated"));
	uint8_t rsv[PROTO_FRAME_SIZE] = { REC_ZERO, 1, 0, 0, 16, 0, 0, 0 };
	CHECK("reserved frame bytes refused", proto_frame_decode(&s, rsv, &(uint8_t){ 0 }, &(uint32_t){ 0 }) < 0);
	uint8_t zl[PROTO_FRAME_SIZE] = { REC_ZERO, 0, 0, 0, 17, 0, 0, 0 };
	CHECK("wrong fixed length refused", proto_frame_decode(&s, zl, &(uint8_t){ 0 }, &(uint32_t){ 0 }) < 0);
	uint8_t im[PROTO_FRAME_SIZE + PROTO_IMAGE_SIZE_DATA];
	struct proto_image img = { .size = 1 << 20, .block_size = 65536, .format = 1 };
	size_t imn = proto_encode_image(im, &img);
	CHECK("second IMAGE refused", decode(&s, im, imn, &r) < 0 && msg_has("second IMAGE"));

	struct proto_session fresh;
	struct proto_hello snd, rcv;
	proto_hello_init(&snd, ROLE_SENDER, 0, 65536, CAP_SUPPORTED);
	proto_hello_init(&rcv, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	proto_negotiate(&fresh, "peer", ROLE_RECEIVER, &snd, &rcv);
	n = make_data(rec, 0, text, 100, WIRE_NONE);
	CHECK("DATA before IMAGE refused", decode(&fresh, rec, n, &r) < 0 && msg_has("before the IMAGE"));
	/* Both hellos offer CAP_DATA_SIZE: IMAGE carries the data size. */
	img.has_data = true;
	img.data = 4096;
	imn = proto_encode_image(im, &img);
	CHECK("IMAGE with the data size", imn == PROTO_FRAME_SIZE + PROTO_IMAGE_SIZE_DATA);
	{
		struct proto_session s2;
		proto_negotiate(&s2, "peer", ROLE_RECEIVER, &snd, &rcv);
		CHECK("IMAGE data size round trip", decode(&s2, im, imn, &r) == 0 &&
						    r.u.image.has_data && r.u.image.data == 4096);
		proto_negotiate(&s2, "peer", ROLE_RECEIVER, &snd, &rcv);
		img.data = img.size + 1;
		imn = proto_encode_image(im, &img);
		CHECK("IMAGE with more data than its size refused",
		      decode(&s2, im, imn, &r) < 0 && msg_has("data bytes"));
		img.data = 4096;
		proto_negotiate(&s2, "peer", ROLE_RECEIVER, &snd, &rcv);
		img.has_data = false;
		imn = proto_encode_image(im, &img);
		CHECK("IMAGE without the data size refused once it was negotiated",
		      decode(&s2, im, imn, &r) < 0);
		img.has_data = true;
	}
	img.block_size = 1 << 20; /* larger than the 64 KiB the sender announced */
	imn = proto_encode_image(im, &img);
	CHECK("IMAGE block size over the negotiated one refused",
	      decode(&fresh, im, imn, &r) < 0 && msg_has("block size"));
	img.block_size = 65536;
	img.size = PROTO_SIZE_MAX + 1;
	imn = proto_encode_image(im, &img);
	CHECK("IMAGE virtual size over the limit refused",
	      decode(&fresh, im, imn, &r) < 0 && msg_has("beyond the limit"));
	img.size = 1 << 20;
	img.format = 7;
	imn = proto_encode_image(im, &img);
	CHECK("IMAGE unknown format refused", decode(&fresh, im, imn, &r) < 0);

	codec_ctx_free(cc);
	free(rec);
	free(plainbuf);
}

static void test_digest(void)
{
	struct proto_digest a, b;
	struct hash128 h1, h2, ha, hb;
	hash128("one", 3, &h1);
	hash128("two", 3, &h2);
	proto_digest_init(&a);
	proto_digest_init(&b);
	proto_digest_data(&a, 0, 3, &h1);
	proto_digest_data(&a, 4096, 3, &h2);
	proto_digest_data(&b, 4096, 3, &h2);
	proto_digest_data(&b, 0, 3, &h1);
	proto_digest_final(&a, &ha);
	proto_digest_final(&b, &hb);
	CHECK("digest depends on the record sequence", !hash128_equal(&ha, &hb));
	proto_digest_free(&a);
	proto_digest_free(&b);
	proto_digest_init(&a);
	proto_digest_data(&a, 0, 3, &h1);
	proto_digest_data(&a, 4096, 3, &h2);
	proto_digest_final(&a, &hb);
	CHECK("digest is deterministic", hash128_equal(&ha, &hb));
	proto_digest_free(&a);
	char hex[33];
	hash128("", 0, &h1);
	CHECK("xxh3-128 of empty input", strcmp(hash128_hex(&h1, hex), "99aa06d3014798d86001c324468d497f") == 0);
}

static void test_codec_parse(void)
{
	struct codec_choice c;
	CHECK("zstd default level 1", codec_parse("zstd", &c) == 0 && c.codec == WIRE_ZSTD && c.level == 1);
	CHECK("zstd:9", codec_parse("zstd:9", &c) == 0 && c.level == 9);
	CHECK("zstd:99 refused", codec_parse("zstd:99", &c) < 0);
	CHECK("zstd:x refused", codec_parse("zstd:x", &c) < 0);
	CHECK("lz4", codec_parse("lz4", &c) == 0 && c.codec == WIRE_LZ4);
	CHECK("none", codec_parse("none", &c) == 0 && c.codec == WIRE_NONE);
	CHECK("gzip refused", codec_parse("gzip", &c) < 0 && msg_has("expected"));
}

/* ---- whole images through memory ---- */

static const char *tmp_path(const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/test_protocol.%d.%s", unit_tmpdir(), (int)getpid(), name);
	return buf;
}

/* Send `src` as a stream into m. */
static int send_to_mem(const char *src_path, struct memt *m, const char *codec)
{
	struct image *src = image_open(src_path, FMT_AUTO, IMAGE_RDONLY);
	if (!src)
		return -1;
	struct sp_stats st = { 0 };
	struct send_opts so = { .block_size = 65536, .stream = true };
	codec_parse(codec, &so.codec);
	struct sender snd;
	int rc = sender_open(&snd, &m->base, &so, &st);
	if (rc == 0)
		rc = sender_begin(&snd, src);
	if (rc == 0) {
		struct copy_opts co = { .block_size = 65536, .workers = 3, .progress = PROGRESS_OFF };
		rc = copy_run(src, sender_sink(&snd), &co, &st);
	}
	if (rc < 0)
		sender_abort(&snd);
	sender_free(&snd);
	image_close(src);
	return rc;
}

static int receive_from_mem(struct memt *m, const char *dst)
{
	struct sp_stats st = { 0 };
	struct receive_opts ro = { .dst_path = dst, .stream = true, .progress = PROGRESS_OFF };
	m->pos = 0;
	return receive_run(&m->base, &ro, &st);
}

static void test_end_to_end(void)
{
	char sp[256], dp[256];
	tmp_path("src.raw", sp, sizeof sp);
	tmp_path("dst.raw", dp, sizeof dp);
	int fd = open(sp, O_CREAT | O_TRUNC | O_WRONLY, 0644);
	if (fd < 0 || ftruncate(fd, 3 << 20) < 0) {
		CHECK("create test source", 0);
		return;
	}
	uint8_t buf[70000];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (uint8_t)("abcdefgh"[i % 8] ^ (i / 4096));
	if (pwrite(fd, buf, sizeof buf, 100000) < 0 || pwrite(fd, buf, 1000, (2 << 20) + 5) < 0) {
		CHECK("write test source", 0);
	}
	close(fd);

	const char *codecs[] = { "none", "zstd", "lz4" };
	for (int c = 0; c < 3; c++) {
		struct memt m;
		memt_init(&m, NULL, 0);
		char name[64];
		snprintf(name, sizeof name, "stream with %s: send", codecs[c]);
		CHECK(name, send_to_mem(sp, &m, codecs[c]) == 0);
		unlink(dp);
		snprintf(name, sizeof name, "stream with %s: receive", codecs[c]);
		CHECK(name, receive_from_mem(&m, dp) == 0);
		snprintf(name, sizeof name, "stream with %s: identical", codecs[c]);
		CHECK(name, same_file(sp, dp));
		memt_free(&m);
	}

	/* Every truncation point and a sweep of flipped bytes: always refused,
	 * never a crash, never a destination left behind. */
	struct memt good;
	memt_init(&good, NULL, 0);
	send_to_mem(sp, &good, "zstd");
	unlink(dp);
	int accepted = 0, left = 0;
	for (size_t cut = 0; cut < good.len; cut += 1 + cut / 64) {
		struct memt m;
		memt_init(&m, good.buf, cut);
		if (receive_from_mem(&m, dp) == 0)
			accepted++;
		if (access(dp, F_OK) == 0) {
			left++;
			unlink(dp);
		}
		memt_free(&m);
	}
	CHECK("every truncated stream refused", accepted == 0);
	CHECK("no destination after a truncated stream", left == 0);
	{
		struct memt m;
		memt_init(&m, good.buf, good.len - 1);
		CHECK("stream cut one byte short: truncated stream",
		      receive_from_mem(&m, dp) < 0 && msg_has("truncated stream"));
		memt_free(&m);
	}
	accepted = left = 0;
	int tried = 0;
	for (size_t pos = PROTO_HELLO_SIZE; pos < good.len; pos += 1 + pos / 16) {
		struct memt m;
		memt_init(&m, good.buf, good.len);
		m.buf[pos] ^= 0x10;
		tried++;
		if (receive_from_mem(&m, dp) == 0) {
			/* Only harmless bytes may flip unnoticed: the result must
			 * still be right. */
			if (!same_file(sp, dp)) {
				accepted++;
				printf("    flip at %zu accepted with wrong content\n", pos);
			}
		}
		if (access(dp, F_OK) == 0)
			unlink(dp);
		memt_free(&m);
	}
	CHECK("flipped bytes never give a wrong image", tried > 10 && accepted == 0);

	/* random garbage after a valid hello */
	srand(42);
	int crashed = 0;
	for (int round = 0; round < 200; round++) {
		uint8_t junk[4096];
		memcpy(junk, good.buf, PROTO_HELLO_SIZE);
		for (size_t i = PROTO_HELLO_SIZE; i < sizeof junk; i++)
			junk[i] = (uint8_t)rand();
		/* sometimes a plausible frame type */
		junk[PROTO_HELLO_SIZE] = (uint8_t)(rand() % 8);
		struct memt m;
		memt_init(&m, junk, sizeof junk);
		if (receive_from_mem(&m, dp) == 0)
			crashed++;
		if (access(dp, F_OK) == 0)
			unlink(dp);
		memt_free(&m);
	}
	CHECK("random records refused", crashed == 0);
	memt_free(&good);
	unlink(sp);
	unlink(dp);
}

/* ---- HASHES (incremental sync) ---- */

/* A sender session that agreed on CAP_SYNC. */
static void tx_sync_session(struct proto_session *s)
{
	struct proto_hello snd, rcv;
	proto_hello_init(&snd, ROLE_SENDER, 0, 65536, CAP_SUPPORTED);
	proto_hello_init(&rcv, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	proto_negotiate(s, "peer", ROLE_SENDER, &snd, &rcv);
}

/* A HASHES record with `count` hashes whose first byte is its index. */
static size_t make_hashes(uint8_t *rec, uint64_t size, uint64_t off, uint32_t unit,
			  uint32_t count, uint8_t flags)
{
	for (uint32_t i = 0; i < count; i++) {
		memset(rec + PROTO_HASHES_AT + (size_t)i * HASH_SIZE, 0, HASH_SIZE);
		rec[PROTO_HASHES_AT + (size_t)i * HASH_SIZE] = (uint8_t)i;
	}
	struct proto_hashes h = { .size = size, .offset = off, .unit = unit, .count = count,
				  .flags = flags };
	return proto_seal_hashes(rec, &h);
}

static void test_hashes(void)
{
	struct proto_session s;
	struct proto_rec r;
	uint8_t *rec = malloc(PROTO_HASHES_AT + (PROTO_HASHES_MAX + 1) * (size_t)HASH_SIZE);
	const uint64_t size = (10u << 20) + 100; /* 161 units of 64 KiB, the last one short */
	size_t n;

	CHECK("CAP_SYNC is supported", (CAP_SUPPORTED & CAP_SYNC) != 0);
	tx_sync_session(&s);
	CHECK("sync negotiated", (s.caps & CAP_SYNC) != 0);
	n = make_hashes(rec, size, 65536, 65536, 3, 0);
	CHECK("HASHES round trip", decode(&s, rec, n, &r) == 0 && r.type == REC_HASHES &&
					   r.u.hashes.offset == 65536 && r.u.hashes.count == 3 &&
					   r.u.hashes.unit == 65536 && r.u.hashes.size == size &&
					   r.u.hashes.hashes[2 * HASH_SIZE] == 2 && !s.hl.done);
	n = make_hashes(rec, size, 65536 * 3, 65536, 1, 0);
	CHECK("HASHES overlapping the previous refused", decode(&s, rec, n, &r) < 0 && msg_has("overlaps"));
	n = make_hashes(rec, size, 65536 * 10 + 4096, 65536, 1, 0);
	CHECK("unaligned HASHES refused", decode(&s, rec, n, &r) < 0 && msg_has("aligned"));
	n = make_hashes(rec, size, 65536 * 10, 32768, 1, 0);
	CHECK("HASHES changing the unit refused", decode(&s, rec, n, &r) < 0 && msg_has("changes"));
	n = make_hashes(rec, size + 1, 65536 * 10, 65536, 1, 0);
	CHECK("HASHES changing the size refused", decode(&s, rec, n, &r) < 0 && msg_has("changes"));
	n = make_hashes(rec, size, 65536 * 160, 65536, 2, 0);
	CHECK("HASHES past the size refused", decode(&s, rec, n, &r) < 0 && msg_has("runs past"));
	n = make_hashes(rec, size, UINT64_MAX & ~65535ull, 65536, 1, 0);
	CHECK("HASHES at a huge offset refused", decode(&s, rec, n, &r) < 0);
	n = make_hashes(rec, size, 65536 * 160, 65536, 1, 0);
	CHECK("HASHES for the short last unit accepted", decode(&s, rec, n, &r) == 0);
	n = make_hashes(rec, size, 0, 65536, 0, 0);
	CHECK("empty HASHES before the last refused", decode(&s, rec, n, &r) < 0 && msg_has("empty"));
	n = make_hashes(rec, size, 0, 65536, 0, HASHES_LAST);
	CHECK("empty last HASHES ends the list", decode(&s, rec, n, &r) == 0 && s.hl.done &&
							 s.hl.total == 4);
	n = make_hashes(rec, size, 0, 65536, 0, HASHES_LAST);
	CHECK("HASHES after the last refused", decode(&s, rec, n, &r) < 0 && msg_has("after the end"));

	tx_sync_session(&s);
	n = make_hashes(rec, size, 0, 65536, 0, HASHES_LAST | HASHES_FRESH);
	CHECK("fresh list accepted", decode(&s, rec, n, &r) == 0 && (r.u.hashes.flags & HASHES_FRESH));
	tx_sync_session(&s);
	n = make_hashes(rec, size, 0, 65536, 1, HASHES_LAST | HASHES_FRESH);
	CHECK("fresh list with hashes refused", decode(&s, rec, n, &r) < 0 && msg_has("fresh"));
	tx_sync_session(&s);
	n = make_hashes(rec, size, 0, 65536, 1, 0x80);
	CHECK("unknown HASHES flags refused", decode(&s, rec, n, &r) < 0 && msg_has("flags"));
	n = make_hashes(rec, size, 0, 65536 + 4096, 1, 0);
	CHECK("unit not a power of two refused", decode(&s, rec, n, &r) < 0 && msg_has("power of two"));
	n = make_hashes(rec, size, 0, 2048, 1, 0);
	CHECK("unit below 4 KiB refused", decode(&s, rec, n, &r) < 0);
	n = make_hashes(rec, size, 0, 64u << 20, 1, 0);
	CHECK("unit above 32 MiB refused", decode(&s, rec, n, &r) < 0);
	n = make_hashes(rec, PROTO_SIZE_MAX + 1, 0, 65536, 1, 0);
	CHECK("hashed size beyond the limit refused", decode(&s, rec, n, &r) < 0);
	n = make_hashes(rec, size, 0, 65536, 2, 0);
	rec[PROTO_FRAME_SIZE + 20] = 3; /* count says 3, body holds 2 */
	reseal(rec);
	CHECK("HASHES count mismatch refused", decode(&s, rec, n, &r) < 0 && msg_has("declares"));
	n = make_hashes(rec, size, 0, 65536, 2, 0);
	rec[PROTO_FRAME_SIZE + 30] = 1;
	reseal(rec);
	CHECK("HASHES reserved bytes refused", decode(&s, rec, n, &r) < 0 && msg_has("reserved"));
	n = make_hashes(rec, size, 0, 65536, 2, 0);
	rec[PROTO_HASHES_AT + 5] ^= 1;
	CHECK("corrupt HASHES refused", decode(&s, rec, n, &r) < 0 && msg_has("checksum"));
	uint8_t big[PROTO_FRAME_SIZE] = { REC_HASHES, 0, 0, 0 };
	uint32_t blen = PROTO_HASHES_HEAD + (PROTO_HASHES_MAX + 1) * HASH_SIZE;
	for (int i = 0; i < 4; i++)
		big[4 + i] = (uint8_t)(blen >> (8 * i));
	CHECK("HASHES over the record limit refused by the frame",
	      proto_frame_decode(&s, big, &(uint8_t){ 0 }, &(uint32_t){ 0 }) < 0);
	uint8_t odd[PROTO_FRAME_SIZE] = { REC_HASHES, 0, 0, 0, PROTO_HASHES_HEAD + 15, 0, 0, 0 };
	CHECK("HASHES with a partial hash refused by the frame",
	      proto_frame_decode(&s, odd, &(uint8_t){ 0 }, &(uint32_t){ 0 }) < 0);
	CHECK("body limit covers a full HASHES record",
	      proto_body_max(&s) >= PROTO_HASHES_HEAD + (size_t)PROTO_HASHES_MAX * HASH_SIZE);
	n = make_hashes(rec, size, 0, 65536, PROTO_HASHES_MAX, 0);
	{
		struct proto_session b;
		tx_sync_session(&b);
		CHECK("a full HASHES record accepted",
		      decode(&b, rec, make_hashes(rec, 1ull << 40, 0, 65536, PROTO_HASHES_MAX, 0), &r) == 0);
		struct proto_session rx;
		struct proto_hello snd, rcv;
		proto_hello_init(&snd, ROLE_SENDER, 0, 65536, CAP_SUPPORTED);
		proto_hello_init(&rcv, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
		proto_negotiate(&rx, "peer", ROLE_RECEIVER, &snd, &rcv);
		n = make_hashes(rec, size, 0, 65536, 1, HASHES_LAST);
		CHECK("HASHES refused by a receiver", decode(&rx, rec, n, &r) < 0 && msg_has("unexpected"));
	}
	/* The total limit: a list may not grow past PROTO_HASHES_TOTAL_MAX. */
	tx_sync_session(&s);
	s.hl.total = PROTO_HASHES_TOTAL_MAX - 1;
	n = make_hashes(rec, 1ull << 40, 0, 65536, 2, 0);
	CHECK("hash list over the total limit refused", decode(&s, rec, n, &r) < 0 && msg_has("longer"));
	free(rec);
}

/* LINKS and JOIN (several connections): only when negotiated, names
 * that are rendezvous names, link indexes within the limit. */
static void test_links_records(void)
{
	struct proto_session s;
	memset(&s, 0, sizeof s);
	struct proto_hello snd, rcv;
	proto_hello_init(&snd, ROLE_SENDER, 0, 65536, CAP_SUPPORTED);
	proto_hello_init(&rcv, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	proto_negotiate(&s, "peer", ROLE_SENDER, &snd, &rcv);
	struct proto_links l = { .cores = 8 };
	memset(l.token, 0xa5, sizeof l.token);
	snprintf(l.name, sizeof l.name, "sparsync-links-%s", "0123456789abcdef0123456789abcdef");
	uint8_t b[PROTO_FRAME_SIZE + PROTO_LINKS_SIZE + 1];
	size_t n = proto_encode_links(b, &l);
	struct proto_rec r;
	CHECK("LINKS decodes", decode(&s, b, n, &r) == 0 && r.type == REC_LINKS &&
	      r.u.links.cores == 8 && !strcmp(r.u.links.name, l.name) &&
	      !memcmp(r.u.links.token, l.token, sizeof l.token));
	struct proto_session plain = s;
	plain.caps &= ~CAP_LINKS;
	CHECK("LINKS without the capability is refused", decode(&plain, b, n, &r) < 0 &&
	      msg_has("not negotiated"));
	b[PROTO_FRAME_SIZE + 24 + 3] = '/'; /* "spa/sync-links-..." */
	reseal(b);
	CHECK("LINKS with a name that is not a rendezvous is refused",
	      decode(&s, b, n, &r) < 0 && msg_has("rendezvous name"));
	n = proto_encode_links(b, &l);
	b[PROTO_FRAME_SIZE + 24 + 47] = 'x'; /* junk after the name */
	reseal(b);
	CHECK("LINKS with junk after the name is refused", decode(&s, b, n, &r) < 0);

	struct proto_join j = { .index = 3 };
	memset(j.token, 0x5a, sizeof j.token);
	uint8_t jb[PROTO_FRAME_SIZE + PROTO_JOIN_SIZE + 1];
	n = proto_encode_join(jb, &j);
	CHECK("JOIN decodes", decode(&s, jb, n, &r) == 0 && r.type == REC_JOIN && r.u.join.index == 3 &&
	      !memcmp(r.u.join.token, j.token, sizeof j.token));
	j.index = 0;
	n = proto_encode_join(jb, &j);
	CHECK("JOIN as link 0 (the first connection) is refused", decode(&s, jb, n, &r) < 0);
	j.index = PROTO_LINKS_MAX;
	n = proto_encode_join(jb, &j);
	CHECK("JOIN beyond the link limit is refused", decode(&s, jb, n, &r) < 0);
	CHECK("rendezvous names: too short is refused",
	      !proto_link_name_ok("sparsync-links-0123"));
	CHECK("rendezvous names: upper-case hex is refused",
	      !proto_link_name_ok("sparsync-links-0123456789ABCDEF0123456789abcdef"));
}

int main(void)
{
	test_hello();
	test_negotiate();
	test_records();
	test_links_records();
	test_hashes();
	test_digest();
	test_codec_parse();
	test_end_to_end();
	UNIT_DONE();
}

/* The sparsync wire protocol. The same bytes go over ssh, through an -e
 * command, or into a file (a portable sparse archive, ".sps").
 *
 * All integers are little-endian, fixed width. Hashes are XXH3-128 in
 * canonical (big-endian) form.
 *
 * HELLO (28 bytes, first thing each side writes):
 *   0  "SPARSYNC"        magic
 *   8  u16 version       PROTO_VERSION; different versions refuse each other
 *  10  u16 body length   16 for version 1 (read before anything is parsed)
 *  12  u8  role          1 sender, 2 receiver
 *  13  u8  flags         HELLO_STREAM: one-way stream, nobody answers
 *  14  u16 reserved
 *  16  u32 max block     sender: the block size it uses; receiver: largest it accepts
 *  20  u64 capabilities  CAP_* bits (sender: codecs it will use; receiver: all it reads)
 *
 * Exchange: over ssh/-e both sides write their hello first, then read the
 * peer's. A stream (`copy SRC -`) carries only the sender's hello, flagged
 * HELLO_STREAM; the receiver of a stream never writes (serve, which has
 * sent its hello before it sees that flag, sends nothing more). The sender then
 * streams IMAGE, DATA/ZERO..., END; an interactive receiver answers only
 * with ACK (flushed and renamed) or ERROR after END -- or ERROR at any time
 * when it fails, after which it stops reading. Nothing ever flows both ways
 * unboundedly at once.
 *
 * Incremental sync (CAP_SYNC in both hellos): a receiver that offers it
 * (it was told the sender is interactive: `serve --receive --sync`, or the
 * client of a pull) writes its whole hash list (HASHES records, the last
 * one flagged HASHES_LAST) right after its hello, before it reads anything,
 * and then nothing until its ACK or ERROR. The sender writes only its hello
 * before it has read the entire list, and only then IMAGE, DATA/ZERO, END.
 * So the list and the data never flow at the same time, neither side can
 * block the other, and no byte the sender writes must get through before
 * the list arrives (a relay that buffers cannot wedge the exchange). The
 * list names the units the receiver holds as data; everything else reads
 * as zeros there. The sender skips units whose hash matches and sends ZERO
 * only over units the list names (none at all to a "fresh" destination).
 * `serve --hashes` writes a hello and a list the same way, and nothing
 * else: `sparsync verify` compares with it.
 *
 * Records: a 16-byte frame {u8 type, u8[3] zero, u32 body length, u64 check}
 * + body, where check = XXH3-64 of the body seeded with type | length << 8,
 * verified before any field of the body is used.
 *   IMAGE  16: u64 virtual size, u32 block size, u8 source format (1 raw,
 *              2 qcow2), u8[3] zero; with CAP_DATA_SIZE 24: then u64 bytes
 *              of data at the source (what the receiver may have to store)
 *   DATA   40 + clen: u64 offset, u32 length, u8 codec, u8[3] zero,
 *              16 hash of the uncompressed bytes, u32 clen, u32 zero, payload
 *   ZERO   16: u64 offset, u64 length (reads as zeros at the source)
 *   END    64: u64 data bytes, u64 data records, u64 zero bytes,
 *              u64 source bytes read, 16 digest (see proto_digest_*),
 *              u64 units changed, u64 bytes unchanged (sync: the sender's
 *              verdicts, for the receiver's statistics)
 *   ERROR  1..1024: message text, one line
 *   ACK    32: u64 bytes written, u64 bytes received, u64 blocks changed,
 *              u64 bytes unchanged (the receiver's counts); with CAP_DIGEST
 *              40: then u64 bytes the receiver read from its image
 *   HASHES 32 + 16 * count (receiver -> sender, CAP_SYNC only):
 *              u64 image size (the receiver's, as hashed), u64 offset of the
 *              first unit, u32 unit size (power of two, 4 KiB .. 32 MiB, the
 *              same in every record), u32 count (<= PROTO_HASHES_MAX), u8
 *              flags (HASHES_LAST, HASHES_FRESH), u8[7] zero, then count
 *              XXH3-128 hashes of consecutive units. A unit's hash covers
 *              exactly `unit` bytes; bytes past the image's end count as
 *              zeros. Records come in increasing offset order, never
 *              overlapping, inside the image; the list ends with the record
 *              flagged HASHES_LAST (count may be 0). HASHES_FRESH (alone, on
 *              an empty last record): the destination is new and reads as
 *              zeros everywhere, so ZERO records are not needed.
 *   TRACK  24 (CAP_TRACK): a --track id (16 bytes), u8 flags, u8[7] zero.
 *              From the receiver, before its hash list, the id its digest
 *              file records (sent only when it has one), flagged
 *              TRACK_IN_STEP when that digest is valid (else the bitmap is
 *              still this destination's, but not in step with it); from
 *              the sender, after IMAGE, the id to record in the new digest
 *              file once the copy is complete (flags 0).
 * Every field is checked against hard limits as it is decoded.
 */
#ifndef SPARSYNC_PROTOCOL_H
#define SPARSYNC_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "hash.h"

struct transport;

#define PROTO_MAGIC "SPARSYNC"
#define PROTO_MAGIC_LEN 8
#define PROTO_VERSION 1
#define PROTO_HELLO_HEAD 12 /* magic + version + body length */
#define PROTO_HELLO_BODY 16
#define PROTO_HELLO_SIZE (PROTO_HELLO_HEAD + PROTO_HELLO_BODY)
#define PROTO_HELLO_BODY_MAX 256 /* what any version may send after the head */

#define PROTO_FRAME_SIZE 16
#define PROTO_IMAGE_SIZE 16
#define PROTO_IMAGE_SIZE_DATA 24 /* with CAP_DATA_SIZE: + u64 data bytes */
#define PROTO_DATA_HEAD 40
#define PROTO_ZERO_SIZE 16
#define PROTO_END_SIZE 64
#define PROTO_ACK_SIZE 32
#define PROTO_ACK_SIZE_DIGEST 40 /* with CAP_DIGEST: + u64 destination bytes read */
#define PROTO_TRACK_ID_SIZE 16
#define PROTO_TRACK_SIZE 24
#define TRACK_IN_STEP 0x01u /* the destination is as the bitmap's start says */
#define PROTO_LINKS_SIZE 72
#define PROTO_LINK_NAME_MAX 48
#define PROTO_LINK_TOKEN_SIZE 16
#define PROTO_JOIN_SIZE 24
#define PROTO_LINKS_MAX 16 /* connections of one session, the first included */
#define PROTO_ERROR_MAX 1024
#define PROTO_HASHES_HEAD 32
#define PROTO_HASHES_MAX 65536u           /* hashes per HASHES record */
#define PROTO_HASHES_UNIT_MIN 4096u
#define PROTO_HASHES_UNIT_MAX (32u << 20)
/* Most hashes one list may hold in all (256 MiB of hashes): the receiver
 * scales its unit so that it stays far below (see core/sync_hash.h). */
#define PROTO_HASHES_TOTAL_MAX (1ull << 24)

#define PROTO_BLOCK_MAX (32u << 20)   /* hard cap whatever the hellos say */
#define PROTO_BLOCK_MIN 4096u
#define PROTO_SIZE_MAX (1ull << 62)   /* largest virtual size accepted */

enum proto_role { ROLE_SENDER = 1, ROLE_RECEIVER = 2 };

#define HELLO_STREAM 0x01u

/* Capability bits. */
#define CAP_CODEC(c) (1ull << (c))    /* c = enum wire_codec: bits 0..2 */
#define CAP_CODECS_ALL (CAP_CODEC(WIRE_NONE) | CAP_CODEC(WIRE_ZSTD) | CAP_CODEC(WIRE_LZ4))
#define CAP_HASH_XXH3_128 (1ull << 8)
#define CAP_SYNC (1ull << 16)         /* incremental sync: receiver sends REC_HASHES */
/* IMAGE carries the source's data bytes, for the receiver's free-space
 * check. Never in a stream, which older readers must still read. */
#define CAP_DATA_SIZE (1ull << 17)
/* The receiver keeps a digest file: the sender sends a ZERO record for
 * every zero range that is not unchanged, also where the receiver holds
 * nothing, so that every byte it does not keep is accounted for (see
 * core/sink_digest.h); ACK carries the bytes it read from its image. */
#define CAP_DIGEST (1ull << 18)
/* Changed-block tracking ids (--track, core/track.h): the receiver sends
 * TRACK, the id its digest file records, before its hash list (only when
 * it has one); the sender sends TRACK after IMAGE with the id to record
 * once the copy is complete. */
#define CAP_TRACK (1ull << 19)
/* Several connections: LINKS and JOIN records, an END per link (above). */
#define CAP_LINKS (1ull << 20)
/* What this build can read and write. */
#define CAP_SUPPORTED \
	(CAP_CODECS_ALL | CAP_HASH_XXH3_128 | CAP_SYNC | CAP_DATA_SIZE | CAP_DIGEST | CAP_TRACK | \
	 CAP_LINKS)

/* HASHES flags. */
#define HASHES_LAST 0x01u
#define HASHES_FRESH 0x02u

enum rec_type {
	REC_IMAGE = 1,
	REC_DATA = 2,
	REC_ZERO = 3,
	REC_END = 4,
	REC_ERROR = 5,
	REC_ACK = 6,
	REC_HASHES = 16, /* incremental sync (CAP_SYNC): receiver -> sender */
	REC_TRACK = 17,  /* --track id (CAP_TRACK): both ways, see above */
	REC_LINKS = 18,  /* several connections (CAP_LINKS): serve -> client */
	REC_JOIN = 19,   /* ... client -> serve, on a further connection */
};

struct proto_hello {
	uint16_t version;
	uint8_t role;
	uint8_t flags;
	uint32_t max_block;
	uint64_t caps;
};

struct proto_image {
	uint64_t size;
	uint32_t block_size;
	uint8_t format; /* enum image_format values: 0 unknown, 1 raw, 2 qcow2 */
	bool has_data;  /* CAP_DATA_SIZE: data is set */
	uint64_t data;  /* bytes of data at the source (an upper bound of what is written) */
};

struct proto_data {
	uint64_t offset;
	uint32_t length;
	uint8_t codec;
	struct hash128 hash;
	uint32_t clen;
	const uint8_t *payload; /* clen bytes, inside the reader's buffer */
};

struct proto_zero {
	uint64_t offset, length;
};

struct proto_end {
	uint64_t data_bytes, data_records, zero_bytes, source_bytes_read;
	struct hash128 digest;
	uint64_t units_changed, bytes_unchanged;
};

struct proto_hashes {
	uint64_t size;           /* the receiver's image size as hashed */
	uint64_t offset;         /* of the first unit */
	uint32_t unit;
	uint32_t count;
	uint8_t flags;
	const uint8_t *hashes;   /* count * HASH_SIZE bytes, inside the reader's buffer */
};

struct proto_ack {
	uint64_t bytes_written, bytes_received, blocks_changed, bytes_unchanged;
	bool has_dest_read; /* CAP_DIGEST */
	uint64_t dest_bytes_read;
};

struct proto_track {
	uint8_t id[PROTO_TRACK_ID_SIZE];
	uint8_t flags; /* TRACK_IN_STEP */
};

struct proto_links {
	uint8_t token[PROTO_LINK_TOKEN_SIZE];
	uint32_t cores;
	char name[PROTO_LINK_NAME_MAX + 1]; /* NUL-terminated */
};

struct proto_join {
	uint8_t token[PROTO_LINK_TOKEN_SIZE];
	uint32_t index;
};

struct proto_rec {
	uint8_t type;
	union {
		struct proto_links links;
		struct proto_join join;
		struct proto_track track;
		struct proto_image image;
		struct proto_data data;
		struct proto_zero zero;
		struct proto_end end;
		struct proto_ack ack;
		struct proto_hashes hashes;
		struct {
			const char *text; /* NUL-terminated, control characters replaced */
		} error;
	} u;
};

/* What both sides agreed on, and what the decoder checks records against. */
struct proto_session {
	const char *peer;    /* name for messages: host, "stdin", ... */
	uint8_t me;          /* our role: decides which records may arrive */
	uint64_t caps;       /* negotiated: intersection of both hellos */
	uint32_t max_block;  /* largest block size the IMAGE record may declare */
	bool have_image;     /* IMAGE seen: the limits below are set */
	struct proto_image image;
	bool peer_stream;    /* the sender's hello said HELLO_STREAM */
	/* The hash list as it arrives (sender side): what later HASHES records
	 * are checked against. */
	struct {
		bool started, done;
		uint32_t unit;
		uint64_t size;
		uint64_t next;   /* no record may start before this offset */
		uint64_t total;  /* hashes so far */
		uint8_t flags;   /* of the last record */
	} hl;
};

/* ---- pure encode/decode (no I/O; what the unit tests and fuzzers drive) ---- */

void proto_hello_init(struct proto_hello *h, enum proto_role role, uint8_t flags,
		      uint32_t max_block, uint64_t caps);
void proto_hello_encode(const struct proto_hello *h, uint8_t out[PROTO_HELLO_SIZE]);
/* Check the 12-byte head: magic and version. *body_len gets what follows. */
int proto_hello_check_head(const char *peer, const uint8_t head[PROTO_HELLO_HEAD],
			   uint16_t *body_len);
/* Parse the body (after a good head); checks the role is `want_role`. */
int proto_hello_decode_body(const char *peer, const uint8_t *body, size_t len,
			    enum proto_role want_role, struct proto_hello *h);
/* Fill s from both hellos: common capabilities, block limit. The sender's
 * chosen codec must then be in s->caps (proto_codec_allowed). */
int proto_negotiate(struct proto_session *s, const char *peer, enum proto_role me,
		    const struct proto_hello *sender, const struct proto_hello *receiver);
bool proto_codec_allowed(const struct proto_session *s, unsigned codec);

/* Encoders write frame + body into out and return the total size. */
size_t proto_encode_image(uint8_t out[PROTO_FRAME_SIZE + PROTO_IMAGE_SIZE_DATA],
			  const struct proto_image *im);
/* rec holds room for the frame and the 40-byte head, then the d->clen
 * payload bytes already in place (d->payload is not read): fill in frame
 * and head, return the record's total size. */
#define PROTO_DATA_PAYLOAD_AT (PROTO_FRAME_SIZE + PROTO_DATA_HEAD)
size_t proto_seal_data(uint8_t *rec, const struct proto_data *d);
size_t proto_encode_zero(uint8_t out[PROTO_FRAME_SIZE + PROTO_ZERO_SIZE], uint64_t off, uint64_t len);
size_t proto_encode_end(uint8_t out[PROTO_FRAME_SIZE + PROTO_END_SIZE], const struct proto_end *e);
size_t proto_encode_ack(uint8_t out[PROTO_FRAME_SIZE + PROTO_ACK_SIZE_DIGEST],
			const struct proto_ack *a);
size_t proto_encode_track(uint8_t out[PROTO_FRAME_SIZE + PROTO_TRACK_SIZE],
			  const struct proto_track *t);
size_t proto_encode_links(uint8_t out[PROTO_FRAME_SIZE + PROTO_LINKS_SIZE],
			  const struct proto_links *l);
size_t proto_encode_join(uint8_t out[PROTO_FRAME_SIZE + PROTO_JOIN_SIZE],
			 const struct proto_join *j);
/* A rendezvous name as LINKS carries it: "sparsync-links-" and 32 hex digits. */
bool proto_link_name_ok(const char *name);
/* rec holds room for the frame and the 32-byte head, then h->count hashes
 * already in place (h->hashes is not read): fill in frame and head, return
 * the record's total size. */
#define PROTO_HASHES_AT (PROTO_FRAME_SIZE + PROTO_HASHES_HEAD)
size_t proto_seal_hashes(uint8_t *rec, const struct proto_hashes *h);
/* Message is cut to PROTO_ERROR_MAX bytes. */
size_t proto_encode_error(uint8_t out[PROTO_FRAME_SIZE + PROTO_ERROR_MAX], const char *msg);

/* Check a frame header against the session: type known and allowed now,
 * body length within that type's bounds. */
int proto_frame_decode(const struct proto_session *s, const uint8_t hdr[PROTO_FRAME_SIZE],
		       uint8_t *type, uint32_t *body_len);
/* Largest body proto_frame_decode can accept in this session. */
size_t proto_body_max(const struct proto_session *s);
/* The frame's checksum over the body that followed it. */
int proto_frame_verify(const struct proto_session *s, const uint8_t hdr[PROTO_FRAME_SIZE],
		       const uint8_t *body, size_t len);
/* Decode and check one body. body must stay valid while r is used (DATA
 * points into it) and have one spare byte after len (ERROR text is
 * NUL-terminated in place). An IMAGE record sets s->image. */
int proto_body_decode(struct proto_session *s, uint8_t type, uint8_t *body, size_t len,
		      struct proto_rec *r);
/* Decompress a DATA payload into out (room for d->length bytes), check the
 * size and the hash. *plain points at the bytes (out, or the payload itself
 * when stored raw). */
int proto_data_unpack(const struct proto_session *s, const struct proto_data *d,
		      struct codec_ctx *cc, uint8_t *out, const uint8_t **plain);

/* The END digest: XXH3-128 over {'I', u64 size, u32 block size, u8 format}
 * of the IMAGE record, then in stream order {'D', u64 offset, u32 length,
 * hash} for each DATA and {'Z', u64 offset, u64 length} for each ZERO
 * record. Both sides compute it as they go. */
struct proto_digest {
	struct hash_stream *h;
};
int proto_digest_init(struct proto_digest *g);
void proto_digest_image(struct proto_digest *g, const struct proto_image *im);
void proto_digest_data(struct proto_digest *g, uint64_t off, uint32_t len, const struct hash128 *h);
void proto_digest_zero(struct proto_digest *g, uint64_t off, uint64_t len);
/* Several connections: after the first link's records, {'L', u32 index,
 * digest of that link's records} for each further link, in index order.
 * A link's own digest covers {'J', u32 index}, then its records. */
void proto_digest_link(struct proto_digest *g, uint32_t index, const struct hash128 *link);
void proto_digest_link_start(struct proto_digest *g, uint32_t index);
void proto_digest_final(struct proto_digest *g, struct hash128 *out);
void proto_digest_free(struct proto_digest *g);

/* ---- I/O on a transport ---- */

/* Reads records into one growing buffer and counts the bytes it consumed. */
struct proto_reader {
	struct transport *t;
	struct proto_session *s;
	uint8_t *buf;
	size_t cap;
	uint64_t bytes; /* bytes read from the transport */
};

void proto_reader_init(struct proto_reader *r, struct transport *t, struct proto_session *s);
void proto_reader_free(struct proto_reader *r);
/* Read and check the peer's hello; want_role is the role the peer must have. */
int proto_read_hello(struct proto_reader *r, enum proto_role want_role, struct proto_hello *h);
/* Read one record. End of stream is "truncated stream". */
int proto_read(struct proto_reader *r, struct proto_rec *rec);
/* Set the message for an ERROR record received from the peer. Returns -1. */
int proto_peer_error(const struct proto_session *s, const struct proto_rec *rec);

int proto_write_hello(struct transport *t, const struct proto_hello *h);
/* Best effort: tell the peer why we stop. Keeps sp_errmsg() unchanged.
 * 0 when the record went out. */
int proto_send_error(struct transport *t, const char *msg);

/* A failure the peer itself reported (its ERROR record): callers need not
 * tell it again. Functions returning this also leave the message set. */
#define PROTO_PEER_FAILED (-2)
/* We failed and said why in an ERROR record: the peer shows it, so a
 * server need not print it too. The message is set. */
#define PROTO_ERROR_SENT (-3)

#endif

/* The sending half: a sink (core/sink.h) that turns the copy engine's
 * data and zero ranges into protocol records on a transport. */
#ifndef SPARSYNC_SEND_H
#define SPARSYNC_SEND_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "adapt.h"
#include "codec.h"
#include "hash.h"
#include "links.h"
#include "protocol.h"
#include "sink.h"
#include "sync_filter.h"
#include "sync_table.h"

struct image;
struct transport;

struct send_opts {
	struct codec_choice codec;
	uint32_t block_size;            /* the copy engine's block size */
	bool stream;                    /* one-way stream: never read from the peer */
	/* After a failed write, read the receiver's ERROR record to learn why
	 * it stopped (the client does; serve must not block on its client). */
	bool read_peer_error;
	/* Offer incremental sync (CAP_SYNC): when the receiver takes it, read
	 * its hash list before any data and send only the units that differ. */
	bool sync;
	/* --dry-run: DATA and ZERO records are prepared (compressed) and
	 * counted, not sent; IMAGE and END go out with nothing between, and
	 * the receiver (serve --dry-run) writes nothing. */
	bool dry_run;
	/* Serve: several connections offered through this rendezvous
	 * (links_host_open done), in a LINKS record right after our hello;
	 * links are taken from then on, while the hash list comes in
	 * (core/links.h). Freed by the caller after sender_free. */
	struct links *offer;
	/* The client: serve was asked for several connections (serve
	 * --links): read its LINKS record after its hello. */
	bool links;
};

/* One block's CPU work (hash, compress, seal the record),
 * kept apart from the transport so it runs in the engine's worker threads.
 * Each worker owns cc and cbuf. */
struct block_job {
	/* in */
	uint64_t off;
	const uint8_t *buf;
	uint32_t len;
	const struct codec_choice *codec;
	struct codec_ctx *cc;
	uint8_t *cbuf;         /* room for PROTO_DATA_PAYLOAD_AT + len bytes */
	/* out */
	struct proto_data rec; /* the record's fields */
	size_t wire_len;       /* the whole record is cbuf[0 .. wire_len) */
};
int send_block_prepare(struct block_job *j);

/* Per-worker scratch: a codec context, a compression buffer and (sync) a
 * unit buffer. The engine's workers call the sink concurrently; each call
 * borrows one. */
struct send_scratch {
	struct send_scratch *next;
	struct codec_ctx *cc;
	uint8_t *cbuf;
	uint8_t *ubuf;         /* one hash unit, allocated on first need */
	uint8_t *pbuf;         /* --compress auto's probe one level up (core/adapt.h) */
};

/* One connection's output: the first (IMAGE, ZERO, DATA, END) or a
 * further link of the session (DATA, then its own END; core/links.h).
 * Everything in it is touched under its lock, by one worker at a time:
 * N links are N writers, each with its own cipher (libssh2) or ssh
 * process. */
struct send_lane {
	struct transport *t;
	unsigned index;                /* 0: the first connection */
	pthread_mutex_t lock;
	uint8_t *wbuf;
	size_t wlen;
	struct proto_digest dg;        /* a further link's records (core/protocol.h) */
	uint64_t data_bytes, data_records;
};

struct links;

struct sender {
	struct sink base;
	struct transport *t;
	struct proto_session s;
	struct proto_reader rd;
	struct send_opts o;
	/* Block work runs in the calling thread; everything below `lock`
	 * (the transport, the buffer, the digest, the counts) is touched by one
	 * thread at a time. */
	pthread_mutex_t pool_lock;
	struct send_scratch *idle;
	struct send_lane main;         /* the first connection; main.lock guards the rest */
	bool locks_ready;
	/* Further links (core/links.h), appended by the links thread while
	 * the workers send; nlanes is read atomically, a lane never leaves. */
	struct send_lane *lanes[PROTO_LINKS_MAX];
	unsigned nlanes;
	unsigned rr;                   /* where the next block starts looking for a free lane */
	uint64_t lanes_out;            /* bytes written on further links (atomic) */
	bool lanes_closed;             /* sender_finish started: no more lanes */
	struct links *links;           /* stopped before the END (sender_links) */
	struct proto_hello mine;       /* our hello, for further links too */
	bool offered;                  /* the client: serve offered several connections */
	struct proto_links offer;
	pthread_mutex_t adapt_lock;    /* the adapt window, fed from every lane */
	pthread_mutex_t dead_lock;
	struct proto_digest dg;
	uint64_t zero_off, zero_len;   /* pending ZERO range, merged with the next */
	struct proto_end end;
	struct image *src;
	uint64_t src_read0;
	bool dead;                     /* a write failed: every later call fails */
	char deadmsg[1024];
	bool peer_failed;              /* the receiver told us why it stopped */
	struct proto_ack ack;
	/* Incremental sync: the receiver's hash list (when it sent one). */
	bool syncing;                  /* compare with `table` */
	bool fresh;                    /* the receiver starts from zeros: no ZERO records */
	/* CAP_DIGEST: the receiver keeps a digest file and wants every range
	 * that is not unchanged, zeros included (core/sink_digest.h). */
	bool cover;
	struct sync_table table;
	struct sync_filter filter;     /* in front of base when syncing */
	const uint8_t *track_send;     /* --track: the id sender_begin passes on */
	uint64_t dry_wire, dry_data;   /* --dry-run: record bytes and data bytes not sent */
	struct adapt ad;               /* the codec and level of each block */
};

/* Exchange hellos (stream: write ours only) and agree on codec and block
 * size; when both offered sync, read the receiver's whole hash list, which
 * follows its hello. The sender must be freed with sender_free even on
 * failure. */
int sender_open(struct sender *s, struct transport *t, const struct send_opts *o,
		struct sp_stats *st);
/* Send the IMAGE record for src. */
int sender_begin(struct sender *s, struct image *src);
struct change_map;
struct copy_opts;
struct track;
/* --track (after sender_open, before sender_begin): decide from the id the
 * receiver's digest records whether src's bitmap can be used (then co
 * copies only what it marks), and have sender_begin tell the receiver the
 * id to record. The caller runs track_finish after a successful copy. */
int sender_track(struct sender *s, struct image *src, struct track *t, struct copy_opts *co);
/* --bitmap NAME: copy only what src's dirty bitmap NAME says changed (the
 * receiver must hold src as it was when the bitmap started: the user
 * vouches for it). Sets co's change map; map is the caller's to free. */
int sender_use_bitmap(struct sender *s, struct image *src, const char *name,
		      struct change_map *map, struct copy_opts *co);
/* Several connections: the links that join (L->add, L->owner are set
 * here) carry DATA records from then on; L is stopped before the END and
 * must outlive the sender's use. Call after sender_open. */
void sender_links(struct sender *s, struct links *L);
/* The bytes written on every connection. */
uint64_t sender_bytes_out(const struct sender *s);
/* What the copy engine delivers to: the sync filter when syncing, else
 * the sender itself. */
struct sink *sender_sink(struct sender *s);
/* After a failure: tell the peer (ERROR record) unless it told us.
 * Returns -1, PROTO_PEER_FAILED when the peer reported the failure, or
 * PROTO_ERROR_SENT when our ERROR record told it. */
int sender_abort(struct sender *s);
void sender_free(struct sender *s);

#endif

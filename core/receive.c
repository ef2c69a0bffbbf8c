#include "receive.h"

#include "../transport/transport.h"
#include "codec.h"
#include "dest.h"
#include "error.h"
#include "protocol.h"
#include "receive_links.h"
#include "sync_hash.h"
#include "sync_list.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct receiver {
	struct transport *t;
	const struct receive_opts *o;
	struct sp_stats *st;
	struct proto_session s;
	struct proto_reader rd;
	struct proto_digest dg;
	struct codec_ctx *cc;
	uint8_t *out;          /* one decompressed block */
	struct dest d;         /* what DST is and how it is written (core/dest.c) */
	bool have_dest;        /* dest_open succeeded: dest_close it */
	struct proto_hello mine;
	bool answer;           /* the sender reads our replies */
	bool peer_failed;
	struct proto_end seen; /* what arrived, to check against END */
	/* Several connections (core/links.h, receive_links.h). */
	struct links *links;   /* the host's rendezvous or the client's opener */
	bool links_on;
	struct rx_links rx;
	pthread_mutex_t write_lock, prog_lock;
	struct rx_progress prog; /* shared with the links' threads */
};

static int next(struct receiver *r, struct proto_rec *rec)
{
	if (proto_read(&r->rd, rec) < 0) {
		/* A further connection failed and cut this one: its reason. */
		if (r->links_on && rx_links_failed(&r->rx))
			sp_err("%s", rx_links_message(&r->rx));
		return -1;
	}
	r->st->bytes_received = r->rd.bytes;
	if (rec->type == REC_ERROR) {
		r->peer_failed = true;
		return proto_peer_error(&r->s, rec);
	}
	return 0;
}

/* Our hello; when syncing it offers CAP_SYNC, and the hash list follows
 * at once, before we read a byte: the sender reads it all before it sends
 * anything but its hello. So nothing the sender writes has to get through
 * to us first (a relay that buffers, like `head -c` in a pipe, cannot
 * wedge the exchange). */
static int write_hello(struct receiver *r)
{
	struct proto_hello mine;
	uint64_t caps = CAP_SUPPORTED & ~(CAP_SYNC | CAP_LINKS);
	if (r->o->sync)
		caps |= CAP_SYNC;
	if (r->links)
		caps |= CAP_LINKS;
	proto_hello_init(&mine, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, caps);
	r->mine = mine;
	if (r->o->stream)
		return 0;
	if (proto_write_hello(r->t, &mine) < 0)
		return -1;
	/* Serve: where further connections join, before anything else. */
	if (r->o->links_host) {
		uint8_t b[PROTO_FRAME_SIZE + PROTO_LINKS_SIZE];
		if (transport_write(r->t, b, proto_encode_links(b, &r->o->links_host->offer)) < 0)
			return -1;
	}
	r->st->bytes_sent = r->t->bytes_out;
	return 0;
}

/* Several connections: the links that join write into DST beside us. */
static int links_setup(struct receiver *r)
{
	struct links *L = r->links;
	if (transport_make_cuttable(r->t) < 0)
		return -1;
	pthread_mutex_init(&r->write_lock, NULL);
	pthread_mutex_init(&r->prog_lock, NULL);
	rx_links_init(&r->rx, L, r->st, r->t, r->answer, &r->write_lock);
	r->links_on = true;
	L->mine = r->mine;
	L->me = ROLE_RECEIVER;
	L->peer = r->t->name;
	L->timeout_s = r->t->timeout_s;
	return r->o->links_host ? links_host_start(L) : 0;
}

/* The client of a pull: the sender's LINKS record follows its hello when
 * it offers several connections. */
static int read_links_offer(struct receiver *r)
{
	if (!(r->s.caps & CAP_LINKS) || r->o->links_host)
		return 0;
	struct proto_rec rec;
	if (next(r, &rec) < 0)
		return -1;
	if (rec.type != REC_LINKS)
		return sp_err("%s: expected the LINKS record, got type %u", r->s.peer, rec.type);
	if (!r->o->links_client)
		return 0;
	struct links *L = r->links;
	L->offer = rec.u.links;
	if (links_setup(r) < 0)
		return -1;
	/* The data size is not known yet: the cores decide. */
	L->want = links_want(r->o->connections, L->offer.cores, UINT64_MAX);
	if (links_client_start(L) < 0)
		return -1;
	if (r->o->connections)
		links_wait(L); /* --connections N: all N from the start */
	return 0;
}

static int read_hello(struct receiver *r)
{
	struct proto_hello peer;
	if (proto_read_hello(&r->rd, ROLE_SENDER, &peer) < 0)
		return -1;
	if (proto_negotiate(&r->s, r->t->name, ROLE_RECEIVER, &peer, &r->mine) < 0)
		return -1;
	/* A stream piped into serve has nobody reading our answers. */
	r->answer = !r->o->stream && !r->s.peer_stream;
	return 0;
}

/* Decide how DST is written, before the sender's IMAGE is known (the hash
 * list goes out first): an existing image of the output format is updated
 * in place when syncing (the source's format only matters for a new DST). */
static int choose_dest(struct receiver *r, bool sync)
{
	const struct receive_opts *o = r->o;
	struct dest_opts dop = {
		.out_fmt = o->out_fmt, .create = o->create, .update = sync && !o->whole,
		.target_is_zero = o->target_is_zero, .inplace = o->inplace,
		.space_check = !o->no_space_check,
		/* An archive read into DST (no sender to tell us where its
		 * zeros are) leaves no digest. */
		.digest = !o->no_digest && !o->stream, .digest_file = o->digest_file,
		.src_name = o->src_name, .dry_run = o->dry_run,
	};
	if (o->refusal)
		return sp_err("%s", o->refusal);
	int rc = dest_open(&r->d, o->dst_path, &dop);
	r->have_dest = true;
	if (rc == 0) {
		r->st->destination = dest_how(&r->d);
		r->st->digest = r->d.digest_why;
	}
	return rc;
}

/* The id of the bitmap that tracks changes to the source since DST was
 * written (--track), when DST's digest file records one: with a valid
 * digest the sender may read only what it marks; with a stale one it
 * still knows the bitmap is DST's, to start afresh. */
static int send_track_id(struct receiver *r)
{
	bool in_step;
	const uint8_t *id = dest_track_id(&r->d, &in_step);
	if (!(r->mine.caps & CAP_TRACK) || !id)
		return 0;
	struct proto_track tr = { .flags = in_step ? TRACK_IN_STEP : 0 };
	memcpy(tr.id, id, PROTO_TRACK_ID_SIZE);
	uint8_t b[PROTO_FRAME_SIZE + PROTO_TRACK_SIZE];
	return transport_write(r->t, b, proto_encode_track(b, &tr));
}

/* The hash list: what DST (or the backing image of a new overlay) already
 * holds, or "fresh" for a new DST. From DST's digest file when it is
 * valid: then nothing is read. */
static int send_hash_list(struct receiver *r)
{
	struct image *img = dest_known_image(&r->d);
	if (!img)
		return sync_list_write_fresh(r->t, 0);
	const struct unit_map *known = dest_digest_map(&r->d);
	if (known) {
		/* The id of the bitmap that tracks changes since DST was
		 * written (--track): the sender may then read only those. */
		return send_track_id(r) < 0 ? -1 : sync_list_write_map(r->t, known);
	}
	/* Units line up with the clusters DST allocates. */
	uint32_t unit;
	if (send_track_id(r) < 0 || sync_unit_for(img, dest_min_unit(&r->d), &unit) < 0)
		return -1;
	return sync_list_write(r->t, img, unit, r->o->workers, dest_map_to_fill(&r->d, unit));
}

static int check_end(struct receiver *r, const struct proto_end *e)
{
	if (r->links_on && rx_links_finish(&r->rx, &r->dg, &r->seen) < 0)
		return -1;
	proto_digest_final(&r->dg, &r->seen.digest);
	if (e->data_bytes != r->seen.data_bytes || e->data_records != r->seen.data_records ||
	    e->zero_bytes != r->seen.zero_bytes)
		return sp_err("%s: the END record counts %llu data bytes in %llu records "
			      "and %llu zero bytes, but %llu, %llu and %llu arrived",
			      r->s.peer, (unsigned long long)e->data_bytes,
			      (unsigned long long)e->data_records,
			      (unsigned long long)e->zero_bytes,
			      (unsigned long long)r->seen.data_bytes,
			      (unsigned long long)r->seen.data_records,
			      (unsigned long long)r->seen.zero_bytes);
	if (!hash128_equal(&e->digest, &r->seen.digest))
		return sp_err("%s: stream digest mismatch (records lost, altered or "
			      "reordered)", r->s.peer);
	/* Data at the source: what came plus what a sync found unchanged. */
	uint64_t data = r->seen.data_bytes + e->bytes_unchanged;
	r->st->bytes_read += e->source_bytes_read;
	r->st->bytes_data += data;
	r->st->bytes_zero += data < r->s.image.size ? r->s.image.size - data : 0;
	r->st->blocks_changed += e->units_changed;
	r->st->bytes_unchanged += e->bytes_unchanged;
	return 0;
}

static int apply(struct receiver *r, struct sink *sink)
{
	struct proto_rec rec;
	for (;;) {
		if (next(r, &rec) < 0)
			return -1;
		switch (rec.type) {
		case REC_DATA:
		case REC_ZERO: {
			uint64_t off_end, data;
			if (rx_apply(&r->s, r->cc, r->out, sink, &r->dg, &r->seen, &rec, &off_end, &data) < 0)
				return -1;
			rx_progress_add(&r->prog, off_end, data);
			break;
		}
		case REC_TRACK:
			/* Recorded in DST's digest file, if the copy completes. */
			dest_set_track_id(&r->d, rec.u.track.id);
			break;
		case REC_END:
			return check_end(r, &rec.u.end);
		default:
			return sp_err("%s: unexpected record type %u", r->s.peer, rec.type);
		}
	}
}

/* Receive the records into DST. The sender compared hashes already: every
 * record is written as it comes. */
static int receive_body(struct receiver *r, struct progress *prog)
{
	struct sink *sink = dest_sink(&r->d, r->st, r->s.caps & CAP_DIGEST);
	/* A new DST receives all the source's data: progress over it (holes
	 * cost nothing). A sync receives only what differs, in offset order:
	 * progress over the offset reached. */
	bool by_data = !dest_known_image(&r->d) && r->s.image.has_data;
	progress_init(prog, r->o->progress, by_data ? r->s.image.data : r->s.image.size);
	r->prog = (struct rx_progress){ .bar = prog, .lock = r->links_on ? &r->prog_lock : NULL,
					.by_data = by_data, .st = r->st };
	int rc = 0;
	if (r->links_on)
		rc = rx_links_ready(&r->rx, sink, &r->s, &r->prog);
	if (rc == 0)
		rc = apply(r, sink);
	if (rc < 0 && r->links_on)
		rx_links_abort(&r->rx);
	if (rc == 0)
		rc = sink->ops->finish(sink);
	progress_end(prog);
	return rc;
}

int receive_run(struct transport *t, const struct receive_opts *o, struct sp_stats *st)
{
	struct receiver r;
	memset(&r, 0, sizeof r);
	r.t = t;
	r.o = o;
	r.st = st;
	r.s.peer = t->name;
	r.s.me = ROLE_RECEIVER;
	r.answer = !o->stream;
	r.links = o->stream ? NULL : o->links_host ? o->links_host : o->links_client;
	proto_reader_init(&r.rd, t, &r.s);
	double t0 = now_seconds();
	struct progress prog = { 0 };

	bool sync = o->sync && !o->stream;
	bool told = false; /* our ERROR record went out */
	int rc = write_hello(&r);
	if (rc == 0 && o->links_host && !o->stream)
		rc = links_setup(&r);
	/* A pull with several connections: serve's hello and LINKS come first
	 * (it writes them before it reads), so that the links can join before
	 * our hash list lets it start sending. */
	bool early = r.links && o->links_client;
	if (rc == 0 && early)
		rc = read_hello(&r);
	if (rc == 0 && early)
		rc = read_links_offer(&r);
	if (rc == 0 && sync) {
		rc = choose_dest(&r, true);
		if (rc == 0)
			rc = send_hash_list(&r);
		st->bytes_sent = t->bytes_out;
	}
	if (rc == 0 && !early)
		rc = read_hello(&r);
	if (rc == 0 && !early)
		rc = read_links_offer(&r);
	if (rc == 0 && !sync)
		rc = choose_dest(&r, false);
	struct proto_rec rec;
	if (rc == 0)
		rc = next(&r, &rec);
	if (rc == 0 && rec.type != REC_IMAGE)
		rc = sp_err("%s: expected the IMAGE record, got type %u", r.s.peer, rec.type);
	if (rc == 0) {
		st->bytes_virtual = rec.u.image.size;
		const struct proto_image *im = &rec.u.image;
		rc = dest_begin(&r.d, (enum image_format)im->format, im->size,
				im->has_data ? im->data : DEST_DATA_UNKNOWN);
	}
	if (rc == 0 && (proto_digest_init(&r.dg) < 0 || !(r.cc = codec_ctx_new()) ||
			!(r.out = malloc(r.s.image.block_size))))
		rc = sp_err("%s: out of memory", o->dst_path);
	if (rc == 0)
		proto_digest_image(&r.dg, &r.s.image);
	if (rc == 0)
		rc = receive_body(&r, &prog);
	if (rc == 0)
		rc = dest_commit(&r.d);
	if (rc == 0 && r.answer) {
		struct proto_ack a = {
			.bytes_written = st->bytes_written,
			.bytes_received = r.rd.bytes + (r.links_on ? rx_links_bytes(&r.rx) : 0),
			.blocks_changed = st->blocks_changed,
			.bytes_unchanged = st->bytes_unchanged,
			.has_dest_read = r.s.caps & CAP_DIGEST,
			.dest_bytes_read = st->dest_bytes_read,
		};
		uint8_t b[PROTO_FRAME_SIZE + PROTO_ACK_SIZE_DIGEST];
		size_t n = proto_encode_ack(b, &a);
		rc = transport_write(t, b, n);
	}
	if (rc < 0) {
		char saved[1024];
		snprintf(saved, sizeof saved, "%s", sp_errmsg());
		if (r.links_on)
			rx_links_abort(&r.rx); /* no thread writes into DST any more */
		if (r.have_dest)
			dest_abort(&r.d);
		sp_err("%s", saved);
		/* Only a sparsync client reads (and shows) our ERROR: one that
		 * said hello, or asked for a hash list (--sync), which is all a
		 * client does before its hello is read. A further connection's
		 * failure was told already. */
		if (r.links_on && r.rx.told)
			told = true;
		else if (r.answer && !r.peer_failed && proto_send_error(t, sp_errmsg()) == 0)
			told = r.s.caps != 0 || o->sync;
	}
	if (r.have_dest)
		dest_close(&r.d);
	st->bytes_received = r.rd.bytes;
	if (r.links_on) {
		st->bytes_received += rx_links_bytes(&r.rx);
		rx_links_free(&r.rx);
		pthread_mutex_destroy(&r.write_lock);
		pthread_mutex_destroy(&r.prog_lock);
	}
	st->bytes_sent = t->bytes_out;
	st->seconds = now_seconds() - t0;
	proto_reader_free(&r.rd);
	proto_digest_free(&r.dg);
	codec_ctx_free(r.cc);
	free(r.out);
	if (rc < 0)
		return r.peer_failed ? PROTO_PEER_FAILED : told ? PROTO_ERROR_SENT : -1;
	return 0;
}

int hashes_serve(struct transport *t, const char *path, enum image_format fmt, uint32_t unit,
		 unsigned workers, bool force_share, const char *refusal)
{
	/* Hello, then the list at once (nothing to wait for: the client asked
	 * for it by running us); an ERROR record instead when we cannot. */
	struct proto_hello mine;
	proto_hello_init(&mine, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	if (proto_write_hello(t, &mine) < 0)
		return -1;
	struct image *img = NULL;
	int rc = refusal ? sp_err("%s", refusal) : 0;
	if (rc == 0 && (unit < SYNC_UNIT_MIN || unit > SYNC_UNIT_MAX || (unit & (unit - 1))))
		rc = sp_err("hash unit %u is not a power of two from %u to %u", unit, SYNC_UNIT_MIN,
			    SYNC_UNIT_MAX);
	if (rc == 0 && !(img = image_open(path, fmt, IMAGE_RDONLY | (force_share ? IMAGE_FORCE_SHARE : 0))))
		rc = -1;
	if (rc == 0)
		rc = sync_list_write(t, img, unit, workers, NULL);
	if (rc < 0 && proto_send_error(t, sp_errmsg()) == 0)
		rc = PROTO_ERROR_SENT;
	image_close(img);
	return rc;
}

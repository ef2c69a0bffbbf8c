#include "send.h"

#include "../formats/change_map.h"
#include "../formats/image.h"
#include "../transport/transport.h"
#include "copy.h"
#include "error.h"
#include "sync_hash.h"
#include "track.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WBUF_SIZE (256u << 10)

int send_block_prepare(struct block_job *j)
{
	struct proto_data *d = &j->rec;
	memset(d, 0, sizeof *d);
	j->wire_len = 0;
	d->offset = j->off;
	d->length = j->len;
	hash128(j->buf, j->len, &d->hash);
	uint8_t *payload = j->cbuf + PROTO_DATA_PAYLOAD_AT;
	d->codec = WIRE_NONE;
	d->clen = 0;
	if (j->codec->codec != WIRE_NONE && j->len > 1) {
		/* Room for len - 1 bytes: a block that does not shrink goes raw. */
		size_t out;
		if (codec_compress(j->cc, j->codec, j->buf, j->len, payload, j->len - 1, &out) < 0)
			return -1;
		if (out > 0 && out < j->len) {
			d->codec = (uint8_t)j->codec->codec;
			d->clen = (uint32_t)out;
		}
	}
	if (d->codec == WIRE_NONE) {
		memcpy(payload, j->buf, j->len);
		d->clen = j->len;
	}
	d->payload = payload;
	j->wire_len = proto_seal_data(j->cbuf, d);
	return 0;
}

/* ---- scratch pool ---- */

static struct send_scratch *scratch_get(struct sender *s)
{
	pthread_mutex_lock(&s->pool_lock);
	struct send_scratch *w = s->idle;
	if (w)
		s->idle = w->next;
	pthread_mutex_unlock(&s->pool_lock);
	if (w)
		return w;
	w = calloc(1, sizeof *w);
	if (w && (w->cc = codec_ctx_new()) && (w->cbuf = malloc(PROTO_DATA_PAYLOAD_AT + (size_t)s->o.block_size)))
		return w;
	if (w) {
		codec_ctx_free(w->cc);
		free(w);
	}
	sp_err("out of memory for a compression buffer");
	return NULL;
}

static void scratch_put(struct sender *s, struct send_scratch *w)
{
	pthread_mutex_lock(&s->pool_lock);
	w->next = s->idle;
	s->idle = w;
	pthread_mutex_unlock(&s->pool_lock);
}

/* ---- output, each lane under its lock ---- */

/* A write to the peer failed. Over ssh/-e the receiver usually stopped on
 * purpose and said why in an ERROR record on the first connection: prefer
 * its reason. Every later call fails with the same message; the other
 * links are cut, so that no worker stays blocked on one. */
static int wire_failed(struct sender *s, struct send_lane *on)
{
	char saved[1024];
	snprintf(saved, sizeof saved, "%s", sp_errmsg());
	unsigned n = __atomic_load_n(&s->nlanes, __ATOMIC_ACQUIRE);
	for (unsigned i = 0; i < n; i++)
		if (s->lanes[i] != on)
			transport_cut(s->lanes[i]->t);
	/* The first connection is read here: no other thread may write on
	 * it meanwhile (one libssh2 session is one thread's at a time). The
	 * order, main lane then dead_lock, is the same for every caller. */
	if (on != &s->main)
		pthread_mutex_lock(&s->main.lock);
	pthread_mutex_lock(&s->dead_lock);
	if (!__atomic_load_n(&s->dead, __ATOMIC_ACQUIRE)) {
		struct proto_rec r;
		if (!s->o.stream && s->o.read_peer_error && proto_read(&s->rd, &r) == 0 &&
		    r.type == REC_ERROR) {
			s->peer_failed = true;
			proto_peer_error(&s->s, &r);
		} else {
			sp_err("%s", saved);
		}
		snprintf(s->deadmsg, sizeof s->deadmsg, "%s", sp_errmsg());
		__atomic_store_n(&s->dead, true, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&s->dead_lock);
	if (on != &s->main)
		pthread_mutex_unlock(&s->main.lock);
	return sp_err("%s", s->deadmsg);
}

static int raw_write(struct sender *s, struct send_lane *l, const void *p, size_t n)
{
	if (__atomic_load_n(&s->dead, __ATOMIC_ACQUIRE))
		return sp_err("%s", s->deadmsg);
	uint64_t t0 = s->ad.on ? adapt_now_ns() : 0;
	if (transport_write(l->t, p, n) < 0)
		return wire_failed(s, l);
	if (s->ad.on)
		adapt_write(&s->ad, adapt_now_ns() - t0);
	if (l->index)
		__atomic_add_fetch(&s->lanes_out, n, __ATOMIC_RELAXED);
	__atomic_store_n(&s->base.stats->bytes_sent, sender_bytes_out(s), __ATOMIC_RELAXED);
	return 0;
}

static int flush_lane(struct sender *s, struct send_lane *l)
{
	size_t n = l->wlen;
	l->wlen = 0;
	return n ? raw_write(s, l, l->wbuf, n) : 0;
}

static int out_lane(struct sender *s, struct send_lane *l, const void *p, size_t n)
{
	if (l->wlen + n <= WBUF_SIZE) {
		memcpy(l->wbuf + l->wlen, p, n);
		l->wlen += n;
		return 0;
	}
	if (flush_lane(s, l) < 0)
		return -1;
	if (n < WBUF_SIZE)
		return out_lane(s, l, p, n);
	return raw_write(s, l, p, n);
}

static int flush_wbuf(struct sender *s)
{
	return flush_lane(s, &s->main);
}

static int out(struct sender *s, const void *p, size_t n)
{
	return out_lane(s, &s->main, p, n);
}

uint64_t sender_bytes_out(const struct sender *s)
{
	return (s->t ? s->t->bytes_out : 0) + __atomic_load_n(&s->lanes_out, __ATOMIC_RELAXED);
}

/* The lane for the next DATA record, locked: the first that is free,
 * starting from a different one each time, or (all busy) that one. */
static struct send_lane *lane_take(struct sender *s)
{
	unsigned n = __atomic_load_n(&s->nlanes, __ATOMIC_ACQUIRE);
	if (n == 0) {
		pthread_mutex_lock(&s->main.lock);
		return &s->main;
	}
	unsigned start = __atomic_fetch_add(&s->rr, 1, __ATOMIC_RELAXED) % (n + 1);
	for (unsigned i = 0; i <= n; i++) {
		unsigned k = (start + i) % (n + 1);
		struct send_lane *l = k ? s->lanes[k - 1] : &s->main;
		if (pthread_mutex_trylock(&l->lock) == 0)
			return l;
	}
	struct send_lane *l = start ? s->lanes[start - 1] : &s->main;
	pthread_mutex_lock(&l->lock);
	return l;
}

static int flush_zero(struct sender *s)
{
	if (!s->zero_len)
		return 0;
	uint8_t b[PROTO_FRAME_SIZE + PROTO_ZERO_SIZE];
	size_t n = proto_encode_zero(b, s->zero_off, s->zero_len);
	if (s->o.dry_run) {
		s->dry_wire += n;
		s->zero_len = 0;
		return 0;
	}
	proto_digest_zero(&s->dg, s->zero_off, s->zero_len);
	s->end.zero_bytes += s->zero_len;
	s->zero_len = 0;
	return out(s, b, n);
}

/* ---- sink ---- */

/* --compress auto: the same block one rung up, to learn whether climbing
 * would save enough bytes to pay for its CPU. Only the sizes matter. */
static void probe_next_rung(struct sender *s, struct send_scratch *w, const struct block_job *j,
			    int rung)
{
	if (!w->pbuf && !(w->pbuf = malloc(s->o.block_size)))
		return;
	const struct codec_choice *up = &s->ad.rung[rung + 1];
	size_t out = 0;
	if (codec_compress(w->cc, up, j->buf, j->len, w->pbuf, j->len - 1, &out) < 0) {
		sp_err_clear();
		return;
	}
	adapt_probe_result(&s->ad, j->rec.clen, out ? out : j->len);
}

/* One DATA record for [off, off+len) (within one block). */
static int send_piece(struct sender *s, struct send_scratch *w, uint64_t off, const uint8_t *buf,
		      size_t len)
{
	int rung;
	struct codec_choice ch = adapt_pick(&s->ad, &rung);
	struct block_job j = {
		.off = off, .buf = buf, .len = (uint32_t)len, .codec = &ch,
		.cc = w->cc, .cbuf = w->cbuf,
	};
	uint64_t t0 = s->ad.on ? adapt_now_ns() : 0;
	if (send_block_prepare(&j) < 0)
		return -1;
	uint64_t t1 = s->ad.on ? adapt_now_ns() : 0;
	if (adapt_probe_take(&s->ad, rung))
		probe_next_rung(s, w, &j, rung);
	int rc = 0;
	struct send_lane *l = s->o.dry_run ? (pthread_mutex_lock(&s->main.lock), &s->main)
					   : lane_take(s);
	uint64_t t2 = s->ad.on ? adapt_now_ns() : 0;
	adapt_block(&s->ad, rung, len, j.rec.clen, t1 - t0, t2 - t1);
	if (s->o.dry_run) {
		/* What a real run would put on the wire, in the same records. */
		rc = flush_zero(s);
		s->dry_wire += j.wire_len;
		s->dry_data += len;
	} else if (l == &s->main) {
		if (flush_zero(s) < 0 || out(s, j.cbuf, j.wire_len) < 0) {
			rc = -1;
		} else {
			proto_digest_data(&s->dg, off, j.rec.length, &j.rec.hash);
			s->end.data_bytes += len;
			s->end.data_records++;
		}
	} else if (out_lane(s, l, j.cbuf, j.wire_len) < 0) {
		rc = -1;
	} else {
		proto_digest_data(&l->dg, off, j.rec.length, &j.rec.hash);
		l->data_bytes += len;
		l->data_records++;
	}
	pthread_mutex_unlock(&l->lock);
	if (rc == 0 && s->ad.on) {
		pthread_mutex_lock(&s->adapt_lock);
		adapt_tick(&s->ad);
		pthread_mutex_unlock(&s->adapt_lock);
	}
	return rc;
}

/* A ZERO range to send, merged with the pending one when adjacent. */
static int queue_zero(struct sender *s, uint64_t off, uint64_t len)
{
	int rc = 0;
	pthread_mutex_lock(&s->main.lock);
	if (__atomic_load_n(&s->dead, __ATOMIC_ACQUIRE)) {
		rc = sp_err("%s", s->deadmsg);
	} else if (s->zero_len && s->zero_off + s->zero_len == off) {
		s->zero_len += len;
	} else {
		rc = flush_zero(s);
		s->zero_off = off;
		s->zero_len = len;
	}
	pthread_mutex_unlock(&s->main.lock);
	return rc;
}

static int send_data(struct sink *base, uint64_t off, const void *buf, size_t len)
{
	struct sender *s = (struct sender *)base;
	if (len == 0)
		return 0;
	if (len > s->s.image.block_size)
		return sp_err("internal error: %zu-byte data range exceeds the block size", len);
	struct send_scratch *w = scratch_get(s);
	if (!w)
		return -1;
	int rc = send_piece(s, w, off, buf, len);
	scratch_put(s, w);
	return rc;
}

static int send_zero(struct sink *base, uint64_t off, uint64_t len)
{
	struct sender *s = (struct sender *)base;
	/* A new destination reads as zeros: nothing to say, unless the
	 * receiver keeps a digest and wants every byte accounted for. */
	if (len == 0 || (s->fresh && !s->cover))
		return 0;
	return queue_zero(s, off, len);
}

static uint64_t sum_lanes(struct send_lane *const *l, unsigned n)
{
	uint64_t t = 0;
	for (unsigned i = 0; i < n; i++)
		t += l[i]->data_bytes;
	return t;
}

static uint64_t sum_records(struct send_lane *const *l, unsigned n)
{
	uint64_t t = 0;
	for (unsigned i = 0; i < n; i++)
		t += l[i]->data_records;
	return t;
}

/* Further links end with an END of their own; the first connection's
 * END counts their records and its digest covers theirs, in index order
 * (core/protocol.h). */
static int finish_lanes(struct sender *s)
{
	if (s->links)
		links_stop(s->links); /* from here on no lane joins */
	unsigned n = __atomic_load_n(&s->nlanes, __ATOMIC_ACQUIRE);
	struct send_lane *by_index[PROTO_LINKS_MAX];
	for (unsigned i = 0; i < n; i++) {
		unsigned k = i;
		while (k > 0 && by_index[k - 1]->index > s->lanes[i]->index) {
			by_index[k] = by_index[k - 1];
			k--;
		}
		by_index[k] = s->lanes[i];
	}
	for (unsigned i = 0; i < n; i++) {
		struct send_lane *l = by_index[i];
		struct proto_end e = { .data_bytes = l->data_bytes, .data_records = l->data_records };
		proto_digest_final(&l->dg, &e.digest);
		uint8_t b[PROTO_FRAME_SIZE + PROTO_END_SIZE];
		size_t len = proto_encode_end(b, &e);
		if (out_lane(s, l, b, len) < 0 || flush_lane(s, l) < 0)
			return -1;
		proto_digest_link(&s->dg, l->index, &e.digest);
		s->end.data_bytes += l->data_bytes;
		s->end.data_records += l->data_records;
	}
	if (n && sp_verbose()) {
		char a[32];
		sp_info("%s: connection 1 carried %s of data in %llu records", s->s.peer,
			human_bytes(s->end.data_bytes - sum_lanes(by_index, n), a, sizeof a),
			(unsigned long long)(s->end.data_records - sum_records(by_index, n)));
		for (unsigned i = 0; i < n; i++)
			sp_info("%s: connection %u carried %s of data in %llu records", s->s.peer,
				by_index[i]->index + 1, human_bytes(by_index[i]->data_bytes, a, sizeof a),
				(unsigned long long)by_index[i]->data_records);
	}
	return 0;
}

/* Several connections: a link that joined becomes a lane (called by the
 * links thread, with the set locked). */
static int lane_add(void *owner, struct link *lk)
{
	struct sender *s = owner;
	if (__atomic_load_n(&s->dead, __ATOMIC_ACQUIRE) || s->o.dry_run)
		return sp_err("%s: the session is over", s->s.peer);
	unsigned n = __atomic_load_n(&s->nlanes, __ATOMIC_ACQUIRE);
	struct send_lane *l = n < PROTO_LINKS_MAX ? calloc(1, sizeof *l) : NULL;
	if (!l || !(l->wbuf = malloc(WBUF_SIZE)) || proto_digest_init(&l->dg) < 0) {
		if (l)
			free(l->wbuf);
		free(l);
		return sp_err("out of memory");
	}
	l->t = lk->t;
	l->index = lk->index;
	pthread_mutex_init(&l->lock, NULL);
	proto_digest_link_start(&l->dg, l->index);
	s->lanes[n] = l;
	__atomic_store_n(&s->nlanes, n + 1, __ATOMIC_RELEASE);
	__atomic_store_n(&s->ad.writers, n + 2, __ATOMIC_RELAXED);
	return 0;
}

void sender_links(struct sender *s, struct links *L)
{
	L->add = lane_add;
	L->owner = s;
	s->links = L;
}

/* END, then (over ssh/-e) wait for the receiver to say it flushed and
 * renamed: only then is the copy done. Called once the workers are done. */
static int send_finish(struct sink *base)
{
	struct sender *s = (struct sender *)base;
	if (flush_zero(s) < 0 || finish_lanes(s) < 0)
		return -1;
	if (s->src)
		s->end.source_bytes_read = s->src->bytes_read - s->src_read0;
	if (s->syncing) {
		/* The filter in front of us (sender_sink) counted them. */
		s->end.units_changed = s->filter.units_changed;
		s->end.bytes_unchanged = s->filter.bytes_unchanged;
	}
	struct sp_stats *st = base->stats;
	adapt_report(&s->ad, st);
	if (st->ncodecs && sp_verbose()) {
		char line[512];
		sp_info("%s: wire compression %s", s->s.peer, stats_codecs_line(st, line, sizeof line));
	}
	proto_digest_final(&s->dg, &s->end.digest);
	uint8_t b[PROTO_FRAME_SIZE + PROTO_END_SIZE];
	size_t n = proto_encode_end(b, &s->end);
	if (out(s, b, n) < 0 || flush_wbuf(s) < 0)
		return -1;
	if (s->o.stream)
		return 0;
	struct proto_rec r;
	if (proto_read(&s->rd, &r) < 0)
		return -1;
	if (r.type == REC_ERROR) {
		s->peer_failed = true;
		return proto_peer_error(&s->s, &r);
	}
	if (r.type != REC_ACK)
		return sp_err("%s: unexpected record %u instead of the final ACK", s->s.peer, r.type);
	s->ack = r.u.ack;
	st->bytes_written += r.u.ack.bytes_written + s->dry_data;
	st->dest_bytes_read += r.u.ack.dest_bytes_read;
	st->bytes_received = s->rd.bytes;
	return 0;
}

static const struct sink_ops sender_ops = {
	.data = send_data,
	.zero = send_zero,
	.finish = send_finish,
};

/* Read the receiver's hash list (sync was agreed): it follows its hello,
 * and we write nothing but our hello until all of it is in. */
static int read_hash_list(struct sender *s)
{
	int rc = sync_table_read(&s->table, &s->rd);
	s->base.stats->bytes_received = s->rd.bytes;
	if (rc == PROTO_PEER_FAILED)
		s->peer_failed = true;
	if (rc < 0)
		return -1;
	if (s->table.fresh)
		s->fresh = true;
	else
		s->syncing = true;
	return 0;
}

int sender_open(struct sender *s, struct transport *t, const struct send_opts *o,
		struct sp_stats *st)
{
	memset(s, 0, sizeof *s);
	s->base.ops = &sender_ops;
	s->base.stats = st;
	s->t = t;
	s->o = *o;
	s->s.peer = t->name;
	s->s.me = ROLE_SENDER;
	proto_reader_init(&s->rd, t, &s->s);
	s->main.t = t;
	pthread_mutex_init(&s->main.lock, NULL);
	pthread_mutex_init(&s->pool_lock, NULL);
	pthread_mutex_init(&s->adapt_lock, NULL);
	pthread_mutex_init(&s->dead_lock, NULL);
	s->locks_ready = true;
	if (o->block_size < PROTO_BLOCK_MIN || o->block_size > PROTO_BLOCK_MAX)
		return sp_err("block size %u is outside %u..%u", o->block_size, PROTO_BLOCK_MIN,
			      PROTO_BLOCK_MAX);
	if (o->codec.codec >= WIRE_CODEC_COUNT)
		return sp_err("unknown codec %d", (int)o->codec.codec);
	if (proto_digest_init(&s->dg) < 0 || !(s->main.wbuf = malloc(WBUF_SIZE)))
		return sp_err("out of memory");

	struct proto_hello mine, peer;
	uint64_t caps = CAP_HASH_XXH3_128 | CAP_CODEC(WIRE_NONE) | CAP_CODEC(o->codec.codec);
	if (o->codec.adapt)
		caps |= CAP_CODEC(WIRE_LZ4);
	if (o->sync && !o->stream)
		caps |= CAP_SYNC;
	if (!o->stream)
		caps |= CAP_DATA_SIZE | CAP_DIGEST | CAP_TRACK;
	/* Several connections: serve offers them, a client that asked for
	 * them reads the offer. */
	if (!o->stream && (o->offer || o->links))
		caps |= CAP_LINKS;
	proto_hello_init(&mine, ROLE_SENDER, o->stream ? HELLO_STREAM : 0, o->block_size, caps);
	s->mine = mine;
	if (proto_write_hello(t, &mine) < 0)
		return -1;
	if (o->offer && !o->stream) {
		struct links *L = o->offer;
		uint8_t b[PROTO_FRAME_SIZE + PROTO_LINKS_SIZE];
		if (transport_write(t, b, proto_encode_links(b, &L->offer)) < 0)
			return -1;
		L->mine = mine;
		L->me = ROLE_SENDER;
		L->peer = t->name;
		L->timeout_s = t->timeout_s;
		sender_links(s, L);
		if (links_host_start(L) < 0)
			return -1;
	}
	st->bytes_sent = t->bytes_out;
	if (o->stream) {
		/* Nobody answers a stream: assume a receiver like us. */
		proto_hello_init(&peer, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	} else if (proto_read_hello(&s->rd, ROLE_RECEIVER, &peer) < 0) {
		return -1;
	}
	st->bytes_received = s->rd.bytes;
	if (proto_negotiate(&s->s, t->name, ROLE_SENDER, &mine, &peer) < 0)
		return -1;
	if (!proto_codec_allowed(&s->s, o->codec.codec))
		return sp_err("%s: the remote sparsync cannot decompress %s; use --compress none",
			      t->name, codec_name(o->codec.codec));
	s->cover = s->s.caps & CAP_DIGEST;
	/* Serve offers several connections right after its hello. */
	if (!o->offer && (s->s.caps & CAP_LINKS)) {
		struct proto_rec r;
		if (proto_read(&s->rd, &r) < 0)
			return -1;
		if (r.type == REC_ERROR)
			return proto_peer_error(&s->s, &r);
		if (r.type != REC_LINKS)
			return sp_err("%s: expected the LINKS record, got type %u", t->name, r.type);
		s->offer = r.u.links;
		s->offered = true;
	}
	/* A stream (an archive) and a dry run (whose count must match a real
	 * run's) have no link to follow: they keep where auto starts. */
	struct codec_choice ch = o->codec;
	if (o->stream || o->dry_run)
		ch.adapt = false;
	adapt_init(&s->ad, &ch, proto_codec_allowed(&s->s, WIRE_LZ4));
	int rc = s->s.caps & CAP_SYNC ? read_hash_list(s) : 0;
	char label[16], cname[32];
	snprintf(cname, sizeof cname, "%s%s", ch.adapt ? "auto, from " : "",
		 codec_label(&ch, label, sizeof label));
	if (rc == 0)
		sp_info("%s: %s; codec %s", t->name,
			s->syncing ? "sync: only units that differ from the receiver's hash list are sent"
			: o->stream ? "stream" : "new copy: the receiver holds nothing yet", cname);
	return rc;
}

int sender_begin(struct sender *s, struct image *src)
{
	s->src = src;
	s->src_read0 = src->bytes_read;
	struct proto_image im = {
		.size = src->size,
		.block_size = s->o.block_size,
		.format = (uint8_t)src->format,
	};
	if (im.size > PROTO_SIZE_MAX)
		return sp_err("%s: virtual size is beyond the protocol's limit", src->path);
	/* The receiver checks its free space against it: a walk of the
	 * allocation map, no data read. */
	if (s->s.caps & CAP_DATA_SIZE) {
		if (image_data_bytes(src, &im.data) < 0)
			return -1;
		im.has_data = true;
	}
	s->s.image = im;
	s->s.have_image = true;
	__atomic_store_n(&s->ad.writers, 1 + __atomic_load_n(&s->nlanes, __ATOMIC_ACQUIRE),
			 __ATOMIC_RELAXED);
	proto_digest_image(&s->dg, &im);
	if (s->syncing)
		sync_filter_init(&s->filter, &s->base, &s->table, src, s->cover, s->base.stats);
	uint8_t b[PROTO_FRAME_SIZE + PROTO_IMAGE_SIZE_DATA];
	size_t n = proto_encode_image(b, &im);
	if (out(s, b, n) < 0)
		return -1;
	if (!s->track_send)
		return 0;
	struct proto_track tr = { .flags = 0 };
	memcpy(tr.id, s->track_send, PROTO_TRACK_ID_SIZE);
	uint8_t tb[PROTO_FRAME_SIZE + PROTO_TRACK_SIZE];
	return out(s, tb, proto_encode_track(tb, &tr));
}

int sender_use_bitmap(struct sender *s, struct image *src, const char *name,
		      struct change_map *map, struct copy_opts *co)
{
	if (!s->syncing)
		return sp_err("--bitmap %s: the destination is new (or a stream): it must already "
			      "hold %s as it was when the bitmap was started", name, src->path);
	if (image_dirty_bitmap(src, name, map) < 0)
		return -1;
	co->changed = map;
	co->changed_round = s->table.unit;
	return 0;
}

int sender_track(struct sender *s, struct image *src, struct track *t, struct copy_opts *co)
{
	if (!(s->s.caps & CAP_TRACK) || !(s->s.caps & CAP_SYNC))
		return sp_err("%s: the remote sparsync cannot record --track ids; update it", s->s.peer);
	const uint8_t *dest_id = s->syncing && s->table.has_track_id ? s->table.track.id : NULL;
	if (track_begin(t, src, dest_id, s->table.track.flags & TRACK_IN_STEP) < 0)
		return -1;
	s->base.stats->track = t->how;
	track_log(t);
	if (t->use) {
		co->changed = &t->map;
		co->changed_round = s->table.unit;
	}
	s->track_send = t->id;
	return 0;
}

struct sink *sender_sink(struct sender *s)
{
	return s->syncing ? &s->filter.base : &s->base;
}

int sender_abort(struct sender *s)
{
	if (s->peer_failed)
		return PROTO_PEER_FAILED;
	if (!__atomic_load_n(&s->dead, __ATOMIC_ACQUIRE) && s->main.wbuf) {
		char saved[1024];
		snprintf(saved, sizeof saved, "%s", sp_errmsg());
		/* What was queued goes first, so the reader sees whole records. */
		if (flush_wbuf(s) < 0)
			return s->peer_failed ? PROTO_PEER_FAILED : sp_err("%s", saved);
		/* Only a peer that said hello reads (and shows) our ERROR. */
		if (proto_send_error(s->t, saved) == 0 && s->s.caps)
			return PROTO_ERROR_SENT;
	}
	return -1;
}

void sender_free(struct sender *s)
{
	while (s->idle) {
		struct send_scratch *w = s->idle;
		s->idle = w->next;
		codec_ctx_free(w->cc);
		free(w->cbuf);
		free(w->ubuf);
		free(w->pbuf);
		free(w);
	}
	sync_filter_free(&s->filter);
	sync_table_free(&s->table);
	proto_reader_free(&s->rd);
	proto_digest_free(&s->dg);
	free(s->main.wbuf);
	s->main.wbuf = NULL;
	if (s->links)
		links_stop(s->links); /* nothing may join a sender that is gone */
	for (unsigned i = 0; i < s->nlanes; i++) {
		struct send_lane *l = s->lanes[i];
		free(l->wbuf);
		proto_digest_free(&l->dg);
		pthread_mutex_destroy(&l->lock);
		free(l);
	}
	s->nlanes = 0;
	if (s->locks_ready) {
		pthread_mutex_destroy(&s->main.lock);
		pthread_mutex_destroy(&s->pool_lock);
		pthread_mutex_destroy(&s->adapt_lock);
		pthread_mutex_destroy(&s->dead_lock);
		s->locks_ready = false;
	}
}

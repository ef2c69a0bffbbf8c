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

/* ---- output, all with s->lock held ---- */

/* A write to the peer failed. Over ssh/-e the receiver usually stopped on
 * purpose and said why in an ERROR record: prefer its reason. Every later
 * call fails with the same message. */
static int wire_failed(struct sender *s)
{
	if (!s->dead) {
		s->dead = true;
		char saved[1024];
		snprintf(saved, sizeof saved, "%s", sp_errmsg());
		struct proto_rec r;
		if (!s->o.stream && s->o.read_peer_error && proto_read(&s->rd, &r) == 0 &&
		    r.type == REC_ERROR) {
			s->peer_failed = true;
			proto_peer_error(&s->s, &r);
		} else {
			sp_err("%s", saved);
		}
		snprintf(s->deadmsg, sizeof s->deadmsg, "%s", sp_errmsg());
	}
	return sp_err("%s", s->deadmsg);
}

static int raw_write(struct sender *s, const void *p, size_t n)
{
	if (s->dead)
		return sp_err("%s", s->deadmsg);
	uint64_t t0 = s->ad.on ? adapt_now_ns() : 0;
	if (transport_write(s->t, p, n) < 0)
		return wire_failed(s);
	if (s->ad.on)
		adapt_write(&s->ad, adapt_now_ns() - t0);
	__atomic_store_n(&s->base.stats->bytes_sent, s->t->bytes_out, __ATOMIC_RELAXED);
	return 0;
}

static int flush_wbuf(struct sender *s)
{
	size_t n = s->wlen;
	s->wlen = 0;
	return n ? raw_write(s, s->wbuf, n) : 0;
}

static int out(struct sender *s, const void *p, size_t n)
{
	if (s->wlen + n <= WBUF_SIZE) {
		memcpy(s->wbuf + s->wlen, p, n);
		s->wlen += n;
		return 0;
	}
	if (flush_wbuf(s) < 0)
		return -1;
	if (n < WBUF_SIZE)
		return out(s, p, n);
	return raw_write(s, p, n);
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
	pthread_mutex_lock(&s->lock);
	uint64_t t2 = s->ad.on ? adapt_now_ns() : 0;
	adapt_block(&s->ad, rung, len, j.rec.clen, t1 - t0, t2 - t1);
	if (s->o.dry_run) {
		/* What a real run would put on the wire, in the same records. */
		rc = flush_zero(s);
		s->dry_wire += j.wire_len;
		s->dry_data += len;
	} else if (flush_zero(s) < 0 || out(s, j.cbuf, j.wire_len) < 0) {
		rc = -1;
	} else {
		proto_digest_data(&s->dg, off, j.rec.length, &j.rec.hash);
		s->end.data_bytes += len;
		s->end.data_records++;
		adapt_tick(&s->ad);
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* A ZERO range to send, merged with the pending one when adjacent. */
static int queue_zero(struct sender *s, uint64_t off, uint64_t len)
{
	int rc = 0;
	pthread_mutex_lock(&s->lock);
	if (s->dead) {
		rc = sp_err("%s", s->deadmsg);
	} else if (s->zero_len && s->zero_off + s->zero_len == off) {
		s->zero_len += len;
	} else {
		rc = flush_zero(s);
		s->zero_off = off;
		s->zero_len = len;
	}
	pthread_mutex_unlock(&s->lock);
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

/* END, then (over ssh/-e) wait for the receiver to say it flushed and
 * renamed: only then is the copy done. Called once the workers are done. */
static int send_finish(struct sink *base)
{
	struct sender *s = (struct sender *)base;
	if (flush_zero(s) < 0)
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
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->pool_lock, NULL);
	s->locks_ready = true;
	if (o->block_size < PROTO_BLOCK_MIN || o->block_size > PROTO_BLOCK_MAX)
		return sp_err("block size %u is outside %u..%u", o->block_size, PROTO_BLOCK_MIN,
			      PROTO_BLOCK_MAX);
	if (o->codec.codec >= WIRE_CODEC_COUNT)
		return sp_err("unknown codec %d", (int)o->codec.codec);
	if (proto_digest_init(&s->dg) < 0 || !(s->wbuf = malloc(WBUF_SIZE)))
		return sp_err("out of memory");

	struct proto_hello mine, peer;
	uint64_t caps = CAP_HASH_XXH3_128 | CAP_CODEC(WIRE_NONE) | CAP_CODEC(o->codec.codec);
	if (o->codec.adapt)
		caps |= CAP_CODEC(WIRE_LZ4);
	if (o->sync && !o->stream)
		caps |= CAP_SYNC;
	if (!o->stream)
		caps |= CAP_DATA_SIZE | CAP_DIGEST | CAP_TRACK;
	proto_hello_init(&mine, ROLE_SENDER, o->stream ? HELLO_STREAM : 0, o->block_size, caps);
	if (proto_write_hello(t, &mine) < 0)
		return -1;
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
	if (!s->dead && s->wbuf) {
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
	free(s->wbuf);
	s->wbuf = NULL;
	if (s->locks_ready) {
		pthread_mutex_destroy(&s->lock);
		pthread_mutex_destroy(&s->pool_lock);
		s->locks_ready = false;
	}
}

#include "receive_links.h"

#include "../transport/transport.h"
#include "codec.h"
#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rx_link {
	struct rx_links *R;
	struct link *l;
	pthread_t thr;
	bool started;
	struct proto_session s;
	struct proto_reader rd;
	struct proto_digest dg;
	struct codec_ctx *cc;
	uint8_t *out;
	struct proto_end seen;
	struct hash128 digest;  /* of its records, once its END checked out */
	bool ended;
	bool dropped;           /* closed before its first record: never used */
};

/* The first failure stops everything: the sender learns why on the first
 * connection (where it looks when a write fails), then every connection
 * is cut, so that the first connection's reader and the other links'
 * threads stop at once and the sender's writes fail. The ERROR goes out
 * only where another thread may write while the reader reads (serve's
 * pipes): a libssh2 session is one thread's at a time, and there the
 * sender learns of it as its connections end (the user, on this side,
 * gets the link's message). */
static void fail(struct rx_links *R, const char *msg)
{
	pthread_mutex_lock(&R->lock);
	bool first = !__atomic_load_n(&R->failed, __ATOMIC_ACQUIRE);
	if (first) {
		snprintf(R->msg, sizeof R->msg, "%s", msg);
		__atomic_store_n(&R->failed, 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&R->lock);
	if (!first)
		return;
	if (R->answer && R->first->rw_threads) {
		pthread_mutex_lock(R->first_write);
		R->told = proto_send_error(R->first, msg) == 0;
		pthread_mutex_unlock(R->first_write);
	}
	links_cut(R->L);
	transport_cut(R->first);
}

void rx_progress_add(struct rx_progress *p, uint64_t off_end, uint64_t data)
{
	uint64_t total = __atomic_add_fetch(&p->done, data, __ATOMIC_RELAXED);
	if (!p->bar->on || (p->by_data && !data))
		return;
	if (p->lock)
		pthread_mutex_lock(p->lock);
	progress_update(p->bar, p->by_data ? total : off_end, p->st);
	if (p->lock)
		pthread_mutex_unlock(p->lock);
}

int rx_apply(const struct proto_session *s, struct codec_ctx *cc, uint8_t *out, struct sink *sink,
	     struct proto_digest *dg, struct proto_end *seen, const struct proto_rec *rec,
	     uint64_t *off_end, uint64_t *data)
{
	if (rec->type == REC_DATA) {
		const struct proto_data *d = &rec->u.data;
		const uint8_t *plain;
		if (proto_data_unpack(s, d, cc, out, &plain) < 0 ||
		    sink->ops->data(sink, d->offset, plain, d->length) < 0)
			return -1;
		proto_digest_data(dg, d->offset, d->length, &d->hash);
		seen->data_bytes += d->length;
		seen->data_records++;
		*off_end = d->offset + d->length;
		*data = d->length;
		return 0;
	}
	const struct proto_zero *z = &rec->u.zero;
	if (sink->ops->zero(sink, z->offset, z->length) < 0)
		return -1;
	proto_digest_zero(dg, z->offset, z->length);
	seen->zero_bytes += z->length;
	*off_end = z->offset + z->length;
	*data = 0;
	return 0;
}

static int end_check(struct rx_link *x, const struct proto_end *e)
{
	proto_digest_final(&x->dg, &x->digest);
	if (e->data_bytes != x->seen.data_bytes || e->data_records != x->seen.data_records ||
	    e->zero_bytes != x->seen.zero_bytes)
		return sp_err("%s: its END record counts %llu data bytes in %llu records and %llu "
			      "zero bytes, but %llu, %llu and %llu arrived", x->s.peer,
			      (unsigned long long)e->data_bytes, (unsigned long long)e->data_records,
			      (unsigned long long)e->zero_bytes, (unsigned long long)x->seen.data_bytes,
			      (unsigned long long)x->seen.data_records,
			      (unsigned long long)x->seen.zero_bytes);
	if (!hash128_equal(&e->digest, &x->digest))
		return sp_err("%s: stream digest mismatch (records lost, altered or reordered)",
			      x->s.peer);
	x->ended = true;
	return 0;
}

static int apply_link(struct rx_link *x)
{
	struct sink *sink = x->R->sink;
	struct proto_rec rec;
	for (;;) {
		if (__atomic_load_n(&x->R->failed, __ATOMIC_ACQUIRE))
			return sp_err("%s: stopped", x->s.peer);
		if (proto_read(&x->rd, &rec) < 0) {
			/* The client gave up on this link before using it (the copy
			 * ended first): nothing of it counts. Had the sender counted
			 * it, the END digest would not match. */
			if (x->rd.bytes == 0 && !__atomic_load_n(&x->R->failed, __ATOMIC_ACQUIRE)) {
				x->dropped = true;
				sp_err_clear();
				return 0;
			}
			return -1;
		}
		switch (rec.type) {
		case REC_DATA:
		case REC_ZERO: {
			uint64_t off_end, data;
			if (rx_apply(&x->s, x->cc, x->out, sink, &x->dg, &x->seen, &rec, &off_end, &data) < 0)
				return -1;
			rx_progress_add(x->R->prog, off_end, data);
			break;
		}
		case REC_END:
			return end_check(x, &rec.u.end);
		case REC_ERROR:
			return proto_peer_error(&x->s, &rec);
		default:
			return sp_err("%s: unexpected record type %u on a further connection",
				      x->s.peer, rec.type);
		}
	}
}

static void *link_thread(void *arg)
{
	struct rx_link *x = arg;
	if (apply_link(x) < 0)
		fail(x->R, sp_errmsg());
	return NULL;
}

/* With R->lock held. */
static int start(struct rx_links *R, struct rx_link *x)
{
	x->s = x->l->s;
	x->s.have_image = true;
	x->s.image = R->session.image;
	proto_reader_init(&x->rd, x->l->t, &x->s);
	if (proto_digest_init(&x->dg) < 0 || !(x->cc = codec_ctx_new()) ||
	    !(x->out = malloc(x->s.image.block_size)))
		return sp_err("out of memory");
	proto_digest_link_start(&x->dg, x->l->index);
	if (pthread_create(&x->thr, NULL, link_thread, x) != 0)
		return sp_err("cannot start a thread for connection %u", x->l->index + 1);
	x->started = true;
	return 0;
}

static int add(void *owner, struct link *l)
{
	struct rx_links *R = owner;
	pthread_mutex_lock(&R->lock);
	int rc = -1;
	struct rx_link *x = NULL;
	if (!R->closed && !__atomic_load_n(&R->failed, __ATOMIC_ACQUIRE) && R->n < PROTO_LINKS_MAX &&
	    (x = calloc(1, sizeof *x))) {
		x->R = R;
		x->l = l;
		R->x[R->n++] = x;
		rc = R->ready ? start(R, x) : 0;
	}
	pthread_mutex_unlock(&R->lock);
	return rc;
}

void rx_links_init(struct rx_links *R, struct links *L, struct sp_stats *st,
		   struct transport *first, bool answer, pthread_mutex_t *first_write)
{
	memset(R, 0, sizeof *R);
	R->L = L;
	R->st = st;
	R->first = first;
	R->answer = answer;
	R->first_write = first_write;
	pthread_mutex_init(&R->lock, NULL);
	L->add = add;
	L->owner = R;
}

int rx_links_ready(struct rx_links *R, struct sink *sink, const struct proto_session *s,
		   struct rx_progress *prog)
{
	pthread_mutex_lock(&R->lock);
	R->sink = sink;
	R->session = *s;
	R->prog = prog;
	R->ready = true;
	int rc = 0;
	for (unsigned i = 0; i < R->n && rc == 0; i++)
		rc = start(R, R->x[i]);
	pthread_mutex_unlock(&R->lock);
	return rc;
}

static void join_all(struct rx_links *R)
{
	for (unsigned i = 0; i < R->n; i++) {
		if (R->x[i]->started)
			pthread_join(R->x[i]->thr, NULL);
		R->x[i]->started = false;
	}
}

int rx_links_finish(struct rx_links *R, struct proto_digest *dg, struct proto_end *seen)
{
	pthread_mutex_lock(&R->lock);
	R->closed = true;
	pthread_mutex_unlock(&R->lock);
	links_stop(R->L);
	join_all(R);
	if (rx_links_failed(R))
		return sp_err("%s", R->msg);
	/* In index order, as the sender folded them. */
	for (unsigned idx = 1; idx < PROTO_LINKS_MAX; idx++) {
		for (unsigned i = 0; i < R->n; i++) {
			struct rx_link *x = R->x[i];
			if (x->l->index != idx || x->dropped)
				continue;
			if (!x->ended)
				return sp_err("%s: it ended before its END record", x->s.peer);
			proto_digest_link(dg, idx, &x->digest);
			seen->data_bytes += x->seen.data_bytes;
			seen->data_records += x->seen.data_records;
			seen->zero_bytes += x->seen.zero_bytes;
		}
	}
	return 0;
}

bool rx_links_failed(struct rx_links *R)
{
	return __atomic_load_n(&R->failed, __ATOMIC_ACQUIRE);
}

const char *rx_links_message(struct rx_links *R)
{
	return R->msg;
}

void rx_links_abort(struct rx_links *R)
{
	pthread_mutex_lock(&R->lock);
	R->closed = true;
	bool quiet = __atomic_exchange_n(&R->failed, 1, __ATOMIC_ACQ_REL);
	if (!quiet)
		snprintf(R->msg, sizeof R->msg, "stopped");
	pthread_mutex_unlock(&R->lock);
	links_stop(R->L);
	links_cut(R->L);
	join_all(R);
}

uint64_t rx_links_bytes(struct rx_links *R)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < R->n; i++)
		n += R->x[i]->rd.bytes;
	return n;
}

void rx_links_free(struct rx_links *R)
{
	join_all(R);
	for (unsigned i = 0; i < R->n; i++) {
		struct rx_link *x = R->x[i];
		proto_reader_free(&x->rd);
		proto_digest_free(&x->dg);
		codec_ctx_free(x->cc);
		free(x->out);
		free(x);
	}
	R->n = 0;
	pthread_mutex_destroy(&R->lock);
}

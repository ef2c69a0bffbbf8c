#include "receive.h"

#include "backing_sink.h"
#include "../transport/transport.h"
#include "codec.h"
#include "dest.h"
#include "error.h"
#include "protocol.h"
#include "sink.h"
#include "sync_hash.h"
#include "sync_list.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* How DST is written. */
enum dest_mode {
	DEST_NEW,      /* temporary file + rename */
	DEST_INPLACE,  /* the existing image, updated where it differs */
	DEST_OVERLAY,  /* temporary qcow2 overlay of a backing image + rename */
};

struct receiver {
	struct transport *t;
	const struct receive_opts *o;
	struct sp_stats *st;
	struct proto_session s;
	struct proto_reader rd;
	struct proto_digest dg;
	struct codec_ctx *cc;
	uint8_t *out;          /* one decompressed block */
	enum dest_mode mode;
	struct dest d;         /* DEST_NEW, DEST_OVERLAY */
	bool have_dest;
	struct image *inplace; /* DEST_INPLACE */
	struct image *backing; /* DEST_OVERLAY: the image the overlay is based on */
	enum image_format existing; /* DST's format when it exists, else FMT_AUTO */
	struct proto_hello mine;
	bool answer;           /* the sender reads our replies */
	bool peer_failed;
	struct proto_end seen; /* what arrived, to check against END */
};

/* Where DST stands before we write: absent, or an image file we may
 * replace or update. Refuse directories and devices. */
static int check_dst(const char *path, enum image_format *existing)
{
	struct stat sb;
	*existing = FMT_AUTO;
	if (stat(path, &sb) < 0) {
		if (errno == ENOENT)
			return 0;
		return sp_err("%s: %s", path, strerror(errno));
	}
	if (S_ISDIR(sb.st_mode))
		return sp_err("%s: is a directory (give the destination file name)", path);
	if (!S_ISREG(sb.st_mode))
		return sp_err("%s: not a regular file", path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		*existing = image_detect_fd(fd);
		close(fd);
	}
	return 0;
}

static int next(struct receiver *r, struct proto_rec *rec)
{
	if (proto_read(&r->rd, rec) < 0)
		return -1;
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
	uint64_t caps = CAP_SUPPORTED & ~CAP_SYNC;
	if (r->o->sync)
		caps |= CAP_SYNC;
	proto_hello_init(&mine, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, caps);
	r->mine = mine;
	if (r->o->stream)
		return 0;
	if (proto_write_hello(r->t, &mine) < 0)
		return -1;
	r->st->bytes_sent = r->t->bytes_out;
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

/* The message of a failed open of `shown`'s file at `real`, naming shown. */
static void rename_in_msg(const char *real, const char *shown, const char *prefix)
{
	char msg[1024];
	const char *m = sp_errmsg();
	size_t n = strlen(real);
	if (strncmp(m, real, n) == 0 && m[n] == ':')
		m += n + (m[n + 1] == ' ' ? 2 : 1);
	snprintf(msg, sizeof msg, "%s", m);
	sp_err("%s%s: %s", prefix, shown, msg);
}

/* The backing file the options name, for a new qcow2 overlay. */
static int open_backing(struct receiver *r)
{
	const struct receive_opts *o = r->o;
	const char *path = o->dst_path;
	if (o->out_fmt == FMT_RAW)
		return sp_err("%s: --backing writes a qcow2 overlay; it cannot be -O raw", path);
	char *bpath = backing_resolve(path, o->create->backing);
	if (!bpath)
		return sp_err("%s: out of memory", path);
	r->backing = image_open(bpath, FMT_AUTO, IMAGE_RDONLY);
	if (!r->backing) {
		rename_in_msg(bpath, o->create->backing, "backing file ");
		free(bpath);
		return -1;
	}
	free(bpath);
	struct stat bs, ds;
	if (stat(path, &ds) == 0 && fstat(r->backing->fd, &bs) == 0 && bs.st_dev == ds.st_dev &&
	    bs.st_ino == ds.st_ino)
		return sp_err("%s: the destination is its own backing file", path);
	r->mode = DEST_OVERLAY;
	return 0;
}

/* Options that ask for a layout an in-place update cannot give. */
static bool wants_new_layout(const struct image_create_opts *c, const struct image *dst)
{
	if (!c || dst->format != FMT_QCOW2)
		return false;
	if (c->compress != CODEC_NONE)
		return true;
	return c->cluster_size && c->cluster_size != dst->granularity;
}

/* The existing DST opened for update, or NULL when it must be rewritten
 * (a qcow2 layout we cannot update in place, options asking for another
 * layout): then the copy goes to a new file, as with --whole. */
static struct image *open_inplace(struct receiver *r, enum image_format fmt)
{
	struct image *img = image_open(r->o->dst_path, fmt, IMAGE_RDWR);
	if (!img)
		return NULL;
	if (wants_new_layout(r->o->create, img)) {
		image_close(img);
		return NULL;
	}
	return img;
}

/* Decide how DST is written, before the sender's IMAGE is known (the hash
 * list goes out first): an existing image of the output format is updated
 * in place when syncing (the source's format only matters for a new DST). */
static int choose_dest(struct receiver *r, bool sync)
{
	const struct receive_opts *o = r->o;
	const char *path = o->dst_path;
	if (check_dst(path, &r->existing) < 0)
		return -1;
	if (o->create && o->create->backing)
		return open_backing(r);
	r->mode = DEST_NEW;
	enum image_format fmt = image_output_format(o->out_fmt, path, r->existing, FMT_AUTO);
	if (sync && !o->whole && r->existing != FMT_AUTO && r->existing == fmt) {
		r->inplace = open_inplace(r, fmt);
		if (r->inplace)
			r->mode = DEST_INPLACE;
		else
			sp_err_clear(); /* not updatable in place: rewrite it whole */
	}
	return 0;
}

/* With IMAGE known: size the in-place image, or create the new file. */
static int open_dest(struct receiver *r, const struct proto_image *im)
{
	const struct receive_opts *o = r->o;
	const char *path = o->dst_path;
	if (r->mode == DEST_INPLACE)
		return r->inplace->size != im->size ? image_resize(r->inplace, im->size) : 0;
	if (r->mode == DEST_OVERLAY) {
		struct image_create_opts co = *o->create;
		co.backing_format = r->backing->format;
		if (dest_create(&r->d, path, FMT_QCOW2, im->size, &co) < 0)
			return -1;
		r->have_dest = true;
		return 0;
	}
	enum image_format fmt = image_output_format(o->out_fmt, path, r->existing,
						    (enum image_format)im->format);
	if (dest_create(&r->d, path, fmt, im->size, o->create) < 0)
		return -1;
	r->have_dest = true;
	return 0;
}

/* The hash list: what DST (or the backing image of a new overlay) already
 * holds, or "fresh" for a new DST. */
static int send_hash_list(struct receiver *r)
{
	struct image *img = r->mode == DEST_INPLACE ? r->inplace
			  : r->mode == DEST_OVERLAY ? r->backing : NULL;
	if (!img)
		return sync_list_write_fresh(r->t, 0);
	/* Units line up with the clusters DST allocates. */
	uint32_t min_unit = SYNC_UNIT_RAW;
	if (r->mode == DEST_OVERLAY)
		min_unit = r->o->create->cluster_size ? r->o->create->cluster_size : 65536;
	else if (img->format == FMT_QCOW2)
		min_unit = img->granularity;
	uint32_t unit;
	if (sync_unit_for(img, min_unit, &unit) < 0)
		return -1;
	return sync_list_write(r->t, img, unit, r->o->workers);
}

static int apply(struct receiver *r, struct sink *sink, struct progress *prog)
{
	struct proto_rec rec;
	for (;;) {
		if (next(r, &rec) < 0)
			return -1;
		switch (rec.type) {
		case REC_DATA: {
			const struct proto_data *d = &rec.u.data;
			const uint8_t *plain;
			if (proto_data_unpack(&r->s, d, r->cc, r->out, &plain) < 0)
				return -1;
			if (sink->ops->data(sink, d->offset, plain, d->length) < 0)
				return -1;
			proto_digest_data(&r->dg, d->offset, d->length, &d->hash);
			r->seen.data_bytes += d->length;
			r->seen.data_records++;
			progress_update(prog, d->offset + d->length, r->st);
			break;
		}
		case REC_ZERO: {
			const struct proto_zero *z = &rec.u.zero;
			if (sink->ops->zero(sink, z->offset, z->length) < 0)
				return -1;
			proto_digest_zero(&r->dg, z->offset, z->length);
			r->seen.zero_bytes += z->length;
			progress_update(prog, z->offset + z->length, r->st);
			break;
		}
		case REC_END: {
			const struct proto_end *e = &rec.u.end;
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
		default:
			return sp_err("%s: unexpected record type %u", r->s.peer, rec.type);
		}
	}
}

/* Receive the records into DST through the sink its mode needs. */
static int receive_body(struct receiver *r, struct progress *prog)
{
	struct image_sink isink;
	struct backing_sink bsink;
	struct sink *sink;
	if (r->mode == DEST_OVERLAY) {
		backing_sink_init(&bsink, r->d.img, r->backing, r->st);
		sink = &bsink.base;
	} else if (r->mode == DEST_INPLACE) {
		/* The sender sends only what differs: write it as it comes. */
		image_sink_init(&isink, r->inplace, r->st, 0, 0);
		sink = &isink.base;
	} else {
		image_sink_init(&isink, r->d.img, r->st, 1, 0);
		sink = &isink.base;
	}
	progress_init(prog, r->o->progress, r->s.image.size);
	int rc = apply(r, sink, prog);
	if (rc == 0)
		rc = sink->ops->finish(sink);
	progress_end(prog);
	return rc;
}

/* Make DST final: rename a new file into place, or close the updated one. */
static int commit(struct receiver *r)
{
	if (r->mode == DEST_INPLACE) {
		struct image *img = r->inplace;
		r->inplace = NULL;
		int rc = image_flush(img);
		if (image_close(img) < 0)
			rc = -1;
		return rc;
	}
	r->have_dest = false;
	return dest_commit(&r->d);
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
	proto_reader_init(&r.rd, t, &r.s);
	double t0 = now_seconds();
	struct progress prog = { 0 };

	bool sync = o->sync && !o->stream;
	int rc = write_hello(&r);
	if (rc == 0 && sync) {
		rc = choose_dest(&r, true);
		if (rc == 0)
			rc = send_hash_list(&r);
		st->bytes_sent = t->bytes_out;
	}
	if (rc == 0)
		rc = read_hello(&r);
	if (rc == 0 && !sync)
		rc = choose_dest(&r, false);
	struct proto_rec rec;
	if (rc == 0)
		rc = next(&r, &rec);
	if (rc == 0 && rec.type != REC_IMAGE)
		rc = sp_err("%s: expected the IMAGE record, got type %u", r.s.peer, rec.type);
	if (rc == 0) {
		st->bytes_virtual = rec.u.image.size;
		rc = open_dest(&r, &rec.u.image);
	}
	if (rc == 0 && (proto_digest_init(&r.dg) < 0 || !(r.cc = codec_ctx_new()) ||
			!(r.out = malloc(r.s.image.block_size))))
		rc = sp_err("%s: out of memory", o->dst_path);
	if (rc == 0)
		proto_digest_image(&r.dg, &r.s.image);
	if (rc == 0)
		rc = receive_body(&r, &prog);
	if (rc == 0)
		rc = commit(&r);
	if (rc == 0 && r.answer) {
		struct proto_ack a = {
			.bytes_written = st->bytes_written,
			.bytes_received = r.rd.bytes,
			.blocks_changed = st->blocks_changed,
			.bytes_unchanged = st->bytes_unchanged,
		};
		uint8_t b[PROTO_FRAME_SIZE + PROTO_ACK_SIZE];
		size_t n = proto_encode_ack(b, &a);
		rc = transport_write(t, b, n);
	}
	if (rc < 0) {
		char saved[1024];
		snprintf(saved, sizeof saved, "%s", sp_errmsg());
		if (r.have_dest)
			dest_abort(&r.d);
		/* Updated in place: what arrived stays, in a consistent image. */
		if (r.inplace)
			image_close(r.inplace);
		r.inplace = NULL;
		sp_err("%s", saved);
		if (r.answer && !r.peer_failed)
			proto_send_error(t, sp_errmsg());
	}
	image_close(r.backing);
	st->bytes_received = r.rd.bytes;
	st->bytes_sent = t->bytes_out;
	st->seconds = now_seconds() - t0;
	proto_reader_free(&r.rd);
	proto_digest_free(&r.dg);
	codec_ctx_free(r.cc);
	free(r.out);
	if (rc < 0)
		return r.peer_failed ? PROTO_PEER_FAILED : -1;
	return 0;
}

int hashes_serve(struct transport *t, const char *path, enum image_format fmt, uint32_t unit,
		 unsigned workers)
{
	/* Hello, then the list at once (nothing to wait for: the client asked
	 * for it by running us); an ERROR record instead when we cannot. */
	struct proto_hello mine;
	proto_hello_init(&mine, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	if (proto_write_hello(t, &mine) < 0)
		return -1;
	struct image *img = NULL;
	int rc = 0;
	if (unit < SYNC_UNIT_MIN || unit > SYNC_UNIT_MAX || (unit & (unit - 1)))
		rc = sp_err("hash unit %u is not a power of two from %u to %u", unit, SYNC_UNIT_MIN,
			    SYNC_UNIT_MAX);
	if (rc == 0 && !(img = image_open(path, fmt, IMAGE_RDONLY)))
		rc = -1;
	if (rc == 0)
		rc = sync_list_write(t, img, unit, workers);
	if (rc < 0)
		proto_send_error(t, sp_errmsg());
	image_close(img);
	return rc;
}

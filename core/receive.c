#include "receive.h"

#include "../transport/transport.h"
#include "codec.h"
#include "dest.h"
#include "error.h"
#include "protocol.h"
#include "sink.h"

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
	struct dest d;
	bool have_dest;
	bool answer;           /* the sender reads our replies */
	bool peer_failed;
	struct proto_end seen; /* what arrived, to check against END */
};

/* Where DST stands before we write: absent, or an image file we may
 * replace. Refuse directories and devices (issue 6 may add devices). */
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

static int handshake(struct receiver *r)
{
	struct proto_hello mine, peer;
	proto_hello_init(&mine, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	if (!r->o->stream) {
		if (proto_write_hello(r->t, &mine) < 0)
			return -1;
		r->st->bytes_sent = r->t->bytes_out;
	}
	if (proto_read_hello(&r->rd, ROLE_SENDER, &peer) < 0)
		return -1;
	if (proto_negotiate(&r->s, r->t->name, ROLE_RECEIVER, &peer, &mine) < 0)
		return -1;
	/* A stream piped into serve has nobody reading our answers. */
	r->answer = !r->o->stream && !r->s.peer_stream;
	return 0;
}

static int open_dest(struct receiver *r, const struct proto_image *im)
{
	const char *path = r->o->dst_path;
	enum image_format existing;
	if (check_dst(path, &existing) < 0)
		return -1;
	enum image_format fmt = image_output_format(r->o->out_fmt, path, existing,
						    (enum image_format)im->format);
	/* An existing destination is rewritten whole for now; in-place sync
	 * (issue 6) will go here. */
	if (dest_create(&r->d, path, fmt, im->size, r->o->create) < 0)
		return -1;
	r->have_dest = true;
	return 0;
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
			r->st->bytes_read += e->source_bytes_read;
			r->st->bytes_data += r->seen.data_bytes;
			r->st->bytes_zero += r->seen.zero_bytes;
			return 0;
		}
		default:
			return sp_err("%s: unexpected record type %u", r->s.peer, rec.type);
		}
	}
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

	int rc = handshake(&r);
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
	if (rc == 0) {
		struct image_sink sink;
		image_sink_init(&sink, r.d.img, st, 1, 0);
		progress_init(&prog, o->progress, r.s.image.size);
		rc = apply(&r, &sink.base, &prog);
		if (rc == 0)
			rc = sink.base.ops->finish(&sink.base);
		progress_end(&prog);
	}
	if (rc == 0) {
		r.have_dest = false;
		rc = dest_commit(&r.d);
	}
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
		if (r.have_dest)
			dest_abort(&r.d);
		if (r.answer && !r.peer_failed)
			proto_send_error(t, sp_errmsg());
	}
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

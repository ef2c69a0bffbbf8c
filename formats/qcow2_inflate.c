/* Decompressing qcow2 compressed clusters: raw deflate (zlib, no header,
 * 4 KiB window as QEMU writes it) or a zstd frame. The stored bytes run to
 * the end of a 512-byte sector, so input may carry padding after the stream:
 * decompression stops once exactly one cluster has been produced. */
#include "qcow2.h"

#include "../core/error.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

struct qcow2_decoder {
	uint8_t type;
	bool z_ready;
	z_stream z;
	ZSTD_DCtx *zstd;
};

struct qcow2_decoder *qcow2_decoder_new(uint8_t compression_type)
{
	struct qcow2_decoder *d = calloc(1, sizeof *d);
	if (!d) {
		sp_err("out of memory for a decompressor");
		return NULL;
	}
	d->type = compression_type;
	return d;
}

void qcow2_decoder_free(struct qcow2_decoder *d)
{
	if (!d)
		return;
	if (d->z_ready)
		inflateEnd(&d->z);
	ZSTD_freeDCtx(d->zstd);
	free(d);
}

static int inflate_zlib(struct qcow2_decoder *d, const void *in, size_t in_len, void *out,
			size_t out_len, const char *path, uint64_t guest_off)
{
	if (!d->z_ready) {
		memset(&d->z, 0, sizeof d->z);
		if (inflateInit2(&d->z, -12) != Z_OK)
			return sp_err("%s: cannot start the deflate decoder", path);
		d->z_ready = true;
	} else if (inflateReset(&d->z) != Z_OK) {
		return sp_err("%s: cannot reset the deflate decoder", path);
	}
	/* in_len and out_len are at most a few MiB (two clusters). */
	d->z.next_in = (Bytef *)(uintptr_t)in;
	d->z.avail_in = (uInt)in_len;
	d->z.next_out = out;
	d->z.avail_out = (uInt)out_len;
	int ret = inflate(&d->z, Z_FINISH);
	/* Z_BUF_ERROR / Z_OK with a full output: the stream goes on past one
	 * cluster or padding follows; one cluster is all we want. */
	if (d->z.avail_out == 0 && (ret == Z_STREAM_END || ret == Z_BUF_ERROR || ret == Z_OK))
		return 0;
	if (ret == Z_STREAM_END || ret == Z_BUF_ERROR)
		return sp_err("%s: compressed cluster at guest offset %" PRIu64
			      " is truncated (%zu of %zu bytes)", path, guest_off,
			      out_len - d->z.avail_out, out_len);
	return sp_err("%s: compressed cluster at guest offset %" PRIu64 " is corrupt (deflate: %s)",
		      path, guest_off, d->z.msg ? d->z.msg : "error");
}

static int inflate_zstd(struct qcow2_decoder *d, const void *in, size_t in_len, void *out,
			size_t out_len, const char *path, uint64_t guest_off)
{
	if (!d->zstd) {
		if (!(d->zstd = ZSTD_createDCtx()))
			return sp_err("%s: out of memory for the zstd decoder", path);
	} else {
		ZSTD_DCtx_reset(d->zstd, ZSTD_reset_session_only);
	}
	ZSTD_inBuffer ib = { in, in_len, 0 };
	ZSTD_outBuffer ob = { out, out_len, 0 };
	while (ob.pos < ob.size) {
		size_t in0 = ib.pos, out0 = ob.pos;
		size_t r = ZSTD_decompressStream(d->zstd, &ob, &ib);
		if (ZSTD_isError(r))
			return sp_err("%s: compressed cluster at guest offset %" PRIu64
				      " is corrupt (zstd: %s)", path, guest_off, ZSTD_getErrorName(r));
		if (r == 0 || (ib.pos == in0 && ob.pos == out0))
			break; /* frame done, or no progress possible: stop */
	}
	if (ob.pos != ob.size)
		return sp_err("%s: compressed cluster at guest offset %" PRIu64
			      " is truncated (%zu of %zu bytes)", path, guest_off, ob.pos, out_len);
	return 0;
}

int qcow2_decompress(struct qcow2_decoder *d, const void *in, size_t in_len, void *out,
		     size_t out_len, const char *path, uint64_t guest_off)
{
	if (d->type == QCOW2_COMPRESSION_ZSTD)
		return inflate_zstd(d, in, in_len, out, out_len, path, guest_off);
	return inflate_zlib(d, in, in_len, out, out_len, path, guest_off);
}

#include "codec.h"

#include "error.h"

#include <errno.h>
#include <limits.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

/* Blocks are at most 32 MiB, so no honest frame needs a larger window;
 * refusing bigger ones bounds what a hostile stream can make us allocate. */
#define ZSTD_WINDOW_LOG_MAX 25

struct codec_ctx {
	ZSTD_CCtx *zc;
	ZSTD_DCtx *zd;
};

int codec_parse(const char *s, struct codec_choice *out)
{
	memset(out, 0, sizeof *out);
	if (strcmp(s, "none") == 0) {
		out->codec = WIRE_NONE;
		return 0;
	}
	if (strcmp(s, "auto") == 0) {
		out->codec = WIRE_ZSTD;
		out->level = 1;
		out->adapt = true;
		return 0;
	}
	if (strcmp(s, "lz4") == 0) {
		out->codec = WIRE_LZ4;
		return 0;
	}
	if (strncmp(s, "zstd", 4) == 0 && (s[4] == '\0' || s[4] == ':')) {
		out->codec = WIRE_ZSTD;
		out->level = 1;
		if (s[4] == ':') {
			char *end;
			errno = 0;
			long v = strtol(s + 5, &end, 10);
			if (errno || end == s + 5 || *end || v < ZSTD_minCLevel() || v > ZSTD_maxCLevel())
				return sp_err("--compress %s: zstd level must be a number from %d to %d",
					      s, ZSTD_minCLevel(), ZSTD_maxCLevel());
			out->level = (int)v;
		}
		return 0;
	}
	return sp_err("--compress %s: expected auto, zstd[:LEVEL], lz4 or none", s);
}

const char *codec_name(enum wire_codec c)
{
	switch (c) {
	case WIRE_NONE: return "none";
	case WIRE_ZSTD: return "zstd";
	case WIRE_LZ4: return "lz4";
	default: return "unknown";
	}
}

const char *codec_label(const struct codec_choice *ch, char *buf, size_t len)
{
	if (ch->codec == WIRE_ZSTD)
		snprintf(buf, len, "zstd:%d", ch->level);
	else
		snprintf(buf, len, "%s", codec_name(ch->codec));
	return buf;
}

size_t codec_bound(enum wire_codec c, size_t len)
{
	switch (c) {
	case WIRE_NONE: return len;
	case WIRE_ZSTD: return ZSTD_compressBound(len);
	case WIRE_LZ4: return len > LZ4_MAX_INPUT_SIZE ? 0 : (size_t)LZ4_compressBound((int)len);
	default: return 0;
	}
}

struct codec_ctx *codec_ctx_new(void)
{
	struct codec_ctx *c = calloc(1, sizeof *c);
	if (!c)
		sp_err("out of memory");
	return c;
}

void codec_ctx_free(struct codec_ctx *c)
{
	if (!c)
		return;
	ZSTD_freeCCtx(c->zc);
	ZSTD_freeDCtx(c->zd);
	free(c);
}

int codec_compress(struct codec_ctx *c, const struct codec_choice *ch, const void *src,
		   size_t len, void *dst, size_t cap, size_t *out_len)
{
	*out_len = 0;
	switch (ch->codec) {
	case WIRE_NONE:
		if (cap >= len) {
			memcpy(dst, src, len);
			*out_len = len;
		}
		return 0;
	case WIRE_ZSTD: {
		if (!c->zc && !(c->zc = ZSTD_createCCtx()))
			return sp_err("out of memory for the zstd compressor");
		size_t r = ZSTD_compressCCtx(c->zc, dst, cap, src, len, ch->level);
		if (ZSTD_isError(r)) {
			if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
				return 0;
			return sp_err("zstd compression failed: %s", ZSTD_getErrorName(r));
		}
		*out_len = r;
		return 0;
	}
	case WIRE_LZ4: {
		if (len > LZ4_MAX_INPUT_SIZE)
			return sp_err("lz4: block of %zu bytes is too large", len);
		int icap = cap > INT_MAX ? INT_MAX : (int)cap;
		int r = LZ4_compress_default(src, dst, (int)len, icap);
		if (r > 0)
			*out_len = (size_t)r;
		return 0; /* 0 means it did not fit */
	}
	default:
		return sp_err("unknown codec %d", (int)ch->codec);
	}
}

int codec_decompress(struct codec_ctx *c, enum wire_codec codec, const void *src, size_t clen,
		     void *dst, size_t expect)
{
	switch (codec) {
	case WIRE_NONE:
		if (clen != expect)
			return sp_err("declared size %zu but %zu bytes stored", expect, clen);
		memcpy(dst, src, clen);
		return 0;
	case WIRE_ZSTD: {
		if (!c->zd) {
			if (!(c->zd = ZSTD_createDCtx()))
				return sp_err("out of memory for the zstd decompressor");
			ZSTD_DCtx_setParameter(c->zd, ZSTD_d_windowLogMax, ZSTD_WINDOW_LOG_MAX);
		}
		/* One extra byte of room would be needed to see "too long"; zstd
		 * reports dstSize_tooSmall instead, which is the same verdict. */
		size_t r = ZSTD_decompressDCtx(c->zd, dst, expect, src, clen);
		if (ZSTD_isError(r)) {
			if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
				return sp_err("decompressed size exceeds the declared %zu bytes", expect);
			return sp_err("corrupt zstd data: %s", ZSTD_getErrorName(r));
		}
		if (r != expect)
			return sp_err("decompressed size %zu differs from the declared %zu bytes", r, expect);
		return 0;
	}
	case WIRE_LZ4: {
		if (clen > INT_MAX || expect > INT_MAX)
			return sp_err("lz4 block too large");
		int r = LZ4_decompress_safe(src, dst, (int)clen, (int)expect);
		if (r < 0)
			return sp_err("corrupt lz4 data (or larger than the declared %zu bytes)", expect);
		if ((size_t)r != expect)
			return sp_err("decompressed size %d differs from the declared %zu bytes", r, expect);
		return 0;
	}
	default:
		return sp_err("unknown codec %d", (int)codec);
	}
}

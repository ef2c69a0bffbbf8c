/* Wire compression: one small wrapper over libzstd and liblz4 so the
 * protocol code never calls either library directly. A codec_ctx holds the
 * per-thread (de)compression state; one thread uses one context. */
#ifndef SPARSYNC_CODEC_H
#define SPARSYNC_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Values travel on the wire (DATA records): never renumber. */
enum wire_codec { WIRE_NONE = 0, WIRE_ZSTD = 1, WIRE_LZ4 = 2, WIRE_CODEC_COUNT };

struct codec_choice {
	enum wire_codec codec;
	int level; /* zstd level; ignored by the others */
	/* "auto": the level follows the link (core/adapt.h), starting at
	 * zstd 1; codec and level are where it starts. */
	bool adapt;
};

/* "auto", "zstd" (= zstd:1), "zstd:LEVEL", "lz4", "none" -> choice. -1
 * with a message on junk. */
int codec_parse(const char *s, struct codec_choice *out);
const char *codec_name(enum wire_codec c);
/* "zstd:3", "lz4", "none": a choice as -v and --json name it, into buf. */
const char *codec_label(const struct codec_choice *ch, char *buf, size_t len);
/* Largest output the codec may produce for len input bytes; 0 for an
 * unknown codec. */
size_t codec_bound(enum wire_codec c, size_t len);

struct codec_ctx;
struct codec_ctx *codec_ctx_new(void);
void codec_ctx_free(struct codec_ctx *c);

/* Compress len bytes into dst (capacity cap). *out_len gets the size, or 0
 * when the result would not fit in cap (callers pass cap < len to learn
 * "does not shrink" cheaply). -1 only on a library failure. */
int codec_compress(struct codec_ctx *c, const struct codec_choice *ch, const void *src,
		   size_t len, void *dst, size_t cap, size_t *out_len);
/* Decompress exactly `expect` bytes into dst (capacity expect); anything
 * else (corrupt input, a different size) is an error. The message names
 * no file: callers prefix it. */
int codec_decompress(struct codec_ctx *c, enum wire_codec codec, const void *src, size_t clen,
		     void *dst, size_t expect);

#endif

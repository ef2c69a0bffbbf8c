/* Block hashes: XXH3-128 through libxxhash, always handled in its
 * canonical (big-endian) 16-byte form so the bytes on the wire, in hash
 * lists and in memory are the same everywhere. */
#ifndef SPARSYNC_HASH_H
#define SPARSYNC_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HASH_SIZE 16

struct hash128 {
	uint8_t b[HASH_SIZE];
};

void hash128(const void *buf, size_t len, struct hash128 *out);
/* XXH3-64 with a seed: record checksums. */
uint64_t hash64_seeded(const void *buf, size_t len, uint64_t seed);
bool hash128_equal(const struct hash128 *a, const struct hash128 *b);
/* 32 lowercase hex digits + NUL. */
const char *hash128_hex(const struct hash128 *h, char out[2 * HASH_SIZE + 1]);

/* Streaming form, for digests over many records. */
struct hash_stream;
struct hash_stream *hash_stream_new(void); /* NULL + message when out of memory */
void hash_stream_update(struct hash_stream *s, const void *buf, size_t len);
void hash_stream_final(struct hash_stream *s, struct hash128 *out);
void hash_stream_free(struct hash_stream *s);

#endif

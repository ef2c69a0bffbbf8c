#include "hash.h"

#include "error.h"

#include <string.h>
#include <xxhash.h>

void hash128(const void *buf, size_t len, struct hash128 *out)
{
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits(buf, len));
	memcpy(out->b, c.digest, HASH_SIZE);
}

uint64_t hash64_seeded(const void *buf, size_t len, uint64_t seed)
{
	return XXH3_64bits_withSeed(buf, len, seed);
}

bool hash128_equal(const struct hash128 *a, const struct hash128 *b)
{
	return memcmp(a->b, b->b, HASH_SIZE) == 0;
}

const char *hash128_hex(const struct hash128 *h, char out[2 * HASH_SIZE + 1])
{
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < HASH_SIZE; i++) {
		out[2 * i] = hex[h->b[i] >> 4];
		out[2 * i + 1] = hex[h->b[i] & 15];
	}
	out[2 * HASH_SIZE] = '\0';
	return out;
}

struct hash_stream *hash_stream_new(void)
{
	XXH3_state_t *s = XXH3_createState();
	if (!s) {
		sp_err("out of memory");
		return NULL;
	}
	XXH3_128bits_reset(s);
	return (struct hash_stream *)s;
}

void hash_stream_update(struct hash_stream *s, const void *buf, size_t len)
{
	XXH3_128bits_update((XXH3_state_t *)s, buf, len);
}

void hash_stream_final(struct hash_stream *s, struct hash128 *out)
{
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest((XXH3_state_t *)s));
	memcpy(out->b, c.digest, HASH_SIZE);
}

void hash_stream_free(struct hash_stream *s)
{
	if (s)
		XXH3_freeState((XXH3_state_t *)s);
}

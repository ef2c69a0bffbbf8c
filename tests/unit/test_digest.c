/* The unit map and the digest file: round trip, identity, and that no
 * damaged or hostile digest (every byte flipped, every length cut, with
 * and without a correct checksum) crashes or is taken for a valid one
 * when it does not describe the image. */
#include "unit.h"

#include "../../core/digest.h"
#include "../../core/error.h"
#include "../../core/hash.h"
#include "../../core/unit_map.h"
#include "../../formats/image.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MiB (1u << 20)

static void h_of(uint64_t u, struct hash128 *h)
{
	memset(h, 0, sizeof *h);
	memcpy(h->b, &u, sizeof u);
	h->b[15] = 0xA5;
}

static void test_unit_map(void)
{
	struct unit_map m;
	unit_map_init(&m, 10ull << 30, 65536); /* 10 GiB: 163840 units, 40 chunks */
	struct hash128 h, g;
	bool ok = true;
	for (uint64_t u = 0; u < 163840; u += 7) {
		h_of(u, &h);
		ok &= unit_map_set(&m, u, &h) == 0;
	}
	CHECK("map: set across chunks", ok && m.count == (163840 + 6) / 7);
	h_of(700, &h);
	CHECK("map: get", unit_map_get(&m, 700, &g) && hash128_equal(&g, &h));
	CHECK("map: absent unit", !unit_map_get(&m, 701, NULL));
	uint64_t f;
	CHECK("map: next", unit_map_next(&m, 701, &f, &g) && f == 707);
	unit_map_clear_range(&m, 4096, 3 * 4096 + 5);
	CHECK("map: clear range drops whole chunks", !unit_map_next(&m, 4096, &f, NULL) || f >= 3 * 4096 + 5);
	CHECK("map: next after a cleared range", unit_map_next(&m, 4096, &f, NULL) && f == 12299);
	CHECK("map: past the image refused", unit_map_set(&m, 163840, &h) < 0);
	unit_map_resize(&m, 1ull << 30);
	CHECK("map: shrink drops units past the end", !unit_map_next(&m, 16384, &f, NULL));
	uint64_t n = 0;
	for (uint64_t u = 0; unit_map_next(&m, u, &f, NULL); u = f + 1)
		n++;
	CHECK("map: count follows", n == m.count);
	unit_map_free(&m);
	CHECK("map: freed is empty", m.count == 0 && m.nchunks == 0);
}

static char img_path[512], dig_path[512];

static struct image *make_image(void)
{
	snprintf(img_path, sizeof img_path, "%s/digest-img.raw", unit_tmpdir());
	snprintf(dig_path, sizeof dig_path, "%s/digest-img.digest", unit_tmpdir());
	int fd = open(img_path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	if (fd < 0 || ftruncate(fd, 64 * MiB + 100) < 0)
		return NULL;
	close(fd);
	return image_open(img_path, FMT_RAW, IMAGE_RDONLY);
}

static uint8_t *slurp(const char *p, size_t *len)
{
	FILE *f = fopen(p, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc((size_t)n);
	if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
		free(b);
		b = NULL;
	}
	fclose(f);
	*len = (size_t)n;
	return b;
}

static void spill(const char *p, const uint8_t *b, size_t len)
{
	FILE *f = fopen(p, "wb");
	if (f) {
		fwrite(b, 1, len, f);
		fclose(f);
	}
}

static void reseal(uint8_t *b, size_t len)
{
	struct hash128 h;
	hash128(b, len - HASH_SIZE, &h);
	memcpy(b + len - HASH_SIZE, h.b, HASH_SIZE);
}

static void test_digest_file(void)
{
	struct image *img = make_image();
	CHECK("digest: scratch image", img != NULL);
	if (!img)
		return;
	struct unit_map m, back;
	unit_map_init(&m, img->size, 65536);
	struct hash128 h;
	for (uint64_t u = 3; u < 1025; u += (u % 5) ? 1 : 9) {
		h_of(u, &h);
		unit_map_set(&m, u, &h);
	}
	struct digest_info info = { .format = FMT_RAW };
	memset(info.track_id, 0x42, sizeof info.track_id);
	CHECK("digest: saved", digest_save(dig_path, img_path, &m, &info) == 0);
	struct digest_info got;
	const char *why = NULL;
	int rc = digest_load(dig_path, img, &back, &got, &why);
	bool same = rc == 1 && back.count == m.count && back.unit == m.unit &&
		    memcmp(got.track_id, info.track_id, sizeof got.track_id) == 0;
	uint64_t f, f2;
	struct hash128 h2;
	for (uint64_t u = 0; same && unit_map_next(&m, u, &f, &h); u = f + 1)
		same = unit_map_next(&back, u, &f2, &h2) && f2 == f && hash128_equal(&h, &h2);
	CHECK("digest: round trip", same);
	if (rc == 1)
		unit_map_free(&back);

	size_t len;
	uint8_t *good = slurp(dig_path, &len);
	CHECK("digest: read back", good != NULL);
	if (!good)
		return;
	uint8_t *b = malloc(len);
	/* Every byte flipped, with the checksum left (must be refused) and
	 * resealed (structure checks; must never crash, and a load that
	 * succeeds must still match the identity it was given). */
	int refused = 0, accepted_resealed = 0, crashed = 0;
	for (size_t i = 0; i < len; i++) {
		memcpy(b, good, len);
		b[i] ^= 0x5A;
		spill(dig_path, b, len);
		rc = digest_load(dig_path, img, &back, &got, &why);
		if (rc == 1)
			unit_map_free(&back);
		refused += rc == 0;
		if (i < len - HASH_SIZE) {
			reseal(b, len);
			spill(dig_path, b, len);
			rc = digest_load(dig_path, img, &back, &got, &why);
			if (rc == 1) {
				accepted_resealed++;
				unit_map_free(&back);
			}
			crashed += rc < 0;
		}
	}
	CHECK("digest: every flipped byte is refused", refused == (int)len);
	CHECK("digest: resealed mutations never fail hard", crashed == 0);
	printf("    (%d of %zu resealed mutations still parse: hash bytes)\n", accepted_resealed, len);
	int cut_refused = 0;
	for (size_t n = 0; n < len; n++) {
		spill(dig_path, good, n);
		rc = digest_load(dig_path, img, &back, &got, &why);
		if (rc == 1)
			unit_map_free(&back);
		cut_refused += rc == 0;
	}
	CHECK("digest: every truncation is refused", cut_refused == (int)len);

	/* Identity: the image written to, or its mtime put back. */
	spill(dig_path, good, len);
	int fd = open(img_path, O_WRONLY);
	struct stat before;
	fstat(fd, &before);
	CHECK("digest: write", pwrite(fd, "x", 1, 5) == 1);
	struct timespec ts[2] = { before.st_atim, before.st_mtim };
	futimens(fd, ts);
	close(fd);
	image_close(img);
	img = image_open(img_path, FMT_RAW, IMAGE_RDONLY);
	rc = digest_load(dig_path, img, &back, &got, &why);
	CHECK("digest: a write with the mtime put back is seen (ctime)",
	      rc == 0 && strstr(why, "changed"));
	digest_remove(dig_path);
	rc = digest_load(dig_path, img, &back, &got, &why);
	CHECK("digest: removed", rc == 0 && strcmp(why, "there is none") == 0);
	free(b);
	free(good);
	unit_map_free(&m);
	image_close(img);
	unlink(img_path);
}

int main(void)
{
	test_unit_map();
	test_digest_file();
	UNIT_DONE();
}

/* Unit tests for incremental sync: the hash table, hashing an image's data
 * units, choosing the unit, a whole sync between a sender and a receiver
 * over a socketpair (in place, fresh, after a resize), and verify. */
#include "unit.h"

#include "../../core/copy.h"
#include "../../core/error.h"
#include "../../core/hash.h"
#include "../../core/protocol.h"
#include "../../core/receive.h"
#include "../../core/send.h"
#include "../../core/sync_hash.h"
#include "../../core/sync_table.h"
#include "../../core/sync_verify.h"
#include "../../formats/image.h"
#include "../../transport/transport.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define KiB 1024ull
#define MiB (1024ull * 1024)

static const char *tmp_path(const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/test_sync.%d.%s", unit_tmpdir(), (int)getpid(), name);
	return buf;
}

/* Fill [off, off+len) of the file with bytes from a seed. */
static void put(const char *path, uint64_t off, size_t len, unsigned seed)
{
	uint8_t *b = malloc(len);
	for (size_t i = 0; i < len; i++)
		b[i] = (uint8_t)((i * 2654435761u + seed * 40503u) >> 7 ^ seed);
	int fd = open(path, O_WRONLY);
	if (fd < 0 || pwrite(fd, b, len, (off_t)off) != (ssize_t)len)
		printf("    put %s failed\n", path);
	if (fd >= 0)
		close(fd);
	free(b);
}

static void put_zero(const char *path, uint64_t off, size_t len)
{
	uint8_t *b = calloc(1, len);
	int fd = open(path, O_WRONLY);
	if (fd < 0 || pwrite(fd, b, len, (off_t)off) != (ssize_t)len)
		printf("    put_zero %s failed\n", path);
	if (fd >= 0)
		close(fd);
	free(b);
}

static void make_file(const char *path, uint64_t size)
{
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
	if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
		printf("    create %s failed\n", path);
	if (fd >= 0)
		close(fd);
}

/* No data in [off, off+len) (SEEK_DATA finds none there). */
static bool is_hole(const char *path, uint64_t off, uint64_t len)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return false;
	off_t d = lseek(fd, (off_t)off, SEEK_DATA);
	close(fd);
	return d < 0 || (uint64_t)d >= off + len;
}

/* ---- the table ---- */

static void fill_hashes(uint8_t *h, uint32_t count, uint8_t tag)
{
	for (uint32_t i = 0; i < count; i++) {
		memset(h + i * HASH_SIZE, tag, HASH_SIZE);
		h[i * HASH_SIZE] = (uint8_t)i;
	}
}

static void test_table(void)
{
	struct sync_table t;
	sync_table_init(&t);
	uint8_t h[8 * HASH_SIZE];
	fill_hashes(h, 4, 0xa0);
	struct proto_hashes r = { .size = 100 * MiB, .offset = 2 * 65536, .unit = 65536, .count = 4,
				  .hashes = h };
	CHECK("table: first record", sync_table_add(&t, &r) == 0 && t.n == 4 && t.nruns == 1 &&
					     t.unit == 65536 && t.size == 100 * MiB);
	fill_hashes(h, 2, 0xb0);
	r.offset = 6 * 65536;
	r.count = 2;
	CHECK("table: adjacent record extends the run", sync_table_add(&t, &r) == 0 && t.nruns == 1 &&
								 t.n == 6);
	fill_hashes(h, 3, 0xc0);
	r.offset = 20 * 65536;
	r.count = 3;
	r.flags = HASHES_LAST;
	CHECK("table: a gap starts a new run", sync_table_add(&t, &r) == 0 && t.nruns == 2 &&
						       t.n == 9 && t.complete && !t.fresh);
	CHECK("table: find before the first", sync_table_find(&t, 1) == -1);
	CHECK("table: find the first", sync_table_find(&t, 2) == 0 && t.hash[0].b[1] == 0xa0);
	CHECK("table: find across records", sync_table_find(&t, 7) == 5 && t.hash[5].b[1] == 0xb0);
	CHECK("table: find in the gap", sync_table_find(&t, 8) == -1 && sync_table_find(&t, 19) == -1);
	CHECK("table: find in the second run", sync_table_find(&t, 22) == 8 && t.hash[8].b[0] == 2);
	CHECK("table: find past the end", sync_table_find(&t, 23) == -1);
	size_t idx;
	uint64_t u;
	CHECK("table: next from 0", sync_table_next(&t, 0, &idx, &u) && idx == 0 && u == 2);
	CHECK("table: next inside", sync_table_next(&t, 5, &idx, &u) && idx == 3 && u == 5);
	CHECK("table: next from the gap", sync_table_next(&t, 9, &idx, &u) && idx == 6 && u == 20);
	CHECK("table: next past the end", !sync_table_next(&t, 23, &idx, &u));
	CHECK("table: verdicts start unknown", sync_verdict_get(&t, 4) == SYNC_UNKNOWN);
	CHECK("table: first verdict wins", sync_verdict_set(&t, 4, SYNC_DIFFERS) &&
						   !sync_verdict_set(&t, 4, SYNC_SAME) &&
						   sync_verdict_get(&t, 4) == SYNC_DIFFERS);
	uint8_t *z = calloc(1, 65536);
	struct hash128 zh;
	hash128(z, 65536, &zh);
	CHECK("table: zero hash is the hash of a zero unit", hash128_equal(&zh, &t.zero));
	free(z);
	sync_table_free(&t);

	struct proto_hashes fr = { .size = MiB, .unit = 65536, .flags = HASHES_LAST | HASHES_FRESH };
	sync_table_init(&t);
	CHECK("table: fresh list", sync_table_add(&t, &fr) == 0 && t.fresh && t.complete && t.n == 0);
	CHECK("table: fresh list finds nothing", sync_table_find(&t, 0) == -1 &&
						     !sync_table_next(&t, 0, &idx, &u));
	sync_table_free(&t);
}

/* ---- hashing an image ---- */

struct collected {
	uint64_t off[64];
	struct hash128 h[64];
	size_t n;
	size_t stop_after; /* 0 = never */
};

static int collect(void *ctx, uint64_t off, const struct hash128 *h, uint32_t count)
{
	struct collected *c = ctx;
	for (uint32_t i = 0; i < count && c->n < 64; i++) {
		c->off[c->n] = off + i * 65536ull;
		c->h[c->n++] = h[i];
		if (c->stop_after && c->n == c->stop_after)
			return 1;
	}
	return 0;
}

static void test_hash_image(void)
{
	char p[256];
	tmp_path("h.raw", p, sizeof p);
	uint64_t size = 3 * MiB + 1000;
	make_file(p, size);
	put(p, 100 * KiB, 5000, 1);              /* unit 1 */
	put(p, 10 * 65536, 2 * 65536, 2);        /* units 10, 11 */
	put(p, 3 * MiB + 10, 100, 3);            /* the short last unit (48) */
	struct image *img = image_open(p, FMT_RAW, IMAGE_RDONLY);
	CHECK("hash: open", img != NULL);
	if (!img)
		return;
	struct collected c = { 0 };
	CHECK("hash: image hashed", sync_hash_image(img, 65536, 3, collect, &c) == 0);
	CHECK("hash: only data units listed", c.n == 4 && c.off[0] == 65536 &&
						      c.off[1] == 10 * 65536 && c.off[2] == 11 * 65536 &&
						      c.off[3] == 48 * 65536);
	uint8_t *buf = malloc(65536);
	bool match = c.n == 4;
	for (size_t i = 0; i < c.n && match; i++) {
		struct hash128 h;
		match = sync_hash_unit(img, c.off[i], 65536, buf, &h) == 0 && hash128_equal(&h, &c.h[i]);
	}
	CHECK("hash: list hashes equal single-unit hashes", match);
	/* The last unit is hashed as 65536 bytes: its data, then zeros. */
	memset(buf, 0, 65536);
	image_pread(img, buf, size - 48 * 65536, 48 * 65536);
	struct hash128 h;
	hash128(buf, 65536, &h);
	CHECK("hash: the short last unit is zero-padded", c.n == 4 && hash128_equal(&h, &c.h[3]));
	free(buf);

	struct collected one = { .stop_after = 2 };
	CHECK("hash: emit may stop early", sync_hash_image(img, 65536, 2, collect, &one) == 0 &&
						   one.n == 2);
	struct collected single = { 0 };
	CHECK("hash: one thread gives the same list",
	      sync_hash_image(img, 65536, 1, collect, &single) == 0 && single.n == c.n &&
		      memcmp(single.h, c.h, c.n * sizeof c.h[0]) == 0);

	uint32_t unit = 0;
	CHECK("unit: 64 KiB for a small image", sync_unit_for(img, SYNC_UNIT_RAW, &unit) == 0 &&
							unit == 65536);
	CHECK("unit: the cluster size when larger", sync_unit_for(img, 2 * MiB, &unit) == 0 &&
							   unit == 2 * MiB);
	CHECK("unit: rounded up to a power of two", sync_unit_for(img, 100000, &unit) == 0 &&
							    unit == 131072);
	/* 4 units of data at 64 KiB; 128 KiB units cover 0, 5 and 24 (3),
	 * 256 KiB 0, 2 and 12, 512 KiB 0, 1 and 6, 1 MiB 0 and 3 (2). */
	CHECK("unit: scaled up until the list fits",
	      sync_unit_for_target(img, 65536, 2, &unit) == 0 && unit == MiB);
	CHECK("unit: scaled up to 128 KiB for 3", sync_unit_for_target(img, 65536, 3, &unit) == 0 &&
							  unit == 131072);
	struct hash128 zh, z2;
	sync_zero_hash(SYNC_UNIT_MAX, &zh);
	uint8_t *z = calloc(1, SYNC_UNIT_MAX);
	hash128(z, SYNC_UNIT_MAX, &z2);
	free(z);
	CHECK("zero hash of a 32 MiB unit", hash128_equal(&zh, &z2));
	image_close(img);
	unlink(p);
}

/* ---- a whole sync over a socketpair ---- */

struct rx_job {
	struct transport *t;
	struct receive_opts o;
	struct sp_stats st;
	int rc;
	char err[1024];
};

static void *rx_thread(void *arg)
{
	struct rx_job *j = arg;
	j->rc = receive_run(j->t, &j->o, &j->st);
	snprintf(j->err, sizeof j->err, "%s", j->rc ? sp_errmsg() : "");
	return NULL;
}

/* Push src into dst (sync when dst exists); fills the sender's stats. */
static int sync_push(const char *src_path, const char *dst_path, bool whole, struct sp_stats *st,
		     struct sp_stats *rst)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return -1;
	struct rx_job j = { 0 };
	j.t = transport_fd_open(sv[1], sv[1], "receiver");
	j.o = (struct receive_opts){ .dst_path = dst_path, .whole = whole, .sync = true,
				     .workers = 2, .progress = PROGRESS_OFF };
	struct transport *t = transport_fd_open(sv[0], sv[0], "sender");
	pthread_t tid;
	pthread_create(&tid, NULL, rx_thread, &j);
	memset(st, 0, sizeof *st);
	struct image *src = image_open(src_path, FMT_AUTO, IMAGE_RDONLY);
	struct send_opts so = { .codec = { WIRE_ZSTD, 1 }, .block_size = 1 << 20, .sync = true,
				.read_peer_error = true };
	struct sender snd;
	int rc = src ? sender_open(&snd, t, &so, st) : -1;
	if (rc == 0)
		rc = sender_begin(&snd, src);
	if (rc == 0) {
		struct copy_opts co = { .block_size = 1 << 20, .workers = 3, .progress = PROGRESS_OFF };
		rc = copy_run(src, sender_sink(&snd), &co, st);
	}
	if (rc < 0 && src)
		sender_abort(&snd);
	if (src)
		sender_free(&snd);
	st->bytes_sent = t->bytes_out;
	transport_close(t, NULL);
	pthread_join(tid, NULL);
	transport_close(j.t, NULL);
	image_close(src);
	if (rst)
		*rst = j.st;
	if (rc == 0 && j.rc != 0) {
		printf("    receiver: %s\n", j.err);
		rc = -1;
	}
	return rc < 0 ? -1 : 0;
}

struct hs_job {
	struct transport *t;
	const char *path;
	int rc;
};

static void *hs_thread(void *arg)
{
	struct hs_job *j = arg;
	j->rc = hashes_serve(j->t, j->path, FMT_AUTO, 65536, 2, false, NULL);
	return NULL;
}

/* verify local against "remote" (a hashes_serve thread). */
static int verify_pair(const char *local, const char *remote, struct verify_result *res)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return -1;
	struct hs_job j = { .t = transport_fd_open(sv[1], sv[1], "remote"), .path = remote };
	struct transport *t = transport_fd_open(sv[0], sv[0], "client");
	pthread_t tid;
	pthread_create(&tid, NULL, hs_thread, &j);
	struct image *img = image_open(local, FMT_AUTO, IMAGE_RDONLY);
	int rc = img ? verify_remote(t, img, 65536, 2, res) : -1;
	transport_close(t, NULL);
	pthread_join(tid, NULL);
	transport_close(j.t, NULL);
	image_close(img);
	return rc;
}

static int verify_two(const char *a, const char *b, struct verify_result *res)
{
	struct image *x = image_open(a, FMT_AUTO, IMAGE_RDONLY);
	struct image *y = image_open(b, FMT_AUTO, IMAGE_RDONLY);
	int rc = x && y ? verify_local(x, y, res) : -1;
	image_close(x);
	image_close(y);
	return rc;
}

static void test_sync_end_to_end(void)
{
	char sp[256], dp[256];
	tmp_path("src.raw", sp, sizeof sp);
	tmp_path("dst.raw", dp, sizeof dp);
	uint64_t size = 40 * MiB + 4096 + 17;
	make_file(sp, size);
	put(sp, 1 * MiB, 3 * MiB, 1);
	put(sp, 10 * MiB + 12345, 2 * MiB, 2);
	put(sp, 30 * MiB, 8 * MiB, 3);
	put(sp, size - 300, 300, 4);
	unlink(dp);

	struct sp_stats st, rst;
	CHECK("e2e: push to a new destination", sync_push(sp, dp, false, &st, &rst) == 0);
	CHECK("e2e: new destination identical", same_file(sp, dp));
	CHECK("e2e: new destination written whole", rst.bytes_written >= 13 * MiB);

	CHECK("e2e: unchanged sync", sync_push(sp, dp, false, &st, &rst) == 0);
	CHECK("e2e: unchanged sync sends almost nothing", st.bytes_sent < 4096);
	CHECK("e2e: unchanged sync writes nothing", rst.bytes_written == 0);
	CHECK("e2e: unchanged sync counts the data as unchanged",
	      st.bytes_unchanged >= 13 * MiB && st.blocks_changed == 0);
	CHECK("e2e: the receiver learns the counts from END", rst.bytes_unchanged == st.bytes_unchanged);

	/* A few changes, zeros over data, data in a hole. */
	put(sp, 2 * MiB + 100, 4096, 9);
	put(sp, 20 * MiB + 7, 10, 10);
	put_zero(sp, 31 * MiB, 2 * MiB);
	put_zero(sp, 10 * MiB + 12345, 1000); /* zeros inside a unit that keeps data */
	CHECK("e2e: sync the changes", sync_push(sp, dp, false, &st, &rst) == 0);
	CHECK("e2e: synced destination identical", same_file(sp, dp));
	CHECK("e2e: only the changed units travel", st.bytes_sent < 600 * KiB);
	CHECK("e2e: zeros over data became a hole", is_hole(dp, 31 * MiB, 2 * MiB));
	CHECK("e2e: changed units counted", st.blocks_changed >= 3 + 32 && st.blocks_changed < 45);

	/* Grow and shrink. */
	put(sp, size - 100, 100, 11);
	if (truncate(sp, (off_t)(size + 3 * MiB)) < 0)
		printf("    truncate failed\n");
	put(sp, size + MiB, 5000, 12);
	CHECK("e2e: sync a grown source", sync_push(sp, dp, false, &st, &rst) == 0);
	CHECK("e2e: grown destination identical", same_file(sp, dp));
	if (truncate(sp, (off_t)(20 * MiB + 3)) < 0)
		printf("    truncate failed\n");
	CHECK("e2e: sync a shrunk source", sync_push(sp, dp, false, &st, &rst) == 0);
	CHECK("e2e: shrunk destination identical", same_file(sp, dp));
	CHECK("e2e: --whole", sync_push(sp, dp, true, &st, &rst) == 0 && same_file(sp, dp) &&
				       st.bytes_unchanged == 0 && rst.bytes_written > 5 * MiB);

	/* verify: local/local and local/remote. */
	struct verify_result res;
	CHECK("verify local: identical", verify_two(sp, dp, &res) == 0 && !res.differ);
	CHECK("verify remote: identical", verify_pair(sp, dp, &res) == 0 && !res.differ &&
						  res.size_other == res.size_local);
	put(dp, 5 * MiB + 65536, 4096, 13);
	CHECK("verify local: one changed block", verify_two(sp, dp, &res) == 0 && res.differ &&
							 res.offset >= 5 * MiB + 65536 &&
							 res.offset < 5 * MiB + 65536 + 4096);
	CHECK("verify remote: one changed block", verify_pair(sp, dp, &res) == 0 && res.differ &&
							  res.offset == 5 * MiB + 65536);
	CHECK("verify remote (other way): one changed block",
	      verify_pair(dp, sp, &res) == 0 && res.differ && res.offset >= 5 * MiB + 65536 &&
		      res.offset < 5 * MiB + 65536 + 4096);
	/* A larger image matches when its extra part reads as zeros. */
	CHECK("e2e: resync", sync_push(sp, dp, false, &st, &rst) == 0);
	if (truncate(dp, (off_t)(30 * MiB)) < 0)
		printf("    truncate failed\n");
	CHECK("verify local: zero extra part is identical", verify_two(sp, dp, &res) == 0 &&
								    !res.differ && res.size_other == 30 * MiB);
	CHECK("verify remote: zero extra part is identical", verify_pair(sp, dp, &res) == 0 && !res.differ);
	put(dp, 25 * MiB, 10, 14);
	CHECK("verify local: data in the extra part differs",
	      verify_two(sp, dp, &res) == 0 && res.differ && res.offset == 25 * MiB);
	CHECK("verify remote: data in the extra part differs",
	      verify_pair(sp, dp, &res) == 0 && res.differ && res.offset == 25 * MiB);
	CHECK("verify remote (other way): data in the extra part differs",
	      verify_pair(dp, sp, &res) == 0 && res.differ && res.offset == 25 * MiB);
	char np[256];
	tmp_path("missing.raw", np, sizeof np);
	CHECK("verify remote: a missing remote file is an error",
	      verify_pair(sp, np, &res) < 0 && strstr(sp_errmsg(), "missing.raw") != NULL);
	unlink(sp);
	unlink(dp);
}

int main(void)
{
	test_table();
	test_hash_image();
	test_sync_end_to_end();
	UNIT_DONE();
}

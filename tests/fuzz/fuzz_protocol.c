/* libFuzzer target: the wire protocol, as a receiver meets it.
 *
 * An input is a protocol stream as `sparsync copy IMG -` writes it (the seed
 * corpus holds real ones). Each input goes through:
 *  1. the pure decoders: hello head and body, then every frame and body
 *     (checksums ignored, so mutations reach the field checks), DATA
 *     payloads unpacked; once as a receiver, once as a sender would see it;
 *  2. the real receiver loop (receive_run) over an fd transport, writing a
 *     destination image in a private temporary directory;
 *  3. the same loop again on a "sealed" copy of the input: every frame
 *     checksum, DATA hash, END count and END digest recomputed, so that a
 *     mutation survives the integrity checks and reaches the image writer,
 *     the commit and the rename.
 * The destination is raw or qcow2, new or (sync) an existing image updated
 * in place, and the receiver interactive or a stream reader, all chosen
 * from the input's length.
 *
 * An input that starts with a receiver's hello (role 2) is what a receiver
 * answers (hello, HASHES list, ACK or ERROR): it goes to the real sender
 * instead (sender_open/sender_begin/copy_run over a small source), as a
 * malicious server in push mode or client in pull mode would feed it.
 *
 * Invariants checked beyond "no sanitizer report": after a failure nothing
 * is left in the directory (no destination, no temporary file); after a
 * success a raw destination has exactly the announced virtual size (nothing
 * written past it). */
#include "../../core/codec.h"
#include "../../core/copy.h"
#include "../../core/error.h"
#include "../../core/hash.h"
#include "../../core/protocol.h"
#include "../../core/receive.h"
#include "../../core/send.h"
#include "../../core/stats.h"
#include "../../formats/image.h"
#include "../../transport/transport.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_RECORDS 4096
/* Decompressed bytes the sealed copy may make the receiver write. */
#define SEAL_EXPAND_MAX (48u << 20)

static char dir[256], in_path[300], src_path[300];
static struct codec_ctx *cc;

static void rm_dir_contents(int keep_input)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	char p[600];
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (keep_input && (!strcmp(e->d_name, "in.sps") || !strcmp(e->d_name, "src.raw")))
			continue;
		snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
		unlink(p);
	}
	closedir(d);
}

static void cleanup_dir(void)
{
	rm_dir_contents(0);
	rmdir(dir);
}

static void setup(void)
{
	if (cc)
		return;
	const char *base = getenv("FUZZ_TMPDIR");
	if (!base)
		base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(dir, sizeof dir, "%s/sparsync-fuzz-proto.XXXXXX", base);
	if (!mkdtemp(dir)) {
		perror(dir);
		abort();
	}
	snprintf(in_path, sizeof in_path, "%s/in.sps", dir);
	atexit(cleanup_dir);
	/* The sender's source: 256 KiB with data, zeros and holes. */
	snprintf(src_path, sizeof src_path, "%s/src.raw", dir);
	int fd = open(src_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	static uint8_t pattern[70000];
	for (size_t i = 0; i < sizeof pattern; i++)
		pattern[i] = (uint8_t)(i * 31 + (i >> 9));
	memset(pattern + 20000, 0, 8192);
	if (fd < 0 || ftruncate(fd, 256 << 10) != 0 || pwrite(fd, pattern, sizeof pattern, 4096) < 0 ||
	    pwrite(fd, pattern, 3000, 200000) < 0)
		abort();
	close(fd);
	cc = codec_ctx_new();
	if (!cc)
		abort();
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}
static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- 1. the pure decoders ---- */

static bool in_image(const struct proto_session *s, uint64_t off, uint64_t len)
{
	return len <= s->image.size && off <= s->image.size - len;
}

static void decode_records(const uint8_t *d, size_t n, size_t pos, struct proto_session *s)
{
	for (unsigned i = 0; i < MAX_RECORDS && pos + PROTO_FRAME_SIZE <= n; i++) {
		uint8_t type;
		uint32_t blen;
		const uint8_t *hdr = d + pos;
		if (proto_frame_decode(s, hdr, &type, &blen) < 0)
			return;
		if (blen > proto_body_max(s)) {
			fprintf(stderr, "frame_decode accepted %u bytes, body_max is %zu\n", blen,
				proto_body_max(s));
			abort();
		}
		pos += PROTO_FRAME_SIZE;
		if (blen > n - pos)
			return;
		/* proto_body_decode may write one byte past the body (ERROR). */
		uint8_t *body = malloc((size_t)blen + 1);
		if (!body)
			abort();
		memcpy(body, d + pos, blen);
		pos += blen;
		proto_frame_verify(s, hdr, body, blen);
		struct proto_rec r;
		int rc = proto_body_decode(s, type, body, blen, &r);
		if (rc == 0 && type == REC_DATA) {
			const struct proto_data *pd = &r.u.data;
			uint8_t *out = malloc(pd->length ? pd->length : 1);
			const uint8_t *plain;
			if (!out)
				abort();
			if (proto_data_unpack(s, pd, cc, out, &plain) == 0 &&
			    (!in_image(s, pd->offset, pd->length) || pd->length > s->image.block_size))
				abort(); /* accepted a record outside the image */
			free(out);
		} else if (rc == 0 && type == REC_ZERO) {
			if (!in_image(s, r.u.zero.offset, r.u.zero.length))
				abort();
		}
		free(body);
		if (rc < 0)
			return;
	}
}

static void decode_only(const uint8_t *d, size_t n)
{
	uint16_t blen;
	struct proto_hello peer, mine;
	struct proto_session s;
	size_t pos = 0;
	proto_hello_init(&mine, ROLE_RECEIVER, 0, PROTO_BLOCK_MAX, CAP_SUPPORTED);
	bool ok = n >= PROTO_HELLO_HEAD && proto_hello_check_head("fuzz", d, &blen) == 0 &&
		  blen <= n - PROTO_HELLO_HEAD;
	if (ok) {
		pos = PROTO_HELLO_HEAD + blen;
		struct proto_hello other;
		proto_hello_decode_body("fuzz", d + PROTO_HELLO_HEAD, blen, ROLE_RECEIVER, &other);
		ok = proto_hello_decode_body("fuzz", d + PROTO_HELLO_HEAD, blen, ROLE_SENDER, &peer) == 0 &&
		     proto_negotiate(&s, "fuzz", ROLE_RECEIVER, &peer, &mine) == 0;
	}
	if (!ok) {
		/* A plausible session anyway, so the record decoders get exercised. */
		memset(&s, 0, sizeof s);
		s.peer = "fuzz";
		s.me = ROLE_RECEIVER;
		s.caps = CAP_SUPPORTED;
		s.max_block = 1u << 20;
		if (pos == 0)
			pos = n >= PROTO_HELLO_SIZE ? PROTO_HELLO_SIZE : n;
	}
	decode_records(d, n, pos, &s);

	/* The same bytes as the sender sees the receiver's replies. */
	memset(&s, 0, sizeof s);
	s.peer = "fuzz";
	s.me = ROLE_SENDER;
	s.caps = CAP_SUPPORTED;
	s.max_block = 1u << 20;
	decode_records(d, n, pos, &s);
}

/* ---- 3. sealing: make a mutated stream pass the integrity checks ---- */

struct seal_info {
	bool have_image;
	uint64_t size;
};

static bool seal(uint8_t *b, size_t n, struct seal_info *si)
{
	memset(si, 0, sizeof *si);
	if (n < PROTO_HELLO_SIZE || le32(b + 8) != (PROTO_VERSION | PROTO_HELLO_BODY << 16))
		return false;
	struct proto_digest dg;
	if (proto_digest_init(&dg) < 0)
		return false;
	uint64_t data_bytes = 0, data_records = 0, zero_bytes = 0, expanded = 0;
	uint32_t block = 0;
	bool ended = false;
	size_t pos = PROTO_HELLO_SIZE;
	for (unsigned i = 0; i < MAX_RECORDS && pos + PROTO_FRAME_SIZE <= n; i++) {
		uint8_t *hdr = b + pos, type = hdr[0];
		uint32_t blen = le32(hdr + 4);
		if (blen > n - pos - PROTO_FRAME_SIZE)
			break;
		uint8_t *body = hdr + PROTO_FRAME_SIZE;
		if (type == REC_IMAGE && (blen == PROTO_IMAGE_SIZE || blen == PROTO_IMAGE_SIZE_DATA) &&
		    !si->have_image) {
			struct proto_image im = { .size = le64(body), .block_size = le32(body + 8),
						  .format = body[12] };
			si->have_image = true;
			si->size = im.size;
			block = im.block_size;
			proto_digest_image(&dg, &im);
		} else if (type == REC_DATA && blen >= PROTO_DATA_HEAD && !ended) {
			uint64_t off = le64(body);
			uint32_t len = le32(body + 8), clen = blen - PROTO_DATA_HEAD;
			uint8_t codec = body[12];
			const uint8_t *payload = body + PROTO_DATA_HEAD;
			struct hash128 h;
			if (codec == WIRE_NONE && clen == len) {
				hash128(payload, len, &h);
				memcpy(body + 16, h.b, HASH_SIZE);
			} else if ((codec == WIRE_ZSTD || codec == WIRE_LZ4) && len && len <= block &&
				   expanded + len <= SEAL_EXPAND_MAX) {
				uint8_t *out = malloc(len);
				if (!out)
					abort();
				if (codec_decompress(cc, codec, payload, clen, out, len) == 0) {
					hash128(out, len, &h);
					memcpy(body + 16, h.b, HASH_SIZE);
					expanded += len;
				}
				free(out);
			}
			memcpy(h.b, body + 16, HASH_SIZE);
			proto_digest_data(&dg, off, len, &h);
			data_bytes += len;
			data_records++;
		} else if (type == REC_ZERO && blen == PROTO_ZERO_SIZE && !ended) {
			proto_digest_zero(&dg, le64(body), le64(body + 8));
			zero_bytes += le64(body + 8);
		} else if (type == REC_END && blen == PROTO_END_SIZE && !ended) {
			struct hash128 h;
			proto_digest_final(&dg, &h);
			put64(body, data_bytes);
			put64(body + 8, data_records);
			put64(body + 16, zero_bytes);
			memcpy(body + 32, h.b, HASH_SIZE);
			ended = true;
		}
		put64(hdr + 8, hash64_seeded(body, blen, (uint64_t)type | (uint64_t)blen << 8));
		pos += PROTO_FRAME_SIZE + blen;
	}
	proto_digest_free(&dg);
	return true;
}

/* ---- 2. the receiver loop ---- */

static void write_input(const uint8_t *d, size_t n)
{
	int fd = open(in_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		abort();
	for (size_t done = 0; done < n;) {
		ssize_t w = write(fd, d + done, n - done);
		if (w <= 0)
			abort();
		done += (size_t)w;
	}
	close(fd);
}

/* Names in the directory other than the input; 0 if none. */
/* Files in dir but our own; a digest file (.NAME.sparsync) only counts
 * when it must not be there (a failed run never writes one). */
static int leftovers_but(char *first, size_t cap, bool digest_ok)
{
	DIR *d = opendir(dir);
	int count = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		size_t len = strlen(e->d_name);
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, "in.sps") ||
		    !strcmp(e->d_name, "src.raw"))
			continue;
		if (digest_ok && e->d_name[0] == '.' && len > 9 &&
		    !strcmp(e->d_name + len - 9, ".sparsync"))
			continue;
		if (count++ == 0)
			snprintf(first, cap, "%s", e->d_name);
	}
	if (d)
		closedir(d);
	return count;
}

static int leftovers(char *first, size_t cap)
{
	return leftovers_but(first, cap, false);
}

/* An existing destination for the in-place (sync) path: 1 MiB, some data. */
static void make_existing(const char *dst, bool qcow2)
{
	static uint8_t pattern[65536];
	for (size_t i = 0; i < sizeof pattern; i++)
		pattern[i] = (uint8_t)(i * 13 + 5);
	struct image *img = image_create(dst, qcow2 ? FMT_QCOW2 : FMT_RAW, 1 << 20, NULL);
	if (!img)
		abort();
	if (image_pwrite(img, pattern, sizeof pattern, 0) < 0 ||
	    image_pwrite(img, pattern, 4096, 512 << 10) < 0 || image_close(img) < 0)
		abort();
}

/* mode bit 0: qcow2 destination; bit 1: interactive receiver (answers go
 * to /dev/null) instead of a stream reader; bit 2: an interactive receiver
 * that syncs into an existing destination in place (it sends its hash list
 * first, then applies the records to the image). */
static void receive(const uint8_t *d, size_t n, unsigned mode, const struct seal_info *si)
{
	if (mode & 4)
		mode |= 2;
	write_input(d, n);
	int rfd = open(in_path, O_RDONLY | O_CLOEXEC);
	int wfd = (mode & 2) ? open("/dev/null", O_WRONLY | O_CLOEXEC) : -1;
	if (rfd < 0)
		abort();
	struct transport *t = transport_fd_open(rfd, wfd, "fuzz");
	if (!t)
		abort();
	char dst[320];
	snprintf(dst, sizeof dst, "%s/%s", dir, (mode & 1) ? "out.qcow2" : "out.raw");
	if (mode & 4)
		make_existing(dst, mode & 1);
	struct receive_opts ro = {
		.dst_path = dst,
		.out_fmt = FMT_AUTO,
		.stream = !(mode & 2),
		.sync = (mode & 4) != 0,
		.workers = 1,
		.progress = PROGRESS_OFF,
	};
	struct sp_stats st;
	memset(&st, 0, sizeof st);
	int rc = receive_run(t, &ro, &st);
	int status;
	transport_close(t, &status);

	char name[256] = "";
	struct stat sb;
	if (rc < 0 && (mode & 4)) {
		/* An image updated in place stays (a re-run completes it), at its
		 * old size or the announced one; no temporary file. */
		if (leftovers(name, sizeof name) > 1 || (name[0] && strcmp(dst + strlen(dir) + 1, name))) {
			fprintf(stderr, "in-place receive failed (%s) and left %s behind\n", sp_errmsg(), name);
			abort();
		}
		if (!(mode & 1) && stat(dst, &sb) == 0 && (uint64_t)sb.st_size != 1u << 20 &&
		    !(si->have_image && (uint64_t)sb.st_size == si->size)) {
			fprintf(stderr, "in-place raw destination is %lld bytes after a failure\n",
				(long long)sb.st_size);
			abort();
		}
	} else if (rc < 0) {
		if (leftovers(name, sizeof name)) {
			fprintf(stderr, "receive failed (%s) but left %s behind\n", sp_errmsg(), name);
			abort();
		}
	} else {
		if (stat(dst, &sb) != 0) {
			fprintf(stderr, "receive succeeded but %s does not exist\n", dst);
			abort();
		}
		if (!(mode & 1) && si->have_image && (uint64_t)sb.st_size != si->size) {
			fprintf(stderr, "raw destination is %lld bytes, the stream announced %llu\n",
				(long long)sb.st_size, (unsigned long long)si->size);
			abort();
		}
		if (leftovers_but(name, sizeof name, true) != 1) {
			fprintf(stderr, "receive succeeded but left temporary files behind\n");
			abort();
		}
	}
	rm_dir_contents(1);
	sp_err_clear();
}

/* ---- 4. the sender, against what a receiver (a server in push mode, or
 * the client of a pull) says: its hello, hash list, ACK or ERROR ---- */

static void send_to(const uint8_t *d, size_t n, unsigned mode)
{
	write_input(d, n);
	int rfd = open(in_path, O_RDONLY | O_CLOEXEC);
	int wfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (rfd < 0 || wfd < 0)
		abort();
	struct transport *t = transport_fd_open(rfd, wfd, "fuzz");
	struct image *src = image_open(src_path, FMT_RAW, IMAGE_RDONLY);
	if (!t || !src)
		abort();
	struct sp_stats st;
	memset(&st, 0, sizeof st);
	struct send_opts so = {
		.codec = { .codec = (mode & 1) ? WIRE_ZSTD : WIRE_NONE, .level = 1 },
		.block_size = 64 << 10,
		.read_peer_error = true,
		.sync = (mode & 2) == 0,
	};
	struct sender snd;
	int rc = sender_open(&snd, t, &so, &st);
	if (rc == 0)
		rc = sender_begin(&snd, src);
	if (rc == 0) {
		struct copy_opts co = { .block_size = so.block_size, .workers = 1,
					.progress = PROGRESS_OFF };
		rc = copy_run(src, sender_sink(&snd), &co, &st);
	}
	if (rc < 0)
		sender_abort(&snd);
	sender_free(&snd);
	image_close(src);
	int status;
	transport_close(t, &status);
	sp_err_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	setup();
	decode_only(data, size);

	uint8_t *sealed = malloc(size ? size : 1);
	if (!sealed)
		abort();
	memcpy(sealed, data, size);
	struct seal_info si;
	bool can_seal = seal(sealed, size, &si);
	unsigned mode = (unsigned)(size & 7);
	/* A receiver's hello first: we are the sender. */
	bool to_sender = size > 12 && data[12] == ROLE_RECEIVER;
	if (to_sender)
		send_to(data, size, mode);
	else
		receive(data, size, mode, &si);
	if (can_seal && memcmp(sealed, data, size) != 0) {
		if (to_sender)
			send_to(sealed, size, mode ^ 1);
		else
			receive(sealed, size, mode ^ 1, &si);
	}
	free(sealed);
	return 0;
}

/* Unit tests for the raw image: extents from SEEK_DATA/SEEK_HOLE, zeroing
 * punches holes, reads and writes land where asked. */
#include "unit.h"

#include "../../core/error.h"
#include "../../formats/image.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void)
{
	char path[512];
	snprintf(path, sizeof path, "%s/unit-raw-%d.img", unit_tmpdir(), (int)getpid());
	const uint64_t MiB = 1 << 20;
	struct image *img = image_create(path, FMT_RAW, 64 * MiB, NULL);
	CHECK("create", img != NULL);
	if (!img)
		UNIT_DONE();
	CHECK("virtual size", img->size == 64 * MiB);

	static unsigned char buf[1 << 20];
	memset(buf, 0xab, sizeof buf);
	CHECK("write at 8 MiB", image_pwrite(img, buf, sizeof buf, 8 * MiB) == 0);
	CHECK("flush", image_flush(img) == 0);

	struct extent e;
	CHECK("first extent query", image_extent(img, 0, &e) == 0);
	CHECK("leading hole", e.kind == EXTENT_HOLE && e.offset == 0 && e.length == 8 * MiB);
	CHECK("data extent query", image_extent(img, 8 * MiB, &e) == 0);
	CHECK("data extent", e.kind == EXTENT_DATA && e.length == MiB);
	CHECK("tail extent query", image_extent(img, 9 * MiB, &e) == 0);
	CHECK("trailing hole to the end", e.kind == EXTENT_HOLE && e.length == 55 * MiB);

	memset(buf, 0, sizeof buf);
	CHECK("read back", image_pread(img, buf, 4096, 8 * MiB) == 0 && buf[0] == 0xab && buf[4095] == 0xab);
	CHECK("bytes_read counted", img->bytes_read == 4096);
	CHECK("read past end refused", image_pread(img, buf, 4096, 64 * MiB) < 0);
	CHECK("error names the file", strstr(sp_errmsg(), path) != NULL);

	CHECK("zero range", image_zero(img, 8 * MiB, MiB) == 0);
	CHECK("zeroed extent query", image_extent(img, 0, &e) == 0);
	CHECK("zeroed range is a hole", e.kind == EXTENT_HOLE && e.length == 64 * MiB);
	struct stat st;
	CHECK("nothing allocated", stat(path, &st) == 0 && st.st_blocks == 0);

	CHECK("resize", image_resize(img, 100 * MiB) == 0 && img->size == 100 * MiB);
	CHECK("close", image_close(img) == 0);

	CHECK("open missing file fails", image_open("/nonexistent/x.raw", FMT_AUTO, IMAGE_RDONLY) == NULL);
	CHECK("missing file message", strstr(sp_errmsg(), "/nonexistent/x.raw: No such file") != NULL);
	unlink(path);
	UNIT_DONE();
}

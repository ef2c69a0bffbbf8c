#include "cmd.h"

#include "../core/error.h"
#include "../formats/change_map.h"
#include "../formats/image.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/zero.h"

#define MAP_CHUNK (1u << 20)

static const char map_usage[] =
	"usage: sparsync map [--json] [-f raw|qcow2] [-U] [--bitmap NAME] IMAGE\n"
	"Print which ranges of IMAGE are allocated (data) and which read as zeros.\n"
	"A block device has no allocation map: it is read, and what reads as zeros\n"
	"is shown as zero.\n"
	"  --json         a JSON array like 'qemu-img map --output=json'\n"
	"  -f FORMAT      do not detect the format, use FORMAT\n"
	"  -U             read IMAGE even while another program has it open for\n"
	"                 writing (--force-share, like qemu-img map -U)\n"
	"  --bitmap NAME  show which ranges the persistent dirty bitmap NAME marks\n"
	"                 as changed (dirty) instead\n"
	"  --since SNAP   the same for an RBD image: what changed after snapshot SNAP\n";

static void print_run(bool json, bool *first, uint64_t start, uint64_t len, enum extent_kind k)
{
	bool data = k == EXTENT_DATA;
	if (json) {
		printf("%s{ \"start\": %llu, \"length\": %llu, \"data\": %s, \"zero\": %s }",
		       *first ? "[" : ",\n", (unsigned long long)start, (unsigned long long)len,
		       data ? "true" : "false", data ? "false" : "true");
	} else {
		if (*first)
			printf("%-20s %-20s %s\n", "Offset", "Length", "Kind");
		printf("0x%-18llx 0x%-18llx %s\n", (unsigned long long)start, (unsigned long long)len,
		       k == EXTENT_DATA ? "data" : k == EXTENT_ZERO ? "zero" : "hole");
	}
	*first = false;
}

/* The next extent of img at pos. Where the image has no allocation map (a
 * block device), data is read and split at whole 4 KiB zero grains, so map
 * shows what reads as zeros. */
static int next_extent(struct image *img, unsigned char *buf, uint64_t pos, struct extent *e)
{
	if (image_extent(img, pos, e) < 0)
		return -1;
	if (!img->alloc_unknown || e->kind != EXTENT_DATA)
		return 0;
	size_t n = e->length < MAP_CHUNK ? (size_t)e->length : MAP_CHUNK;
	if (image_pread(img, buf, n, pos) < 0)
		return -1;
	bool zero = zero_run(buf, n, 4096, true) > 0;
	e->length = zero_run(buf, n, 4096, zero);
	e->kind = zero ? EXTENT_ZERO : EXTENT_DATA;
	return 0;
}

/* --bitmap: dirty and clean ranges, as sparsync will use them. */
static int print_bitmap(struct image *img, const char *name, bool json)
{
	struct change_map m;
	if (image_dirty_bitmap(img, name, &m) < 0)
		return -1;
	bool first = true;
	uint64_t at = 0, s, e;
	for (;;) {
		bool more = change_map_next(&m, at, &s, &e);
		uint64_t clean_end = more ? s : img->size;
		for (int dirty = 0; dirty < 2; dirty++) {
			uint64_t a = dirty ? s : at, b = dirty ? e : clean_end;
			if ((dirty && !more) || b <= a)
				continue;
			if (json)
				printf("%s{ \"start\": %llu, \"length\": %llu, \"dirty\": %s }",
				       first ? "[" : ",\n", (unsigned long long)a,
				       (unsigned long long)(b - a), dirty ? "true" : "false");
			else
				printf("%s0x%-18llx 0x%-18llx %s\n",
				       first ? "Offset               Length               Kind\n" : "",
				       (unsigned long long)a, (unsigned long long)(b - a),
				       dirty ? "dirty" : "clean");
			first = false;
		}
		if (!more)
			break;
		at = e;
	}
	if (json)
		printf(first ? "[]\n" : "]\n");
	change_map_free(&m);
	return 0;
}

int cmd_map(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ "format", required_argument, NULL, 'f' },
		{ "force-share", no_argument, NULL, 'U' },
		{ "bitmap", required_argument, NULL, 'B' },
		{ "since", required_argument, NULL, 'B' },
		{ 0, 0, 0, 0 },
	};
	bool json = false;
	enum image_format fmt = FMT_AUTO;
	int c;
	int ro = IMAGE_RDONLY;
	const char *bitmap = NULL;
	while ((c = getopt_long(argc, argv, "hf:U", opts, NULL)) != -1) {
		switch (c) {
		case 'J': json = true; break;
		case 'U': ro |= IMAGE_FORCE_SHARE; break;
		case 'B': bitmap = optarg; break;
		case 'f':
			if ((fmt = image_format_parse(optarg)) == FMT_AUTO)
				return usage_error("map", "unknown format '%s'", optarg);
			break;
		case 'h': fputs(map_usage, stdout); return 0;
		default: return usage_error("map", "bad option");
		}
	}
	if (argc - optind != 1)
		return usage_error("map", "expected one IMAGE");

	struct image *img = image_open(argv[optind], fmt, ro);
	if (!img)
		return fail();
	if (bitmap) {
		int brc = print_bitmap(img, bitmap, json);
		image_close(img);
		return brc < 0 ? fail() : 0;
	}
	unsigned char *buf = img->alloc_unknown ? malloc(MAP_CHUNK) : NULL;
	if (img->alloc_unknown && !buf) {
		image_close(img);
		sp_err("out of memory");
		return fail();
	}
	bool first = true;
	uint64_t pos = 0, run_start = 0;
	enum extent_kind run_kind = EXTENT_HOLE;
	int rc = 0;
	/* Merge adjacent extents of the same kind; ZERO and HOLE both read as
	 * zeros and are one kind for map's purpose. */
	while (pos < img->size) {
		struct extent e;
		if ((rc = next_extent(img, buf, pos, &e)) < 0)
			break;
		enum extent_kind k = e.kind == EXTENT_DATA ? EXTENT_DATA : EXTENT_HOLE;
		if (pos == 0) {
			run_kind = k;
		} else if (k != run_kind) {
			print_run(json, &first, run_start, pos - run_start, run_kind);
			run_start = pos;
			run_kind = k;
		}
		pos += e.length < img->size - pos ? e.length : img->size - pos;
	}
	if (rc == 0 && pos > run_start)
		print_run(json, &first, run_start, pos - run_start, run_kind);
	if (rc == 0 && json)
		printf(first ? "[]\n" : "]\n");
	free(buf);
	image_close(img);
	return rc < 0 ? fail() : 0;
}

/* Image formats sparsync does not read or write, recognised the way QEMU's
 * block drivers probe them (a magic at the start, or a footer at the end),
 * so that a vmdk is never copied as if its container bytes were the disk,
 * and raw bytes are never written into a file named .vmdk. */
#include "image.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct magic {
	const char *name;
	long at;          /* offset; negative: from the end of the file */
	const char *bytes;
	size_t len;
};

static const struct magic magics[] = {
	{ "vmdk", 0, "KDMV", 4 },
	{ "vmdk (descriptor)", 0, "# Disk DescriptorFile", 21 },
	{ "vhdx", 0, "vhdxfile", 8 },
	{ "vdi", 0x40, "\x7f\x10\xda\xbe", 4 },
	{ "qed", 0, "QED\0", 4 },
	{ "qcow (version 1)", 0, "QFI\xfb\0\0\0\x01", 8 },
	{ "luks", 0, "LUKS\xba\xbe", 6 },
	{ "parallels", 0, "WithoutFreeSpace", 16 },
	{ "parallels", 0, "WithouFreSpacExt", 16 },
	{ "bochs", 0, "Bochs Virtual HD Image", 22 },
	{ "cloop", 0, "#!/bin/sh\n#V2.0 Format\n", 23 },
	{ "vpc (vhd)", 0, "conectix", 8 },
	{ "vpc (vhd)", -512, "conectix", 8 },
	{ "dmg", -512, "koly", 4 },
};

const char *image_foreign_format(int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return NULL; /* a device is the disk itself (LUKS on an LV is a guest's business) */
	for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++) {
		const struct magic *m = &magics[i];
		off_t at = m->at >= 0 ? m->at : st.st_size + m->at;
		char buf[32];
		if (at < 0 || st.st_size < at + (off_t)m->len)
			continue;
		if (pread(fd, buf, m->len, at) == (ssize_t)m->len && memcmp(buf, m->bytes, m->len) == 0)
			return m->name;
	}
	return NULL;
}

bool image_is_stream(int fd)
{
	struct stat st;
	char buf[8];
	/* core/protocol.h's PROTO_MAGIC, the first bytes of every stream */
	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && pread(fd, buf, 8, 0) == 8 &&
	       memcmp(buf, "SPARSYNC", 8) == 0;
}

static bool has_ext(const char *path, const char *ext)
{
	size_t n = strlen(path), e = strlen(ext);
	return n > e && path[n - e - 1] == '.' && strcasecmp(path + n - e, ext) == 0;
}

const char *image_foreign_extension(const char *path)
{
	static const char *exts[] = { "vmdk", "vhdx", "vhd", "vpc", "vdi", "qed", "dmg", "hdd",
				      "qcow", "parallels" };
	for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
		if (has_ext(path, exts[i]))
			return exts[i];
	return NULL;
}

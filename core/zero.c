#include "zero.h"

#include <stdint.h>
#include <string.h>

bool buf_is_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	/* Check a small head by hand, then compare the buffer with itself
	 * shifted: memcmp is vectorised, so this runs at memory speed. */
	size_t head = len < 16 ? len : 16;
	for (size_t i = 0; i < head; i++)
		if (p[i])
			return false;
	return len <= 16 || memcmp(p, p + 16, len - 16) == 0;
}

size_t zero_run(const unsigned char *buf, size_t len, size_t grain, bool zero)
{
	size_t pos = 0;
	while (pos < len) {
		size_t n = len - pos < grain ? len - pos : grain;
		if (buf_is_zero(buf + pos, n) != zero)
			break;
		pos += n;
	}
	return pos;
}

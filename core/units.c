#include "units.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <strings.h>

int parse_size(const char *s, uint64_t *out)
{
	if (!s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return -1;
	unsigned shift = 0;
	switch (toupper((unsigned char)*end)) {
	case '\0': break;
	case 'K': shift = 10; break;
	case 'M': shift = 20; break;
	case 'G': shift = 30; break;
	case 'T': shift = 40; break;
	case 'B': if (end[1] == '\0') { end++; break; } return -1;
	default: return -1;
	}
	if (shift) {
		end++;
		if (strcasecmp(end, "") != 0 && strcasecmp(end, "B") != 0 && strcasecmp(end, "iB") != 0)
			return -1;
		if (v > (UINT64_MAX >> shift))
			return -1;
		v <<= shift;
	} else if (*end) {
		return -1;
	}
	*out = v;
	return 0;
}

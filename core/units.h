#ifndef SPARSYNC_UNITS_H
#define SPARSYNC_UNITS_H

#include <stdint.h>

/* "64K", "1M", "8MiB", "2G", "512" -> bytes (binary multiples). -1 on junk. */
int parse_size(const char *s, uint64_t *out);

#endif

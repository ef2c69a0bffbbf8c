#ifndef SPARSYNC_ZERO_H
#define SPARSYNC_ZERO_H

#include <stdbool.h>
#include <stddef.h>

/* True when all len bytes are zero. */
bool buf_is_zero(const void *buf, size_t len);

/* Length of the run starting at buf that is all-zero (zero == true) or
 * holds non-zero data (zero == false), measured in whole `grain` units
 * (the last unit may be short). Used to split a block into pieces to
 * write and pieces to leave as holes. */
size_t zero_run(const unsigned char *buf, size_t len, size_t grain, bool zero);

#endif

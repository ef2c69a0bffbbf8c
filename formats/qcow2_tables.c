/* qcow2 mapping tables: load the L1 table and L2 tables from the file,
 * convert them to host byte order and check where they point. */
#include "qcow2.h"

#include "../core/error.h"

#include <endian.h>
#include <inttypes.h>
#include <stdlib.h>

int qcow2_load_l1(int fd, const char *path, const struct qcow2_header *h, uint64_t file_size,
		  uint64_t **l1_out)
{
	*l1_out = NULL;
	uint64_t n = h->l1_size;
	uint64_t *l1 = malloc(n ? n * 8 : 1);
	if (!l1)
		return sp_err("%s: out of memory for an L1 table of %" PRIu64 " entries", path, n);
	if (n && full_pread(fd, l1, n * 8, h->l1_table_offset, path) < 0) {
		free(l1);
		return -1;
	}
	uint64_t cs = 1ull << h->cluster_bits;
	uint64_t used = qcow2_l1_needed(h->size, h->cluster_bits, h->extended_l2);
	for (uint64_t i = 0; i < n; i++) {
		l1[i] = be64toh(l1[i]);
		uint64_t off = l1[i] & QCOW2_L1E_OFFSET_MASK;
		if (i >= used || off == 0)
			continue;
		if (off % cs) {
			free(l1);
			return sp_err("%s: L2 table offset 0x%" PRIx64 " (L1 entry %" PRIu64
				      ") is not cluster-aligned", path, off, i);
		}
		if (off > file_size || file_size - off < cs) {
			free(l1);
			return sp_err("%s: L2 table at offset 0x%" PRIx64 " (L1 entry %" PRIu64
				      ") lies past end of file (%" PRIu64 " bytes)", path, off, i,
				      file_size);
		}
	}
	*l1_out = l1;
	return 0;
}

int qcow2_load_l2(int fd, const char *path, uint64_t offset, uint32_t cluster_bits,
		  uint64_t file_size, uint64_t *table)
{
	uint64_t cs = 1ull << cluster_bits;
	if (offset % cs)
		return sp_err("%s: L2 table offset 0x%" PRIx64 " is not cluster-aligned", path, offset);
	if (offset > file_size || file_size - offset < cs)
		return sp_err("%s: L2 table at offset 0x%" PRIx64 " lies past end of file (%" PRIu64
			      " bytes)", path, offset, file_size);
	if (full_pread(fd, table, cs, offset, path) < 0)
		return -1;
	for (uint64_t i = 0; i < cs / 8; i++)
		table[i] = be64toh(table[i]);
	return 0;
}

/* The receiver's hash list as the sender (or verify) holds it: runs of
 * consecutive units, one hash and one verdict byte per unit. Built once
 * from HASHES records, then only read (the verdicts are set atomically from
 * the copy engine's threads). See core/sync_hash.h for the sizes. */
#ifndef SPARSYNC_SYNC_TABLE_H
#define SPARSYNC_SYNC_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hash.h"
#include "protocol.h"

struct sync_run {
	uint64_t first;   /* unit index of the first unit */
	uint32_t count;
	uint32_t at;      /* index of its first hash in the table */
};

/* Verdicts: what the sender found when it compared a unit. */
enum { SYNC_UNKNOWN = 0, SYNC_SAME = 1, SYNC_DIFFERS = 2 };

struct sync_table {
	uint32_t unit;
	unsigned unit_bits;
	uint64_t size;             /* the receiver's image size, as hashed */
	bool fresh;                /* new destination: empty list, reads zeros */
	bool complete;             /* the HASHES_LAST record arrived */
	bool has_track_id;         /* a TRACK record came before the list */
	struct proto_track track;  /* the id the receiver's digest records */
	struct sync_run *runs;
	size_t nruns, runs_cap;
	struct hash128 *hash;
	uint8_t *verdict;          /* SYNC_*, one per hash */
	size_t n, cap;
	struct hash128 zero;       /* the hash of one unit of zeros */
	uint64_t bytes;            /* data bytes the list covers (units * unit) */
};

void sync_table_init(struct sync_table *t);
void sync_table_free(struct sync_table *t);
/* Append one decoded HASHES record (proto_body_decode has checked order
 * and limits). */
int sync_table_add(struct sync_table *t, const struct proto_hashes *h);
/* Read HASHES records from r until the last one. An ERROR record from the
 * peer returns PROTO_PEER_FAILED with its message set. */
int sync_table_read(struct sync_table *t, struct proto_reader *r);

struct unit_map;
/* The table of what a digest file says DST holds (the local copy's list,
 * in place of a receiver's). */
int sync_table_from_map(struct sync_table *t, const struct unit_map *m);

/* Entry index of unit u, or -1 when the receiver does not hold it. */
long sync_table_find(const struct sync_table *t, uint64_t u);
/* The first entry at unit >= u: *idx and *unit_out; false when none. */
bool sync_table_next(const struct sync_table *t, uint64_t u, size_t *idx, uint64_t *unit_out);

static inline uint8_t sync_verdict_get(const struct sync_table *t, size_t i)
{
	return __atomic_load_n(&t->verdict[i], __ATOMIC_RELAXED);
}
/* Record a verdict; true when this call decided it (first to set it). */
static inline bool sync_verdict_set(struct sync_table *t, size_t i, uint8_t v)
{
	uint8_t expect = SYNC_UNKNOWN;
	return __atomic_compare_exchange_n(&t->verdict[i], &expect, v, false, __ATOMIC_RELAXED,
					   __ATOMIC_RELAXED);
}

#endif

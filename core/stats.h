/* What an operation did, counted as it goes and printed once at the end
 * (human line or one JSON object for --json). Counters are updated from
 * several threads, so use stats_add(). */
#ifndef SPARSYNC_STATS_H
#define SPARSYNC_STATS_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>

#define SP_CODECS_MAX 9

struct sp_stats {
	uint64_t bytes_virtual;   /* virtual size of the source */
	uint64_t bytes_read;      /* bytes read from the source file(s) */
	uint64_t bytes_written;   /* data bytes written to the destination */
	uint64_t bytes_zero;      /* bytes that were holes/zeros (never written as data) */
	/* bytes of the destination made zero where they held data (a device's
	 * old contents, a sync's zeroed blocks); counted where DST is written */
	uint64_t bytes_zeroed;
	uint64_t bytes_data;      /* non-zero data bytes seen at the source */
	uint64_t bytes_sent;      /* bytes on the wire, outgoing */
	uint64_t bytes_received;  /* bytes on the wire, incoming */
	uint64_t blocks_changed;  /* sync: blocks that differed */
	uint64_t bytes_unchanged; /* sync: data bytes already identical */
	/* bytes the destination side read from its image: its hash list, the
	 * local copy's comparisons (0 for an unchanged sync with a valid
	 * digest file) */
	uint64_t dest_bytes_read;
	double seconds;
	/* How the destination was written (core/dest.c's dest_how), or NULL
	 * where this process did not write it. */
	const char *destination;
	/* What became of DST's digest file: "used", or why it was not
	 * (core/digest.c's reasons); NULL when none is kept. */
	const char *digest;
	/* --track: "bitmap" (only what it marked was read), or why the whole
	 * image was compared this time; NULL without --track. */
	const char *track;
	bool dry_run;             /* nothing was written: the figures say what would be */
	/* Wire compression this process used (core/adapt.h): data bytes in
	 * and out per codec and level; none when it sent nothing. */
	struct sp_codec_use {
		char name[12];        /* "zstd:3", "lz4", "none" */
		uint64_t in, out;
	} codecs[SP_CODECS_MAX];
	unsigned ncodecs;
	bool compress_adaptive;   /* --compress auto */
	unsigned connections;     /* SSH connections used (core/links.h); 0 = not counted */
	unsigned compress_changes;
};

#define stats_add(field, n) __atomic_add_fetch(&(field), (uint64_t)(n), __ATOMIC_RELAXED)

double now_seconds(void);
void stats_print_json(FILE *f, const char *op, const struct sp_stats *s);
void stats_print_human(FILE *f, const char *op, const struct sp_stats *s);
/* --stats: one labelled line per figure, like rsync --stats. */
void stats_print_table(FILE *f, const struct sp_stats *s);
/* "auto (2 changes): zstd:1 10 MiB -> 4 MiB, zstd:3 ..." into buf. */
const char *stats_codecs_line(const struct sp_stats *s, char *buf, size_t len);
/* "1.5 GiB" style, into buf. */
const char *human_bytes(uint64_t n, char *buf, size_t len);

#endif

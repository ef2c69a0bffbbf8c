/* Wire compression that follows the link (--compress auto, the default over
 * the network), in the spirit of `zstd --adapt`: the engine's workers
 * compress blocks in parallel and one writer at a time puts them on the
 * transport. When the workers spend more time waiting for the writer than
 * compressing, and the writer is busy nearly all the time, the link (or
 * the cipher in front of it) is the bottleneck: compress harder, so fewer
 * bytes cross it. When the writer is often idle while compression takes a
 * real share of the CPU, the compressor is the bottleneck: compress less.
 * One step at a time, at most once per window, along a ladder from lz4
 * through zstd's negative "fast" levels to zstd 15. A step down is on
 * probation for one window: when the data rate did not get better, it is
 * taken back and steps down rest for a few windows. That catches what the
 * two signals cannot tell apart, such as both ends sharing the same cores,
 * where compressing less only moves the CPU to the cipher and sends more
 * bytes in the same time. A level left because the compressor could not
 * keep up is not climbed back to for a few seconds: the link would only
 * idle again. And a step up must be worth its CPU: once per window one
 * block is also compressed at the next level, and the step is taken only
 * when that saves at least 2 % of its bytes (on a VM's ext4 image, 1 MiB
 * blocks: zstd 1 -> 3 saves 5 %, 3 -> 6 3 %, 6 -> 9 0.6 % at a third of
 * the speed). (Steps up are not tried that way: the data rate
 * also follows how compressible the data is, and a saturated link with
 * idle workers is reason enough.)
 *
 * Every block carries its own codec, so the receiver needs nothing new. */
#ifndef SPARSYNC_ADAPT_H
#define SPARSYNC_ADAPT_H

#include <stdbool.h>
#include <stdint.h>

#include "codec.h"

#define ADAPT_RUNGS 9

struct sp_stats;

struct adapt {
	bool on;
	unsigned n;                            /* rungs in use */
	struct codec_choice rung[ADAPT_RUNGS];
	int cur;                               /* index into rung; read by workers */
	/* The current window (ns): workers waiting for the writer, workers
	 * compressing (atomics); the writer inside transport writes (under
	 * the output lock, like everything below). */
	uint64_t wait_ns, comp_ns, busy_ns;
	unsigned writers;                      /* connections written in parallel (atomic) */
	uint64_t win_in;                       /* data bytes compressed in the window */
	uint64_t start_ns;
	unsigned changes;
	unsigned windows;                      /* windows ended so far */
	int probe_armed;                       /* one block of the window is also ... */
	uint64_t probe_here, probe_next;       /* ... compressed a rung up: bytes out at each */
	bool told_not_worth;                   /* -v said so at this level */
	int trial;                             /* -1: the last step down is on probation */
	double rate_before;                    /* data rate in the window before it */
	unsigned rest_down;                    /* no step down before this window */
	int ceiling;                           /* a rung found too slow for the link ... */
	unsigned ceiling_until;                /* ... is not climbed to before this window */
	int ceiling_was;                       /* the cap before a step on probation */
	unsigned ceiling_until_was;
	uint64_t in[ADAPT_RUNGS], out[ADAPT_RUNGS]; /* data bytes per rung, before and after */
};

/* ch is what the user chose: adaptive when ch->adapt, else that codec only.
 * lz4_ok: the receiver decodes lz4. */
void adapt_init(struct adapt *a, const struct codec_choice *ch, bool lz4_ok);
/* The codec for the next block, and its rung for adapt_block. */
struct codec_choice adapt_pick(struct adapt *a, int *rung);
/* A worker compressed `in` bytes to `out` on that rung in comp_ns and then
 * waited wait_ns for the writer. */
void adapt_block(struct adapt *a, int rung, uint64_t in, uint64_t out, uint64_t comp_ns,
		 uint64_t wait_ns);
/* Should the worker that compressed a block on `rung` also compress it one
 * rung up (and say how it went with adapt_probe_result)? Once per window. */
bool adapt_probe_take(struct adapt *a, int rung);
void adapt_probe_result(struct adapt *a, uint64_t out_here, uint64_t out_next);
/* Under the output lock: the writer spent ns inside one transport write. */
void adapt_write(struct adapt *a, uint64_t ns);
/* Under the output lock, after each block: end the window when it is long
 * enough, maybe step the ladder. */
void adapt_tick(struct adapt *a);
/* The levels used, into st (for -v and --json). */
void adapt_report(const struct adapt *a, struct sp_stats *st);
uint64_t adapt_now_ns(void);

#endif

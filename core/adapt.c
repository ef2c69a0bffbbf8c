#include "adapt.h"

#include "error.h"
#include "stats.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* A window long enough to hold many blocks even on a slow link, short
 * enough to follow a link whose speed changes. */
#define WINDOW_NS 250000000ull
/* The writer is "busy nearly all the time" above this share of the
 * window, "often idle" below the lower one. */
#define BUSY_HIGH 0.90
#define BUSY_LOW 0.75
/* Compression is "a real share of the CPU" from half a core on. */
#define COMP_REAL 0.5
/* A step down must raise the data rate by this much to stay. */
#define TRIAL_GAIN 0.05
#define REST_WINDOWS 8
/* A level found too slow for the link is not tried again for this long. */
#define CEILING_WINDOWS 16
/* A step up must save this share of the bytes (measured on a probe block). */
#define UP_MIN_GAIN 0.02

uint64_t adapt_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void adapt_init(struct adapt *a, const struct codec_choice *ch, bool lz4_ok)
{
	memset(a, 0, sizeof *a);
	if (!ch->adapt || ch->codec != WIRE_ZSTD) {
		a->rung[0] = *ch;
		a->rung[0].adapt = false;
		a->n = 1;
		return;
	}
	/* Fastest first. zstd 1 is where a run starts: the old fixed choice. */
	static const int levels[] = { -5, -1, 1, 3, 6, 9, 12, 15 };
	if (lz4_ok)
		a->rung[a->n++] = (struct codec_choice){ .codec = WIRE_LZ4 };
	for (unsigned i = 0; i < sizeof levels / sizeof *levels; i++) {
		if (levels[i] == 1)
			a->cur = (int)a->n;
		a->rung[a->n++] = (struct codec_choice){ .codec = WIRE_ZSTD, .level = levels[i] };
	}
	a->on = true;
	a->probe_armed = 1;
	a->start_ns = adapt_now_ns();
}

struct codec_choice adapt_pick(struct adapt *a, int *rung)
{
	int r = __atomic_load_n(&a->cur, __ATOMIC_RELAXED);
	*rung = r;
	return a->rung[r];
}

void adapt_block(struct adapt *a, int rung, uint64_t in, uint64_t out, uint64_t comp_ns,
		 uint64_t wait_ns)
{
	__atomic_add_fetch(&a->in[rung], in, __ATOMIC_RELAXED);
	__atomic_add_fetch(&a->out[rung], out, __ATOMIC_RELAXED);
	if (!a->on)
		return;
	__atomic_add_fetch(&a->win_in, in, __ATOMIC_RELAXED);
	__atomic_add_fetch(&a->comp_ns, comp_ns, __ATOMIC_RELAXED);
	__atomic_add_fetch(&a->wait_ns, wait_ns, __ATOMIC_RELAXED);
}

bool adapt_probe_take(struct adapt *a, int rung)
{
	return a->on && rung + 1 < (int)a->n && rung == __atomic_load_n(&a->cur, __ATOMIC_RELAXED) &&
	       __atomic_exchange_n(&a->probe_armed, 0, __ATOMIC_RELAXED);
}

void adapt_probe_result(struct adapt *a, uint64_t out_here, uint64_t out_next)
{
	__atomic_add_fetch(&a->probe_here, out_here, __ATOMIC_RELAXED);
	__atomic_add_fetch(&a->probe_next, out_next, __ATOMIC_RELAXED);
}

void adapt_write(struct adapt *a, uint64_t ns)
{
	if (a->on)
		__atomic_add_fetch(&a->busy_ns, ns, __ATOMIC_RELAXED);
}

static void step(struct adapt *a, int next, const char *why, double busy)
{
	__atomic_store_n(&a->cur, next, __ATOMIC_RELAXED);
	__atomic_store_n(&a->probe_here, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&a->probe_next, 0, __ATOMIC_RELAXED);
	a->told_not_worth = false;
	a->changes++;
	char name[16];
	sp_info("compression: %s (%s; writer busy %.0f%%)", codec_label(&a->rung[next], name, sizeof name),
		why, busy * 100);
}

void adapt_tick(struct adapt *a)
{
	if (!a->on)
		return;
	uint64_t now = adapt_now_ns(), span = now - a->start_ns;
	if (span < WINDOW_NS)
		return;
	/* With several connections, each one's writer counts. */
	unsigned writers = __atomic_load_n(&a->writers, __ATOMIC_RELAXED);
	double busy = (double)__atomic_exchange_n(&a->busy_ns, 0, __ATOMIC_RELAXED) / (double)span /
		      (writers ? writers : 1);
	uint64_t wait = __atomic_exchange_n(&a->wait_ns, 0, __ATOMIC_RELAXED);
	uint64_t comp = __atomic_exchange_n(&a->comp_ns, 0, __ATOMIC_RELAXED);
	double rate = (double)__atomic_exchange_n(&a->win_in, 0, __ATOMIC_RELAXED) * 1e9 / (double)span;
	a->start_ns = now;
	a->windows++;
	/* The probe block's saving one rung up (the probe is re-armed each
	 * window; its figures stand until the level changes). */
	uint64_t ph = __atomic_load_n(&a->probe_here, __ATOMIC_RELAXED);
	uint64_t pn = __atomic_load_n(&a->probe_next, __ATOMIC_RELAXED);
	bool worth_up = ph && (double)pn <= (double)ph * (1 - UP_MIN_GAIN);
	__atomic_store_n(&a->probe_armed, 1, __ATOMIC_RELAXED);
	int cur = a->cur;
	if (a->trial) {
		int dir = a->trial; /* only steps down are tried: see adapt.h */
		a->trial = 0;
		if (dir < 0 && rate < a->rate_before * (1 + TRIAL_GAIN)) {
			a->rest_down = a->windows + REST_WINDOWS;
			/* This level was fast enough after all: the cap on the
			 * one above it, if any, stands. */
			a->ceiling = a->ceiling_was;
			a->ceiling_until = a->ceiling_until_was;
			step(a, cur + 1, "less compression did not go faster", busy);
		}
		return;
	}
	bool capped = a->windows < a->ceiling_until && cur + 1 >= a->ceiling;
	bool link_bound = busy >= BUSY_HIGH && wait >= comp;
	if (link_bound && cur + 1 < (int)a->n && !capped && !worth_up && ph && !a->told_not_worth) {
		a->told_not_worth = true;
		sp_info("compression: the link is the bottleneck, but one level up would save only "
			"%.1f%% of the bytes: staying", 100.0 * (1 - (double)pn / (double)ph));
	}
	if (link_bound && cur + 1 < (int)a->n && !capped && worth_up) {
		step(a, cur + 1, "the link is the bottleneck", busy);
	} else if (busy < BUSY_LOW && (double)comp >= COMP_REAL * (double)span && cur > 0 &&
		   a->windows >= a->rest_down) {
		a->trial = -1;
		a->rate_before = rate;
		/* Climbing back to this level would only idle the link again. */
		a->ceiling_was = a->ceiling;
		a->ceiling_until_was = a->ceiling_until;
		a->ceiling = cur;
		a->ceiling_until = a->windows + CEILING_WINDOWS;
		step(a, cur - 1, "the compressor is the bottleneck", busy);
	}
}

void adapt_report(const struct adapt *a, struct sp_stats *st)
{
	st->ncodecs = 0;
	st->compress_adaptive = a->on;
	st->compress_changes = a->changes;
	for (unsigned i = 0; i < a->n && st->ncodecs < SP_CODECS_MAX; i++) {
		uint64_t in = __atomic_load_n(&a->in[i], __ATOMIC_RELAXED);
		if (!in)
			continue;
		struct sp_codec_use *u = &st->codecs[st->ncodecs++];
		codec_label(&a->rung[i], u->name, sizeof u->name);
		u->in = in;
		u->out = __atomic_load_n(&a->out[i], __ATOMIC_RELAXED);
	}
}

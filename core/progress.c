#include "progress.h"

#include <stdio.h>
#include <unistd.h>

void progress_init(struct progress *p, enum progress_mode mode, uint64_t total)
{
	p->on = mode == PROGRESS_FORCE || (mode == PROGRESS_AUTO && isatty(STDERR_FILENO));
	p->drawn = false;
	p->total = total;
	p->start = p->last = now_seconds();
}

void progress_set_total(struct progress *p, uint64_t total)
{
	p->total = total;
}

void progress_update(struct progress *p, uint64_t done, const struct sp_stats *st)
{
	if (!p->on)
		return;
	double t = now_seconds();
	if (t - p->last < 0.25 && done < p->total)
		return;
	p->last = t;
	double el = t - p->start;
	double rate = el > 0 ? (double)done / el : 0;
	double pct = p->total ? 100.0 * (double)done / (double)p->total : 100.0;
	double eta = rate > 0 ? (double)(p->total - done) / rate : 0;
	char d[32], r[32], w[32];
	fprintf(stderr, "\r%s %5.1f%%  %s/s  ETA %d:%02d:%02d  wire %s   ",
		human_bytes(done, d, sizeof d), pct, human_bytes((uint64_t)rate, r, sizeof r),
		(int)(eta / 3600), (int)(eta / 60) % 60, (int)eta % 60,
		human_bytes(st->bytes_sent + st->bytes_received, w, sizeof w));
	fflush(stderr);
	p->drawn = true;
}

void progress_end(struct progress *p)
{
	if (p->on && p->drawn) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
	p->drawn = false;
}

#include "stats.h"

#include <time.h>

double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

const char *human_bytes(uint64_t n, char *buf, size_t len)
{
	static const char *unit[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)n;
	int u = 0;
	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)n);
	else
		snprintf(buf, len, "%.1f %s", v, unit[u]);
	return buf;
}

const char *stats_codecs_line(const struct sp_stats *s, char *buf, size_t len)
{
	size_t at = 0;
	buf[0] = '\0';
	if (s->compress_adaptive)
		at += (size_t)snprintf(buf, len, "auto (%u change%s): ", s->compress_changes,
				       s->compress_changes == 1 ? "" : "s");
	for (unsigned i = 0; i < s->ncodecs && at < len; i++) {
		char a[32], b[32];
		at += (size_t)snprintf(buf + at, len - at, "%s%s %s -> %s", i ? ", " : "",
				       s->codecs[i].name, human_bytes(s->codecs[i].in, a, sizeof a),
				       human_bytes(s->codecs[i].out, b, sizeof b));
	}
	return buf;
}

void stats_print_json(FILE *f, const char *op, const struct sp_stats *s)
{
	fprintf(f,
		"{\"operation\":\"%s\",\"bytes_virtual\":%llu,\"bytes_read\":%llu,"
		"\"dest_bytes_read\":%llu,"
		"\"bytes_written\":%llu,\"bytes_zeroed\":%llu,\"bytes_zero\":%llu,\"bytes_data\":%llu,"
		"\"bytes_sent\":%llu,\"bytes_received\":%llu,\"blocks_changed\":%llu,"
		"\"bytes_unchanged\":%llu,",
		op, (unsigned long long)s->bytes_virtual, (unsigned long long)s->bytes_read,
		(unsigned long long)s->dest_bytes_read,
		(unsigned long long)s->bytes_written, (unsigned long long)s->bytes_zeroed,
		(unsigned long long)s->bytes_zero,
		(unsigned long long)s->bytes_data, (unsigned long long)s->bytes_sent,
		(unsigned long long)s->bytes_received, (unsigned long long)s->blocks_changed,
		(unsigned long long)s->bytes_unchanged);
	if (s->destination)
		fprintf(f, "\"destination\":\"%s\",", s->destination);
	if (s->digest)
		fprintf(f, "\"digest\":\"%s\",", s->digest);
	if (s->track)
		fprintf(f, "\"track\":\"%s\",", s->track);
	if (s->dry_run)
		fprintf(f, "\"dry_run\":true,");
	if (s->connections)
		fprintf(f, "\"connections\":%u,", s->connections);
	if (s->ncodecs) {
		/* "compress":{"mode":"auto","changes":2,"levels":{"zstd:1":{"in":N,"out":M},...}} */
		fprintf(f, "\"compress\":{\"mode\":\"%s\",\"changes\":%u,\"levels\":{",
			s->compress_adaptive ? "auto" : "fixed", s->compress_changes);
		for (unsigned i = 0; i < s->ncodecs; i++)
			fprintf(f, "%s\"%s\":{\"in\":%llu,\"out\":%llu}", i ? "," : "", s->codecs[i].name,
				(unsigned long long)s->codecs[i].in, (unsigned long long)s->codecs[i].out);
		fprintf(f, "}},");
	}
	fprintf(f, "\"seconds\":%.3f}\n", s->seconds);
	fflush(f);
}

void stats_print_human(FILE *f, const char *op, const struct sp_stats *s)
{
	char v[32], r[32], w[32], z[32];
	fprintf(f, "%s%s: %s virtual, %s read, %s %s, %s zero/holes skipped",
		s->dry_run ? "dry run: " : "", op, human_bytes(s->bytes_virtual, v, sizeof v),
		human_bytes(s->bytes_read, r, sizeof r), human_bytes(s->bytes_written, w, sizeof w),
		s->dry_run ? "to write" : "written", human_bytes(s->bytes_zero, z, sizeof z));
	if (s->bytes_sent || s->bytes_received) {
		char a[32], b[32];
		fprintf(f, ", %s sent, %s received", human_bytes(s->bytes_sent, a, sizeof a),
			human_bytes(s->bytes_received, b, sizeof b));
	}
	fprintf(f, " in %.2f s\n", s->seconds);
}

static void row(FILE *f, const char *label, uint64_t n)
{
	char b[32];
	fprintf(f, "%-28s %s (%llu bytes)\n", label, human_bytes(n, b, sizeof b), (unsigned long long)n);
}

void stats_print_table(FILE *f, const struct sp_stats *s)
{
	row(f, "Virtual size:", s->bytes_virtual);
	row(f, "Data at the source:", s->bytes_data);
	row(f, "Zeros and holes (skipped):", s->bytes_zero);
	row(f, "Read from the source:", s->bytes_read);
	row(f, "Read from the destination:", s->dest_bytes_read);
	row(f, "Already identical:", s->bytes_unchanged);
	fprintf(f, "%-28s %llu\n", "Changed units:", (unsigned long long)s->blocks_changed);
	row(f, "Written:", s->bytes_written);
	row(f, "Zeroed at the destination:", s->bytes_zeroed);
	row(f, "Sent:", s->bytes_sent);
	row(f, "Received:", s->bytes_received);
	if (s->destination)
		fprintf(f, "%-28s %s\n", "Destination written as:", s->destination);
	if (s->digest)
		fprintf(f, "%-28s %s\n", "Digest file:", s->digest);
	if (s->track)
		fprintf(f, "%-28s %s\n", "Tracking:", s->track);
	if (s->ncodecs) {
		char line[512];
		stats_codecs_line(s, line, sizeof line);
		fprintf(f, "%-28s %s\n", "Wire compression:", line);
	}
	char r[32];
	fprintf(f, "%-28s %.3f s (%s/s of data)\n", "Time:", s->seconds,
		human_bytes(s->seconds > 0 ? (uint64_t)((double)s->bytes_data / s->seconds) : 0, r,
			    sizeof r));
	fflush(f);
}

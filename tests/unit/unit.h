/* Minimal unit-test harness: every CHECK prints PASS/FAIL with its name;
 * tests/run.sh counts the lines. Each test file is its own binary. */
#ifndef SPARSYNC_UNIT_H
#define SPARSYNC_UNIT_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

static int unit_failed;

#define CHECK(name, cond)                                                          \
	do {                                                                       \
		if (cond) {                                                        \
			printf("PASS: %s: %s\n", __FILE__, name);                  \
		} else {                                                           \
			printf("FAIL: %s: %s (%s:%d: %s)\n", __FILE__, name, __FILE__, \
			       __LINE__, #cond);                                   \
			unit_failed++;                                             \
		}                                                                  \
	} while (0)

#define UNIT_DONE() return unit_failed ? 1 : 0

/* A scratch directory under $TMPDIR, removed by the runner. */
static inline const char *unit_tmpdir(void)
{
	const char *t = getenv("SPARSYNC_TEST_TMP");
	return t ? t : "/tmp";
}

/* Byte-for-byte equal files (both must exist). */
static inline bool same_file(const char *a, const char *b)
{
	FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
	bool same = fa && fb;
	while (same) {
		int ca = fgetc(fa), cb = fgetc(fb);
		if (ca != cb)
			same = false;
		if (ca == EOF || cb == EOF)
			break;
	}
	if (fa)
		fclose(fa);
	if (fb)
		fclose(fb);
	return same;
}

#endif

/* Shared by every subcommand: how usage errors and failures are printed. */
#include "cmd.h"

#include "../core/error.h"

#include <stdarg.h>
#include <stdio.h>

int usage_error(const char *cmd, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "sparsync %s: %s (try 'sparsync %s --help')\n", cmd, msg, cmd);
	return EXIT_USAGE;
}

int fail(void)
{
	fprintf(stderr, "sparsync: %s\n", sp_errmsg());
	return EXIT_FAIL;
}

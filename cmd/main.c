/* sparsync: move and sync sparse disk images. Subcommand dispatch only. */
#include "cmd.h"

#include "../core/cleanup.h"
#include "../core/error.h"

#include <stdio.h>
#include <string.h>

static const char usage_text[] =
	"usage: sparsync COMMAND [OPTIONS] ...\n"
	"\n"
	"Commands:\n"
	"  copy [OPTIONS] SRC DST   copy or sync an image; SRC or DST may be [USER@]HOST:PATH or -\n"
	"  map [--json] [-f FORMAT] IMAGE\n"
	"                           show which ranges hold data, like qemu-img map\n"
	"  shrink [--json] [-q] IMAGE\n"
	"                           turn zero-filled blocks into holes, content unchanged\n"
	"  verify [OPTIONS] SRC DST compare two images by block hashes\n"
	"  recover IMAGE            roll back an interrupted update of IMAGE\n"
	"  serve                    the remote half, started over ssh by copy\n"
	"\n"
	"Run 'sparsync COMMAND --help' for a command's options; see sparsync(1).\n";

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs(usage_text, stderr);
		return EXIT_USAGE;
	}
	const char *c = argv[1];
	if (strcmp(c, "--help") == 0 || strcmp(c, "-h") == 0 || strcmp(c, "help") == 0) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (strcmp(c, "--version") == 0 || strcmp(c, "-V") == 0) {
		printf("sparsync %s\n", SPARSYNC_VERSION);
		return 0;
	}
	cleanup_install_signals();
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = {
		{ "copy", cmd_copy },     { "map", cmd_map },       { "shrink", cmd_shrink },
		{ "verify", cmd_verify }, { "serve", cmd_serve },     { "recover", cmd_recover },
	};
	for (unsigned i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
		if (strcmp(c, cmds[i].name) == 0)
			return cmds[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "sparsync: unknown command '%s'\n%s", c, usage_text);
	return EXIT_USAGE;
}

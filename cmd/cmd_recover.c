/* recover: put back the image an interrupted in-place update left behind
 * (formats/undo.h). The next copy onto the same destination does this by
 * itself; recover is for a destination that will not be synced again soon,
 * or one about to be read. */
#include "cmd.h"

#include "../core/error.h"
#include "../formats/undo.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char recover_usage[] =
	"usage: sparsync recover [-q] IMAGE\n"
	"Roll back an interrupted update of IMAGE to the image it held before.\n"
	"Exit 0 also when there was nothing to recover.\n";

int cmd_recover(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	bool quiet = false;
	int c;
	while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
		switch (c) {
		case 'q': quiet = true; break;
		case 'h': fputs(recover_usage, stdout); return 0;
		default: return EXIT_USAGE;
		}
	}
	if (argc - optind != 1)
		return usage_error("recover", "expected one IMAGE");
	const char *path = argv[optind];
	char *real = realpath(path, NULL);
	if (!real) {
		sp_err("%s: %s", path, strerror(errno));
		return fail();
	}
	bool recovered;
	int rc = undo_recover(real, path, &recovered);
	free(real);
	if (rc < 0)
		return fail();
	if (!quiet)
		printf("%s: %s\n", path, recovered ? "rolled back to the image before the interrupted "
			"update" : "nothing to recover");
	return 0;
}

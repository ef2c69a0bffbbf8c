/* TEMPORARY: replaced by cmd_verify.c. */
#include "cmd.h"
#include <stdio.h>
int cmd_verify(int argc, char **argv)
{
	(void)argc, (void)argv;
	fprintf(stderr, "sparsync: verify is not implemented yet\n");
	return EXIT_FAIL;
}

/* TEMPORARY: replaced by cmd_copy_remote.c, cmd_serve.c, cmd_verify.c. */
#include "cmd.h"
#include "copy_cli.h"
#include "../core/error.h"
#include <stdio.h>
int copy_remote(const struct copy_cli *cli, struct sp_stats *st)
{
	(void)cli, (void)st;
	return sp_err("remote copy is not implemented yet");
}
int cmd_serve(int argc, char **argv)
{
	(void)argc, (void)argv;
	fprintf(stderr, "sparsync: serve is not implemented yet\n");
	return EXIT_FAIL;
}
int cmd_verify(int argc, char **argv)
{
	(void)argc, (void)argv;
	fprintf(stderr, "sparsync: verify is not implemented yet\n");
	return EXIT_FAIL;
}

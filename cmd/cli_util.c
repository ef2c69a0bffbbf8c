/* Shared by every subcommand: how usage errors and failures are printed. */
#include "cmd.h"

#include "../core/error.h"
#include "../core/units.h"
#include "../formats/nbd.h"
#include "copy_cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

int cli_shared_option(struct copy_cli *cli, const char *cmd, int c, const char *arg)
{
	uint64_t v;
	switch (c) {
	case 'j':
		if (parse_size(arg, &v) < 0 || v < 1 || v > 256)
			return usage_error(cmd, "-j takes a number of threads from 1 to 256");
		cli->workers = (unsigned)v;
		return 0;
	case 'p':
		if (parse_size(arg, &v) < 0 || v < 1 || v > 65535)
			return usage_error(cmd, "bad port '%s'", arg);
		cli->port = (int)v;
		return 0;
	case 'i': cli->identity = arg; return 0;
	case 'U': cli->force_share = true; return 0;
	case 'e': cli->rsh = arg; return 0;
	case OPT_KNOWN_HOSTS: cli->known_hosts = arg; return 0;
	case OPT_ACCEPT_NEW: cli->accept_new_host_key = true; return 0;
	case OPT_REMOTE_PATH: cli->remote_path = arg; return 0;
	case OPT_TIMEOUT:
		if (parse_size(arg, &v) < 0 || v < 1 || v > 86400)
			return usage_error(cmd, "--timeout takes seconds from 1 to 86400");
		cli->timeout_s = (unsigned)v;
		nbd_set_timeout(cli->timeout_s);
		return 0;
	case OPT_CONNECT_TIMEOUT:
		if (parse_size(arg, &v) < 0 || v < 1 || v > 86400)
			return usage_error(cmd, "--connect-timeout takes seconds from 1 to 86400");
		cli->connect_timeout = (unsigned)v;
		return 0;
	case OPT_SSH:
		if (strcmp(arg, "auto") == 0)
			cli->ssh_client = SSH_AUTO;
		else if (strcmp(arg, "builtin") == 0)
			cli->ssh_client = SSH_BUILTIN;
		else if (strcmp(arg, "openssh") == 0)
			cli->ssh_client = SSH_OPENSSH;
		else
			return usage_error(cmd, "--ssh takes auto, builtin or openssh, not '%s'", arg);
		return 0;
	case 'v': sp_set_verbose(sp_verbose() + 1); return 0;
	default: return -1;
	}
}

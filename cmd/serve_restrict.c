/* The restricted serve: `sparsync serve --restrict-to DIR [--read-only |
 * --write-only] [--append-only]` as the forced command of a backup host's
 * authorized_keys line (like rsync's rrsync, borg serve --restrict-to-path
 * --append-only). The client's own command, which ssh puts in
 * SSH_ORIGINAL_COMMAND, is split without a shell; only a sparsync serve
 * request runs, with every path it names inside DIR (core/confine.c) and
 * the key's rules applied. A refusal reaches the client as one line. */
#include "cmd.h"
#include "serve.h"
#include "shell_words.h"

#include "../core/confine.h"
#include "../core/error.h"
#include "../core/paths.h"
#include "../formats/nbd.h"
#include "../formats/rbd.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { OPT_RESTRICT = 256, OPT_READ_ONLY, OPT_WRITE_ONLY, OPT_APPEND_ONLY };

static const struct option restrict_opts[] = {
	{ "restrict-to", required_argument, NULL, OPT_RESTRICT },
	{ "read-only", no_argument, NULL, OPT_READ_ONLY },
	{ "write-only", no_argument, NULL, OPT_WRITE_ONLY },
	{ "append-only", no_argument, NULL, OPT_APPEND_ONLY },
	{ 0, 0, 0, 0 },
};

struct restriction {
	const char *dir;
	bool read_only, write_only, append_only;
};

bool serve_restricted_asked(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		for (const struct option *o = restrict_opts; o->name; o++)
			if (argv[i][0] == '-' && argv[i][1] == '-' &&
			    !strncmp(argv[i] + 2, o->name, strlen(o->name)) &&
			    (!argv[i][2 + strlen(o->name)] || argv[i][2 + strlen(o->name)] == '='))
				return true;
	return false;
}

static int parse_restriction(int argc, char **argv, struct restriction *r)
{
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", restrict_opts, NULL)) != -1) {
		switch (c) {
		case OPT_RESTRICT: r->dir = optarg; break;
		case OPT_READ_ONLY: r->read_only = true; break;
		case OPT_WRITE_ONLY: r->write_only = true; break;
		case OPT_APPEND_ONLY: r->append_only = true; break;
		default:
			return usage_error("serve", "with --restrict-to, serve takes only --read-only, "
					   "--write-only and --append-only; the request comes from "
					   "the client (SSH_ORIGINAL_COMMAND)");
		}
	}
	opterr = 1;
	if (optind != argc)
		return usage_error("serve", "unexpected argument '%s'", argv[optind]);
	if (!r->dir)
		return usage_error("serve", "--read-only, --write-only and --append-only go with "
				   "--restrict-to DIR");
	if (r->read_only && r->write_only)
		return usage_error("serve", "--read-only and --write-only exclude each other");
	return 0;
}

/* The paths this request names, resolved inside DIR; what replaced them
 * in the request is kept here to be freed. */
struct resolved {
	char *path, *digest_file, *backing;
};

static int resolve_paths(struct serve_args *a, struct resolved *res)
{
	const char **path = a->receive ? &a->receive : a->send ? &a->send : &a->hashes;
	const char *asked = *path;
	/* An NBD URI would have the backup host connect wherever it says. */
	if (nbd_uri_is(asked) || rbd_spec_is(asked))
		return sp_err("%s: NBD exports and RBD images are refused by serve --restrict-to", asked);
	if (!(res->path = confine_client_path(asked)))
		return -1;
	/* A directory means DIR/NAME for a push (dest.h); joined here, so
	 * that NAME is resolved inside DIR like any other path. */
	struct stat sb;
	size_t n = strlen(asked);
	bool into_dir = (n && asked[n - 1] == '/') ||
			(stat(res->path, &sb) == 0 && S_ISDIR(sb.st_mode));
	if (a->receive && a->source_name && into_dir) {
		const char *name = a->source_name;
		if (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
			return sp_err("%s: the source's name '%s' is not a file name", asked, name);
		char *joined = path_join(asked, name);
		free(res->path);
		res->path = joined ? confine_client_path(joined) : NULL;
		free(joined);
		if (!res->path)
			return -1;
		a->source_name = NULL;
	}
	*path = res->path;
	if (a->digest_file) {
		if (!(res->digest_file = confine_client_path(a->digest_file)))
			return -1;
		a->digest_file = res->digest_file;
	}
	/* A relative backing name is resolved from DST's directory when it is
	 * opened, and confined there; an absolute one is the client's view. */
	const char *b = a->create.backing;
	if (b && (b[0] == '/' || b[0] == '~')) {
		if (!(res->backing = confine_client_path(b)))
			return -1;
		a->create.backing = res->backing;
	}
	return 0;
}

/* The key's rules, then the paths. -1: refused, why in sp_errmsg(). */
static int apply_rules(struct serve_args *a, const struct restriction *r, struct resolved *res)
{
	/* A further connection names no path: it joins a session this key
	 * started, whose rules were applied then, and only with the token
	 * that session gave its client (core/links.h). */
	if (a->join)
		return 0;
	if (a->receive && r->read_only)
		return sp_err("%s: pushes are refused: this key may only pull and verify (refused "
			      "by serve --read-only)", a->receive);
	const char *read = a->send ? a->send : a->hashes;
	if (read && r->write_only)
		return sp_err("%s: reading is refused: this key may only push (refused by serve "
			      "--write-only)", read);
	if (a->send && a->track && (r->read_only || r->append_only))
		return sp_err("%s: --track writes a bitmap into the image, and this key may not "
			      "change files (refused by serve %s)", a->send,
			      r->read_only ? "--read-only" : "--append-only");
	return resolve_paths(a, res);
}

int serve_restricted(int argc, char **argv)
{
	struct restriction r = { 0 };
	int rc = parse_restriction(argc, argv, &r);
	if (rc != 0)
		return rc;
	const char *asked = getenv("SSH_ORIGINAL_COMMAND");
	if (!asked) {
		fprintf(stderr, "sparsync serve: refused: no command was asked for (--restrict-to is "
			"the forced command of an authorized_keys line, run by sparsync copy and "
			"verify)\n");
		return EXIT_FAIL;
	}
	char **w;
	int wc;
	if (shell_words(asked, &w, &wc) < 0) {
		fprintf(stderr, "sparsync serve: refused '%s': %s\n", asked, sp_errmsg());
		return EXIT_FAIL;
	}
	const char *prog = wc > 0 ? strrchr(w[0], '/') : NULL;
	prog = prog ? prog + 1 : wc > 0 ? w[0] : "";
	if (wc < 2 || !strstr(prog, "sparsync") || strcmp(w[1], "serve") != 0) {
		fprintf(stderr, "sparsync serve: refused '%s': this key runs only sparsync serve, "
			"as sparsync copy and verify start it\n", asked);
		free(w);
		return EXIT_FAIL;
	}
	if (confine_init(r.dir, r.append_only) < 0) {
		fprintf(stderr, "sparsync serve: %s\n", sp_errmsg());
		free(w);
		return EXIT_FAIL;
	}
	struct serve_args a;
	memset(&a, 0, sizeof a);
	optind = 0; /* a second parse in this process: start getopt afresh */
	rc = serve_parse(wc - 1, w + 1, &a);
	if (rc == 0) {
		struct resolved res = { 0 };
		char refusal[1024] = "";
		if (apply_rules(&a, &r, &res) < 0)
			snprintf(refusal, sizeof refusal, "%s", sp_errmsg());
		rc = serve_run(&a, *refusal ? refusal : NULL);
		free(res.path);
		free(res.digest_file);
		free(res.backing);
	}
	free(w);
	return rc;
}

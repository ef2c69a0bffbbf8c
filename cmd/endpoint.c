#include "endpoint.h"

#include "../core/error.h"
#include "../formats/nbd.h"
#include "../formats/rbd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ssh://[USER@]HOST[:PORT]/PATH, HOST may be [v6addr]. */
static int parse_url(const char *spec, struct endpoint *ep)
{
	const char *p = spec + 6, *end = strchr(p, '/');
	if (!end || end == p)
		return sp_err("%s: expected ssh://[USER@]HOST[:PORT]/PATH", spec);
	const char *at = memchr(p, '@', (size_t)(end - p));
	if (at) {
		ep->user = strndup(p, (size_t)(at - p));
		p = at + 1;
	}
	const char *hend = NULL, *portp = NULL;
	if (*p == '[') {
		const char *close = memchr(p, ']', (size_t)(end - p));
		if (!close || (close + 1 != end && close[1] != ':'))
			return sp_err("%s: malformed [address] in the URL", spec);
		ep->host = strndup(p + 1, (size_t)(close - p - 1));
		portp = close[1] == ':' ? close + 2 : NULL;
	} else {
		hend = memchr(p, ':', (size_t)(end - p));
		ep->host = strndup(p, (size_t)((hend ? hend : end) - p));
		portp = hend ? hend + 1 : NULL;
	}
	if (portp) {
		char *stop;
		long v = strtol(portp, &stop, 10);
		if (stop != end || v < 1 || v > 65535)
			return sp_err("%s: bad port in the URL", spec);
		ep->port = (int)v;
	}
	/* "/~/x" and "/~user/x" name paths in home directories, as rsync and
	 * curl read them; anything else is absolute. */
	ep->path = strdup(end[1] == '~' ? end + 1 : end);
	ep->kind = EP_REMOTE;
	return 0;
}

int endpoint_parse(const char *spec, struct endpoint *ep)
{
	memset(ep, 0, sizeof *ep);
	if (strcmp(spec, "-") == 0) {
		ep->kind = EP_STREAM;
		return 0;
	}
	/* An NBD URI or an RBD image (rbd:POOL/IMAGE, QEMU's syntax) names
	 * what this host connects to: a local image. */
	if (nbd_uri_is(spec) || rbd_spec_is(spec)) {
		ep->kind = EP_LOCAL;
		ep->path = strdup(spec);
		return ep->path ? 0 : sp_err("out of memory");
	}
	const char *at = NULL, *hoststart = spec, *colon = NULL;
	if (strncmp(spec, "ssh://", 6) == 0) {
		if (parse_url(spec, ep) < 0) {
			char saved[1024];
			snprintf(saved, sizeof saved, "%s", sp_errmsg());
			endpoint_free(ep);
			return sp_err("%s", saved);
		}
		at = ep->user ? spec : NULL;
		goto check;
	}
	const char *slash = strchr(spec, '/');
	const char *bracket = strchr(spec, '[');
	if (bracket && (!slash || bracket < slash)) {
		const char *close = strchr(bracket, ']');
		if (!close || close[1] != ':')
			return sp_err("%s: malformed [address]:path", spec);
		if (bracket > spec) {
			if (bracket[-1] != '@')
				return sp_err("%s: malformed [address]:path", spec);
			at = bracket - 1;
		}
		ep->kind = EP_REMOTE;
		if (at)
			ep->user = strndup(spec, (size_t)(at - spec));
		ep->host = strndup(bracket + 1, (size_t)(close - bracket - 1));
		ep->path = strdup(close + 2);
	} else {
		colon = strchr(spec, ':');
		if (!colon || (slash && slash < colon) || colon == spec) {
			ep->kind = EP_LOCAL;
			ep->path = strdup(spec);
			return ep->path ? 0 : sp_err("out of memory");
		}
		ep->kind = EP_REMOTE;
		at = memchr(spec, '@', (size_t)(colon - spec));
		if (at) {
			ep->user = strndup(spec, (size_t)(at - spec));
			hoststart = at + 1;
		}
		ep->host = strndup(hoststart, (size_t)(colon - hoststart));
		/* "host:" is the remote home directory, as with scp. */
		ep->path = strdup(colon[1] ? colon + 1 : ".");
	}
check:
	if (!ep->host || !ep->path || (at && !ep->user)) {
		endpoint_free(ep);
		return sp_err("out of memory");
	}
	if (!*ep->host || (ep->user && !*ep->user)) {
		endpoint_free(ep);
		return sp_err("%s: empty host or user name", spec);
	}
	if (!*ep->path) {
		endpoint_free(ep);
		return sp_err("%s: remote path is empty", spec);
	}
	return 0;
}

void endpoint_free(struct endpoint *ep)
{
	free(ep->user);
	free(ep->host);
	free(ep->path);
	memset(ep, 0, sizeof *ep);
}

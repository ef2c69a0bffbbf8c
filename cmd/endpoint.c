#include "endpoint.h"

#include "../core/error.h"

#include <stdlib.h>
#include <string.h>

int endpoint_parse(const char *spec, struct endpoint *ep)
{
	memset(ep, 0, sizeof *ep);
	if (strcmp(spec, "-") == 0) {
		ep->kind = EP_STREAM;
		return 0;
	}
	const char *at = NULL, *hoststart = spec, *colon = NULL;
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
		ep->path = strdup(colon + 1);
	}
	if (!ep->host || !ep->path || (at && !ep->user)) {
		endpoint_free(ep);
		return sp_err("out of memory");
	}
	if (!*ep->host || (ep->user && !*ep->user)) {
		endpoint_free(ep);
		return sp_err("%s: empty host or user name", spec);
	}
	if (!*ep->path) {
		/* "host:" means the remote home directory, which is no image. */
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

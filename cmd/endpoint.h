/* SRC/DST arguments: a local path, "-" (stdin/stdout stream), or a remote
 * [USER@]HOST:PATH / [USER@][v6addr]:PATH as rsync and scp spell them, or
 * ssh://[USER@]HOST[:PORT]/PATH (ssh://host/~/x for a path in the home
 * directory). A colon after the first slash is part of a local path
 * ("./a:b"). An empty remote path ("host:") is the remote home directory,
 * as with scp. An NBD URI (nbd://, nbd+unix://, ...: formats/nbd.h) is a
 * local image: the export this host connects to; so is rbd:POOL/IMAGE
 * (formats/rbd.h; a host named rbd is ssh://rbd/PATH). */
#ifndef SPARSYNC_ENDPOINT_H
#define SPARSYNC_ENDPOINT_H

enum endpoint_kind { EP_LOCAL, EP_STREAM, EP_REMOTE };

struct endpoint {
	enum endpoint_kind kind;
	char *user; /* remote only, may be NULL */
	char *host; /* remote only, brackets removed */
	char *path; /* local or remote path; NULL for a stream */
	int port;   /* ssh:// URL's port; 0 = none given */
};

/* 0, or -1 with sp_errmsg() set for a malformed spec. */
int endpoint_parse(const char *spec, struct endpoint *ep);
void endpoint_free(struct endpoint *ep);

#endif

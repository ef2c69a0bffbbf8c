/* Several connections for one session (`copy --connections N`). One SSH
 * connection is bounded by one core's cipher, and on a fat link by one
 * TCP window; N connections, each with its own cipher state and remote
 * process, spread both, as mscp and HPN-SSH do.
 *
 * The first connection is the session as always. Serve, the remote half
 * (whichever way the data goes), opens a rendezvous: a Linux abstract
 * unix socket under a random name (nothing to clean up, gone with the
 * process), and a random token; it tells the client both in a LINKS record
 * on the first connection. The client opens further connections that run
 * `sparsync serve --join NAME`: that process connects to the rendezvous,
 * hands its stdin and stdout to the session's serve (SCM_RIGHTS) and waits
 * until the session is over, so that sshd keeps the channel open; it
 * copies no byte. Over the handed-over descriptors the client writes its
 * hello and a JOIN record with the token: only a client that read LINKS on
 * the session's own encrypted connection knows it, so on a backup account
 * shared by several keys (serve --restrict-to) one client cannot join,
 * and write into, another's session. Serve answers with its hello; the
 * link then carries records like the first connection (core/protocol.h).
 * The rendezvous accepts only processes of its own user (SO_PEERCRED), and
 * the join process hands its descriptors only to a process of its own
 * user.
 *
 * A link that cannot be opened or joined is not an error: the session
 * goes on with the links it has (said with -v). */
#ifndef SPARSYNC_LINKS_H
#define SPARSYNC_LINKS_H

#include <pthread.h>
#include <stdbool.h>

#include "protocol.h"

struct transport;

struct link {
	struct transport *t;
	unsigned index;           /* 1 ..; the first connection is 0 */
	int ctl;                  /* serve: the join process's socket; -1 on the client */
	struct proto_session s;   /* negotiated on this link */
};

struct links {
	/* Set by the owner before links_host_start / links_client_start. */
	struct proto_hello mine;  /* our hello, written on every link */
	enum proto_role me;
	const char *peer;         /* name for messages */
	unsigned timeout_s;       /* --timeout for the links once joined */
	/* A link joined (called from the links thread, before serve answers
	 * its hello). -1: the session no longer takes links; the link is
	 * closed. */
	int (*add)(void *owner, struct link *l);
	void *owner;
	/* Client: open further connection `index` running `serve --join`. */
	struct transport *(*open)(void *ctx, unsigned index);
	void *open_ctx;
	unsigned want;            /* further links to open */
	struct proto_links offer; /* serve: made by links_host_open; client: as read */

	/* State. */
	bool host;
	int lfd;
	pthread_t thr;
	bool running;
	int stop;                 /* atomic */
	pthread_mutex_t lock;
	bool lock_ready;
	struct link *l[PROTO_LINKS_MAX];
	unsigned n;
};

/* The number of online cores, reported in LINKS. */
unsigned links_cores(void);

/* Further links to open: `asked` connections in all (--connections N), or
 * for 0 (the default) from both ends' cores: half the smaller count, at
 * most 4 in all, and no more than one per GiB of data (a small copy is
 * over before another connection has logged in, and a login costs both
 * ends CPU). 1 on small machines. */
unsigned links_want(unsigned asked, unsigned remote_cores, uint64_t data);
/* Whether a client with --connections `asked` offers several at all. */
bool links_worth_asking(unsigned asked);

/* Serve: make the rendezvous and fill L->offer (name, token, cores). */
int links_host_open(struct links *L);
/* Serve: accept links in a thread until links_stop. */
int links_host_start(struct links *L);
/* Client: open L->want further links in a thread, one after another. */
int links_client_start(struct links *L);
/* Client: wait until every link asked for has joined or failed
 * (--connections N: the copy then runs on all N from its start). */
void links_wait(struct links *L);
/* No further links: the thread ends (the client's waits for the
 * connection it is opening). After it, L->l[0 .. n) is fixed. */
void links_stop(struct links *L);
/* Make every read and write on the links fail at once (one failed). */
void links_cut(struct links *L);
/* Stop, close every link and the rendezvous. */
void links_free(struct links *L);

/* `sparsync serve --join NAME`: hand stdin and stdout to the session
 * behind the rendezvous NAME and wait until it is over. Exit status. */
int links_join_run(const char *name);

#endif

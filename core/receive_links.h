/* The receiving side of several connections (core/links.h): a thread per
 * further link reads its DATA and ZERO records and writes them into the
 * same destination sink as the first connection (sinks take concurrent
 * calls for ranges that do not overlap), until the link's own END.
 * When the first connection's END arrives, the set is closed, every link
 * is waited for, and their counts and digests are folded into the END
 * check. The first failure on any link stops them all and the first
 * connection (its reader is woken by transport_cut). */
#ifndef SPARSYNC_RECEIVE_LINKS_H
#define SPARSYNC_RECEIVE_LINKS_H

#include <pthread.h>
#include <stdbool.h>

#include "links.h"
#include "progress.h"
#include "protocol.h"
#include "sink.h"

struct rx_link;
struct codec_ctx;

/* Progress over every connection: data bytes so far (a new DST) or the
 * offset reached (a sync). lock is NULL while one thread reads. */
struct rx_progress {
	struct progress *bar;
	pthread_mutex_t *lock;
	bool by_data;
	uint64_t done;            /* atomic */
	struct sp_stats *st;
};
void rx_progress_add(struct rx_progress *p, uint64_t off_end, uint64_t data);

/* One DATA or ZERO record into sink, folded into dg and seen, for the
 * first connection's reader (receive.c) and every link's alike. Then
 * rx_progress_add(p, off_end, data) with what it set. */
int rx_apply(const struct proto_session *s, struct codec_ctx *cc, uint8_t *out, struct sink *sink,
	     struct proto_digest *dg, struct proto_end *seen, const struct proto_rec *rec,
	     uint64_t *off_end, uint64_t *data);

struct rx_links {
	struct links *L;
	struct sp_stats *st;
	/* The first connection: told (ERROR record) and cut when a link fails. */
	struct transport *first;
	bool answer;              /* the sender reads our ERROR records */
	pthread_mutex_t *first_write; /* writes on the first connection */
	pthread_mutex_t lock;
	struct rx_link *x[PROTO_LINKS_MAX];
	unsigned n;
	bool ready, closed;
	/* Set by rx_links_ready. */
	struct sink *sink;
	struct proto_session session; /* the first connection's, with IMAGE */
	struct rx_progress *prog;
	int failed;               /* atomic */
	bool told;                /* our ERROR record went out on the first connection */
	char msg[1024];
};

/* Take the links that join L (sets L->add and L->owner). */
void rx_links_init(struct rx_links *R, struct links *L, struct sp_stats *st,
		   struct transport *first, bool answer, pthread_mutex_t *first_write);
/* IMAGE is applied: links start writing into sink (now and as they join). */
int rx_links_ready(struct rx_links *R, struct sink *sink, const struct proto_session *s,
		   struct rx_progress *prog);
/* The END of the first connection arrived: no further link; wait for
 * every link's END; fold their digests into dg (in index order) and their
 * counts into seen. -1 when a link failed. */
int rx_links_finish(struct rx_links *R, struct proto_digest *dg, struct proto_end *seen);
/* A link failed (-1 from rx_links_finish, or rx_links_failed is true):
 * its message, for the first connection's error. */
bool rx_links_failed(struct rx_links *R);
const char *rx_links_message(struct rx_links *R);
/* After a failure: stop every link and wait for its thread. */
void rx_links_abort(struct rx_links *R);
/* Bytes read on the further links. */
uint64_t rx_links_bytes(struct rx_links *R);
void rx_links_free(struct rx_links *R);

#endif

#include "links.h"

#include "../transport/transport.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* A link has this long to say hello and JOIN (or to answer them). */
#define HANDSHAKE_TIMEOUT_S 30

unsigned links_cores(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > 4096 ? 4096 : (unsigned)n;
}

#define AUTO_MAX 4
#define AUTO_MIN_CORES 4
#define AUTO_BYTES_PER_LINK (1ull << 30)

bool links_worth_asking(unsigned asked)
{
	return asked > 1 || (asked == 0 && links_cores() >= AUTO_MIN_CORES);
}

unsigned links_want(unsigned asked, unsigned remote_cores, uint64_t data)
{
	if (asked)
		return asked - 1;
	unsigned c = links_cores() < remote_cores ? links_cores() : remote_cores;
	unsigned n = c < AUTO_MIN_CORES ? 1 : c / 2;
	if (n > AUTO_MAX)
		n = AUTO_MAX;
	while (n > 1 && data < (uint64_t)(n - 1) * AUTO_BYTES_PER_LINK)
		n--;
	return n - 1;
}

/* The abstract socket address of a rendezvous name (leading NUL). */
static socklen_t abstract_addr(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	size_t n = strlen(name);
	memcpy(a->sun_path + 1, name, n);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static int peer_is_me(int fd)
{
	struct ucred cr;
	socklen_t len = sizeof cr;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return sp_err("rendezvous: SO_PEERCRED: %s", strerror(errno));
	if (cr.uid != getuid())
		return sp_err("rendezvous: the other end belongs to uid %u, not to us", (unsigned)cr.uid);
	return 0;
}

static bool token_equal(const uint8_t *a, const uint8_t *b)
{
	uint8_t d = 0; /* no early exit: the time says nothing of the token */
	for (size_t i = 0; i < PROTO_LINK_TOKEN_SIZE; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

static void link_close(struct link *l)
{
	if (!l)
		return;
	transport_close(l->t, NULL);
	if (l->ctl >= 0)
		close(l->ctl); /* the join process sees the end and exits */
	free(l);
}

static struct link *link_new(struct links *L, struct transport *t, int ctl)
{
	struct link *l = calloc(1, sizeof *l);
	if (!l) {
		sp_err("out of memory");
		return NULL;
	}
	l->t = t;
	l->ctl = ctl;
	l->s.peer = t->name;
	l->s.me = (uint8_t)L->me;
	return l;
}

static void lock_init(struct links *L)
{
	if (!L->lock_ready) {
		pthread_mutex_init(&L->lock, NULL);
		L->lock_ready = true;
	}
}

/* Keep l in the set, then tell the owner; the set is what links_free closes. */
static int keep(struct links *L, struct link *l)
{
	pthread_mutex_lock(&L->lock);
	bool room = L->n < PROTO_LINKS_MAX && !__atomic_load_n(&L->stop, __ATOMIC_ACQUIRE);
	int rc = room ? L->add(L->owner, l) : sp_err("%s: the session takes no further connections", L->peer);
	if (rc == 0)
		L->l[L->n++] = l;
	pthread_mutex_unlock(&L->lock);
	return rc;
}

static int negotiate(struct links *L, struct link *l, const struct proto_hello *peer)
{
	const struct proto_hello *snd = L->me == ROLE_SENDER ? &L->mine : peer;
	const struct proto_hello *rcv = L->me == ROLE_SENDER ? peer : &L->mine;
	if (proto_negotiate(&l->s, l->t->name, L->me, snd, rcv) < 0)
		return -1;
	if (!(l->s.caps & CAP_LINKS))
		return sp_err("%s: the peer does not take several connections", l->t->name);
	return 0;
}

static enum proto_role other(enum proto_role r)
{
	return r == ROLE_SENDER ? ROLE_RECEIVER : ROLE_SENDER;
}

/* ---- serve: the rendezvous ---- */

int links_host_open(struct links *L)
{
	lock_init(L);
	L->host = true;
	L->lfd = -1;
	uint8_t rnd[16 + PROTO_LINK_TOKEN_SIZE];
	if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
		return sp_err("rendezvous: no random bytes");
	memcpy(L->offer.token, rnd + 16, PROTO_LINK_TOKEN_SIZE);
	int n = snprintf(L->offer.name, sizeof L->offer.name, "sparsync-links-");
	for (int i = 0; i < 16; i++)
		n += snprintf(L->offer.name + n, sizeof L->offer.name - (size_t)n, "%02x", rnd[i]);
	L->offer.cores = links_cores();
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return sp_err("rendezvous: socket: %s", strerror(errno));
	struct sockaddr_un a;
	socklen_t alen = abstract_addr(&a, L->offer.name);
	if (bind(fd, (struct sockaddr *)&a, alen) < 0 || listen(fd, PROTO_LINKS_MAX) < 0) {
		int e = errno;
		close(fd);
		return sp_err("rendezvous: %s", strerror(e));
	}
	L->lfd = fd;
	return 0;
}

/* The join process's stdin and stdout, and nothing else. */
static int take_fds(int c, int *in, int *out)
{
	char b;
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(2 * sizeof(int))];
	} u;
	struct iovec iov = { .iov_base = &b, .iov_len = 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.space,
			    .msg_controllen = sizeof u.space };
	ssize_t n = recvmsg(c, &m, MSG_CMSG_CLOEXEC);
	struct cmsghdr *h = n == 1 ? CMSG_FIRSTHDR(&m) : NULL;
	if (!h || h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS ||
	    h->cmsg_len != CMSG_LEN(2 * sizeof(int)) || (m.msg_flags & MSG_CTRUNC)) {
		if (h && h->cmsg_type == SCM_RIGHTS) {
			/* Close what did come. */
			size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k && i < 2; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
				close(fd);
			}
		}
		return sp_err("rendezvous: a join process sent no descriptors");
	}
	memcpy(in, CMSG_DATA(h), sizeof(int));
	memcpy(out, CMSG_DATA(h) + sizeof(int), sizeof(int));
	return 0;
}

/* One joining process: its descriptors, the client's hello and JOIN. */
static void host_take(struct links *L, int c)
{
	int in = -1, out = -1;
	if (peer_is_me(c) < 0 || take_fds(c, &in, &out) < 0) {
		sp_info("%s", sp_errmsg());
		close(c);
		return;
	}
	char name[64];
	snprintf(name, sizeof name, "%s (a further connection)", L->peer);
	struct transport *t = transport_fd_open(in, out, name);
	if (!t) {
		close(in);
		close(out);
		close(c);
		return;
	}
	struct link *l = link_new(L, t, c);
	if (!l) {
		transport_close(t, NULL);
		close(c);
		return;
	}
	struct proto_reader rd;
	proto_reader_init(&rd, t, &l->s);
	transport_set_timeout(t, HANDSHAKE_TIMEOUT_S);
	struct proto_hello peer;
	struct proto_rec rec;
	int rc = transport_make_cuttable(t);
	if (rc == 0)
		rc = proto_read_hello(&rd, other(L->me), &peer);
	if (rc == 0)
		rc = negotiate(L, l, &peer);
	if (rc == 0)
		rc = proto_read(&rd, &rec);
	if (rc == 0 && rec.type != REC_JOIN)
		rc = sp_err("%s: expected a JOIN record, got type %u", t->name, rec.type);
	if (rc == 0 && !token_equal(rec.u.join.token, L->offer.token))
		rc = sp_err("%s: JOIN with a wrong token: refused", t->name);
	for (unsigned i = 0; rc == 0 && i < L->n; i++)
		if (L->l[i]->index == rec.u.join.index)
			rc = sp_err("%s: link %u joined twice: refused", t->name, rec.u.join.index);
	if (rc == 0) {
		l->index = rec.u.join.index;
		snprintf(name, sizeof name, "%s (connection %u)", L->peer, l->index + 1);
		char *nn = strdup(name);
		if (nn) {
			free(t->name);
			t->name = nn;
			l->s.peer = nn;
		}
		rc = keep(L, l);
		if (rc < 0)
			sp_err("%s: the session is over", t->name);
	}
	proto_reader_free(&rd);
	if (rc == 0) {
		/* The answer: the client may now send. */
		transport_set_timeout(t, L->timeout_s);
		if (proto_write_hello(t, &L->mine) < 0)
			transport_cut(t); /* the owner's reader (or writer) fails on it */
		return;
	}
	sp_info("%s", sp_errmsg());
	if (proto_send_error(t, sp_errmsg()) < 0)
		sp_err_clear();
	link_close(l);
}

static void *host_thread(void *arg)
{
	struct links *L = arg;
	while (!__atomic_load_n(&L->stop, __ATOMIC_ACQUIRE)) {
		int c = accept4(L->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break; /* links_stop shut the socket down */
		}
		host_take(L, c);
	}
	return NULL;
}

int links_host_start(struct links *L)
{
	if (pthread_create(&L->thr, NULL, host_thread, L) != 0)
		return sp_err("rendezvous: cannot start a thread");
	L->running = true;
	return 0;
}

/* ---- client: further connections ---- */

static int client_join(struct links *L, struct link *l)
{
	struct transport *t = l->t;
	transport_set_timeout(t, HANDSHAKE_TIMEOUT_S);
	struct proto_join j = { .index = l->index };
	memcpy(j.token, L->offer.token, PROTO_LINK_TOKEN_SIZE);
	uint8_t b[PROTO_FRAME_SIZE + PROTO_JOIN_SIZE];
	struct proto_reader rd;
	proto_reader_init(&rd, t, &l->s);
	struct proto_hello peer;
	int rc = transport_make_cuttable(t);
	if (rc == 0)
		rc = proto_write_hello(t, &L->mine);
	if (rc == 0)
		rc = transport_write(t, b, proto_encode_join(b, &j));
	if (rc == 0)
		rc = proto_read_hello(&rd, other(L->me), &peer);
	/* Serve refuses with an ERROR record where its hello would be. */
	if (rc == 0)
		rc = negotiate(L, l, &peer);
	proto_reader_free(&rd);
	transport_set_timeout(t, L->timeout_s);
	return rc;
}

static void *client_thread(void *arg)
{
	struct links *L = arg;
	for (unsigned i = 1; i <= L->want && i < PROTO_LINKS_MAX; i++) {
		if (__atomic_load_n(&L->stop, __ATOMIC_ACQUIRE))
			break;
		struct transport *t = L->open(L->open_ctx, i);
		struct link *l = t ? link_new(L, t, -1) : NULL;
		if (!l) {
			sp_info("connection %u: %s; going on with %u", i + 1, sp_errmsg(), i);
			transport_close(t, NULL);
			break;
		}
		l->index = i;
		if (client_join(L, l) < 0 || keep(L, l) < 0) {
			sp_info("connection %u did not join: %s; going on with %u", i + 1, sp_errmsg(), i);
			/* Not politely: its remote process stays until the session
			 * ends, and the session may be waiting for us to end. */
			transport_cut(l->t);
			link_close(l);
			break;
		}
		sp_info("%s: connection %u of %u joined", L->peer, i + 1, L->want + 1);
	}
	return NULL;
}

int links_client_start(struct links *L)
{
	lock_init(L);
	L->host = false;
	L->lfd = -1;
	if (L->want == 0)
		return 0;
	if (pthread_create(&L->thr, NULL, client_thread, L) != 0)
		return sp_err("cannot start a thread for further connections");
	L->running = true;
	return 0;
}

/* ---- both ---- */

void links_wait(struct links *L)
{
	if (L->running && !L->host) {
		pthread_join(L->thr, NULL);
		L->running = false;
	}
}

void links_stop(struct links *L)
{
	if (!L->lock_ready)
		return;
	pthread_mutex_lock(&L->lock);
	__atomic_store_n(&L->stop, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&L->lock);
	if (L->host && L->lfd >= 0)
		shutdown(L->lfd, SHUT_RDWR); /* accept returns */
	if (L->running)
		pthread_join(L->thr, NULL);
	L->running = false;
}

void links_cut(struct links *L)
{
	if (!L->lock_ready)
		return;
	pthread_mutex_lock(&L->lock);
	for (unsigned i = 0; i < L->n; i++)
		transport_cut(L->l[i]->t);
	pthread_mutex_unlock(&L->lock);
}

void links_free(struct links *L)
{
	if (!L->lock_ready)
		return;
	links_stop(L);
	/* Closing a link that failed says why again: the session's message
	 * stays. */
	char saved[1024];
	snprintf(saved, sizeof saved, "%s", sp_errmsg());
	for (unsigned i = 0; i < L->n; i++)
		link_close(L->l[i]);
	L->n = 0;
	if (strcmp(saved, "unknown error") == 0)
		sp_err_clear();
	else
		sp_err("%s", saved);
	if (L->lfd >= 0)
		close(L->lfd);
	L->lfd = -1;
	pthread_mutex_destroy(&L->lock);
	L->lock_ready = false;
}

/* ---- serve --join ---- */

int links_join_run(const char *name)
{
	if (!proto_link_name_ok(name))
		return sp_err("--join %s: not a sparsync rendezvous name", name);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return sp_err("--join: socket: %s", strerror(errno));
	struct sockaddr_un a;
	socklen_t alen = abstract_addr(&a, name);
	if (connect(fd, (struct sockaddr *)&a, alen) < 0) {
		int e = errno;
		close(fd);
		return sp_err("--join: the session is gone (%s)", strerror(e));
	}
	if (peer_is_me(fd) < 0) {
		close(fd);
		return -1;
	}
	int fds[2] = { STDIN_FILENO, STDOUT_FILENO };
	char b = 'J';
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(sizeof fds)];
	} u;
	memset(&u, 0, sizeof u);
	struct iovec iov = { .iov_base = &b, .iov_len = 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.space,
			    .msg_controllen = sizeof u.space };
	struct cmsghdr *h = CMSG_FIRSTHDR(&m);
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	h->cmsg_len = CMSG_LEN(sizeof fds);
	memcpy(CMSG_DATA(h), fds, sizeof fds);
	if (sendmsg(fd, &m, MSG_NOSIGNAL) != 1) {
		int e = errno;
		close(fd);
		return sp_err("--join: %s", strerror(e));
	}
	/* The session reads and writes them now: ours must not keep a pipe
	 * open after it is done, or sshd would wait for us. */
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		close(null);
	}
	/* Stay until the session closes its end: while we live, sshd keeps
	 * this channel open. */
	char sink[64];
	for (;;) {
		ssize_t n = read(fd, sink, sizeof sink);
		if (n > 0 || (n < 0 && errno == EINTR))
			continue;
		break;
	}
	close(fd);
	return 0;
}

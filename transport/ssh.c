/* The built-in SSH client: one libssh2 session, one exec channel running
 * `sparsync serve ...` on the remote; its stdin/stdout are the stream, its
 * stderr is copied to ours. Setup (connect, handshake, host key, login,
 * exec) runs in libssh2's blocking mode with a timeout; the stream runs
 * non-blocking with poll() so that neither direction can stall the other.
 *
 * libssh2 1.10 rules this file lives by:
 *  - A packet libssh2 has half-sent must be finished by repeating the very
 *    call that started it before any other call that sends: another packet
 *    meets "address is different, EAGAIN" forever. Worst of all, reading
 *    while a channel-data packet is half-sent lets a server KEXINIT (its
 *    RekeyLimit) start a key exchange whose packets can then never go out
 *    (measured: draining stderr while waiting to send hung a 64 MB push
 *    against RekeyLimit 32M; without that the same push completes). So
 *    `pending` remembers which call owns a half-sent packet (the session
 *    says BLOCK_OUTBOUND) and only that call is repeated until it is done.
 *  - While our write is not in flight (the server's window is shut), we do
 *    read: stderr goes to our stderr and stdout is kept in `rbuf` for the
 *    next read(), so a remote blocked on its own output cannot deadlock us.
 *  - A dead peer: poll() waits at most a second at a time; an SSH keepalive
 *    (which sshd answers) is sent after KEEPALIVE_S of silence while the
 *    send queue is empty (so it can never be half-sent), and nothing
 *    moving for DEAD_S is an error. TCP keepalive and TCP_USER_TIMEOUT
 *    cover a peer that vanished with our data unacknowledged.
 *  - sshd silently drops data for a channel whose command has exited, so
 *    a long write looks for the channel's close now and then (when nothing
 *    of ours is half-sent) and fails instead of streaming into nowhere.
 *  - When the connection is already lost, the send/recv callbacks stop
 *    touching the socket (`dead`) so libssh2's own teardown cannot wait on
 *    a half-sent packet and everything is freed.
 * A transport is used by one thread at a time (see transport.c). */
#include "ssh_internal.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>

/* What the server may send before we read. libssh2 1.10 keeps what has
 * arrived as a list of packets that every read walks: with 64 MiB in
 * flight a pull of 200 MiB took 22 s, with 4 MiB 1.5 s (loopback, the
 * push the other way 1.4 s). 4 MiB still covers 1 Gbit/s at 30 ms RTT;
 * OpenSSH's client offers 2 MiB. Fatter links: --connections. */
#define CHANNEL_WINDOW (4u << 20)
#define CHANNEL_PACKET 32768u
#define KEEPALIVE_S 15
#define DEAD_S 60
#define CLOSE_TIMEOUT_S 60        /* remote exit after our EOF */
#define RBUF_MAX (64u << 20)      /* stdout kept while a write waits */
#define STDERR_EVERY 64           /* reads between stderr drains */
#define READ_MAX (1u << 20)       /* per libssh2 read: keeps the window near its size */
#define CHECK_EVERY_MS 250        /* how often a long write looks at what came in */
#define ZEROS_BEFORE_NAP 64       /* reads returning 0 (not EAGAIN) in a row before a nap */

enum pend { P_NONE, P_WRITE, P_READ };

struct ssh_transport {
	struct transport base;
	LIBSSH2_SESSION *s;
	LIBSSH2_CHANNEL *ch;
	int sock;
	enum pend pending;   /* call that owns a half-sent packet */
	bool dead;           /* connection lost: callbacks stop using the socket */
	bool broken;         /* session unusable: read/write fail, close frees */
	bool eof_sent, stdout_eof;
	bool remote_exited;  /* the channel closed under a write */
	unsigned reads;
	/* stdout that arrived while write() waited */
	unsigned char *rbuf;
	size_t roff, rlen, rcap;
	/* liveness, CLOCK_MONOTONIC ms */
	int64_t last_progress;  /* a byte sent or received */
	int64_t last_data;      /* stream data moved (keepalives do not count) */
	int64_t op_start;       /* the current read/write/close began */
	int64_t last_keepalive;
	int64_t last_check;     /* write() last looked at incoming data */
	uint64_t sent;          /* bytes the send callback put on the socket */
	short revents;          /* what the last wait_io() saw */
};

/* ---- libssh2_init / libssh2_exit, once per process and session count ---- */

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned init_users;

static int global_get(void)
{
	int rc = 0;
	pthread_mutex_lock(&init_lock);
	if (init_users == 0 && libssh2_init(0) != 0)
		rc = -1;
	else
		init_users++;
	pthread_mutex_unlock(&init_lock);
	return rc;
}

static void global_put(void)
{
	pthread_mutex_lock(&init_lock);
	if (init_users && --init_users == 0)
		libssh2_exit();
	pthread_mutex_unlock(&init_lock);
}

/* ---- small helpers ---- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *ssh_last_error(LIBSSH2_SESSION *s)
{
	char *msg = NULL;
	int len = 0;
	if (!s || libssh2_session_last_error(s, &msg, &len, 0) == 0 || !msg)
		return "";
	return msg;
}

static void write_stderr(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(STDERR_FILENO, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static LIBSSH2_RECV_FUNC(cb_recv)
{
	struct ssh_transport *t = *abstract;
	if (t->dead)
		return -ECONNRESET;
	ssize_t n = recv(socket, buffer, length, flags);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN : -errno;
	if (n > 0)
		t->last_progress = now_ms();
	return n;
}

static LIBSSH2_SEND_FUNC(cb_send)
{
	struct ssh_transport *t = *abstract;
	if (t->dead)
		return (ssize_t)length; /* let libssh2 finish its bookkeeping */
	ssize_t n = send(socket, buffer, length, flags | MSG_NOSIGNAL);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN : -errno;
	if (n > 0) {
		t->sent += (uint64_t)n;
		t->last_progress = now_ms();
	}
	return n;
}

/* Mark the session unusable and set the message; returns -1. */
static int fail(struct ssh_transport *t, int rc, const char *what)
{
	t->broken = true;
	const char *m = ssh_last_error(t->s);
	switch (rc) {
	case LIBSSH2_ERROR_SOCKET_SEND:
	case LIBSSH2_ERROR_SOCKET_RECV:
	case LIBSSH2_ERROR_SOCKET_DISCONNECT:
	case LIBSSH2_ERROR_SOCKET_TIMEOUT:
	case LIBSSH2_ERROR_TIMEOUT:
	case LIBSSH2_ERROR_BAD_SOCKET:
		t->dead = true;
		return sp_err("%s: connection lost while %s%s%s", t->base.name, what, *m ? ": " : "", m);
	case LIBSSH2_ERROR_CHANNEL_CLOSED:
	case LIBSSH2_ERROR_CHANNEL_EOF_SENT:
		return sp_err("%s: the remote command closed the stream while %s", t->base.name, what);
	default:
		return sp_err("%s: ssh error while %s: %s (%d)", t->base.name, what, *m ? m : "unknown", rc);
	}
}

/* After a call returned rc: does it now own a half-sent packet? */
static void note_pending(struct ssh_transport *t, enum pend who, ssize_t rc)
{
	if (rc == LIBSSH2_ERROR_EAGAIN &&
	    (libssh2_session_block_directions(t->s) & LIBSSH2_SESSION_BLOCK_OUTBOUND))
		t->pending = who;
	else if (t->pending == who)
		t->pending = P_NONE;
}

static unsigned socket_unsent(int sock)
{
	int n = 0;
	if (ioctl(sock, SIOCOUTQ, &n) < 0)
		return 1;
	return n > 0 ? (unsigned)n : 0;
}

/* Keepalive and dead-peer check, called while waiting. */
static int liveness(struct ssh_transport *t)
{
	int64_t now = now_ms();
	/* Only time spent inside our calls counts: the caller may well have
	 * been busy elsewhere since the last byte moved. */
	int64_t since = t->last_progress > t->op_start ? t->last_progress : t->op_start;
	int64_t quiet = now - since;
	/* --timeout: sshd answering keepalives says nothing about the remote
	 * command, so only its data counts. */
	int64_t idle = now - (t->last_data > t->op_start ? t->last_data : t->op_start);
	if (t->base.timeout_s && idle >= (int64_t)t->base.timeout_s * 1000) {
		t->dead = t->broken = t->base.timed_out = true;
		return sp_err("%s: the remote command moved no data for %u s (--timeout)", t->base.name,
			      t->base.timeout_s);
	}
	if (quiet >= (int64_t)DEAD_S * 1000) {
		t->dead = true;
		t->broken = true;
		return sp_err("%s: connection lost: nothing received for %d s", t->base.name, DEAD_S);
	}
	/* A keepalive must go out whole: only with nothing half-sent and an
	 * empty socket send queue. */
	if (quiet >= (int64_t)KEEPALIVE_S * 1000 && now - t->last_keepalive >= (int64_t)KEEPALIVE_S * 1000 &&
	    t->pending == P_NONE && socket_unsent(t->sock) == 0) {
		int next = 0;
		int rc = libssh2_keepalive_send(t->s, &next);
		t->last_keepalive = now;
		if (rc < 0 && rc != LIBSSH2_ERROR_EAGAIN)
			return fail(t, rc, "sending a keepalive");
	}
	return 0;
}

/* Wait until libssh2 can make progress (the socket is readable or writable
 * as it asked), up to a second at a time with liveness checks between. */
static int wait_io(struct ssh_transport *t)
{
	int dirs = libssh2_session_block_directions(t->s);
	short ev = 0;
	if (dirs & LIBSSH2_SESSION_BLOCK_INBOUND)
		ev |= POLLIN;
	if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND)
		ev |= POLLOUT;
	int timeout = 1000;
	if (!ev) { /* libssh2 said EAGAIN without naming a direction: nap */
		ev = POLLIN;
		timeout = 5;
	}
	for (;;) {
		if (liveness(t) < 0)
			return -1;
		struct pollfd p = { .fd = t->sock, .events = ev };
		int r = poll(&p, 1, timeout);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			t->broken = true;
			return sp_err("%s: poll: %s", t->base.name, strerror(errno));
		}
		t->revents = r > 0 ? p.revents : 0;
		if (r > 0 || timeout != 1000)
			return 0;
	}
}

/* Is the channel closed by the remote (its command exited)? Reads from the
 * socket: call only when no write of ours is half-sent. */
static bool remote_closed(struct ssh_transport *t)
{
	LIBSSH2_POLLFD fd;
	memset(&fd, 0, sizeof fd);
	fd.type = LIBSSH2_POLLFD_CHANNEL;
	fd.fd.channel = t->ch;
	fd.events = LIBSSH2_POLLFD_POLLIN; /* with none, libssh2_poll looks at nothing */
	return libssh2_poll(&fd, 1, 0) >= 0 && (fd.revents & LIBSSH2_POLLFD_CHANNEL_CLOSED);
}

/* Remote stderr to ours until none is waiting: 1 if any, 0 if none. */
static int drain_stderr(struct ssh_transport *t)
{
	char buf[8192];
	int any = 0;
	for (;;) {
		ssize_t n = libssh2_channel_read_stderr(t->ch, buf, sizeof buf);
		note_pending(t, P_READ, n);
		if (n > 0) {
			write_stderr(buf, (size_t)n);
			any = 1;
			continue;
		}
		if (n == 0 || n == LIBSSH2_ERROR_EAGAIN)
			return any;
		return fail(t, (int)n, "reading the remote's messages");
	}
}

/* libssh2 returned 0 without EOF: stderr packets may still be queued.
 * Nap briefly (woken early by incoming data) before looking again. */
static int nap(struct ssh_transport *t)
{
	if (liveness(t) < 0)
		return -1;
	struct pollfd p = { .fd = t->sock, .events = POLLIN };
	poll(&p, 1, 5);
	return 0;
}

/* Finish a half-sent window adjust left by a read call. */
static int finish_read_pending(struct ssh_transport *t)
{
	while (t->pending == P_READ) {
		if (drain_stderr(t) < 0)
			return -1;
		if (t->pending == P_READ && wait_io(t) < 0)
			return -1;
	}
	return 0;
}

/* While write() waits for the server's window: take whatever came in.
 * Returns 1 if something moved, 0 if not, -1 on error. */
static int pump_incoming(struct ssh_transport *t)
{
	bool moved = false;
	if (drain_stderr(t) < 0)
		return -1;
	if (t->pending == P_READ)
		return 0;
	while (!t->stdout_eof && t->rlen - t->roff < RBUF_MAX) {
		if (t->roff && t->roff == t->rlen)
			t->roff = t->rlen = 0;
		if (t->rcap - t->rlen < 65536) {
			if (t->roff) {
				memmove(t->rbuf, t->rbuf + t->roff, t->rlen - t->roff);
				t->rlen -= t->roff;
				t->roff = 0;
			}
			if (t->rcap - t->rlen < 65536) {
				size_t cap = t->rcap ? t->rcap * 2 : 1u << 20;
				unsigned char *nb = realloc(t->rbuf, cap);
				if (!nb) {
					t->broken = true;
					return sp_err("%s: out of memory", t->base.name);
				}
				t->rbuf = nb;
				t->rcap = cap;
			}
		}
		size_t room = t->rcap - t->rlen;
		ssize_t n = libssh2_channel_read(t->ch, (char *)t->rbuf + t->rlen, room < READ_MAX ? room : READ_MAX);
		note_pending(t, P_READ, n);
		if (n > 0) {
			t->rlen += (size_t)n;
			t->last_data = now_ms();
			moved = true;
			continue;
		}
		if (n == 0) {
			if (libssh2_channel_eof(t->ch))
				t->stdout_eof = true;
			break;
		}
		if (n == LIBSSH2_ERROR_EAGAIN)
			break;
		return fail(t, (int)n, "reading from the remote command");
	}
	return moved;
}

/* The remote command exited while we still had data for it: later writes
 * fail at once; close() still learns its exit status. */
static int remote_gone(struct ssh_transport *t)
{
	t->remote_exited = true;
	return sp_err("%s: the remote command exited before reading all data", t->base.name);
}

/* ---- transport operations ---- */

static int ssh_write(struct transport *base, const void *buf, size_t len)
{
	struct ssh_transport *t = (struct ssh_transport *)base;
	if (t->broken)
		return sp_err("%s: the connection failed earlier", base->name);
	if (t->eof_sent)
		return sp_err("%s: stream already closed for writing", base->name);
	t->op_start = now_ms();
	if (t->remote_exited)
		return sp_err("%s: the remote command exited before reading all data", base->name);
	const char *p = buf;
	int64_t stall_since = 0;
	while (len > 0) {
		if (t->pending == P_READ && finish_read_pending(t) < 0)
			return -1;
		uint64_t sent0 = t->sent;
		ssize_t n = libssh2_channel_write(t->ch, p, len);
		if (n > 0) {
			t->pending = P_NONE;
			t->last_data = now_ms();
			stall_since = 0;
			p += n;
			len -= (size_t)n;
			/* Nothing of ours is half-sent now: a safe moment to show the
			 * remote's messages and to notice a remote that has gone
			 * away with data still to come (sshd drops what a closed
			 * channel receives, so writing on would fail only when the
			 * window runs out). Once everything is handed over, a
			 * remote that exited may well have read it all. */
			int64_t now = now_ms();
			if (len > 0 && now - t->last_check >= CHECK_EVERY_MS) {
				t->last_check = now;
				if (pump_incoming(t) < 0)
					return -1;
				if (t->pending == P_NONE && libssh2_channel_eof(t->ch) && remote_closed(t))
					return remote_gone(t);
			}
			continue;
		}
		if (n < 0 && n != LIBSSH2_ERROR_EAGAIN)
			return fail(t, (int)n, "sending");
		note_pending(t, P_WRITE, LIBSSH2_ERROR_EAGAIN);
		if (t->pending == P_WRITE) {
			/* Part of our packet is out: only repeating this write may
			 * touch the session until it is done. libssh2 must send
			 * something whenever the socket takes it; if it does not
			 * for seconds, another half-sent packet blocks it (a
			 * libssh2 1.10 bug): fail rather than spin forever. A
			 * socket that is not writable is no stall of ours. */
			if (t->sent == sent0 && (t->revents & POLLOUT)) {
				int64_t now = now_ms();
				if (!stall_since)
					stall_since = now;
				else if (now - stall_since > 10000)
					return fail(t, LIBSSH2_ERROR_SOCKET_SEND, "sending (libssh2 stalled)");
			} else if (t->sent != sent0) {
				stall_since = 0;
			}
			t->revents = 0;
			if (wait_io(t) < 0)
				return -1;
			continue;
		}
		/* Nothing of ours in flight: the window is shut (or a key
		 * exchange waits for the server). Keep the remote's output
		 * moving, and notice a remote that went away. */
		int moved = pump_incoming(t);
		if (moved < 0)
			return -1;
		if (moved)
			continue;
		if (t->pending == P_NONE && libssh2_channel_window_write(t->ch) == 0 &&
		    libssh2_channel_eof(t->ch) && remote_closed(t))
			return remote_gone(t);
		if (wait_io(t) < 0)
			return -1;
	}
	return 0;
}

static ssize_t ssh_read(struct transport *base, void *buf, size_t len)
{
	struct ssh_transport *t = (struct ssh_transport *)base;
	if (t->rlen > t->roff) {
		size_t n = t->rlen - t->roff;
		if (n > len)
			n = len;
		memcpy(buf, t->rbuf + t->roff, n);
		t->roff += n;
		base->bytes_in += n;
		return (ssize_t)n;
	}
	if (t->stdout_eof || len == 0)
		return 0;
	if (t->broken)
		return sp_err("%s: the connection failed earlier", base->name);
	if (t->pending == P_WRITE) /* cannot happen: write() finishes its packet */
		return sp_err("%s: internal error: read during an unfinished write", base->name);
	t->op_start = now_ms();
	if (++t->reads % STDERR_EVERY == 0 && drain_stderr(t) < 0)
		return -1;
	unsigned zeros = 0;
	for (;;) {
		if (t->pending == P_READ && finish_read_pending(t) < 0)
			return -1;
		ssize_t n = libssh2_channel_read(t->ch, buf, len < READ_MAX ? len : READ_MAX);
		note_pending(t, P_READ, n);
		if (n > 0) {
			base->bytes_in += (uint64_t)n;
			t->last_data = now_ms();
			return n;
		}
		if (n < 0 && n != LIBSSH2_ERROR_EAGAIN)
			return fail(t, (int)n, "receiving");
		/* Nothing yet: show the remote's messages, then wait. EOF
		 * counts only once no stderr is queued before it. */
		int err = drain_stderr(t);
		if (err < 0)
			return -1;
		if (n == 0 && libssh2_channel_eof(t->ch)) {
			t->stdout_eof = true;
			return 0;
		}
		if (err > 0 || t->pending != P_NONE)
			continue;
		/* 0 without EOF: libssh2 took in a packet that was not our data
		 * (a window adjust, an ack): read again at once; the next call
		 * says EAGAIN when the socket is empty, and wait_io waits for
		 * it. Napping here instead cost 5 ms per such packet: a pull ran
		 * at 10 MB/s where a push ran at 130 MB/s. Nap only when zeros
		 * keep coming, so that a confused session cannot spin. */
		if (n == 0 && ++zeros < ZEROS_BEFORE_NAP)
			continue;
		zeros = 0;
		if (n == 0 ? nap(t) < 0 : wait_io(t) < 0)
			return -1;
	}
}

/* Repeat a call that libssh2 wants repeated (EAGAIN) until done. The
 * callee keeps its own state, so the same call from the same frame is what
 * finishes a half-sent packet. */
#define REPEAT(t, rc, call, what, deadline)                                              \
	do {                                                                             \
		while (((rc) = (call)) == LIBSSH2_ERROR_EAGAIN) {                        \
			if ((deadline) && now_ms() > (deadline)) {                       \
				(t)->dead = (t)->broken = true;                          \
				(rc) = sp_err("%s: timed out %s", (t)->base.name, what); \
				break;                                                   \
			}                                                                \
			if (wait_io(t) < 0) {                                            \
				(rc) = -1;                                               \
				break;                                                   \
			}                                                                \
		}                                                                        \
	} while (0)

static int ssh_close_write(struct transport *base)
{
	struct ssh_transport *t = (struct ssh_transport *)base;
	if (t->eof_sent)
		return 0;
	if (t->broken)
		return sp_err("%s: the connection failed earlier", base->name);
	t->op_start = now_ms();
	if (t->pending == P_READ && finish_read_pending(t) < 0)
		return -1;
	int rc;
	REPEAT(t, rc, libssh2_channel_send_eof(t->ch), "sending end of stream", 0);
	if (rc < 0) {
		if (!t->broken)
			return fail(t, rc, "sending end of stream");
		return -1;
	}
	t->eof_sent = true;
	return 0;
}

static const struct {
	const char *name;
	int num;
} signals[] = {
	{ "HUP", SIGHUP }, { "INT", SIGINT }, { "QUIT", SIGQUIT }, { "ILL", SIGILL },
	{ "ABRT", SIGABRT }, { "FPE", SIGFPE }, { "KILL", SIGKILL }, { "SEGV", SIGSEGV },
	{ "PIPE", SIGPIPE }, { "ALRM", SIGALRM }, { "TERM", SIGTERM }, { "USR1", SIGUSR1 },
	{ "USR2", SIGUSR2 }, { "BUS", SIGBUS }, { "XCPU", SIGXCPU }, { "XFSZ", SIGXFSZ },
};

/* Everything up to the remote's exit: stdout left unread is dropped,
 * stderr is shown. Returns the exit status or -1. */
static int finish_channel(struct ssh_transport *t)
{
	t->op_start = now_ms();
	int64_t deadline = t->op_start + (int64_t)CLOSE_TIMEOUT_S * 1000;
	if (!t->eof_sent && ssh_close_write(&t->base) < 0)
		return -1;
	char junk[32768];
	while (!t->broken) {
		if (t->pending == P_READ && finish_read_pending(t) < 0)
			return -1;
		ssize_t n = libssh2_channel_read(t->ch, junk, sizeof junk);
		note_pending(t, P_READ, n);
		if (n > 0) {
			t->last_data = now_ms();
			continue;
		}
		if (n < 0 && n != LIBSSH2_ERROR_EAGAIN) {
			fail(t, (int)n, "waiting for the remote command");
			return -1;
		}
		int err = drain_stderr(t);
		if (err < 0)
			return -1;
		if (n == 0 && libssh2_channel_eof(t->ch) && t->pending == P_NONE)
			break;
		if (err > 0 || t->pending != P_NONE)
			continue;
		if (now_ms() > deadline) {
			sp_warn("%s: the remote command did not finish within %d s; disconnecting",
				t->base.name, CLOSE_TIMEOUT_S);
			t->dead = t->broken = true;
			return -1;
		}
		if (n == 0 ? nap(t) < 0 : wait_io(t) < 0)
			return -1;
	}
	if (t->broken)
		return -1;
	int rc;
	REPEAT(t, rc, libssh2_channel_close(t->ch), "closing the channel", deadline);
	if (rc == 0)
		REPEAT(t, rc, libssh2_channel_wait_closed(t->ch), "waiting for the remote command to exit", deadline);
	if (rc != 0)
		return -1;
	drain_stderr(t);

	char *sig = NULL;
	size_t siglen = 0;
	libssh2_channel_get_exit_signal(t->ch, &sig, &siglen, NULL, NULL, NULL, NULL);
	if (sig) {
		int status = -1;
		for (size_t i = 0; i < sizeof signals / sizeof *signals; i++)
			if (strlen(signals[i].name) == siglen && memcmp(sig, signals[i].name, siglen) == 0)
				status = 128 + signals[i].num;
		libssh2_free(t->s, sig);
		return status;
	}
	/* 0 both for "exited 0" and "no status sent": a server that closes
	 * the channel cleanly without exit-status is taken at its word. */
	return libssh2_channel_get_exit_status(t->ch);
}

static void teardown(struct ssh_transport *t, bool graceful)
{
	if (t->s) {
		if (!graceful)
			t->dead = true;
		if (t->ch)
			libssh2_channel_free(t->ch);
		t->ch = NULL;
		if (graceful && !t->dead) {
			int rc;
			int64_t deadline = now_ms() + 5000;
			REPEAT(t, rc, libssh2_session_disconnect(t->s, "done"), "disconnecting", deadline);
			(void)rc;
		}
		t->dead = true; /* nothing in session_free may wait on the socket */
		libssh2_session_free(t->s);
		t->s = NULL;
	}
	if (t->sock >= 0)
		close(t->sock);
	t->sock = -1;
	global_put();
	free(t->rbuf);
	free(t->base.name);
	free(t);
}

static int ssh_close(struct transport *base, int *status)
{
	struct ssh_transport *t = (struct ssh_transport *)base;
	*status = -1;
	if (!t->broken) {
		int st = finish_channel(t);
		if (!t->broken)
			*status = st;
	}
	teardown(t, !t->broken);
	return 0;
}

/* Another connection of the session failed: the socket's end makes this
 * one fail too, in whatever thread waits on it. */
static void ssh_cut(struct transport *base)
{
	struct ssh_transport *t = (struct ssh_transport *)base;
	if (t->sock >= 0)
		shutdown(t->sock, SHUT_RDWR);
}

static const struct transport_ops ssh_ops = {
	.read = ssh_read,
	.write = ssh_write,
	.close_write = ssh_close_write,
	.close = ssh_close,
	.cut = ssh_cut,
};

/* ---- opening ---- */

static void tune_socket(int fd)
{
	int one = 1, idle = 30, intvl = 10, cnt = 3;
	unsigned user_timeout = (unsigned)DEAD_S * 1000;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
}

/* Connect to each address in turn (IPv4 and IPv6), with a timeout each. */
static int tcp_connect(const struct ssh_target *tg)
{
	char port[16];
	snprintf(port, sizeof port, "%d", tg->port);
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int gai = getaddrinfo(tg->host, port, &hints, &res);
	if (gai != 0)
		return sp_err("%s: cannot resolve %s: %s", tg->alias, tg->host,
			      gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
	int err = 0, fd = -1;
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };
			int r;
			while ((r = poll(&p, 1, (int)tg->connect_timeout * 1000)) < 0 && errno == EINTR)
				;
			socklen_t sl = sizeof err;
			if (r == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) == 0 && err == 0)
				break;
			if (r == 0)
				err = ETIMEDOUT;
			else if (r < 0)
				err = errno;
		} else {
			err = errno;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return sp_err("%s: cannot connect to %s port %d: %s", tg->alias, tg->host, tg->port,
			      strerror(err ? err : ECONNREFUSED));
	tune_socket(fd);
	return fd;
}

struct transport *transport_ssh_open(const struct remote_opts *o, const char *command)
{
	struct ssh_target tg;
	bool needs_openssh = false;
	int src = ssh_target_resolve(o, &tg);
	if (src < 0) {
		if (o->openssh_could)
			*o->openssh_could = src == SSH_NEEDS_OPENSSH;
		return NULL;
	}
	struct ssh_transport *t = calloc(1, sizeof *t);
	if (!t || !(t->base.name = strdup(tg.alias))) {
		free(t);
		ssh_target_free(&tg);
		sp_err("%s: out of memory", o->host);
		return NULL;
	}
	t->sock = -1;
	t->base.ops = &ssh_ops;
	if (global_get() < 0) {
		sp_err("%s: libssh2 initialisation failed", tg.alias);
		free(t->base.name);
		free(t);
		ssh_target_free(&tg);
		return NULL;
	}
	int rc;
	char known_types[256] = "";
	if ((t->sock = tcp_connect(&tg)) < 0)
		goto fail;
	t->last_progress = now_ms();

	t->s = libssh2_session_init_ex(NULL, NULL, NULL, t);
	if (!t->s) {
		sp_err("%s: cannot create an ssh session", tg.alias);
		goto fail;
	}
	libssh2_session_callback_set(t->s, LIBSSH2_CALLBACK_RECV, (void *)cb_recv);
	libssh2_session_callback_set(t->s, LIBSSH2_CALLBACK_SEND, (void *)cb_send);
	libssh2_session_set_blocking(t->s, 1);
	libssh2_session_set_timeout(t->s, (long)tg.connect_timeout * 1000);
	if (ssh_hostkey_prefer(t->s, &tg, known_types, sizeof known_types) < 0)
		goto fail;
	/* Fastest first (AES-NI); the rest stay as fallbacks. */
	libssh2_session_method_pref(t->s, LIBSSH2_METHOD_CRYPT_CS, "aes128-ctr,aes256-ctr,aes192-ctr");
	libssh2_session_method_pref(t->s, LIBSSH2_METHOD_CRYPT_SC, "aes128-ctr,aes256-ctr,aes192-ctr");
	libssh2_session_method_pref(t->s, LIBSSH2_METHOD_MAC_CS, "hmac-sha2-256,hmac-sha2-512,hmac-sha1");
	libssh2_session_method_pref(t->s, LIBSSH2_METHOD_MAC_SC, "hmac-sha2-256,hmac-sha2-512,hmac-sha1");

	if ((rc = libssh2_session_handshake(t->s, t->sock)) != 0) {
		if (known_types[0] && (rc == LIBSSH2_ERROR_KEX_FAILURE || rc == LIBSSH2_ERROR_METHOD_NOT_SUPPORTED))
			sp_err("%s: SSH handshake failed: %s (the server offers none of the host key types %s "
			       "holds for it: %s)", tg.alias, ssh_last_error(t->s), tg.known_hosts, known_types);
		else
			sp_err("%s: SSH handshake failed: %s%s", tg.alias, ssh_last_error(t->s),
			       rc == LIBSSH2_ERROR_KEX_FAILURE ? " (no algorithm in common with libssh2 1.10; try -e ssh)" : "");
		needs_openssh = rc == LIBSSH2_ERROR_KEX_FAILURE || rc == LIBSSH2_ERROR_METHOD_NOT_SUPPORTED;
		goto fail;
	}
	if ((rc = ssh_hostkey_verify(t->s, &tg, o->accept_new_host_key)) < 0) {
		needs_openssh = rc == SSH_NEEDS_OPENSSH;
		goto fail;
	}
	if ((rc = ssh_authenticate(t->s, &tg)) < 0) {
		needs_openssh = rc == SSH_NEEDS_OPENSSH;
		goto fail;
	}

	t->ch = libssh2_channel_open_ex(t->s, "session", sizeof "session" - 1, CHANNEL_WINDOW, CHANNEL_PACKET,
					NULL, 0);
	if (!t->ch) {
		sp_err("%s: cannot open an ssh channel: %s", tg.alias, ssh_last_error(t->s));
		goto fail;
	}
	if ((rc = libssh2_channel_exec(t->ch, command)) != 0) {
		sp_err("%s: the server refused to run the command: %s", tg.alias, ssh_last_error(t->s));
		goto fail;
	}
	libssh2_keepalive_config(t->s, 1, KEEPALIVE_S);
	libssh2_session_set_blocking(t->s, 0);
	t->last_progress = t->last_keepalive = now_ms();
	ssh_target_free(&tg);
	return &t->base;

fail:
	if (o->openssh_could)
		*o->openssh_could = needs_openssh;
	ssh_target_free(&tg);
	teardown(t, false);
	return NULL;
}

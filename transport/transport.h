/* A byte stream to the other half of sparsync: a libssh2 channel running
 * `sparsync serve` (ssh.c), an external command such as `ssh -p 2222 host`
 * (exec.c), or plain file descriptors for stdin/stdout and archive files
 * (fd.c). The protocol code sees only this interface.
 * Every call returns -1 with sp_errmsg() set on failure. */
#ifndef SPARSYNC_TRANSPORT_H
#define SPARSYNC_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct transport;

struct transport_ops {
	/* Up to len bytes; 0 at end of stream. Blocks until something arrives. */
	ssize_t (*read)(struct transport *, void *buf, size_t len);
	/* All len bytes, or -1. */
	int (*write)(struct transport *, const void *buf, size_t len);
	/* No more writes: the peer reads end of stream. */
	int (*close_write)(struct transport *);
	/* Wait for the peer to finish and free everything. *status gets the
	 * remote command's exit status (0 for fd transports); -1 if the
	 * status could not be learned. */
	int (*close)(struct transport *, int *status);
	/* Optional (transport_cut): make the reads and writes of other
	 * threads fail at once; close still frees. */
	void (*cut)(struct transport *);
};

struct transport {
	const struct transport_ops *ops;
	char *name;             /* for messages: "host", "stdin", a file name */
	uint64_t bytes_in;      /* counted by the implementation */
	uint64_t bytes_out;
	uint64_t bwlimit;       /* bytes per second for writes, 0 = none */
	double pace_start;      /* --bwlimit: when pacing began (0 = not yet) */
	uint64_t pace_base;     /* bytes_out at that moment */
	unsigned timeout_s;     /* --timeout: fail when no data moves for this long, 0 = never */
	bool timed_out;         /* it did: close need not wait politely for the peer */
	bool nb_set;            /* transport_fd_write made nb_fd non-blocking ... */
	int nb_fd, nb_flags;    /* ... and its flags before that */
	/* transport_make_cuttable: an eventfd polled beside the data fds of
	 * the implementations over pipes (fd.c, exec.c). */
	bool cuttable;
	int cut_efd;
	/* One thread may write while another reads (pipes: fd.c, exec.c);
	 * not one libssh2 session (ssh.c), which is one thread's at a time. */
	bool rw_threads;
	int cut;                /* transport_cut was called (atomic) */
};

/* Options for reaching a remote host (built-in client or -e command). */
struct remote_opts {
	const char *host;
	const char *user;         /* NULL = current user / ssh config */
	int port;                 /* 0 = 22 / ssh config */
	const char *identity;     /* -i */
	const char *known_hosts;  /* NULL = ~/.ssh/known_hosts */
	int accept_new_host_key;
	const char *rsh;          /* -e command, NULL = built-in libssh2 client */
	/* Seconds to connect and log in (0: ConnectTimeout from the ssh
	 * configuration, else 30). */
	unsigned connect_timeout;
	/* Set by the built-in client when it failed for want of something
	 * OpenSSH's client has (ProxyJump, an algorithm, a key it cannot
	 * use): the caller may run `ssh` instead. May be NULL. */
	bool *openssh_could;
};

/* Run `command` on the remote host; its stdin/stdout become the stream and
 * its stderr is copied to ours. */
struct transport *transport_ssh_open(const struct remote_opts *o, const char *command);
struct transport *transport_exec_open(const struct remote_opts *o, const char *command);
struct transport *transport_fd_open(int rfd, int wfd, const char *name);

static inline ssize_t transport_read(struct transport *t, void *buf, size_t len)
{
	return t->ops->read(t, buf, len);
}
int transport_write(struct transport *t, const void *buf, size_t len); /* counts, applies bwlimit */
/* --timeout: from now on a read or write that sees no data move for
 * seconds fails (0 = wait for ever, the default). Like rsync's --timeout,
 * it catches a peer that stalls while the connection stays up. */
void transport_set_timeout(struct transport *t, unsigned seconds);
/* Read exactly len bytes; end of stream first is an error naming t. */
int transport_read_full(struct transport *t, void *buf, size_t len);
int transport_close(struct transport *t, int *status);
/* Several connections of one session (core/links.h): when one fails, the
 * others must stop too, though a thread may be blocked reading or writing
 * them. transport_make_cuttable prepares t (before other threads use it);
 * transport_cut then makes every read and write on it fail at once, from
 * any thread: pipes poll an eventfd beside their fds, the built-in ssh
 * client shuts its socket down, an -e command is also sent SIGTERM. */
int transport_make_cuttable(struct transport *t);
void transport_cut(struct transport *t);

/* For implementations over pipes and files: one read(2) / a full write(2)
 * on fd, retrying EINTR and counting bytes_in; `peer` names the other end in
 * messages ("the remote command", "the stream"). */
ssize_t transport_fd_read(struct transport *t, int fd, void *buf, size_t len, const char *peer);
int transport_fd_write(struct transport *t, int fd, const void *buf, size_t len, const char *peer);
/* Undo what transport_fd_write did to a borrowed fd for --timeout. */
void transport_fd_restore(struct transport *t);

#endif

/* Pieces of the built-in libssh2 client (transport/ssh*.c), shared only
 * among those files: where to connect (ssh_config.c), whether the host is
 * who it was (ssh_knownhosts.c), who we are (ssh_auth.c). ssh.c owns the
 * socket, the session and the channel. Every function returns 0 or -1 with
 * sp_errmsg() set to one line that starts with the host name. */
#ifndef SPARSYNC_SSH_INTERNAL_H
#define SPARSYNC_SSH_INTERNAL_H

#include <libssh2.h>
#include <stdbool.h>
#include <stddef.h>

#include "transport.h"

/* The resolved destination: command line first, then `ssh -G HOST`
 * (~/.ssh/config), then the defaults. */
struct ssh_target {
	char *alias;            /* as the user wrote it: messages */
	char *host;             /* name or address to connect to (HostName) */
	int port;
	char *user;
	char *known_hosts;      /* file to check and to append to */
	char **identities;      /* private key files to try, in order */
	size_t n_identities;
	bool identity_explicit; /* -i given: a missing file is an error */
	unsigned connect_timeout; /* seconds: the command line, ConnectTimeout, or 30 */
};

/* Functions below return SSH_NEEDS_OPENSSH (message set) when they fail
 * for want of something only OpenSSH's client has. */
#define SSH_NEEDS_OPENSSH (-2)

int ssh_target_resolve(const struct remote_opts *o, struct ssh_target *tg);
void ssh_target_free(struct ssh_target *tg);
/* "~/x" -> "$HOME/x" (malloc'd); other paths copied. NULL when out of memory. */
char *ssh_expand_home(const char *path);

/* Before the handshake: offer only the host key types known_hosts holds
 * for this host, or every type (ed25519 first) for an unknown host.
 * *known_types gets a readable list ("ssh-ed25519") for messages. */
int ssh_hostkey_prefer(LIBSSH2_SESSION *s, const struct ssh_target *tg, char *known_types, size_t cap);
/* After the handshake: MATCH passes; unknown is refused unless accept_new
 * (then one line is appended to the file); a changed key always fails. */
int ssh_hostkey_verify(LIBSSH2_SESSION *s, const struct ssh_target *tg, bool accept_new);

/* ssh-agent (when SSH_AUTH_SOCK is set), then the identity files. */
int ssh_authenticate(LIBSSH2_SESSION *s, const struct ssh_target *tg);

/* libssh2's last error as text ("" when none). */
const char *ssh_last_error(LIBSSH2_SESSION *s);

/* Standard base64 without padding (as OpenSSH prints fingerprints). */
void ssh_base64(const unsigned char *in, size_t n, char *out, size_t cap, bool pad);

#endif

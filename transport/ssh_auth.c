/* Public key authentication: keys held by ssh-agent first (when
 * SSH_AUTH_SOCK is set), then the identity files (-i, IdentityFile from
 * ~/.ssh/config, or ~/.ssh/id_ed25519, id_ecdsa, id_rsa). sshd counts every
 * key offered against MaxAuthTries (6 by default) and hangs up after that,
 * so at most MAX_TRIES keys are offered in all and non-RSA keys go first:
 * libssh2 1.10 signs RSA with SHA-1 only, which OpenSSH >= 8.8 refuses.
 * Passphrase-protected files cannot be used (no prompt): load them into
 * ssh-agent or use -e ssh. */
#include "ssh_internal.h"

#include "../core/error.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_TRIES 5
#define AGENT_TRIES_WITH_FILES 2 /* leave room for -i / IdentityFile keys */

struct tally {
	int left;            /* keys we may still offer */
	char tried[512];     /* for the failure message */
	bool rsa_refused;
	bool unloadable;     /* a key libssh2 could not load (passphrase-protected) */
	int agent_unoffered; /* agent keys left untried (MaxAuthTries) */
	bool broken;         /* the connection died: stop */
	char broken_msg[256];
};

static void tally_add(struct tally *t, const char *what)
{
	size_t l = strlen(t->tried);
	snprintf(t->tried + l, sizeof t->tried - l, "%s%s", l ? ", " : "", what);
}

static bool connection_error(int rc)
{
	return rc == LIBSSH2_ERROR_SOCKET_SEND || rc == LIBSSH2_ERROR_SOCKET_RECV ||
	       rc == LIBSSH2_ERROR_SOCKET_DISCONNECT || rc == LIBSSH2_ERROR_TIMEOUT ||
	       rc == LIBSSH2_ERROR_SOCKET_TIMEOUT || rc == LIBSSH2_ERROR_BAD_SOCKET;
}

static void note_failure(LIBSSH2_SESSION *s, struct tally *t, int rc)
{
	if (connection_error(rc) && !t->broken) {
		t->broken = true;
		snprintf(t->broken_msg, sizeof t->broken_msg, "%s", ssh_last_error(s));
	}
}

/* A key blob starts with the algorithm name as an SSH string. */
static bool blob_is_rsa(const unsigned char *b, size_t n)
{
	return n >= 11 && b[0] == 0 && b[1] == 0 && b[2] == 0 && b[3] == 7 && memcmp(b + 4, "ssh-rsa", 7) == 0;
}

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Is the key file RSA? From FILE.pub when present, else the private key's
 * PEM header or the public part of an OpenSSH-format key. */
static bool key_file_is_rsa(const char *priv, const char *pub)
{
	char buf[2048];
	FILE *f = fopen(pub ? pub : priv, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	if (pub)
		return strncmp(buf, "ssh-rsa ", 8) == 0;
	if (strstr(buf, "BEGIN RSA PRIVATE KEY"))
		return true;
	char *p = strstr(buf, "BEGIN OPENSSH PRIVATE KEY-----");
	if (!p)
		return false;
	p += 30;
	/* Decode the first few hundred bytes: the public key blob follows the
	 * cipher, KDF and key count fields, unencrypted. */
	unsigned char dec[600];
	size_t d = 0;
	unsigned acc = 0;
	int bits = 0;
	for (; *p && d < sizeof dec; p++) {
		int v = b64val((unsigned char)*p);
		if (v < 0)
			continue;
		acc = (acc << 6) | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			dec[d++] = (unsigned char)(acc >> bits);
		}
	}
	for (size_t i = 0; i + 11 <= d; i++)
		if (blob_is_rsa(dec + i, d - i))
			return true;
	return false;
}

static int try_agent(LIBSSH2_SESSION *s, const struct ssh_target *tg, struct tally *t, int max)
{
	const char *sock = getenv("SSH_AUTH_SOCK");
	if (!sock || !*sock || max <= 0)
		return -1;
	LIBSSH2_AGENT *agent = libssh2_agent_init(s);
	if (!agent)
		return -1;
	int ok = -1, offered = 0;
	if (libssh2_agent_connect(agent) == 0 && libssh2_agent_list_identities(agent) == 0) {
		/* Two passes: keys that can work first, RSA last. */
		for (int pass = 0; pass < 2 && ok != 0 && !t->broken; pass++) {
			struct libssh2_agent_publickey *id = NULL, *prev = NULL;
			while (ok != 0 && !t->broken && offered < max && t->left > 0 &&
			       libssh2_agent_get_identity(agent, &id, prev) == 0) {
				prev = id;
				bool rsa = blob_is_rsa(id->blob, id->blob_len);
				if (rsa != (pass == 1))
					continue;
				offered++;
				t->left--;
				int rc = libssh2_agent_userauth(agent, tg->user, id);
				if (rc == 0) {
					ok = 0;
					break;
				}
				if (rsa)
					t->rsa_refused = true;
				note_failure(s, t, rc);
			}
		}
		if (ok != 0) {
			struct libssh2_agent_publickey *id = NULL, *prev = NULL;
			int total = 0;
			while (libssh2_agent_get_identity(agent, &id, prev) == 0) {
				prev = id;
				total++;
			}
			t->agent_unoffered = total - offered;
		}
		libssh2_agent_disconnect(agent);
	}
	libssh2_agent_free(agent);
	if (ok != 0 && offered) {
		char what[64];
		snprintf(what, sizeof what, "%d key%s from ssh-agent", offered, offered == 1 ? "" : "s");
		tally_add(t, what);
	}
	return ok;
}

/* 0 on success, 1 when the file is not there, -1 when refused/unusable. */
static int try_file(LIBSSH2_SESSION *s, const struct ssh_target *tg, const char *file, struct tally *t)
{
	if (access(file, F_OK) != 0)
		return 1;
	if (access(file, R_OK) != 0) {
		char what[600];
		snprintf(what, sizeof what, "%s (%s)", file, strerror(errno));
		tally_add(t, what);
		return -1;
	}
	size_t fl = strlen(file);
	char *pub = malloc(fl + 5);
	if (!pub)
		return -1;
	snprintf(pub, fl + 5, "%s.pub", file);
	bool have_pub = access(pub, R_OK) == 0;
	bool rsa = key_file_is_rsa(file, have_pub ? pub : NULL);
	t->left--;
	/* "" rather than NULL: libssh2 hands the passphrase to strlen(). */
	int rc = libssh2_userauth_publickey_fromfile_ex(s, tg->user, (unsigned)strlen(tg->user),
							have_pub ? pub : NULL, file, "");
	free(pub);
	if (rc == 0)
		return 0;
	char what[600];
	if (rc == LIBSSH2_ERROR_FILE || rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED) {
		snprintf(what, sizeof what, "%s (cannot load it: passphrase-protected? add it to ssh-agent)", file);
		t->left++; /* nothing was offered to the server */
		t->unloadable = true;
	} else {
		snprintf(what, sizeof what, "%s%s", file, rsa ? " (RSA)" : "");
		if (rsa)
			t->rsa_refused = true;
	}
	tally_add(t, what);
	note_failure(s, t, rc);
	return -1;
}

int ssh_authenticate(LIBSSH2_SESSION *s, const struct ssh_target *tg)
{
	const char *user = tg->user;
	char *methods = libssh2_userauth_list(s, user, (unsigned)strlen(user));
	if (!methods) {
		if (libssh2_userauth_authenticated(s))
			return 0; /* "none" was enough */
		return sp_err("%s: authentication failed before it started: %s", tg->alias, ssh_last_error(s));
	}
	if (!strstr(methods, "publickey"))
		return sp_err("%s: the server does not accept public keys for %s (it offers: %s); use -e ssh",
			      tg->alias, user, methods) - 1;

	struct tally t = { .left = MAX_TRIES };
	if (tg->identity_explicit && access(tg->identities[0], F_OK) != 0)
		return sp_err("%s: identity file %s: %s", tg->alias, tg->identities[0], strerror(errno));

	int agent_max = tg->identity_explicit ? AGENT_TRIES_WITH_FILES : MAX_TRIES;
	if (try_agent(s, tg, &t, agent_max) == 0)
		return 0;
	/* In the order given (the defaults already put RSA last). */
	for (size_t i = 0; i < tg->n_identities && t.left > 0 && !t.broken; i++)
		if (try_file(s, tg, tg->identities[i], &t) == 0)
			return 0;
	if (t.broken)
		return sp_err("%s: the server closed the connection during authentication as %s "
			      "(too many keys offered? tried: %s): %s",
			      tg->alias, user, t.tried[0] ? t.tried : "none", t.broken_msg);
	if (!t.tried[0]) {
		if (tg->identity_explicit)
			return sp_err("%s: identity file %s could not be used", tg->alias,
				      tg->identities[0]) - (t.unloadable ? 1 : 0);
		return sp_err("%s: no key to log in as %s: ssh-agent has none and none of %s%s exists; "
			      "use -i FILE or -e ssh",
			      tg->alias, user, tg->n_identities ? tg->identities[0] : "~/.ssh/id_ed25519",
			      tg->n_identities > 1 ? " ..." : "") - 1;
	}
	if (t.rsa_refused)
		return sp_err("%s: permission denied for %s (tried: %s); RSA user keys are rejected by "
			      "OpenSSH >= 8.8 servers when signed by libssh2 1.10 (SHA-1): use an ed25519 "
			      "or ECDSA key, or -e ssh",
			      tg->alias, user, t.tried) - 1;
	if (t.agent_unoffered > 0)
		return sp_err("%s: permission denied for %s: the server accepted none of the keys (tried: %s; "
			      "ssh-agent holds %d more, not offered so as to stay under the server's "
			      "MaxAuthTries: name the key with -i FILE)",
			      tg->alias, user, t.tried, t.agent_unoffered);
	/* OpenSSH's client can ask for a passphrase; we cannot. */
	return sp_err("%s: permission denied for %s: the server accepted none of the keys (tried: %s)",
		      tg->alias, user, t.tried) - (t.unloadable ? 1 : 0);
}

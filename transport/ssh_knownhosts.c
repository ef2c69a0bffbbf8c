/* Is this the host we talked to before? known_hosts, checked with the
 * libssh2 knownhost API the way OpenSSH's StrictHostKeyChecking=yes (or
 * accept-new, when asked) does:
 *  - the entry name is "host" on port 22 and "[host]:port" otherwise, plain
 *    or hashed (|1|salt|hash);
 *  - the check passes the server key's real type, so a key of another type
 *    is no match and a different key of the same type is a MISMATCH;
 *  - before the handshake we offer only the key types the file holds for
 *    the host (libssh2 would otherwise ask for ECDSA first and find nothing
 *    while known_hosts holds ed25519);
 *  - @revoked keys are refused; @cert-authority lines are skipped (use
 *    `-e ssh` for certificates).
 * The file is read line by line ourselves: libssh2_knownhost_readfile stops
 * at the first line it cannot parse and silently drops the rest. */
#include "ssh_internal.h"

#include "../core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct keytype {
	int hostkey;  /* LIBSSH2_HOSTKEY_TYPE_* from libssh2_session_hostkey */
	int known;    /* LIBSSH2_KNOWNHOST_KEY_* */
	const char *name;
} keytypes[] = {
	{ LIBSSH2_HOSTKEY_TYPE_ED25519, LIBSSH2_KNOWNHOST_KEY_ED25519, "ssh-ed25519" },
	{ LIBSSH2_HOSTKEY_TYPE_ECDSA_256, LIBSSH2_KNOWNHOST_KEY_ECDSA_256, "ecdsa-sha2-nistp256" },
	{ LIBSSH2_HOSTKEY_TYPE_ECDSA_384, LIBSSH2_KNOWNHOST_KEY_ECDSA_384, "ecdsa-sha2-nistp384" },
	{ LIBSSH2_HOSTKEY_TYPE_ECDSA_521, LIBSSH2_KNOWNHOST_KEY_ECDSA_521, "ecdsa-sha2-nistp521" },
	{ LIBSSH2_HOSTKEY_TYPE_RSA, LIBSSH2_KNOWNHOST_KEY_SSHRSA, "ssh-rsa" },
};
#define N_KEYTYPES (sizeof keytypes / sizeof *keytypes)

void ssh_base64(const unsigned char *in, size_t n, char *out, size_t cap, bool pad)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)in[i] << 16;
		if (i + 1 < n)
			v |= (unsigned)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		char c[4] = { tab[(v >> 18) & 63], tab[(v >> 12) & 63],
			      i + 1 < n ? tab[(v >> 6) & 63] : '=', i + 2 < n ? tab[v & 63] : '=' };
		for (int j = 0; j < 4; j++) {
			if (c[j] == '=' && !pad)
				break;
			if (o + 1 < cap)
				out[o++] = c[j];
		}
	}
	if (cap)
		out[o] = '\0';
}

/* known_hosts entry name OpenSSH uses for this host and port. */
static void entry_name(const struct ssh_target *tg, char *buf, size_t cap)
{
	if (tg->port == 22)
		snprintf(buf, cap, "%s", tg->host);
	else
		snprintf(buf, cap, "[%s]:%d", tg->host, tg->port);
}

struct known {
	LIBSSH2_KNOWNHOSTS *kh;
	char **revoked;   /* base64 key blobs from @revoked lines */
	size_t n_revoked;
	bool missing;     /* the file does not exist */
};

static void known_free(struct known *k)
{
	if (k->kh)
		libssh2_knownhost_free(k->kh);
	for (size_t i = 0; i < k->n_revoked; i++)
		free(k->revoked[i]);
	free(k->revoked);
}

static void note_revoked(struct known *k, char *line)
{
	/* "@revoked PATTERNS KEYTYPE BASE64 [comment]" */
	char *save = NULL;
	strtok_r(line, " \t", &save);
	if (!strtok_r(NULL, " \t", &save) || !strtok_r(NULL, " \t", &save))
		return;
	char *blob = strtok_r(NULL, " \t\r\n", &save);
	if (!blob)
		return;
	char **n = realloc(k->revoked, (k->n_revoked + 1) * sizeof *n);
	if (!n)
		return;
	k->revoked = n;
	if ((n[k->n_revoked] = strdup(blob)))
		k->n_revoked++;
}

static int known_load(LIBSSH2_SESSION *s, const struct ssh_target *tg, struct known *k)
{
	memset(k, 0, sizeof *k);
	if (!(k->kh = libssh2_knownhost_init(s)))
		return sp_err("%s: out of memory", tg->alias);
	FILE *f = fopen(tg->known_hosts, "r");
	if (!f) {
		if (errno == ENOENT || errno == ENOTDIR) {
			k->missing = true;
			return 0;
		}
		int e = errno;
		known_free(k);
		return sp_err("%s: cannot read known hosts file %s: %s", tg->alias, tg->known_hosts, strerror(e));
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	while ((n = getline(&line, &cap, f)) > 0) {
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '#' || *p == '\n' || *p == '\r' || *p == '\0')
			continue;
		if (strncmp(p, "@revoked", 8) == 0) {
			note_revoked(k, p);
			continue;
		}
		if (*p == '@') /* @cert-authority and anything newer */
			continue;
		/* A line libssh2 cannot parse is skipped, not fatal. */
		(void)libssh2_knownhost_readline(k->kh, p, strlen(p), LIBSSH2_KNOWNHOST_FILE_OPENSSH);
	}
	free(line);
	fclose(f);
	return 0;
}

/* Does the file hold a key of this type for the host? Asked with a key that
 * cannot match: MISMATCH means "yes, another key of this type". Works for
 * hashed entries too, which cannot be listed by name. */
static bool holds_type(struct known *k, const char *name, int type)
{
	int rc = libssh2_knownhost_checkp(k->kh, name, -1, "-", 1,
					  LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_BASE64 | type, NULL);
	return rc == LIBSSH2_KNOWNHOST_CHECK_MISMATCH || rc == LIBSSH2_KNOWNHOST_CHECK_MATCH;
}

int ssh_hostkey_prefer(LIBSSH2_SESSION *s, const struct ssh_target *tg, char *known_types, size_t cap)
{
	struct known k;
	if (known_load(s, tg, &k) < 0)
		return -1;
	char name[300];
	entry_name(tg, name, sizeof name);
	char prefs[256] = "";
	known_types[0] = '\0';
	for (size_t i = 0; i < N_KEYTYPES; i++) {
		if (!holds_type(&k, name, keytypes[i].known))
			continue;
		size_t l = strlen(prefs);
		snprintf(prefs + l, sizeof prefs - l, "%s%s", l ? "," : "", keytypes[i].name);
	}
	known_free(&k);
	snprintf(known_types, cap, "%s", prefs);
	if (!prefs[0]) {
		/* Unknown host: any type, in OpenSSH's order, so the key offered
		 * for acceptance is the one ssh-keyscan and ssh would record. */
		for (size_t i = 0; i < N_KEYTYPES; i++) {
			size_t l = strlen(prefs);
			snprintf(prefs + l, sizeof prefs - l, "%s%s", l ? "," : "", keytypes[i].name);
		}
	}
	/* A known host is asked only for the types on file: a server that can
	 * no longer show one of those keys fails the handshake instead of
	 * slipping a new key type past the check. */
	if (libssh2_session_method_pref(s, LIBSSH2_METHOD_HOSTKEY, prefs) < 0)
		return sp_err("%s: cannot set host key preference %s: %s", tg->alias, prefs, ssh_last_error(s));
	return 0;
}

static int append_line(const struct ssh_target *tg, const char *text, size_t len)
{
	/* Create ~/.ssh (0700) when the default file's directory is missing. */
	char *dir = strdup(tg->known_hosts);
	if (!dir)
		return sp_err("%s: out of memory", tg->alias);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
			int e = errno;
			free(dir);
			return sp_err("%s: cannot create %s: %s", tg->alias, tg->known_hosts, strerror(e));
		}
	}
	free(dir);
	int fd = open(tg->known_hosts, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return sp_err("%s: cannot add the host key to %s: %s", tg->alias, tg->known_hosts, strerror(errno));
	/* Start on a new line if the file does not end with one. */
	struct stat st;
	bool need_nl = false;
	if (fstat(fd, &st) == 0 && st.st_size > 0) {
		char last;
		if (pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n')
			need_nl = true;
	}
	int rc = 0;
	if ((need_nl && write(fd, "\n", 1) != 1) || write(fd, text, len) != (ssize_t)len)
		rc = sp_err("%s: cannot add the host key to %s: %s", tg->alias, tg->known_hosts, strerror(errno));
	if (close(fd) < 0 && rc == 0)
		rc = sp_err("%s: cannot add the host key to %s: %s", tg->alias, tg->known_hosts, strerror(errno));
	return rc;
}

int ssh_hostkey_verify(LIBSSH2_SESSION *s, const struct ssh_target *tg, bool accept_new)
{
	size_t keylen = 0;
	int hktype = 0;
	const char *key = libssh2_session_hostkey(s, &keylen, &hktype);
	if (!key || !keylen)
		return sp_err("%s: the server sent no host key", tg->alias);
	const struct keytype *kt = NULL;
	for (size_t i = 0; i < N_KEYTYPES; i++)
		if (keytypes[i].hostkey == hktype)
			kt = &keytypes[i];
	if (!kt)
		return sp_err("%s: the server's host key type (%d) is not supported; use -e ssh", tg->alias, hktype) - 1;

	char fp[64] = "(unknown)";
	const unsigned char *h = (const unsigned char *)libssh2_hostkey_hash(s, LIBSSH2_HOSTKEY_HASH_SHA256);
	if (h) {
		char b64[48];
		ssh_base64(h, 32, b64, sizeof b64, false);
		snprintf(fp, sizeof fp, "SHA256:%s", b64);
	}

	struct known k;
	if (known_load(s, tg, &k) < 0)
		return -1;
	char name[300];
	entry_name(tg, name, sizeof name);

	/* A revoked key never passes, whatever else the file says. */
	size_t b64cap = keylen * 4 / 3 + 8;
	char *b64 = malloc(b64cap);
	if (!b64) {
		known_free(&k);
		return sp_err("%s: out of memory", tg->alias);
	}
	ssh_base64((const unsigned char *)key, keylen, b64, b64cap, true);
	for (size_t i = 0; i < k.n_revoked; i++) {
		if (strcmp(k.revoked[i], b64) == 0) {
			free(b64);
			known_free(&k);
			return sp_err("%s: the host key %s %s is marked @revoked in %s; refusing to connect",
				      tg->alias, kt->name, fp, tg->known_hosts);
		}
	}
	free(b64);

	struct libssh2_knownhost *entry = NULL;
	int rc = libssh2_knownhost_checkp(k.kh, name, -1, key, keylen,
					  LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | kt->known,
					  &entry);
	if (rc == LIBSSH2_KNOWNHOST_CHECK_MATCH) {
		known_free(&k);
		return 0;
	}
	if (rc == LIBSSH2_KNOWNHOST_CHECK_MISMATCH) {
		known_free(&k);
		return sp_err("%s: WARNING: HOST KEY HAS CHANGED: the server shows %s %s, but %s holds a different %s key "
			      "for %s; someone may be intercepting the connection, or the host was reinstalled. "
			      "Refusing to connect. If the change is expected, remove the old key with "
			      "ssh-keygen -R '%s' -f %s",
			      tg->alias, kt->name, fp, tg->known_hosts, kt->name, name, name, tg->known_hosts);
	}
	if (rc != LIBSSH2_KNOWNHOST_CHECK_NOTFOUND) {
		known_free(&k);
		return sp_err("%s: cannot check the host key against %s: %s", tg->alias, tg->known_hosts,
			      ssh_last_error(s));
	}
	if (!accept_new) {
		known_free(&k);
		char portopt[24] = "";
		if (tg->port != 22)
			snprintf(portopt, sizeof portopt, "-p %d ", tg->port);
		return sp_err("%s: unknown host key %s %s for %s (not in %s); if that fingerprint is right, "
			      "add it with: ssh-keyscan %s%s >> %s  or run again with --accept-new-host-key",
			      tg->alias, kt->name, fp, name, tg->known_hosts, portopt, tg->host, tg->known_hosts);
	}

	/* Trust on first use: record exactly one line, like OpenSSH's
	 * StrictHostKeyChecking=accept-new (writefile would rewrite the whole
	 * file, dropping lines libssh2 did not understand). */
	struct libssh2_knownhost *added = NULL;
	rc = libssh2_knownhost_addc(k.kh, name, NULL, key, keylen, NULL, 0,
				    LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | kt->known, &added);
	char line[4096];
	size_t outlen = 0;
	if (rc == 0)
		rc = libssh2_knownhost_writeline(k.kh, added, line, sizeof line, &outlen,
						 LIBSSH2_KNOWNHOST_FILE_OPENSSH);
	known_free(&k);
	if (rc != 0)
		return sp_err("%s: cannot format the known_hosts line: %s", tg->alias, ssh_last_error(s));
	if (append_line(tg, line, outlen) < 0)
		return -1;
	sp_warn("%s: added host key %s %s for %s to %s", tg->alias, kt->name, fp, name, tg->known_hosts);
	return 0;
}

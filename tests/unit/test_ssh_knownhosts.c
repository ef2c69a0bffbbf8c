/* The built-in client's known_hosts reading without a server: which key
 * types a file holds for host:port (plain, [host]:port, hashed entries,
 * lines libssh2 cannot parse), fingerprint base64, "~" expansion. The
 * handshake-time checks run against a real sshd in
 * tests/integration/ssh_hostkeys.sh. */
#include "../../transport/ssh_internal.h"
#include "unit.h"

#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define ED "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFDJP1ISkg79F58x9I5njGvaeQBlrr36cjzRhDumRMY0"
#define EC "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBM5UUZSLsbghmio1" \
	   "AYvQc1Psfi62tEBSp7IhWoLs7MyuKdNt6zT65f/0DefugoH2r5PFhJEbCYwKJ2pKDlpqjJU="

static char khfile[512];

/* Key types the file holds for host:port, as ssh_hostkey_prefer sees it. */
static const char *types_for(LIBSSH2_SESSION *s, const char *host, int port)
{
	static char known[256];
	struct ssh_target tg = { .alias = (char *)host, .host = (char *)host, .port = port,
				 .known_hosts = khfile };
	if (ssh_hostkey_prefer(s, &tg, known, sizeof known) < 0)
		return "(error)";
	return known;
}

int main(void)
{
	char b[32];
	ssh_base64((const unsigned char *)"", 0, b, sizeof b, true);
	CHECK("base64 of nothing", strcmp(b, "") == 0);
	ssh_base64((const unsigned char *)"f", 1, b, sizeof b, true);
	CHECK("base64 'f' padded", strcmp(b, "Zg==") == 0);
	ssh_base64((const unsigned char *)"f", 1, b, sizeof b, false);
	CHECK("base64 'f' unpadded (fingerprint style)", strcmp(b, "Zg") == 0);
	ssh_base64((const unsigned char *)"foob", 4, b, sizeof b, false);
	CHECK("base64 'foob' unpadded", strcmp(b, "Zm9vYg") == 0);
	ssh_base64((const unsigned char *)"foobar", 6, b, sizeof b, true);
	CHECK("base64 'foobar'", strcmp(b, "Zm9vYmFy") == 0);
	ssh_base64((const unsigned char *)"foobar", 6, b, 5, true);
	CHECK("base64 truncates to the buffer", strcmp(b, "Zm9v") == 0);

	snprintf(khfile, sizeof khfile, "%s/test_ssh_kh.%d", unit_tmpdir(), (int)getpid());
	FILE *f = fopen(khfile, "w");
	if (!f) {
		CHECK("create a known_hosts file", 0);
		UNIT_DONE();
	}
	fprintf(f,
		"# comment\n"
		"\n"
		"[127.0.0.1]:2222 sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAINQ\n"
		"@cert-authority *.example.org " ED "\n"
		"[127.0.0.1]:2222 " ED "\n"
		"127.0.0.1 " EC "\n"
		"a.example,b.example " EC "\n"
		"|1|NDusy/WdaY9z0CM4RZEh+2NxkgQ=|wyh0PGkThCbCFb3WMmE4Hyhz0CI= " ED "\n"
		"this line is not a known_hosts line at all\n"
		"[both.example]:2022 " ED "\n"
		"[both.example]:2022 " EC "\n");
	fclose(f);

	CHECK("libssh2_init", libssh2_init(0) == 0);
	LIBSSH2_SESSION *s = libssh2_session_init();
	CHECK("a session to hang the knownhost API on", s != NULL);
	if (s) {
		CHECK("[host]:port entry after unparsable lines",
		      strcmp(types_for(s, "127.0.0.1", 2222), "ssh-ed25519") == 0);
		CHECK("plain entry is port 22 only",
		      strcmp(types_for(s, "127.0.0.1", 22), "ecdsa-sha2-nistp256") == 0);
		CHECK("host in a comma list", strcmp(types_for(s, "b.example", 22), "ecdsa-sha2-nistp256") == 0);
		CHECK("hashed [host]:port entry", strcmp(types_for(s, "h.example", 2200), "ssh-ed25519") == 0);
		CHECK("hashed entry is for its port only", strcmp(types_for(s, "h.example", 22), "") == 0);
		CHECK("two key types, ed25519 preferred",
		      strcmp(types_for(s, "both.example", 2022), "ssh-ed25519,ecdsa-sha2-nistp256") == 0);
		CHECK("unknown host: no types on file", strcmp(types_for(s, "c.example", 22), "") == 0);
		CHECK("@cert-authority lines are not host keys", strcmp(types_for(s, "x.example.org", 22), "") == 0);
		snprintf(khfile, sizeof khfile, "%s/no/such/known_hosts", unit_tmpdir());
		CHECK("a missing file is an empty one", strcmp(types_for(s, "127.0.0.1", 2222), "") == 0);
		libssh2_session_free(s);
	}
	libssh2_exit();
	snprintf(khfile, sizeof khfile, "%s/test_ssh_kh.%d", unit_tmpdir(), (int)getpid());
	unlink(khfile);

	struct passwd *pw = getpwuid(getuid());
	char *e = ssh_expand_home("~/.ssh/id_ed25519");
	char want[1024];
	snprintf(want, sizeof want, "%s/.ssh/id_ed25519", pw ? pw->pw_dir : "");
	CHECK("~ is the passwd home, as OpenSSH has it", pw && e && strcmp(e, want) == 0);
	free(e);
	e = ssh_expand_home("/etc/x");
	CHECK("absolute paths unchanged", e && strcmp(e, "/etc/x") == 0);
	free(e);
	e = ssh_expand_home("~user/x");
	CHECK("~user is left alone", e && strcmp(e, "~user/x") == 0);
	free(e);
	UNIT_DONE();
}

#!/bin/bash
# The built-in client's trust decisions against a real sshd: unknown and
# changed host keys, --accept-new-host-key, hashed known_hosts entries, and
# login failures (wrong key, RSA key, missing key) as clean one-line errors.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
sshd_start || exit 0

R=$T/remote
mkdir -p "$R"
img=$T/img.raw
truncate -s 8M "$img"
head -c 1M /dev/urandom | dd of="$img" bs=1M seek=2 conv=notrunc status=none

# copy KNOWN_HOSTS DEST [extra options...]
push() {
	local kh=$1 dest=$2; shift 2
	"$SPARSYNC" copy -q -p "$SSHD_PORT" -i "$SSH_KEY" --known-hosts "$kh" --remote-path "$SPARSYNC" \
		"$@" "$img" "127.0.0.1:$dest"
}
# check_said NAME PATTERN: the last check's output contains PATTERN.
check_said() {
	if last_output | grep -q -- "$2"; then pass "$1"; else
		fail "$1 (no '$2' in the output)"; last_output | sed 's/^/    | /' | head -5
	fi
}
# Nothing at all was created on the remote side (no file, no temp file).
# (the digest file of an earlier successful copy, .NAME.sparsync, may stay)
remote_untouched() { [ -z "$(ls -A "$R" | grep -v '^\..*\.sparsync$')" ]; }
host_fp=$(ssh-keygen -lf "$SSHD_DIR/host_ed25519.pub" | awk '{print $2}')

# --- unknown host: refused, the message shows the fingerprint and the way out
: >"$T/kh_empty"
check_fails "unknown host key refused" push "$T/kh_empty" "$R/a.raw"
out=$(last_output)
if grep -q "$host_fp" <<<"$out" && grep -q "ssh-keyscan -p $SSHD_PORT 127.0.0.1" <<<"$out" &&
   grep -q -- "--accept-new-host-key" <<<"$out" && [ "$(wc -l <<<"$out")" -eq 1 ]; then
	pass "unknown host message: one line with $host_fp and how to proceed"
else
	fail "unknown host message"; sed 's/^/    | /' <<<"$out"
fi
check "unknown host: nothing written on the remote" remote_untouched
check "unknown host: known_hosts left empty" test ! -s "$T/kh_empty"

# --- accept-new: trusted, recorded as one line, and works afterwards
cp "$T/kh_empty" "$T/kh_new"
echo "# a comment the file keeps" >"$T/kh_new"
check "accept-new-host-key connects" push "$T/kh_new" "$R/b.raw" --accept-new-host-key
check "accept-new: copy is exact" cmp "$img" "$R/b.raw"
if [ "$(grep -c "^\[127.0.0.1\]:$SSHD_PORT ssh-ed25519 " "$T/kh_new")" -eq 1 ] &&
   [ "$(wc -l <"$T/kh_new")" -eq 2 ] && grep -q "^# a comment" "$T/kh_new"; then
	pass "accept-new appended exactly one line"
else
	fail "accept-new appended exactly one line"; sed 's/^/    | /' "$T/kh_new"
fi
check "OpenSSH accepts the recorded line" \
	ssh -o UserKnownHostsFile="$T/kh_new" -o StrictHostKeyChecking=yes -o BatchMode=yes \
	-o GlobalKnownHostsFile=/dev/null -i "$SSH_KEY" -o IdentitiesOnly=yes -p "$SSHD_PORT" 127.0.0.1 true
rm -f "$R/b.raw"
check "second run without the flag" push "$T/kh_new" "$R/b.raw"
check "second run: copy is exact" cmp "$img" "$R/b.raw"
lines_before=$(wc -l <"$T/kh_new")
check "known host: nothing appended" test "$(wc -l <"$T/kh_new")" -eq "$lines_before"
rm -f "$R"/*

# A known_hosts file that does not exist yet is created (0600).
check "accept-new creates a missing known_hosts" push "$T/newdir/kh" "$R/c.raw" --accept-new-host-key
check "created known_hosts is private" test "$(stat -c %a "$T/newdir/kh")" = 600
rm -f "$R"/*

# --- changed key: refused loudly, even with --accept-new-host-key
ssh-keygen -q -t ed25519 -N '' -f "$T/impostor"
echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$T/impostor.pub")" >"$T/kh_changed"
cp "$T/kh_changed" "$T/kh_changed.orig"
check_fails "changed host key refused" push "$T/kh_changed" "$R/d.raw"
check_said "changed key message is loud" "HOST KEY HAS CHANGED"
check_fails "changed host key refused with --accept-new-host-key" push "$T/kh_changed" "$R/d.raw" --accept-new-host-key
check "changed key: known_hosts untouched" cmp "$T/kh_changed" "$T/kh_changed.orig"
check "changed key: nothing written on the remote" remote_untouched

# --- only a key of another type on file: no silent fallback to ed25519
ssh-keygen -q -t ecdsa -N '' -f "$T/other_type"
echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$T/other_type.pub")" >"$T/kh_ecdsa"
check_fails "host known only by another key type: refused" push "$T/kh_ecdsa" "$R/e.raw" --accept-new-host-key
check "other key type: nothing written on the remote" remote_untouched

# --- hashed entries (ssh-keygen -H) are matched
cp "$SSH_KNOWN_HOSTS" "$T/kh_hashed"
ssh-keygen -q -H -f "$T/kh_hashed" >/dev/null 2>&1
rm -f "$T/kh_hashed.old"
if grep -q '^|1|' "$T/kh_hashed" && ! grep -q '127.0.0.1' "$T/kh_hashed"; then
	check "hashed known_hosts entry accepted" push "$T/kh_hashed" "$R/f.raw"
	check "hashed: copy is exact" cmp "$img" "$R/f.raw"
else
	fail "ssh-keygen -H did not hash the file"
fi
rm -f "$R"/*

# --- a line libssh2 cannot parse does not hide the entries after it
{ echo "[127.0.0.1]:$SSHD_PORT sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAINQ"
  echo "@cert-authority *.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZvbw=="
  cat "$SSH_KNOWN_HOSTS"; } >"$T/kh_mixed"
check "odd lines before the entry are skipped" push "$T/kh_mixed" "$R/g.raw"
rm -f "$R"/*

# --- @revoked wins over a matching entry
{ cat "$SSH_KNOWN_HOSTS"; echo "@revoked * $(cut -d' ' -f1,2 "$SSHD_DIR/host_ed25519.pub")"; } >"$T/kh_revoked"
check_fails "revoked host key refused" push "$T/kh_revoked" "$R/h.raw"
check_said "revoked: message says so" "revoked"

# --- user authentication failures are clean one-line errors
pushk() { # KEY DEST [OPTION...]
	local key=$1 dest=$2; shift 2
	"$SPARSYNC" copy -q "$@" -p "$SSHD_PORT" -i "$key" --known-hosts "$SSH_KNOWN_HOSTS" \
		--remote-path "$SPARSYNC" "$img" "127.0.0.1:$dest"
}
check_fails "wrong user key refused" pushk "$SSH_OTHER_KEY" "$R/i.raw"
out=$(last_output)
if grep -q "permission denied" <<<"$out" && grep -q "id_other" <<<"$out" && [ "$(wc -l <<<"$out")" -eq 1 ]; then
	pass "wrong key: one line naming the key"
else
	fail "wrong key message"; sed 's/^/    | /' <<<"$out"
fi
# The built-in client's own refusal (by default OpenSSH takes over:
# tests/integration/ssh_fallback.sh).
check_fails "RSA user key refused" pushk "$SSH_RSA_KEY" "$R/j.raw" --ssh=builtin
check_said "RSA refusal explains itself" "RSA user keys"
check_fails "missing identity file" pushk "$T/no_such_key" "$R/k.raw"
check_said "missing identity named" "no_such_key"
check "login failures: nothing written on the remote" remote_untouched

# --- a wrong user name is a login failure too, not a hang
check_fails "unknown user refused" "$SPARSYNC" copy -q -p "$SSHD_PORT" -i "$SSH_KEY" \
	--known-hosts "$SSH_KNOWN_HOSTS" --remote-path "$SPARSYNC" "$img" "nosuchuser@127.0.0.1:$R/l.raw"

# --- nobody listening: a prompt, clean error
port_closed=$(_sshd_free_port)
check_fails "connection refused" timeout 20 "$SPARSYNC" copy -q -p "$port_closed" -i "$SSH_KEY" \
	--known-hosts "$SSH_KNOWN_HOSTS" "$img" "127.0.0.1:$R/m.raw"
check_said "connection refused message" "cannot connect"

# --- ~/.ssh/config as OpenSSH resolves it (`ssh -G`): a stand-in ssh on
# PATH plays the user's configuration so the real home is not touched.
mkdir -p "$T/fakebin"
cat >"$T/fakebin/ssh" <<FAKE
#!/bin/sh
[ "\$1" = -G ] || exit 255
for a; do last=\$a; done
[ "\$last" = viajump ] && echo "proxyjump jumphost"
[ "\$last" = myalias ] || [ "\$last" = viajump ] || exit 255
echo "user $SSH_USER"
echo "hostname 127.0.0.1"
echo "port $SSHD_PORT"
echo "identityfile $SSH_OTHER_KEY"
echo "identityfile $SSH_KEY"
echo "userknownhostsfile $SSH_KNOWN_HOSTS /nonexistent/known_hosts2"
FAKE
chmod +x "$T/fakebin/ssh"
check "ssh config: HostName, Port, User, IdentityFile, UserKnownHostsFile" \
	env PATH="$T/fakebin:$PATH" "$SPARSYNC" copy -q --remote-path "$SPARSYNC" "$img" "myalias:$R/cfg.raw"
check "ssh config: copy is exact" cmp "$img" "$R/cfg.raw"
rm -f "$R"/*
check_fails "ssh config: the command line wins (-p)" \
	env PATH="$T/fakebin:$PATH" timeout 20 "$SPARSYNC" copy -q -p "$port_closed" --remote-path "$SPARSYNC" \
	"$img" "myalias:$R/cfg.raw"
check_said "ssh config: -p overrides Port" "port $port_closed"
check_fails "ssh config: ProxyJump is refused, not bypassed" \
	env PATH="$T/fakebin:$PATH" "$SPARSYNC" copy -q --ssh=builtin --remote-path "$SPARSYNC" "$img" "viajump:$R/cfg.raw"
check_said "ssh config: ProxyJump refusal points to -e ssh" "ProxyJump jumphost.*-e ssh"
# An ssh that hangs is given up on; the defaults and the command line rule.
printf '#!/bin/sh\nexec sleep 60\n' >"$T/fakebin/ssh"
t0=$(date +%s)
check "ssh -G hanging: ignored after a few seconds" \
	env PATH="$T/fakebin:$PATH" timeout 30 "$SPARSYNC" copy -q $(sparsync_ssh_opts) --remote-path "$SPARSYNC" \
	"$img" "127.0.0.1:$R/cfg2.raw"
# The bound covers the whole copy, which valgrind slows several-fold.
limit=10; [ -n "${SANITIZER:-}" ] && limit=25
check "ssh -G hanging: no more than $limit s lost" test $(( $(date +%s) - t0 )) -lt $limit

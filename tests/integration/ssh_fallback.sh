#!/bin/bash
# OpenSSH when the built-in client cannot (issue 17): an RSA key (libssh2
# 1.10 signs with SHA-1, which OpenSSH >= 8.8 refuses) and a host reached
# through ProxyJump (read from the ssh configuration) both work through
# OpenSSH's ssh, said once with -v; --ssh=builtin keeps the old refusal;
# --connect-timeout bounds a connection that never answers.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
sshd_start || exit 0
H=127.0.0.1
BASE="-p $SSHD_PORT --known-hosts $SSH_KNOWN_HOSTS --remote-path $SPARSYNC"
truncate -s 32M "$T/a.raw"
put_random "$T/a.raw" $((2 * MiB)) $((5 * MiB))
mkdir -p "$T/r"

check "an RSA key: works through OpenSSH" "$SPARSYNC" copy -v $BASE -i "$SSHD_DIR/id_rsa" "$T/a.raw" "$H:$T/r/rsa.raw"
said "-v says why OpenSSH" "RSA user keys are rejected .*; using OpenSSH's ssh instead"
check "and the copy is right" cmp "$T/a.raw" "$T/r/rsa.raw"
check "without -v it says nothing" "$SPARSYNC" copy $BASE -i "$SSHD_DIR/id_rsa" "$T/a.raw" "$H:$T/r/rsa.raw"
check "not a word" test ! -s "$T/.last"
check_fails "--ssh=builtin keeps the built-in client's refusal" \
	"$SPARSYNC" copy --ssh=builtin $BASE -i "$SSHD_DIR/id_rsa" "$T/a.raw" "$H:$T/r/rsa2.raw"
said "which names the way out" 'or -e ssh'
check "--ssh=openssh uses ssh from the start" "$SPARSYNC" copy -v --ssh=openssh $BASE -i "$SSH_KEY" "$T/a.raw" "$H:$T/r/o.raw"
check "(right)" cmp "$T/a.raw" "$T/r/o.raw"
check_fails "--ssh=bogus is a usage error" "$SPARSYNC" copy --ssh=bogus "$T/a.raw" "$H:$T/r/x.raw"

# A passphrase-protected key and no agent: libssh2 cannot load it; OpenSSH
# asks for the passphrase (here through SSH_ASKPASS).
ssh-keygen -q -t ed25519 -N 'sesame' -C sparsync-test-locked -f "$T/locked"
cat "$T/locked.pub" >>"$SSHD_DIR/authorized_keys"
printf '#!/bin/sh\necho sesame\n' >"$T/askpass"
chmod +x "$T/askpass"
check "a passphrase-protected key: OpenSSH asks for the passphrase" \
	env -u SSH_AUTH_SOCK SSH_ASKPASS="$T/askpass" SSH_ASKPASS_REQUIRE=force DISPLAY=none \
	"$SPARSYNC" copy -v $BASE -i "$T/locked" "$T/a.raw" "$H:$T/r/locked.raw"
said "-v says why (passphrase)" "passphrase-protected.*using OpenSSH's ssh instead"
check "(right)" cmp "$T/a.raw" "$T/r/locked.raw"

# ProxyJump from the ssh configuration, through a second loopback sshd: the
# target's sshd is the one started above, the jump host another. The ssh
# configuration (~/.ssh/config) is read from the passwd home (/root), so
# this part runs in a mount namespace where /root is a directory of ours;
# nothing outside $T changes.
TGT_PORT=$SSHD_PORT TGT_KEY=$SSH_KEY TGT_KH=$SSH_KNOWN_HOSTS
SSHD_DIR=$T/jump
trap 'SSHD_DIR=$T/jump sshd_stop; SSHD_DIR=$T/ssh sshd_stop; rm -rf "$T"' EXIT
if [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null && sshd_start; then
	mkdir -p "$T/fakeroot/.ssh"
	cat >"$T/fakeroot/.ssh/config" <<EOC
Host jumpy
	HostName 127.0.0.1
	Port $SSHD_PORT
	User root
	IdentityFile $SSH_KEY
	UserKnownHostsFile $SSH_KNOWN_HOSTS
	StrictHostKeyChecking yes
Host behind
	HostName 127.0.0.1
	Port $TGT_PORT
	User root
	IdentityFile $TGT_KEY
	UserKnownHostsFile $TGT_KH
	StrictHostKeyChecking yes
	ProxyJump jumpy
EOC
	chmod 600 "$T/fakeroot/.ssh/config"
	root_before=$(ls -la --time-style=full-iso /root /root/.ssh 2>&1 | md5sum)
	inns() { unshare -m sh -c "mount --bind '$T/fakeroot' /root && exec \"\$@\"" sh "$@"; }
	check "ProxyJump: the copy goes through OpenSSH" \
		inns "$SPARSYNC" copy -v --remote-path "$SPARSYNC" "$T/a.raw" "behind:$T/r/jump.raw"
	said "-v says why (ProxyJump)" "ProxyJump jumpy, which the built-in client cannot do.*using OpenSSH's ssh instead"
	check "ProxyJump: right" cmp "$T/a.raw" "$T/r/jump.raw"
	check "ProxyJump: a pull too" inns "$SPARSYNC" copy --remote-path "$SPARSYNC" "behind:$T/r/jump.raw" "$T/pulled.raw"
	check "ProxyJump: pulled right" cmp "$T/a.raw" "$T/pulled.raw"
	check "ProxyJump: verify too" inns "$SPARSYNC" verify -q --remote-path "$SPARSYNC" "$T/a.raw" "behind:$T/r/jump.raw"
	check_fails "ProxyJump with --ssh=builtin is refused" \
		inns "$SPARSYNC" copy --ssh=builtin --remote-path "$SPARSYNC" "$T/a.raw" "behind:$T/r/jump2.raw"
	SSHD_DIR=$T/jump sshd_stop
	check_fails "ProxyJump: with the jump host down it fails" \
		inns "$SPARSYNC" copy --remote-path "$SPARSYNC" "$T/a.raw" "behind:$T/r/jump3.raw"
	check "/root was never touched" test "$(ls -la --time-style=full-iso /root /root/.ssh 2>&1 | md5sum)" = "$root_before"
else
	fail "ProxyJump test needs root, unshare -m and a second sshd"
fi
SSHD_DIR=$T/ssh SSHD_PORT=$TGT_PORT SSH_KEY=$TGT_KEY SSH_KNOWN_HOSTS=$TGT_KH

# A host that never answers: --connect-timeout bounds the wait (a
# listening socket that never accepts: the TCP handshake completes in the
# kernel, the SSH one never starts).
python3 - "$T/port" <<'PY' &
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
time.sleep(60)
PY
SILENT=$!
for _ in $(seq 50); do [ -s "$T/port" ] && break; sleep 0.1; done
t0=$(date +%s)
check_fails "a silent server with --connect-timeout 2" timeout 30 "$SPARSYNC" copy --ssh=builtin --connect-timeout 2 \
	-p "$(cat "$T/port")" --known-hosts "$SSH_KNOWN_HOSTS" -i "$SSH_KEY" "$T/a.raw" "$H:$T/r/never.raw"
check "gives up within a few seconds" test $(( $(date +%s) - t0 )) -le 10
kill $SILENT 2>/dev/null
wait $SILENT 2>/dev/null || true

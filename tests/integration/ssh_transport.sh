#!/bin/bash
# The built-in libssh2 client moving real images through a real sshd:
# push and pull of a sparse raw image, a stream long enough to cross the
# test server's 32M RekeyLimit several times, the remote's errors reaching
# the user, and a session killed mid-transfer ending the client promptly.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
sshd_start || exit 0

R=$T/remote
mkdir -p "$R"
SSHO=$(sparsync_ssh_opts)
# sp ARGS...: sparsync copy through the built-in client.
sp() { "$SPARSYNC" copy -q $SSHO --remote-path "$SPARSYNC" "$@"; }
now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%d", b - a }'; }
# (the digest file of an earlier successful copy, .NAME.sparsync, may stay)
no_leftovers() { [ -z "$(ls -A "$1" | grep -v '^\..*\.sparsync$')" ]; }

# A sparse raw image: holes, random data, explicit zero blocks, a tail byte.
img=$T/img.raw
truncate -s 96M "$img"
head -c 3M /dev/urandom | dd of="$img" bs=1M seek=1 conv=notrunc status=none
dd if=/dev/zero of="$img" bs=1M seek=10 count=4 conv=notrunc status=none
head -c 700K /dev/urandom | dd of="$img" bs=1K seek=$((40 * 1024 + 3)) conv=notrunc status=none
printf 'end' | dd of="$img" bs=1 seek=$((96 * 1024 * 1024 - 3)) conv=notrunc status=none

check "push a sparse raw image" sp "$img" "127.0.0.1:$R/push.raw"
check "push: identical" cmp "$img" "$R/push.raw"
check "push: holes stay holes" test "$(allocated "$R/push.raw")" -lt $((8 * 1024 * 1024))
check "pull it back" sp "127.0.0.1:$R/push.raw" "$T/pull.raw"
check "pull: identical" cmp "$img" "$T/pull.raw"
check "pull: holes stay holes" test "$(allocated "$T/pull.raw")" -lt $((8 * 1024 * 1024))
rm -f "$T/pull.raw"

# The harness's OpenSSH client config works for -e too.
check "push with -e 'ssh -F config'" "$SPARSYNC" copy -q -e "ssh -F $SSH_CONFIG" --remote-path "$SPARSYNC" \
	"$img" "sparsync-test:$R/push_e.raw"
check "-e push: identical" cmp "$img" "$R/push_e.raw"
rm -f "$R"/*

# --- long streams: > 100 MiB each way across RekeyLimit 32M (several
# re-keyings while data flows), incompressible so every byte crosses.
if [ "${SANITIZER:-0}" != 1 ]; then
	big=$T/big.raw
	head -c 120M /dev/urandom >"$big"
	t0=$(now)
	check "push 120 MiB through rekeying" timeout 120 "$SPARSYNC" copy -q $SSHO --remote-path "$SPARSYNC" \
		--compress none "$big" "127.0.0.1:$R/big.raw"
	echo "    push 120 MiB: $(secs_since "$t0") s"
	check "120 MiB push: identical" cmp "$big" "$R/big.raw"
	check "pull 120 MiB through rekeying" timeout 120 "$SPARSYNC" copy -q $SSHO --remote-path "$SPARSYNC" \
		--compress none "127.0.0.1:$R/big.raw" "$T/big_back.raw"
	check "120 MiB pull: identical" cmp "$big" "$T/big_back.raw"
	rm -f "$R/big.raw" "$T/big_back.raw"
fi

# --- the remote's own errors reach the user, promptly: well before the
# 60 s dead-peer and close timeouts (the bound leaves room for a loaded CI
# machine; locally this takes 0.2 s, 2 s under valgrind).
t0=$(now)
check_fails "push into a missing remote directory fails" timeout 30 "$SPARSYNC" copy -q $SSHO \
	--remote-path "$SPARSYNC" "$img" "127.0.0.1:$R/no/such/dir/x.raw"
out=$(last_output)
el=$(secs_since "$t0")
if grep -q "no/such/dir" <<<"$out" && [ "$el" -lt 25 ]; then
	pass "the remote's message reaches the user"
else
	fail "the remote's message reaches the user (after $el s)"; sed 's/^/    | /' <<<"$out"
fi
check_fails "pull of a missing remote file fails" timeout 30 "$SPARSYNC" copy -q $SSHO \
	--remote-path "$SPARSYNC" "127.0.0.1:$R/missing.raw" "$T/never.raw"
check "failed pull leaves no local file" test ! -e "$T/never.raw"
check_fails "missing remote sparsync" timeout 30 "$SPARSYNC" copy -q $SSHO \
	--remote-path "$T/no-such-sparsync" "$img" "127.0.0.1:$R/x.raw"
check "failed runs leave nothing on the remote" no_leftovers "$R"

# --- a session that dies mid-transfer ends the client within seconds
descendants() { local p; for p in $(pgrep -P "$1"); do echo "$p"; descendants "$p"; done; }
# PID of the remote `sparsync serve` whose command line holds $1.
serve_pid() {
	local p
	for p in $(descendants "$(cat "$SSHD_DIR/sshd.pid")"); do
		if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- " serve .*$1"; then
			echo "$p"; return 0
		fi
	done
	return 1
}
slow=$T/slow.raw
head -c 64M /dev/urandom >"$slow"

# killed_run NAME HOW SRC DST: start a 2M/s transfer, kill the far side
# after 2 s (HOW: serve = the remote sparsync, session = sshd's session
# processes), expect a non-zero exit well within 20 s.
killed_run() {
	local name=$1 how=$2 src=$3 dst=$4 key=$5
	local t0 pid rc el
	t0=$(now)
	timeout 30 "$SPARSYNC" copy -q $SSHO --remote-path "$SPARSYNC" --compress none --bwlimit 2M \
		"$src" "$dst" >"$T/killed.out" 2>&1 &
	pid=$!
	sleep 2
	local victim=
	for _ in $(seq 1 30); do victim=$(serve_pid "$key") && break; sleep 0.1; done
	if [ -z "$victim" ]; then
		fail "$name: the remote serve process was not found"; kill "$pid" 2>/dev/null; wait "$pid"; return
	fi
	if [ "$how" = serve ]; then
		kill -TERM "$victim"
	else
		# sshd's per-connection processes (monitor and session, both
		# holding the socket), not the listener and not the command.
		local p
		for p in $(descendants "$(cat "$SSHD_DIR/sshd.pid")"); do
			[ "$(cat "/proc/$p/comm" 2>/dev/null)" = sshd ] && kill -KILL "$p"
		done
	fi
	wait "$pid"; rc=$?
	el=$(secs_since "$t0")
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -lt 125 ] && [ "$el" -lt 20 ]; then
		pass "$name: exit $rc after ${el}s"
	else
		fail "$name: exit $rc after ${el}s"; sed 's/^/    | /' "$T/killed.out" | head -5
	fi
}
killed_run "push, remote sparsync killed" serve "$slow" "127.0.0.1:$R/k1.raw" k1.raw
sleep 1
check "push, remote killed: no destination left" no_leftovers "$R"
killed_run "push, sshd session killed" session "$slow" "127.0.0.1:$R/k2.raw" k2.raw
# The orphaned receiver sees its input end and cleans up by itself.
for _ in $(seq 1 50); do no_leftovers "$R" && break; sleep 0.1; done
check "push, session killed: no destination left" no_leftovers "$R"

cp "$slow" "$R/src.raw"
killed_run "pull, remote sparsync killed" serve "127.0.0.1:$R/src.raw" "$T/k3.raw" src.raw
check "pull, remote killed: no local destination" test ! -e "$T/k3.raw"
killed_run "pull, sshd session killed" session "127.0.0.1:$R/src.raw" "$T/k4.raw" src.raw
check "pull, session killed: no local destination" test ! -e "$T/k4.raw"
check "no stray local files" test -z "$(ls -A "$T" | grep -v -E '^(ssh|remote|img.raw|big.raw|slow.raw|killed.out|\.out|\.last|\..*\.sparsync)$')"

# The server still works for the next client.
check "the server serves again after the kills" sp "$img" "127.0.0.1:$R/again.raw"
check "after the kills: identical" cmp "$img" "$R/again.raw"

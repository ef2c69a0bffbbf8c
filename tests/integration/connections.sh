#!/bin/bash
# Several SSH connections for one copy (--connections N, issue 18), through
# a real sshd: the further connections run `serve --join NAME` and join the
# session through its rendezvous; DATA records spread over all of them and
# the destination is written once, checked by the END digest over every
# link. Pushes and pulls, the built-in client and -e ssh, raw and qcow2,
# an incremental sync, a restricted append-only key; a link killed in the
# middle, a full disk on the receiver, a join with a wrong token or to a
# session that is gone: a clear error, nothing half-written left, no hang.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
TO="timeout 120"
sshd_start || exit 0

R=$T/remote
mkdir -p "$R"
SSHO=$(sparsync_ssh_opts)
SP="$SPARSYNC copy $SSHO --remote-path $SPARSYNC"
H=127.0.0.1

# 24 MiB of data (random, and text that compresses) in a 256 MiB image.
img=$T/img.raw
truncate -s 256M "$img"
put_random "$img" $((16 * MiB)) $((8 * MiB))
seq 1 2000000 | head -c $((8 * MiB)) | dd of="$img" bs=1M seek=100 conv=notrunc status=none
# carried: the connections -v says carried data ("connection N carried X")
carried() { grep -c 'connection [0-9]* carried [1-9]' "$T/.last"; }
# same NAME GOT WANT
same() {
	if [ "$2" = "$3" ]; then pass "$1 ($2)"; else fail "$1 (${2:-nothing}, want $3)"; fi
}

check "push over 3 connections" $TO $SP -v --json --connections 3 "$img" "$H:$R/a.raw"
is "  --json counts 3 connections" connections 3
same "  each of the 3 carried data" "$(carried)" 3
check "  identical" cmp "$img" "$R/a.raw"
check "  no temporary file left" no_temp_files "$R"

check "pull over 3 connections" $TO $SP -v --json --connections 3 "$H:$R/a.raw" "$T/b.raw"
is "  --json counts 3 connections" connections 3
same "  each of the 3 carried data (the remote serve says so)" "$(carried)" 3
check "  identical" cmp "$img" "$T/b.raw"

check_fails "pull of a file that is not there, over 3 connections" $TO $SP --connections 3 \
	"$H:$R/nothing.raw" "$T/nothing.raw"
check "  says so in one line" sh -c "grep -q 'nothing.raw: No such file' $T/.last && [ \$(wc -l <$T/.last) -eq 1 ]"
check "  and writes nothing" test ! -e "$T/nothing.raw"

check "push to qcow2 over 4 connections" $TO $SP --json --connections 4 "$img" "$H:$R/a.qcow2"
is "  4 connections" connections 4
check "  qemu-img compare" qemu-img compare -q "$img" "$R/a.qcow2"
check "  qemu-img check" qemu-img check -q "$R/a.qcow2"

# An incremental sync: only what changed crosses, over every connection.
cp "$img" "$T/img2.raw"
put_random "$T/img2.raw" $((2 * MiB)) $((9 * MiB))
put_random "$T/img2.raw" $((1 * MiB)) $((200 * MiB))
check "sync over 3 connections" $TO $SP --json --connections 3 "$T/img2.raw" "$H:$R/a.raw"
sent=$(field bytes_sent)
check "  identical" cmp "$T/img2.raw" "$R/a.raw"
check "  sent about what changed (3 MiB of random data), not the image" \
	test "$sent" -gt $((3 * MiB)) -a "$sent" -lt $((4 * MiB))
check "a sync with nothing changed" $TO $SP --json --connections 3 "$T/img2.raw" "$H:$R/a.raw"
check "  sent almost nothing" test "$(field bytes_sent)" -lt 65536

check "push over 2 connections through OpenSSH (-e)" $TO "$SPARSYNC" copy -v --json \
	--connections 2 -e "ssh -F $SSH_CONFIG" --remote-path "$SPARSYNC" "$img" "sparsync-test:$R/e.raw"
is "  2 connections" connections 2
same "  both carried data" "$(carried)" 2
check "  identical" cmp "$img" "$R/e.raw"

check "--connections 1: one connection, no rendezvous" $TO $SP -v --json --connections 1 "$img" \
	"$H:$R/one.raw"
is "  1 connection" connections 1
cp "$T/.last" "$T/one.out"
check "  identical" cmp "$img" "$R/one.raw"
check "  no further connection joined" sh -c "! grep -q 'joined' $T/one.out"

# Usage errors: exit 2, one line, nothing written.
usage2() { # NAME CMD...
	local name=$1; shift
	"$@" >"$T/.out" 2>&1 </dev/null; local rc=$?
	cp "$T/.out" "$T/.last"
	if [ $rc -eq 2 ] && [ "$(wc -l <"$T/.out")" -eq 1 ]; then pass "$name: exit 2, one line"; else
		fail "$name: exit $rc"; sed 's/^/    | /' "$T/.out" | head -5
	fi
}
for bad in 0 17 x; do
	usage2 "--connections $bad" $SP --connections "$bad" "$img" "$H:$R/u.raw"
done
usage2 "--connections for a local copy" "$SPARSYNC" copy --connections 2 "$img" "$T/l.raw"
usage2 "--connections for a stream" sh -c "'$SPARSYNC' copy --connections 2 '$img' - >/dev/null"
usage2 "--connections with --bwlimit" $SP --connections 2 --bwlimit 1M "$img" "$H:$R/u.raw"
check "  nothing written" test ! -e "$R/u.raw" -a ! -e "$T/l.raw"

# serve --join: only a rendezvous name, only a live session.
usage2 "serve --join with a name that is not a rendezvous" "$SPARSYNC" serve --join ../../etc/passwd
check_fails "serve --join to a session that is gone" "$SPARSYNC" serve \
	--join sparsync-links-0123456789abcdef0123456789abcdef </dev/null
check "  says so in one line" grep -q 'the session is gone' "$T/.last"

# A restricted append-only key (issue 20): the further connections are
# joins, allowed, of a session that key started.
ssh-keygen -q -t ed25519 -N '' -C sparsync-test-append -f "$SSHD_DIR/id_append" ||
	fail "ssh-keygen"
printf 'command="%s serve --restrict-to %s --append-only",restrict %s\n' "$SPARSYNC" "$R" \
	"$(cat "$SSHD_DIR/id_append.pub")" >>"$SSHD_DIR/authorized_keys"
AO="-p $SSHD_PORT -i $SSHD_DIR/id_append --known-hosts $SSH_KNOWN_HOSTS"
check "restricted --append-only key: a new backup over 3 connections" $TO "$SPARSYNC" copy $AO \
	--json --connections 3 "$img" "$H:backup.raw"
is "  3 connections" connections 3
check "  identical" cmp "$img" "$R/backup.raw"
cp "$R/backup.raw" "$T/backup.before"
check_fails "  replacing it is still refused" $TO "$SPARSYNC" copy $AO --connections 3 \
	"$T/img2.raw" "$H:backup.raw"
check "  and it is unchanged" cmp "$T/backup.before" "$R/backup.raw"

# ---- faults ----

# The receiver's serve and its join processes, by the path they write.
join_pids() { pgrep -f "serve --join sparsync-links-"; }
serve_pid() { # receive|send PATH: the remote serve itself, not the ssh client that started it
	local p
	for p in $(pgrep -f "serve .*--$1 .*$2"); do
		[ "$(cat /proc/$p/comm 2>/dev/null)" = ssh ] || { echo "$p"; return; }
	done
}

# A link killed in the middle of a sync of an existing copy: the copy
# fails with one line, the old copy stays as it was, nothing is left, and
# nothing hangs. The kill lands while data flows: once the receiver has
# read 8 MiB from its links (its digest file is valid, so it reads nothing
# else), it is stopped (SIGSTOP), a join process is killed, and it goes on.
big=$T/big.raw
truncate -s 256M "$big"
put_random "$big" $((4 * MiB)) 0
check "a copy to update" $TO $SP "$big" "$H:$R/k.raw"
cp "$R/k.raw" "$T/k.before"
cp "$big" "$T/big2.raw"
put_random "$T/big2.raw" $((120 * MiB)) $((100 * MiB))
rchar() { sed -n 's/^rchar: //p' "/proc/$1/io" 2>/dev/null || echo 0; }
# data_flowing receive|send PATH: the pid of that serve, once both further
# connections have joined and it has since read 8 MiB more (under valgrind
# a process reads far more than that at its start).
data_flowing() {
	local s= i base=
	for i in $(seq 1 3000); do
		s=$(serve_pid "$1" "$2")
		if [ -n "$s" ] && [ "$(join_pids | wc -l)" -ge 2 ]; then
			[ -n "$base" ] || base=$(rchar "$s")
			[ "$(rchar "$s")" -gt $((base + 8 * MiB)) ] && { echo "$s"; return; }
		fi
		sleep 0.01
	done
}
# cut_mid_copy NAME WHAT CPID SERVE-PID: once data flows, stop the remote
# serve, end one further connection (WHAT: "join" kills its serve --join,
# "session" its sshd session, as a dropped TCP connection would), go on;
# the copy in CPID must then fail with one line.
cut_mid_copy() {
	local name=$1 what=$2 cpid=$3 s=$4 j
	if [ -z "$s" ]; then fail "$name: no data reached the remote serve"; wait "$cpid"; return; fi
	kill -STOP "$s"
	j=$(join_pids | head -1)
	[ "$what" = session ] && j=$(ps -o ppid= -p "$j" | tr -d ' ')
	kill -9 "$j"
	sleep 0.3
	kill -CONT "$s"
	wait "$cpid"
	local rc=$?
	cp "$T/kill.out" "$T/.last"
	if [ $rc -ne 0 ] && [ $rc -lt 124 ]; then pass "$name: the copy fails (exit $rc)"; else
		fail "$name: exit $rc"; sed 's/^/    | /' "$T/kill.out" | head -5
	fi
}
# no_serve_left NAME-PATTERN: every remote process of the session is gone.
no_serve_left() {
	local i
	for i in $(seq 1 50); do pgrep -f "serve .*$1|serve --join" >/dev/null || break; sleep 0.1; done
	same "  no serve left running" "$(pgrep -f "serve .*$1|serve --join" | wc -l)" 0
}
kill_link_test() { # NAME HOST CLIENT-OPTS...
	local name=$1 host=$2; shift 2
	$TO "$SPARSYNC" copy "$@" --remote-path "$SPARSYNC" --connections 3 "$T/big2.raw" \
		"$host:$R/k.raw" >"$T/kill.out" 2>&1 &
	local cpid=$!
	cut_mid_copy "$name" join $cpid "$(data_flowing receive "$R/k.raw")"
	check "  the message names the connection" grep -q 'connection [0-9]' "$T/kill.out"
	check "  the old copy is as it was" cmp "$T/k.before" "$R/k.raw"
	check "  no temporary file or journal left" no_temp_files "$R"
	no_serve_left "$R/k.raw"
}
kill_link_test "a further connection killed (built-in client)" $H $SSHO
kill_link_test "a further connection killed (OpenSSH, -e)" sparsync-test -e "ssh -F $SSH_CONFIG"
# A pull whose further connection is cut in the middle: the local copy
# being updated stays as it was.
cp "$big" "$T/kp.raw"
check "a local copy to update by pulls" cmp "$big" "$T/kp.raw"
kill_pull_test() { # NAME HOST CLIENT-OPTS...
	local name=$1 host=$2; shift 2
	$TO "$SPARSYNC" copy "$@" --remote-path "$SPARSYNC" --connections 3 "$host:$T/big2.raw" \
		"$T/kp.raw" >"$T/kill.out" 2>&1 &
	local cpid=$!
	cut_mid_copy "$name" session $cpid "$(data_flowing send "$T/big2.raw")"
	check "  the local copy is as it was" cmp "$big" "$T/kp.raw"
	check "  no temporary file or journal left" no_temp_files "$T"
	no_serve_left big2.raw
}
kill_pull_test "a pull's further connection cut (built-in client)" $H $SSHO
kill_pull_test "a pull's further connection cut (OpenSSH, -e)" sparsync-test -e "ssh -F $SSH_CONFIG"

check "after both, a sync over 3 connections completes it" $TO $SP --connections 3 \
	"$T/big2.raw" "$H:$R/k.raw"
check "  identical" cmp "$T/big2.raw" "$R/k.raw"

# A full disk on the receiver: a link's write fails; the copy fails with
# that reason, nothing is left on the small filesystem.
M=$T/small
mkdir -p "$M"
if mount -t tmpfs -o size=12m tmpfs "$M" 2>/dev/null; then
	check_fails "a full disk under 3 connections" $TO $SP --no-space-check --connections 3 \
		"$img" "$H:$M/full.raw"
	check "  says the disk is full" grep -q 'No space left' "$T/.last"
	check "  nothing left behind" test -z "$(ls -A "$M")"
	umount "$M"
else
	fail "cannot mount a tmpfs for the full-disk case"
fi
same "no serve left running at the end" "$(pgrep -f "serve .*$T|serve --join" | wc -l)" 0

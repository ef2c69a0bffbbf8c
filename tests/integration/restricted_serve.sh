#!/bin/bash
# A backup host that trusts each client only with its own images (issue
# 20): a real sshd whose authorized_keys lines force `sparsync serve
# --restrict-to DIR` (plain, --append-only, --read-only, --write-only).
# Pushes, pulls and verifies inside DIR work as they would unrestricted;
# every way out of DIR (.., absolute paths, links inside DIR that point out,
# a --backing outside, a qcow2 header naming a file outside, a device node,
# another command) is refused with one line, exit 1, and nothing created
# or changed anywhere; append-only never modifies, renames over or deletes
# what exists, but takes new overlays on top of it.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
TO="timeout 120"

sshd_start || exit 0

B=$T/backups
D=$B/host1                      # the directory the keys are restricted to
mkdir -p "$D/sub" "$B/host2"
# Another host's backups, and a file of this host outside its directory.
truncate -s 4M "$B/host2/secret.raw"; put_random "$B/host2/secret.raw" 65536 0
qemu-img create -q -f qcow2 "$B/host2/base.qcow2" 4M
echo "not for clients" >"$T/outside.txt"
# Inside DIR: links that lead out, a link that stays in, a device node.
ln -s ../host2/secret.raw "$D/link_out"
ln -s "$B/host2" "$D/dir_out"
ln -s /dev/null "$D/devnull_link"
mknod "$D/null" c 1 3 || fail "mknod of a character device in the test directory"

# One key per rule, each forced to its serve.
key() { # NAME FORCED-OPTIONS
	ssh-keygen -q -t ed25519 -N '' -C "sparsync-test-$1" -f "$SSHD_DIR/id_$1" || return 1
	printf 'command="%s serve --restrict-to %s%s",restrict %s\n' "$SPARSYNC" "$D" "$2" \
		"$(cat "$SSHD_DIR/id_$1.pub")" >>"$SSHD_DIR/authorized_keys"
}
key plain "" && key append " --append-only" && key ro " --read-only" && key wo " --write-only" ||
	{ fail "cannot make the test keys"; exit 0; }
opts() { echo "-p $SSHD_PORT -i $SSHD_DIR/id_$1 --known-hosts $SSH_KNOWN_HOSTS"; }
H=127.0.0.1

# Every file under $T with its size and mtime (and directories by name),
# except the sshd's log and the test's bookkeeping and downloads.
snapshot() {
	(cd "$T" && find . \( -name .out -o -name .said -o -name .last -o -name 'snap.*' -o -name sshd.log -o \
		-name 'got*' \) -prune -o \( -type d -printf '%p/\n' \) -o -printf '%p %s %T@\n' | sort)
}
# refused NAME RULE CMD...: fails with exit 1 (WANT_RC: verify's trouble is
# 2, a usage error 2) and one line naming RULE, and nothing anywhere under
# $T changed.
refused() {
	local name=$1 rule=$2; shift 2
	snapshot >"$T/snap.before"
	"$@" >"$T/.out" 2>&1; local rc=$?
	cp "$T/.out" "$T/.last"
	if [ $rc -eq "${WANT_RC:-1}" ]; then pass "$name: refused (exit $rc)"; else
		fail "$name: exit $rc, want ${WANT_RC:-1}"; sed 's/^/    | /' "$T/.out" | head -5
	fi
	# (valgrind's own notes, "--PID-- ...", are not sparsync's output: under
	# valgrind, which lacks openat2, the serve walks paths by hand.)
	grep -v '^--[0-9]*-- ' "$T/.out" >"$T/.said"
	if [ "$(wc -l <"$T/.said")" = 1 ] && grep -q -- "$rule" "$T/.said"; then pass "$name: one line naming $rule"; else
		fail "$name: want one line naming '$rule', got:"; sed 's/^/    | /' "$T/.out" | head -5
	fi
	snapshot >"$T/snap.after"
	if cmp -s "$T/snap.before" "$T/snap.after"; then pass "$name: nothing created or changed"; else
		fail "$name: files changed:"; diff "$T/snap.before" "$T/snap.after" | sed 's/^/    | /' | head -5
	fi
}

# Sources: a raw image and the next day's version of it.
truncate -s 16M "$T/day1.raw"
put_random "$T/day1.raw" $((2 * MiB)) 0
put_random "$T/day1.raw" 65536 $((9 * MiB))
cp --sparse=always "$T/day1.raw" "$T/day2.raw"
put_random "$T/day2.raw" 65536 $((5 * MiB))
put_random "$T/day2.raw" 4096 $((12 * MiB))

# ---- restricted to DIR: everything inside works as usual ----
check "push a relative path" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:vm.qcow2"
check "it is written inside DIR" qemu-img compare -q "$D/vm.qcow2" "$T/day1.raw"
check "push an absolute path (from DIR)" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:/sub/abs.raw"
check "it is DIR/sub/abs.raw" cmp "$D/sub/abs.raw" "$T/day1.raw"
check "push to ~/ (DIR)" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:~/tilde.raw"
check "it is DIR/tilde.raw" cmp "$D/tilde.raw" "$T/day1.raw"
check "push to HOST: (DIR, the source's name)" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:"
check "it is DIR/day1.raw" cmp "$D/day1.raw" "$T/day1.raw"
check "push into a directory" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:sub/"
check "it is DIR/sub/day1.raw" cmp "$D/sub/day1.raw" "$T/day1.raw"
check "sync an existing image in place" $TO "$SPARSYNC" copy --json $(opts plain) "$T/day2.raw" "$H:vm.qcow2"
check "  only the change was sent" test "$(json_field bytes_sent <"$T/.last")" -lt $((1 * MiB))
check "  it holds day 2" qemu-img compare -q "$D/vm.qcow2" "$T/day2.raw"
check "pull" $TO "$SPARSYNC" copy $(opts plain) "$H:vm.qcow2" "$T/got.raw"
check "  the pulled image is day 2" cmp "$T/got.raw" "$T/day2.raw"
check "verify" $TO "$SPARSYNC" verify $(opts plain) "$T/day2.raw" "$H:/vm.qcow2"
ln -s vm.qcow2 "$D/current.qcow2"
check "pull through a link that stays inside DIR" $TO "$SPARSYNC" copy $(opts plain) "$H:current.qcow2" "$T/got-link.raw"
check "  the link's target" cmp "$T/got-link.raw" "$T/day2.raw"
check "push through a link that stays inside DIR" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:current.qcow2"
check "  writes its target, the link stays" sh -c "test -L '$D/current.qcow2' && qemu-img compare -q '$D/vm.qcow2' '$T/day1.raw'"
check "overlay with a --backing inside DIR" $TO "$SPARSYNC" copy $(opts plain) "$T/day2.raw" "$H:sub/ov.qcow2" --backing ../vm.qcow2
check "  restores day 2 (qemu-img compare on the backup host)" qemu-img compare -q "$D/sub/ov.qcow2" "$T/day2.raw"

# ---- every way out is refused ----
OUT="leads outside the directory"
refused "push to ../" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:../host2/new.raw"
refused "push to sub/../../" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:sub/../../outside.raw"
refused "push over another host's image via ../" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:/../host2/secret.raw"
refused "pull ../" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$H:../host2/secret.raw" "$T/got-x.raw"
refused "pull an absolute path outside DIR's view" "does not exist" $TO "$SPARSYNC" copy $(opts plain) "$H:$T/outside.txt" "$T/got-x.raw"
WANT_RC=2 refused "verify ../" "$OUT" $TO "$SPARSYNC" verify $(opts plain) "$T/day1.raw" "$H:../host2/secret.raw"
refused "push through a link inside DIR that points out" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:link_out"
refused "pull through a link inside DIR that points out" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$H:link_out" "$T/got-x.raw"
refused "push into a directory link that points out" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:dir_out/new.raw"
refused "push into a directory link (source's name)" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:dir_out/"
refused "--backing outside DIR" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day2.raw" "$H:ov2.qcow2" --backing ../host2/base.qcow2
refused "--backing through a link that points out" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day2.raw" "$H:ov2.qcow2" --backing link_out
refused "--digest-file outside DIR" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:dg.raw" --digest-file ../host2/dg
refused "push to a device node" "device node" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:null"
refused "pull a device node" "device node" $TO "$SPARSYNC" copy $(opts plain) "$H:null" "$T/got-x.raw"
refused "push through a link to /dev/null" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:devnull_link"
refused "another user's home" "another user's home" $TO "$SPARSYNC" copy $(opts plain) "$T/day1.raw" "$H:~root/x.raw"
# A file the client wrote as raw bytes that look like a qcow2 whose header
# names another host's image: read back, its backing chain stays inside.
qemu-img create -q -f qcow2 -F raw -b "$B/host2/secret.raw" "$T/evil.qcow2"
check "push a qcow2 header as raw bytes" $TO "$SPARSYNC" copy $(opts plain) -f raw -O raw "$T/evil.qcow2" "$H:evil.img"
refused "pull it: its backing file outside DIR is refused" "$OUT" $TO "$SPARSYNC" copy $(opts plain) "$H:evil.img" "$T/got-x.raw"
check "  -f raw reads its bytes" $TO "$SPARSYNC" copy $(opts plain) -f raw "$H:evil.img" "$T/got-evil.raw"
# Not sparsync, or more than one sparsync command: nothing runs.
SSHC="ssh -F $SSH_CONFIG -i $SSHD_DIR/id_plain sparsync-test"
refused "ssh HOST id" "runs only sparsync serve" $TO $SSHC id
refused "ssh HOST (a shell)" "no command was asked for" $TO $SSHC </dev/null
refused "serve, then a second command" "needs a shell" $TO $SSHC "sparsync serve --receive x.raw; touch $D/pwned"
refused "serve with a command substitution" "needs a shell" $TO $SSHC "sparsync serve --receive \$(touch $D/pwned)"
WANT_RC=2 refused "the client widening its own restriction" "unrecognized option" \
	$TO $SSHC "sparsync serve --restrict-to / --receive $T/pwned.raw"
check "nothing named pwned anywhere" test -z "$(find "$T" -name 'pwned*')"

# ---- append-only ----
rm -f "$D"/.vm.qcow2.sparsync* "$D/current.qcow2"
check "append-only: a new image" $TO "$SPARSYNC" copy $(opts append) "$T/day1.raw" "$H:mon.qcow2"
check "  written" qemu-img compare -q "$D/mon.qcow2" "$T/day1.raw"
APP="refused by serve --append-only"
refused "append-only: a push onto an existing image" "$APP" $TO "$SPARSYNC" copy $(opts append) "$T/day2.raw" "$H:mon.qcow2"
refused "append-only: an in-place sync" "$APP" $TO "$SPARSYNC" copy --inplace $(opts append) "$T/day2.raw" "$H:mon.qcow2"
refused "append-only: --whole over it" "$APP" $TO "$SPARSYNC" copy --whole $(opts append) "$T/day2.raw" "$H:mon.qcow2"
truncate -s 8M "$T/small.raw"
refused "append-only: a shrink (a smaller image over it)" "$APP" $TO "$SPARSYNC" copy $(opts append) "$T/small.raw" "$H:mon.qcow2"
refused "append-only: a dry run says so too" "$APP" $TO "$SPARSYNC" copy -n $(opts append) "$T/day2.raw" "$H:mon.qcow2"
refused "append-only: over its digest file" "$APP" $TO "$SPARSYNC" copy $(opts append) "$T/day2.raw" "$H:.mon.qcow2.sparsync"
refused "append-only: pull --track (writes a bitmap)" "$APP" $TO "$SPARSYNC" copy --track $(opts append) "$H:mon.qcow2" "$T/got-x.raw"
check "append-only: a new overlay on top of it" $TO "$SPARSYNC" copy --json $(opts append) "$T/day2.raw" "$H:tue.qcow2" --backing mon.qcow2
check "  only the change was sent" test "$(json_field bytes_sent <"$T/.last")" -lt $((1 * MiB))
check "  the overlay restores day 2 (on the backup host)" qemu-img compare -q "$D/tue.qcow2" "$T/day2.raw"
check "  names its backing file relative to itself" sh -c "qemu-img info '$D/tue.qcow2' | grep -q '^backing file: mon.qcow2'"
check "  and restores day 2 through a pull" $TO "$SPARSYNC" copy $(opts append) "$H:tue.qcow2" "$T/got-tue.raw"
check "  (the pulled bytes)" cmp "$T/got-tue.raw" "$T/day2.raw"
check "  mon.qcow2 still day 1" qemu-img compare -q "$D/mon.qcow2" "$T/day1.raw"
check "append-only: an overlay naming its backing absolutely (from DIR)" \
	$TO "$SPARSYNC" copy $(opts append) "$T/day2.raw" "$H:wed.qcow2" --backing /tue.qcow2
check "  restores day 2" qemu-img compare -q "$D/wed.qcow2" "$T/day2.raw"
# Pruning on the backup host as sparsync(1) says: tue becomes a full image,
# mon goes; the chain still restores.
check "prune: qemu-img rebase -b '' makes tue whole" qemu-img rebase -b '' -f qcow2 "$D/tue.qcow2"
rm -f "$D/mon.qcow2" "$D/.mon.qcow2.sparsync"
check "  wed (on tue) still pulls as day 2" $TO "$SPARSYNC" copy $(opts append) "$H:wed.qcow2" "$T/got-wed.raw"
check "  (the bytes)" cmp "$T/got-wed.raw" "$T/day2.raw"
# A digest file left beside a name that is new: never replaced.
echo "old digest" >"$D/.thu.raw.sparsync"
check "append-only: a new image beside an old digest file" $TO "$SPARSYNC" copy $(opts append) "$T/day1.raw" "$H:thu.raw"
check "  the old digest file is as it was" grep -qx "old digest" "$D/.thu.raw.sparsync"
# A killed run's temporary is not swept under append-only.
echo "left by a killed run" >"$D/.fri.raw.sparsync-AbCdEf"
check "append-only: a new image beside a killed run's temporary" $TO "$SPARSYNC" copy $(opts append) "$T/day1.raw" "$H:fri.raw"
check "  the temporary is still there" test -f "$D/.fri.raw.sparsync-AbCdEf"
check "append-only: pulls work" $TO "$SPARSYNC" copy $(opts append) "$H:thu.raw" "$T/got-thu.raw"
check "  (the bytes)" cmp "$T/got-thu.raw" "$T/day1.raw"

# ---- read-only and write-only ----
refused "read-only: a push" "refused by serve --read-only" $TO "$SPARSYNC" copy $(opts ro) "$T/day1.raw" "$H:new.raw"
refused "read-only: pull --track" "refused by serve --read-only" $TO "$SPARSYNC" copy --track $(opts ro) "$H:tue.qcow2" "$T/got-x.raw"
check "read-only: a pull" $TO "$SPARSYNC" copy $(opts ro) "$H:tue.qcow2" "$T/got-ro.raw"
check "  (the bytes)" cmp "$T/got-ro.raw" "$T/day2.raw"
check "read-only: verify" $TO "$SPARSYNC" verify $(opts ro) "$T/day2.raw" "$H:tue.qcow2"
refused "write-only: a pull" "refused by serve --write-only" $TO "$SPARSYNC" copy $(opts wo) "$H:tue.qcow2" "$T/got-x.raw"
WANT_RC=2 refused "write-only: verify" "refused by serve --write-only" $TO "$SPARSYNC" verify $(opts wo) "$T/day1.raw" "$H:tue.qcow2"
check "write-only: a push" $TO "$SPARSYNC" copy $(opts wo) "$T/day1.raw" "$H:wo.raw"
check "  written" cmp "$D/wo.raw" "$T/day1.raw"

# ---- the forced command's own line ----
check_fails "serve --read-only alone is a usage error" "$SPARSYNC" serve --read-only
check "  (exit 2)" sh -c "'$SPARSYNC' serve --read-only; test \$? = 2"
check_fails "--restrict-to to a file that is not a directory" \
	env SSH_ORIGINAL_COMMAND="sparsync serve --send x" "$SPARSYNC" serve --restrict-to "$T/day1.raw"
check "  says so" grep -q "not a directory" "$T/.last"
check "no stray files in DIR" test -z "$(ls -A "$D" | grep 'sparsync-' | grep -v AbCdEf)"

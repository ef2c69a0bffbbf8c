#!/bin/bash
# An update is atomic from the user's point of view (issue 16): stopped at
# every write it makes (SPARSYNC_FAULT_KILL_AT in the sparsync-faults test
# build: SIGKILL just before the Nth write to the destination), a sync of
# a raw or qcow2 destination, local or as the remote serve, leaves the old
# image (after the automatic or explicit recovery) or the new one, never a
# mix; qcow2 results stay `qemu-img check` clean; the next run converges.
# Also: a full disk, --inplace, and what `recover` says.
. "$(dirname "$0")/../lib.sh"
FAULTS=$TOP/sparsync-faults
TO="timeout 120"
[ -x "$FAULTS" ] || { fail "sparsync-faults is not built (make sparsync-faults)"; exit 0; }

# old and new versions of an image: a few changed, zeroed and grown blocks.
truncate -s $((24 * MiB)) "$T/old.raw"
put_random "$T/old.raw" $((2 * MiB)) 0
put_random "$T/old.raw" $((1 * MiB)) $((10 * MiB))
cp "$T/old.raw" "$T/new.raw"
put_random "$T/new.raw" 8192 $((64 * 1024))
put_random "$T/new.raw" 4096 $((10 * MiB + 4096))
fallocate -p -o $((1 * MiB)) -l $((512 * 1024)) "$T/new.raw"
truncate -s $((26 * MiB)) "$T/new.raw"
put_random "$T/new.raw" 4096 $((25 * MiB))

same_as() { # IMG FMT REF: IMG (of FMT) reads exactly as the raw REF
	if [ "$2" = qcow2 ]; then
		qemu-img check -q "$1" && qemu-img compare -q -f qcow2 -F raw "$1" "$3" &&
			[ "$(qemu-img info --output=json "$1" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')" = "$(stat -c %s "$3")" ]
	else cmp -s "$1" "$3"; fi
}

# interrupt NAME FMT RUN...: for k = 1, 2, ...: put the old image at
# $T/d.FMT, run RUN with the kill at write k; when killed, the image must
# recover to the old one; when the run got through, it must be the new one.
interrupt() {
	local name=$1 fmt=$2 k rc points=0 bad=0; shift 2
	# Under the sanitizers and valgrind every third point (each run is slow).
	local step=${SANITIZER:+3}
	for k in $(seq 1 "${step:-1}" 60); do
		rm -f "$T/d.$fmt" "$T"/.d.*
		"$SPARSYNC" copy -q -O "$fmt" "$T/old.raw" "$T/d.$fmt"
		SPARSYNC_FAULT_KILL_AT=$k $TO "$@" >"$T/run.out" 2>&1; rc=$?
		if [ $rc = 0 ]; then
			same_as "$T/d.$fmt" "$fmt" "$T/new.raw" || { bad=1; fail "$name: completed run is not the new image"; }
			[ -e "$T/.d.$fmt.sparsync-undo" ] && { bad=1; fail "$name: journal left after success"; }
			break
		fi
		points=$((points + 1))
		if [ ! -e "$T/.d.$fmt.sparsync-undo" ] && ! same_as "$T/d.$fmt" "$fmt" "$T/old.raw"; then
			bad=1; fail "$name: killed at write $k with no journal and not the old image"; continue
		fi
		# The interrupted image is marked: reading it is refused until recovered.
		if [ -e "$T/.d.$fmt.sparsync-undo" ] && "$SPARSYNC" map "$T/d.$fmt" >/dev/null 2>&1; then
			bad=1; fail "$name: killed at write $k: the half-updated image was readable"
		fi
		"$SPARSYNC" recover -q "$T/d.$fmt" || { bad=1; fail "$name: recover failed after write $k"; }
		same_as "$T/d.$fmt" "$fmt" "$T/old.raw" || { bad=1; fail "$name: killed at write $k, recovered image is not the old one"; }
		# and the next run converges
		if [ $k = 1 ] || [ $((k % 8)) = 0 ]; then
			SPARSYNC_FAULT_KILL_AT=$k $TO "$@" >/dev/null 2>&1
			"$SPARSYNC" copy -q "$T/new.raw" "$T/d.$fmt" && same_as "$T/d.$fmt" "$fmt" "$T/new.raw" ||
				{ bad=1; fail "$name: the run after a kill at write $k did not converge"; }
		fi
	done
	local want=3; [ -n "${SANITIZER:-}" ] && want=1
	[ $bad = 0 ] && [ $points -ge $want ] && pass "$name: old or new image at each of $points interruption points, then the new one"
	[ $points -ge $want ] || fail "$name: only $points interruption points (expected several)"
}

interrupt "local raw sync" raw "$FAULTS" copy -q "$T/new.raw" "$T/d.raw"
interrupt "local qcow2 sync (data, tables, header)" qcow2 "$FAULTS" copy -q "$T/new.raw" "$T/d.qcow2"

# The remote serve killed at each write (a push through -e, the stand-in
# ssh runs serve here with the environment).
cat >"$T/fake-ssh" <<'EOS'
#!/bin/sh
while [ $# -gt 1 ]; do shift; done
exec sh -c "$1"
EOS
chmod +x "$T/fake-ssh"
interrupt "push, remote serve killed (raw)" raw "$SPARSYNC" copy -q -e "$T/fake-ssh" \
	--remote-path "$FAULTS" "$T/new.raw" "host:$T/d.raw"
interrupt "push, remote serve killed (qcow2)" qcow2 "$SPARSYNC" copy -q -e "$T/fake-ssh" \
	--remote-path "$FAULTS" "$T/new.raw" "host:$T/d.qcow2"

# SIGINT (Ctrl-C) of a local sync at a write: the run is gone, its journal
# marks the image, recovery gives the old one.
rm -f "$T/d.raw"; "$SPARSYNC" copy -q "$T/old.raw" "$T/d.raw"
SPARSYNC_FAULT_SIGNAL=2 SPARSYNC_FAULT_KILL_AT=2 "$FAULTS" copy -q "$T/new.raw" "$T/d.raw"
check "SIGINT: the sync exits 130" test $? = 130
check "SIGINT: the journal marks the image" test -e "$T/.d.raw.sparsync-undo"
check "SIGINT: recover" "$SPARSYNC" recover -q "$T/d.raw"
check "SIGINT: the old image is back" cmp "$T/old.raw" "$T/d.raw"

# The link cut in the middle of a push: the relay passes the first N bytes
# of the stream to the remote serve and then closes it. The serve, alive,
# rolls back at once: old image, no journal.
cat >"$T/cut-ssh" <<'EOS'
#!/bin/bash
# Like ssh, ends when the remote command does (head may still be reading).
while [ $# -gt 1 ]; do shift; done
sh -c "$1" < <(head -c "$CUT_AFTER")
EOS
chmod +x "$T/cut-ssh"
# How many bytes the sync push sends, so the cuts fall inside it.
rm -f "$T/d.raw"; "$SPARSYNC" copy -q "$T/old.raw" "$T/d.raw"
"$SPARSYNC" copy --json -e "$T/fake-ssh" --remote-path "$SPARSYNC" --compress none \
	"$T/new.raw" "host:$T/d.raw" >"$T/full.json"
stream_size=$(json_field bytes_sent <"$T/full.json")
for frac in 4 2 1; do
	for fmt in raw qcow2; do
		rm -f "$T/d.$fmt"; "$SPARSYNC" copy -q -O "$fmt" "$T/old.raw" "$T/d.$fmt"
		check_fails "link cut after $frac/5 of the stream: the push fails" \
			env CUT_AFTER=$((stream_size * frac / 5)) $TO "$SPARSYNC" copy -q -e "$T/cut-ssh" \
			--remote-path "$SPARSYNC" --compress none "$T/new.raw" "host:$T/d.$fmt"
		said "link cut after $frac/5: the serve saw the stream end early" 'truncated stream' 
		check "link cut after $frac/5 ($fmt): the old image, at once" same_as "$T/d.$fmt" "$fmt" "$T/old.raw"
		check "link cut after $frac/5 ($fmt): no journal left" test ! -e "$T/.d.$fmt.sparsync-undo"
	done
done

# The next copy recovers by itself, and says so.
rm -f "$T/d.raw"; "$SPARSYNC" copy -q "$T/old.raw" "$T/d.raw"
SPARSYNC_FAULT_KILL_AT=3 "$FAULTS" copy -q "$T/new.raw" "$T/d.raw"
check "journal left by kill -9" test -e "$T/.d.raw.sparsync-undo"
check_fails "verify refuses a half-updated image" "$SPARSYNC" verify "$T/new.raw" "$T/d.raw"
said "verify says how to recover" "sparsync recover"
check "the next copy recovers, then syncs" "$SPARSYNC" copy --json "$T/new.raw" "$T/d.raw"
said "it says it rolled back" "rolled back to the previous image"
check "and the result is the new image" cmp "$T/new.raw" "$T/d.raw"
check "recover with nothing to do" "$SPARSYNC" recover "$T/d.raw"
said "recover says so" "nothing to recover"

# --json says which path was taken; --inplace leaves no journal.
"$SPARSYNC" copy -q "$T/old.raw" "$T/d.raw"
check "safe sync reports the journal path" sh -c "'$SPARSYNC' copy --json '$T/new.raw' '$T/d.raw' | grep -q '\"destination\":\"journal\"'"
"$SPARSYNC" copy -q "$T/old.raw" "$T/d.raw"
check "--inplace sync" "$SPARSYNC" copy --inplace --json "$T/new.raw" "$T/d.raw"
said "--inplace is reported" '"destination":"inplace"'
check "--inplace result" cmp "$T/new.raw" "$T/d.raw"
SPARSYNC_FAULT_KILL_AT=2 "$FAULTS" copy -q --inplace "$T/old.raw" "$T/d.raw"
check "--inplace writes no journal" test ! -e "$T/.d.raw.sparsync-undo"

# A full disk while journaling: the sync fails, the old image stays, no
# journal is left behind.
if mkdir -p "$T/tmpfs" && mount -t tmpfs -o size=40m tmpfs "$T/tmpfs" 2>/dev/null; then
	trap 'umount "$T/tmpfs" 2>/dev/null; rm -rf "$T"' EXIT
	cp "$T/old.raw" "$T/tmpfs/d.raw"
	cp --sparse=always "$T/old.raw" "$T/tmpfs/d.raw"
	head -c $(( $(df -B1 --output=avail "$T/tmpfs" | tail -1) - 8192 )) /dev/zero >"$T/tmpfs/filler" 2>/dev/null
	truncate -s $((24 * MiB)) "$T/big-new.raw"
	put_random "$T/big-new.raw" $((3 * MiB)) 0
	put_random "$T/big-new.raw" $((1 * MiB)) $((10 * MiB))
	check_fails "sync that needs more room than is free: refused up front" \
		"$SPARSYNC" copy "$T/big-new.raw" "$T/tmpfs/d.raw"
	said "refused up front: says how much is needed and free, journal included" \
		'not enough free space: the update needs up to 4\.0 MiB \(1\.0 MiB of new data, up to 3\.0 MiB for the undo journal .*\), the filesystem holding it has .* free'
	check "refused up front: the old image is intact" cmp "$T/old.raw" "$T/tmpfs/d.raw"
	check_fails "sync onto a full filesystem fails" \
		"$SPARSYNC" copy --no-space-check "$T/big-new.raw" "$T/tmpfs/d.raw"
	said "full disk: one clear line" 'No space left on device'
	check "full disk: the old image is intact" cmp "$T/old.raw" "$T/tmpfs/d.raw"
	check "full disk: no journal left" test ! -e "$T/tmpfs/.d.raw.sparsync-undo"
	rm -f "$T/tmpfs/filler"
	# Room for the new data but not for the journal: the safe update is
	# refused; --inplace (no journal) fits.
	head -c $(( $(df -B1 --output=avail "$T/tmpfs" | tail -1) - 2 * MiB )) /dev/zero >"$T/tmpfs/filler" 2>/dev/null
	check_fails "room for the data but not the journal: refused up front" \
		"$SPARSYNC" copy "$T/big-new.raw" "$T/tmpfs/d.raw"
	said "the refusal counts the journal" 'up to 3\.0 MiB for the undo journal'
	check "refused for the journal: the old image is intact" cmp "$T/old.raw" "$T/tmpfs/d.raw"
	check "refused for the journal: no journal left" test ! -e "$T/tmpfs/.d.raw.sparsync-undo"
	check "--inplace needs no journal and fits" "$SPARSYNC" copy --inplace "$T/big-new.raw" "$T/tmpfs/d.raw"
	check "--inplace gives the new image" cmp "$T/big-new.raw" "$T/tmpfs/d.raw"
	cp --sparse=always "$T/old.raw" "$T/tmpfs/d.raw"
	rm -f "$T/tmpfs/filler"
	check "after freeing space the sync succeeds" "$SPARSYNC" copy "$T/big-new.raw" "$T/tmpfs/d.raw"
	check "and gives the new image" cmp "$T/big-new.raw" "$T/tmpfs/d.raw"
	umount "$T/tmpfs"
else
	fail "cannot mount a tmpfs for the full-disk test (needs root)"
fi

#!/bin/bash
# What must never be lost (issue 16): shrink keeps internal snapshots and
# persistent bitmaps (by refusing) and follows symlinks; temporaries left
# by a killed run are removed by the next run on the same destination,
# never while their run lives.
. "$(dirname "$0")/../lib.sh"

truncate -s $((16 * MiB)) "$T/base.raw"
put_random "$T/base.raw" $MiB 0
dd if=/dev/zero of="$T/base.raw" bs=1M count=4 seek=4 conv=notrunc status=none

# --- shrink and qcow2 internal snapshots / persistent bitmaps ---
"$SPARSYNC" copy -q "$T/base.raw" "$T/snap.qcow2"
qemu-img snapshot -c before "$T/snap.qcow2"
cp "$T/snap.qcow2" "$T/snap.before"
check_fails "shrink refuses a qcow2 with internal snapshots" "$SPARSYNC" shrink "$T/snap.qcow2"
said "shrink says why (snapshots)" 'internal snapshots'
check "the snapshot is still there" sh -c "qemu-img snapshot -l '$T/snap.qcow2' | grep -q before"
check "the refused image is unchanged" cmp "$T/snap.qcow2" "$T/snap.before"

"$SPARSYNC" copy -q "$T/base.raw" "$T/bm.qcow2"
qemu-img bitmap --add "$T/bm.qcow2" b0
check_fails "shrink refuses a qcow2 with a persistent bitmap" "$SPARSYNC" shrink "$T/bm.qcow2"
said "shrink says why (bitmaps)" 'persistent dirty bitmaps'
check "the bitmap is still there" sh -c "qemu-img info '$T/bm.qcow2' | grep -q 'name: b0'"
check "qemu-img check still clean" qemu-img check -q "$T/bm.qcow2"

# --- shrink through a symlink rewrites the file it points to ---
mkdir -p "$T/real" "$T/links"
qemu-img convert -f raw -O qcow2 "$T/base.raw" "$T/real/img.qcow2"
ln -s ../real/img.qcow2 "$T/links/img.qcow2"
check "shrink through a symlink" "$SPARSYNC" shrink "$T/links/img.qcow2"
check "the link is still a link" test -L "$T/links/img.qcow2"
check "the real image was shrunk in place of the old one" \
	sh -c "qemu-img check -q '$T/real/img.qcow2' && qemu-img compare -q -f qcow2 -F raw '$T/real/img.qcow2' '$T/base.raw'"
check "no temporary left in either directory" sh -c "no_temp(){ ! ls -A \"\$1\" | grep -q sparsync-; }; no_temp '$T/real' && no_temp '$T/links'"
truncate -s $((16 * MiB)) "$T/real/r.raw"; put_random "$T/real/r.raw" $MiB 0
ln -s ../real/r.raw "$T/links/r.raw"
check "raw shrink through a symlink" "$SPARSYNC" shrink "$T/links/r.raw"
check "the raw link is still a link" test -L "$T/links/r.raw"

# --- stale temporaries ---
"$SPARSYNC" copy -q "$T/base.raw" - >"$T/s.sps"
# A receiver that stalls after the IMAGE record holds its temporary.
"$SPARSYNC" copy -q - "$T/d.raw" < <(head -c 200 "$T/s.sps"; sleep 30) &
stalled=$!
if wait_for_temp "$T" d.raw; then
	live=$(ls -A "$T" | grep '^\.d\.raw\.sparsync-')
	check "a second run on the same destination" "$SPARSYNC" copy -q "$T/base.raw" "$T/d.raw"
	check "it did not touch the live run's temporary" test -e "$T/$live"
	kill -9 $stalled; wait $stalled 2>/dev/null
	check "the killed run left its temporary" test -e "$T/$live"
	check "the next run removes it" "$SPARSYNC" copy -q "$T/base.raw" "$T/d.raw"
	said "and says so" 'removed a temporary file left by an interrupted run'
	check "no temporary is left" no_temp_files "$T"
	check "the destination is right" cmp "$T/base.raw" "$T/d.raw"
else
	fail "the stalled receiver never made its temporary"
	kill -9 $stalled 2>/dev/null
fi
# A shrink killed mid-rewrite leaves one; the next shrink removes it.
"$SPARSYNC" copy -q "$T/base.raw" "$T/sh.qcow2"
SPARSYNC_FAULT_KILL_AT=2 "$TOP/sparsync-faults" shrink "$T/sh.qcow2" 2>/dev/null
check "a killed shrink left a temporary" sh -c "ls -A '$T' | grep -q '^\.sh\.qcow2\.sparsync-'"
check "the killed shrink left the image intact" \
	sh -c "qemu-img check -q '$T/sh.qcow2' && qemu-img compare -q -f qcow2 -F raw '$T/sh.qcow2' '$T/base.raw'"
check "the next shrink succeeds" "$SPARSYNC" shrink "$T/sh.qcow2"
check "and removes the stale temporary" sh -c "! ls -A '$T' | grep -q '^\.sh\.qcow2\.sparsync-'"
# A kill -9 mid-copy (the fault build) leaves one; the next run removes it.
SPARSYNC_FAULT_KILL_AT=1 "$TOP/sparsync-faults" copy -q "$T/base.raw" "$T/e.raw" 2>/dev/null
check "kill -9 left a temporary" sh -c "ls -A '$T' | grep -q '^\.e\.raw\.sparsync-'"
check "the next run on it succeeds" "$SPARSYNC" copy -q "$T/base.raw" "$T/e.raw"
check "and no temporary is left" no_temp_files "$T"

# --- free space: a copy that cannot fit is refused before anything is written ---
if mkdir -p "$T/small" && mount -t tmpfs -o size=24m tmpfs "$T/small" 2>/dev/null; then
	trap 'umount "$T/small" 2>/dev/null; rm -rf "$T"' EXIT
	truncate -s $((256 * MiB)) "$T/big.raw"
	put_random "$T/big.raw" $((32 * MiB)) $((100 * MiB))
	check_fails "a copy larger than the free space is refused" "$SPARSYNC" copy "$T/big.raw" "$T/small/big.raw"
	said "it says how much is needed and how much is free" \
		'small/big\.raw: not enough free space: the copy needs about 3[23]\.[0-9] MiB, the filesystem holding it has 2[34]\.[0-9] MiB free'
	check "nothing was created" test -z "$(ls -A "$T/small")"
	check_fails "as qcow2 too" "$SPARSYNC" copy "$T/big.raw" "$T/small/big.qcow2"
	check "nothing was created (qcow2)" test -z "$(ls -A "$T/small")"
	# The receiver checks too: it learns the source's data size from IMAGE.
	cat >"$T/fake-ssh" <<'EOS'
#!/bin/sh
while [ $# -gt 1 ]; do shift; done
exec sh -c "$1"
EOS
	chmod +x "$T/fake-ssh"
	check_fails "a push larger than the remote free space is refused" \
		"$SPARSYNC" copy -e "$T/fake-ssh" --remote-path "$SPARSYNC" "$T/big.raw" "host:$T/small/big.raw"
	said "the remote refusal names the sizes" 'not enough free space: the copy needs about 3[23]\.[0-9] MiB'
	check "nothing was created by the push" test -z "$(ls -A "$T/small")"
	check_fails "a pull larger than the local free space is refused" \
		"$SPARSYNC" copy -e "$T/fake-ssh" --remote-path "$SPARSYNC" "host:$T/big.raw" "$T/small/big.raw"
	said "the pull refusal names the sizes" 'not enough free space'
	check "nothing was created by the pull" test -z "$(ls -A "$T/small")"
	# --no-space-check tries anyway, and a full disk is still a clean failure.
	check_fails "--no-space-check tries, and runs out of room" \
		"$SPARSYNC" copy --no-space-check "$T/big.raw" "$T/small/big.raw"
	said "running out of room: one clear line" 'No space left on device'
	check "and leaves nothing behind" test -z "$(ls -A "$T/small")"
	# What fits is copied: the check counts data, not the virtual size.
	truncate -s $((1024 * MiB)) "$T/sparse.raw"
	put_random "$T/sparse.raw" $((8 * MiB)) $((500 * MiB))
	check "a 1 GiB image with 8 MiB of data fits in 24 MiB" "$SPARSYNC" copy "$T/sparse.raw" "$T/small/s.raw"
	check "and is right" cmp "$T/sparse.raw" "$T/small/s.raw"
	check "pushed too" "$SPARSYNC" copy -e "$T/fake-ssh" --remote-path "$SPARSYNC" \
		"$T/sparse.raw" "host:$T/small/s2.qcow2"
	check "and is right (qcow2)" qemu-img compare -q -f raw -F qcow2 "$T/sparse.raw" "$T/small/s2.qcow2"
	umount "$T/small"
else
	fail "cannot mount a tmpfs for the free-space tests (needs root)"
fi

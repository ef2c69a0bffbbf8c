#!/bin/bash
# Block devices as source and destination (issue 15), on real loop devices,
# and the data-safety regression: a copy onto a device node, a link to one,
# /dev/null or a FIFO must never replace the node or leave a 0-byte image.
# Every loop device attached here is detached on exit, also on failure, and
# the test checks that nothing outside $T changed (device nodes, loops).
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
TO="timeout 300"

if [ "$(id -u)" != 0 ] || ! command -v losetup >/dev/null; then
	fail "block device tests need root and losetup (CI runs as root)"
	exit 0
fi

LOOPS=()
detach_all() {
	local l
	for l in "${LOOPS[@]}"; do
		umount "$l" 2>/dev/null
		losetup -d "$l" 2>/dev/null
	done
	LOOPS=()
}
trap 'detach_all; sshd_stop; rm -rf "$T"' EXIT

# attach VAR FILE: a loop device over FILE in $VAR, recorded for detaching
# (not in a $(...) subshell, which would lose the record).
attach() {
	local l
	l=$(losetup -f --show "$2") || return 1
	LOOPS+=("$l")
	printf -v "$1" '%s' "$l"
}

# What outside $T must be unchanged afterwards: /dev/null and every loop
# device that existed before (kind and device numbers), and which loop
# devices are attached to what.
outside_state() {
	stat -c '%n %F %t:%T' /dev/null /dev/zero /dev/loop-control
	losetup -a -n -O NAME,BACK-FILE 2>/dev/null | grep -v "$T" | sort
}
before=$(outside_state)

is_block() { test -b "$1"; }

# --- images ---
src=$T/src.raw
truncate -s $((48 * MiB)) "$src"
put_random "$src" $((3 * MiB)) $((5 * MiB))
put_random "$src" $((256 * 1024)) $((30 * MiB))
printf 'tail' | dd of="$src" bs=1 seek=$((48 * MiB - 4)) conv=notrunc status=none

# A device pre-filled with random bytes: nothing may be assumed to be zero.
head -c $((64 * MiB)) /dev/urandom >"$T/dev1.img"
attach D1 "$T/dev1.img" || { fail "losetup could not attach a loop device"; exit 0; }
LINK=$T/vg-lv
ln -s "$D1" "$LINK"

# --- the bug: a device destination is written in place, never replaced ---
cp "$T/dev1.img" "$T/dev1.orig"
check "copy onto a block device" $TO "$SPARSYNC" copy --json "$src" "$D1"
last_output >"$T/c1.json"
check "the old bytes under the source's zero ranges were zeroed" \
	test "$(json_field bytes_zeroed <"$T/c1.json")" -ge $((40 * MiB))
check "the device node is still a block device" is_block "$D1"
check "device holds the image (cmp over the image's size)" cmp -n $((48 * MiB)) "$src" "$D1"
check "every zero range of the source reads as zero on the device" \
	cmp -n $((48 * MiB)) "$src" "$T/dev1.img"
check "the device's tail beyond the image is left as it was" \
	cmp -i $((48 * MiB)) "$T/dev1.orig" "$T/dev1.img"
check "no file appeared in /dev" sh -c "! ls -A /dev | grep -q 'sparsync-'"

# A re-sync of an unchanged image writes nothing.
check "unchanged re-sync onto the device" $TO "$SPARSYNC" copy --json "$src" "$D1"
check "unchanged re-sync writes 0 bytes" test "$(last_output | json_field bytes_written)" = 0

# Through a symlink (/dev/vg/lv style): the device is written, the link stays.
put_random "$src" $((64 * 1024)) $((10 * MiB))
check "copy through a symlink to the device" $TO "$SPARSYNC" copy --json "$src" "$LINK"
w=$(last_output | json_field bytes_written)
check "only the changed block was written" test "$w" -gt 0 -a "$w" -le $((1 * MiB))
check "the link is still a link to the device" test -L "$LINK" -a "$(readlink "$LINK")" = "$D1"
check "device updated through the link" cmp -n $((48 * MiB)) "$src" "$D1"

# --target-is-zero: the user vouches for zeros; only data is written.
truncate -s $((64 * MiB)) "$T/dev2.img"
attach D2 "$T/dev2.img"
check "copy --target-is-zero onto a zeroed device" $TO "$SPARSYNC" copy --target-is-zero --json "$src" "$D2"
last_output >"$T/tz.json"
check "--target-is-zero writes only the data" test "$(json_field bytes_written <"$T/tz.json")" -le $((4 * MiB))
check "--target-is-zero zeroes nothing" test "$(json_field bytes_zeroed <"$T/tz.json")" = 0
check "--target-is-zero result" cmp -n $((48 * MiB)) "$src" "$D2"

# --- refusals: nothing written ---
truncate -s $((80 * MiB)) "$T/big.raw"
put_random "$T/big.raw" 4096 0
cp "$T/dev1.img" "$T/dev1.before"
check_fails "a device smaller than the source is refused" "$SPARSYNC" copy "$T/big.raw" "$D1"
said "too-small message names the sizes" 'device is too small: it holds 64.0 MiB .* the source 80.0 MiB'
check "the too-small device was not written" cmp "$T/dev1.img" "$T/dev1.before"
check_fails "-O qcow2 onto a device is refused" "$SPARSYNC" copy -O qcow2 "$src" "$D1"
check_fails "--backing onto a device is refused" "$SPARSYNC" copy --backing "$src" "$src" "$D1"
check "refusals left the device untouched" cmp "$T/dev1.img" "$T/dev1.before"

# A mounted device is refused (O_EXCL).
truncate -s $((32 * MiB)) "$T/fs.img"
attach D3 "$T/fs.img"
mkdir -p "$T/mnt"
if mkfs.ext4 -q -F "$D3" >/dev/null 2>&1 && mount "$D3" "$T/mnt"; then
	truncate -s $((8 * MiB)) "$T/small.raw"
	check_fails "a mounted device is refused" "$SPARSYNC" copy "$T/small.raw" "$D3"
	said "mounted device: clear message" 'device is in use'
	umount "$T/mnt"
	check "the refused filesystem is intact" fsck.ext4 -n "$D3"
else
	fail "could not make and mount a filesystem on $D3"
fi

# /dev/null and other character devices: refused, never replaced.
check_fails "/dev/null as destination is refused" "$SPARSYNC" copy "$src" /dev/null
said "/dev/null: one clear line" 'is a character device'
check "/dev/null is still a character device" test -c /dev/null
check_fails "/dev/zero as source is refused" "$SPARSYNC" copy /dev/zero "$T/z.raw"
said "/dev/zero: says why" 'character device, which has no size'
check_fails "/dev/urandom as source is refused" "$SPARSYNC" copy /dev/urandom "$T/z.raw"
mkfifo "$T/fifo"
(sleep 30 >"$T/fifo" &) 2>/dev/null
check_fails "a FIFO as source is refused" timeout 10 "$SPARSYNC" copy "$T/fifo" "$T/z.raw"
said "FIFO: says why" 'pipe \(FIFO\)'
check "no 0-byte image was left" test ! -e "$T/z.raw"
check_fails "a FIFO as destination is refused" timeout 10 "$SPARSYNC" copy "$src" "$T/fifo"
check "the FIFO is still a FIFO" test -p "$T/fifo"
check_fails "shrink never writes a device" "$SPARSYNC" shrink "$D1"
said "shrink: says why" 'block device'

# --- a device as the source ---
check "device -> sparse raw" $TO "$SPARSYNC" copy --json "$D1" "$T/back.raw"
last_output >"$T/back.json"
check "device copy equals the device" cmp "$D1" "$T/back.raw"
check "device copy is sparse: zero blocks became holes" \
	test "$(allocated "$T/back.raw")" -lt $((24 * MiB))
check "every byte of the device was read" test "$(json_field bytes_read <"$T/back.json")" = $((64 * MiB))
check "device -> qcow2" $TO "$SPARSYNC" copy "$D1" "$T/back.qcow2"
check "qcow2 of the device compares equal" qemu-img compare -f raw -F qcow2 "$D1" "$T/back.qcow2"
check "map on a device" "$SPARSYNC" map --json "$D1"
last_output >"$T/map.json"
check "map shows the zero ranges of a device" python3 -c '
import json,sys
m=json.load(open(sys.argv[1]))
z=sum(e["length"] for e in m if not e["data"])
sys.exit(0 if z >= 30 << 20 else 1)' "$T/map.json"
check "verify image against device (its tail reads as zeros)" "$SPARSYNC" verify "$src" "$D2"
check "verify with the device as SRC" "$SPARSYNC" verify "$D2" "$src"
check_fails "verify: a device whose tail holds data is not the image" "$SPARSYNC" verify "$src" "$D1"
put_random "$T/dev2.img" 4096 $((20 * MiB))
check_fails "verify notices a device that differs" "$SPARSYNC" verify "$src" "$D2"

# --- .sps stream into a device ---
check "stream out" sh -c "'$SPARSYNC' copy -q '$src' - >'$T/s.sps'"
check "stream into a device" sh -c "'$SPARSYNC' copy -q - '$D2' <'$T/s.sps'"
check "stream into a device: exact, zeros included" cmp -n $((48 * MiB)) "$src" "$D2"
check "stream out of a device" sh -c "'$SPARSYNC' copy -q '$D2' - >'$T/d.sps'"
check "stream of a device restores it" sh -c "'$SPARSYNC' copy -q - '$T/d2.raw' <'$T/d.sps' && cmp '$D2' '$T/d2.raw'"
check "the device stream carries its data, not its zeros" \
	test "$(stat -c %s "$T/d.sps")" -lt $((8 * MiB))

# --- over ssh: push to a remote device, pull from one ---
if sshd_start; then
	OPTS="$(sparsync_ssh_opts) --remote-path $SPARSYNC"
	head -c $((64 * MiB)) /dev/urandom >"$T/dev2.img"
	check "push to a remote block device" $TO "$SPARSYNC" copy --json $OPTS "$src" "127.0.0.1:$D2"
	check "remote device node is still a block device" is_block "$D2"
	check "remote device holds the image, zeros included" cmp -n $((48 * MiB)) "$src" "$D2"
	put_random "$src" 4096 $((40 * MiB))
	check "re-push to the remote device" $TO "$SPARSYNC" copy --json $OPTS "$src" "127.0.0.1:$D2"
	check "re-push sends only what changed" test "$(last_output | json_field bytes_written)" -le $((1 * MiB))
	check "remote device equals the new image" cmp -n $((48 * MiB)) "$src" "$D2"
	check_fails "push to a remote /dev/null is refused" $TO "$SPARSYNC" copy $OPTS "$src" "127.0.0.1:/dev/null"
	check "remote /dev/null is still a character device" test -c /dev/null
	check_fails "push of a too-large image to a remote device is refused" \
		$TO "$SPARSYNC" copy $OPTS "$T/big.raw" "127.0.0.1:$D2"
	said "remote too-small message" 'device is too small'
	check "pull from a remote device" $TO "$SPARSYNC" copy $OPTS "127.0.0.1:$D2" "$T/pulled.raw"
	check "pulled device image is exact" cmp "$D2" "$T/pulled.raw"
	check "pull into a local device" $TO "$SPARSYNC" copy $OPTS "127.0.0.1:$T/pulled.raw" "$D1"
	check "pulled into the device exactly" cmp "$D2" "$D1"
	check "remote verify of a device" $TO "$SPARSYNC" verify $OPTS "$T/pulled.raw" "127.0.0.1:$D2"
fi

check "every device node is still a block device" sh -c "test -b '$D1' && test -b '$D2' && test -b '$D3'"
detach_all
after=$(outside_state)
if [ "$before" = "$after" ]; then pass "nothing outside the test directory changed"; else
	fail "state outside the test directory changed"
	diff <(echo "$before") <(echo "$after") | sed 's/^/    | /'
fi

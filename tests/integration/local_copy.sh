#!/bin/bash
# Local raw copy, map, shrink and their error paths (issue 2), checked
# against cmp and qemu-img.
. "$(dirname "$0")/../lib.sh"

# An image with holes, random data, zero-filled data and a tail that is not
# block-aligned.
img=$T/src.raw
truncate -s $((64 * MiB + 12345)) "$img"
dd if=/dev/urandom of="$img" bs=1M count=3 seek=2 conv=notrunc status=none
dd if=/dev/zero of="$img" bs=1M count=4 seek=10 conv=notrunc status=none
dd if=/dev/urandom of="$img" bs=4096 count=1 seek=5000 conv=notrunc status=none
dd if=/dev/urandom of="$img" bs=1 count=999 seek=$((64 * MiB + 11000)) conv=notrunc status=none

check "map --json agrees with qemu-img map" \
	diff <(qemu_data_ranges -f raw "$img") <(sparsync_data_ranges "$img")
check "map human table lists data" sh -c "'$SPARSYNC' map '$img' | grep -q data"

check "copy raw" "$SPARSYNC" copy --json "$img" "$T/dst.raw"
last_output >"$T/copy.json"
check "copy is cmp-identical" cmp "$img" "$T/dst.raw"
check "copy keeps the virtual size" test "$(stat -c %s "$img")" = "$(stat -c %s "$T/dst.raw")"
check "copy allocates less than the source (zero blocks became holes)" \
	test "$(allocated "$T/dst.raw")" -lt "$(allocated "$img")"
check "qemu-img compare agrees" qemu-img compare -f raw -F raw "$img" "$T/dst.raw"
zero=$(json_field bytes_zero <"$T/copy.json")
written=$(json_field bytes_written <"$T/copy.json")
check "--json counts the 4 MiB zero block as zero, not written" \
	test "$zero" -ge $((4 * MiB)) -a "$written" -le $((4 * MiB))
check "no temporary file left" sh -c "! ls -a '$T' | grep -q sparsync-"

# Images made by other tools.
truncate -s 256M "$T/trunc.raw"
check "copy of an all-hole file" "$SPARSYNC" copy "$T/trunc.raw" "$T/trunc.out"
check "all-hole copy allocates nothing" test "$(allocated "$T/trunc.out")" -eq 0
qemu-img create -q -f raw "$T/qc.raw" 100M
check "copy of qemu-img create raw" "$SPARSYNC" copy "$T/qc.raw" "$T/qc.out"
check "qemu-img create raw copy compares" qemu-img compare -q -f raw -F raw "$T/qc.raw" "$T/qc.out"
if [ -z "${SANITIZER:-}" ]; then
	mkdir -p "$T/tree" && cp -r /usr/share/doc/bash /usr/share/doc/coreutils "$T/tree/" 2>/dev/null
	truncate -s 512M "$T/fs.raw"
	if mke2fs -q -t ext4 -d "$T/tree" -F "$T/fs.raw" >/dev/null 2>&1; then
		check "copy of an ext4 image (mke2fs -d)" "$SPARSYNC" copy "$T/fs.raw" "$T/fs.out"
		check "ext4 image copy is identical" cmp "$T/fs.raw" "$T/fs.out"
		check "ext4 image map agrees with qemu-img" \
			diff <(qemu_data_ranges -f raw "$T/fs.raw") <(sparsync_data_ranges "$T/fs.raw")
		check "ext4 image fsck-clean after copy" e2fsck -fn "$T/fs.out"
	else
		fail "mke2fs -d could not build a test filesystem"
	fi
fi

# 1 TiB with 4 MiB of data: only the data is read.
truncate -s 1T "$T/big.raw"
dd if=/dev/urandom of="$T/big.raw" bs=1M count=2 seek=300000 conv=notrunc status=none
dd if=/dev/urandom of="$T/big.raw" bs=1M count=2 seek=900000 conv=notrunc status=none
check "copy 1 TiB sparse file" timeout 20 "$SPARSYNC" copy --json "$T/big.raw" "$T/big.out"
read_bytes=$(last_output | json_field bytes_read)
check "1 TiB copy read only its data (bytes_read <= 8 MiB)" test "${read_bytes:-999999999999}" -le $((8 * MiB))
check "1 TiB copy data identical" cmp -i $((300000 * MiB)) -n $((2 * MiB)) "$T/big.raw" "$T/big.out"
check "1 TiB copy map identical" diff <(sparsync_data_ranges "$T/big.raw") <(sparsync_data_ranges "$T/big.out")
rm -f "$T/big.raw" "$T/big.out"

# Sync onto an existing copy rewrites only what changed.
cp --sparse=always "$T/dst.raw" "$T/sync.raw"
dd if=/dev/urandom of="$img" bs=4096 count=2 seek=600 conv=notrunc status=none
dd if=/dev/zero of="$img" bs=1M count=1 seek=3 conv=notrunc status=none
check "sync onto existing destination" "$SPARSYNC" copy --json "$img" "$T/sync.raw"
w=$(last_output | json_field bytes_written)
check "sync wrote only the changed 8 KiB" test "$w" -le 65536
check "synced copy identical" cmp "$img" "$T/sync.raw"
check "zeroed MiB became a hole at the destination" range_is_hole "$T/sync.raw" $((3 * MiB)) $MiB

# shrink: zero-filled blocks become holes, no byte changes.
dd if=/dev/urandom of="$T/fat.raw" bs=1M count=2 status=none
dd if=/dev/zero of="$T/fat.raw" bs=1M count=8 seek=2 conv=notrunc status=none
dd if=/dev/urandom of="$T/fat.raw" bs=1M count=1 seek=10 conv=notrunc status=none
cp "$T/fat.raw" "$T/fat.orig"
before=$(allocated "$T/fat.raw")
check "shrink" "$SPARSYNC" shrink "$T/fat.raw"
check "shrink changed no byte" cmp "$T/fat.raw" "$T/fat.orig"
check "shrink freed the 8 MiB of zeros" test "$(allocated "$T/fat.raw")" -le $((before - 8 * MiB))

# Write-behind: a copy does not leave its destination in the page cache
# (copying a terabyte must not evict what the host had cached). fincore
# counts the resident bytes; tmpfs keeps everything, so use /var/tmp there.
wbdir=$T
[ "$(stat -f -c %T "$T")" = tmpfs ] && wbdir=$(mktemp -d /var/tmp/sparsync-wb.XXXXXX)
if command -v fincore >/dev/null; then
	head -c $((128 * MiB)) /dev/urandom >"$wbdir/wb.raw"
	for fmt in raw qcow2; do
		check "write-behind: copy to $fmt" "$SPARSYNC" copy -q -O $fmt "$wbdir/wb.raw" "$wbdir/wb.$fmt.out"
		res=$(fincore --bytes --noheadings --output RES "$wbdir/wb.$fmt.out")
		check "write-behind: at most 96 MiB of the 128 MiB $fmt copy stay cached ($res bytes)" \
			test "${res:-999999999999}" -le $((96 * MiB))
	done
	check "write-behind: the raw copy is intact" cmp "$wbdir/wb.raw" "$wbdir/wb.raw.out"
	rm -f "$wbdir"/wb.*
else
	fail "fincore (util-linux) is missing"
fi
[ "$wbdir" != "$T" ] && rm -rf "$wbdir"

# Errors: one line naming the file, exit 1 (2 for usage), nothing left behind.
check_fails "missing source" "$SPARSYNC" copy "$T/nope.raw" "$T/x.raw"
check "missing source message names the file" grep -q "nope.raw: No such file" "$T/.last"
check "missing source leaves no destination" test ! -e "$T/x.raw"
check_fails "destination directory missing" "$SPARSYNC" copy "$img" "$T/no/such/dir/x.raw"
check "missing directory message" grep -q "no/such/dir/x.raw: directory does not exist" "$T/.last"
check_fails "source is a directory" "$SPARSYNC" copy "$T" "$T/x.raw"
check "directory source message" grep -q "is a directory" "$T/.last"
"$SPARSYNC" copy >/dev/null 2>&1; rc=$?
check "usage error exits 2" test $rc -eq 2
"$SPARSYNC" map "$T/nope.raw" 2>"$T/err"; rc=$?
check "map of a missing file exits 1 with one line" test $rc -eq 1 -a "$(wc -l <"$T/err")" -eq 1
# An unreadable source: root reads anything, so drop to nobody when root.
mkdir -m 755 "$T/perm" && cp "$T/fat.orig" "$T/perm/secret.raw" && chmod 000 "$T/perm/secret.raw"
chmod 755 "$T"
if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null && runuser -u nobody -- test -x "$SPARSYNC"; then
	chmod 777 "$T/perm"
	check_fails "unreadable source" runuser -u nobody -- "$SPARSYNC" copy "$T/perm/secret.raw" "$T/perm/out.raw"
elif [ "$(id -u)" != 0 ]; then
	check_fails "unreadable source" "$SPARSYNC" copy "$T/perm/secret.raw" "$T/perm/out.raw"
else
	fail "cannot run as an unprivileged user to test an unreadable source"
fi
check "unreadable source message" grep -q "secret.raw: Permission denied" "$T/.last"
check "unreadable source leaves nothing" test ! -e "$T/perm/out.raw"

#!/bin/bash
# Nightly backups as a qcow2 chain (issues 4 and 6): night1 is a full image,
# night2 an overlay of night1 and night3 an overlay of night2, each written
# by `copy --backing` with only the clusters that differ. Each must pass
# qemu-img check, and converting its top must restore that night exactly.
source "$(dirname "$0")/../lib.sh"

command -v qemu-img >/dev/null || { fail "qemu-img is not installed"; exit 0; }

put_text() { yes "night $3" | head -c "$2" | dd of="$1" bs=4096 seek=$(($3 / 4096)) conv=notrunc status=none; }

mkdir -p "$T/backups"
cd "$T" || exit 1

# Night 1: the whole disk.
truncate -s $((96 * MiB)) night1.raw
put_random night1.raw $((4 * MiB)) $MiB
put_text night1.raw $((3 * MiB)) $((30 * MiB))
put_random night1.raw $((2 * MiB)) $((90 * MiB))
check "night1: full image" "$SPARSYNC" copy -q night1.raw backups/night1.qcow2
restores "night1" backups/night1.qcow2 night1.raw

# Night 2: a few changes, a zeroed range over night1's data, a grown disk.
cp night1.raw night2.raw
put_random night2.raw 4096 $((2 * MiB + 8192))
put_random night2.raw $MiB $((50 * MiB))
fallocate -p -o $((31 * MiB)) -l $MiB night2.raw
truncate -s $((128 * MiB)) night2.raw
put_text night2.raw 65536 $((120 * MiB))
# The backing name is stored as given: relative to the overlay's directory.
if "$SPARSYNC" copy --json --backing night1.qcow2 night2.raw backups/night2.qcow2 >json2 2>err; then
	pass "night2: overlay of night1"
else
	fail "night2: $(cat err)"
fi
restores "night2" backups/night2.qcow2 night2.raw
w=$(json_field bytes_written <json2)
if [ -n "$w" ] && [ "$w" -le $((2 * MiB)) ]; then pass "night2 wrote only changes ($w bytes)"; else
	fail "night2 wrote ${w:-?} bytes"; fi
size=$(stat -c %s backups/night2.qcow2)
if [ "$size" -lt $((3 * MiB)) ]; then pass "night2 overlay is small ($size bytes)"; else
	fail "night2 overlay is $size bytes"; fi
qemu-img info backups/night2.qcow2 | grep -qE '^backing file: night1.qcow2( |$)' &&
	pass "night2 names its backing as given" || fail "night2 backing name: $(qemu-img info backups/night2.qcow2 | grep backing)"

# Night 3: unaligned changes, a shrunk odd-sized disk, zeros over data that
# night1 (two levels down) holds.
cp night2.raw night3.raw
head -c 5000 /dev/urandom | dd of=night3.raw bs=1 seek=77777 conv=notrunc status=none
dd if=/dev/zero of=night3.raw bs=4096 seek=$((MiB / 4096 + 3)) count=5 conv=notrunc status=none
fallocate -p -o $((90 * MiB)) -l $((2 * MiB)) night3.raw
truncate -s 120000001 night3.raw
if "$SPARSYNC" copy -q --backing "$T/backups/night2.qcow2" night3.raw backups/night3.qcow2 2>err; then
	pass "night3: overlay of night2 (absolute backing name)"
else
	fail "night3: $(cat err)"
fi
restores "night3" backups/night3.qcow2 night3.raw
# Every night in the chain still restores.
restores "night2 after night3" backups/night2.qcow2 night2.raw
restores "night1 after night3" backups/night1.qcow2 night1.raw
# sparsync itself reads the chain back.
rm -f back3.raw
if "$SPARSYNC" copy -q backups/night3.qcow2 back3.raw && cmp -s -n 120000001 back3.raw night3.raw; then
	pass "sparsync reads the chain back"
else
	fail "sparsync reading the night3 chain"
fi
# Shrinking an overlay keeps it an overlay.
cp backups/night3.qcow2 backups/n3copy.qcow2
if "$SPARSYNC" shrink -q backups/n3copy.qcow2 &&
   qemu-img info backups/n3copy.qcow2 | grep -q 'backing file: .*night2.qcow2'; then
	restores "shrunk overlay" backups/n3copy.qcow2 night3.raw
else
	fail "shrink of an overlay"
fi

# Errors: a missing backing file, an overlay named like its own backing.
check_fails "missing backing file" "$SPARSYNC" copy -q --backing nope.qcow2 night3.raw backups/x.qcow2
said "missing backing file: names it and where it looked" \
	'backing file nope\.qcow2: No such file or directory \(looked for backups/nope\.qcow2\)' 
[ -e backups/x.qcow2 ] && fail "missing backing left backups/x.qcow2"
check_fails "overlay over its own backing" "$SPARSYNC" copy -q --backing night2.qcow2 night3.raw backups/night2.qcow2
restores "night2 untouched by the refused copy" backups/night2.qcow2 night2.raw
# A raw backing works too (no qcow2 reader involved).
check "overlay of a raw backing" "$SPARSYNC" copy -q --backing ../night1.raw night2.raw backups/over-raw.qcow2
restores "overlay of a raw backing" backups/over-raw.qcow2 night2.raw
exit 0

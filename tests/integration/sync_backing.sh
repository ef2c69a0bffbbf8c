#!/bin/bash
# Incremental backups as a qcow2 chain over ssh (issue 6): night1 is pushed
# whole, night2 and night3 with `copy --backing PREV SRC HOST:NEW.qcow2`, so
# the remote builds each overlay from PREV's hash list and receives only
# the clusters that differ. Each night passes qemu-img check and converting
# its top restores that night's source exactly. Then the same by pull.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
command -v qemu-img >/dev/null || { fail "qemu-img is not installed"; exit 0; }

TO="timeout 600"
put_text() { yes "night $3" | head -c "$2" | dd of="$1" bs=4096 seek=$(($3 / 4096)) conv=notrunc status=none; }
put_bytes() { head -c "$2" /dev/urandom | dd of="$1" bs=1 seek="$3" conv=notrunc status=none; }

# below NAME FIELD LIMIT on the --json line in $T/.last
below() {
	local v; v=$(json_field "$2" <"$T/.last")
	if [ -n "$v" ] && [ "$v" -lt "$3" ]; then pass "$1 ($2 = $v)"; else
		fail "$1 ($2 = ${v:-missing}, limit $3)"; sed 's/^/    | /' "$T/.last" | head -3
	fi
}
backing_is() { qemu-img info "$1" | grep -qE "^backing file: $2( |\$)"; }

sshd_start || exit 0
OPTS="$(sparsync_ssh_opts) --remote-path $SPARSYNC"
H=127.0.0.1
R=$T/backups
mkdir -p "$R"
cd "$T" || exit 1

# Night 1: the whole disk, 64 MiB of data in 256 MiB (32 MiB under the sanitizers).
if [ "${SANITIZER:-0}" = 1 ]; then D=$((8 * MiB)); else D=$((32 * MiB)); fi
truncate -s $((256 * MiB)) night1.raw
put_random night1.raw $D $MiB
put_text night1.raw $((3 * MiB)) $((100 * MiB))
put_random night1.raw $D $((180 * MiB))
check "night1: full push" $TO "$SPARSYNC" copy --json $OPTS night1.raw "$H:$R/night1.qcow2"
restores "night1" "$R/night1.qcow2" night1.raw

# Night 2: a few scattered changes, zeros over night1's data, a grown disk.
cp --sparse=always night1.raw night2.raw
put_random night2.raw 4096 $((2 * MiB + 8192))
put_bytes night2.raw 3000 $((40 * MiB + 777))
put_random night2.raw $MiB $((60 * MiB))
dd if=/dev/zero of=night2.raw bs=1M seek=181 count=4 conv=notrunc status=none
fallocate -p -o $((101 * MiB)) -l $MiB night2.raw
truncate -s $((300 * MiB)) night2.raw
put_text night2.raw 65536 $((290 * MiB))
# The backing name is stored as given: relative to the overlay's directory.
check "night2: push as an overlay of night1" $TO "$SPARSYNC" copy --json $OPTS --backing night1.qcow2 night2.raw "$H:$R/night2.qcow2"
below "night2: only the changes sent" bytes_sent $((3 * MiB))
restores "night2" "$R/night2.qcow2" night2.raw
check "night2 names its backing as given" backing_is "$R/night2.qcow2" night1.qcow2
check "night2 overlay is small" test "$(stat -c %s "$R/night2.qcow2")" -lt $((4 * MiB))
check "night2: zeros over night1's data hold no data in the chain" range_is_hole "$R/night2.qcow2" $((181 * MiB)) $((4 * MiB))

# Night 3: unaligned changes, zeros over data two levels down, a shrunk
# odd-sized disk.
cp --sparse=always night2.raw night3.raw
put_bytes night3.raw 5000 77777
dd if=/dev/zero of=night3.raw bs=4096 seek=$((MiB / 4096 + 3)) count=5 conv=notrunc status=none
fallocate -p -o $((182 * MiB)) -l $((8 * MiB)) night3.raw
truncate -s 280000001 night3.raw
check "night3: push as an overlay of night2" $TO "$SPARSYNC" copy --json $OPTS --backing night2.qcow2 night3.raw "$H:$R/night3.qcow2"
below "night3: only the changes sent" bytes_sent $((2 * MiB))
restores "night3" "$R/night3.qcow2" night3.raw
check "night3 names its backing as given" backing_is "$R/night3.qcow2" night2.qcow2
# Every night in the chain still restores.
restores "night2 after night3" "$R/night2.qcow2" night2.raw
restores "night1 after night3" "$R/night1.qcow2" night1.raw
check "verify: night3's chain equals its source" $TO "$SPARSYNC" verify $OPTS night3.raw "$H:$R/night3.qcow2"

# Errors: a missing backing file, an overlay over its own backing; nothing left behind.
check_fails "missing remote backing file" $TO "$SPARSYNC" copy $OPTS --backing nope.qcow2 night3.raw "$H:$R/x.qcow2"
check "missing backing named" grep -q "nope.qcow2" "$T/.last"
check "missing backing: no overlay left" test ! -e "$R/x.qcow2"
check_fails "overlay over its own backing" $TO "$SPARSYNC" copy $OPTS --backing night2.qcow2 night3.raw "$H:$R/night2.qcow2"
restores "night2 untouched by the refused copy" "$R/night2.qcow2" night2.raw
check "no temporary files on the remote side" sh -c "! ls -A '$R' | grep -q sparsync-"

# ---- the same chain by pull: the sources live on the remote ----
L=$T/local
mkdir -p "$L"
check "pull night1" $TO "$SPARSYNC" copy $OPTS "$H:$T/night1.raw" "$L/night1.qcow2"
restores "pulled night1" "$L/night1.qcow2" night1.raw
check "pull night2 as an overlay" $TO "$SPARSYNC" copy --json $OPTS --backing night1.qcow2 "$H:$T/night2.raw" "$L/night2.qcow2"
below "pulled night2: only the changes received" bytes_received $((3 * MiB))
restores "pulled night2" "$L/night2.qcow2" night2.raw
check "pull night3 as an overlay" $TO "$SPARSYNC" copy --json $OPTS --backing night2.qcow2 "$H:$T/night3.raw" "$L/night3.qcow2"
below "pulled night3: only the changes received" bytes_received $((2 * MiB))
restores "pulled night3" "$L/night3.qcow2" night3.raw
check "pulled night3 names its backing as given" backing_is "$L/night3.qcow2" night2.qcow2

#!/bin/bash
# The digest file (issue 13, part 1): after a copy or sync, DST's unit
# hashes and identity are saved beside it (.NAME.sparsync); the next sync
# answers from them without reading DST (dest_bytes_read 0), and is never
# fooled: a write into DST behind sparsync's back (even in the same clock
# tick, even with its mtime put back), a truncated, damaged or foreign
# digest, or an interrupted run only cost a read of DST. Local, push and
# pull over a real sshd; raw and qcow2.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
TO="timeout 600"

above() {
	local v; v=$(field "$2")
	if [ -n "$v" ] && [ "$v" -gt "$3" ]; then pass "$1 ($2 = $v)"; else
		fail "$1 ($2 = ${v:-missing}, must exceed $3)"; sed 's/^/    | /' "$T/.last" | head -3
	fi
}
same_content() { qemu-img compare -q "$1" "$2"; }

# 64 MiB with ~10 MiB of data in pieces that do not line up with the 64 KiB
# units (a unit of data and zeros, data ending mid-unit, the image's tail).
truncate -s $((64 * MiB + 5000)) "$T/src.raw"
put_random "$T/src.raw" $((3 * MiB)) $((1 * MiB))
put_random "$T/src.raw" 8192 $((8 * MiB + 20480))
put_random "$T/src.raw" $((5 * MiB + 4096)) $((20 * MiB + 12288))
put_random "$T/src.raw" $((2 * MiB)) $((40 * MiB))
head -c 5000 /dev/urandom | dd of="$T/src.raw" bs=1 seek=$((64 * MiB)) conv=notrunc status=none
# change: a few scattered writes, zeros over data, data in a hole
change() {
	put_random "$1" 4096 $((2 * MiB + 4096))
	put_random "$1" 4096 $((30 * MiB))
	dd if=/dev/zero of="$1" bs=4096 count=64 seek=$((41 * MiB / 4096)) conv=notrunc status=none
	put_random "$1" 4096 $((63 * MiB))
}

# ---- local ----
check "copy to a new raw DST" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
check "the digest file is beside it" test -s "$T/.d.raw.sparsync"
check "it is no temporary" no_temp_files "$T"
check "unchanged re-sync" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
is "unchanged re-sync reads nothing of DST" dest_bytes_read 0
is "and writes nothing" bytes_written 0
said "the digest was used" '"digest":"used"'
cp --sparse=always "$T/src.raw" "$T/v1.raw"
change "$T/src.raw"
check "sync a change" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
is "the changed sync reads nothing of DST" dest_bytes_read 0
check "the changed sync is right" cmp "$T/src.raw" "$T/d.raw"
check "the zeroed range is a hole again" range_is_hole "$T/d.raw" $((41 * MiB)) $((256 * 1024))
check "the digest after a change is still used" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
is "and reads nothing" dest_bytes_read 0
is "and writes nothing" bytes_written 0

# Written behind sparsync's back, right after a run (the same clock tick):
# the digest no longer matches and DST is read and repaired.
"$SPARSYNC" copy -q "$T/src.raw" "$T/d.raw" && printf 'X' | dd of="$T/d.raw" bs=1 seek=$((1 * MiB + 7)) conv=notrunc status=none
check "a write right after a run is seen" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
said "the digest was not used" '"digest":"the image changed since it was written"'
above "DST was read" dest_bytes_read 0
check "and repaired" cmp "$T/src.raw" "$T/d.raw"
# The same with the mtime put back (touch -r): the ctime still tells.
touch -r "$T/d.raw" "$T/stamp"
printf 'Y' | dd of="$T/d.raw" bs=1 seek=$((20 * MiB + 99999)) conv=notrunc status=none
touch -r "$T/stamp" "$T/d.raw"
check "a write with the mtime put back is seen" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
said "not used (ctime)" '"digest":"the image changed since it was written"'
check "and repaired too" cmp "$T/src.raw" "$T/d.raw"

# Damaged digests only cost time.
"$SPARSYNC" copy -q "$T/src.raw" "$T/d.raw"
cp "$T/.d.raw.sparsync" "$T/good.digest"
rm "$T/.d.raw.sparsync"
check "a deleted digest" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
said "is simply absent" '"digest":"there is none"'
above "DST was read instead" dest_bytes_read 0
check "and a new one is written" test -s "$T/.d.raw.sparsync"
truncate -s 50 "$T/.d.raw.sparsync"
check "a truncated digest" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
said "is not used" '"digest":"it is not a digest file"'
cp "$T/good.digest" "$T/.d.raw.sparsync"
printf '\001' | dd of="$T/.d.raw.sparsync" bs=1 seek=200 conv=notrunc status=none
check "a digest with a flipped byte" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
said "is not used (checksum)" '"digest":"its checksum is wrong"'
head -c 5000 /dev/urandom >"$T/.d.raw.sparsync"
check "a garbage digest" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
said "is not used (garbage)" '"digest":"it is not a digest file of this version"'
check "after all of them DST is right" cmp "$T/src.raw" "$T/d.raw"
check "and a good digest is back" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
is "reading nothing" dest_bytes_read 0
# Another image's digest (same content, another file) is not used for it.
cp --sparse=always "$T/d.raw" "$T/e.raw"
cp "$T/.d.raw.sparsync" "$T/.e.raw.sparsync"
check "another image's digest" "$SPARSYNC" copy --json "$T/src.raw" "$T/e.raw"
said "is not used (identity)" '"digest":"the image changed since it was written"'
# A digest that says DST holds what it does not (the old digest of a DST
# now holding v1, with the digest's identity out of date) never wins.
cp --sparse=always "$T/v1.raw" "$T/d.raw"
cp "$T/good.digest" "$T/.d.raw.sparsync"
check "a stale digest over other content" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.raw"
check "does not leave DST wrong" cmp "$T/src.raw" "$T/d.raw"

# --no-digest and --digest-file
rm -f "$T/.f.raw.sparsync"
check "--no-digest" "$SPARSYNC" copy --no-digest "$T/src.raw" "$T/f.raw"
check "keeps no digest" test ! -e "$T/.f.raw.sparsync"
mkdir -p "$T/digests"
check "--digest-file" "$SPARSYNC" copy --digest-file "$T/digests/f" "$T/src.raw" "$T/f.raw"
check "puts it there" test -s "$T/digests/f"
check "and not beside DST" test ! -e "$T/.f.raw.sparsync"
check "--digest-file is used" "$SPARSYNC" copy --json --digest-file "$T/digests/f" "$T/src.raw" "$T/f.raw"
is "reading nothing" dest_bytes_read 0

# Grow and shrink the source.
cp --sparse=always "$T/src.raw" "$T/g.raw"
"$SPARSYNC" copy -q "$T/g.raw" "$T/gd.raw"
truncate -s $((80 * MiB + 123)) "$T/g.raw"
put_random "$T/g.raw" 4096 $((79 * MiB))
check "grown source" "$SPARSYNC" copy --json "$T/g.raw" "$T/gd.raw"
is "grown: reads nothing" dest_bytes_read 0
check "grown: right" cmp "$T/g.raw" "$T/gd.raw"
truncate -s $((30 * MiB + 4097)) "$T/g.raw"
check "shrunk source" "$SPARSYNC" copy --json "$T/g.raw" "$T/gd.raw"
check "shrunk: right" cmp "$T/g.raw" "$T/gd.raw"
check "shrunk, unchanged" "$SPARSYNC" copy --json "$T/g.raw" "$T/gd.raw"
is "shrunk, unchanged: reads nothing" dest_bytes_read 0
is "shrunk, unchanged: writes nothing" bytes_written 0

# qcow2 destination
check "copy to a new qcow2 DST" "$SPARSYNC" copy "$T/v1.raw" "$T/d.qcow2"
check "sync it with the digest" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.qcow2"
is "qcow2: reads nothing" dest_bytes_read 0
check "qcow2: right" same_content "$T/src.raw" "$T/d.qcow2"
check "qcow2: check clean" qemu-img check -q "$T/d.qcow2"
qemu-io -c "write -P 7 5M 64k" "$T/d.qcow2" >/dev/null
check "qcow2 written by qemu-io behind our back" "$SPARSYNC" copy --json "$T/src.raw" "$T/d.qcow2"
said "is seen" '"digest":"the image changed since it was written"'
check "and repaired" same_content "$T/src.raw" "$T/d.qcow2"

# Interrupted runs: the old digest does not describe what is left.
FAULTS=$TOP/sparsync-faults
if [ -x "$FAULTS" ]; then
	cp --sparse=always "$T/v1.raw" "$T/k.raw"
	"$SPARSYNC" copy -q "$T/v1.raw" "$T/k.raw"
	for at in 1 2 3; do
		SPARSYNC_FAULT_KILL_AT=$at "$FAULTS" copy -q --inplace "$T/src.raw" "$T/k.raw" 2>/dev/null
		check "after kill -9 at write $at (--inplace) the next run converges" \
			"$SPARSYNC" copy --json "$T/src.raw" "$T/k.raw"
		check "to the source (kill at $at)" cmp "$T/src.raw" "$T/k.raw"
		"$SPARSYNC" copy -q "$T/v1.raw" "$T/k.raw"
	done
	SPARSYNC_FAULT_KILL_AT=2 "$FAULTS" copy -q "$T/src.raw" "$T/k.raw" 2>/dev/null
	check "after kill -9 under the journal the next run converges" "$SPARSYNC" copy "$T/src.raw" "$T/k.raw"
	check "to the source (journal)" cmp "$T/src.raw" "$T/k.raw"
else
	fail "sparsync-faults is not built"
fi

# ---- over ssh ----
sshd_start || exit 0
OPTS="$(sparsync_ssh_opts) --remote-path $SPARSYNC"
R=$T/remote
mkdir -p "$R"
H=127.0.0.1
for fmt in raw qcow2; do
	check "push v1 ($fmt)" $TO "$SPARSYNC" copy $OPTS "$T/v1.raw" "$H:$R/p.$fmt"
	check "push: the remote digest is there ($fmt)" test -s "$R/.p.$fmt.sparsync"
	check "push the change ($fmt)" $TO "$SPARSYNC" copy --json $OPTS "$T/src.raw" "$H:$R/p.$fmt"
	is "push: the receiver read nothing ($fmt)" dest_bytes_read 0
	check "push: right ($fmt)" same_content "$T/src.raw" "$R/p.$fmt"
	check "push unchanged ($fmt)" $TO "$SPARSYNC" copy --json $OPTS "$T/src.raw" "$H:$R/p.$fmt"
	is "push unchanged: read nothing ($fmt)" dest_bytes_read 0
	is "push unchanged: wrote nothing ($fmt)" bytes_written 0
done
check "push: qcow2 check clean" qemu-img check -q "$R/p.qcow2"
printf 'Z' | dd of="$R/p.raw" bs=1 seek=$((40 * MiB + 5)) conv=notrunc status=none
check "push after a write behind our back" $TO "$SPARSYNC" copy --json $OPTS "$T/src.raw" "$H:$R/p.raw"
above "push: the receiver read DST" dest_bytes_read 0
check "push: repaired" cmp "$T/src.raw" "$R/p.raw"
check "push --no-digest" $TO "$SPARSYNC" copy --no-digest $OPTS "$T/src.raw" "$H:$R/nd.raw"
check "push --no-digest keeps none" test ! -e "$R/.nd.raw.sparsync"

cp --sparse=always "$T/v1.raw" "$R/s.raw"
check "pull v1" $TO "$SPARSYNC" copy $OPTS "$H:$R/s.raw" "$T/pulled.raw"
cp --sparse=always "$T/src.raw" "$R/s.raw"
check "pull the change" $TO "$SPARSYNC" copy --json $OPTS "$H:$R/s.raw" "$T/pulled.raw"
is "pull: read nothing of DST" dest_bytes_read 0
check "pull: right" cmp "$T/src.raw" "$T/pulled.raw"

# A stream into DST (no sender to say where its zeros are) keeps no
# digest, and removes one that would now be stale.
"$SPARSYNC" copy -q "$T/v1.raw" "$T/st.raw"
"$SPARSYNC" copy -q "$T/src.raw" - >"$T/s.sps"
rm -f "$T/st.raw"
"$SPARSYNC" copy -q "$T/v1.raw" "$T/st.raw"
check "a stream read into a new DST" sh -c "'$SPARSYNC' copy -q - '$T/st2.raw' <'$T/s.sps'"
check "keeps no digest" test ! -e "$T/.st2.raw.sparsync"

#!/bin/bash
# Backups whose cost follows the change (issue 13, parts 2, 3, 5): --bitmap
# NAME reads only what a persistent dirty bitmap (QEMU's, managed by
# someone else) marks; --track keeps sparsync's own bitmap in the source
# and trusts it only when the destination's digest names it. QEMU's own
# view of the bitmaps (qemu-nbd -B) is the oracle for what is dirty;
# qemu-img check/compare for the images. Local, push and pull.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
FAULTS=$TOP/sparsync-faults
NBD_PIDS=()
cleanup() {
	for p in "${NBD_PIDS[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

at_most() {
	local v; v=$(field "$2")
	if [ -n "$v" ] && [ "$v" -le "$3" ]; then pass "$1 ($2 = $v)"; else
		fail "$1 ($2 = ${v:-missing}, limit $3)"; sed 's/^/    | /' "$T/.last" | head -3
	fi
}
track_is() { said "$1" "\"track\":\"$2"; }
same() { qemu-img compare -q "$1" "$2"; }
io() { local f=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done; qemu-io -f qcow2 "${a[@]}" "$f" >/dev/null; }
KiB=1024
META=$((1 * MiB)) # qcow2 tables read on the way, at most

# QEMU's view of bitmap NAME of IMG as "start length" lines of dirty ranges.
qemu_dirty() {
	local img=$1 name=$2 sock=$T/q.sock
	rm -f "$sock"
	qemu-nbd -r -t -B "$name" -k "$sock" -f qcow2 "$img" 2>/dev/null &
	local pid=$!
	NBD_PIDS+=($pid)
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
	qemu-img map --output=json --image-opts \
		"driver=nbd,server.type=unix,server.path=$sock,x-dirty-bitmap=qemu:dirty-bitmap:$name" |
		python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if not e["data"]: print(e["start"], e["length"])'
	kill $pid; wait $pid 2>/dev/null
}
ours_dirty() {
	"$SPARSYNC" map --json --bitmap "$2" "$1" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["dirty"]: print(e["start"], e["length"])'
}
dirty_agree() { [ "$(qemu_dirty "$1" "$2")" = "$(ours_dirty "$1" "$2")" ] && [ -n "$(ours_dirty "$1" "$2")" ]; }
our_bitmaps() { qemu-img info --output=json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin).get("format-specific", {}).get("data", {})
print(" ".join(sorted(b["name"] for b in d.get("bitmaps", []) if b["name"].startswith("sparsync-"))))'; }

# A 256 MiB qcow2 VM disk with 48 MiB of data.
SRC=$T/vm.qcow2
qemu-img create -q -f qcow2 "$SRC" 256M
io "$SRC" "write -P 1 0 32M" "write -P 2 100M 16M"
change() { # scattered guest writes: data, zeros over data, a discard, data in a hole
	io "$1" "write -P $2 5M 64k" "write -z 101M 1M" "discard 20M 1M" "write -P $2 200M 4k"
}

# ---- --bitmap NAME (someone else's bitmap, read only) ----
check "copy v1" "$SPARSYNC" copy "$SRC" "$T/b.raw"
qemu-img bitmap --add "$SRC" b0
change "$SRC" 7
check "QEMU and sparsync see the same dirty ranges" dirty_agree "$SRC" b0
check "--bitmap copies the change" "$SPARSYNC" copy --json --bitmap b0 "$SRC" "$T/b.raw"
at_most "--bitmap reads only what is dirty" bytes_read $((1088 * KiB + 64 * KiB + 64 * KiB + META))
check "--bitmap result is right" same "$SRC" "$T/b.raw"
check "the bitmap is left as it was" sh -c "qemu-img info '$SRC' | grep -q 'name: b0'"
check "and still dirty" dirty_agree "$SRC" b0
check_fails "--bitmap of a missing bitmap" "$SPARSYNC" copy --bitmap nope "$SRC" "$T/b.raw"
said "says so" "has no persistent bitmap called 'nope'"
check_fails "--bitmap into a new destination" "$SPARSYNC" copy --bitmap b0 "$SRC" "$T/new.raw"
said "says why" 'is new: it must already hold'
check "and creates nothing" test ! -e "$T/new.raw"
truncate -s 1M "$T/plain.raw"
check_fails "--bitmap of a raw image" "$SPARSYNC" copy --bitmap b0 "$T/plain.raw" "$T/b.raw"
said "says why (raw)" 'has no persistent dirty bitmaps'
check_fails "--bitmap with --whole is a usage error" "$SPARSYNC" copy --whole --bitmap b0 "$SRC" "$T/b.raw"
check "exit status 2" test "$(sed -n '$p' "$T/.last" >/dev/null; "$SPARSYNC" copy --whole --bitmap b0 "$SRC" "$T/b.raw" 2>/dev/null; echo $?)" = 2

# A bitmap a QEMU that died left in use is not trusted.
cp "$SRC" "$T/inuse.qcow2"
qemu-io -f qcow2 -c "write -P 9 9M 64k" -c "sigraise 9" "$T/inuse.qcow2" >/dev/null 2>&1
check "qemu-io left the bitmap in use" sh -c "qemu-img info '$T/inuse.qcow2' | grep -q in-use"
check_fails "--bitmap refuses an in-use bitmap" "$SPARSYNC" copy --bitmap b0 "$T/inuse.qcow2" "$T/b.raw"
said "says why (in use)" 'was not saved cleanly'
# Bitmaps made stale by a writer that does not keep them (autoclear bit).
cp "$SRC" "$T/stale.qcow2"
printf '\000' | dd of="$T/stale.qcow2" bs=1 seek=95 conv=notrunc status=none
check_fails "--bitmap refuses stale bitmaps" "$SPARSYNC" copy --bitmap b0 "$T/stale.qcow2" "$T/b.raw"
said "says why (stale)" 'its bitmaps are stale'

# Malformed directories: one clear line, exit 1, never a crash.
python3 - "$SRC" "$T" <<'PY'
import struct, sys
src, out = sys.argv[1], sys.argv[2]
img = bytearray(open(src, "rb").read())
hl = struct.unpack(">I", img[100:104])[0]
pos = hl
while True:
    t, l = struct.unpack(">II", img[pos:pos + 8])
    if t == 0x23852875:
        n, _, dsize, doff = struct.unpack(">IIQQ", img[pos + 8:pos + 32])
        break
    pos += 8 + ((l + 7) & ~7)
def mutate(name, fn):
    b = bytearray(img); fn(b); open(f"{out}/{name}.qcow2", "wb").write(b)
mutate("gran", lambda b: b.__setitem__(doff + 17, 40))
mutate("noname", lambda b: b.__setitem__(slice(doff + 18, doff + 20), b"\0\0"))
mutate("tablepast", lambda b: b.__setitem__(slice(doff, doff + 8), struct.pack(">Q", len(img) * 4)))
mutate("tablesize", lambda b: b.__setitem__(slice(doff + 8, doff + 12), struct.pack(">I", 99999)))
mutate("dirpast", lambda b: b.__setitem__(slice(pos + 24, pos + 32), struct.pack(">Q", len(img) * 4)))
mutate("count", lambda b: b.__setitem__(slice(pos + 8, pos + 12), struct.pack(">I", 7)))
mutate("overlap", lambda b: b.__setitem__(slice(doff, doff + 8), struct.pack(">Q", doff)))
PY
for m in gran noname tablepast tablesize dirpast count overlap; do
	check_fails "malformed bitmap directory ($m) is refused" "$SPARSYNC" copy --bitmap b0 "$T/$m.qcow2" "$T/b.raw"
	check "one line naming the file ($m)" sh -c "[ \$(wc -l <'$T/.last') = 1 ] && grep -q '$m.qcow2' '$T/.last'"
	check "the data is still readable ($m)" "$SPARSYNC" map "$T/$m.qcow2"
done
check "after all that the destination is still right" same "$SRC" "$T/b.raw"

# ---- --track (our own bitmap) ----
SRC2=$T/vm2.qcow2
qemu-img create -q -f qcow2 "$SRC2" 256M
io "$SRC2" "write -P 1 0 32M" "write -P 2 100M 16M"
qemu-img bitmap --add "$SRC2" user1
check "first tracked copy" "$SPARSYNC" copy --json --track "$SRC2" "$T/t.raw"
track_is "is a full one" 'full: the destination records no bitmap'
check "a bitmap of ours is in the source" test -n "$(our_bitmaps "$SRC2")"
check "the user's bitmap stays" sh -c "qemu-img info '$SRC2' | grep -q 'name: user1'"
check "the source is qemu-img check clean" qemu-img check -q "$SRC2"
check "unchanged tracked sync" "$SPARSYNC" copy --json --track "$SRC2" "$T/t.raw"
track_is "uses the bitmap" bitmap
at_most "reads only metadata of the source" bytes_read $META
at_most "reads nothing of the destination" dest_bytes_read 0
at_most "writes nothing" bytes_written 0
first=$(our_bitmaps "$SRC2")
change "$SRC2" 5
check "QEMU recorded the writes in our bitmap as we read it" dirty_agree "$SRC2" "$first"
check "tracked sync of the change" "$SPARSYNC" copy --json --track "$SRC2" "$T/t.raw"
track_is "uses the bitmap (change)" bitmap
at_most "reads only the dirty clusters" bytes_read $((1088 * KiB + 64 * KiB + 64 * KiB + META))
check "the change arrived" same "$SRC2" "$T/t.raw"
check "the bitmap was rotated" test "$(our_bitmaps "$SRC2")" != "$first"
check "one bitmap of ours" test "$(our_bitmaps "$SRC2" | wc -w)" = 1
check "still qemu-img check clean" qemu-img check -q "$SRC2"

# A QEMU that dies with the image open leaves the bitmap in use: not
# trusted, and the write it may have missed still arrives.
qemu-io -f qcow2 -c "write -P 6 7M 64k" -c "sigraise 9" "$SRC2" >/dev/null 2>&1
check "tracked sync after a QEMU died" "$SPARSYNC" copy --json --track "$SRC2" "$T/t.raw"
track_is "does not trust the in-use bitmap" 'full: the bitmap cannot be trusted'
check "and the write arrives" same "$SRC2" "$T/t.raw"
check "the in-use bitmap was replaced" sh -c "! qemu-img info '$SRC2' | grep -B2 'name: sparsync' | grep -q in-use"
check "trusted again afterwards" "$SPARSYNC" copy --json --track "$SRC2" "$T/t.raw"
track_is "bitmap again" bitmap

# Written behind sparsync's back: compared in full, repaired.
printf 'Q' | dd of="$T/t.raw" bs=1 seek=$((33 * MiB)) conv=notrunc status=none
check "tracked sync after a write into the destination" "$SPARSYNC" copy --json --track "$SRC2" "$T/t.raw"
track_is "compares everything" 'full: the destination changed since its last sync'
check "and repairs it" same "$SRC2" "$T/t.raw"

# A source restored from an older copy of itself carries older bitmaps only.
cp "$SRC2" "$T/saved.qcow2"
change "$SRC2" 4
check "sync before the restore" "$SPARSYNC" copy --track "$SRC2" "$T/t.raw"
cp "$T/saved.qcow2" "$SRC2"
check "tracked sync of a restored source" "$SPARSYNC" copy --json --track "$SRC2" "$T/t.raw"
track_is "compares everything (restore)" 'full: the source has no bitmap for this destination'
check "and is right" same "$SRC2" "$T/t.raw"

# Two destinations, two bitmaps, each change reaches both.
check "a second destination" "$SPARSYNC" copy --track "$SRC2" "$T/t2.raw"
change "$SRC2" 3
check "sync the first" "$SPARSYNC" copy --json --track "$SRC2" "$T/t.raw"
track_is "first uses its bitmap" bitmap
change "$SRC2" 2
check "sync the second" "$SPARSYNC" copy --json --track "$SRC2" "$T/t2.raw"
track_is "second uses its bitmap" bitmap
check "the second has both changes" same "$SRC2" "$T/t2.raw"
check "sync the first again" "$SPARSYNC" copy --json --track "$SRC2" "$T/t.raw"
check "the first has both changes" same "$SRC2" "$T/t.raw"

# Interrupted tracked syncs leave the bitmaps as they were and converge.
if [ -x "$FAULTS" ]; then
	change "$SRC2" 8
	before=$(our_bitmaps "$SRC2")
	for sig in 9 2; do
		SPARSYNC_FAULT_SIGNAL=$sig SPARSYNC_FAULT_KILL_AT=2 "$FAULTS" copy -q --track "$SRC2" "$T/t.raw" 2>/dev/null
		check "interrupted (signal $sig): the bitmaps are as they were" test "$(our_bitmaps "$SRC2")" = "$before"
	done
	check "the next tracked run converges" "$SPARSYNC" copy --track "$SRC2" "$T/t.raw"
	check "to the source" same "$SRC2" "$T/t.raw"
else
	fail "sparsync-faults is not built"
fi

# A source with a backing file and another's bitmap: the header rewrite
# keeps both.
qemu-img create -q -f raw "$T/base.raw" 64M
qemu-io -f raw -c "write -P 9 0 4M" "$T/base.raw" >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw "$T/ovl.qcow2"
io "$T/ovl.qcow2" "write -P 1 10M 1M"
qemu-img bitmap --add "$T/ovl.qcow2" theirs
check "tracked copy of an overlay" "$SPARSYNC" copy --track "$T/ovl.qcow2" "$T/o.raw"
check "the backing file is still named" sh -c "qemu-img info '$T/ovl.qcow2' | grep -q 'backing file: base.raw'"
check "and its format" sh -c "qemu-img info '$T/ovl.qcow2' | grep -q 'backing file format: raw'"
check "their bitmap stays" sh -c "qemu-img info '$T/ovl.qcow2' | grep -q 'name: theirs'"
check "the overlay is check clean" qemu-img check -q "$T/ovl.qcow2"
check "and reads the same" same "$T/ovl.qcow2" "$T/o.raw"

# What cannot be tracked is refused with one line.
check_fails "--track of a raw source" "$SPARSYNC" copy --track "$T/plain.raw" "$T/p.raw"
said "says why (raw source)" 'cannot hold'
qemu-img create -q -f qcow2 -o compat=0.10 "$T/v2.qcow2" 16M
check_fails "--track of a version 2 qcow2" "$SPARSYNC" copy --track "$T/v2.qcow2" "$T/p.raw"
said "says why (v2)" 'version 2'
check_fails "--track with -U is a usage error" "$SPARSYNC" copy -U --track "$SRC2" "$T/t.raw"
check_fails "--track with --no-digest is a usage error" "$SPARSYNC" copy --no-digest --track "$SRC2" "$T/t.raw"

# ---- over ssh ----
sshd_start || exit 0
OPTS="$(sparsync_ssh_opts) --remote-path $SPARSYNC"
H=127.0.0.1
R=$T/remote
mkdir -p "$R"
check "push: first tracked copy" "$SPARSYNC" copy --json --track $OPTS "$SRC2" "$H:$R/p.raw"
check "push: unchanged" "$SPARSYNC" copy --json --track $OPTS "$SRC2" "$H:$R/p.raw"
track_is "push: uses the bitmap" bitmap
at_most "push: reads only metadata" bytes_read $META
at_most "push: the receiver reads nothing" dest_bytes_read 0
change "$SRC2" 6
check "push: the change" "$SPARSYNC" copy --json --track $OPTS "$SRC2" "$H:$R/p.raw"
at_most "push: reads only the dirty clusters" bytes_read $((1088 * KiB + 64 * KiB + 64 * KiB + META))
check "push: right" same "$SRC2" "$R/p.raw"
cp "$SRC2" "$R/src.qcow2"
check "pull: first tracked copy" "$SPARSYNC" copy --track $OPTS "$H:$R/src.qcow2" "$T/pl.raw"
change "$R/src.qcow2" 5
check "pull: the change" "$SPARSYNC" copy --json --track $OPTS "$H:$R/src.qcow2" "$T/pl.raw"
at_most "pull: the remote read only the dirty clusters" bytes_read $((1088 * KiB + 64 * KiB + 64 * KiB + META))
at_most "pull: nothing of the destination was read" dest_bytes_read 0
check "pull: right" same "$R/src.qcow2" "$T/pl.raw"
check "pull: the remote source is check clean" qemu-img check -q "$R/src.qcow2"
check "push before a --bitmap" "$SPARSYNC" copy $OPTS "$SRC2" "$H:$R/p.raw"
qemu-img bitmap --add "$SRC2" u2
change "$SRC2" 9
check "push --bitmap" "$SPARSYNC" copy --json --bitmap u2 $OPTS "$SRC2" "$H:$R/p.raw"
at_most "push --bitmap reads only the dirty clusters" bytes_read $((1088 * KiB + 64 * KiB + 64 * KiB + META))
check "push --bitmap right" same "$SRC2" "$R/p.raw"
cp "$SRC2" "$R/src2.qcow2"
check "pull before a --bitmap" "$SPARSYNC" copy $OPTS "$H:$R/src2.qcow2" "$T/pb.raw"
qemu-img bitmap --add "$R/src2.qcow2" u3
change "$R/src2.qcow2" 3
check "pull --bitmap" "$SPARSYNC" copy --json --bitmap u3 $OPTS "$H:$R/src2.qcow2" "$T/pb.raw"
at_most "pull --bitmap: the remote read only the dirty clusters" bytes_read $((1088 * KiB + 64 * KiB + 64 * KiB + META))
check "pull --bitmap right" same "$R/src2.qcow2" "$T/pb.raw"
check_fails "pull --bitmap into a new destination" "$SPARSYNC" copy --bitmap u3 $OPTS "$H:$R/src2.qcow2" "$T/pbnew.raw"
said "the remote says why" 'the destination is new'
check "and nothing was created" test ! -e "$T/pbnew.raw"

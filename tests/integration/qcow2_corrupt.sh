#!/bin/bash
# qcow2 reader against damaged images: every kind of damage made here by a
# byte patch must be refused quickly with one line "FILE: what is wrong",
# exit status 1, no crash, no hang, and no output file (final or temporary)
# left behind. Where QEMU reads zeros (tables or clusters past the end of
# the file), sparsync refuses.
. "$(dirname "$0")/../lib.sh"

command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || {
	fail "qemu-img and qemu-io are needed (apt-get install qemu-utils)"
	exit 0
}

# q.py: read and patch qcow2 structures by name.
cat >"$T/q.py" <<'EOF'
import struct, sys
FIELDS = {  # name: (offset, struct format)
    "magic": (0, ">I"), "version": (4, ">I"), "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"), "cluster_bits": (20, ">I"), "size": (24, ">Q"),
    "crypt_method": (32, ">I"), "l1_size": (36, ">I"), "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"), "refcount_table_clusters": (56, ">I"),
    "incompatible_features": (72, ">Q"), "refcount_order": (96, ">I"),
    "header_length": (100, ">I"),
}
def get(f, name):
    off, fmt = FIELDS[name]; f.seek(off)
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
def l2_entry_pos(f, guest):
    """File offset of the L2 entry mapping guest offset (standard L2 only)."""
    cb = get(f, "cluster_bits"); cs = 1 << cb
    l1i, l2i = divmod(guest >> cb, cs // 8)
    f.seek(get(f, "l1_table_offset") + 8 * l1i)
    l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    return l2 + 8 * l2i
def ext_pos(f, etype):
    """File offset of the header extension of that type."""
    pos = get(f, "header_length") if get(f, "version") == 3 else 72
    while True:
        f.seek(pos); t, l = struct.unpack(">II", f.read(8))
        if t == 0: return None
        if t == etype: return pos
        pos += 8 + (l + 7) // 8 * 8
cmd, path = sys.argv[1], sys.argv[2]
with open(path, "r+b") as f:
    if cmd == "set":  # set FILE FIELD VALUE
        off, fmt = FIELDS[sys.argv[3]]; f.seek(off)
        f.write(struct.pack(fmt, int(sys.argv[4], 0) & (1 << 8 * struct.calcsize(fmt)) - 1))
    elif cmd == "get":  # get FILE FIELD
        print(get(f, sys.argv[3]))
    elif cmd == "l1":  # l1 FILE INDEX: print the file offset of that L1 entry
        print(get(f, "l1_table_offset") + 8 * int(sys.argv[3]))
    elif cmd == "l2e":  # l2e FILE GUEST: print position and value of the L2 entry
        p = l2_entry_pos(f, int(sys.argv[3], 0)); f.seek(p)
        print(p, struct.unpack(">Q", f.read(8))[0])
    elif cmd == "poke64":  # poke64 FILE POS VALUE
        f.seek(int(sys.argv[3], 0)); f.write(struct.pack(">Q", int(sys.argv[4], 0) % (1 << 64)))
    elif cmd == "ext":  # ext FILE TYPE: position of a header extension
        print(ext_pos(f, int(sys.argv[3], 0)))
    elif cmd == "rename_feature":  # rename_feature FILE FROMBIT TOBIT (incompatible)
        p = ext_pos(f, 0x6803f857); f.seek(p + 4); n = struct.unpack(">I", f.read(4))[0]
        for i in range(n // 48):
            f.seek(p + 8 + 48 * i); t, b = f.read(2)
            if t == 0 and b == int(sys.argv[3]):
                f.seek(p + 8 + 48 * i + 1); f.write(bytes([int(sys.argv[4])]))
EOF
q() { python3 "$T/q.py" "$@"; }

# A healthy image: data in several clusters, a zero cluster, data at the end.
good=$T/good.qcow2
qemu-img create -q -f qcow2 "$good" 4M
qemu-io -c 'write -P 0xab 0 1M' -c 'write -z 1M 64k' -c 'write -P 0xcd 3M 1M' "$good" >/dev/null
check "the healthy image copies" "$SPARSYNC" copy -q "$good" "$T/good.raw"
rm -f "$T/good.raw"

# Compressed variants for damaged compressed clusters.
python3 -c 'import sys; sys.stdout.buffer.write(b"compress me please " * 60000)' >"$T/text.raw"
qemu-img convert -q -c -O qcow2 "$T/text.raw" "$T/zlib.qcow2"
qemu-img convert -q -c -O qcow2 -o compression_type=zstd "$T/text.raw" "$T/zstd.qcow2"

mk() { cp "$good" "$T/$1.qcow2"; echo "$T/$1.qcow2"; }

# refused NAME IMAGE KEYWORD [COPY-OPTIONS...]: copy and map must both fail
# in time with exit 1 and one stderr line naming IMAGE and KEYWORD, leaving
# no output behind. MAP=0: only copy.
refused() {
	local name=$1 img=$2 key=$3; shift 3
	local out=$T/out.raw why=
	rm -f "$out"
	timeout 20 "$SPARSYNC" copy -q "$@" "$img" "$out" >"$T/stdout" 2>"$T/stderr"
	local rc=$?
	local lines=$(wc -l <"$T/stderr")
	if [ $rc -eq 124 ]; then why="timed out"
	elif [ $rc -ne 1 ]; then why="exit $rc, not 1"
	elif [ "$lines" -ne 1 ]; then why="$lines stderr lines, not 1"
	elif ! grep -qF "$(basename "$img")" "$T/stderr"; then why="error does not name the file"
	elif ! grep -qi -- "$key" "$T/stderr"; then why="error does not say '$key'"
	elif [ -e "$out" ]; then why="output file left behind"
	elif ls -A "$T" | grep -q '^\.out\.raw\.sparsync-'; then why="temporary file left behind"
	fi
	if [ -z "$why" ]; then pass "$name: copy refused: $(cat "$T/stderr")"; else
		fail "$name: copy: $why"; sed 's/^/    | /' "$T/stderr" | head -5
	fi
	# map reads no data: damage inside compressed data only shows in copy.
	[ "${MAP:-1}" = 0 ] && return
	why=
	timeout 20 "$SPARSYNC" map "$@" "$img" >"$T/stdout" 2>"$T/stderr"
	rc=$?
	lines=$(wc -l <"$T/stderr")
	if [ $rc -ne 1 ]; then why="exit $rc, not 1"
	elif [ "$lines" -ne 1 ]; then why="$lines stderr lines, not 1"
	elif ! grep -qi -- "$key" "$T/stderr"; then why="error does not say '$key'"
	fi
	if [ -z "$why" ]; then pass "$name: map refused"; else
		fail "$name: map: $why"; sed 's/^/    | /' "$T/stderr" | head -5
	fi
}

# --- header ---
img=$(mk magic); q set "$img" magic 0x514649fa
refused "bad magic (-f qcow2)" "$img" "bad magic" -f qcow2

img=$(mk version4); q set "$img" version 4
refused "version 4" "$img" "version 4"

img=$(mk incompat); q set "$img" incompatible_features 0x20
refused "unknown incompatible bit" "$img" "incompatible feature bit 5"

img=$(mk incompat_named); q set "$img" incompatible_features 0x20; q rename_feature "$img" 4 5
refused "unknown incompatible bit named by the feature table" "$img" "bit 5 (extended L2"

img=$(mk crypt); q set "$img" crypt_method 1
refused "encryption" "$img" "encrypted images are not supported"

img=$(mk datafile); q set "$img" incompatible_features 0x4
refused "external data file" "$img" "external data files are not supported"

img=$(mk cbits30); q set "$img" cluster_bits 30
refused "cluster_bits 30" "$img" "cluster_bits 30"

img=$(mk cbits8); q set "$img" cluster_bits 8
refused "cluster_bits 8" "$img" "cluster_bits 8"

img=$(mk hdrlen); q set "$img" header_length 4100
refused "header_length not a multiple of 8" "$img" "header_length"

img=$(mk refcount_order); q set "$img" refcount_order 7
refused "refcount_order 7" "$img" "refcount_order"

img=$(mk extl2_small); qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k "$img" 1M
q set "$img" cluster_bits 13; q set "$img" l1_size 64
refused "extended L2 with 8 KiB clusters" "$img" "extended L2"

img=$(mk hugesize); q set "$img" size 0xffffffffffffffff
refused "virtual size overflowing" "$img" "too large"

# --- L1 table ---
img=$(mk l1_past_eof); q set "$img" l1_table_offset $((1 << 40))
refused "L1 table past end of file" "$img" "L1 table"

img=$(mk l1_unaligned); q set "$img" l1_table_offset $(($(q get "$img" l1_table_offset) + 512))
refused "L1 table offset unaligned" "$img" "not cluster-aligned"

img=$(mk l1_huge); q set "$img" l1_size 0x7fffffff
refused "l1_size huge" "$img" "too large"

img=$(mk l1_small); q set "$img" size $((1 << 40))
refused "l1_size too small for the virtual size" "$img" "too small"

# --- refcount table ---
img=$(mk rt_past_eof); q set "$img" refcount_table_offset $((1 << 40))
refused "refcount table past end of file" "$img" "refcount table"

img=$(mk rt_unaligned); q set "$img" refcount_table_offset $(($(q get "$img" refcount_table_offset) + 4096))
refused "refcount table offset unaligned" "$img" "not cluster-aligned"

img=$(mk rt_huge); q set "$img" refcount_table_clusters 0xffffffff
refused "refcount table size overflowing" "$img" "refcount table"

# --- L2 tables ---
img=$(mk l2_past_eof); q poke64 "$img" "$(q l1 "$img" 0)" $(((1 << 40) | (1 << 63)))
refused "L2 table offset past end of file" "$img" "L2 table"

img=$(mk l2_truncated)
read -r pos l2e < <(q l2e "$img" 0)
truncate -s $((pos + 8)) "$img"
refused "file truncated inside an L2 table" "$img" "L2 table"

img=$(mk l2_unaligned)
l1pos=$(q l1 "$img" 0)
q poke64 "$img" "$l1pos" $(( $(od -An -tx8 -j "$l1pos" -N8 --endian=big "$img" | tr -d ' ' | sed 's/^/0x/') + 4096 ))
refused "L2 table offset unaligned" "$img" "not cluster-aligned"

# --- data clusters ---
img=$(mk data_truncated)
read -r pos l2e < <(q l2e "$img" $((3 << 20)))
truncate -s $(((l2e & 0x00fffffffffffe00) + 4096)) "$img"
refused "file truncated inside a data cluster" "$img" "past end of file"

img=$(mk data_past_eof)
read -r pos l2e < <(q l2e "$img" 0)
q poke64 "$img" "$pos" $(((1 << 63) | (1 << 45)))
refused "data cluster offset past end of file" "$img" "data cluster"

img=$(mk data_unaligned)
read -r pos l2e < <(q l2e "$img" 0)
q poke64 "$img" "$pos" $((l2e + 512))
refused "data cluster offset unaligned" "$img" "not cluster-aligned"

# --- compressed clusters ---
img=$T/zlib_garbage.qcow2; cp "$T/zlib.qcow2" "$img"
read -r pos l2e < <(q l2e "$img" 0)
host=$((l2e & ((1 << 54) - 1)))
printf 'this is not a deflate stream at all, not even close....' |
	dd of="$img" bs=1 seek=$host conv=notrunc 2>/dev/null
MAP=0 refused "zlib cluster with garbage" "$img" "compressed cluster"

img=$T/zstd_garbage.qcow2; cp "$T/zstd.qcow2" "$img"
read -r pos l2e < <(q l2e "$img" 0)
host=$((l2e & ((1 << 54) - 1)))
printf 'garbage garbage garbage garbage' | dd of="$img" bs=1 seek=$host conv=notrunc 2>/dev/null
MAP=0 refused "zstd cluster with garbage" "$img" "compressed cluster"

# A valid stream that ends before a whole cluster has come out.
img=$T/zlib_short.qcow2; cp "$T/zlib.qcow2" "$img"
read -r pos l2e < <(q l2e "$img" 0)
host=$((l2e & ((1 << 54) - 1)))
python3 -c 'import sys, zlib; c = zlib.compressobj(6, zlib.DEFLATED, -12); sys.stdout.buffer.write(c.compress(b"short" * 200) + c.flush())' |
	dd of="$img" bs=1 seek=$host conv=notrunc 2>/dev/null
MAP=0 refused "zlib cluster shorter than a cluster" "$img" "truncated"

if command -v zstd >/dev/null; then
	img=$T/zstd_short.qcow2; cp "$T/zstd.qcow2" "$img"
	read -r pos l2e < <(q l2e "$img" 0)
	host=$((l2e & ((1 << 54) - 1)))
	python3 -c 'import sys; sys.stdout.buffer.write(b"short" * 200)' | zstd -q -c |
		dd of="$img" bs=1 seek=$host conv=notrunc 2>/dev/null
	MAP=0 refused "zstd cluster shorter than a cluster" "$img" "truncated"
fi

img=$T/zlib_past_eof.qcow2; cp "$T/zlib.qcow2" "$img"
read -r pos l2e < <(q l2e "$img" 0)
q poke64 "$img" "$pos" $(((1 << 62) | (1 << 40)))
refused "compressed cluster past end of file" "$img" "past end of file"

# --- extended L2 bitmaps ---
img=$T/extl2_bad.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on "$img" 1M
qemu-io -c 'write -P 1 0 4k' "$img" >/dev/null
read -r pos l2e < <(python3 - "$img" <<'EOF'
import struct, sys
f = open(sys.argv[1], "rb"); h = f.read(48)
l1o = struct.unpack(">Q", h[40:48])[0]; f.seek(l1o)
l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
print(l2 + 8, 0)
EOF
)
q poke64 "$img" "$pos" 0x0000000100000001
refused "subcluster both allocated and zero" "$img" "both allocated and zero"

# --- backing files ---
qemu-img create -q -f qcow2 "$T/b0.qcow2" 1M
qemu-img create -q -f qcow2 -b b0.qcow2 -F qcow2 "$T/a.qcow2" 1M
qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 "$T/b.qcow2" 1M
# Point a at b: a -> b -> a.
qemu-img rebase -q -u -b b.qcow2 -F qcow2 "$T/a.qcow2"
refused "backing loop a -> b -> a" "$T/a.qcow2" "loop"

qemu-img create -q -f qcow2 "$T/self.qcow2" 1M
qemu-img rebase -q -u -b self.qcow2 -F qcow2 "$T/self.qcow2"
refused "image backed by itself" "$T/self.qcow2" "loop"

qemu-img create -q -f qcow2 -u -b missing.qcow2 -F qcow2 "$T/orphan.qcow2" 1M
refused "backing file missing" "$T/orphan.qcow2" "missing.qcow2: No such file"

# A chain deeper than the limit (distinct files, so no loop).
prev=$T/deep0.qcow2
qemu-img create -q -f qcow2 "$prev" 1M
for i in $(seq 1 20); do
	qemu-img create -q -f qcow2 -u -b "deep$((i - 1)).qcow2" -F qcow2 "$T/deep$i.qcow2" 1M
done
refused "backing chain deeper than the limit" "$T/deep20.qcow2" "deeper than"
check "a chain of 10 is fine" "$SPARSYNC" map "$T/deep10.qcow2"

img=$(mk backing_long); q set "$img" backing_file_offset 512; q set "$img" backing_file_size 5000
refused "backing file name too long" "$img" "backing file name"

img=$(mk backing_outside); q set "$img" backing_file_offset 65530; q set "$img" backing_file_size 100
refused "backing file name outside the header cluster" "$img" "backing file name"

img=$T/badfmt.qcow2
qemu-img create -q -f qcow2 -u -b whatever.vmdk -F vmdk "$img" 1M
refused "backing format not supported" "$img" "vmdk"

# --- marked dirty or corrupt: read anyway, with one warning ---
for bit in 1 2; do
	name=$([ $bit = 1 ] && echo dirty || echo corrupt)
	img=$(mk "$name"); q set "$img" incompatible_features $bit
	rm -f "$T/out.raw"
	if "$SPARSYNC" copy -q "$img" "$T/out.raw" 2>"$T/stderr" && qemu-img compare -q "$good" "$T/out.raw" &&
		[ "$(wc -l <"$T/stderr")" -eq 1 ] && grep -q "$name" "$T/stderr"; then
		pass "$name image is read, with one warning: $(cat "$T/stderr")"
	else
		fail "$name image is read with one warning"; sed 's/^/    | /' "$T/stderr"
	fi
done
rm -f "$T/out.raw"

#!/bin/bash
# qcow2 reader: for every image shape qemu can make, `sparsync copy X.qcow2
# out.raw` must give a raw that `qemu-img compare` finds identical, and
# `sparsync map --json` must agree with `qemu-img map` on which bytes hold
# data. Also: holes are never read, backing chains, format forcing.
. "$(dirname "$0")/../lib.sh"

command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || {
	fail "qemu-img and qemu-io are needed (apt-get install qemu-utils)"
	exit 0
}

# verify NAME IMAGE: copy to raw, compare contents, compare data ranges.
verify() {
	local name=$1 img=$2 out=$T/$1.out.raw
	rm -f "$out"
	check "$name: copy to raw" "$SPARSYNC" copy -q "$img" "$out"
	check "$name: qemu-img compare" qemu-img compare -q "$img" "$out"
	qemu_data_ranges "$img" >"$T/$name.qemu" 2>"$T/$name.qemu.err"
	sparsync_data_ranges "$img" >"$T/$name.ours" 2>"$T/$name.ours.err"
	if [ -s "$T/$name.qemu.err" ] || [ -s "$T/$name.ours.err" ]; then
		fail "$name: map failed"; cat "$T/$name.qemu.err" "$T/$name.ours.err" | sed 's/^/    | /'
	elif cmp -s "$T/$name.qemu" "$T/$name.ours"; then
		pass "$name: map data ranges equal qemu-img map"
	else
		fail "$name: map data ranges differ from qemu-img map"
		diff "$T/$name.qemu" "$T/$name.ours" | head -20 | sed 's/^/    | /'
	fi
	rm -f "$out"
}

# qio IMAGE CMD...: run qemu-io commands on IMAGE, quietly.
qio() {
	local img=$1; shift
	local args=()
	for c in "$@"; do args+=(-c "$c"); done
	qemu-io -f qcow2 "${args[@]}" "$img" >"$T/.qio" 2>&1 || { cat "$T/.qio"; return 1; }
}

# The common pattern: data, zeros (plain and over an allocated cluster),
# a discard, and writes that are not cluster-aligned.
pattern() {
	qio "$1" 'write -P 0xab 0 1M' 'write -z 2M 1M' 'write -P 0x11 3M 1M' 'write -z 3M 512k' \
		'write -P 0xcd 5M 2M' 'discard 6M 512k' 'write -P 0x22 8200k 12k' \
		'write -P 0x33 12345k 1k'
}

# shape NAME CREATE-OPTIONS...: a 16 MiB image in that shape with the pattern.
shape() {
	local name=$1; shift
	local img=$T/$name.qcow2
	if ! qemu-img create -q -f qcow2 "$@" "$img" 16M || ! pattern "$img"; then
		fail "$name: could not make the image"; return
	fi
	verify "$name" "$img"
}

shape v2 -o compat=0.10
shape v3 -o compat=1.1
shape c512 -o cluster_size=512
shape c2m -o cluster_size=2M
shape refcount1 -o refcount_bits=1
shape refcount64 -o refcount_bits=64
shape lazy -o lazy_refcounts=on
shape extl2 -o extended_l2=on,cluster_size=128k
# Subclusters of 4 KiB: data, zeros and holes inside one cluster.
img=$T/extl2_4k.qcow2
if qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k "$img" 4M &&
	qio "$img" 'write -P 0x44 8k 4k' 'write -P 0x45 20k 8k' 'write -z 40k 4k' \
		'write -P 0x46 128k 128k' 'write -z 140k 8k' 'discard 160k 32k' \
		'write -P 0x47 1000k 4k'; then
	verify extl2_4k "$img"
else
	fail "extl2_4k: could not make the image"
fi
# Full preallocation: every cluster allocated in the file.
img=$T/prealloc.qcow2
if qemu-img create -q -f qcow2 -o preallocation=metadata "$img" 8M &&
	qio "$img" 'write -P 0x55 1M 1M' 'write -z 4M 1M'; then
	verify prealloc "$img"
else
	fail "prealloc: could not make the image"
fi

# Compressed clusters: a raw with compressible, random and zero parts whose
# size is not a multiple of the cluster size.
src=$T/src.raw
python3 - "$src" <<'EOF'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.write(b"".join(b"compressible line %08d\n" % i for i in range(80000))[:2 << 20])
    f.write(os.urandom(1 << 20))
    f.write(bytes(1 << 20))
    f.write(b"x" * (3 << 20) + b"tail" * 1000)
    f.truncate(f.tell() + 512 - f.tell() % 512)
EOF
for codec in zlib zstd; do
	for cs in 64k 4k 2M; do
		name=${codec}_$cs
		img=$T/$name.qcow2
		if qemu-img convert -q -c -O qcow2 -o compression_type=$codec,cluster_size=$cs \
			"$src" "$img" && qio "$img" 'write -P 0x66 4M 64k' 'write -z 5M 64k'; then
			verify "$name" "$img"
		else
			fail "$name: could not make the image"
		fi
	done
done
# qemu-io can write single compressed clusters over earlier data too.
img=$T/zstd_io.qcow2
if qemu-img create -q -f qcow2 -o compression_type=zstd "$img" 4M &&
	qio "$img" 'write -c -P 0x77 0 64k' 'write -c -P 0x78 128k 128k' 'write -c -z 1M 64k'; then
	verify zstd_io "$img"
else
	fail "zstd_io: could not make the image"
fi

# A two-level backing chain: base (8 MiB, shorter than the overlays), mid
# puts zero clusters and new data over base data, top adds its own. Names
# are relative, so the chain must resolve against each overlay's directory.
mkdir -p "$T/chain/sub"
(
	cd "$T/chain" &&
	qemu-img create -q -f qcow2 sub/base.qcow2 8M &&
	qio sub/base.qcow2 'write -P 0xa1 0 4M' 'write -P 0xa2 6M 2M' &&
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 sub/mid.qcow2 16M &&
	qio sub/mid.qcow2 'write -z 1M 1M' 'write -P 0xb1 3M 1M' 'write -P 0xb2 9M 1M' \
		'write -z 7M 64k' &&
	qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 top.qcow2 24M &&
	qio top.qcow2 'write -P 0xc1 2M 512k' 'write -z 6M 512k' 'write -P 0xc2 20M 1M'
) >"$T/.chain" 2>&1 || { fail "chain: could not make the images"; cat "$T/.chain"; }
(cd / && verify chain "$T/chain/top.qcow2")
verify chain_mid "$T/chain/sub/mid.qcow2"

# A raw backing file, found through the backing-format extension, and one
# without the extension (format detected).
qemu-img create -q -f raw "$T/chain/base.raw" 6M
printf 'raw base data' | dd of="$T/chain/base.raw" bs=1 seek=$((5 << 20)) conv=notrunc 2>/dev/null
dd if=/dev/urandom of="$T/chain/base.raw" bs=64k count=8 conv=notrunc 2>/dev/null
(cd "$T/chain" && qemu-img create -q -f qcow2 -b base.raw -F raw rawtop.qcow2 10M &&
	qio rawtop.qcow2 'write -P 0xd1 256k 64k' 'write -z 320k 64k')
verify raw_backing "$T/chain/rawtop.qcow2"
(cd "$T/chain" && qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 nofmt.qcow2 24M &&
	python3 - nofmt.qcow2 <<'EOF'
# Remove the backing format extension (type 0xe2792aca) by retyping it as
# an unknown one, which readers must skip.
import struct, sys
f = open(sys.argv[1], "r+b"); h = f.read(4096)
pos = struct.unpack(">I", h[100:104])[0]
while True:
    t, l = struct.unpack(">II", h[pos:pos + 8])
    if t == 0: break
    if t == 0xe2792aca:
        f.seek(pos); f.write(struct.pack(">I", 0x12345678))
    pos += 8 + (l + 7) // 8 * 8
EOF
)
verify backing_detected "$T/chain/nofmt.qcow2"

# Format forcing: -f raw reads the qcow2 file itself; -f qcow2 on a raw fails.
check "map -f raw on a qcow2 file" "$SPARSYNC" map -f raw "$T/v3.qcow2"
check_fails "map -f qcow2 on a raw file" "$SPARSYNC" map -f qcow2 "$src"
if last_output | grep -q "not a qcow2"; then pass "-f qcow2 on raw says why"; else
	fail "-f qcow2 on raw says why"; last_output | sed 's/^/    | /'; fi

# Holes are never read: a 64 GiB image holding 2 MiB reads well under 4 MiB.
img=$T/big.qcow2
qemu-img create -q -f qcow2 "$img" 64G && qio "$img" 'write -P 0x99 1G 1M' 'write -P 0x9a 40G 1M'
"$SPARSYNC" copy --json "$img" "$T/big.raw" >"$T/big.json" 2>"$T/big.err"
read_bytes=$(json_field bytes_read <"$T/big.json")
if [ -n "$read_bytes" ] && [ "$read_bytes" -ge $((2 << 20)) ] && [ "$read_bytes" -lt $((4 << 20)) ]; then
	pass "64 GiB image with 2 MiB of data reads $read_bytes bytes"
else
	fail "64 GiB image with 2 MiB of data reads '${read_bytes}' bytes"
	sed 's/^/    | /' "$T/big.err" "$T/big.json"
fi
check "big: qemu-img compare" qemu-img compare -q "$img" "$T/big.raw"
rm -f "$T/big.raw"
verify big "$img"

# Scale: 8 GiB, 512 MiB of data in 1 MiB pieces spread out (skipped under
# the sanitizers: slow there, and the small shapes cover the same code).
if [ -z "${SANITIZER:-}" ]; then
	img=$T/scale.qcow2
	qemu-img create -q -f qcow2 "$img" 8G
	cmds=()
	for i in $(seq 0 511); do cmds+=("write -P $((i % 250 + 1)) $((i * 16 + i % 7))M 1M"); done
	qio "$img" "${cmds[@]}"
	verify scale "$img"
fi

#!/bin/bash
# Rebuild the seed corpora from scratch: small valid qcow2 images made by
# qemu-img/qemu-io (512-byte clusters to keep them a few KB), and small
# sparsync streams made by ./sparsync (run again whenever the protocol
# changes). Regression inputs (regress-*) are kept as they are. Streams are
# named *.stream: .gitignore drops *.sps.
#   bash tests/fuzz/make_corpus.sh [qcow2|protocol]...
set -eu
TOP=$(cd "$(dirname "$0")/../.." && pwd)
S=${SPARSYNC:-$TOP/sparsync}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
what=${*:-qcow2 protocol}

if [[ " $what " == *" qcow2 "* ]]; then
	out=$TOP/tests/fuzz/corpus_qcow2
	mkdir -p "$out"; find "$out" -name '*.qcow2' -delete
	Q="qemu-img create -q -f qcow2"
	io() { local f=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done; qemu-io -f qcow2 "${a[@]}" "$f" >/dev/null; }
	$Q -o cluster_size=512 v3.qcow2 64K
	io v3.qcow2 "write -q -P 0xaa 0 2k" "write -q -P 0x11 9k 1k" "write -q -z 20k 2k"
	$Q -o cluster_size=512,compat=0.10 v2.qcow2 64K
	io v2.qcow2 "write -q -P 0xbb 512 1k" "write -q -P 0x22 33k 512"
	$Q -o cluster_size=512 zeroflag.qcow2 32K      # zero clusters, with and without a host cluster
	io zeroflag.qcow2 "write -q -P 0xcc 0 4k" "write -q -z 1k 2k" "write -q -z -u 8k 1k"
	$Q -o cluster_size=512 zl.qcow2 32K            # deflate-compressed clusters
	io zl.qcow2 "write -q -c -P 0x5a 0 512" "write -q -c -P 0x33 2k 512" "write -q -P 7 4k 512"
	$Q -o cluster_size=512,compression_type=zstd zs.qcow2 32K
	io zs.qcow2 "write -q -c -P 0x5a 0 512" "write -q -c -P 0x44 1k 512"
	$Q -o cluster_size=512,refcount_bits=1 rc1.qcow2 64K
	io rc1.qcow2 "write -q -P 5 0 1k"
	# Backing chains: the fuzzer's directory holds b.qcow2 and b.raw, and
	# the input itself is f.qcow2 (so loop.qcow2 is a backing loop).
	$Q -o cluster_size=512 b.qcow2 64K
	io b.qcow2 "write -q -P 1 0 4k"
	$Q -o cluster_size=512 -b b.qcow2 -F qcow2 ovl.qcow2 64K
	io ovl.qcow2 "write -q -P 2 1k 1k" "write -q -z 3k 512"
	truncate -s 1M b.raw
	$Q -o cluster_size=512 -b b.raw -F raw ovlraw.qcow2 1M
	io ovlraw.qcow2 "write -q -P 4 64k 1k"
	$Q -u -o cluster_size=512 -b f.qcow2 -F qcow2 loop.qcow2 64K
	# Extended L2 needs 16 KiB clusters: the one large seed (~100 KB).
	$Q -o cluster_size=16k,extended_l2=on extl2.qcow2 64K
	io extl2.qcow2 "write -q -P 0x77 0 1k" "write -q -z 2k 1k" "write -q -P 3 20k 512"
	# Persistent dirty bitmaps: b0 (512-byte granularity, dirty), b1 (64 KiB).
	$Q -o cluster_size=512 bm.qcow2 64K
	io bm.qcow2 "write -q -P 1 0 1k"
	qemu-img bitmap --add -g 512 bm.qcow2 b0
	qemu-img bitmap --add bm.qcow2 b1
	io bm.qcow2 "write -q -P 2 4k 1k" "write -q -z 40k 2k"
	cp ./*.qcow2 "$out/"
fi

if [[ " $what " == *" protocol "* ]]; then
	out=$TOP/tests/fuzz/corpus_protocol
	mkdir -p "$out"; find "$out" -name '*.stream' -delete
	truncate -s 64K a.raw
	python3 - <<'PY'
with open("a.raw", "r+b") as f:
    f.seek(4096); f.write(b"hello sparse world " * 60)
    f.seek(20000); f.write(bytes(range(256)) * 3)
    f.seek(40960); f.write(b"\0" * 4096)
    f.seek(65536 - 10); f.write(b"tail!tail!")
PY
	truncate -s 12345 odd.raw
	printf 'xyz%.0s' $(seq 200) | dd of=odd.raw bs=1 seek=5000 conv=notrunc status=none
	: >empty.raw
	truncate -s 1G holes.raw
	echo data | dd of=holes.raw bs=1 seek=$((700 << 20)) conv=notrunc status=none
	qemu-img create -q -f qcow2 -o cluster_size=512 q.qcow2 64K
	qemu-io -f qcow2 -c "write -q -P 0xaa 0 2k" -c "write -q -z 20k 2k" q.qcow2 >/dev/null
	"$S" copy a.raw - >"$out/zstd.stream"
	"$S" copy --compress lz4 a.raw - >"$out/lz4.stream"
	"$S" copy --compress none a.raw - >"$out/none.stream"
	"$S" copy odd.raw - >"$out/odd.stream"
	"$S" copy empty.raw - >"$out/empty.stream"
	"$S" copy holes.raw - >"$out/holes.stream"
	"$S" copy --compress none q.qcow2 - >"$out/fromqcow2.stream"
	# What a push sends (no stream flag in the hello), captured by an -e
	# command that tees the client's bytes on their way to serve.
	cat >tee-ssh <<SH
#!/bin/sh
while [ \$# -gt 1 ]; do shift; done
tee "$out/push.stream" | sh -c "\$1"
SH
	chmod +x tee-ssh
	"$S" copy -q -e ./tee-ssh --remote-path "$S" odd.raw "h:$W/r.raw"
	cmp odd.raw r.raw
	# What a receiver answers (hello, HASHES list, ACK or ERROR): the
	# fuzzer feeds these to the sender. Captured on their way back.
	cat >reply-ssh <<SH
#!/bin/sh
while [ \$# -gt 1 ]; do shift; done
sh -c "\$1" | tee "$W/reply.bin"
SH
	chmod +x reply-ssh
	"$S" copy -q -e ./reply-ssh --remote-path "$S" a.raw "h:$W/new.raw"
	cp reply.bin "$out/reply-fresh.stream"
	cp a.raw old.raw
	printf 'changed' | dd of=old.raw bs=1 seek=30000 conv=notrunc status=none
	truncate -s 100K old.raw
	"$S" copy -q -e ./reply-ssh --remote-path "$S" a.raw "h:$W/old.raw"
	cp reply.bin "$out/reply-sync.stream"
	cmp a.raw old.raw
	"$S" copy -q -e ./reply-ssh --remote-path "$S" a.raw "h:$W/no/such/dir.raw" 2>/dev/null || true
	cp reply.bin "$out/reply-error.stream"
fi
ls -la "$TOP"/tests/fuzz/corpus_*

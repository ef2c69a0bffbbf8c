#!/bin/bash
# `make demo`: build a sample sparse disk image (an ext4 filesystem holding
# /usr/share/doc inside a 4 GiB file), copy it with sparsync, and show what
# happened: only the data was read, holes stayed holes.
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
S=$TOP/sparsync
D=$(mktemp -d /tmp/sparsync-demo.XXXXXX)
trap 'rm -rf "$D"' EXIT

echo "== making a 4 GiB sparse ext4 image from /usr/share/doc"
truncate -s 4G "$D/disk.raw"
mke2fs -q -t ext4 -d /usr/share/doc -F "$D/disk.raw"
echo "   apparent size $(du -h --apparent-size "$D/disk.raw" | cut -f1), allocated $(du -h "$D/disk.raw" | cut -f1)"

echo "== sparsync map (first lines)"
"$S" map "$D/disk.raw" | head -6

echo "== sparsync copy disk.raw copy.raw"
"$S" copy --json "$D/disk.raw" "$D/copy.raw" | tee "$D/summary.json"
cmp "$D/disk.raw" "$D/copy.raw" && echo "   cmp: identical"
echo "   copy allocated $(du -h "$D/copy.raw" | cut -f1)"

if "$S" copy -q "$D/disk.raw" "$D/disk.qcow2" 2>/dev/null; then
	echo "== sparsync copy disk.raw disk.qcow2"
	echo "   qcow2 file size $(du -h --apparent-size "$D/disk.qcow2" | cut -f1)"
	qemu-img check -q "$D/disk.qcow2" && echo "   qemu-img check: clean"
fi
if "$S" copy -q "$D/disk.raw" - >"$D/disk.sps" 2>/dev/null; then
	echo "== sparsync copy disk.raw - > disk.sps (portable sparse archive)"
	echo "   archive size $(du -h --apparent-size "$D/disk.sps" | cut -f1)"
fi
echo "== summary (JSON above): bytes_read is the data only, never the holes"

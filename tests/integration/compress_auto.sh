#!/bin/bash
# --compress auto (the default over the network): the zstd level follows
# the link. Through a real sshd: a link held to 512 KiB/s by --bwlimit makes
# it compress harder than where it starts (zstd 1), and -v and --json say
# which levels carried how much; a pinned codec stays pinned; a pull (the
# remote serve adapting) and a stream are right; junk is a usage error.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
sshd_start || exit 0

R=$T/remote
mkdir -p "$R"
SSHO=$(sparsync_ssh_opts)
SP="$SPARSYNC copy $SSHO --remote-path $SPARSYNC"
# levels: the "compress" object of the last --json output as "NAME IN OUT" lines
levels() {
	/usr/bin/python3 -c '
import json,sys
for line in sys.stdin:
    line=line.strip()
    if line.startswith("{"):
        c=json.loads(line).get("compress")
        if c:
            print("mode", c["mode"], c["changes"])
            for k,v in c["levels"].items(): print(k, v["in"], v["out"])' <"$T/.last"
}

# 8 MiB of text (compressible, so every level has work to do) in a 64 MiB
# sparse image.
img=$T/img.raw
truncate -s 64M "$img"
seq 1 2000000 | head -c 8M | dd of="$img" bs=1M seek=4 conv=notrunc status=none
DATA=$((8 * MiB))

check "auto over a 512 KiB/s link" timeout 120 $SP -v --json --bwlimit 512K "$img" "127.0.0.1:$R/a.raw"
levels >"$T/lv"
cp "$T/.last" "$T/auto.out"
check "  identical" cmp "$img" "$R/a.raw"
check "  --json says auto" grep -q '^mode auto' "$T/lv"
check "  it compressed harder than zstd 1 once the link was the bottleneck" \
	awk '$1 ~ /^zstd:/ && substr($1, 6) + 0 > 1 && $2 > 0 { ok = 1 } END { exit !ok }' "$T/lv"
check "  the levels carried all the data" \
	awk -v d=$DATA '$1 != "mode" { s += $2 } END { exit s != d }' "$T/lv"
cp "$T/auto.out" "$T/.last"
said "  -v says why it changed" "compression: zstd:[0-9]+ \\(the link is the bottleneck"
said "  -v sums the levels up" "wire compression auto \\([0-9]+ changes?\\): "

check "--compress zstd:1 stays at zstd 1" $SP --json --bwlimit 512K --compress zstd:1 "$img" "127.0.0.1:$R/b.raw"
levels >"$T/lv"
check "  fixed, one level" test "$(grep -v '^mode' "$T/lv" | cut -d' ' -f1,2)" = "zstd:1 $DATA"
check "  --json says fixed" grep -q '^mode fixed 0' "$T/lv"
check "  identical" cmp "$img" "$R/b.raw"
check "--compress lz4" $SP --json --compress lz4 "$img" "127.0.0.1:$R/c.raw"
levels >"$T/lv"
check "  lz4 only" test "$(grep -v '^mode' "$T/lv" | cut -d' ' -f1)" = lz4
check "  identical" cmp "$img" "$R/c.raw"
check "--compress none" $SP --json --compress none "$img" "127.0.0.1:$R/d.raw"
levels >"$T/lv"
check "  sent as it is" test "$(grep -v '^mode' "$T/lv")" = "none $DATA $DATA"
check "  identical" cmp "$img" "$R/d.raw"

# The sending side of a pull is the remote serve: it adapts the same way.
check "a pull, auto at the remote serve, over a 512 KiB/s link" timeout 120 \
	$SP -v --bwlimit 512K "127.0.0.1:$R/a.raw" "$T/pulled.raw"
said "  the client's -v shows the levels the remote serve used" "^sparsync serve: .*wire compression auto \\([0-9]+ changes?\\): .*zstd:"
check "  identical" cmp "$img" "$T/pulled.raw"
# A stream is an archive: no link to follow, zstd 1.
check "a stream keeps zstd 1" sh -c "'$SPARSYNC' copy --json '$img' - >'$T/s.sps'"
levels >"$T/lv"
check "  zstd:1 only" test "$(grep -v '^mode' "$T/lv" | cut -d' ' -f1)" = zstd:1
check "  and restores" sh -c "'$SPARSYNC' copy -q - '$T/from_s.raw' <'$T/s.sps'"
check "  identical" cmp "$img" "$T/from_s.raw"

$SP --compress fast "$img" "127.0.0.1:$R/e.raw" >"$T/.last" 2>&1
rc=$?
said "--compress fast: one line naming the option and the choices" "--compress fast: expected auto, zstd"
check "  a usage error (exit $rc)" test $rc = 2
check "  nothing created" test ! -e "$R/e.raw"

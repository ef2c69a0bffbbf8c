#!/bin/bash
# Protocol streams as portable sparse archives (issue 5): `copy IMG - >
# a.sps` and `copy - OUT < a.sps` give an identical, sparse image; the
# archive is about the compressed data; truncated, corrupted, foreign and
# random streams are refused with exit 1 and nothing left behind.
. "$(dirname "$0")/../lib.sh"



# An image with holes, compressible text, random data, a zero-filled block
# and an unaligned tail.
img=$T/src.raw
truncate -s $((48 * MiB + 777)) "$img"
python3 - "$img" <<'EOF'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(1 << 20); f.write(b"sparse disk images compress well. " * 60000)
    f.seek(9 << 20); f.write(os.urandom(2 << 20))
    f.seek(16 << 20); f.write(b"\0" * (3 << 20))     # allocated zeros
    f.seek((30 << 20) + 4097); f.write(b"x" * 5000)  # unaligned data
    f.seek((48 << 20) + 100); f.write(b"tail" * 100)   # runs into the tail
EOF

check "stream out" sh -c "'$SPARSYNC' copy --json '$img' - >'$T/a.sps' 2>'$T/a.json'"
check "stream in" "$SPARSYNC" copy --json - "$T/out.raw" <"$T/a.sps"
last_output >"$T/in.json"
check "restored image is cmp-identical" cmp "$img" "$T/out.raw"
check "restored image is sparse (zero block became a hole)" \
	test "$(allocated "$T/out.raw")" -lt "$(allocated "$img")"
check "restored data ranges match the source's non-zero data" \
	test "$(allocated "$T/out.raw")" -le $((8 * MiB))
check "archive is smaller than the allocated data" \
	test "$(stat -c %s "$T/a.sps")" -lt "$(allocated "$img")"
check "--json bytes_sent is the archive size" \
	test "$(json_field bytes_sent <"$T/a.json")" = "$(stat -c %s "$T/a.sps")"
check "--json bytes_received is the archive size" \
	test "$(json_field bytes_received <"$T/in.json")" = "$(stat -c %s "$T/a.sps")"
check "no temporary files after success" no_temp_files "$T"

# Every wire codec round-trips.
for c in none lz4 zstd:3; do
	rm -f "$T/c.raw"
	check "--compress $c round trip" sh -c "'$SPARSYNC' copy --compress $c '$img' - | '$SPARSYNC' copy - '$T/c.raw' && cmp '$img' '$T/c.raw'"
done
check_fails "--compress gzip refused" "$SPARSYNC" copy --compress gzip "$img" -
check "uncompressed archive is larger than the zstd one" \
	sh -c "test \$('$SPARSYNC' copy --compress none '$img' - | wc -c) -gt $(stat -c %s "$T/a.sps")"

# A stream replaces an existing destination.
cp "$T/a.sps" "$T/other.raw"
check "stream into an existing file" sh -c "'$SPARSYNC' copy - '$T/other.raw' <'$T/a.sps' && cmp '$img' '$T/other.raw'"

# Truncated at half: refused, no destination, no temporary file.
size=$(stat -c %s "$T/a.sps")
head -c $((size / 2)) "$T/a.sps" >"$T/half.sps"
rm -f "$T/out2.raw"
check_fails "truncated stream refused" "$SPARSYNC" copy - "$T/out2.raw" <"$T/half.sps"
said "truncated stream says so" "truncated stream"
check "no destination after a truncated stream" test ! -e "$T/out2.raw"
check "no temporary file after a truncated stream" no_temp_files "$T"
head -c $((size - 1)) "$T/a.sps" >"$T/short.sps"
check_fails "stream missing its last byte refused" "$SPARSYNC" copy - "$T/out2.raw" <"$T/short.sps"
check "no destination after a short stream" test ! -e "$T/out2.raw"

# One flipped byte inside a DATA payload: refused.
python3 - "$T/a.sps" "$T/flip.sps" <<'EOF'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
pos = 28                                    # after the hello
while pos + 16 <= len(b):
    typ, blen = b[pos], struct.unpack_from("<I", b, pos + 4)[0]
    if typ == 2 and blen > 40 + 100:        # a DATA record with a payload
        b[pos + 16 + 40 + (blen - 40) // 2] ^= 0x01
        break
    pos += 16 + blen
else:
    sys.exit("no DATA record found")
open(sys.argv[2], "wb").write(b)
EOF
check_fails "flipped payload byte refused" "$SPARSYNC" copy - "$T/out3.raw" <"$T/flip.sps"
said "flipped byte: checksum or corrupt data reported" "checksum mismatch|corrupt"
check "no destination after a flipped byte" test ! -e "$T/out3.raw"
check "no temporary file after a flipped byte" no_temp_files "$T"

# A record lost from the middle: the END digest notices.
python3 - "$T/a.sps" "$T/drop.sps" <<'EOF'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
pos, n = 28, 0
while pos + 16 <= len(b):
    typ, blen = b[pos], struct.unpack_from("<I", b, pos + 4)[0]
    if typ == 3:                            # drop the first ZERO record
        del b[pos:pos + 16 + blen]
        break
    pos += 16 + blen
open(sys.argv[2], "wb").write(b)
EOF
check_fails "stream with a dropped record refused" "$SPARSYNC" copy - "$T/out4.raw" <"$T/drop.sps"
check "no destination after a dropped record" test ! -e "$T/out4.raw"

# Another protocol version: a clear refusal.
python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[8]=2; open(sys.argv[2],"wb").write(b)' \
	"$T/a.sps" "$T/v2.sps"
check_fails "stream of protocol 2 refused" "$SPARSYNC" copy - "$T/out5.raw" <"$T/v2.sps"
said "version refusal names both versions" "speaks protocol 2, we speak 1"

# Not a stream at all.
check_fails "an image is not a stream" "$SPARSYNC" copy - "$T/out6.raw" <"$img"
said "bad magic reported" "not a sparsync stream"
check_fails "empty input refused" "$SPARSYNC" copy - "$T/out6.raw" </dev/null
check "no destination after bad input" test ! -e "$T/out6.raw"

# Random bytes into serve and into copy: a clean error, never a crash/hang.
head -c 200000 /dev/urandom >"$T/random.bin"
check_fails "random bytes into serve --receive" \
	timeout 30 sh -c "'$SPARSYNC' serve --receive '$T/out7.raw' <'$T/random.bin' >/dev/null"
said "serve names the problem" "^sparsync serve: client: not a sparsync stream"
check "serve printed exactly one line" test "$(wc -l <"$T/.out")" = 1
check "no destination from random bytes" test ! -e "$T/out7.raw"
# Random records after a valid hello reach the record decoder.
for i in 1 2 3 4 5; do
	{ head -c 28 "$T/a.sps"; head -c 100000 /dev/urandom; } >"$T/rr.bin"
	check_fails "random records #$i refused" timeout 30 "$SPARSYNC" copy - "$T/out8.raw" <"$T/rr.bin"
done
# ... and a valid IMAGE record followed by random bytes.
python3 - "$T/a.sps" "$T/ri.bin" <<'EOF'
import os, sys
b = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(b[:28 + 16 + 16] + os.urandom(300000))
EOF
check_fails "random bytes after IMAGE refused" timeout 30 "$SPARSYNC" copy - "$T/out8.raw" <"$T/ri.bin"
check "no destination from random records" test ! -e "$T/out8.raw"
check "no temporary file from random records" no_temp_files "$T"

# Serve given a stream archive (no peer answering) still restores it.
check "serve --receive restores an archive" \
	sh -c "'$SPARSYNC' serve --receive '$T/out9.raw' <'$T/a.sps' >/dev/null && cmp '$img' '$T/out9.raw'"

# qcow2 through a stream, when this build writes qcow2.
if "$SPARSYNC" copy "$img" "$T/src.qcow2" >/dev/null 2>&1 && qemu-img check -q "$T/src.qcow2" >/dev/null 2>&1; then
	check "qcow2 source to a stream" sh -c "'$SPARSYNC' copy '$T/src.qcow2' - >'$T/q.sps'"
	check "qcow2 stream restored as qcow2 (format from the stream)" "$SPARSYNC" copy - "$T/q.out" <"$T/q.sps"
	check "restored qcow2 is qcow2" sh -c "qemu-img info '$T/q.out' | grep -q 'file format: qcow2'"
	check "restored qcow2 passes qemu-img check" qemu-img check -q "$T/q.out"
	check "restored qcow2 identical" qemu-img compare -q "$T/src.qcow2" "$T/q.out"
	check "qcow2 stream restored as raw" "$SPARSYNC" copy - "$T/q.raw" <"$T/q.sps"
	check "qcow2 stream as raw identical" qemu-img compare -q -f raw -F raw "$img" "$T/q.raw"
	check "raw stream restored with -O qcow2" "$SPARSYNC" copy -O qcow2 - "$T/r.q" <"$T/a.sps"
	check "-O qcow2 restore identical" qemu-img compare -q -f raw -F qcow2 "$img" "$T/r.q"
else
	fail "writing a qcow2 failed, so the qcow2 transfers could not be tested"
fi

# 8 GiB of trailing hole arrives sparse and whole.
if [ "${SANITIZER:-0}" != 1 ]; then
	big=$T/big.raw
	truncate -s 8G "$big"
	dd if=/dev/urandom of="$big" bs=1M count=2 seek=1 conv=notrunc status=none
	check "8 GiB image through a stream" sh -c "'$SPARSYNC' copy '$big' - | '$SPARSYNC' copy - '$T/big2.raw'"
	check "8 GiB image keeps its size" test "$(stat -c %s "$T/big2.raw")" = $((8 << 30))
	check "8 GiB image arrives sparse" test "$(allocated "$T/big2.raw")" -le $((4 * MiB))
	check "8 GiB image identical (qemu-img compare)" qemu-img compare -q -f raw -F raw "$big" "$T/big2.raw"
	rm -f "$big" "$T/big2.raw"
fi

# A stream kept in a file is read as the stream it is when named as SRC,
# never copied as a raw image of its bytes; where an image is needed it is
# refused with a line saying how to restore it.
check "a .sps file as SRC restores the image" "$SPARSYNC" copy -q "$T/a.sps" "$T/from_file.raw"
check "  identical" cmp "$img" "$T/from_file.raw"
check_fails "map of a stream file" "$SPARSYNC" map "$T/a.sps"
said "  says it is a stream and how to restore it" "a.sps: is a sparsync stream, not an image: 'sparsync copy .*a.sps OUT' restores it"
check_fails "verify against a stream file" "$SPARSYNC" verify "$img" "$T/a.sps"
said "  says it is a stream" "is a sparsync stream"
check "-f raw copies its bytes as they are" "$SPARSYNC" copy -q -f raw "$T/a.sps" "$T/bytes.raw"
check "  byte for byte" cmp "$T/a.sps" "$T/bytes.raw"


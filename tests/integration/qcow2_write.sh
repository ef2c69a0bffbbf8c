#!/bin/bash
# qcow2 writer (issue 4): conversions with every cluster size and codec,
# odd virtual sizes, compactness, shrink, in-place sync, and bad input that
# must leave no half-written image. Every result goes through qemu-img.
source "$(dirname "$0")/../lib.sh"

command -v qemu-img >/dev/null || { fail "qemu-img is not installed"; exit 0; }

put_text() { yes "sparsync qcow2 writer test line $3" | head -c "$2" | dd of="$1" bs=4096 seek=$(($3 / 4096)) conv=notrunc status=none; }

# qcheck NAME IMAGE REF: qemu-img check clean (no errors, no leaks) and the
# content equals REF.
qcheck() {
	local name=$1 img=$2 ref=$3 out
	if ! out=$(qemu-img check "$img" 2>&1); then
		fail "$name: qemu-img check: $(echo "$out" | head -3 | tr '\n' ' ')"
		return 1
	fi
	if ! out=$(qemu-img compare "$ref" "$img" 2>&1); then
		fail "$name: qemu-img compare: $(echo "$out" | tail -1)"
		return 1
	fi
	pass "$name"
}

# Sources: 64 MiB with random, text and zero-filled data; an odd virtual
# size with data right at its end.
SRC=$T/src.raw
truncate -s $((64 * MiB)) "$SRC"
put_random "$SRC" $((3 * MiB)) $((1 * MiB))
put_text "$SRC" $((2 * MiB)) $((10 * MiB))
dd if=/dev/zero of="$SRC" bs=1M seek=20 count=2 conv=notrunc status=none
put_random "$SRC" 12288 $((40 * MiB + 4096))
put_text "$SRC" 8192 $((64 * MiB - 8192))
ODD=$T/odd.raw
truncate -s 1000000007 "$ODD"
put_random "$ODD" $MiB $((7 * MiB))
printf 'the last bytes' | dd of="$ODD" bs=1 seek=$((1000000007 - 14)) conv=notrunc status=none

# ---- conversions --------------------------------------------------------
for codec in none zstd zlib; do
	copt=(); [ $codec != none ] && copt=(-c $codec)
	for cs in 512 64K 2M; do
		# Under the sanitizer the codecs run with one cluster size.
		[ -n "${SANITIZER:-}" ] && [ $codec != none ] && [ $cs != 64K ] && continue
		tag="$codec/$cs"
		for s in src odd; do
			ref=$T/$s.raw
			q=$T/$s-$codec-$cs.qcow2
			if "$SPARSYNC" copy -q "${copt[@]}" --cluster-size $cs "$ref" "$q" 2>"$T/err"; then
				qcheck "raw -> qcow2 ($tag, $s)" "$q" "$ref"
			else
				fail "raw -> qcow2 ($tag, $s): $(cat "$T/err")"
				continue
			fi
			# qcow2 -> qcow2 with another cluster size, then -> raw.
			other=4096; [ $cs = 512 ] && other=1M
			if "$SPARSYNC" copy -q "${copt[@]}" --cluster-size $other "$q" "$T/re.qcow2" 2>"$T/err"; then
				qcheck "qcow2 $cs -> qcow2 $other ($tag, $s)" "$T/re.qcow2" "$ref"
			else
				fail "qcow2 -> qcow2 ($tag, $s): $(cat "$T/err")"
			fi
			rm -f "$T/back.raw" "$T/re.qcow2"
			if "$SPARSYNC" copy -q "$q" "$T/back.raw" 2>"$T/err" &&
			   cmp -s -n "$(stat -c %s "$ref")" "$ref" "$T/back.raw" &&
			   qemu-img compare -q "$ref" "$T/back.raw"; then
				pass "qcow2 -> raw ($tag, $s)"
			else
				fail "qcow2 -> raw ($tag, $s): $(cat "$T/err")"
			fi
			rm -f "$T/back.raw"
			[ $s = odd ] && [ $codec != none ] && rm -f "$q"
		done
	done
done

q=$T/src-zstd-64K.qcow2
if [ -f "$q" ]; then
	if qemu-img info "$q" | grep -q 'compression type: zstd' &&
	   qemu-img check "$q" | grep -q 'compressed clusters' &&
	   [ "$(stat -c %s "$q")" -lt "$(stat -c %s "$T/src-none-64K.qcow2")" ]; then
		pass "-c zstd stores compressed clusters with compression_type=zstd"
	else
		fail "-c zstd image is not zstd-compressed"
	fi
fi
# QEMU's own block layer reads it.
check "qemu-io reads a sparsync qcow2" qemu-io -r -f qcow2 -c "read -P 0 $((20 * MiB)) $((2 * MiB))" "$T/src-none-64K.qcow2"
out=$(qemu-io -r -f qcow2 -c "read -P 0 $((20 * MiB)) $((2 * MiB))" "$T/src-none-64K.qcow2" 2>&1)
if echo "$out" | grep -q "Pattern verification failed"; then fail "qemu-io pattern"; fi

# Zero data is never stored: a 64 MiB image with ~5 MiB of data.
size=$(stat -c %s "$T/src-none-64K.qcow2")
if [ "$size" -lt $((6 * MiB)) ]; then pass "zero ranges are not stored ($size bytes)"; else
	fail "zero ranges stored? $size bytes for ~5 MiB of data"; fi
# A huge sparse image costs nothing.
truncate -s 1T "$T/huge.raw"
put_random "$T/huge.raw" 65536 $((512 * 1024 * MiB))
if "$SPARSYNC" copy -q "$T/huge.raw" "$T/huge.qcow2" && [ "$(stat -c %s "$T/huge.qcow2")" -lt $((2 * MiB)) ]; then
	qcheck "1 TiB sparse image -> small qcow2" "$T/huge.qcow2" "$T/huge.raw"
else
	fail "1 TiB sparse image -> qcow2"
fi
rm -f "$T"/huge.*
rm -f "$T"/odd-*.qcow2 "$T"/src-*-512.qcow2 "$T"/src-*-2M.qcow2

# ---- compactness on 3 GiB of data in 16 GiB (slow) -----------------------
gen_mixed() { # FILE: 16 GiB, 3 GiB data: random, base64 of random, text
	local f=$1 i
	truncate -s 16G "$f"
	find /usr/share -type f \( -name '*.txt' -o -name '*.html' -o -name '*.py' -o -name '*.h' \) \
		-size +2k 2>/dev/null | head -4000 | xargs cat 2>/dev/null | head -c 64M >"$f.text"
	# Too little text installed: make up numbered lines for the rest.
	[ "$(stat -c %s "$f.text")" -lt $((64 * MiB)) ] &&
		seq -f 'line %g of made-up text, more or less compressible' 1 2000000 >>"$f.text"
	for i in $(seq 0 95); do
		case $((i % 3)) in
		0) head -c 32M /dev/urandom ;;
		1) head -c 24M /dev/urandom | base64 -w 0 | head -c 32M ;;
		2) tail -c +$(((i * 1048577) % (32 * MiB) + 1)) "$f.text" | head -c 32M ;;
		esac | dd of="$f" bs=1M seek=$((i * 170)) conv=notrunc status=none
	done
	rm -f "$f.text"
}
if [ -z "${SANITIZER:-}" ]; then
	B=$T/big.raw
	gen_mixed "$B"
	data=$(allocated "$B")
	if "$SPARSYNC" copy -q -O qcow2 "$B" "$T/big.qcow2"; then
		size=$(stat -c %s "$T/big.qcow2")
		limit=$((data + data / 100 + 4 * MiB))
		if [ "$size" -le "$limit" ]; then pass "3 GiB in 16 GiB -> qcow2 of $size bytes (data $data)"; else
			fail "3 GiB -> qcow2 is $size bytes, over $limit"; fi
		qcheck "3 GiB in 16 GiB -> qcow2 checks and compares" "$T/big.qcow2" "$B"
	else
		fail "3 GiB in 16 GiB -> qcow2"
	fi
	rm -f "$T/big.qcow2"
	if "$SPARSYNC" copy -q -O qcow2 -c zstd "$B" "$T/bigz.qcow2" &&
	   qemu-img convert -c -O qcow2 "$B" "$T/bigq.qcow2"; then
		zs=$(stat -c %s "$T/bigz.qcow2") qs=$(stat -c %s "$T/bigq.qcow2")
		if [ "$zs" -lt "$qs" ]; then pass "-c zstd ($zs bytes) smaller than qemu-img -c zlib ($qs bytes)"; else
			fail "-c zstd ($zs bytes) not smaller than qemu-img -c ($qs bytes)"; fi
		qcheck "3 GiB -c zstd checks and compares" "$T/bigz.qcow2" "$B"
	else
		fail "compressed conversion of the 3 GiB image"
	fi
	rm -f "$T"/big*
fi

# ---- shrink ---------------------------------------------------------------
Z=$T/stored-zeros.qcow2
qemu-img convert -S 0 -O qcow2 "$SRC" "$Z"
before=$(stat -c %s "$Z")
if "$SPARSYNC" shrink -q "$Z"; then
	after=$(stat -c %s "$Z")
	if [ "$after" -lt $((6 * MiB)) ] && [ "$before" -gt $((64 * MiB)) ]; then
		pass "shrink: $before -> $after bytes"; else fail "shrink: $before -> $after bytes"; fi
	qcheck "shrunk image checks and compares" "$Z" "$SRC"
else
	fail "shrink of a qcow2 with stored zeros"
fi
ls -A "$T" | grep -q '\.sparsync-' && fail "shrink left a temporary file"
qemu-img convert -c -O qcow2 "$SRC" "$T/comp.qcow2"
if "$SPARSYNC" shrink -q "$T/comp.qcow2" && qemu-img check "$T/comp.qcow2" | grep -q 'compressed clusters'; then
	qcheck "shrink of a compressed image" "$T/comp.qcow2" "$SRC"
else
	fail "shrink of a compressed image"
fi

# ---- in-place sync onto an existing qcow2 ---------------------------------
D=$T/dst.qcow2
cp "$SRC" "$T/cur.raw"
"$SPARSYNC" copy -q "$T/cur.raw" "$D"
for i in 1 2 3 4 5 6 7 8; do put_random "$T/cur.raw" 4096 $((i * 7 * MiB + i * 8192)); done
fallocate -p -o $((10 * MiB)) -l $MiB "$T/cur.raw"
"$SPARSYNC" copy --json "$T/cur.raw" "$D" >"$T/json" 2>"$T/err" || fail "in-place sync: $(cat "$T/err")"
qcheck "in-place sync onto an existing qcow2" "$D" "$T/cur.raw"
w=$(json_field bytes_written <"$T/json")
if [ -n "$w" ] && [ "$w" -le $((1 * MiB)) ]; then pass "in-place sync wrote $w bytes"; else
	fail "in-place sync wrote ${w:-?} bytes (expected < 1 MiB)"; fi
"$SPARSYNC" copy --json "$T/cur.raw" "$D" >"$T/json"
w=$(json_field bytes_written <"$T/json")
[ "$w" = 0 ] && pass "unchanged re-sync writes nothing" || fail "unchanged re-sync wrote $w bytes"
# Onto an image QEMU made, growing it, then shrinking it back.
qemu-img convert -O qcow2 "$SRC" "$T/qm.qcow2"
cp "$T/cur.raw" "$T/grown.raw"
truncate -s $((200 * MiB + 1000)) "$T/grown.raw"
put_text "$T/grown.raw" 8192 $((200 * MiB - 8192))
"$SPARSYNC" copy -q "$T/grown.raw" "$T/qm.qcow2" && qcheck "in-place grow of a qemu-made qcow2" "$T/qm.qcow2" "$T/grown.raw"
"$SPARSYNC" copy -q "$SRC" "$T/qm.qcow2" && qcheck "in-place shrink back" "$T/qm.qcow2" "$SRC"
# Images that cannot be updated in place say so (and why).
qemu-img convert -c -O qcow2 "$SRC" "$T/c.qcow2"
check_fails "in-place onto a compressed qcow2 is refused" "$SPARSYNC" copy -q "$T/cur.raw" "$T/c.qcow2"
last_output | grep -q "compressed clusters" || fail "refusal does not say why: $(last_output)"
check "--whole rewrites it" "$SPARSYNC" copy -q --whole "$T/cur.raw" "$T/c.qcow2"
qcheck "--whole result" "$T/c.qcow2" "$T/cur.raw"

# ---- bad input: nothing half-written under the final name ----------------
# no_leftovers NAME DIR FINAL: the copy failed with one line, left no final
# file and no temporary one.
no_leftovers() {
	local name=$1 dir=$2 final=$3 lines
	lines=$(wc -l <"$T/.out")
	if [ -e "$final" ]; then fail "$name: $final exists after a failure"
	elif ls -A "$dir" 2>/dev/null | grep -q '\.sparsync-'; then fail "$name: temporary file left in $dir"
	elif [ "$lines" -ne 1 ]; then fail "$name: $lines lines of error output"; last_output | sed 's/^/    | /'
	else pass "$name leaves nothing behind"; fi
}
# A qcow2 source whose data clusters lie past the end of its file.
qemu-img convert -O qcow2 "$SRC" "$T/trunc.qcow2"
truncate -s $((2 * MiB)) "$T/trunc.qcow2"
mkdir -p "$T/out"
check_fails "truncated qcow2 source fails" "$SPARSYNC" copy -q "$T/trunc.qcow2" "$T/out/t.qcow2"
no_leftovers "truncated qcow2 source" "$T/out" "$T/out/t.qcow2"
# Destination in a directory that does not exist, or where files cannot be made.
check_fails "destination directory missing" "$SPARSYNC" copy -q "$SRC" "$T/nodir/x.qcow2"
no_leftovers "destination directory missing" "$T" "$T/nodir/x.qcow2"
check_fails "destination in /proc" "$SPARSYNC" copy -q "$SRC" /proc/sparsync-test.qcow2
no_leftovers "destination in /proc" /proc /proc/sparsync-test.qcow2
# Disk full: an 8 MiB tmpfs and 40 MiB of random data.
mkdir -p "$T/full"
if mount -t tmpfs -o size=8M tmpfs "$T/full" 2>/dev/null; then
	truncate -s $((64 * MiB)) "$T/rnd.raw"
	put_random "$T/rnd.raw" $((40 * MiB)) 0
	for codec in none zstd; do
		copt=(); [ $codec != none ] && copt=(-c $codec)
		# --no-space-check: the writer running out of room is the case here.
		check_fails "disk full ($codec) fails" "$SPARSYNC" copy -q --no-space-check "${copt[@]}" \
			"$T/rnd.raw" "$T/full/x.qcow2"
		said "disk full ($codec): ENOSPC reported" 'No space left on device' 
		no_leftovers "disk full ($codec)" "$T/full" "$T/full/x.qcow2"
	done
	umount "$T/full"
else
	echo "note: cannot mount a tmpfs here; disk-full case not checked"
fi
exit 0

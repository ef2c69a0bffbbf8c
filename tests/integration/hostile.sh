#!/bin/bash
# Hostile input (issue 8): random bytes, truncated streams and real streams
# patched to lie (DATA or ZERO past the virtual size, a lying decompressed
# size, unknown or unexpected record types, absurd sizes), fed to
# `sparsync serve --receive X` and `sparsync copy - X`; and a malicious
# server in pull mode. Every case must end with an error (exit 1..123, no
# crash, no hang), leave no X and no temporary file, and write nothing
# anywhere else.
. "$(dirname "$0")/../lib.sh"
TO="timeout 20"
# The receivers every stream is fed to. Under valgrind the restricted serve
# is left to the plain and ASan passes (and restricted_serve.sh's valgrind
# run): a third pass over every stream would cost minutes.
RECEIVERS="copy serve restricted"
case $SPARSYNC in *valgrind*) RECEIVERS="copy serve";; esac


# A source with compressible text, random data, zeros and an unaligned tail.
img=$T/src.raw
truncate -s $((6 * MiB + 1000)) "$img"
python3 - "$img" <<'EOF'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(0); f.write(b"a compressible line of hostile text\n" * 30000)
    f.seek(3 << 20); f.write(os.urandom(1 << 20))
    f.seek((6 << 20) + 10); f.write(b"tail" * 100)
EOF
"$SPARSYNC" copy "$img" - >"$T/zstd.sps" 2>/dev/null
"$SPARSYNC" copy --compress none "$img" - >"$T/none.sps" 2>/dev/null
"$SPARSYNC" copy --compress lz4 "$img" - >"$T/lz4.sps" 2>/dev/null
if ! [ -s "$T/zstd.sps" ] || ! "$SPARSYNC" copy - "$T/ok.raw" <"$T/zstd.sps" >/dev/null 2>&1 ||
   ! cmp -s "$img" "$T/ok.raw"; then
	fail "cannot make a valid stream to patch"; exit 0
fi
rm -f "$T/ok.raw"

# The patcher: parses a stream (28-byte hello, then 16-byte frames {u8 type,
# u8[3] 0, u32 body length, u64 XXH3-64 of the body seeded with type |
# length << 8}, see core/protocol.h), changes one thing and reseals every
# frame so that only the lie itself is wrong. XXH3 comes from libxxhash,
# which sparsync links, through ctypes.
cat >"$T/patch.py" <<'EOF'
import ctypes, ctypes.util, os, struct, sys
lib = None
for name in ("libxxhash.so.0", ctypes.util.find_library("xxhash")):
    try:
        lib = ctypes.CDLL(name); break
    except (OSError, TypeError):
        pass
if lib is None:
    sys.exit("libxxhash not found")
lib.XXH3_64bits_withSeed.restype = ctypes.c_uint64
lib.XXH3_64bits_withSeed.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64]
IMAGE, DATA, ZERO, END, ERROR, ACK, HASHES = 1, 2, 3, 4, 5, 6, 16

def frame(t, body, blen=None):
    body = bytes(body)
    n = len(body) if blen is None else blen
    chk = lib.XXH3_64bits_withSeed(body, len(body), t | n << 8)
    return struct.pack("<B3xIQ", t, n, chk) + body

src, op, dst = sys.argv[1], sys.argv[2], sys.argv[3]
b = open(src, "rb").read()
hello, pos, recs = bytearray(b[:28]), 28, []
while pos + 16 <= len(b):
    t, n = b[pos], struct.unpack_from("<I", b, pos + 4)[0]
    recs.append([t, bytearray(b[pos + 16:pos + 16 + n])])
    pos += 16 + n
size = struct.unpack_from("<Q", recs[0][1], 0)[0]
block = struct.unpack_from("<I", recs[0][1], 8)[0]
data = [r for r in recs if r[0] == DATA]
zero = [r for r in recs if r[0] == ZERO]
tail = b""

def first_data(codec=None, short=False):
    # codec: None any, 0 uncompressed, "c" compressed (zstd or lz4);
    # short: shorter than the block, so its length can grow.
    for r in data:
        c = r[1][12]
        if (codec is None or (codec == "c" and c != 0) or c == codec) and \
           (not short or struct.unpack_from("<I", r[1], 8)[0] <= block // 2):
            return r
    sys.exit("no DATA record with codec %s" % codec)

if op == "data-past-end":          # offset + length ends 4 KiB past the size
    d = data[-1][1]; n = struct.unpack_from("<I", d, 8)[0]
    struct.pack_into("<Q", d, 0, size - n + 4096)
elif op == "data-at-size":         # starts exactly at the end
    struct.pack_into("<Q", data[0][1], 0, size)
elif op == "data-offset-wraps":    # offset + length overflows 64 bits
    struct.pack_into("<Q", data[0][1], 0, (1 << 64) - 512)
elif op == "zero-past-end":
    z = zero[0][1] if zero else None
    if z is None:
        recs.insert(2, [ZERO, bytearray(16)]); z = recs[2][1]
    struct.pack_into("<QQ", z, 0, size - 100, 4096)
elif op == "zero-wraps":
    recs.insert(2, [ZERO, bytearray(struct.pack("<QQ", 1 << 63, 1 << 63))])
elif op == "size-lie-short":       # declared uncompressed length 1 byte short
    d = first_data("c")[1]; n = struct.unpack_from("<I", d, 8)[0]
    struct.pack_into("<I", d, 8, n - 1)
elif op == "size-lie-long":        # declared uncompressed length doubled
    d = first_data("c", short=True)[1]; n = struct.unpack_from("<I", d, 8)[0]
    struct.pack_into("<I", d, 8, 2 * n)
elif op == "size-lie-block":       # more than the block size
    d = first_data("c")[1]
    struct.pack_into("<I", d, 8, block + 1)
elif op == "clen-lie":             # stored length field disagrees with the body
    d = first_data()[1]; c = struct.unpack_from("<I", d, 32)[0]
    struct.pack_into("<I", d, 32, c + 1)
elif op == "none-size-lie":        # uncompressed record, length != stored bytes
    d = first_data(0)[1]; n = struct.unpack_from("<I", d, 8)[0]
    struct.pack_into("<I", d, 8, n + 512)
elif op == "bad-codec":
    first_data()[1][12] = 7
elif op == "unknown-type":
    recs.insert(2, [9, bytearray(b"surprise" * 4)])
elif op == "hashes-type":          # reserved for sync, never negotiated here
    recs.insert(2, [HASHES, bytearray(64)])
elif op == "ack-to-receiver":      # a receiver's record, sent by the sender
    recs.insert(2, [ACK, bytearray(32)])
elif op == "second-image":
    recs.insert(2, [IMAGE, bytearray(recs[0][1])])
elif op == "data-before-image":
    recs.insert(0, [DATA, bytearray(data[0][1])])
elif op == "huge-size":            # virtual size past the protocol's limit
    struct.pack_into("<Q", recs[0][1], 0, (1 << 62) + 1)
elif op == "huge-block":
    struct.pack_into("<I", recs[0][1], 8, 1 << 31)
elif op == "tiny-block":
    struct.pack_into("<I", recs[0][1], 8, 512)
elif op == "bad-format":
    recs[0][1][12] = 9
elif op == "huge-body":            # a frame announcing a 4 GiB body
    out = bytes(hello) + frame(IMAGE, recs[0][1]) + struct.pack("<B3xIQ", DATA, 0xffffffff, 0)
    open(dst, "wb").write(out + os.urandom(4096)); sys.exit(0)
elif op == "bad-checksum":
    out = bytes(hello) + b"".join(frame(t, body) for t, body in recs)
    out = bytearray(out); out[28 + 8] ^= 0xff
    open(dst, "wb").write(out); sys.exit(0)
elif op == "end-count-lie":
    e = [r for r in recs if r[0] == END][0][1]
    struct.pack_into("<Q", e, 0, struct.unpack_from("<Q", e, 0)[0] + 1)
elif op == "no-end":
    recs = [r for r in recs if r[0] != END]
elif op == "garbage-after-end":
    tail = os.urandom(100)
elif op == "error-record":         # terminal escapes in the peer's message
    recs.insert(2, [ERROR, bytearray(b"\x1b[2J\x1b]0;pwned\x07evil\r\nmessage")])
elif op == "interactive":          # the same stream without the stream flag
    hello[13] = 0
elif op == "hello-random":         # a good hello, then noise
    open(dst, "wb").write(bytes(hello) + os.urandom(65536)); sys.exit(0)
elif op.startswith("hashes-"):        # a receiver's hash list that lies
    hs = [r for r in recs if r[0] == HASHES]
    if not hs:
        sys.exit("no HASHES record")
    h = hs[0][1]
    if op == "hashes-bad-unit":
        struct.pack_into("<I", h, 16, 3000)
    elif op == "hashes-huge-unit":
        struct.pack_into("<I", h, 16, 1 << 31)
    elif op == "hashes-count-lie":      # more hashes than the record carries
        struct.pack_into("<I", h, 20, struct.unpack_from("<I", h, 20)[0] + 5)
    elif op == "hashes-overlap":        # the same record twice, the first not last
        first = bytearray(h); first[24] &= ~1
        recs.insert(recs.index(hs[0]), [HASHES, first])
    elif op == "hashes-offset-past-end":
        struct.pack_into("<Q", h, 8, (1 << 64) - 4096)
    elif op == "hashes-huge-size":
        struct.pack_into("<Q", h, 0, 1 << 63)
    elif op == "hashes-not-last":       # the list never ends: ACK comes instead
        hs[-1][1][24] &= ~1
    elif op == "hashes-flags":
        h[24] |= 0x80
    else:
        sys.exit("unknown op " + op)
elif op == "hello-bad-body-len":
    struct.pack_into("<H", hello, 10, 0xffff)
else:
    sys.exit("unknown op " + op)
out = bytes(hello) + b"".join(frame(t, body) for t, body in recs) + tail
open(dst, "wb").write(out)
EOF

# Every file under $T except the test's own bookkeeping: nothing else may
# appear or change while hostile input is processed.
# (Directories by name only: creating and removing a temporary file inside
# one changes its time.)
snapshot() {
	(cd "$T" && find . \( -name .out -o -name .last -o -name 'snap.*' -o -name '*.err' \) -prune -o \
		\( -type d -printf '%p/\n' \) -o -printf '%p %s %T@\n' | sort)
}

# refused NAME STREAM [DSTNAME]: every receiver (copy -, serve, a restricted
# serve) refuses STREAM with an error,
# no crash, no hang, and leave nothing behind.
refused() {
	local name=$1 s=$2 dn=${3:-x.raw} mode
	for mode in $RECEIVERS; do
		local d=$T/dst-$mode
		mkdir -p "$d"
		snapshot >"$T/snap.before"
		if [ $mode = copy ]; then
			check_fails "$name: copy - DST refuses" $TO "$SPARSYNC" copy - "$d/$dn" <"$s"
		elif [ $mode = restricted ]; then
			# The forced command of a backup host (issue 20), the
			# client's request in SSH_ORIGINAL_COMMAND.
			check_fails "$name: serve --restrict-to refuses" \
				env SSH_ORIGINAL_COMMAND="sparsync serve --receive $dn" \
				sh -c 'exec timeout 20 "$1" serve --restrict-to "$2" <"$3" >/dev/null' sh \
				"$SPARSYNC" "$d" "$s"
		else
			# serve writes its hello and its ERROR record to stdout.
			check_fails "$name: serve --receive refuses" \
				sh -c 'cd "$1" && exec timeout 20 "$2" serve --receive "$3" <"$4" >/dev/null' sh \
				"$d" "$SPARSYNC" "$d/$dn" "$s"
		fi
		cp "$T/.out" "$T/$mode.err"
		check "$name ($mode): no destination or temporary file" test -z "$(ls -A "$d")"
		snapshot >"$T/snap.after"
		check "$name ($mode): nothing else written" cmp -s "$T/snap.before" "$T/snap.after"
		rm -rf "$d"
	done
	cp "$T/copy.err" "$T/.last"
}

# patched NAME OP [BASE] [DSTNAME]: patch BASE (zstd.sps) with OP and expect refusal.
patched() {
	local name=$1 op=$2 base=${3:-$T/zstd.sps} dn=${4:-x.raw}
	if ! python3 "$T/patch.py" "$base" "$op" "$T/$op.sps" 2>"$T/patch.err"; then
		fail "$name: cannot build the stream ($(cat "$T/patch.err"))"; return
	fi
	refused "$name" "$T/$op.sps" "$dn"
}

# The patcher itself: resealing an unchanged stream keeps it valid.
python3 "$T/patch.py" "$T/zstd.sps" interactive "$T/inter.sps" &&
	check "resealed stream (stream flag cleared) is still accepted" \
		sh -c "'$SPARSYNC' copy - '$T/re.raw' <'$T/inter.sps' && cmp '$img' '$T/re.raw'"
rm -f "$T/re.raw"

# Random bytes, of several sizes; a good hello followed by noise.
for n in 1 27 28 100 4096 1048576; do
	head -c $n /dev/urandom >"$T/rand.bin"
	refused "random $n bytes" "$T/rand.bin"
done
python3 "$T/patch.py" "$T/zstd.sps" hello-random "$T/hr.sps"
refused "good hello then random bytes" "$T/hr.sps"
: >"$T/empty.bin"
refused "empty input" "$T/empty.bin"

# Truncated valid streams: inside the hello, inside a record, before END.
size=$(stat -c %s "$T/zstd.sps")
for cut in 10 40 $((size / 2)) $((size - 1)); do
	head -c $cut "$T/zstd.sps" >"$T/cut.sps"
	refused "stream truncated to $cut bytes" "$T/cut.sps"
done
said "truncation named" "truncated stream"

# Records that lie about where they write.
patched "DATA ending past the virtual size" data-past-end
said "DATA past the end: named" "outside the virtual size"
patched "DATA past the virtual size, qcow2 destination" data-past-end "$T/zstd.sps" x.qcow2
patched "DATA starting at the virtual size" data-at-size
patched "DATA offset + length wrapping 64 bits" data-offset-wraps
said "wrapping offset: named" "outside the virtual size"
patched "ZERO past the virtual size" zero-past-end
patched "ZERO wrapping 64 bits" zero-wraps

# Records that lie about their sizes.
patched "zstd DATA declaring 1 byte less than it holds" size-lie-short
patched "zstd DATA declaring twice what it holds" size-lie-long
patched "lz4 DATA declaring 1 byte less" size-lie-short "$T/lz4.sps"
patched "DATA longer than the block size" size-lie-block
patched "DATA whose stored-length field disagrees" clen-lie
patched "uncompressed DATA declaring more than it carries" none-size-lie "$T/none.sps"
patched "DATA with an unknown codec" bad-codec
patched "frame announcing a 4 GiB body" huge-body
said "4 GiB body refused before reading it" "exceeds the limit"
patched "virtual size past the limit" huge-size
patched "block size of 2 GiB" huge-block
patched "block size below the minimum" tiny-block
patched "unknown source format" bad-format
patched "hello with a 64 KiB body" hello-bad-body-len

# Records that should not be there.
patched "unknown record type" unknown-type
said "unknown type: named" "unknown record type 9"
patched "HASHES record without incremental sync" hashes-type
patched "ACK record from the sender" ack-to-receiver
patched "second IMAGE record" second-image
patched "DATA before IMAGE" data-before-image
patched "corrupt frame checksum" bad-checksum
patched "END counting one byte too many" end-count-lie
patched "stream without END" no-end
patched "ERROR record with terminal escapes" error-record
check "peer's message shown without control characters" \
	sh -c "grep -q 'evil' '$T/copy.err' && ! grep -q \$(printf '\\033') '$T/copy.err' && ! grep -q \$(printf '\\007') '$T/copy.err'"

# An existing destination updated in place (serve --receive --sync): a
# lying record stops the update with an error; the image stays (a re-run
# completes it) at its old or the announced size, with no temporary file.
if "$SPARSYNC" serve --help 2>&1 | grep -q -- '--sync'; then
	for op in data-past-end zero-past-end size-lie-long unknown-type; do
	for how in ${RECEIVERS#copy }; do
		mkdir -p "$T/ip"
		cp --sparse=always "$img" "$T/ip/x.raw"
		truncate -s 1M "$T/ip/x.raw"
		snapshot >"$T/snap.before"
		if [ $how = serve ]; then
			check_fails "in place, $op: serve --receive --sync refuses" \
				sh -c 'exec timeout 20 "$1" serve --receive "$2" --sync <"$3" >/dev/null' sh \
				"$SPARSYNC" "$T/ip/x.raw" "$T/$op.sps"
		else
			check_fails "in place, $op: serve --restrict-to refuses" \
				env SSH_ORIGINAL_COMMAND="sparsync serve --receive /x.raw --sync" \
				sh -c 'exec timeout 20 "$1" serve --restrict-to "$2" <"$3" >/dev/null' sh \
				"$SPARSYNC" "$T/ip" "$T/$op.sps"
		fi
		check "in place, $op ($how): only the image, no temporary file" test "$(ls -A "$T/ip")" = x.raw
		sz=$(stat -c %s "$T/ip/x.raw")
		check "in place, $op ($how): the image is at its old or the announced size ($sz)" \
			test "$sz" = $((1 << 20)) -o "$sz" = "$(stat -c %s "$img")"
		snapshot >"$T/snap.after"
		check "in place, $op ($how): nothing else written" \
			test -z "$(diff "$T/snap.before" "$T/snap.after" | grep '^[<>]' | grep -v '/ip/x.raw ')"
		rm -rf "$T/ip"
	done
	done
fi

# Bytes after END are not read (the stream is complete); the image is good.
python3 "$T/patch.py" "$T/zstd.sps" garbage-after-end "$T/gae.sps"
check "garbage after END: the image before it is accepted" \
	sh -c "'$SPARSYNC' copy - '$T/gae.raw' <'$T/gae.sps' && cmp '$img' '$T/gae.raw'"
rm -f "$T/gae.raw"

# ---- a malicious server in pull mode ----
# The -e command ignores its arguments (host, serve --send PATH) and plays a
# crafted stream as if it were `sparsync serve --send`, closes its stdout,
# then drains stdin until the client is gone. (A server that goes silent
# but keeps the connection open is a stalled link: without an I/O timeout
# option the client waits, as ssh itself would.)
cat >"$T/evil-ssh" <<'EOF'
#!/bin/sh
cat "$EVIL_STREAM"
exec >&-
cat >/dev/null
EOF
cat >"$T/evil-ssh-quick" <<'EOF'
#!/bin/sh
exec cat "$EVIL_STREAM"
EOF
chmod +x "$T/evil-ssh" "$T/evil-ssh-quick"
P=$T/pull
evil_pull() { # NAME STREAM [DST NAME] [SCRIPT]
	local name=$1 dn=${3:-got.raw} sc=${4:-$T/evil-ssh}
	mkdir -p "$P"
	snapshot >"$T/snap.before"
	check_fails "evil server, $name: pull refused" \
		env EVIL_STREAM="$2" $TO "$SPARSYNC" copy -e "$sc" "evilhost:/etc/passwd" "$P/$dn"
	check "evil server, $name: no destination or temporary file" test -z "$(ls -A "$P")"
	snapshot >"$T/snap.after"
	check "evil server, $name: nothing else written" cmp -s "$T/snap.before" "$T/snap.after"
	rm -rf "$P"
}
for op in data-past-end data-offset-wraps zero-past-end size-lie-long huge-size unknown-type \
	  hello-random no-end error-record; do
	python3 "$T/patch.py" "$T/inter.sps" "$op" "$T/evil-$op.sps" || fail "cannot build $op"
	evil_pull "$op" "$T/evil-$op.sps"
done
evil_pull "DATA past the end, qcow2 destination" "$T/evil-data-past-end.sps" got.qcow2
evil_pull "server exits right after a bad stream" "$T/evil-data-past-end.sps" got.raw "$T/evil-ssh-quick"
head -c 100000 /dev/urandom >"$T/evil-rand.bin"
evil_pull "random bytes" "$T/evil-rand.bin"
# ---- a malicious server in push mode ----
# The receiver's answer (hello, HASHES list, ACK) is captured from a real
# push into an existing destination, then patched: the client (the sender)
# must refuse the lying hash list, and never touch its source.
cat >"$T/reply-ssh" <<'EOF'
#!/bin/sh
while [ $# -gt 1 ]; do shift; done
sh -c "$1" | tee "$REPLY_OUT"
EOF
chmod +x "$T/reply-ssh"
mkdir -p "$T/rr"
cp "$img" "$T/rr/old.raw"
printf 'changed' | dd of="$T/rr/old.raw" bs=1 seek=100000 conv=notrunc status=none
REPLY_OUT=$T/reply.sps $TO "$SPARSYNC" copy -q -e "$T/reply-ssh" --remote-path "$SPARSYNC" "$img" "h:$T/rr/old.raw" >/dev/null 2>&1
rm -rf "$T/rr"
if python3 -c 'import sys; b=open(sys.argv[1],"rb").read(); sys.exit(0 if b[:8]==b"SPARSYNC" and b[12]==2 and len(b)>28+16+32 and b[28]==16 else 1)' "$T/reply.sps"; then
	sum_before=$(md5sum <"$img")
	evil_push() { # NAME OP
		python3 "$T/patch.py" "$T/reply.sps" "$2" "$T/evil-push.sps" || { fail "cannot build $2"; return; }
		snapshot >"$T/snap.before"
		check_fails "evil server in push mode, $1: refused" \
			env EVIL_STREAM="$T/evil-push.sps" $TO "$SPARSYNC" copy -e "$T/evil-ssh" "$img" "evilhost:/x.raw"
		snapshot >"$T/snap.after"
		check "evil server in push mode, $1: nothing written" cmp -s "$T/snap.before" "$T/snap.after"
	}
	evil_push "hash unit not a power of two" hashes-bad-unit
	evil_push "hash unit of 2 GiB" hashes-huge-unit
	evil_push "HASHES count beyond the record" hashes-count-lie
	evil_push "HASHES records overlapping" hashes-overlap
	evil_push "HASHES offset wrapping 64 bits" hashes-offset-past-end
	evil_push "HASHES image size of 8 EiB" hashes-huge-size
	evil_push "hash list that never ends" hashes-not-last
	evil_push "unknown HASHES flags" hashes-flags
	evil_push "receiver hello then noise" hello-random
	check "the source was never modified" test "$(md5sum <"$img")" = "$sum_before"
else
	fail "push replies carry no hash list: the evil-receiver cases could not run"
fi

# A stream is all the server can send: no name travels, so no path of its
# choosing exists to write to. A good stream from it lands at DST only.
mkdir -p "$P"
snapshot >"$T/snap.before"
check "evil server with a valid stream: written to DST only" \
	env EVIL_STREAM="$T/inter.sps" $TO "$SPARSYNC" copy -e "$T/evil-ssh" "evilhost:../../etc/x" "$P/ok.raw"
check "valid stream from the server: DST is the image" cmp "$img" "$P/ok.raw"
snapshot >"$T/snap.after"
check "valid stream from the server: only DST is new" \
	test "$(diff "$T/snap.before" "$T/snap.after" | grep -c '^>')" -eq 1 -a \
	     "$(diff "$T/snap.before" "$T/snap.after" | grep '^>' | grep -c '/pull/ok.raw ')" -eq 1

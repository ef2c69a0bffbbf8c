#!/bin/bash
# `sparsync verify SRC DST` (issue 6): exit 0 identical, 1 different with
# the first differing offset printed like qemu-img compare, 2 error. Local
# images, then either side remote (built-in ssh client and -e).
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
TO="timeout 600"

# exits NAME WANT CMD...: CMD exits with status WANT (output in $T/.last).
exits() {
	local name=$1 want=$2; shift 2
	"$@" >"$T/.last" 2>&1
	local rc=$?
	if [ $rc -eq "$want" ]; then pass "$name"; else
		fail "$name (exit $rc, want $want; command: $*)"; sed 's/^/    | /' "$T/.last" | head -10
	fi
}

if [ "${SANITIZER:-0}" = 1 ]; then SIZE=$((64 * MiB)); else SIZE=$((512 * MiB)); fi
a=$T/a.raw
truncate -s $SIZE "$a"
python3 - "$a" $SIZE <<'EOF'
import os, sys
size = int(sys.argv[2])
with open(sys.argv[1], "r+b") as f:
    for k in range(8):
        f.seek(k * size // 8 + 12345 * k)
        f.write(os.urandom(size // 64))
EOF
cp --sparse=always "$a" "$T/b.raw"
"$SPARSYNC" copy -q "$a" "$T/b.qcow2"

# One changed 4 KiB block at OFF, inside data: every byte inverted.
OFF=$((3 * SIZE / 8 + 30 * 65536))
cp --sparse=always "$a" "$T/c.raw"
python3 - "$T/c.raw" $OFF <<'EOF'
import sys
off = int(sys.argv[2])
with open(sys.argv[1], "r+b") as f:
    f.seek(off); b = f.read(4096)
    f.seek(off); f.write(bytes(x ^ 0xff for x in b))
EOF
# One 4 KiB block of data where a.raw has a hole.
HOFF=$((5 * SIZE / 8 + SIZE / 32))
cp --sparse=always "$a" "$T/d.raw"
printf '\001%.0s' $(seq 1 4096) | dd of="$T/d.raw" bs=4096 seek=$((HOFF / 4096)) conv=notrunc status=none

# ---- local ----
exits "local: identical raw images" 0 "$SPARSYNC" verify "$a" "$T/b.raw"
said "local: says identical" "^Images are identical\.$"
exits "local: raw and qcow2 with the same content" 0 "$SPARSYNC" verify "$a" "$T/b.qcow2"
exits "local: one changed 4 KiB block" 1 "$SPARSYNC" verify "$a" "$T/c.raw"
said "local: its offset printed" "^Content mismatch at offset $OFF!$"
exits "local: the same the other way round" 1 "$SPARSYNC" verify "$T/c.raw" "$a"
said "local: other way, same offset" "offset $OFF!"
exits "qemu-img compare agrees on the offset" 1 qemu-img compare "$a" "$T/c.raw"
said "qemu-img compare's offset" "offset $OFF!"
exits "local: data where the other has a hole" 1 "$SPARSYNC" verify "$a" "$T/d.raw"
said "local: hole mismatch offset" "offset $HOFF!"
exits "local: qcow2 against the changed raw" 1 "$SPARSYNC" verify -f qcow2 -F raw "$T/b.qcow2" "$T/c.raw"
said "local qcow2: offset" "offset $OFF!"
exits "local: -q prints nothing" 1 "$SPARSYNC" verify -q "$a" "$T/c.raw"
check "local: -q output empty" test ! -s "$T/.last"

# Sizes differ: identical when the extra part reads as zeros.
cp --sparse=always "$a" "$T/big.raw"
truncate -s $((SIZE + 5 * MiB + 512)) "$T/big.raw"
exits "local: larger image with a zero tail" 0 "$SPARSYNC" verify "$a" "$T/big.raw"
said "local: size mismatch warned" "Image size mismatch"
printf 'x' | dd of="$T/big.raw" bs=1 seek=$((SIZE + 2 * MiB + 3)) conv=notrunc status=none
exits "local: larger image with data in its tail" 1 "$SPARSYNC" verify "$T/big.raw" "$a"
said "local: tail mismatch offset" "offset $((SIZE + 2 * MiB + 3))!"

# Errors: exit 2.
exits "local: missing file is an error" 2 "$SPARSYNC" verify "$a" "$T/missing.raw"
said "local: missing file named" "missing.raw"
exits "a stream is refused" 2 "$SPARSYNC" verify - "$a"
exits "one argument is a usage error" 2 "$SPARSYNC" verify "$a"
exits "unknown option is a usage error" 2 "$SPARSYNC" verify --bogus "$a" "$T/b.raw"
exits "both remote refused" 2 "$SPARSYNC" verify h1:/x h2:/y

# ---- remote ----
sshd_start || exit 0
OPTS="$(sparsync_ssh_opts) --remote-path $SPARSYNC"
H=127.0.0.1
exits "remote DST: identical" 0 $TO "$SPARSYNC" verify $OPTS "$a" "$H:$T/b.raw"
said "remote DST: says identical" "^Images are identical\.$"
exits "remote SRC: identical" 0 $TO "$SPARSYNC" verify $OPTS "$H:$T/b.qcow2" "$a"
exits "remote DST: one changed block" 1 $TO "$SPARSYNC" verify $OPTS "$a" "$H:$T/c.raw"
said "remote DST: its offset" "^Content mismatch at offset $OFF!$"
exits "remote SRC: one changed block" 1 $TO "$SPARSYNC" verify $OPTS "$H:$T/c.raw" "$a"
said "remote SRC: its offset" "offset $OFF!"
exits "remote: data where the local side has a hole" 1 $TO "$SPARSYNC" verify $OPTS "$a" "$H:$T/d.raw"
said "remote: hole mismatch offset" "offset $HOFF!"
exits "remote: local data where the remote has a hole" 1 $TO "$SPARSYNC" verify $OPTS "$T/d.raw" "$H:$a"
said "remote: local data offset" "offset $HOFF!"
exits "remote: larger image with data in its tail" 1 $TO "$SPARSYNC" verify $OPTS "$a" "$H:$T/big.raw"
said "remote: size mismatch warned" "Image size mismatch"
exits "remote: -F qcow2 for the remote side" 0 $TO "$SPARSYNC" verify $OPTS -F qcow2 "$a" "$H:$T/b.qcow2"
exits "remote through -e ssh" 0 $TO "$SPARSYNC" verify -e "ssh -F $SSH_CONFIG" --remote-path "$SPARSYNC" "$a" "sparsync-test:$T/b.raw"
exits "remote through -e ssh: changed block" 1 $TO "$SPARSYNC" verify -e "ssh -F $SSH_CONFIG" --remote-path "$SPARSYNC" "sparsync-test:$T/c.raw" "$a"
said "-e: offset" "offset $OFF!"
exits "remote: missing remote file is an error" 2 $TO "$SPARSYNC" verify $OPTS "$a" "$H:$T/missing.raw"
said "remote: missing file named" "missing.raw: No such file"
exits "remote: remote sparsync missing is an error" 2 $TO "$SPARSYNC" verify $(sparsync_ssh_opts) --remote-path /nonexistent/sparsync "$a" "$H:$T/b.raw"
exits "remote: wrong key is an error" 2 $TO "$SPARSYNC" verify -p "$SSHD_PORT" -i "$SSH_OTHER_KEY" --known-hosts "$SSH_KNOWN_HOSTS" --remote-path "$SPARSYNC" "$a" "$H:$T/b.raw"

#!/bin/bash
# NBD exports as images (issue 14), against real servers started here:
# qemu-nbd exporting qcow2 and raw images (read-only, read-write, with -B
# for a persistent dirty bitmap dirtied by qemu-io), nbdkit (the memory
# plugin as a destination, the error filter for EIO, the delay filter for a
# server killed mid-copy, noextents for a server without base:allocation).
# Every result is checked with qemu-img compare / cmp; bytes read against
# the allocation and the dirty extents; failures leave nothing that looks
# complete.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
TO="timeout 120"

for c in qemu-nbd nbdkit nbdinfo qemu-io; do
	command -v $c >/dev/null || { fail "$c is not installed (tests/install-deps.sh)"; exit 0; }
done

# Servers: every one started here is killed on exit, also on failure.
PIDS=
trap 'for p in $PIDS; do kill -9 $p 2>/dev/null; done; sshd_stop; rm -rf "$T"' EXIT
# qnbd NAME ARGS...: qemu-nbd on $T/NAME.sock; nbdk NAME ARGS...: nbdkit.
qnbd() {
	local n=$1; shift
	rm -f "$T/$n.sock"
	qemu-nbd --fork --pid-file "$T/$n.pid" -k "$T/$n.sock" "$@" || return 1
	PIDS="$PIDS $(cat "$T/$n.pid")"
}
nbdk() {
	local n=$1; shift
	rm -f "$T/$n.sock"
	nbdkit -U "$T/$n.sock" -P "$T/$n.pid" "$@" || return 1
	for _ in $(seq 50); do [ -s "$T/$n.pid" ] && [ -S "$T/$n.sock" ] && break; sleep 0.05; done
	PIDS="$PIDS $(cat "$T/$n.pid")"
}
stop() { kill -9 "$(cat "$T/$1.pid")" 2>/dev/null; sleep 0.1; rm -f "$T/$1.sock"; }
uri() { echo "nbd+unix:///${2:-}?socket=$T/$1.sock"; }
# data bytes of an image per qemu-img map (allocated, not zero)
data_bytes() { qemu-img map -U --output=json "$@" | python3 -c '
import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))'; }

# A 256 MiB disk: data, a zero-flagged range, data in the last cluster.
qemu-img create -q -f qcow2 "$T/vm.qcow2" 256M
qemu-io -c "write -P 0x11 1M 20M" -c "write -z 4M 1M" -c "write -P 0x22 200M 3M" \
	-c "write -P 0x33 $((256 * MiB - 65536)) 64k" "$T/vm.qcow2" >/dev/null
qemu-img convert -O raw "$T/vm.qcow2" "$T/vm.raw"

# ---- an export as the source ----
qnbd ro -r -f qcow2 -t "$T/vm.qcow2" || { fail "qemu-nbd would not start"; exit 0; }
check "map of an export" "$SPARSYNC" map --json "$(uri ro)"
check "  the data ranges qemu-img map gives for the same export" \
	test "$(sparsync_data_ranges "$(uri ro)")" = "$(qemu_data_ranges "$(uri ro)")"
check "copy an export to a raw file" $TO "$SPARSYNC" copy --json "$(uri ro)" "$T/out.raw"
is "  only the allocated data was read" bytes_read "$(data_bytes "$T/vm.qcow2")"
check "  it is the disk" cmp "$T/out.raw" "$T/vm.raw"
check "  holes stay holes" test "$(qemu_data_ranges "$T/out.raw")" = "$(qemu_data_ranges -U "$T/vm.qcow2")"
check "copy an export to qcow2" $TO "$SPARSYNC" copy "$(uri ro)" "$T/out.qcow2"
check "  qemu-img compare" qemu-img compare -q -U "$T/out.qcow2" "$T/vm.qcow2"
check "verify a file against an export" $TO "$SPARSYNC" verify "$T/vm.raw" "$(uri ro)"
check_fails "-f qcow2 on an export is refused" $TO "$SPARSYNC" copy -f qcow2 "$(uri ro)" "$T/no.raw"
said "  says the export is read as raw" "read as the disk it exports"
check_fails "a read-only export as destination is refused" $TO "$SPARSYNC" copy "$T/vm.raw" "$(uri ro)"
said "  up front, with one line" "read-only"
check "  the export is unchanged" qemu-img compare -q -U "$T/vm.qcow2" "$T/vm.raw"
check_fails "a wrong export name" $TO "$SPARSYNC" copy "$(uri ro nosuch)" "$T/no.raw"
said "  named" "no export named 'nosuch'"
check "  no destination" test ! -e "$T/no.raw"
stop ro
check_fails "no server" $TO "$SPARSYNC" copy "$(uri ro)" "$T/no.raw"
said "  one line naming the export" "cannot connect to the NBD export"
check_fails "no server on a TCP port" $TO "$SPARSYNC" copy "nbd://127.0.0.1:1/x" "$T/no.raw"
check "  no destination" test ! -e "$T/no.raw"

# Several connections where the server allows them (multi-conn).
qnbd mc -r -e 4 -f qcow2 -t "$T/vm.qcow2"
check "copy over a multi-conn export" $TO "$SPARSYNC" copy "$(uri mc)" "$T/mc.raw"
check "  it is the disk" cmp "$T/mc.raw" "$T/vm.raw"
stop mc

# Block-size constraints: a server that fails any request above 64 KiB or
# not aligned to 4 KiB (nbdkit's blocksize-policy filter, policy error).
BSP="blocksize-minimum=4096 blocksize-preferred=4096 blocksize-maximum=65536 blocksize-error-policy=error"
nbdk bsr --filter=blocksize-policy file "$T/vm.raw" $BSP
check "copy from a server with a 64 KiB maximum request" $TO "$SPARSYNC" copy "$(uri bsr)" "$T/bsr.raw"
check "  it is the disk" cmp "$T/bsr.raw" "$T/vm.raw"
stop bsr
nbdk bsw --filter=blocksize-policy memory 256M $BSP
check "copy into a server with a 64 KiB maximum request" $TO "$SPARSYNC" copy "$T/vm.raw" "$(uri bsw)"
check "  qemu-img compare with the export" qemu-img compare -q "$T/vm.raw" "$(uri bsw)"
stop bsw

# A server without base:allocation: read whole, zeros found by reading.
nbdk nx --filter=noextents file "$T/vm.raw"
check "copy from a server without base:allocation" $TO "$SPARSYNC" copy --json "$(uri nx)" "$T/nx.raw"
is "  every byte was read" bytes_read $((256 * MiB))
check "  it is the disk" cmp "$T/nx.raw" "$T/vm.raw"
check "  and the zeros are holes" test "$(qemu_data_ranges "$T/nx.raw")" = "$(qemu_data_ranges -U "$T/vm.qcow2")"
stop nx

# EIO from the server: one line, no destination.
nbdk eio --filter=error file "$T/vm.raw" error=EIO error-pread-rate=1 error-pread-file="$T/trigger"
touch "$T/trigger"
check_fails "an I/O error from the server" $TO "$SPARSYNC" copy "$(uri eio)" "$T/eio.raw"
said "  named" "Input/output error"
check "  no destination, no temporary" sh -c "! ls -A '$T' | grep -q 'eio.raw'"
stop eio

# A server that dies mid-copy: a new destination is not left, an old one
# is rolled back.
# kill_when_seen FILE: kill the slow server once FILE exists (the copy is
# under way; under valgrind that takes a while), at most 60 s from now.
kill_when_seen() {
	( for _ in $(seq 600); do ls -a "$T" | grep -q "$1" && break; sleep 0.1; done
	  sleep 0.3; kill -9 "$(cat "$T/slow.pid")" ) &
}
nbdk slow --filter=delay file "$T/vm.raw" rdelay=300ms
kill_when_seen '^\.died\.raw\.sparsync-'
check_fails "the server killed mid-copy" $TO "$SPARSYNC" copy "$(uri slow)" "$T/died.raw"
wait
said "  named" "Transport endpoint is not connected|Connection reset|failed"
check "  no destination, no temporary" sh -c "! ls -A '$T' | grep -q 'died.raw'"
cp --sparse=always "$T/vm.raw" "$T/old.raw"; put_random "$T/old.raw" $((2 * MiB)) $((50 * MiB))
cp --sparse=always "$T/old.raw" "$T/old.bak"
rm -f "$T/slow.sock"; nbdk slow --filter=delay file "$T/vm.raw" rdelay=300ms
kill_when_seen '^\.old\.raw\.sparsync-undo'

check_fails "the server killed mid-sync" $TO "$SPARSYNC" copy "$(uri slow)" "$T/old.raw"
wait
check "  the old copy is intact" cmp "$T/old.raw" "$T/old.bak"

# A server that stops answering (SIGSTOP: its socket stays open, so
# nothing fails on its own): with --timeout 3 an error within seconds
# instead of a hang; without a destination left behind.
stop_when_seen() {
	( for _ in $(seq 600); do ls -a "$T" | grep -q "$1" && break; sleep 0.1; done
	  sleep 0.3; kill -STOP "$(cat "$T/stalled.pid")" ) &
}
nbdk stalled --filter=delay file "$T/vm.raw" rdelay=300ms
stop_when_seen '^\.stalled\.raw\.sparsync-'
t0=$(date +%s)
check_fails "a stopped server, --timeout 3" $TO "$SPARSYNC" copy --timeout 3 "$(uri stalled)" "$T/stalled.raw"
el=$(( $(date +%s) - t0 ))
wait
said "  says the server went silent" "answered nothing for 3 s \\(--timeout\\)"
check "  within seconds, not a hang ($el s)" test "$el" -lt 40
check "  no destination, no temporary" sh -c "! ls -A '$T' | grep -q 'stalled.raw'"
kill -CONT "$(cat "$T/stalled.pid")" 2>/dev/null

# ---- an export as the destination ----
nbdk mem memory 256M
check "copy into nbdkit's memory plugin" $TO "$SPARSYNC" copy --json "$T/vm.qcow2" "$(uri mem)"
check "  written in place" grep -q '"destination":"nbd"' "$T/.last"
check "  qemu-img compare with the export" qemu-img compare -q "$T/vm.raw" "$(uri mem)"
check "sync it again: nothing changed" $TO "$SPARSYNC" copy --json "$T/vm.qcow2" "$(uri mem)"
is "  nothing written" bytes_written 0
truncate -s 300M "$T/big.raw"
check_fails "a source larger than the export" $TO "$SPARSYNC" copy "$T/big.raw" "$(uri mem)"
said "  named, nothing written" "export is too small"
check_fails "-O qcow2 into an export" $TO "$SPARSYNC" copy -O qcow2 "$T/vm.raw" "$(uri mem)"
check_fails "--backing into an export" $TO "$SPARSYNC" copy "$T/vm.raw" "$(uri mem)" --backing x.qcow2
check "  the export still holds the disk" qemu-img compare -q "$T/vm.raw" "$(uri mem)"
stop mem
# A read-write qemu-nbd export holding an older copy: synced like a file.
cp --sparse=always "$T/vm.raw" "$T/target.raw"
cp --sparse=always "$T/vm.raw" "$T/new.raw"
put_random "$T/new.raw" 65536 $((2 * MiB)); put_random "$T/new.raw" 65536 $((100 * MiB))
qnbd rw -f raw -t "$T/target.raw"
check "sync an export that holds an older copy" $TO "$SPARSYNC" copy --json "$T/new.raw" "$(uri rw)"
is "  only what differs is written" bytes_written $((2 * 65536))
check "  it holds the new disk" cmp "$T/target.raw" "$T/new.raw"
stop rw

# TLS (nbds://) with a pre-shared key, as libnbd's URIs give it.
printf 'alice:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$T/psk"
chmod 600 "$T/psk"
truncate -s 64M "$T/small.raw"; put_random "$T/small.raw" $((3 * MiB)) $((5 * MiB))
if nbdk tls --tls=require --tls-psk="$T/psk" memory 64M; then
	TLS="nbds+unix://alice@/?socket=$T/tls.sock&tls-psk-file=$T/psk"
	check "copy into a TLS export (nbds+unix, PSK)" $TO "$SPARSYNC" copy "$T/small.raw" "$TLS"
	check "read it back over TLS" $TO "$SPARSYNC" copy "$TLS" "$T/tls-back.raw"
	check "  the same bytes" cmp "$T/small.raw" "$T/tls-back.raw"
	check_fails "a plain nbd URI to a server that requires TLS" $TO "$SPARSYNC" copy "$(uri tls)" "$T/no.raw"
	said "  the handshake refusal, on one line" "TLS"
	stop tls
else
	fail "nbdkit --tls=require would not start"
fi

# ---- incremental from QEMU's dirty bitmap ----
cp --sparse=always "$T/vm.raw" "$T/backup.raw"
qemu-img bitmap --add "$T/vm.qcow2" chk1
qemu-io -c "write -P 0x44 2M 64k" -c "write -P 0x55 120M 1M" -c "write -z 1M 64k" "$T/vm.qcow2" >/dev/null
qnbd bm -r -f qcow2 -B chk1 -t "$T/vm.qcow2"
nbdinfo --map=qemu:dirty-bitmap:chk1 --json "$(uri bm)" | python3 -c '
import json,sys
for e in json.load(sys.stdin):
    if e["type"] & 1: print(e["offset"], e["offset"] + e["length"])' >"$T/dirty.want"
"$SPARSYNC" map --bitmap chk1 "$(uri bm)" | python3 -c '
import sys
for l in sys.stdin:
    f = l.split()
    if len(f) == 3 and f[2] == "dirty": print(int(f[0], 16), int(f[0], 16) + int(f[1], 16))' >"$T/dirty.got"
check "map --bitmap gives the server's dirty extents" cmp "$T/dirty.want" "$T/dirty.got"
check "copy --bitmap onto the last backup" $TO "$SPARSYNC" copy --json --bitmap chk1 "$(uri bm)" "$T/backup.raw"
is "  read only the dirty data" bytes_read $((65536 + MiB))
check "  the backup is the disk now" qemu-img compare -q -U "$T/backup.raw" "$T/vm.qcow2"
check_fails "a bitmap the server does not export" $TO "$SPARSYNC" copy --bitmap nosuch "$(uri bm)" "$T/backup.raw"
said "  named, not a silent full copy" "offers no dirty bitmap 'nosuch'"
check "  the backup is untouched" qemu-img compare -q -U "$T/backup.raw" "$T/vm.qcow2"

# A dirty cluster that is 8 KiB of data and 56 KiB of zeros arrives as two
# pieces: it is judged from the bytes read once, not read again to hash it.
truncate -s 16M "$T/mx.raw"; put_random "$T/mx.raw" 8192 $((1 * MiB))
qemu-img convert -O qcow2 "$T/mx.raw" "$T/mx.qcow2"
qnbd mx -r -f qcow2 -t "$T/mx.qcow2"
"$SPARSYNC" copy -q "$(uri mx)" "$T/mx-backup.raw"
stop mx
qemu-img bitmap --add "$T/mx.qcow2" b
qemu-io -c "write -P 7 1M 4k" "$T/mx.qcow2" >/dev/null
qnbd mx -r -f qcow2 -B b -t "$T/mx.qcow2"
check "--bitmap over a cluster of data and zeros" $TO "$SPARSYNC" copy --json --bitmap b "$(uri mx)" "$T/mx-backup.raw"
is "  read once" bytes_read 65536
check "  the backup is the disk" qemu-img compare -q -U "$T/mx-backup.raw" "$T/mx.qcow2"
stop mx

# ---- over ssh, both ways ----
sshd_start || exit 0
R="$(sparsync_ssh_opts) --remote-path $SPARSYNC"
check "push an export to a remote qcow2" $TO "$SPARSYNC" copy $R "$(uri bm)" "127.0.0.1:$T/pushed.qcow2"
check "  qemu-img compare" qemu-img compare -q -U "$T/pushed.qcow2" "$T/vm.qcow2"
check "pull a remote host's export" $TO "$SPARSYNC" copy $R "127.0.0.1:$(uri bm)" "$T/pulled.raw"
check "  qemu-img compare" qemu-img compare -q -U "$T/pulled.raw" "$T/vm.qcow2"
stop bm
nbdk rmem memory 256M
check "push into a remote host's export" $TO "$SPARSYNC" copy $R -U "$T/vm.qcow2" "127.0.0.1:$(uri rmem)"
check "  qemu-img compare" qemu-img compare -q -U "$T/vm.qcow2" "$(uri rmem)"
check "verify against a remote host's export" $TO "$SPARSYNC" verify $R -U "$T/vm.qcow2" "127.0.0.1:$(uri rmem)"
stop rmem
# A restricted serve never connects anywhere for its client.
check_fails "serve --restrict-to refuses an NBD URI" env SSH_ORIGINAL_COMMAND="sparsync serve --send '$(uri rmem)'" \
	"$SPARSYNC" serve --restrict-to "$T" </dev/null

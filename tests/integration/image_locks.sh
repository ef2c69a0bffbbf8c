#!/bin/bash
# QEMU's image locks (issue 13, part 4): sparsync does not read an image
# that another program (qemu-nbd here, as a running VM would) holds open
# for writing, unless -U; never writes, replaces or rolls back one that is
# open at all; and holds the same locks while it writes, so QEMU cannot
# open what sparsync is writing. Local, push and pull; files, a backing
# chain and a loop device.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
FAULTS=$TOP/sparsync-faults
NBD_PIDS=()
LOOP=
cleanup() {
	for p in "${NBD_PIDS[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	[ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

# hold FILE FORMAT [qemu-nbd options]: qemu-nbd keeps FILE open (with its
# locks) until release.
hold() {
	local f=$1 fmt=$2; shift 2
	rm -f "$T/nbd.sock"
	qemu-nbd -t -k "$T/nbd.sock" -f "$fmt" "$@" "$f" 2>"$T/nbd.err" &
	NBD_PIDS+=($!)
	for _ in $(seq 100); do [ -S "$T/nbd.sock" ] && return 0; sleep 0.05; done
	echo "qemu-nbd did not start: $(cat "$T/nbd.err")"
	return 1
}
release() {
	for p in "${NBD_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	NBD_PIDS=()
}
digest_of() { md5sum <"$1"; }

qemu-img create -q -f qcow2 "$T/vm.qcow2" 64M
qemu-io -c "write -P 0x11 0 3M" -c "write -P 0x22 40M 1M" "$T/vm.qcow2" >/dev/null
truncate -s 32M "$T/other.raw"
put_random "$T/other.raw" $MiB 0

# ---- a VM (qemu-nbd) writes the image ----
hold "$T/vm.qcow2" qcow2 || fail "qemu-nbd starts"
before=$(digest_of "$T/vm.qcow2")
check_fails "copy from an image open for writing is refused" "$SPARSYNC" copy "$T/vm.qcow2" "$T/out.raw"
said "it says why and names -U" 'vm.qcow2: another program has it open for writing .*-U \(--force-share\)'
check "nothing was written" test ! -e "$T/out.raw"
check "-U reads it anyway" "$SPARSYNC" copy -U "$T/vm.qcow2" "$T/out.raw"
check "-U copy is right" qemu-img compare -U -q "$T/vm.qcow2" "$T/out.raw"
check_fails "map refuses it" "$SPARSYNC" map "$T/vm.qcow2"
check "map -U" "$SPARSYNC" map -U "$T/vm.qcow2"
check_fails "verify refuses it" "$SPARSYNC" verify "$T/vm.qcow2" "$T/out.raw"
check "verify -U" "$SPARSYNC" verify -q -U "$T/vm.qcow2" "$T/out.raw"
check_fails "sync into it is refused" "$SPARSYNC" copy "$T/other.raw" "$T/vm.qcow2"
said "one clear line" 'vm.qcow2: another program has it open with write permission'
check_fails "--whole (replace it) is refused" "$SPARSYNC" copy --whole "$T/other.raw" "$T/vm.qcow2"
check_fails "-O raw (rewrite it) is refused" "$SPARSYNC" copy -O raw "$T/other.raw" "$T/vm.qcow2"
check_fails "-U does not make writing it possible" "$SPARSYNC" copy -U "$T/other.raw" "$T/vm.qcow2"
check "the image is untouched" test "$(digest_of "$T/vm.qcow2")" = "$before"
check "no temporary or journal left" no_temp_files "$T"
release

# ---- read-only holders allow reading, not writing ----
hold "$T/vm.qcow2" qcow2 -r || fail "qemu-nbd -r starts"
check "copy from an image held read-only" "$SPARSYNC" copy "$T/vm.qcow2" "$T/out2.raw"
check_fails "writing an image held read-only is refused" "$SPARSYNC" copy "$T/other.raw" "$T/vm.qcow2"
said "it says why" 'vm.qcow2: another program is using it .*does not share write'
release
check "once released it can be synced" "$SPARSYNC" copy "$T/other.raw" "$T/vm.qcow2"
check "and is right" qemu-img compare -q "$T/other.raw" "$T/vm.qcow2"
check "and clean" qemu-img check -q "$T/vm.qcow2"

# ---- a backing file in use ----
qemu-img create -q -f raw "$T/base.raw" 16M
qemu-io -f raw -c "write -P 0x33 0 1M" "$T/base.raw" >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw "$T/top.qcow2"
hold "$T/base.raw" raw || fail "qemu-nbd on the backing file"
check_fails "reading an overlay whose backing file is written is refused" \
	"$SPARSYNC" copy "$T/top.qcow2" "$T/flat.raw"
said "it names the backing file" 'base.raw: another program has it open for writing'
check "-U reads the chain" "$SPARSYNC" copy -U "$T/top.qcow2" "$T/flat.raw"
release

# ---- QEMU cannot open what sparsync is writing ----
if [ -x "$FAULTS" ]; then
	for mode in new update; do
		rm -f "$T/w.raw"
		[ $mode = update ] && "$SPARSYNC" copy -q "$T/out.raw" "$T/w.raw"
		SPARSYNC_FAULT_SIGNAL=19 SPARSYNC_FAULT_KILL_AT=1 "$FAULTS" copy -q "$T/other.raw" "$T/w.raw" &
		pid=$!
		for _ in $(seq 200); do
			[ "$(awk '{print $3}' /proc/$pid/stat 2>/dev/null)" = T ] && break
			sleep 0.05
		done
		if [ $mode = new ]; then
			tmp=$(ls -A "$T" | grep '^\.w\.raw\.sparsync-' | head -1)
			check_fails "qemu-io cannot open the new image being written" \
				qemu-io -f raw -c "write 0 512" "$T/$tmp"
		else
			check_fails "qemu-io cannot open the image being synced" \
				qemu-io -f raw -c "write 0 512" "$T/w.raw"
		fi
		said "QEMU says it is locked ($mode)" 'Failed to get .* lock'
		kill -CONT $pid
		wait $pid
		check "the copy completes ($mode)" cmp "$T/other.raw" "$T/w.raw"
	done
	# A journal left by a kill is not rolled back under a program that has
	# the image open.
	"$SPARSYNC" copy -q "$T/out.raw" "$T/j.raw"
	SPARSYNC_FAULT_KILL_AT=2 "$FAULTS" copy -q "$T/other.raw" "$T/j.raw" 2>/dev/null
	hold "$T/j.raw" raw -r || fail "qemu-nbd on the interrupted image"
	check_fails "recover refuses while another program has it open" "$SPARSYNC" recover "$T/j.raw"
	check "the journal stays" test -e "$T/.j.raw.sparsync-undo"
	release
	check "recover once released" "$SPARSYNC" recover "$T/j.raw"
	check "gives the old image back" cmp "$T/out.raw" "$T/j.raw"
else
	fail "sparsync-faults is not built"
fi

# ---- a block device ----
truncate -s 32M "$T/disk.img"
if LOOP=$(losetup -f --show "$T/disk.img" 2>/dev/null); then
	hold "$LOOP" raw || fail "qemu-nbd on the loop device"
	check_fails "writing a device another program has open is refused" \
		"$SPARSYNC" copy "$T/other.raw" "$LOOP"
	said "it says why (device)" 'another program has it open with write permission'
	release
	check "once released the device is written" "$SPARSYNC" copy "$T/other.raw" "$LOOP"
	check "and is right" cmp -n $((32 * MiB)) "$T/other.raw" "$LOOP"
	losetup -d "$LOOP"; LOOP=
else
	fail "losetup (needs root)"
fi

# ---- over ssh ----
sshd_start || exit 0
OPTS="$(sparsync_ssh_opts) --remote-path $SPARSYNC"
H=127.0.0.1
hold "$T/vm.qcow2" qcow2 || fail "qemu-nbd starts"
before=$(digest_of "$T/vm.qcow2")
check_fails "push into an image in use is refused" "$SPARSYNC" copy $OPTS "$T/out.raw" "$H:$T/vm.qcow2"
said "the remote says why" 'another program has it open with write permission'
check_fails "pull from an image in use is refused" "$SPARSYNC" copy $OPTS "$H:$T/vm.qcow2" "$T/pulled.raw"
said "the remote says why (pull)" 'another program has it open for writing'
check "pull -U" "$SPARSYNC" copy -U $OPTS "$H:$T/vm.qcow2" "$T/pulled.raw"
check_fails "push of an image in use is refused" "$SPARSYNC" copy $OPTS "$T/vm.qcow2" "$H:$T/pushed.raw"
check "the image is untouched (ssh)" test "$(digest_of "$T/vm.qcow2")" = "$before"
release

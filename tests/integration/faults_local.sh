#!/bin/bash
# Local faults: a full destination disk, SIGINT/SIGTERM mid-copy, progress
# only on a TTY. Each must end cleanly with nothing half-written left behind.
. "$(dirname "$0")/../lib.sh"

# Disk full: a small tmpfs as the destination directory.
truncate -s 256M "$T/src.raw"
dd if=/dev/urandom of="$T/src.raw" bs=1M count=24 seek=10 conv=notrunc status=none
mkdir "$T/full"
if mount -t tmpfs -o size=8M tmpfs "$T/full" 2>/dev/null; then
	# --no-space-check: running out mid-copy is the case here (the check that
	# refuses such a copy up front is tested in never_lose.sh).
	check_fails "copy onto a full disk fails" "$SPARSYNC" copy --no-space-check "$T/src.raw" "$T/full/dst.raw"
	cp "$T/.last" "$T/full.err"
	check "full disk: message names the file and ENOSPC" grep -q "full/dst.raw: .*No space left on device" "$T/full.err"
	check "full disk: one line on stderr" test "$(wc -l <"$T/full.err")" -eq 1
	check "full disk: no image under the final name" test ! -e "$T/full/dst.raw"
	check "full disk: no temporary file left" test -z "$(ls -A "$T/full")"
	umount "$T/full"
else
	fail "cannot mount a tmpfs for the disk-full test (run as root)"
fi

# SIGINT and SIGTERM: stop the process once its temporary file exists, send
# the signal, let it run: the handler must remove the temporary file.
if [ -z "${SANITIZER:-}" ]; then big=1024; else big=256; fi
dd if=/dev/urandom of="$T/big.raw" bs=1M count=$big status=none
for sig in INT TERM; do
	mkdir -p "$T/sig$sig"
	"$SPARSYNC" copy -j 1 "$T/big.raw" "$T/sig$sig/dst.raw" 2>"$T/sig.err" &
	pid=$!
	for _ in $(seq 500); do
		ls -A "$T/sig$sig" | grep -q sparsync- && break
		sleep 0.01
	done
	kill -STOP $pid 2>/dev/null
	kill -$sig $pid 2>/dev/null
	kill -CONT $pid 2>/dev/null
	wait $pid; rc=$?
	if [ $rc -eq 0 ]; then
		fail "SIG$sig arrived too late to test (copy finished first)"
	else
		check "SIG$sig: killed by the signal" test $rc -gt 128
		check "SIG$sig: temporary file removed" test -z "$(ls -A "$T/sig$sig")"
	fi
done

# Progress: on a TTY (under script) a line with a percentage on stderr;
# nothing on stderr when not a TTY.
truncate -s 64M "$T/p.raw"
dd if=/dev/urandom of="$T/p.raw" bs=1M count=8 seek=4 conv=notrunc status=none
"$SPARSYNC" copy "$T/p.raw" "$T/p1.raw" 2>"$T/p.err" </dev/null
check "no TTY: nothing on stderr" test ! -s "$T/p.err"
check "forced progress (-P) without TTY shows a percentage" \
	sh -c "'$SPARSYNC' copy -P --whole '$T/p.raw' '$T/p1.raw' 2>&1 >/dev/null | grep -q '%'"
if command -v script >/dev/null; then
	script -qec "'$SPARSYNC' copy --whole '$T/p.raw' '$T/p2.raw'" "$T/typescript" >/dev/null 2>&1
	check "TTY: progress line with a percentage" grep -q '100.0%' "$T/typescript"
	script -qec "'$SPARSYNC' copy -q --whole '$T/p.raw' '$T/p3.raw'" "$T/ts2" >/dev/null 2>&1
	check "TTY with -q: no progress" sh -c "! grep -q '%' '$T/ts2'"
	check "copies under script are identical" cmp "$T/p.raw" "$T/p2.raw"
else
	fail "script(1) missing: cannot test progress on a TTY"
fi

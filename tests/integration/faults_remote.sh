#!/bin/bash
# Remote faults (issue 8), against a throw-away sshd on 127.0.0.1:
#  - the connection cut mid-stream (an -e wrapper around the real ssh that
#    stops passing bytes after a few MB, and a TCP relay that drops the
#    built-in client's connection after a few MB), in both directions;
#  - the remote `sparsync serve` or its sshd session killed mid-push;
#  - SIGINT on the client during a slow (--bwlimit) push and pull;
#  - a raw source that grows during the copy, over ssh and locally.
# Each must end with a clean error (exit 1..123) within seconds, no hang,
# no destination under the final name and no temporary file on either side
# (the remote side within 10 s, 30 s under valgrind).
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"

# gone DIR NAME: within 10 s, neither NAME nor a temporary .NAME.sparsync-*
# is left in DIR (the remote side notices a dead peer on its own).
gone() {
	local i
	local n=100
	[ -n "${SANITIZER:-}" ] && n=300
	for i in $(seq $n); do
		if [ ! -e "$1/$2" ] && ! ls -A "$1" | grep -q "^\.$2\.sparsync-"; then return 0; fi
		sleep 0.1
	done
	ls -la "$1" >&2
	pgrep -af -- "serve --(receive|send) $1/$2" >&2
	return 1
}
# The PID of the `sparsync serve` process working on PATH (not the shell
# around it), once it exists. Found by its unique path, killed by its PID.
serve_pid() {
	local i p
	for i in $(seq 200); do
		for p in $(pgrep -f -- "serve --(receive|send) $1( |\$)"); do
			case $(cat /proc/$p/comm 2>/dev/null) in sh|bash|dash|timeout|"") continue ;; esac
			echo "$p"; return 0
		done
		sleep 0.05
	done
	return 1
}

sshd_start || exit 0
SSH="ssh -F $SSH_CONFIG"
R=$T/remote
L=$T/local
mkdir -p "$R" "$L"
RELAY_PID=
trap 'if [ -n "$RELAY_PID" ]; then kill $RELAY_PID 2>/dev/null; fi; sshd_stop; rm -rf "$T"' EXIT

# An image of about 12 MiB of data that does not compress, so that a few
# MB on the wire is well inside the stream.
if [ -z "${SANITIZER:-}" ]; then n=12; else n=8; fi
img=$T/src.raw
truncate -s $((64 * MiB)) "$img"
dd if=/dev/urandom of="$img" bs=1M count=$n seek=4 conv=notrunc status=none
cut=$((3 * MiB))

# ---- -e wrappers around the real ssh that cut the stream ----
cat >"$T/cut-push" <<EOF
#!/bin/sh
# Client -> server bytes stop after $cut: the remote reads end of stream.
head -c $cut | $SSH "\$@"
EOF
cat >"$T/cut-pull" <<EOF
#!/bin/sh
# Server -> client bytes stop after $cut: the client reads end of stream.
$SSH "\$@" | head -c $cut
EOF
chmod +x "$T/cut-push" "$T/cut-pull"

check_fails "push cut after 3 MB (-e ssh | head)" \
	timeout 30 "$SPARSYNC" copy -q -e "$T/cut-push" --remote-path "$SPARSYNC" "$img" "sparsync-test:$R/cut.raw"
said "push cut: the error says what happened" "truncated stream|closed|broken pipe|reader"
check "push cut: no remote destination or temporary file" gone "$R" cut.raw
check_fails "pull cut after 3 MB (ssh | head)" \
	timeout 30 "$SPARSYNC" copy -q -e "$T/cut-pull" --remote-path "$SPARSYNC" "sparsync-test:$img" "$L/cut.raw"
said "pull cut: truncation reported" "truncated stream"
check "pull cut: no local destination or temporary file" gone "$L" cut.raw

# ---- a TCP relay that drops the built-in client's connection ----
cat >"$T/relay.py" <<'EOF'
# relay.py PORTFILE TARGET_PORT LIMIT: forward 127.0.0.1 connections to
# TARGET_PORT; once LIMIT bytes went either way, reset both sides.
import socket, struct, sys, threading
portfile, target, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(16)
open(portfile + ".tmp", "w").write(str(ls.getsockname()[1]))
import os; os.rename(portfile + ".tmp", portfile)
def serve(c):
    s = socket.create_connection(("127.0.0.1", target))
    state = {"n": 0, "dead": False}
    lock = threading.Lock()
    def drop():
        with lock:
            if state["dead"]: return
            state["dead"] = True
        # Reset both sides. shutdown() first: close() alone does not end a
        # socket another thread is blocked reading, so the far side would
        # never learn the connection is gone.
        for x in (c, s):
            try:
                x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                x.shutdown(socket.SHUT_RDWR)
            except OSError: pass
        for x in (c, s):
            try: x.close()
            except OSError: pass
    def pump(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d: break
                with lock: state["n"] += len(d); over = state["n"] > limit
                if over: break
                b.sendall(d)
        except OSError: pass
        drop()
    for a, b in ((c, s), (s, c)):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
python3 "$T/relay.py" "$T/relay.port" "$SSHD_PORT" "$cut" &
RELAY_PID=$!
for _ in $(seq 100); do [ -s "$T/relay.port" ] && break; sleep 0.05; done
RPORT=$(cat "$T/relay.port" 2>/dev/null)
if [ -n "$RPORT" ]; then
	# The same host key, known under the relay's port.
	sed "s/^\[127\.0\.0\.1\]:$SSHD_PORT /[127.0.0.1]:$RPORT /" "$SSH_KNOWN_HOSTS" >"$T/kh_relay"
	BUILTIN="-p $RPORT -i $SSH_KEY --known-hosts $T/kh_relay --remote-path $SPARSYNC"
	check_fails "built-in client, push: connection dropped after 3 MB" \
		timeout 30 "$SPARSYNC" copy -q $BUILTIN "$img" "127.0.0.1:$R/drop.raw"
	check "dropped push: no remote destination or temporary file" gone "$R" drop.raw
	check_fails "built-in client, pull: connection dropped after 3 MB" \
		timeout 30 "$SPARSYNC" copy -q $BUILTIN "127.0.0.1:$img" "$L/drop.raw"
	check "dropped pull: no local destination or temporary file" gone "$L" drop.raw
	check "the relay passes a small copy untouched (sanity)" \
		timeout 60 "$SPARSYNC" copy -q $BUILTIN "$T/kh_relay" "127.0.0.1:$R/small.raw"
	rm -f "$R/small.raw"
else
	fail "TCP relay did not start"
fi

# ---- the remote side killed mid-push (built-in client) ----
B="-p $SSHD_PORT -i $SSH_KEY --known-hosts $SSH_KNOWN_HOSTS --remote-path $SPARSYNC"
# kill_remote NAME SIGNAL WHO: push slowly to NAME, kill WHO (serve, or the
# sshd session process above it) with SIGNAL once the remote temp exists.
kill_remote() {
	local name=$1 sig=$2 who=$3 pid victim start took rc
	"$SPARSYNC" copy -q $B --bwlimit 1M "$img" "127.0.0.1:$R/$name" >"$T/kill.out" 2>&1 &
	pid=$!
	if ! wait_for_temp "$R" "$name" || ! victim=$(serve_pid "$R/$name"); then
		fail "$name: the remote serve never started"; kill $pid 2>/dev/null; wait $pid; return
	fi
	[ "$who" = session ] && victim=$(ps -o ppid= -p "$victim" | tr -d ' ')
	start=$(date +%s)
	kill -"$sig" "$victim"
	timeout 30 tail --pid=$pid -f /dev/null
	if kill -0 $pid 2>/dev/null; then
		fail "$name: client still running 30 s after the remote $who died"
		kill $pid; wait $pid
		return
	fi
	wait $pid; rc=$?
	took=$(( $(date +%s) - start ))
	check "$name: client fails with exit 1 after the remote $who got SIG$sig (exit $rc, ${took}s)" \
		test $rc -eq 1 -a $took -le 20
	check "$name: the client says why in one line" test "$(wc -l <"$T/kill.out")" -eq 1
	# SIGKILL cannot clean up after itself; the others must.
	if [ "$sig" = KILL ] && [ "$who" = serve ]; then
		check "$name: no destination under the final name" test ! -e "$R/$name"
		rm -f "$R/.$name.sparsync-"*
	else
		check "$name: no remote destination or temporary file" gone "$R" "$name"
	fi
}
kill_remote kill-serve-term.raw TERM serve
kill_remote kill-serve-kill.raw KILL serve
kill_remote kill-session.raw KILL session

# ---- SIGINT on the client during a slow push/pull ----
# sigint_client NAME DIR-WITH-TEMP MODE ARGS...: start the copy, wait until
# the temporary file of NAME exists in DIR, interrupt the client.
sigint_client() {
	local label=$1 dir=$2 name=$3 pid rc; shift 3
	"$SPARSYNC" copy -q --bwlimit 1M "$@" >"$T/int.out" 2>&1 &
	pid=$!
	if ! wait_for_temp "$dir" "$name"; then
		fail "$label: the temporary file never appeared"; kill $pid; wait $pid; return
	fi
	sleep 0.5
	kill -INT $pid
	timeout 20 tail --pid=$pid -f /dev/null
	if kill -0 $pid 2>/dev/null; then
		fail "$label: client ignores SIGINT"; kill -KILL $pid; wait $pid; return
	fi
	wait $pid; rc=$?
	check "$label: the client stops on SIGINT (exit $rc)" test $rc -ne 0
	check "$label: no temporary file or destination remains" gone "$dir" "$name"
}
sigint_client "SIGINT during a push (built-in client)" "$R" int1.raw $B "$img" "127.0.0.1:$R/int1.raw"
sigint_client "SIGINT during a push (-e ssh)" "$R" int2.raw -e "$SSH" --remote-path "$SPARSYNC" "$img" "sparsync-test:$R/int2.raw"
sigint_client "SIGINT during a pull (built-in client)" "$L" int3.raw $B "127.0.0.1:$img" "$L/int3.raw"
# (pgrep from this shell: a `sh -c` around it would match its own pattern.)
no_serve_left() {
	local i
	for i in $(seq 100); do
		pgrep -f -- "serve --(receive|send) ($R/int|$img)" >/dev/null || return 0
		sleep 0.1
	done
	pgrep -af -- "serve --(receive|send) ($R/int|$img)" >&2
	return 1
}
check "no sparsync serve left running on the remote after the interrupts" no_serve_left

# ---- a source that grows during the copy ----
cp --sparse=always "$img" "$T/grow.raw"
# grow_when_open: in the background, grow grow.raw by 1 MiB as soon as a
# sparsync process has it open (the sender has taken its size; under
# valgrind that takes seconds), while the --bwlimit-paced send goes on.
source_open() {
	local i p
	for i in $(seq 3000); do
		for p in $(pgrep -f -- "$T/grow.raw"); do
			ls -l /proc/$p/fd 2>/dev/null | grep -q -- "-> $T/grow.raw\$" && return 0
		done
		sleep 0.01
	done
	return 1
}
grow_when_open() {
	( source_open; truncate -s $((65 * MiB)) "$T/grow.raw" ) &
	grower=$!
}
grow_push() { # LABEL ARGS...: push grow.raw slowly, grow it meanwhile
	local label=$1; shift
	truncate -s $((64 * MiB)) "$T/grow.raw"
	grow_when_open
	check_fails "$label: a source that grows is reported" \
		timeout 60 "$SPARSYNC" copy -q --bwlimit 4M "$@"
	wait $grower
	said "$label: the message says the size changed" "source changed size during the copy \\($((64 * MiB)) -> $((65 * MiB)) bytes\\)"
}
grow_push "push, built-in client" $B "$T/grow.raw" "127.0.0.1:$R/grow1.raw"
check "grown source, built-in push: no remote destination or temporary file" gone "$R" grow1.raw
grow_push "push, -e ssh" -e "$SSH" --remote-path "$SPARSYNC" "$T/grow.raw" "sparsync-test:$R/grow2.raw"
check "grown source, -e push: no remote destination or temporary file" gone "$R" grow2.raw
truncate -s $((64 * MiB)) "$T/grow.raw"
grow_when_open
check_fails "pull: a remote source that grows is reported" \
	timeout 60 "$SPARSYNC" copy -q $B --bwlimit 4M "127.0.0.1:$T/grow.raw" "$L/grow3.raw"
wait $grower
said "pull: the remote's message says the size changed" "source changed size during the copy"
check "grown remote source: no local destination or temporary file" gone "$L" grow3.raw

# Locally: stop the copy once its temporary file exists, grow the source,
# let it go on; and through a local stream (copy SRC - | copy - DST).
if [ -z "${SANITIZER:-}" ]; then n=256; else n=64; fi
truncate -s $((64 * MiB)) "$T/grow.raw"
dd if=/dev/urandom of="$T/grow.raw" bs=1M count=$n seek=1 conv=notrunc status=none
truncate -s $(( (n + 8) * MiB )) "$T/grow.raw"
"$SPARSYNC" copy -q -j 1 "$T/grow.raw" "$L/grow4.raw" >"$T/local.out" 2>&1 &
pid=$!
if wait_for_temp "$L" grow4.raw; then
	kill -STOP $pid
	truncate -s $(( (n + 9) * MiB )) "$T/grow.raw"
	kill -CONT $pid
	wait $pid; rc=$?
	if [ $rc -eq 0 ] && ! grep -q "changed size" "$T/local.out"; then
		fail "local copy: finished before the source grew (too fast to test)"
	else
		check "local copy: a source that grows is reported (exit $rc)" test $rc -eq 1
		cp "$T/local.out" "$T/.last"
		said "local copy: the message says the size changed" "source changed size during the copy"
		check "local copy: no destination or temporary file" gone "$L" grow4.raw
	fi
else
	wait $pid
	fail "local copy: the temporary file never appeared"
fi
cp --sparse=always "$img" "$T/grow.raw"
grow_when_open
check_fails "local stream: a source that grows is reported" \
	timeout 60 sh -c "'$SPARSYNC' copy -q --bwlimit 4M '$T/grow.raw' - | '$SPARSYNC' copy -q - '$L/grow5.raw'"
wait $grower
said "local stream: the message says the size changed" "source changed size during the copy"
check "local stream: no destination or temporary file" gone "$L" grow5.raw

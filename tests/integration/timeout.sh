#!/bin/bash
# --timeout: a peer that stalls while the connection stays up (a remote
# process stopped, a hung disk). sshd still answers keepalives, so without
# --timeout the other side waits for ever. With it, each side must give up
# within seconds with one line naming the peer and --timeout, and leave no
# temporary file or destination behind. Against a throw-away sshd on
# 127.0.0.1, for the built-in client, -e ssh, a pull, the remote side's own
# timeout (client stalled) and a stream on stdin.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"

sshd_start || exit 0
SSH="ssh -F $SSH_CONFIG"
R=$T/remote
L=$T/local
mkdir -p "$R" "$L"
trap 'pkill -CONT -f -- "$T/" 2>/dev/null; sshd_stop; rm -rf "$T"' EXIT

# Slow binaries (sanitizers, valgrind) need more time for the normal steps:
# a short --timeout would fire while the remote is still starting.
if [ -z "${SANITIZER:-}" ]; then TMO=2; LIMIT=15; else TMO=10; LIMIT=40; fi
B="-p $SSHD_PORT -i $SSH_KEY --known-hosts $SSH_KNOWN_HOSTS --remote-path $SPARSYNC"

img=$T/src.raw
truncate -s $((64 * MiB)) "$img"
put_random "$img" $((24 * MiB)) $((4 * MiB))

# gone DIR NAME: within 30 s, neither NAME nor its temporary file is in DIR.
gone() {
	local i
	for i in $(seq 300); do
		if [ ! -e "$1/$2" ] && ! ls -A "$1" | grep -q "^\.$2\.sparsync-"; then return 0; fi
		sleep 0.1
	done
	ls -la "$1" >&2
	return 1
}
# sparsync_pid PATTERN: the sparsync process (not a shell around it) whose
# command line matches PATTERN.
sparsync_pid() {
	local i p
	for i in $(seq 200); do
		for p in $(pgrep -f -- "$1"); do
			case $(cat /proc/$p/comm 2>/dev/null) in sh|bash|dash|timeout|ssh|sshd|"") continue ;; esac
			echo "$p"; return 0
		done
		sleep 0.05
	done
	return 1
}
# ends_within PID SECONDS: PID exits within SECONDS; its exit status in RC.
ends_within() {
	timeout "$2" tail --pid="$1" -f /dev/null
	if kill -0 "$1" 2>/dev/null; then return 1; fi
	wait "$1"; RC=$?
	return 0
}

# stalled_peer LABEL DIR NAME STOP_PATTERN COPY_ARGS...: start a paced copy,
# stop (SIGSTOP) the process matching STOP_PATTERN once NAME's temporary
# file exists in DIR; the client must fail within LIMIT s. Then resume it:
# the stopped side must notice the connection is gone and clean up.
stalled_peer() {
	local label=$1 dir=$2 name=$3 pat=$4 pid victim start took; shift 4
	"$SPARSYNC" copy -q --timeout "$TMO" --bwlimit 4M "$@" >"$T/st.out" 2>&1 &
	pid=$!
	if ! wait_for_temp "$dir" "$name" || ! victim=$(sparsync_pid "$pat"); then
		fail "$label: the copy never started"; kill $pid; wait $pid; return
	fi
	kill -STOP "$victim"
	start=$(date +%s)
	if ! ends_within $pid $LIMIT; then
		fail "$label: client still waiting $LIMIT s after its peer stopped"
		kill -KILL $pid; wait $pid; kill -CONT "$victim"; return
	fi
	took=$(( $(date +%s) - start ))
	check "$label: the client gives up (exit $RC after ${took}s)" test $RC -eq 1
	check "$label: one line names --timeout" \
		sh -c "test \$(wc -l <'$T/st.out') -eq 1 && grep -q -- '--timeout' '$T/st.out'"
	sed 's/^/    said: /' "$T/st.out"
	kill -CONT "$victim"
	check "$label: no destination or temporary file once the peer resumes" gone "$dir" "$name"
}

stalled_peer "push, remote serve stopped (built-in client)" "$R" st1.raw "receive $R/st1.raw" \
	$B "$img" "127.0.0.1:$R/st1.raw"
stalled_peer "push, remote serve stopped (-e ssh)" "$R" st2.raw "receive $R/st2.raw" \
	-e "$SSH" --remote-path "$SPARSYNC" "$img" "sparsync-test:$R/st2.raw"
stalled_peer "pull, remote serve stopped (built-in client)" "$L" st3.raw "send $img" \
	$B "127.0.0.1:$img" "$L/st3.raw"

# ---- the client stalls: the remote serve gives up on its own ----
"$SPARSYNC" copy -q --timeout "$TMO" --bwlimit 4M $B "$img" "127.0.0.1:$R/st4.raw" >"$T/st4.out" 2>&1 &
pid=$!
if wait_for_temp "$R" st4.raw; then
	kill -STOP $pid
	check "client stopped: the remote serve gives up and cleans up on its own" gone "$R" st4.raw
	kill -CONT $pid
	if ends_within $pid $LIMIT; then
		check "client stopped: once resumed it fails (exit $RC)" test $RC -eq 1
	else
		fail "client stopped: still running $LIMIT s after it resumed"; kill -KILL $pid; wait $pid
	fi
else
	fail "client stopped: the copy never started"; kill $pid; wait $pid
fi

# ---- a stream on stdin that stops coming ----
"$SPARSYNC" copy -q "$img" - >"$T/stream"
start=$(date +%s)
check_fails "stream on stdin stalls after 2 MB: copy - fails" \
	timeout $LIMIT "$SPARSYNC" copy -q --timeout "$TMO" - "$L/st5.raw" \
	< <(head -c $((2 * MiB)) "$T/stream"; sleep $((LIMIT + 5)))
took=$(( $(date +%s) - start ))
check "stream stall: reported as --timeout in one line, after ${took}s" \
	sh -c "test \$(wc -l <'$T/.last') -eq 1 && grep -q 'no data from the stream' '$T/.last'"
check "stream stall: no destination or temporary file" gone "$L" st5.raw

# ---- --timeout changes nothing for a copy that keeps moving ----
check "push with --timeout $TMO completes" "$SPARSYNC" copy -q --timeout "$TMO" $B "$img" "127.0.0.1:$R/ok.raw"
check "push with --timeout: identical (cmp)" cmp "$img" "$R/ok.raw"
check "pull with --timeout -e ssh completes" \
	"$SPARSYNC" copy -q --timeout "$TMO" -e "$SSH" --remote-path "$SPARSYNC" "sparsync-test:$img" "$L/ok.raw"
check "pull with --timeout: identical (cmp)" cmp "$img" "$L/ok.raw"
check_fails "--timeout 0 is refused" "$SPARSYNC" copy --timeout 0 "$img" "$L/x.raw"
check "--timeout 0: usage error names the option" grep -q -- '--timeout takes seconds' "$T/.last"
check_fails "verify --timeout x is refused" "$SPARSYNC" verify --timeout x "$img" "$img"

# ---- descriptors handed over non-blocking, no --timeout: wait, no spin ----
# (A caller's pipe may carry O_NONBLOCK; EAGAIN then means "wait", not an
# error, and not a busy loop.) nbpipe.py MODE runs sparsync on a pipe end
# with O_NONBLOCK set: "out" reads the stream after a pause, "in" writes a
# stream with a pause in the middle; prints the child's exit status and CPU s.
cat >"$T/nbpipe.py" <<'PY'
import fcntl, os, resource, subprocess, sys, time
mode, sparsync, src, dst, pause = sys.argv[1:6]
pause = float(pause)
r, w = os.pipe()
end = w if mode == "out" else r
fcntl.fcntl(end, fcntl.F_SETFL, fcntl.fcntl(end, fcntl.F_GETFL) | os.O_NONBLOCK)
if mode == "out":
    p = subprocess.Popen([sparsync, "copy", "-q", src, "-"], stdout=w)
    os.close(w)
    time.sleep(pause)
    with open(dst, "wb") as f:
        while True:
            b = os.read(r, 1 << 20)
            if not b:
                break
            f.write(b)
else:
    p = subprocess.Popen([sparsync, "copy", "-q", "-", dst], stdin=r)
    os.close(r)
    data = open(src, "rb").read()
    os.set_blocking(w, True)
    os.write(w, data[:len(data) // 2])
    time.sleep(pause)
    os.write(w, data[len(data) // 2:])
    os.close(w)
_, status, ru = os.wait4(p.pid, 0)
print(os.waitstatus_to_exitcode(status), "%.2f" % (ru.ru_utime + ru.ru_stime))
PY
read -r rc _ < <(python3 "$T/nbpipe.py" out "$SPARSYNC" "$img" "$T/nb.sps" 1)
check "non-blocking stdout, slow reader, no --timeout: the stream is written (exit $rc)" test "$rc" = 0
check "non-blocking stdout: the stream restores the image" \
	sh -c "'$SPARSYNC' copy -q - '$L/nb1.raw' <'$T/nb.sps' && cmp '$img' '$L/nb1.raw'"
read -r rc0 cpu0 < <(python3 "$T/nbpipe.py" in "$SPARSYNC" "$T/stream" "$L/nb2.raw" 0)
read -r rc2 cpu2 < <(python3 "$T/nbpipe.py" in "$SPARSYNC" "$T/stream" "$L/nb3.raw" 2)
check "non-blocking stdin, stream paused 2 s, no --timeout: received (exit $rc0, $rc2)" \
	sh -c "test '$rc0' = 0 && test '$rc2' = 0 && cmp '$img' '$L/nb3.raw'"
check "non-blocking stdin: the pause costs no CPU (${cpu0}s without, ${cpu2}s with)" \
	python3 -c "import sys; sys.exit(0 if $cpu2 - $cpu0 < 1.0 else 1)"

#!/bin/bash
# Push and pull through `-e CMD` (issue 5): first with a local stand-in for
# ssh (runs the remote command here), for the protocol's error and fault
# paths; then through a real OpenSSH sshd on 127.0.0.1 with
# `-e 'ssh -F CFG'`, checked with cmp and qemu-img.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
TO="timeout 300"


img=$T/src.raw
truncate -s $((40 * MiB + 333)) "$img"
python3 - "$img" <<'EOF'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(1 << 20); f.write(b"a compressible line of text\n" * 80000)
    f.seek(8 << 20); f.write(os.urandom(3 << 20))
    f.seek(20 << 20); f.write(b"\0" * (2 << 20))
    f.seek((40 << 20) + 1); f.write(b"end" * 100)
EOF

# ---- a local stand-in for ssh: [-l USER] [-p PORT] HOST COMMAND ----
mkdir -p "$T/r"
cat >"$T/fake-ssh" <<'EOF'
#!/bin/sh
# Record the arguments, then run the last one (the remote command) here.
printf '%s\n' "$@" >"${FAKE_SSH_ARGS:-/dev/null}"
while [ $# -gt 1 ]; do shift; done
exec sh -c "$1"
EOF
chmod +x "$T/fake-ssh"
export FAKE_SSH_ARGS=$T/fake-args
FAKE="-e $T/fake-ssh --remote-path $SPARSYNC"

check "push via -e" $TO "$SPARSYNC" copy --json $FAKE "$img" "somehost:$T/r/pushed.raw"
last_output >"$T/push.json"
check "pushed image is identical" cmp "$img" "$T/r/pushed.raw"
check "pushed image is sparse" test "$(allocated "$T/r/pushed.raw")" -lt "$(allocated "$img")"
check "push --json: bytes_sent is the wire size" \
	test "$(json_field bytes_sent <"$T/push.json")" -gt $((3 * MiB)) -a \
	     "$(json_field bytes_sent <"$T/push.json")" -lt $((5 * MiB))
check "push --json: bytes_written comes from the remote" \
	test "$(json_field bytes_written <"$T/push.json")" -ge $((3 * MiB))
check "push --json: the remote's ACK was received" test "$(json_field bytes_received <"$T/push.json")" -gt 0
check "no temporary file after a push" no_temp_files "$T/r"

check "pull via -e" $TO "$SPARSYNC" copy --json $FAKE "somehost:$T/r/pushed.raw" "$T/pulled.raw"
last_output >"$T/pull.json"
check "pulled image is identical" cmp "$img" "$T/pulled.raw"
check "pull --json: bytes_received is the wire size" test "$(json_field bytes_received <"$T/pull.json")" -gt $((3 * MiB))
check "pull --json: bytes_read comes from the remote" test "$(json_field bytes_read <"$T/pull.json")" -ge $((3 * MiB))

check "user and port reach the command as -l and -p" \
	$TO "$SPARSYNC" copy $FAKE -p 2222 "bob@somehost:$T/r/pushed.raw" "$T/p2.raw"
check "argument order: -l USER -p PORT HOST COMMAND" \
	test "$(head -5 "$T/fake-args" | tr '\n' ' ')" = "-l bob -p 2222 somehost "
check "remote command names serve --send with the path quoted" \
	grep -q "serve --send '$T/r/pushed.raw'" "$T/fake-args"

# A path with a space and a quote survives the remote shell.
odd="$T/r/it's a disk.raw"
check "push to a path with a space and a quote" $TO "$SPARSYNC" copy $FAKE "$img" "somehost:$odd"
check "odd path holds the image" cmp "$img" "$odd"

for c in none lz4 zstd:5; do
	rm -f "$T/r/c.raw"
	check "push --compress $c" $TO "$SPARSYNC" copy $FAKE --compress $c "$img" "somehost:$T/r/c.raw"
	check "push --compress $c identical" cmp "$img" "$T/r/c.raw"
done
check "pull --compress lz4" $TO "$SPARSYNC" copy $FAKE --compress lz4 "somehost:$T/r/c.raw" "$T/c2.raw"
check "pull --compress lz4 identical" cmp "$img" "$T/c2.raw"

# An existing remote destination is replaced.
check "push over an existing destination" $TO "$SPARSYNC" copy $FAKE "$T/c2.raw" "somehost:$T/r/pushed.raw"
check "existing destination replaced" cmp "$img" "$T/r/pushed.raw"

# Remote errors reach the user, exit 1, nothing left behind.
check_fails "pull of a missing remote file" $TO "$SPARSYNC" copy $FAKE "somehost:$T/r/nope.raw" "$T/nope.raw"
said "missing remote file: the remote's reason shown" "somehost: .*nope.raw: No such file"
check "missing remote file: no local destination" test ! -e "$T/nope.raw"
check_fails "push into a missing remote directory" $TO "$SPARSYNC" copy $FAKE "$img" "somehost:$T/r/no/dir.raw"
said "missing remote directory: the remote's reason shown" "somehost: .*directory does not exist"
check "push onto a remote directory (scp's habit)" $TO "$SPARSYNC" copy $FAKE "$img" "somehost:$T/r"
check "remote directory: lands as DIR/BASENAME(SRC)" cmp "$img" "$T/r/$(basename "$img")"
rm -f "$T/r/$(basename "$img")" "$T/r/.$(basename "$img").sparsync"
check_fails "remote sparsync missing" $TO "$SPARSYNC" copy -e "$T/fake-ssh" --remote-path /nonexistent/sparsync "$img" "somehost:$T/r/x.raw"
said "remote sparsync missing: exit status shown" "exit status 127"
check_fails "-e command missing" $TO "$SPARSYNC" copy -e /nonexistent/ssh "$img" "somehost:$T/r/x.raw"
said "-e command missing: named" "cannot run '/nonexistent/ssh'"
check_fails "-e with an unterminated quote" "$SPARSYNC" copy -e "ssh 'oops" "$img" "somehost:$T/r/x.raw"
check_fails "host starting with '-' refused" "$SPARSYNC" copy $FAKE "$img" "-oProxyCommand=x:$T/r/x.raw"
check_fails "pull onto a local directory" "$SPARSYNC" copy $FAKE "somehost:$T/r/pushed.raw" "$T/r"
check "no temporary files after the errors" no_temp_files "$T/r"
check "no temporary files locally" no_temp_files "$T"

# A remote shell that prints a banner on stdout is named, not misparsed.
cat >"$T/chatty-ssh" <<'EOF'
#!/bin/sh
echo "Welcome to the machine"
while [ $# -gt 1 ]; do shift; done
exec sh -c "$1"
EOF
chmod +x "$T/chatty-ssh"
check_fails "banner on stdout refused" $TO "$SPARSYNC" copy -e "$T/chatty-ssh" --remote-path "$SPARSYNC" "$img" "somehost:$T/r/b.raw"
said "banner quoted in the error" 'starts with "Welcome to t'

# The connection cut mid-stream: both directions fail cleanly, quickly,
# and leave no destination or temporary file.
cat >"$T/cut-push" <<'EOF'
#!/bin/sh
while [ $# -gt 1 ]; do shift; done
head -c 300000 | sh -c "$1"
EOF
cat >"$T/cut-pull" <<'EOF'
#!/bin/sh
while [ $# -gt 1 ]; do shift; done
sh -c "$1" | head -c 300000
EOF
chmod +x "$T/cut-push" "$T/cut-pull"
check_fails "push with the stream cut" timeout 60 "$SPARSYNC" copy -e "$T/cut-push" --remote-path "$SPARSYNC" "$img" "somehost:$T/r/cut.raw"
said "cut push: truncation reported" "truncated stream"
check "cut push: no remote destination" test ! -e "$T/r/cut.raw"
check "cut push: no remote temporary file" no_temp_files "$T/r"
check_fails "pull with the stream cut" timeout 60 "$SPARSYNC" copy -e "$T/cut-pull" --remote-path "$SPARSYNC" "somehost:$T/r/pushed.raw" "$T/cut.raw"
said "cut pull: truncation reported" "truncated stream"
check "cut pull: no local destination" test ! -e "$T/cut.raw"
check "cut pull: no local temporary file" no_temp_files "$T"

# --bwlimit paces the sender (about 4 MiB of wire data at 4 MiB/s).
if [ "${SANITIZER:-0}" != 1 ]; then
	start=$(date +%s.%N)
	check "push with --bwlimit 4M" $TO "$SPARSYNC" copy $FAKE --compress none --bwlimit 4M "$img" "somehost:$T/r/bw.raw"
	took=$(echo "$(date +%s.%N) - $start" | bc)
	check "--bwlimit 4M: about a second for 4 MiB (took ${took}s)" \
		sh -c "echo '$took >= 0.8 && $took < 20' | bc | grep -qx 1"
	check "--bwlimit copy identical" cmp "$img" "$T/r/bw.raw"
fi

# ---- a real sshd ----
sshd_start || exit 0
SSH="ssh -F $SSH_CONFIG"
R=$T/remote
mkdir -p "$R"

check "push through sshd" $TO "$SPARSYNC" copy --json -e "$SSH" --remote-path "$SPARSYNC" "$img" "sparsync-test:$R/a.raw"
check "sshd push identical" cmp "$img" "$R/a.raw"
check "sshd push sparse" test "$(allocated "$R/a.raw")" -lt "$(allocated "$img")"
check "qemu-img compare agrees" qemu-img compare -q -f raw -F raw "$img" "$R/a.raw"
check "pull through sshd" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" "sparsync-test:$R/a.raw" "$T/b.raw"
check "sshd pull identical" cmp "$img" "$T/b.raw"
check "user@host and -p through plain ssh options" \
	$TO "$SPARSYNC" copy -e "ssh -F /dev/null -i $SSH_KEY -o IdentitiesOnly=yes -o UserKnownHostsFile=$SSH_KNOWN_HOSTS -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR" \
	-p "$SSHD_PORT" --remote-path "$SPARSYNC" "$img" "$SSH_USER@127.0.0.1:$R/c.raw"
check "user@host push identical" cmp "$img" "$R/c.raw"
check_fails "sshd pull of a missing file" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" "sparsync-test:$R/missing.raw" "$T/m.raw"
said "sshd: the remote's reason shown" "missing.raw: No such file"
check_fails "sshd: remote sparsync missing" $TO "$SPARSYNC" copy -e "$SSH" --remote-path /nonexistent/sparsync "$img" "sparsync-test:$R/x.raw"
said "sshd: exit status 127 shown" "exit status 127"
check_fails "ssh refuses the connection (unknown host alias)" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" "$img" "no-such-host.invalid:$R/x.raw"
said "ssh failure: exit status 255 shown" "exit status 255"
check "no temporary files on the sshd side" no_temp_files "$R"

# qcow2 on either side, when this build writes qcow2.
if "$SPARSYNC" copy "$img" "$T/probe.qcow2" >/dev/null 2>&1 && qemu-img check -q "$T/probe.qcow2" >/dev/null 2>&1; then
	check "push raw to qcow2 through sshd" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" "$img" "sparsync-test:$R/q.qcow2"
	check "remote qcow2 passes qemu-img check" qemu-img check -q "$R/q.qcow2"
	check "remote qcow2 equals the source" qemu-img compare -q -f raw -F qcow2 "$img" "$R/q.qcow2"
	check "pull qcow2 to raw through sshd" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" "sparsync-test:$R/q.qcow2" "$T/q.raw"
	# qcow2 rounds the virtual size up to 512 bytes: compare content.
	check "pulled raw from qcow2 identical" qemu-img compare -q -f raw -F raw "$img" "$T/q.raw"
	check "push qcow2 source through sshd" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" "$T/probe.qcow2" "sparsync-test:$R/q2.raw"
	check "pushed qcow2 source identical" qemu-img compare -q -f raw -F raw "$img" "$R/q2.raw"
	check "push qcow2 to qcow2 through sshd" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" "$T/probe.qcow2" "sparsync-test:$R/q3.qcow2"
	check "qcow2 to qcow2 passes qemu-img check" qemu-img check -q "$R/q3.qcow2"
	check "qcow2 to qcow2 identical" qemu-img compare -q "$T/probe.qcow2" "$R/q3.qcow2"
	check "pull with -O qcow2 through sshd" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" -O qcow2 "sparsync-test:$R/a.raw" "$T/o.img"
	check "-O qcow2 honoured" sh -c "qemu-img info '$T/o.img' | grep -q 'file format: qcow2'"
	check "-O qcow2 pull identical" qemu-img compare -q -f raw -F qcow2 "$img" "$T/o.img"
else
	fail "writing a qcow2 failed, so the qcow2 transfers could not be tested"
fi

# 8 GiB of trailing hole arrives sparse.
if [ "${SANITIZER:-0}" != 1 ]; then
	big=$T/big.raw
	truncate -s 8G "$big"
	dd if=/dev/urandom of="$big" bs=1M count=2 seek=3 conv=notrunc status=none
	check "push 8 GiB sparse image through sshd" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" "$big" "sparsync-test:$R/big.raw"
	check "8 GiB push keeps the size" test "$(stat -c %s "$R/big.raw")" = $((8 << 30))
	check "8 GiB push arrives sparse" test "$(allocated "$R/big.raw")" -le $((4 * MiB))
	check "8 GiB push identical (qemu-img compare)" qemu-img compare -q -f raw -F raw "$big" "$R/big.raw"
	check "pull 8 GiB sparse image through sshd" $TO "$SPARSYNC" copy -e "$SSH" --remote-path "$SPARSYNC" "sparsync-test:$R/big.raw" "$T/big2.raw"
	check "8 GiB pull arrives sparse" test "$(allocated "$T/big2.raw")" -le $((4 * MiB))
	check "8 GiB pull identical (qemu-img compare)" qemu-img compare -q -f raw -F raw "$big" "$T/big2.raw"
	rm -f "$big" "$T/big2.raw" "$R/big.raw"
fi

#!/bin/bash
# Two hosts on one machine (issue 18): the receiver's sshd runs in a network
# namespace of its own, joined to this one by a veth pair, pinned to its own
# core, with the link shaped by tc netem: 100 Mbit/s with 20 ms RTT, 1 Gbit/s
# with 1 ms, and unshaped. Every tool pushes the same image through the same
# link: tar -S | ssh, tar -Sz | ssh (zstd), rsync -S, rsync -S with zstd, and
# sparsync (auto compression, pinned zstd 1, and over 2 connections). Every
# result is checked with cmp.
#
#   sudo bash bench/two-hosts.sh            (make bench-hosts)
#
# Knobs: HOSTS_LINKS ("100mbit:20ms 1gbit:1ms none"), HOSTS_IMG (an image
# to push; default: an ext4 image of /usr/share/doc made here, 4 GiB),
# HOSTS_TIMEOUT (seconds per run, 600), HOSTS_TOOLS (a regex of the tools
# to run, default all), HOSTS_SP_OPTS (more sparsync options, e.g. -v: its
# messages are kept in $BENCH_DIR/two-hosts.sparsync.log), HOSTS_CONNECTIONS
# (the --connections rows, default "2").
#
# It only uses the two ends of its own veth pair (10.203.77.1 and .2 /30,
# inside the namespace it creates) and sends nothing anywhere else; the
# namespace, the veth pair, the qdiscs and the sshd are removed on exit,
# also when interrupted.
set -u
. "$(dirname "$0")/env.sh"
HOSTS_LINKS=${HOSTS_LINKS:-100mbit:20ms 1gbit:1ms none}
HOSTS_TIMEOUT=${HOSTS_TIMEOUT:-600}
HOSTS_TOOLS=${HOSTS_TOOLS:-.}
HOSTS_SP_OPTS=${HOSTS_SP_OPTS:-}
HOSTS_CONNECTIONS=${HOSTS_CONNECTIONS:-2}
[ "$(id -u)" = 0 ] || { echo "two-hosts: run as root (network namespaces, tc)" >&2; exit 2; }
for c in ip tc taskset sshd ssh ssh-keygen rsync tar zstd mke2fs cmp "$SPARSYNC"; do
	command -v "$c" >/dev/null || { echo "two-hosts: $c is missing" >&2; exit 2; }
done

NS=sps-bench-$$
VA=spa$$ VB=spb$$
A=10.203.77.1 Bip=10.203.77.2
D=$BENCH_DIR/two-hosts.$$
mkdir -p "$D/dst" "$D/ssh"
SSHD_PID=
cleanup() {
	[ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null
	ip link del "$VA" 2>/dev/null          # takes its peer and the qdiscs with it
	ip netns del "$NS" 2>/dev/null
	rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the link ----
ip netns add "$NS" &&
	ip link add "$VA" type veth peer name "$VB" &&
	ip link set "$VB" netns "$NS" &&
	ip addr add "$A/30" dev "$VA" && ip link set "$VA" up &&
	ip -n "$NS" addr add "$Bip/30" dev "$VB" && ip -n "$NS" link set "$VB" up &&
	ip -n "$NS" link set lo up || { echo "two-hosts: cannot make the veth pair" >&2; exit 1; }
shape() { # RATE:DELAY (each way half the RTT) or none
	tc qdisc del dev "$VA" root 2>/dev/null
	ip netns exec "$NS" tc qdisc del dev "$VB" root 2>/dev/null
	[ "$1" = none ] && return 0
	local rate=${1%%:*} rtt=${1#*:} half
	half=$(awk -v r="${rtt%ms}" 'BEGIN { print r / 2 "ms" }')
	if tc qdisc add dev "$VA" root netem delay "$half" rate "$rate" limit 100000 2>/dev/null; then
		ip netns exec "$NS" tc qdisc add dev "$VB" root netem delay "$half" rate "$rate" limit 100000
		LINK_NOTE=
		return
	fi
	# A kernel without sch_netem: the rate alone (tbf), no added delay;
	# the table says so.
	tc qdisc add dev "$VA" root tbf rate "$rate" burst 256kb latency 100ms &&
		ip netns exec "$NS" tc qdisc add dev "$VB" root tbf rate "$rate" burst 256kb latency 100ms &&
		LINK_NOTE=" (no netem in this kernel: rate only, RTT not added)"
}
LINK_NOTE=

# ---- the receiving host: sshd in the namespace, on core 1 ----
ssh-keygen -q -t ed25519 -N '' -f "$D/ssh/host" && ssh-keygen -q -t ed25519 -N '' -f "$D/ssh/id" || exit 1
cp "$D/ssh/id.pub" "$D/ssh/authorized_keys"
cat >"$D/ssh/sshd_config" <<EOF
ListenAddress $Bip
Port 22
HostKey $D/ssh/host
AuthorizedKeysFile $D/ssh/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin yes
PidFile $D/ssh/sshd.pid
LogLevel ERROR
# The remote user's ~/.bashrc stays out of every row (a pyenv init there
# cost 0.5 s per command on the test VM): bash skips it in a nested shell.
SetEnv SHLVL=1
EOF
mkdir -p /run/sshd
ip netns exec "$NS" taskset -c 1 "$(command -v sshd)" -f "$D/ssh/sshd_config" -E "$D/ssh/sshd.log" ||
	{ echo "two-hosts: sshd would not start" >&2; exit 1; }
for _ in $(seq 50); do [ -s "$D/ssh/sshd.pid" ] && break; sleep 0.1; done
SSHD_PID=$(cat "$D/ssh/sshd.pid")
ssh-keyscan -t ed25519 "$Bip" >"$D/ssh/known_hosts" 2>/dev/null
cat >"$D/ssh/config" <<EOF
Host far
	HostName $Bip
	User root
	IdentityFile $D/ssh/id
	IdentitiesOnly yes
	UserKnownHostsFile $D/ssh/known_hosts
	BatchMode yes
	LogLevel ERROR
EOF
SSH="ssh -F $D/ssh/config"
$SSH far true || { echo "two-hosts: no ssh to the namespace" >&2; exit 1; }

# ---- the image ----
IMG=${HOSTS_IMG:-}
if [ -z "$IMG" ]; then
	IMG=$D/fs.raw
	truncate -s 4G "$IMG" && mke2fs -q -F -t ext4 -d /usr/share/doc "$IMG" || exit 1
fi
NAME=$(basename "$IMG")
DATA=$(du -B1 "$IMG" | cut -f1)
# Today's image for the re-sync rows: 1 % of the data's 4 KiB blocks
# rewritten (python3: random offsets inside data extents, from the map).
if grep -Eq -- "$HOSTS_TOOLS" <<<"re-sync"; then
	cp --sparse=always "$IMG" "$D/changed.raw" &&
	"$SPARSYNC" map --json "$IMG" | python3 -c '
import json, os, random, sys
random.seed(18)
ext = [e for e in json.load(sys.stdin) if e.get("data")]
blocks = [(e["start"] + i * 4096) for e in ext for i in range(e["length"] // 4096)]
fd = os.open(sys.argv[1], os.O_WRONLY)
for off in random.sample(blocks, max(1, len(blocks) // 100)):
    os.pwrite(fd, os.urandom(4096), off)
os.close(fd)' "$D/changed.raw" || { echo "two-hosts: cannot make the changed image" >&2; exit 1; }
fi

# ---- runs: the sender on core 0 ----
# Besides the wall time, what bounds each row: the CPU seconds of the sending
# side (every process of the command on core 0: tar, zstd, ssh, sparsync
# with its built-in cipher), of the receiving side (sshd's sessions and what
# they run on core 1, reaped by the listening sshd: its cutime + cstime), and
# the link's floor (wire bytes at the shaped rate). The largest of the three,
# set against the wall time, names the bottleneck.
OUT=$D/results.tsv
TICK=$(getconf CLK_TCK)
reaped_cpu() { awk -v t="$TICK" '{ print ($16 + $17) / t }' "/proc/$SSHD_PID/stat"; }
run() { # LINK TOOL CMD  (CMD writes $D/dst/$NAME; wire bytes in $D/wire)
	local link=$1 tool=$2 cmd=$3 t0 t1 rc r0 r1
	grep -Eq -- "$HOSTS_TOOLS" <<<"$tool" || return 0
	rm -f "$D/dst/$NAME" "$D/dst/.$NAME.sparsync" "$D/wire" "$D/time"
	# A re-sync: PREP puts yesterday's copy in place first (not timed).
	[ -n "${PREP:-}" ] && { bash -c "$PREP" || { echo "two-hosts: $PREP failed" >&2; exit 1; }; }
	sync; echo 3 >/proc/sys/vm/drop_caches
	r0=$(reaped_cpu)
	t0=$(date +%s.%N)
	# Like for like: every tool's result is on disk when the clock stops
	# (sparsync flushes before it renames; tar and rsync do not).
	timeout "$HOSTS_TIMEOUT" /usr/bin/time -f '%U %S' -o "$D/time" taskset -c 0 bash -c "$cmd && sync" >"$D/out" 2>"$D/err"; rc=$?
	t1=$(date +%s.%N)
	sleep 0.2 # the session's processes are reaped
	r1=$(reaped_cpu)
	local secs status=ok
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
	if [ $rc = 124 ]; then status=TIMEOUT
	elif [ $rc != 0 ]; then status="FAILED ($(grep -v '^Command exited' "$D/err" | tail -1 | cut -c1-80))"
	elif ! cmp -s "${WANT:-$IMG}" "$D/dst/$NAME"; then status="FAILED (differs)"; fi
	local wire scpu rcpu floor
	wire=$(cat "$D/wire" 2>/dev/null)
	scpu=$(awk '{ printf "%.2f", $1 + $2 }' "$D/time" 2>/dev/null)
	rcpu=$(awk -v a="$r0" -v b="$r1" 'BEGIN { printf "%.2f", b - a }')
	floor=$(awk -v w="${wire:-0}" -v l="$link" 'BEGIN {
		r = l; sub(/:.*/, "", r); m = 1
		if (r ~ /gbit$/) m = 1e9; else if (r ~ /mbit$/) m = 1e6; else if (r ~ /kbit$/) m = 1e3; else { print "-"; exit }
		sub(/[a-z]+$/, "", r); printf "%.2f", w * 8 / (r * m) }')
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$link$LINK_NOTE" "$tool" "$secs" "${wire:--}" "${scpu:--}" \
		"$rcpu" "$floor" "$status" | tee -a "$OUT" >&2
	case $tool in sparsync*) { echo "== $link $tool"; cat "$D/err"; } >>"$BENCH_DIR/two-hosts.sparsync.log";; esac
	[ -s "$D/json" ] && sed -n "s/.*\"compress\":\(.*\),\"seconds\".*/$link, $tool: \1/p" "$D/json" >>"$D/levels"
	rm -f "$D/json"
}
# Re-syncs (the second half of issue 18's targets): yesterday's copy is at
# the destination, today's image has nothing or 1 % of its data changed.
# sparsync's copy was written by sparsync (so it has its digest file, as a
# nightly backup does); rsync's is a plain copy (rsync keeps no state).
IMG1=$D/changed.raw
resyncs() { # LINK
	grep -Eq -- "$HOSTS_TOOLS" <<<"re-sync" || return 0
	local link=$1 spprep="'$SPARSYNC' copy -q '$IMG' '$D/dst/$NAME'" cpprep="cp --sparse=always '$IMG' '$D/dst/$NAME'"
	PREP=$spprep run "$link" "re-sync, unchanged: sparsync" "$SP '$IMG' '$Bip:$D/dst/$NAME' >'$D/json' && $SPW"
	PREP=$cpprep run "$link" "re-sync, unchanged: rsync -S" "rsync -S --stats -e '$SSH' '$IMG' 'far:$D/dst/$NAME' >'$D/rs' && sed -n 's/^Total bytes sent: *\\([0-9,]*\\).*/\\1/p' '$D/rs' | tr -d , >'$D/wire'"
	PREP=$spprep WANT=$IMG1 run "$link" "re-sync, 1 % changed: sparsync" "$SP '$IMG1' '$Bip:$D/dst/$NAME' >'$D/json' && $SPW"
	PREP=$cpprep WANT=$IMG1 run "$link" "re-sync, 1 % changed: rsync -S" "rsync -S --stats -e '$SSH' '$IMG1' 'far:$D/dst/$NAME' >'$D/rs' && sed -n 's/^Total bytes sent: *\\([0-9,]*\\).*/\\1/p' '$D/rs' | tr -d , >'$D/wire'"
}
SP="$SPARSYNC copy --json -q $HOSTS_SP_OPTS -i $D/ssh/id --known-hosts $D/ssh/known_hosts --remote-path $SPARSYNC"
SPW="sed -n 's/.*\"bytes_sent\":\\([0-9]*\\).*/\\1/p' '$D/json' >'$D/wire'"
rm -f "$BENCH_DIR/two-hosts.sparsync.log"
for link in $HOSTS_LINKS; do
	shape "$link" || { echo "two-hosts: tc netem failed for $link" >&2; exit 1; }
	run "$link" sparsync "$SP '$IMG' '$Bip:$D/dst/$NAME' >'$D/json' && $SPW"
	run "$link" "sparsync --compress zstd:1" "$SP --compress zstd:1 '$IMG' '$Bip:$D/dst/$NAME' >'$D/json' && $SPW"
	# Several connections (HOSTS_CONNECTIONS, default 2): with one core per
	# host the ciphers share it, so these rows say what --connections costs
	# or gains where it cannot scale.
	for n in $HOSTS_CONNECTIONS; do
		run "$link" "sparsync --connections $n" "$SP --connections $n '$IMG' '$Bip:$D/dst/$NAME' >'$D/json' && $SPW"
	done
	run "$link" "tar -S | ssh" "tar -C '$(dirname "$IMG")' -cSf - '$NAME' | dd bs=1M 2>'$D/dd' | $SSH far 'tar -C $D/dst -xSf -'; sed -n 's/^\\([0-9]*\\) bytes.*/\\1/p' '$D/dd' >'$D/wire'"
	run "$link" "tar -Sz | ssh (zstd)" "tar -C '$(dirname "$IMG")' -cSf - '$NAME' | zstd -1 -q | dd bs=1M 2>'$D/dd' | $SSH far 'zstd -d -q | tar -C $D/dst -xSf -'; sed -n 's/^\\([0-9]*\\) bytes.*/\\1/p' '$D/dd' >'$D/wire'"
	run "$link" "rsync -S" "rsync -S --stats -e '$SSH' '$IMG' 'far:$D/dst/$NAME' >'$D/rs' && sed -n 's/^Total bytes sent: *\\([0-9,]*\\).*/\\1/p' '$D/rs' | tr -d , >'$D/wire'"
	run "$link" "rsync -S --zc=zstd" "rsync -S --stats --compress --compress-choice=zstd --compress-level=1 -e '$SSH' '$IMG' 'far:$D/dst/$NAME' >'$D/rs' && sed -n 's/^Total bytes sent: *\\([0-9,]*\\).*/\\1/p' '$D/rs' | tr -d , >'$D/wire'"
	resyncs "$link"
done
shape none

# ---- the table: ratios against sparsync on the same link ----
echo
echo "## Two hosts: $NAME ($(numfmt --to=iec-i --suffix=B "$DATA") of data), sender on core 0, receiver's sshd on core 1"
echo
echo "| link | tool | seconds | wire bytes | sender CPU s | receiver CPU s | link floor s | bound by | ratio (tool s / sparsync s) | result |"
echo "|---|---|---:|---:|---:|---:|---:|---|---:|---|"
awk -F'\t' '
	# A row is set against sparsync on the same link in the same job (a
	# re-sync row: the part of its name before ": ").
	function job(l, t) { return l "|" (index(t, ": ") ? substr(t, 1, index(t, ": ") - 1) : "") }
	{ row[NR] = $0; if (($2 == "sparsync" || $2 ~ /: sparsync$/) && $8 == "ok") ref[job($1, $2)] = $3 }
	END {
		for (i = 1; i <= NR; i++) {
			split(row[i], f, "\t")
			k = job(f[1], f[2])
			r = (k in ref && ref[k] > 0 && f[8] == "ok") ? sprintf("%.2f", f[3] / ref[k]) : "-"
			b = "sender CPU"; m = f[5]
			if (f[6] + 0 > m + 0) { b = "receiver CPU"; m = f[6] }
			if (f[7] != "-" && f[7] + 0 > m + 0) { b = "link"; m = f[7] }
			if (m + 0 < 0.6 * f[3]) b = b " (" int(100 * m / f[3]) "% of the time: waits)"
			gsub(/\|/, "\\|", f[2])
			printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4], f[5], f[6], f[7], b, r, f[8]
		}
	}' "$OUT"
if [ -s "$D/levels" ]; then
	echo
	echo "Wire compression sparsync used (--json \`compress\`, data bytes in and out per level):"
	echo
	sed 's/^/- /' "$D/levels"
fi

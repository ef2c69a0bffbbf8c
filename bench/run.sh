#!/bin/bash
# sparsync side by side with rsync -S, tar -S | ssh, qemu-img convert and
# cp --sparse=always: builds the test images, starts a loopback sshd with
# throw-away keys, times every tool on every case, checks every result and
# prints a markdown table (also written to bench/out/latest.md).
# Knobs are environment variables; see bench/README.md.
set -u -o pipefail
export LC_ALL=C

. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
KEEP=${KEEP:-0}
BENCH_CASES=${BENCH_CASES:-local frag tib push dev track nbd rbd}
BENCH_TRACK_SCALE=${BENCH_TRACK_SCALE:-1G 4G 16G} # data in the --track scaling images
BENCH_FS_SIZE=${BENCH_FS_SIZE:-8G}
BENCH_FS_TREE=${BENCH_FS_TREE:-/usr/share}
BENCH_FRAG_SIZE=${BENCH_FRAG_SIZE:-4G}
BENCH_FRAG_STRIDE=${BENCH_FRAG_STRIDE:-1M}
BENCH_TIB_SIZE=${BENCH_TIB_SIZE:-1T}
BENCH_TIB_DATA=${BENCH_TIB_DATA:-100M}
BENCH_TIB_CHUNK=${BENCH_TIB_CHUNK:-1M}
BENCH_CHANGE_PCT=${BENCH_CHANGE_PCT:-1}
BENCH_CHANGE_WRITE=${BENCH_CHANGE_WRITE:-4K}
BENCH_REPEAT=${BENCH_REPEAT:-5}            # runs of each quick ssh command (median reported)
BENCH_PEER_REPEAT=${BENCH_PEER_REPEAT:-1}  # runs of rsync/tar on the fs image (slow)
BENCH_LOCAL_REPEAT=${BENCH_LOCAL_REPEAT:-5} # rounds of each local case (tools alternate)
BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}          # rsync -S on the 1 TiB file
BENCH_CMD_TIMEOUT=${BENCH_CMD_TIMEOUT:-900}  # any other timed command
BENCH_STRICT=${BENCH_STRICT:-0}              # 1: unmet targets fail the run too
BENCH_WAIT_QUIET=${BENCH_WAIT_QUIET:-0}      # wait up to N s for idle cores before each run
SPARSYNC_OPTS=${SPARSYNC_OPTS:-}             # extra options for every sparsync copy
if [ -z "${DROP_CACHES:-}" ]; then
	DROP_CACHES=0
	[ "$(id -u)" = 0 ] && [ -e /proc/sys/vm/drop_caches ] && DROP_CACHES=1
fi

B=$BENCH_DIR
IMG=$B/img          # source images (kept between runs with KEEP=1)
L=$B/local          # local destinations
R=$B/remote         # what the loopback sshd writes
W=$B/work           # timings, logs, wrappers
OUT=$TOP/bench/out
TSV=$W/results.tsv
PY=python3

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: $*"; exit 1; }
want() { case " $BENCH_CASES " in *" $1 "*|*" all "*) return 0;; esac; return 1; }
human_bytes() { numfmt --to=iec-i --suffix=B --format=%.1f "$1" 2>/dev/null || echo "$1"; }
alloc() { [ -e "$1" ] && echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )) || echo ""; }

# ---------------------------------------------------------------- setup
for c in "$SPARSYNC" /usr/bin/time timeout qemu-img mke2fs rsync tar cmp "$PY" numfmt qemu-nbd nbdcopy; do
	command -v "$c" >/dev/null 2>&1 || die "missing $c (make bench installs the peers; make builds sparsync)"
done
mkdir -p "$IMG" "$L" "$R" "$W/bin" "$OUT" || die "cannot create $B"
# A copy of the binary under test: a rebuild during the run changes nothing.
cp "$SPARSYNC" "$W/bin/sparsync" || die "cannot copy $SPARSYNC"
SPARSYNC=$W/bin/sparsync
: >"$TSV"

SSHD_UP=0
LOOPS=()   # loop devices the dev case attached: always detached
cleanup() {
	local l
	[ -n "${CEPH_STOP:-}" ] && bash -c "$CEPH_STOP"
	for l in ${NBD_PIDS:-}; do kill "$l" 2>/dev/null; done
	for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
	[ "$SSHD_UP" = 1 ] && sshd_stop
	[ -f "$IMG/fs.raw.journal" ] && $PY "$TOP/bench/imgtool.py" restore "$IMG/fs.raw" "$IMG/fs.raw.journal"
	rm -rf "$L" "$R" "$B/sshd"
	if [ "$KEEP" = 1 ]; then say "bench: KEEP=1, images left in $IMG"
	else rm -rf "$IMG" "$W"; rmdir "$B" 2>/dev/null; fi
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Share of the CPUs busy (all processes) over the next 0.3 s, in percent.
cpu_busy() {
	local a b
	a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
	sleep 0.3
	b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
	echo "$a $b" | awk '{d=($3-$1)+($4-$2); print (d>0) ? int(100*($3-$1)/d) : 0}'
}

# Before a timed run: wait (up to BENCH_WAIT_QUIET s) for the machine to go
# idle, then note how busy it was in BUSY (shown in the table).
settle() {
	local t0=$SECONDS
	BUSY=$(cpu_busy)
	while [ "$BUSY" -gt 15 ] && [ $((SECONDS - t0)) -lt "$BENCH_WAIT_QUIET" ]; do
		sleep 1; BUSY=$(cpu_busy)
	done
}

drop_caches() {
	sync
	[ "$DROP_CACHES" = 1 ] && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
	return 0
}

# A wrapper that measures the remote process's peak RSS: the remote half
# of sparsync, rsync and tar run under sshd, not under our /usr/bin/time.
for t in sparsync rsync; do
	real=$SPARSYNC; [ $t = rsync ] && real=$(command -v rsync)
	cat >"$W/bin/$t-remote" <<EOF
#!/bin/sh
exec /usr/bin/time -f '%M' -a -o '$W/remote-rss' '$real' "\$@"
EOF
	chmod +x "$W/bin/$t-remote"
done
REMOTE_TIME="/usr/bin/time -f %M -a -o $W/remote-rss"

# ---------------------------------------------------------------- images
# Rebuilt only when missing or built with other parameters (KEEP=1 keeps them).
stamp_ok() { [ -f "$IMG/$1" ] && [ -f "$IMG/$1.stamp" ] && [ "$(cat "$IMG/$1.stamp")" = "$2" ]; }
build() { # NAME STAMP CMD...
	local name=$1 st=$2 t0; shift 2
	if stamp_ok "$name" "$st"; then say "bench: reusing $IMG/$name"; return 0; fi
	rm -f "$IMG/$name" "$IMG/$name.stamp"
	say "bench: building $name ($st)"
	t0=$(date +%s%N)
	"$@" || die "building $name failed"
	echo "$st" >"$IMG/$name.stamp"
	say "bench: $name built in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}
[ -f "$IMG/fs.raw.journal" ] && $PY "$TOP/bench/imgtool.py" restore "$IMG/fs.raw" "$IMG/fs.raw.journal"

mk_fs() {
	rm -f "$IMG/fs.qcow2" "$IMG/fs.qcow2.stamp"
	truncate -s "$BENCH_FS_SIZE" "$IMG/fs.raw" &&
	mke2fs -q -F -t ext4 -L sparsync-bench -d "$BENCH_FS_TREE" "$IMG/fs.raw"
}
mk_qcow2() { qemu-img convert -f raw -O qcow2 "$IMG/fs.raw" "$IMG/fs.qcow2"; }
mk_frag() { $PY "$TOP/bench/imgtool.py" frag "$IMG/frag.raw" "$BENCH_FRAG_SIZE" "$BENCH_FRAG_STRIDE" 7 >"$IMG/frag.count"; }
mk_tib() { $PY "$TOP/bench/imgtool.py" sparse "$IMG/tib.raw" "$BENCH_TIB_SIZE" "$BENCH_TIB_DATA" "$BENCH_TIB_CHUNK" 11 >/dev/null; }

if want local || want push || want dev || want track || want nbd || want rbd; then
	build fs.raw "ext4 $BENCH_FS_SIZE -d $BENCH_FS_TREE" mk_fs
fi
{ want local || want track || want nbd; } && build fs.qcow2 "qcow2 of $(cat "$IMG/fs.raw.stamp")" mk_qcow2
want frag && build frag.raw "frag $BENCH_FRAG_SIZE stride $BENCH_FRAG_STRIDE" mk_frag
want tib && build tib.raw "sparse $BENCH_TIB_SIZE data $BENCH_TIB_DATA chunk $BENCH_TIB_CHUNK" mk_tib

# Room for the destinations: up to three copies of the fs image's data
# exist at once (local, or two remote ones plus a tar copy).
if [ -f "$IMG/fs.raw" ]; then
	need=$(( $($PY "$TOP/bench/imgtool.py" datasize "$IMG/fs.raw") * 3 + (1 << 30) ))
	avail=$(( $(df -Pk "$B" | awk 'NR==2{print $4}') * 1024 ))
	[ "$avail" -ge "$need" ] || die "$B: $(human_bytes "$avail") free, the run needs about $(human_bytes "$need")"
fi

# ---------------------------------------------------------------- machine
{
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "- machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)," \
		"kernel $(uname -r), memory $(awk '/MemTotal/{t=$2}/MemAvailable/{a=$2}END{printf "%.1f GiB total, %.1f GiB available", t/1048576, a/1048576}' /proc/meminfo)"
	echo "- load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) (anything above ~0.5 means something else shares the cores)"
	echo "- disk: $(df -T "$B" | awk 'NR==2{print $2 " on " $1}'), page cache dropped before each run: $([ "$DROP_CACHES" = 1 ] && echo yes || echo no); every timed command ends with sync"
	echo "- versions: sparsync $(cd "$TOP" && git describe --always --dirty 2>/dev/null || echo '?'), $(rsync --version | head -1 | awk '{print "rsync " $3}'), $(tar --version | head -1), $(qemu-img --version | head -1 | awk '{print "qemu-img " $3}'), $(ssh -V 2>&1 | cut -d, -f1)"
	for f in fs.raw frag.raw tib.raw fs.qcow2; do
		[ -f "$IMG/$f" ] || continue
		case $f in
		fs.raw) what="ext4 made by mke2fs -d $BENCH_FS_TREE";;
		frag.raw) what="$(cat "$IMG/frag.count" 2>/dev/null || echo '?') 4 KiB blocks, one per $BENCH_FRAG_STRIDE, plus 64 KiB zero-filled blocks";;
		tib.raw) what="$BENCH_TIB_DATA of data in $BENCH_TIB_CHUNK chunks";;
		fs.qcow2) what="qemu-img convert -O qcow2 of fs.raw";;
		esac
		if [ "$f" = fs.qcow2 ]; then
			echo "- image $f: $(human_bytes "$(stat -c %s "$IMG/$f")") file; $what"
		else
			echo "- image $f: $(human_bytes "$(stat -c %s "$IMG/$f")") virtual, $(human_bytes "$($PY "$TOP/bench/imgtool.py" datasize "$IMG/$f")") data; $what"
		fi
	done
} >"$W/machine.md"
cat "$W/machine.md" >&2

# ---------------------------------------------------------------- sshd
if want push || want tib || want dev || want track || want nbd || want rbd; then
	# tests/sshd_lib.sh wants $T (its scratch dir), $TEST_NAME and fail().
	T=$B/sshd; export TEST_NAME=bench; mkdir -p "$T"
	fail() { say "bench: $*"; }
	# shellcheck source=../tests/sshd_lib.sh
	. "$TOP/tests/sshd_lib.sh"
	trap cleanup EXIT          # sshd_lib.sh replaced it
	if sshd_start >&2; then SSHD_UP=1; say "bench: sshd on 127.0.0.1:$SSHD_PORT"
	else say "bench: no sshd: the ssh cases are marked FAILED"; fi
	SSH="ssh -F ${SSH_CONFIG:-/dev/null}"
fi

# ---------------------------------------------------------------- timing
# record CASE TOOL STATUS SECS SENT RECEIVED RSS_KB REMOTE_RSS_KB DST_ALLOC NOTE BUSY
record() {
	local IFS=$'\t'
	echo "$*" >>"$TSV"
	say "$(printf 'bench: %-28s %-20s %-7s %7s s  wire %s/%s  rss %s/%s KiB  %s' \
		"$1" "$2" "$3" "$4" "${5:--}" "${6:--}" "${7:--}" "${8:--}" "${10:-}")"
}

# bench_run CASE TOOL WIRE DST CHECK CMD [TIMEOUT]
#   WIRE:  how bytes on the wire are found: none | json (sparsync --json
#          bytes_sent) | rsync (--stats) | dd (dd's byte count in $W/err.dd)
#   DST:   the result file (its allocated size goes in the table), or ""
#   CHECK: bash code run after CMD succeeded; non-zero marks the row FAILED
#   CMD:   bash code; timed with `sync` appended, after dropping caches
# Set for one call: REPS=N runs CMD N times and reports the median time (the
# largest RSS, the last run's wire bytes; CHECK runs after the last run);
# PREP is bash code run untimed before each run (e.g. removing DST).
bench_run() {
	local case=$1 tool=$2 wire=$3 dst=$4 check=$5 cmd=$6 tmo=${7:-$BENCH_CMD_TIMEOUT}
	local reps=${REPS:-1} prep=${PREP:-}
	local i rc=0 secs rss rrss maxrss=0 maxrrss='' sent='' recv='' status=ok note='' times=() busy=()
	say "bench: run  $case / $tool$( [ "$reps" -gt 1 ] && echo " ($reps runs)")"
	echo "$cmd" >"$W/cmd"
	for ((i = 1; i <= reps; i++)); do
		[ -n "$prep" ] && bash -c "$prep"
		: >"$W/remote-rss"; rm -f "$W/err.dd"
		drop_caches
		settle; busy+=("$BUSY")
		/usr/bin/time -f '%e %M' -o "$W/time" timeout "$tmo" bash -c "$cmd && sync" >"$W/out" 2>"$W/err"
		rc=$?
		# A killed pipeline leaves its remote half running until it sees
		# EOF: let it finish so it neither writes into the next row's
		# remote RSS nor holds the CPU during the next timing.
		if [ $rc = 124 ] && [ "$wire" != none ]; then
			local k; for k in $(seq 1 300); do : "$k"; [ -s "$W/remote-rss" ] && break; sleep 0.1; done
		fi
		read -r secs rss < <(tail -1 "$W/time")
		times+=("$secs")
		[ "${rss:-0}" -gt "$maxrss" ] && maxrss=$rss
		rrss=$(sort -n "$W/remote-rss" | tail -1)
		[ -n "$rrss" ] && { [ -z "$maxrrss" ] || [ "$rrss" -gt "$maxrrss" ]; } && maxrrss=$rrss
		[ $rc != 0 ] && break
	done
	if [ ${#times[@]} -gt 1 ] && [ $rc = 0 ]; then
		secs=$(printf '%s\n' "${times[@]}" | sort -g | sed -n "$(( (${#times[@]} + 1) / 2 ))p")
		note="median of ${#times[@]}: ${times[*]}"
	fi
	case $wire in
	json)
		sent=$(sed -n 's/.*"bytes_sent":\([0-9]*\).*/\1/p' "$W/out" | tail -1)
		recv=$(sed -n 's/.*"bytes_received":\([0-9]*\).*/\1/p' "$W/out" | tail -1);;
	rsync)
		sent=$(sed -n 's/^Total bytes sent: *\([0-9,]*\).*/\1/p' "$W/out" | tr -d ,)
		recv=$(sed -n 's/^Total bytes received: *\([0-9,]*\).*/\1/p' "$W/out" | tr -d ,);;
	dd) # tar's stream; nothing comes back but ssh's own messages
		sent=$(sed -n 's/^\([0-9]*\) bytes.*copied.*/\1/p' "$W/err.dd" 2>/dev/null | tail -1)
		[ -n "$sent" ] && recv=0;;
	esac
	if [ $rc = 124 ]; then
		status=TIMEOUT; note="killed after $tmo s"
		case $tool in sparsync*) status=FAILED;; esac
	elif [ $rc != 0 ]; then
		status=FAILED
		note="exit $rc: $(grep -v '^Command exited' "$W/err" | tail -3 | tr '\n\t' '  ' | cut -c1-200)"
	elif [ -n "$check" ]; then
		if ! bash -c "$check" >"$W/check.out" 2>&1; then
			status=FAILED; note="check failed: $(tail -2 "$W/check.out" | tr '\n\t' '  ' | cut -c1-200)"
		fi
	fi
	record "$case" "$tool" "$status" "$secs" "$sent" "$recv" "$maxrss" "$maxrrss" "$( [ -n "$dst" ] && alloc "$dst")" "$note" \
		"$(printf '%s\n' "${busy[@]}" | sort -n | tail -1)"
	if [ "$status" = FAILED ]; then sed 's/^/    | /' "$W/err" | tail -5 >&2; fi
}

# A fresh copy, BENCH_REPEAT times: the destination is removed before each
# run (an existing destination would turn sparsync's copy into a sync).
bench_fresh() { REPS=${REPS:-$BENCH_REPEAT} PREP="rm -f '$4'" bench_run "$@"; }

# Checks (bash code strings, so they run after the timed command).
same_raw() { echo "$PY '$TOP/bench/imgtool.py' cmp '$1' '$2'"; }  # every byte, like cmp
same_img() { # SRC SRCFMT DST DSTFMT: hole-aware (never cmp a 1 TiB file), qcow2 checked
	local c="qemu-img compare -q -f $2 -F $4 '$1' '$3'"
	[ "$4" = qcow2 ] && c="qemu-img check -q '$3' && $c"
	echo "$c"
}

skip_ssh() { # CASE TOOL...: mark ssh rows FAILED when there is no sshd
	local case=$1 t; shift
	for t in "$@"; do record "$case" "$t" FAILED "" "" "" "" "" "" "no sshd" ""; done
}

SP="$SPARSYNC copy --json -q $SPARSYNC_OPTS"
# In a CHECK: jf FIELD is the last run's --json value of FIELD.
JF="jf() { sed -n \"s/.*\\\"\$1\\\":\\([0-9]*\\).*/\\1/p\" '$W/out' | tail -1; }"

# The local cases are disk-bound and this kind of VM drifts by +-20 % over
# minutes: each round runs every tool once, in turn, so drift hits them
# alike; report.py keeps the median of each tool's rounds.
# local_fresh CASE TOOL DST CHECK CMD: one run of a fresh local copy.
local_fresh() { REPS=1 bench_fresh "$1" "$2" none "$3" "$4" "$5"; }

# raw_to_raw CASE SRC SAME: sparsync, qemu-img convert and cp --sparse=always
# copy the raw SRC; SAME (same_raw or same_raw_img) checks each result.
same_raw_img() { same_img "$1" raw "$2" raw; }
raw_to_raw() {
	local c=$1 src=$2 same=$3 i
	for ((i = 1; i <= BENCH_LOCAL_REPEAT; i++)); do
		local_fresh "$c" sparsync "$L/s.raw" "$($same "$src" "$L/s.raw")" "$SP '$src' '$L/s.raw'"
		local_fresh "$c" "qemu-img convert" "$L/q.raw" "$($same "$src" "$L/q.raw")" \
			"qemu-img convert -f raw -O raw '$src' '$L/q.raw'"
		local_fresh "$c" "cp --sparse=always" "$L/c.raw" "$($same "$src" "$L/c.raw")" \
			"cp --sparse=always '$src' '$L/c.raw'"
	done
	rm -f "$L"/*
}
# convert CASE SRC SRCFMT DSTFMT REF: sparsync and qemu-img convert SRC to
# DSTFMT; each result is checked against the raw REF (cmp for raw output).
convert() {
	local c=$1 src=$2 sf=$3 df=$4 ref=$5 i
	same_as_ref() { if [ "$df" = raw ]; then same_raw "$ref" "$1"; else same_img "$ref" raw "$1" "$df"; fi; }
	for ((i = 1; i <= BENCH_LOCAL_REPEAT; i++)); do
		local_fresh "$c" sparsync "$L/s.$df" "$(same_as_ref "$L/s.$df")" "$SP -O $df '$src' '$L/s.$df'"
		local_fresh "$c" "qemu-img convert" "$L/q.$df" "$(same_as_ref "$L/q.$df")" \
			"qemu-img convert -f $sf -O $df '$src' '$L/q.$df'"
	done
	rm -f "$L"/*
}

# ---------------------------------------------------------------- local cases
if want local; then
	raw_to_raw "fs: local raw->raw" "$IMG/fs.raw" same_raw
	convert "fs: local raw->qcow2" "$IMG/fs.raw" raw qcow2 "$IMG/fs.raw"
	convert "fs: local qcow2->raw" "$IMG/fs.qcow2" qcow2 raw "$IMG/fs.raw"

	# The safe default (undo journal) against --inplace on a 1 % re-sync:
	# both start from a copy of yesterday's image (put back untimed).
	c="fs: local ${BENCH_CHANGE_PCT}% re-sync, safe vs --inplace"
	cp --sparse=always "$IMG/fs.raw" "$L/yesterday.raw"
	$PY "$TOP/bench/imgtool.py" change "$IMG/fs.raw" "$IMG/fs.raw.journal" \
		"$BENCH_CHANGE_PCT" "$BENCH_CHANGE_WRITE" 64K 17 >/dev/null || die "changing fs.raw failed"
	back="cp --sparse=always '$L/yesterday.raw' '$L/d.raw'"
	for ((i = 1; i <= BENCH_LOCAL_REPEAT; i++)); do
		REPS=1 PREP="$back" bench_run "$c" sparsync none "$L/d.raw" "$(same_raw "$IMG/fs.raw" "$L/d.raw")" \
			"$SP '$IMG/fs.raw' '$L/d.raw'"
		REPS=1 PREP="$back" bench_run "$c" "sparsync --inplace" none "$L/d.raw" \
			"$(same_raw "$IMG/fs.raw" "$L/d.raw")" "$SP --inplace '$IMG/fs.raw' '$L/d.raw'"
	done
	$PY "$TOP/bench/imgtool.py" restore "$IMG/fs.raw" "$IMG/fs.raw.journal" || die "restoring fs.raw failed"
	rm -f "$L"/*
fi

if want frag; then
	raw_to_raw "frag: local raw->raw" "$IMG/frag.raw" same_raw
fi

if want tib; then
	raw_to_raw "1 TiB: local copy" "$IMG/tib.raw" same_raw_img

	c="1 TiB: push fresh (ssh)"
	if [ "$SSHD_UP" = 1 ]; then
		mkdir -p "$R/tib-s" "$R/tib-t" "$R/tib-r"
		bench_fresh "$c" sparsync json "$R/tib-s/tib.raw" "$(same_img "$IMG/tib.raw" raw "$R/tib-s/tib.raw" raw)" \
			"$SP $(sparsync_ssh_opts) --remote-path '$W/bin/sparsync-remote' '$IMG/tib.raw' '127.0.0.1:$R/tib-s/tib.raw'"
		bench_fresh "$c" "tar -S | ssh" dd "$R/tib-t/tib.raw" "$(same_img "$IMG/tib.raw" raw "$R/tib-t/tib.raw" raw)" \
			"tar -C '$IMG' -cSf - tib.raw | dd bs=1M 2>'$W/err.dd' | $SSH sparsync-test '$REMOTE_TIME tar -C $R/tib-t -xSf -'"
		REPS=1 bench_fresh "$c" "rsync -S" rsync "$R/tib-r/tib.raw" "$(same_img "$IMG/tib.raw" raw "$R/tib-r/tib.raw" raw)" \
			"rsync -S --stats --rsync-path='$W/bin/rsync-remote' -e '$SSH' '$IMG/tib.raw' 'sparsync-test:$R/tib-r/tib.raw'" \
			"$BENCH_TIMEOUT"
		rm -rf "$R"/tib-*
	else
		skip_ssh "$c" sparsync "tar -S | ssh" "rsync -S"
	fi
fi

# ---------------------------------------------------------------- ssh pushes
if want push; then
	src=$IMG/fs.raw
	mkdir -p "$R/s" "$R/e" "$R/r" "$R/t" "$R/z"
	c="fs: push fresh (ssh)"
	if [ "$SSHD_UP" = 1 ]; then
		bench_fresh "$c" sparsync json "$R/s/fs.raw" "$(same_raw "$src" "$R/s/fs.raw")" \
			"$SP $(sparsync_ssh_opts) --remote-path '$W/bin/sparsync-remote' '$src' '127.0.0.1:$R/s/fs.raw'"
		bench_fresh "$c" "sparsync -e ssh" json "$R/e/fs.raw" "$(same_raw "$src" "$R/e/fs.raw")" \
			"$SP -e '$SSH' --remote-path '$W/bin/sparsync-remote' '$src' 'sparsync-test:$R/e/fs.raw'"
		rm -f "$R/e/fs.raw"
		REPS=$BENCH_PEER_REPEAT bench_fresh "$c" "rsync -S" rsync "$R/r/fs.raw" "$(same_raw "$src" "$R/r/fs.raw")" \
			"rsync -S --stats --rsync-path='$W/bin/rsync-remote' -e '$SSH' '$src' 'sparsync-test:$R/r/fs.raw'"
		REPS=$BENCH_PEER_REPEAT bench_fresh "$c" "tar -S | ssh" dd "$R/t/fs.raw" "$(same_raw "$src" "$R/t/fs.raw")" \
			"tar -C '$IMG' -cSf - fs.raw | dd bs=1M 2>'$W/err.dd' | $SSH sparsync-test '$REMOTE_TIME tar -C $R/t -xSf -'"
		rm -f "$R/t/fs.raw"
		REPS=$BENCH_PEER_REPEAT bench_fresh "$c" "tar -Sz | ssh" dd "$R/z/fs.raw" "$(same_raw "$src" "$R/z/fs.raw")" \
			"tar -C '$IMG' -cSzf - fs.raw | dd bs=1M 2>'$W/err.dd' | $SSH sparsync-test '$REMOTE_TIME tar -C $R/z -xSzf -'"
		rm -f "$R/z/fs.raw"

		# The receiver answers from its digest file (dest_bytes_read 0);
		# --no-digest makes it read its whole copy, as before.
		c="fs: push unchanged (ssh)"
		REPS=$BENCH_REPEAT bench_run "$c" sparsync json "$R/s/fs.raw" \
			"$(same_raw "$src" "$R/s/fs.raw") && $JF && [ \"\$(jf dest_bytes_read)\" = 0 ]" \
			"$SP $(sparsync_ssh_opts) --remote-path '$W/bin/sparsync-remote' '$src' '127.0.0.1:$R/s/fs.raw'"
		REPS=$BENCH_REPEAT bench_run "$c" "sparsync --no-digest" json "$R/s/fs.raw" "$(same_raw "$src" "$R/s/fs.raw")" \
			"$SP --no-digest $(sparsync_ssh_opts) --remote-path '$W/bin/sparsync-remote' '$src' '127.0.0.1:$R/s/fs.raw'"
		REPS=$BENCH_PEER_REPEAT bench_run "$c" "rsync -S" rsync "$R/r/fs.raw" "$(same_raw "$src" "$R/r/fs.raw")" \
			"rsync -S --stats --rsync-path='$W/bin/rsync-remote' -e '$SSH' '$src' 'sparsync-test:$R/r/fs.raw'"

		c="fs: push ${BENCH_CHANGE_PCT}% changed (ssh)"
		read -r nchg nunits < <($PY "$TOP/bench/imgtool.py" change "$src" "$src.journal" \
			"$BENCH_CHANGE_PCT" "$BENCH_CHANGE_WRITE" 64K 13) || die "changing $src failed"
		say "bench: changed $BENCH_CHANGE_WRITE in $nchg of $nunits 64 KiB data blocks of fs.raw"
		echo "- ${BENCH_CHANGE_PCT}% changed: $BENCH_CHANGE_WRITE of random bytes written into each of $nchg of the $nunits 64 KiB data blocks of fs.raw" >>"$W/machine.md"
		bench_run "$c" sparsync json "$R/s/fs.raw" "$(same_raw "$src" "$R/s/fs.raw")" \
			"$SP $(sparsync_ssh_opts) --remote-path '$W/bin/sparsync-remote' '$src' '127.0.0.1:$R/s/fs.raw'"
		bench_run "$c" "rsync -S" rsync "$R/r/fs.raw" "$(same_raw "$src" "$R/r/fs.raw")" \
			"rsync -S --stats --rsync-path='$W/bin/rsync-remote' -e '$SSH' '$src' 'sparsync-test:$R/r/fs.raw'"
		$PY "$TOP/bench/imgtool.py" restore "$src" "$src.journal" || die "restoring $src failed"
	else
		skip_ssh "$c" sparsync "sparsync -e ssh" "rsync -S" "tar -S | ssh" "tar -Sz | ssh"
		skip_ssh "fs: push unchanged (ssh)" sparsync "sparsync --no-digest" "rsync -S"
		skip_ssh "fs: push ${BENCH_CHANGE_PCT}% changed (ssh)" sparsync "rsync -S"
	fi
	rm -rf "${R:?}"/*
fi

# ---------------------------------------------------------------- block devices
# A loop device holding the fs image (an LV, say) pushed to a remote loop
# device of the same size whose backing file is all zeros but that nobody
# told sparsync about: it hashes the device first, as it must. Peers: the
# usual `dd | ssh dd` (every byte, zeros included, crosses the link) and
# qemu-img convert -n locally (one host; no ssh at all).
if want dev; then
	c="dev: loop device push (ssh)"
	if [ "$(id -u)" != 0 ] || ! command -v losetup >/dev/null; then
		record "$c" sparsync FAILED "" "" "" "" "" "" "needs root and losetup" ""
	elif [ "$SSHD_UP" = 1 ]; then
		size=$(stat -c %s "$IMG/fs.raw")
		SDEV=$(losetup -r -f --show "$IMG/fs.raw") && LOOPS+=("$SDEV")
		truncate -s "$size" "$R/dev.img"
		RDEV=$(losetup -f --show "$R/dev.img") && LOOPS+=("$RDEV")
		zero_dev="truncate -s 0 '$R/dev.img'; truncate -s $size '$R/dev.img'; blockdev --flushbufs '$RDEV'"
		same_dev="cmp '$SDEV' '$RDEV'"
		REPS=$BENCH_REPEAT PREP="$zero_dev" bench_run "$c" sparsync json "" "$same_dev" \
			"$SP $(sparsync_ssh_opts) --remote-path '$W/bin/sparsync-remote' '$SDEV' '127.0.0.1:$RDEV'"
		REPS=$BENCH_PEER_REPEAT PREP="$zero_dev" bench_run "$c" "dd bs=4M | ssh dd" dd "" "$same_dev" \
			"dd if='$SDEV' bs=4M status=none | dd bs=4M iflag=fullblock 2>'$W/err.dd' | $SSH sparsync-test '$REMOTE_TIME dd of=$RDEV bs=4M iflag=fullblock conv=fdatasync status=none'"
		REPS=$BENCH_PEER_REPEAT PREP="$zero_dev" bench_run "$c" "qemu-img convert -n (local)" none "" "$same_dev" \
			"qemu-img convert -n -f raw -O raw '$SDEV' '$RDEV'"
		losetup -d "$SDEV" "$RDEV"; LOOPS=()
		rm -f "$R/dev.img"
	else
		skip_ssh "$c" sparsync "dd bs=4M | ssh dd"
	fi
fi

# ---------------------------------------------------------------- tracked backups
# Nightly backups of a qcow2 VM disk whose cost follows the change: three
# copies of yesterday's image on the remote, kept by sparsync --track, by
# sparsync with its digest file only, and by rsync -S (made untimed); then
# the unchanged re-sync, and a 1 % change written the way a guest does
# (qemu-io, so QEMU records it in the bitmaps). Work avoided is counted:
# the --track rows fail unless the source read is only metadata (and the
# dirty clusters), and the receiver read nothing.
if want track; then
	c1="fs.qcow2: push unchanged, --track (ssh)"
	c2="fs.qcow2: push ${BENCH_CHANGE_PCT}% changed, --track (ssh)"
	if [ "$SSHD_UP" = 1 ]; then
		src=$W/vm.qcow2
		cp "$IMG/fs.qcow2" "$src"
		mkdir -p "$R/ta" "$R/tb" "$R/tc"
		RS="$SP $(sparsync_ssh_opts) --remote-path '$W/bin/sparsync-remote'"
		RSY="rsync -S --stats --rsync-path='$W/bin/rsync-remote' -e '$SSH'"
		bash -c "$RS --track '$src' '127.0.0.1:$R/ta/vm.qcow2'" >/dev/null &&
			bash -c "$RS '$src' '127.0.0.1:$R/tb/vm.qcow2'" >/dev/null &&
			bash -c "$RSY '$src' 'sparsync-test:$R/tc/vm.qcow2'" >/dev/null || die "yesterday's backups failed"
		meta=$((16 << 20))
		few="$JF && [ \"\$(jf bytes_read)\" -le $meta ] && [ \"\$(jf dest_bytes_read)\" = 0 ]"
		same_q() { same_img "$src" qcow2 "$1" qcow2; }
		REPS=$BENCH_REPEAT bench_run "$c1" sparsync json "$R/ta/vm.qcow2" "$(same_q "$R/ta/vm.qcow2") && $few" \
			"$RS --track '$src' '127.0.0.1:$R/ta/vm.qcow2'"
		REPS=$BENCH_REPEAT bench_run "$c1" "sparsync, digest only" json "$R/tb/vm.qcow2" "$(same_q "$R/tb/vm.qcow2")" \
			"$RS '$src' '127.0.0.1:$R/tb/vm.qcow2'"
		REPS=$BENCH_PEER_REPEAT bench_run "$c1" "rsync -S" rsync "$R/tc/vm.qcow2" "$(same_q "$R/tc/vm.qcow2")" \
			"$RSY '$src' 'sparsync-test:$R/tc/vm.qcow2'"

		read -r nchg nunits < <($PY "$TOP/bench/imgtool.py" qchange "$src" \
			"$BENCH_CHANGE_PCT" "$BENCH_CHANGE_WRITE" 64K 19) || die "changing $src failed"
		echo "- ${BENCH_CHANGE_PCT}% changed (--track rows): $BENCH_CHANGE_WRITE written by qemu-io into each of $nchg of the $nunits 64 KiB data clusters of a copy of fs.qcow2" >>"$W/machine.md"
		dirty=$(( nchg * 65536 + meta ))
		REPS=1 bench_run "$c2" sparsync json "$R/ta/vm.qcow2" \
			"$(same_q "$R/ta/vm.qcow2") && $JF && [ \"\$(jf bytes_read)\" -le $dirty ] && [ \"\$(jf dest_bytes_read)\" = 0 ]" \
			"$RS --track '$src' '127.0.0.1:$R/ta/vm.qcow2'"
		REPS=1 bench_run "$c2" "sparsync, digest only" json "$R/tb/vm.qcow2" "$(same_q "$R/tb/vm.qcow2")" \
			"$RS '$src' '127.0.0.1:$R/tb/vm.qcow2'"
		REPS=1 bench_run "$c2" "rsync -S" rsync "$R/tc/vm.qcow2" "$(same_q "$R/tc/vm.qcow2")" \
			"$RSY '$src' 'sparsync-test:$R/tc/vm.qcow2'"
		rm -rf "$R"/t? "$src"

		# The unchanged --track re-sync should cost the same whatever the
		# disk holds: images with 1, 4 and 16 GiB of (pattern) data.
		for n in $BENCH_TRACK_SCALE; do
			c="track scale: unchanged --track, $n of data (ssh)"
			s=$W/scale.qcow2
			bytes=$($PY -c "import sys; sys.path.insert(0, '$TOP/bench'); import imgtool; print(imgtool.size('$n'))")
			qemu-img create -q -f qcow2 "$s" $((bytes * 2))
			args=(); for ((o = 0; o < bytes; o += 1 << 30)); do args+=(-c "write -q -P 90 $o $(( bytes - o < (1 << 30) ? bytes - o : 1 << 30 ))"); done
			qemu-io -f qcow2 "${args[@]}" "$s" >/dev/null || die "building $s failed"
			mkdir -p "$R/sc"
			bash -c "$RS --track '$s' '127.0.0.1:$R/sc/s.qcow2'" >/dev/null || die "first --track copy of $s failed"
			REPS=$BENCH_REPEAT bench_run "$c" sparsync json "$R/sc/s.qcow2" "$few" \
				"$RS --track '$s' '127.0.0.1:$R/sc/s.qcow2'"
			rm -rf "$R/sc" "$s"
		done
	else
		skip_ssh "$c1" sparsync "sparsync, digest only" "rsync -S"
		skip_ssh "$c2" sparsync "sparsync, digest only" "rsync -S"
	fi
fi

# ---------------------------------------------------------------- nbd
# The fs image as QEMU exports a VM's disk for a backup: qemu-nbd over a
# unix socket (read-only, --shared=1 as libvirt's backup export), the same
# server for every tool.
if want nbd; then
	c1="fs.qcow2 via NBD: local raw"
	c2="fs.qcow2 via NBD: push (ssh)"
	c3="fs.qcow2 via NBD: ${BENCH_CHANGE_PCT}% changed, --bitmap"
	src=$W/nbdvm.qcow2
	cp "$IMG/fs.qcow2" "$src"
	qemu-img bitmap --add "$src" bk1 || die "qemu-img bitmap --add failed"
	nbd_up() { # ARGS...: (re)start qemu-nbd on $W/nbd.sock
		[ -s "$W/nbd.pid" ] && kill "$(cat "$W/nbd.pid")" 2>/dev/null && sleep 0.2
		rm -f "$W/nbd.sock" "$W/nbd.pid"
		qemu-nbd --fork --pid-file "$W/nbd.pid" -k "$W/nbd.sock" -r -f qcow2 -t "$@" "$src" ||
			die "qemu-nbd would not start"
		NBD_PIDS="${NBD_PIDS:-} $(cat "$W/nbd.pid")"
	}
	U="nbd+unix:///?socket=$W/nbd.sock"
	nbd_up
	same_n() { same_img "$src" qcow2 "$1" raw; }
	for ((i = 1; i <= BENCH_LOCAL_REPEAT; i++)); do
		local_fresh "$c1" sparsync "$L/n.raw" "$(same_n "$L/n.raw")" "$SP '$U' '$L/n.raw'"
		local_fresh "$c1" nbdcopy "$L/c.raw" "$(same_n "$L/c.raw")" "nbdcopy '$U' '$L/c.raw'"
	done
	rm -f "$L/n.raw" "$L/c.raw"
	if [ "$SSHD_UP" = 1 ]; then
		mkdir -p "$R/ns" "$R/nd"
		bench_fresh "$c2" sparsync json "$R/ns/fs.raw" "$(same_n "$R/ns/fs.raw")" \
			"$SP $(sparsync_ssh_opts) --remote-path '$W/bin/sparsync-remote' '$U' '127.0.0.1:$R/ns/fs.raw'"
		bench_fresh "$c2" "nbdcopy - | ssh dd" dd "$R/nd/fs.raw" "$(same_n "$R/nd/fs.raw")" \
			"nbdcopy '$U' - | dd bs=1M 2>'$W/err.dd' | $SSH sparsync-test 'dd of=$R/nd/fs.raw bs=1M conv=sparse iflag=fullblock status=none'"
		rm -rf "$R/nd"
		# Last night's backup, then a day of guest writes, then tonight's
		# incremental from the bitmap against a full re-read.
		bash -c "$SP '$U' '$L/base.raw'" >/dev/null || die "the full NBD copy failed"
		kill "$(cat "$W/nbd.pid")"; sleep 0.2
		read -r nchg nunits < <($PY "$TOP/bench/imgtool.py" qchange "$src" \
			"$BENCH_CHANGE_PCT" "$BENCH_CHANGE_WRITE" 64K 23) || die "changing $src failed"
		echo "- ${BENCH_CHANGE_PCT}% changed (NBD --bitmap rows): $BENCH_CHANGE_WRITE written by qemu-io into each of $nchg of the $nunits 64 KiB data clusters of a copy of fs.qcow2, recorded in its bitmap bk1, exported by qemu-nbd -B bk1" >>"$W/machine.md"
		nbd_up -B bk1
		# What the bitmap marks, as libnbd's nbdinfo reads it from the server.
		dirty=$(nbdinfo --json --map=qemu:dirty-bitmap:bk1 "$U" |
			$PY -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["type"] & 1))')
		[ -n "$dirty" ] || die "nbdinfo could not read the dirty bitmap"
		echo "- the bitmap marks $(human_bytes "$dirty") dirty (nbdinfo --map=qemu:dirty-bitmap:bk1)" >>"$W/machine.md"
		cp --sparse=always "$L/base.raw" "$L/full.raw"
		REPS=1 bench_run "$c3" sparsync json "$L/base.raw" \
			"{ $(same_n "$L/base.raw") || { echo 'the result differs from the source'; false; }; } && $JF && { [ \"\$(jf bytes_read)\" -le $dirty ] || { echo \"read \$(jf bytes_read) bytes, the bitmap marks $dirty\"; false; }; }" \
			"$SP --bitmap bk1 '$U' '$L/base.raw'"
		REPS=1 bench_run "$c3" "sparsync, no bitmap" json "$L/full.raw" "$(same_n "$L/full.raw")" \
			"$SP '$U' '$L/full.raw'"
		REPS=1 bench_fresh "$c3" nbdcopy none "$L/c.raw" "$(same_n "$L/c.raw")" "nbdcopy '$U' '$L/c.raw'"
		rm -f "$L/base.raw" "$L/full.raw" "$L/c.raw"
	else
		skip_ssh "$c2" sparsync "nbdcopy - | ssh dd"
	fi
	kill "$(cat "$W/nbd.pid")" 2>/dev/null
	rm -f "$src"
fi

# ---------------------------------------------------------------- rbd
# The fs image as a Ceph RBD image (a single-node cluster on memstore,
# tests/ceph_lib.sh), backed up over ssh: a full push into a qcow2, then a
# 1 % change pushed with --track against rbd export-diff.
if want rbd; then
	c1="fs as RBD: push to qcow2 (ssh)"
	c2="fs as RBD: ${BENCH_CHANGE_PCT}% changed, --track (ssh)"
	if [ "$SSHD_UP" = 1 ]; then
		CT=$B/ceph; mkdir -p "$CT"
		( T=$CT; fail() { say "bench: $*"; }; . "$TOP/tests/ceph_lib.sh"; ceph_start >&2 ) ||
			die "the Ceph cluster would not start"
		CEPH_STOP="T=$CT; . '$TOP/tests/ceph_lib.sh'; ceph_stop"
		CONF=$CT/ceph/ceph.conf
		SPEC="rbd:rbd/fs:conf=$CONF"
		bash -c "$SP '$IMG/fs.raw' '$SPEC'" >/dev/null || die "importing fs.raw into RBD failed"
		mkdir -p "$R/rb" "$R/rd" "$R/rt" "$R/re"
		RS="$SP $(sparsync_ssh_opts) --remote-path '$W/bin/sparsync-remote'"
		bench_fresh "$c1" sparsync json "$R/rb/fs.qcow2" "$(same_img "$IMG/fs.raw" raw "$R/rb/fs.qcow2" qcow2)" \
			"$RS '$SPEC' '127.0.0.1:$R/rb/fs.qcow2'"
		bench_fresh "$c1" "rbd export | ssh dd" dd "$R/rd/fs.raw" "$(same_raw "$IMG/fs.raw" "$R/rd/fs.raw")" \
			"rbd -c '$CONF' export --no-progress rbd/fs - | dd bs=1M 2>'$W/err.dd' | $SSH sparsync-test 'dd of=$R/rd/fs.raw bs=1M conv=sparse iflag=fullblock status=none'"
		rm -rf "$R/rd" "$R/rb"
		# Last night's backups (untimed): sparsync's with --track, the
		# peer's snapshot for export-diff.
		bash -c "$RS --track '$SPEC' '127.0.0.1:$R/rt/fs.qcow2'" >/dev/null || die "the --track baseline failed"
		rbd -c "$CONF" snap create rbd/fs@base >/dev/null 2>&1 || die "rbd snap create failed"
		cp --sparse=always "$IMG/fs.raw" "$W/rbdday2.raw"
		read -r nchg nunits < <($PY "$TOP/bench/imgtool.py" change "$W/rbdday2.raw" "$W/rbdday2.journal" \
			"$BENCH_CHANGE_PCT" "$BENCH_CHANGE_WRITE" 64K 29) || die "changing the image failed"
		bash -c "$SP '$W/rbdday2.raw' '$SPEC'" >/dev/null || die "writing the change into RBD failed"
		# What changed, in whole objects (librbd's own count): the bound.
		objs=$(rbd -c "$CONF" diff --from-snap base --whole-object --format json rbd/fs |
			$PY -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin)))')
		echo "- ${BENCH_CHANGE_PCT}% changed (RBD rows): $BENCH_CHANGE_WRITE written into each of $nchg of the $nunits 64 KiB data blocks, then into the RBD image; $(human_bytes "$objs") of whole 4 MiB objects changed (rbd diff --whole-object)" >>"$W/machine.md"
		REPS=1 bench_run "$c2" sparsync json "$R/rt/fs.qcow2" \
			"$(same_img "$W/rbdday2.raw" raw "$R/rt/fs.qcow2" qcow2) && $JF && [ \"\$(jf bytes_read)\" -le $objs ]" \
			"$RS --track '$SPEC' '127.0.0.1:$R/rt/fs.qcow2'"
		REPS=1 bench_run "$c2" "rbd export-diff | ssh cat" dd "$R/re/fs.diff" "" \
			"rbd -c '$CONF' export-diff --no-progress --from-snap base rbd/fs - | dd bs=1M 2>'$W/err.dd' | $SSH sparsync-test 'cat > $R/re/fs.diff'"
		rm -rf "$R/rt" "$R/re" "$W/rbdday2.raw" "$W/rbdday2.journal"
		bash -c "$CEPH_STOP"; CEPH_STOP=
	else
		skip_ssh "$c1" sparsync "rbd export | ssh dd"
		skip_ssh "$c2" sparsync "rbd export-diff | ssh cat"
	fi
fi

# ---------------------------------------------------------------- report
echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$W/machine.md"
$PY "$TOP/bench/report.py" "$TSV" "$W/machine.md" "$BENCH_TIMEOUT" >"$W/latest.md"
report_rc=$?
cat "$W/latest.md"
cp "$W/latest.md" "$OUT/latest.md"
cp "$TSV" "$OUT/latest.tsv"
say "bench: table written to $OUT/latest.md"
# report.py: 0 all good, 1 a row FAILED, 3 only targets unmet
case $report_rc in
0) exit 0;;
3) [ "$BENCH_STRICT" = 1 ] && exit 1; exit 0;;
*) exit 1;;
esac

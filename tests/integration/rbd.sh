#!/bin/bash
# Ceph RBD images as images (issue 19, first part), against a real
# single-node cluster started here (tests/ceph_lib.sh, about 1.5 s): an RBD
# image as source (holes from rbd_diff_iterate2, a snapshot as a point in
# time, --since SNAP reading only what changed after it), as destination
# (an existing one synced in place and refused while another client has
# it open; a new one created under a temporary name; the OSD killed
# mid-copy), over ssh both ways; every result checked with `rbd export` +
# cmp or qemu-img compare; a missing image, pool or snapshot and a dead
# cluster are one line, exit 1, nothing left behind.
. "$(dirname "$0")/../lib.sh"
. "$TOP/tests/sshd_lib.sh"
. "$TOP/tests/ceph_lib.sh"
trap 'ceph_stop; sshd_stop; rm -rf "$T"' EXIT
TO="timeout 120"

# librados under valgrind is minutes of its own threads: the plain and
# ASan passes cover this file.
case $SPARSYNC in *valgrind*) echo "rbd: not run under valgrind (librados)"; exit 0;; esac
ceph_start || exit 0
RBD="rbd -c $CEPH_CONF"
spec() { echo "rbd:rbd/$1:conf=$CEPH_CONF"; }
exported() { rm -f "$T/exp.raw"; $RBD export "rbd/$1" "$T/exp.raw" >/dev/null 2>&1 && cmp "$T/exp.raw" "$2"; }

# A 64 MiB disk: data at 10 MiB, a block at 20 MiB, the rest holes.
truncate -s 64M "$T/src.raw"
put_random "$T/src.raw" $((3 * MiB)) $((10 * MiB))
put_random "$T/src.raw" 4096 $((20 * MiB))

$RBD create --size 64M rbd/vm
check "copy into an existing RBD image" $TO "$SPARSYNC" copy --json "$T/src.raw" "$(spec vm)"
check "  written in place" grep -q '"destination":"rbd"' "$T/.last"
check "  rbd export gives the source" exported vm "$T/src.raw"
check "sync it again: nothing written" $TO "$SPARSYNC" copy --json "$T/src.raw" "$(spec vm)"
is "  bytes_written" bytes_written 0
check "copy the RBD image out" $TO "$SPARSYNC" copy --json "$(spec vm)" "$T/out.raw"
check "  the same bytes" cmp "$T/out.raw" "$T/src.raw"
check "  holes stay holes" test "$(qemu_data_ranges "$T/out.raw")" = "$(qemu_data_ranges "$T/src.raw")"
check "copy it to qcow2" $TO "$SPARSYNC" copy "$(spec vm)" "$T/out.qcow2"
check "  qemu-img compare" qemu-img compare -q "$T/out.qcow2" "$T/src.raw"
check "map of an RBD image" "$SPARSYNC" map "$(spec vm)"
check "verify against an RBD image" $TO "$SPARSYNC" verify "$T/src.raw" "$(spec vm)"
# Holes are never read: an image with nothing written reads nothing.
$RBD create --size 1G rbd/empty
check "copy of an empty 1 GiB image" $TO "$SPARSYNC" copy --json "$(spec empty)" "$T/empty.raw"
is "  reads nothing" bytes_read 0

# cephx: what a Ceph user's caps do not allow is refused by the cluster and
# said as such, and nothing changes.
ceph_user ro mon 'profile rbd' osd 'profile rbd-read-only pool=rbd'
ceph_user nosd mon 'profile rbd'
check "a read-only Ceph user copies the image out" $TO "$SPARSYNC" copy "$(spec vm):$(ceph_user_opts ro)" "$T/ro.raw"
check "  the same bytes" cmp "$T/ro.raw" "$T/src.raw"
put_random "$T/ro.raw" 4096 $((30 * MiB))
check_fails "a read-only Ceph user writing into the image" $TO "$SPARSYNC" copy "$T/ro.raw" "$(spec vm):$(ceph_user_opts ro)"
said "  permission denied, named" "rbd:rbd/vm"
said "  says why" "permission denied by the cluster"
check "  the image is unchanged" exported vm "$T/src.raw"
check_fails "a read-only Ceph user creating an image" $TO "$SPARSYNC" copy "$T/ro.raw" "$(spec rofresh):$(ceph_user_opts ro)"
said "  permission denied" "permission denied by the cluster"
check "  nothing created" sh -c "! $RBD ls rbd | grep -q rofresh"
check_fails "a Ceph user without OSD caps reading" $TO "$SPARSYNC" copy "$(spec vm):$(ceph_user_opts nosd)" "$T/nosd.raw"
said "  permission denied" "permission denied by the cluster"
check "  no destination" test ! -e "$T/nosd.raw"
check_fails "a Ceph user the cluster does not know" $TO "$SPARSYNC" copy \
	"$(spec vm):id=nobody:keyring=$CEPH_DIR/client.ro.keyring" "$T/nobody.raw"
said "  cannot connect, named" "rbd:rbd/vm"
check "  no destination" test ! -e "$T/nobody.raw"
rm -f "$T/ro.raw"

# An image that does not exist is created, under a temporary name until
# it is complete.
check "copy into a new RBD image" $TO "$SPARSYNC" copy --json "$T/src.raw" "$(spec fresh)"
check "  rbd export gives the source" exported fresh "$T/src.raw"
check "  the source's size and the usual features" sh -c "$RBD info rbd/fresh | grep -q 'size 64 MiB' &&
	$RBD info rbd/fresh | grep -q 'features: layering, exclusive-lock, object-map, fast-diff'"
check "  no temporary image left" sh -c "! $RBD ls rbd | grep -q sparsync-"
check "other features when the spec says so" $TO "$SPARSYNC" copy "$T/src.raw" "$(spec plain):rbd_default_features=layering"
check "  layering only" sh -c "$RBD info rbd/plain | grep -q 'features: layering\$'"
check "  rbd export gives the source" exported plain "$T/src.raw"
check_fails "-O qcow2 into a new RBD image" $TO "$SPARSYNC" copy -O qcow2 "$T/src.raw" "$(spec other)"
check "  nothing created" sh -c "! $RBD ls rbd | grep -q other"

# A snapshot is a point in time; --since reads only what changed after it.
$RBD snap create rbd/vm@s1 >/dev/null 2>&1
cp --sparse=always "$T/src.raw" "$T/day1.raw"
put_random "$T/src.raw" 4096 $((40 * MiB))
check "the changed disk into the image" $TO "$SPARSYNC" copy "$T/src.raw" "$(spec vm)"
check "copy the snapshot" $TO "$SPARSYNC" copy "$(spec vm@s1)" "$T/s1.raw"
check "  it is the image as it was" cmp "$T/s1.raw" "$T/day1.raw"
check "--since s1 onto yesterday's copy" $TO "$SPARSYNC" copy --json --since s1 "$(spec vm)" "$T/s1.raw"
read_since=$(field bytes_read)
check "  it read only what changed after s1 (one 4 MiB object at most: $read_since)" \
	test "${read_since:-999999999}" -le $((4 * MiB))
check "  it is today's image" cmp "$T/s1.raw" "$T/src.raw"
check_fails "--since a snapshot that does not exist" $TO "$SPARSYNC" copy --since nosuch "$(spec vm)" "$T/s1.raw"
said "  named" "no snapshot 'nosuch'"

# --track: a snapshot per run, the next run reads only what changed since
# the destination's, the older snapshot goes after success only.
snaps() { $RBD snap ls rbd/vm 2>/dev/null | grep -c ' sparsync-'; }
check "--track, first run (a full copy)" $TO "$SPARSYNC" copy --json --track "$(spec vm)" "$T/tr.raw"
check "  says why it read everything" grep -q '"track":"full' "$T/.last"
check "  the copy is the image" cmp "$T/tr.raw" "$T/src.raw"
check "  one snapshot of ours in the image ($(snaps))" test "$(snaps)" = 1
first=$($RBD snap ls rbd/vm | awk '/ sparsync-/ { print $2 }')
put_random "$T/src.raw" 4096 $((30 * MiB))
"$SPARSYNC" copy -q "$T/src.raw" "$(spec vm)"
check "--track, second run" $TO "$SPARSYNC" copy --json --track "$(spec vm)" "$T/tr.raw"
read_tr=$(field bytes_read)
check "  used the snapshot" grep -q '"track":"bitmap"' "$T/.last"
check "  read only what changed since it (one 4 MiB object at most: $read_tr)" \
	test "${read_tr:-999999999}" -le $((4 * MiB))
check "  the copy is the image now" cmp "$T/tr.raw" "$T/src.raw"
check "  still one snapshot of ours, a new one" sh -c "test \"\$($RBD snap ls rbd/vm | grep -c ' sparsync-')\" = 1 &&
	! $RBD snap ls rbd/vm | grep -q ' $first '"
check_fails "--track into a destination that cannot be written" $TO "$SPARSYNC" copy --track "$(spec vm)" "$T/nodir/tr.raw"
check "  this run's snapshot is gone again ($(snaps))" test "$(snaps)" = 1
check_fails "--track on a snapshot" $TO "$SPARSYNC" copy --track "$(spec vm@s1)" "$T/tr2.raw"
said "  refused" "name the image, not one of its snapshots"

# Errors: one line, exit 1, nothing left behind.
check_fails "no such image" $TO "$SPARSYNC" copy "$(spec nosuch)" "$T/x.raw"
said "  named" "no such image"
check_fails "no such pool" $TO "$SPARSYNC" copy "rbd:nopool/vm:conf=$CEPH_CONF" "$T/x.raw"
said "  named" "no such pool"
check_fails "no such snapshot" $TO "$SPARSYNC" copy "$(spec vm@nosuch)" "$T/x.raw"
check_fails "writing a snapshot" $TO "$SPARSYNC" copy "$T/src.raw" "$(spec vm@s1)"
said "  refused" "snapshot cannot be written"
truncate -s 128M "$T/big.raw"
check_fails "a source larger than the image" $TO "$SPARSYNC" copy "$T/big.raw" "$(spec vm)"
said "  named" "RBD image is too small"
check "no destination file left" test ! -e "$T/x.raw"
# An image another client has open (a running VM) is not written.
/usr/bin/python3 - "$CEPH_CONF" >"$T/holder.out" 2>&1 <<'EOF' &
import rados, rbd, sys, time
c = rados.Rados(conffile=sys.argv[1]); c.connect()
io = c.open_ioctx("rbd"); img = rbd.Image(io, "vm")
print("open", flush=True); time.sleep(30)
EOF
holder=$!
for _ in $(seq 100); do grep -q open "$T/holder.out" && break; sleep 0.1; done
if grep -q open "$T/holder.out"; then
	check_fails "an image another client has open is refused" $TO "$SPARSYNC" copy "$T/day1.raw" "$(spec vm)"
	said "  named" "open in another client"
	check "  untouched" exported vm "$T/src.raw"
else
	fail "could not hold the image open with python3-rbd: $(cat "$T/holder.out")"
fi
kill $holder 2>/dev/null; wait $holder 2>/dev/null

# Over ssh both ways: the remote serve opens the image on its host.
if sshd_start; then
	R="$(sparsync_ssh_opts) --remote-path $SPARSYNC"
	check "push an RBD image to a remote qcow2" $TO "$SPARSYNC" copy $R "$(spec vm)" "127.0.0.1:$T/pushed.qcow2"
	check "  qemu-img compare" qemu-img compare -q "$T/pushed.qcow2" "$T/src.raw"
	$RBD create --size 64M rbd/vm2
	check "push a file into a remote host's RBD image" $TO "$SPARSYNC" copy $R "$T/src.raw" "127.0.0.1:$(spec vm2)"
	check "  rbd export" exported vm2 "$T/src.raw"
	check "pull a remote host's RBD image" $TO "$SPARSYNC" copy $R "127.0.0.1:$(spec vm2)" "$T/pulled.raw"
	check "  the same bytes" cmp "$T/pulled.raw" "$T/src.raw"
	check "pull with --track (the remote takes the snapshot)" $TO "$SPARSYNC" copy $R --track "127.0.0.1:$(spec vm2)" "$T/pulled.raw"
	check "  again: only the change since it" $TO "$SPARSYNC" copy --json $R --track "127.0.0.1:$(spec vm2)" "$T/pulled.raw"
	is "  nothing changed since the snapshot: nothing read at the source" bytes_read 0
	check "  one snapshot of ours in the remote image" test "$($RBD snap ls rbd/vm2 | grep -c ' sparsync-')" = 1
fi

# sparsync killed -9 while writing a new image: the temporary stays (a
# dead client cannot clean up) and nothing has the destination's name; the
# next run on that destination removes it once no client watches it (here
# the dead client is blocklisted, as an operator would; otherwise its watch
# lapses after 30 s), and a temporary a live run is writing is left alone.
if command -v nbdkit >/dev/null; then
	truncate -s 64M "$T/slow2.raw"; put_random "$T/slow2.raw" $((64 * MiB)) 0
	nbdkit -U "$T/slow2.sock" -P "$T/slow2.pid" --filter=delay file "$T/slow2.raw" rdelay=1
	"$SPARSYNC" copy "nbd+unix:///?socket=$T/slow2.sock" "$(spec killed)" >/dev/null 2>&1 &
	cp_pid=$!
	for _ in $(seq 40); do $RBD ls rbd | grep -q '^.killed.sparsync-' && break; sleep 0.5; done
	kill -9 $cp_pid; wait $cp_pid 2>/dev/null
	tmp=$($RBD ls rbd | grep '^.killed.sparsync-')
	check "killed while writing a new image: its temporary stays, no image of that name" \
		sh -c "[ -n '$tmp' ] && ! $RBD ls rbd | grep -qx killed"
	# A live run writing another temporary of the same name meanwhile.
	"$SPARSYNC" copy "nbd+unix:///?socket=$T/slow2.sock" "$(spec killed)" >"$T/live.out" 2>&1 &
	live_pid=$!
	for _ in $(seq 40); do [ "$($RBD ls rbd | grep -c '^.killed.sparsync-')" = 2 ] && break; sleep 0.5; done
	live=$($RBD ls rbd | grep '^.killed.sparsync-' | grep -vx "$tmp")
	addr=$($RBD status "rbd/$tmp" --format json 2>/dev/null |
		/usr/bin/python3 -c 'import json,sys; print(" ".join(w["address"] for w in json.load(sys.stdin)["watchers"]))')
	for a in $addr; do ceph -c "$CEPH_CONF" osd blocklist add "$a" >/dev/null 2>&1; done
	check "  the next run succeeds" $TO "$SPARSYNC" copy "$T/src.raw" "$(spec killed)"
	said "  and says it removed the stale temporary" "removed a temporary image left by an interrupted run"
	check "  the stale temporary is gone" sh -c "! $RBD ls rbd | grep -qx '$tmp'"
	check "  the live run's temporary is not" sh -c "[ -n '$live' ] && $RBD ls rbd | grep -qx '$live'"
	check "  rbd export gives the source" exported killed "$T/src.raw"
	# Stopped by SIGTERM, the live run is as good as killed: a signal
	# handler cannot call librbd, so its temporary is left for the next
	# run, and nothing it wrote ever carries the image's name.
	kill $live_pid 2>/dev/null; wait $live_pid 2>/dev/null
	kill "$(cat "$T/slow2.pid")" 2>/dev/null
	check "  a run stopped by SIGTERM leaves the image as it was" exported killed "$T/src.raw"
	addr=$($RBD status "rbd/$live" --format json 2>/dev/null |
		/usr/bin/python3 -c 'import json,sys; print(" ".join(w["address"] for w in json.load(sys.stdin)["watchers"]))')
	for a in $addr; do ceph -c "$CEPH_CONF" osd blocklist add "$a" >/dev/null 2>&1; done
	check "  and the run after it" $TO "$SPARSYNC" copy "$T/src.raw" "$(spec killed)"
	check "  removes that temporary too" sh -c "! $RBD ls rbd | grep -q '^.killed.sparsync-'"
fi

# The OSD killed mid-copy into a new image (a slow NBD source keeps the copy
# going): an error within the op timeout given in the spec, and the new
# image's name never appears while it is written.
if command -v nbdkit >/dev/null; then
	truncate -s 256M "$T/slow.raw"; put_random "$T/slow.raw" $((64 * MiB)) 0
	nbdkit -U "$T/slow.sock" -P "$T/slow.pid" --filter=delay file "$T/slow.raw" rdelay=200ms
	"$SPARSYNC" copy "nbd+unix:///?socket=$T/slow.sock" "$(spec dying):rados_osd_op_timeout=3" \
		>"$T/dying.out" 2>&1 &
	cp_pid=$!
	for _ in $(seq 40); do $RBD ls rbd | grep -q '^.dying.sparsync-' && break; sleep 0.5; done
	check "while it is written, only a temporary name exists" sh -c "$RBD ls rbd | grep -q '^.dying.sparsync-' && ! $RBD ls rbd | grep -qx dying"
	kill -9 "$(cat "$CEPH_DIR/run/osd.0.pid")"
	wait $cp_pid; rc=$?
	kill "$(cat "$T/slow.pid")" 2>/dev/null
	check "the OSD killed mid-copy: the copy fails (exit $rc)" test "$rc" = 1
	cp "$T/dying.out" "$T/.last"
	said "  with one line naming the image" "rbd:rbd/dying"
fi

# The cluster gone (its daemons killed): an error, not a hang.
ceph_stop
check_fails "no cluster (client_mount_timeout=3 through the spec)" timeout 60 "$SPARSYNC" copy \
	"$(spec vm):client_mount_timeout=3" "$T/x.raw"
said "  named" "cannot connect to the Ceph cluster"
check "  no destination" test ! -e "$T/x.raw"

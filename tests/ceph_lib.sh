# shellcheck shell=bash
# A throw-away single-node Ceph cluster for integration tests: one mon, one
# OSD on memstore, 127.0.0.1 only, cephx as on real clusters (the admin
# key in $CEPH_DIR/keyring, which ceph.conf names, so every client that
# reads the conf is admin unless told otherwise), everything under $T/ceph
# (facts in ../shared/notes/ceph.md). Source after tests/lib.sh, then:
#
#   . "$TOP/tests/ceph_lib.sh"
#   ceph_start || exit 0     # reports a FAIL and returns 1 when impossible
#   rbd -c "$CEPH_CONF" create --size 64M rbd/x
#   $SPARSYNC copy --json "rbd:rbd/x:conf=$CEPH_CONF" out.raw
#
# Exports CEPH_CONF and CEPH_DIR. The EXIT trap is extended so the daemons
# are always killed (a stale mon keeps its port and blocks the next start).

CEPH_DIR=$T/ceph
CEPH_CONF=$CEPH_DIR/ceph.conf

# Kill the daemons (SIGKILL: memstore has nothing to save) and wait until
# they are gone. Safe to call twice.
ceph_stop() {
	local f pid
	for f in "$CEPH_DIR"/run/*.pid; do
		[ -s "$f" ] || continue
		pid=$(cat "$f")
		case "$(cat "/proc/$pid/comm" 2>/dev/null)" in ceph-*) kill -9 "$pid" 2>/dev/null;; esac
		rm -f "$f"
		for _ in $(seq 100); do
			[ -e "/proc/$pid/stat" ] || break
			grep -q '^[0-9]* ([^)]*) Z' "/proc/$pid/stat" 2>/dev/null && break
			sleep 0.02
		done
	done
	return 0
}

_ceph_free_port() {
	python3 -c 'import socket
s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

ceph_start() {
	local missing= c
	for c in ceph-mon ceph-osd ceph ceph-authtool rbd monmaptool uuidgen; do
		command -v $c >/dev/null 2>&1 || missing="$missing $c"
	done
	if [ -n "$missing" ]; then
		fail "missing$missing (install ceph-mon ceph-osd ceph-common)"
		return 1
	fi
	mkdir -p "$CEPH_DIR/run" "$CEPH_DIR/log"
	local port fsid D=$CEPH_DIR
	port=$(_ceph_free_port) && fsid=$(uuidgen) || { fail "ceph_start: no port"; return 1; }
	cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $D/keyring
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
paxos propose interval = 0.1
run dir = $D/run
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
[mon]
mon data = $D/mon.\$id
keyring = $D/mon.\$id/keyring
admin socket = $D/run/\$name.asok
[osd]
osd data = $D/osd.\$id
keyring = $D/osd.\$id/keyring
admin socket = $D/run/\$name.asok
osd objectstore = memstore
memstore device bytes = 2147483648
memstore page set = true
EOF
	local id uuid key
	uuid=$(uuidgen)
	if ! { ceph-authtool --create-keyring "$D/mon.keyring" --gen-key -n mon. --cap mon 'allow *' &&
		ceph-authtool --create-keyring "$D/keyring" --gen-key -n client.admin \
			--cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' &&
		ceph-authtool "$D/mon.keyring" --import-keyring "$D/keyring" &&
		monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$D/monmap" &&
		ceph-mon -c "$CEPH_CONF" --mkfs -i a --monmap "$D/monmap" --keyring "$D/mon.keyring" &&
		ceph-mon -c "$CEPH_CONF" -i a &&
		key=$(ceph-authtool --gen-print-key) &&
		printf '{"cephx_secret": "%s"}\n' "$key" >"$D/osd.secret.json" &&
		id=$(ceph -c "$CEPH_CONF" osd new "$uuid" -i "$D/osd.secret.json") &&
		mkdir -p "$D/osd.$id" &&
		ceph-authtool --create-keyring "$D/osd.$id/keyring" -n "osd.$id" --add-key "$key" &&
		ceph-osd -c "$CEPH_CONF" -i "$id" --mkfs --osd-uuid "$uuid" &&
		ceph-osd -c "$CEPH_CONF" -i "$id"; } >"$D/log/start.log" 2>&1; then
		fail "ceph_start: the cluster would not start"; tail -5 "$D/log/start.log" | sed 's/^/    | /'
		ceph_stop; return 1
	fi
	for _ in $(seq 300); do
		ceph -c "$CEPH_CONF" osd stat 2>/dev/null | grep -q "1 up" && break
		sleep 0.1
	done
	if ! { ceph -c "$CEPH_CONF" osd pool create rbd 8 && rbd -c "$CEPH_CONF" pool init rbd; } \
		>>"$D/log/start.log" 2>&1; then
		fail "ceph_start: no rbd pool"; tail -5 "$D/log/start.log" | sed 's/^/    | /'
		ceph_stop; return 1
	fi
	export CEPH_CONF CEPH_DIR
	return 0
}

# ceph_user NAME CAPS...: a cephx user client.NAME with those caps, its key
# in $CEPH_DIR/client.NAME.keyring. ceph_user_opts NAME: the spec options
# that act as that user.
ceph_user() {
	local n=$1; shift
	ceph -c "$CEPH_CONF" auth get-or-create "client.$n" "$@" -o "$CEPH_DIR/client.$n.keyring" >/dev/null
}
ceph_user_opts() { echo "id=$1:keyring=$CEPH_DIR/client.$1.keyring"; }

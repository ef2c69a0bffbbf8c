#!/bin/sh
# Install the Debian packages the build and the tests need, only those
# missing. `bench` as $1 adds the peers the benchmark compares against.
set -e
pkgs="build-essential pkg-config libssh2-1-dev libzstd-dev liblz4-dev libxxhash-dev zlib1g-dev
qemu-utils openssh-server openssh-client e2fsprogs util-linux valgrind clang
libnbd-dev libnbd-bin nbdkit librbd-dev ceph-mon ceph-osd ceph-common python3-rbd"
[ "$1" = bench ] && pkgs="$pkgs rsync tar time zstd iproute2"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing$missing"
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null; then SUDO=sudo; else
		echo "install-deps: missing packages:$missing (run as root or install them)" >&2; exit 1
	fi
fi
export DEBIAN_FRONTEND=noninteractive
${SUDO:-} apt-get update -qq
${SUDO:-} apt-get install -y -qq --no-install-recommends $missing >/dev/null

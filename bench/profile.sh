#!/bin/bash
# Where a sparsync push spends its CPU: one fresh push of IMAGE to a
# loopback sshd under `perf record -a`, then CPU seconds per process (the
# sparsync client, the remote `sparsync serve`, sshd) and per library
# (libzstd, liblz4, libcrypto = the ssh cipher and MAC, libxxhash, kernel).
#
#   bash bench/profile.sh [IMAGE [sparsync copy options...]]
#   e.g. bash bench/profile.sh /work/tmp-bench/img/fs.raw --compress lz4
#
# IMAGE defaults to the fs image a `KEEP=1 bash bench/run.sh` left behind.
# PERF_OUT=FILE keeps perf.data for `perf report -i FILE --pid PID`.
# Samples of other processes on the machine are left out of the table.
set -u -o pipefail
export LC_ALL=C
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
IMAGE=${1:-$BENCH_DIR/img/fs.raw}
[ $# -gt 0 ] && shift
[ -f "$IMAGE" ] || { echo "profile: no $IMAGE (run KEEP=1 bash bench/run.sh first, or name an image)" >&2; exit 1; }
command -v perf >/dev/null || { echo "profile: perf is missing (apt-get install linux-perf)" >&2; exit 1; }

mkdir -p "$BENCH_DIR" && T=$(mktemp -d "$BENCH_DIR/profile.XXXXXX") || exit 1; export TEST_NAME=profile
fail() { echo "profile: $*" >&2; }
. "$TOP/tests/sshd_lib.sh"
sshd_start >&2 || exit 1
cp "$SPARSYNC" "$T/sparsync"
cat >"$T/serve" <<EOF
#!/bin/sh
echo \$\$ >'$T/serve.pid'
exec '$T/sparsync' "\$@"
EOF
chmod +x "$T/serve"

sync; [ -w /proc/sys/vm/drop_caches ] && echo 3 >/proc/sys/vm/drop_caches
perf record -a -F 999 -o "$T/perf.data" -- \
	/usr/bin/time -f 'wall %e s, client peak RSS %M KiB' \
	bash -c "echo \$\$ >'$T/client.pid'; exec '$T/sparsync' copy --json -q $(sparsync_ssh_opts) --remote-path '$T/serve' $* '$IMAGE' '127.0.0.1:$T/out.img'" \
	2>"$T/err" >"$T/out" || { cat "$T/err" >&2; exit 1; }
grep -v '^\[ perf' "$T/err" >&2
cat "$T/out"
perf script -i "$T/perf.data" -F comm,pid,ip,dso 2>/dev/null | python3 -c '
import collections, re, sys
client, serve = (open(sys.argv[1] + "/" + f).read().split()[0] for f in ("client.pid", "serve.pid"))
cpu = collections.Counter(); total = collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s*(.+?)\s+(\d+)\s+[0-9a-f]+\s+\((.*)\)\s*$", line)
    if not m:
        continue
    comm, pid, dso = m.groups()
    role = {client: "client", serve: "serve"}.get(pid)
    if role is None and comm in ("sshd", "ssh"):
        role = comm
    if role is None:
        continue
    lib = dso.rsplit("/", 1)[-1].split(".so")[0]
    cpu[(role, lib)] += 1; total[role] += 1
hz = 999.0
print("%-8s %-22s %8s" % ("process", "library", "CPU s"))
for role in sorted(total, key=lambda r: -total[r]):
    print("%-8s %-22s %8.2f" % (role, "(all)", total[role] / hz))
    for (r, lib), n in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if r == role and n / hz >= 0.02:
            print("%-8s %-22s %8.2f" % ("", lib, n / hz))
' "$T"
[ -n "${PERF_OUT:-}" ] && cp "$T/perf.data" "$PERF_OUT" && echo "profile: perf data in $PERF_OUT (client pid $(cat "$T/client.pid"), serve pid $(cat "$T/serve.pid"))" >&2
sshd_stop
rm -rf "$T"

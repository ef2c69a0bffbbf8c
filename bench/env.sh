# shellcheck shell=bash
# Defaults shared by bench/run.sh and bench/profile.sh; source it.
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SPARSYNC=${SPARSYNC:-$TOP/sparsync}
# Scratch space for images and destinations: /work when it is writable
# (the development VMs' big disk), else /var/tmp.
if [ -z "${BENCH_DIR:-}" ]; then
	if [ -d /work ] && [ -w /work ]; then BENCH_DIR=/work/tmp-bench
	else BENCH_DIR=/var/tmp/sparsync-bench; fi
fi

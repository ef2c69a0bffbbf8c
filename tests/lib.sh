# Shared helpers for integration tests. Source it; then use pass/fail/check.
# Every result is one line "PASS: ..." or "FAIL: ..."; tests/run.sh counts them.
set -u
TOP=${TOP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
SPARSYNC=${SPARSYNC:-$TOP/sparsync}
TEST_NAME=$(basename "$0" .sh)
T=$(mktemp -d "${SPARSYNC_TEST_TMP:-/tmp}/sparsync-$TEST_NAME.XXXXXX")
trap 'rm -rf "$T"' EXIT

MiB=$((1 << 20))

pass() { echo "PASS: $TEST_NAME: $*"; }
fail() { echo "FAIL: $TEST_NAME: $*"; }

# check NAME CMD...: pass when CMD exits 0.
check() {
	local name=$1; shift
	if "$@" >"$T/.out" 2>&1; then pass "$name"; else
		fail "$name (command: $*)"; sed 's/^/    | /' "$T/.out" | head -20
	fi
	cp "$T/.out" "$T/.last"
}

# check_fails NAME CMD...: pass when CMD exits non-zero (and not by a signal
# or sanitizer abort, which show as >= 124).
check_fails() {
	local name=$1; shift
	"$@" >"$T/.out" 2>&1; local rc=$?
	if [ $rc -ne 0 ] && [ $rc -lt 124 ]; then pass "$name"; else
		fail "$name (exit $rc, command: $*)"; sed 's/^/    | /' "$T/.out" | head -20
	fi
	cp "$T/.out" "$T/.last"
}

# Output of the previous check/check_fails, for follow-up assertions
# (also in the file $T/.last, which a following `check ... grep` can read).
last_output() { cat "$T/.last"; }

# range_is_hole FILE START LEN: no data (per qemu-img map) in [START, START+LEN).
range_is_hole() {
	qemu-img map --output=json "$1" | python3 -c '
import json,sys
s,l=int(sys.argv[1]),int(sys.argv[2])
bad=[e for e in json.load(sys.stdin) if e["data"] and e["start"]<s+l and e["start"]+e["length"]>s]
sys.exit(1 if bad else 0)' "$2" "$3"
}

# Allocated bytes of a file.
allocated() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }

# JSON field of a one-line object, e.g. json_field bytes_read < out.json
json_field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
# field FIELD: the --json value of FIELD in the last check's output.
field() { json_field "$1" <"$T/.last"; }
# is NAME FIELD VALUE: the --json output of the last check has FIELD = VALUE.
is() {
	local v; v=$(field "$2")
	if [ "$v" = "$3" ]; then pass "$1 ($2 = $v)"; else
		fail "$1 ($2 = ${v:-missing}, want $3)"; sed 's/^/    | /' "$T/.last" | head -3
	fi
}

# Merge a map JSON array (qemu-img's or ours) on stdin into "start end"
# lines of data ranges.
merge_data_ranges() {
	python3 -c '
import json,sys
r=[]
for e in json.load(sys.stdin):
    if e["data"]:
        s,l=e["start"],e["length"]
        if r and r[-1][1]==s: r[-1][1]=s+l
        else: r.append([s,s+l])
for s,e in r: print(s,e)'
}
# Byte ranges holding data per `qemu-img map` and per `sparsync map`.
qemu_data_ranges() { qemu-img map --output=json "$@" | merge_data_ranges; }
sparsync_data_ranges() { "$SPARSYNC" map --json "$@" | merge_data_ranges; }

# said NAME REGEX: the output of the last check/check_fails matches.
said() {
	if grep -Eq -- "$2" "$T/.last"; then pass "$1"; else
		fail "$1 (output lacks /$2/)"; sed 's/^/    | /' "$T/.last" | head -5
	fi
}

# no_temp_files DIR: no temporary destination (sparsync-*) is left in DIR.
no_temp_files() { ! ls -A "$1" | grep -q 'sparsync-'; }

# put_random FILE LEN OFF: LEN random bytes at OFF (both multiples of 4 KiB).
put_random() { head -c "$2" /dev/urandom | dd of="$1" bs=4096 seek=$(($3 / 4096)) conv=notrunc status=none; }

# restores NAME QCOW2 RAW: qemu-img check is clean, and `qemu-img convert
# -O raw` of QCOW2 gives RAW's bytes (a qcow2 size is whole 512-byte
# sectors: any rounding tail must be zeros).
restores() {
	local name=$1 q=$2 raw=$3 out n
	if ! out=$(qemu-img check "$q" 2>&1); then
		fail "$name: qemu-img check: $(echo "$out" | head -3 | tr '\n' ' ')"
		return
	fi
	pass "$name: qemu-img check clean"
	rm -f "$T/restored.raw"
	qemu-img convert -O raw "$q" "$T/restored.raw"
	n=$(stat -c %s "$raw")
	if cmp -s -n "$n" "$raw" "$T/restored.raw" &&
	   [ "$(tail -c +$((n + 1)) "$T/restored.raw" | tr -d '\0' | wc -c)" = 0 ]; then
		pass "$name restores exactly"
	else
		fail "$name: restored image differs: $(cmp "$raw" "$T/restored.raw" 2>&1 | head -1)"
	fi
}

# wait_for_temp DIR NAME: until the temporary file of NAME exists (20 s).
wait_for_temp() {
	local i
	for i in $(seq 2000); do
		ls -A "$1" | grep -q "^\.$2\.sparsync-" && return 0
		sleep 0.01
	done
	return 1
}

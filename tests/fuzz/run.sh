#!/bin/bash
# Run each libFuzzer target for N seconds on a fresh copy of its seed corpus
# (tests/fuzz/corpus_NAME for build/fuzz/fuzz_NAME). Any crash, sanitizer
# report, leak or timeout fails the run; the input that caused it is saved
# under build/fuzz/artifacts/ and its name printed, to be fixed and then
# added to the seed corpus as a regression input.
#   bash tests/fuzz/run.sh SECONDS build/fuzz/fuzz_qcow2 ...
# SECONDS=0 only replays the seed corpus (a quick regression check).
set -u
TOP=$(cd "$(dirname "$0")/../.." && pwd)
cd "$TOP"
secs=${1:-60}
shift
[ $# -gt 0 ] || set -- build/fuzz/fuzz_qcow2 build/fuzz/fuzz_protocol
work=$TOP/build/fuzz/work
mkdir -p "$work" build/fuzz/artifacts
# Leaks count as findings; UBSan stops at the first report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
for bin in "$@"; do
	name=$(basename "$bin"); name=${name#fuzz_}
	seeds=tests/fuzz/corpus_$name
	log=build/fuzz/$name.log
	if [ ! -x "$bin" ] || [ ! -d "$seeds" ]; then
		echo "FAIL: fuzz $name: missing $bin or $seeds"; failed=1; continue
	fi
	rm -rf "$work/$name"; mkdir -p "$work/$name"
	cp "$seeds"/* "$work/$name/" 2>/dev/null
	if [ "$secs" -eq 0 ]; then
		"$bin" -timeout=20 -rss_limit_mb=4096 "$seeds"/* >"$log" 2>&1
	else
		"$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
			-artifact_prefix="build/fuzz/artifacts/$name-" "$work/$name" >"$log" 2>&1
	fi
	rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1)
	if [ $rc -eq 0 ] && [ "$secs" -eq 0 ]; then
		echo "PASS: fuzz $name: replayed $(grep -c '^Executed' "$log") seed inputs"
	elif [ $rc -eq 0 ]; then
		echo "PASS: fuzz $name: ${secs}s, ${execs:-?} runs, ${rate:-?} exec/s, ${cov:-}, corpus $(ls "$work/$name" | wc -l) inputs"
	else
		failed=1
		echo "FAIL: fuzz $name (exit $rc): see $log"
		grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|artifact_prefix|Test unit written)' "$log" | head -8 | sed 's/^/    | /'
	fi
done
exit $failed

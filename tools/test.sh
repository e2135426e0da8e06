#!/usr/bin/env bash
# Installs the dependencies, then builds and runs the test suites three times: a normal build
# (warnings fatal), AddressSanitizer + UndefinedBehaviorSanitizer, and ThreadSanitizer (the
# stress programs only: Criterion cannot start under TSan). Build trees: build-test*/.
# Suites: unit (Criterion), fuzz (fixed-length fuzz replays), stress (lock-free stress).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
pd_install_deps

passed=0
failed=0

run_suites() { # build-dir meson-options... -- suites...
	local dir=$1; shift
	local opts=() suites=() log
	while [ "$1" != "--" ]; do opts+=("$1"); shift; done; shift
	for s in "$@"; do suites+=(--suite "$s"); done
	echo "== $dir ${opts[*]}: $*"
	[ -f "$dir/build.ninja" ] || meson setup "$dir" --werror "${opts[@]}" >/dev/null
	ninja -C "$dir" >/dev/null
	log=$(mktemp)
	local rc=0
	meson test -C "$dir" --print-errorlogs --num-processes 2 "${suites[@]}" | tee "$log" || rc=$?
	passed=$((passed + $(grep -c '^ *[0-9]*/[0-9]* .* OK ' "$log" || true)))
	failed=$((failed + $(grep -cE '^ *[0-9]+/[0-9]+ .* (FAIL|TIMEOUT) ' "$log" || true)))
	rm -f "$log"
	return $rc
}

status=0
run_suites build-test -- unit fuzz stress || status=1
run_suites build-test-asan -Db_sanitize=address,undefined -Db_lundef=false -- unit fuzz stress ||
	status=1
CC=clang run_suites build-test-tsan -Db_sanitize=thread -Db_lundef=false -- stress || status=1
echo "$passed passed, $failed failed"
exit $status

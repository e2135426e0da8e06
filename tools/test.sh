#!/usr/bin/env bash
# Installs the dependencies, then builds and runs the test suites three times: a normal build
# (warnings fatal), AddressSanitizer + UndefinedBehaviorSanitizer, and ThreadSanitizer (the
# stress programs only: Criterion cannot start under TSan). Build trees: build-test*/.
# Suites: unit (Criterion), fuzz (fixed-length fuzz replays), stress (lock-free stress).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
pd_install_deps

# Undefined behaviour fails the test that hit it, as ASan and TSan reports do by default.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

passed=0
failed=0

run_suites() { # build-dir meson-options... -- suites...
	local dir=$1; shift
	local opts=() suites=() log rc=0
	while [ "$1" != "--" ]; do opts+=("$1"); shift; done; shift
	for s in "$@"; do suites+=(--suite "$s"); done
	echo "== $dir ${opts[*]}: $*"
	# An existing tree is reconfigured, so --werror and the options hold on every run.
	if [ -f "$dir/build.ninja" ]; then
		pd_quiet meson setup --reconfigure "$dir" --werror "${opts[@]}" || return 1
	else
		pd_quiet meson setup "$dir" --werror "${opts[@]}" || return 1
	fi
	pd_quiet ninja -C "$dir" || return 1
	log=$(mktemp)
	meson test -C "$dir" --print-errorlogs --num-processes 2 "${suites[@]}" | tee "$log" || rc=$?
	passed=$((passed + $(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$log" | tail -1)))
	failed=$((failed + $(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$log" | tail -1)))
	failed=$((failed + $(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$log" | tail -1)))
	rm -f "$log"
	return $rc
}

status=0
run_suites build-test -- unit fuzz stress || status=1
run_suites build-test-asan -Db_sanitize=address,undefined -Db_lundef=false -- unit fuzz stress ||
	status=1
CC=gcc run_suites build-test-tsan -Db_sanitize=thread -Db_lundef=false -- stress || status=1
echo "$passed passed, $failed failed"
exit $status

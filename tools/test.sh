#!/usr/bin/env bash
# Installs the dependencies, then builds and runs the test suites three times: a normal build
# (warnings fatal), AddressSanitizer + UndefinedBehaviorSanitizer, and ThreadSanitizer (the
# stress programs only: Criterion cannot start under TSan). Build trees: build-test*/.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
pd_install_deps

run_suites() { # build-dir meson-options... -- suites...
	local dir=$1; shift
	local opts=() suites=()
	while [ "$1" != "--" ]; do opts+=("$1"); shift; done; shift
	for s in "$@"; do suites+=(--suite "$s"); done
	echo "== $dir: ${opts[*]}"
	[ -f "$dir/build.ninja" ] || meson setup "$dir" --werror "${opts[@]}" >/dev/null
	ninja -C "$dir" >/dev/null
	meson test -C "$dir" --print-errorlogs --num-processes 2 "${suites[@]}"
}

run_suites build-test -- unit stress
run_suites build-test-asan -Db_sanitize=address,undefined -Db_lundef=false -- unit stress
CC=clang run_suites build-test-tsan -Db_sanitize=thread -Db_lundef=false -- stress

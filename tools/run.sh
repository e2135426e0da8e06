#!/usr/bin/env bash
# The main job, until the daemon lands: installs the dependencies, builds an optimised tree
# (build-release/), turns the shipped Mooncake trace into prefix-index operation streams and
# replays them with `pdbench index`, printing match latency and throughput, then times
# routing decisions with `pdbench route` and the router-worker hand-off with `pdbench mailbox`.
# Usage: tools/run.sh [--workers N] [extra pdbench index flags...]
# PDROUTER_SHARED points at the shared/ directory (default: ../shared beside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/deps.sh
pd_install_deps

workers=256
if [ "${1:-}" = "--workers" ]; then workers=$2; shift 2; fi
shared=${PDROUTER_SHARED:-../shared}
trace=$shared/traces/mooncake_synthetic_trace.jsonl
gen=$shared/bench/make_indexer_ops.py
for f in "$trace" "$gen"; do
	[ -f "$f" ] || { echo "run.sh: $f not found (set PDROUTER_SHARED)" >&2; exit 2; }
done

[ -f build-release/build.ninja ] || pd_quiet meson setup build-release --buildtype=release
pd_quiet ninja -C build-release bench/pdbench

tmp='' log=''
trap 'rm -f "$tmp" "$log"' EXIT
for variant in "synthetic:" "shared-prefix:--shared-prefix 2"; do
	name=${variant%%:*}
	ops=build-release/mooncake-$name-w$workers.ops
	if [ ! -f "$ops" ]; then
		# Into a temporary file beside it, renamed on success: a failed or interrupted run
		# leaves no partial stream to be reused. The generator's stderr (a JSON stats line,
		# or the error) is shown only on failure.
		tmp=$(mktemp "$ops.XXXXXX")
		log=$(mktemp)
		# shellcheck disable=SC2086 # the variant's flags are meant to split
		if ! python3 "$gen" "$trace" "$tmp" --workers "$workers" --block-size 64 \
			${variant#*:} 2>"$log"; then
			cat "$log" >&2
			echo "run.sh: $gen failed, $ops not written" >&2
			exit 1
		fi
		mv "$tmp" "$ops"
		rm -f "$log"
	fi
	echo "== pdbench index: Mooncake trace, $name, $workers workers, block size 64"
	build-release/bench/pdbench index --ops "$ops" "$@"
done
echo "== pdbench route: routing decision latency, block size 64"
build-release/bench/pdbench route
echo "== pdbench mailbox: one-way hand-off and throughput over a lane ring, CPUs 0 and 1"
build-release/bench/pdbench mailbox
